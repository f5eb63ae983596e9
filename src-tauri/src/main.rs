//! The Idlemesh tray app (`idlemesh-app`): the tray icon and the embedded
//! agent. The same executable is also the sandboxed worker (`idlemesh-app
//! worker`): the agent starts its own executable again in worker mode, so
//! no worker binary has to ship beside the app (DESIGN §1). The dashboard
//! is the program beside it, `idlemesh-dashboard` (src/dashboard/), a
//! process of its own that the tray starts and that ends when its window
//! closes; `idlemesh-app dashboard` runs it in this process's place.
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

mod app;
mod demo;
#[cfg(target_os = "linux")]
mod gl;
mod notify;
#[allow(dead_code, reason = "shared with the dashboard, which needs the tray's name")]
mod programs;
#[cfg(target_os = "linux")]
mod single_instance;
mod tray;

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let mode = args.next();
    if mode.as_deref() == Some("worker".as_ref()) {
        idlemesh_agent::init_logging("warn", None);
        return idlemesh_runtime::worker::main(args);
    }
    if mode.as_deref() == Some("dashboard".as_ref()) {
        return run_dashboard();
    }
    #[cfg(target_os = "linux")]
    gl::keep_gl_out_of_gtk();
    app::run()
}

/// `idlemesh-app dashboard`: becomes the dashboard program (same process).
fn run_dashboard() -> ExitCode {
    let exe = match programs::beside(programs::DASHBOARD) {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("idlemesh-app dashboard: cannot find this program's path: {e}");
            return ExitCode::FAILURE;
        }
    };
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt as _;
        let e = std::process::Command::new(&exe).exec();
        eprintln!("idlemesh-app dashboard: cannot start {}: {e}", exe.display());
        ExitCode::FAILURE
    }
    #[cfg(not(unix))]
    match std::process::Command::new(&exe).status() {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("idlemesh-app dashboard: cannot start {}: {e}", exe.display());
            ExitCode::FAILURE
        }
    }
}
