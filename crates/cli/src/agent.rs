//! `idlemesh agent` (the daemon) and its local controls: `status`, `pause`,
//! `resume`, `settings`.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use idlemesh_agent::control::{self, ControlError, ErrorCode, Request};
use idlemesh_agent::{Agent, AgentConfig, paths};
use idlemesh_control::{AgentStatus, ManualPause, Paused, Scope, SettingChanged, Source};
use idlemesh_runtime::WorkerCommand;
use serde::de::DeserializeOwned;

use crate::exit::{WorkFailed, bad_input};

#[derive(clap::Args)]
pub struct AgentArgs {
    /// The user settings file (default: settings.toml in the config dir).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The pool to work for, instead of `pool_url` from the settings.
    #[arg(long)]
    pool: Option<String>,
}

pub fn agent(args: AgentArgs) -> anyhow::Result<()> {
    if let Some(url) = &args.pool
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return Err(bad_input(format!("--pool {url:?}: expected a URL starting with http:// or https://")));
    }
    let data_dir = paths::data_dir();
    let worker = WorkerCommand::current_exe(Some(&paths::kernel_cache_dir()))?;
    let config = AgentConfig {
        pool_override: args.pool.map(|u| u.trim_end_matches('/').to_string()),
        settings_path: args.config.unwrap_or_else(paths::settings_path),
        ..AgentConfig::this_machine(data_dir, worker)
    };
    rustls::crypto::ring::default_provider().install_default().ok();
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(async {
        let agent = Agent::start(config).await?;
        agent.run(shutdown_asked()).await;
        Ok::<_, idlemesh_agent::AgentError>(())
    });
    // A task still running in a worker must not hold up the exit: its
    // checkpoint and lease are on disk, and the worker dies with us
    // (PR_SET_PDEATHSIG). Waiting for it took minutes with a long tile.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    result?;
    Ok(())
}

/// One request to the running agent, its answer typed; a refusal of what
/// the user typed is bad input (exit 2).
fn call<T: DeserializeOwned>(request: Request) -> anyhow::Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let path = control::socket_path();
    rt.block_on(control::ask(&path, &request)).map_err(|e| match e {
        ControlError::Refused {
            code:
                ErrorCode::Locked
                | ErrorCode::BadValue
                | ErrorCode::UnknownSetting
                | ErrorCode::BadDuration
                | ErrorCode::BadRequest,
            ..
        } => bad_input(e.to_string()),
        e => anyhow::Error::new(e),
    })
}

#[derive(clap::Args)]
pub struct StatusArgs {
    #[arg(long)]
    json: bool,
}

pub fn status(args: StatusArgs) -> anyhow::Result<()> {
    let s: AgentStatus = call(Request::Status)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    let state = serde_json::to_value(s.state)?;
    println!("Idlemesh agent: {}", state.as_str().unwrap_or("unknown").replace('_', " "));
    for r in &s.reasons {
        println!("  - {}", r.text);
    }
    match &s.scheduler {
        None => println!("Pool: not connected"),
        Some(sch) => {
            let sum = &sch.summary;
            let device = sch.device_id.map_or_else(|| "not enrolled yet".to_owned(), |d| d.to_string());
            println!(
                "Pool: {} (device {device}): {} tasks done, {} credits, {} results waiting to upload",
                sch.pool, sum.tasks_finished, sum.credits, sum.results_pending
            );
            if let Some(t) = &sch.current_task {
                println!("Now: job {} task {}", t.job_id, t.task_id);
            }
            if let Some(e) = &sch.last_pool_error {
                println!("Last pool error: {e}");
            }
        }
    }
    if let Some(words) = &s.sandbox_in_words {
        println!("Sandbox: {words}");
        for (layer, why) in s.sandbox.iter().flat_map(|s| &s.missing) {
            println!("  - {layer} is not in force: {why}");
        }
    }
    for e in &s.settings_errors {
        println!("Settings problem (last good values in force): {e}");
    }
    Ok(())
}

/// `--gpu` or `--cpu`: one kind of work; neither: all of it.
#[derive(clap::Args)]
struct Only {
    /// Only GPU work (processor work goes on).
    #[arg(long, conflicts_with = "cpu")]
    gpu: bool,
    /// Only processor work (GPU work goes on).
    #[arg(long)]
    cpu: bool,
}

impl Only {
    fn scope(&self) -> Scope {
        match (self.gpu, self.cpu) {
            (true, _) => Scope::Gpu,
            (_, true) => Scope::Cpu,
            _ => Scope::All,
        }
    }
}

/// "Paused", "GPU work paused", "Processor work paused".
fn what(scope: Scope) -> &'static str {
    match scope {
        Scope::All => "Paused",
        Scope::Gpu => "GPU work paused",
        Scope::Cpu => "Processor work paused",
    }
}

#[derive(clap::Args)]
pub struct PauseArgs {
    /// How long: 15m, 1h, tomorrow, indefinitely (default: until `idlemesh resume`).
    duration: Option<String>,
    #[command(flatten)]
    only: Only,
    #[arg(long)]
    json: bool,
}

pub fn pause(args: PauseArgs) -> anyhow::Result<()> {
    // The agent reads the length (a typo comes back refused: exit 2).
    let only = args.only.scope();
    let r: Paused = call(Request::Pause { duration: args.duration, only })?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    let pause = match only {
        Scope::Gpu => r.pauses.gpu,
        _ => r.pauses.cpu,
    };
    match pause {
        ManualPause::Until { until_ms } => {
            let ms = i64::try_from(until_ms).context("pause end")?;
            let until =
                jiff::Timestamp::from_millisecond(ms).context("pause end")?.to_zoned(jiff::tz::TimeZone::system());
            println!("{} until {}", what(only), until.strftime("%Y-%m-%d %H:%M"));
        }
        ManualPause::UntilResumed | ManualPause::None => {
            println!("{} until you resume (idlemesh resume{})", what(only), resume_flag(only))
        }
    }
    Ok(())
}

fn resume_flag(scope: Scope) -> &'static str {
    match scope {
        Scope::All => "",
        Scope::Gpu => " --gpu",
        Scope::Cpu => " --cpu",
    }
}

#[derive(clap::Args)]
pub struct ResumeArgs {
    #[command(flatten)]
    only: Only,
    #[arg(long)]
    json: bool,
}

pub fn resume(args: ResumeArgs) -> anyhow::Result<()> {
    let only = args.only.scope();
    let r: Paused = call(Request::Resume { only })?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        let which = match only {
            Scope::All => "work",
            Scope::Gpu => "GPU work",
            Scope::Cpu => "processor work",
        };
        println!("Resumed: {which} continues whenever your limits allow");
        let still = match only {
            Scope::Gpu if r.pauses.cpu != ManualPause::None => Some("Processor work is still paused"),
            Scope::Cpu if r.pauses.gpu != ManualPause::None => Some("GPU work is still paused"),
            _ => None,
        };
        if let Some(still) = still {
            println!("{still} (idlemesh resume)");
        }
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct SettingsArgs {
    #[command(subcommand)]
    action: SettingsAction,
}

#[derive(Subcommand)]
enum SettingsAction {
    /// Every effective setting, its value and where it comes from.
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Change one setting (refused for settings your organisation locks).
    Set { key: String, value: String },
}

pub fn settings(args: SettingsArgs) -> anyhow::Result<()> {
    match args.action {
        SettingsAction::Set { key, value } => {
            let r: SettingChanged = call(Request::SettingsSet { key: key.clone(), value })?;
            println!("{key} = {}", shown(r.effective.and_then(|e| e.value).as_ref()));
            Ok(())
        }
        SettingsAction::Show { json } => {
            let s: AgentStatus = call(Request::Status)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s.settings)?);
                return Ok(());
            }
            for (key, v) in &s.settings {
                let source = match v.source {
                    Source::Policy => "managed by your organisation",
                    Source::PolicyDefault => "organisation default",
                    Source::User => "yours",
                    Source::Default => "default",
                };
                println!("{key:26} {:24} ({source})", shown(v.value.as_ref()));
            }
            for e in &s.policy_errors {
                eprintln!("IT policy problem: {e}");
            }
            if !s.settings_errors.is_empty() {
                return Err(WorkFailed.into());
            }
            Ok(())
        }
    }
}

/// A setting's value as JSON writes it (`"always"`, `4`, `true`; `null`: not set).
fn shown(value: Option<&impl serde::Serialize>) -> String {
    serde_json::to_string(&value).unwrap_or_default()
}

/// Resolves when the agent is asked to stop: Ctrl-C, or SIGTERM (what
/// systemd and `kill` send) on Unix; on Windows, Ctrl-C or Ctrl-Break and
/// the console closing (what a scheduled task's end sends).
async fn shutdown_asked() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(windows)]
    {
        use tokio::signal::windows::{ctrl_break, ctrl_close};
        let (mut brk, mut close) = (ctrl_break().expect("Ctrl-Break handler"), ctrl_close().expect("close handler"));
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = brk.recv() => {}
            _ = close.recv() => {}
        }
    }
    #[cfg(not(any(unix, windows)))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
