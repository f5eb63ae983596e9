//! `idlemesh demo`: a real pool, a real agent, a real worker, on this machine.
//!
//! The pool runs in-process on a loopback port with its database in the
//! output dir; the agent talks to it over HTTP like any other pool, runs each
//! tile in a child worker process and writes its ledger in the agent's data
//! dir. The combined image lands in the output dir.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use idlemesh_agent::{Slot, SlotConfig, paths};
use idlemesh_pool::demo::DemoPool;
use idlemesh_protocol::Keypair;
use idlemesh_protocol::api::{Capabilities, JobState};
use idlemesh_runtime::WorkerCommand;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tokio::sync::watch;

use crate::exit::{WorkFailed, bad_input};
use crate::operator::OperatorClient;

#[derive(clap::Args)]
pub struct Args {
    /// Where the pool's database and the image go (default: `demo/` in the data dir).
    #[arg(long)]
    out: Option<PathBuf>,
    /// No window: the tray app does not exist yet, so this is also the default.
    #[arg(long)]
    headless: bool,
    /// Image width in pixels.
    #[arg(long, default_value_t = 1024)]
    width: u32,
    /// Image height in pixels.
    #[arg(long, default_value_t = 768)]
    height: u32,
    /// Tiles across and down (the job has columns × rows tasks).
    #[arg(long, default_value_t = 4)]
    columns: u32,
    #[arg(long, default_value_t = 6)]
    rows: u32,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.width == 0 || args.height == 0 || args.width > 16_384 || args.height > 16_384 {
        return Err(bad_input(format!("image size {}x{} is outside 1..=16384 per side", args.width, args.height)));
    }
    if args.columns == 0 || args.rows == 0 || args.columns > args.width || args.rows > args.height {
        return Err(bad_input("--columns and --rows must be at least 1 and at most the image's size"));
    }
    let _ = args.headless;
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(demo(args))
}

async fn demo(args: Args) -> anyhow::Result<()> {
    let out = args.out.clone().unwrap_or_else(|| paths::data_dir().join("demo"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let ledger_path = paths::ledger_path();

    // The pool, on a loopback port, its database in `out`, with a
    // Mandelbrot image in tiles; the job is followed over HTTP.
    let pool = DemoPool::start(&out, "you, on this machine", None).await?;
    let pool_url = pool.url.clone();
    let kernel = idlemesh_kernels::MANDELBROT;
    let job = pool.submit_mandelbrot(kernel, args.width, args.height, args.columns, args.rows).await?;
    let operator = OperatorClient::new(&pool_url, &pool.operator_token)?;

    // The agent, against that pool over HTTP.
    let cores = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    let device_info = BTreeMap::from([("cores".to_string(), cores.to_string())]);
    let config = SlotConfig {
        pool_url: pool_url.clone(),
        // The throwaway device's outbox and pinned pool key stay with the
        // throwaway pool: the next demo's pool has a new key, maybe on this port.
        data_dir: out.join("device"),
        ledger_path: ledger_path.clone(),
        worker: WorkerCommand::current_exe(Some(&paths::kernel_cache_dir()))?,
        capabilities: Capabilities { wasm: true, wgpu_adapter: None, cores, memory_bytes: 0 },
        device_info,
        enrollment_token: None,
        max_tasks_per_lease: 4,
        max_idle_poll: Duration::from_millis(100),
        watcher: None,
        require_sandbox: Vec::new(),
        trust: Default::default(),
    };
    // The demo device's key lives only as long as the demo: it joins its own
    // throwaway pool. Enrolled agents keep theirs in the OS keyring.
    let mut agent = Slot::connect(config, Arc::new(Keypair::generate()?)).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let worker = tokio::spawn(async move { agent.run(stop_rx).await });

    let bar = ProgressBar::new(job.tasks);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:12} [{bar:40}] {pos}/{len} tiles  {elapsed}")?
            .progress_chars("=> "),
    );
    bar.set_message("rendering");
    let status = loop {
        let status = operator.status(job.job_id).await?;
        bar.set_position(status.tasks.done);
        if status.state != JobState::Running || worker.is_finished() {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = stop_tx.send(true);
    let summary = worker.await.context("the agent task panicked")??;
    bar.finish_and_clear();
    let elapsed = started.elapsed();

    let png_path = out.join("mandelbrot.png");
    let job_ok = status.state == JobState::Done;
    if job_ok {
        let png = operator.output(job.job_id).await?;
        std::fs::write(&png_path, png).with_context(|| format!("writing {}", png_path.display()))?;
    }
    drop(pool);

    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "job_state": status.state, "tasks": job.tasks, "tasks_done": status.tasks.done,
                "tasks_finished": summary.tasks_finished, "tasks_failed": summary.tasks_failed,
                "tasks_refused": summary.tasks_refused, "cpu_seconds": summary.cpu_ms as f64 / 1000.0,
                "wall_seconds": elapsed.as_secs_f64(), "credits": summary.credits, "receipts": summary.receipts,
                "png": job_ok.then(|| png_path.display().to_string()), "ledger": ledger_path.display().to_string(),
                "pool_db": out.join("pool.sqlite").display().to_string(),
            }))?
        );
    } else {
        println!(
            "Idlemesh demo: {} ({} tiles of a {}x{} Mandelbrot image)",
            if job_ok { "done" } else { "FAILED" },
            job.tasks,
            args.width,
            args.height
        );
        println!(
            "  tasks         {} finished, {} failed, {} refused",
            summary.tasks_finished, summary.tasks_failed, summary.tasks_refused
        );
        println!("  CPU time      {:.2} s (wall {:.2} s)", summary.cpu_ms as f64 / 1000.0, elapsed.as_secs_f64());
        println!("  credits       {} ({} signed receipts)", summary.credits, summary.receipts);
        if job_ok {
            println!("  image         {}", png_path.display());
        }
        println!("  ledger        {}", ledger_path.display());
        println!("  verify it:    idlemesh ledger verify");
    }
    if job_ok { Ok(()) } else { Err(WorkFailed.into()) }
}
