//! The tray icon and its menu: the state in words, pause for a chosen time,
//! resume, the dashboard, quit. The icon's colour is the state at a glance.

use std::sync::{Arc, Mutex};

use idlemesh_agent::control::Request;
use serde_json::Value;
use tauri::image::Image;
use tauri::menu::{Menu, MenuItem, PredefinedMenuItem};
use tauri::tray::TrayIconBuilder;
use tauri::{AppHandle, Manager as _};

use crate::app::AppState;

const TRAY: &str = "idlemesh";

/// The menu's first line, rewritten as the state changes.
struct StateLine {
    item: MenuItem<tauri::Wry>,
    shown: Mutex<(String, String)>,
}

pub fn create(app: &AppHandle) -> tauri::Result<()> {
    let state_line = MenuItem::with_id(app, "state", "Idlemesh: starting", false, None::<&str>)?;
    let item = |id: &str, text: &str| MenuItem::with_id(app, id, text, true, None::<&str>);
    let menu = Menu::with_items(
        app,
        &[
            &state_line,
            &PredefinedMenuItem::separator(app)?,
            &item("pause-15m", "Pause for 15 minutes")?,
            &item("pause-1h", "Pause for 1 hour")?,
            &item("pause-tomorrow", "Pause until tomorrow")?,
            &item("pause-indefinitely", "Pause until I resume")?,
            &item("resume", "Resume")?,
            &PredefinedMenuItem::separator(app)?,
            &item("open", "Open dashboard")?,
            &item("quit", "Quit Idlemesh")?,
        ],
    )?;
    TrayIconBuilder::with_id(TRAY)
        .icon(icon("starting"))
        .tooltip("Idlemesh: starting")
        .menu(&menu)
        .show_menu_on_left_click(true)
        .on_menu_event(|app, event| on_menu(app, event.id().as_ref()))
        .build(app)?;
    app.manage(StateLine { item: state_line, shown: Mutex::new(Default::default()) });
    Ok(())
}

fn on_menu(app: &AppHandle, id: &str) {
    let request = match id {
        // Off the UI thread: starting a process may wait on the disk.
        "open" => {
            let app = app.clone();
            std::thread::spawn(move || crate::app::open(&app));
            return;
        }
        "quit" => return app.exit(0),
        "resume" => Request::Resume,
        pause => match pause.strip_prefix("pause-") {
            Some(duration) => Request::Pause { duration: Some(duration.to_string()) },
            None => return,
        },
    };
    // Off the UI thread, which must not wait for the agent; the agent
    // freezes the worker before it answers.
    let state = app.state::<Arc<AppState>>().inner().clone();
    let id = id.to_owned();
    std::thread::spawn(move || match state.request_now(request) {
        Ok(_) => tracing::info!(item = id, "tray menu"),
        Err(e) => tracing::warn!(item = id, error = %e.message, "tray menu action refused"),
    });
}

/// The state in a few words, for the menu and the tooltip.
pub fn words(status: &Value) -> String {
    // The reasons whose agent text is for whoever manages the machine are
    // said plainly (as on the dashboard, ui/src/lib/problems.ts).
    let first_reason = || match status["reasons"][0]["code"].as_str() {
        Some("presence_unknown") => "cannot tell whether you are at this computer".to_string(),
        Some("sandbox_missing") => "tasks cannot be walled off here as strictly as required".to_string(),
        Some("policy_unreadable") => "your organisation's settings cannot be read".to_string(),
        _ => status["reasons"][0]["text"].as_str().unwrap_or_default().to_string(),
    };
    match status["state"].as_str().unwrap_or("starting") {
        "working" => "Working for the pool".into(),
        "waiting_for_work" => "Waiting for work from the pool".into(),
        "paused" => format!("Paused: {}", first_reason()),
        "no_pool" => "Not connected to a pool".into(),
        "connecting" => "Connecting to the pool".into(),
        "error" => format!("Not running: {}. Open the dashboard to fix it", failure_words(status)),
        _ => "Starting".into(),
    }
}

/// Why the agent is not running, in a few words (the dashboard has the
/// whole explanation and the fix).
fn failure_words(status: &Value) -> &'static str {
    match status["error_code"].as_str().unwrap_or("other") {
        "keyring_refused" => "the keyring is locked or refused",
        "no_keyring" => "no keyring to keep its key",
        "keyring_damaged" => "its key in the keyring is damaged",
        "keyring_setting" => "an unknown keyring was chosen",
        "already_running" => "it is already running",
        "socket_not_private" => "its private folder belongs to someone else",
        "data_dir" => "it cannot save its data",
        _ => "it could not start",
    }
}

pub fn update(app: &AppHandle, status: &Value) {
    let Some(line) = app.try_state::<StateLine>() else { return };
    let state = status["state"].as_str().unwrap_or("starting").to_string();
    let words = words(status);
    // Decide under the lock, change the tray after it: the changes wait for
    // the UI thread, and nothing should wait while holding a lock.
    let (new_words, new_icon) = {
        let mut shown = line.shown.lock().expect("lock");
        let changes = (shown.1 != words, shown.0 != state);
        *shown = (state.clone(), words.clone());
        changes
    };
    if new_words {
        let _ = line.item.set_text(format!("Idlemesh: {words}"));
        if let Some(tray) = app.tray_by_id(TRAY) {
            let _ = tray.set_tooltip(Some(format!("Idlemesh: {words}")));
        }
    }
    if new_icon && let Some(tray) = app.tray_by_id(TRAY) {
        let _ = tray.set_icon(Some(icon(&state)));
    }
}

/// A 32×32 disc in the state's colour: green working, amber waiting, grey
/// paused, red for a problem.
fn icon(state: &str) -> Image<'static> {
    let (r, g, b) = match state {
        "working" => (46, 160, 67),
        "waiting_for_work" | "connecting" | "no_pool" => (210, 153, 34),
        "paused" => (110, 118, 129),
        "error" => (207, 34, 46),
        _ => (150, 150, 150),
    };
    const N: usize = 32;
    let mut rgba = vec![0u8; N * N * 4];
    let c = (N as f32 - 1.0) / 2.0;
    for y in 0..N {
        for x in 0..N {
            let d = ((x as f32 - c).powi(2) + (y as f32 - c).powi(2)).sqrt();
            // Anti-aliased edge: one pixel of falloff.
            let alpha = (c + 0.5 - d).clamp(0.0, 1.0);
            let i = (y * N + x) * 4;
            rgba[i..i + 4].copy_from_slice(&[r, g, b, (alpha * 255.0) as u8]);
        }
    }
    Image::new_owned(rgba, N as u32, N as u32)
}
