//! Executing one kernel, safely.
//!
//! The runtime is where strangers' code meets a volunteer's machine. It has
//! two halves:
//!
//! - [`Sandbox`] runs a WebAssembly component in wasmtime, inside the worker
//!   process: a WASI context that grants nothing, deterministic floats, capped
//!   memory, output and logs, optional fuel metering, and a compiled-artifact
//!   cache on local disk.
//! - [`gpu::Gpu`] runs a WGSL compute shader on wgpu, also inside the worker:
//!   naga-validated, bindings checked against the task's layout, buffers
//!   capped, dispatches sliced so a pause lands between slices.
//! - [`WorkerProcess`] is the supervisor's side: it starts `idlemesh worker`
//!   as a child at the lowest OS priority, sends it tasks over a framed pipe,
//!   enforces the wall-clock limit from outside, and can freeze, thaw or kill
//!   it at any moment without harm to the caller.
//! - [`lockdown`] is the worker's second wall, for when wasmtime or a GPU
//!   driver falls: before its first task the worker confines its own process
//!   (namespaces, Landlock, seccomp, resource limits) and reports which
//!   layers are in force ([`SandboxReport`]).
//!
//! **Owns** running one kernel within its limits, and the worker process
//! that does it. **Must not** talk to a pool, read settings or policy, or
//! decide when to run: it is told what to run, and how much it may use.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use idlemesh_runtime::{Sandbox, SandboxConfig, RunLimits, NoEvents};
//! let wasm = std::fs::read("kernel.wasm")?;
//! let sandbox = Sandbox::new(SandboxConfig::default())?;
//! let outcome = sandbox.run(&wasm, b"", "{}", None, &RunLimits::default(), NoEvents);
//! println!("{:?}", outcome.status);
//! # Ok(()) }
//! ```

pub mod access;
mod cache;
pub mod cpu_time;
pub mod gpu;
mod host;
pub mod ipc;
mod limiter;
pub mod lockdown;
pub mod nan_canon;
mod outcome;
mod pagemap;
mod sandbox;
mod wasi_ctx;
pub mod worker;
mod worker_process;

/// Makes a folder (and its parents) private to the user, or makes an
/// existing one so: the runtime's compiled-kernel cache needs it, and so do
/// the agent's ledger and logs, so there is one way to do it.
pub use cache::private_dir;
pub use lockdown::{Layer, Profile, SandboxReport};
pub use outcome::{Outcome, Status};
pub use sandbox::{Events, MAX_KERNEL_BYTES, NoEvents, RunLimits, Sandbox, SandboxConfig, SandboxError};
pub use worker_process::{
    ProbeError, RunReport, WorkRequest, WorkerCommand, WorkerControl, WorkerError, WorkerProcess,
};
