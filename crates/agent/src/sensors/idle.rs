//! Input idle time. X11 through the XScreenSaver extension, with a SYNC
//! alarm on the server's idle counter for the user's return; Wayland
//! through the compositor's ext-idle-notify-v1 events (KWin, and wlroots
//! compositors since 0.16); GNOME through Mutter's IdleMonitor watches on
//! the session bus. These three wake the watcher on input
//! ([`IdleSensor::wake_on_input`]). Elsewhere on Linux logind's IdleHint,
//! which desktops keep current for their session. Windows:
//! GetLastInputInfo; macOS: the HID system's idle time through
//! CoreGraphics. Both are cheap calls that the watcher polls fast while a
//! kernel runs, as it does any sensor whose events are lost.

use std::time::Duration;

use super::IdleSensor;

/// The best idle sensor this session offers, or one that always answers "unknown".
pub fn open_idle_sensor() -> Box<dyn IdleSensor> {
    #[cfg(target_os = "linux")]
    {
        let mut tried = Vec::new();
        let set = |var| std::env::var_os(var).is_some_and(|v| !v.is_empty());
        if set("WAYLAND_DISPLAY") {
            // Not X11 after this: Xwayland sees only its own clients' input.
            match wayland::WaylandIdle::connect() {
                Ok(s) => return Box::new(s),
                Err(e) => tried.push(format!("Wayland idle notifications: {e}")),
            }
        } else if set("DISPLAY") {
            match x11::X11Idle::connect() {
                Ok(s) => return Box::new(s),
                Err(e) => tried.push(format!("X11 idle time: {e}")),
            }
        }
        // GNOME (Wayland or not) answers here; other desktops fall through to logind.
        match mutter::MutterIdle::connect() {
            Ok(s) => return Box::new(s),
            Err(e) => tried.push(format!("GNOME: {e}")),
        }
        match logind::LogindIdle::connect() {
            Ok(s) => return Box::new(s),
            Err(e) => tried.push(format!("logind: {e}")),
        }
        let why = tried.join("; ");
        tracing::info!(tried = %why, "no idle sensor answers");
        return Box::new(NoIdleSensor { why });
    }
    #[cfg(windows)]
    {
        return Box::new(windows::LastInput);
    }
    #[cfg(target_os = "macos")]
    {
        return Box::new(macos::HidIdle);
    }
    #[allow(unreachable_code, reason = "the fallback for platforms without an idle sensor")]
    Box::new(NoIdleSensor { why: "no idle sensor for this platform".into() })
}

/// How long a display that went away still counts as a user present. Most
/// often it is coming back (a compositor restarting after a crash, a new
/// login); if it stays away, the user has logged out and the machine is
/// unattended.
#[cfg(target_os = "linux")]
const LOST_GRACE: Duration = Duration::from_secs(60);

/// What a sensor whose display went away at `lost_at` answers meanwhile.
#[cfg(target_os = "linux")]
fn while_lost(lost_at: std::time::Instant) -> Option<Duration> {
    (lost_at.elapsed() < LOST_GRACE).then_some(Duration::ZERO)
}

/// No sensor answers: on a headless machine (servers, CI) nobody's input
/// to wait for; on one with a graphical session, "cannot tell".
#[derive(Debug)]
pub struct NoIdleSensor {
    /// What each sensor tried said.
    pub why: String,
}

impl IdleSensor for NoIdleSensor {
    fn idle(&mut self) -> Option<Duration> {
        None
    }
    fn name(&self) -> &'static str {
        "none"
    }
    fn unknown_because(&self) -> Option<String> {
        Some(self.why.clone())
    }
}

#[cfg(target_os = "linux")]
mod mutter;
#[cfg(target_os = "linux")]
mod wayland;

#[cfg(target_os = "linux")]
mod x11;
#[cfg(all(test, target_os = "linux"))]
pub(crate) use x11::{X11Idle, xvfb};

#[cfg(target_os = "linux")]
mod logind {
    use zbus::blocking::Proxy;

    use super::*;

    pub struct LogindIdle {
        proxy: Proxy<'static>,
    }

    impl LogindIdle {
        pub fn connect() -> Result<Self, crate::sensors::SensorError> {
            let proxy = crate::sensors::system_bus_proxy(
                "org.freedesktop.login1",
                "/org/freedesktop/login1/session/auto",
                "org.freedesktop.login1.Session",
            )?;
            // A session must exist and answer, or this sensor would only ever say "unknown".
            proxy.get_property::<bool>("IdleHint").map_err(crate::sensors::bus("no logind session"))?;
            Ok(Self { proxy })
        }
    }

    impl IdleSensor for LogindIdle {
        fn idle(&mut self) -> Option<Duration> {
            let idle: bool = self.proxy.get_property("IdleHint").ok()?;
            if !idle {
                return Some(Duration::ZERO);
            }
            // CLOCK_REALTIME microseconds of the moment the session went idle.
            let since_us: u64 = self.proxy.get_property("IdleSinceHint").ok()?;
            let now_us = crate::now_ms() * 1000;
            Some(Duration::from_micros(now_us.saturating_sub(since_us)))
        }
        fn name(&self) -> &'static str {
            "logind"
        }
    }
}

#[cfg(windows)]
mod windows {
    use windows_sys::Win32::System::SystemInformation::GetTickCount;
    use windows_sys::Win32::UI::Input::KeyboardAndMouse::{GetLastInputInfo, LASTINPUTINFO};

    use super::*;

    /// The session's last keyboard or mouse input (GetLastInputInfo).
    pub struct LastInput;

    impl IdleSensor for LastInput {
        fn idle(&mut self) -> Option<Duration> {
            let mut info = LASTINPUTINFO { cbSize: std::mem::size_of::<LASTINPUTINFO>() as u32, dwTime: 0 };
            // SAFETY: `info` is a valid LASTINPUTINFO with cbSize set, as the API requires.
            if unsafe { GetLastInputInfo(&mut info) } == 0 {
                return None;
            }
            // SAFETY: no arguments; both counters are milliseconds since boot and wrap together.
            let now = unsafe { GetTickCount() };
            Some(Duration::from_millis(u64::from(now.wrapping_sub(info.dwTime))))
        }
        fn name(&self) -> &'static str {
            "windows-last-input"
        }
    }
}

#[cfg(target_os = "macos")]
mod macos {
    use super::*;

    #[link(name = "CoreGraphics", kind = "framework")]
    unsafe extern "C" {
        fn CGEventSourceSecondsSinceLastEventType(state: i32, event_type: u32) -> f64;
    }
    /// kCGEventSourceStateCombinedSessionState: input from every source in this session.
    const COMBINED_SESSION_STATE: i32 = 0;
    /// kCGAnyInputEventType.
    const ANY_INPUT_EVENT: u32 = !0;

    /// Seconds since the last HID event (the same clock as IOKit's HIDIdleTime).
    pub struct HidIdle;

    impl IdleSensor for HidIdle {
        fn idle(&mut self) -> Option<Duration> {
            // SAFETY: a pure query with constant arguments.
            let s = unsafe { CGEventSourceSecondsSinceLastEventType(COMBINED_SESSION_STATE, ANY_INPUT_EVENT) };
            (s.is_finite() && s >= 0.0).then(|| Duration::from_secs_f64(s))
        }
        fn name(&self) -> &'static str {
            "macos-hid"
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn a_lost_display_means_present_for_a_while_then_unattended() {
        assert_eq!(while_lost(Instant::now()), Some(Duration::ZERO), "just lost: most likely restarting");
        let long_ago = Instant::now().checked_sub(LOST_GRACE + Duration::from_secs(1)).unwrap();
        assert_eq!(while_lost(long_ago), None, "gone for good: logged out");
    }
}
