//! Xvfb for the end-to-end tests (idle detection, the tray app), shared by
//! `tests/e2e` and `tests/app`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts Xvfb on a free display; killed on drop.
pub struct Xvfb {
    child: Child,
    pub display: String,
}

impl Xvfb {
    pub fn start() -> Self {
        Self::with_screen("640x480x24")
    }

    /// `screen`: width x height x depth, e.g. "1280x1024x24".
    pub fn with_screen(screen: &str) -> Self {
        // Threads of one test binary start servers at the same moment: each
        // takes its own numbers, or two would find the same new server up.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        for _ in 0..50 {
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let display = format!(":{}", 90 + (std::process::id() as usize + n) % 400);
            let lock = format!("/tmp/.X{}-lock", &display[1..]);
            if Path::new(&lock).exists() && !stale_lock_removed(&lock, &display[1..]) {
                continue;
            }
            let mut child = Command::new("Xvfb")
                .args([display.as_str(), "-noreset", "-nolisten", "tcp", "-screen", "0", screen])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("Xvfb is installed (scripts/setup installs xvfb)");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if Command::new("xdotool")
                    .args(["getmouselocation"])
                    .env("DISPLAY", &display)
                    .output()
                    .is_ok_and(|o| o.status.success())
                {
                    return Self { child, display };
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("could not start Xvfb");
    }

    pub fn input(&self, n: u32) {
        let out = Command::new("xdotool")
            .args(["mousemove", &(100 + n % 300).to_string(), &(100 + n % 200).to_string()])
            .env("DISPLAY", &self.display)
            .output()
            .unwrap();
        assert!(out.status.success());
    }
}

/// A lock left by an X server that is gone (killed outright, it cannot
/// remove its lock): removed with its socket, so its number can be used.
/// Without this the numbers ran out on a machine that ran the tests often.
fn stale_lock_removed(lock: &str, number: &str) -> bool {
    let pid = std::fs::read_to_string(lock).ok().and_then(|p| p.trim().parse::<u32>().ok());
    let alive = pid.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
    if alive || pid.is_none() {
        return false;
    }
    let _ = std::fs::remove_file(format!("/tmp/.X11-unix/X{number}"));
    std::fs::remove_file(lock).is_ok()
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        // SIGTERM first: Xvfb then removes its lock and socket itself.
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
