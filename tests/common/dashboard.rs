//! The dashboard as the app's tests and its footprint bench see it: its
//! process, and its window closed as a window manager's close button does.

use x11rb::connection::Connection as _;
use x11rb::protocol::xproto::{AtomEnum, ClientMessageEvent, ConnectionExt as _, EventMask};

/// Sends WM_DELETE_WINDOW to every top-level window titled "Idlemesh" on
/// `display`; false if there is none.
pub fn close_dashboard(display: &str) -> bool {
    let Ok((conn, screen)) = x11rb::connect(Some(display)) else { return false };
    let root = conn.setup().roots[screen].root;
    let atom = |name: &str| conn.intern_atom(false, name.as_bytes()).unwrap().reply().unwrap().atom;
    let (protocols, delete) = (atom("WM_PROTOCOLS"), atom("WM_DELETE_WINDOW"));
    let mut found = false;
    for window in conn.query_tree(root).unwrap().reply().unwrap().children {
        let name = conn.get_property(false, window, AtomEnum::WM_NAME, AtomEnum::ANY, 0, 64).unwrap().reply();
        if name.is_ok_and(|n| n.value == b"Idlemesh") {
            let event = ClientMessageEvent::new(32, window, protocols, [delete, x11rb::CURRENT_TIME, 0, 0, 0]);
            conn.send_event(false, window, EventMask::NO_EVENT, event).unwrap();
            found = true;
        }
    }
    conn.flush().unwrap();
    found
}

/// Whether `pid` runs the dashboard program (`idlemesh-dashboard`).
pub fn is_dashboard(pid: i32) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    cmdline.split(|b| *b == 0).next().is_some_and(|argv0| argv0.ends_with(b"idlemesh-dashboard"))
}
