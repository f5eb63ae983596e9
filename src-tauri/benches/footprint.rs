//! The tray app's footprint (issue 6): memory with the dashboard closed,
//! open, and closed again, and CPU while idle, for the app and every process
//! it started (WebKit's web and network processes included).
//!
//! `cargo bench -p idlemesh-app --bench footprint` (needs Xvfb and D-Bus, as
//! the end-to-end tests do). Figures go to docs/benchmarks.md.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use x11rb::connection::Connection as _;
use x11rb::protocol::xproto::{AtomEnum, ClientMessageEvent, ConnectionExt as _, EventMask};

#[path = "../../tests/common/session_bus.rs"]
mod session_bus;
#[path = "../../tests/common/xvfb.rs"]
#[allow(dead_code, reason = "shared with the tests, which use all of it")]
mod xvfb;

const APP: &str = env!("CARGO_BIN_EXE_idlemesh-app");

/// This process and its descendants.
fn tree(root: u32) -> Vec<u32> {
    let mut all = vec![root];
    let mut i = 0;
    while i < all.len() {
        let pid = all[i];
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
            let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            all.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
        }
        i += 1;
    }
    all
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string()
}

/// (RSS, PSS) in KiB from smaps_rollup.
fn memory(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

/// utime + stime in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest: Vec<&str> = stat.rsplit(") ").next().unwrap_or("").split_whitespace().collect();
    rest.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + rest.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

fn report(label: &str, root: u32) {
    let pids = tree(root);
    let (mut rss, mut pss) = (0, 0);
    let mut names = Vec::new();
    for &pid in &pids {
        let (r, p) = memory(pid);
        rss += r;
        pss += p;
        names.push(format!("{} {} MiB", comm(pid), r / 1024));
    }
    println!(
        "{label:<28} RSS {:>6.1} MiB   PSS {:>6.1} MiB   app alone RSS {:>5.1} MiB   [{}]",
        rss as f64 / 1024.0,
        pss as f64 / 1024.0,
        memory(root).0 as f64 / 1024.0,
        names.join(", ")
    );
}

/// The process's largest mappings by RSS, named by file (or [heap], [anon]):
/// where the memory is, so a change in the totals can be traced.
fn largest_mappings(pid: u32, n: usize) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut by_name: std::collections::HashMap<String, u64> = Default::default();
    let mut current = String::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            let name = words.nth(4).unwrap_or("[anon]");
            current = name.rsplit('/').next().unwrap_or(name).to_string();
        } else if first == "Rss:" {
            *by_name.entry(current.clone()).or_default() +=
                words.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    let mut all: Vec<_> = by_name.into_iter().collect();
    all.sort_by_key(|a| std::cmp::Reverse(a.1));
    all.iter().take(n).map(|(name, kib)| format!("{name} {:.1}", *kib as f64 / 1024.0)).collect::<Vec<_>>().join(", ")
}

/// CPU of the whole tree over `span`, as % of one core.
fn idle_cpu(label: &str, root: u32, span: Duration) {
    let hz = 100.0; // USER_HZ on Linux
    let before: u64 = tree(root).iter().map(|&p| cpu_ticks(p)).sum();
    let t0 = Instant::now();
    std::thread::sleep(span);
    let after: u64 = tree(root).iter().map(|&p| cpu_ticks(p)).sum();
    let pct = (after.saturating_sub(before)) as f64 / hz / t0.elapsed().as_secs_f64() * 100.0;
    println!("{label:<28} CPU {pct:.3} % of one core over {:.0} s", span.as_secs_f64());
}

/// Asks the dashboard window to close, as a window manager's close button would.
fn close_dashboard(display: &str) -> bool {
    let Ok((conn, screen)) = x11rb::connect(Some(display)) else { return false };
    let root = conn.setup().roots[screen].root;
    let atom = |name: &str| conn.intern_atom(false, name.as_bytes()).unwrap().reply().unwrap().atom;
    let (protocols, delete) = (atom("WM_PROTOCOLS"), atom("WM_DELETE_WINDOW"));
    let tree = conn.query_tree(root).unwrap().reply().unwrap();
    let mut found = false;
    for window in tree.children {
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

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for the list of benchmarks
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let x = xvfb::Xvfb::with_screen("1280x1024x24");
    let run = root.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    // One session bus for both launches: the second finds the first through it.
    let bus = session_bus::SessionBus::start();
    let address = bus.address.clone();
    let env = |cmd: &mut Command| {
        let p = |s: &str| root.join(s);
        cmd.env("DISPLAY", &x.display)
            .env("DBUS_SESSION_BUS_ADDRESS", &address)
            .env("HOME", p("home"))
            .env("XDG_RUNTIME_DIR", &run)
            .env("XDG_CONFIG_HOME", p("home/.config"))
            .env("XDG_DATA_HOME", p("home/.local/share"))
            .env("IDLEMESH_DATA_DIR", p("data"))
            .env("IDLEMESH_CONFIG_DIR", p("config"))
            .env("IDLEMESH_POLICY", p("policy.toml"))
            .env("IDLEMESH_CONTROL_SOCKET", p("agent.sock"))
            .env("IDLEMESH_KEYRING", "keyutils")
            .env("WEBKIT_DISABLE_DMABUF_RENDERER", "1")
            .env("NO_AT_BRIDGE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
    };
    // SAFETY: KEYCTL_JOIN_SESSION_KEYRING with no name: the app's device key stays in a private keyring.
    unsafe { libc::syscall(libc::SYS_keyctl, 1, 0usize, 0usize, 0usize, 0usize) };
    let mut cmd = Command::new(APP);
    env(&mut cmd);
    let mut app = cmd.spawn().unwrap();
    let pid = app.id();
    let socket = root.join("agent.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !Path::new(&socket).exists() {
        assert!(Instant::now() < deadline, "the app's agent did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("idlemesh-app footprint (release, Xvfb, no pool configured, so no workers):");
    std::thread::sleep(Duration::from_secs(5));
    report("dashboard closed (start)", pid);
    idle_cpu("idle, dashboard closed", pid, Duration::from_secs(30));
    report("dashboard closed (35 s)", pid);
    println!("  largest mappings (MiB): {}", largest_mappings(pid, 8));

    let mut second = Command::new(APP);
    env(&mut second);
    let status = second.arg("--dashboard").status().unwrap();
    assert!(status.success(), "the second launch hands over and exits");
    std::thread::sleep(Duration::from_secs(8));
    report("dashboard open", pid);
    idle_cpu("idle, dashboard open", pid, Duration::from_secs(10));

    assert!(close_dashboard(&x.display), "found the dashboard window");
    std::thread::sleep(Duration::from_secs(5));
    report("dashboard closed again", pid);
    println!("  largest mappings (MiB): {}", largest_mappings(pid, 8));
    let left: Vec<String> = tree(pid).iter().map(|&p| comm(p)).filter(|c| c.starts_with("WebKit")).collect();
    println!("WebKit processes left after closing: {left:?}");

    // SAFETY: signalling our own children.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let _ = app.wait();
    drop(bus);
}
