//! The one thread that touches the database.
//!
//! Requests send it closures; it runs every closure waiting in its queue
//! inside one transaction (each in its own savepoint), commits once, and only
//! then answers them: an answer always means the change is committed. Many
//! small transactions would each rewrite the same B-tree pages into the WAL;
//! sharing a commit is what lets one SQLite file serve thousands of round
//! trips a second (docs/benchmarks.md).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;

use crate::storage::Storage;
use crate::store::StoreError;

/// Most operations in one transaction: bounds the latency one batch adds.
const MAX_BATCH: usize = 256;

type Deliver = Box<dyn FnOnce(Option<&str>) + Send>;
type Job = Box<dyn FnOnce(&mut dyn Storage) -> Deliver + Send>;

#[derive(Clone)]
pub(crate) struct StoreWriter {
    jobs: mpsc::Sender<Job>,
}

impl StoreWriter {
    pub fn start(mut store: Box<dyn Storage>) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new().name("pool-store".into()).spawn(move || {
            while let Ok(first) = queue.recv() {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match queue.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                let began = store.begin();
                let mut deliveries = Vec::with_capacity(batch.len());
                for job in batch {
                    // A panic drops that job's reply (its caller sees an
                    // internal error); its savepoint rolled back while unwinding.
                    if let Ok(deliver) = catch_unwind(AssertUnwindSafe(|| job(store.as_mut()))) {
                        deliveries.push(deliver);
                    }
                }
                let committed = began.and_then(|()| store.commit());
                let failure = committed.as_ref().err().map(|e| e.to_string());
                if failure.is_some() {
                    tracing::error!(error = ?failure, "committing a batch failed; it was rolled back");
                    store.rollback();
                }
                for deliver in deliveries {
                    deliver(failure.as_deref());
                }
            }
        })?;
        Ok(Self { jobs })
    }

    /// Runs `f` on the database thread; resolves once its change is committed.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Storage) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |store| {
            let result = f(store);
            Box::new(move |commit_failure: Option<&str>| {
                let result = match commit_failure {
                    Some(e) if result.is_ok() => Err(StoreError::Commit(e.to_owned())),
                    _ => result,
                };
                let _ = reply.send(result);
            })
        });
        self.jobs.send(job).map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}
