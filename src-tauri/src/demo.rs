//! The demo pool (the control request `demo_start`): the reference pool
//! server on a loopback port inside the tray process (it outlives the
//! dashboard that asked for it), with a Mandelbrot job, so a new user sees the
//! whole loop work at once. Its key and database stay in the data dir, so
//! the pin the agent keeps for it holds from one start to the next.

use std::path::PathBuf;

use idlemesh_pool::demo::DemoPool;

/// The port tried first: the same URL each start keeps one pinned entry.
const PREFERRED_PORT: u16 = 8471;

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

impl idlemesh_agent::DemoHost for DemoHost {
    fn start(&self) -> Result<String, idlemesh_agent::DemoError> {
        // On the control socket's blocking thread, outside any async task.
        self.runtime.block_on(async {
            let mut demo = self.pool.lock().await;
            if demo.is_none() {
                // Nobody uses the HTTP operator API of this pool: jobs are
                // submitted in-process, and the random token keeps it shut.
                let started = DemoPool::start(&self.dir, "you, on this computer", Some(PREFERRED_PORT)).await;
                *demo = Some(started?);
            }
            let pool = demo.as_ref().expect("started above");
            // A fresh job each time, so there is always something to watch.
            // A 512×384 Mandelbrot image in 16 tiles.
            let job = pool.submit_mandelbrot(idlemesh_kernels::MANDELBROT, 512, 384, 4, 4).await;
            job?;
            Ok(pool.url.clone())
        })
    }
}
