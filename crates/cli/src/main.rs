//! `idlemesh`: wiring only. Each subcommand parses its arguments and calls a
//! library; `main` maps the result to the exit status of DESIGN §4:
//! 0 success, 1 the work failed, 2 bad usage or bad input.
//!
//! **Must not** hold logic another front end (the tray app) would also
//! need: that belongs in the library the subcommand calls.

mod agent;
mod demo;
mod exit;
mod job;
mod kernel;
mod kernel_new;
mod ledger;
mod operator;
mod policy;
mod pool;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\nwasmtime ",
    env!("IDLEMESH_WASMTIME_VERSION"),
    "\nwgpu ",
    env!("IDLEMESH_WGPU_VERSION"),
    "\nprofile ",
    env!("IDLEMESH_PROFILE"),
);

#[derive(Parser)]
#[command(name = "idlemesh", version, long_version = LONG_VERSION, about = "Lend your computer's idle time to a compute pool, safely.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a local pool with a Mandelbrot job and work on it here: the first thing to try.
    Demo(demo::Args),
    /// The headless agent: watch this machine and work for a pool when allowed.
    Agent(agent::AgentArgs),
    /// What the running agent is doing and why.
    Status(agent::StatusArgs),
    /// Pause the running agent now (15m, 1h, tomorrow, indefinitely); `--gpu` or `--cpu`: one kind of work only.
    Pause(agent::PauseArgs),
    /// Let the running agent work again (`--gpu` or `--cpu`: one kind of work only).
    Resume(agent::ResumeArgs),
    /// Show or change the running agent's settings.
    Settings(agent::SettingsArgs),
    /// Read, export and verify the local ledger.
    Ledger(ledger::Args),
    /// Run one kernel in the sandbox, exactly as the agent would.
    Kernel(kernel::Args),
    /// Check an IT policy file before it ships.
    Policy(policy::Args),
    /// Run or administer a pool server.
    Pool(pool::Args),
    /// Submit jobs to a pool and follow them (operator).
    Job(job::Args),
}

fn main() -> ExitCode {
    // Internal: the sandboxed worker process the agent starts. Its
    // arguments are parsed where the app parses them too.
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() == Some("worker".as_ref()) {
        idlemesh_agent::init_logging("warn", None);
        return idlemesh_runtime::worker::main(args);
    }
    let cli = Cli::parse();
    // The daemon's log is its interface (kept in daily files too); every
    // other command speaks through its output.
    if matches!(cli.command, Command::Agent(_)) {
        idlemesh_agent::init_logging("info", Some("agent"));
    } else {
        idlemesh_agent::init_logging("warn", None);
    }
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Agent(args) => agent::agent(args),
        Command::Status(args) => agent::status(args),
        Command::Pause(args) => agent::pause(args),
        Command::Resume(args) => agent::resume(args),
        Command::Settings(args) => agent::settings(args),
        Command::Ledger(args) => ledger::run(args),
        Command::Kernel(args) => kernel::run(args),
        Command::Policy(args) => policy::run(args),
        Command::Pool(args) => pool::run(args),
        Command::Job(args) => job::run(args),
    };
    exit::code(result)
}
