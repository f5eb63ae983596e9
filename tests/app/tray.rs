//! The tray icon and its menu, seen the way a desktop panel sees them: over
//! the StatusNotifierItem and dbusmenu D-Bus interfaces, with the real app
//! working for a real pool.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use idlemesh_agent::control::{self, Request};
use serde_json::Value;

use crate::app_env::{AppEnv, app_env, pool_with_job, proc_state, session_keyring, spawn_logged, wait_until};
use crate::dashboard::{close_dashboard, is_dashboard};
use crate::{APP, session_bus, sni, xvfb};

/// Kills the app if the test fails half way, so no stray app keeps the bus busy.
struct App(Child);

impl Drop for App {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The colours of the tray icon (`src-tauri/src/tray.rs`).
const GREEN_WORKING: [u8; 4] = [46, 160, 67, 255];
const GREY_PAUSED: [u8; 4] = [110, 118, 129, 255];

/// Whether a viewable top-level window titled "Idlemesh" is on the display.
pub(crate) fn dashboard_shown(display: &str) -> bool {
    use x11rb::connection::Connection as _;
    use x11rb::protocol::xproto::{AtomEnum, ConnectionExt as _, MapState};
    let Ok((conn, screen)) = x11rb::connect(Some(display)) else { return false };
    let root = conn.setup().roots[screen].root;
    let Ok(tree) = conn.query_tree(root).unwrap().reply() else { return false };
    tree.children.into_iter().any(|w| {
        let named = conn
            .get_property(false, w, AtomEnum::WM_NAME, AtomEnum::ANY, 0, 64)
            .unwrap()
            .reply()
            .is_ok_and(|n| n.value == b"Idlemesh");
        let viewable = conn.get_window_attributes(w).unwrap().reply().is_ok_and(|a| a.map_state == MapState::VIEWABLE);
        named && viewable
    })
}

/// The app's dashboard processes (`idlemesh-dashboard`) among `pid`'s children.
fn dashboards(pid: u32) -> Vec<i32> {
    crate::children(pid).into_iter().filter(|&c| is_dashboard(c)).collect()
}

/// Closes the dashboard window and waits for its process to end.
fn close_and_wait(display: &str, pid: i32, cycle: usize) {
    assert!(close_dashboard(display), "cycle {cycle}: a window to close");
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(pid) {
        assert!(Instant::now() < deadline, "cycle {cycle}: the dashboard process {pid} did not end with its window");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the dashboard's page is drawn (its main area's top left is not
/// the black of an empty X screen or an unpainted window).
fn drawn(display: &str) -> bool {
    pixel(display, 700, 6).is_some_and(|[r, g, b]| u16::from(r) + u16::from(g) + u16::from(b) > 15)
}

/// Which of `libraries` (parts of a file name) `pid` has mapped.
fn maps_any<'a>(pid: u32, libraries: &[&'a str]) -> Vec<&'a str> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    libraries.iter().copied().filter(|library| maps.contains(library)).collect()
}

/// Whether `pid` is alive (not gone, not a zombie).
fn alive(pid: i32) -> bool {
    !matches!(proc_state(pid as u64), '?' | 'Z')
}

/// One pixel of the X screen.
fn pixel(display: &str, x: i16, y: i16) -> Option<[u8; 3]> {
    use x11rb::connection::Connection as _;
    use x11rb::protocol::xproto::{ConnectionExt as _, ImageFormat};
    let (conn, screen) = x11rb::connect(Some(display)).ok()?;
    let root = conn.setup().roots[screen].root;
    let image = conn.get_image(ImageFormat::Z_PIXMAP, root, x, y, 1, 1, !0).ok()?.reply().ok()?;
    // Depth 24 in a 32-bit pixel, little-endian: B, G, R.
    Some([image.data[2], image.data[1], image.data[0]])
}

#[test]
fn the_tray_shows_the_state_and_its_menu_pauses_resumes_opens_and_quits() {
    session_keyring();
    rustls::crypto::ring::default_provider().install_default().ok();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (pool_url, _server) = rt.block_on(pool_with_job(&root.join("pool")));
    let x = xvfb::Xvfb::with_screen("1280x1024x24");
    let bus = session_bus::SessionBus::start();
    // The panel is there before the app, as at login.
    let host = sni::Host::start(&bus.address);
    let AppEnv { mut env, socket, .. } = app_env(root, &pool_url, &x, &bus);
    // A dark system theme: the dashboard must follow it.
    env.push(("GTK_THEME".into(), "Adwaita:dark".into()));
    let log = root.join("app.log");
    let mut app = App(spawn_logged(Path::new(APP), env, &log));
    let status = || -> Value {
        rt.block_on(control::call(&socket, &Request::Status)).unwrap_or_else(|e| panic!("status: {e:?}"))
    };

    let item = host.item(Duration::from_secs(30));
    eprintln!("tray test: item {}{} registered", item.bus, item.path);

    // Working: the menu says so in words, the icon is green.
    wait_until("the agent to start", Duration::from_secs(30), || socket.exists());
    wait_until("a task to run", Duration::from_secs(90), || status()["state"] == "working");
    item.wait_state_line(Duration::from_secs(5), |l| l == "Idlemesh: Working for the pool");
    wait_until("the green icon", Duration::from_secs(5), || item.icon_centre() == GREEN_WORKING);
    let entries = item.menu_entries();
    let labels: Vec<&str> = entries.iter().map(|e| e.label.as_str()).collect();
    assert_eq!(
        labels,
        [
            "Idlemesh: Working for the pool",
            "Pause for 15 minutes",
            "Pause for 1 hour",
            "Pause until tomorrow",
            "Pause until I resume",
            "Pause GPU work only",
            "Pause processor work only",
            "Resume",
            "Open dashboard",
            "Quit Idlemesh",
        ]
    );
    assert!(!entries[0].enabled, "the state line is information, not a button");
    assert!(entries[1..].iter().all(|e| e.enabled));

    // Pause for 15 minutes: the worker freezes, the menu and icon follow.
    let s = status();
    let pid = s["workers"]["pids"][0].as_u64().expect("a worker runs");
    let clicked = Instant::now();
    item.click("Pause for 15 minutes");
    // The status first: a duty-cycle stop also shows the worker as `T`, so
    // the process state alone does not say the menu's pause was recorded.
    let took = wait_until("the pause to be recorded and the worker frozen", Duration::from_secs(10), || {
        status()["manual_pause"]["kind"] == "until" && proc_state(pid) == 'T'
    });
    eprintln!("tray test: menu click to frozen worker: {:.1} ms", took.as_secs_f64() * 1e3);
    let s = status();
    assert_eq!(s["paused"], true, "{s:#}");
    assert_eq!(s["manual_pause"]["kind"], "until", "{s:#}");
    let until = s["manual_pause"]["until_ms"].as_u64().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let expected = now + 15 * 60_000 - clicked.elapsed().as_millis() as u64;
    assert!(until.abs_diff(expected) < 30_000, "paused until {until}, expected about {expected}");
    item.wait_state_line(Duration::from_secs(5), |l| l.starts_with("Idlemesh: Paused: paused by you until"));
    wait_until("the grey icon", Duration::from_secs(5), || item.icon_centre() == GREY_PAUSED);

    // Resume: the same worker continues.
    item.click("Resume");
    wait_until("the resume to be recorded", Duration::from_secs(10), || status()["paused"] == false);
    wait_until("the worker to run again", Duration::from_secs(10), || proc_state(pid) != 'T');
    item.wait_state_line(Duration::from_secs(5), |l| l == "Idlemesh: Working for the pool");

    // Until I resume: no end time.
    item.click("Pause until I resume");
    wait_until("the pause to be recorded and the worker frozen", Duration::from_secs(10), || {
        status()["manual_pause"]["kind"] == "until_resumed" && proc_state(pid) == 'T'
    });
    item.click("Resume");
    wait_until("the resume to be recorded", Duration::from_secs(10), || status()["paused"] == false);
    wait_until("the worker to run again", Duration::from_secs(10), || proc_state(pid) != 'T');

    // Open dashboard: the window (and its webview) is created on demand,
    // in a process of its own; the tray process never holds a webview.
    let tray = app.0.id();
    assert!(!dashboard_shown(&x.display), "the app starts in the tray, without a window");
    assert!(dashboards(tray).is_empty(), "no dashboard process before it is opened");
    item.click("Open dashboard");
    wait_until("the dashboard window", Duration::from_secs(30), || dashboard_shown(&x.display));
    let dashboard = dashboards(tray);
    assert_eq!(dashboard.len(), 1, "one dashboard process, the tray's child");
    let dashboard = dashboard[0];
    let webkit_children: Vec<String> = crate::children(tray)
        .iter()
        .map(|c| std::fs::read_to_string(format!("/proc/{c}/comm")).unwrap_or_default().trim().to_string())
        .filter(|c| c.starts_with("WebKit"))
        .collect();
    assert!(
        webkit_children.is_empty(),
        "WebKit's processes belong to the dashboard, not the tray: {webkit_children:?}"
    );
    // The tray does not even load WebKit (or a GL driver): its memory stays
    // what it was before the dashboard opened.
    let mapped = maps_any(tray, &["libwebkit2gtk", "libjavascriptcoregtk", "libLLVM", "_dri.so"]);
    assert!(mapped.is_empty(), "the tray process maps {mapped:?}");
    // Dark, as the system theme is: the page background (top of the main
    // area; the window sits at the screen's origin without a window manager).
    wait_until("the dashboard drawn dark", Duration::from_secs(30), || {
        pixel(&x.display, 700, 6).is_some_and(|[r, g, b]| {
            let luma = 0.299 * f64::from(r) + 0.587 * f64::from(g) + 0.114 * f64::from(b);
            luma < 60.0 && luma > 5.0
        })
    });
    // Drawn, and without the GL driver WebKit would load in the dashboard
    // process only to look for a GPU (its web process has its own).
    let mapped = maps_any(dashboard as u32, &["libLLVM", "_dri.so", "libgallium"]);
    assert!(mapped.is_empty(), "the dashboard process maps {mapped:?}");

    // A second "Open dashboard" brings the open window forward: still one.
    item.click("Open dashboard");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(dashboards(tray), [dashboard], "the open dashboard is reused, not doubled");
    assert!(dashboard_shown(&x.display));

    // Closed and opened five times from the menu: each close ends the
    // dashboard process, and the tray still answers.
    for cycle in 1..=5 {
        let open = if cycle == 1 {
            dashboard
        } else {
            item.click("Open dashboard");
            wait_until("the dashboard window", Duration::from_secs(30), || dashboard_shown(&x.display));
            let open = dashboards(tray);
            assert_eq!(open.len(), 1, "cycle {cycle}: one dashboard process");
            open[0]
        };
        // Closed once drawn, as a person would: a close sent in the first
        // instants of the window can be lost.
        wait_until("the dashboard drawn", Duration::from_secs(30), || drawn(&x.display));
        close_and_wait(&x.display, open, cycle);
        assert!(dashboards(tray).is_empty(), "cycle {cycle}: no dashboard process left");
        wait_until("the window to go", Duration::from_secs(5), || !dashboard_shown(&x.display));
        // The job may run out meanwhile: working, or waiting for more.
        let s = status();
        assert!(matches!(s["state"].as_str(), Some("working" | "waiting_for_work")), "cycle {cycle}: {s:#}");
        let line = item.menu_entries()[0].label.clone();
        assert!(
            line.starts_with("Idlemesh: Working") || line.starts_with("Idlemesh: Waiting"),
            "cycle {cycle}: {line}"
        );
    }

    // A dashboard killed outright leaves the tray and the agent working:
    // the menu still pauses and resumes the worker.
    item.click("Open dashboard");
    wait_until("the dashboard window", Duration::from_secs(30), || dashboard_shown(&x.display));
    let killed = dashboards(tray)[0];
    wait_until("the dashboard drawn", Duration::from_secs(30), || drawn(&x.display));
    // SAFETY: signalling the dashboard process this test's app started.
    unsafe { libc::kill(killed, libc::SIGKILL) };
    wait_until("the killed dashboard to be reaped", Duration::from_secs(10), || !alive(killed));
    wait_until("the killed dashboard's window to go", Duration::from_secs(10), || !dashboard_shown(&x.display));
    // (The job may have run out: every worker there is, frozen.)
    let workers_frozen = |s: &Value| {
        s["workers"]["pids"].as_array().is_some_and(|p| p.iter().all(|p| proc_state(p.as_u64().unwrap()) == 'T'))
    };
    item.click("Pause until I resume");
    wait_until("the pause to be recorded and the workers frozen", Duration::from_secs(10), || {
        let s = status();
        s["manual_pause"]["kind"] == "until_resumed" && workers_frozen(&s)
    });
    item.click("Resume");
    wait_until("the resume to be recorded", Duration::from_secs(10), || status()["paused"] == false);
    item.click("Open dashboard");
    wait_until("a new dashboard window after the kill", Duration::from_secs(30), || {
        dashboard_shown(&x.display) && dashboards(tray).len() == 1
    });
    let reopened = dashboards(tray);

    // Quit: the app stops its agent and its worker, closes its dashboard,
    // and exits cleanly.
    item.click("Quit Idlemesh");
    let mut exit = None;
    wait_until("the app to quit", Duration::from_secs(15), || {
        exit = app.0.try_wait().unwrap();
        exit.is_some()
    });
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(exit.unwrap().success(), "the app quit with {exit:?}:\n{log}");
    wait_until("the worker to end", Duration::from_secs(5), || proc_state(pid) == '?' || proc_state(pid) == 'Z');
    wait_until("the dashboard to close with the app", Duration::from_secs(10), || !alive(reopened[0]));
}
