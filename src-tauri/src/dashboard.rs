//! The dashboard process (`idlemesh-app dashboard`): one webview window
//! whose commands (`crate::commands`) are requests to the agent over its
//! control socket, the same socket the CLI uses. The tray process starts
//! it; closing the window ends it, and WebKit's memory with it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idlemesh_agent::control::{self, ControlError, Request};
use idlemesh_agent::paths;
use serde_json::Value;
use tauri::{AppHandle, Emitter as _, Manager as _, WebviewUrl, WebviewWindowBuilder};

use crate::app::{CommandError, failure_status};

pub const WINDOW: &str = "dashboard";

/// How long a silent socket reads as an agent still starting (the tray
/// starts this process as it starts its agent; "Try again" restarts it).
const STARTING_GRACE: Duration = Duration::from_secs(10);

/// What the commands share: where the agent listens and where its files are.
pub struct Dashboard {
    socket: PathBuf,
    pub data_dir: PathBuf,
    pub ledger_path: PathBuf,
    starting_until: Mutex<Instant>,
}

impl Dashboard {
    fn new() -> Self {
        Self {
            socket: control::socket_path(),
            data_dir: paths::data_dir(),
            ledger_path: paths::ledger_path(),
            starting_until: Mutex::new(Instant::now() + STARTING_GRACE),
        }
    }

    /// One request to the agent over its socket.
    pub async fn request(&self, request: Request) -> Result<Value, CommandError> {
        control::call(&self.socket, &request).await.map_err(|e| {
            let (code, message) = refusal(e);
            CommandError { code, message }
        })
    }

    /// The agent's status, or a status-shaped explanation of why there is
    /// none (the stopped agent's own reason comes from the tray, which
    /// answers on the socket in its place).
    pub async fn status(&self) -> Value {
        match control::call(&self.socket, &Request::Status).await {
            Ok(status) => status,
            Err(ControlError::NotRunning { .. }) if Instant::now() < *self.starting_until.lock().expect("lock") => {
                failure_status("starting", None, None, &self.data_dir)
            }
            Err(e) => {
                let (code, message) = refusal(e);
                failure_status("error", Some(&code), Some(&message), &self.data_dir)
            }
        }
    }

    /// An agent is about to start (the tray was launched, or asked to try
    /// again): silence means "starting" for a while again.
    pub fn expect_start(&self) {
        *self.starting_until.lock().expect("lock") = Instant::now() + STARTING_GRACE;
    }
}

/// A control error as the dashboard's code and words (docs/app-ipc.md).
fn refusal(e: ControlError) -> (String, String) {
    let code = match e {
        ControlError::Refused { code, message } => return (code, message),
        ControlError::NotRunning { .. } => "not_running",
        ControlError::NotPrivate { .. } => "socket_not_private",
        ControlError::AlreadyRunning { .. } | ControlError::Io { .. } => "control_socket",
        ControlError::BadAnswer(_) => "other",
    };
    (code.to_string(), e.to_string())
}

pub fn run() -> ExitCode {
    idlemesh_agent::logs::init("info", Some("dashboard"));
    rustls::crypto::ring::default_provider().install_default().ok();
    let dashboard = Arc::new(Dashboard::new());
    let app = tauri::Builder::default()
        // A second "Open dashboard" brings this window forward.
        .plugin(tauri_plugin_single_instance::init(|app, _args, _cwd| focus(app)))
        .plugin(tauri_plugin_autostart::init(tauri_plugin_autostart::MacosLauncher::LaunchAgent, None))
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
        .build(crate::context(true));
    match app {
        // Closing the window ends the process (Tauri exits with its last window).
        Ok(app) => {
            app.run(|_, _| {});
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("idlemesh-app dashboard: cannot start: {e}");
            ExitCode::FAILURE
        }
    }
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

fn focus(app: &AppHandle) {
    if let Some(window) = app.get_webview_window(WINDOW) {
        let _ = window.unminimize();
        let _ = window.show();
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
