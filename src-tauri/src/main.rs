//! The Idlemesh tray app. The same executable is also the sandboxed worker
//! (`idlemesh-app worker`): the agent starts its own executable again in
//! worker mode, so no second binary has to ship beside the app (DESIGN §1).
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

mod app;
mod commands;
mod demo;
mod notify;
mod tray;

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() == Some("worker".as_ref()) {
        idlemesh_agent::logs::init("warn", None);
        return idlemesh_runtime::worker::main(args);
    }
    #[cfg(target_os = "linux")]
    keep_gl_out_of_gtk();
    app::run()
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
