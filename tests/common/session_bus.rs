//! A private D-Bus session bus for the tray app's tests (the single-instance
//! plugin finds the running app through it; notifications go over it).

use std::process::Command;

pub struct SessionBus {
    pub address: String,
    pid: i32,
}

impl SessionBus {
    pub fn start() -> Self {
        let out = Command::new("dbus-daemon")
            .args(["--session", "--fork", "--nopidfile", "--print-address=1", "--print-pid=1"])
            .output()
            .expect("dbus-daemon is installed (scripts/setup installs dbus-x11)");
        assert!(out.status.success(), "dbus-daemon: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut lines = text.lines();
        let address = lines.next().expect("bus address").trim().to_string();
        let pid = lines.next().and_then(|p| p.trim().parse().ok()).expect("bus pid");
        Self { address, pid }
    }
}

impl Drop for SessionBus {
    fn drop(&mut self) {
        // SAFETY: signalling the bus daemon this helper started.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
    }
}
