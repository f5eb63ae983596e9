//! The governor: when may this machine be lent, and how much of it.
//!
//! A pure function of what the sensors saw ([`Snapshot`]), the effective
//! limits (defaults < user settings < IT policy, merged before they get
//! here), the user's manual pause and the previous [`GovernorState`]. No I/O
//! and no clock of its own: time comes in with the snapshot, so every case is
//! a table row in the tests. The state carries the hysteresis, so a reading
//! that hovers at a threshold cannot flap work on and off.
//!
//! Every [`Decision`] lists its reasons in plain words; the tray and
//! `idlemesh status` show them verbatim, and branch only on [`ReasonCode`].

use std::time::Duration;

pub use idlemesh_control::{
    Action, Battery, Decision, ManualPause, Pauses, Reason, ReasonCode, Scope, Snapshot, Traffic,
};
use idlemesh_runtime::Layer;
use serde::{Deserialize, Serialize};

/// Battery must climb this far past the minimum before work resumes.
pub const BATTERY_HYSTERESIS_PERCENT: f32 = 5.0;
/// The CPU must cool this far below the maximum before work resumes.
pub const TEMPERATURE_HYSTERESIS_C: f32 = 5.0;
/// Other programs' load must stay high (or low) this long to change the decision:
/// a compile that spikes for a second does not stop work, a busy minute does.
pub const LOAD_GRACE: Duration = Duration::from_secs(10);
/// Load must fall this far below the limit to count as quiet again.
pub const LOAD_HYSTERESIS_PERCENT: f32 = 5.0;
/// Another program's GPU use must stay over the limit this long to stop GPU
/// work: a game or a video competes with a kernel at once, so shorter than
/// [`LOAD_GRACE`], which still applies before GPU work starts again.
pub const GPU_LOAD_GRACE: Duration = Duration::from_secs(2);

/// A daily window of allowed hours, in minutes since local midnight;
/// `start > end` wraps past midnight (22:00–06:00).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hours {
    pub start_minute: u16,
    pub end_minute: u16,
}

impl Hours {
    pub fn contains(&self, minute: u16) -> bool {
        if self.start_minute <= self.end_minute {
            (self.start_minute..self.end_minute).contains(&minute)
        } else {
            minute >= self.start_minute || minute < self.end_minute
        }
    }
}

/// The effective limits (DESIGN §6), already resolved to this machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub idle_after: Duration,
    pub cores: u32,
    pub duty_cycle_percent: u8,
    pub gpu_enabled: bool,
    pub run_on_battery: bool,
    pub min_battery_percent: u8,
    pub max_cpu_temp_c: f32,
    /// `None`: any time.
    pub allowed_hours: Option<Hours>,
    pub memory_per_task_bytes: u64,
    pub daily_upload_cap_bytes: Option<u64>,
    pub daily_download_cap_bytes: Option<u64>,
    pub pause_on_metered_network: bool,
    /// Whether traffic that can wait (leases, downloads, result uploads)
    /// may use a metered network.
    #[serde(default)]
    pub allow_metered: bool,
    /// On a metered network, whether the agent may still keep or give back
    /// the leases it holds (heartbeats, give-backs: a few hundred bytes).
    #[serde(default)]
    pub metered_small_traffic: bool,
    /// Pause while other programs use more than this share of the machine.
    pub max_other_cpu_percent: f32,
    /// Stop GPU work while other programs keep the GPU busier than this.
    #[serde(default = "default_max_other_gpu_percent")]
    pub max_other_gpu_percent: f32,
    /// Stop all work while the focused window is full screen.
    #[serde(default = "yes")]
    pub pause_when_fullscreen: bool,
    /// Stop all work while any of these programs runs (process names).
    #[serde(default)]
    pub exclusive_programs: Vec<String>,
    /// OS layers a worker must have before it runs kernels (empty: none required).
    #[serde(default)]
    pub require_sandbox: Vec<Layer>,
    /// Why the IT policy cannot be read, if it cannot: nothing runs then.
    #[serde(default)]
    pub policy_unreadable: Option<String>,
    /// The user asked to lend the machine now, for the demo pool, whether
    /// or not they are at it: their presence does not pause work.
    #[serde(default)]
    pub lend_now: bool,
}

impl Limits {
    /// DESIGN §6 defaults for a machine with `total_cores` and `total_memory_bytes`.
    pub fn defaults(total_cores: u32, total_memory_bytes: u64) -> Self {
        Self {
            idle_after: Duration::from_secs(3 * 60),
            cores: (total_cores / 2).max(1),
            duty_cycle_percent: 60,
            gpu_enabled: false,
            run_on_battery: false,
            min_battery_percent: 80,
            max_cpu_temp_c: 85.0,
            allowed_hours: None,
            memory_per_task_bytes: total_memory_bytes / 4,
            daily_upload_cap_bytes: None,
            daily_download_cap_bytes: None,
            pause_on_metered_network: true,
            allow_metered: false,
            metered_small_traffic: false,
            max_other_cpu_percent: 50.0,
            max_other_gpu_percent: default_max_other_gpu_percent(),
            pause_when_fullscreen: true,
            exclusive_programs: Vec::new(),
            require_sandbox: Vec::new(),
            policy_unreadable: None,
            lend_now: false,
        }
    }
}

fn default_max_other_gpu_percent() -> f32 {
    20.0
}

fn yes() -> bool {
    true
}

/// What the governor remembers between decisions: the latched thresholds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GovernorState {
    battery_low: bool,
    too_hot: bool,
    /// Other load over the limit since then (not yet acted on) ...
    loud_since_ms: Option<u64>,
    /// ... below the limit since then, while paused for it.
    quiet_since_ms: Option<u64>,
    paused_for_load: bool,
    /// The same for other programs' GPU use, which stops GPU work alone.
    gpu: Latch,
}

/// A load limit with hysteresis: set once the load stays over the limit
/// for `on` ms, cleared once it stays `LOAD_HYSTERESIS_PERCENT` under it
/// for `off` ms.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Latch {
    loud_since_ms: Option<u64>,
    quiet_since_ms: Option<u64>,
    set: bool,
}

impl Latch {
    fn update(&mut self, load: f32, limit: f32, at_ms: u64, on: Duration, off: Duration) {
        if load > limit {
            self.quiet_since_ms = None;
            let since = *self.loud_since_ms.get_or_insert(at_ms);
            if at_ms.saturating_sub(since) >= on.as_millis() as u64 {
                self.set = true;
            }
        } else {
            self.loud_since_ms = None;
            if load <= limit - LOAD_HYSTERESIS_PERCENT {
                let since = *self.quiet_since_ms.get_or_insert(at_ms);
                if at_ms.saturating_sub(since) >= off.as_millis() as u64 {
                    self.set = false;
                }
            } else {
                self.quiet_since_ms = None;
            }
        }
    }
}

/// What may go out, given whether the network is metered (`None`: the
/// OS does not say, which is not metered), today's transfer and the
/// user's limits. A daily cap used up stops what it caps (results
/// wait; nothing new is fetched); keeping leases stays allowed there,
/// a few hundred bytes the cap's owner would not want to cost a task.
pub fn traffic_allowed(s: &Snapshot, l: &Limits) -> Traffic {
    let network = match s.metered_network {
        Some(true) if l.allow_metered => Traffic::All,
        Some(true) if l.metered_small_traffic => Traffic::LeaseUpkeep,
        Some(true) => Traffic::None,
        _ => Traffic::All,
    };
    let reached = |cap: Option<u64>, used: u64| cap.is_some_and(|c| used >= c);
    let capped = reached(l.daily_upload_cap_bytes, s.uploaded_today_bytes)
        || reached(l.daily_download_cap_bytes, s.downloaded_today_bytes);
    if capped && network == Traffic::All { Traffic::LeaseUpkeep } else { network }
}

fn ago(d: Duration) -> String {
    let s = d.as_secs();
    if s < 90 {
        format!("{s} s")
    } else if s < 90 * 60 {
        format!("{} min", s / 60)
    } else {
        format!("{} h", s / 3600)
    }
}

fn clock(ms: u64, utc_offset_minutes: i32) -> String {
    let local_minutes = (ms / 60_000) as i64 + i64::from(utc_offset_minutes);
    let m = local_minutes.rem_euclid(24 * 60);
    format!("{:02}:{:02}", m / 60, m % 60)
}

fn mib(bytes: u64) -> String {
    format!("{} MB", bytes / 1_000_000)
}

/// The user's pause of `scope`'s work, in words, if it holds.
fn paused_by_user(pause: ManualPause, scope: Scope, s: &Snapshot) -> Option<Reason> {
    let what = match scope {
        Scope::All => "paused",
        Scope::Cpu => "processor work paused",
        Scope::Gpu => "GPU work paused",
    };
    let text = match pause {
        ManualPause::Until { until_ms } if s.at_ms < until_ms => {
            format!("{what} by you until {}", clock(until_ms, s.utc_offset_minutes))
        }
        ManualPause::UntilResumed => format!("{what} by you until you resume"),
        _ => return None,
    };
    Some(Reason { code: ReasonCode::PausedByUser, text, scope })
}

/// Decides; returns the decision and the state to pass in next time.
///
/// A reason stops all work or one kind of it ([`Reason::scope`]); the
/// decision is a pause when no kind may run, and otherwise says which may
/// (`Action::Run`'s `cpu` and `gpu`), listing the reasons that stop one
/// kind among those that allow the rest.
pub fn decide(prev: &GovernorState, s: &Snapshot, l: &Limits, pauses: Pauses) -> (Decision, GovernorState) {
    let mut state = prev.clone();
    let mut blocking = Vec::new();
    let mut allowing = Vec::new();
    let reason = |list: &mut Vec<Reason>, code, text: String| list.push(Reason { code, text, scope: Scope::All });

    if pauses.cpu == pauses.gpu {
        blocking.extend(paused_by_user(pauses.cpu, Scope::All, s));
    } else {
        blocking.extend(paused_by_user(pauses.cpu, Scope::Cpu, s));
        blocking.extend(paused_by_user(pauses.gpu, Scope::Gpu, s));
    }

    match s.user_idle {
        _ if l.lend_now => reason(
            &mut allowing,
            ReasonCode::LentNowByUser,
            "you chose to lend this computer now, for the demo pool".into(),
        ),
        Some(idle) if idle < l.idle_after => reason(
            &mut blocking,
            ReasonCode::UserActive,
            format!("user active {} ago; work starts after {} idle", ago(idle), ago(l.idle_after)),
        ),
        Some(idle) => reason(&mut allowing, ReasonCode::UserIdle, format!("you have been away for {}", ago(idle))),
        // Not knowing is not "away" where someone may be at the screen.
        None => match &s.graphical_session {
            Some(why) => reason(
                &mut blocking,
                ReasonCode::PresenceUnknown,
                format!("cannot tell whether you are using this machine ({why})"),
            ),
            None => reason(
                &mut allowing,
                ReasonCode::IdleUnknown,
                "no input sensor here (headless): running as if nobody were using this machine".into(),
            ),
        },
    }

    match s.battery {
        Some(b) => {
            let min = f32::from(l.min_battery_percent);
            if b.percent < min {
                state.battery_low = true;
            } else if b.percent >= min + BATTERY_HYSTERESIS_PERCENT {
                state.battery_low = false;
            }
            if !b.on_ac && !l.run_on_battery {
                reason(
                    &mut blocking,
                    ReasonCode::OnBattery,
                    format!("on battery {:.0}%, and running on battery is off", b.percent),
                );
            } else if state.battery_low {
                let resume = min + BATTERY_HYSTERESIS_PERCENT;
                let power = if b.on_ac { "battery" } else { "on battery" };
                let text = if b.percent < min {
                    format!("{power} {:.0}% < {min:.0}%", b.percent)
                } else {
                    format!("{power} {:.0}%: waiting for {resume:.0}% before starting again", b.percent)
                };
                reason(&mut blocking, ReasonCode::BatteryLow, text);
            } else if b.on_ac {
                reason(&mut allowing, ReasonCode::PowerOk, format!("on AC power, battery {:.0}%", b.percent));
            } else {
                reason(
                    &mut allowing,
                    ReasonCode::PowerOk,
                    format!("on battery {:.0}%, allowed by your settings", b.percent),
                );
            }
        }
        None => reason(&mut allowing, ReasonCode::PowerOk, "on mains power (no battery)".into()),
    }

    if let Some(t) = s.cpu_temp_c {
        if t >= l.max_cpu_temp_c {
            state.too_hot = true;
        } else if t <= l.max_cpu_temp_c - TEMPERATURE_HYSTERESIS_C {
            state.too_hot = false;
        }
        if state.too_hot {
            reason(
                &mut blocking,
                ReasonCode::TooHot,
                format!(
                    "CPU at {t:.0} °C; limit {:.0} °C, resuming below {:.0} °C",
                    l.max_cpu_temp_c,
                    l.max_cpu_temp_c - TEMPERATURE_HYSTERESIS_C
                ),
            );
        }
    }

    if let Some(hours) = l.allowed_hours
        && !hours.contains(s.local_minute_of_day)
    {
        let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        reason(
            &mut blocking,
            ReasonCode::OutsideHours,
            format!("outside allowed hours ({}–{})", hm(hours.start_minute), hm(hours.end_minute)),
        );
    }

    if l.pause_when_fullscreen
        && let Some(program) = &s.fullscreen
    {
        reason(&mut blocking, ReasonCode::FullScreen, format!("a full-screen window is in front ({program})"));
    }
    if let Some(program) = &s.exclusive_program {
        reason(
            &mut blocking,
            ReasonCode::ExclusiveProgram,
            format!("{program} is running, and you asked to lend nothing while it does"),
        );
    }

    if let Some(why) = &l.policy_unreadable {
        reason(&mut blocking, ReasonCode::PolicyUnreadable, why.clone());
    }

    if !l.require_sandbox.is_empty() {
        let text = match &s.sandbox {
            None => Some("waiting to learn which sandbox layers a worker gets here (require_sandbox)".to_owned()),
            Some(report) => report.refusal(&l.require_sandbox),
        };
        if let Some(text) = text {
            reason(&mut blocking, ReasonCode::SandboxMissing, text);
        }
    }

    if l.pause_on_metered_network && s.metered_network == Some(true) {
        reason(&mut blocking, ReasonCode::MeteredNetwork, "on a metered network".into());
    }
    if let Some(cap) = l.daily_upload_cap_bytes
        && s.uploaded_today_bytes >= cap
    {
        reason(&mut blocking, ReasonCode::UploadCapReached, format!("today's upload cap of {} is used up", mib(cap)));
    }
    if let Some(cap) = l.daily_download_cap_bytes
        && s.downloaded_today_bytes >= cap
    {
        reason(
            &mut blocking,
            ReasonCode::DownloadCapReached,
            format!("today's download cap of {} is used up", mib(cap)),
        );
    }

    if let Some(load) = s.other_cpu_percent {
        let grace_ms = LOAD_GRACE.as_millis() as u64;
        if load > l.max_other_cpu_percent {
            state.quiet_since_ms = None;
            let since = *state.loud_since_ms.get_or_insert(s.at_ms);
            if s.at_ms.saturating_sub(since) >= grace_ms {
                state.paused_for_load = true;
            }
        } else {
            state.loud_since_ms = None;
            if load <= l.max_other_cpu_percent - LOAD_HYSTERESIS_PERCENT {
                let since = *state.quiet_since_ms.get_or_insert(s.at_ms);
                if s.at_ms.saturating_sub(since) >= grace_ms {
                    state.paused_for_load = false;
                }
            } else {
                state.quiet_since_ms = None;
            }
        }
        if state.paused_for_load {
            reason(
                &mut blocking,
                ReasonCode::OtherProgramsBusy,
                format!("other programs are using {load:.0}% of the CPU (limit {:.0}%)", l.max_other_cpu_percent),
            );
        }
    }

    // Other programs' GPU use stops GPU work alone. Unknown (no counter, or
    // our own GPU kernel running, which the counter cannot tell apart):
    // the latch keeps what it last knew.
    if let Some(load) = s.other_gpu_percent {
        state.gpu.update(load, l.max_other_gpu_percent, s.at_ms, GPU_LOAD_GRACE, LOAD_GRACE);
    }
    if l.gpu_enabled && state.gpu.set {
        let load = s.other_gpu_percent.map_or_else(String::new, |p| format!(" ({p:.0} %)"));
        blocking.push(Reason {
            code: ReasonCode::GpuBusy,
            text: format!("GPU busy with another program{load}; limit {:.0} %", l.max_other_gpu_percent),
            scope: Scope::Gpu,
        });
    }

    let stops = |kind: fn(Scope) -> bool| blocking.iter().any(|r: &Reason| kind(r.scope));
    let cpu = !stops(Scope::covers_cpu);
    // With no GPU found, pausing the processor leaves nothing to run: not
    // "using the GPU only".
    let gpu = l.gpu_enabled && s.gpu_found != Some(false) && !stops(Scope::covers_gpu);
    let decision = if cpu || gpu {
        let total = l.cores.max(1);
        let text = if cpu {
            format!("using {total} core{} at {}% duty cycle", if total == 1 { "" } else { "s" }, l.duty_cycle_percent)
        } else {
            format!("using the GPU only, at {}% duty cycle", l.duty_cycle_percent)
        };
        reason(&mut allowing, ReasonCode::Throttled, text);
        // What stops one kind, after what lets the other run.
        allowing.extend(blocking);
        Decision {
            traffic: traffic_allowed(s, l),
            action: Action::Run { cores: total, duty_cycle_percent: l.duty_cycle_percent.clamp(1, 100), gpu, cpu },
            reasons: allowing,
        }
    } else {
        Decision { action: Action::Pause, reasons: blocking, traffic: traffic_allowed(s, l) }
    };
    (decision, state)
}

#[cfg(test)]
mod tests;
