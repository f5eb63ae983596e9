//! `idlemesh kernel run`: one kernel, in a worker process, as the agent runs
//! it; `idlemesh kernel new`: a kernel project (kernel_new.rs).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use idlemesh_agent::paths;
use idlemesh_protocol::Sha256;
use idlemesh_protocol::wgsl::WgslLayout;
use idlemesh_runtime::{Layer, Profile, RunLimits, SandboxReport, Status, WorkRequest, WorkerCommand, WorkerProcess};
use serde_json::json;

use crate::exit::{WorkFailed, bad_input};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Run FILE.wasm (a component exporting the idlemesh:kernel world) or
    /// FILE.wgsl (a compute shader, with --manifest) once.
    Run(RunArgs),
    /// Write a kernel project NAME/ in the current directory: a Rust crate
    /// that builds with `cargo build --release --target wasm32-wasip2`,
    /// with the kernel kit and the WIT world inside it.
    New {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    file: PathBuf,
    /// For a .wgsl kernel: its layout (bindings and invocations), a JSON file.
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// The task's input bytes (default: empty).
    #[arg(long)]
    input: Option<PathBuf>,
    /// The task's params, JSON text.
    #[arg(long, default_value = "{}")]
    params: String,
    #[arg(long, default_value_t = 256)]
    max_memory_mb: u64,
    /// Meter the run with this much fuel and report what it used.
    #[arg(long)]
    max_fuel: Option<u64>,
    #[arg(long, default_value_t = 60)]
    timeout_s: u64,
    #[arg(long, default_value_t = 64)]
    max_output_mb: u64,
    /// Write the output here.
    #[arg(long)]
    output: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.action {
        Action::Run(args) => run_once(args),
        Action::New { name, json } => crate::kernel_new::create(&std::env::current_dir()?, &name, json),
    }
}

fn run_once(args: RunArgs) -> anyhow::Result<()> {
    let RunArgs { file, manifest, input, params, max_memory_mb, max_fuel, timeout_s, max_output_mb, output, json } =
        args;
    let layout = match (&manifest, file.extension().is_some_and(|e| e == "wgsl")) {
        (Some(path), true) => Some(read_layout(path)?),
        (None, true) => {
            return Err(bad_input(format!("{} is WGSL: give its layout with --manifest FILE", file.display())));
        }
        (Some(_), false) => return Err(bad_input("--manifest is only for .wgsl kernels")),
        (None, false) => None,
    };
    if layout.is_some() && max_fuel.is_some() {
        return Err(bad_input("--max-fuel meters WASM kernels only"));
    }
    let kernel = std::fs::read(&file).map_err(|e| bad_input(format!("{}: {e}", file.display())))?;
    let input = match &input {
        Some(p) => std::fs::read(p).map_err(|e| bad_input(format!("--input {}: {e}", p.display())))?,
        None => Vec::new(),
    };
    serde_json::from_str::<serde_json::Value>(&params).map_err(|e| bad_input(format!("--params is not JSON: {e}")))?;
    if max_memory_mb == 0 || timeout_s == 0 {
        return Err(bad_input("--max-memory-mb and --timeout-s must be at least 1"));
    }

    let cache = paths::kernel_cache_dir();
    let profile = if layout.is_some() { Profile::Gpu } else { Profile::Cpu };
    let command = WorkerCommand::current_exe(Some(&cache))?.with_profile(profile);
    let mut worker = WorkerProcess::spawn(&command).context("starting the worker")?;
    let sandbox = worker.sandbox().clone();
    let limits =
        RunLimits { max_memory_bytes: max_memory_mb << 20, max_output_bytes: max_output_mb << 20, max_fuel, seed: 0 };
    let request = WorkRequest {
        task: file.display().to_string(),
        kernel_sha256: Sha256::of(&kernel),
        kernel: &kernel,
        input: &input,
        params: &params,
        resume: None,
        wgsl: layout.as_ref(),
        limits,
        timeout: Duration::from_secs(timeout_s),
    };
    let report = worker.run(&request, |_| {}, |_| {})?;
    let o = &report.outcome;
    let ok = o.status == Status::Ok;
    if ok && let Some(path) = &output {
        std::fs::write(path, &o.output).with_context(|| format!("writing {}", path.display()))?;
    }
    let sha = ok.then(|| Sha256::of(&o.output));
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "status": o.status, "output_sha256": sha, "output_bytes": o.output.len(), "fuel": o.fuel,
                "wall_ms": report.wall_ms, "cpu_ms": report.cpu_ms, "peak_memory_bytes": o.peak_memory_bytes,
                "adapter": o.adapter, "gpu_ms": o.gpu_ms, "error": o.error, "log": o.log, "cache_hit": o.cache_hit,
                "sandbox": sandbox,
            }))?
        );
    } else {
        println!("status       {}", o.status);
        if let Some(sha) = sha {
            println!("output       {} bytes, sha256 {sha}", o.output.len());
        }
        if let Some(fuel) = o.fuel {
            println!("fuel         {fuel}");
        }
        println!("time         {} ms wall, {} ms CPU", report.wall_ms, report.cpu_ms);
        println!("peak memory  {} bytes", o.peak_memory_bytes);
        if let Some(adapter) = &o.adapter {
            println!("adapter      {adapter} ({} ms of GPU time)", o.gpu_ms);
        }
        if let Some(e) = &o.error {
            println!("error        {e}");
        }
        println!("sandbox      {}", sandbox_line(&sandbox));
        if !o.log.is_empty() {
            println!("log\n{}", o.log.trim_end());
        }
    }
    if ok { Ok(()) } else { Err(WorkFailed.into()) }
}

/// Reads a WGSL kernel's layout (its manifest) and checks it.
pub fn read_layout(path: &std::path::Path) -> anyhow::Result<WgslLayout> {
    let text = std::fs::read_to_string(path).map_err(|e| bad_input(format!("--manifest {}: {e}", path.display())))?;
    let layout: WgslLayout =
        serde_json::from_str(&text).map_err(|e| bad_input(format!("--manifest {}: {e}", path.display())))?;
    layout.check().map_err(|e| bad_input(format!("--manifest {}: {e}", path.display())))?;
    Ok(layout)
}

/// `no_new_privs seccomp landlock(ABI 7) netns ...; missing: rlimits (why)`.
fn sandbox_line(report: &SandboxReport) -> String {
    let held: Vec<String> = Layer::ALL
        .into_iter()
        .filter(|l| report.has(*l))
        .map(|l| if l == Layer::Landlock { format!("landlock(ABI {})", report.landlock_abi) } else { l.to_string() })
        .collect();
    let mut line = if held.is_empty() { "no OS layers".to_owned() } else { held.join(" ") };
    for (layer, why) in &report.missing {
        line.push_str(&format!("\n             missing {layer}: {why}"));
    }
    line
}
