//! The worker process: `idlemesh worker` (and `idlemesh-app worker`) call [`main`].
//!
//! It lowers its own priority and locks itself down (see [`crate::lockdown`])
//! before it reads any task, then runs requests from stdin one at a time and
//! streams events to stdout. It keeps compiled kernels between tasks, so a
//! warm worker starts a kernel in microseconds. A GPU worker (`--gpu`) opens
//! its device before the lockdown, so the driver's start-up needs nothing a
//! kernel could use later; a CPU worker never loads a GPU driver.

use std::ffi::OsString;
use std::io::{self, BufReader, BufWriter};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::gpu::Gpu;
use crate::ipc::{self, Event, Request};
use crate::lockdown::{self, LockdownConfig, Profile, SandboxReport};
use crate::{Events, Outcome, Sandbox, SandboxConfig, Status};

/// The largest kernel, input or checkpoint the worker accepts from its supervisor.
const MAX_REQUEST_BLOB_BYTES: u64 = 1 << 30;

type Sink = Arc<Mutex<BufWriter<io::Stdout>>>;

struct PipeEvents(Sink);

impl Events for PipeEvents {
    fn progress(&mut self, done: f32) {
        let _ = ipc::write_frame(&mut *self.0.lock().unwrap(), &Event::Progress { done }, &[]);
    }
    fn checkpoint(&mut self, state: Vec<u8>) {
        let _ = ipc::write_frame(&mut *self.0.lock().unwrap(), &Event::Checkpoint, &[&state]);
    }
}

/// How to start a worker.
#[derive(Debug, Clone, Default)]
pub struct WorkerOptions {
    /// Where compiled kernels are cached (the one directory a worker may write).
    pub cache_dir: Option<PathBuf>,
    pub profile: Profile,
    /// Apply the OS lockdown. Always on in `idlemesh worker` and the app:
    /// nothing a user can set turns it off; only a test program linking
    /// this crate (the escape drill) runs a worker without it, to prove the
    /// walls are what stops it.
    pub lockdown: bool,
}

/// `worker [--cache-dir DIR] [--gpu] [--probe-gpu]`: the arguments
/// [`crate::WorkerCommand`] passes, parsed once for both binaries.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let mut options = WorkerOptions { lockdown: true, ..WorkerOptions::default() };
    let mut probe = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--cache-dir") => match args.next() {
                Some(dir) => options.cache_dir = Some(dir.into()),
                None => return usage("--cache-dir needs a directory"),
            },
            Some("--gpu") => options.profile = Profile::Gpu,
            Some("--probe-gpu") => probe = true,
            _ => return usage(&format!("unexpected argument {arg:?}")),
        }
    }
    let result = if probe {
        probe_gpu().map_err(|e| format!("no GPU for WGSL kernels: {e}"))
    } else {
        serve(options).map_err(|e| e.to_string())
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("worker: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage(why: &str) -> ExitCode {
    eprintln!("worker: {why} (usage: worker [--cache-dir DIR] [--gpu] [--probe-gpu])");
    ExitCode::from(2)
}

/// Runs kernels for the supervisor until it closes the pipe.
pub fn serve(options: WorkerOptions) -> io::Result<()> {
    let (sandbox, mut gpu, report) = start(&options)?;
    serve_requests(report, |request, blobs, events| {
        run_kernel(&sandbox, gpu.as_mut(), options.profile, request, blobs, events)
    })
}

/// A worker whose "kernel" is native code: `task(params, input)` runs each
/// request in place of a kernel, after exactly the start-up and lockdown a
/// real worker has. For tests that prove what the lockdown stops (the
/// escape drill).
#[doc(hidden)]
pub fn serve_native(options: WorkerOptions, mut task: impl FnMut(&str, &[u8]) -> Outcome) -> io::Result<()> {
    let (_sandbox, _gpu, report) = start(&options)?;
    serve_requests(report, |request, blobs, _events| {
        let Request::Run { params, .. } = request;
        let input = blobs.get(1).map_or(&[][..], Vec::as_slice);
        (task(params, input), false)
    })
}

/// Priority, lockdown (in its two steps, the engine and GPU between them).
fn start(options: &WorkerOptions) -> io::Result<(Sandbox, Option<Gpu>, SandboxReport)> {
    let writable: Vec<PathBuf> = options.cache_dir.iter().cloned().collect();
    let config = LockdownConfig { profile: options.profile, writable };
    // First: the layers that need a single thread.
    let begun = options.lockdown.then(|| lockdown::begin(config));
    lower_priority();
    if let Some(dir) = &options.cache_dir {
        // Created now: the lockdown grants access beneath it, not to make it.
        std::fs::create_dir_all(dir)?;
    }
    let sandbox = Sandbox::new(SandboxConfig { cache_dir: options.cache_dir.clone(), ..SandboxConfig::default() })
        .map_err(io::Error::other)?;
    let gpu = match options.profile {
        Profile::Cpu => None,
        // Without a device there is nothing for a GPU worker to do: say why.
        Profile::Gpu => Some(Gpu::open().map_err(|e| io::Error::other(format!("no GPU for WGSL kernels: {e}")))?),
    };
    let report = match begun {
        // WASI's stream calls run on wasmtime-wasi's own tokio runtime,
        // built on first use with an epoll instance, an eventfd and a socket
        // pair: built here, under Landlock and before seccomp, it needs no
        // exception in the filter, and its threads are born walled in.
        Some(lockdown) => lockdown.seal(|| wasmtime_wasi::runtime::in_tokio(async {})),
        None => SandboxReport::none(options.profile, "the lockdown was turned off for an escape drill"),
    };
    Ok((sandbox, gpu, report))
}

/// The request loop: one task at a time, its events and its outcome back.
fn serve_requests(
    sandbox: SandboxReport,
    mut run: impl FnMut(&Request, &[Vec<u8>], PipeEvents) -> (Outcome, bool),
) -> io::Result<()> {
    let sink: Sink = Arc::new(Mutex::new(BufWriter::new(io::stdout())));
    ipc::write_frame(&mut *sink.lock().unwrap(), &Event::Ready { pid: std::process::id(), sandbox }, &[])?;
    let mut stdin = BufReader::new(io::stdin().lock());
    while let Some((request, blobs)) = ipc::read_frame::<Request>(&mut stdin, MAX_REQUEST_BLOB_BYTES)? {
        let started = Instant::now();
        let cpu_before = crate::cpu_time::this_process_ms();
        let (outcome, retire) = run(&request, &blobs, PipeEvents(sink.clone()));
        let wall_ms = started.elapsed().as_millis() as u64;
        let cpu_ms = crate::cpu_time::this_process_ms().saturating_sub(cpu_before);
        let Request::Run { task, .. } = &request;
        tracing::debug!(%task, status = %outcome.status, wall_ms, cpu_ms, "task finished");
        let output = outcome.output.clone();
        let done = Event::Done { outcome, wall_ms, cpu_ms, retire };
        ipc::write_frame(&mut *sink.lock().unwrap(), &done, &[&output])?;
        if retire {
            // A lost or stuck device cannot be trusted with the next task,
            // and lavapipe would block us on it: leave now, without the
            // destructors that would wait for the device.
            std::process::exit(3);
        }
    }
    Ok(())
}

/// One WASM or WGSL task; `true` beside the outcome retires the worker.
fn run_kernel(
    sandbox: &Sandbox,
    gpu: Option<&mut Gpu>,
    profile: Profile,
    request: &Request,
    blobs: &[Vec<u8>],
    mut events: PipeEvents,
) -> (Outcome, bool) {
    let Request::Run { kernel_sha256, params, limits, resume, wgsl, timeout_ms, .. } = request;
    let (kernel_sha256, resume) = (*kernel_sha256, *resume);
    match (blobs, wgsl) {
        (_, Some(_)) if resume => (Outcome::failed(Status::Error, "WGSL kernels do not checkpoint"), false),
        ([source, input], Some(layout)) => {
            let Some(gpu) = gpu else {
                let why = format!("a {profile:?} worker runs no WGSL kernels: start a GPU worker (worker --gpu)");
                return (Outcome::failed(Status::Error, why), false);
            };
            // One submission stuck for the whole task budget is a stuck
            // GPU; the total, net of frozen time, is the supervisor's.
            let stall = Duration::from_millis(if *timeout_ms == 0 { 60_000 } else { *timeout_ms });
            let run = gpu.run(kernel_sha256, source, layout, input, params, limits, stall, &mut events);
            (run.outcome, run.retire)
        }
        // The kernel blob is empty when the supervisor knows we have it prepared.
        ([kernel, input], None) if !resume => {
            (sandbox.run_known(kernel_sha256, kernel, input, params, None, limits, events), false)
        }
        ([kernel, input, state], None) if resume => {
            (sandbox.run_known(kernel_sha256, kernel, input, params, Some(state), limits, events), false)
        }
        _ => (Outcome::failed(Status::Error, "malformed request from the supervisor"), false),
    }
}

/// `idlemesh worker --probe-gpu`: prints the adapter a WGSL task would run
/// on, or fails saying why there is none.
pub fn probe_gpu() -> Result<(), crate::gpu::GpuError> {
    lower_priority();
    let gpu = Gpu::open()?;
    println!("{}", gpu.adapter());
    Ok(())
}

/// Kernels run only with what nobody else wants: SCHED_IDLE on Linux (nice
/// alone does not help under autogroup scheduling), nice 19 everywhere.
/// Also ties the worker's life to its parent's.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: plain syscalls on the calling process with valid arguments.
        unsafe {
            if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
                tracing::warn!("could not switch the worker to SCHED_IDLE");
            }
            libc::setpriority(libc::PRIO_PROCESS, 0, 19);
            // If the agent dies, the worker must not run on unsupervised.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        }
    }
    #[cfg(all(unix, not(target_os = "linux")))]
    // SAFETY: plain syscall on the calling process.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 19);
    }
}
