//! The agent's status (`status` request, `idlemesh status --json`): one
//! type for the CLI, the tray and the dashboard. Its JSON shape is a
//! contract (DESIGN §4): fields are added, never renamed or moved.

use std::collections::BTreeMap;
use std::path::PathBuf;

use idlemesh_protocol::sandbox::SandboxReport;
use serde::{Deserialize, Serialize};
use ts_rs::TS;

use crate::decision::{Decision, ManualPause, Pauses, Reason, Snapshot};
use crate::settings::EffectiveValue;

/// What the agent is doing, in one word.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Not answering yet (or its first decision is not made).
    #[default]
    Starting,
    Working,
    WaitingForWork,
    /// The governor or the user paused work: `reasons` say why.
    Paused,
    /// No pool is chosen.
    NoPool,
    Connecting,
    /// Not running: `error` and `error_code` say why (the app's stand-in
    /// status for an agent that could not start or cannot be reached).
    Error,
}

/// Why there is no connection to a pool (`pool_problem_code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum PoolProblemCode {
    NoPool,
    Unreachable,
    /// The pool refused this device (`pool_said` has its words).
    Refused,
    PoolKeyChanged,
    InsecurePool,
    PolicyUnreadable,
    Metered,
    CannotJoin,
}

/// Why the agent is not running (`error_code`, with `state: "error"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum StartProblem {
    NoKeyring,
    KeyringRefused,
    KeyringDamaged,
    KeyringSetting,
    AlreadyRunning,
    SocketNotPrivate,
    ControlSocket,
    DataDir,
    /// Nothing answers on the control socket.
    NotRunning,
    Other,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, TS)]
pub struct AgentStatus {
    pub state: State,
    pub paused: bool,
    pub reasons: Vec<Reason>,
    /// `null` while the agent is starting.
    pub decision: Option<Decision>,
    /// The user's pause of all work (`none` while one kind may run).
    pub manual_pause: Option<ManualPause>,
    /// The user's pause of each kind of work.
    #[serde(default)]
    #[ts(optional = nullable)]
    pub pauses: Option<Pauses>,
    pub sensors: Option<SensorsStatus>,
    pub workers: Option<WorkersStatus>,
    /// The OS layers the latest worker reported; `null` before one started.
    pub sandbox: Option<SandboxReport>,
    /// What those layers mean, in words.
    pub sandbox_in_words: Option<String>,
    pub scheduler: Option<SchedulerStatus>,
    pub pool_problem: Option<String>,
    pub pool_problem_code: Option<PoolProblemCode>,
    /// When the agent tries to join again.
    #[ts(type = "number | null")]
    pub pool_retry_at_ms: Option<u64>,
    /// The pool's own words, when it refused this device.
    pub pool_said: Option<String>,
    pub settings: BTreeMap<String, EffectiveValue>,
    pub settings_errors: Vec<String>,
    /// Each bad key of the IT policy (the rest apply), or why it cannot be read.
    pub policy_errors: Vec<String>,
    pub files: Option<Files>,
    pub agent: Option<AgentInfo>,
    /// The pool joined for this run only (the demo's), if any.
    pub temporary_pool: Option<String>,
    /// With `state: "error"`: why the agent is not running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<StartProblem>,
    /// With `state: "error"` or `"starting"`: where the agent keeps its data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
}

impl AgentStatus {
    /// The status of an agent that is not answering: starting, or not
    /// running for `code` (the tray and the dashboard stand in with it).
    pub fn not_running(
        state: State,
        code: Option<StartProblem>,
        message: Option<String>,
        data_dir: impl Into<PathBuf>,
    ) -> Self {
        Self { state, error: message, error_code: code, data_dir: Some(data_dir.into()), ..Self::default() }
    }

    /// The first reason work is paused, if it is.
    pub fn first_reason(&self) -> Option<&Reason> {
        self.paused.then(|| self.reasons.first()).flatten()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
pub struct SensorsStatus {
    /// Which idle sensor answers (`x11`, `wayland`, `logind`…).
    pub idle_source: String,
    /// Whether input wakes the agent (events from the display server or
    /// the compositor); when not, it polls the idle time while work runs.
    #[serde(default)]
    #[ts(as = "Option<bool>", optional)]
    pub input_wakes: bool,
    pub snapshot: Snapshot,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
pub struct WorkersStatus {
    pub pids: Vec<u32>,
    /// Frozen now (SIGSTOP / suspended threads): all of them.
    pub frozen: bool,
    /// Those running GPU kernels.
    #[serde(default)]
    #[ts(as = "Option<Vec<u32>>", optional)]
    pub gpu_pids: Vec<u32>,
    /// Those frozen now.
    #[serde(default)]
    #[ts(as = "Option<Vec<u32>>", optional)]
    pub frozen_pids: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
pub struct Files {
    pub settings: PathBuf,
    pub policy: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
pub struct AgentInfo {
    pub version: String,
    pub pid: u32,
    pub data_dir: PathBuf,
    pub ledger: PathBuf,
    pub socket: PathBuf,
    /// Which keyring holds the device key.
    pub keyring: String,
    /// The device's ed25519 public key (hex).
    pub device_public_key: String,
}

/// What the scheduler does, its slots taken together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
pub struct SchedulerStatus {
    pub pool: String,
    #[ts(type = "number | null")]
    pub device_id: Option<u64>,
    /// The organisation this device enrolled with, if any.
    pub managed_by: Option<String>,
    #[ts(type = "number")]
    pub slots: usize,
    /// The first task running now (`current_tasks` has them all).
    pub current_task: Option<CurrentTask>,
    pub current_tasks: Vec<CurrentTask>,
    pub summary: TaskSummary,
    pub last_pool_error: Option<String>,
}

/// A task running now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
pub struct CurrentTask {
    pub job_id: u64,
    pub task_id: u64,
    /// The kernel's SHA-256 (hex).
    #[ts(type = "string")]
    pub kernel_sha256: idlemesh_protocol::Sha256,
    pub started_ms: u64,
    pub deadline_ms: u64,
    /// What the kernel last reported through `host.progress`, 0.0..=1.0;
    /// `null` until it reports (many kernels never do).
    pub progress: Option<f32>,
    /// A WGSL kernel on the GPU (else WASM on the processor).
    #[serde(default)]
    pub gpu: bool,
    /// The most memory the task may use: for a GPU task, the bound on the
    /// buffers its worker holds while paused in the middle of it (an idle
    /// GPU worker is ended when GPU work stops, and holds nothing).
    #[serde(default)]
    pub max_memory_bytes: u64,
}

/// What the agent did since it started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, TS)]
pub struct TaskSummary {
    pub tasks_finished: u64,
    pub tasks_failed: u64,
    pub tasks_refused: u64,
    pub cpu_ms: u64,
    pub wall_ms: u64,
    pub credits: f64,
    pub receipts: u64,
    /// Results still waiting in the outbox.
    pub results_pending: u64,
}
