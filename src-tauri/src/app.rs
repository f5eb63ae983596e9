//! The tray process: the embedded agent, the tray, notifications and the
//! status loop that keeps them current. The agent runs in this process on
//! Tauri's tokio runtime, exactly as `idlemesh agent` runs it. This process
//! never creates a webview: "Open dashboard" starts the dashboard process
//! (`crate::dashboard`), which speaks to the agent over its control socket,
//! so WebKit's memory leaves with the window (docs/architecture.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use idlemesh_agent::control::{self, Request};
use idlemesh_agent::daemon::{self, Control};
use idlemesh_agent::paths;
use serde_json::{Value, json};
use tauri::{AppHandle, Manager as _, RunEvent};

/// What the tray, the status loop and the stand-in control server share.
pub struct AppState {
    control: OnceLock<Control>,
    /// Why the embedded agent is not running (another agent owns the socket, no keyring...).
    agent_error: Mutex<Option<AgentFailure>>,
    /// Answers on the agent's socket while the agent is stopped.
    stand_in: Mutex<Option<tauri::async_runtime::JoinHandle<()>>>,
    shutdown: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    stopped: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    /// The dashboard process last started, while it runs.
    dashboard: Mutex<Option<u32>>,
    pub data_dir: PathBuf,
    demo: Arc<crate::demo::DemoHost>,
}

/// Why the embedded agent stopped: `DaemonError::code` and its message.
#[derive(Debug, Clone)]
pub struct AgentFailure {
    pub code: &'static str,
    pub message: String,
}

/// A refusal: the agent's code and words.
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

/// The status of an agent that is not running, shaped like a status: the
/// tray's words and the dashboard's explanation both come from it.
pub fn failure_status(state: &str, code: Option<&str>, message: Option<&str>, data_dir: &std::path::Path) -> Value {
    json!({
        "state": state,
        "error": message,
        "error_code": code,
        "data_dir": data_dir,
        "reasons": [],
    })
}

impl AppState {
    /// The tray's way in, from a plain thread: blocks until the agent has
    /// applied the request (a pause: the worker is frozen).
    pub fn request_now(&self, request: Request) -> Result<Value, CommandError> {
        let control = self.control.get().ok_or_else(|| CommandError::new("not_running", "the agent is not running"))?;
        control.request(request).map_err(|(code, message)| CommandError { code, message })
    }

    /// The agent's status, or a status-shaped explanation of why there is none.
    async fn status(&self) -> Value {
        let Some(control) = self.control.get().cloned() else {
            let error = self.agent_error.lock().expect("lock").clone();
            let state = if error.is_some() { "error" } else { "starting" };
            return failure_status(
                state,
                error.as_ref().map(|f| f.code),
                error.as_ref().map(|f| f.message.as_str()),
                &self.data_dir,
            );
        };
        match tauri::async_runtime::spawn_blocking(move || control.request(Request::Status)).await {
            Ok(Ok(v)) => v,
            Ok(Err((_, message))) => failure_status("error", Some("other"), Some(&message), &self.data_dir),
            Err(e) => failure_status("error", Some("other"), Some(&e.to_string()), &self.data_dir),
        }
    }
}

pub fn run() -> ExitCode {
    idlemesh_agent::logs::init("info", Some("app"));
    rustls::crypto::ring::default_provider().install_default().ok();
    let open_dashboard = std::env::args().any(|a| a == "--dashboard");
    let data_dir = paths::data_dir();
    let state = Arc::new(AppState {
        control: OnceLock::new(),
        agent_error: Mutex::new(None),
        stand_in: Mutex::new(None),
        shutdown: Mutex::new(None),
        stopped: Mutex::new(None),
        dashboard: Mutex::new(None),
        demo: Arc::new(crate::demo::DemoHost::new(data_dir.join("demo-pool"))),
        data_dir,
    });
    let app = tauri::Builder::default()
        // A second launch (the menu entry, autostart while running) opens
        // the dashboard instead of starting another agent.
        .plugin(tauri_plugin_single_instance::init(|app, _args, _cwd| open(app)))
        .plugin(tauri_plugin_autostart::init(tauri_plugin_autostart::MacosLauncher::LaunchAgent, None))
        .plugin(tauri_plugin_notification::init())
        .manage(state.clone())
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
        .build(crate::context(false));
    let app = match app {
        Ok(app) => app,
        Err(e) => {
            eprintln!("idlemesh-app: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    app.run(|app, event| match event {
        // The tray has no window; only Quit (or a logout) exits.
        RunEvent::ExitRequested { api, code: None, .. } => api.prevent_exit(),
        RunEvent::Exit => {
            let state = app.state::<Arc<AppState>>();
            close_dashboard(&state);
            stop_agent(&state);
        }
        _ => {}
    });
    ExitCode::SUCCESS
}

/// Starts the embedded agent again after it failed to start (the
/// dashboard's "Try again", once the user fixed the cause): the stand-in
/// leaves the socket first, so the agent can take it.
async fn retry_agent(state: Arc<AppState>) {
    let stand_in = state.stand_in.lock().expect("lock").take();
    if let Some(server) = stand_in {
        server.abort();
        let _ = server.await;
    }
    if state.agent_error.lock().expect("lock").take().is_some() {
        tracing::info!("starting the agent again, as asked");
        start_agent(state);
    }
}

fn start_agent(state: Arc<AppState>) {
    let worker = match idlemesh_runtime::WorkerCommand::current_exe(Some(&paths::kernel_cache_dir())) {
        Ok(w) => w,
        Err(e) => {
            failed(state, AgentFailure { code: "other", message: format!("cannot find this program's path: {e}") });
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
        demo: Some(state.demo.clone()),
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
            failed(state, AgentFailure { code: e.code(), message: e.to_string() });
        }
        let _ = stopped_tx.send(());
    });
}

/// Records why the agent is not running (the status loop shows it in the
/// tray within a second: one writer, so an older status can never
/// overwrite a newer one) and, unless another agent or another user holds
/// the socket, answers there in its place: the dashboard runs in another
/// process and learns why, and asks to try again, only that way.
fn failed(state: Arc<AppState>, failure: AgentFailure) {
    *state.agent_error.lock().expect("lock") = Some(failure.clone());
    if matches!(failure.code, "already_running" | "socket_not_private" | "control_socket") {
        return;
    }
    let stand_in = Arc::new(StandIn { state: state.clone(), failure });
    let server = tauri::async_runtime::spawn(async move {
        match control::bind(&control::socket_path()).await {
            Ok(listener) => control::serve(listener, stand_in).await,
            Err(e) => tracing::warn!(error = %e, "cannot answer for the stopped agent on its socket"),
        }
    });
    *state.stand_in.lock().expect("lock") = Some(server);
}

/// The control socket's answers while the embedded agent is stopped.
struct StandIn {
    state: Arc<AppState>,
    failure: AgentFailure,
}

impl control::Handler for StandIn {
    fn handle(&self, request: Request) -> Result<Value, (String, String)> {
        match request {
            Request::Status => {
                Ok(failure_status("error", Some(self.failure.code), Some(&self.failure.message), &self.state.data_dir))
            }
            Request::AgentRetry => {
                tauri::async_runtime::spawn(retry_agent(self.state.clone()));
                Ok(json!({"restarted": true}))
            }
            _ => Err(("not_running".into(), format!("the agent is not running: {}", self.failure.message))),
        }
    }
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

/// Once a second: the tray's icon and words, and notifications.
fn status_loop(app: AppHandle, state: Arc<AppState>) {
    tauri::async_runtime::spawn(async move {
        let mut notifier = crate::notify::Notifier::default();
        loop {
            let status = state.status().await;
            crate::tray::update(&app, &status);
            for message in notifier.observe(&status) {
                crate::notify::show(&app, &message);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

/// Opens the dashboard: starts the dashboard process, which shows its
/// window, or, when one already runs, hands over to it (its own single
/// instance) and that one comes to the front.
pub fn open(app: &AppHandle) {
    let state = app.state::<Arc<AppState>>().inner().clone();
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return tracing::error!(error = %e, "cannot open the dashboard: this program's path is unknown"),
    };
    let mut child =
        match std::process::Command::new(exe).arg(crate::DASHBOARD_MODE).stdin(std::process::Stdio::null()).spawn() {
            Ok(child) => child,
            Err(e) => return tracing::error!(error = %e, "cannot start the dashboard"),
        };
    let pid = child.id();
    *state.dashboard.lock().expect("lock") = Some(pid);
    // Reaped when it closes, so no zombie stays behind in the tray's name.
    std::thread::spawn(move || {
        let _ = child.wait();
        let mut running = state.dashboard.lock().expect("lock");
        if *running == Some(pid) {
            *running = None;
        }
    });
}

/// Quitting Idlemesh closes its dashboard too.
fn close_dashboard(state: &AppState) {
    #[cfg(unix)]
    if let Some(pid) = *state.dashboard.lock().expect("lock") {
        // SAFETY: signalling our own child; its waiter clears the pid the
        // moment it is reaped.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    #[cfg(not(unix))]
    let _ = state;
}
