use serde::{Deserialize, Serialize};

use crate::sign::SignedKind;
use crate::{Sha256, UnixMillis};

/// What kind of code a kernel is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum KernelKind {
    /// A WebAssembly component exporting the `idlemesh:kernel` world.
    Wasm,
    /// A WGSL compute shader.
    Wgsl,
}

impl KernelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Wasm => "wasm",
            Self::Wgsl => "wgsl",
        }
    }
}

/// A content-addressed kernel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KernelRef {
    pub kind: KernelKind,
    pub sha256: Sha256,
    pub size_bytes: u64,
}

/// The most output a task may be allowed: results travel as base64 in one
/// JSON body.
pub const MAX_OUTPUT_BYTES: u64 = 64 << 20;

/// The limits a task runs under. The agent may lower them (the user's limits
/// always win) but never raise them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TaskLimits {
    #[serde(default = "default_memory")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub max_memory_bytes: u64,
    #[serde(default = "default_output")]
    #[cfg_attr(feature = "openapi", schema(maximum = 67108864))]
    pub max_output_bytes: u64,
    #[serde(default = "default_timeout")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub timeout_ms: u64,
    /// Fuel budget; set when the job pays metered credit.
    #[serde(default)]
    pub max_fuel: Option<u64>,
}

fn default_memory() -> u64 {
    256 << 20
}
fn default_output() -> u64 {
    16 << 20
}
fn default_timeout() -> u64 {
    10 * 60 * 1000
}

impl Default for TaskLimits {
    fn default() -> Self {
        Self {
            max_memory_bytes: default_memory(),
            max_output_bytes: default_output(),
            timeout_ms: default_timeout(),
            max_fuel: None,
        }
    }
}

/// What a pool hands a device for one replica of one task; always signed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskManifest {
    pub job_id: u64,
    pub task_id: u64,
    pub replica_id: u64,
    pub device_id: u64,
    pub lease_id: u64,
    /// Fencing token: a result or heartbeat must carry it to count.
    pub lease_token: String,
    pub kernel: KernelRef,
    pub input_sha256: Sha256,
    pub input_bytes: u64,
    /// JSON text handed to the kernel as its `params`.
    pub params: String,
    pub limits: TaskLimits,
    /// A WGSL kernel's buffers and dispatch; absent for WASM kernels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wgsl: Option<crate::wgsl::WgslLayout>,
    /// Credits paid for a result that reaches quorum (for a metered job,
    /// the most it can earn: its receipt says what its fuel earned).
    pub credits: f64,
    pub issued_at_ms: UnixMillis,
    pub deadline_ms: UnixMillis,
}

impl SignedKind for TaskManifest {
    const KIND: &'static str = "task-manifest";
}

/// A pool's signed acknowledgement that a device's result was accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Receipt {
    pub receipt_id: u64,
    pub device_id: u64,
    pub job_id: u64,
    pub task_id: u64,
    pub replica_id: u64,
    pub output_sha256: Sha256,
    pub fuel: Option<u64>,
    pub credits: f64,
    pub wall_ms: u64,
    pub cpu_ms: u64,
    pub issued_at_ms: UnixMillis,
}

impl SignedKind for Receipt {
    const KIND: &'static str = "receipt";
}
