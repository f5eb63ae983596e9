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

fn best_of(n: usize, f: impl Fn()) -> Duration {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap()
}

/// Each kernel in the sandbox vs the same Rust code native; metered vs not.
/// Every case runs 30–100 ms natively: a task's fixed cost (instantiation,
/// copying input and output across the sandbox) is then a small part, as it
/// is for real tasks, which run for seconds.
fn throughput(only: Option<&str>) {
    let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
    let with_epochs = Sandbox::new(SandboxConfig { epoch_interruption: true, ..SandboxConfig::default() }).unwrap();
    let plain = RunLimits::default();
    let metered = RunLimits { max_fuel: Some(u64::MAX / 4), ..RunLimits::default() };
    type Native = Box<dyn Fn()>;
    let mandel = r#"{"width":512,"height":384,"max_iter":512}"#;
    let p: mandelbrot::Params = serde_json::from_str(mandel).unwrap();
    let sha = r#"{"seed":"idlemesh","iterations":200000}"#;
    let mm = r#"{"n":512,"seed":1}"#;
    let nb = r#"{"n":4096,"dt":0.01,"eps2":0.001}"#;
    let bodies: &'static [u8] = Box::leak(idlemesh_kernel_nbody::bodies(4096, 1).into_boxed_slice());
    let ds = r#"{"width":2048,"height":2048,"factor":4}"#;
    let image: &'static [u8] =
        Box::leak((0..2048u32 * 2048 * 4).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect());
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
            "sha256 chain 200k (integer)",
            idlemesh_kernels::SHA256CHAIN,
            b"",
            sha,
            Box::new(move || {
                std::hint::black_box(idlemesh_kernel_sha256chain::run(b"", sha).unwrap());
            }),
        ),
        (
            "matmul 512 (f32, SIMD)",
            idlemesh_kernels::MATMUL,
            b"",
            mm,
            Box::new(move || {
                std::hint::black_box(idlemesh_kernel_matmul::run(mm).unwrap());
            }),
        ),
        (
            "n-body 4096, one step (f32, sqrt)",
            idlemesh_kernels::NBODY,
            bodies,
            nb,
            Box::new(move || {
                std::hint::black_box(idlemesh_kernel_nbody::run(bodies, nb).unwrap());
            }),
        ),
        (
            "downscale 2048x2048 RGBA by 4 (integer)",
            idlemesh_kernels::DOWNSCALE,
            image,
            ds,
            Box::new(move || {
                std::hint::black_box(idlemesh_kernel_downscale::run(image, ds).unwrap());
            }),
        ),
    ];
    let mut ratios = Vec::new();
    for (name, kernel, input, params, native_fn) in cases {
        if only.is_some_and(|o| !name.contains(o)) {
            continue;
        }
        sandbox.run(kernel, input, params, None, &plain, NoEvents);
        sandbox.run(kernel, input, params, None, &metered, NoEvents);
        let native = best_of(5, &*native_fn);
        let wasm =
            best_of(5, || assert_eq!(sandbox.run(kernel, input, params, None, &plain, NoEvents).status, Status::Ok));
        let fuel =
            best_of(5, || assert_eq!(sandbox.run(kernel, input, params, None, &metered, NoEvents).status, Status::Ok));
        with_epochs.run(kernel, input, params, None, &plain, NoEvents);
        let epochs = best_of(5, || {
            assert_eq!(with_epochs.run(kernel, input, params, None, &plain, NoEvents).status, Status::Ok)
        });
        let ratio = native.as_secs_f64() / wasm.as_secs_f64();
        ratios.push(ratio);
        println!(
            "{name}: native {:.1} ms, wasm {:.1} ms -> {ratio:.2}x native; fuel metering costs {:.2}x, epoch checks cost {:.2}x",
            native.as_secs_f64() * 1e3,
            wasm.as_secs_f64() * 1e3,
            fuel.as_secs_f64() / wasm.as_secs_f64(),
            epochs.as_secs_f64() / wasm.as_secs_f64()
        );
    }
    if ratios.len() < 2 {
        return;
    }
    ratios.sort_by(f64::total_cmp);
    println!("median wasm/native speed over the kernels: {:.2}x (target >= 0.8)", ratios[ratios.len() / 2]);
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
