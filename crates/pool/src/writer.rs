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
//!
//! On PostgreSQL an operation has a transaction to itself (its row locks
//! are held until it commits, and two batches each waiting on the other's
//! rows would deadlock), except operations that never wait on a row lock
//! (leases: they skip rows others hold). Those share a transaction and its
//! commit, without savepoints: if one fails, all are rolled back and run
//! again one transaction each.
//!
//! Results on PostgreSQL are the other exception: the results waiting are
//! recorded together by one set-oriented operation (store/results.rs),
//! which takes its rows' locks in one order (tasks by id, devices by id,
//! shards by job and shard), so two batches wait on each other's rows at
//! worst, never in a circle. If the batch fails (a replayed signature
//! among them, say), each result is recorded again on its own.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, mpsc};

use idlemesh_protocol::Keypair;
use idlemesh_protocol::api::ResultSubmission;

use crate::metrics;
use crate::store::results::{ResultOutcome, Submission};
use crate::store::{Store, StoreError};

/// Runs of one operation that PostgreSQL may abort to break deadlocks.
const MAX_ATTEMPTS: u32 = 5;

/// One request's work, and where its answer goes.
trait Op: Send {
    /// Runs the operation (again); says whether it failed in the database.
    fn run(&mut self, store: &mut Store) -> Failed;
    /// Answers with the last run's result, or with `commit_failure` if its
    /// transaction did not commit.
    fn answer(self: Box<Self>, commit_failure: Option<StoreError>);
    /// Whether it never waits on a row lock, and so may share a
    /// transaction on PostgreSQL ([`StoreWriter::run_skipping_locks`]).
    fn skips_locks(&self) -> bool;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failed {
    No,
    /// Refused (not found, a conflict, bad input): what it wrote is undone.
    Refused,
    /// A database error: the transaction may be aborted.
    InDatabase {
        retryable: bool,
    },
}

struct Pending<T, F> {
    f: F,
    skips_locks: bool,
    result: Option<Result<T, StoreError>>,
    reply: tokio::sync::oneshot::Sender<Result<T, StoreError>>,
}

impl<T: Send, F: FnMut(&mut Store) -> Result<T, StoreError> + Send> Op for Pending<T, F> {
    fn run(&mut self, store: &mut Store) -> Failed {
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

    fn answer(self: Box<Self>, commit_failure: Option<StoreError>) {
        let result = match (self.result, commit_failure) {
            (Some(Err(e)), _) => Err(e),
            (_, Some(e)) => Err(e),
            (Some(ok), None) => ok,
            (None, None) => Err(StoreError::Commit("the operation did not run".into())),
        };
        let _ = self.reply.send(result);
    }

    fn skips_locks(&self) -> bool {
        self.skips_locks
    }
}

/// A device's result, waiting to be recorded with others.
pub(crate) struct ResultWork {
    pub device_id: u64,
    pub submission: ResultSubmission,
    /// The request's signature (its bytes), spent in the same transaction,
    /// and when it may be forgotten.
    pub signature: Vec<u8>,
    pub expires_ms: u64,
    /// Signs the receipts.
    pub key: Arc<Keypair>,
}

/// Spends the results' request signatures and records the results, in the
/// transaction open: one answer each, in order. `works` is not empty.
fn record_results(
    store: &mut Store,
    works: &[&ResultWork],
) -> Result<Vec<Result<ResultOutcome, StoreError>>, StoreError> {
    let now = crate::now_ms();
    let signatures: Vec<(&[u8], u64)> = works.iter().map(|w| (w.signature.as_slice(), w.expires_ms)).collect();
    store.spend_signatures(&signatures, now)?;
    let submissions: Vec<Submission<'_>> = works
        .iter()
        .map(|w| Submission {
            device_id: w.device_id,
            lease_id: w.submission.lease_id,
            token: &w.submission.lease_token,
            output: &w.submission.output.0,
            fuel: w.submission.fuel,
            wall_ms: w.submission.wall_ms,
            cpu_ms: w.submission.cpu_ms,
        })
        .collect();
    store.submit_results(&submissions, &works[0].key, now)
}

struct PendingResult {
    work: ResultWork,
    reply: tokio::sync::oneshot::Sender<Result<ResultOutcome, StoreError>>,
}

type Queue = Arc<Mutex<mpsc::Receiver<Box<dyn Op>>>>;
type ResultQueue = Arc<Mutex<mpsc::Receiver<PendingResult>>>;

#[derive(Clone)]
pub(crate) struct StoreWriter {
    ops: mpsc::Sender<Box<dyn Op>>,
    /// Results, where threads of their own record them in batches (PostgreSQL).
    results: Option<mpsc::Sender<PendingResult>>,
}

/// How many operations share a transaction.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Batches {
    /// Any operations, each in its own savepoint (SQLite; 1 on PostgreSQL).
    pub any: usize,
    /// Operations that skip locked rows, without savepoints (PostgreSQL);
    /// `None`: they batch as any other.
    pub skipping_locks: Option<usize>,
    /// Results recorded together by one set-oriented operation, on
    /// threads of their own (PostgreSQL); `None`: each is an operation
    /// like any other.
    pub results: Option<ResultBatches>,
}

/// Threads that record only results, and how many a batch takes at most.
/// Fewer threads than could take results one at a time is what makes the
/// batches: while one is recorded, the next gathers (measured: with the
/// results sharing four threads with everything else, most batches were
/// of one; docs/benchmarks.md).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResultBatches {
    pub threads: usize,
    pub max: usize,
}

impl StoreWriter {
    /// One thread per store (each its own connection), taking up to
    /// `batches` operations per transaction.
    pub fn start(stores: Vec<Store>, batches: Batches, metrics: Arc<metrics::Replica>) -> std::io::Result<Self> {
        let (ops, queue) = mpsc::channel::<Box<dyn Op>>();
        let queue: Queue = Arc::new(Mutex::new(queue));
        let mut stores = stores.into_iter().enumerate();
        let results = match batches.results {
            Some(rb) => {
                let (results, result_queue) = mpsc::channel::<PendingResult>();
                let result_queue: ResultQueue = Arc::new(Mutex::new(result_queue));
                for (i, store) in stores.by_ref().take(rb.threads) {
                    let (queue, metrics) = (result_queue.clone(), metrics.clone());
                    std::thread::Builder::new()
                        .name(format!("pool-results-{i}"))
                        .spawn(move || serve_results(store, &queue, rb.max, &metrics))?;
                }
                Some(results)
            }
            None => None,
        };
        for (i, store) in stores {
            let (queue, metrics) = (queue.clone(), metrics.clone());
            std::thread::Builder::new()
                .name(format!("pool-store-{i}"))
                .spawn(move || serve(store, &queue, batches, &metrics))?;
        }
        Ok(Self { ops, results })
    }

    /// Records a device's result (and spends its request's signature);
    /// resolves once committed.
    pub async fn submit_result(&self, work: ResultWork) -> Result<ResultOutcome, StoreError> {
        let Some(results) = &self.results else {
            return self.run(move |s| record_results(s, &[&work])?.pop().ok_or(StoreError::Closed)?).await;
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        results.send(PendingResult { work, reply }).map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` on a database thread; resolves once its change is committed.
    /// `f` may run more than once (after a rolled-back attempt).
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnMut(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.send(f, false).await
    }

    /// [`StoreWriter::run`] for work that never waits on a row lock (it
    /// skips locked rows): on PostgreSQL it may share a transaction.
    pub async fn run_skipping_locks<T: Send + 'static>(
        &self,
        f: impl FnMut(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.send(f, true).await
    }

    async fn send<T: Send + 'static>(
        &self,
        f: impl FnMut(&mut Store) -> Result<T, StoreError> + Send + 'static,
        skips_locks: bool,
    ) -> Result<T, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.ops.send(Box::new(Pending { f, skips_locks, result: None, reply })).map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

fn serve(mut store: Store, queue: &Queue, batches: Batches, metrics: &metrics::Replica) {
    // An operation taken from the queue that did not fit the last batch (of
    // operations skipping locks): it runs next, alone, without waiting for
    // the queue, which another thread may hold while it waits for work.
    let mut carried: Option<Box<dyn Op>> = None;
    loop {
        if let Some(op) = carried.take() {
            run_alone(&mut store, op, metrics);
            continue;
        }
        let batch = {
            // One hold of the queue from the first operation to the last,
            // for the same reason.
            let Ok(queue) = queue.lock() else { return };
            let Ok(first) = queue.recv() else { return };
            let sharing = batches.skipping_locks.filter(|_| first.skips_locks());
            let max = sharing.unwrap_or(batches.any);
            let mut batch = vec![first];
            while batch.len() < max {
                match queue.try_recv() {
                    Ok(op) if sharing.is_none() || op.skips_locks() => batch.push(op),
                    Ok(op) => {
                        carried = Some(op);
                        break;
                    }
                    Err(_) => break,
                }
            }
            (batch, sharing.is_some())
        };
        match batch {
            (batch, true) => run_sharing(&mut store, batch, metrics),
            (batch, false) => run_batch(&mut store, batch, metrics),
        }
    }
}

/// A results thread: every result waiting (up to `max`) recorded as one batch.
fn serve_results(mut store: Store, queue: &ResultQueue, max: usize, metrics: &metrics::Replica) {
    loop {
        let batch = {
            let Ok(queue) = queue.lock() else { return };
            let Ok(first) = queue.recv() else { return };
            let mut batch = vec![first];
            while batch.len() < max {
                match queue.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            batch
        };
        run_results(&mut store, batch, metrics);
    }
}

/// Results recorded together in one transaction (store/results.rs), their
/// signatures spent in it; run again while PostgreSQL picks it to break a
/// deadlock. If the batch fails otherwise, each is recorded on its own, so
/// that one result's failure (a replay) is its own answer only.
fn run_results(store: &mut Store, mut batch: Vec<PendingResult>, metrics: &metrics::Replica) {
    for attempt in 1..=MAX_ATTEMPTS {
        // A panic answers with an error, as an operation's does (Pending::run),
        // and the thread lives on to record the next batch.
        let recorded = catch_unwind(AssertUnwindSafe(|| record(store, &batch)))
            .unwrap_or_else(|_| Err(StoreError::Commit("recording the results failed unexpectedly".into())));
        let failure = match recorded {
            Ok(answers) => match commit(store) {
                None => {
                    for (r, answer) in batch.into_iter().zip(answers) {
                        let _ = r.reply.send(answer);
                    }
                    return;
                }
                Some(e) => e,
            },
            Err(e) => {
                store.rollback();
                e
            }
        };
        if failure.retryable() && attempt < MAX_ATTEMPTS {
            metrics.retried();
            tracing::debug!(
                attempt,
                "the database aborted a batch of results (a deadlock, a lost connection); running it again"
            );
            std::thread::sleep(std::time::Duration::from_millis(5 * u64::from(attempt)));
            continue;
        }
        // Split only what one result may have caused (a replay, a bad
        // value): a database that stays unreachable is every result's error,
        // not worth five more attempts each.
        if batch.len() > 1 && !failure.retryable() {
            for r in batch {
                run_results(store, vec![r], metrics);
            }
            return;
        }
        if let [_] = batch.as_slice() {
            let _ = batch.pop().map(|r| r.reply.send(Err(failure)));
            return;
        }
        let failure = failure.to_string();
        for r in batch {
            let _ = r.reply.send(Err(StoreError::Commit(failure.clone())));
        }
        return;
    }
}

/// Spends the batch's signatures and records its results, in a transaction
/// left open for the caller to commit.
fn record(store: &mut Store, batch: &[PendingResult]) -> Result<Vec<Result<ResultOutcome, StoreError>>, StoreError> {
    store.begin_lone()?;
    record_results(store, &batch.iter().map(|r| &r.work).collect::<Vec<_>>())
}

/// Operations that skip locked rows, in one transaction without
/// savepoints; if any fails, all are run again one transaction each.
fn run_sharing(store: &mut Store, mut batch: Vec<Box<dyn Op>>, metrics: &metrics::Replica) {
    if batch.len() == 1 {
        return run_alone(store, batch.pop().expect("one"), metrics);
    }
    if store.begin_lone().is_ok() && batch.iter_mut().all(|op| op.run(store) == Failed::No) && commit(store).is_none() {
        for op in batch {
            op.answer(None);
        }
        return;
    }
    store.rollback();
    for op in batch {
        run_alone(store, op, metrics);
    }
}

fn run_batch(store: &mut Store, mut batch: Vec<Box<dyn Op>>, metrics: &metrics::Replica) {
    if batch.len() == 1 {
        return run_alone(store, batch.pop().expect("one"), metrics);
    }
    if let Err(e) = store.begin() {
        let failure = e.to_string();
        tracing::error!(error = %failure, "beginning a transaction failed");
        store.rollback();
        for op in batch {
            op.answer(Some(StoreError::Commit(failure.clone())));
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
        let failure = commit(store).map(|e| e.to_string());
        for op in batch {
            op.answer(failure.clone().map(StoreError::Commit));
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
/// break a deadlock. Its deferred statements go out with the commit, so a
/// commit can fail as the operation would have (a deadlock, a replay):
/// that failure is the operation's.
fn run_alone(store: &mut Store, mut op: Box<dyn Op>, metrics: &metrics::Replica) {
    for attempt in 1..=MAX_ATTEMPTS {
        if let Err(e) = store.begin_lone() {
            store.rollback();
            op.answer(Some(StoreError::Commit(e.to_string())));
            return;
        }
        match op.run(store) {
            Failed::No => match commit(store) {
                None => return op.answer(None),
                Some(e) if e.retryable() && attempt < MAX_ATTEMPTS => {}
                Some(e) => return op.answer(Some(e)),
            },
            Failed::InDatabase { retryable: true } if attempt < MAX_ATTEMPTS => store.rollback(),
            Failed::Refused | Failed::InDatabase { .. } => {
                store.rollback();
                // Its own error, not a commit failure.
                return op.answer(None);
            }
        }
        metrics.retried();
        tracing::debug!(attempt, "the database aborted an operation (a deadlock, a lost connection); running it again");
        std::thread::sleep(std::time::Duration::from_millis(5 * u64::from(attempt)));
    }
}

/// Commits; on failure rolls back and says why, for the answers.
fn commit(store: &mut Store) -> Option<StoreError> {
    let failure = store.commit().err()?;
    // A replay or a deadlock victim is the operation's own failure, answered or run again.
    if !matches!(failure, StoreError::Replayed) && !failure.retryable() {
        tracing::error!(error = %failure, "committing failed; the transaction was rolled back");
    }
    store.rollback();
    Some(failure)
}

#[cfg(test)]
mod tests {
    use idlemesh_protocol::Keypair;
    use idlemesh_protocol::api::Capabilities;

    use super::*;
    use crate::store::Store;
    use crate::trust::TrustRules;

    /// Leases (which share transactions on PostgreSQL) and other operations
    /// (one transaction each) sent at once, as a busy replica gets them:
    /// every one is answered, including an operation a thread took from the
    /// queue while gathering leases and the last ones, after which nothing
    /// more arrives to wake a waiting thread.
    /// Four connections to a new PostgreSQL database, the first having migrated it.
    fn four_stores() -> Vec<Store> {
        let url = crate::test_cluster::Cluster::shared().create_database().unwrap();
        let connect = || Box::new(crate::db::Postgres::connect(&url).unwrap());
        let rules = TrustRules::single_owner();
        let mut stores = vec![Store::open(connect(), rules).unwrap()];
        stores.extend((1..4).map(|_| Store::on_migrated(connect(), rules)));
        stores
    }

    #[test]
    fn mixed_operations_on_postgresql_are_all_answered() {
        let mut stores = four_stores();
        let first = &mut stores[0];
        crate::store::tests::range_job(first, 400, 1, 1);
        let devices: Vec<u64> = (0..200)
            .map(|_| first.enroll(&Keypair::generate().unwrap().public(), "{}", None, 1_000).unwrap().0)
            .collect();
        let writer =
            StoreWriter::start(stores, Batches { any: 1, skipping_locks: Some(16), results: None }, Arc::default())
                .unwrap();

        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (leased, looked_up) = rt.block_on(async {
            let caps = Capabilities { wasm: true, wgpu_adapter: None, cores: 2, memory_bytes: 0 };
            let mut leases = Vec::new();
            let mut lookups = Vec::new();
            for &device in &devices {
                let (w, caps) = (writer.clone(), caps.clone());
                leases.push(tokio::spawn(async move {
                    w.run_skipping_locks(move |s| s.lease(device, &caps, 1, 2_000, None)).await
                }));
                let w = writer.clone();
                lookups.push(tokio::spawn(async move { w.run(move |s| s.device_stats(device)).await }));
            }
            let all = async {
                let mut leased = 0;
                for l in leases {
                    leased += l.await.unwrap().unwrap().len();
                }
                let mut looked_up = 0;
                for l in lookups {
                    looked_up += usize::from(l.await.unwrap().is_ok());
                }
                (leased, looked_up)
            };
            tokio::time::timeout(std::time::Duration::from_secs(60), all)
                .await
                .expect("an operation was never answered")
        });
        assert_eq!((leased, looked_up), (devices.len(), devices.len()));
    }

    /// Results sent at once to the results threads, as a busy replica gets
    /// them: recorded in batches, every one answered, each as it would be
    /// alone. Among them a replay (the same signature twice: it fails its
    /// batch, and each is then recorded alone, the second refused) and a
    /// stale token. The job completes once, with every task's credit paid
    /// once.
    #[test]
    fn results_recorded_in_batches_on_postgresql_are_answered_each_as_alone() {
        let mut stores = four_stores();
        let first = &mut stores[0];
        let tasks = 120;
        let job = crate::store::tests::range_job(first, tasks, 1, 1);
        let caps = Capabilities { wasm: true, wgpu_adapter: None, cores: 2, memory_bytes: 0 };
        let leased: Vec<_> = (0..tasks)
            .map(|_| {
                let device = first.enroll(&Keypair::generate().unwrap().public(), "{}", None, 1_000).unwrap().0;
                first.lease(device, &caps, 1, 2_000, None).unwrap().remove(0)
            })
            .collect();
        let batches =
            Batches { any: 1, skipping_locks: Some(16), results: Some(ResultBatches { threads: 2, max: 16 }) };
        let writer = StoreWriter::start(stores, batches, Arc::default()).unwrap();
        let key = Arc::new(Keypair::generate().unwrap());
        let work = |m: &idlemesh_protocol::TaskManifest, signature: Vec<u8>, token: &str| ResultWork {
            device_id: m.device_id,
            submission: ResultSubmission {
                lease_id: m.lease_id,
                lease_token: token.to_owned(),
                output_sha256: idlemesh_protocol::Sha256::of(&m.task_id.to_le_bytes()),
                output: m.task_id.to_le_bytes().to_vec().into(),
                fuel: None,
                wall_ms: 1,
                cpu_ms: 1,
            },
            signature,
            expires_ms: crate::now_ms() + 60_000,
            key: key.clone(),
        };
        let mut all: Vec<ResultWork> = leased
            .iter()
            .enumerate()
            .map(|(i, m)| work(m, format!("signature {i}").into_bytes(), &m.lease_token))
            .collect();
        // The first result's request again (a replay), and a stale token for the second's lease.
        all.push(work(&leased[0], b"signature 0".to_vec(), &leased[0].lease_token));
        all.push(work(&leased[1], b"stale".to_vec(), "not the token"));

        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let answers = rt.block_on(async {
            let pending: Vec<_> = all
                .into_iter()
                .map(|w| {
                    let writer = writer.clone();
                    tokio::spawn(async move { writer.submit_result(w).await })
                })
                .collect();
            let all = async {
                let mut answers = Vec::new();
                for p in pending {
                    answers.push(p.await.unwrap());
                }
                answers
            };
            tokio::time::timeout(std::time::Duration::from_secs(60), all).await.expect("a result was never answered")
        });
        let (done, rest) = answers.split_at(tasks as usize);
        for (i, a) in done.iter().enumerate() {
            let outcome = a.as_ref().unwrap_or_else(|e| panic!("result {i}: {e}"));
            assert_eq!(outcome.task_state, idlemesh_protocol::api::TaskState::Done, "result {i}");
            assert!(outcome.receipt.is_some(), "result {i}");
        }
        assert!(matches!(rest[0], Err(StoreError::Replayed)), "{:?}", rest[0].as_ref().map(|o| o.task_state));
        assert!(matches!(&rest[1], Err(StoreError::Conflict(m)) if m.contains("stale")));

        let status = rt.block_on(writer.run(move |s| s.job_status(job))).unwrap();
        assert_eq!(status.state, idlemesh_protocol::api::JobState::Done);
        assert_eq!(status.tasks.done, tasks as u64);
        let receipts = rt.block_on(writer.run(move |s| s.stats())).unwrap();
        let valid: u64 = receipts.devices.iter().map(|d| d.valid_results).sum();
        assert_eq!(valid, tasks as u64, "every task credited once");
        assert_eq!(status.credits_granted, receipts.devices.iter().map(|d| d.credits).sum::<f64>());
    }
}
