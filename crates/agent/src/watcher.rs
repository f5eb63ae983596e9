//! The watcher: sensors → governor → the workers, on one thread of its own.
//!
//! It reads input idleness every [`FAST_POLL`] while a worker is running (so
//! the user gets the machine back within milliseconds) and every
//! [`SLOW_POLL`] otherwise, the other sensors every [`SLOW_POLL`], decides,
//! and enforces the decision on every attached worker at once: a pause
//! freezes them (SIGSTOP), a duty cycle below 100 % freezes and thaws them
//! within each [`DUTY_PERIOD`]. The scheduler only reads the decision to
//! know whether to take new work; it never sits between input and freeze.

use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idlemesh_runtime::{SandboxReport, WorkerControl};
use serde::Serialize;
use tokio::sync::watch;

use crate::governor::{self, Action, Decision, GovernorState, ManualPause, ReasonCode, Snapshot};
use crate::ledger::Ledger;
use crate::sensors::{self, Sensors, SlowReadings};
use crate::settings::Settings;

/// Idle polling while a worker runs: input → freeze is at most this plus a few ms.
pub const FAST_POLL: Duration = Duration::from_millis(15);
/// Everything else, and idle polling while nothing runs.
pub const SLOW_POLL: Duration = Duration::from_secs(1);
/// Short, so a 50 % limit is a smooth 50 ms on / 50 ms off, not a 1 s sawtooth.
pub const DUTY_PERIOD: Duration = Duration::from_millis(100);
/// How often the watcher looks again for a graphical session (a D-Bus call to logind).
const SESSION_POLL: Duration = Duration::from_secs(10);
/// How often the settings files are looked at for changes.
const SETTINGS_POLL: Duration = Duration::from_secs(2);

#[derive(Debug)]
enum Command {
    Pause(ManualPause, Option<mpsc::Sender<()>>),
    Attach(WorkerControl),
    Detach(u32),
    /// What a new worker reported of its OS sandbox.
    Sandbox(Box<SandboxReport>),
    SettingsChanged,
    /// The user's "Start now" for the demo pool, or its end.
    LendNow(bool),
    Shutdown,
}

/// What the watcher last saw and decided, for `idlemesh status`.
#[derive(Debug, Clone, Serialize)]
pub struct WatchStatus {
    pub snapshot: Snapshot,
    pub decision: Decision,
    pub manual_pause: ManualPause,
    pub idle_sensor: &'static str,
    /// Workers currently attached (their pids), and whether they are frozen now.
    pub workers: Vec<u32>,
    pub frozen: bool,
}

/// The handle everyone else holds.
#[derive(Debug, Clone)]
pub struct Watcher {
    tx: mpsc::Sender<Command>,
    status: Arc<Mutex<Option<WatchStatus>>>,
    decisions: watch::Receiver<Decision>,
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
        std::thread::Builder::new().name("watcher".into()).spawn(move || {
            let mut w = Loop::new(config, shared, decision_tx);
            w.run(rx, ready_tx);
        })?;
        // Callers (the control socket first) may rely on a first decision.
        let _ = ready.recv_timeout(Duration::from_secs(10));
        Ok(Self { tx, status, decisions })
    }

    /// Pauses (or, with `ManualPause::None`, resumes) and returns once the
    /// workers are frozen (or thawed).
    pub fn set_pause(&self, pause: ManualPause) {
        let (ack, done) = mpsc::channel();
        if self.tx.send(Command::Pause(pause, Some(ack))).is_ok() {
            let _ = done.recv_timeout(Duration::from_secs(2));
        }
    }

    pub fn attach(&self, worker: WorkerControl) {
        let _ = self.tx.send(Command::Attach(worker));
    }

    pub fn detach(&self, pid: u32) {
        let _ = self.tx.send(Command::Detach(pid));
    }

    /// A worker started with these OS layers: the governor checks them
    /// against `require_sandbox`, and the status shows them.
    pub fn sandbox_seen(&self, report: SandboxReport) {
        let _ = self.tx.send(Command::Sandbox(Box::new(report)));
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
    workers: Vec<WorkerControl>,
    /// The OS layers the latest worker reported.
    sandbox: Option<SandboxReport>,
    state: GovernorState,
    manual: ManualPause,
    lend_now: bool,
    decision: Decision,
    /// Whether the workers are frozen now.
    frozen: bool,
    /// Callers waiting for their pause or resume to take effect.
    acks: Vec<mpsc::Sender<()>>,
    /// Today's transfers, for the daily caps.
    transfer: crate::ledger_summary::DailyTransfer,
    /// The last pause state written to the ledger, and its reasons.
    recorded: Option<(bool, Option<Vec<ReasonCode>>)>,
    duty_epoch: Instant,
}

impl Loop {
    fn new(
        config: WatcherConfig,
        shared: Arc<Mutex<Option<WatchStatus>>>,
        decision_tx: watch::Sender<Decision>,
    ) -> Self {
        let manual = std::fs::read(&config.pause_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(ManualPause::None);
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
            state: GovernorState::default(),
            manual,
            lend_now: false,
            decision,
            frozen: false,
            acks: Vec::new(),
            recorded: None,
            transfer: Default::default(),
            duty_epoch: Instant::now(),
        }
    }

    fn run(&mut self, rx: mpsc::Receiver<Command>, ready: mpsc::Sender<()>) {
        let mut sensors = (std::mem::replace(&mut self.config.sensors, Box::new(Sensors::this_machine)))();
        let idle_sensor = sensors.idle.name();
        let mut presence_unknown = sensors.presence_unknown();
        // Someone may log in after an agent started at boot: look again now and then.
        let mut next_session_check = Instant::now() + SESSION_POLL;
        let mut slow = SlowReadings::default();
        let mut idle = sensors.idle.idle();
        let (mut next_fast, mut next_slow, mut next_settings) = (Instant::now(), Instant::now(), Instant::now());
        loop {
            let now = Instant::now();
            if now >= next_settings {
                next_settings = now + SETTINGS_POLL;
                // The limits are read from the effective settings below, every pass.
                self.config.settings.lock().expect("settings lock").refresh();
            }
            if now >= next_slow {
                next_slow = now + SLOW_POLL;
                let ours: Vec<u32> = self.workers.iter().map(WorkerControl::pid).collect();
                slow = sensors.read_slow(&ours);
                if now >= next_session_check {
                    next_session_check = now + SESSION_POLL;
                    sensors.graphical_session = crate::sensors::graphical_session();
                    presence_unknown = sensors.presence_unknown();
                }
                if let Some(ledger) = &self.ledger {
                    let tz = jiff::tz::TimeZone::system();
                    let today = crate::ledger_summary::local_day(crate::now_ms(), &tz);
                    self.transfer.update(ledger, &today, &tz);
                }
                idle = sensors.idle.idle();
                next_fast = now + self.fast_period();
            } else if now >= next_fast {
                idle = sensors.idle.idle();
                next_fast = now + self.fast_period();
            }
            if let ManualPause::Until { until_ms } = self.manual
                && crate::now_ms() >= until_ms
            {
                self.command(Command::Pause(ManualPause::None, None));
            }
            let mut limits = self.config.settings.lock().expect("settings lock").limits();
            limits.lend_now = self.lend_now;
            let mut snapshot =
                sensors::snapshot(jiff::Zoned::now(), idle, &slow, self.transfer.uploaded, self.transfer.downloaded);
            snapshot.sandbox = self.sandbox.clone();
            snapshot.graphical_session = presence_unknown.clone();
            let (decision, state) = governor::decide(&self.state, &snapshot, &limits, self.manual);
            self.state = state;
            self.enforce(&decision);
            if decision != self.decision {
                self.decision = decision.clone();
                self.decision_tx.send_replace(decision.clone());
                // Work just resumed: watch input closely from now, not from the next slow tick.
                next_fast = next_fast.min(Instant::now() + self.fast_period());
            }
            // `pause` promises the workers are stopped when it returns, not
            // just signalled, and the status it is followed by says so too.
            if !self.acks.is_empty() && self.frozen {
                for w in &self.workers {
                    if !w.wait_stopped(Duration::from_millis(500)) {
                        tracing::warn!(pid = w.pid(), "a worker is slow to stop");
                    }
                }
            }
            *self.shared.lock().expect("status lock") = Some(WatchStatus {
                snapshot,
                decision: decision.clone(),
                manual_pause: self.manual,
                idle_sensor,
                workers: self.workers.iter().map(WorkerControl::pid).collect(),
                frozen: self.frozen,
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
            Command::Pause(p, ack) => {
                self.manual = p;
                if let Some(ack) = ack {
                    self.acks.push(ack);
                }
                let saved = serde_json::to_vec(&p).expect("pauses serialise");
                if let Err(e) = crate::settings::write_atomically(&self.config.pause_file, &saved) {
                    tracing::warn!(error = %e, "the pause will not survive a restart");
                }
            }
            Command::Attach(w) => {
                // A newcomer joins in the current phase, frozen if the others are.
                if self.frozen {
                    w.freeze();
                }
                self.workers.push(w);
            }
            Command::Detach(pid) => self.workers.retain(|w| w.pid() != pid),
            Command::Sandbox(report) => self.sandbox = Some(*report),
            Command::SettingsChanged => {}
            Command::LendNow(on) => self.lend_now = on,
            Command::Shutdown => return false,
        }
        true
    }

    fn fast_period(&self) -> Duration {
        if !self.workers.is_empty() && !self.decision.is_paused() { FAST_POLL } else { SLOW_POLL }
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

    fn enforce(&mut self, decision: &Decision) {
        let freeze = match decision.action {
            Action::Pause => true,
            Action::Run { duty_cycle_percent, .. } if duty_cycle_percent < 100 => {
                let period = DUTY_PERIOD.as_micros() as u64;
                let phase = self.duty_epoch.elapsed().as_micros() as u64 % period;
                phase >= period * u64::from(duty_cycle_percent) / 100
            }
            Action::Run { .. } => false,
        };
        for w in &self.workers {
            if freeze { w.freeze() } else { w.thaw() }
        }
        self.frozen = freeze;
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
        for w in &self.workers {
            w.thaw();
        }
    }
}

fn codes(d: &Decision) -> Vec<ReasonCode> {
    d.reasons.iter().map(|r| r.code).collect()
}
