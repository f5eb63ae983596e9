//! The agent's control API: every request its control socket takes and
//! every answer, typed. The agent serves it; the CLI, the tray and the
//! dashboard are its clients and speak nothing else. The dashboard's
//! TypeScript types are generated from these ([`typescript`]) and checked
//! in as `ui/src/lib/control.gen.ts`, which a test keeps fresh.
//!
//! - [`Request`] and its answers ([`Paused`], [`SettingChanged`], …), or a [`Refusal`].
//! - [`AgentStatus`]: one word ([`State`]), the governor's [`Decision`] and
//!   its [`Reason`]s, the sensors, the scheduler, the settings.
//! - [`SettingSpec`]: the settings schema the agent serves.

mod decision;
mod request;
mod settings;
mod status;

pub use decision::{Action, Battery, Decision, ManualPause, Reason, ReasonCode, Snapshot, Traffic};
pub use request::{ErrorCode, LentNow, Paused, PoolEntry, PoolUrl, Refusal, Request, Retried, SettingChanged};
pub use settings::{EffectiveValue, SettingKind, SettingSpec, Source};
pub use status::{
    AgentInfo, AgentStatus, CurrentTask, Files, PoolProblemCode, SchedulerStatus, SensorsStatus, StartProblem, State,
    TaskSummary, WorkersStatus,
};

use ts_rs::TS;

/// The TypeScript of every type above, as one module: what
/// `ui/src/lib/control.gen.ts` holds.
pub fn typescript() -> String {
    use idlemesh_protocol::sandbox::{Layer, Profile, SandboxReport};
    // Every integer the agent sends fits a JavaScript number (ms since
    // the epoch, byte counts, ids), so none is a bigint.
    let cfg = ts_rs::Config::new().with_large_int("number");
    let decls = [
        // Requests and answers.
        Request::decl(&cfg),
        Paused::decl(&cfg),
        SettingChanged::decl(&cfg),
        PoolEntry::decl(&cfg),
        PoolUrl::decl(&cfg),
        LentNow::decl(&cfg),
        Retried::decl(&cfg),
        Refusal::decl(&cfg),
        ErrorCode::decl(&cfg),
        // The status.
        AgentStatus::decl(&cfg),
        State::decl(&cfg),
        PoolProblemCode::decl(&cfg),
        StartProblem::decl(&cfg),
        SensorsStatus::decl(&cfg),
        WorkersStatus::decl(&cfg),
        Files::decl(&cfg),
        AgentInfo::decl(&cfg),
        SchedulerStatus::decl(&cfg),
        CurrentTask::decl(&cfg),
        TaskSummary::decl(&cfg),
        Decision::decl(&cfg),
        Action::decl(&cfg),
        Reason::decl(&cfg),
        ReasonCode::decl(&cfg),
        Traffic::decl(&cfg),
        ManualPause::decl(&cfg),
        Snapshot::decl(&cfg),
        Battery::decl(&cfg),
        SandboxReport::decl(&cfg),
        Profile::decl(&cfg),
        Layer::decl(&cfg),
        // Settings.
        EffectiveValue::decl(&cfg),
        Source::decl(&cfg),
        SettingSpec::decl(&cfg),
        SettingKind::decl(&cfg),
    ];
    let mut out = String::from(
        "// Generated from crates/control (idlemesh-control) by its test `typescript_is_fresh`:\n\
         // do not edit. To regenerate: IDLEMESH_UPDATE_TS=1 cargo test -p idlemesh-control\n\n\
         /** A setting's value: text, a number, a switch or a list of names. */\n\
         export type SettingValue = string | number | boolean | string[];\n\n\
         /** A span of time as serde writes a Rust `Duration`. */\n\
         export type Elapsed = { secs: number; nanos: number };\n",
    );
    for decl in decls {
        out.push('\n');
        out.push_str("export ");
        out.push_str(&decl);
        out.push('\n');
    }
    out
}
