//! The tray process: the embedded agent, the tray, notifications and the
//! status loop that keeps them current. The agent runs in this process on
//! a tokio runtime, exactly as `idlemesh agent` runs it; the tray is tao's
//! event loop with a tray-icon. No Tauri and no WebKit here, not even
//! linked: "Open dashboard" starts the dashboard program
//! (`idlemesh-dashboard`), which speaks to the agent over its control
//! socket, so the tray stays small whether or not the dashboard was ever
//! opened (docs/architecture.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use idlemesh_agent::control::{self, ErrorCode, Refusal, Request};
use idlemesh_agent::paths;
use idlemesh_agent::{Agent, AgentConfig, Control};
use idlemesh_control::{AgentStatus, Retried, StartProblem, State};
use serde_json::Value;
use tao::event::Event;
use tao::event_loop::{ControlFlow, EventLoopBuilder, EventLoopProxy};

/// What reaches the tray's UI thread.
#[derive(Debug)]
pub enum UserEvent {
    Menu(tray_icon::menu::MenuId),
    Status(Box<AgentStatus>),
    /// Open the dashboard (a second launch, `--dashboard`).
    Open,
    Quit,
    /// The agent has stopped after a Quit: the event loop ends.
    Stopped,
}

/// What the tray, the status loop and the stand-in control server share.
pub struct AppState {
    control: OnceLock<Control>,
    /// Why the embedded agent is not running (another agent owns the socket, no keyring...).
    agent_error: Mutex<Option<AgentFailure>>,
    /// Answers on the agent's socket while the agent is stopped.
    stand_in: Mutex<Option<tokio::task::JoinHandle<()>>>,
    shutdown: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    stopped: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    /// The dashboard process last started, while it runs.
    dashboard: Mutex<Option<u32>>,
    pub data_dir: PathBuf,
    demo: Arc<crate::demo::DemoHost>,
    runtime: tokio::runtime::Handle,
}

/// Why the embedded agent stopped: `DaemonError::code` and its message.
#[derive(Debug, Clone)]
pub struct AgentFailure {
    pub code: StartProblem,
    pub message: String,
}

impl AppState {
    /// The tray's way in, from a plain thread: blocks until the agent has
    /// applied the request (a pause: the worker is frozen).
    pub fn request_now(&self, request: Request) -> Result<Value, Refusal> {
        let control =
            self.control.get().ok_or_else(|| Refusal::new(ErrorCode::NotRunning, "the agent is not running"))?;
        control.request(request)
    }

    /// The agent's status, or a status-shaped explanation of why there is none.
    async fn status(&self) -> AgentStatus {
        let Some(control) = self.control.get().cloned() else {
            let error = self.agent_error.lock().expect("lock").clone();
            let state = if error.is_some() { State::Error } else { State::Starting };
            return AgentStatus::not_running(
                state,
                error.as_ref().map(|f| f.code),
                error.map(|f| f.message),
                &self.data_dir,
            );
        };
        match tokio::task::spawn_blocking(move || control.status()).await {
            Ok(status) => status,
            Err(e) => {
                AgentStatus::not_running(State::Error, Some(StartProblem::Other), Some(e.to_string()), &self.data_dir)
            }
        }
    }
}

pub fn run() -> ExitCode {
    idlemesh_agent::init_logging("info", Some("app"));
    // Which package this came in (the Tauri bundler marks the binary it
    // packs, and refuses one without the mark).
    tracing::info!(version = env!("CARGO_PKG_VERSION"), bundle = ?tauri_utils::platform::bundle_type(), "tray starting");
    rustls::crypto::ring::default_provider().install_default().ok();
    let open_dashboard = std::env::args().any(|a| a == "--dashboard");
    // A second launch (the menu entry, autostart while running) opens the
    // dashboard of the running tray instead of starting another agent.
    #[cfg(target_os = "linux")]
    if crate::single_instance::hand_over() {
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("idlemesh-app: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Elsewhere, an agent answering on this user's socket means Idlemesh
    // runs already: this launch opens the dashboard (which has its own
    // single instance) and ends.
    #[cfg(not(target_os = "linux"))]
    if runtime.block_on(control::call(&control::socket_path(), &Request::Status)).is_ok() {
        if let Err(e) =
            crate::programs::beside(crate::programs::DASHBOARD).and_then(|exe| std::process::Command::new(exe).spawn())
        {
            eprintln!("idlemesh-app: Idlemesh runs already, and its dashboard cannot be started: {e}");
            return ExitCode::FAILURE;
        }
        return ExitCode::SUCCESS;
    }
    let event_loop = EventLoopBuilder::<UserEvent>::with_user_event().build();
    let proxy = event_loop.create_proxy();
    #[cfg(target_os = "linux")]
    let _instance = crate::single_instance::serve(proxy.clone());
    let data_dir = paths::data_dir();
    let state = Arc::new(AppState {
        control: OnceLock::new(),
        agent_error: Mutex::new(None),
        stand_in: Mutex::new(None),
        shutdown: Mutex::new(None),
        stopped: Mutex::new(None),
        dashboard: Mutex::new(None),
        demo: Arc::new(crate::demo::DemoHost::new(data_dir.join("demo-pool"), runtime.handle().clone())),
        data_dir,
        runtime: runtime.handle().clone(),
    });
    let mut tray = match crate::tray::Tray::create(proxy.clone()) {
        Ok(tray) => tray,
        Err(e) => {
            eprintln!("idlemesh-app: cannot create the tray icon: {e}");
            return ExitCode::FAILURE;
        }
    };
    start_agent(state.clone());
    status_loop(state.clone(), proxy.clone());
    exit_on_sigterm(&state, proxy.clone());
    if open_dashboard {
        open(&state);
    }
    let mut notifier = crate::notify::Notifier::default();
    event_loop.run(move |event, _, flow| {
        *flow = ControlFlow::Wait;
        let Event::UserEvent(event) = event else { return };
        match event {
            UserEvent::Status(status) => {
                tray.update(&status);
                for message in notifier.observe(&status) {
                    crate::notify::show(&message);
                }
            }
            UserEvent::Menu(id) => crate::tray::on_menu(&state, &id, &proxy),
            UserEvent::Open => open(&state),
            // Quit, a logout or `kill`: the agent stops its workers and
            // closes its ledger first, and the dashboard goes too. Off the
            // UI thread, which meanwhile answers the menu click that asked.
            UserEvent::Quit => {
                let state = state.clone();
                let proxy = proxy.clone();
                std::thread::spawn(move || {
                    close_dashboard(&state);
                    stop_agent(&state);
                    // The panel's click is answered from the bus's own
                    // thread: give it a moment to leave before the exit.
                    std::thread::sleep(Duration::from_millis(100));
                    let _ = proxy.send_event(UserEvent::Stopped);
                });
            }
            UserEvent::Stopped => *flow = ControlFlow::Exit,
        }
    })
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
            failed(
                state,
                AgentFailure { code: StartProblem::Other, message: format!("cannot find this program's path: {e}") },
            );
            return;
        }
    };
    let config =
        AgentConfig { demo: Some(state.demo.clone()), ..AgentConfig::this_machine(state.data_dir.clone(), worker) };
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let (stopped_tx, stopped_rx) = std::sync::mpsc::channel();
    *state.shutdown.lock().expect("lock") = Some(shutdown_tx);
    *state.stopped.lock().expect("lock") = Some(stopped_rx);
    let runtime = state.runtime.clone();
    runtime.spawn(async move {
        let shutdown = async {
            let _ = shutdown_rx.await;
        };
        match Agent::start(config).await {
            Ok(agent) => {
                let _ = state.control.set(agent.control());
                agent.run(shutdown).await;
            }
            Err(e) => {
                tracing::error!(error = %e, code = ?e.code(), "the agent could not start");
                failed(state, AgentFailure { code: e.code(), message: e.to_string() });
            }
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
    if matches!(
        failure.code,
        StartProblem::AlreadyRunning | StartProblem::SocketNotPrivate | StartProblem::ControlSocket
    ) {
        return;
    }
    let stand_in = Arc::new(StandIn { state: state.clone(), failure });
    let server = state.runtime.spawn(async move {
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
    fn handle(&self, request: Request) -> Result<Value, Refusal> {
        let answer = |v| serde_json::to_value(v).map_err(|e| Refusal::new(ErrorCode::Internal, e.to_string()));
        match request {
            Request::Status => answer(AgentStatus::not_running(
                State::Error,
                Some(self.failure.code),
                Some(self.failure.message.clone()),
                &self.state.data_dir,
            )),
            Request::AgentRetry => {
                self.state.runtime.spawn(retry_agent(self.state.clone()));
                serde_json::to_value(Retried { restarted: true })
                    .map_err(|e| Refusal::new(ErrorCode::Internal, e.to_string()))
            }
            _ => {
                Err(Refusal::new(ErrorCode::NotRunning, format!("the agent is not running: {}", self.failure.message)))
            }
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

/// A logout or `kill` quits like the menu's Quit.
fn exit_on_sigterm(state: &AppState, proxy: EventLoopProxy<UserEvent>) {
    #[cfg(unix)]
    state.runtime.spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            term.recv().await;
            tracing::info!("SIGTERM: quitting");
            let _ = proxy.send_event(UserEvent::Quit);
        }
    });
    #[cfg(not(unix))]
    let _ = (state, proxy);
}

/// Once a second: the status for the tray's icon and words, and notifications.
fn status_loop(state: Arc<AppState>, proxy: EventLoopProxy<UserEvent>) {
    let runtime = state.runtime.clone();
    runtime.spawn(async move {
        loop {
            let status = state.status().await;
            if proxy.send_event(UserEvent::Status(Box::new(status))).is_err() {
                return; // the event loop has ended
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

/// Opens the dashboard: starts the dashboard process, which shows its
/// window, or, when one already runs, hands over to it (its own single
/// instance) and that one comes to the front.
pub fn open(state: &Arc<AppState>) {
    let state = state.clone();
    let exe = match crate::programs::beside(crate::programs::DASHBOARD) {
        Ok(exe) => exe,
        Err(e) => return tracing::error!(error = %e, "cannot open the dashboard: its program is not found"),
    };
    let mut child = match std::process::Command::new(&exe).stdin(std::process::Stdio::null()).spawn() {
        Ok(child) => child,
        Err(e) => return tracing::error!(error = %e, exe = %exe.display(), "cannot start the dashboard"),
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
