//! Agent figures (DESIGN §7, issue 5), printed, not asserted: the machine is
//! shared and noisy, so read them as a distribution, and the interference
//! figure as a ratio within one run.
//!
//! `cargo bench --bench agent [input|programs|idle|duty|interference|gpu_memory|gpu_busy]`
//! (release profile; needs Xvfb, xdotool, KWin and Mutter for `input`,
//! Mesa's lavapipe for `gpu_memory`, umockdev for `gpu_busy`, the kernel
//! keyring for all).
//!
//! Everything runs for real: a `pool serve` process, the `idlemesh agent`
//! daemon with its settings file, its workers, and Xvfb with XTEST input
//! (from the bench's own connection, and from xdotool).

#[allow(dead_code, reason = "shared with the end-to-end tests; the benchmarks use part of it")]
#[path = "../../../tests/e2e/harness.rs"]
mod harness;

#[allow(dead_code, reason = "shared with the end-to-end tests; the benchmarks use part of it")]
#[path = "../../../tests/e2e/agent_process.rs"]
mod agent_process;

use std::path::Path;
use std::time::{Duration, Instant};

use agent_process::{AgentProcess, Kwin, Mutter, Xvfb, gpu_workers_of, proc_state, write_settings};
use harness::{OperatorHttp, PoolProcess, submit_wgsl_mandelbrot};
use serde_json::{Value, json};

fn main() {
    let filter = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let want = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("machine: {cores} cores, {}", cpu_model());
    let tmp = tempfile::tempdir().unwrap();
    let pool = PoolProcess::start(&tmp.path().join("pool"));
    let op = OperatorHttp::new(&pool.url, &pool.token);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let long_job = || {
        rt.block_on(op.mandelbrot_job(json!({
            "name": "bench", "params": {"width": 1280, "height": 960, "max_iter": 100000, "center_re": -0.2, "center_im": 0.0, "span": 0.4},
            "split": {"kind": "tiles", "width": 1280, "height": 960, "tile_width": 320, "tile_height": 240},
            "combiner": {"kind": "png_tiles"}, "lease_ms": 600000,
        })))
    };
    if want("input") {
        long_job();
        input_to_stop(&tmp.path().join("input"), &pool.url);
    }
    if want("programs") {
        exclusive_programs_scan();
    }
    if want("idle") {
        let empty = PoolProcess::start(&tmp.path().join("empty-pool"));
        idle_overhead(&tmp.path().join("idle"), &empty.url);
    }
    if want("duty") {
        long_job();
        duty_cycle(&tmp.path().join("duty"), &pool.url);
    }
    if want("interference") {
        long_job();
        interference(&tmp.path().join("interference"), &pool.url, cores);
    }
    if want("gpu_memory") {
        gpu_memory(&tmp.path().join("gpu-memory"));
    }
    if want("gpu_busy") {
        gpu_busy_crossing(&tmp.path().join("gpu-busy"));
    }
}

/// Another program's GPU load crossing `max_other_gpu_percent` → GPU work
/// stopped (the decision every GPU worker is frozen by), and the load
/// ending → GPU work allowed again: the governor's grace (2 s) and
/// hysteresis (10 s) plus the watcher's once-a-second reading. The card is
/// amdgpu's sysfs under umockdev, read by the agent's real sensor.
fn gpu_busy_crossing(dir: &Path) {
    write_settings(dir, "gpu_enabled = true\nmax_other_gpu_percent = 30\n");
    let (mut agent, bed) = AgentProcess::start_under_umockdev(dir, "amdgpu.umockdev", &[("IDLEMESH_LOG", "warn")]);
    let busy = |percent: &str| {
        std::fs::write(bed.join("sys/class/drm/card0/device/gpu_busy_percent"), percent).unwrap();
    };
    let gpu_runs = |agent: &AgentProcess| agent.status()["decision"]["action"]["gpu"] == true;
    agent.wait_for("GPU work allowed", Duration::from_secs(30), |s| s["decision"]["action"]["gpu"] == true);
    const CROSSINGS: usize = 8;
    let (mut stop, mut back) = (Vec::new(), Vec::new());
    for n in 0..CROSSINGS {
        // At a different point of the watcher's one-second reading each time.
        std::thread::sleep(Duration::from_millis(n as u64 * 1000 / CROSSINGS as u64));
        busy("63");
        let t0 = Instant::now();
        while gpu_runs(&agent) {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.push(t0.elapsed());
        busy("2");
        let t0 = Instant::now();
        while !gpu_runs(&agent) {
            std::thread::sleep(Duration::from_millis(20));
        }
        back.push(t0.elapsed());
    }
    agent.stop();
    stop.sort();
    back.sort();
    let s = |d: &[Duration], p: f64| percentile(d, p).as_secs_f64();
    println!(
        "another program's GPU load crosses the limit → GPU work stopped ({CROSSINGS} crossings): p50 {:.2} s, \
         p95 {:.2} s (grace 2 s); the load ends → allowed again: p50 {:.1} s, p95 {:.1} s (hysteresis 10 s)",
        s(&stop, 0.5),
        s(&stop, 0.95),
        s(&back, 0.5),
        s(&back, 0.95),
    );
}

/// What a GPU worker holds, warm between tasks, running one and frozen in
/// one (lavapipe: the device's memory is the worker's own, so its RSS and
/// PSS are the figure), and how soon a GPU pause ends an idle one.
fn gpu_memory(dir: &Path) {
    let pool = PoolProcess::start(&dir.join("pool"));
    let submit = |max_iter: u32, tile: &str| {
        let params = format!(
            r#"{{"width":256,"height":256,"max_iter":{max_iter},"center_re":-0.2,"center_im":0.0,"span":0.4}}"#
        );
        let out = submit_wgsl_mandelbrot(&pool, &params, "256x256", tile);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let device = dir.join("device");
    write_settings(&device, "cpu_duty_cycle_percent = 100\ncpu_cores = 1\ngpu_enabled = true\n");
    let mut agent = AgentProcess::start(&device, Some(&pool.url), &[("IDLEMESH_LOG", "warn")]);
    let ctl = |args: &[&str]| assert!(agent.ctl(args).status.success(), "{args:?}");
    let mut ended = Vec::new();
    for round in 1..=5 {
        submit(100, "64x64");
        let s = agent.wait_for("the GPU tasks", Duration::from_secs(120), |s| {
            s["scheduler"]["summary"]["tasks_finished"] == 16 * round
        });
        let agent_pid = s["agent"]["pid"].as_u64().unwrap();
        let idle = *gpu_workers_of(agent_pid).first().expect("a warm GPU worker");
        if round == 1 {
            let (rss, pss) = memory_kib(idle);
            println!("GPU worker, warm between tasks: RSS {:.1} MiB, PSS {:.1} MiB", mib(rss), mib(pss));
        }
        let t0 = Instant::now();
        ctl(&["pause", "--gpu"]);
        while proc_state(idle).is_some_and(|(state, _)| state != 'Z') {
            std::thread::sleep(Duration::from_millis(1));
        }
        ended.push(t0.elapsed());
        ctl(&["resume", "--gpu"]);
    }
    ended.sort();
    println!(
        "GPU pause → the idle GPU worker ended (5 pauses): p50 {:.0} ms, max {:.0} ms; it then holds nothing",
        ms(percentile(&ended, 0.5)),
        ms(*ended.last().unwrap()),
    );
    submit(2_000_000, "256x256");
    let s = agent.wait_for("a GPU task", Duration::from_secs(120), |s| {
        s["workers"]["gpu_pids"].as_array().is_some_and(|g| g.len() == 1)
    });
    let busy = s["workers"]["gpu_pids"][0].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let (rss, pss) = memory_kib(busy);
    println!("GPU worker, running a 256×256 tile: RSS {:.1} MiB, PSS {:.1} MiB", mib(rss), mib(pss));
    ctl(&["pause", "--gpu"]);
    std::thread::sleep(Duration::from_secs(1));
    let (rss, pss) = memory_kib(busy);
    let bound = agent.status()["scheduler"]["current_tasks"][0]["max_memory_bytes"].as_u64().unwrap_or(0);
    println!(
        "GPU worker, frozen in that task: RSS {:.1} MiB, PSS {:.1} MiB (its buffers are bounded by the task's \
         max_memory_bytes, {} MiB, shown in the status)",
        mib(rss),
        mib(pss),
        bound >> 20
    );
    agent.stop();
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// RSS and PSS (KiB) of `pid`.
fn memory_kib(pid: u64) -> (u64, u64) {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        rollup
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// CPU time of every thread of a process, in ns (schedstat: finer than ticks).
fn cpu_ns(pid: u64) -> Option<u64> {
    let mut total = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let s = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
        total += s.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

fn rss_kib(pid: u64) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

fn worker_pids(s: &Value) -> Vec<u64> {
    s["workers"]["pids"].as_array().map(|a| a.iter().filter_map(Value::as_u64).collect()).unwrap_or_default()
}

/// Waits until the worker is computing (not frozen, CPU time moving).
fn wait_computing(pid: u64) {
    loop {
        let a = cpu_ns(pid).unwrap_or(0);
        std::thread::sleep(Duration::from_millis(20));
        if proc_state(pid).is_some_and(|(s, _)| s != 'T') && cpu_ns(pid).unwrap_or(0) > a + 5_000_000 {
            return;
        }
    }
}

/// Input → all kernel CPU use stopped, under Xvfb with xdotool, then under
/// KWin (Wayland, ext-idle-notify) with KWin's fake input, then under Mutter
/// (GNOME's IdleMonitor) with its RemoteDesktop API.
fn input_to_stop(dir: &Path, pool: &str) {
    let x = Xvfb::start();
    // Input from a connection kept open (XTEST, as xdotool sends it): the
    // figure is the agent's own, from the request to the frozen worker.
    let xtest = XTest::connect(&x.display);
    let (p50, p95, max) = trials(&dir.join("x11-xtest"), pool, &[("DISPLAY", &x.display)], |n| xtest.motion(n));
    println!(
        "input → worker stopped (XTEST pointer motion under Xvfb, {TRIALS} trials): p50 {p50:.2} ms, p95 {p95:.2} ms, max {max:.2} ms"
    );
    // The method of the earlier figures: xdotool started for each input,
    // its own start-up included.
    let mut spawn = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        std::process::Command::new("xdotool").arg("getmouselocation").env("DISPLAY", &x.display).output().unwrap();
        spawn.push(t.elapsed());
    }
    spawn.sort();
    let (p50, p95, max) = trials(&dir.join("x11"), pool, &[("DISPLAY", &x.display)], |n| x.input(n));
    println!(
        "input → worker stopped (xdotool under Xvfb, {TRIALS} trials): p50 {p50:.1} ms, p95 {p95:.1} ms, max {max:.1} ms; \
         of which starting xdotool alone: p50 {:.1} ms",
        ms(percentile(&spawn, 0.5)),
    );
    // The focused window going full screen (EWMH properties as a window
    // manager sets them), and a program of `exclusive_programs` starting.
    let screen = FullScreen::new(&x.display);
    let (p50, p95, max) = trials_of(
        &dir.join("fullscreen"),
        pool,
        &[("DISPLAY", &x.display)],
        "",
        |_| screen.set(true),
        || screen.set(false),
    );
    println!("full screen → worker stopped ({TRIALS} trials): p50 {p50:.2} ms, p95 {p95:.2} ms, max {max:.2} ms");
    let game = dir.join("imbench-game");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy("/bin/sleep", &game).unwrap();
    let mut child: Option<std::process::Child> = None;
    let child = std::cell::RefCell::new(&mut child);
    let (p50, p95, max) = trials_of(
        &dir.join("exclusive"),
        pool,
        &[],
        "exclusive_programs = [\"imbench-game\"]\n",
        |_| **child.borrow_mut() = Some(std::process::Command::new(&game).arg("60").spawn().unwrap()),
        || {
            if let Some(mut c) = child.borrow_mut().take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        },
    );
    println!(
        "exclusive program started → worker stopped ({TRIALS} trials, a /proc scan a second): p50 {p50:.0} ms, p95 {p95:.0} ms, max {max:.0} ms"
    );
    drop(x);
    let mut kwin = Kwin::start();
    let socket = kwin.socket.display().to_string();
    let (p50, p95, max) = trials(&dir.join("wayland"), pool, &[("WAYLAND_DISPLAY", &socket)], |n| kwin.input(n));
    println!(
        "input → worker stopped (KWin fake input, Wayland ext-idle-notify, {TRIALS} trials): \
         p50 {p50:.1} ms, p95 {p95:.1} ms, max {max:.1} ms"
    );
    drop(kwin);
    let mut mutter = Mutter::start();
    let (socket, bus) = (mutter.socket.display().to_string(), mutter.bus.address.clone());
    let session = [("WAYLAND_DISPLAY", socket.as_str()), ("DBUS_SESSION_BUS_ADDRESS", bus.as_str())];
    let (p50, p95, max) = trials(&dir.join("mutter"), pool, &session, |n| mutter.input(n));
    println!(
        "input → worker stopped (Mutter RemoteDesktop pointer motion, IdleMonitor watches, {TRIALS} trials): \
         p50 {p50:.1} ms, p95 {p95:.1} ms, max {max:.1} ms"
    );
}

const TRIALS: usize = 60;

/// A window, focused, whose `_NET_WM_STATE` says full screen or not.
struct FullScreen {
    conn: x11rb::rust_connection::RustConnection,
    win: u32,
    state: u32,
    full: u32,
}

impl FullScreen {
    fn new(display: &str) -> Self {
        use x11rb::connection::Connection as _;
        use x11rb::protocol::xproto::{AtomEnum, ConnectionExt as _, CreateWindowAux, PropMode, WindowClass};
        use x11rb::wrapper::ConnectionExt as _;
        let (conn, screen) = x11rb::rust_connection::RustConnection::connect(Some(display)).unwrap();
        let root = conn.setup().roots[screen].root;
        let atom = |name: &[u8]| conn.intern_atom(false, name).unwrap().reply().unwrap().atom;
        let (active, state, full) =
            (atom(b"_NET_ACTIVE_WINDOW"), atom(b"_NET_WM_STATE"), atom(b"_NET_WM_STATE_FULLSCREEN"));
        let win = conn.generate_id().unwrap();
        conn.create_window(0, win, root, 0, 0, 640, 480, 0, WindowClass::INPUT_OUTPUT, 0, &CreateWindowAux::new())
            .unwrap();
        conn.change_property8(PropMode::REPLACE, win, AtomEnum::WM_CLASS, AtomEnum::STRING, b"game\0Game\0").unwrap();
        conn.change_property32(PropMode::REPLACE, root, active, AtomEnum::WINDOW, &[win]).unwrap();
        conn.flush().unwrap();
        Self { conn, win, state, full }
    }

    fn set(&self, on: bool) {
        use x11rb::connection::Connection as _;
        use x11rb::protocol::xproto::{AtomEnum, PropMode};
        use x11rb::wrapper::ConnectionExt as _;
        let atoms: &[u32] = if on { &[self.full] } else { &[] };
        self.conn.change_property32(PropMode::REPLACE, self.win, self.state, AtomEnum::ATOM, atoms).unwrap();
        self.conn.flush().unwrap();
    }
}

/// Pointer motion sent through XTEST on a connection kept open.
struct XTest {
    conn: x11rb::rust_connection::RustConnection,
    root: u32,
}

impl XTest {
    fn connect(display: &str) -> Self {
        let (conn, screen) = x11rb::rust_connection::RustConnection::connect(Some(display)).unwrap();
        let root = x11rb::connection::Connection::setup(&conn).roots[screen].root;
        Self { conn, root }
    }

    fn motion(&self, n: u32) {
        use x11rb::connection::Connection as _;
        use x11rb::protocol::xtest::ConnectionExt as _;
        let (x, y) = (100 + (n % 300) as i16, 100 + (n % 200) as i16);
        self.conn.xtest_fake_input(x11rb::protocol::xproto::MOTION_NOTIFY_EVENT, 0, 0, self.root, x, y, 0).unwrap();
        self.conn.flush().unwrap();
    }
}

/// p50, p95 and max in ms of input → the worker frozen.
fn trials(dir: &Path, pool: &str, session: &[(&str, &str)], input: impl FnMut(u32)) -> (f64, f64, f64) {
    trials_of(dir, pool, session, "", input, || {})
}

/// The same for any event `cause` stops the worker with, `undo` ending it
/// (idleness ends an input by itself), with `settings` added.
fn trials_of(
    dir: &Path,
    pool: &str,
    session: &[(&str, &str)],
    settings: &str,
    mut cause: impl FnMut(u32),
    mut undo: impl FnMut(),
) -> (f64, f64, f64) {
    write_settings(dir, &format!("idle_minutes = 0.01\ncpu_duty_cycle_percent = 100\ncpu_cores = 1\n{settings}"));
    let mut env = session.to_vec();
    env.push(("IDLEMESH_LOG", "warn"));
    let mut agent = AgentProcess::start(dir, Some(pool), &env);
    let s = agent.wait_for("a worker", Duration::from_secs(60), |s| !worker_pids(s).is_empty() && s["paused"] == false);
    let pid = worker_pids(&s)[0];
    let mut lat = Vec::with_capacity(TRIALS);
    let mut jitter = 0x2545_f491_4f6c_dd1du64;
    for trial in 0..TRIALS {
        wait_computing(pid);
        jitter ^= jitter << 13;
        jitter ^= jitter >> 7;
        jitter ^= jitter << 17;
        // Land at a random point of the watcher's polling period.
        std::thread::sleep(Duration::from_micros(jitter % 30_000));
        let t0 = Instant::now();
        cause(trial as u32);
        loop {
            if proc_state(pid).is_some_and(|(s, _)| s == 'T') {
                break;
            }
            if t0.elapsed() > Duration::from_secs(5) {
                panic!("not frozen 5 s after input (trial {trial}): {:#}", agent.status());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        lat.push(t0.elapsed());
        undo();
    }
    agent.stop();
    lat.sort();
    (ms(percentile(&lat, 0.5)), ms(percentile(&lat, 0.95)), ms(*lat.last().unwrap()))
}

/// What looking for the user's `exclusive_programs` costs: one scan of
/// `/proc/*/comm`, done once a second while any is listed.
fn exclusive_programs_scan() {
    let names: Vec<String> = ["steam", "obs", "no-such-game"].map(String::from).to_vec();
    let processes = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .count();
    const SCANS: u32 = 500;
    let t = Instant::now();
    for _ in 0..SCANS {
        assert!(idlemesh_agent::running_program(&names).is_none());
    }
    let each = t.elapsed() / SCANS;
    println!(
        "exclusive_programs scan ({} names, {processes} processes): {:.0} µs each, {:.3} % of one core at one a second",
        names.len(),
        each.as_secs_f64() * 1e6,
        each.as_secs_f64() * 100.0
    );
    // The GPU's clients, read on the same tick while GPU work is on.
    let descriptors: usize = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_dir(e.path().join("fd")).ok())
        .map(|fds| fds.count())
        .sum();
    let proc_root = Path::new("/proc");
    let t = Instant::now();
    let mut clients = 0;
    for _ in 0..SCANS {
        clients = idlemesh_agent::scan_gpu_clients(proc_root).len();
    }
    let each = t.elapsed() / SCANS;
    // A full scan every 5 s (the agent reads only the descriptors it found in between).
    println!(
        "GPU clients full scan (/proc/*/fd, {descriptors} descriptors, {clients} DRM clients): {:.0} µs each, \
         {:.3} % of one core at one every 5 s",
        each.as_secs_f64() * 1e6,
        each.as_secs_f64() * 100.0 / 5.0
    );
}

/// The headless agent watching, enrolled in a pool with no work.
fn idle_overhead(dir: &Path, pool: &str) {
    idle_overhead_with(&dir.join("defaults"), pool, "", "defaults");
    // Every watcher on: the GPU's counters and clients, a program list.
    let all = "gpu_enabled = true\nexclusive_programs = [\"steam\", \"obs\"]\n";
    idle_overhead_with(&dir.join("watchers"), pool, all, "GPU work and exclusive_programs on");
}

fn idle_overhead_with(dir: &Path, pool: &str, settings: &str, label: &str) {
    const WINDOW: Duration = Duration::from_secs(60);
    write_settings(dir, settings);
    let agent = AgentProcess::start(dir, Some(pool), &[("IDLEMESH_LOG", "warn")]);
    let s = agent.wait_for("enrolment", Duration::from_secs(30), |s| s["state"] == "waiting_for_work");
    let pid = s["agent"]["pid"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let (c0, t0) = (cpu_ns(pid).unwrap(), Instant::now());
    let mut peak_rss = 0;
    while t0.elapsed() < WINDOW {
        std::thread::sleep(Duration::from_secs(1));
        peak_rss = peak_rss.max(rss_kib(pid).unwrap_or(0));
    }
    let cpu = (cpu_ns(pid).unwrap() - c0) as f64 / t0.elapsed().as_nanos() as f64 * 100.0;
    println!(
        "headless agent watching ({label}), no work, {} s: {cpu:.3} % of one core, RSS {:.1} MB (peak)",
        WINDOW.as_secs(),
        peak_rss as f64 * 1024.0 / 1e6
    );
}

/// Configured duty cycle vs the worker's measured CPU over 10 s.
fn duty_cycle(dir: &Path, pool: &str) {
    write_settings(dir, "cpu_duty_cycle_percent = 100\ncpu_cores = 1\n");
    let agent = AgentProcess::start(dir, Some(pool), &[("IDLEMESH_LOG", "warn")]);
    for duty in [25, 50, 75, 100] {
        let out = agent.ctl(&["settings", "set", "cpu_duty_cycle_percent", &duty.to_string()]);
        assert!(out.status.success());
        // A task that ends inside the window would understate the share
        // (its worker gone, the next one not started): measured again then.
        let mut measured = None;
        for attempt in 1..=3 {
            let s = agent.wait_for("a worker", Duration::from_secs(60), |s| !worker_pids(s).is_empty());
            let pid = worker_pids(&s)[0];
            std::thread::sleep(Duration::from_secs(1));
            let (c0, t0) = (cpu_ns(pid).unwrap(), Instant::now());
            std::thread::sleep(Duration::from_secs(10));
            match cpu_ns(pid) {
                Some(c1) => {
                    measured = Some((c1 - c0) as f64 / t0.elapsed().as_nanos() as f64 * 100.0);
                    break;
                }
                None => {
                    println!("duty cycle {duty:3} %: the task ended inside the window (try {attempt}); measuring again")
                }
            }
        }
        let Some(measured) = measured else {
            println!("duty cycle {duty:3} %: RAN DRY: no task lasted 10 s; give the bench a longer job");
            continue;
        };
        println!(
            "duty cycle {duty:3} %: worker used {measured:5.1} % of a core over 10 s ({:+.1} points)",
            measured - f64::from(duty)
        );
    }
}

/// A CPU-bound foreground program on every core, alone and beside the agent.
fn interference(dir: &Path, pool: &str, cores: usize) {
    fn foreground(threads: usize) -> Duration {
        let t = Instant::now();
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                std::thread::spawn(move || {
                    // Hashing: real, unvectorisable work of a fixed size (~2 s here).
                    let mut block = vec![i as u8; 1 << 20];
                    for _ in 0..4000 {
                        let h = idlemesh_protocol::Sha256::of(&block);
                        block[..32].copy_from_slice(&h.0);
                    }
                    std::hint::black_box(block[0])
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        t.elapsed()
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let alone_a: Vec<_> = (0..3).map(|_| foreground(cores)).collect();
    write_settings(dir, &format!("cpu_duty_cycle_percent = 100\ncpu_cores = {cores}\n"));
    let agent = AgentProcess::start(dir, Some(pool), &[("IDLEMESH_LOG", "warn")]);
    let before = agent.wait_for("workers", Duration::from_secs(60), |s| worker_pids(s).len() == cores);
    let beside: Vec<_> = (0..3).map(|_| foreground(cores)).collect();
    let s = agent.status();
    // Workers whose tasks ended meanwhile would flatter the figure.
    if worker_pids(&before).iter().any(|&pid| cpu_ns(pid).is_none()) || worker_pids(&s).len() < cores {
        println!("interference: a worker's task ended during the foreground runs: the figure below is too kind");
    }
    drop(agent);
    let alone_b: Vec<_> = (0..3).map(|_| foreground(cores)).collect();
    let alone = median([alone_a, alone_b].concat());
    let with = median(beside);
    println!(
        "interference: {cores}-thread CPU-bound program {:.0} ms alone, {:.0} ms beside {} agent workers at 100 % duty: {:+.1} %",
        ms(alone),
        ms(with),
        worker_pids(&s).len(),
        (with.as_secs_f64() / alone.as_secs_f64() - 1.0) * 100.0
    );
}
