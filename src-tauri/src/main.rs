//! The Idlemesh tray app. The same executable is also the sandboxed worker
//! (`idlemesh-app worker`): the agent starts its own executable again in
//! worker mode, so no second binary has to ship beside the app (DESIGN §1).
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

mod app;
mod commands;
mod demo;
mod notify;
mod tray;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() == Some("worker".as_ref()) {
        return worker(args.collect());
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

/// `worker [--cache-dir DIR] [--probe-gpu]`: exactly what `WorkerCommand::current_exe` passes.
fn worker(args: Vec<OsString>) -> ExitCode {
    let mut cache_dir = None;
    let mut probe_gpu = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--cache-dir") => cache_dir = args.next().map(PathBuf::from),
            Some("--probe-gpu") => probe_gpu = true,
            _ => {
                eprintln!("worker: unexpected argument {arg:?}");
                return ExitCode::from(2);
            }
        }
    }
    let result = if probe_gpu {
        idlemesh_runtime::worker::probe_gpu().map_err(|e| format!("no GPU for WGSL kernels: {e}"))
    } else {
        idlemesh_runtime::worker::serve(cache_dir).map_err(|e| e.to_string())
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("worker: {e}");
            ExitCode::FAILURE
        }
    }
}
