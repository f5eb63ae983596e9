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
    let path = file.unwrap_or_else(|| PathBuf::from(settings::default_policy_path()));
    let name = path.display().to_string();
    let bytes = std::fs::read(&path).map_err(|e| bad_input(format!("IT policy unreadable: {name}: {e}")))?;
    let (policy, errors) = settings::check_policy_bytes(&name, &bytes)
        .map_err(|e: SettingsError| bad_input(format!("IT policy unreadable: {e}")))?;
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
