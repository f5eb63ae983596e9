//! `idlemesh agent` as a user runs it: a real daemon process with its
//! settings file, an IT policy file, the kernel keyring for its device key,
//! its control socket, and `idlemesh status|pause|resume|settings` talking
//! to it; under Xvfb, real input from xdotool; under KWin (Wayland), input
//! through KWin's fake-input protocol.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::agent_process::{AgentProcess, Kwin, Mutter, Xvfb, proc_state, run_under, write_settings};
use crate::harness::{OperatorHttp, PoolProcess};

fn worker_pid(s: &Value) -> Option<u64> {
    s["workers"]["pids"].as_array()?.first()?.as_u64()
}

fn slow_job() -> Value {
    // Inside the set every pixel runs to max_iter: a few seconds per tile,
    // so a task is running when we look.
    json!({
        "name": "agent", "params": {"width": 160, "height": 120, "max_iter": 400000, "center_re": -0.2, "center_im": 0.0, "span": 0.4},
        "split": {"kind": "tiles", "width": 160, "height": 120, "tile_width": 80, "tile_height": 60},
        "combiner": {"kind": "png_tiles"}, "lease_ms": 600000,
    })
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Ensures a frozen worker really uses no CPU: its ticks do not move.
fn assert_frozen(pid: u64) {
    let (state, before) = proc_state(pid).expect("worker alive");
    assert_eq!(state, 'T', "the worker is stopped");
    std::thread::sleep(Duration::from_millis(300));
    let (state, after) = proc_state(pid).expect("worker alive");
    assert_eq!((state, after), ('T', before), "a frozen worker consumes no CPU");
}

fn assert_running(pid: u64) {
    let (_, before) = proc_state(pid).expect("worker alive");
    std::thread::sleep(Duration::from_millis(300));
    let (state, after) = proc_state(pid).expect("worker alive");
    assert_ne!(state, 'T');
    assert!(after > before, "a thawed worker computes again ({before} → {after} ticks)");
}

#[test]
fn pause_resume_settings_and_a_locked_policy_through_the_control_socket() {
    let tmp = tempfile::tempdir().unwrap();
    // A payout the operator mistyped is refused, naming it.
    let out = crate::harness::idlemesh(
        tmp.path(),
        &["pool", "serve", "--payout-per-credit", "0", "--payout-currency", "EUR", "--listen", "127.0.0.1:0"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("payout per credit 0 is not a positive amount"), "{}", stderr(&out));
    let pool = PoolProcess::start_paying(&tmp.path().join("pool"), "0.25", "EUR");
    let op = OperatorHttp::new(&pool.url, &pool.token);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (job, _tasks) = rt.block_on(op.mandelbrot_job(slow_job()));

    let dir = tmp.path().join("agent");
    write_settings(&dir, "cpu_duty_cycle_percent = 100\ncpu_cores = 2\n");
    std::fs::write(dir.join("policy.toml"), "[locked]\nmin_battery_percent = 90\n[defaults]\ngpu_enabled = false\n")
        .unwrap();
    let agent = AgentProcess::start(&dir, Some(&pool.url), &[]);

    let s = agent.status();
    assert_eq!(s["settings"]["min_battery_percent"], json!({"value": 90, "source": "policy", "locked": true}));
    assert_eq!(s["settings"]["cpu_duty_cycle_percent"]["source"], "user");
    assert_eq!(s["settings"]["idle_minutes"]["source"], "default");
    assert_eq!(s["sensors"]["idle_source"], "none");

    // Two cores allowed: two tasks side by side, each in its own worker.
    let s = agent.wait_for("two tasks to run", Duration::from_secs(60), |s| {
        s["workers"]["pids"].as_array().is_some_and(|p| p.len() == 2) && s["state"] == "working"
    });
    assert_eq!(s["scheduler"]["slots"], 2);
    let pids: Vec<u64> = s["workers"]["pids"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap()).collect();
    assert_ne!(pids[0], pids[1]);
    let pid = pids[0];
    assert_running(pid);
    // The kernel reports its rows as it goes, and status passes that on.
    agent.wait_for("a task to report progress", Duration::from_secs(30), |s| {
        s["scheduler"]["current_tasks"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["progress"].as_f64().is_some_and(|p| p > 0.0 && p <= 1.0)))
    });

    // Pause: the workers are frozen by the time the command returns.
    let out = agent.ctl(&["pause", "1h"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(proc_state(pids[1]).unwrap().0, 'T', "every worker is frozen");
    assert_eq!(proc_state(pid).unwrap().0, 'T', "frozen when `pause` returns: {:#}", agent.status());
    assert_frozen(pid);
    let s = agent.status();
    assert_eq!(s["state"], "paused");
    assert_eq!(s["reasons"][0]["code"], "paused_by_user", "{s}");
    assert!(s["reasons"][0]["text"].as_str().unwrap().starts_with("paused by you until "), "{s}");

    // Human-readable status says why.
    let out = agent.ctl(&["status"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("paused by you until"));

    let out = agent.ctl(&["resume"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_running(pid);

    // Bad input to the commands: exit 2 with the reason.
    let out = agent.ctl(&["pause", "a while"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("not a pause length"), "{}", stderr(&out));
    let out = agent.ctl(&["settings", "set", "cpu_duty_cycle_percent", "250"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("`cpu_duty_cycle_percent` = 250"), "{}", stderr(&out));

    // Malformed and unknown requests on the socket itself get a clear error, and the agent carries on.
    {
        use std::io::{BufRead as _, Write as _};
        let mut sock = std::os::unix::net::UnixStream::connect(dir.join("agent.sock")).unwrap();
        sock.write_all(b"this is not json\n{\"command\":\"format_disk\"}\n").unwrap();
        let mut lines = std::io::BufReader::new(sock).lines();
        for _ in 0..2 {
            let answer: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
            assert_eq!(answer["ok"], false);
            assert_eq!(answer["error"]["code"], "bad_request");
            assert!(answer["error"]["message"].as_str().unwrap().contains("expected one of status, pause"), "{answer}");
        }
        // The tray app's requests: a headless agent has no demo pool to
        // start, and, running, nothing to start again.
        let mut sock = std::os::unix::net::UnixStream::connect(dir.join("agent.sock")).unwrap();
        sock.write_all(b"{\"command\":\"demo_start\"}\n{\"command\":\"agent_retry\"}\n").unwrap();
        let mut lines = std::io::BufReader::new(sock).lines();
        let demo: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(demo["error"]["code"], "bad_request", "{demo}");
        assert!(demo["error"]["message"].as_str().unwrap().contains("no demo pool"), "{demo}");
        let retry: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(retry["result"]["restarted"], false, "{retry}");
    }

    // The one typed API: the status reads as the control API's type, and
    // the settings schema is served with each key's range, default and lock.
    {
        let socket = dir.join("agent.sock");
        let typed = rt.block_on(idlemesh_agent::control::status(&socket)).expect("the status is an AgentStatus");
        use idlemesh_control::State;
        assert!(matches!(typed.state, State::Working | State::WaitingForWork), "{typed:?}");
        assert_eq!(serde_json::to_value(&typed).unwrap()["settings"], agent.status()["settings"], "nothing lost");
        let schema: Vec<idlemesh_control::SettingSpec> =
            rt.block_on(idlemesh_agent::control::ask(&socket, &idlemesh_control::Request::SettingsSchema)).unwrap();
        let battery = schema.iter().find(|s| s.key == "min_battery_percent").expect("the schema names it");
        assert_eq!(battery.kind, idlemesh_control::SettingKind::Int { min: 0, max: 100 });
        assert_eq!(serde_json::to_value(&battery.default).unwrap(), json!(80));
        assert!(battery.locked, "{battery:?}");
        assert!(battery.locked_by.as_deref().is_some_and(|p| p.ends_with("policy.toml")), "{battery:?}");
        let duty = schema.iter().find(|s| s.key == "cpu_duty_cycle_percent").unwrap();
        assert!(!duty.locked && duty.locked_by.is_none(), "{duty:?}");
        assert!(!duty.help.is_empty() && !duty.label.is_empty());

        // The ledger over the same socket, typed: the enrollment's
        // disclosure and the pause above, a chain that verifies, an export.
        use idlemesh_control::{LedgerEntry, LedgerExport, LedgerRecord, LedgerVerified, Request};
        let ask = |r: Request| rt.block_on(idlemesh_agent::control::call(&socket, &r)).unwrap();
        let newest: Vec<LedgerRecord> = serde_json::from_value(ask(Request::LedgerEntries { kind: None, limit: None }))
            .expect("ledger entries are LedgerRecords");
        assert!(newest.windows(2).all(|w| w[0].seq > w[1].seq), "newest first");
        let disclosure = newest.iter().find_map(|e| match &e.entry {
            LedgerEntry::Disclosure(d) => Some(d),
            _ => None,
        });
        let disclosure = disclosure.expect("the enrollment is disclosed");
        assert_eq!(disclosure.pool, pool.url);
        assert_eq!(disclosure.purpose.as_deref(), Some("enrollment"));
        assert!(disclosure.fields.contains_key("cores"), "{disclosure:?}");
        assert!(newest.iter().all(|e| !matches!(e.entry, LedgerEntry::Unreadable(_))), "every entry reads");
        let paused: Vec<LedgerRecord> =
            serde_json::from_value(ask(Request::LedgerEntries { kind: Some("paused".into()), limit: Some(1) }))
                .unwrap();
        assert!(
            matches!(&paused[..], [LedgerRecord { entry: LedgerEntry::Paused(p), .. }]
                if p.reasons.iter().any(|r| r.code == idlemesh_control::ReasonCode::PausedByUser)),
            "{paused:?}"
        );
        let verified: LedgerVerified = serde_json::from_value(ask(Request::LedgerVerify)).unwrap();
        assert!(verified.ok && verified.report.entries >= newest.len() as u64, "{verified:?}");
        assert!(verified.ledger.ends_with("ledger.sqlite"), "{verified:?}");
        let export: LedgerExport = serde_json::from_value(ask(Request::LedgerExport { format: "csv".into() })).unwrap();
        assert!(export.text.starts_with("seq,at,kind,body,prev_hash,hash\n"), "{}", export.text);
        assert!(export.entries >= newest.len());
        let bad = rt.block_on(idlemesh_agent::control::call(&socket, &Request::LedgerExport { format: "xml".into() }));
        assert!(
            matches!(
                &bad,
                Err(idlemesh_agent::control::ControlError::Refused {
                    code: idlemesh_agent::control::ErrorCode::BadValue,
                    ..
                })
            ),
            "{bad:?}"
        );
    }

    // A locked value cannot be changed through idlemesh ...
    let out = agent.ctl(&["settings", "set", "min_battery_percent", "10"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("managed by your organisation"), "{}", stderr(&out));
    // ... nor through the settings file.
    let settings_file = dir.join("config/settings.toml");
    std::fs::write(&settings_file, "cpu_duty_cycle_percent = 100\nmin_battery_percent = 10\n").unwrap();
    let out = agent.ctl(&["settings", "set", "cpu_duty_cycle_percent", "95"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = agent.status();
    assert_eq!(s["settings"]["cpu_duty_cycle_percent"]["value"], 95);
    assert_eq!(s["settings"]["min_battery_percent"]["value"], 90);

    // A bad settings file and a bad policy file: clear errors, last good values kept, agent alive.
    std::fs::write(&settings_file, "cpu_duty_cycle_percent = 500\n").unwrap();
    std::fs::write(dir.join("policy.toml"), "[locked\nmin_battery_percent = 5\n").unwrap();
    let s = agent.wait_for("the settings errors", Duration::from_secs(10), |s| {
        s["settings_errors"].as_array().is_some_and(|e| e.len() == 2)
    });
    let errors = s["settings_errors"].to_string();
    assert!(errors.contains("settings.toml: `cpu_duty_cycle_percent` = 500"), "{errors}");
    assert!(errors.contains("policy.toml: not valid TOML"), "{errors}");
    assert_eq!(s["settings"]["cpu_duty_cycle_percent"]["value"], 95);
    assert_eq!(s["settings"]["min_battery_percent"], json!({"value": 90, "source": "policy", "locked": true}));
    // An unreadable policy stops all work until it is fixed: never "no policy".
    let s = agent.wait_for("the stop for the unreadable policy", Duration::from_secs(10), |s| {
        s["reasons"].as_array().is_some_and(|r| r.iter().any(|r| r["code"] == "policy_unreadable"))
    });
    assert_eq!(s["state"], "paused", "{s:#}");
    assert!(s["policy_errors"][0].as_str().unwrap().starts_with("IT policy unreadable: "), "{s:#}");
    // A policy with one bad key: the bad key is named, every good key stays locked, work goes on.
    std::fs::write(dir.join("policy.toml"), "[locked]\nmin_battery_percent = 90\ncpu_corse = 1\n").unwrap();
    let s = agent.wait_for("the readable policy", Duration::from_secs(10), |s| {
        s["reasons"].as_array().is_some_and(|r| !r.iter().any(|r| r["code"] == "policy_unreadable"))
    });
    assert_eq!(s["settings"]["min_battery_percent"], json!({"value": 90, "source": "policy", "locked": true}));
    let policy_errors = s["policy_errors"].to_string();
    assert!(policy_errors.contains("unknown setting `locked.cpu_corse`"), "{policy_errors}");

    let status = rt.block_on(op.until_finished(job, Duration::from_secs(300)));
    assert_eq!(status["state"], "done", "{status}");
    let out = crate::harness::idlemesh(&dir.join("data"), &["ledger", "verify"]);
    assert!(out.status.success());
    let ledger = idlemesh_agent::Ledger::open(&agent.ledger()).unwrap();
    let paused = ledger.entries(Some("paused")).unwrap();
    assert!(paused.iter().any(|e| e.body.contains("paused_by_user")), "the pause and its reason are in the ledger");
    assert!(!ledger.entries(Some("resumed")).unwrap().is_empty());
    let finished = ledger.entries(Some("task_finished")).unwrap();
    assert!(!finished.is_empty() && finished.iter().all(|e| e.body.contains("\"kernel_sha256\"")), "{finished:?}");

    // The read models the tray shows: totals, per day, per pool, disclosures.
    let out = crate::harness::idlemesh(&dir.join("data"), &["ledger", "show", "--summary", "--json"]);
    assert!(out.status.success());
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let by_pool = &summary["per_pool"][pool.url.as_str()];
    assert!(by_pool["tasks_finished"].as_u64().unwrap() >= 1, "{summary}");
    assert!(by_pool["energy_j"].as_f64().unwrap() > 0.0, "{summary}");
    assert!(by_pool["bytes_in"].as_u64().unwrap() > 0, "{summary}");
    assert_eq!(summary["disclosures"][0]["pool"], pool.url.as_str());
    // The daemon's log is also in a daily file, private to the user, beside its data here.
    let logs = dir.join("data/logs");
    let log_files: Vec<_> = std::fs::read_dir(&logs).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(log_files.len(), 1, "{log_files:?}");
    let log = std::fs::read_to_string(&log_files[0]).unwrap();
    assert!(log.contains("enrolled"), "{log}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&logs).unwrap().permissions().mode() & 0o777, 0o700);
    }
    // What each lease request states is disclosed with the enrollment.
    assert!(summary["disclosures"][0]["fields"]["lease.cores"].is_string(), "{summary}");
    // The pool pays 0.25 EUR a credit: every receipt is valued at it.
    let credits = by_pool["credits"].as_f64().unwrap();
    assert!(credits > 0.0, "{summary}");
    let earned = by_pool["earnings"]["EUR"].as_f64().unwrap();
    assert!((earned - credits * 0.25).abs() < 1e-9, "{summary}");
    assert_eq!(summary["totals"]["earnings"]["EUR"], by_pool["earnings"]["EUR"]);

    // While the settings file is bad, changing a value says so instead of pretending.
    let out = agent.ctl(&["settings", "set", "daily_download_cap_mb", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("`cpu_duty_cycle_percent` = 500"), "{}", stderr(&out));
    std::fs::write(&settings_file, "cpu_duty_cycle_percent = 100\n").unwrap();

    // Today's transfers feed the daily caps: a cap already used up pauses work.
    let out = agent.ctl(&["settings", "set", "daily_download_cap_mb", "0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = agent.ctl(&["resume"]);
    assert!(out.status.success());
    let s = agent.wait_for("the download cap", Duration::from_secs(10), |s| s["paused"] == true);
    assert!(s["reasons"].to_string().contains("download_cap_reached"), "{s}");
    assert!(s["sensors"]["snapshot"]["downloaded_today_bytes"].as_u64().unwrap() > 0, "{s}");
    // ... and holds back the traffic it caps: only lease upkeep may go out.
    assert_eq!(s["decision"]["traffic"], "lease_upkeep", "{s}");
}

#[test]
fn under_xvfb_input_freezes_the_worker_and_idleness_resumes_it() {
    let x = Xvfb::start();
    input_freezes_the_worker_and_idleness_resumes_it(
        &[("DISPLAY", &x.display)],
        "x11-screensaver",
        |n| x.input(n),
        |_| {},
    );
}

/// A window the user brings full screen (EWMH properties on a real X window,
/// as a window manager sets them) stops the worker at once, with the
/// program named, and leaving full screen lets it run again; a program the
/// user listed in `exclusive_programs` does the same while it runs. No
/// input meanwhile: the user stays idle throughout.
#[test]
fn a_full_screen_window_or_an_exclusive_program_stops_work() {
    use x11rb::connection::Connection as _;
    use x11rb::protocol::xproto::{AtomEnum, ConnectionExt as _, CreateWindowAux, PropMode, WindowClass};
    use x11rb::wrapper::ConnectionExt as _;

    let x = Xvfb::start();
    let tmp = tempfile::tempdir().unwrap();
    let pool = PoolProcess::start(&tmp.path().join("pool"));
    let op = OperatorHttp::new(&pool.url, &pool.token);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(op.mandelbrot_job(slow_job()));
    let dir = tmp.path().join("agent");
    write_settings(&dir, "idle_minutes = 0.0333\ncpu_duty_cycle_percent = 100\n");
    let agent = AgentProcess::start(&dir, Some(&pool.url), &[("DISPLAY", &x.display)]);
    let running = |s: &Value| worker_pid(s).is_some() && s["paused"] == false;
    let pid = worker_pid(&agent.wait_for("a task to run", Duration::from_secs(60), running)).unwrap();
    assert_running(pid);

    // A film player's window, focused, then full screen.
    let (conn, screen) = x11rb::rust_connection::RustConnection::connect(Some(&x.display)).unwrap();
    let root = conn.setup().roots[screen].root;
    let atom = |name: &[u8]| conn.intern_atom(false, name).unwrap().reply().unwrap().atom;
    let (active, state, full) =
        (atom(b"_NET_ACTIVE_WINDOW"), atom(b"_NET_WM_STATE"), atom(b"_NET_WM_STATE_FULLSCREEN"));
    let win = conn.generate_id().unwrap();
    let aux = CreateWindowAux::new();
    conn.create_window(0, win, root, 0, 0, 640, 480, 0, WindowClass::INPUT_OUTPUT, 0, &aux).unwrap();
    conn.change_property8(PropMode::REPLACE, win, AtomEnum::WM_CLASS, AtomEnum::STRING, b"mpv\0Mpv\0").unwrap();
    conn.change_property32(PropMode::REPLACE, root, active, AtomEnum::WINDOW, &[win]).unwrap();
    conn.flush().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_running(pid);
    conn.change_property32(PropMode::REPLACE, win, state, AtomEnum::ATOM, &[full]).unwrap();
    conn.flush().unwrap();
    let s = agent.wait_for("full screen to stop work", Duration::from_secs(5), |s| s["paused"] == true);
    assert_eq!(proc_state(pid).unwrap().0, 'T', "{s}");
    let reason = s["reasons"].as_array().unwrap().iter().find(|r| r["code"] == "full_screen").expect("says why");
    assert_eq!(reason["text"], "a full-screen window is in front (Mpv)", "{s}");
    assert_eq!(s["sensors"]["snapshot"]["fullscreen"], "Mpv");
    // Out of full screen: work again (the user is still away).
    conn.change_property32(PropMode::REPLACE, win, state, AtomEnum::ATOM, &[]).unwrap();
    conn.flush().unwrap();
    agent.wait_for("work after full screen", Duration::from_secs(5), running);
    assert_running(pid);

    // A listed program runs: work stops, naming it; it ends: work again.
    let game = tmp.path().join("imtest-game");
    std::fs::copy("/bin/sleep", &game).unwrap();
    let out = agent.ctl(&["settings", "set", "exclusive_programs", "obs, imtest-game"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::thread::sleep(Duration::from_millis(1500));
    assert_running(pid);
    let mut child = Command::new(&game).arg("60").spawn().unwrap();
    let s = agent.wait_for("the program to stop work", Duration::from_secs(5), |s| s["paused"] == true);
    assert_frozen(pid);
    let reason = s["reasons"].as_array().unwrap().iter().find(|r| r["code"] == "exclusive_program").expect("says why");
    assert_eq!(reason["text"], "imtest-game is running, and you asked to lend nothing while it does", "{s}");
    child.kill().unwrap();
    child.wait().unwrap();
    agent.wait_for("work after the program", Duration::from_secs(5), running);
    assert_running(pid);
    // A name with a path is refused, naming it; the list stays.
    let out = agent.ctl(&["settings", "set", "exclusive_programs", "/usr/bin/steam"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("\"/usr/bin/steam\" is not a program name"), "{}", stderr(&out));
    assert_eq!(agent.status()["settings"]["exclusive_programs"]["value"], json!(["obs", "imtest-game"]));
}

/// KWin (headless) offers ext-idle-notify-v1; an X display is given too, as
/// on a Wayland desktop with Xwayland, and must not be used: Xwayland sees
/// only X clients' input.
#[test]
fn under_wayland_input_freezes_the_worker_and_idleness_resumes_it() {
    let x = Xvfb::start();
    let kwin = std::cell::RefCell::new(Kwin::start());
    let socket = kwin.borrow().socket.display().to_string();
    let env = [("WAYLAND_DISPLAY", socket.as_str()), ("DISPLAY", x.display.as_str())];
    let user_idle = |s: &Value| s["sensors"]["snapshot"]["user_idle"]["secs"].as_u64();
    input_freezes_the_worker_and_idleness_resumes_it(
        &env,
        "wayland-ext-idle-notify",
        |n| kwin.borrow_mut().input(n),
        |agent| {
            // The compositor crashes and comes back: meanwhile the user counts
            // as present (not "headless"), then idle time is read again.
            kwin.borrow_mut().stop();
            agent.wait_for("the user to count as present", Duration::from_secs(10), |s| user_idle(s) == Some(0));
            std::thread::sleep(Duration::from_secs(2));
            let s = agent.status();
            assert_eq!(user_idle(&s), Some(0), "still present while the compositor is away: {s}");
            let t0 = Instant::now();
            kwin.borrow_mut().start_again();
            agent.wait_for("idle time from the restarted compositor", Duration::from_secs(30), |s| {
                user_idle(s).is_some_and(|secs| secs >= 1)
            });
            eprintln!("reconnected to the restarted compositor within {:?}", t0.elapsed());
        },
    );
}

#[test]
fn under_gnome_mutter_input_freezes_the_worker_and_idleness_resumes_it() {
    let mutter = std::cell::RefCell::new(Mutter::start());
    let (socket, bus) = {
        let m = mutter.borrow();
        (m.socket.display().to_string(), m.bus.address.clone())
    };
    // Mutter 43 has no ext-idle-notify-v1: the agent falls back to its IdleMonitor.
    let env = [("WAYLAND_DISPLAY", socket.as_str()), ("DBUS_SESSION_BUS_ADDRESS", bus.as_str())];
    let user_idle = |s: &Value| s["sensors"]["snapshot"]["user_idle"]["secs"].as_u64();
    input_freezes_the_worker_and_idleness_resumes_it(
        &env,
        "gnome-mutter-idle-monitor",
        |n| mutter.borrow_mut().input(n),
        |agent| {
            // Mutter restarts: meanwhile the user counts as present, then
            // the sensor follows the new Mutter's watches.
            mutter.borrow_mut().stop();
            agent.wait_for("the user to count as present", Duration::from_secs(10), |s| user_idle(s) == Some(0));
            mutter.borrow_mut().start_again();
            agent.wait_for("idle time from the restarted Mutter", Duration::from_secs(30), |s| {
                user_idle(s).is_some_and(|secs| secs >= 1)
            });
            // And its input is seen again.
            mutter.borrow_mut().input(1);
            agent.wait_for("input on the restarted Mutter", Duration::from_secs(5), |s| user_idle(s) == Some(0));
        },
    );
}

#[test]
fn with_a_display_but_no_idle_sensor_it_cannot_tell_and_does_not_run() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = PoolProcess::start(&tmp.path().join("pool"));
    let op = OperatorHttp::new(&pool.url, &pool.token);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (job, _) = rt.block_on(op.mandelbrot_job(slow_job()));
    let dir = tmp.path().join("agent");
    write_settings(
        &dir,
        "idle_minutes = 0
cpu_duty_cycle_percent = 100
",
    );
    // A display is set, but no X server answers there (and no other sensor does).
    let agent = AgentProcess::start(&dir, Some(&pool.url), &[("DISPLAY", ":87")]);
    let s = agent.status();
    assert_eq!(s["sensors"]["idle_source"], "none", "{s:#}");
    assert_eq!(s["state"], "paused", "{s:#}");
    let reason = s["reasons"].as_array().unwrap().iter().find(|r| r["code"] == "presence_unknown").expect("the reason");
    let text = reason["text"].as_str().unwrap();
    assert!(
        text.starts_with(
            "cannot tell whether you are using this machine (a graphical session is set for this agent (DISPLAY=:87)"
        ),
        "{text}"
    );
    assert!(text.contains("X11 idle time:"), "says why the sensor failed: {text}");
    // Nothing runs meanwhile.
    std::thread::sleep(Duration::from_secs(3));
    assert!(worker_pid(&agent.status()).is_none_or(|pid| proc_state(pid).is_none_or(|(st, _)| st == 'T')));
    let status = rt.block_on(op.status(job)).unwrap();
    assert_eq!(status["tasks"]["done"], 0, "{status}");
    let ledger = idlemesh_agent::Ledger::open(&agent.ledger()).unwrap();
    assert!(ledger.entries(Some("task_started")).unwrap().is_empty(), "no task started");
}

/// With the agent running a kernel in a session, the user's input freezes
/// the worker at once, it stays frozen while input goes on, and being idle
/// for the configured time resumes the same task, which completes.
fn input_freezes_the_worker_and_idleness_resumes_it(
    session: &[(&str, &str)],
    idle_source: &str,
    mut input: impl FnMut(u32),
    after: impl FnOnce(&AgentProcess),
) {
    let tmp = tempfile::tempdir().unwrap();
    let pool = PoolProcess::start(&tmp.path().join("pool"));
    let op = OperatorHttp::new(&pool.url, &pool.token);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (job, _) = rt.block_on(op.mandelbrot_job(slow_job()));

    let dir = tmp.path().join("agent");
    // Work after 2 s without input.
    write_settings(&dir, "idle_minutes = 0.0333\ncpu_duty_cycle_percent = 100\n");
    let agent = AgentProcess::start(&dir, Some(&pool.url), session);
    let s = agent.status();
    assert_eq!(s["sensors"]["idle_source"], idle_source);
    // Input wakes the agent (the X server's alarm, the compositor's event,
    // Mutter's watch): it does not poll for it.
    assert_eq!(s["sensors"]["input_wakes"], true, "{s}");

    let s = agent.wait_for("a task to run", Duration::from_secs(60), |s| {
        worker_pid(s).is_some() && !s["paused"].as_bool().unwrap()
    });
    let pid = worker_pid(&s).unwrap();
    assert_running(pid);

    // The user comes back: the worker stops at once.
    let t0 = Instant::now();
    input(1);
    while proc_state(pid).is_some_and(|(st, _)| st != 'T') {
        assert!(t0.elapsed() < Duration::from_secs(2), "the worker was not frozen after input");
        std::thread::sleep(Duration::from_millis(1));
    }
    eprintln!("input → frozen in {:?} (one sample; the benchmark measures the distribution)", t0.elapsed());
    let s = agent.status();
    assert_eq!(s["state"], "paused", "{s}");
    assert!(s["reasons"].to_string().contains("user_active"), "{s}");
    // Keep using the machine: it stays frozen.
    for n in 0..5 {
        input(n + 2);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(proc_state(pid).unwrap().0, 'T', "frozen while the user is active");
    }
    assert_frozen(pid);

    // Idle again for the configured time: it resumes the same task and finishes.
    agent.wait_for("work to resume after idle", Duration::from_secs(15), |s| !s["paused"].as_bool().unwrap());
    assert_running(pid);
    let status = rt.block_on(op.until_finished(job, Duration::from_secs(300)));
    assert_eq!(status["state"], "done", "{status}");
    let png = rt.block_on(op.output(job));
    assert_eq!(&png[1..4], b"PNG");
    let ledger = idlemesh_agent::Ledger::open(&agent.ledger()).unwrap();
    assert!(ledger.entries(Some("paused")).unwrap().iter().any(|e| e.body.contains("user_active")));
    assert!(ledger.verify(None).unwrap().ok());
    after(&agent);
}

#[test]
fn kill_9_at_random_moments_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = PoolProcess::start(&tmp.path().join("pool"));
    let op = OperatorHttp::new(&pool.url, &pool.token);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // Many short tasks, so kills land before, during and after tasks and uploads.
    let (job, tasks) = rt.block_on(op.mandelbrot_job(json!({
        "name": "kill9", "params": {"width": 640, "height": 480, "max_iter": 24000, "center_re": -0.2, "center_im": 0.0, "span": 0.4},
        "split": {"kind": "tiles", "width": 640, "height": 480, "tile_width": 80, "tile_height": 60},
        "combiner": {"kind": "png_tiles"}, "lease_ms": 600000,
    })));
    assert_eq!(tasks, 64);
    let dir = tmp.path().join("agent");
    write_settings(&dir, "cpu_duty_cycle_percent = 100\n");

    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
    let mut rounds = 0;
    while rounds < 20 {
        let mut agent = AgentProcess::start(&dir, Some(&pool.url), &[]);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(50 + seed % 700));
        agent.kill9();
        rounds += 1;
        let out = crate::harness::idlemesh(&dir.join("data"), &["ledger", "verify"]);
        assert!(out.status.success(), "round {rounds}: the ledger must verify after kill -9");
    }

    // The kills landed while the job was under way, not after it.
    let done = rt.block_on(op.status(job)).unwrap()["tasks"]["done"].as_u64().unwrap();
    eprintln!("{done} of {tasks} tasks done across the 20 killed runs");
    assert!(done > 0 && done < tasks, "{done} of {tasks} done during the kill rounds");

    // A last, undisturbed run finishes the job: every task done exactly once at the pool.
    let mut agent = AgentProcess::start(&dir, Some(&pool.url), &[]);
    let status = rt.block_on(op.until_finished(job, Duration::from_secs(300)));
    assert_eq!(status["state"], "done", "{status}\n{}", agent.log());
    agent.wait_for("the outbox to drain", Duration::from_secs(30), |s| {
        s["scheduler"]["summary"]["results_pending"] == 0 && s["scheduler"]["current_task"].is_null()
    });
    agent.stop();
    let stats = rt.block_on(op.stats());
    assert_eq!(
        stats["devices"].as_array().unwrap().len(),
        1,
        "one device across restarts (key from the keyring): {stats}"
    );
    assert_eq!(stats["devices"][0]["valid_results"], tasks, "{stats}");
    let ledger = idlemesh_agent::Ledger::open(&agent.ledger()).unwrap();
    assert!(ledger.verify(None).unwrap().ok());
    // Every task's receipt is in the local ledger, each counted once, even
    // those whose acknowledgement a kill interrupted (the pool answers a
    // repeated result with the same receipt).
    let summary = idlemesh_agent::ledger::summarise(&ledger.entries(None).unwrap(), &jiff::tz::TimeZone::UTC);
    assert_eq!(summary.totals.receipts, tasks, "{:?}", summary.totals);
}

/// A task killed (with its agent, `kill -9`) after it wrote a checkpoint
/// resumes from that checkpoint when the agent starts again, and its
/// output equals an uninterrupted run's byte for byte.
#[test]
fn a_task_killed_after_a_checkpoint_resumes_from_it_with_identical_output() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = PoolProcess::start(&tmp.path().join("pool"));
    let op = OperatorHttp::new(&pool.url, &pool.token);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // One tall tile deep inside the set: the kernel checkpoints every 64
    // rows, each 64-row band taking about a second here.
    let spec = |name: &str| {
        json!({
            "name": name, "params": {"width": 64, "height": 256, "max_iter": 60000, "center_re": -0.2, "center_im": 0.0, "span": 0.4},
            "split": {"kind": "tiles", "width": 64, "height": 256, "tile_width": 64, "tile_height": 256},
            "combiner": {"kind": "png_tiles"}, "lease_ms": 600000,
        })
    };
    let (job, tasks) = rt.block_on(op.mandelbrot_job(spec("interrupted")));
    assert_eq!(tasks, 1);
    let dir = tmp.path().join("agent");
    write_settings(&dir, "cpu_duty_cycle_percent = 100\n");
    let mut agent = AgentProcess::start(&dir, Some(&pool.url), &[]);
    let checkpoints = dir.join("data/checkpoints");
    let deadline = Instant::now() + Duration::from_secs(120);
    let checkpoint =
        loop {
            let found =
                std::fs::read_dir(&checkpoints).into_iter().flatten().flatten().map(|e| e.path()).find(|p| {
                    p.extension().is_some_and(|x| x == "bin") && std::fs::metadata(p).is_ok_and(|m| m.len() > 4)
                });
            if let Some(path) = found {
                break path;
            }
            assert!(Instant::now() < deadline, "no checkpoint was written:\n{}", agent.log());
            std::thread::sleep(Duration::from_millis(10));
        };
    agent.kill9();
    let saved = std::fs::read(&checkpoint).unwrap();
    let rows = u32::from_le_bytes(saved[..4].try_into().unwrap());
    assert!(rows > 0 && rows < 256, "a checkpoint part way: {rows} rows");
    assert_eq!(rt.block_on(op.status(job)).unwrap()["tasks"]["done"], 0, "killed before the task finished");

    let mut agent = AgentProcess::start(&dir, Some(&pool.url), &[]);
    let status = rt.block_on(op.until_finished(job, Duration::from_secs(300)));
    assert_eq!(status["state"], "done", "{status}\n{}", agent.log());
    let interrupted = rt.block_on(op.output(job));
    let ledger = idlemesh_agent::Ledger::open(&agent.ledger()).unwrap();
    let started = ledger.entries(Some("task_started")).unwrap();
    let last: Value = serde_json::from_str(&started.last().unwrap().body).unwrap();
    assert_eq!(last["resumed_from_checkpoint"], true, "{last:#}");
    assert_eq!(last["resumed_from"]["checkpoint_sha256"], idlemesh_protocol::Sha256::of(&saved).to_hex(), "{last:#}");
    assert_eq!(last["resumed_from"]["checkpoint_bytes"], saved.len());
    assert!(!checkpoint.exists(), "a finished task's checkpoint is removed");

    // The same job, uninterrupted: byte for byte the same image.
    let (whole_job, _) = rt.block_on(op.mandelbrot_job(spec("uninterrupted")));
    rt.block_on(op.until_finished(whole_job, Duration::from_secs(300)));
    let whole = rt.block_on(op.output(whole_job));
    assert!(interrupted == whole, "the resumed run's output differs from the uninterrupted run's");
    let started = ledger.entries(Some("task_started")).unwrap();
    let last: Value = serde_json::from_str(&started.last().unwrap().body).unwrap();
    assert_eq!(last["resumed_from_checkpoint"], false, "{last:#}");
    agent.stop();
    assert!(ledger.verify(None).unwrap().ok());
}

/// The real power sensor (the battery crate and our sysfs reader) on a
/// battery and a mains adapter faked by umockdev: the agent process runs
/// under `umockdev-run`, which redirects its /sys reads to a test bed whose
/// files this test rewrites while it runs.
/// Another program keeping an AMD GPU busy (amdgpu's `gpu_busy_percent`,
/// a fake card through umockdev, read by the agent's own sysfs code) stops
/// GPU work alone, after its short grace, and GPU work comes back once the
/// GPU has been quiet for a while. Reading it loads no GPU driver.
#[test]
fn another_program_busy_on_the_gpu_stops_gpu_work_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("agent");
    write_settings(&dir, "gpu_enabled = true\nmax_other_gpu_percent = 30\n");
    let (agent, bed) = AgentProcess::start_under_umockdev(&dir, "amdgpu.umockdev", &[]);
    let busy = |percent: &str| {
        std::fs::write(bed.join("sys/class/drm/card0/device/gpu_busy_percent"), percent).unwrap();
    };
    let runs = |s: &Value| (s["decision"]["action"]["cpu"].clone(), s["decision"]["action"]["gpu"].clone());

    let s = agent.wait_for("the GPU reading", Duration::from_secs(10), |s| {
        s["sensors"]["snapshot"]["gpu_busy_percent"] == 5.0 && s["sensors"]["snapshot"]["other_gpu_percent"] == 5.0
    });
    assert_eq!(runs(&s), (json!(true), json!(true)), "{s}");
    // A game starts: over the limit for the grace, GPU work alone stops.
    busy("63");
    let s = agent.wait_for("GPU work to stop", Duration::from_secs(10), |s| s["decision"]["action"]["gpu"] == false);
    assert_eq!(runs(&s), (json!(true), json!(false)), "processor work goes on: {s}");
    assert_eq!(s["paused"], false, "{s}");
    let reason = s["reasons"].as_array().unwrap().iter().find(|r| r["code"] == "gpu_busy").expect("says why");
    assert_eq!(reason["scope"], "gpu");
    assert_eq!(reason["text"], "GPU busy with another program (63 %); limit 30 %");
    // It ends: GPU work comes back once the GPU has been quiet for a while.
    busy("2");
    let s =
        agent.wait_for("GPU work to come back", Duration::from_secs(20), |s| s["decision"]["action"]["gpu"] == true);
    assert!(s["reasons"].as_array().unwrap().iter().all(|r| r["code"] != "gpu_busy"), "{s}");
    // Reading the counter mapped no GPU driver (nor Vulkan, nor NVML) into the agent.
    let pid = s["agent"]["pid"].as_u64().unwrap();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    for lib in ["libvulkan", "_dri.so", "libnvidia", "libLLVM", "libdrm_amdgpu"] {
        assert!(!maps.contains(lib), "the agent maps {lib}");
    }
}

#[test]
fn on_battery_below_the_minimum_it_pauses_and_resumes_only_past_the_hysteresis() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("agent");
    write_settings(&dir, "min_battery_percent = 50\nrun_on_battery = false\n");
    let (agent, bed) = AgentProcess::start_under_umockdev(&dir, "battery.umockdev", &[]);
    let set = |dev: &str, attr: &str, value: &str| {
        std::fs::write(bed.join("sys/class/power_supply").join(dev).join(attr), value).unwrap();
    };
    let codes = |s: &Value| -> Vec<String> {
        s["reasons"].as_array().unwrap().iter().map(|r| r["code"].as_str().unwrap().to_string()).collect()
    };

    // 40 % and unplugged: paused, saying both.
    let s = agent
        .wait_for("the battery reading", Duration::from_secs(10), |s| !s["sensors"]["snapshot"]["battery"].is_null());
    assert_eq!(s["sensors"]["snapshot"]["battery"], json!({"percent": 40.0, "on_ac": false}), "{s}");
    assert_eq!(s["state"], "paused");
    assert_eq!(codes(&s), ["on_battery"], "{s}");

    // Plugged in, still below the minimum: paused for the charge.
    set("AC", "online", "1");
    set("BAT0", "status", "Charging");
    let s = agent
        .wait_for("mains power", Duration::from_secs(10), |s| s["sensors"]["snapshot"]["battery"]["on_ac"] == true);
    assert_eq!(codes(&s), ["battery_low"], "{s}");
    assert!(s["reasons"][0]["text"].as_str().unwrap().contains("battery 40% < 50%"), "{s}");

    // Past the minimum but inside the hysteresis band: still waiting.
    set("BAT0", "energy_now", "26000000");
    set("BAT0", "capacity", "52");
    let s = agent.wait_for("52 %", Duration::from_secs(10), |s| s["sensors"]["snapshot"]["battery"]["percent"] == 52.0);
    assert_eq!(codes(&s), ["battery_low"], "{s}");
    assert!(s["reasons"][0]["text"].as_str().unwrap().contains("waiting for 55%"), "{s}");

    // Past the hysteresis: work may run (no pool here, so it waits for one).
    set("BAT0", "energy_now", "28000000");
    set("BAT0", "capacity", "56");
    let s = agent.wait_for("resuming at 56 %", Duration::from_secs(10), |s| s["paused"] == false);
    assert!(codes(&s).contains(&"power_ok".to_string()), "{s}");
    assert_eq!(s["state"], "no_pool");

    // Unplugged again: paused at once, on battery.
    set("AC", "online", "0");
    set("BAT0", "status", "Discharging");
    let s = agent.wait_for("unplugged", Duration::from_secs(10), |s| s["paused"] == true);
    assert_eq!(codes(&s), ["on_battery"], "{s}");
}

/// The desktop keyring: the agent under its own D-Bus session with
/// gnome-keyring's Secret Service, twice with the same home. The device key
/// made the first time is the one found the second time, and it is in the
/// (encrypted) keyring, not in the agent's files.
#[test]
fn the_device_key_lives_in_the_secret_service_across_sessions() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let dir = tmp.path().join("agent");
    let run = |login: u32| {
        // Each login session has its own runtime dir, as logind gives one:
        // without it gnome-keyring falls back to a shared place, where its
        // `--unlock` can reach a daemon left over from an earlier session
        // (on another, dead bus) instead of starting one on this bus.
        let runtime = tmp.path().join(format!("run-{login}"));
        std::fs::create_dir_all(&runtime).unwrap();
        std::fs::set_permissions(&runtime, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let mut agent = AgentProcess::start_with(
            &dir,
            None,
            &[
                ("HOME", home.to_str().unwrap()),
                ("XDG_RUNTIME_DIR", runtime.to_str().unwrap()),
                ("IDLEMESH_KEYRING", "secret-service"),
            ],
            |cmd| {
                let prefix = ["dbus-run-session".as_ref(), "--".as_ref()];
                run_under(cmd, &prefix, "printf pw | gnome-keyring-daemon --unlock --components=secrets >/dev/null")
            },
        );
        let s = agent.status();
        agent.stop();
        assert_eq!(s["agent"]["keyring"], "secret-service", "{s}");
        s["agent"]["device_public_key"].as_str().unwrap().to_string()
    };
    let first = run(1);
    let second = run(2);
    assert_eq!(first, second, "the same device after a new login session");
    assert!(home.join(".local/share/keyrings").is_dir(), "stored by gnome-keyring in its own encrypted files");
}

/// A headless machine has no Secret Service and kernel keys end at reboot:
/// the administrator makes the device key a systemd credential once, and
/// systemd decrypts it for the service at every start. The real
/// `systemd-creds` encrypts and decrypts here, as systemd does, with a host
/// key of the test's own (`SYSTEMD_CREDENTIAL_SECRET`), not the machine's.
#[test]
fn on_a_headless_machine_the_device_key_is_a_systemd_credential() {
    let tmp = tempfile::tempdir().unwrap();
    let seed: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ (std::process::id() as u8));
    // Encrypted from stdin: the plain key never touches the disk.
    let cred = tmp.path().join("idlemesh-device-key.cred");
    let host_key = tmp.path().join("credential.secret");
    let mut enc = Command::new("systemd-creds")
        .env("SYSTEMD_CREDENTIAL_SECRET", &host_key)
        .args(["encrypt", "--with-key=host", "--name=idlemesh-device-key", "-"])
        .arg(&cred)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("systemd-creds is installed (systemd)");
    std::io::Write::write_all(enc.stdin.as_mut().unwrap(), &seed).unwrap();
    drop(enc.stdin.take());
    assert!(enc.wait().unwrap().success(), "systemd-creds encrypt");
    assert!(!std::fs::read(&cred).unwrap().windows(32).any(|w| w == seed), "the credential is encrypted");

    let expected = idlemesh_protocol::Keypair::from_secret_bytes(&seed).public().to_string();
    let dir = tmp.path().join("agent");
    let start = |boot: u32| {
        // What systemd does at each start: decrypt into a directory only the service reads.
        let creds = tmp.path().join(format!("credentials-{boot}"));
        std::fs::create_dir(&creds).unwrap();
        std::fs::set_permissions(&creds, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let out = Command::new("systemd-creds")
            .env("SYSTEMD_CREDENTIAL_SECRET", &host_key)
            .args(["decrypt", "--name=idlemesh-device-key"])
            .arg(&cred)
            .arg(creds.join("idlemesh-device-key"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        creds
    };
    for boot in 1..=2 {
        let creds = start(boot);
        let mut agent = AgentProcess::start(&dir, None, &[("CREDENTIALS_DIRECTORY", creds.to_str().unwrap())]);
        let s = agent.status();
        agent.stop();
        assert_eq!(s["agent"]["keyring"], "systemd-credential", "{s}");
        assert_eq!(s["agent"]["device_public_key"], expected.as_str(), "boot {boot}: the credential is the device key");
    }
    let keys = Command::new("keyctl").args(["show", "@s"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&keys.stdout).contains("device-key"), "nothing was put in the kernel keyring");

    // A credential that is not a key stops the agent with a message naming it.
    let creds = start(3);
    std::fs::write(creds.join("idlemesh-device-key"), b"not a key").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_idlemesh"))
        .arg("agent")
        .env("CREDENTIALS_DIRECTORY", &creds)
        .env("IDLEMESH_DATA_DIR", dir.join("data"))
        .env("IDLEMESH_CONFIG_DIR", dir.join("config"))
        .env("IDLEMESH_CONTROL_SOCKET", dir.join("agent.sock"))
        .env("IDLEMESH_KEYRING", "keyutils")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("systemd credential idlemesh-device-key is not a device key: 9 bytes"), "{err}");
}

/// The dashboard's Pools page through the control socket: join a pool (it
/// is written to the settings and the agent enrolls and pins its key), list
/// it, refuse a bad URL, leave it (the pin and the setting are gone).
#[test]
fn pools_are_joined_listed_and_left_through_the_control_socket() {
    use idlemesh_agent::control::{self, Request};
    let tmp = tempfile::tempdir().unwrap();
    let pool = PoolProcess::start(&tmp.path().join("pool"));
    let dir = tmp.path().join("agent");
    write_settings(&dir, "");
    let agent = AgentProcess::start(&dir, None, &[]);
    let socket = dir.join("agent.sock");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let call = |r: Request| rt.block_on(control::call(&socket, &r));

    assert_eq!(call(Request::Pools).unwrap(), json!([]));
    let bad = call(Request::PoolJoin { url: "ftp://pool".into(), token: None, temporary: false }).unwrap_err();
    assert!(matches!(&bad, control::ControlError::Refused { code: control::ErrorCode::BadValue, .. }), "{bad}");

    let joined = call(Request::PoolJoin { url: format!("{}/", pool.url), token: None, temporary: false }).unwrap();
    assert_eq!(joined["url"], pool.url.as_str(), "the URL is normalised");
    let s = agent.wait_for("enrolled with the joined pool", Duration::from_secs(30), |s| {
        s["scheduler"]["pool"] == pool.url.as_str() && s["scheduler"]["device_id"].is_u64()
    });
    assert_eq!(s["settings"]["pool_url"]["source"], "user");
    assert!(std::fs::read_to_string(dir.join("config/settings.toml")).unwrap().contains(&pool.url));
    let pools = call(Request::Pools).unwrap();
    assert_eq!(pools.as_array().unwrap().len(), 1, "{pools}");
    assert_eq!(pools[0]["url"], pool.url.as_str());
    assert_eq!(pools[0]["current"], true);
    assert!(pools[0]["public_key"].is_string(), "pinned at enrollment: {pools}");

    call(Request::PoolLeave { url: pool.url.clone() }).unwrap();
    assert_eq!(call(Request::Pools).unwrap(), json!([]), "the pin is forgotten");
    agent.wait_for("no pool", Duration::from_secs(30), |s| s["state"] == "no_pool");
    assert!(!std::fs::read_to_string(dir.join("config/settings.toml")).unwrap().contains("pool_url"));
}
