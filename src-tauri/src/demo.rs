//! The demo pool (the control request `demo_start`): the reference pool
//! server on a loopback port inside the tray process (it outlives the
//! dashboard that asked for it), with a Mandelbrot job, so a new user sees the
//! whole loop work at once. Its key and database stay in the data dir, so
//! the pin the agent keeps for it holds from one start to the next.

use std::path::{Path, PathBuf};

use idlemesh_pool::Pool;

/// The port tried first: the same URL each start keeps one pinned entry.
const PREFERRED_PORT: u16 = 8471;

pub struct DemoPool {
    pub url: String,
    pool: Pool,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for DemoPool {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl DemoPool {
    pub async fn start(dir: &Path) -> Result<Self, String> {
        // Nobody uses the HTTP operator API of the demo pool: jobs are
        // submitted in-process, and the random token keeps it shut.
        let pool =
            Pool::open(idlemesh_pool::demo::pool_config(dir, "you, on this computer")).map_err(|e| e.to_string())?;
        let listener = match tokio::net::TcpListener::bind(("127.0.0.1", PREFERRED_PORT)).await {
            Ok(l) => l,
            Err(_) => tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?,
        };
        let url = format!("http://{}", listener.local_addr().map_err(|e| e.to_string())?);
        let server = tokio::spawn({
            let pool = pool.clone();
            async move {
                if let Err(e) = pool.serve(listener).await {
                    tracing::error!(error = %e, "the demo pool stopped");
                }
            }
        });
        tracing::info!(%url, "demo pool started");
        Ok(Self { url, pool, server })
    }

    /// A 512×384 Mandelbrot image in 16 tiles.
    pub async fn submit_job(&self) -> Result<u64, String> {
        let kernel = self.pool.put_blob(idlemesh_kernels::MANDELBROT.to_vec()).await.map_err(|e| e.to_string())?;
        let spec = idlemesh_pool::demo::mandelbrot_job(kernel, 512, 384, 4, 4);
        Ok(self.pool.submit(spec).await.map_err(|e| e.to_string())?.job_id)
    }
}

/// The tray's answer to `demo_start`: one demo pool, started on first use,
/// with a fresh job each time.
pub struct DemoHost {
    dir: PathBuf,
    pool: tokio::sync::Mutex<Option<DemoPool>>,
    runtime: tokio::runtime::Handle,
}

impl DemoHost {
    pub fn new(dir: PathBuf, runtime: tokio::runtime::Handle) -> Self {
        Self { dir, pool: tokio::sync::Mutex::new(None), runtime }
    }
}

impl idlemesh_agent::daemon::DemoHost for DemoHost {
    fn start(&self) -> Result<String, String> {
        // On the control socket's blocking thread, outside any async task.
        self.runtime.block_on(async {
            let mut demo = self.pool.lock().await;
            if demo.is_none() {
                *demo = Some(DemoPool::start(&self.dir).await?);
            }
            let pool = demo.as_ref().expect("started above");
            // A fresh job each time, so there is always something to watch.
            pool.submit_job().await?;
            Ok(pool.url.clone())
        })
    }
}
