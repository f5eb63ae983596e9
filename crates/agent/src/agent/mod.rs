//! The running agent (`idlemesh agent`, and what the tray app embeds):
//! settings and policy, the keyring's device key, the watcher, the control
//! socket and the slots, tied together and kept running.
//!
//! Nothing here gives up on the pool: no pool configured means waiting for
//! one; an unreachable pool means trying again with backoff; a changed
//! `pool_url` means finishing the current task and switching.
//!
//! - `answers`: what the agent answers on its control socket (and to the
//!   embedding app through [`Control`]).
//! - `schedule`: joining the configured pool and keeping one slot per core
//!   working for it.

mod answers;
mod schedule;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use idlemesh_control::{AgentInfo, PoolProblemCode, StartProblem};
use idlemesh_protocol::Keypair;
use idlemesh_runtime::WorkerCommand;

pub use answers::Control;

use crate::control;
use crate::sensors::Sensors;
use crate::settings::{Machine, Settings};
use crate::slot::SlotStatus;
use crate::watcher::{Watcher, WatcherConfig};

/// What the agent is started with; [`AgentConfig::this_machine`] is the
/// installed agent, which the CLI and the tray app adjust.
pub struct AgentConfig {
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

impl AgentConfig {
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
    fn start(&self) -> Result<String, DemoError>;
}

/// Why the demo pool could not start, in the embedding app's own type.
pub type DemoError = Box<dyn std::error::Error + Send + Sync>;

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("settings_path", &self.settings_path)
            .field("data_dir", &self.data_dir)
            .field("socket_path", &self.socket_path)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
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
    #[error("cannot start the watcher's thread: {0}")]
    Watcher(#[source] std::io::Error),
    #[error("the keyring's thread ended before it answered: {0}")]
    KeyringThread(#[source] tokio::task::JoinError),
}

impl AgentError {
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
            Self::Watcher(_) | Self::KeyringThread(_) => StartProblem::Other,
        }
    }
}

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

/// The agent: started with [`Agent::start`] (which answers on the control
/// socket from then on), run with [`Agent::run`] until told to stop.
pub struct Agent {
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
    socket_path: PathBuf,
    worker: WorkerCommand,
    device_key: Arc<Keypair>,
    machine: Machine,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("socket", &self.socket_path).finish_non_exhaustive()
    }
}

impl Agent {
    /// Reads the settings and policy, takes the device key from the
    /// keyring, starts the watcher and answers on the control socket.
    /// Nothing is leased before [`Agent::run`].
    pub async fn start(config: AgentConfig) -> Result<Self, AgentError> {
        writable_dir(&config.data_dir)
            .map_err(|source| AgentError::DataDir { path: config.data_dir.clone(), source })?;
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
                .map_err(AgentError::KeyringThread)??
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
        .map_err(AgentError::Watcher)?;
        let listener = match control::bind(&config.socket_path).await {
            Ok(l) => l,
            Err(e) => {
                watcher.shutdown();
                return Err(e.into());
            }
        };
        let shared = Arc::new(Shared {
            watcher: watcher.clone(),
            settings,
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
                ledger: ledger_path,
                socket: config.socket_path.clone(),
                keyring: keyring.to_owned(),
                device_public_key: device_key.public().to_string(),
            },
        });
        // Which OS layers a worker gets here, known before the first task: for
        // `idlemesh status`, and for a `require_sandbox` that must hold first.
        let probe = config.worker.clone();
        tokio::task::spawn_blocking(move || match idlemesh_runtime::WorkerProcess::spawn(&probe) {
            Ok(worker) => watcher.sandbox_seen(worker.sandbox().clone()),
            Err(e) => tracing::warn!(error = %e, "could not start a worker to learn its sandbox"),
        });
        let server = tokio::spawn(control::serve(listener, shared.clone()));
        tracing::info!(socket = %config.socket_path.display(), keyring, "agent started");
        Ok(Self { shared, server, socket_path: config.socket_path, worker: config.worker, device_key, machine })
    }

    /// The same requests as the control socket, in process (the tray app's way in).
    pub fn control(&self) -> Control {
        Control(self.shared.clone())
    }

    /// Joins the configured pool and works for it until `shutdown`
    /// resolves; then stops the watcher and the control socket.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let scheduler =
            schedule::schedule(self.shared.clone(), self.worker.clone(), self.device_key.clone(), self.machine);
        tokio::select! {
            () = shutdown => {}
            () = scheduler => {}
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shared.watcher.shutdown();
        self.server.abort();
        let _ = std::fs::remove_file(&self.socket_path);
    }
}

/// Creates `dir` if need be and checks that files can be made in it: an
/// agent that could not keep its ledger must not start working.
fn writable_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".write-check-{}", std::process::id()));
    std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&probe)?;
    std::fs::remove_file(&probe)
}
