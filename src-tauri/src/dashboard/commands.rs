//! The dashboard's IPC commands (docs/app-ipc.md): each one request to the
//! agent over its control socket, or a read of the agent's ledger file.

use std::path::PathBuf;
use std::sync::Arc;

use idlemesh_agent::control::Request;
use idlemesh_control::{
    AgentStatus, LedgerEntry, LedgerExport, LedgerRecord, LedgerSummary, LedgerVerified, LentNow, Paused, PoolEntry,
    PoolUrl, Retried, Scope, SettingChanged, SettingSpec, SettingsReset,
};
use serde_json::{Value, json};
use tauri::State;

type AgentState = idlemesh_control::State;

use crate::programs::{TRAY, beside};
use crate::window::{CommandError, Dashboard};

type Result<T> = std::result::Result<T, CommandError>;
type S<'a> = State<'a, Arc<Dashboard>>;

pub fn handler() -> impl Fn(tauri::ipc::Invoke) -> bool + Send + Sync + 'static {
    tauri::generate_handler![
        status,
        pause,
        resume,
        settings_set,
        settings_schema,
        ledger_entries,
        ledger_summary,
        ledger_verify,
        ledger_export,
        pools,
        pool_join,
        pool_leave,
        demo_start,
        demo_start_now,
        app_info,
        first_run_dismiss,
        agent_retry,
        settings_reset,
        autostart_set,
    ]
}

#[tauri::command]
async fn status(state: S<'_>) -> Result<AgentStatus> {
    Ok(state.status().await)
}

/// `only`: one kind of work (`cpu` or `gpu`); absent: all of it.
#[tauri::command]
async fn pause(state: S<'_>, duration: Option<String>, only: Option<Scope>) -> Result<Paused> {
    state.request(Request::Pause { duration, only: only.unwrap_or_default() }).await
}

#[tauri::command]
async fn resume(state: S<'_>, only: Option<Scope>) -> Result<Paused> {
    state.request(Request::Resume { only: only.unwrap_or_default() }).await
}

#[tauri::command]
async fn settings_set(state: S<'_>, key: String, value: String) -> Result<SettingChanged> {
    state.request(Request::SettingsSet { key, value }).await
}

/// What each setting accepts, its default and whether it is locked: the
/// agent's own schema, so the page has no copy of it.
#[tauri::command]
async fn settings_schema(state: S<'_>) -> Result<Vec<SettingSpec>> {
    state.request(Request::SettingsSchema).await
}

#[tauri::command]
async fn pools(state: S<'_>) -> Result<Vec<PoolEntry>> {
    state.request(Request::Pools).await
}

#[tauri::command]
async fn pool_join(state: S<'_>, url: String, token: Option<String>) -> Result<PoolUrl> {
    state.request(Request::PoolJoin { url, token, temporary: false }).await
}

#[tauri::command]
async fn pool_leave(state: S<'_>, url: String) -> Result<PoolUrl> {
    state.request(Request::PoolLeave { url }).await
}

#[tauri::command]
async fn ledger_entries(state: S<'_>, kind: Option<String>, limit: Option<usize>) -> Result<Vec<LedgerRecord>> {
    state.request(Request::LedgerEntries { kind, limit }).await
}

#[tauri::command]
async fn ledger_summary(state: S<'_>) -> Result<LedgerSummary> {
    state.request(Request::LedgerSummary).await
}

#[tauri::command]
async fn ledger_verify(state: S<'_>) -> Result<LedgerVerified> {
    state.request(Request::LedgerVerify).await
}

/// Writes the whole ledger, as the agent exports it, to the Downloads
/// folder (else the data dir).
#[tauri::command]
async fn ledger_export(state: S<'_>, format: String) -> Result<Value> {
    let ext = if format == "csv" { "csv" } else { "json" };
    let export: LedgerExport = state.request(Request::LedgerExport { format }).await?;
    let dir = directories::UserDirs::new()
        .and_then(|d| d.download_dir().map(ToOwned::to_owned))
        .filter(|d| d.is_dir())
        .unwrap_or_else(|| state.data_dir.clone());
    let stem = format!("idlemesh-ledger-{}", jiff::Zoned::now().strftime("%Y%m%d-%H%M%S"));
    let path = tauri::async_runtime::spawn_blocking(move || write_new_file(&dir, &stem, ext, export.text.as_bytes()))
        .await
        .map_err(|e| CommandError::new("internal", e))?
        .map_err(|e| CommandError::new("io", e))?;
    Ok(json!({"path": path, "entries": export.entries}))
}

/// Writes `dir/stem.ext`, or `stem-2.ext`, `stem-3.ext`… if that exists: two
/// exports in one second must not overwrite each other (or anything else).
fn write_new_file(dir: &std::path::Path, stem: &str, ext: &str, bytes: &[u8]) -> std::result::Result<PathBuf, String> {
    use std::io::Write as _;
    for n in 1..1000 {
        let name = if n == 1 { format!("{stem}.{ext}") } else { format!("{stem}-{n}.{ext}") };
        let path = dir.join(name);
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut file) => {
                return match file.write_all(bytes).and_then(|()| file.sync_all()) {
                    Ok(()) => Ok(path),
                    Err(e) => {
                        // A half-written export is worse than none: it looks complete.
                        let _ = std::fs::remove_file(&path);
                        Err(format!("writing {}: {e}", path.display()))
                    }
                };
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("creating {}: {e}", path.display())),
        }
    }
    Err(format!("{} already holds 999 exports named {stem}", dir.display()))
}

/// Starts the tray's demo pool with a fresh job and joins it.
#[tauri::command]
async fn demo_start(state: S<'_>) -> Result<PoolUrl> {
    state.request(Request::DemoStart).await
}

/// The demo's "Start now": work for the demo pool at once, present or not.
#[tauri::command]
async fn demo_start_now(state: S<'_>) -> Result<LentNow> {
    state.request(Request::LendNow).await
}

/// Starts the agent again once the user fixed why it could not start: the
/// tray answers for its stopped agent; with no tray at all, the app is
/// started (it starts its agent).
#[tauri::command]
async fn agent_retry(state: S<'_>) -> Result<Retried> {
    match state.request::<Retried>(Request::AgentRetry).await {
        Ok(answer) => {
            if answer.restarted {
                state.expect_start();
            }
            Ok(answer)
        }
        Err(e) if e.code == "not_running" => {
            let exe = beside(TRAY).map_err(|e| CommandError::new("internal", e))?;
            let mut tray = std::process::Command::new(exe)
                .stdin(std::process::Stdio::null())
                .spawn()
                .map_err(|e| CommandError::new("io", format!("cannot start Idlemesh: {e}")))?;
            std::thread::spawn(move || tray.wait());
            state.expect_start();
            Ok(Retried { restarted: true })
        }
        Err(e) => Err(e),
    }
}

/// "Not now" on the demo offer: not offered again.
#[tauri::command]
async fn first_run_dismiss(state: S<'_>) -> Result<Value> {
    let path = state.data_dir.join(APP_STATE);
    tauri::async_runtime::spawn_blocking(move || {
        let mut saved = read_app_state(&path);
        saved["first_run_dismissed"] = true.into();
        // Makes the data dir too, if the agent has not yet.
        idlemesh_agent::settings::write_atomically(&path, saved.to_string().as_bytes())
            .map_err(|e| CommandError::new("io", format!("cannot remember \"Not now\" in {}: {e}", path.display())))
    })
    .await
    .map_err(|e| CommandError::new("internal", e))??;
    Ok(json!({"first_run": false}))
}

/// Moves an unreadable settings file aside (kept beside it, renamed) so
/// the defaults apply: the agent does it, and notices at once.
#[tauri::command]
async fn settings_reset(state: S<'_>) -> Result<SettingsReset> {
    state.request(Request::SettingsReset).await
}

/// The app's own memory (not settings): `{"first_run_dismissed": true}`.
const APP_STATE: &str = "app.json";

/// What the app remembered; nothing if the file is missing or unreadable
/// (it holds only a courtesy, so nothing is lost by starting over).
fn read_app_state(path: &std::path::Path) -> Value {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}))
}

/// Whether the ledger shows any past with a pool (a disclosure, a task, a
/// receipt...): the pauses and resumptions the agent records from its first
/// second on do not count. A ledger the agent cannot read counts as "not
/// new": the Ledger page reports it.
async fn ledger_has_history(state: &Dashboard) -> bool {
    let newest: Result<Vec<LedgerRecord>> =
        state.request(Request::LedgerEntries { kind: None, limit: Some(10_000) }).await;
    newest.map_or(true, |entries| {
        entries.iter().any(|e| !matches!(e.entry, LedgerEntry::Paused(_) | LedgerEntry::Resumed(_)))
    })
}

#[tauri::command]
async fn app_info(state: S<'_>) -> Result<Value> {
    // The pools and settings are the agent's to tell: wait for it to be
    // up (or to have failed) rather than guess from a starting agent.
    let mut status = state.status().await;
    for _ in 0..100 {
        if status.state != AgentState::Starting {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        status = state.status().await;
    }
    let running = !matches!(status.state, AgentState::Starting | AgentState::Error);
    let first_run = if running {
        let pools: Vec<PoolEntry> = state.request(Request::Pools).await.unwrap_or_default();
        let no_pool = pools.is_empty() && status.settings.get("pool_url").is_none_or(|v| v.value.is_none());
        let dismissed = {
            let path = state.data_dir.join(APP_STATE);
            tauri::async_runtime::spawn_blocking(move || read_app_state(&path)["first_run_dismissed"] == true)
                .await
                .unwrap_or(false)
        };
        no_pool && !dismissed && !ledger_has_history(&state).await
    } else {
        // A stopped agent cannot run the demo: its problem is shown instead,
        // and the page asks again once it runs.
        false
    };
    Ok(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "first_run": first_run,
        "autostart": autostart().is_ok_and(|a| a.is_enabled().unwrap_or(false)),
        "demo_url": status.temporary_pool,
        "kernel_access": {
            "allowed": idlemesh_runtime::access::ALLOWED,
            "denied": idlemesh_runtime::access::DENIED,
        },
    }))
}

/// Start at login, for the tray (not this window): the entry names the
/// tray program beside this one. Named "Idlemesh", as Tauri's autostart
/// plugin named it before, so an entry made then is the same entry.
fn autostart() -> Result<auto_launch::AutoLaunch> {
    let tray = beside(TRAY).map_err(|e| CommandError::new("internal", e))?;
    let mut builder = auto_launch::AutoLaunchBuilder::new();
    builder.set_app_name("Idlemesh").set_app_path(&tray.display().to_string());
    #[cfg(target_os = "macos")]
    builder.set_macos_launch_mode(auto_launch::MacOSLaunchMode::LaunchAgent);
    builder.build().map_err(|e| CommandError::new("io", format!("cannot set up start at login: {e}")))
}

#[tauri::command]
async fn autostart_set(enabled: bool) -> Result<Value> {
    let launcher = autostart()?;
    let result = if enabled { launcher.enable() } else { launcher.disable() };
    result.map_err(|e| CommandError::new("io", format!("cannot change start at login: {e}")))?;
    Ok(json!({"autostart": launcher.is_enabled().unwrap_or(enabled)}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_in_the_same_second_never_overwrite_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let first = write_new_file(dir.path(), "idlemesh-ledger-x", "csv", b"one").unwrap();
        let second = write_new_file(dir.path(), "idlemesh-ledger-x", "csv", b"two").unwrap();
        assert_eq!(first.file_name().unwrap(), "idlemesh-ledger-x.csv");
        assert_eq!(second.file_name().unwrap(), "idlemesh-ledger-x-2.csv");
        assert_eq!(std::fs::read(&first).unwrap(), b"one");
        assert_eq!(std::fs::read(&second).unwrap(), b"two");
        let missing = dir.path().join("no-such-dir");
        let err = write_new_file(&missing, "x", "csv", b"").unwrap_err();
        assert!(err.contains("no-such-dir"), "{err}");
    }
}
