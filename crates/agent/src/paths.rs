//! Where the agent keeps its files (DESIGN §6).
//!
//! `IDLEMESH_DATA_DIR` overrides the platform's data dir; tests and
//! side-by-side installs use it.

use std::path::PathBuf;

pub const DATA_DIR_ENV: &str = "IDLEMESH_DATA_DIR";

/// The agent's data dir: ledger, compiled-kernel cache, checkpoints.
pub fn data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(DATA_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    directories::ProjectDirs::from("org", "Idlemesh", "idlemesh")
        .map(|d| d.data_dir().to_owned())
        .unwrap_or_else(|| PathBuf::from(".idlemesh"))
}

pub fn ledger_path() -> PathBuf {
    data_dir().join("ledger.sqlite")
}

pub fn kernel_cache_dir() -> PathBuf {
    data_dir().join("compiled")
}

pub const LOG_DIR_ENV: &str = "IDLEMESH_LOG_DIR";

/// Where the daemon and the tray app keep their log files:
/// `$IDLEMESH_LOG_DIR`; else `logs/` in an overridden data dir (so a test
/// or a side-by-side install keeps its logs with its data); else the
/// platform's state dir (`~/.local/state/idlemesh` on Linux), or `logs/` in
/// the local data dir where the platform has no state dir.
pub fn log_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(LOG_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if std::env::var_os(DATA_DIR_ENV).is_some_and(|d| !d.is_empty()) {
        return data_dir().join("logs");
    }
    directories::ProjectDirs::from("org", "Idlemesh", "idlemesh")
        .map(|d| d.state_dir().map(|s| s.to_owned()).unwrap_or_else(|| d.data_local_dir().join("logs")))
        .unwrap_or_else(|| PathBuf::from(".idlemesh/logs"))
}

pub const CONFIG_DIR_ENV: &str = "IDLEMESH_CONFIG_DIR";

/// The user's config dir, where `settings.toml` lives.
pub fn config_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(CONFIG_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    directories::ProjectDirs::from("org", "Idlemesh", "idlemesh")
        .map(|d| d.config_dir().to_owned())
        .unwrap_or_else(|| PathBuf::from(".idlemesh"))
}

pub fn settings_path() -> PathBuf {
    config_dir().join("settings.toml")
}

/// The IT policy: the system's source; `$IDLEMESH_POLICY` only on a
/// machine without one (see [`crate::settings::policy_source`]).
pub fn policy_path() -> PathBuf {
    let wanted = std::env::var_os(crate::settings::POLICY_ENV).filter(|p| !p.is_empty()).map(PathBuf::from);
    let (path, ignored) = crate::settings::policy_source(wanted, crate::settings::system_policy_present());
    if let Some(why) = ignored {
        tracing::warn!("{why}");
    }
    path
}
