//! Bodies of the pool's HTTP API (DESIGN §5). Field names here are the wire format.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Base64Bytes, KernelKind, PublicKey, Receipt, Sha256, Signed, TaskLimits, TaskManifest, UnixMillis};

/// Every error answer: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// `GET /v1/info`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PoolInfo {
    pub name: String,
    pub operator: String,
    pub public_key: PublicKey,
    /// Each piece of device information the pool asks for, and why.
    pub device_info_requested: Vec<DeviceInfoRequest>,
    pub open_enrollment: bool,
    pub payout: Option<Payout>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceInfoRequest {
    pub field: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Payout {
    /// What one credit is worth, in `currency`.
    pub per_credit: f64,
    /// A currency code: 3 to 8 capital letters or digits (EUR, USD, USDC).
    pub currency: String,
}

impl Payout {
    /// Checked: the pool operator types it, and the agent reads it from a
    /// pool's reply, where it values every receipt.
    pub fn new(per_credit: f64, currency: &str) -> Result<Self, BadPayout> {
        if !per_credit.is_finite() || per_credit <= 0.0 || per_credit > 1e6 {
            return Err(BadPayout::Amount(per_credit));
        }
        let code_ok =
            (3..=8).contains(&currency.len()) && currency.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if !code_ok {
            return Err(BadPayout::Currency(currency.to_owned()));
        }
        Ok(Self { per_credit, currency: currency.to_string() })
    }

    /// This payout, if it passes [`Payout::new`]'s checks.
    pub fn checked(&self) -> Result<Self, BadPayout> {
        Self::new(self.per_credit, &self.currency)
    }
}

/// A payout rate that cannot value a credit.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BadPayout {
    #[error("payout per credit {0} is not a positive amount of at most 1000000")]
    Amount(f64),
    #[error("currency {0:?} is not a code of 3 to 8 capital letters or digits, like EUR")]
    Currency(String),
}

/// `POST /v1/enroll`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub public_key: PublicKey,
    #[serde(default)]
    pub token: Option<String>,
    /// Exactly the device information disclosed; the agent records it in its ledger.
    #[serde(default)]
    pub device_info: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollResponse {
    pub device_id: u64,
    pub pool_public_key: PublicKey,
    /// The organisation whose enrollment token the device used, if any: the
    /// agent shows "managed by <name>".
    #[serde(default)]
    pub org: Option<Org>,
}

/// `POST /v1/challenge`: a device proves the server holds the pool key it
/// pinned before it discloses anything (the pool's public key alone, which
/// anyone can repeat, proves nothing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PoolChallenge {
    /// 32 random bytes as 64 hex digits, chosen by the device.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[0-9a-fA-F]{64}$"))]
    pub nonce: String,
}

impl crate::SignedKind for PoolChallenge {
    const KIND: &'static str = "pool-challenge";
}

/// `POST /v1/orgs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct OrgCreate {
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 200, pattern = "\\S"))]
    pub name: String,
}

/// An organisation: the devices enrolled with its tokens contribute under it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Org {
    pub org_id: u64,
    pub name: String,
    pub created_ms: UnixMillis,
}

/// `POST /v1/orgs/{id}/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    /// How long the token may be used, from now.
    pub expires_in_s: u64,
    /// How many devices may enroll with it (default: any number).
    #[serde(default)]
    pub max_uses: Option<u64>,
    /// A note for the operator ("laptops, 3rd floor").
    #[serde(default)]
    pub label: Option<String>,
}

/// An enrollment token as the operator sees it; the secret itself is shown
/// only once, in [`TokenCreated`]: the pool keeps just its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenInfo {
    pub token_id: u64,
    pub org_id: u64,
    pub label: Option<String>,
    pub created_ms: UnixMillis,
    pub expires_ms: UnixMillis,
    pub revoked_ms: Option<UnixMillis>,
    pub uses: u64,
    pub max_uses: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenCreated {
    /// The secret to put in the devices' policy file.
    pub token: String,
    #[serde(flatten)]
    pub info: TokenInfo,
}

/// `GET /v1/orgs/{id}/stats`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrgStats {
    pub org: Org,
    pub credits: f64,
    pub valid_results: u64,
    pub invalid_results: u64,
    pub devices: Vec<OrgDevice>,
    pub tokens: Vec<TokenInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrgDevice {
    pub device_id: u64,
    pub enrolled_ms: UnixMillis,
    /// The device information it disclosed at enrollment.
    pub device_info: BTreeMap<String, String>,
    pub credits: f64,
    pub valid_results: u64,
    pub invalid_results: u64,
}

/// What a device can run, stated when it asks for work.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    pub wasm: bool,
    #[serde(default)]
    pub wgpu_adapter: Option<String>,
    pub cores: u32,
    pub memory_bytes: u64,
}

/// `POST /v1/leases`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    pub capabilities: Capabilities,
    /// How many tasks the device wants at most.
    pub max_tasks: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaseResponse {
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<crate::openapi::SignedTaskManifest>))]
    pub tasks: Vec<Signed<TaskManifest>>,
    /// When nothing was handed out: how long to wait before asking again.
    pub retry_after_ms: Option<u64>,
}

/// `POST /v1/leases/sync`: every lease the device still holds, sent when its
/// agent starts. The pool queues the device's other leases again: ones the
/// agent never recorded because it stopped (killed, crashed, powered off)
/// between the pool granting them and writing them down, which would
/// otherwise wait out their whole deadline.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LeaseSync {
    /// Lease ids the device is working on or has results for.
    pub held: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaseSyncResponse {
    /// The device's leases that were not in `held`, now queued again.
    pub released: Vec<u64>,
}

/// The body of `POST /v1/leases/{id}/heartbeat`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LeaseTokenBody {
    pub lease_token: String,
}

/// The body of `DELETE /v1/leases/{id}`: a lease given back, and, when the
/// task itself failed here (the kernel trapped, ran out of time or memory,
/// or its worker broke the sandbox), how. The pool counts such failures
/// against the task, not the device, and fails a task that keeps failing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GiveBack {
    pub lease_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<TaskFailure>,
}

/// How a task failed on a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TaskFailure {
    /// The run's status: `trapped`, `out-of-fuel`, `out-of-memory`,
    /// `timed-out`, `invalid-kernel`, `sandbox-violation` or `error`.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub status: String,
    #[cfg_attr(feature = "openapi", schema(max_length = 1000))]
    pub message: String,
}

impl TaskFailure {
    pub const MAX_STATUS_CHARS: usize = 64;
    pub const MAX_MESSAGE_CHARS: usize = 1000;

    /// Within its bounds: the status a short word, the message not too long.
    pub fn check(&self) -> Result<(), BadFailure> {
        if self.status.is_empty() || self.status.chars().count() > Self::MAX_STATUS_CHARS {
            return Err(BadFailure::Status);
        }
        if self.message.chars().count() > Self::MAX_MESSAGE_CHARS {
            return Err(BadFailure::Message);
        }
        Ok(())
    }
}

/// A task failure report out of its bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadFailure {
    #[error("failure.status must be 1 to {} characters", TaskFailure::MAX_STATUS_CHARS)]
    Status,
    #[error("failure.message must be at most {} characters", TaskFailure::MAX_MESSAGE_CHARS)]
    Message,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatResponse {
    pub deadline_ms: u64,
}

/// `POST /v1/results`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ResultSubmission {
    pub lease_id: u64,
    pub lease_token: String,
    pub output_sha256: Sha256,
    pub output: Base64Bytes,
    #[serde(default)]
    pub fuel: Option<u64>,
    pub wall_ms: u64,
    pub cpu_ms: u64,
}

/// The state of a task (all its replicas together).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for results.
    Pending,
    /// A quorum agreed: the task is done.
    Done,
    /// Too many disagreeing or failed results.
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResultResponse {
    pub task_state: TaskState,
    /// Present once the task reached quorum and this result was in it.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::openapi::SignedReceipt>))]
    pub receipt: Option<Signed<Receipt>>,
}

/// How a job is split into tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SplitSpec {
    /// `[start, end)` in chunks of `chunk`; each task's params get `"start"` and `"end"`.
    Range { start: i64, end: i64, chunk: i64 },
    /// A 2D grid of tiles; each task's params get `"tile": {x, y, width, height}`.
    Tiles { width: u32, height: u32, tile_width: u32, tile_height: u32 },
}

/// How task outputs become the job's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Combiner {
    /// Outputs concatenated in task order.
    Concat,
    /// RGB8 tiles of a `tiles` split assembled into one PNG.
    PngTiles,
    /// Each output is a decimal number as text; the job's output is their sum.
    Sum,
}

/// `POST /v1/jobs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 200, pattern = "\\S"))]
    pub name: String,
    pub kernel_kind: KernelKind,
    /// The kernel, uploaded before with `POST /v1/blobs`.
    pub kernel_sha256: Sha256,
    /// How a WGSL kernel binds its buffers and dispatches; required for
    /// `kernel_kind: wgsl`, refused otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wgsl: Option<crate::wgsl::WgslLayout>,
    /// Params every task gets; a split adds its own keys. Must be a JSON object.
    #[serde(default = "empty_object")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub params: serde_json::Value,
    /// One task per input. Exactly one of `inputs` and `split` is given.
    #[serde(default)]
    pub inputs: Option<Vec<Base64Bytes>>,
    #[serde(default)]
    pub split: Option<SplitSpec>,
    /// Replication factor k: how many devices run each task.
    #[serde(default = "one")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 16))]
    pub replication: u32,
    /// How many agreeing results make a task done (q ≤ k).
    #[serde(default = "one")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 16))]
    pub quorum: u32,
    #[serde(default = "one_f")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub credits_per_task: f64,
    /// Metered credit: what each million units of fuel a task used earns,
    /// instead of `credits_per_task`. Needs `limits.max_fuel`: tasks then
    /// run metered, and replicas must also agree on their fuel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub credits_per_million_fuel: Option<f64>,
    pub combiner: Combiner,
    #[serde(default)]
    pub limits: TaskLimits,
    /// Lease length before an unfinished replica goes back to the queue.
    #[serde(default = "default_lease_ms")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1000, maximum = 604800000))]
    pub lease_ms: u64,
    /// Tasks with known answers, hidden among the job's tasks: a device that
    /// gets one wrong is marked invalid and earns nothing for it. Their
    /// outputs are not part of the job's output.
    #[serde(default)]
    pub spot_checks: Vec<SpotCheck>,
}

impl JobSpec {
    /// What one result that reaches quorum earns: by its fuel for a metered
    /// job, else the job's flat rate. Given `limits.max_fuel`, the most a
    /// task can earn (what its manifest states): a device that claims more
    /// fuel than its task could burn is paid for the budget, no more.
    pub fn credit_for(&self, fuel: Option<u64>) -> f64 {
        match self.credits_per_million_fuel {
            Some(rate) => fuel.unwrap_or(0).min(self.limits.max_fuel.unwrap_or(u64::MAX)) as f64 / 1e6 * rate,
            None => self.credits_per_task,
        }
    }
}

/// A task whose correct output the job owner already knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SpotCheck {
    /// Merged over the job's params.
    #[serde(default = "empty_object")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub params: serde_json::Value,
    #[serde(default)]
    pub input: Base64Bytes,
    /// SHA-256 of the correct output.
    pub expected_sha256: Sha256,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}
fn one() -> u32 {
    1
}
fn one_f() -> f64 {
    1.0
}
fn default_lease_ms() -> u64 {
    15 * 60 * 1000
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobCreated {
    pub job_id: u64,
    pub tasks: u64,
}

/// `POST /v1/blobs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BlobStored {
    pub sha256: Sha256,
    pub size_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    Done,
    Failed,
}

/// `GET /v1/jobs/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobStatus {
    pub job_id: u64,
    pub name: String,
    pub state: JobState,
    pub tasks: TaskCounts,
    pub credits_granted: f64,
    /// Why a failed job failed (no quorum, a task that kept failing...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskCounts {
    pub total: u64,
    pub pending: u64,
    pub leased: u64,
    pub done: u64,
    pub failed: u64,
}

/// `GET /v1/stats`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PoolStats {
    pub jobs: u64,
    pub tasks: TaskCounts,
    pub credits_granted: f64,
    pub devices: Vec<DeviceStats>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceStats {
    pub device_id: u64,
    pub credits: f64,
    pub valid_results: u64,
    pub invalid_results: u64,
}
