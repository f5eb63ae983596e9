//! A private D-Bus session bus for the tray app's tests (the single-instance
//! plugin finds the running app through it; notifications go over it).

use std::process::Command;

pub struct SessionBus {
    pub address: String,
    pid: i32,
}

impl SessionBus {
    pub fn start() -> Self {
        Self::spawn(&["--session"])
    }

    /// A session bus that can start no service (no `.service` files): a
    /// session where, say, no Secret Service is installed at all.
    #[allow(dead_code, reason = "only the app tests need it")]
    pub fn without_services(dir: &std::path::Path) -> Self {
        let config = dir.join("bare-session.conf");
        std::fs::write(
            &config,
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:tmpdir=/tmp</listen>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
        )
        .unwrap();
        Self::spawn(&[&format!("--config-file={}", config.display())])
    }

    fn spawn(how: &[&str]) -> Self {
        let out = Command::new("dbus-daemon")
            .args(how)
            .args(["--fork", "--nopidfile", "--print-address=1", "--print-pid=1"])
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
