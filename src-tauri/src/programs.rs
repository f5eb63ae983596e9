//! The app's two programs, installed side by side: the tray (which is
//! also the worker) and the dashboard. Each finds the other beside itself.

use std::path::PathBuf;

pub const TRAY: &str = "idlemesh-app";
pub const DASHBOARD: &str = "idlemesh-dashboard";

/// `program`'s path: in the folder of the running executable.
pub fn beside(program: &str) -> std::io::Result<PathBuf> {
    Ok(std::env::current_exe()?.with_file_name(format!("{program}{}", std::env::consts::EXE_SUFFIX)))
}
