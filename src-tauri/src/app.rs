//! Wiring: the embedded agent, the tray, the dashboard window and the status
//! loop that keeps them current. The agent runs in this process on Tauri's
//! tokio runtime, exactly as `idlemesh agent` runs it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use idlemesh_agent::control::{self, Request};
use idlemesh_agent::daemon::{self, Control};
use idlemesh_agent::paths;
use serde_json::{Value, json};
use tauri::{AppHandle, Emitter as _, Manager as _, RunEvent, WebviewUrl, WebviewWindowBuilder};

pub const DASHBOARD: &str = "dashboard";

/// What the commands, the tray and the status loop share.
pub struct AppState {
    control: OnceLock<Control>,
    /// Why the embedded agent is not running (another agent owns the socket, no keyring...).
    agent_error: Mutex<Option<AgentFailure>>,
    shutdown: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    stopped: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    pub data_dir: PathBuf,
    pub ledger_path: PathBuf,
    pub demo: tokio::sync::Mutex<Option<crate::demo::DemoPool>>,
}

/// Why the embedded agent stopped: `DaemonError::code` and its message.
#[derive(Debug, Clone)]
pub struct AgentFailure {
    pub code: &'static str,
    pub message: String,
}

/// A refusal the dashboard branches on by `code` (docs/app-ipc.md).
#[derive(Debug, serde::Serialize)]
pub struct CommandError {
    pub code: String,
    pub message: String,
}

impl CommandError {
    pub fn new(code: &str, message: impl std::fmt::Display) -> Self {
        Self { code: code.into(), message: message.to_string() }
    }
}

impl AppState {
    /// One request to the embedded agent, off the async runtime's threads
    /// (settings and pause files are written before it answers).
    pub async fn request(&self, request: Request) -> Result<Value, CommandError> {
        let control = self.control.get().cloned().ok_or_else(|| {
            let why = self.agent_error.lock().expect("lock").clone();
            CommandError::new("not_running", why.map_or_else(|| "the agent is still starting".into(), |f| f.message))
        })?;
        tauri::async_runtime::spawn_blocking(move || control.request(request))
            .await
            .map_err(|e| CommandError::new("internal", e))?
            .map_err(|(code, message)| CommandError { code, message })
    }

    /// Whether the embedded agent is up (answering requests).
    pub fn running(&self) -> bool {
        self.control.get().is_some()
    }

    /// Whether the embedded agent stopped (or never started) with an error.
    pub fn failed(&self) -> bool {
        self.agent_error.lock().expect("lock").is_some()
    }

    /// The tray's way in, from a plain thread: blocks until the agent has
    /// applied the request (a pause: the worker is frozen).
    pub fn request_now(&self, request: Request) -> Result<Value, CommandError> {
        let control = self.control.get().ok_or_else(|| CommandError::new("not_running", "the agent is not running"))?;
        control.request(request).map_err(|(code, message)| CommandError { code, message })
    }

    /// The agent's status, or a status-shaped explanation of why there is none.
    pub async fn status(&self) -> Value {
        match self.request(Request::Status).await {
            Ok(v) => v,
            Err(e) if e.code == "not_running" => {
                let error = self.agent_error.lock().expect("lock").clone();
                json!({
                    "state": if error.is_some() { "error" } else { "starting" },
                    "error": error.as_ref().map(|f| &f.message),
                    "error_code": error.as_ref().map(|f| f.code),
                    "data_dir": self.data_dir,
                    "reasons": [],
                })
            }
            Err(e) => json!({"state": "error", "error": e.message, "error_code": "other", "reasons": []}),
        }
    }
}

pub fn run() -> ExitCode {
    idlemesh_agent::logs::init("info", Some("app"));
    rustls::crypto::ring::default_provider().install_default().ok();
    let open_dashboard = std::env::args().any(|a| a == "--dashboard");
    let state = Arc::new(AppState {
        control: OnceLock::new(),
        agent_error: Mutex::new(None),
        shutdown: Mutex::new(None),
        stopped: Mutex::new(None),
        data_dir: paths::data_dir(),
        ledger_path: paths::ledger_path(),
        demo: tokio::sync::Mutex::new(None),
    });
    let app = tauri::Builder::default()
        // A second launch (the menu entry, autostart while running) opens
        // the dashboard of the running app instead of starting another agent.
        .plugin(tauri_plugin_single_instance::init(|app, _args, _cwd| open(app)))
        .plugin(tauri_plugin_autostart::init(tauri_plugin_autostart::MacosLauncher::LaunchAgent, None))
        .plugin(tauri_plugin_notification::init())
        .manage(state.clone())
        .invoke_handler(crate::commands::handler())
        .setup(move |app| {
            crate::tray::create(app.handle())?;
            start_agent(state.clone());
            status_loop(app.handle().clone(), state.clone());
            exit_on_sigterm(app.handle().clone());
            if open_dashboard {
                open(app.handle());
            }
            Ok(())
        })
        .build(tauri::generate_context!());
    let app = match app {
        Ok(app) => app,
        Err(e) => {
            eprintln!("idlemesh-app: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    app.run(|app, event| match event {
        // Closing the dashboard leaves the app in the tray; only Quit exits.
        RunEvent::ExitRequested { api, code: None, .. } => api.prevent_exit(),
        RunEvent::Exit => stop_agent(&app.state::<Arc<AppState>>()),
        _ => {}
    });
    ExitCode::SUCCESS
}

/// Starts the embedded agent again after it failed to start (the
/// dashboard's "Try again", once the user fixed the cause). False if it is
/// running or still starting.
pub fn retry_agent(state: &Arc<AppState>) -> bool {
    if state.running() || state.agent_error.lock().expect("lock").take().is_none() {
        return false;
    }
    tracing::info!("starting the agent again, as asked");
    start_agent(state.clone());
    true
}

fn start_agent(state: Arc<AppState>) {
    let worker = match idlemesh_runtime::WorkerCommand::current_exe(Some(&paths::kernel_cache_dir())) {
        Ok(w) => w,
        Err(e) => {
            *state.agent_error.lock().expect("lock") =
                Some(AgentFailure { code: "other", message: format!("cannot find this program's path: {e}") });
            return;
        }
    };
    let config = daemon::DaemonConfig {
        pool_override: None,
        settings_path: paths::settings_path(),
        policy_path: paths::policy_path(),
        data_dir: state.data_dir.clone(),
        socket_path: control::socket_path(),
        worker,
        sensors: Box::new(idlemesh_agent::sensors::Sensors::this_machine),
    };
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let (stopped_tx, stopped_rx) = std::sync::mpsc::channel();
    *state.shutdown.lock().expect("lock") = Some(shutdown_tx);
    *state.stopped.lock().expect("lock") = Some(stopped_rx);
    tauri::async_runtime::spawn(async move {
        let shutdown = async {
            let _ = shutdown_rx.await;
        };
        let started = {
            let state = state.clone();
            move |control| {
                let _ = state.control.set(control);
            }
        };
        if let Err(e) = daemon::run_with(config, shutdown, started).await {
            tracing::error!(error = %e, code = e.code(), "the agent stopped");
            // The status loop shows it (in the tray within a second): one
            // writer, so an older status can never overwrite a newer one.
            *state.agent_error.lock().expect("lock") = Some(AgentFailure { code: e.code(), message: e.to_string() });
        }
        let _ = stopped_tx.send(());
    });
}

/// Stops the agent (its workers with it) before the process exits.
fn stop_agent(state: &AppState) {
    if let Some(tx) = state.shutdown.lock().expect("lock").take() {
        let _ = tx.send(());
    }
    if let Some(rx) = state.stopped.lock().expect("lock").take() {
        let _ = rx.recv_timeout(Duration::from_secs(5));
    }
}

/// A logout or `kill` quits like the menu's Quit: the agent stops its
/// workers and closes its ledger first.
fn exit_on_sigterm(app: AppHandle) {
    #[cfg(unix)]
    tauri::async_runtime::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            term.recv().await;
            tracing::info!("SIGTERM: quitting");
            app.exit(0);
        }
    });
    #[cfg(not(unix))]
    let _ = app;
}

/// Once a second: the tray's icon and words, notifications, and the
/// dashboard's `status` event while it is open.
fn status_loop(app: AppHandle, state: Arc<AppState>) {
    tauri::async_runtime::spawn(async move {
        let mut notifier = crate::notify::Notifier::default();
        loop {
            let status = state.status().await;
            crate::tray::update(&app, &status);
            for message in notifier.observe(&status) {
                crate::notify::show(&app, &message);
            }
            if let Some(window) = app.get_webview_window(DASHBOARD) {
                let _ = window.emit("status", &status);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

/// Shows the dashboard, creating its window (and webview) if it is closed:
/// closing it destroys the webview, so the app is light while it is shut.
pub fn open(app: &AppHandle) {
    if let Some(window) = app.get_webview_window(DASHBOARD) {
        let _ = window.unminimize();
        let _ = window.show();
        let _ = window.set_focus();
        return;
    }
    let built = WebviewWindowBuilder::new(app, DASHBOARD, WebviewUrl::App("index.html".into()))
        .title("Idlemesh")
        .inner_size(1040.0, 740.0)
        .min_inner_size(420.0, 360.0)
        // Ctrl+= / Ctrl+- / Ctrl+0 and Ctrl+wheel: the dashboard must be
        // readable at 200 %, so the user needs a way to get there.
        .zoom_hotkeys_enabled(true)
        .build();
    if let Err(e) = built {
        tracing::error!(error = %e, "cannot open the dashboard");
    }
}
