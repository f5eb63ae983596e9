//! The watcher: sensors → governor → the workers, on one thread of its own.
//!
//! While a worker runs, the user's input wakes it: the idle sensor's own
//! thread sends [`Command::Input`] the moment the display server or the
//! compositor reports input after a quiet spell, so the user gets the
//! machine back within a millisecond or two. Where the sensor has no such
//! events (logind, Windows, macOS, or its source lost for now), it reads
//! input idleness every [`FAST_POLL`] instead. Otherwise it reads it every
//! [`SLOW_POLL`], the other sensors every [`SLOW_POLL`], decides,
//! and enforces the decision on every attached worker at once: a pause
//! freezes them (SIGSTOP), a duty cycle below 100 % freezes and thaws them
//! within each [`DUTY_PERIOD`]. The scheduler only reads the decision to
//! know whether to take new work; it never sits between input and freeze.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idlemesh_runtime::{SandboxReport, WorkerControl};
use serde::Serialize;
use tokio::sync::watch;

use crate::governor::{self, Action, Decision, GovernorState, ManualPause, Pauses, ReasonCode, Scope, Snapshot};
use crate::ledger::Ledger;
use crate::sensors::{self, Sensors, SlowReadings};
use crate::settings::Settings;

/// Idle polling while a worker runs and input does not wake the watcher:
/// input → freeze is at most this plus a few ms.
pub const FAST_POLL: Duration = Duration::from_millis(15);
/// Everything else, and idle polling while nothing runs.
pub const SLOW_POLL: Duration = Duration::from_secs(1);
/// Short, so a 50 % limit is a smooth 50 ms on / 50 ms off, not a 1 s sawtooth.
pub const DUTY_PERIOD: Duration = Duration::from_millis(100);
/// How often the watcher looks again for a graphical session (a D-Bus call to logind).
const SESSION_POLL: Duration = Duration::from_secs(10);
/// How often the settings files are looked at for changes.
const SETTINGS_POLL: Duration = Duration::from_secs(2);
/// How long after our last GPU kernel stopped the GPU's busy counter
/// counts as other programs' alone (drivers average it over up to a second).
const GPU_SETTLE: Duration = Duration::from_secs(1);

#[derive(Debug)]
enum Command {
    /// The user's pause (or, with `ManualPause::None`, resume) of one kind of work or all.
    Pause(Scope, ManualPause, Option<mpsc::Sender<()>>),
    /// A worker, and whether it runs GPU kernels.
    Attach(WorkerControl, bool),
    Detach(u32),
    /// What a new worker reported of its OS sandbox.
    Sandbox(Box<SandboxReport>),
    /// Whether a worker found a GPU, asked when GPU work was turned on.
    GpuFound(Option<bool>),
    SettingsChanged,
    /// The user's "Start now" for the demo pool, or its end.
    LendNow(bool),
    /// The idle sensor saw input after a quiet spell.
    Input,
    Shutdown,
}

/// What the watcher last saw and decided, for `idlemesh status`.
#[derive(Debug, Clone, Serialize)]
pub struct WatchStatus {
    pub snapshot: Snapshot,
    pub decision: Decision,
    pub pauses: Pauses,
    pub idle_sensor: &'static str,
    /// Whether input wakes the watcher (or it polls).
    pub input_wakes: bool,
    /// Workers currently attached (their pids), and whether they are frozen now.
    pub workers: Vec<u32>,
    pub frozen: bool,
    /// Of those, the ones running GPU kernels, and the ones frozen now.
    pub gpu_workers: Vec<u32>,
    pub frozen_workers: Vec<u32>,
}

/// The handle everyone else holds.
#[derive(Debug, Clone)]
pub struct Watcher {
    /// Shared by every clone: the last one dropped ends the loop.
    tx: Arc<Commands>,
    status: Arc<Mutex<Option<WatchStatus>>>,
    decisions: watch::Receiver<Decision>,
}

/// The handles' way to the loop. The loop keeps a sender of its own (input
/// events wake it through it), so its channel never closes: only
/// `Shutdown` ends its thread, and the last handle dropped without one
/// would leave it running, its workers still governed.
#[derive(Debug)]
struct Commands(mpsc::Sender<Command>);

impl Commands {
    fn send(&self, command: Command) -> Result<(), mpsc::SendError<Command>> {
        self.0.send(command)
    }
}

impl Drop for Commands {
    fn drop(&mut self) {
        let _ = self.send(Command::Shutdown);
    }
}

pub struct WatcherConfig {
    pub settings: Arc<Mutex<Settings>>,
    /// Where the manual pause is kept across restarts.
    pub pause_file: PathBuf,
    pub ledger_path: PathBuf,
    /// Builds the sensors on the watcher's own thread.
    pub sensors: Box<dyn FnOnce() -> Sensors + Send>,
}

impl std::fmt::Debug for WatcherConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatcherConfig").field("pause_file", &self.pause_file).finish_non_exhaustive()
    }
}

impl Watcher {
    pub fn start(config: WatcherConfig) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let status = Arc::new(Mutex::new(None));
        let initial = Decision { action: Action::Pause, reasons: Vec::new(), traffic: Default::default() };
        let (decision_tx, decisions) = watch::channel(initial);
        let shared = status.clone();
        let (ready_tx, ready) = mpsc::channel();
        let input_tx = tx.clone();
        std::thread::Builder::new().name("watcher".into()).spawn(move || {
            let mut w = Loop::new(config, shared, decision_tx);
            w.run(rx, input_tx, ready_tx);
        })?;
        // Callers (the control socket first) may rely on a first decision.
        let _ = ready.recv_timeout(Duration::from_secs(10));
        Ok(Self { tx: Arc::new(Commands(tx)), status, decisions })
    }

    /// Pauses (or, with `ManualPause::None`, resumes) the work `scope`
    /// covers and returns once its workers are frozen (or thawed).
    pub fn set_pause(&self, scope: Scope, pause: ManualPause) {
        let (ack, done) = mpsc::channel();
        if self.tx.send(Command::Pause(scope, pause, Some(ack))).is_ok() {
            let _ = done.recv_timeout(Duration::from_secs(2));
        }
    }

    /// A new worker to govern; `gpu`: it runs GPU kernels (stopped with the GPU's work).
    pub fn attach(&self, worker: WorkerControl, gpu: bool) {
        let _ = self.tx.send(Command::Attach(worker, gpu));
    }

    pub fn detach(&self, pid: u32) {
        let _ = self.tx.send(Command::Detach(pid));
    }

    /// A worker started with these OS layers: the governor checks them
    /// against `require_sandbox`, and the status shows them.
    pub fn sandbox_seen(&self, report: SandboxReport) {
        let _ = self.tx.send(Command::Sandbox(Box::new(report)));
    }

    /// What the probe for a GPU found (`None`: GPU work is off, not asked).
    pub fn gpu_found(&self, found: Option<bool>) {
        let _ = self.tx.send(Command::GpuFound(found));
    }

    /// Work now whether or not the user is present (or no longer).
    pub fn set_lend_now(&self, on: bool) {
        let _ = self.tx.send(Command::LendNow(on));
    }

    /// The settings were changed through the control socket: apply them now.
    pub fn settings_changed(&self) {
        let _ = self.tx.send(Command::SettingsChanged);
    }

    pub fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown);
    }

    pub fn status(&self) -> Option<WatchStatus> {
        self.status.lock().expect("status lock").clone()
    }

    /// Follows the governor's decisions (the scheduler waits on this).
    pub fn decisions(&self) -> watch::Receiver<Decision> {
        self.decisions.clone()
    }
}

struct Loop {
    config: WatcherConfig,
    shared: Arc<Mutex<Option<WatchStatus>>>,
    decision_tx: watch::Sender<Decision>,
    ledger: Option<Ledger>,
    /// Each worker, and whether it runs GPU kernels.
    workers: Vec<(WorkerControl, bool)>,
    /// The OS layers the latest worker reported.
    sandbox: Option<SandboxReport>,
    /// Whether the last probe found a GPU (`None`: not asked).
    gpu_found: Option<bool>,
    state: GovernorState,
    pauses: Pauses,
    lend_now: bool,
    decision: Decision,
    /// Callers waiting for their pause or resume to take effect.
    acks: Vec<mpsc::Sender<()>>,
    /// Today's transfers, for the daily caps.
    transfer: crate::ledger::DailyTransfer,
    /// The last pause state written to the ledger, and its reasons.
    recorded: Option<(bool, Option<Vec<ReasonCode>>)>,
    duty_epoch: Instant,
    /// Whether input wakes the watcher now (see [`crate::sensors::IdleSensor::wakes_on_input`]).
    input_wakes: bool,
    /// Input woke the watcher: read the idle time at once.
    input_arrived: bool,
    /// Whether a wake on input is wanted now (a worker runs): input at
    /// other times does not wake the watcher.
    watching: Arc<AtomicBool>,
    /// Since when no GPU kernel of ours has run (`None`: one runs now).
    gpu_idle_since: Option<Instant>,
    /// When the slow sensors (the GPU's busy counter among them) were read.
    slow_read_at: Instant,
}

impl Loop {
    fn new(
        config: WatcherConfig,
        shared: Arc<Mutex<Option<WatchStatus>>>,
        decision_tx: watch::Sender<Decision>,
    ) -> Self {
        let pauses = crate::pause::load(&config.pause_file);
        let ledger = match Ledger::open(&config.ledger_path) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::error!(error = %e, "pauses will not be recorded in the ledger");
                None
            }
        };
        let decision = decision_tx.borrow().clone();
        Self {
            config,
            shared,
            decision_tx,
            ledger,
            workers: Vec::new(),
            sandbox: None,
            gpu_found: None,
            state: GovernorState::default(),
            pauses,
            lend_now: false,
            decision,
            acks: Vec::new(),
            recorded: None,
            transfer: Default::default(),
            duty_epoch: Instant::now(),
            input_wakes: false,
            input_arrived: false,
            watching: Arc::default(),
            gpu_idle_since: Some(Instant::now()),
            slow_read_at: Instant::now(),
        }
    }

    fn run(&mut self, rx: mpsc::Receiver<Command>, input_tx: mpsc::Sender<Command>, ready: mpsc::Sender<()>) {
        let mut sensors = (std::mem::replace(&mut self.config.sensors, Box::new(Sensors::this_machine)))();
        let idle_sensor = sensors.idle.name();
        let watching = self.watching.clone();
        let wake: crate::sensors::Wake = Arc::new(move || {
            if watching.load(Ordering::Acquire) {
                let _ = input_tx.send(Command::Input);
            }
        });
        sensors.idle.wake_on_input(wake.clone());
        // A window going full screen stops work at once too (leaving it is
        // seen on the next slow tick, as the idle time is).
        sensors.screen.wake_on_change(wake);
        let mut exclusive = None;
        let mut presence_unknown = sensors.presence_unknown();
        // Someone may log in after an agent started at boot: look again now and then.
        let mut next_session_check = Instant::now() + SESSION_POLL;
        let mut slow = SlowReadings::default();
        let mut idle = sensors.idle.idle();
        let (mut next_fast, mut next_slow, mut next_settings) = (Instant::now(), Instant::now(), Instant::now());
        loop {
            let now = Instant::now();
            let input_arrived = std::mem::take(&mut self.input_arrived);
            self.input_wakes = sensors.idle.wakes_on_input();
            if now >= next_settings {
                next_settings = now + SETTINGS_POLL;
                // The limits are read from the effective settings below, every pass.
                self.config.settings.lock().expect("settings lock").refresh();
            }
            // The limits of this pass, read once.
            let mut limits = self.config.settings.lock().expect("settings lock").limits();
            limits.lend_now = self.lend_now;
            let slow_tick = now >= next_slow;
            if slow_tick {
                next_slow = now + SLOW_POLL;
                let ours: Vec<u32> = self.workers.iter().map(|(w, _)| w.pid()).collect();
                // The GPU only while GPU work is on: reading it may wake a
                // sleeping laptop GPU.
                slow = sensors.read_slow(&ours, limits.gpu_enabled);
                self.slow_read_at = now;
                if now >= next_session_check {
                    next_session_check = now + SESSION_POLL;
                    sensors.graphical_session = crate::sensors::graphical_session();
                    presence_unknown = sensors.presence_unknown();
                }
                if let Some(ledger) = &self.ledger {
                    let tz = jiff::tz::TimeZone::system();
                    let today = crate::ledger::local_day(crate::now_ms(), &tz);
                    self.transfer.update(ledger, &today, &tz);
                }
                idle = sensors.idle.idle();
                next_fast = now + self.fast_period();
            } else if now >= next_fast || input_arrived {
                idle = sensors.idle.idle();
                next_fast = now + self.fast_period();
            }
            let mut pauses = self.pauses;
            pauses.expire(crate::now_ms());
            if pauses != self.pauses {
                self.pauses = pauses;
                self.save_pauses();
            }
            if slow_tick {
                // The programs the user listed, with the slow sensors.
                exclusive = crate::sensors::running_program(&limits.exclusive_programs);
            }
            let mut snapshot =
                sensors::snapshot(jiff::Zoned::now(), idle, &slow, self.transfer.uploaded, self.transfer.downloaded);
            snapshot.sandbox = self.sandbox.clone();
            snapshot.gpu_found = self.gpu_found.filter(|_| limits.gpu_enabled);
            snapshot.fullscreen = sensors.screen.fullscreen();
            snapshot.exclusive_program = exclusive.clone();
            // Other programs' share: counted per client where the kernel
            // does (DRM fdinfo), so it is known while ours run; else the
            // device's counter, which is theirs only if it was read once
            // none of ours had run for a while.
            let read_at = self.slow_read_at;
            snapshot.other_gpu_percent = slow.gpu_shares.map(|s| s.others).or_else(|| {
                snapshot.gpu_busy_percent.filter(|_| self.gpu_idle_since.is_some_and(|t| read_at >= t + GPU_SETTLE))
            });
            snapshot.graphical_session = presence_unknown.clone();
            let (decision, state) = governor::decide(&self.state, &snapshot, &limits, self.pauses);
            self.state = state;
            // Watching whenever work may run, workers or not (between two
            // tasks the user's return must still count), and before
            // thawing: input between the two still wakes us.
            self.watching.store(!decision.is_paused(), Ordering::Release);
            self.enforce(&decision);
            let ours_on_gpu = self.workers.iter().any(|(w, gpu)| *gpu && !w.is_frozen());
            match (ours_on_gpu, self.gpu_idle_since) {
                (true, _) => self.gpu_idle_since = None,
                (false, None) => self.gpu_idle_since = Some(Instant::now()),
                (false, Some(_)) => {}
            }
            if decision != self.decision {
                self.decision = decision.clone();
                self.decision_tx.send_replace(decision.clone());
                // Work just resumed: watch input closely from now, not from the next slow tick.
                next_fast = next_fast.min(Instant::now() + self.fast_period());
            }
            // `pause` promises the workers are stopped when it returns, not
            // just signalled, and the status it is followed by says so too.
            if !self.acks.is_empty() {
                for (w, _) in self.workers.iter().filter(|(w, _)| w.is_frozen()) {
                    if !w.wait_stopped(Duration::from_millis(500)) {
                        tracing::warn!(pid = w.pid(), "a worker is slow to stop");
                    }
                }
            }
            let pids = |keep: fn(&(WorkerControl, bool)) -> bool| -> Vec<u32> {
                self.workers.iter().filter(|w| keep(w)).map(|(w, _)| w.pid()).collect()
            };
            let frozen_workers = pids(|(w, _)| w.is_frozen());
            *self.shared.lock().expect("status lock") = Some(WatchStatus {
                snapshot,
                decision: decision.clone(),
                pauses: self.pauses,
                idle_sensor,
                input_wakes: self.input_wakes,
                workers: pids(|_| true),
                frozen: !self.workers.is_empty() && frozen_workers.len() == self.workers.len(),
                gpu_workers: pids(|(_, gpu)| *gpu),
                frozen_workers,
            });
            for ack in self.acks.drain(..) {
                let _ = ack.send(());
            }
            let _ = ready.send(());
            // Last: the ledger's fsync must not delay the freeze or the answer.
            let key = (decision.is_paused(), decision.is_paused().then(|| codes(&decision)));
            if self.recorded.as_ref() != Some(&key) {
                self.record_transition(&decision);
                self.recorded = Some(key);
            }

            let wake = [Some(next_fast), Some(next_slow), Some(next_settings), self.next_duty_edge()]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(next_slow);
            let timeout = wake.saturating_duration_since(Instant::now());
            match rx.recv_timeout(timeout) {
                Ok(cmd) => {
                    if !self.command(cmd) {
                        break;
                    }
                    // Commands come in bursts (attach then pause): take them all first.
                    while let Ok(cmd) = rx.try_recv() {
                        if !self.command(cmd) {
                            return self.release();
                        }
                    }
                    // A new worker must be polled fast from its first moment.
                    next_fast = next_fast.min(Instant::now() + self.fast_period());
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.release();
    }

    /// False when the loop should end.
    fn command(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Pause(scope, p, ack) => {
                self.pauses.set(scope, p);
                if let Some(ack) = ack {
                    self.acks.push(ack);
                }
                self.save_pauses();
            }
            Command::Attach(w, gpu) => {
                // A newcomer joins in the current phase, frozen if its kind is.
                if self.stopped(&self.decision, gpu) {
                    w.freeze();
                }
                self.workers.push((w, gpu));
                // Look at the user now, not at the next slow tick.
                self.input_arrived = true;
            }
            Command::Detach(pid) => self.workers.retain(|(w, _)| w.pid() != pid),
            Command::Sandbox(report) => self.sandbox = Some(*report),
            Command::GpuFound(found) => self.gpu_found = found,
            Command::SettingsChanged => {}
            Command::LendNow(on) => self.lend_now = on,
            Command::Input => self.input_arrived = true,
            Command::Shutdown => return false,
        }
        true
    }

    fn save_pauses(&self) {
        crate::pause::save(&self.config.pause_file, &self.pauses);
    }

    fn fast_period(&self) -> Duration {
        let watch = !self.workers.is_empty() && !self.decision.is_paused();
        if watch && !self.input_wakes { FAST_POLL } else { SLOW_POLL }
    }

    /// When the duty cycle next flips the workers, if it is cycling.
    fn next_duty_edge(&self) -> Option<Instant> {
        let Action::Run { duty_cycle_percent, .. } = self.decision.action else { return None };
        if duty_cycle_percent >= 100 || self.workers.is_empty() {
            return None;
        }
        let period = DUTY_PERIOD.as_micros() as u64;
        let on = period * u64::from(duty_cycle_percent) / 100;
        let t = self.duty_epoch.elapsed().as_micros() as u64;
        let (cycle, phase) = (t / period, t % period);
        let edge = if phase < on { cycle * period + on } else { (cycle + 1) * period };
        Some(self.duty_epoch + Duration::from_micros(edge))
    }

    /// Whether a worker of this kind is to be frozen now: its kind may not
    /// run, or the duty cycle is in its off phase.
    fn stopped(&self, decision: &Decision, gpu: bool) -> bool {
        match decision.action {
            Action::Pause => true,
            _ if !decision.kind_runs(gpu) => true,
            Action::Run { duty_cycle_percent, .. } if duty_cycle_percent < 100 => {
                let period = DUTY_PERIOD.as_micros() as u64;
                let phase = self.duty_epoch.elapsed().as_micros() as u64 % period;
                phase >= period * u64::from(duty_cycle_percent) / 100
            }
            Action::Run { .. } => false,
        }
    }

    fn enforce(&mut self, decision: &Decision) {
        for (w, gpu) in &self.workers {
            if self.stopped(decision, *gpu) { w.freeze() } else { w.thaw() }
        }
    }

    /// Pauses and resumes go in the ledger with their reasons (not each
    /// duty-cycle flip: those are the settings at work, not a pause).
    fn record_transition(&mut self, decision: &Decision) {
        let body = idlemesh_control::PauseBody { reasons: decision.reasons.clone() };
        let entry = if decision.is_paused() {
            idlemesh_control::LedgerEntry::Paused(body)
        } else {
            idlemesh_control::LedgerEntry::Resumed(body)
        };
        tracing::info!(reasons = ?decision.reasons.iter().map(|r| &r.text).collect::<Vec<_>>(), "{}", entry.kind());
        if let Some(ledger) = self.ledger.as_mut()
            && let Err(e) = ledger.record(&entry)
        {
            tracing::error!(error = %e, "could not record a pause in the ledger");
        }
    }

    /// Never leave a worker frozen behind us.
    fn release(&mut self) {
        for (w, _) in &self.workers {
            w.thaw();
        }
    }
}

fn codes(d: &Decision) -> Vec<ReasonCode> {
    d.reasons.iter().map(|r| r.code).collect()
}

// Under Xvfb: an X server is this test's idle sensor.
#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crate::settings::Machine;

    /// With an idle sensor that wakes the loop on input (X, here under
    /// Xvfb), the loop holds a sender of its own: only the last handle's
    /// drop sending `Shutdown` ends it.
    #[test]
    fn dropping_the_last_watcher_handle_ends_its_thread() {
        let x = crate::sensors::xvfb::Xvfb::start();
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let settings = Settings::open(Machine::this(), path("settings.toml"), path("policy.toml"));
        let display = x.display.clone();
        let watcher = Watcher::start(WatcherConfig {
            settings: Arc::new(Mutex::new(settings)),
            pause_file: path("pause.json"),
            ledger_path: path("ledger.jsonl"),
            sensors: Box::new(move || {
                let mut sensors = Sensors::this_machine();
                sensors.idle = Box::new(crate::sensors::X11Idle::connect_to(Some(&display)).unwrap());
                sensors
            }),
        })
        .unwrap();
        let decisions = watcher.decisions();
        // Clones come and go (the scheduler's slots hold them): the loop runs on.
        drop(watcher.clone());
        std::thread::sleep(Duration::from_millis(500));
        assert!(decisions.has_changed().is_ok(), "the watcher's thread ended while a handle remains");
        drop(watcher);
        // The loop's end drops the decisions' sender.
        let deadline = Instant::now() + Duration::from_secs(10);
        while decisions.has_changed().is_ok() {
            assert!(Instant::now() < deadline, "the watcher's thread still runs 10 s after its handle was dropped");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
