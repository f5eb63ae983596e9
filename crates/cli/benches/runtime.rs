//! Runtime figures (DESIGN §7, issue 3), printed, not asserted: this machine is
//! shared and noisy, so compare the ratios within one run.
//!
//! `cargo bench -p idlemesh-cli --bench runtime [start|throughput [KERNEL]|compile|pause|lockdown]`
//! (release profile; `lockdown` also needs `cargo build --release --examples -p idlemesh-cli`).

use std::time::{Duration, Instant};

use idlemesh_kernel_mandelbrot as mandelbrot;
use idlemesh_runtime::{
    NoEvents, RunLimits, Sandbox, SandboxConfig, Status, WorkRequest, WorkerCommand, WorkerProcess,
};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let filter = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let want = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    println!("machine: {} cores, {}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), cpu_model());
    if want("start") {
        warm_start();
    }
    if want("throughput") {
        // `-- throughput matmul`: only the kernels whose name contains the word.
        throughput(std::env::args().nth(2).filter(|a| !a.starts_with('-')).as_deref());
    }
    if want("compile") {
        compile_and_load();
    }
    if want("pause") {
        #[cfg(target_os = "linux")]
        pause_latency();
        #[cfg(not(target_os = "linux"))]
        println!("pause: measured on Linux only (it watches the worker's threads in /proc)");
    }
    if want("lockdown") {
        lockdown_cost();
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// Instantiate + first call of a trivial kernel, with the component already
/// prepared (the state of a warm worker).
fn warm_start() {
    let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
    let kernel = idlemesh_kernels::HOSTILE;
    let sha = idlemesh_protocol::Sha256::of(kernel);
    let limits = RunLimits::default();
    for _ in 0..200 {
        assert_eq!(sandbox.run(kernel, b"", "echo", None, &limits, NoEvents).status, Status::Ok);
    }
    let mut samples: Vec<Duration> = (0..5_000)
        .map(|_| {
            let t = Instant::now();
            let o = sandbox.run_known(sha, b"", b"", "echo", None, &limits, NoEvents);
            let d = t.elapsed();
            debug_assert_eq!(o.status, Status::Ok);
            d
        })
        .collect();
    samples.sort();
    println!(
        "warm start (WASI context + store + instantiate + call `run`), 5000 runs: p50 {:.1} µs, p99 {:.1} µs  (target p50 <= 50, p99 <= 250)",
        micros(percentile(&samples, 0.5)),
        micros(percentile(&samples, 0.99))
    );
}

/// Runs of the throughput bench: in each, every kernel runs once natively
/// and once in each sandbox flavour, the order alternating between runs, so
/// a change in the machine's load hits both sides of a ratio alike.
const RUNS: usize = 7;

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn spread(values: &[f64]) -> (f64, f64) {
    values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(*v), hi.max(*v)))
}

fn timed(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

/// How busy the rest of the machine was between two readings: the share of
/// all CPUs' time that went to processes other than this one.
struct MachineLoad {
    busy: u64,
    total: u64,
    ours: u64,
}

impl MachineLoad {
    fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
        // user nice system idle iowait irq softirq steal: idle and iowait are not busy.
        let total: u64 = cpu.iter().take(8).sum();
        let busy = total - cpu.get(3)? - cpu.get(4)?;
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        let fields: Vec<&str> = own.rsplit_once(')')?.1.split_whitespace().collect();
        // utime and stime are the 14th and 15th fields, 12th and 13th after the name.
        let ours = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(Self { busy, total, ours })
    }

    /// Percent of the machine's CPU time used by others since `self`.
    fn others_since(&self) -> Option<f64> {
        let now = Self::now()?;
        let total = now.total.checked_sub(self.total)?.max(1);
        let others = (now.busy - self.busy).saturating_sub(now.ours - self.ours);
        Some(others as f64 * 100.0 / total as f64)
    }
}

/// Each kernel in the sandbox vs the same Rust code native; metered vs not.
/// Every case runs at least 30 ms natively on a quiet machine here: a
/// task's fixed cost (instantiation, copying input and output across the
/// sandbox) is then a small part, as it is for real tasks, which run for
/// seconds, and the ratio is stable.
fn throughput(only: Option<&str>) {
    let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
    let with_epochs = Sandbox::new(SandboxConfig { epoch_interruption: true, ..SandboxConfig::default() }).unwrap();
    let plain = RunLimits::default();
    let metered = RunLimits { max_fuel: Some(u64::MAX / 4), ..RunLimits::default() };
    type Native = Box<dyn Fn()>;
    let mandel = r#"{"width":512,"height":384,"max_iter":512}"#;
    let p: mandelbrot::Params = serde_json::from_str(mandel).unwrap();
    let sha = r#"{"seed":"idlemesh","iterations":400000}"#;
    let mm = r#"{"n":1024,"seed":1}"#;
    let nb = r#"{"n":8192,"dt":0.01,"eps2":0.001}"#;
    let bodies: &'static [u8] = Box::leak(idlemesh_kernel_nbody::bodies(8192, 1).into_boxed_slice());
    // 196 MiB in (native: ~36 ms here; 6144² took 26–30, short of the 30 ms
    // every case needs): the kernel reads it a band at a time (`read-input`), so
    // it is never whole in the sandbox's memory.
    let ds = r#"{"width":7168,"height":7168,"factor":4}"#;
    let image: &'static [u8] =
        Box::leak((0..7168u32 * 7168 * 4).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect());
    // (name, kernel, input, params, the same code natively)
    type Case = (&'static str, &'static [u8], &'static [u8], &'static str, Native);
    let cases: Vec<Case> = vec![
        (
            "mandelbrot 512x384x512 (f64)",
            idlemesh_kernels::MANDELBROT,
            b"",
            mandel,
            Box::new(move || {
                std::hint::black_box(mandelbrot::render_tile(&p, p.tile_or_whole()).unwrap());
            }),
        ),
        (
            "sha256 chain 400k (integer)",
            idlemesh_kernels::SHA256CHAIN,
            b"",
            sha,
            Box::new(move || {
                std::hint::black_box(idlemesh_kernel_sha256chain::run(b"", sha).unwrap());
            }),
        ),
        (
            "matmul 1024 (f32, SIMD)",
            idlemesh_kernels::MATMUL,
            b"",
            mm,
            Box::new(move || {
                std::hint::black_box(idlemesh_kernel_matmul::run(mm).unwrap());
            }),
        ),
        (
            "n-body 8192, one step (f32, sqrt)",
            idlemesh_kernels::NBODY,
            bodies,
            nb,
            Box::new(move || {
                std::hint::black_box(idlemesh_kernel_nbody::run(bodies, nb).unwrap());
            }),
        ),
        (
            "downscale 7168x7168 RGBA by 4 (integer, 196 MiB in)",
            idlemesh_kernels::DOWNSCALE,
            image,
            ds,
            Box::new(move || {
                std::hint::black_box(idlemesh_kernel_downscale::run(image, ds).unwrap());
            }),
        ),
    ];
    let cases: Vec<Case> = cases.into_iter().filter(|(name, ..)| only.is_none_or(|o| name.contains(o))).collect();
    // Compiled, and the sandbox's memory slots warm, before any clock runs.
    for (_, kernel, input, params, _) in &cases {
        assert_eq!(sandbox.run(kernel, input, params, None, &plain, NoEvents).status, Status::Ok);
        assert_eq!(sandbox.run(kernel, input, params, None, &metered, NoEvents).status, Status::Ok);
        assert_eq!(with_epochs.run(kernel, input, params, None, &plain, NoEvents).status, Status::Ok);
    }
    let load = MachineLoad::now();
    // [case][run]: seconds natively, in the sandbox, metered, with epoch checks.
    let mut times = vec![[const { Vec::new() }; 4]; cases.len()];
    for run in 0..RUNS {
        for ((_, kernel, input, params, native_fn), t) in cases.iter().zip(&mut times) {
            let native = || timed(native_fn);
            let wasm =
                || timed(|| assert_eq!(sandbox.run(kernel, input, params, None, &plain, NoEvents).status, Status::Ok));
            let (n, w) = if run % 2 == 0 {
                let n = native();
                (n, wasm())
            } else {
                let w = wasm();
                (native(), w)
            };
            t[0].push(n);
            t[1].push(w);
            t[2].push(timed(|| {
                assert_eq!(sandbox.run(kernel, input, params, None, &metered, NoEvents).status, Status::Ok)
            }));
            t[3].push(timed(|| {
                assert_eq!(with_epochs.run(kernel, input, params, None, &plain, NoEvents).status, Status::Ok)
            }));
        }
    }
    let others = load.and_then(|l| l.others_since());
    let ms = |v: &[f64]| median(v) * 1e3;
    let mut per_kernel = Vec::new();
    let mut per_run = vec![Vec::new(); RUNS];
    for ((name, ..), t) in cases.iter().zip(&times) {
        let ratios: Vec<f64> = t[0].iter().zip(&t[1]).map(|(n, w)| n / w).collect();
        for (run, r) in ratios.iter().enumerate() {
            per_run[run].push(*r);
        }
        let (lo, hi) = spread(&ratios);
        let ratio = median(&ratios);
        per_kernel.push(ratio);
        println!(
            "{name}: native {:.1} ms, wasm {:.1} ms -> {ratio:.2}x native (runs {lo:.2}-{hi:.2}); fuel metering costs {:.2}x, epoch checks cost {:.2}x",
            ms(&t[0]),
            ms(&t[1]),
            median(&t[2]) / median(&t[1]),
            median(&t[3]) / median(&t[1]),
        );
    }
    match others {
        Some(pct) => println!("machine: other processes used {pct:.0} % of all CPUs during these {RUNS} runs"),
        None => println!("machine: how busy the rest of it was is unknown (no /proc/stat)"),
    }
    if per_kernel.len() < 2 {
        return;
    }
    let run_medians: Vec<f64> = per_run.iter().map(|r| median(r)).collect();
    let (lo, hi) = spread(&run_medians);
    let (lowest, _) = spread(&per_kernel);
    println!(
        "median wasm/native speed over the kernels, median of {RUNS} runs: {:.2}x (runs {lo:.2}-{hi:.2}; target >= 0.9); slowest kernel {lowest:.2}x (target >= 0.8)",
        median(&run_medians),
    );
}

/// First compile of each kernel, and loading its artifact from the disk cache.
fn compile_and_load() {
    for (name, kernel) in idlemesh_kernels::ALL {
        let dir = tempfile::tempdir().unwrap();
        let config = SandboxConfig { cache_dir: Some(dir.path().to_owned()), ..SandboxConfig::default() };
        let params = if *name == "mandelbrot" { r#"{"width":8,"height":8}"# } else { "echo" };
        let t = Instant::now();
        let first =
            Sandbox::new(config.clone()).unwrap().run(kernel, b"", params, None, &RunLimits::default(), NoEvents);
        let compile = t.elapsed();
        assert!(!first.cache_hit);
        let t = Instant::now();
        let second = Sandbox::new(config).unwrap().run(kernel, b"", params, None, &RunLimits::default(), NoEvents);
        let load = t.elapsed();
        assert!(second.cache_hit);
        println!(
            "{name} ({} KiB): engine + compile + run {:.1} ms; engine + cached load + run {:.1} ms",
            kernel.len() / 1024,
            compile.as_secs_f64() * 1e3,
            load.as_secs_f64() * 1e3
        );
    }
}

/// Each thread's state letter (`R`, `S`, `T`...) from /proc.
#[cfg(target_os = "linux")]
fn thread_states(pid: u32) -> Vec<char> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
        // The state follows the parenthesised command name.
        .filter_map(|stat| stat.rsplit_once(')')?.1.trim_start().chars().next())
        .collect()
}

/// No thread of the worker is on a CPU any more: the kernel's thread is
/// stopped (its others sleep, or stop too as the signal reaches them).
#[cfg(target_os = "linux")]
fn off_cpu(pid: u32) -> bool {
    let states = thread_states(pid);
    states.contains(&'T') && !states.contains(&'R')
}

/// From the freeze call to the kernel's process being stopped (no CPU), and
/// from thaw to running again, on a worker busy with a runaway kernel.
#[cfg(target_os = "linux")]
fn pause_latency() {
    let bin = env!("CARGO_BIN_EXE_idlemesh");
    let mut worker = WorkerProcess::spawn(&WorkerCommand::new(bin, ["worker"])).unwrap();
    let pid = worker.pid();
    let control = worker.control();
    let runner = std::thread::spawn(move || {
        let req = WorkRequest {
            wgsl: None,
            task: "spin".into(),
            kernel_sha256: idlemesh_protocol::Sha256::of(idlemesh_kernels::HOSTILE),
            kernel: idlemesh_kernels::HOSTILE,
            input: b"",
            params: "spin",
            resume: None,
            limits: RunLimits::default(),
            timeout: Duration::from_secs(600),
        };
        worker.run(&req, |_| {}, |_| {}).map(|r| r.outcome.status)
    });
    std::thread::sleep(Duration::from_millis(500));
    let (mut stops, mut resumes) = (Vec::new(), Vec::new());
    for _ in 0..300 {
        let t = Instant::now();
        control.freeze();
        // Polling yields the CPU, since
        // on two cores a spinning observer delays the very stop it awaits.
        while !off_cpu(pid) {
            std::thread::yield_now();
        }
        stops.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(2));
        let t = Instant::now();
        control.thaw();
        while off_cpu(pid) {
            std::thread::yield_now();
        }
        resumes.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(3));
    }
    stops.sort();
    resumes.sort();
    println!(
        "pause (freeze -> worker stopped, 300 runs): p50 {:.0} µs, p99 {:.0} µs (target p99 <= 1000); resume: p50 {:.0} µs, p99 {:.0} µs",
        micros(percentile(&stops, 0.5)),
        micros(percentile(&stops, 0.99)),
        micros(percentile(&resumes, 0.5)),
        micros(percentile(&resumes, 0.99))
    );
    // SAFETY: kill(2) on our own child, which is spinning until we stop it.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    let _ = runner.join();
}

/// What the worker lockdown costs, in one run: `idlemesh worker` (locked
/// down) against the same worker code without the lockdown (the escape
/// drill's `--unconfined --serve-kernels`), alternating so drift hits both.
fn lockdown_cost() {
    let bin = env!("CARGO_BIN_EXE_idlemesh");
    let drill = std::path::Path::new(bin).parent().unwrap().join("examples/escape_drill");
    if !drill.exists() {
        println!(
            "lockdown: skipped, {} is missing (cargo build --release --examples -p idlemesh-cli)",
            drill.display()
        );
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let cache_arg: Vec<std::ffi::OsString> = vec!["--cache-dir".into(), cache.path().into()];
    let locked = WorkerCommand::new(bin, [vec!["worker".into()], cache_arg.clone()].concat());
    // The same worker code with no wall at all: no namespaces at spawn either.
    let open = WorkerCommand {
        isolate: false,
        ..WorkerCommand::new(drill, [vec!["--unconfined".into(), "--serve-kernels".into()], cache_arg].concat())
    };
    let sides = [("locked down", &locked), ("no lockdown", &open)];

    // Start-up: spawn to ready, CPU and GPU workers.
    for profile in [idlemesh_runtime::Profile::Cpu, idlemesh_runtime::Profile::Gpu] {
        let rounds = if profile == idlemesh_runtime::Profile::Cpu { 30 } else { 8 };
        let mut times = [Vec::new(), Vec::new()];
        for _ in 0..rounds {
            for (i, (_, command)) in sides.iter().enumerate() {
                let command = command.with_profile(profile);
                let t = Instant::now();
                let worker = WorkerProcess::spawn(&command).unwrap();
                times[i].push(t.elapsed());
                assert_eq!(worker.sandbox().seccomp, i == 0);
            }
        }
        for (i, (side, _)) in sides.iter().enumerate() {
            times[i].sort();
            println!(
                "worker start-up ({profile:?}, spawn -> ready, {rounds} runs), {side}: p50 {:.1} ms, p95 {:.1} ms",
                percentile(&times[i], 0.5).as_secs_f64() * 1e3,
                percentile(&times[i], 0.95).as_secs_f64() * 1e3
            );
        }
    }

    // Warm start through a warm worker: the supervisor's round trip.
    let mut workers: Vec<WorkerProcess> = sides.iter().map(|(_, c)| WorkerProcess::spawn(c).unwrap()).collect();
    let echo = |kernel: &'static [u8], params: &'static str| WorkRequest {
        wgsl: None,
        task: "bench".into(),
        kernel_sha256: idlemesh_protocol::Sha256::of(kernel),
        kernel,
        input: b"",
        params,
        resume: None,
        limits: RunLimits::default(),
        timeout: Duration::from_secs(600),
    };
    let req = echo(idlemesh_kernels::HOSTILE, "echo");
    let mut times = [Vec::new(), Vec::new()];
    for round in 0..2_200 {
        for (i, w) in workers.iter_mut().enumerate() {
            let t = Instant::now();
            let r = w.run(&req, |_| {}, |_| {}).unwrap();
            if round >= 200 {
                times[i].push(t.elapsed());
            }
            assert_eq!(r.outcome.status, Status::Ok);
        }
    }
    for (i, (side, _)) in sides.iter().enumerate() {
        times[i].sort();
        println!(
            "warm start through a warm worker (task sent -> outcome back, 2000 runs), {side}: p50 {:.1} µs, p99 {:.1} µs",
            micros(percentile(&times[i], 0.5)),
            micros(percentile(&times[i], 0.99))
        );
    }

    // Throughput through the worker: the kernels of `throughput`.
    let cases: [(&str, &'static [u8], &'static str); 3] = [
        ("mandelbrot 512x384x512", idlemesh_kernels::MANDELBROT, r#"{"width":512,"height":384,"max_iter":512}"#),
        ("sha256 chain 200k", idlemesh_kernels::SHA256CHAIN, r#"{"seed":"idlemesh","iterations":200000}"#),
        ("matmul 512", idlemesh_kernels::MATMUL, r#"{"n":512,"seed":1}"#),
    ];
    let mut ratios = Vec::new();
    for (name, kernel, params) in cases {
        let req = echo(kernel, params);
        let mut best = [Duration::MAX, Duration::MAX];
        for _ in 0..6 {
            for (i, w) in workers.iter_mut().enumerate() {
                let t = Instant::now();
                assert_eq!(w.run(&req, |_| {}, |_| {}).unwrap().outcome.status, Status::Ok);
                best[i] = best[i].min(t.elapsed());
            }
        }
        let ratio = best[1].as_secs_f64() / best[0].as_secs_f64();
        ratios.push(ratio);
        println!(
            "{name} in a worker: locked down {:.1} ms, no lockdown {:.1} ms -> locked runs at {ratio:.3}x",
            best[0].as_secs_f64() * 1e3,
            best[1].as_secs_f64() * 1e3
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!("median speed locked down / no lockdown: {:.3}x (1.0 = no cost)", ratios[ratios.len() / 2]);
}
