//! The hostile-kernel corpus, run through real worker processes exactly as
//! the agent runs kernels. Each must end with its own status within its
//! limit, leave the supervisor (this process) unharmed, and the next kernel
//! must run normally.

use std::time::{Duration, Instant};

use idlemesh_protocol::Sha256;
use idlemesh_protocol::wgsl::WgslLayout;
use idlemesh_runtime::{Profile, RunLimits, RunReport, Status, WorkRequest, WorkerCommand, WorkerProcess};

use crate::harness::BIN;

#[path = "../common/wat_kernel.rs"]
mod wat_kernel;
use wat_kernel::wat_kernel;

/// Keeps one worker and replaces it when a timeout killed it, as the agent does.
struct Supervisor {
    worker: Option<WorkerProcess>,
    /// Progress events the last task sent.
    progress_frames: u64,
}

impl Supervisor {
    fn new() -> Self {
        Self { worker: None, progress_frames: 0 }
    }

    fn run(&mut self, kernel: &[u8], params: &str, limits: RunLimits, timeout: Duration) -> (RunReport, Duration) {
        self.run_task(kernel, None, b"", params, limits, timeout)
    }

    fn run_task(
        &mut self,
        kernel: &[u8],
        wgsl: Option<&WgslLayout>,
        input: &[u8],
        params: &str,
        limits: RunLimits,
        timeout: Duration,
    ) -> (RunReport, Duration) {
        // WGSL runs in a GPU worker, WASM in a CPU one, as the agent does.
        let profile = if wgsl.is_some() { Profile::Gpu } else { Profile::Cpu };
        let mut worker = match self.worker.take() {
            Some(w) if w.profile() == profile => w,
            _ => WorkerProcess::spawn(&WorkerCommand::new(BIN, ["worker"]).with_profile(profile)).unwrap(),
        };
        let kernel_sha256 = Sha256::of(kernel);
        let req = WorkRequest {
            wgsl,
            task: params.into(),
            kernel_sha256,
            kernel,
            input,
            params,
            resume: None,
            limits,
            timeout,
        };
        let started = Instant::now();
        let mut frames = 0;
        let report = worker.run(&req, |_| frames += 1, |_| {}).expect("the worker answers or is killed on time");
        self.progress_frames = frames;
        let took = started.elapsed();
        if worker.is_alive() {
            self.worker = Some(worker);
        }
        eprintln!(
            "{params:>24}: {:<14} {:>6} ms  {:?}",
            report.outcome.status.as_str(),
            took.as_millis(),
            report.outcome.error
        );
        (report, took)
    }

    fn peak_rss(&self) -> u64 {
        self.worker.as_ref().and_then(|w| w.peak_rss_bytes()).unwrap_or(0)
    }
}

const MIB: u64 = 1 << 20;

fn limits(memory_mib: u64) -> RunLimits {
    RunLimits { max_memory_bytes: memory_mib * MIB, max_output_bytes: 16 * MIB, max_fuel: None, seed: 1 }
}

#[test]
fn hostile_kernels_end_with_their_status_within_their_limits() {
    let hostile = idlemesh_kernels::HOSTILE;
    let mut s = Supervisor::new();
    let timeout = Duration::from_millis(1500);
    // Measured by the supervisor from handing the task over to the worker
    // being gone: not the time a SCHED_IDLE worker on a busy machine takes
    // to read a large kernel off its pipe, which is the point of SCHED_IDLE.
    let within = |r: &RunReport| Duration::from_millis(r.wall_ms) < 2 * timeout;

    // A kernel that does nothing wrong runs first: the baseline.
    let (r, _) = s.run(&wat_kernel(1, "", ""), "{}", limits(64), timeout);
    assert_eq!(r.outcome.status, Status::Ok, "{:?}", r.outcome.error);

    // Runaway loops: stopped from outside by the supervisor.
    let (r, _) = s.run(hostile, "spin", limits(64), timeout);
    assert_eq!(r.outcome.status, Status::TimedOut);
    assert!(within(&r), "spin took {} ms", r.wall_ms);
    let (r, _) = s.run(&wat_kernel(1, "", "(loop $l (br $l))"), "wat-spin-no-host", limits(64), timeout);
    assert_eq!(r.outcome.status, Status::TimedOut);
    assert!(within(&r), "wat spin took {} ms", r.wall_ms);
    // A loop that reports progress costs the host nothing: like any loop,
    // it runs until its time is up (a kernel reporting every 10 ms for hours
    // must not be cut off by a count of calls).
    let (r, _) = s.run(hostile, "spin-calling-host", limits(64), timeout);
    assert_eq!(r.outcome.status, Status::TimedOut, "{:?}", r.outcome.error);
    // Progress that changes on every call reaches the supervisor at most
    // every 50 ms, not two million times.
    let (r, _) = s.run(hostile, "progress-flood", limits(64), Duration::from_secs(30));
    assert_eq!(r.outcome.status, Status::Ok, "{:?}", r.outcome.error);
    let frames = s.progress_frames;
    assert!((1..=2 + r.wall_ms / 50).contains(&frames), "{frames} progress frames in {} ms", r.wall_ms);
    // Checkpoints are written by the agent: spamming them is stopped, with its own error.
    let (r, _) = s.run(hostile, "checkpoint-spam", limits(64), Duration::from_secs(30));
    assert_eq!(r.outcome.status, Status::Trapped);
    assert!(r.outcome.error.as_deref().unwrap().contains("host-call rate limit"), "{:?}", r.outcome.error);

    // Memory: refused growth, and a data segment larger than the limit.
    let (r, _) = s.run(hostile, "grow", limits(64), timeout * 4);
    assert_eq!(r.outcome.status, Status::OutOfMemory, "{:?}", r.outcome.error);
    assert!(r.outcome.peak_memory_bytes <= 64 * MIB);
    let worker_rss = s.peak_rss();
    assert!(worker_rss < (64 + 192) * MIB, "worker peak RSS {} MiB for a 64 MiB kernel", worker_rss / MIB);
    let grow_wat = "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))";
    let (r, _) = s.run(&wat_kernel(1, "", grow_wat), "wat-grow", limits(32), timeout);
    assert_eq!(r.outcome.status, Status::OutOfMemory);
    let big_data = format!(r#"(data (i32.const 0) "{}")"#, "\\00".repeat(16));
    let (r, _) = s.run(&wat_kernel(2048, &big_data, ""), "wat-128MiB-memory", limits(64), timeout);
    assert_eq!(r.outcome.status, Status::OutOfMemory, "{:?}", r.outcome.error);

    // Stack, traps, panics.
    let (r, _) = s.run(hostile, "recurse", limits(64), timeout * 4);
    assert_eq!(r.outcome.status, Status::Trapped);
    assert!(r.outcome.error.as_deref().unwrap_or("").contains("stack"), "{:?}", r.outcome.error);
    for (name, body) in [
        ("wat-unreachable", "unreachable"),
        ("wat-divide-by-zero", "(drop (i32.div_s (i32.const 1) (i32.const 0)))"),
        ("wat-out-of-bounds", "(drop (i32.load (i32.const -4)))"),
    ] {
        let (r, _) = s.run(&wat_kernel(1, "", body), name, limits(64), timeout);
        assert_eq!(r.outcome.status, Status::Trapped, "{name}");
    }
    for mode in ["panic", "divide-by-zero"] {
        let (r, _) = s.run(hostile, mode, limits(64), timeout * 4);
        assert_eq!(r.outcome.status, Status::Trapped, "{mode}");
    }
    let (r, _) = s.run(hostile, "error", limits(64), timeout * 4);
    assert_eq!(r.outcome.status, Status::Error);
    assert!(r.outcome.error.unwrap().contains("kernel refused its input"));

    // Output, logs and checkpoints over their caps.
    let (r, _) = s.run(hostile, "big-output", limits(128), timeout * 4);
    assert_eq!(r.outcome.status, Status::Error);
    assert!(r.outcome.error.unwrap().contains("exceeds the cap"));
    assert!(r.outcome.output.is_empty());
    let (r, _) = s.run(hostile, "log-spam", limits(64), timeout * 4);
    assert_eq!(r.outcome.status, Status::Ok);
    assert_eq!(r.outcome.output, b"still here");
    assert!(r.outcome.log.len() <= 64 * 1024 + 64 * 1024 + 64, "log of {} bytes", r.outcome.log.len());
    assert!(r.outcome.log_dropped_bytes > 0);
    let (r, _) = s.run(hostile, "huge-checkpoint", limits(256), timeout * 4);
    assert_eq!(r.outcome.status, Status::Trapped);
    assert!(r.outcome.error.unwrap().contains("checkpoint"));

    // What a kernel can reach: nothing.
    let (r, _) = s.run(hostile, "probe", limits(64), timeout * 4);
    assert_eq!(r.outcome.status, Status::Ok, "{:?}", r.outcome.error);
    let seen = String::from_utf8(r.outcome.output.clone()).unwrap();
    for line in [
        "file: denied",
        "dir: denied",
        "write: denied",
        "env: 0",
        "args: 0",
        "tcp: denied",
        "udp: denied",
        "wall_clock_s: 1704067200",
    ] {
        assert!(seen.lines().any(|l| l == line), "expected {line:?} in:\n{seen}");
    }
    // Randomness is seeded per task: the same seed sees the same bytes.
    let (again, _) = s.run(hostile, "probe", limits(64), timeout * 4);
    assert_eq!(again.outcome.output, r.outcome.output);

    // Not kernels at all.
    let mandelbrot = idlemesh_kernels::MANDELBROT;
    let core_module = wat::parse_str("(module (func (export \"run\")))").unwrap();
    let unknown_import = wat::parse_str(
        r#"(component (import "evil:net/socket" (instance (export "connect" (func (param "host" string) (result u32))))))"#,
    )
    .unwrap();
    for (name, bytes) in [
        ("garbage", b"this is not wasm".to_vec()),
        ("truncated", mandelbrot[..mandelbrot.len() / 2].to_vec()),
        ("core-module", core_module),
        ("unknown-import", unknown_import),
        ("no-run-export", wat::parse_str("(component)").unwrap()),
    ] {
        let (r, _) = s.run(&bytes, name, limits(64), timeout);
        assert_eq!(r.outcome.status, Status::InvalidKernel, "{name}: {:?}", r.outcome.error);
    }

    // A compile bomb: one enormous function. Compiling happens in the worker,
    // under the same wall-clock limit as running.
    let bomb_body =
        format!("{}(loop $l (br $l))", "(local.set 0 (i32.add (local.get 0) (i32.const 1)))".repeat(400_000));
    let bomb = wat_kernel(1, "", &bomb_body);
    let (r, _) = s.run(&bomb, "compile-bomb", limits(64), timeout);
    assert!(matches!(r.outcome.status, Status::TimedOut | Status::InvalidKernel), "{:?}", r.outcome.status);
    assert!(within(&r), "compile bomb took {} ms", r.wall_ms);

    // And after all that, a real kernel runs normally.
    let params = r#"{"width":64,"height":48,"max_iter":100}"#;
    let (r, _) = s.run(mandelbrot, params, limits(64), Duration::from_secs(30));
    assert_eq!(r.outcome.status, Status::Ok);
    assert_eq!(r.outcome.output.len(), 64 * 48 * 3);
}

#[test]
fn hostile_wgsl_kernels_end_with_their_status_within_their_limits() {
    use idlemesh_kernels::wgsl;
    let mut s = Supervisor::new();
    let layout = |text: &str| serde_json::from_str::<WgslLayout>(text).unwrap();
    let matmul = layout(wgsl::MATMUL_LAYOUT);
    let timeout = Duration::from_millis(2000);
    let within = |r: &RunReport| Duration::from_millis(r.wall_ms) < 2 * timeout;
    let n4 = vec![0u8; 4 * 4 * 8];

    // The baseline: a real shader runs and names its adapter.
    let (r, _) = s.run_task(wgsl::MATMUL.as_bytes(), Some(&matmul), &n4, r#"{"n":4}"#, limits(64), timeout * 10);
    assert_eq!(r.outcome.status, Status::Ok, "{:?}", r.outcome.error);
    assert!(r.outcome.adapter.is_some());

    // A shader that runs for very long in one submission (no dispatch
    // binding, so it cannot be sliced): each invocation loops just under
    // lavapipe's 65,535-iteration cut-off, over millions of invocations.
    let spin = r#"
        @group(0) @binding(0) var<storage, read_write> out: array<u32>;
        @compute @workgroup_size(64)
        fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
            var x = gid.x;
            for (var i = 0u; i < 60000u; i = i + 1u) { x = x * 1664525u + 1013904223u; }
            out[gid.x % 1024u] = x;
        }"#;
    let spin_layout =
        layout(r#"{"invocations": [4194240], "bindings": [{"binding": 0, "role": "output", "size": 4096}]}"#);
    let (r, _) = s.run_task(spin.as_bytes(), Some(&spin_layout), b"", "{}", limits(64), timeout);
    assert_eq!(r.outcome.status, Status::TimedOut, "{:?}", r.outcome.error);
    assert!(within(&r), "the GPU spin took {} ms", r.wall_ms);

    // Buffers over the memory limit, and over any device's limit.
    let huge = layout(r#"{"invocations": [1], "bindings": [{"binding": 0, "role": "output", "size": 104857600}]}"#);
    let shader = "@group(0) @binding(0) var<storage, read_write> out: array<u32>;
                  @compute @workgroup_size(1) fn main() { out[0] = 1u; }";
    let (r, _) = s.run_task(shader.as_bytes(), Some(&huge), b"", "{}", limits(64), timeout);
    assert_eq!(r.outcome.status, Status::OutOfMemory, "{:?}", r.outcome.error);
    let vast = layout(r#"{"invocations": [1], "bindings": [{"binding": 0, "role": "output", "size": 68719476736}]}"#);
    let mut unlimited = limits(1 << 20);
    unlimited.max_output_bytes = u64::MAX;
    let (r, _) = s.run_task(shader.as_bytes(), Some(&vast), b"", "{}", unlimited, timeout);
    assert_eq!(r.outcome.status, Status::OutOfMemory, "{:?}", r.outcome.error);
    assert!(r.outcome.error.unwrap().contains("device's limit"));

    // Not WGSL, or not what the layout says.
    for (name, bytes) in [
        ("malformed", b"@compute fn main( {".to_vec()),
        ("binary", vec![0xff, 0xfe, 0x00, 0x01]),
        ("vertex-stage", b"@vertex fn main() -> @builtin(position) vec4<f32> { return vec4<f32>(); }".to_vec()),
        ("no-bindings", b"@compute @workgroup_size(1) fn main() {}".to_vec()),
    ] {
        let (r, _) = s.run_task(&bytes, Some(&huge), b"", "{}", limits(64), timeout);
        assert_eq!(r.outcome.status, Status::InvalidKernel, "{name}: {:?}", r.outcome.error);
    }
    let worker_rss = s.peak_rss();
    assert!(worker_rss < (64 + 192) * MIB, "worker peak RSS {} MiB with a 64 MiB limit", worker_rss / MIB);

    // And after all that, real kernels run normally: WGSL and WASM.
    let (a, b) = (idlemesh_kernel_matmul::matrix(16, 1), idlemesh_kernel_matmul::matrix(16, 2));
    let input: Vec<u8> = a.iter().chain(&b).flat_map(|v| v.to_le_bytes()).collect();
    let (r, _) = s.run_task(wgsl::MATMUL.as_bytes(), Some(&matmul), &input, r#"{"n":16}"#, limits(64), timeout * 10);
    assert_eq!(r.outcome.status, Status::Ok, "{:?}", r.outcome.error);
    assert_eq!(r.outcome.output.len(), 16 * 16 * 4);
    let params = r#"{"width":64,"height":48,"max_iter":100}"#;
    let (r, _) = s.run(idlemesh_kernels::MANDELBROT, params, limits(64), Duration::from_secs(30));
    assert_eq!(r.outcome.status, Status::Ok);
}

/// The worker asks to die with its parent, and Linux means the parent
/// *thread*: the agent starts workers from pooled threads that retire, so a
/// worker must outlive the thread that asked for it (a retired tokio thread
/// used to kill a frozen worker mid-task).
#[test]
fn a_worker_outlives_the_thread_that_started_it() {
    let mut worker =
        std::thread::spawn(|| WorkerProcess::spawn(&WorkerCommand::new(BIN, ["worker"])).unwrap()).join().unwrap();
    // The thread is gone; give a death signal time to arrive.
    std::thread::sleep(Duration::from_millis(300));
    assert!(worker.is_alive(), "the worker died with the thread that started it");
    let mut s = Supervisor { worker: Some(worker), progress_frames: 0 };
    let params = r#"{"width":64,"height":48,"max_iter":100}"#;
    let (r, _) = s.run(idlemesh_kernels::MANDELBROT, params, limits(64), Duration::from_secs(30));
    assert_eq!(r.outcome.status, Status::Ok, "{:?}", r.outcome.error);
}
