//! The worker's seccomp-bpf allow-list.
//!
//! A call outside the list *traps*: the worker is stopped and the
//! supervisor reports `sandbox-violation` naming the call. We chose that
//! over failing the call with `EPERM` because every call a legitimate worker
//! makes is on the list (the list was taken from traces of every kernel,
//! WASM and WGSL on lavapipe), so a call outside it is an exploit under way
//! or a bug we want to hear about: with `EPERM` an exploit could probe the
//! list at leisure and the task might still "succeed" with a bent result.
//!
//! Outside the list by design: `execve`, new processes (`fork`, `vfork`, a
//! `clone` without `CLONE_THREAD`), `ptrace`, `process_vm_*`, `mount`,
//! `unshare`/`setns`, `bpf`, `io_uring_*`, `perf_event_open`, `keyctl`,
//! `add_key`, signals to any process but our own, and every socket call.
//! `clone3` answers `ENOSYS` (its flags sit in memory a filter cannot read),
//! so the C library falls back to `clone`, whose flags it can.

use std::collections::BTreeMap;

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::{Profile, VIOLATION_EXIT_CODE, VIOLATION_MARKER};

/// Calls any worker makes, with any arguments.
const BASE: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_lseek,
    libc::SYS_close,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    // Landlock decides which paths open; only the cache directory does.
    libc::SYS_openat,
    libc::SYS_fcntl,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_ftruncate,
    libc::SYS_unlinkat,
    libc::SYS_renameat2,
    libc::SYS_mkdirat,
    libc::SYS_getdents64,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_memfd_create,
    libc::SYS_membarrier,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_futex,
    // wasmtime-wasi's runtime waits on the epoll it made before the filter.
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_epoll_wait,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_gettimeofday,
    libc::SYS_getrandom,
    libc::SYS_getpid,
    libc::SYS_getppid,
    libc::SYS_gettid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_uname,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_restart_syscall,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_clone3,
    // The C library's names for file calls where the architecture still has
    // the old ones (the artifact cache renames, and makes its directories).
    #[cfg(target_arch = "x86_64")]
    libc::SYS_renameat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_rename,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_mkdir,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_unlink,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_arch_prctl,
];

/// Calls a Vulkan driver makes once it is loaded (taken from lavapipe; a
/// hardware driver adds little but `ioctl` on its device).
const GPU: &[libc::c_long] = &[
    libc::SYS_ioctl,
    libc::SYS_ppoll,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_poll,
    libc::SYS_eventfd2,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_pipe2,
    libc::SYS_epoll_create1,
    libc::SYS_readlinkat,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_fstatfs,
    libc::SYS_sched_setaffinity,
    libc::SYS_get_mempolicy,
    libc::SYS_sysinfo,
    libc::SYS_prlimit64,
];

/// Why the seccomp layer is missing; the sandbox report keeps its words.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("no seccomp filter for this architecture: {0}")]
    Arch(#[source] BackendError),
    #[error("seccomp filter: {0}")]
    Filter(#[from] BackendError),
    #[error("seccomp refused the filter: {0}")]
    Refused(#[source] seccompiler::Error),
    #[error("could not install the SIGSYS reporter: {0}")]
    Reporter(#[source] std::io::Error),
}

fn arch() -> Result<TargetArch, SeccompError> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(SeccompError::Arch)
}

fn arg(index: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, BackendError> {
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
}

/// An argument the kernel reads as a 32-bit `int` (`ioctl`'s request).
fn arg32(index: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, BackendError> {
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, value)
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, BackendError> {
    SeccompRule::new(conditions)
}

/// The allow-list as BPF: unconditional calls, plus the calls allowed only
/// with some arguments (threads, not processes; signals to ourselves; a
/// few `prctl` options).
pub fn allow_list(profile: Profile, own_pid: u32) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let extra = if profile == Profile::Gpu { GPU } else { &[] };
    for nr in BASE.iter().chain(extra) {
        rules.insert(*nr, Vec::new());
    }
    let pid = u64::from(own_pid);
    let thread = libc::CLONE_THREAD as u64;
    rules.insert(libc::SYS_clone, vec![rule(vec![arg(0, SeccompCmpOp::MaskedEq(thread), thread)?])?]);
    rules.insert(libc::SYS_kill, vec![rule(vec![arg(0, SeccompCmpOp::Eq, pid)?])?]);
    rules.insert(libc::SYS_tgkill, vec![rule(vec![arg(0, SeccompCmpOp::Eq, pid)?])?]);
    let prctl: Result<Vec<SeccompRule>, BackendError> = [libc::PR_SET_NAME, libc::PR_GET_NAME, libc::PR_SET_VMA]
        .into_iter()
        .map(|option| rule(vec![arg(0, SeccompCmpOp::Eq, option as u64)?]))
        .collect();
    rules.insert(libc::SYS_prctl, prctl?);
    // A GPU worker may make any `ioctl` (its driver's); a CPU worker only
    // PAGEMAP_SCAN, with which wasmtime finds the pages a task wrote, to
    // reset only those (pagemap.rs). On `/proc/self/pagemap` it reads (and
    // could write-protect) this process's own pages; on any other file it
    // is an unknown request.
    let pagemap_scan = rule(vec![arg32(1, SeccompCmpOp::Eq, crate::pagemap::PAGEMAP_SCAN)?])?;
    rules.entry(libc::SYS_ioctl).or_insert(vec![pagemap_scan]);
    let filter = SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, arch()?)?;
    Ok(filter.try_into()?)
}

/// `clone3` fails with `ENOSYS`; everything else passes to the allow-list.
fn clone3_fallback() -> Result<BpfProgram, SeccompError> {
    let rules = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::ENOSYS as u32), arch()?)?;
    Ok(filter.try_into()?)
}

/// Installs the SIGSYS reporter and both filters on every thread.
pub fn install(profile: Profile) -> Result<(), SeccompError> {
    let allow = allow_list(profile, std::process::id())?;
    let fallback = clone3_fallback()?;
    install_reporter()?;
    for program in [&fallback, &allow] {
        seccompiler::apply_filter_all_threads(program).map_err(SeccompError::Refused)?;
    }
    Ok(())
}

fn install_reporter() -> Result<(), SeccompError> {
    // SAFETY: a zeroed sigaction with our handler and SA_SIGINFO is valid;
    // the handler only calls async-signal-safe write and exit_group.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
            return Err(SeccompError::Reporter(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Byte offset of `si_syscall` in a SIGSYS `siginfo_t` on 64-bit Linux:
/// signo, errno, code, padding, then the union's `_call_addr` pointer.
const SI_SYSCALL_OFFSET: usize = 24;

/// Tells the supervisor which call broke the rules (one line on stderr),
/// then ends the whole worker: nothing of a task that tried is kept.
extern "C" fn on_sigsys(_signal: libc::c_int, info: *mut libc::siginfo_t, _context: *mut libc::c_void) {
    // SAFETY: the kernel hands a SIGSYS handler a valid siginfo whose
    // union holds `_sigsys`; the read stays inside the 128-byte struct.
    let nr = unsafe { info.cast::<u8>().add(SI_SYSCALL_OFFSET).cast::<libc::c_int>().read_unaligned() };
    let mut line = [0u8; 64];
    let mut len = 0;
    for &b in b"\n".iter().chain(VIOLATION_MARKER.as_bytes()).chain(b" ") {
        line[len] = b;
        len += 1;
    }
    len += write_decimal(&mut line[len..], nr.max(0) as u32);
    line[len] = b'\n';
    len += 1;
    // SAFETY: write(2) and exit_group(2) are async-signal-safe and on the list.
    unsafe {
        libc::write(2, line.as_ptr().cast(), len);
        libc::syscall(libc::SYS_exit_group, VIOLATION_EXIT_CODE);
    }
}

fn write_decimal(out: &mut [u8], mut n: u32) -> usize {
    let mut digits = [0u8; 10];
    let mut count = 0;
    loop {
        digits[count] = b'0' + (n % 10) as u8;
        count += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..count {
        out[i] = digits[count - 1 - i];
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violation_lines_round_trip() {
        let mut buf = [0u8; 10];
        for n in [0u32, 7, 101, 4_294_967_295] {
            let len = write_decimal(&mut buf, n);
            assert_eq!(std::str::from_utf8(&buf[..len]).unwrap(), n.to_string());
        }
        assert_eq!(super::super::parse_violation("idlemesh-sandbox-violation 101\n"), Some(101));
        assert_eq!(super::super::parse_violation("some other log line"), None);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn both_profiles_compile_to_bpf_and_leave_out_the_dangerous_calls() {
        for profile in [Profile::Cpu, Profile::Gpu] {
            assert!(!allow_list(profile, 1).unwrap().is_empty());
        }
        let forbidden = [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_fork,
            libc::SYS_vfork,
            libc::SYS_ptrace,
            libc::SYS_process_vm_readv,
            libc::SYS_process_vm_writev,
            libc::SYS_mount,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_bpf,
            libc::SYS_io_uring_setup,
            libc::SYS_io_uring_enter,
            libc::SYS_io_uring_register,
            libc::SYS_perf_event_open,
            libc::SYS_keyctl,
            libc::SYS_add_key,
            libc::SYS_request_key,
            libc::SYS_tkill,
            libc::SYS_socket,
            libc::SYS_socketpair,
            libc::SYS_connect,
            libc::SYS_bind,
            libc::SYS_listen,
            libc::SYS_accept4,
            libc::SYS_sendto,
            libc::SYS_sendmsg,
            libc::SYS_recvfrom,
            libc::SYS_recvmsg,
        ];
        for nr in forbidden {
            assert!(
                !BASE.contains(&nr) && !GPU.contains(&nr),
                "{} is on an allow-list",
                super::super::syscall_name(nr)
            );
        }
    }
}
