//! What the agent answers on its control socket, and to the embedding
//! app through [`Control`]: the status, pauses, settings, pools and the
//! ledger's queries.

use serde_json::Value;

use std::path::Path;

use idlemesh_control::{
    AgentStatus, ErrorCode, Files, LedgerExport, LedgerRecord, LedgerVerified, LentNow, Paused, PoolEntry,
    PoolProblemCode, PoolUrl, Refusal, Retried, SensorsStatus, SettingChanged, State, VerifyReport, WorkersStatus,
};

use super::schedule::combine;
use super::{Shared, SlotStatus};
use crate::control::{Handler, Request};
use crate::governor::ManualPause;

/// The embedding app's way in: the same requests as the control socket.
#[derive(Clone)]
pub struct Control(pub(super) std::sync::Arc<Shared>);

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
                let pause = crate::pause::parse(duration.as_deref(), &jiff::Zoned::now())
                    .map_err(|e| Refusal::new(ErrorCode::BadDuration, e.to_string()))?;
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
                answer(crate::ledger::summarise(&entries, &jiff::tz::TimeZone::system()))
            }
            Request::LedgerVerify => answer(self.ledger_verify()?),
            Request::LedgerExport { format } => answer(self.ledger_export(&format)?),
            // Running: nothing to start again.
            Request::AgentRetry => answer(Retried { restarted: false }),
        }
    }
}

impl Shared {
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
            crate::ledger::Ledger::open(self.ledger_path())
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
        // Every task held is of a kind stopped now (the one slot's GPU task,
        // frozen by a GPU pause): the machine is not working for the pool.
        let all_held = watch.as_ref().zip(scheduler.as_ref()).is_some_and(|(w, s)| {
            !s.current_tasks.is_empty() && s.current_tasks.iter().all(|t| !w.decision.kind_runs(t.gpu))
        });
        let problem = self.pool_problem.lock().expect("lock").clone();
        let state = match (&watch, &scheduler) {
            (None, _) => State::Starting,
            _ if paused || all_held => State::Paused,
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
