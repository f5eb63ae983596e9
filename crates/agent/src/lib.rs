//! The Idlemesh agent: everything between the user's machine and a pool.
//!
//! - [`Agent`] is the running agent (`idlemesh agent`, and what the tray app
//!   embeds): settings and IT policy, the device key from the keyring, the
//!   watcher that applies the governor's decisions to the workers, the
//!   control socket, and one [`Slot`] per core the user lends.
//! - [`Slot`] works for one pool, one task at a time: it leases, checks
//!   every manifest's signature and every kernel's SHA-256 before anything
//!   runs, runs the kernel in a child worker process, delivers the result
//!   and keeps the receipt.
//! - [`Ledger`] is the local, append-only, hash-chained record of what ran,
//!   what was earned and what was disclosed; [`Ledger::verify`] proves it
//!   was not altered.
//! - [`PoolClient`] speaks the pool's HTTP API with device-signed requests.
//!
//! Four modules are public because other programs use them as they are:
//! [`control`] (the client of a running agent's control socket),
//! [`ledger`], [`paths`] (where data lives) and [`settings`] (the settings
//! and IT policy keys). The rest (the governor, which decides as a pure
//! function of a sensor snapshot whether to run and how much; the sensors;
//! the watcher; the outbox; pins and secrets) is the agent's own.
//!
//! **Owns** everything on the lending machine's side: when to run, what a
//! pool may send, the secrets, the ledger. **Must not** execute kernels
//! itself (the runtime's worker does, in another process) or trust
//! anything a pool says without its signature.

mod agent;
pub mod control;
mod durable;
mod energy;
mod governor;
pub mod ledger;
mod logs;
mod outbox;
pub mod paths;
mod pause;
mod pins;
mod pool_client;
mod secrets;
mod sensors;
pub mod settings;
mod slot;
mod watcher;

pub use agent::{Agent, AgentConfig, AgentError, Control, DemoError, DemoHost};
pub use ledger::{Ledger, LedgerError};
pub use logs::init as init_logging;
pub use pool_client::{PoolClient, PoolClientError};
pub use sensors::{running_program, scan_gpu_clients};
pub use slot::{PoolTrust, Slot, SlotConfig, SlotError, SlotStatus};

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
