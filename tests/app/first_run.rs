//! A person's first minutes with the tray app, and each reason its agent
//! cannot start, as that person sees them: a real gnome-keyring (locked or
//! unlocked) on a private session bus, real files made unreadable, the words
//! on the dashboard read through WebDriver, the tray through its D-Bus menu.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::Locator;
use serde_json::{Value, json};

use crate::app_env::{pool_with_job, serve, session_keyring, test_pool};
use crate::{Ui, drive, launch, session_bus, sni, xvfb};

/// gnome-keyring's Secret Service on the test's bus, keeping its keyrings
/// in the test's home. Killed on drop (with any daemon that replaced it).
struct Keyring {
    daemons: Vec<Child>,
    env: Vec<(String, String)>,
}

impl Keyring {
    /// No login keyring unlocked (none made yet), as on a minimal session:
    /// storing a key fails.
    fn locked(env: &[(String, String)]) -> Self {
        let mut k = Self { daemons: Vec::new(), env: keyring_env(env) };
        k.spawn(&[], None);
        k
    }

    /// As after logging in: the login keyring made and unlocked with the password.
    fn unlocked(env: &[(String, String)]) -> Self {
        let mut k = Self { daemons: Vec::new(), env: keyring_env(env) };
        k.spawn(&["--unlock"], Some("login password"));
        k
    }

    /// Unlocks it the way a new login does: a daemon given the password
    /// replaces the running one. Returns once the new one serves.
    fn unlock(&mut self) {
        let before = owner(self.bus());
        self.spawn(&["--replace", "--unlock"], Some("login password"));
        let deadline = Instant::now() + Duration::from_secs(10);
        // Serving, and its login keyring made (and so unlocked) on disk.
        let login = Path::new(get(&self.env, "XDG_DATA_HOME")).join("keyrings/login.keyring");
        while owner(self.bus()) == before || !login.exists() {
            assert!(Instant::now() < deadline, "the unlocked gnome-keyring did not replace the locked one");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn bus(&self) -> &str {
        get(&self.env, "DBUS_SESSION_BUS_ADDRESS")
    }

    fn spawn(&mut self, extra: &[&str], password: Option<&str>) {
        let mut child = Command::new("gnome-keyring-daemon")
            .args(["--foreground", "--components=secrets"])
            .args(extra)
            .env_clear()
            .envs(self.env.iter().cloned())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gnome-keyring is installed (scripts/setup)");
        let mut stdin = child.stdin.take().unwrap();
        if let Some(password) = password {
            stdin.write_all(password.as_bytes()).unwrap();
        }
        drop(stdin);
        self.daemons.push(child);
        // On the bus (the replacing one takes over later: see `unlock`).
        let deadline = Instant::now() + Duration::from_secs(10);
        while owner(self.bus()).is_none() {
            assert!(Instant::now() < deadline, "gnome-keyring did not take org.freedesktop.secrets");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Keyring {
    fn drop(&mut self) {
        for d in &mut self.daemons {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

/// What gnome-keyring needs of the app's environment: its home, runtime dir and bus.
fn keyring_env(env: &[(String, String)]) -> Vec<(String, String)> {
    let keep = ["HOME", "XDG_RUNTIME_DIR", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "DBUS_SESSION_BUS_ADDRESS"];
    let mut out: Vec<(String, String)> = env.iter().filter(|(k, _)| keep.contains(&k.as_str())).cloned().collect();
    out.push(("PATH".into(), std::env::var("PATH").unwrap_or_default()));
    out
}

/// The unique name owning the Secret Service's name on `bus`, if any.
fn owner(bus: &str) -> Option<String> {
    let out = Command::new("dbus-send")
        .args([
            &format!("--bus={bus}"),
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.GetNameOwner",
            "string:org.freedesktop.secrets",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    out.status.success().then(|| text.split('"').nth(1).map(str::to_owned)).flatten()
}

/// A home with nothing in it, as a new user has: the app finds its data,
/// settings and socket where it would on a desktop (XDG directories), no
/// settings file, no pool, no ledger. The Secret Service is the keyring.
fn empty_home(root: &Path, x: &xvfb::Xvfb, bus: &session_bus::SessionBus) -> Vec<(String, String)> {
    let home = root.join("home");
    let runtime = root.join("run");
    for d in [&home, &runtime] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    }
    [
        ("HOME", home.display().to_string()),
        ("XDG_RUNTIME_DIR", runtime.display().to_string()),
        ("XDG_CONFIG_HOME", home.join(".config").display().to_string()),
        ("XDG_DATA_HOME", home.join(".local/share").display().to_string()),
        ("XDG_CACHE_HOME", home.join(".cache").display().to_string()),
        ("DISPLAY", x.display.clone()),
        ("DBUS_SESSION_BUS_ADDRESS", bus.address.clone()),
        ("IDLEMESH_LOG", "info".into()),
        ("NO_AT_BRIDGE", "1".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// An empty home under `root/name` with its own session bus, keeping the
/// device key in the kernel keyring (for the cases not about the keyring).
fn keyutils_home(root: &Path, name: &str, x: &xvfb::Xvfb) -> (session_bus::SessionBus, PathBuf, Vec<(String, String)>) {
    let bus = session_bus::SessionBus::start();
    let home = root.join(name);
    let mut env = empty_home(&home, x, &bus);
    env.push(("IDLEMESH_KEYRING".into(), "keyutils".into()));
    (bus, home, env)
}

fn get<'a>(env: &'a [(String, String)], key: &str) -> &'a str {
    &env.iter().find(|(k, _)| k == key).unwrap_or_else(|| panic!("{key} in the env")).1
}

/// Where the app of `env` listens (the XDG default, as on a desktop).
fn default_socket(env: &[(String, String)]) -> PathBuf {
    Path::new(get(env, "XDG_RUNTIME_DIR")).join("idlemesh/agent.sock")
}

/// Screenshots of `test`, kept after it (CI artefacts) in the tests' own
/// temporary directory (`target/tmp`), fresh for each run.
fn shots_dir(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("first-run-screenshots").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Prints each screenshot's path. Straight to the process's stderr: the
/// test harness keeps `eprintln!` of a passing test to itself, and CI's
/// log should say where the artefacts are.
fn print_shots(dir: &Path) {
    let mut err = std::io::stderr();
    for f in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if f.path().extension().is_some_and(|e| e == "png") {
            let _ = writeln!(err, "first run test: screenshot {}", f.path().display());
        }
    }
}

/// Runs `steps` with a WebDriver session on the app (`env`, `args`), under
/// a time limit; the app is quit and the session closed whatever happens.
async fn with_app<F>(env: &[(String, String)], args: &[&str], x: &xvfb::Xvfb, shots: PathBuf, steps: F)
where
    F: AsyncFnOnce(&Ui),
{
    let (driver, ui) = launch(env, args, x, default_socket(env), shots).await;
    if let Err(panic) = drive(driver, ui, Duration::from_secs(240), steps).await {
        std::panic::resume_unwind(panic);
    }
}

/// The app's agent failed to start for `code`: the dashboard says so in
/// words (`title`), without the agent's raw message in view, and offers
/// "Try again".
async fn shows_failure(ui: &Ui, code: &str, title: &str) -> String {
    let shown = ui.wait_text("#agent-problem .note-title", Duration::from_secs(60), |t| t == title).await;
    let box_ = ui.client.find(Locator::Css("#agent-problem")).await.unwrap();
    assert_eq!(box_.attr("data-code").await.unwrap().as_deref(), Some(code));
    let text = ui.text("#agent-problem-text").await;
    assert!(!text.contains('`') && !text.contains("idlemesh "), "no command line in the words: {text}");
    assert!(ui.client.find(Locator::Css("#fix-retry")).await.is_ok(), "Try again is offered");
    assert!(ui.client.find(Locator::Css("#state")).await.is_err(), "no agent state is shown for a stopped agent");
    eprintln!("first run test: {code}: {shown}: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_keyring_is_explained_in_the_tray_and_the_dashboard_and_try_again_works_once_unlocked() {
    rustls::crypto::ring::default_provider().install_default().ok();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let x = xvfb::Xvfb::with_screen("1280x1024x24");
    let bus = session_bus::SessionBus::start();
    let host = sni::Host::start(&bus.address);
    let env = empty_home(root, &x, &bus);
    let mut keyring = Keyring::locked(&env);
    let shots = shots_dir("keyring");
    with_app(&env, &["--dashboard"], &x, shots.clone(), async |ui| {
        let text = shows_failure(ui, "keyring_refused", "Your keyring is locked").await;
        assert!(text.contains("login keyring") && text.contains("“idlemesh”"), "where the key would be kept: {text}");
        ui.shot("keyring-locked").await;
        // The tray: red, and the state in words.
        let item = host.item(Duration::from_secs(30));
        let line = item.wait_state_line(Duration::from_secs(10), |l| l.starts_with("Idlemesh: Not running"));
        assert!(line.contains("keyring is locked"), "{line}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while item.icon_centre() != [207, 34, 46, 255] {
            assert!(
                Instant::now() < deadline,
                "the icon turns red; it is {:?} ({})",
                item.icon_centre(),
                item.icon_file().display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }

        // Unlocked as a login would; "Try again" starts the agent.
        keyring.unlock();
        ui.click("#fix-retry").await;
        ui.wait_text("#state", Duration::from_secs(60), |t| !t.is_empty() && t != "Starting").await;
        assert!(ui.client.find(Locator::Css("#agent-problem")).await.is_err(), "the problem is gone");
        let status = ui.status().await;
        assert_eq!(status["agent"]["keyring"], "secret-service", "{status:#}");
        ui.shot("keyring-unlocked").await;
    })
    .await;
    print_shots(&shots);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reason_the_agent_cannot_start_is_shown_in_words() {
    session_keyring();
    rustls::crypto::ring::default_provider().install_default().ok();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let x = xvfb::Xvfb::with_screen("1280x1024x24");
    let shots = shots_dir("failures");

    // No keyring at all: the Secret Service asked for, and none installed.
    {
        let bus = session_bus::SessionBus::without_services(root);
        let mut env = empty_home(&root.join("no-keyring"), &x, &bus);
        env.push(("IDLEMESH_KEYRING".into(), "secret-service".into()));
        with_app(&env, &["--dashboard"], &x, shots.clone(), async |ui| {
            shows_failure(ui, "no_keyring", "No keyring to keep this computer’s key").await;
            ui.shot("no-keyring").await;
        })
        .await;
    }

    // The data folder cannot be written (read-only; immutable too when
    // the test runs as root, whom file modes do not stop).
    {
        let (_bus, home, env) = keyutils_home(root, "read-only", &x);
        let data = home.join("home/.local/share/idlemesh");
        std::fs::create_dir_all(&data).unwrap();
        let _frozen = ReadOnly::make(&data);
        with_app(&env, &["--dashboard"], &x, shots.clone(), async |ui| {
            let text = shows_failure(ui, "data_dir", "Idlemesh cannot save its data").await;
            assert!(text.contains(&data.display().to_string()), "the folder is named: {text}");
            ui.shot("read-only-data").await;
        })
        .await;
    }

    // The control socket's folder belongs to another user (only a root
    // test can make one).
    if unsafe { libc::geteuid() } == 0 {
        let (_bus, _, env) = keyutils_home(root, "socket", &x);
        let folder = Path::new(get(&env, "XDG_RUNTIME_DIR")).join("idlemesh");
        std::fs::create_dir_all(&folder).unwrap();
        std::os::unix::fs::chown(&folder, Some(65534), Some(65534)).unwrap();
        with_app(&env, &["--dashboard"], &x, shots.clone(), async |ui| {
            shows_failure(ui, "socket_not_private", "Idlemesh’s private folder belongs to someone else").await;
        })
        .await;
        let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&folder).unwrap());
        assert_eq!(owner, 65534, "the other user's folder was left alone");
    } else {
        eprintln!("first run test: not root: the foreign socket folder case needs chown, skipped");
    }

    // A pool that does not answer, then one that refuses this device: in
    // words, with when the agent tries again and what the pool said.
    {
        let (_bus, home, env) = keyutils_home(root, "pools", &x);
        let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = home.join("home/.config/idlemesh");
        std::fs::create_dir_all(&config).unwrap();
        // Away long enough (no input on Xvfb is not "away" yet): work at once.
        std::fs::write(
            config.join("settings.toml"),
            format!("pool_url = \"http://127.0.0.1:{closed_port}\"\nidle_minutes = 0\n"),
        )
        .unwrap();
        // A pool that enrolls only devices with a token (none is given here).
        let (closed_url, _closed) = serve(test_pool(&home.join("closed-pool"), "closed pool", false)).await;
        with_app(&env, &["--dashboard"], &x, shots.clone(), async |ui| {
            ui.wait_text("#pool-problem .note-title", Duration::from_secs(60), |t| t == "Cannot reach the pool").await;
            let text = ui.text("#pool-problem-text").await;
            assert!(text.contains(&format!("127.0.0.1:{closed_port} does not answer")), "{text}");
            assert!(text.contains("tries again"), "when it retries: {text}");
            ui.shot("pool-unreachable").await;
            // Joined from the Pools page, a pool that wants an invitation says so.
            let joined = ui.invoke("pool_join", json!({"url": closed_url, "token": null})).await;
            assert!(joined.get("ok").is_some(), "{joined}");
            ui.wait_text("#pool-problem .note-title", Duration::from_secs(60), |t| {
                t == "The pool did not let this computer join"
            })
            .await;
            let text = ui.text("#pool-problem-text").await;
            assert!(text.contains("it needs an enrollment token"), "the pool's words: {text}");
            ui.shot("pool-refused").await;
        })
        .await;
    }

    // A settings file that cannot be read: the agent runs on defaults,
    // says so in words, and "Reset my settings" puts the file aside.
    {
        let (_bus, home, env) = keyutils_home(root, "bad-settings", &x);
        let config = home.join("home/.config/idlemesh");
        std::fs::create_dir_all(&config).unwrap();
        let settings = config.join("settings.toml");
        std::fs::write(&settings, "idle_minutes = [oops\n").unwrap();
        with_app(&env, &["--dashboard"], &x, shots.clone(), async |ui| {
            ui.wait_text("#settings-errors .note-title", Duration::from_secs(60), |t| {
                t == "Your settings could not be read"
            })
            .await;
            ui.shot("bad-settings").await;
            ui.click("#fix-reset_settings").await;
            let said = ui.wait_text("#settings-fix-result", Duration::from_secs(10), |t| !t.is_empty()).await;
            assert!(said.contains("back to the defaults"), "{said}");
            assert!(!settings.exists(), "the unreadable file moved aside");
            let kept: Vec<_> = std::fs::read_dir(&config)
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("settings.toml.unreadable-"))
                .collect();
            assert_eq!(kept.len(), 1, "one copy kept");
            assert!(std::fs::read_to_string(kept[0].path()).unwrap().contains("[oops"), "kept as it was");
            let deadline = Instant::now() + Duration::from_secs(15);
            while ui.client.find(Locator::Css("#settings-errors")).await.is_ok() {
                assert!(Instant::now() < deadline, "the settings warning went away once reset");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
    }

    // An IT policy that cannot be read: nothing is lent, and the words say
    // whom to tell.
    {
        let (_bus, home, mut env) = keyutils_home(root, "bad-policy", &x);
        let (pool_url, _server) = pool_with_job(&home.join("pool")).await;
        let config = home.join("home/.config/idlemesh");
        std::fs::create_dir_all(&config).unwrap();
        std::fs::write(config.join("settings.toml"), format!("pool_url = \"{pool_url}\"\n")).unwrap();
        let policy = home.join("policy.toml");
        std::fs::write(&policy, "[locked\nmin_battery_percent = 90\n").unwrap();
        env.push(("IDLEMESH_POLICY".into(), policy.display().to_string()));
        with_app(&env, &["--dashboard"], &x, shots.clone(), async |ui| {
            ui.wait_text("#pool-problem .note-title", Duration::from_secs(60), |t| {
                t == "Your organisation’s settings cannot be read"
            })
            .await;
            let text = ui.text("#pool-problem-text").await;
            assert!(text.contains("IT department"), "{text}");
            ui.shot("bad-policy").await;
        })
        .await;
    }
    print_shots(&shots);
}

/// A folder nobody can write into while this lives: mode 0555, and the
/// immutable flag when running as root.
struct ReadOnly(PathBuf, bool);

impl ReadOnly {
    fn make(dir: &Path) -> Self {
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            let ok = Command::new("chattr").arg("+i").arg(dir).status().is_ok_and(|s| s.success());
            assert!(ok, "chattr +i {} (root ignores file modes)", dir.display());
        }
        Self(dir.to_path_buf(), root)
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        if self.1 {
            let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
        }
        let _ = std::fs::set_permissions(&self.0, std::os::unix::fs::PermissionsExt::from_mode(0o755));
    }
}

/// Issue point 4: from a truly empty home with an unlocked keyring, started
/// as the autostart entry starts it (no arguments, no window), the
/// dashboard opened from the tray menu offers the demo; it runs, and the
/// Stats page fills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_user_opens_the_dashboard_from_the_tray_tries_the_demo_and_sees_stats() {
    rustls::crypto::ring::default_provider().install_default().ok();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let x = xvfb::Xvfb::with_screen("1280x1024x24");
    let bus = session_bus::SessionBus::start();
    let host = sni::Host::start(&bus.address);
    let env = empty_home(root, &x, &bus);
    let _keyring = Keyring::unlocked(&env);
    let shots = shots_dir("first-run");
    let socket = default_socket(&env);

    // The session waits for the app's first webview: the tray opens it.
    let driver = crate::Driver::start(&env, shots.join("webdriver.log"));
    let session = {
        let driver_port = driver.port;
        let log = driver.log.clone();
        tokio::spawn(async move { crate::connect_to(driver_port, &log, &[]).await })
    };
    let item = host.item(Duration::from_secs(60));
    let line = item.wait_state_line(Duration::from_secs(60), |l| !l.is_empty() && l != "Idlemesh: starting");
    assert!(!line.contains("Working"), "no pool yet, so no work: {line}");
    assert!(!crate::tray::dashboard_shown(&x.display), "autostart opens no window");
    item.click("Open dashboard");
    let client = tokio::time::timeout(Duration::from_secs(60), session)
        .await
        .expect("a WebDriver session once the dashboard opened")
        .unwrap();
    let ui = Ui { client, display: x.display.clone(), socket, shots: shots.clone() };
    let steps = async |ui: &Ui| {
        ui.wait_text("#first-run h2", Duration::from_secs(30), |t| t == "New here? Try the demo pool").await;
        let page = ui.text("#page-now").await;
        assert!(!page.contains("idlemesh settings") && !page.contains('`'), "no command line: {page}");
        ui.shot("first-run-offer").await;
        ui.click("#first-run-demo").await;
        let when = ui.wait_text("#first-run-when", Duration::from_secs(30), |t| !t.is_empty()).await;
        assert!(when.contains("away from the keyboard for 3 minutes"), "{when}");
        ui.shot("first-run-joined").await;
        // Xvfb has had no input for less than the idle delay: the user counts as present.
        let s = ui.status().await;
        assert_eq!(s["state"], "paused", "present, so not yet working: {s:#}");
        ui.click("#first-run-start-now").await;
        // A demo tile takes milliseconds: the tasks are seen done, not running.
        let s = ui
            .wait_status("demo tasks finished", Duration::from_secs(90), |s| {
                s["scheduler"]["summary"]["tasks_finished"].as_u64().unwrap_or(0) >= 1
            })
            .await;
        eprintln!("first run test: {} demo tasks finished", s["scheduler"]["summary"]["tasks_finished"]);
        ui.wait_text("#session", Duration::from_secs(10), |t| t.contains("finished") && !t.contains("0 finished"))
            .await;
        ui.shot("first-run-worked").await;
        // The Stats page fills as tasks finish.
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let summary = ui.invoke("ledger_summary", json!({})).await;
            if summary["ok"]["totals"]["tasks_finished"].as_u64().unwrap_or(0) >= 1 {
                break;
            }
            assert!(Instant::now() < deadline, "no task finished: {summary}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        ui.page("stats").await;
        let stats = ui.text("#page-stats").await;
        assert!(!stats.contains("Totals appear here once"), "the totals are filled: {stats}");
        ui.shot("first-run-stats").await;
        // Asked again later (the next start), it is no longer a first run.
        let info: Value = ui.invoke("app_info", json!({})).await;
        assert_eq!(info["ok"]["first_run"], false, "{info}");
    };
    let outcome = drive(driver, ui, Duration::from_secs(300), steps).await;
    print_shots(&shots);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// "Not now" on the demo offer holds from one start of the app to the
/// next, and the demo stays one click away in the "No pool yet" box.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_now_is_remembered_from_one_start_to_the_next() {
    rustls::crypto::ring::default_provider().install_default().ok();
    session_keyring();
    let dir = tempfile::tempdir().unwrap();
    let x = xvfb::Xvfb::with_screen("1280x1024x24");
    let (_bus, _, env) = keyutils_home(dir.path(), "home", &x);
    let shots = shots_dir("not-now");
    with_app(&env, &["--dashboard"], &x, shots.clone(), async |ui| {
        ui.wait_text("#first-run h2", Duration::from_secs(60), |t| t == "New here? Try the demo pool").await;
        ui.click("#first-run-dismiss").await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while ui.client.find(Locator::Css("#first-run")).await.is_ok() {
            assert!(Instant::now() < deadline, "the offer goes away");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    with_app(&env, &["--dashboard"], &x, shots.clone(), async |ui| {
        ui.wait_text("#pool-problem .note-title", Duration::from_secs(60), |t| t == "No pool yet").await;
        let info = ui.invoke("app_info", json!({})).await;
        assert_eq!(info["ok"]["first_run"], false, "{info}");
        assert!(ui.client.find(Locator::Css("#first-run")).await.is_err(), "not offered again");
        assert!(ui.client.find(Locator::Css("#fix-demo")).await.is_ok(), "the demo is still one click away");
        ui.shot("not-now-next-start").await;
    })
    .await;
    print_shots(&shots);
}

/// Issue 18: the dashboard is a process of its own. Started while no agent
/// runs, it says so in words (and offers to start it); once Idlemesh starts
/// (here as from the applications menu), it connects by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_without_an_agent_says_so_and_connects_when_one_starts() {
    session_keyring();
    rustls::crypto::ring::default_provider().install_default().ok();
    let dir = tempfile::tempdir().unwrap();
    let x = xvfb::Xvfb::with_screen("1280x1024x24");
    let (_bus, home, env) = keyutils_home(dir.path(), "no-agent", &x);
    let shots = shots_dir("no-agent");
    let log = home.join("tray.log");
    let mut tray = None;
    with_app(&env, &["dashboard"], &x, shots.clone(), async |ui| {
        let text = shows_failure(ui, "not_running", "Idlemesh is not running").await;
        assert!(text.contains("connects as soon as it runs"), "{text}");
        ui.shot("no-agent").await;
        // No agent was started behind the user's back by the dashboard.
        assert!(!default_socket(&env).exists(), "nothing listens yet");

        let started = crate::app_env::spawn_logged(Path::new(crate::APP), env.clone(), &log);
        tray = Some(started);
        ui.wait_text("#state", Duration::from_secs(60), |t| !t.is_empty() && t != "Starting").await;
        assert!(ui.client.find(Locator::Css("#agent-problem")).await.is_err(), "the problem is gone");
        let status = ui.status().await;
        assert_eq!(status["agent"]["pid"].as_u64(), tray.as_ref().map(|t| u64::from(t.id())), "{status:#}");
        ui.shot("agent-started").await;
    })
    .await;
    if let Some(mut tray) = tray {
        // Quit by `with_app` (SIGTERM to the agent's process): reaped here.
        let deadline = Instant::now() + Duration::from_secs(15);
        while tray.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = tray.kill();
                let _ = tray.wait();
                panic!("the tray app did not quit:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    print_shots(&shots);
}
