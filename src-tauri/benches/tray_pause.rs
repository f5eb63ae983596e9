//! How fast a pause from the tray menu freezes a running worker, beside the
//! same pause asked over the control socket (`idlemesh pause`), in one run:
//! the menu path (D-Bus click → GTK → Tauri menu event → agent) should add
//! next to nothing. Input-driven pausing is measured by `--bench agent input`.
//!
//! `cargo bench -p idlemesh-app --bench tray_pause` (Xvfb, D-Bus, kernel
//! keyring, as the app's end-to-end tests). Figures go to docs/benchmarks.md.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use idlemesh_agent::control::{self, Request};
use serde_json::Value;

#[path = "../../tests/common/app_env.rs"]
#[allow(dead_code, reason = "shared with the tests, which use all of it")]
mod app_env;
#[path = "../../tests/common/session_bus.rs"]
mod session_bus;
#[path = "../../tests/common/sni.rs"]
#[allow(dead_code, reason = "shared with the tests, which use all of it")]
mod sni;
#[path = "../../tests/common/xvfb.rs"]
#[allow(dead_code, reason = "shared with the tests, which use all of it")]
mod xvfb;

const APP: &str = env!("CARGO_BIN_EXE_idlemesh-app");
const TRIALS: usize = 40;

fn wait_for(mut ok: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !ok() {
        assert!(started.elapsed() < Duration::from_secs(10), "waited 10 s");
        std::thread::sleep(Duration::from_micros(200));
    }
    started.elapsed()
}

fn summary(label: &str, mut ms: Vec<f64>) -> f64 {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    println!(
        "{label:<40} p50 {:>6.2} ms  p95 {:>6.2} ms  max {:>6.2} ms  ({} trials)",
        at(0.5),
        at(0.95),
        at(1.0),
        ms.len()
    );
    at(0.5)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for the list of benchmarks
    }
    app_env::session_keyring();
    rustls::crypto::ring::default_provider().install_default().ok();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (pool_url, _server) = rt.block_on(app_env::pool_with_job(&root.join("pool")));
    let x = xvfb::Xvfb::with_screen("1280x1024x24");
    let bus = session_bus::SessionBus::start();
    let host = sni::Host::start(&bus.address);
    let app_env::AppEnv { env, socket, .. } = app_env::app_env(root, &pool_url, &x, &bus);
    let mut app =
        Command::new(APP).envs(env).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let call = |r: Request| -> Value { rt.block_on(control::call(&socket, &r)).expect("the app's agent answers") };
    let item = host.item(Duration::from_secs(30));
    wait_for(|| socket.exists());
    let started = Instant::now();
    let pid = loop {
        if let Some(pid) = call(Request::Status)["workers"]["pids"][0].as_u64() {
            break pid;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "no worker started");
        std::thread::sleep(Duration::from_millis(100));
    };
    let frozen = || app_env::proc_state(pid) == 'T';

    println!("idlemesh-app: pause → worker frozen (state T), release, Xvfb, one worker on Mandelbrot tiles:");
    let (mut menu, mut socket_ms) = (Vec::new(), Vec::new());
    for trial in 0..TRIALS {
        // Alternate, so drift on a shared machine hits both alike.
        let t = if trial % 2 == 0 {
            item.click("Pause until I resume");
            wait_for(frozen)
        } else {
            let t0 = Instant::now();
            call(Request::Pause { duration: Some("indefinitely".into()), only: idlemesh_control::Scope::All });
            wait_for(frozen);
            t0.elapsed()
        };
        if trial % 2 == 0 { &mut menu } else { &mut socket_ms }.push(t.as_secs_f64() * 1e3);
        call(Request::Resume { only: idlemesh_control::Scope::All });
        wait_for(|| !frozen());
        // Let it run a moment between trials, at a varying point of the agent's loops.
        std::thread::sleep(Duration::from_millis(50 + (trial as u64 * 37) % 200));
    }
    let m = summary("tray menu click (dbusmenu Event)", menu);
    let s = summary("control socket request", socket_ms);
    println!("menu / socket, p50: {:.2}×", m / s);

    // SAFETY: signalling our own child.
    unsafe { libc::kill(app.id() as i32, libc::SIGTERM) };
    let _ = app.wait();
}
