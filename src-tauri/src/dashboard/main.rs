//! The Idlemesh dashboard (`idlemesh-dashboard`): one webview window whose
//! commands (`commands.rs`) are requests to the agent over its control
//! socket, the same socket the CLI uses. The tray starts it ("Open
//! dashboard"); closing the window ends it, and WebKit's processes and
//! memory with it. It is a program of its own so that the tray, which
//! runs all day, does not even link WebKit (docs/architecture.md).
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

mod commands;
#[cfg(target_os = "linux")]
#[path = "../gl.rs"]
mod gl;
#[allow(dead_code, reason = "shared with the tray, which needs the dashboard's name")]
#[path = "../programs.rs"]
mod programs;
#[cfg(target_os = "linux")]
mod webkit_gl;
mod window;

fn main() -> std::process::ExitCode {
    window::run()
}
