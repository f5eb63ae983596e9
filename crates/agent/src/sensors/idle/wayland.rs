//! Wayland: the compositor says when the user went idle and when they came
//! back (ext-idle-notify-v1). No polling of the compositor: `idle()` reads
//! whatever events arrived on the socket, one non-blocking receive, so the
//! watcher can call it as often as it calls the X11 sensor.
//!
//! Under Wayland, Xwayland's XScreenSaver idle time sees only X clients'
//! input, so on a Wayland session this sensor comes before X11. A
//! notification also honours idle inhibitors: a video playing full screen
//! keeps the user "present", which is what a volunteer would want.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wayland_client::backend::WaylandError;
use wayland_client::globals::{GlobalListContents, registry_queue_init};
use wayland_client::protocol::{wl_registry, wl_seat};
use wayland_client::{Connection, Dispatch, EventQueue, QueueHandle, delegate_noop};
use wayland_protocols::ext::idle_notify::v1::client::ext_idle_notification_v1::{self, ExtIdleNotificationV1};
use wayland_protocols::ext::idle_notify::v1::client::ext_idle_notifier_v1::ExtIdleNotifierV1;

use super::IdleSensor;

/// How long without input before the compositor says "idled". Shorter idle
/// times read as zero: someone who touched the machine within the last
/// second is present. A fresh notification starts counting when it is
/// made, so after (re)connecting idle time counts from then: the safe side.
pub(super) const NOTIFY_AFTER: Duration = Duration::from_secs(1);

/// How long to wait before trying a lost compositor again.
const RECONNECT_EVERY: Duration = Duration::from_secs(5);

pub struct WaylandIdle {
    session: Option<Session>,
    last_attempt: Instant,
    lost_at: Instant,
    /// A reconnection under way on its own thread: connecting takes round
    /// trips, and the watcher thread, which freezes workers, must not wait
    /// on a compositor that may hang.
    reconnecting: Option<std::sync::mpsc::Receiver<Result<Session, String>>>,
}

struct Session {
    conn: Connection,
    queue: EventQueue<State>,
    state: State,
    _notification: ExtIdleNotificationV1,
}

#[derive(Debug, Default)]
struct State {
    /// When input last stopped, once the compositor said "idled".
    idle_since: Option<Instant>,
}

impl WaylandIdle {
    pub fn connect() -> Result<Self, String> {
        Ok(Self { session: Some(open()?), last_attempt: Instant::now(), lost_at: Instant::now(), reconnecting: None })
    }
}

/// The compositor's socket, as libwayland finds it: `WAYLAND_DISPLAY`, an
/// absolute path or a name in `XDG_RUNTIME_DIR`. (Not `connect_to_env`,
/// which may change the environment of this multi-threaded process.)
fn socket() -> Result<UnixStream, String> {
    let display = std::env::var_os("WAYLAND_DISPLAY").ok_or("WAYLAND_DISPLAY is not set")?;
    let path = if Path::new(&display).is_absolute() {
        PathBuf::from(display)
    } else {
        let runtime = std::env::var_os("XDG_RUNTIME_DIR").ok_or("XDG_RUNTIME_DIR is not set")?;
        Path::new(&runtime).join(display)
    };
    UnixStream::connect(&path).map_err(|e| format!("cannot reach the Wayland compositor at {}: {e}", path.display()))
}

fn open() -> Result<Session, String> {
    let conn = Connection::from_socket(socket()?).map_err(|e| format!("cannot reach the Wayland compositor: {e}"))?;
    let (globals, mut queue) =
        registry_queue_init::<State>(&conn).map_err(|e| format!("the Wayland registry failed: {e}"))?;
    let qh = queue.handle();
    let notifier: ExtIdleNotifierV1 =
        globals.bind(&qh, 1..=1, ()).map_err(|_| "the compositor does not offer ext-idle-notify-v1".to_string())?;
    let seat: wl_seat::WlSeat =
        globals.bind(&qh, 1..=1, ()).map_err(|_| "the Wayland compositor has no seat".to_string())?;
    let ms = NOTIFY_AFTER.as_millis() as u32;
    let notification = notifier.get_idle_notification(ms, &seat, &qh, ());
    let mut state = State::default();
    queue.roundtrip(&mut state).map_err(|e| format!("the Wayland compositor failed: {e}"))?;
    Ok(Session { conn, queue, state, _notification: notification })
}

impl Session {
    /// Dispatches the events that have arrived, without waiting for more.
    fn pump(&mut self) -> Result<(), String> {
        self.conn.flush().map_err(|e| e.to_string())?;
        if let Some(guard) = self.queue.prepare_read() {
            match guard.read() {
                Ok(_) => {}
                Err(WaylandError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        self.queue.dispatch_pending(&mut self.state).map_err(|e| e.to_string())?;
        Ok(())
    }
}

impl WaylandIdle {
    fn reconnect(&mut self) {
        if let Some(rx) = &self.reconnecting {
            match rx.try_recv() {
                Ok(Ok(session)) => {
                    tracing::info!("the Wayland compositor is back");
                    self.session = Some(session);
                    self.reconnecting = None;
                }
                Ok(Err(_)) | Err(std::sync::mpsc::TryRecvError::Disconnected) => self.reconnecting = None,
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
            }
        } else if self.last_attempt.elapsed() >= RECONNECT_EVERY {
            self.last_attempt = Instant::now();
            let (tx, rx) = std::sync::mpsc::channel();
            let spawned = std::thread::Builder::new().name("wayland-reconnect".into()).spawn(move || {
                let _ = tx.send(open());
            });
            if spawned.is_ok() {
                self.reconnecting = Some(rx);
            }
        }
    }
}

impl IdleSensor for WaylandIdle {
    fn idle(&mut self) -> Option<Duration> {
        if self.session.is_none() {
            self.reconnect();
        }
        let Some(session) = self.session.as_mut() else {
            return super::while_lost(self.lost_at);
        };
        if let Err(e) = session.pump() {
            tracing::warn!(error = %e, "lost the Wayland compositor; the user counts as present for a minute");
            self.session = None;
            self.last_attempt = Instant::now();
            self.lost_at = Instant::now();
            return super::while_lost(self.lost_at);
        }
        Some(session.state.idle_since.map_or(Duration::ZERO, |since| since.elapsed()))
    }
    fn name(&self) -> &'static str {
        "wayland-ext-idle-notify"
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
        match event {
            ext_idle_notification_v1::Event::Idled => {
                let now = Instant::now();
                state.idle_since = Some(now.checked_sub(NOTIFY_AFTER).unwrap_or(now));
            }
            ext_idle_notification_v1::Event::Resumed => state.idle_since = None,
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
