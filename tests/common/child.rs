//! Stopping a child process the way a session ends it.

use std::process::Child;
use std::time::{Duration, Instant};

/// SIGTERM, up to 5 s to exit on its own (a compositor takes its Xwayland
/// and clients down with it), then SIGKILL; reaped either way.
pub fn terminate(child: &mut Child) {
    if child.try_wait().ok().flatten().is_none() {
        // SAFETY: kill(2) on our own child, not yet reaped, so its pid is not reused.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}
