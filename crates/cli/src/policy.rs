//! `idlemesh policy check [FILE]`: an administrator's check of an IT policy
//! file before it ships (docs/deploy.md). Exit 0 when every key is good; 2
//! naming each bad key and value, or saying why the file cannot be read.

use std::path::PathBuf;

use clap::Subcommand;
use idlemesh_agent::settings::{self, SettingsError};
use serde_json::json;

use crate::exit::bad_input;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Validate a policy file (default: the system policy) and name every bad key and value.
    Check {
        /// The file: TOML (Linux), or a `.plist` (macOS managed preferences).
        file: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let Action::Check { file, json } = args.action;
    // Windows keeps the system policy in the registry, not in a file.
    #[cfg(windows)]
    let (name, (policy, errors)) = match file {
        Some(path) => check_file(&path)?,
        None => {
            let name = settings::default_policy_path().to_owned();
            let read = settings::check_registry_policy().map_err(unreadable)?;
            (name.clone(), read.ok_or_else(|| bad_input(format!("no IT policy: {name} does not exist")))?)
        }
    };
    #[cfg(not(windows))]
    let (name, (policy, errors)) = check_file(&file.unwrap_or_else(|| PathBuf::from(settings::default_policy_path())))?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "file": name,
                "ok": errors.is_empty(),
                "errors": errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "locked": policy.locked,
                "defaults": policy.defaults,
                "enrollment_token": policy.enrollment_token.is_some(),
            }))?
        );
    } else {
        for e in &errors {
            eprintln!("bad key: {e}");
        }
        let keys = |v: &settings::Values| v.keys().cloned().collect::<Vec<_>>().join(", ");
        println!("{name}: {} good key(s)", policy.locked.len() + policy.defaults.len());
        println!("  locked:   {}", if policy.locked.is_empty() { "none".into() } else { keys(&policy.locked) });
        println!("  defaults: {}", if policy.defaults.is_empty() { "none".into() } else { keys(&policy.defaults) });
        println!("  enrollment token: {}", if policy.enrollment_token.is_some() { "set" } else { "not set" });
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(bad_input(format!("{name}: {} bad key(s); fix them before shipping this policy", errors.len())))
    }
}

/// A policy file's good keys and bad ones; `Err` if it cannot be read at all.
fn check_file(path: &std::path::Path) -> anyhow::Result<(String, (settings::Policy, Vec<SettingsError>))> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| bad_input(format!("IT policy unreadable: {name}: {e}")))?;
    let checked = settings::check_policy_bytes(&name, &bytes).map_err(unreadable)?;
    Ok((name, checked))
}

fn unreadable(e: SettingsError) -> anyhow::Error {
    bad_input(format!("IT policy unreadable: {e}"))
}
