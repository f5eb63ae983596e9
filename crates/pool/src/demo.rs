//! The demo job (`idlemesh demo`, and the tray app's "try the demo pool"):
//! a Mandelbrot image rendered in tiles by the `mandelbrot` WASM kernel.

use std::path::Path;

use idlemesh_protocol::api::{Combiner, JobSpec, SplitSpec};
use idlemesh_protocol::{KernelKind, Sha256, TaskLimits};
use serde_json::json;

use crate::PoolConfig;

/// The demo pool's configuration: its files in `dir`, open to any device,
/// and a random operator token (nobody is given it unless the caller says).
/// `operator` names who runs it, as the enrollment disclosure shows.
pub fn pool_config(dir: &Path, operator: &str) -> PoolConfig {
    PoolConfig {
        data_dir: dir.to_path_buf(),
        database: Some(crate::Database::Sqlite(dir.join("pool.sqlite"))),
        key_file: None,
        name: "Idlemesh demo pool".into(),
        operator: operator.into(),
        operator_token: crate::store::random_token(),
        open_enrollment: true,
        // One device, the user's own: nothing to collude against.
        trust: crate::trust::TrustRules::single_owner(),
        payout: None,
    }
}

/// `columns × rows` tasks of a `width × height` image, one credit each,
/// combined into a PNG. `kernel` is the SHA-256 of the stored kernel.
pub fn mandelbrot_job(kernel: Sha256, width: u32, height: u32, columns: u32, rows: u32) -> JobSpec {
    JobSpec {
        name: "demo: mandelbrot".into(),
        kernel_kind: KernelKind::Wasm,
        kernel_sha256: kernel,
        wgsl: None,
        params: json!({"width": width, "height": height, "max_iter": 256, "center_re": -0.5, "center_im": 0.0, "span": 3.0}),
        inputs: None,
        split: Some(SplitSpec::Tiles {
            width,
            height,
            tile_width: width.div_ceil(columns.max(1)),
            tile_height: height.div_ceil(rows.max(1)),
        }),
        replication: 1,
        quorum: 1,
        credits_per_task: 1.0,
        credits_per_million_fuel: None,
        combiner: Combiner::PngTiles,
        limits: TaskLimits { timeout_ms: 120_000, ..TaskLimits::default() },
        lease_ms: 60_000,
        spot_checks: Vec::new(),
    }
}
