//! What the governor sees and decides, as the control API carries it: the
//! sensors' [`Snapshot`], the [`Decision`] with its [`Reason`]s, and the
//! user's [`ManualPause`]. The governor (idlemesh-agent) computes them; the
//! tray, the dashboard and `idlemesh status` show them and branch only on
//! [`ReasonCode`].

use std::time::Duration;

use idlemesh_protocol::sandbox::SandboxReport;
use serde::{Deserialize, Serialize};
use ts_rs::TS;

/// What the sensors saw at one moment. `None` means the sensor is absent or
/// could not be read: never a reason to crash, sometimes a reason to wait.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
pub struct Snapshot {
    /// When this was taken, ms since the Unix epoch.
    pub at_ms: u64,
    /// Minutes since local midnight, for allowed hours.
    pub local_minute_of_day: u16,
    /// The local clock's offset from UTC in minutes, to show times the user reads.
    pub utc_offset_minutes: i32,
    #[ts(type = "Elapsed | null")]
    pub user_idle: Option<Duration>,
    /// Load of every other process, percent of the whole machine (our worker excluded).
    pub other_cpu_percent: Option<f32>,
    /// `None` on machines without a battery.
    pub battery: Option<Battery>,
    pub cpu_temp_c: Option<f32>,
    /// The busiest GPU's utilisation, where a driver reports it.
    pub gpu_busy_percent: Option<f32>,
    /// Of that, what other programs use: all of it while no GPU kernel of
    /// ours runs; unknown while one does (the counter cannot tell them apart).
    #[serde(default)]
    #[ts(optional = nullable)]
    pub other_gpu_percent: Option<f32>,
    pub metered_network: Option<bool>,
    /// Whether a worker found a GPU for WGSL kernels, when GPU work is on:
    /// `Some(false)` and nothing on the GPU can run. `None`: not asked (yet).
    #[serde(default)]
    #[ts(optional = nullable)]
    pub gpu_found: Option<bool>,
    /// The program whose window is focused and full screen, if one is
    /// (X11; `None` where the display server does not say).
    #[serde(default)]
    #[ts(optional = nullable)]
    pub fullscreen: Option<String>,
    /// A running program of the user's `exclusive_programs`, if one runs.
    #[serde(default)]
    #[ts(optional = nullable)]
    pub exclusive_program: Option<String>,
    pub uploaded_today_bytes: u64,
    pub downloaded_today_bytes: u64,
    /// The OS layers the latest worker reported; `None` before any started.
    #[serde(default)]
    pub sandbox: Option<SandboxReport>,
    /// `Some` on a machine with a graphical session: what to say when
    /// `user_idle` is unknown there (why the machine counts as attended,
    /// and why no idle sensor answers). `None`: headless.
    #[serde(default)]
    pub graphical_session: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, TS)]
pub struct Battery {
    pub percent: f32,
    pub on_ac: bool,
}

/// The user's own pause, always allowed, whatever the policy says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ManualPause {
    None,
    Until { until_ms: u64 },
    UntilResumed,
}

impl ManualPause {
    /// Whether it holds at `now_ms`.
    pub fn holds(self, now_ms: u64) -> bool {
        match self {
            Self::None => false,
            Self::Until { until_ms } => now_ms < until_ms,
            Self::UntilResumed => true,
        }
    }

    /// Of two pauses, the one that ends first (what holds for both).
    pub fn shorter(self, other: Self) -> Self {
        match (self, other) {
            (Self::None, _) | (_, Self::None) => Self::None,
            (Self::Until { until_ms: a }, Self::Until { until_ms: b }) => Self::Until { until_ms: a.min(b) },
            (until @ Self::Until { .. }, Self::UntilResumed) | (Self::UntilResumed, until @ Self::Until { .. }) => {
                until
            }
            (Self::UntilResumed, Self::UntilResumed) => Self::UntilResumed,
        }
    }
}

/// Which work something concerns: kernels on the processor (WASM), on the
/// graphics card (WGSL), or both. The user may pause one kind alone, and
/// some limits (another program busy on the GPU) stop one kind alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    #[default]
    All,
    Cpu,
    Gpu,
}

impl Scope {
    pub fn is_all(&self) -> bool {
        *self == Self::All
    }
    pub fn covers_cpu(self) -> bool {
        self != Self::Gpu
    }
    pub fn covers_gpu(self) -> bool {
        self != Self::Cpu
    }
}

/// The user's pauses of each kind of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS)]
pub struct Pauses {
    pub cpu: ManualPause,
    pub gpu: ManualPause,
}

impl Default for Pauses {
    fn default() -> Self {
        Self::both(ManualPause::None)
    }
}

impl Pauses {
    pub fn both(pause: ManualPause) -> Self {
        Self { cpu: pause, gpu: pause }
    }

    /// `pause` for the kinds `scope` covers; the other kind's pause stays.
    pub fn set(&mut self, scope: Scope, pause: ManualPause) {
        if scope.covers_cpu() {
            self.cpu = pause;
        }
        if scope.covers_gpu() {
            self.gpu = pause;
        }
    }

    /// The pause that holds for all work (`None` while one kind may run).
    pub fn all(self) -> ManualPause {
        self.cpu.shorter(self.gpu)
    }

    /// Pauses that ran out are over.
    pub fn expire(&mut self, now_ms: u64) {
        for p in [&mut self.cpu, &mut self.gpu] {
            if matches!(p, ManualPause::Until { .. }) && !p.holds(now_ms) {
                *p = ManualPause::None;
            }
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// `cpu`: whether processor kernels may run now (only the GPU may, when
    /// not); `gpu`: whether GPU kernels may.
    Run {
        cores: u32,
        duty_cycle_percent: u8,
        gpu: bool,
        #[serde(default = "yes")]
        #[ts(as = "Option<bool>", optional)]
        cpu: bool,
    },
    Pause,
}

/// A stable code for the UI to branch on; the text is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    PausedByUser,
    UserActive,
    UserIdle,
    IdleUnknown,
    /// No idle sensor answers on a machine with a graphical session.
    PresenceUnknown,
    OnBattery,
    BatteryLow,
    PowerOk,
    TooHot,
    OutsideHours,
    MeteredNetwork,
    UploadCapReached,
    DownloadCapReached,
    OtherProgramsBusy,
    /// Another program keeps the GPU busy: GPU work stops.
    GpuBusy,
    /// The focused window is full screen (a game, a film).
    FullScreen,
    /// A program of the user's `exclusive_programs` runs.
    ExclusiveProgram,
    Throttled,
    /// A layer `require_sandbox` lists is not in force (or not known yet).
    SandboxMissing,
    /// The IT policy file cannot be read at all.
    PolicyUnreadable,
    /// The user asked for work now (the demo's "Start now").
    LentNowByUser,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
pub struct Reason {
    pub code: ReasonCode,
    pub text: String,
    /// The work it stops (or allows): all of it, or one kind.
    #[serde(default)]
    #[ts(as = "Option<Scope>", optional)]
    pub scope: Scope,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
pub struct Decision {
    pub action: Action,
    /// For a pause, every reason that holds; for a run, why it may run and how much.
    pub reasons: Vec<Reason>,
    /// Which traffic with pools may go out now (computing aside).
    #[serde(default)]
    pub traffic: Traffic,
}

/// Which traffic with pools may go out: on a metered network, only what the
/// user allowed; work already leased may go on computing meanwhile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum Traffic {
    /// Everything: leases, downloads, result uploads.
    #[default]
    All,
    /// Only keeping or giving back leases already held (heartbeats, give-backs).
    LeaseUpkeep,
    /// Nothing: leases held run out at their deadline.
    None,
}

impl Traffic {
    pub fn may_keep_leases(self) -> bool {
        self != Self::None
    }
}

impl Decision {
    /// Nothing may run.
    pub fn is_paused(&self) -> bool {
        self.action == Action::Pause
    }

    /// Whether processor kernels may run now.
    pub fn cpu_runs(&self) -> bool {
        matches!(self.action, Action::Run { cpu: true, .. })
    }

    /// Whether GPU kernels may run now.
    pub fn gpu_runs(&self) -> bool {
        matches!(self.action, Action::Run { gpu: true, .. })
    }

    /// Whether kernels of this kind (`gpu`, else the processor's) may run now.
    pub fn kind_runs(&self, gpu: bool) -> bool {
        if gpu { self.gpu_runs() } else { self.cpu_runs() }
    }
}
