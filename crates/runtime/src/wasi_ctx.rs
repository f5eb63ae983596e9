//! The WASI p2 context kernels get: nothing.
//!
//! No preopened directories, no environment or arguments, no network (sockets
//! deny every address, name lookup is off), stdin empty, stdout and stderr
//! captured into capped in-memory pipes. Clocks and randomness are virtual so
//! two replicas of a task see the same world and produce the same bytes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::SeedableRng as _;
use rand::rngs::StdRng;
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

/// What stdout and stderr may hold each; writes past it fail in the guest.
pub(crate) const STDIO_CAP_BYTES: usize = 64 * 1024;

/// The wall clock every kernel sees: 2024-01-01T00:00:00Z, for ever.
const FIXED_WALL_CLOCK: Duration = Duration::from_secs(1_704_067_200);

struct FixedWallClock;

impl wasmtime_wasi::HostWallClock for FixedWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        FIXED_WALL_CLOCK
    }
}

/// A monotonic clock that advances one microsecond per read: deterministic,
/// yet a guest that waits for time to pass is never stuck for ever.
#[derive(Default)]
struct CountingClock(AtomicU64);

impl wasmtime_wasi::HostMonotonicClock for CountingClock {
    fn resolution(&self) -> u64 {
        1_000
    }
    fn now(&self) -> u64 {
        self.0.fetch_add(1_000, Ordering::Relaxed)
    }
}

pub(crate) struct Stdio {
    pub stdout: MemoryOutputPipe,
    pub stderr: MemoryOutputPipe,
}

/// Builds the empty context; `seed` makes the guest's randomness reproducible
/// per task (replicas of a task share it, different tasks differ).
pub(crate) fn build(seed: u64) -> (WasiCtx, Stdio) {
    let stdout = MemoryOutputPipe::new(STDIO_CAP_BYTES);
    let stderr = MemoryOutputPipe::new(STDIO_CAP_BYTES);
    let mut b = WasiCtx::builder();
    b.stdout(stdout.clone())
        .stderr(stderr.clone())
        .wall_clock(FixedWallClock)
        .monotonic_clock(CountingClock::default())
        .secure_random(StdRng::seed_from_u64(seed))
        .insecure_random(StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15))
        .insecure_random_seed(u128::from(seed))
        .max_random_size(1 << 20)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }));
    (b.build(), Stdio { stdout, stderr })
}
