//! The tray icon and its menu: the state in words, pause for a chosen time
//! (or the GPU's or the processor's work alone), resume, the dashboard, quit. The icon's colour is the state at a glance.

use std::sync::Arc;

use idlemesh_control::{AgentStatus, ReasonCode, Scope, StartProblem, State};
use tray_icon::menu::{Menu, MenuEvent, MenuId, MenuItem, PredefinedMenuItem};
use tray_icon::{Icon, TrayIcon, TrayIconBuilder};

use crate::app::{AppState, UserEvent};
use idlemesh_agent::control::Request;

/// The icon and the menu's first line, rewritten as the state changes
/// (on the UI thread, where the tray lives).
pub struct Tray {
    icon: TrayIcon,
    state_line: MenuItem,
    shown: (Option<State>, String),
}

impl Tray {
    /// Builds the icon and its menu; menu clicks arrive as `UserEvent::Menu`.
    pub fn create(proxy: tao::event_loop::EventLoopProxy<UserEvent>) -> Result<Self, String> {
        let state_line = MenuItem::with_id("state", "Idlemesh: starting", false, None);
        let item = |id: &str, text: &str| MenuItem::with_id(id, text, true, None);
        let menu = Menu::with_items(&[
            &state_line,
            &PredefinedMenuItem::separator(),
            &item("pause-15m", "Pause for 15 minutes"),
            &item("pause-1h", "Pause for 1 hour"),
            &item("pause-tomorrow", "Pause until tomorrow"),
            &item("pause-indefinitely", "Pause until I resume"),
            &item("pause-gpu", "Pause GPU work only"),
            &item("pause-cpu", "Pause processor work only"),
            &item("resume", "Resume"),
            &PredefinedMenuItem::separator(),
            &item("open", "Open dashboard"),
            &item("quit", "Quit Idlemesh"),
        ])
        .map_err(|e| e.to_string())?;
        MenuEvent::set_event_handler(Some(move |event: MenuEvent| {
            let _ = proxy.send_event(UserEvent::Menu(event.id));
        }));
        let icon = TrayIconBuilder::new()
            .with_id("idlemesh")
            .with_icon(icon(State::Starting))
            .with_tooltip("Idlemesh: starting")
            .with_menu(Box::new(menu))
            .with_menu_on_left_click(true)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { icon, state_line, shown: Default::default() })
    }

    pub fn update(&mut self, status: &AgentStatus) {
        let state = status.state;
        let words = words(status);
        if self.shown.1 != words {
            self.state_line.set_text(format!("Idlemesh: {words}"));
            let _ = self.icon.set_tooltip(Some(format!("Idlemesh: {words}")));
        }
        if self.shown.0 != Some(state) {
            let _ = self.icon.set_icon(Some(icon(state)));
        }
        self.shown = (Some(state), words);
    }
}

/// What a menu item does. Pauses go to the agent from a plain thread: the
/// UI thread must not wait for it, and the agent freezes the worker before
/// it answers.
pub fn on_menu(state: &Arc<AppState>, id: &MenuId, proxy: &tao::event_loop::EventLoopProxy<UserEvent>) {
    let request = match id.as_ref() {
        "open" => return crate::app::open(state),
        "quit" => {
            let _ = proxy.send_event(UserEvent::Quit);
            return;
        }
        "resume" => Request::Resume { only: Scope::All },
        // One kind of work, until resumed (the other goes on).
        "pause-gpu" => Request::Pause { duration: None, only: Scope::Gpu },
        "pause-cpu" => Request::Pause { duration: None, only: Scope::Cpu },
        pause => match pause.strip_prefix("pause-") {
            Some(duration) => Request::Pause { duration: Some(duration.to_string()), only: Scope::All },
            None => return,
        },
    };
    let state = state.clone();
    let id = id.as_ref().to_owned();
    std::thread::spawn(move || match state.request_now(request) {
        Ok(_) => tracing::info!(item = id, "tray menu"),
        Err(refused) => tracing::warn!(item = id, error = %refused.message, "tray menu action refused"),
    });
}

/// The state in a few words, for the menu and the tooltip.
pub fn words(status: &AgentStatus) -> String {
    // The reasons whose agent text is for whoever manages the machine are
    // said plainly (as on the dashboard, ui/src/lib/problems.ts).
    let first_reason = || match status.reasons.first() {
        Some(r) if r.code == ReasonCode::PresenceUnknown => "cannot tell whether you are at this computer".to_string(),
        Some(r) if r.code == ReasonCode::SandboxMissing => {
            "tasks cannot be walled off here as strictly as required".to_string()
        }
        Some(r) if r.code == ReasonCode::PolicyUnreadable => "your organisation's settings cannot be read".to_string(),
        Some(r) => r.text.clone(),
        None => String::new(),
    };
    match status.state {
        State::Working => "Working for the pool".into(),
        State::WaitingForWork => "Waiting for work from the pool".into(),
        State::Paused => format!("Paused: {}", first_reason()),
        State::NoPool => "Not connected to a pool".into(),
        State::Connecting => "Connecting to the pool".into(),
        State::Error => format!("Not running: {}. Open the dashboard to fix it", failure_words(status.error_code)),
        State::Starting => "Starting".into(),
    }
}

/// Why the agent is not running, in a few words (the dashboard has the
/// whole explanation and the fix).
fn failure_words(code: Option<StartProblem>) -> &'static str {
    match code {
        Some(StartProblem::KeyringRefused) => "the keyring is locked or refused",
        Some(StartProblem::NoKeyring) => "no keyring to keep its key",
        Some(StartProblem::KeyringDamaged) => "its key in the keyring is damaged",
        Some(StartProblem::KeyringSetting) => "an unknown keyring was chosen",
        Some(StartProblem::AlreadyRunning) => "it is already running",
        Some(StartProblem::SocketNotPrivate) => "its private folder belongs to someone else",
        Some(StartProblem::DataDir) => "it cannot save its data",
        _ => "it could not start",
    }
}

/// A 32×32 disc in the state's colour: green working, amber waiting, grey
/// paused, red for a problem.
fn icon(state: State) -> Icon {
    let (r, g, b) = match state {
        State::Working => (46, 160, 67),
        State::WaitingForWork | State::Connecting | State::NoPool => (210, 153, 34),
        State::Paused => (110, 118, 129),
        State::Error => (207, 34, 46),
        State::Starting => (150, 150, 150),
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
    Icon::from_rgba(rgba, N as u32, N as u32).expect("a 32×32 RGBA image")
}
