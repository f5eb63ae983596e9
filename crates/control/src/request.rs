//! The requests the control socket takes and what each answers. One JSON
//! request per line; the answer is `{"ok": true, "result": …}` or
//! `{"ok": false, "error": {"code", "message"}}` (a [`Refusal`]).

use serde::{Deserialize, Serialize};
use ts_rs::TS;

use crate::decision::{ManualPause, Pauses, Scope};
use crate::settings::EffectiveValue;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Answered with an [`AgentStatus`](crate::AgentStatus).
    Status,
    /// `duration`: "15m", "1h", "tomorrow", "indefinitely" (the default).
    /// `only`: one kind of work (`cpu` or `gpu`); the default pauses all.
    /// Answered with [`Paused`].
    Pause {
        #[serde(default)]
        duration: Option<String>,
        // Not sent for all work: an agent from before `only` refuses fields it does not know.
        #[serde(default, skip_serializing_if = "Scope::is_all")]
        #[ts(as = "Option<Scope>", optional)]
        only: Scope,
    },
    /// `only`: one kind of work; the default resumes all. Answered with [`Paused`].
    Resume {
        #[serde(default, skip_serializing_if = "Scope::is_all")]
        #[ts(as = "Option<Scope>", optional)]
        only: Scope,
    },
    /// Changes one user setting (refused for keys the IT policy locks).
    /// Answered with [`SettingChanged`].
    SettingsSet { key: String, value: String },
    /// Every setting's [`SettingSpec`](crate::SettingSpec), in display order.
    SettingsSchema,
    /// Moves an unreadable settings file aside (kept beside it, renamed
    /// `settings.toml.unreadable-YYYYMMDD-HHMMSS`) so the defaults apply.
    /// Answered with [`SettingsReset`].
    SettingsReset,
    /// The pools this device has enrolled with (and the one it is
    /// joining): a list of [`PoolEntry`].
    Pools,
    /// Work for `url` from now on, enrolling with `token` if the pool needs
    /// one. `temporary`: only until the agent stops (the demo pool), the
    /// settings file keeps its `pool_url`. Answered with [`PoolUrl`].
    PoolJoin {
        url: String,
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        temporary: bool,
    },
    /// Stop working for `url` and forget its pinned key. Answered with [`PoolUrl`].
    PoolLeave { url: String },
    /// Lend this machine now, present or not, for the temporary pool
    /// joined last (the demo's "Start now"); ends when that pool is left
    /// or another is joined, and with the agent. Answered with [`LentNow`].
    LendNow,
    /// Start the demo pool of the app that embeds this agent (a loopback
    /// pool with a fresh Mandelbrot job) and join it for this run only.
    /// Refused by an agent that has none (the headless one). Answered with [`PoolUrl`].
    DemoStart,
    /// The newest `limit` entries (default 1000, at most 10,000), newest
    /// first, of one `kind` or all: a list of
    /// [`LedgerRecord`](crate::LedgerRecord).
    LedgerEntries {
        #[serde(default)]
        kind: Option<String>,
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Totals, per day and per pool, and the disclosures: a
    /// [`LedgerSummary`](crate::LedgerSummary), days in the agent's time zone.
    LedgerSummary,
    /// Recomputes the chain and checks every receipt, as `idlemesh ledger
    /// verify` does: a [`LedgerVerified`].
    LedgerVerify,
    /// The whole ledger as `idlemesh ledger export` writes it
    /// (`format`: "csv" or "json"): a [`LedgerExport`].
    LedgerExport { format: String },
    /// Start the agent again after it failed to start. Answered by the
    /// tray app while its agent is stopped (`restarted: true`); a running
    /// agent has nothing to retry (`restarted: false`). Answered with [`Retried`].
    AgentRetry,
}

impl Request {
    /// Every command's name, for the error that names them.
    pub const COMMANDS: &[&str] = &[
        "status",
        "pause",
        "resume",
        "settings_set",
        "settings_schema",
        "settings_reset",
        "pools",
        "pool_join",
        "pool_leave",
        "lend_now",
        "demo_start",
        "ledger_entries",
        "ledger_summary",
        "ledger_verify",
        "ledger_export",
        "agent_retry",
    ];
}

/// The answer to `pause` and `resume`: the user's pauses now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS)]
pub struct Paused {
    /// The pause of all work (`none` while one kind may run).
    pub manual_pause: ManualPause,
    /// Each kind's pause (an agent from before it: both as `manual_pause`).
    #[serde(default)]
    pub pauses: Pauses,
}

/// The answer to `settings_set`: the key's value now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
pub struct SettingChanged {
    pub key: String,
    pub effective: Option<EffectiveValue>,
}

/// The answer to `settings_reset`: where the old file is kept (`null`: there was none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
pub struct SettingsReset {
    pub kept: Option<std::path::PathBuf>,
}

/// One pool this device knows (the `pools` request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
pub struct PoolEntry {
    pub url: String,
    /// The pinned ed25519 key (hex); `null` while joining.
    pub public_key: Option<String>,
    pub current: bool,
    /// The IT policy sets this pool: it cannot be left.
    pub locked: bool,
    #[ts(type = "number | null")]
    pub device_id: Option<u64>,
    pub organisation: Option<String>,
}

/// The answer to `pool_join`, `pool_leave` and `demo_start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
pub struct PoolUrl {
    pub url: String,
}

/// The answer to `lend_now`: the pool lent to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
pub struct LentNow {
    pub pool: String,
}

/// The answer to `agent_retry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS)]
pub struct Retried {
    pub restarted: bool,
}

/// The answer to `ledger_verify`: the report, whether it holds, and which
/// ledger file it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
pub struct LedgerVerified {
    #[serde(flatten)]
    pub report: crate::VerifyReport,
    pub ok: bool,
    pub ledger: std::path::PathBuf,
}

/// The answer to `ledger_export`: the text to save, and how many entries it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
pub struct LedgerExport {
    pub text: String,
    #[ts(type = "number")]
    pub entries: usize,
}

/// Why a request was refused: a stable code and the agent's own words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// Every code a request may be refused with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The IT policy locks it.
    Locked,
    BadValue,
    UnknownSetting,
    BadDuration,
    BadRequest,
    /// Another user's connection.
    Forbidden,
    /// A file the agent needs cannot be read or written.
    Io,
    Pool,
    Ledger,
    Internal,
    /// Clients only: nothing answers on the socket.
    NotRunning,
    /// Clients only: the socket cannot be used.
    ControlSocket,
    /// A code this build does not know (from a newer agent).
    #[serde(other)]
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command's name, by an exhaustive match: a new request that is
    /// not in `COMMANDS` fails to compile here, or fails the test below.
    fn command(r: &Request) -> &'static str {
        match r {
            Request::Status => "status",
            Request::Pause { .. } => "pause",
            Request::Resume { .. } => "resume",
            Request::SettingsSet { .. } => "settings_set",
            Request::SettingsSchema => "settings_schema",
            Request::SettingsReset => "settings_reset",
            Request::Pools => "pools",
            Request::PoolJoin { .. } => "pool_join",
            Request::PoolLeave { .. } => "pool_leave",
            Request::LendNow => "lend_now",
            Request::DemoStart => "demo_start",
            Request::LedgerEntries { .. } => "ledger_entries",
            Request::LedgerSummary => "ledger_summary",
            Request::LedgerVerify => "ledger_verify",
            Request::LedgerExport { .. } => "ledger_export",
            Request::AgentRetry => "agent_retry",
        }
    }

    #[test]
    fn every_request_is_named_in_commands_and_reads_back() {
        let all = [
            Request::Status,
            Request::Pause { duration: Some("15m".into()), only: Scope::Gpu },
            Request::Resume { only: Scope::All },
            Request::SettingsSet { key: "cpu_cores".into(), value: "2".into() },
            Request::SettingsSchema,
            Request::SettingsReset,
            Request::Pools,
            Request::PoolJoin { url: "https://p".into(), token: None, temporary: false },
            Request::PoolLeave { url: "https://p".into() },
            Request::LendNow,
            Request::DemoStart,
            Request::LedgerEntries { kind: Some("receipt".into()), limit: Some(5) },
            Request::LedgerSummary,
            Request::LedgerVerify,
            Request::LedgerExport { format: "csv".into() },
            Request::AgentRetry,
        ];
        assert_eq!(all.len(), Request::COMMANDS.len());
        for r in all {
            let json = serde_json::to_value(&r).unwrap();
            assert_eq!(json["command"], command(&r));
            assert!(Request::COMMANDS.contains(&command(&r)), "{json}");
            assert_eq!(serde_json::from_value::<Request>(json).unwrap(), r);
        }
        // Unknown commands and fields are refused, not guessed at.
        assert!(serde_json::from_str::<Request>(r#"{"command":"format_disk"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"command":"pause","duration":"1h","extra":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"command":"pause","only":"disk"}"#).is_err());
        // Pausing all work is sent as before `only` existed (an older agent
        // refuses unknown fields), and what older clients send means all work.
        assert_eq!(serde_json::to_string(&Request::Resume { only: Scope::All }).unwrap(), r#"{"command":"resume"}"#);
        assert_eq!(
            serde_json::to_string(&Request::Pause { duration: None, only: Scope::All }).unwrap(),
            r#"{"command":"pause","duration":null}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"command":"resume"}"#).unwrap(),
            Request::Resume { only: Scope::All }
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"command":"pause"}"#).unwrap(),
            Request::Pause { duration: None, only: Scope::All }
        );
    }

    #[test]
    fn a_refusal_code_from_a_newer_agent_reads_as_unknown() {
        let r: Refusal = serde_json::from_str(r#"{"code":"quota_exceeded","message":"m"}"#).unwrap();
        assert_eq!(r.code, ErrorCode::Unknown);
        let r: Refusal = serde_json::from_str(r#"{"code":"locked","message":"m"}"#).unwrap();
        assert_eq!(r.code, ErrorCode::Locked);
    }
}
