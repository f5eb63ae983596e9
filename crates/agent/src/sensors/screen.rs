//! What is in front of the user: whether the focused window is full screen
//! (a game, a film), and whether a program the user listed runs.
//!
//! Full screen, X11 (EWMH): the root window's `_NET_ACTIVE_WINDOW` names the
//! focused window, whose `_NET_WM_STATE` holds `_NET_WM_STATE_FULLSCREEN`
//! while it fills the screen. A thread of its own, on a connection of its
//! own, follows both by `PropertyNotify` events (nothing polled) and wakes
//! the watcher when the answer changes. Wayland gives a client no way to
//! learn another's window state; there a film or a game that inhibits idle
//! (as players do) keeps the user "present" through ext-idle-notify, and
//! `exclusive_programs` covers the rest (docs/architecture.md).
//!
//! Programs: the names in `/proc/*/comm`, read on the watcher's slow tick
//! only while the user listed any (docs/benchmarks.md has its cost).

use super::Wake;

/// The focused window's program while it is full screen.
pub trait ScreenSensor {
    fn fullscreen(&mut self) -> Option<String>;
    /// Calls `wake` from the sensor's thread when the answer changes.
    fn wake_on_change(&mut self, wake: Wake) {
        let _ = wake;
    }
}

/// No display server that says: never full screen.
pub struct NoScreen;

impl ScreenSensor for NoScreen {
    fn fullscreen(&mut self) -> Option<String> {
        None
    }
}

/// The screen sensor this session offers.
pub fn open() -> Box<dyn ScreenSensor> {
    #[cfg(target_os = "linux")]
    {
        let set = |var| std::env::var_os(var).is_some_and(|v| !v.is_empty());
        if set("DISPLAY") && !set("WAYLAND_DISPLAY") {
            match x11::X11Screen::follow(None) {
                Ok(s) => return Box::new(s),
                Err(e) => tracing::info!(error = %e, "full-screen windows will not be noticed"),
            }
        }
    }
    Box::new(NoScreen)
}

/// The first of `names` that runs now, as `/proc/*/comm` names it (the
/// kernel keeps 15 bytes of a name: a longer listed name matches its
/// first 15). `None` when none runs, or nothing is listed.
pub fn running_program(names: &[String]) -> Option<String> {
    if names.is_empty() {
        return None;
    }
    let short = |n: &str| n.as_bytes().iter().take(15).copied().collect::<Vec<u8>>();
    let wanted: Vec<(Vec<u8>, &String)> = names.iter().map(|n| (short(n), n)).collect();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = entry.file_name();
        if !pid.as_encoded_bytes().iter().all(u8::is_ascii_digit) {
            continue;
        }
        let Ok(comm) = std::fs::read(entry.path().join("comm")) else { continue };
        let comm = comm.strip_suffix(b"\n").unwrap_or(&comm);
        if let Some((_, name)) = wanted.iter().find(|(w, _)| w.as_slice() == comm) {
            return Some((*name).clone());
        }
    }
    None
}

#[cfg(target_os = "linux")]
pub(crate) mod x11 {
    use std::sync::{Arc, Mutex};

    use x11rb::connection::Connection as _;
    use x11rb::protocol::Event;
    use x11rb::protocol::xproto::{AtomEnum, ChangeWindowAttributesAux, ConnectionExt as _, EventMask, Window};
    use x11rb::rust_connection::RustConnection;

    use super::*;
    use crate::sensors::SensorError;

    #[derive(Default)]
    struct Shared {
        program: Option<String>,
        wake: Option<Wake>,
    }

    struct Atoms {
        active: u32,
        state: u32,
        fullscreen: u32,
        pid: u32,
    }

    pub struct X11Screen {
        shared: Arc<Mutex<Shared>>,
    }

    impl X11Screen {
        /// Starts following the display (`None`: the one `DISPLAY` names).
        pub fn follow(display: Option<&str>) -> Result<Self, SensorError> {
            let (conn, screen) = RustConnection::connect(display)?;
            let root =
                conn.setup().roots.get(screen).ok_or(SensorError::Missing("the X display has no such screen"))?.root;
            let atom = |name: &[u8]| -> Result<u32, SensorError> { Ok(conn.intern_atom(false, name)?.reply()?.atom) };
            let atoms = Atoms {
                active: atom(b"_NET_ACTIVE_WINDOW")?,
                state: atom(b"_NET_WM_STATE")?,
                fullscreen: atom(b"_NET_WM_STATE_FULLSCREEN")?,
                pid: atom(b"_NET_WM_PID")?,
            };
            let events = ChangeWindowAttributesAux::new().event_mask(EventMask::PROPERTY_CHANGE);
            conn.change_window_attributes(root, &events)?.check()?;
            let shared = Arc::new(Mutex::new(Shared::default()));
            shared.lock().expect("screen state").program = in_front(&conn, root, &atoms).1;
            let s = shared.clone();
            std::thread::Builder::new()
                .name("x11-fullscreen".into())
                .spawn(move || {
                    let e = follow(&conn, root, &atoms, &s);
                    tracing::warn!(error = %e, "lost the X display: full-screen windows are no longer noticed");
                    s.lock().expect("screen state").program = None;
                })
                .map_err(|source| SensorError::Thread { what: "full-screen", source })?;
            Ok(Self { shared })
        }
    }

    impl ScreenSensor for X11Screen {
        fn fullscreen(&mut self) -> Option<String> {
            self.shared.lock().expect("screen state").program.clone()
        }
        fn wake_on_change(&mut self, wake: Wake) {
            self.shared.lock().expect("screen state").wake = Some(wake);
        }
    }

    /// The focused window, and its program if it is full screen.
    fn in_front(conn: &RustConnection, root: Window, atoms: &Atoms) -> (Option<Window>, Option<String>) {
        let prop = |w: Window, name: u32, ty: AtomEnum, len: u32| {
            conn.get_property(false, w, name, ty, 0, len).ok()?.reply().ok()
        };
        let active =
            prop(root, atoms.active, AtomEnum::WINDOW, 1).and_then(|r| r.value32()?.next()).filter(|&w| w != 0);
        let Some(w) = active else { return (None, None) };
        let full = prop(w, atoms.state, AtomEnum::ATOM, 64)
            .is_some_and(|r| r.value32().is_some_and(|mut atoms_of| atoms_of.any(|a| a == atoms.fullscreen)));
        if !full {
            return (active, None);
        }
        // Its program: the class of WM_CLASS ("instance\0Class\0"), else the
        // process name of _NET_WM_PID, else something to show.
        let class = prop(w, u32::from(AtomEnum::WM_CLASS), AtomEnum::STRING, 256).and_then(|r| {
            let parts: Vec<String> = r
                .value
                .split(|&b| b == 0)
                .filter(|p| !p.is_empty())
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            parts.get(1).or(parts.first()).cloned()
        });
        let by_pid = || {
            let pid = prop(w, atoms.pid, AtomEnum::CARDINAL, 1)?.value32()?.next()?;
            Some(std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?.trim().to_owned())
        };
        (active, Some(class.or_else(by_pid).unwrap_or_else(|| "a program".into())))
    }

    /// Follows the focused window and its state until the connection fails; returns why.
    fn follow(conn: &RustConnection, root: Window, atoms: &Atoms, shared: &Mutex<Shared>) -> SensorError {
        let events = ChangeWindowAttributesAux::new().event_mask(EventMask::PROPERTY_CHANGE);
        let mut watched = None;
        loop {
            let (mut active, mut program) = in_front(conn, root, atoms);
            while active != watched {
                // The new focused window's state changes come here too (it
                // may be gone already: then its error is of no matter); its
                // state is read again after, so a change in between counts.
                if let Some(w) = active {
                    let _ = conn.change_window_attributes(w, &events);
                    let _ = conn.flush();
                }
                watched = active;
                (active, program) = in_front(conn, root, atoms);
            }
            let wake = {
                let mut s = shared.lock().expect("screen state");
                let changed = s.program != program;
                s.program = program;
                changed.then(|| s.wake.clone()).flatten()
            };
            if let Some(wake) = wake {
                wake();
            }
            loop {
                match conn.wait_for_event() {
                    Ok(Event::PropertyNotify(e)) if e.atom == atoms.active || e.atom == atoms.state => break,
                    Ok(_) => {}
                    Err(e) => return e.into(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_program_is_found_running_by_its_process_name() {
        // This test's own process: its name is the test binary's, cut to 15 bytes.
        let me = std::fs::read_to_string("/proc/self/comm").unwrap().trim().to_owned();
        let listed = vec!["no-such-program-here".to_owned(), me.clone()];
        assert_eq!(running_program(&listed), Some(me));
        assert_eq!(running_program(&["no-such-program-here".to_owned()]), None);
        assert_eq!(running_program(&[]), None, "nothing listed: nothing read");
    }
}
