use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How a kernel run ended; the statuses of `idlemesh kernel run` (DESIGN §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Ok,
    Trapped,
    OutOfFuel,
    OutOfMemory,
    TimedOut,
    InvalidKernel,
    /// The worker made a system call outside its seccomp allow-list and was stopped.
    SandboxViolation,
    Error,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Trapped => "trapped",
            Self::OutOfFuel => "out-of-fuel",
            Self::OutOfMemory => "out-of-memory",
            Self::TimedOut => "timed-out",
            Self::InvalidKernel => "invalid-kernel",
            Self::SandboxViolation => "sandbox-violation",
            Self::Error => "error",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status name that is not one of [`Status`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for Status {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, UnknownStatus> {
        serde_json::from_value(serde_json::Value::String(s.into())).map_err(|_| UnknownStatus(s.to_owned()))
    }
}

/// The result of one run inside the sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub status: Status,
    /// The kernel's output; only for [`Status::Ok`].
    #[serde(skip)]
    pub output: Vec<u8>,
    /// Fuel consumed, when the run was metered.
    pub fuel: Option<u64>,
    pub peak_memory_bytes: u64,
    /// Log lines the kernel wrote (capped), with how many bytes were dropped.
    pub log: String,
    pub log_dropped_bytes: u64,
    pub error: Option<String>,
    /// Whether the component came from the local compiled cache.
    pub cache_hit: bool,
    /// The GPU that ran a WGSL kernel.
    #[serde(default)]
    pub adapter: Option<String>,
    /// Time the GPU spent on the kernel's dispatches.
    #[serde(default)]
    pub gpu_ms: u64,
}

impl Outcome {
    pub fn failed(status: Status, error: impl Into<String>) -> Self {
        Self {
            status,
            output: Vec::new(),
            fuel: None,
            peak_memory_bytes: 0,
            log: String::new(),
            log_dropped_bytes: 0,
            error: Some(error.into()),
            cache_hit: false,
            adapter: None,
            gpu_ms: 0,
        }
    }
}
