//! Wayland: the compositor says when the user went idle and when they came
//! back (ext-idle-notify-v1). A thread of the sensor's own waits on the
//! compositor's socket (a blocking dispatch), so "resumed" wakes the
//! watcher the moment it arrives, and `idle()` only reads what the last
//! event said.
//!
//! Under Wayland, Xwayland's XScreenSaver idle time sees only X clients'
//! input, so on a Wayland session this sensor comes before X11. A
//! notification also honours idle inhibitors: a video playing full screen
//! keeps the user "present", which is what a volunteer would want.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wayland_client::globals::{GlobalListContents, registry_queue_init};
use wayland_client::protocol::{wl_registry, wl_seat};
use wayland_client::{Connection, Dispatch, EventQueue, QueueHandle, delegate_noop};
use wayland_protocols::ext::idle_notify::v1::client::ext_idle_notification_v1::{self, ExtIdleNotificationV1};
use wayland_protocols::ext::idle_notify::v1::client::ext_idle_notifier_v1::ExtIdleNotifierV1;

use super::IdleSensor;
use crate::sensors::{SensorError, Wake};

/// How long without input before the compositor says "idled". Shorter idle
/// times read as zero: someone who touched the machine within the last
/// second is present. A fresh notification starts counting when it is
/// made, so after (re)connecting idle time counts from then: the safe side.
pub(super) const NOTIFY_AFTER: Duration = Duration::from_secs(1);

/// How long to wait before trying a lost compositor again.
const RECONNECT_EVERY: Duration = Duration::from_secs(5);

pub struct WaylandIdle {
    shared: Arc<Mutex<Shared>>,
}

struct Session {
    queue: EventQueue<State>,
    state: State,
    _notification: ExtIdleNotificationV1,
}

/// What the events said, shared by the sensor's thread and `idle()`.
#[derive(Default)]
struct Shared {
    /// When input last stopped, once the compositor said "idled".
    idle_since: Option<Instant>,
    /// When the compositor went away, until it is back.
    lost_at: Option<Instant>,
    wake: Option<Wake>,
}

struct State {
    shared: Arc<Mutex<Shared>>,
}

impl WaylandIdle {
    pub fn connect() -> Result<Self, SensorError> {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let session = open(&shared)?;
        let s = shared.clone();
        std::thread::Builder::new()
            .name("wayland-idle".into())
            .spawn(move || follow(session, &s))
            .map_err(|source| SensorError::Thread { what: "Wayland idle", source })?;
        Ok(Self { shared })
    }
}

/// Dispatches the compositor's events as they come; when it goes away,
/// tries again every [`RECONNECT_EVERY`].
fn follow(mut session: Session, shared: &Arc<Mutex<Shared>>) {
    loop {
        let e = session.dispatch_until_lost();
        tracing::warn!(error = %e, "lost the Wayland compositor; the user counts as present for a minute");
        {
            let mut s = shared.lock().expect("idle state");
            s.lost_at = Some(Instant::now());
            s.idle_since = None;
        }
        session = loop {
            std::thread::sleep(RECONNECT_EVERY);
            if let Ok(session) = open(shared) {
                tracing::info!("the Wayland compositor is back");
                shared.lock().expect("idle state").lost_at = None;
                break session;
            }
        };
    }
}

/// The compositor's socket, as libwayland finds it: `WAYLAND_DISPLAY`, an
/// absolute path or a name in `XDG_RUNTIME_DIR`. (Not `connect_to_env`,
/// which may change the environment of this multi-threaded process.)
fn socket() -> Result<UnixStream, SensorError> {
    let display = std::env::var_os("WAYLAND_DISPLAY").ok_or(SensorError::Missing("WAYLAND_DISPLAY is not set"))?;
    let path = if Path::new(&display).is_absolute() {
        PathBuf::from(display)
    } else {
        let runtime = std::env::var_os("XDG_RUNTIME_DIR").ok_or(SensorError::Missing("XDG_RUNTIME_DIR is not set"))?;
        Path::new(&runtime).join(display)
    };
    UnixStream::connect(&path).map_err(|source| SensorError::WaylandSocket { path, source })
}

fn open(shared: &Arc<Mutex<Shared>>) -> Result<Session, SensorError> {
    let conn = Connection::from_socket(socket()?)?;
    let (globals, mut queue) = registry_queue_init::<State>(&conn)?;
    let qh = queue.handle();
    let notifier: ExtIdleNotifierV1 = globals
        .bind(&qh, 1..=1, ())
        .map_err(|_| SensorError::Missing("the compositor does not offer ext-idle-notify-v1"))?;
    let seat: wl_seat::WlSeat =
        globals.bind(&qh, 1..=1, ()).map_err(|_| SensorError::Missing("the Wayland compositor has no seat"))?;
    let ms = NOTIFY_AFTER.as_millis() as u32;
    let notification = notifier.get_idle_notification(ms, &seat, &qh, ());
    let mut state = State { shared: shared.clone() };
    queue.roundtrip(&mut state)?;
    Ok(Session { queue, state, _notification: notification })
}

impl Session {
    /// Waits for events and dispatches them until the connection fails; returns why.
    fn dispatch_until_lost(&mut self) -> SensorError {
        loop {
            if let Err(e) = self.queue.blocking_dispatch(&mut self.state) {
                return e.into();
            }
        }
    }
}

impl IdleSensor for WaylandIdle {
    fn idle(&mut self) -> Option<Duration> {
        let s = self.shared.lock().expect("idle state");
        if let Some(lost_at) = s.lost_at {
            return super::while_lost(lost_at);
        }
        Some(s.idle_since.map_or(Duration::ZERO, |since| since.elapsed()))
    }
    fn name(&self) -> &'static str {
        "wayland-ext-idle-notify"
    }
    fn wake_on_input(&mut self, wake: Wake) -> bool {
        self.shared.lock().expect("idle state").wake = Some(wake);
        true
    }
    fn wakes_on_input(&self) -> bool {
        self.shared.lock().expect("idle state").lost_at.is_none()
    }
}

impl Dispatch<ExtIdleNotificationV1, ()> for State {
    fn event(
        state: &mut Self,
        _: &ExtIdleNotificationV1,
        event: ext_idle_notification_v1::Event,
        _: &(),
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
        let mut s = state.shared.lock().expect("idle state");
        match event {
            ext_idle_notification_v1::Event::Idled => {
                let now = Instant::now();
                s.idle_since = Some(now.checked_sub(NOTIFY_AFTER).unwrap_or(now));
            }
            ext_idle_notification_v1::Event::Resumed => {
                s.idle_since = None;
                let wake = s.wake.clone();
                drop(s);
                if let Some(wake) = wake {
                    wake();
                }
            }
            _ => {}
        }
    }
}

impl Dispatch<wl_registry::WlRegistry, GlobalListContents> for State {
    fn event(
        _: &mut Self,
        _: &wl_registry::WlRegistry,
        _: wl_registry::Event,
        _: &GlobalListContents,
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
        // Globals coming and going later do not matter: the seat and the
        // notifier are bound once; losing them ends the connection.
    }
}

delegate_noop!(State: ignore wl_seat::WlSeat);
delegate_noop!(State: ExtIdleNotifierV1);
