//! The OS layers of a worker's confinement and the report a worker gives
//! of them: sent by the worker to its supervisor, shown by `idlemesh status`
//! and the dashboard, and written into every `task_started` ledger entry.
//! How the layers are put in place is the runtime's (its `lockdown` module).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a worker runs: the GPU profile also allows what a Vulkan driver needs.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    #[default]
    Cpu,
    Gpu,
}

/// One OS layer of the worker's confinement, by the name the report,
/// `require_sandbox` and the docs use.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    NoNewPrivs,
    FdsClosed,
    EmptyEnv,
    PrivateCwd,
    Rlimits,
    Landlock,
    LandlockNet,
    Netns,
    Seccomp,
}

impl Layer {
    pub const ALL: [Layer; 9] = [
        Layer::NoNewPrivs,
        Layer::FdsClosed,
        Layer::EmptyEnv,
        Layer::PrivateCwd,
        Layer::Rlimits,
        Layer::Landlock,
        Layer::LandlockNet,
        Layer::Netns,
        Layer::Seccomp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Layer::NoNewPrivs => "no_new_privs",
            Layer::FdsClosed => "fds_closed",
            Layer::EmptyEnv => "empty_env",
            Layer::PrivateCwd => "private_cwd",
            Layer::Rlimits => "rlimits",
            Layer::Landlock => "landlock",
            Layer::LandlockNet => "landlock_net",
            Layer::Netns => "netns",
            Layer::Seccomp => "seccomp",
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of [`Layer::ALL`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown sandbox layer {0:?} (known: {known})", known = Layer::ALL.map(|l| l.as_str()).join(", "))]
pub struct UnknownLayer(pub String);

impl FromStr for Layer {
    type Err = UnknownLayer;
    fn from_str(s: &str) -> Result<Self, UnknownLayer> {
        Layer::ALL.into_iter().find(|l| l.as_str() == s).ok_or_else(|| UnknownLayer(s.to_owned()))
    }
}

/// Which layers are in force for one worker, and why any is not.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxReport {
    pub profile: Profile,
    pub no_new_privs: bool,
    /// Every inherited descriptor but the supervisor's pipes closed.
    pub fds_closed: bool,
    pub empty_env: bool,
    /// The working directory is an empty private directory, already removed.
    pub private_cwd: bool,
    /// Core dumps off; new processes, large files and many descriptors refused.
    pub rlimits: bool,
    /// The Landlock ABI in force (0: none).
    pub landlock_abi: u32,
    /// Landlock refuses TCP bind and connect (ABI 4 and later).
    pub landlock_net: bool,
    /// Every thread is under Landlock. Before ABI 8 the threads a GPU
    /// driver started before the lockdown are not (seccomp still binds them).
    #[serde(default)]
    pub landlock_all_threads: bool,
    /// Own network namespace with only a loopback that is down.
    pub netns: bool,
    /// The seccomp-bpf allow-list is installed on every thread.
    pub seccomp: bool,
    /// Each layer not in force, with why.
    #[serde(default)]
    pub missing: BTreeMap<Layer, String>,
}

impl SandboxReport {
    /// No layer at all, each for the same reason (a platform without them,
    /// or a drill run with the lockdown off).
    pub fn none(profile: Profile, why: &str) -> Self {
        let mut report = Self { profile, ..Self::default() };
        for layer in Layer::ALL {
            report.missing.insert(layer, why.to_owned());
        }
        report
    }

    pub fn has(&self, layer: Layer) -> bool {
        match layer {
            Layer::NoNewPrivs => self.no_new_privs,
            Layer::FdsClosed => self.fds_closed,
            Layer::EmptyEnv => self.empty_env,
            Layer::PrivateCwd => self.private_cwd,
            Layer::Rlimits => self.rlimits,
            Layer::Landlock => self.landlock_abi > 0,
            Layer::LandlockNet => self.landlock_net,
            Layer::Netns => self.netns,
            Layer::Seccomp => self.seccomp,
        }
    }

    /// The required layers this worker lacks, each with why.
    pub fn lacking(&self, required: &[Layer]) -> Vec<(Layer, String)> {
        required
            .iter()
            .filter(|l| !self.has(**l))
            .map(|l| (*l, self.missing.get(l).cloned().unwrap_or_else(|| "not in force".into())))
            .collect()
    }

    /// Why this worker may not run kernels when `required` layers are asked
    /// for, in the words the governor and the scheduler both use; `None`
    /// when it has them all.
    pub fn refusal(&self, required: &[Layer]) -> Option<String> {
        let lacking = self.lacking(required);
        if lacking.is_empty() {
            return None;
        }
        let parts: Vec<String> = lacking.iter().map(|(layer, why)| format!("{layer} ({why})")).collect();
        Some(format!("the worker sandbox lacks {}, which require_sandbox asks for", parts.join("; ")))
    }

    /// What the layers mean for the person lending the machine, in words.
    pub fn in_words(&self) -> String {
        let files = self.landlock_abi > 0;
        let network = self.netns || self.landlock_net;
        let calls = self.seccomp;
        let mut text = match (files, network) {
            (true, true) => "Tasks cannot read your files or use the network".to_owned(),
            (true, false) => {
                "Tasks cannot read your files, but the system does not let Idlemesh cut them off the network".to_owned()
            }
            (false, true) => {
                "Tasks cannot use the network, but the system does not let Idlemesh wall off your files".to_owned()
            }
            (false, false) => {
                "Tasks are kept in by WebAssembly alone: this system offers no file or network walls for them"
                    .to_owned()
            }
        };
        text.push_str(if calls {
            ", and cannot start programs or touch other processes."
        } else {
            "; they are not limited to a list of system calls here."
        });
        text
    }
}
