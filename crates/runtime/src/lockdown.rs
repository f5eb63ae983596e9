//! The worker's own walls, independent of wasmtime.
//!
//! wasmtime keeps a kernel inside its linear memory and the WIT world; this
//! module assumes that wall has already fallen. Before a worker reads its
//! first task it confines its own process with layers that each stand alone:
//! no new privileges, no inherited file descriptors, an empty environment, an
//! empty private working directory, resource limits that forbid new
//! processes and large files, no network (its own network namespace),
//! Landlock (no filesystem beyond the compiled-kernel cache, no TCP) and a
//! seccomp-bpf allow-list of system calls. A layer the running kernel cannot
//! provide is reported with why, never skipped in silence: the report goes
//! to the supervisor in the worker's first message, and from there into
//! `idlemesh status`, `idlemesh kernel run`, every `task_started` ledger
//! entry and the dashboard.
//!
//! The work happens in two steps because some layers need the process to
//! have one thread (a user namespace) and some must come after the GPU
//! driver has loaded (the driver opens files and starts threads we then
//! confine): [`begin`] first thing in the worker, [`Lockdown::seal`] once
//! the engine and driver are ready and before any task is read.

use std::path::PathBuf;

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub mod seccomp;

/// The exit status of a worker stopped by its seccomp filter (128 + SIGSYS).
pub const VIOLATION_EXIT_CODE: i32 = 159;
/// How a worker stopped by its seccomp filter names the call on stderr.
pub const VIOLATION_MARKER: &str = "idlemesh-sandbox-violation";

pub use idlemesh_protocol::sandbox::{Layer, Profile, SandboxReport};

/// What [`begin`] needs to know.
#[derive(Debug, Clone, Default)]
pub struct LockdownConfig {
    pub profile: Profile,
    /// Directories the worker keeps read/write access to (its compiled-kernel cache).
    pub writable: Vec<PathBuf>,
}

/// A lockdown under way: the one-thread layers are in force, the rest come with [`Lockdown::seal`].
#[derive(Debug)]
pub struct Lockdown {
    config: LockdownConfig,
    report: SandboxReport,
}

/// The first step, first thing in the worker while it has a single thread:
/// its own user and network namespace, inherited descriptors closed, core
/// dumps off, an empty private working directory.
pub fn begin(config: LockdownConfig) -> Lockdown {
    #[cfg(target_os = "linux")]
    let report = {
        let mut report = SandboxReport { profile: config.profile, ..SandboxReport::default() };
        linux::begin(&mut report);
        report
    };
    #[cfg(not(target_os = "linux"))]
    let report = SandboxReport::none(config.profile, not_here());
    Lockdown { config, report }
}

impl Lockdown {
    /// The second step, once the engine (and, for the GPU profile, the
    /// driver) is ready and before the first task is read: the environment
    /// emptied, resource limits, no new privileges, Landlock, then
    /// `before_seccomp`, then seccomp. `before_seccomp` starts what needs
    /// calls the filter refuses (an async runtime's sockets and epoll) while
    /// its threads are still born under Landlock.
    pub fn seal(self, before_seccomp: impl FnOnce()) -> SandboxReport {
        let Lockdown { config, report } = self;
        #[cfg(target_os = "linux")]
        let report = {
            let mut report = report;
            linux::seal(&config, &mut report, before_seccomp);
            report
        };
        #[cfg(not(target_os = "linux"))]
        {
            let _ = config;
            before_seccomp();
        }
        report
    }
}

#[cfg(not(target_os = "linux"))]
fn not_here() -> &'static str {
    "not implemented on this platform yet (docs/architecture.md: worker lockdown)"
}

/// The syscall number in a violation line a worker wrote, if it is one.
pub fn parse_violation(line: &str) -> Option<i64> {
    line.trim().strip_prefix(VIOLATION_MARKER)?.trim().parse().ok()
}

/// The name of system call `nr` on this architecture, for reports.
pub fn syscall_name(nr: i64) -> String {
    #[cfg(target_os = "linux")]
    if let Some(name) = usize::try_from(nr).ok().and_then(syscalls::Sysno::new) {
        return name.name().to_owned();
    }
    format!("system call {nr}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_parse_by_their_report_names_and_missing_ones_are_named_with_why() {
        for layer in Layer::ALL {
            assert_eq!(layer.as_str().parse::<Layer>().unwrap(), layer);
            assert_eq!(serde_json::to_value(layer).unwrap(), layer.as_str());
        }
        assert!("selinux".parse::<Layer>().unwrap_err().to_string().contains("known: no_new_privs"));
        let mut report = SandboxReport { seccomp: true, landlock_abi: 7, ..SandboxReport::default() };
        report.missing.insert(Layer::Netns, "user namespaces are off".into());
        assert!(report.lacking(&[Layer::Seccomp, Layer::Landlock]).is_empty());
        assert_eq!(report.refusal(&[Layer::Seccomp]), None);
        assert_eq!(
            report.refusal(&[Layer::Netns, Layer::Seccomp]).unwrap(),
            "the worker sandbox lacks netns (user namespaces are off), which require_sandbox asks for"
        );
        assert_eq!(
            report.lacking(&[Layer::Netns, Layer::Rlimits]),
            vec![(Layer::Netns, "user namespaces are off".into()), (Layer::Rlimits, "not in force".into())]
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["missing"]["netns"], "user namespaces are off");
        assert_eq!(json["landlock_abi"], 7);
    }

    #[test]
    fn the_words_follow_the_layers() {
        let full = SandboxReport { landlock_abi: 7, netns: true, seccomp: true, ..SandboxReport::default() };
        assert_eq!(
            full.in_words(),
            "Tasks cannot read your files or use the network, and cannot start programs or touch other processes."
        );
        let none = SandboxReport::default();
        assert!(none.in_words().starts_with("Tasks are kept in by WebAssembly alone"));
    }
}
