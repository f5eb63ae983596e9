//! The agent's control API: every request its control socket takes and
//! every answer, typed. The agent serves it; the CLI, the tray and the
//! dashboard are its clients and speak nothing else. The dashboard's
//! TypeScript types are generated from these ([`typescript`]) and checked
//! in as `ui/src/lib/control.gen.ts`, which a test keeps fresh.
//!
//! **Owns** the shape of every control request and answer (and the
//! TypeScript generated from it). **Must not** do I/O or decide anything:
//! the socket is the agent's, the decisions the governor's.
//!
//! - [`Request`] and its answers ([`Paused`], [`SettingChanged`], …), or a [`Refusal`].
//! - [`AgentStatus`]: one word ([`State`]), the governor's [`Decision`] and
//!   its [`Reason`]s, the sensors, the scheduler, the settings.
//! - [`SettingSpec`]: the settings schema the agent serves.
//! - [`LedgerEntry`]: each ledger entry's kind and typed body, and the
//!   ledger's read models ([`LedgerSummary`], [`VerifyReport`]).

mod decision;
mod ledger;
mod request;
mod settings;
mod status;

pub use decision::{Action, Battery, Decision, ManualPause, Pauses, Reason, ReasonCode, Scope, Snapshot, Traffic};
pub use ledger::{
    BadEntry, Checkpoint, Disclosed, Disclosure, LedgerEntry, LedgerRecord, LedgerSummary, PauseBody, PoolLeft,
    ReceiptBody, ResultRefused, TaskEnded, TaskGivenBack, TaskRefused, TaskStarted, Totals, TrafficBody, Unreadable,
    VerifyReport,
};
pub use request::{
    ErrorCode, LedgerExport, LedgerVerified, LentNow, Paused, PoolEntry, PoolUrl, Refusal, Request, Retried,
    SettingChanged, SettingsReset,
};
pub use settings::{EffectiveValue, SettingKind, SettingSpec, Source};
pub use status::{
    AgentInfo, AgentStatus, CurrentTask, Files, PoolProblemCode, SchedulerStatus, SensorsStatus, StartProblem, State,
    TaskSummary, WorkersStatus,
};

use ts_rs::TS;

/// Set to have the tests that own a checked-in generated file (the
/// TypeScript types, the dashboard's test schema) write it anew.
pub const UPDATE_GENERATED_ENV: &str = "IDLEMESH_UPDATE_TS";

/// For those tests: with [`UPDATE_GENERATED_ENV`] set, writes `now` to
/// `path` (then it is fresh); otherwise, whether `path` holds exactly `now`.
pub fn generated_file_is_fresh(path: &std::path::Path, now: &str) -> std::io::Result<bool> {
    if std::env::var_os(UPDATE_GENERATED_ENV).is_some() {
        std::fs::write(path, now)?;
        return Ok(true);
    }
    Ok(std::fs::read_to_string(path).is_ok_and(|checked_in| checked_in == now))
}

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
        SettingsReset::decl(&cfg),
        PoolEntry::decl(&cfg),
        PoolUrl::decl(&cfg),
        LentNow::decl(&cfg),
        Retried::decl(&cfg),
        LedgerVerified::decl(&cfg),
        LedgerExport::decl(&cfg),
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
        Pauses::decl(&cfg),
        Scope::decl(&cfg),
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
        // The ledger.
        LedgerRecord::decl(&cfg),
        LedgerEntry::decl(&cfg),
        Disclosed::decl(&cfg),
        TaskStarted::decl(&cfg),
        Checkpoint::decl(&cfg),
        TaskEnded::decl(&cfg),
        TaskRefused::decl(&cfg),
        TaskGivenBack::decl(&cfg),
        ResultRefused::decl(&cfg),
        ReceiptBody::decl(&cfg),
        TrafficBody::decl(&cfg),
        PauseBody::decl(&cfg),
        PoolLeft::decl(&cfg),
        Unreadable::decl(&cfg),
        LedgerSummary::decl(&cfg),
        Totals::decl(&cfg),
        Disclosure::decl(&cfg),
        VerifyReport::decl(&cfg),
        BadEntry::decl(&cfg),
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
