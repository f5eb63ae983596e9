//! GNOME: Mutter's `org.gnome.Mutter.IdleMonitor` on the session bus.
//! GNOME's compositor offers no ext-idle-notify-v1, and under Wayland
//! Xwayland's idle time sees only X clients, so on GNOME this is the sensor
//! that sees the user.
//!
//! Event driven, like the Wayland sensor: an idle watch fires when input has
//! stopped for a second, a user-active watch on the next input after that,
//! which wakes the watcher. Threads of its own follow the signals and the
//! name's owner (a restarted Mutter gets new watches), so `idle()` only
//! reads what the last signal said.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zbus::blocking::{Connection, Proxy};

use super::IdleSensor;
use super::wayland::NOTIFY_AFTER;
use crate::sensors::{SensorError, Wake, bus};

const NAME: &str = "org.gnome.Mutter.IdleMonitor";
const PATH: &str = "/org/gnome/Mutter/IdleMonitor/Core";

pub struct MutterIdle {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// When input last stopped; `None` while the user is active.
    idle_since: Option<Instant>,
    /// When Mutter went away, until it is back.
    lost_at: Option<Instant>,
    idle_watch: Option<u32>,
    active_watch: Option<u32>,
    /// Watches that fired before their ids were stored (a watch can fire
    /// between Mutter's reply and our recording it).
    fired_early: Vec<u32>,
    wake: Option<Wake>,
}

impl MutterIdle {
    pub fn connect() -> Result<Self, SensorError> {
        let conn = Connection::session().map_err(bus("no session bus"))?;
        let proxy = Proxy::new_owned(conn, NAME.to_owned(), PATH.to_owned(), NAME.to_owned())
            .map_err(bus("no Mutter idle monitor"))?;
        // Subscribed before any watch exists, so no firing is missed. The
        // streams follow the name: a restarted Mutter's signals come here too.
        let signals = proxy.receive_signal("WatchFired").map_err(bus("no Mutter idle monitor"))?;
        let owners = proxy.receive_owner_changed().map_err(bus("no Mutter idle monitor"))?;
        let state = Arc::new(Mutex::new(State::default()));
        arm(&proxy, &state)?;
        let spawn = |name: &'static str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map(drop)
                .map_err(|source| SensorError::Thread { what: name, source })
        };
        let (p, s) = (proxy.clone(), state.clone());
        spawn("mutter-idle", Box::new(move || follow_watches(&p, signals, &s)))?;
        let (p, s) = (proxy, state.clone());
        spawn("mutter-owner", Box::new(move || follow_owner(&p, owners, &s)))?;
        Ok(Self { state })
    }
}

/// When input stopped, as an idle watch firing now says it.
fn went_idle() -> Instant {
    Instant::now().checked_sub(NOTIFY_AFTER).unwrap_or_else(Instant::now)
}

/// Reads the idle time and sets both watches on the Mutter that now owns the name.
fn arm(proxy: &Proxy<'static>, state: &Mutex<State>) -> Result<(), SensorError> {
    let idle_ms: u64 = proxy.call("GetIdletime", &()).map_err(bus("no Mutter idle monitor (GetIdletime)"))?;
    let idle_watch: u32 =
        proxy.call("AddIdleWatch", &(NOTIFY_AFTER.as_millis() as u64)).map_err(bus("Mutter refused an idle watch"))?;
    let active_watch: u32 = proxy.call("AddUserActiveWatch", &()).map_err(bus("Mutter refused a user-active watch"))?;
    let idle = Duration::from_millis(idle_ms);
    let mut s = state.lock().expect("idle state");
    s.idle_since = (idle >= NOTIFY_AFTER).then(|| Instant::now().checked_sub(idle)).flatten();
    s.idle_watch = Some(idle_watch);
    s.active_watch = Some(active_watch);
    s.lost_at = None;
    let early = std::mem::take(&mut s.fired_early);
    if early.contains(&idle_watch) {
        s.idle_since = Some(went_idle());
    }
    if early.contains(&active_watch) {
        s.idle_since = None;
        s.active_watch = None;
    }
    Ok(())
}

fn follow_watches(
    proxy: &Proxy<'static>,
    signals: zbus::blocking::proxy::SignalIterator<'static>,
    state: &Mutex<State>,
) {
    for message in signals {
        let Ok(id) = message.body().deserialize::<u32>() else { continue };
        let rearm = {
            let mut s = state.lock().expect("idle state");
            if Some(id) == s.idle_watch {
                s.idle_since = Some(went_idle());
                s.active_watch.is_none()
            } else if Some(id) == s.active_watch {
                s.active_watch = None;
                s.idle_since = None;
                let wake = s.wake.clone();
                drop(s);
                if let Some(wake) = wake {
                    wake();
                }
                continue;
            } else {
                if s.fired_early.len() >= 8 {
                    s.fired_early.remove(0);
                }
                s.fired_early.push(id);
                false
            }
        };
        // A user-active watch fires once: the next one is armed when the
        // user has gone idle again (not under the lock `idle()` takes).
        if rearm {
            match proxy.call::<_, _, u32>("AddUserActiveWatch", &()) {
                Ok(w) => state.lock().expect("idle state").active_watch = Some(w),
                Err(e) => tracing::warn!(error = %e, "Mutter refused a user-active watch"),
            }
        }
    }
}

fn follow_owner(
    proxy: &Proxy<'static>,
    owners: zbus::blocking::proxy::OwnerChangedIterator<'static>,
    state: &Mutex<State>,
) {
    for owner in owners {
        if owner.is_none() {
            tracing::warn!("lost Mutter's idle monitor; the user counts as present for a minute");
            let mut s = state.lock().expect("idle state");
            s.lost_at = Some(Instant::now());
            (s.idle_watch, s.active_watch) = (None, None);
            continue;
        }
        match arm(proxy, state) {
            Ok(()) => tracing::info!("following the restarted Mutter's idle monitor"),
            Err(e) => tracing::warn!(error = %e, "the restarted Mutter has no usable idle monitor"),
        }
    }
}

impl IdleSensor for MutterIdle {
    fn idle(&mut self) -> Option<Duration> {
        let s = self.state.lock().expect("idle state");
        if let Some(lost_at) = s.lost_at {
            return super::while_lost(lost_at);
        }
        Some(s.idle_since.map_or(Duration::ZERO, |t| t.elapsed()))
    }
    fn name(&self) -> &'static str {
        "gnome-mutter-idle-monitor"
    }
    fn wake_on_input(&mut self, wake: Wake) -> bool {
        self.state.lock().expect("idle state").wake = Some(wake);
        true
    }
    fn wakes_on_input(&self) -> bool {
        self.state.lock().expect("idle state").lost_at.is_none()
    }
}
