//! `idlemesh job submit|status|fetch`: a pool operator's client.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Subcommand, ValueEnum};
use idlemesh_protocol::api::{Combiner, JobSpec, JobState, SplitSpec};
use idlemesh_protocol::{Base64Bytes, KernelKind, TaskLimits};

use crate::exit::{WorkFailed, bad_input};
use crate::operator::OperatorClient;

#[derive(clap::Args)]
pub struct Args {
    /// The pool's base URL (default: $IDLEMESH_POOL_URL, else http://127.0.0.1:8470).
    /// The operator token comes from $IDLEMESH_OPERATOR_TOKEN.
    #[arg(long, global = true)]
    pool: Option<String>,
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Upload a kernel and submit a job that runs it.
    Submit(Box<SubmitArgs>),
    /// Show a job's progress.
    Status {
        id: u64,
        /// Wait until the job is no longer running.
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// Download a finished job's combined output.
    Fetch {
        id: u64,
        /// Write here instead of stdout.
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct SubmitArgs {
    /// The kernel: a .wasm component (or .wgsl shader).
    #[arg(long)]
    kernel: PathBuf,
    /// For a .wgsl kernel: its layout (bindings and invocations), a JSON file.
    #[arg(long)]
    manifest: Option<PathBuf>,
    #[arg(long, default_value = "job")]
    name: String,
    /// Params every task gets, a JSON object.
    #[arg(long, default_value = "{}")]
    params: String,
    /// One task per input file.
    #[arg(long = "input", conflicts_with_all = ["range", "tiles"])]
    inputs: Vec<PathBuf>,
    /// Split START..END into tasks of --chunk; each task's params get "start" and "end".
    #[arg(long, conflicts_with = "tiles")]
    range: Option<String>,
    #[arg(long, default_value_t = 1, requires = "range")]
    chunk: i64,
    /// Split a WIDTHxHEIGHT image into tiles of --tile; each task's params get "tile".
    #[arg(long, requires = "tile")]
    tiles: Option<String>,
    #[arg(long)]
    tile: Option<String>,
    /// How many devices run each task.
    #[arg(long, default_value_t = 1)]
    replication: u32,
    /// How many agreeing results complete a task.
    #[arg(long, default_value_t = 1)]
    quorum: u32,
    /// Credits for each task that reaches quorum.
    #[arg(long, default_value_t = 1.0)]
    credits: f64,
    /// Metered credit instead: credits per million units of fuel a task used (needs --max-fuel).
    #[arg(long, requires = "max_fuel")]
    credits_per_million_fuel: Option<f64>,
    #[arg(long, value_enum, default_value = "concat")]
    combiner: CombinerArg,
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    #[arg(long, default_value_t = 256)]
    max_memory_mb: u64,
    /// Meter tasks with at most this much fuel (replicas must agree on it).
    #[arg(long)]
    max_fuel: Option<u64>,
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum CombinerArg {
    Concat,
    PngTiles,
    Sum,
}

fn pair(text: &str, sep: char, what: &str) -> anyhow::Result<(u32, u32)> {
    let parse = || -> Option<(u32, u32)> {
        let (a, b) = text.split_once(sep)?;
        Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
    };
    parse().ok_or_else(|| bad_input(format!("{what} {text:?} is not WIDTH{sep}HEIGHT")))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let client = crate::operator::from_env(args.pool)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match args.action {
        Action::Submit(a) => rt.block_on(submit(&client, *a)),
        Action::Status { id, wait, json } => rt.block_on(async {
            let status = loop {
                let status = client.status(id).await?;
                if !wait || status.state != JobState::Running {
                    break status;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                let t = &status.tasks;
                println!(
                    "job {} {:?}: {:?}; tasks {} total, {} done, {} leased, {} pending, {} failed; {} credits granted",
                    status.job_id,
                    status.name,
                    status.state,
                    t.total,
                    t.done,
                    t.leased,
                    t.pending,
                    t.failed,
                    status.credits_granted
                );
            }
            if status.state == JobState::Failed { Err(WorkFailed.into()) } else { Ok(()) }
        }),
        Action::Fetch { id, output } => rt.block_on(async {
            let bytes = client.output(id).await?;
            match output {
                Some(path) => std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?,
                None => std::io::Write::write_all(&mut std::io::stdout(), &bytes)?,
            }
            Ok(())
        }),
    }
}

async fn submit(client: &OperatorClient, a: SubmitArgs) -> anyhow::Result<()> {
    let kernel = std::fs::read(&a.kernel).map_err(|e| bad_input(format!("--kernel {}: {e}", a.kernel.display())))?;
    let kernel_kind =
        if a.kernel.extension().is_some_and(|e| e == "wgsl") { KernelKind::Wgsl } else { KernelKind::Wasm };
    let params: serde_json::Value =
        serde_json::from_str(&a.params).map_err(|e| bad_input(format!("--params is not JSON: {e}")))?;
    if !params.is_object() {
        return Err(bad_input("--params must be a JSON object"));
    }
    let (inputs, split) = if !a.inputs.is_empty() {
        let inputs = a
            .inputs
            .iter()
            .map(|p| std::fs::read(p).map(Base64Bytes).map_err(|e| bad_input(format!("--input {}: {e}", p.display()))))
            .collect::<anyhow::Result<Vec<_>>>()?;
        (Some(inputs), None)
    } else if let Some(range) = &a.range {
        let (start, end) = range
            .split_once("..")
            .and_then(|(s, e)| Some((s.trim().parse::<i64>().ok()?, e.trim().parse::<i64>().ok()?)))
            .ok_or_else(|| bad_input(format!("--range {range:?} is not START..END")))?;
        (None, Some(SplitSpec::Range { start, end, chunk: a.chunk }))
    } else if let (Some(tiles), Some(tile)) = (&a.tiles, &a.tile) {
        let (width, height) = pair(tiles, 'x', "--tiles")?;
        let (tile_width, tile_height) = pair(tile, 'x', "--tile")?;
        (None, Some(SplitSpec::Tiles { width, height, tile_width, tile_height }))
    } else {
        return Err(bad_input(
            "say how to split the job: --input FILE..., --range START..END or --tiles WxH --tile WxH",
        ));
    };
    let wgsl = match (&a.manifest, kernel_kind) {
        (Some(path), KernelKind::Wgsl) => Some(crate::kernel::read_layout(path)?),
        (None, KernelKind::Wgsl) => return Err(bad_input("a .wgsl kernel needs --manifest FILE (its layout)")),
        (Some(_), KernelKind::Wasm) => return Err(bad_input("--manifest is only for .wgsl kernels")),
        (None, KernelKind::Wasm) => None,
    };
    let blob = client.put_blob(kernel).await?;
    let spec = JobSpec {
        name: a.name,
        kernel_kind,
        kernel_sha256: blob.sha256,
        wgsl,
        params,
        inputs,
        split,
        replication: a.replication,
        quorum: a.quorum,
        credits_per_task: a.credits,
        credits_per_million_fuel: a.credits_per_million_fuel,
        combiner: match a.combiner {
            CombinerArg::Concat => Combiner::Concat,
            CombinerArg::PngTiles => Combiner::PngTiles,
            CombinerArg::Sum => Combiner::Sum,
        },
        limits: TaskLimits {
            max_memory_bytes: a.max_memory_mb << 20,
            timeout_ms: a.timeout_s * 1000,
            max_fuel: a.max_fuel,
            ..TaskLimits::default()
        },
        lease_ms: (a.timeout_s * 1000 * 2).max(60_000),
        spot_checks: Vec::new(),
    };
    // The pool checks the spec and names what is wrong (exit 2, as the client maps it).
    let created = client.submit(&spec).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&created)?);
    } else {
        println!("job {} submitted: {} tasks, kernel {}", created.job_id, created.tasks, blob.sha256);
    }
    Ok(())
}
