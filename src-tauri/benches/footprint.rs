//! The tray app's footprint (issues 6 and 18): memory with the dashboard
//! never opened, open, and after 1 and 5 open/close cycles, and CPU while
//! idle, for the tray process and every process it started (the dashboard
//! process and WebKit's web and network processes included).
//!
//! `cargo bench -p idlemesh-app --bench footprint` (needs Xvfb and D-Bus, as
//! the end-to-end tests do). Figures go to docs/benchmarks.md.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dashboard::{close_dashboard, is_dashboard};

#[path = "../../tests/common/dashboard.rs"]
mod dashboard;
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
        names.push(format!("{} {}: RSS {:.1} PSS {:.1}", comm(pid), pid, r as f64 / 1024.0, p as f64 / 1024.0));
    }
    println!(
        "{label:<30} RSS {:>6.1} MiB   PSS {:>6.1} MiB   tray alone RSS {:>5.1} MiB   [{}]",
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

/// RSS of the tray and everything it started, in KiB.
fn tree_rss(root: u32) -> u64 {
    tree(root).iter().map(|&p| memory(p).0).sum()
}

/// CPU of the whole tree over `span`, as % of one core.
fn idle_cpu(label: &str, root: u32, span: Duration) {
    let hz = 100.0; // USER_HZ on Linux
    let before: u64 = tree(root).iter().map(|&p| cpu_ticks(p)).sum();
    let t0 = Instant::now();
    std::thread::sleep(span);
    let after: u64 = tree(root).iter().map(|&p| cpu_ticks(p)).sum();
    let pct = (after.saturating_sub(before)) as f64 / hz / t0.elapsed().as_secs_f64() * 100.0;
    println!("{label:<30} CPU {pct:.3} % of one core over {:.0} s", span.as_secs_f64());
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
    report("never opened (start)", pid);
    idle_cpu("idle, dashboard never opened", pid, Duration::from_secs(30));
    report("never opened (35 s)", pid);
    println!("  largest mappings (MiB): {}", largest_mappings(pid, 8));

    let never_opened = tree_rss(pid);
    let open_once = |cycle: usize| {
        // A second launch, as the menu entry does: the tray starts the dashboard.
        let mut second = Command::new(APP);
        env(&mut second);
        let status = second.arg("--dashboard").status().unwrap();
        assert!(status.success(), "the second launch hands over and exits");
        std::thread::sleep(Duration::from_secs(8));
        let dashboard = tree(pid).into_iter().skip(1).find(|&p| is_dashboard(p as i32));
        let dashboard = dashboard.expect("the tray started a dashboard process");
        if cycle == 1 {
            report("dashboard open", pid);
            idle_cpu("idle, dashboard open", pid, Duration::from_secs(10));
            println!("  dashboard process's largest mappings (MiB): {}", largest_mappings(dashboard, 8));
            for child in tree(dashboard).into_iter().skip(1) {
                println!("  {}'s largest mappings (MiB): {}", comm(child), largest_mappings(child, 8));
            }
        }
        assert!(close_dashboard(&x.display), "found the dashboard window");
        let deadline = Instant::now() + Duration::from_secs(20);
        while tree(pid).contains(&dashboard) {
            assert!(Instant::now() < deadline, "the dashboard process ended when its window closed");
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(3));
    };
    open_once(1);
    report("after 1 open/close", pid);
    let after_one = tree_rss(pid);
    for cycle in 2..=5 {
        open_once(cycle);
    }
    report("after 5 open/close", pid);
    let after_five = tree_rss(pid);
    println!("  largest mappings (MiB): {}", largest_mappings(pid, 8));
    let left: Vec<String> = tree(pid).iter().skip(1).map(|&p| comm(p)).collect();
    println!("processes left beside the tray after closing: {left:?}");
    let diff = |kib: u64| (kib as f64 - never_opened as f64) / 1024.0;
    println!(
        "after closing vs never opened: {:+.1} MiB after 1, {:+.1} MiB after 5 (target: within 5 MiB); \
         never opened {:.1} MiB (target: <= 80 MB = 76.3 MiB)",
        diff(after_one),
        diff(after_five),
        never_opened as f64 / 1024.0,
    );

    // SAFETY: signalling our own children.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let _ = app.wait();
    drop(bus);
}
