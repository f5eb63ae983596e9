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
    app::run()
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
