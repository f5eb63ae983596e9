//! One tray per session (Linux): the first tray owns a name on the session
//! bus; a second launch (the menu entry, autostart while running) asks it
//! to open the dashboard and exits, instead of starting another agent.

use tao::event_loop::EventLoopProxy;

use crate::app::UserEvent;

const NAME: &str = "org.idlemesh.app.SingleInstance";
const PATH: &str = "/org/idlemesh/app/SingleInstance";

struct Instance {
    proxy: std::sync::Mutex<EventLoopProxy<UserEvent>>,
}

#[zbus::interface(name = "org.idlemesh.app.SingleInstance")]
impl Instance {
    /// Another launch asks for the dashboard.
    fn open(&self) {
        let _ = self.proxy.lock().expect("lock").send_event(UserEvent::Open);
    }
}

/// True when a tray already runs in this session and was asked to open the
/// dashboard: this launch has nothing more to do.
pub fn hand_over() -> bool {
    let Ok(bus) = zbus::blocking::Connection::session() else { return false };
    let answered = bus.call_method(Some(NAME), PATH, Some(NAME), "Open", &());
    if answered.is_ok() {
        tracing::info!("Idlemesh already runs in this session: asked it to open the dashboard");
    }
    answered.is_ok()
}

/// Owns the name while the tray runs (the connection is kept in the value).
/// Without a session bus, or when the name is taken meanwhile, the tray
/// runs anyway: its agent refuses to start twice on the same socket.
pub fn serve(proxy: EventLoopProxy<UserEvent>) -> Option<zbus::blocking::Connection> {
    let instance = Instance { proxy: std::sync::Mutex::new(proxy) };
    let built = zbus::blocking::connection::Builder::session()
        .and_then(|b| b.name(NAME))
        .and_then(|b| b.serve_at(PATH, instance))
        .and_then(|b| b.build());
    match built {
        Ok(connection) => Some(connection),
        Err(e) => {
            tracing::warn!(error = %e, "cannot own the session bus name that keeps the tray single");
            None
        }
    }
}
