//! The demo pool and its job (`idlemesh demo`, and the tray app's "try the
//! demo pool"): the reference pool on a loopback port, in the caller's
//! process, with a Mandelbrot image to render in tiles by the `mandelbrot`
//! WASM kernel. One piece for both, so the two demos cannot drift apart.

use std::path::Path;

use idlemesh_protocol::api::{Combiner, JobSpec, SplitSpec};
use idlemesh_protocol::{KernelKind, Sha256, TaskLimits};
use serde_json::json;

use crate::{Pool, PoolConfig, PoolError};

/// A demo pool serving on a loopback port until dropped.
pub struct DemoPool {
    /// Its base URL (`http://127.0.0.1:PORT`).
    pub url: String,
    /// The operator token, for a caller that follows its job over HTTP.
    pub operator_token: String,
    pool: Pool,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for DemoPool {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl std::fmt::Debug for DemoPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoPool").field("url", &self.url).finish_non_exhaustive()
    }
}

impl DemoPool {
    /// Opens the pool with its files in `dir` ([`pool_config`]) and serves
    /// it on `preferred_port` if that is free (one URL from start to start
    /// keeps one pinned key in the agent), else on any free port.
    pub async fn start(dir: &Path, operator: &str, preferred_port: Option<u16>) -> Result<Self, PoolError> {
        let config = pool_config(dir, operator);
        let operator_token = config.operator_token.clone();
        let pool = Pool::open(config)?;
        let io = |source| PoolError::Io { path: dir.to_path_buf(), source };
        let preferred = match preferred_port {
            Some(port) => tokio::net::TcpListener::bind(("127.0.0.1", port)).await.ok(),
            None => None,
        };
        let listener = match preferred {
            Some(listener) => listener,
            None => tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(io)?,
        };
        let url = format!("http://{}", listener.local_addr().map_err(io)?);
        let server = tokio::spawn({
            let pool = pool.clone();
            async move {
                if let Err(e) = pool.serve(listener).await {
                    tracing::error!(error = %e, "the demo pool stopped");
                }
            }
        });
        tracing::info!(%url, "demo pool started");
        Ok(Self { url, operator_token, pool, server })
    }

    /// Stores `kernel` (the `mandelbrot` component) and submits
    /// [`mandelbrot_job`] with it, in-process.
    pub async fn submit_mandelbrot(
        &self,
        kernel: &[u8],
        width: u32,
        height: u32,
        columns: u32,
        rows: u32,
    ) -> Result<idlemesh_protocol::api::JobCreated, PoolError> {
        let kernel = self.pool.put_blob(kernel.to_vec()).await?;
        self.pool.submit(mandelbrot_job(kernel, width, height, columns, rows)).await
    }
}

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
