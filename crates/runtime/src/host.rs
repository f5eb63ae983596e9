//! The host side of the `idlemesh:kernel/host` interface, with its caps.

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::Events;
use crate::limiter::MemoryCap;

wasmtime::component::bindgen!({
    world: "kernel",
    path: "../../kernels/wit",
    // Host calls may trap: that is how the caps below stop a kernel.
    imports: { default: trappable },
});

/// Log text kept per run; the rest is counted, not stored.
pub(crate) const LOG_CAP_BYTES: usize = 64 * 1024;
/// Host calls per run before the kernel is stopped: a kernel that spams the
/// host is burning the volunteer's CPU on our side of the sandbox.
pub(crate) const MAX_HOST_CALLS: u64 = 1_000_000;

pub(crate) struct HostState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub memory: MemoryCap,
    pub events: Box<dyn Events>,
    pub log: String,
    pub log_dropped_bytes: u64,
    pub host_calls: u64,
    pub max_checkpoint_bytes: usize,
    /// Set when a host call broke a rule; the trap that follows is reported with it.
    pub violation: Option<String>,
    /// The last progress passed on: repeats are not worth a message.
    pub last_progress: f32,
}

impl HostState {
    fn count_call(&mut self) -> wasmtime::Result<()> {
        self.host_calls += 1;
        if self.host_calls > MAX_HOST_CALLS {
            let why = format!("kernel made more than {MAX_HOST_CALLS} host calls");
            self.violation = Some(why.clone());
            return Err(wasmtime::format_err!(why));
        }
        Ok(())
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl idlemesh::kernel::host::Host for HostState {
    fn progress(&mut self, done: f32) -> wasmtime::Result<()> {
        self.count_call()?;
        // Pass on only real movement (0.1 %), so a kernel reporting in a
        // tight loop cannot flood the pipe to the supervisor.
        let done = if done.is_finite() { done.clamp(0.0, 1.0) } else { return Ok(()) };
        if (done - self.last_progress).abs() >= 0.001 || (done == 1.0 && self.last_progress != 1.0) {
            self.last_progress = done;
            self.events.progress(done);
        }
        Ok(())
    }

    fn checkpoint(&mut self, state: Vec<u8>) -> wasmtime::Result<()> {
        self.count_call()?;
        if state.len() > self.max_checkpoint_bytes {
            let why = format!("checkpoint of {} bytes exceeds the cap of {}", state.len(), self.max_checkpoint_bytes);
            self.violation = Some(why.clone());
            return Err(wasmtime::format_err!(why));
        }
        self.events.checkpoint(state);
        Ok(())
    }

    fn log(&mut self, message: String) -> wasmtime::Result<()> {
        self.count_call()?;
        let room = LOG_CAP_BYTES.saturating_sub(self.log.len());
        if message.len() < room {
            self.log.push_str(&message);
            self.log.push('\n');
        } else {
            self.log_dropped_bytes += message.len() as u64;
        }
        Ok(())
    }
}
