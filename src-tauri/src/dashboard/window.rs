//! The dashboard's window, its single instance and its status events.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idlemesh_agent::control::{self, ControlError, Request};
use idlemesh_agent::paths;
use idlemesh_control::{AgentStatus, StartProblem, State};
use serde::de::DeserializeOwned;
use tauri::{AppHandle, Emitter as _, Manager as _, WebviewUrl, WebviewWindowBuilder};

pub const WINDOW: &str = "dashboard";

/// How long a silent socket reads as an agent still starting (the tray
/// starts this process as it starts its agent; "Try again" restarts it).
const STARTING_GRACE: Duration = Duration::from_secs(10);

/// A refusal the dashboard branches on by `code` (docs/app-ipc.md): the
/// agent's [`ErrorCode`](idlemesh_control::ErrorCode)s, and the shell's own
/// (`not_running`, `control_socket`, `socket_not_private`…).
#[derive(Debug, serde::Serialize)]
pub struct CommandError {
    pub code: String,
    pub message: String,
}

impl CommandError {
    pub fn new(code: &str, message: impl std::fmt::Display) -> Self {
        Self { code: code.into(), message: message.to_string() }
    }

    fn from_control(e: ControlError) -> Self {
        let code = match &e {
            ControlError::Refused { code, message } => {
                let code = serde_json::to_value(code).ok().and_then(|c| c.as_str().map(str::to_owned));
                return Self { code: code.unwrap_or_else(|| "unknown".into()), message: message.clone() };
            }
            ControlError::NotRunning { .. } => "not_running",
            ControlError::NotPrivate { .. } => "socket_not_private",
            ControlError::AlreadyRunning { .. } | ControlError::Io { .. } => "control_socket",
            ControlError::BadAnswer(_) => "other",
        };
        Self::new(code, e)
    }
}

/// What the commands share: where the agent listens and where its files are.
pub struct Dashboard {
    socket: PathBuf,
    pub data_dir: PathBuf,
    starting_until: Mutex<Instant>,
}

impl Dashboard {
    fn new() -> Self {
        Self {
            socket: control::socket_path(),
            data_dir: paths::data_dir(),
            starting_until: Mutex::new(Instant::now() + STARTING_GRACE),
        }
    }

    /// One request to the agent over its socket, its answer typed.
    pub async fn request<T: DeserializeOwned>(&self, request: Request) -> Result<T, CommandError> {
        control::ask(&self.socket, &request).await.map_err(CommandError::from_control)
    }

    /// The agent's status, or a status-shaped explanation of why there is
    /// none (the stopped agent's own reason comes from the tray, which
    /// answers on the socket in its place).
    pub async fn status(&self) -> AgentStatus {
        match control::status(&self.socket).await {
            Ok(status) => status,
            Err(ControlError::NotRunning { .. }) if Instant::now() < *self.starting_until.lock().expect("lock") => {
                AgentStatus::not_running(State::Starting, None, None, &self.data_dir)
            }
            Err(e) => {
                let code = match e {
                    ControlError::NotRunning { .. } => StartProblem::NotRunning,
                    ControlError::NotPrivate { .. } => StartProblem::SocketNotPrivate,
                    ControlError::AlreadyRunning { .. } | ControlError::Io { .. } => StartProblem::ControlSocket,
                    ControlError::Refused { .. } | ControlError::BadAnswer(_) => StartProblem::Other,
                };
                AgentStatus::not_running(State::Error, Some(code), Some(e.to_string()), &self.data_dir)
            }
        }
    }

    /// An agent is about to start (the tray was launched, or asked to try
    /// again): silence means "starting" for a while again.
    pub fn expect_start(&self) {
        *self.starting_until.lock().expect("lock") = Instant::now() + STARTING_GRACE;
    }
}

pub fn run() -> ExitCode {
    // GDK's GL off as in the tray (whose setting the dashboard it starts
    // inherits; this covers a dashboard started on its own), and with it
    // the GL driver WebKit would load here only to look for a GPU.
    #[cfg(target_os = "linux")]
    {
        crate::gl::keep_gl_out_of_gtk();
        crate::webkit_gl::keep_gl_out_of_webkit();
    }
    idlemesh_agent::init_logging("info", Some("dashboard"));
    rustls::crypto::ring::default_provider().install_default().ok();
    let dashboard = Arc::new(Dashboard::new());
    let app = tauri::Builder::default()
        // A second "Open dashboard" brings this window forward.
        .plugin(tauri_plugin_single_instance::init(|app, _args, _cwd| focus(app)))
        .manage(dashboard.clone())
        .invoke_handler(crate::commands::handler())
        // The window is the process: closed, it ends (without waiting for
        // Tauri's "last window closed").
        .on_window_event(|window, event| {
            if matches!(event, tauri::WindowEvent::CloseRequested { .. } | tauri::WindowEvent::Destroyed) {
                window.app_handle().exit(0);
            }
        })
        .setup(move |app| {
            open_window(app.handle())?;
            status_loop(app.handle().clone(), dashboard.clone());
            Ok(())
        })
        .build(context());
    match app {
        Ok(app) => {
            app.run(|_, _| {});
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("idlemesh-dashboard: cannot start: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The app's configuration and assets. The dashboard has an identifier of
/// its own, so that its single instance (a second "Open" brings its window
/// forward) is apart from the tray's.
fn context() -> tauri::Context {
    let mut context = tauri::generate_context!();
    context.config_mut().identifier.push_str(".dashboard");
    context
}

fn open_window(app: &AppHandle) -> tauri::Result<()> {
    WebviewWindowBuilder::new(app, WINDOW, WebviewUrl::App("index.html".into()))
        .title("Idlemesh")
        .inner_size(1040.0, 740.0)
        .min_inner_size(420.0, 360.0)
        // Ctrl+= / Ctrl+- / Ctrl+0 and Ctrl+wheel: the dashboard must be
        // readable at 200 %, so the user needs a way to get there.
        .zoom_hotkeys_enabled(true)
        .build()?;
    Ok(())
}

/// Brings the open window forward for a second "Open": only what is
/// needed. Presenting a window that already has the focus is not needed,
/// and under Xvfb without a window manager it made GTK drop the window's
/// next close requests (tests/app/tray.rs); with a window manager it was
/// not seen, and is not tested here.
fn focus(app: &AppHandle) {
    let Some(window) = app.get_webview_window(WINDOW) else { return };
    if window.is_minimized().unwrap_or(false) {
        let _ = window.unminimize();
    }
    if !window.is_visible().unwrap_or(true) {
        let _ = window.show();
    }
    if !window.is_focused().unwrap_or(false) {
        let _ = window.set_focus();
    }
}

/// The `status` event, about once a second while the window is open.
fn status_loop(app: AppHandle, dashboard: Arc<Dashboard>) {
    tauri::async_runtime::spawn(async move {
        loop {
            let status = dashboard.status().await;
            if let Some(window) = app.get_webview_window(WINDOW) {
                let _ = window.emit("status", &status);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}
