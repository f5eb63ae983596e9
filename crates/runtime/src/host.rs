//! The host side of the `idlemesh:kernel/host` interface, with its caps.

use std::time::{Duration, Instant};

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::Events;
use crate::limiter::MemoryCap;

wasmtime::component::bindgen!({
    world: "kernel",
    path: "../../kernels/wit",
    // Host calls may trap: that is how the caps below stop a kernel.
    imports: { default: trappable },
});

/// The most `read-input` hands over in one call.
pub(crate) const MAX_READ_BYTES: u32 = 16 << 20;

/// Log text kept per run; the rest is counted, not stored.
pub(crate) const LOG_CAP_BYTES: usize = 64 * 1024;
/// Progress reaches the supervisor at most this often: a kernel may report
/// as often as it likes, each call costs the host a comparison.
pub(crate) const PROGRESS_EVERY: Duration = Duration::from_millis(50);
/// Log lines kept: a burst, then this many per second; the rest are counted
/// as dropped, never an error.
pub(crate) const LOG_RATE: Rate = Rate { burst: 1_000, per_second: 100 };
/// Checkpoints: each one is written to disk by the agent, so a kernel that
/// checkpoints faster than this on average is stopped, with its own error.
pub(crate) const CHECKPOINT_RATE: Rate = Rate { burst: 10, per_second: 1 };

/// A token bucket's shape: `burst` calls at once, `per_second` on average.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rate {
    pub burst: u32,
    pub per_second: u32,
}

/// A token bucket on a clock the caller passes in (pure, table-tested).
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    rate: Rate,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(rate: Rate, now: Instant) -> Self {
        Self { rate, tokens: f64::from(rate.burst), last: now }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * f64::from(self.rate.per_second);
        self.tokens = (self.tokens + refill).min(f64::from(self.rate.burst));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The task's input, lent to one run's host calls: `read-input` copies
/// from it into the kernel's memory piece by piece, with no copy of the
/// whole made first.
pub(crate) struct LentInput {
    ptr: *const u8,
    len: usize,
}

// SAFETY: the bytes are only read, and outlive every use (see `lend`).
unsafe impl Send for LentInput {}

impl LentInput {
    /// # Safety
    /// `input` must stay alive and unchanged while the returned value can be
    /// used: `Sandbox::run_known` keeps the store that holds it local and
    /// drops it before it returns, and `input` is borrowed for that call.
    pub(crate) unsafe fn lend(input: &[u8]) -> Self {
        Self { ptr: input.as_ptr(), len: input.len() }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `lend`'s contract; a pointer and length taken from a live slice.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The piece of the input `read-input(offset, len)` returns, for wasmtime
    /// to copy straight into the kernel's memory.
    ///
    /// # Safety
    /// The piece must not be kept: only returned from a host call, which
    /// wasmtime lowers before the call returns, while the store that holds
    /// this input (and so, by `lend`'s contract, the input) is alive.
    unsafe fn piece_to_lower(&self, offset: u64, len: u32) -> &'static [u8] {
        // SAFETY: the caller's promise above; `'static` only names "longer
        // than the borrow of the store", which the lowering needs.
        let all: &'static [u8] = unsafe { std::slice::from_raw_parts(self.ptr, self.len) };
        input_piece(all, offset, len)
    }
}

/// The piece of `input` that `read-input(offset, len)` returns.
pub(crate) fn input_piece(input: &[u8], offset: u64, len: u32) -> &[u8] {
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(input.len());
    let len = len.min(MAX_READ_BYTES) as usize;
    &input[start..start.saturating_add(len).min(input.len())]
}

pub(crate) struct HostState {
    pub wasi: WasiCtx,
    pub input: LentInput,
    pub table: ResourceTable,
    pub memory: MemoryCap,
    pub events: Box<dyn Events>,
    pub log: String,
    pub log_dropped_bytes: u64,
    pub log_rate: Bucket,
    pub checkpoint_rate: Bucket,
    pub max_checkpoint_bytes: usize,
    /// Set when a host call broke a rule; the trap that follows is reported with it.
    pub violation: Option<String>,
    /// The last progress passed on, and when: only real movement, and not
    /// more often than PROGRESS_EVERY, goes to the supervisor.
    pub last_progress: f32,
    pub last_progress_at: Option<Instant>,
}

impl HostState {
    pub fn new(
        wasi: WasiCtx,
        input: LentInput,
        memory: MemoryCap,
        events: Box<dyn Events>,
        max_checkpoint_bytes: usize,
    ) -> Self {
        let now = Instant::now();
        Self {
            wasi,
            input,
            table: ResourceTable::new(),
            memory,
            events,
            log: String::new(),
            log_dropped_bytes: 0,
            log_rate: Bucket::new(LOG_RATE, now),
            checkpoint_rate: Bucket::new(CHECKPOINT_RATE, now),
            max_checkpoint_bytes,
            violation: None,
            last_progress: 0.0,
            last_progress_at: None,
        }
    }

    fn refuse(&mut self, why: String) -> wasmtime::Result<()> {
        self.violation = Some(why.clone());
        Err(wasmtime::format_err!(why))
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl idlemesh::kernel::host::Host for HostState {
    fn progress(&mut self, done: f32) -> wasmtime::Result<()> {
        let done = if done.is_finite() { done.clamp(0.0, 1.0) } else { return Ok(()) };
        let moved = (done - self.last_progress).abs() >= 0.001 || (done == 1.0 && self.last_progress != 1.0);
        if !moved {
            return Ok(());
        }
        let now = Instant::now();
        if done == 1.0 || self.last_progress_at.is_none_or(|at| now.duration_since(at) >= PROGRESS_EVERY) {
            self.last_progress = done;
            self.last_progress_at = Some(now);
            self.events.progress(done);
        }
        Ok(())
    }

    fn checkpoint(&mut self, state: Vec<u8>) -> wasmtime::Result<()> {
        if state.len() > self.max_checkpoint_bytes {
            return self.refuse(format!(
                "checkpoint of {} bytes exceeds the cap of {}",
                state.len(),
                self.max_checkpoint_bytes
            ));
        }
        if !self.checkpoint_rate.take(Instant::now()) {
            let Rate { burst, per_second } = CHECKPOINT_RATE;
            return self.refuse(format!(
                "host-call rate limit: the kernel checkpointed more than {per_second} time(s) per second \
                 on average (bursts of {burst} allowed)"
            ));
        }
        self.events.checkpoint(state);
        Ok(())
    }

    fn log(&mut self, message: String) -> wasmtime::Result<()> {
        let room = LOG_CAP_BYTES.saturating_sub(self.log.len());
        if message.len() < room && self.log_rate.take(Instant::now()) {
            self.log.push_str(&message);
            self.log.push('\n');
        } else {
            self.log_dropped_bytes += message.len() as u64;
        }
        Ok(())
    }

    fn input_size(&mut self) -> wasmtime::Result<u64> {
        Ok(self.input.len as u64)
    }

    /// Only the shape the generated trait asks for: the linker serves
    /// `read-input` from `serve_read_input_without_a_copy` instead.
    fn read_input(&mut self, offset: u64, len: u32) -> wasmtime::Result<Vec<u8>> {
        Ok(input_piece(self.input.bytes(), offset, len).to_vec())
    }
}

/// Serves `read-input` over the generated one, which must return a `Vec`:
/// a copy of the piece that wasmtime then copies again into the kernel's
/// memory. For a kernel that reads a large input (downscale: 144 MiB) that
/// first copy was 6-7 ms of its 47 (docs/benchmarks.md); now the lent bytes
/// are copied once, into the memory the kernel's allocator gives, so the
/// piece still counts against the kernel's memory cap.
pub(crate) fn serve_read_input_without_a_copy(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let served = linker.instance(HOST_INTERFACE)?.func_wrap(
        "read-input",
        |store: StoreContextMut<'_, HostState>, (offset, len): (u64, u32)| {
            // SAFETY: returned, so lowered before this call returns; the
            // store that holds the input lives through it.
            Ok((unsafe { store.data().input.piece_to_lower(offset, len) },))
        },
    );
    linker.allow_shadowing(false);
    served
}

/// The host interface's name in the component model, as kernels import it.
const HOST_INTERFACE: &str = "idlemesh:kernel/host@0.1.0";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut b = Bucket::new(Rate { burst: 3, per_second: 2 }, t0);
        assert_eq!([b.take(t0), b.take(t0), b.take(t0), b.take(t0)], [true, true, true, false]);
        // 2 per second: one token after 500 ms, not before.
        assert!(!b.take(ms(400)));
        assert!(b.take(ms(500)));
        assert!(!b.take(ms(600)));
        // A long quiet spell refills to the burst, not beyond.
        let later = ms(60_000);
        assert_eq!((0..5).map(|_| b.take(later)).filter(|ok| *ok).count(), 3);
    }

    #[test]
    fn read_input_hands_over_what_is_there_and_no_more() {
        let input: Vec<u8> = (0..100u8).collect();
        assert_eq!(input_piece(&input, 0, 10), &input[..10]);
        assert_eq!(input_piece(&input, 95, 10), &input[95..], "fewer at its end");
        assert!(input_piece(&input, 100, 10).is_empty(), "none at its end");
        assert!(input_piece(&input, u64::MAX, u32::MAX).is_empty(), "none past it");
        assert!(input_piece(&input, 50, 0).is_empty());
        let big = vec![7u8; MAX_READ_BYTES as usize + 10];
        assert_eq!(input_piece(&big, 0, u32::MAX).len(), MAX_READ_BYTES as usize, "at most 16 MiB a call");
        assert_eq!(input_piece(&big, 5, u32::MAX).len(), MAX_READ_BYTES as usize);
    }

    #[test]
    fn three_hours_of_progress_every_10_ms_costs_no_limit() {
        // The old lifetime cap (a million host calls) stopped such a kernel.
        let rate = CHECKPOINT_RATE;
        let t0 = Instant::now();
        let mut b = Bucket::new(rate, t0);
        // A checkpoint a minute for three hours is always allowed.
        assert!((0..180u64).all(|m| b.take(t0 + Duration::from_secs(60 * m))));
    }
}
