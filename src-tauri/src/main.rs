//! The Idlemesh tray app. The same executable is also the sandboxed worker
//! (`idlemesh-app worker`): the agent starts its own executable again in
//! worker mode, so no second binary has to ship beside the app (DESIGN §1),
//! and the dashboard (`idlemesh-app dashboard`), a process of its own that
//! the tray starts and that ends when its window closes.
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

mod app;
mod commands;
mod dashboard;
mod demo;
mod notify;
mod tray;

use std::process::ExitCode;

/// The first argument that starts the dashboard process.
const DASHBOARD_MODE: &str = "dashboard";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let mode = args.next();
    if mode.as_deref() == Some("worker".as_ref()) {
        idlemesh_agent::logs::init("warn", None);
        return idlemesh_runtime::worker::main(args);
    }
    #[cfg(target_os = "linux")]
    keep_gl_out_of_gtk();
    if mode.as_deref() == Some(DASHBOARD_MODE.as_ref()) { dashboard::run() } else { app::run() }
}

/// The app's configuration and assets, for either process. The dashboard
/// has an identifier of its own, so that its single instance (a second
/// "Open" brings its window forward) is apart from the tray's.
fn context(dashboard: bool) -> tauri::Context {
    let mut context = tauri::generate_context!();
    if dashboard {
        context.config_mut().identifier.push_str(".dashboard");
    }
    context
}

/// GTK 3 initialises GLX when it opens the X display, only to choose its
/// visuals, and that maps Mesa's driver (with LLVM: about 50 MiB) into a
/// tray app that never draws with GL: 129 MiB RSS with the dashboard closed
/// instead of 77 MiB (docs/benchmarks.md). The webview draws without GDK's
/// GL (checked on screenshots with and without WebKit's DMA-BUF renderer).
/// A GDK_GL the user set wins.
#[cfg(target_os = "linux")]
fn keep_gl_out_of_gtk() {
    if std::env::var_os("GDK_GL").is_none() {
        // SAFETY: first thing in main, before any other thread exists.
        unsafe { std::env::set_var("GDK_GL", "disable") };
    }
}
