//! The worker process: `idlemesh worker` calls [`serve`].
//!
//! It lowers its own priority before touching any kernel, then runs requests
//! from stdin one at a time and streams events to stdout. It keeps compiled
//! kernels between tasks, so a warm worker starts a kernel in microseconds.

use std::io::{self, BufReader, BufWriter};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::gpu::Gpu;
use crate::ipc::{self, Event, Request};
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

pub fn serve(cache_dir: Option<PathBuf>) -> io::Result<()> {
    lower_priority();
    let sandbox = Sandbox::new(SandboxConfig { cache_dir, ..SandboxConfig::default() }).map_err(io::Error::other)?;
    let sink: Sink = Arc::new(Mutex::new(BufWriter::new(io::stdout())));
    ipc::write_frame(&mut *sink.lock().unwrap(), &Event::Ready { pid: std::process::id() }, &[])?;
    // Opened at the first WGSL task: most workers never touch a GPU.
    let mut gpu: Option<Result<Gpu, String>> = None;
    let mut stdin = BufReader::new(io::stdin().lock());
    while let Some((request, blobs)) = ipc::read_frame::<Request>(&mut stdin, MAX_REQUEST_BLOB_BYTES)? {
        let Request::Run { task, kernel_sha256, params, limits, resume, wgsl, timeout_ms } = request;
        let started = Instant::now();
        let cpu_before = process_cpu_ms();
        let mut events = PipeEvents(sink.clone());
        let mut retire = false;
        let outcome = match (blobs.as_slice(), wgsl) {
            (_, Some(_)) if resume => Outcome::failed(Status::Error, "WGSL kernels do not checkpoint"),
            ([source, input], Some(layout)) => {
                // One submission stuck for the whole task budget is a stuck
                // GPU; the total, net of frozen time, is the supervisor's.
                let stall = Duration::from_millis(if timeout_ms == 0 { 60_000 } else { timeout_ms });
                match gpu.get_or_insert_with(Gpu::open) {
                    Ok(gpu) => {
                        let run = gpu.run(kernel_sha256, source, &layout, input, &params, &limits, stall, &mut events);
                        retire = run.retire;
                        run.outcome
                    }
                    Err(e) => Outcome::failed(Status::Error, e.clone()),
                }
            }
            // The kernel blob is empty when the supervisor knows we have it prepared.
            ([kernel, input], None) if !resume => {
                sandbox.run_known(kernel_sha256, kernel, input, &params, None, &limits, events)
            }
            ([kernel, input, state], None) if resume => {
                sandbox.run_known(kernel_sha256, kernel, input, &params, Some(state), &limits, events)
            }
            _ => Outcome::failed(Status::Error, "malformed request from the supervisor"),
        };
        let wall_ms = started.elapsed().as_millis() as u64;
        let cpu_ms = process_cpu_ms().saturating_sub(cpu_before);
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

/// `idlemesh worker --probe-gpu`: prints the adapter a WGSL task would run
/// on, or fails saying why there is none.
pub fn probe_gpu() -> Result<(), String> {
    lower_priority();
    let gpu = Gpu::open()?;
    println!("{}", gpu.adapter());
    Ok(())
}

/// CPU time of this whole process (compile threads included), in ms.
pub fn process_cpu_ms() -> u64 {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes into the timespec we own.
        if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } == 0 {
            return ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000;
        }
    }
    0
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
