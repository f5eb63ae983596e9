//! The supervisor's side of a worker: start it, feed it, time it, freeze it,
//! kill it. Nothing a kernel does can block or crash the caller.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::{self, BufRead as _, BufReader, BufWriter, Read as _, Write as _};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use idlemesh_protocol::Sha256;
use idlemesh_protocol::wgsl::WgslLayout;

use crate::ipc::{self, Event, Request};
use crate::lockdown::{self, Profile, SandboxReport};
use crate::{Outcome, RunLimits, Status};

/// How long a new worker may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest frame blob we accept from a worker (outputs are capped lower by their limits).
const MAX_WORKER_BLOB_BYTES: u64 = 1 << 30;

/// How to start a worker: normally this very executable with `worker`.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Start it in a user and network namespace of its own (Linux), made
    /// between fork and exec where the child has one thread: the worker
    /// checks it is there and reports it (`netns`). Off only for the escape
    /// drill's run without the lockdown.
    pub isolate: bool,
}

impl WorkerCommand {
    /// `program ARGS`, isolated.
    pub fn new(program: impl Into<PathBuf>, args: impl IntoIterator<Item = impl Into<OsString>>) -> Self {
        Self { program: program.into(), args: args.into_iter().map(Into::into).collect(), isolate: true }
    }

    /// `<current exe> worker [--cache-dir DIR]`.
    pub fn current_exe(cache_dir: Option<&std::path::Path>) -> io::Result<Self> {
        let mut args: Vec<OsString> = vec!["worker".into()];
        if let Some(dir) = cache_dir {
            args.push("--cache-dir".into());
            args.push(dir.into());
        }
        Ok(Self::new(std::env::current_exe()?, args))
    }

    /// The same command for a worker of `profile`: a GPU worker opens its
    /// device before it locks down, a CPU worker never loads a GPU driver.
    pub fn with_profile(&self, profile: Profile) -> Self {
        let mut command = self.clone();
        command.args.retain(|a| a != "--gpu");
        if profile == Profile::Gpu {
            command.args.push("--gpu".into());
        }
        command
    }

    /// Asks a worker process which GPU adapter it would use, so the agent
    /// never loads a GPU driver into its own process. `Err` says why there
    /// is none (no driver, no device, or the probe hung and was killed).
    pub fn probe_gpu(&self) -> Result<String, ProbeError> {
        let mut probe = Command::new(&self.program);
        worker_environment(&mut probe);
        let child = probe
            .args(&self.args)
            .arg("--probe-gpu")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(ProbeError::Start)?;
        let pid = child.id();
        // Read its output while it runs (a chatty driver must not fill a
        // pipe and stall it), and kill it if it hangs.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let out = match rx.recv_timeout(PROBE_TIMEOUT) {
            Ok(out) => out.map_err(ProbeError::Start)?,
            Err(_) => {
                signal(pid, Signal::Kill);
                return Err(ProbeError::Hung(PROBE_TIMEOUT));
            }
        };
        let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_owned();
        if out.status.success() { Ok(text(&out.stdout)) } else { Err(ProbeError::NoGpu(text(&out.stderr))) }
    }
}

/// Starts `cmd` from one thread that lives as long as this process.
///
/// The worker asks to be killed when its parent dies (`PR_SET_PDEATHSIG`),
/// and Linux means the parent *thread*: a worker started from a pooled
/// thread (tokio's blocking pool retires idle ones after 10 s) would be
/// killed mid-task, or while frozen, when that thread happened to retire.
fn spawn_from_long_lived_thread(cmd: Command) -> io::Result<Child> {
    type Job = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<io::Result<mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new().name("worker-spawner".into()).spawn(move || {
            for (mut cmd, reply) in rx {
                let _ = reply.send(cmd.spawn());
            }
        })?;
        Ok(tx)
    });
    let spawner = match spawner {
        Ok(tx) => tx,
        Err(e) => return Err(io::Error::new(e.kind(), format!("could not start the worker-spawner thread: {e}"))),
    };
    let (reply, answer) = mpsc::channel();
    spawner.send((cmd, reply)).map_err(|_| io::Error::other("the worker-spawner thread is gone"))?;
    answer.recv().map_err(|_| io::Error::other("the worker-spawner thread is gone"))?
}

/// Variables a worker is started with; every other one stays behind. A
/// Vulkan driver reads its settings when the GPU worker opens it, before
/// the lockdown empties the environment.
const WORKER_ENV_PREFIXES: &[&str] =
    &["WGPU_", "VK_", "MESA_", "LP_", "GALLIUM_", "LIBGL_", "__GLX_", "__EGL_", "DRI_", "NVIDIA_", "AMD_", "RADV_"];
const WORKER_ENV: &[&str] = &[
    "IDLEMESH_LOG",
    "RUST_BACKTRACE",
    "LD_LIBRARY_PATH",
    "TMPDIR",
    "XDG_RUNTIME_DIR",
    // Windows system DLLs (the Vulkan loader's among them) find the system through these.
    "SystemRoot",
    "windir",
];
/// The longest line of a worker's stderr passed on at once: a worker that
/// writes without newlines must not make the supervisor hold it all.
const MAX_STDERR_LINE_BYTES: u64 = 4096;

fn worker_environment(cmd: &mut Command) {
    cmd.env_clear();
    for (key, value) in std::env::vars_os() {
        let keep = key
            .to_str()
            .is_some_and(|k| WORKER_ENV.contains(&k) || WORKER_ENV_PREFIXES.iter().any(|p| k.starts_with(p)));
        if keep {
            cmd.env(key, value);
        }
    }
}

/// Puts the child in a user namespace of its own and, in it, a network
/// namespace with only a loopback that is down, before it executes the
/// worker. A failure (a system without unprivileged user namespaces) is
/// left to the worker, which tries again and reports why not.
fn isolate_at_spawn(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt as _;
        // SAFETY: the closure runs in the forked child before exec and makes
        // one raw system call, which is async-signal-safe; it allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET);
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// What the worker's stderr told us besides its log: the system call that
/// broke its seccomp filter, and its last line (why it could not start).
#[derive(Debug, Default)]
struct StderrNews {
    violation: Option<i64>,
    last_line: String,
}

/// Passes the worker's stderr on to ours, line by line, keeping the news.
fn read_stderr(stderr: std::process::ChildStderr, news: Arc<Mutex<StderrNews>>) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("worker-stderr".into()).spawn(move || {
        let mut r = BufReader::new(stderr);
        let mut line = Vec::new();
        loop {
            line.clear();
            match (&mut r).take(MAX_STDERR_LINE_BYTES).read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&line);
            let mut news = news.lock().unwrap();
            if let Some(nr) = lockdown::parse_violation(&text) {
                news.violation = Some(nr);
                continue;
            }
            if text.trim().is_empty() {
                continue;
            }
            news.last_line = text.trim().chars().take(500).collect();
            drop(news);
            let _ = io::stderr().write_all(&line);
        }
    })
}

/// One task for a worker.
#[derive(Debug, Clone)]
pub struct WorkRequest<'a> {
    pub task: String,
    /// The kernel's SHA-256, as the caller verified it (the agent: against a
    /// signed manifest). The worker checks it again whenever it compiles.
    pub kernel_sha256: Sha256,
    pub kernel: &'a [u8],
    pub input: &'a [u8],
    pub params: &'a str,
    pub resume: Option<&'a [u8]>,
    /// Set for a WGSL kernel (then `kernel` is its source): how it binds and dispatches.
    pub wgsl: Option<&'a WgslLayout>,
    pub limits: RunLimits,
    /// Wall-clock limit, counting only time the worker was not frozen.
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct RunReport {
    pub outcome: Outcome,
    pub wall_ms: u64,
    pub cpu_ms: u64,
}

/// Why a GPU probe found no adapter.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("could not run the GPU probe: {0}")]
    Start(#[source] io::Error),
    #[error("the GPU probe did not answer within {} s", .0.as_secs())]
    Hung(Duration),
    /// The probe's own words (no driver, no device).
    #[error("{0}")]
    NoGpu(String),
}

/// Longest a GPU probe may take: a driver that hangs must not hold the agent up.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("could not start the worker process: {0}")]
    Spawn(#[source] io::Error),
    #[error("the worker process died: {0}")]
    Died(String),
    #[error("the worker broke the pipe protocol: {0}")]
    Protocol(String),
}

type Frame = io::Result<(Event, Vec<Vec<u8>>)>;

/// Freezes and thaws a worker from any thread.
#[derive(Debug, Clone)]
pub struct WorkerControl {
    pid: u32,
    frozen_since: Arc<AtomicU64>,
    frozen_total_ms: Arc<AtomicU64>,
    frozen: Arc<AtomicBool>,
    epoch: Instant,
}

impl WorkerControl {
    /// Stops the worker where it stands (SIGSTOP): no CPU, all state kept.
    pub fn freeze(&self) {
        if !self.frozen.swap(true, Ordering::SeqCst) {
            self.frozen_since.store(self.epoch.elapsed().as_millis() as u64, Ordering::SeqCst);
            signal(self.pid, Signal::Stop);
        }
    }

    /// Lets a frozen worker continue exactly where it stopped (SIGCONT).
    pub fn thaw(&self) {
        if self.frozen.swap(false, Ordering::SeqCst) {
            signal(self.pid, Signal::Continue);
            let since = self.frozen_since.load(Ordering::SeqCst);
            let now = self.epoch.elapsed().as_millis() as u64;
            self.frozen_total_ms.fetch_add(now.saturating_sub(since), Ordering::SeqCst);
        }
    }

    pub fn is_frozen(&self) -> bool {
        self.frozen.load(Ordering::SeqCst)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits (up to `limit`) until a frozen worker has actually stopped:
    /// SIGSTOP is delivered asynchronously, and a worker at idle priority on
    /// a busy machine may take a moment to be scheduled to receive it.
    /// True once stopped (or gone); false if still running at `limit`.
    pub fn wait_stopped(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            match process_state(self.pid) {
                Some('T' | 't') | None => return true,
                Some(_) if Instant::now() >= deadline => return false,
                Some(_) => std::thread::sleep(Duration::from_micros(200)),
            }
        }
    }

    /// Ends the worker from any thread (SIGKILL works on a frozen process
    /// too); the thread running its task then sees it die.
    pub fn kill(&self) {
        signal(self.pid, Signal::Kill);
    }

    fn frozen_ms(&self) -> u64 {
        let mut total = self.frozen_total_ms.load(Ordering::SeqCst);
        if self.is_frozen() {
            total += (self.epoch.elapsed().as_millis() as u64).saturating_sub(self.frozen_since.load(Ordering::SeqCst));
        }
        total
    }
}

/// The scheduler state letter of a process (`R`, `S`, `T`, ...), `None` if it is gone.
fn process_state(pid: u32) -> Option<char> {
    #[cfg(target_os = "linux")]
    {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat[stat.rfind(')')? + 1..].trim_start().chars().next()
    }
    #[cfg(not(target_os = "linux"))]
    {
        // No cheap portable probe: trust the signal.
        let _ = pid;
        Some('T')
    }
}

enum Signal {
    Stop,
    Continue,
    Kill,
}

fn signal(pid: u32, which: Signal) {
    #[cfg(unix)]
    {
        let sig = match which {
            Signal::Stop => libc::SIGSTOP,
            Signal::Continue => libc::SIGCONT,
            Signal::Kill => libc::SIGKILL,
        };
        // SAFETY: kill(2) on our own child's pid; at worst it fails with ESRCH.
        unsafe {
            libc::kill(pid as libc::pid_t, sig);
        }
    }
    #[cfg(windows)]
    windows_threads::signal(pid, which);
    #[cfg(not(any(unix, windows)))]
    let _ = (pid, which);
}

/// Windows has no SIGSTOP: freezing a worker suspends each of its threads,
/// thawing resumes each once (suspension counts, and `WorkerControl` never
/// freezes twice without a thaw between). Once every thread is suspended none
/// can start another; a thread born during the snapshot itself escapes
/// until the next freeze.
#[cfg(windows)]
mod windows_threads {
    use windows_sys::Win32::Foundation::{CloseHandle, INVALID_HANDLE_VALUE};
    use windows_sys::Win32::System::Diagnostics::ToolHelp::{
        CreateToolhelp32Snapshot, TH32CS_SNAPTHREAD, THREADENTRY32, Thread32First, Thread32Next,
    };
    use windows_sys::Win32::System::Threading::{
        OpenProcess, OpenThread, PROCESS_TERMINATE, ResumeThread, SuspendThread, THREAD_SUSPEND_RESUME,
        TerminateProcess,
    };

    use super::Signal;

    pub(super) fn signal(pid: u32, which: Signal) {
        match which {
            Signal::Stop => each_thread(pid, |t| {
                // SAFETY: a thread handle we opened with THREAD_SUSPEND_RESUME.
                unsafe { SuspendThread(t) };
            }),
            Signal::Continue => each_thread(pid, |t| {
                // SAFETY: as above; resuming undoes exactly one suspension.
                unsafe { ResumeThread(t) };
            }),
            Signal::Kill => {
                // SAFETY: a process handle we opened for termination, closed after.
                unsafe {
                    let p = OpenProcess(PROCESS_TERMINATE, 0, pid);
                    if !p.is_null() {
                        TerminateProcess(p, 1);
                        CloseHandle(p);
                    }
                }
            }
        }
    }

    fn each_thread(pid: u32, mut f: impl FnMut(windows_sys::Win32::Foundation::HANDLE)) {
        // SAFETY: the snapshot and every thread handle are closed before returning;
        // THREADENTRY32 is plain data with its size set as the API requires.
        unsafe {
            let snapshot = CreateToolhelp32Snapshot(TH32CS_SNAPTHREAD, 0);
            if snapshot == INVALID_HANDLE_VALUE {
                return;
            }
            let mut entry: THREADENTRY32 = std::mem::zeroed();
            entry.dwSize = std::mem::size_of::<THREADENTRY32>() as u32;
            let mut more = Thread32First(snapshot, &mut entry) != 0;
            while more {
                if entry.th32OwnerProcessID == pid {
                    let thread = OpenThread(THREAD_SUSPEND_RESUME, 0, entry.th32ThreadID);
                    if !thread.is_null() {
                        f(thread);
                        CloseHandle(thread);
                    }
                }
                more = Thread32Next(snapshot, &mut entry) != 0;
            }
            CloseHandle(snapshot);
        }
    }
}

/// One job object for every worker of this process, which the system
/// closes when the process ends, however it ends: `KILL_ON_JOB_CLOSE`
/// then ends the workers too (Linux: `PR_SET_PDEATHSIG`).
#[cfg(windows)]
mod windows_job {
    use std::io;
    use std::os::windows::io::AsRawHandle as _;
    use std::sync::OnceLock;

    use windows_sys::Win32::System::JobObjects::{
        AssignProcessToJobObject, CreateJobObjectW, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
        JOBOBJECT_EXTENDED_LIMIT_INFORMATION, JobObjectExtendedLimitInformation, SetInformationJobObject,
    };

    /// The job's handle, as an integer so it may sit in a static; never
    /// closed by us (the process's end closes it, which is the point).
    /// A failure keeps the call that failed and its OS error code (an
    /// `io::Error` cannot be shared).
    static JOB: OnceLock<Result<usize, (&'static str, i32)>> = OnceLock::new();

    fn job() -> io::Result<usize> {
        let job = JOB.get_or_init(|| {
            // SAFETY: an unnamed job with default security; the limit
            // structure is plain data, zeroed but for the one flag.
            unsafe {
                let job = CreateJobObjectW(std::ptr::null(), std::ptr::null());
                if job.is_null() {
                    return Err(("CreateJobObjectW", io::Error::last_os_error().raw_os_error().unwrap_or(0)));
                }
                let mut limits: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = std::mem::zeroed();
                limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
                let set = SetInformationJobObject(
                    job,
                    JobObjectExtendedLimitInformation,
                    (&raw const limits).cast(),
                    std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
                );
                if set == 0 {
                    return Err(("SetInformationJobObject", io::Error::last_os_error().raw_os_error().unwrap_or(0)));
                }
                Ok(job as usize)
            }
        });
        job.map_err(|(call, code)| io::Error::other(format!("{call}: {}", io::Error::from_raw_os_error(code))))
    }

    pub(super) fn adopt(child: &std::process::Child) -> io::Result<()> {
        let job = job()?;
        // SAFETY: both handles are live: the job is never closed, the child
        // is borrowed for the call.
        if unsafe { AssignProcessToJobObject(job as _, child.as_raw_handle()) } == 0 {
            return Err(io::Error::other(format!(
                "could not put the worker in its job object: {}",
                io::Error::last_os_error()
            )));
        }
        Ok(())
    }
}

/// A running worker process.
pub struct WorkerProcess {
    /// Kernels (and whether metered) the worker has prepared: they are not sent again.
    prepared: HashSet<(Sha256, bool)>,
    /// The OS layers the worker reported in force when it became ready.
    sandbox: SandboxReport,
    stderr: Option<JoinHandle<()>>,
    news: Arc<Mutex<StderrNews>>,
    child: Child,
    stdin: BufWriter<ChildStdin>,
    frames: Receiver<Frame>,
    control: WorkerControl,
}

impl std::fmt::Debug for WorkerProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerProcess").field("pid", &self.control.pid).finish_non_exhaustive()
    }
}

impl WorkerProcess {
    pub fn spawn(command: &WorkerCommand) -> Result<Self, WorkerError> {
        let mut cmd = Command::new(&command.program);
        worker_environment(&mut cmd);
        if command.isolate {
            isolate_at_spawn(&mut cmd);
        }
        cmd.args(&command.args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = spawn_from_long_lived_thread(cmd).map_err(WorkerError::Spawn)?;
        // Windows has no parent-death signal: the worker joins a job that
        // ends with this process, so a crashed agent leaves no worker computing.
        #[cfg(windows)]
        if let Err(e) = windows_job::adopt(&child) {
            let _ = child.kill();
            return Err(WorkerError::Spawn(e));
        }
        let stdin = BufWriter::new(child.stdin.take().expect("piped"));
        let stdout = child.stdout.take().expect("piped");
        let news = Arc::new(Mutex::new(StderrNews::default()));
        let stderr = read_stderr(child.stderr.take().expect("piped"), news.clone()).map_err(WorkerError::Spawn)?;
        let (tx, frames) = mpsc::channel();
        std::thread::Builder::new()
            .name("worker-reader".into())
            .spawn(move || {
                let mut r = BufReader::new(stdout);
                loop {
                    let frame = ipc::read_frame::<Event>(&mut r, MAX_WORKER_BLOB_BYTES);
                    let stop = !matches!(frame, Ok(Some(_)));
                    let sent = match frame {
                        Ok(Some(f)) => tx.send(Ok(f)),
                        Ok(None) => break,
                        Err(e) => tx.send(Err(e)),
                    };
                    if stop || sent.is_err() {
                        break;
                    }
                }
            })
            .map_err(WorkerError::Spawn)?;
        let pid = child.id();
        let mut worker = Self {
            prepared: HashSet::new(),
            sandbox: SandboxReport::default(),
            stderr: Some(stderr),
            news,
            child,
            stdin,
            frames,
            control: WorkerControl {
                pid,
                frozen_since: Arc::default(),
                frozen_total_ms: Arc::default(),
                frozen: Arc::default(),
                epoch: Instant::now(),
            },
        };
        match worker.frames.recv_timeout(READY_TIMEOUT) {
            Ok(Ok((Event::Ready { sandbox, .. }, _))) => {
                worker.sandbox = sandbox;
                Ok(worker)
            }
            Ok(Ok((other, _))) => Err(WorkerError::Protocol(format!("expected ready, got {other:?}"))),
            Ok(Err(e)) => Err(WorkerError::Protocol(e.to_string())),
            Err(waited) => {
                if waited == RecvTimeoutError::Timeout {
                    let _ = worker.child.kill();
                }
                Err(WorkerError::Died(worker.reap()))
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.control.pid
    }

    /// Which OS layers confine this worker, and why any is missing.
    pub fn sandbox(&self) -> &SandboxReport {
        &self.sandbox
    }

    pub fn profile(&self) -> Profile {
        self.sandbox.profile
    }

    /// The worker's peak resident memory so far (Linux: VmHWM), if readable.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.control.pid)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    pub fn control(&self) -> WorkerControl {
        self.control.clone()
    }

    /// Runs one task. On a timeout the worker is killed (it is the only way to
    /// stop a kernel that never yields) and the outcome is `timed-out`; the
    /// caller starts a new worker for the next task.
    pub fn run(
        &mut self,
        req: &WorkRequest<'_>,
        mut on_progress: impl FnMut(f32),
        mut on_checkpoint: impl FnMut(Vec<u8>),
    ) -> Result<RunReport, WorkerError> {
        let header = Request::Run {
            task: req.task.clone(),
            kernel_sha256: req.kernel_sha256,
            params: req.params.to_owned(),
            limits: req.limits,
            resume: req.resume.is_some(),
            wgsl: req.wgsl.cloned(),
            timeout_ms: req.timeout.as_millis() as u64,
        };
        let flavour = (req.kernel_sha256, req.limits.max_fuel.is_some());
        // A shader is small and the worker keeps only its pipeline: always send it.
        let known = req.wgsl.is_none() && self.prepared.contains(&flavour);
        let kernel: &[u8] = if known { b"" } else { req.kernel };
        let mut blobs = vec![kernel, req.input];
        blobs.extend(req.resume);
        if let Err(e) = ipc::write_frame(&mut self.stdin, &header, &blobs) {
            return Err(WorkerError::Died(format!("{e}; {}", self.reap())));
        }
        let started = Instant::now();
        let frozen_at_start = self.control.frozen_ms();
        loop {
            let frozen = Duration::from_millis(self.control.frozen_ms() - frozen_at_start);
            let remaining = (req.timeout + frozen).saturating_sub(started.elapsed());
            match self.frames.recv_timeout(remaining) {
                Ok(Ok((Event::Progress { done }, _))) => on_progress(done),
                Ok(Ok((Event::Checkpoint, mut blobs))) if blobs.len() == 1 => on_checkpoint(blobs.remove(0)),
                Ok(Ok((Event::Done { mut outcome, wall_ms, cpu_ms, retire }, mut blobs))) if blobs.len() == 1 => {
                    outcome.output = blobs.remove(0);
                    if retire {
                        // It exits by itself; make sure, and reap it.
                        self.kill();
                    }
                    if outcome.status != Status::InvalidKernel {
                        self.prepared.insert(flavour);
                    }
                    return Ok(RunReport { outcome, wall_ms, cpu_ms });
                }
                Ok(Ok((other, _))) => {
                    self.kill();
                    return Err(WorkerError::Protocol(format!("unexpected {other:?}")));
                }
                Ok(Err(e)) => {
                    self.kill();
                    return Err(WorkerError::Protocol(e.to_string()));
                }
                Err(RecvTimeoutError::Timeout) => {
                    // Frozen time does not count: look again before giving up.
                    let frozen = Duration::from_millis(self.control.frozen_ms() - frozen_at_start);
                    if started.elapsed() < req.timeout + frozen {
                        continue;
                    }
                    self.kill();
                    // Until the worker is gone, not just until the deadline.
                    let wall_ms = started.elapsed().as_millis() as u64;
                    return Ok(RunReport {
                        outcome: Outcome::failed(
                            Status::TimedOut,
                            format!("wall-clock limit of {} ms reached", req.timeout.as_millis()),
                        ),
                        wall_ms,
                        cpu_ms: 0,
                    });
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let ended = self.child.wait();
                    if let Some(call) = ended.as_ref().ok().and_then(|status| self.violation(*status)) {
                        let why = format!("the worker made a system call outside its sandbox ({call}) and was stopped");
                        let wall_ms = started.elapsed().as_millis() as u64;
                        let outcome = Outcome::failed(Status::SandboxViolation, why);
                        return Ok(RunReport { outcome, wall_ms, cpu_ms: 0 });
                    }
                    return Err(WorkerError::Died(self.describe(ended)));
                }
            }
        }
    }

    /// The call that stopped a worker which ended as its seccomp filter ends
    /// it (our reporter's exit status, or SIGSYS if the reporter was undone).
    fn violation(&mut self, status: std::process::ExitStatus) -> Option<String> {
        #[cfg(unix)]
        let by_filter = {
            use std::os::unix::process::ExitStatusExt as _;
            status.code() == Some(lockdown::VIOLATION_EXIT_CODE) || status.signal() == Some(libc::SIGSYS)
        };
        #[cfg(not(unix))]
        let by_filter = status.code() == Some(lockdown::VIOLATION_EXIT_CODE);
        if !by_filter {
            return None;
        }
        // The worker is gone, so its stderr ends: every line is read after this.
        if let Some(reader) = self.stderr.take() {
            let _ = reader.join();
        }
        let nr = self.news.lock().unwrap().violation;
        Some(nr.map_or_else(|| "a call it did not name".into(), lockdown::syscall_name))
    }

    /// False once the worker has exited (killed, timed out, or retired after
    /// a GPU failure): the caller then starts a new one.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the worker now (a frozen one too) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        self.control.thaw();
        let _ = self.child.wait();
    }

    /// Waits for a worker that is going away and says how it ended.
    fn reap(&mut self) -> String {
        let ended = self.child.wait();
        self.describe(ended)
    }

    /// How the worker ended, with the last thing it said (why it could not start).
    fn describe(&mut self, ended: io::Result<std::process::ExitStatus>) -> String {
        let how = match ended {
            Ok(status) => describe_exit(status),
            Err(e) => return e.to_string(),
        };
        if let Some(reader) = self.stderr.take() {
            let _ = reader.join();
        }
        let last = std::mem::take(&mut self.news.lock().unwrap().last_line);
        if last.is_empty() { how } else { format!("{how}: {last}") }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt as _;
        if let Some(sig) = status.signal() {
            return format!("killed by signal {sig}");
        }
    }
    status.to_string()
}
