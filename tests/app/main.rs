//! End-to-end tests of the tray app: the real `idlemesh-app` binary with its
//! embedded agent, in a real WebKitGTK webview on Xvfb, driven over
//! WebDriver (`WebKitWebDriver`, as `tauri-driver` starts it), against a real pool
//! server on a loopback port. Screenshots of every page are saved under
//! `target/tmp/app-screenshots/` (not committed).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use app_env::{AppEnv, app_env, pool_with_job, proc_state, session_keyring};
use fantoccini::{Client, ClientBuilder, Locator};
use idlemesh_agent::control::{self, Request};
use serde_json::{Value, json};

#[path = "../common/app_env.rs"]
mod app_env;
#[path = "../common/dashboard.rs"]
mod dashboard;
mod first_run;
mod packages;
#[path = "../common/private_root.rs"]
mod private_root;
#[path = "../common/session_bus.rs"]
mod session_bus;
#[path = "../common/sni.rs"]
mod sni;
mod tray;
#[path = "../common/xvfb.rs"]
#[allow(dead_code, reason = "shared with tests/e2e, which uses all of it")]
mod xvfb;

const APP: &str = env!("CARGO_BIN_EXE_idlemesh-app");

/// The processes whose parent is `parent`.
fn children(parent: u32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // "pid (comm) state ppid ...": the fields after the last ')'.
            stat.rsplit(") ").next().and_then(|rest| rest.split(' ').nth(1)).and_then(|p| p.parse().ok())
                == Some(parent)
        })
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// WebKitWebDriver, which starts the app and automates its webview.
///
/// Spoken to directly, with the capability `tauri-driver` would translate
/// `tauri:options` into on Linux: through tauri-driver's proxy, a request
/// now and then never got an answer and the test hung (three runs of three,
/// at different steps). Stopped with SIGTERM, which ends its browser session.
struct Driver {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Driver {
    fn start(env: &[(String, String)], log: PathBuf) -> Self {
        let port = free_port();
        let mut cmd = Command::new("WebKitWebDriver");
        cmd.args([format!("--port={port}"), "--host=127.0.0.1".into()])
            // What tauri-driver sets: Tauri turns on the webview's automation only with it.
            .env("TAURI_WEBVIEW_AUTOMATION", "true")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("WebKitWebDriver is installed (scripts/setup installs webkit2gtk-driver)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "WebKitWebDriver did not listen on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { child, port, log }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Ui {
    client: Client,
    display: String,
    socket: PathBuf,
    shots: PathBuf,
}

impl Ui {
    async fn status(&self) -> Value {
        control::call(&self.socket, &Request::Status).await.expect("the app's agent answers on its socket")
    }

    async fn text(&self, css: &str) -> String {
        self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).text().await.unwrap()
    }

    async fn click(&self, css: &str) {
        self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).click().await.unwrap();
    }

    /// Polls `css`'s text until `ok` holds; panics with the last text seen.
    async fn wait_text(&self, css: &str, limit: Duration, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Ok(el) = self.client.find(Locator::Css(css)).await {
                last = el.text().await.unwrap_or_default();
                if ok(&last) {
                    return last;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("{css}: waited {limit:?}, last text {last:?}");
    }

    async fn wait_status(&self, what: &str, limit: Duration, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.status().await;
            if ok(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; status: {s:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn page(&self, name: &str) {
        self.click(&format!("#nav-{name}")).await;
        self.client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(&format!("#page-{name}")))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    /// Saves a screenshot of the X screen (an artefact, not a check). Read
    /// from the X server, not through WebDriver: WebKitGTK's snapshot now and
    /// then never returned on this machine, and every later command then
    /// waited behind it.
    async fn shot(&self, name: &str) {
        let path = self.shots.join(format!("{name}.png"));
        if let Err(e) = x_screenshot(&self.display, &path) {
            eprintln!("app test: no screenshot of {name}: {e}");
        }
    }

    /// Runs `script` in the page and returns its value.
    async fn script(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    /// `invoke` from inside the webview, as the dashboard's code would.
    async fn invoke(&self, command: &str, args: Value) -> Value {
        let script = r#"
            const [command, args, done] = arguments;
            window.__TAURI_INTERNALS__.invoke(command, args)
                .then((result) => done({ ok: result }), (error) => done({ error }));
        "#;
        self.client.execute_async(script, vec![json!(command), args]).await.unwrap()
    }
}

/// The root window of `display` as an RGB PNG.
/// The luma (0–255) of a CSS `rgb(r, g, b)` colour.
fn luma(css: &str) -> f64 {
    let n: Vec<f64> = css
        .trim_start_matches("rgba(")
        .trim_start_matches("rgb(")
        .trim_end_matches(')')
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    assert!(n.len() >= 3, "not an rgb() colour: {css}");
    0.299 * n[0] + 0.587 * n[1] + 0.114 * n[2]
}

fn x_screenshot(display: &str, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use x11rb::connection::Connection as _;
    use x11rb::protocol::xproto::{ConnectionExt as _, ImageFormat};
    let (conn, screen) = x11rb::connect(Some(display))?;
    let screen = &conn.setup().roots[screen];
    let (w, h) = (screen.width_in_pixels, screen.height_in_pixels);
    let image = conn.get_image(ImageFormat::Z_PIXMAP, screen.root, 0, 0, w, h, !0)?.reply()?;
    // Depth 24 in 32-bit pixels, little-endian: B, G, R, unused.
    let rgb: Vec<u8> = image.data.chunks_exact(4).flat_map(|p| [p[2], p[1], p[0]]).collect();
    let mut encoder = png::Encoder::new(std::fs::File::create(path)?, u32::from(w), u32::from(h));
    encoder.set_color(png::ColorType::Rgb);
    encoder.write_header()?.write_image_data(&rgb)?;
    Ok(())
}

#[tokio::test(flavor = "current_thread")]
async fn the_dashboard_shows_controls_and_verifies_a_real_agent() {
    session_keyring();
    rustls::crypto::ring::default_provider().install_default().ok();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (pool_url, _server) = pool_with_job(&root.join("pool")).await;

    let x = xvfb::Xvfb::with_screen("1280x1024x24");
    let bus = session_bus::SessionBus::start();
    let AppEnv { env, socket, config_dir } = app_env(root, &pool_url, &x, &bus);
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("app-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let (driver, ui) = launch(&env, &["--dashboard"], &x, socket, shots).await;
    let outcome = drive(driver, ui, Duration::from_secs(300), async |ui| steps(ui, &pool_url, &config_dir).await).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Runs `steps` on the app under `limit` (a WebDriver call that never
/// returns must fail the test, not hang it), then quits the app and ends
/// the WebDriver session whatever happened; returns how the steps ended,
/// for the caller to fail with once it has cleaned up.
async fn drive(driver: Driver, ui: Ui, limit: Duration, steps: impl AsyncFnOnce(&Ui)) -> std::thread::Result<()> {
    use futures_util::FutureExt as _;
    let run = std::panic::AssertUnwindSafe(steps(&ui)).catch_unwind();
    let outcome = match tokio::time::timeout(limit, run).await {
        Ok(outcome) => outcome,
        Err(_) => Err(Box::new(format!("the test steps took over {limit:?}")) as Box<dyn std::any::Any + Send>),
    };
    ui.quit(driver).await;
    outcome
}

/// Starts WebKitWebDriver and, through it, the app with `args` and `env`;
/// returns once a dashboard webview is under automation (the session waits
/// for the app to open one).
async fn launch(
    env: &[(String, String)],
    args: &[&str],
    x: &xvfb::Xvfb,
    socket: PathBuf,
    shots: PathBuf,
) -> (Driver, Ui) {
    let driver = Driver::start(env, shots.join("webdriver.log"));
    let client = connect(&driver, args).await;
    (driver, Ui { client, display: x.display.clone(), socket, shots })
}

/// A WebDriver session with the app (started by WebKitWebDriver with `args`).
async fn connect(driver: &Driver, args: &[&str]) -> Client {
    connect_to(driver.port, &driver.log, args).await
}

/// [`connect`] by the driver's port and log (from another task).
async fn connect_to(port: u16, log: &Path, args: &[&str]) -> Client {
    let caps = serde_json::from_value(json!({
        "webkitgtk:browserOptions": { "binary": APP, "args": args }
    }))
    .unwrap();
    ClientBuilder::rustls()
        .expect("rustls client")
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .unwrap_or_else(|e| {
            let log = std::fs::read_to_string(log.with_extension("err")).unwrap_or_default();
            panic!("no WebDriver session with the app: {e}\n{log}")
        })
}

impl Ui {
    /// Quits the app as a logout would (closing the window only hides it in
    /// the tray, so WebKitWebDriver would wait for it for ever), then ends
    /// the session.
    async fn quit(self, driver: Driver) {
        let app_pid = control::call(&self.socket, &Request::Status).await.ok().and_then(|s| s["agent"]["pid"].as_i64());
        // Without an agent to ask (it did not start), the app is the driver's child.
        let pids = app_pid.map_or_else(|| children(driver.child.id()), |pid| vec![pid as i32]);
        for pid in pids {
            // SAFETY: signalling the app this test started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.client.close()).await;
        drop(driver);
    }
}

/// The steps of the dashboard test (`drive` closes the session even when one fails).
async fn steps(ui: &Ui, pool_url: &str, config_dir: &Path) {
    // Now: the state and every reason of the running agent.
    eprintln!("app test: Now");
    ui.wait_text("#state", Duration::from_secs(90), |t| t.contains("Working for the pool")).await;
    let s = ui.wait_status("a task running", Duration::from_secs(10), |s| s["state"] == "working").await;
    assert_eq!(s["scheduler"]["pool"], pool_url);
    let shown: Vec<String> = {
        let items = ui.client.find_all(Locator::Css("#reasons li")).await.unwrap();
        let mut texts = Vec::new();
        for li in items {
            texts.push(li.text().await.unwrap());
        }
        texts
    };
    for reason in s["reasons"].as_array().unwrap() {
        let text = reason["text"].as_str().unwrap();
        // The texts of a running agent change (seconds away); the code-stable prefix must show.
        let stem: String = text.chars().take(12).collect();
        assert!(shown.iter().any(|t| t.contains(&stem)), "reason {text:?} not shown in {shown:?}");
    }
    ui.page("now").await;
    ui.shot("now").await;

    // Pausing from the UI freezes the worker by the time the agent answers.
    eprintln!("app test: Pausing from the UI freezes the worker by the time the agent answers.");
    ui.click("#pause-indefinitely").await;
    let s = ui
        .wait_status("the worker frozen", Duration::from_secs(5), |s| {
            s["paused"] == true && s["workers"]["frozen"] == true
        })
        .await;
    for pid in s["workers"]["pids"].as_array().unwrap() {
        assert_eq!(proc_state(pid.as_u64().unwrap()), 'T', "worker {pid} is stopped");
    }
    ui.wait_text("#state", Duration::from_secs(5), |t| t.contains("Paused")).await;
    ui.click("#resume").await;
    ui.wait_status("the worker running again", Duration::from_secs(5), |s| {
        s["workers"]["frozen"] == false && s["paused"] == false
    })
    .await;

    // Limits: a change persists and takes effect.
    eprintln!("app test: Limits");
    ui.page("limits").await;
    // The rows are the agent's schema: its labels, help, ranges and defaults.
    ui.wait_text("#accepts-cpu_duty_cycle_percent", Duration::from_secs(10), |t| t == "From 1 to 100, default 60.")
        .await;
    let label = ui.text("label[for='setting-cpu_duty_cycle_percent']").await;
    assert_eq!(label, "Share of each core’s time (%)");
    let schema = ui.invoke("settings_schema", json!({})).await["ok"].clone();
    let help = schema.as_array().and_then(|s| s.iter().find(|s| s["key"] == "cpu_duty_cycle_percent")).unwrap();
    assert_eq!(ui.text("#help-cpu_duty_cycle_percent").await, help["help"].as_str().unwrap(), "{schema}");
    let locked_by = schema.as_array().and_then(|s| s.iter().find(|s| s["key"] == "min_battery_percent")).unwrap();
    assert_eq!(locked_by["locked"], true, "{locked_by}");
    ui.shot("limits").await;
    let input = ui.client.find(Locator::Css("#setting-cpu_duty_cycle_percent")).await.unwrap();
    input.clear().await.unwrap();
    input.send_keys("50").await.unwrap();
    ui.click("#save-cpu_duty_cycle_percent").await;
    ui.wait_text("#message-cpu_duty_cycle_percent", Duration::from_secs(5), |t| t.contains("Saved")).await;
    let on_disk = std::fs::read_to_string(config_dir.join("settings.toml")).unwrap();
    assert!(on_disk.contains("cpu_duty_cycle_percent = 50"), "{on_disk}");
    ui.wait_status("duty cycle 50%", Duration::from_secs(5), |s| s["decision"]["action"]["duty_cycle_percent"] == 50)
        .await;
    // A bad value is refused with the agent's words, and nothing changes.
    eprintln!("app test: A bad value is refused with the agent's words, and nothing changes.");
    input.clear().await.unwrap();
    input.send_keys("0").await.unwrap();
    ui.click("#save-cpu_duty_cycle_percent").await;
    ui.wait_text("#message-cpu_duty_cycle_percent", Duration::from_secs(5), |t| {
        t.contains("1") && !t.contains("Saved")
    })
    .await;
    assert!(std::fs::read_to_string(config_dir.join("settings.toml")).unwrap().contains("cpu_duty_cycle_percent = 50"));

    // A locked policy value cannot be edited, in the page or by calling the agent.
    eprintln!("app test: A locked policy value cannot be edited, in the page or by calling the agent.");
    let locked = ui.client.find(Locator::Css("#setting-min_battery_percent")).await.unwrap();
    assert!(!locked.is_enabled().await.unwrap(), "a locked setting's input is disabled");
    let page = ui.text("#page-limits").await;
    assert!(page.contains("managed by your organisation"), "{page}");
    let refused = ui.invoke("settings_set", json!({"key": "min_battery_percent", "value": "10"})).await;
    assert_eq!(refused["error"]["code"], "locked", "{refused}");
    assert_eq!(ui.status().await["settings"]["min_battery_percent"]["value"], 90);

    // Stats and privacy render from the real ledger.
    eprintln!("app test: Stats and privacy render from the real ledger.");
    ui.page("stats").await;
    ui.shot("stats").await;
    ui.page("privacy").await;
    ui.shot("privacy").await;
    let privacy = ui.text("#disclosures").await;
    assert!(privacy.contains(pool_url), "the enrollment disclosure to {pool_url} is listed: {privacy}");

    // Ledger: export and verify.
    eprintln!("app test: Ledger");
    ui.page("ledger").await;
    ui.click("#export-csv").await;
    let exported = ui.wait_text("#export-result", Duration::from_secs(10), |t| t.contains(".csv")).await;
    let path = exported
        .split_whitespace()
        .find(|w| w.ends_with(".csv"))
        .unwrap_or_else(|| panic!("no file path in {exported:?}"));
    let csv = std::fs::read_to_string(path).unwrap();
    assert!(csv.starts_with("seq,at,kind,body,prev_hash,hash\n"), "{csv}");
    assert!(csv.lines().count() >= 3, "header + disclosure + pause at least: {csv}");
    ui.click("#verify").await;
    let verified = ui.wait_text("#verify-result", Duration::from_secs(10), |t| !t.is_empty()).await;
    assert!(verified.contains("Chain intact"), "{verified}");

    // Pools: this pool is listed as current.
    eprintln!("app test: Pools");
    ui.page("pools").await;
    ui.shot("pools").await;
    let rows = ui.text("#page-pools").await;
    assert!(rows.contains(pool_url), "{rows}");
    ui.page("ledger").await;
    ui.shot("ledger").await;

    // Light mode here (the system's, as GTK reports it): the page is light.
    let scheme = ui.script("return [matchMedia('(prefers-color-scheme: dark)').matches, getComputedStyle(document.documentElement).backgroundColor]").await;
    assert_eq!(scheme[0], false, "{scheme}");
    assert!(luma(scheme[1].as_str().unwrap()) > 180.0, "a light background: {scheme}");

    // 200 % zoom with the keyboard (Ctrl+= five times, 20 % each): the
    // layout reflows to half the CSS width and nothing scrolls sideways.
    eprintln!("app test: 200 % zoom");
    let width = ui.script("return window.innerWidth").await.as_f64().unwrap();
    let body = ui.client.find(Locator::Css("body")).await.unwrap();
    for _ in 0..5 {
        // U+E009 holds Control, U+E000 releases it.
        body.send_keys("\u{E009}=\u{E000}").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let zoomed = ui.script("return window.innerWidth").await.as_f64().unwrap();
        if (zoomed - width / 2.0).abs() <= 2.0 {
            break;
        }
        assert!(Instant::now() < deadline, "innerWidth {zoomed} after zooming in from {width}: not 200 %");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for name in ["now", "limits", "stats", "ledger", "privacy", "pools"] {
        // By keyboard: WebKitWebDriver's clicks miss under page zoom
        // (it does not scale the element's coordinates).
        let link = ui.client.find(Locator::Css(&format!("#nav-{name}"))).await.unwrap();
        link.send_keys("\u{E007}").await.unwrap();
        ui.client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(&format!("#page-{name}")))
            .await
            .unwrap_or_else(|e| panic!("Enter on #nav-{name} at 200 %: {e}"));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let overflow =
            ui.script("return document.documentElement.scrollWidth - document.documentElement.clientWidth").await;
        ui.shot(&format!("{name}-200-percent")).await;
        let culprits = ui
            .script(
                "const w = document.documentElement.clientWidth; return [...document.querySelectorAll('body *')]
                   .filter((e) => e.getBoundingClientRect().right > w + 1)
                   .filter((e) => ![...e.children].some((c) => c.getBoundingClientRect().right > w + 1))
                   .sort((a, b) => b.getBoundingClientRect().right - a.getBoundingClientRect().right)
                   .slice(0, 5).map((e) => e.tagName + '#' + e.id + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))",
            )
            .await;
        assert!(
            overflow.as_f64().unwrap() <= 1.0,
            "{name} scrolls sideways at 200 %: {overflow} px; wider than the page: {culprits}"
        );
    }

    // Start at login: the entry starts the tray program, not this window's.
    eprintln!("app test: start at login");
    let entry = config_dir.with_file_name("home/.config/autostart/Idlemesh.desktop");
    let on = ui.invoke("autostart_set", json!({"enabled": true})).await;
    assert_eq!(on["ok"]["autostart"], true, "{on}");
    let desktop = std::fs::read_to_string(&entry).unwrap_or_else(|e| panic!("{}: {e}", entry.display()));
    let exec = desktop.lines().find(|l| l.starts_with("Exec=")).unwrap_or_default();
    assert!(exec.contains("/idlemesh-app") && !exec.contains("dashboard"), "{desktop}");
    assert_eq!(ui.invoke("app_info", json!({})).await["ok"]["autostart"], true);
    let off = ui.invoke("autostart_set", json!({"enabled": false})).await;
    assert_eq!(off["ok"]["autostart"], false, "{off}");
    assert!(!entry.exists(), "the entry is removed");
}
