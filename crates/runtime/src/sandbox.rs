//! Running a WASM component under wasmtime, configured for untrusted code.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use idlemesh_protocol::Sha256;
use serde::{Deserialize, Serialize};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig, Store, Strategy, Trap};

use crate::cache::ArtifactCache;
use crate::host::{HostState, Kernel, KernelPre, LentInput};
use crate::limiter::MemoryCap;
use crate::outcome::{Outcome, Status};
use crate::wasi_ctx;

/// What a kernel reports while it runs. Implementations are cheap handles
/// (a pipe, a channel): the sandbox owns one per run.
pub trait Events: Send + 'static {
    fn progress(&mut self, done: f32);
    fn checkpoint(&mut self, state: Vec<u8>);
}

/// Ignores every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoEvents;

impl Events for NoEvents {
    fn progress(&mut self, _done: f32) {}
    fn checkpoint(&mut self, _state: Vec<u8>) {}
}

#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Where compiled components are cached; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    pub max_wasm_stack_bytes: usize,
    /// Compile epoch checks into kernels. Off in production: pausing freezes
    /// the worker process instead, at no cost while running. Kept to measure
    /// that cost (docs/benchmarks.md) and for platforms that cannot freeze.
    pub epoch_interruption: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self { cache_dir: None, max_wasm_stack_bytes: 512 * 1024, epoch_interruption: false }
    }
}

/// Per-run limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunLimits {
    pub max_memory_bytes: u64,
    pub max_output_bytes: u64,
    /// Meter the run with this much fuel; `None` runs unmetered (and faster).
    pub max_fuel: Option<u64>,
    /// Seeds the kernel's randomness; replicas of one task share it.
    pub seed: u64,
}

impl Default for RunLimits {
    fn default() -> Self {
        Self { max_memory_bytes: 256 << 20, max_output_bytes: 16 << 20, max_fuel: None, seed: 0 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("could not configure the wasmtime engine: {0}")]
    Engine(#[source] wasmtime::Error),
    #[error("could not open the compiled-kernel cache at {path}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why a kernel is refused before it runs (an invalid kernel, not a failed run).
#[derive(Debug, thiserror::Error)]
enum Rejected {
    #[error("no bytes given for kernel {0}, which this sandbox has not seen")]
    Unseen(Sha256),
    #[error("kernel of {0} bytes is over the {MAX_KERNEL_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("kernel bytes do not match their SHA-256 {0}")]
    NotItsHash(Sha256),
    #[error("a core WebAssembly module, not a component: build the kernel for wasm32-wasip2")]
    CoreModule,
    #[error("not a WebAssembly component (bad magic number or version)")]
    NotAComponent,
    #[error("does not compile: not a valid component: {0}")]
    Invalid(#[from] crate::nan_canon::RewriteError),
    #[error("does not compile: {0:#}")]
    Compile(#[source] wasmtime::Error),
    #[error("cannot link: {0:#}")]
    Link(#[source] wasmtime::Error),
    #[error("does not export the idlemesh:kernel world: {0:#}")]
    NotTheWorld(#[source] wasmtime::Error),
}

/// Each flavour's compiled artifacts in their own subdirectory of the cache.
const PLAIN_CACHE: &str = "plain";
const METERED_CACHE: &str = "metered";

/// A kernel compiled and linked, ready to instantiate.
#[derive(Clone)]
struct Prepared {
    pre: KernelPre<HostState>,
    /// It imports `read-input`, so it reads its input on request and `run`
    /// gets an empty one.
    reads_on_request: bool,
}

/// The interface of the kernel world's host calls, and the one that asks for input.
const HOST_INTERFACE: &str = "idlemesh:kernel/host@0.1.0";
const READ_INPUT: &str = "read-input";

/// Whether `component` imports `read-input`: only functions a kernel calls
/// are in its imports, so this is the kernel saying it reads its input so.
fn reads_input_on_request(engine: &Engine, component: &Component) -> bool {
    let ty = component.component_type();
    match ty.get_import(engine, HOST_INTERFACE).map(|e| e.ty) {
        Some(wasmtime::component::types::ComponentItem::ComponentInstance(host)) => {
            host.get_export(engine, READ_INPUT).is_some()
        }
        _ => false,
    }
}

/// One engine with its linker and the kernels already prepared for it.
struct Flavour {
    engine: Engine,
    linker: Linker<HostState>,
    cache: Option<ArtifactCache>,
    prepared: Mutex<HashMap<Sha256, Prepared>>,
}

/// Runs kernels. Fuel metering changes code generation, so metered runs use a
/// second engine, built the first time a metered task arrives.
pub struct Sandbox {
    config: SandboxConfig,
    plain: Flavour,
    metered: OnceLock<Result<Flavour, SandboxError>>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("config", &self.config).finish_non_exhaustive()
    }
}

/// The largest kernel we compile: far above real kernels, far below what
/// would make compiling one a denial of service by itself.
pub const MAX_KERNEL_BYTES: usize = 32 << 20;

/// `\0asm`, then the binary version: 0x0d/layer 1 for components, 1/layer 0 for core modules.
const COMPONENT_HEADER: &[u8] = b"\0asm\x0d\0\x01\0";
const CORE_MODULE_HEADER: &[u8] = b"\0asm\x01\0\0\0";

fn engine_config(config: &SandboxConfig, metered: bool) -> Config {
    let mut c = Config::new();
    c.strategy(Strategy::Cranelift)
        .cranelift_opt_level(OptLevel::Speed)
        // Replicas on different machines must agree bit for bit: NaN bits
        // are made canonical where they become observable, by rewriting the
        // kernel before compiling (nan_canon.rs), not after every float op.
        .cranelift_nan_canonicalization(false)
        .wasm_simd(true)
        .wasm_relaxed_simd(true)
        .relaxed_simd_deterministic(true)
        .wasm_component_model(true)
        .max_wasm_stack(config.max_wasm_stack_bytes)
        .epoch_interruption(config.epoch_interruption)
        // Fuel costs up to 2-5x in tight loops (docs/benchmarks.md): only when asked.
        .consume_fuel(metered)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(laptop_pool()));
    c
}

/// Pre-reserved instance slots make instantiation a few microseconds. Sized
/// for one worker running one kernel at a time on a laptop, not for a server:
/// every memory slot reserves address space (not RAM), so keep them few.
/// A wasm32-wasip2 component holds several core instances (the program plus
/// WASI adapter shims), hence more core instances and tables than memories.
fn laptop_pool() -> PoolingAllocationConfig {
    let mut p = PoolingAllocationConfig::new();
    p.total_component_instances(4)
        .total_core_instances(64)
        .total_memories(8)
        .total_tables(64)
        .max_core_instances_per_component(32)
        .max_memories_per_component(4)
        .max_tables_per_component(32)
        .max_memories_per_module(1)
        .max_tables_per_module(4)
        .linear_memory_keep_resident(keep_resident())
        .table_keep_resident(64 << 10)
        .max_unused_warm_slots(4);
    if crate::pagemap::scan_supported() {
        p.pagemap_scan(wasmtime::Enabled::Yes);
    }
    p
}

/// Bytes of a used memory slot kept resident (zeroed) for the next task.
///
/// Where the kernel says which pages a task wrote, up to 64 MiB of them:
/// a large input then lands in pages already there; faulting a 64 MiB input
/// in afresh took longer than the kernel's own work (docs/benchmarks.md).
/// A worker keeps at most that much between tasks, of what its last task
/// used. Elsewhere wasmtime would zero the first bytes of every used memory
/// whether written or not, which costs a small kernel more than the faults
/// it saves (warm start p50 42 µs at 64 KiB, 73 µs at 1 MiB): a little only.
fn keep_resident() -> usize {
    if crate::pagemap::scan_supported() { 64 << 20 } else { 64 << 10 }
}

impl Flavour {
    fn new(config: &SandboxConfig, metered: bool) -> Result<Self, SandboxError> {
        let engine = Engine::new(&engine_config(config, metered)).map_err(SandboxError::Engine)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(SandboxError::Engine)?;
        Kernel::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)
            .map_err(SandboxError::Engine)?;
        crate::host::serve_read_input_without_a_copy(&mut linker).map_err(SandboxError::Engine)?;
        let cache = match &config.cache_dir {
            Some(dir) => {
                let dir = dir.join(if metered { METERED_CACHE } else { PLAIN_CACHE });
                Some(ArtifactCache::open(&dir, &engine).map_err(|source| SandboxError::Cache { path: dir, source })?)
            }
            None => None,
        };
        Ok(Self { engine, linker, cache, prepared: Mutex::new(HashMap::new()) })
    }

    /// The kernel ready to instantiate: from memory, the disk cache, or a
    /// compile. Bytes are needed, and checked against `sha`, only for a compile.
    fn prepare(&self, wasm: &[u8], sha: Sha256) -> Result<(Prepared, bool), Rejected> {
        if let Some(prepared) = self.prepared.lock().unwrap().get(&sha) {
            return Ok((prepared.clone(), true));
        }
        let cached = self.cache.as_ref().and_then(|c| c.load(&self.engine, &sha));
        let cache_hit = cached.is_some();
        let component = match cached {
            Some(c) => c,
            None => {
                if wasm.is_empty() {
                    return Err(Rejected::Unseen(sha));
                }
                if wasm.len() > MAX_KERNEL_BYTES {
                    return Err(Rejected::TooLarge(wasm.len()));
                }
                if Sha256::of(wasm) != sha {
                    return Err(Rejected::NotItsHash(sha));
                }
                if !wasm.starts_with(COMPONENT_HEADER) {
                    return Err(if wasm.starts_with(CORE_MODULE_HEADER) {
                        Rejected::CoreModule
                    } else {
                        Rejected::NotAComponent
                    });
                }
                let rewritten = crate::nan_canon::rewrite_component(wasm)?;
                // from_binary, not new: never parse WAT text handed to us.
                let c = Component::from_binary(&self.engine, &rewritten).map_err(Rejected::Compile)?;
                if let Some(cache) = &self.cache {
                    cache.store(&sha, &c);
                }
                c
            }
        };
        let instance_pre = self.linker.instantiate_pre(&component).map_err(Rejected::Link)?;
        let pre = KernelPre::new(instance_pre).map_err(Rejected::NotTheWorld)?;
        let prepared = Prepared { pre, reads_on_request: reads_input_on_request(&self.engine, &component) };
        self.prepared.lock().unwrap().insert(sha, prepared.clone());
        Ok((prepared, cache_hit))
    }
}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> Result<Self, SandboxError> {
        if let Some(dir) = &config.cache_dir {
            // Both flavours' directories now, while the worker may still
            // set their modes (the metered engine is built later, locked down).
            for sub in [PLAIN_CACHE, METERED_CACHE] {
                let dir = dir.join(sub);
                crate::cache::private_dir(&dir).map_err(|source| SandboxError::Cache { path: dir, source })?;
            }
        }
        let plain = Flavour::new(&config, false)?;
        Ok(Self { config, plain, metered: OnceLock::new() })
    }

    fn flavour(&self, metered: bool) -> Result<&Flavour, &SandboxError> {
        if !metered {
            return Ok(&self.plain);
        }
        self.metered.get_or_init(|| Flavour::new(&self.config, true)).as_ref()
    }

    /// Runs `wasm` once. Never panics on anything the kernel does: every way a
    /// run can end is an [`Outcome`].
    pub fn run(
        &self,
        wasm: &[u8],
        input: &[u8],
        params: &str,
        resume: Option<&[u8]>,
        limits: &RunLimits,
        events: impl Events,
    ) -> Outcome {
        self.run_known(Sha256::of(wasm), wasm, input, params, resume, limits, events)
    }

    /// Whether the kernel `sha` is compiled and linked for runs with `metered` fuel.
    pub fn is_prepared(&self, sha: &Sha256, metered: bool) -> bool {
        self.flavour(metered).is_ok_and(|f| f.prepared.lock().unwrap().contains_key(sha))
    }

    /// Like [`Sandbox::run`] for a kernel named by its SHA-256: hashing a
    /// large kernel costs more than starting it, so a warm sandbox skips it.
    /// `wasm` may be empty once the kernel is prepared (see
    /// [`Sandbox::is_prepared`]); when it is compiled, it is checked against `sha`.
    #[allow(clippy::too_many_arguments, reason = "mirrors `run` plus the kernel's name")]
    pub fn run_known(
        &self,
        sha: Sha256,
        wasm: &[u8],
        input: &[u8],
        params: &str,
        resume: Option<&[u8]>,
        limits: &RunLimits,
        events: impl Events,
    ) -> Outcome {
        let flavour = match self.flavour(limits.max_fuel.is_some()) {
            Ok(f) => f,
            Err(e) => return Outcome::failed(Status::Error, e.to_string()),
        };
        let (Prepared { pre, reads_on_request }, cache_hit) = match flavour.prepare(wasm, sha) {
            Ok(p) => p,
            Err(e) => return Outcome::failed(Status::InvalidKernel, e.to_string()),
        };

        let (wasi, stdio) = wasi_ctx::build(limits.seed);
        // A checkpoint is at most about an output's worth of state.
        let max_checkpoint_bytes =
            usize::try_from(limits.max_output_bytes.saturating_mul(2).max(1 << 20)).unwrap_or(usize::MAX);
        let memory = MemoryCap::new(usize::try_from(limits.max_memory_bytes).unwrap_or(usize::MAX));
        // SAFETY: the store holding the lent input is this function's and is
        // dropped before it returns; `input` is borrowed for the whole call.
        let lent = unsafe { LentInput::lend(input) };
        let state = HostState::new(wasi, lent, memory, Box::new(events), max_checkpoint_bytes);
        let mut store = Store::new(&flavour.engine, state);
        store.limiter(|s| &mut s.memory);
        if self.config.epoch_interruption {
            // Nobody advances the epoch yet: the checks run, and never fire.
            store.set_epoch_deadline(u64::MAX / 2);
        }
        if let Some(fuel) = limits.max_fuel {
            store.set_fuel(fuel).expect("fuel is enabled on the metered engine");
        }

        let instance = pre.instantiate(&mut store);
        // Instantiating may run code that burns fuel: where wasmtime cannot
        // map data segments copy-on-write (Windows, macOS) it copies them in
        // with generated code, on Linux it does not, so a kernel used 16,385
        // or more fuel on Windows than on Linux (wasmtime issue 14331;
        // docs/architecture.md, "Windows"). Only `run` is metered: its budget
        // is filled again after instantiation, whatever that took (at most
        // one budget), so a task costs the same fuel on every platform and
        // replicas on different ones can agree.
        if let (Ok(_), Some(fuel)) = (&instance, limits.max_fuel) {
            store.set_fuel(fuel).expect("fuel is enabled on the metered engine");
        }
        let handed = if reads_on_request { &[][..] } else { input };
        let result = instance.and_then(|k| k.call_run(&mut store, handed, params, resume));
        let fuel = limits.max_fuel.map(|max| max - store.get_fuel().unwrap_or(0));
        let mut outcome = match result {
            Ok(Ok(output)) if output.len() as u64 > limits.max_output_bytes => Outcome::failed(
                Status::Error,
                format!("output of {} bytes exceeds the cap of {} bytes", output.len(), limits.max_output_bytes),
            ),
            Ok(Ok(output)) => Outcome { output, ..Outcome::failed(Status::Ok, "") },
            Ok(Err(message)) => Outcome::failed(Status::Error, format!("kernel reported: {message}")),
            Err(e) => classify(&e, store.data()),
        };
        if outcome.status == Status::Ok {
            outcome.error = None;
        }
        let data = store.data_mut();
        outcome.fuel = fuel;
        outcome.peak_memory_bytes = data.memory.peak_bytes as u64;
        outcome.cache_hit = cache_hit;
        outcome.log = std::mem::take(&mut data.log);
        outcome.log_dropped_bytes = data.log_dropped_bytes;
        // stdout/stderr are captured like `log`, within their own caps.
        for (name, pipe) in [("stdout", &stdio.stdout), ("stderr", &stdio.stderr)] {
            let bytes = pipe.contents();
            if !bytes.is_empty() {
                outcome.log.push_str(&format!("[{name}] {}\n", String::from_utf8_lossy(&bytes)));
            }
        }
        outcome
    }
}

fn classify(e: &wasmtime::Error, state: &HostState) -> Outcome {
    if state.memory.refused {
        return Outcome::failed(
            Status::OutOfMemory,
            format!("memory limit of {} bytes reached", state.memory.max_bytes),
        );
    }
    if let Some(why) = &state.violation {
        return Outcome::failed(Status::Trapped, why.clone());
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Outcome::failed(Status::OutOfFuel, "fuel budget exhausted"),
        Some(trap) => Outcome::failed(Status::Trapped, format!("{trap}")),
        None => Outcome::failed(Status::Trapped, format!("{e:#}")),
    }
}
