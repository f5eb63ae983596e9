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
mod notify;
#[cfg(target_os = "linux")]
mod single_instance;
mod status_shape;
mod tray;

use std::path::PathBuf;
use std::process::ExitCode;

/// The dashboard's program, beside this one.
const DASHBOARD_PROGRAM: &str = "idlemesh-dashboard";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let mode = args.next();
    if mode.as_deref() == Some("worker".as_ref()) {
        idlemesh_agent::logs::init("warn", None);
        return idlemesh_runtime::worker::main(args);
    }
    if mode.as_deref() == Some("dashboard".as_ref()) {
        return run_dashboard();
    }
    #[cfg(target_os = "linux")]
    keep_gl_out_of_gtk();
    app::run()
}

/// The dashboard program's path: beside this executable.
pub fn dashboard_exe() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.with_file_name(format!("{DASHBOARD_PROGRAM}{}", std::env::consts::EXE_SUFFIX)))
}

/// `idlemesh-app dashboard`: becomes the dashboard program (same process).
fn run_dashboard() -> ExitCode {
    let exe = match dashboard_exe() {
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

/// GTK 3 initialises GLX when it opens the X display, only to choose its
/// visuals, and that maps Mesa's driver (with LLVM: about 50 MiB) into a
/// tray that never draws with GL (docs/benchmarks.md). The dashboard
/// inherits it: its webview draws without GDK's GL (checked on screenshots
/// with and without WebKit's DMA-BUF renderer). A GDK_GL the user set wins.
#[cfg(target_os = "linux")]
fn keep_gl_out_of_gtk() {
    if std::env::var_os("GDK_GL").is_none() {
        // SAFETY: first thing in main, before any other thread exists.
        unsafe { std::env::set_var("GDK_GL", "disable") };
    }
}
