//! The threads that touch the database.
//!
//! Requests send them operations; a thread takes every operation waiting in
//! the queue (up to a batch), runs them inside one transaction (each in its
//! own savepoint), commits once, and only then answers them: an answer
//! always means the change is committed. Many small transactions would each
//! rewrite the same B-tree pages into the WAL; sharing a commit is what lets
//! one SQLite file serve thousands of round trips a second
//! (docs/benchmarks.md). SQLite gets one such thread; PostgreSQL several,
//! each with its own connection, so statements of different requests wait
//! on the server side by side.
//!
//! A database error inside a batch (PostgreSQL breaking a deadlock between
//! two pool replicas, say) may have aborted the whole transaction, so the
//! batch is rolled back and its operations run again one transaction each;
//! an operation PostgreSQL chose as a deadlock's victim is run again, a few
//! times, before its error is answered.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, mpsc};

use crate::metrics;
use crate::storage::Storage;
use crate::store::StoreError;

/// Runs of one operation that PostgreSQL may abort to break deadlocks.
const MAX_ATTEMPTS: u32 = 5;

/// One request's work, and where its answer goes.
trait Op: Send {
    /// Runs the operation (again); says whether it failed in the database.
    fn run(&mut self, store: &mut dyn Storage) -> Failed;
    /// Answers with the last run's result, or with `commit_failure` if its
    /// transaction did not commit.
    fn answer(self: Box<Self>, commit_failure: Option<&str>);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failed {
    No,
    /// Refused (not found, a conflict, bad input): what it wrote is undone.
    Refused,
    /// A database error: the transaction may be aborted.
    InDatabase { retryable: bool },
}

struct Pending<T, F> {
    f: F,
    result: Option<Result<T, StoreError>>,
    reply: tokio::sync::oneshot::Sender<Result<T, StoreError>>,
}

impl<T: Send, F: FnMut(&mut dyn Storage) -> Result<T, StoreError> + Send> Op for Pending<T, F> {
    fn run(&mut self, store: &mut dyn Storage) -> Failed {
        // A panic answers with an error; its savepoint rolled back while unwinding.
        let result = catch_unwind(AssertUnwindSafe(|| (self.f)(store)))
            .unwrap_or_else(|_| Err(StoreError::Commit("the operation failed unexpectedly".into())));
        let failed = match &result {
            Err(e @ StoreError::Db(_)) => Failed::InDatabase { retryable: e.retryable() },
            Err(_) => Failed::Refused,
            Ok(_) => Failed::No,
        };
        self.result = Some(result);
        failed
    }

    fn answer(self: Box<Self>, commit_failure: Option<&str>) {
        let result = match (self.result, commit_failure) {
            (Some(Err(e)), _) => Err(e),
            (_, Some(e)) => Err(StoreError::Commit(e.to_owned())),
            (Some(ok), None) => ok,
            (None, None) => Err(StoreError::Commit("the operation did not run".into())),
        };
        let _ = self.reply.send(result);
    }
}

type Queue = Arc<Mutex<mpsc::Receiver<Box<dyn Op>>>>;

#[derive(Clone)]
pub(crate) struct StoreWriter {
    ops: mpsc::Sender<Box<dyn Op>>,
}

impl StoreWriter {
    /// One thread per store (each its own connection), taking up to
    /// `max_batch` operations per transaction.
    pub fn start(
        stores: Vec<Box<dyn Storage>>,
        max_batch: usize,
        metrics: Arc<metrics::Replica>,
    ) -> std::io::Result<Self> {
        let (ops, queue) = mpsc::channel::<Box<dyn Op>>();
        let queue: Queue = Arc::new(Mutex::new(queue));
        for (i, store) in stores.into_iter().enumerate() {
            let (queue, metrics) = (queue.clone(), metrics.clone());
            std::thread::Builder::new()
                .name(format!("pool-store-{i}"))
                .spawn(move || serve(store, &queue, max_batch.max(1), &metrics))?;
        }
        Ok(Self { ops })
    }

    /// Runs `f` on a database thread; resolves once its change is committed.
    /// `f` may run more than once (after a rolled-back attempt).
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnMut(&mut dyn Storage) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.ops.send(Box::new(Pending { f, result: None, reply })).map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

fn serve(mut store: Box<dyn Storage>, queue: &Queue, max_batch: usize, metrics: &metrics::Replica) {
    loop {
        let batch = {
            let Ok(queue) = queue.lock() else { return };
            let Ok(first) = queue.recv() else { return };
            let mut batch = vec![first];
            while batch.len() < max_batch {
                match queue.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            batch
        };
        run_batch(store.as_mut(), batch, metrics);
    }
}

fn run_batch(store: &mut dyn Storage, mut batch: Vec<Box<dyn Op>>, metrics: &metrics::Replica) {
    if batch.len() == 1 {
        return run_alone(store, batch.pop().expect("one"), metrics);
    }
    if let Err(e) = store.begin() {
        let failure = e.to_string();
        tracing::error!(error = %failure, "beginning a transaction failed");
        store.rollback();
        for op in batch {
            op.answer(Some(&failure));
        }
        return;
    }
    let mut clean = true;
    for op in &mut batch {
        // A refused operation rolled back its own savepoint.
        if matches!(op.run(store), Failed::InDatabase { .. }) {
            clean = false;
        }
    }
    if clean {
        let failure = commit(store);
        for op in batch {
            op.answer(failure.as_deref());
        }
        return;
    }
    store.rollback();
    for op in batch {
        run_alone(store, op, metrics);
    }
}

/// One operation in its own transaction (without savepoints: a failure
/// rolls the transaction back), run again while PostgreSQL picks it to
/// break a deadlock.
fn run_alone(store: &mut dyn Storage, mut op: Box<dyn Op>, metrics: &metrics::Replica) {
    for attempt in 1..=MAX_ATTEMPTS {
        if let Err(e) = store.begin_lone() {
            store.rollback();
            op.answer(Some(&e.to_string()));
            return;
        }
        match op.run(store) {
            Failed::No => {
                op.answer(commit(store).as_deref());
                return;
            }
            Failed::InDatabase { retryable: true } if attempt < MAX_ATTEMPTS => {
                store.rollback();
                metrics.retried();
                tracing::debug!(attempt, "the database aborted an operation (a deadlock, a lost connection); running it again");
                std::thread::sleep(std::time::Duration::from_millis(5 * u64::from(attempt)));
            }
            Failed::Refused | Failed::InDatabase { .. } => {
                store.rollback();
                // Its own error, not a commit failure.
                op.answer(None);
                return;
            }
        }
    }
}

/// Commits; on failure rolls back and says why, for the answers.
fn commit(store: &mut dyn Storage) -> Option<String> {
    let failure = store.commit().err()?.to_string();
    tracing::error!(error = %failure, "committing failed; the transaction was rolled back");
    store.rollback();
    Some(failure)
}
