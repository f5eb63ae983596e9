//! `idlemesh ledger show|export|verify`.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Subcommand, ValueEnum};
use idlemesh_agent::{Ledger, paths};

use crate::exit::{WorkFailed, bad_input};

#[derive(clap::Args)]
pub struct Args {
    /// The ledger file (default: the agent's ledger in its data dir).
    #[arg(long, global = true)]
    ledger: Option<PathBuf>,
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// List the entries.
    Show {
        /// Only entries of this kind (task_started, task_finished, receipt, disclosure, ...).
        #[arg(long)]
        kind: Option<String>,
        /// Totals, per day, per pool and the disclosures, instead of the entries.
        #[arg(long, conflicts_with = "kind")]
        summary: bool,
        #[arg(long)]
        json: bool,
    },
    /// Write every entry as CSV or JSON to stdout (or --output).
    Export {
        #[arg(long, value_enum)]
        format: Format,
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Recompute the hash chain and check every receipt signature.
    Verify {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Csv,
    Json,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let path = args.ledger.unwrap_or_else(paths::ledger_path);
    if !path.is_file() {
        return Err(bad_input(format!("no ledger at {}", path.display())));
    }
    let ledger = Ledger::open_existing(&path).map_err(|e| bad_input(e.to_string()))?;
    match args.action {
        Action::Show { summary: true, json, .. } => {
            let s = idlemesh_agent::ledger::summarise(&ledger.entries(None)?, &jiff::tz::TimeZone::system());
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
                return Ok(());
            }
            let line = |label: &str, t: &idlemesh_agent::ledger::Totals| {
                let earned: String =
                    t.earnings.iter().map(|(currency, v)| format!("  earned {v:.4} {currency}")).collect();
                println!(
                    "{label:24} {:>6} tasks ({} failed)  {:>9.1} CPU-s  {:>9.1} J  {:>8.2} credits{earned}  {} in / {} out  {} pauses",
                    t.tasks_finished,
                    t.tasks_failed,
                    t.cpu_s,
                    t.energy_j,
                    t.credits,
                    bytes(t.bytes_in),
                    bytes(t.bytes_out),
                    t.pauses
                )
            };
            line("total", &s.totals);
            for (day, t) in &s.per_day {
                line(day, t);
            }
            for (pool, t) in &s.per_pool {
                line(pool, t);
            }
            for d in &s.disclosures {
                println!("disclosed to {} at {}: {}", d.pool, format_time(d.at_ms), serde_json::to_string(&d.fields)?);
            }
            Ok(())
        }
        Action::Show { kind, json, .. } => {
            let entries = ledger.entries(kind.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                for e in &entries {
                    println!("{:>6}  {}  {:<14} {}", e.seq, format_time(e.at_ms), e.kind, e.body);
                }
                eprintln!("{} entries in {}", entries.len(), path.display());
            }
            Ok(())
        }
        Action::Export { format, output } => {
            let entries = ledger.entries(None)?;
            let text = match format {
                Format::Json => serde_json::to_string_pretty(&entries)? + "\n",
                Format::Csv => idlemesh_agent::ledger::to_csv(&entries),
            };
            match output {
                Some(file) => std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?,
                None => std::io::stdout().write_all(text.as_bytes())?,
            }
            Ok(())
        }
        Action::Verify { json } => {
            // Receipts are checked against the key the organisation pinned, if
            // it did; a policy that cannot be read cannot vouch for any key.
            let policy_key = idlemesh_agent::settings::read_policy(idlemesh_agent::paths::policy_path())
                .map_err(|e| anyhow::anyhow!("cannot check receipts against the IT policy's pool key: {e}"))?
                .pool_public_key;
            let report = ledger.verify(policy_key.as_ref())?;
            if json {
                let mut value = serde_json::to_value(&report)?;
                value["ledger"] = path.display().to_string().into();
                value["ok"] = report.ok().into();
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else if let Some(bad) = &report.first_bad {
                println!("ledger {}: entry {} does not verify: {}", path.display(), bad.seq, bad.reason);
            } else {
                println!(
                    "ledger {}: {} entries, {} receipt signatures checked, chain intact (head {})",
                    path.display(),
                    report.entries,
                    report.receipts_checked,
                    &report.head[..16]
                );
            }
            if report.ok() { Ok(()) } else { Err(WorkFailed.into()) }
        }
    }
}

fn bytes(n: u64) -> String {
    match n {
        0..1_000_000 => format!("{:.1} kB", n as f64 / 1e3),
        _ => format!("{:.1} MB", n as f64 / 1e6),
    }
}

fn format_time(ms: u64) -> String {
    idlemesh_agent::ledger::format_time(ms)
}
