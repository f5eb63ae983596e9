//! The headless agent (`idlemesh agent`, and what the tray app embeds):
//! settings and policy, the keyring's device key, the watcher, the control
//! socket and the scheduler, tied together and kept running.
//!
//! Nothing here gives up on the pool: no pool configured means waiting for
//! one; an unreachable pool means trying again with backoff; a changed
//! `pool_url` means finishing the current task and switching.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idlemesh_protocol::api::Capabilities;
use idlemesh_runtime::WorkerCommand;
use serde_json::Value;
use tokio::sync::watch;

use idlemesh_control::{
    AgentInfo, AgentStatus, ErrorCode, Files, LedgerExport, LedgerRecord, LedgerVerified, LentNow, Paused, PoolEntry,
    PoolProblemCode, PoolUrl, Refusal, Retried, SensorsStatus, SettingChanged, StartProblem, State, VerifyReport,
    WorkersStatus,
};

use crate::agent::{Agent, AgentConfig, SchedulerStatus as SlotStatus};
use crate::control::{self, Handler, Request};
use crate::governor::ManualPause;
use crate::sensors::Sensors;
use crate::settings::{Machine, Settings};
use crate::watcher::{Watcher, WatcherConfig};

pub struct DaemonConfig {
    /// `--pool`: overrides the settings (not a locked policy value).
    pub pool_override: Option<String>,
    pub settings_path: PathBuf,
    pub policy_path: PathBuf,
    pub data_dir: PathBuf,
    pub socket_path: PathBuf,
    pub worker: WorkerCommand,
    pub sensors: Box<dyn FnOnce() -> Sensors + Send>,
    /// The demo pool `demo_start` starts (the tray app's); none in the
    /// headless agent.
    pub demo: Option<Arc<dyn DemoHost>>,
}

impl DaemonConfig {
    /// The agent of this machine as installed: its settings, policy and
    /// control socket where `paths` and `control` put them, the machine's
    /// own sensors, no `--pool` and no demo. The CLI's `agent` and the tray
    /// app both start from it.
    pub fn this_machine(data_dir: PathBuf, worker: WorkerCommand) -> Self {
        Self {
            pool_override: None,
            settings_path: crate::paths::settings_path(),
            policy_path: crate::paths::policy_path(),
            data_dir,
            socket_path: control::socket_path(),
            worker,
            sensors: Box::new(Sensors::this_machine),
            demo: None,
        }
    }
}

/// Starts a demo pool on a loopback port with a fresh job to watch, and
/// says its URL. Called on a blocking thread: it may wait for its server.
pub trait DemoHost: Send + Sync + 'static {
    fn start(&self) -> Result<String, String>;
}

impl std::fmt::Debug for DaemonConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonConfig")
            .field("settings_path", &self.settings_path)
            .field("data_dir", &self.data_dir)
            .field("socket_path", &self.socket_path)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretsError),
    #[error("cannot write in the data dir {}: {source}", path.display())]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start: {0}")]
    Start(String),
}

impl DaemonError {
    /// What kept the agent from starting, as a stable code: the tray app
    /// explains each in words and offers the fix it can (docs/app-ipc.md).
    pub fn code(&self) -> StartProblem {
        use crate::secrets::SecretsError;
        match self {
            Self::Secrets(SecretsError::NoKeyring(_)) => StartProblem::NoKeyring,
            Self::Secrets(SecretsError::Keyring(_)) => StartProblem::KeyringRefused,
            Self::Secrets(SecretsError::Damaged(..)) => StartProblem::KeyringDamaged,
            Self::Secrets(SecretsError::UnknownBackend(_) | SecretsError::Credential(_)) => {
                StartProblem::KeyringSetting
            }
            Self::Control(control::ControlError::AlreadyRunning { .. }) => StartProblem::AlreadyRunning,
            Self::Control(control::ControlError::NotPrivate { .. }) => StartProblem::SocketNotPrivate,
            Self::Control(_) => StartProblem::ControlSocket,
            Self::DataDir { .. } => StartProblem::DataDir,
            Self::Start(_) => StartProblem::Other,
        }
    }
}

/// Why there is no scheduler: a stable code (for the tray app's words and
/// buttons) and the sentence the CLI shows.
#[derive(Debug, Clone, PartialEq)]
struct PoolProblem {
    code: PoolProblemCode,
    message: String,
    /// When the next attempt to join is due, while one is waiting.
    retry_at_ms: Option<u64>,
    /// The pool's own words, when it refused.
    pool_said: Option<String>,
}

impl PoolProblem {
    fn new(code: PoolProblemCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), retry_at_ms: None, pool_said: None }
    }
}

const NO_POOL: &str =
    "no pool configured: set one with `idlemesh settings set pool_url URL` or `idlemesh agent --pool URL`";

/// Everything the control socket can see and steer.
struct Shared {
    watcher: Watcher,
    settings: Arc<Mutex<Settings>>,
    /// One status per slot (one slot per allowed core), empty while not connected.
    scheduler: Mutex<Vec<Arc<Mutex<SlotStatus>>>>,
    /// Why there is no scheduler yet (no pool set, pool unreachable).
    pool_problem: Mutex<Option<PoolProblem>>,
    /// `--pool`, or a temporary join (the demo pool): used instead of the
    /// settings' `pool_url` unless the policy locks that.
    pool_override: Mutex<Option<String>>,
    /// The pool joined with `temporary` (the demo pool), while it is the override.
    temporary_pool: Mutex<Option<String>>,
    /// Enrollment tokens given with `pool_join`, by pool URL: kept in memory
    /// only (a secret), needed only until the device has enrolled.
    join_tokens: Mutex<BTreeMap<String, String>>,
    data_dir: PathBuf,
    info: AgentInfo,
    demo: Option<Arc<dyn DemoHost>>,
}

/// The embedding app's way in: the same requests as the control socket.
#[derive(Clone)]
pub struct Control(Arc<Shared>);

impl Control {
    pub fn request(&self, request: Request) -> Result<Value, Refusal> {
        self.0.handle(request)
    }

    /// The agent's status, typed.
    pub fn status(&self) -> AgentStatus {
        self.0.status()
    }
}

fn settings_refusal(e: crate::settings::SettingsError) -> Refusal {
    let code = match e {
        crate::settings::SettingsError::Locked { .. } => ErrorCode::Locked,
        crate::settings::SettingsError::UnknownKey { .. } => ErrorCode::UnknownSetting,
        crate::settings::SettingsError::BadValue { .. } => ErrorCode::BadValue,
        // The settings file cannot be read or written.
        _ => ErrorCode::Io,
    };
    Refusal::new(code, e.to_string())
}

/// An answer of the control API, as the socket sends it.
fn answer(value: impl serde::Serialize) -> Result<Value, Refusal> {
    serde_json::to_value(value).map_err(|e| Refusal::new(ErrorCode::Internal, e.to_string()))
}

fn io_refusal(e: impl std::fmt::Display) -> Refusal {
    Refusal::new(ErrorCode::Io, e.to_string())
}

impl Handler for Shared {
    fn handle(&self, request: Request) -> Result<Value, Refusal> {
        match request {
            Request::Status => answer(self.status()),
            Request::Pause { duration, only } => {
                let pause = control::parse_pause(duration.as_deref(), &jiff::Zoned::now())
                    .map_err(|e| Refusal::new(ErrorCode::BadDuration, e))?;
                self.watcher.set_pause(only, pause);
                answer(self.paused())
            }
            Request::Resume { only } => {
                self.watcher.set_pause(only, ManualPause::None);
                answer(self.paused())
            }
            Request::SettingsSet { key, value } => {
                let mut settings = self.settings.lock().expect("settings lock");
                settings.set(&key, &crate::settings::parse_cli_value(&value)).map_err(settings_refusal)?;
                let effective = settings.effective().values.get(key.as_str()).cloned();
                drop(settings);
                self.watcher.settings_changed();
                answer(SettingChanged { key, effective })
            }
            Request::SettingsSchema => answer(self.settings.lock().expect("settings lock").schema()),
            Request::SettingsReset => {
                let path = self.settings.lock().expect("settings lock").user_path().to_owned();
                let kept =
                    path.with_extension(format!("toml.unreadable-{}", jiff::Zoned::now().strftime("%Y%m%d-%H%M%S")));
                let kept = match std::fs::rename(&path, &kept) {
                    Ok(()) => Some(kept),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => return Err(io_refusal(format!("cannot move {} aside: {e}", path.display()))),
                };
                self.settings.lock().expect("settings lock").refresh();
                self.watcher.settings_changed();
                answer(idlemesh_control::SettingsReset { kept })
            }
            Request::Pools => answer(self.pools()?),
            Request::PoolJoin { url, token, temporary } => answer(self.join(&url, token, temporary)?),
            Request::PoolLeave { url } => answer(self.leave(&url)?),
            Request::LendNow => {
                let temporary = self.temporary_pool.lock().expect("lock").clone();
                match temporary.filter(|url| self.pool_url().as_deref() == Some(url.as_str())) {
                    Some(url) => {
                        self.watcher.set_lend_now(true);
                        tracing::info!(pool = %url, "lending this machine now, for the demo pool");
                        answer(LentNow { pool: url })
                    }
                    None => Err(Refusal::new(
                        ErrorCode::BadRequest,
                        "\"start now\" is only for the demo pool, and it is not the current pool",
                    )),
                }
            }
            Request::DemoStart => {
                let Some(demo) = &self.demo else {
                    return Err(Refusal::new(
                        ErrorCode::BadRequest,
                        "this agent has no demo pool (the tray app has one; `idlemesh demo` runs one here)",
                    ));
                };
                let url = demo
                    .start()
                    .map_err(|e| Refusal::new(ErrorCode::Pool, format!("cannot start the demo pool: {e}")))?;
                answer(self.join(&url, None, true)?)
            }
            Request::LedgerEntries { kind, limit } => answer(self.ledger_entries(kind.as_deref(), limit)?),
            Request::LedgerSummary => {
                let entries = self.ledger_read(|l| l.entries(None))?;
                answer(crate::ledger_summary::summarise(&entries, &jiff::tz::TimeZone::system()))
            }
            Request::LedgerVerify => answer(self.ledger_verify()?),
            Request::LedgerExport { format } => answer(self.ledger_export(&format)?),
            // Running: nothing to start again.
            Request::AgentRetry => answer(Retried { restarted: false }),
        }
    }
}

impl Shared {
    /// The pool to work for now: a locked policy value wins, then an
    /// override (`--pool`, the demo pool), then the user's setting.
    fn pool_url(&self) -> Option<String> {
        let s = self.settings.lock().expect("settings lock");
        let locked = s.effective().values.get("pool_url").is_some_and(|v| v.locked);
        if locked {
            return s.effective().pool_url();
        }
        self.pool_override.lock().expect("lock").clone().or_else(|| s.effective().pool_url())
    }

    /// A new temporary pool (`Some`) or none: a "Start now" given for the
    /// previous one ends either way.
    fn end_temporary(&self, new: Option<&str>) {
        let mut t = self.temporary_pool.lock().expect("lock");
        if t.is_some() {
            self.watcher.set_lend_now(false);
        }
        *t = new.map(str::to_owned);
    }

    fn pool_url_locked(&self) -> bool {
        self.settings.lock().expect("settings lock").effective().values.get("pool_url").is_some_and(|v| v.locked)
    }

    fn pools(&self) -> Result<Vec<PoolEntry>, Refusal> {
        let pins = crate::pins::all(&self.data_dir).map_err(io_refusal)?;
        let current = self.pool_url();
        let locked = self.pool_url_locked();
        let slot = self.scheduler.lock().expect("scheduler lock").first().map(|s| s.lock().expect("status").clone());
        let mut urls: Vec<&String> = pins.keys().collect();
        if let Some(c) = current.as_ref().filter(|c| !pins.contains_key(*c)) {
            urls.insert(0, c);
        }
        Ok(urls
            .into_iter()
            .map(|url| {
                let is_current = current.as_deref() == Some(url.as_str());
                let live = slot.as_ref().filter(|s| is_current && s.pool == *url);
                PoolEntry {
                    url: url.clone(),
                    public_key: pins.get(url).map(ToString::to_string),
                    current: is_current,
                    locked: is_current && locked,
                    device_id: live.and_then(|s| s.device_id),
                    organisation: live.and_then(|s| s.managed_by.clone()),
                }
            })
            .collect())
    }

    fn join(&self, url: &str, token: Option<String>, temporary: bool) -> Result<PoolUrl, Refusal> {
        let spec = crate::settings::schema::spec("pool_url").expect("pool_url is a setting");
        let url = match crate::settings::schema::check(spec.kind, &toml::Value::String(url.trim().to_string())) {
            Ok(toml::Value::String(u)) => u,
            Ok(_) => unreachable!("a URL checks to a string"),
            Err(e) => return Err(Refusal::new(ErrorCode::BadValue, format!("pool URL {url:?}: {e}"))),
        };
        if temporary {
            if self.pool_url_locked() {
                return Err(Refusal::new(ErrorCode::Locked, "the pool is managed by your organisation"));
            }
            *self.pool_override.lock().expect("lock") = Some(url.clone());
            self.end_temporary(Some(&url));
        } else {
            self.settings
                .lock()
                .expect("settings lock")
                .set("pool_url", &toml::Value::String(url.clone()))
                .map_err(settings_refusal)?;
            *self.pool_override.lock().expect("lock") = None;
            self.end_temporary(None);
            self.watcher.settings_changed();
        }
        // Kept only once the join is accepted; never logged.
        if let Some(token) = token.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()) {
            self.join_tokens.lock().expect("lock").insert(url.clone(), token);
        }
        tracing::info!(pool = %url, temporary, "joining a pool");
        Ok(PoolUrl { url })
    }

    fn leave(&self, url: &str) -> Result<PoolUrl, Refusal> {
        let url = url.trim().trim_end_matches('/');
        {
            let mut settings = self.settings.lock().expect("settings lock");
            if settings.effective().pool_url().as_deref() == Some(url) {
                settings.unset("pool_url").map_err(settings_refusal)?;
            }
        }
        {
            let mut o = self.pool_override.lock().expect("lock");
            if o.as_deref() == Some(url) {
                *o = None;
                self.end_temporary(None);
            }
        }
        // A pool the policy names (as a default) stays the pool: keep trusting its key.
        if self.pool_url().as_deref() == Some(url) {
            return Err(Refusal::new(
                ErrorCode::Locked,
                format!("{url} is the pool your organisation set for this computer; choose another pool to leave it"),
            ));
        }
        self.join_tokens.lock().expect("lock").remove(url);
        // Written before the pin goes, so `ledger verify` follows the same
        // trust as the agent: a receipt after this must come from a new enrollment.
        if let Some(key) = crate::pins::pinned(&self.data_dir, url).map_err(io_refusal)? {
            crate::ledger::Ledger::open(&self.data_dir.join("ledger.sqlite"))
                .and_then(|mut l| {
                    l.record(&idlemesh_control::LedgerEntry::PoolLeft(idlemesh_control::PoolLeft {
                        pool: url.to_owned(),
                        pool_public_key: key,
                    }))
                })
                .map_err(io_refusal)?;
        }
        crate::pins::unpin(&self.data_dir, url).map_err(io_refusal)?;
        self.watcher.settings_changed();
        tracing::info!(pool = %url, "left a pool");
        Ok(PoolUrl { url: url.to_owned() })
    }
}

/// The ledger queries: each opens the ledger for its answer alone (the
/// scheduler writes through its own connection; WAL lets both be).
impl Shared {
    fn ledger_path(&self) -> &Path {
        &self.info.ledger
    }

    /// Reads the ledger; one not yet written reads as empty.
    fn ledger_read<T: Default>(
        &self,
        f: impl FnOnce(&crate::Ledger) -> Result<T, crate::LedgerError>,
    ) -> Result<T, Refusal> {
        let path = self.ledger_path();
        if !path.exists() {
            return Ok(T::default());
        }
        let ledger = crate::Ledger::open_existing(path).map_err(|e| Refusal::new(ErrorCode::Ledger, e.to_string()))?;
        f(&ledger).map_err(|e| Refusal::new(ErrorCode::Ledger, e.to_string()))
    }

    fn ledger_entries(&self, kind: Option<&str>, limit: Option<usize>) -> Result<Vec<LedgerRecord>, Refusal> {
        let limit = limit.unwrap_or(1000).min(10_000);
        let entries = self.ledger_read(|l| l.entries(kind))?;
        Ok(entries.iter().rev().take(limit).map(crate::ledger::Entry::record).collect())
    }

    fn ledger_verify(&self) -> Result<LedgerVerified, Refusal> {
        let (unreadable, policy_key) = {
            let s = self.settings.lock().expect("settings lock");
            (s.policy_unreadable(), s.effective().pool_public_key)
        };
        if let Some(why) = unreadable {
            return Err(Refusal::new(
                ErrorCode::Io,
                format!("cannot check receipts against the IT policy's pool key: {why}"),
            ));
        }
        let report = self.ledger_read(|l| l.verify(policy_key.as_ref()).map(Some))?.unwrap_or(VerifyReport {
            entries: 0,
            receipts_checked: 0,
            head: String::new(),
            first_bad: None,
        });
        Ok(LedgerVerified { ok: report.ok(), report, ledger: self.ledger_path().to_owned() })
    }

    fn ledger_export(&self, format: &str) -> Result<LedgerExport, Refusal> {
        let csv = match format {
            "csv" => true,
            "json" => false,
            other => {
                return Err(Refusal::new(
                    ErrorCode::BadValue,
                    format!("export format {other:?}: expected csv or json"),
                ));
            }
        };
        let entries = self.ledger_read(|l| l.entries(None))?;
        let text = if csv {
            crate::ledger::to_csv(&entries)
        } else {
            serde_json::to_string_pretty(&entries).map_err(|e| Refusal::new(ErrorCode::Internal, e.to_string()))? + "\n"
        };
        Ok(LedgerExport { text, entries: entries.len() })
    }
}

impl Shared {
    /// The user's pauses now, as `pause` and `resume` answer them.
    fn paused(&self) -> Paused {
        let pauses = self.watcher.status().map(|w| w.pauses).unwrap_or_default();
        Paused { manual_pause: pauses.all(), pauses }
    }

    fn status(&self) -> AgentStatus {
        let watch = self.watcher.status();
        let (settings, errors, policy_errors, user_path, policy_path) = {
            let s = self.settings.lock().expect("settings lock");
            let paths = (s.user_path().to_owned(), s.policy_path().to_owned());
            (s.effective().values.clone(), s.errors(), s.policy_errors(), paths.0, paths.1)
        };
        let slots: Vec<SlotStatus> =
            self.scheduler.lock().expect("scheduler lock").iter().map(|s| s.lock().expect("status").clone()).collect();
        let scheduler = combine(&slots);
        let paused = watch.as_ref().is_none_or(|w| w.decision.is_paused());
        let problem = self.pool_problem.lock().expect("lock").clone();
        let state = match (&watch, &scheduler) {
            (None, _) => State::Starting,
            _ if paused => State::Paused,
            (_, Some(s)) if s.current_task.is_some() => State::Working,
            (_, Some(_)) => State::WaitingForWork,
            (_, None) if problem.as_ref().is_some_and(|p| p.code == PoolProblemCode::NoPool) => State::NoPool,
            (_, None) => State::Connecting,
        };
        AgentStatus {
            state,
            paused,
            reasons: watch.as_ref().map(|w| w.decision.reasons.clone()).unwrap_or_default(),
            decision: watch.as_ref().map(|w| w.decision.clone()),
            manual_pause: watch.as_ref().map(|w| w.pauses.all()),
            pauses: watch.as_ref().map(|w| w.pauses),
            sensors: watch.as_ref().map(|w| SensorsStatus {
                idle_source: w.idle_sensor.to_owned(),
                input_wakes: w.input_wakes,
                snapshot: w.snapshot.clone(),
            }),
            workers: watch.as_ref().map(|w| WorkersStatus {
                pids: w.workers.clone(),
                frozen: w.frozen,
                gpu_pids: w.gpu_workers.clone(),
                frozen_pids: w.frozen_workers.clone(),
            }),
            sandbox: watch.as_ref().and_then(|w| w.snapshot.sandbox.clone()),
            sandbox_in_words: watch.as_ref().and_then(|w| w.snapshot.sandbox.as_ref().map(|s| s.in_words())),
            scheduler,
            pool_problem: problem.as_ref().map(|p| p.message.clone()),
            pool_problem_code: problem.as_ref().map(|p| p.code),
            pool_retry_at_ms: problem.as_ref().and_then(|p| p.retry_at_ms),
            pool_said: problem.as_ref().and_then(|p| p.pool_said.clone()),
            settings: settings.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            settings_errors: errors,
            policy_errors,
            files: Some(Files { settings: user_path, policy: policy_path }),
            agent: Some(self.info.clone()),
            temporary_pool: self.temporary_pool.lock().expect("lock").clone(),
            ..AgentStatus::default()
        }
    }
}

/// Runs until `shutdown` resolves.
pub async fn run(config: DaemonConfig, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    run_with(config, shutdown, |_| {}).await
}

/// Runs until `shutdown` resolves; `started` gets the in-process control
/// once the agent answers requests (the tray app's way in).
pub async fn run_with(
    config: DaemonConfig,
    shutdown: impl Future<Output = ()>,
    started: impl FnOnce(Control),
) -> Result<(), DaemonError> {
    writable_dir(&config.data_dir).map_err(|source| DaemonError::DataDir { path: config.data_dir.clone(), source })?;
    let machine = Machine::this();
    let settings =
        Arc::new(Mutex::new(Settings::open(machine, config.settings_path.clone(), config.policy_path.clone())));
    for e in settings.lock().expect("settings lock").errors() {
        tracing::warn!("{e}");
    }
    let (keyring, device_key) = match crate::secrets::device_key_from_credential()? {
        Some(key) => ("systemd-credential", key),
        None => {
            let scope = crate::secrets::scope_of(&config.data_dir);
            // Off the runtime: choosing a keyring asks the session bus.
            tokio::task::spawn_blocking(move || {
                let keyring = crate::secrets::use_os_keyring()?;
                Ok::<_, crate::secrets::SecretsError>((keyring, crate::secrets::device_key(&scope)?))
            })
            .await
            .map_err(|e| DaemonError::Start(format!("keyring thread: {e}")))??
        }
    };
    let device_key = Arc::new(device_key);
    let ledger_path = config.data_dir.join("ledger.sqlite");
    let watcher = Watcher::start(WatcherConfig {
        settings: settings.clone(),
        pause_file: config.data_dir.join("pause.json"),
        ledger_path: ledger_path.clone(),
        sensors: config.sensors,
    })
    .map_err(|e| DaemonError::Start(format!("watcher thread: {e}")))?;
    let listener = control::bind(&config.socket_path).await?;
    let shared = Arc::new(Shared {
        watcher: watcher.clone(),
        settings: settings.clone(),
        scheduler: Mutex::new(Vec::new()),
        pool_problem: Mutex::new(None),
        pool_override: Mutex::new(config.pool_override),
        temporary_pool: Mutex::new(None),
        join_tokens: Mutex::new(BTreeMap::new()),
        data_dir: config.data_dir.clone(),
        demo: config.demo,
        info: AgentInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            data_dir: config.data_dir.clone(),
            ledger: ledger_path.clone(),
            socket: config.socket_path.clone(),
            keyring: keyring.to_owned(),
            device_public_key: device_key.public().to_string(),
        },
    });
    // Which OS layers a worker gets here, known before the first task: for
    // `idlemesh status`, and for a `require_sandbox` that must hold first.
    let probe = config.worker.clone();
    let sandbox_watcher = watcher.clone();
    tokio::task::spawn_blocking(move || match idlemesh_runtime::WorkerProcess::spawn(&probe) {
        Ok(worker) => sandbox_watcher.sandbox_seen(worker.sandbox().clone()),
        Err(e) => tracing::warn!(error = %e, "could not start a worker to learn its sandbox"),
    });
    let server = tokio::spawn(control::serve(listener, shared.clone()));
    tracing::info!(socket = %config.socket_path.display(), keyring, "agent started");
    started(Control(shared.clone()));

    let scheduler = schedule(shared.clone(), config.data_dir.clone(), ledger_path, config.worker, device_key, machine);
    tokio::select! {
        () = shutdown => {}
        () = scheduler => {}
    }
    watcher.shutdown();
    server.abort();
    let _ = std::fs::remove_file(&config.socket_path);
    Ok(())
}

/// Records why there is no scheduler; true if that changed.
fn set_problem(shared: &Shared, problem: PoolProblem) -> bool {
    shared.pool_problem.lock().expect("lock").replace(problem.clone()).as_ref() != Some(&problem)
}

/// Creates `dir` if need be and checks that files can be made in it: an
/// agent that could not keep its ledger must not start working.
fn writable_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".write-check-{}", std::process::id()));
    std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&probe)?;
    std::fs::remove_file(&probe)
}

/// Connects to the configured pool and works for it, forever.
async fn schedule(
    shared: Arc<Shared>,
    data_dir: PathBuf,
    ledger_path: PathBuf,
    worker: WorkerCommand,
    device_key: Arc<idlemesh_protocol::Keypair>,
    machine: Machine,
) {
    let mut failures = 0u32;
    loop {
        let backoff = Duration::from_millis(crate::outbox::backoff_ms(failures + 1, crate::agent::random_u64()));
        let Some(url) = shared.pool_url() else {
            if set_problem(&shared, PoolProblem::new(PoolProblemCode::NoPool, NO_POOL)) {
                tracing::info!("{NO_POOL}");
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        };
        // Joining is traffic too: on a metered network with nothing allowed, wait.
        // Nor with a policy that cannot be read: it may pin the pool's key.
        let unreadable = shared.settings.lock().expect("settings lock").policy_unreadable();
        let waiting = match unreadable {
            Some(why) => Some(PoolProblem::new(PoolProblemCode::PolicyUnreadable, why)),
            None if shared.watcher.decisions().borrow().traffic != crate::governor::Traffic::All => {
                Some(PoolProblem::new(
                    PoolProblemCode::Metered,
                    "waiting to join: the network is metered (allow_metered is off), or today's transfer cap is used up",
                ))
            }
            None => None,
        };
        if let Some(why) = waiting {
            let message = why.message.clone();
            if set_problem(&shared, why) {
                tracing::info!("{message}");
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        let (limits, enrollment_token, trust) = {
            let s = shared.settings.lock().expect("settings lock");
            let e = s.effective();
            (e.limits(), e.enrollment_token.clone(), e.pool_trust())
        };
        let enrollment_token = shared.join_tokens.lock().expect("lock").get(&url).cloned().or(enrollment_token);
        // The GPU is offered only when the user (or policy) enabled it, and
        // only if a worker finds one; probed once per setting change.
        let wgpu_adapter = if limits.gpu_enabled { gpu_adapter(&worker).await } else { None };
        shared.watcher.gpu_found(limits.gpu_enabled.then_some(wgpu_adapter.is_some()));
        let config = AgentConfig {
            pool_url: url.clone(),
            data_dir: data_dir.clone(),
            ledger_path: ledger_path.clone(),
            worker: worker.clone(),
            capabilities: Capabilities {
                wasm: true,
                wgpu_adapter: wgpu_adapter.clone(),
                cores: limits.cores,
                memory_bytes: limits.memory_per_task_bytes,
            },
            device_info: BTreeMap::from([
                ("cores".to_string(), machine.cores.to_string()),
                ("memory_bytes".to_string(), machine.memory_bytes.to_string()),
            ]),
            enrollment_token,
            // A small local queue: the next task is at hand when one ends.
            max_tasks_per_lease: 2,
            max_idle_poll: Duration::from_secs(30),
            watcher: Some(shared.watcher.clone()),
            require_sandbox: limits.require_sandbox.clone(),
            trust: trust.clone(),
        };
        let agent = match Agent::connect(config, device_key.clone()).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(pool = %url, error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot join the pool yet");
                *shared.pool_problem.lock().expect("lock") = Some(PoolProblem {
                    code: e.code(),
                    message: format!("cannot join {url}: {e}"),
                    retry_at_ms: Some(crate::now_ms() + backoff.as_millis() as u64),
                    pool_said: e.pool_said().map(str::to_owned),
                });
                tokio::time::sleep(backoff).await;
                failures += 1;
                continue;
            }
        };
        failures = 0;
        *shared.pool_problem.lock().expect("lock") = None;
        // One slot per allowed core, each running one task at a time in its own worker.
        let mut agents = Vec::new();
        for slot in 1..limits.cores {
            match agent.another_slot(slot) {
                Ok(a) => agents.push(a),
                Err(e) => tracing::error!(slot, error = %e, "cannot open another slot; running fewer tasks at once"),
            }
        }
        agents.insert(0, agent);
        *shared.scheduler.lock().expect("scheduler lock") = agents.iter().map(Agent::status).collect();
        let (stop_tx, stop_rx) = watch::channel(false);
        // Switch pools, or the slots and what they offer the pool, when the
        // settings change; the current tasks finish first.
        let watch_settings = {
            let shared = shared.clone();
            let url = url.clone();
            // What the connection was made with: the trust settings too.
            let offered =
                (limits.cores, limits.memory_per_task_bytes, limits.gpu_enabled, limits.require_sandbox.clone(), trust);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    let now = {
                        let s = shared.settings.lock().expect("settings lock");
                        let (l, trust) = (s.effective().limits(), s.effective().pool_trust());
                        (l.cores, l.memory_per_task_bytes, l.gpu_enabled, l.require_sandbox, trust)
                    };
                    let changed = now != offered;
                    if shared.pool_url().as_deref() != Some(url.as_str()) || changed {
                        let _ = stop_tx.send(true);
                        return;
                    }
                }
            })
        };
        let runs: Vec<_> = agents
            .into_iter()
            .map(|mut agent| {
                let stop_rx = stop_rx.clone();
                tokio::spawn(async move { agent.run(stop_rx).await })
            })
            .collect();
        for run in runs {
            match run.await {
                Ok(Ok(summary)) => tracing::info!(pool = %url, ?summary, "a slot stopped"),
                Ok(Err(e)) => {
                    tracing::error!(pool = %url, error = %e, "the scheduler stopped; starting again");
                    tokio::time::sleep(backoff).await;
                }
                Err(e) => tracing::error!(error = %e, "a scheduler slot panicked"),
            }
        }
        watch_settings.abort();
        shared.scheduler.lock().expect("scheduler lock").clear();
    }
}

/// The adapter a worker finds, or `None` (logged) when there is no usable GPU.
async fn gpu_adapter(worker: &WorkerCommand) -> Option<String> {
    let worker = worker.clone();
    match tokio::task::spawn_blocking(move || worker.probe_gpu()).await.expect("the probe does not panic") {
        Ok(adapter) => {
            tracing::info!(%adapter, "GPU work enabled");
            Some(adapter)
        }
        Err(e) => {
            tracing::warn!(error = %e, "GPU use is enabled but there is no usable GPU; running CPU work only");
            None
        }
    }
}

/// The slots' statuses as one: the first slot's pool and device, every
/// running task, summed totals (results waiting: the shared outbox's count).
fn combine(slots: &[SlotStatus]) -> Option<idlemesh_control::SchedulerStatus> {
    let first = slots.first()?;
    let mut total = crate::AgentSummary::default();
    for s in slots {
        let t = &s.summary;
        total.tasks_finished += t.tasks_finished;
        total.tasks_failed += t.tasks_failed;
        total.tasks_refused += t.tasks_refused;
        total.cpu_ms += t.cpu_ms;
        total.wall_ms += t.wall_ms;
        total.credits += t.credits;
        total.receipts += t.receipts;
        total.results_pending = total.results_pending.max(t.results_pending);
    }
    let tasks: Vec<_> = slots.iter().filter_map(|s| s.current_task.clone()).collect();
    Some(idlemesh_control::SchedulerStatus {
        pool: first.pool.clone(),
        device_id: first.device_id,
        managed_by: first.managed_by.clone(),
        slots: slots.len(),
        current_task: tasks.first().cloned(),
        current_tasks: tasks,
        summary: total,
        last_pool_error: slots.iter().find_map(|s| s.last_pool_error.clone()),
    })
}
