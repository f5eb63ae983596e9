//! The Linux layers: namespaces, descriptors, environment, working
//! directory, resource limits, capabilities, no_new_privs, Landlock, seccomp.

use std::ffi::CString;
use std::io;
use std::path::Path;

use landlock::{
    ABI, Access, AccessFs, AccessNet, LandlockStatus, RestrictSelfAttr, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, Scope, path_beneath_rules,
};

use super::{Layer, LockdownConfig, Profile, SandboxReport};

/// The newest Landlock ABI this build asks for; an older kernel gets what it
/// offers (best effort), and the report says which ABI is in force.
const LANDLOCK_ABI: ABI = ABI::V7;
/// Descriptors: stdio, the compiled-kernel cache, wasmtime's memory images
/// (one memfd per kernel kept warm) and a GPU driver's device files.
const MAX_OPEN_FILES: u64 = 256;
/// The largest file the worker may write: a compiled artifact of the
/// largest kernel we accept is well below it.
const MAX_FILE_BYTES: u64 = 512 << 20;
/// Threads beyond those running at seal time, besides three per core
/// (wasmtime's compile threads, wasmtime-wasi's runtime workers, a GPU
/// driver's): a margin for blocking helpers.
const SPARE_THREADS: u64 = 32;

/// Why a layer could not be put in place; the sandbox report keeps its words.
#[derive(Debug, thiserror::Error)]
enum LayerError {
    #[error(
        "no user namespace could be made ({0}): this system forbids unprivileged user namespaces \
         (kernel.unprivileged_userns_clone, user.max_user_namespaces, an AppArmor userns rule) or the agent \
         runs in a namespace that allows no nesting, so the worker keeps the network it was started with"
    )]
    UserNamespacesForbidden(#[source] io::Error),
    #[error(
        "the supervisor did not start the worker in its own namespace, and the worker, no longer \
         single-threaded, could not make one ({0})"
    )]
    NotSingleThreaded(#[source] io::Error),
    #[error("unshare refused: {0}")]
    Unshare(#[source] io::Error),
    #[error("{limit}: {source}")]
    Rlimit {
        limit: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "RLIMIT_NPROC counts every process of the user outside a user namespace, so it cannot be \
         lowered for the worker alone here (seccomp still refuses new processes)"
    )]
    NprocNeedsUserNamespace,
    #[error("Landlock: {0}")]
    Landlock(#[from] landlock::RulesetError),
    #[error("Landlock is built into this kernel but not enabled (lsm= boot option)")]
    LandlockNotEnabled,
    #[error("this kernel has no Landlock (Linux 5.13 or later, built with it)")]
    LandlockNotImplemented,
    #[error("Landlock did not enforce the ruleset")]
    LandlockNotEnforced,
}

pub(super) fn begin(report: &mut SandboxReport) {
    // Before anything else: a user namespace needs a single-threaded caller.
    match own_network_namespace() {
        Ok(()) => report.netns = true,
        Err(why) => {
            report.missing.insert(Layer::Netns, why.to_string());
        }
    }
    match close_inherited_fds() {
        Ok(()) => report.fds_closed = true,
        Err(e) => {
            report.missing.insert(Layer::FdsClosed, format!("could not close inherited descriptors: {e}"));
        }
    }
    // Core dumps off, and nobody of the same user may attach to or read
    // the worker's memory (its /proc entries become root's).
    // SAFETY: plain syscalls on the calling process with valid arguments.
    unsafe {
        let none = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::setrlimit(libc::RLIMIT_CORE, &none);
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
    match private_empty_cwd() {
        Ok(()) => report.private_cwd = true,
        Err(e) => {
            report.missing.insert(Layer::PrivateCwd, format!("could not enter an empty private directory: {e}"));
        }
    }
}

pub(super) fn seal(config: &LockdownConfig, report: &mut SandboxReport, before_seccomp: impl FnOnce()) {
    for (key, _) in std::env::vars_os() {
        // SAFETY: the only other threads here are ones a library started at
        // load (the tray app's WebKit allocator scavenger) or a GPU driver's,
        // parked until we submit work; none reads the environment after its
        // own start-up.
        unsafe { std::env::remove_var(key) };
    }
    if std::env::vars_os().next().is_none() {
        report.empty_env = true;
    } else {
        report.missing.insert(Layer::EmptyEnv, "some variables could not be removed".into());
    }
    match set_rlimits(in_own_unmapped_user_namespace()) {
        Ok(()) => report.rlimits = true,
        Err(why) => {
            report.missing.insert(Layer::Rlimits, why.to_string());
        }
    }
    // A user namespace made here gives every capability inside it, and a
    // worker started by root has root's: keep none.
    drop_capabilities();
    // SAFETY: prctl with valid arguments on the calling process.
    report.no_new_privs = unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
            && libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1
    };
    if !report.no_new_privs {
        report.missing.insert(Layer::NoNewPrivs, format!("prctl refused: {}", io::Error::last_os_error()));
    }
    let threads = threads_now();
    match landlock(config) {
        Ok((abi, net, all_threads)) => {
            report.landlock_abi = abi;
            report.landlock_net = net;
            // Before ABI 8 Landlock binds only the calling thread (and those
            // it starts): threads started before it (a GPU driver's, the tray
            // app's WebKit scavenger) are bound by seccomp alone. Said, not hidden.
            report.landlock_all_threads = all_threads || threads == 1;
            if !net {
                report
                    .missing
                    .insert(Layer::LandlockNet, format!("Landlock ABI {abi} has no TCP rules (ABI 4 and later)"));
            }
        }
        Err(why) => {
            report.missing.insert(Layer::LandlockNet, why.to_string());
            report.missing.insert(Layer::Landlock, why.to_string());
        }
    }
    before_seccomp();
    match super::seccomp::install(config.profile) {
        Ok(()) => report.seccomp = true,
        Err(why) => {
            report.missing.insert(Layer::Seccomp, why.to_string());
        }
    }
}

/// A user namespace of our own (so an unprivileged process may have a
/// network namespace) and in it a network namespace whose only device, the
/// loopback, is down: no address reaches anything.
///
/// The supervisor normally made both when it started us (between its fork
/// and our exec, where the child has one thread whatever libraries the
/// binary loads: the tray app's WebKit starts a thread before `main`), so
/// first we check whether we already are in such a network; only if not do
/// we try ourselves (a user namespace needs a single-threaded caller).
fn own_network_namespace() -> Result<(), LayerError> {
    if network_is_isolated() {
        return Ok(());
    }
    // SAFETY: unshare(2) on the calling process; it fails cleanly with EINVAL
    // if another thread exists.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) } == 0 {
        return Ok(());
    }
    let userns = io::Error::last_os_error();
    // Root may have a network namespace without a user namespace.
    // SAFETY: as above.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0 {
        return Ok(());
    }
    Err(match userns.raw_os_error() {
        Some(libc::EPERM | libc::ENOSPC | libc::EACCES) => LayerError::UserNamespacesForbidden(userns),
        Some(libc::EINVAL) => LayerError::NotSingleThreaded(userns),
        _ => LayerError::Unshare(userns),
    })
}

/// This process's network has no device but the loopback and no address at
/// all (so the loopback is down): what a fresh network namespace looks like,
/// read from its own /proc/net.
fn network_is_isolated() -> bool {
    let read = |name: &str| std::fs::read_to_string(format!("/proc/net/{name}"));
    let (Ok(dev), Ok(trie), Ok(inet6)) = (read("dev"), read("fib_trie"), read("if_inet6")) else { return false };
    let only_loopback = dev.lines().skip(2).all(|l| l.split(':').next().is_some_and(|name| name.trim() == "lo"));
    only_loopback && trie.trim().is_empty() && inet6.trim().is_empty()
}

/// Whether this process is in a user namespace of its own that maps no one
/// (as the supervisor's spawn makes it): then resource limits counted per
/// user, like RLIMIT_NPROC, count this worker alone.
fn in_own_unmapped_user_namespace() -> bool {
    std::fs::read_to_string("/proc/self/uid_map").is_ok_and(|map| map.trim().is_empty())
}

fn close_inherited_fds() -> io::Result<()> {
    // SAFETY: close_range(2) on descriptors this process owns; nothing above
    // stdio is in use this early in the worker.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if rc == 0 {
        return Ok(());
    }
    // Kernels before 5.9: every descriptor number up to the limit.
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    for fd in 3..limit.rlim_cur.min(1 << 20) as libc::c_int {
        // SAFETY: closing a descriptor we may or may not have; EBADF is fine.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// A fresh 0700 directory as the working directory, removed at once: a
/// relative path leads nowhere, and nothing is left behind.
fn private_empty_cwd() -> io::Result<()> {
    let template = std::env::temp_dir().join("idlemesh-worker-XXXXXX");
    let template = CString::new(template.into_os_string().into_encoded_bytes()).map_err(io::Error::other)?;
    let mut buf = template.into_bytes_with_nul();
    // SAFETY: mkdtemp rewrites the XXXXXX of the NUL-terminated buffer we own.
    let dir = unsafe { libc::mkdtemp(buf.as_mut_ptr().cast()) };
    if dir.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `dir` points into `buf`, a valid C string.
    unsafe {
        if libc::chdir(dir) != 0 {
            let e = io::Error::last_os_error();
            libc::rmdir(dir);
            return Err(e);
        }
        if libc::rmdir(dir) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn set_rlimits(own_user_namespace: bool) -> Result<(), LayerError> {
    let set = |what, value: u64, limit: &'static str| -> Result<(), LayerError> {
        let rlimit = libc::rlimit { rlim_cur: value, rlim_max: value };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(what, &rlimit) } != 0 {
            return Err(LayerError::Rlimit { limit, source: io::Error::last_os_error() });
        }
        Ok(())
    };
    // A write past the limit must fail with EFBIG, not kill the worker.
    // SAFETY: ignoring a signal.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    set(libc::RLIMIT_FSIZE, MAX_FILE_BYTES, "RLIMIT_FSIZE")?;
    set(libc::RLIMIT_NOFILE, MAX_OPEN_FILES, "RLIMIT_NOFILE")?;
    set(libc::RLIMIT_CORE, 0, "RLIMIT_CORE")?;
    if !own_user_namespace {
        return Err(LayerError::NprocNeedsUserNamespace);
    }
    let cores = std::thread::available_parallelism().map_or(4, |n| n.get() as u64);
    set(libc::RLIMIT_NPROC, threads_now() + 3 * cores + SPARE_THREADS, "RLIMIT_NPROC")
}

fn threads_now() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Threads:").and_then(|n| n.trim().parse().ok())))
        .unwrap_or(1)
}

fn drop_capabilities() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header { version: VERSION_3, pid: 0 };
    let data = [Data { effective: 0, permitted: 0, inheritable: 0 }; 2];
    // SAFETY: capset(2) with a v3 header and two data words, as the ABI asks;
    // lowering one's own capabilities is always allowed.
    unsafe {
        libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr());
        libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    }
}

/// Landlock: the handled rights are every filesystem right, TCP bind and
/// connect, and the abstract-socket and signal scopes; the only rules grant
/// the writable directories (and a GPU worker's device nodes). Returns the
/// ABI in force and whether TCP is refused.
fn landlock(config: &LockdownConfig) -> Result<(u32, bool, bool), LayerError> {
    let all_fs = AccessFs::from_all(LANDLOCK_ABI);
    let mut allowed: Vec<&Path> = config.writable.iter().map(|p| p.as_path()).collect();
    let gpu_nodes: Vec<std::path::PathBuf> = match config.profile {
        Profile::Gpu => gpu_device_nodes(),
        Profile::Cpu => Vec::new(),
    };
    allowed.extend(gpu_nodes.iter().map(|p| p.as_path()));
    let status = Ruleset::default()
        .handle_access(all_fs)?
        .handle_access(AccessNet::from_all(LANDLOCK_ABI))?
        .scope(Scope::from_all(LANDLOCK_ABI))?
        .create()?
        .all_threads(true)?
        .add_rules(path_beneath_rules(allowed, all_fs))?
        .restrict_self()?;
    let abi = match status.landlock {
        // What is enforced: the kernel's ABI, capped at what we ask for.
        LandlockStatus::Available { effective_abi, .. } => effective_abi as u32,
        LandlockStatus::NotEnabled => {
            return Err(LayerError::LandlockNotEnabled);
        }
        LandlockStatus::NotImplemented => {
            return Err(LayerError::LandlockNotImplemented);
        }
    };
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err(LayerError::LandlockNotEnforced);
    }
    Ok((abi, abi >= 4, status.all_threads))
}

/// Device nodes a GPU driver may open again after start-up.
fn gpu_device_nodes() -> Vec<std::path::PathBuf> {
    let mut nodes = Vec::new();
    if Path::new("/dev/dri").is_dir() {
        nodes.push("/dev/dri".into());
    }
    if let Ok(dir) = std::fs::read_dir("/dev") {
        nodes.extend(
            dir.flatten().map(|e| e.path()).filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("nvidia") || n == "kfd")
            }),
        );
    }
    nodes
}
