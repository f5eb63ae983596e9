//! The Idlemesh agent: everything between the user's machine and a pool.
//!
//! - [`Agent`] leases tasks from a pool over HTTP, checks every manifest's
//!   signature and every kernel's SHA-256 before anything runs, runs kernels
//!   in a child worker process, posts results and keeps the receipts.
//! - [`Ledger`] is the local, append-only, hash-chained record of what ran,
//!   what was earned and what was disclosed; [`Ledger::verify`] proves it
//!   was not altered.
//! - [`PoolClient`] speaks the pool's HTTP API with device-signed requests.
//! - [`paths`] says where data lives.
//!
//! - [`governor`] decides, as a pure function of a sensor snapshot, the
//!   effective limits and the user's pause, whether to run and how much,
//!   with reasons in plain words and hysteresis on every threshold.
//!
//! - [`daemon`] is the running agent: sensors, settings and IT policy, the
//!   governor's decisions, one slot per worker, the control socket.
//!
//! **Owns** everything on the lending machine's side: when to run, what a
//! pool may send, the secrets, the ledger. **Must not** execute kernels
//! itself (the runtime's worker does, in another process) or trust
//! anything a pool says without its signature.

mod agent;
pub mod control;
pub mod daemon;
mod durable;
pub mod energy;
pub mod governor;
pub mod ledger;
pub mod ledger_summary;
pub mod logs;
mod outbox;
pub mod paths;
pub mod pins;
mod pool_client;
pub mod secrets;
pub mod sensors;
pub mod settings;
pub mod watcher;

pub use agent::{Agent, AgentConfig, AgentError, AgentSummary, CurrentTask, PoolTrust, SchedulerStatus};
pub use governor::{Decision, Limits};
pub use ledger::{BadEntry, Entry, Ledger, LedgerError, VerifyReport};
pub use pool_client::{PoolClient, PoolClientError};

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
