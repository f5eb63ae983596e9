//! Settings as the control API carries them: each key's effective value and
//! where it came from, and the schema the agent serves so the dashboard
//! shows its ranges, defaults and help without a copy of its own.

use serde::{Deserialize, Serialize};
use ts_rs::TS;

/// Where an effective value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Default,
    PolicyDefault,
    User,
    /// Locked by the IT policy: "managed by your organisation".
    Policy,
}

/// One setting's value now (`idlemesh status --json` → `settings.KEY`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
pub struct EffectiveValue {
    /// `null` when not set (e.g. no pool chosen yet).
    #[ts(type = "SettingValue | null")]
    pub value: Option<toml::Value>,
    pub source: Source,
    pub locked: bool,
}

/// What a setting accepts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, TS)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SettingKind {
    Bool,
    Int {
        #[ts(type = "number")]
        min: i64,
        #[ts(type = "number")]
        max: i64,
    },
    /// `step`: the increment an input offers (any value in range is accepted).
    Float {
        min: f64,
        max: f64,
        step: f64,
    },
    /// `"always"` or `"HH:MM-HH:MM"` (may wrap past midnight).
    Hours,
    /// An `http://` or `https://` URL, or absent.
    Url,
    /// Megabytes per day, or `"unlimited"`.
    CapMb,
    /// A list of the worker's OS sandbox layers (`["seccomp", "landlock"]`),
    /// or the same names separated by commas.
    Layers,
    /// A list of program names as the system lists running processes
    /// (`["steam", "obs"]`), or the same separated by commas.
    Programs,
}

/// One setting as the agent describes it (the `settings_schema` request):
/// what it is, what it accepts, its default on this machine, and whether
/// the IT policy locks it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
pub struct SettingSpec {
    pub key: String,
    /// A short name for a form.
    pub label: String,
    /// What it does, in a sentence or two.
    pub help: String,
    pub kind: SettingKind,
    /// The built-in default on this machine; `null`: not set.
    #[ts(type = "SettingValue | null")]
    pub default: Option<toml::Value>,
    /// Locked by the IT policy: no one but the organisation may change it.
    pub locked: bool,
    /// The policy that locks it (a file, or the registry key on Windows).
    pub locked_by: Option<String>,
}
