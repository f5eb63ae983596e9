//! The pool's storage, on SQLite or PostgreSQL (`db.rs`).
//!
//! Every state change happens in one savepoint here, so a failed operation
//! leaves nothing half-written; the writer (`writer.rs`) wraps operations in
//! transactions, so a crash leaves either the old state or the new one. Lease
//! ids are replica ids; each new lease of a replica gets a new random token,
//! which fences off results and heartbeats from an earlier holder.
//!
//! Several pool replicas may share one PostgreSQL database. What keeps them
//! from stepping on each other, operation by operation:
//! - a lease claims rows with `FOR UPDATE OF r, t SKIP LOCKED`: a replica
//!   (and its task) another pool replica is claiming is passed over, and
//!   PostgreSQL re-checks `state` on the row it locked, so no replica goes
//!   out twice and no two replicas of one task are leased past the trust
//!   rules at once;
//! - results, give-backs and heartbeats lock their lease's row (and a
//!   result or give-back its task's row first) before checking the token,
//!   so a re-lease and a late result take turns and the fence holds;
//! - a task closing decrements its shard of its job's count of open tasks
//!   in one `UPDATE` (which waits for the row and then re-reads it); the
//!   one that empties a shard locks the job and looks at the other shards
//!   in a new statement, so the last two tasks finishing on two replicas
//!   complete the job exactly once ([`finish_job_if_complete`]);
//! - a claimed replica is checked against the trust rules again in a new
//!   statement, which sees leases of its task committed meanwhile;
//! - locks are always taken in one order (task, its replicas, devices by
//!   id, a shard of the job's count, the job), and PostgreSQL's deadlock
//!   victims are run again (writer.rs).
//!
//! SQLite has one writer at a time (`BEGIN IMMEDIATE`) and needs none of it.

use std::collections::HashMap;

use std::sync::Arc;

use idlemesh_protocol::api::{
    Capabilities, DeviceStats, JobSpec, JobState, JobStatus, PoolStats, TaskCounts, TaskFailure, TaskState,
};
use idlemesh_protocol::{KernelKind, KernelRef, Keypair, PublicKey, Receipt, Sha256, Signed, TaskManifest};

mod orgs;
pub(crate) mod schema;

use crate::combine;
use crate::db::{Db, DbError, Dialect, Row, Value, args};
use crate::judgement::{self, Asked, Ballot, Decision, SpotCheck};
use crate::split::TaskSeed;
use crate::trust::TrustRules;

/// Reported failures after which a task (and its job) fails: the kernel,
/// not the devices, is what keeps failing.
pub(crate) const MAX_TASK_FAILURES: i64 = 3;

/// Rows a job's open tasks are counted in (fewer for a smaller job): tasks
/// closing at once take turns on one of them, not all on one row
/// ([`count_task_closed`]).
const COUNT_SHARDS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("{0}")]
    Db(DbError),
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{1}")]
    Token(orgs::TokenRefusal, String),
    #[error("replayed request: this signature was already used")]
    Replayed,
    #[error("committing to the database failed: {0}")]
    Commit(String),
    #[error("the database thread stopped")]
    Closed,
}

impl From<DbError> for StoreError {
    fn from(e: DbError) -> Self {
        // On PostgreSQL a replay fails the deferred insert of its signature
        // (Store::spend_signature), seen when that insert is sent.
        if e.duplicate_in("seen_signatures_pkey") { Self::Replayed } else { Self::Db(e) }
    }
}

impl StoreError {
    /// Worth running the operation again (PostgreSQL broke a deadlock with it).
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Db(e) if e.retryable())
    }
}

pub(crate) struct Store {
    db: Box<dyn Db>,
    trust: TrustRules,
    /// Job specs never change after submission: parsed once, not per lease.
    jobs: HashMap<u64, Arc<JobInfo>>,
    /// When this connection last forgot expired signatures.
    pruned_ms: u64,
    /// When this connection next looks for leases that ran out, unless
    /// its last look found some ([`Store::lease`]).
    next_expiry_look_ms: u64,
    /// The open transaction's commit need not wait for the disk (leases only).
    commit_relaxed: bool,
}

/// What the hot paths need of a job.
pub(crate) struct JobInfo {
    pub spec: JobSpec,
    pub kernel_size: u64,
    /// Its open tasks are counted in this many rows (`job_counts`).
    pub count_shards: i64,
}

fn job_info(db: &dyn Db, cache: &mut HashMap<u64, Arc<JobInfo>>, job_id: u64) -> Result<Arc<JobInfo>, StoreError> {
    if let Some(info) = cache.get(&job_id) {
        return Ok(info.clone());
    }
    let row = db
        .opt_row("SELECT spec, count_shards FROM jobs WHERE id = ?1", args![job_id])?
        .ok_or(StoreError::NotFound { what: "job", id: job_id.to_string() })?;
    let spec: JobSpec =
        serde_json::from_str(&row.text(0)?).map_err(|e| StoreError::Invalid(format!("stored job spec: {e}")))?;
    let kernel_size = blob_size(db, &spec.kernel_sha256)?.unwrap_or(0);
    let info = Arc::new(JobInfo { spec, kernel_size, count_shards: row.int(1)?.max(1) });
    cache.insert(job_id, info.clone());
    Ok(info)
}

fn blob_size(db: &dyn Db, sha: &Sha256) -> Result<Option<u64>, StoreError> {
    Ok(db
        .opt_row("SELECT length(bytes) FROM blobs WHERE sha256 = ?1", args![sha.to_hex()])?
        .map(|r| r.u64(0))
        .transpose()?)
}

fn put_blob(db: &dyn Db, bytes: &[u8]) -> Result<Sha256, StoreError> {
    let sha = Sha256::of(bytes);
    db.defer("INSERT INTO blobs (sha256, bytes) VALUES (?1, ?2) ON CONFLICT DO NOTHING", args![sha.to_hex(), bytes])?;
    Ok(sha)
}

fn parse_sha(text: &str) -> Result<Sha256, StoreError> {
    text.parse().map_err(|e| StoreError::Invalid(format!("stored SHA-256: {e}")))
}

/// What `submit_result` decided.
pub(crate) struct ResultOutcome {
    pub task_state: TaskState,
    pub receipt: Option<Signed<Receipt>>,
}

/// A replica whose result is in, and its device's record so far.
struct Reported {
    replica_id: i64,
    device_id: i64,
    output_sha256: String,
    fuel: Option<i64>,
    wall_ms: i64,
    cpu_ms: i64,
    /// The device's (valid, invalid) results before this verdict.
    record: (u64, u64),
}

/// A task's replicas as its judgement needs them.
struct TaskReplicas {
    /// Those whose result is in, by device id: devices' rows are then
    /// updated in one order by every pool replica.
    reported: Vec<Reported>,
    /// Those still queued or out on lease.
    outstanding: usize,
}

/// Reads a task's replicas (its row locked by the caller) in one statement.
fn task_replicas(db: &dyn Db, task_id: i64) -> Result<TaskReplicas, StoreError> {
    let rows = db.query(
        "SELECT r.state, r.id, r.device_id, r.output_sha256, r.fuel, r.wall_ms, r.cpu_ms, d.valid_results, d.invalid_results
         FROM replicas r LEFT JOIN devices d ON d.id = r.device_id WHERE r.task_id = ?1 ORDER BY r.device_id, r.id",
        args![task_id],
    )?;
    let mut replicas = TaskReplicas { reported: Vec::new(), outstanding: 0 };
    for r in &rows {
        match r.text(0)?.as_str() {
            "reported" => replicas.reported.push(Reported {
                replica_id: r.int(1)?,
                device_id: r.int(2)?,
                output_sha256: r.text(3)?,
                fuel: r.opt_int(4)?,
                wall_ms: r.int(5)?,
                cpu_ms: r.int(6)?,
                record: (r.u64(7)?, r.u64(8)?),
            }),
            "queued" | "leased" => replicas.outstanding += 1,
            _ => {}
        }
    }
    // SQLite sorts NULL device ids (queued replicas) first, PostgreSQL last: no matter, only reported ones are kept.
    Ok(replicas)
}

/// What a lease query reads: a replica, its task and its job.
const LEASE_FROM: &str = "FROM replicas r JOIN tasks t ON t.id = r.task_id JOIN jobs j ON j.id = t.job_id";

/// The numbered parameters of a statement being written.
#[derive(Default)]
struct Params(Vec<Value>);

impl Params {
    /// Binds `v` to the next number; returns its placeholder.
    fn bind(&mut self, v: impl Into<Value>) -> String {
        self.0.push(v.into());
        format!("?{}", self.0.len())
    }
}

/// Whom a device must not share a task with, by the pool's [`TrustRules`]:
/// itself always; devices of its token, its organisation or its network
/// where the rules say so.
struct Apart<'a> {
    device_id: u64,
    token: bool,
    org: bool,
    network: Option<&'a str>,
}

impl Apart<'_> {
    /// A condition on replica `r`: no other replica of its task is leased
    /// to or reported by a device this one must stay apart from. The
    /// device's token and organisation are read by the statement itself,
    /// as they are now.
    fn condition(&self, p: &mut Params) -> String {
        let device = p.bind(self.device_id);
        let mut shared = vec![format!("o.device_id = {device}")];
        if self.token {
            shared.push(format!("od.token_id = (SELECT me.token_id FROM devices me WHERE me.id = {device})"));
        }
        if self.org {
            shared.push(format!("od.org_id = (SELECT me.org_id FROM devices me WHERE me.id = {device})"));
        }
        if let Some(network) = self.network {
            shared.push(format!("o.network = {}", p.bind(network)));
        }
        let join = if self.token || self.org { " JOIN devices od ON od.id = o.device_id" } else { "" };
        // `LIMIT 1 OFFSET 0` keeps the NOT EXISTS a probe of the candidate's
        // task: PostgreSQL otherwise turned it into a merge anti-join that
        // walked every leased and reported replica up to the queue's head on
        // every lease, slower the longer a job ran (docs/benchmarks.md).
        format!(
            "NOT EXISTS (SELECT 1 FROM replicas o{join} WHERE o.task_id = r.task_id AND o.id != r.id
               AND o.state IN ('leased', 'reported') AND ({}) LIMIT 1 OFFSET 0)",
            shared.join(" OR ")
        )
    }
}

/// A condition on replica `r`: no other replica of its task is reported,
/// or out on a live lease, on another GPU adapter class than `adapter`
/// (the exact adapter string: vendor, device, driver). Floating point on
/// GPUs agrees bit for bit only within one (docs/architecture.md, "WGSL
/// kernels").
fn same_adapter(adapter: &str, now: u64, p: &mut Params) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM replicas c WHERE c.task_id = r.task_id AND c.id != r.id
           AND (c.state = 'reported' OR (c.state = 'leased' AND c.lease_deadline_ms >= {}))
           AND c.adapter IS DISTINCT FROM {} LIMIT 1 OFFSET 0)",
        p.bind(now),
        p.bind(adapter)
    )
}

/// The lease query for one half of the walk: expired leases (oldest
/// deadline first) or the queue (in task order), of jobs the device can
/// run, apart from whom it must be, at most `rows` rows. Only the
/// conditions that can matter for this device are written: each join or
/// `OR` PostgreSQL need not weigh keeps its plan simpler
/// (docs/benchmarks.md). `None`: the device can run nothing.
fn lease_query(
    expired: bool,
    caps: &Capabilities,
    apart: &Apart<'_>,
    now: u64,
    rows: u32,
    lock: &str,
) -> Option<(String, Params)> {
    let mut p = Params::default();
    let (which, order) = if expired {
        (format!("r.state = 'leased' AND r.lease_deadline_ms < {}", p.bind(now)), "r.lease_deadline_ms")
    } else {
        ("r.state = 'queued'".to_owned(), "r.task_id, r.id")
    };
    let mut fits = match (caps.wasm, caps.wgpu_adapter.is_some()) {
        (true, true) => String::new(),
        (true, false) => " AND j.kernel_kind = 'wasm'".to_owned(),
        (false, true) => " AND j.kernel_kind = 'wgsl'".to_owned(),
        (false, false) => return None,
    };
    if caps.memory_bytes > 0 {
        let memory = i64::try_from(caps.memory_bytes).unwrap_or(i64::MAX);
        fits += &format!(" AND j.max_memory_bytes <= {}", p.bind(memory));
    }
    let mut apart_sql = apart.condition(&mut p);
    if let Some(adapter) = &caps.wgpu_adapter {
        apart_sql += &format!(" AND (j.kernel_kind != 'wgsl' OR {})", same_adapter(adapter, now, &mut p));
    }
    let sql = format!(
        "SELECT r.id, t.id, t.job_id, t.params, t.input_sha256,
                (SELECT length(b.bytes) FROM blobs b WHERE b.sha256 = t.input_sha256) {LEASE_FROM}
         WHERE {which} AND t.state = 'pending' AND j.state = 'running'{fits} AND {apart_sql}
         ORDER BY {order} LIMIT {}{lock}",
        p.bind(rows)
    );
    Some((sql, p))
}

/// What [`judge`] did.
struct Judged {
    /// Each verdict's receipt, for the valid ones.
    receipts: Vec<Option<Signed<Receipt>>>,
    /// The open tasks left in the closed task's shard of the job's count.
    shard_left: Option<i64>,
}

/// A task closing with its judgement.
struct Close<'a> {
    canonical_sha256: &'a str,
    /// Its shard of the job's count of open tasks (spot checks are not counted).
    shard: Option<i64>,
}

/// Records the verdicts on reported replicas of a task (each with its
/// credit): their validity, their devices' reputation, and for each valid
/// one the credit and a signed receipt (returned in the verdicts' order).
/// With `close`, the task is done too: its canonical output kept, its
/// replicas still out cancelled, its shard of the job's count decremented
/// (what is left is returned, for [`finish_job_if_complete`] once it is
/// 0). At most six statements in two round trips, however many replicas.
#[allow(clippy::too_many_arguments, reason = "one value per field of the receipts it signs")]
fn judge(
    db: &dyn Db,
    task_id: i64,
    verdicts: &[(&Reported, bool, f64)],
    close: Option<Close<'_>>,
    job_id: i64,
    key: &Keypair,
    now: u64,
) -> Result<Judged, StoreError> {
    if verdicts.is_empty() {
        // Both callers judge at least the replica just reported.
        return Err(StoreError::Invalid(format!("task {task_id}: nothing to judge")));
    }
    if let Some(close) = &close {
        db.defer(
            "UPDATE tasks SET state = 'done', canonical_sha256 = ?1 WHERE id = ?2",
            args![close.canonical_sha256, task_id],
        )?;
    }
    // The verdicts, and the closed task's replicas still out cancelled, in one statement.
    let mut p = Params::default();
    let task = p.bind(task_id);
    let (mut cases, mut ids) = (String::new(), Vec::new());
    for &(r, valid, _) in verdicts {
        let id = p.bind(r.replica_id);
        cases += &format!(" WHEN {id} THEN {}", p.bind(valid));
        ids.push(id);
    }
    let (cancel, or_open) = match &close {
        Some(_) => (
            ", state = CASE WHEN state IN ('queued', 'leased') THEN 'cancelled' ELSE state END",
            " OR state IN ('queued', 'leased')",
        ),
        None => ("", ""),
    };
    db.defer(
        &format!(
            "UPDATE replicas SET valid = CASE id{cases} ELSE valid END{cancel}
             WHERE task_id = {task} AND (id IN ({}){or_open})",
            ids.join(", ")
        ),
        &p.0,
    )?;
    // The devices' records in one statement (in device order: every pool
    // replica updates devices' rows in one order).
    let mut p = Params::default();
    let rows: Vec<String> = verdicts
        .iter()
        .map(|&(r, valid, credits)| {
            format!(
                "(CAST({} AS BIGINT), CAST({} AS BIGINT), CAST({} AS DOUBLE PRECISION))",
                p.bind(r.device_id),
                p.bind(i64::from(valid)),
                p.bind(if valid { credits } else { 0.0 })
            )
        })
        .collect();
    db.defer(
        &format!(
            "WITH v (id, ok, paid) AS (VALUES {})
             UPDATE devices SET valid_results = valid_results + v.ok, invalid_results = invalid_results + 1 - v.ok,
                 credits = devices.credits + v.paid
             FROM v WHERE devices.id = v.id",
            rows.join(", ")
        ),
        &p.0,
    )?;
    // A receipt's number comes from the database (one sequence for every
    // pool replica) and the receipt signs it: the numbers are reserved
    // first, then each receipt is inserted signed. The job's count goes
    // down in the same round trip.
    let paid = verdicts.iter().filter(|v| v.1).count();
    let reserve = [Value::from(paid as u64)];
    let shard = close.as_ref().and_then(|c| c.shard).map(|shard| [Value::from(job_id), Value::from(shard)]);
    let mut queries: Vec<(&str, &[Value])> = Vec::new();
    let next_ids = db.dialect().next_ids("receipts");
    if paid > 0 {
        queries.push((next_ids.as_str(), &reserve));
    }
    if let Some(shard) = &shard {
        // Two pool replicas closing tasks of one shard at once take turns
        // on its row, and the second decrements what the first left
        // (PostgreSQL re-reads a row it waited for before updating it).
        let sql =
            "UPDATE job_counts SET open_tasks = open_tasks - 1 WHERE job_id = ?1 AND shard = ?2 RETURNING open_tasks";
        queries.push((sql, shard));
    }
    let mut answers = db.query_all(&queries)?.into_iter();
    let mut receipt_ids = match paid {
        0 => Vec::new(),
        _ => answers.next().ok_or(DbError::NoRow)?,
    }
    .into_iter();
    let shard_left = match shard {
        Some(_) => Some(answers.next().and_then(|rows| rows.into_iter().next()).ok_or(DbError::NoRow)?.int(0)?),
        None => None,
    };
    let mut p = Params::default();
    let mut rows = Vec::new();
    let mut receipts = Vec::with_capacity(verdicts.len());
    for &(r, valid, credits) in verdicts {
        if !valid {
            receipts.push(None);
            continue;
        }
        let receipt_id = receipt_ids.next().ok_or(DbError::NoRow)?.u64(0)?;
        let signed = Signed::sign(
            &Receipt {
                receipt_id,
                device_id: r.device_id as u64,
                job_id: job_id as u64,
                task_id: task_id as u64,
                replica_id: r.replica_id as u64,
                output_sha256: parse_sha(&r.output_sha256)?,
                fuel: r.fuel.map(|f| f as u64),
                credits,
                wall_ms: r.wall_ms as u64,
                cpu_ms: r.cpu_ms as u64,
                issued_at_ms: now,
            },
            key,
        );
        let values = [
            p.bind(receipt_id),
            p.bind(r.replica_id),
            p.bind(r.device_id),
            p.bind(job_id),
            p.bind(credits),
            p.bind(&signed.payload),
            p.bind(&signed.signature),
        ];
        rows.push(format!("({})", values.join(", ")));
        receipts.push(Some(signed));
    }
    if !rows.is_empty() {
        db.defer(
            &format!(
                "INSERT INTO receipts (id, replica_id, device_id, job_id, credits, payload, signature) VALUES {}",
                rows.join(", ")
            ),
            &p.0,
        )?;
    }
    Ok(Judged { receipts, shard_left })
}

fn cancel_open_replicas(db: &dyn Db, task_id: i64) -> Result<(), StoreError> {
    db.defer(
        "UPDATE replicas SET state = 'cancelled' WHERE task_id = ?1 AND state IN ('queued', 'leased')",
        args![task_id],
    )?;
    Ok(())
}

/// A leased replica back in the queue, its lease and token void.
fn requeue(db: &dyn Db, replica: u64) -> Result<(), StoreError> {
    db.execute(
        "UPDATE replicas SET state = 'queued', device_id = NULL, lease_token = NULL, lease_deadline_ms = NULL WHERE id = ?1",
        args![replica],
    )?;
    Ok(())
}

fn task_state(state: &str) -> TaskState {
    match state {
        "done" => TaskState::Done,
        "failed" => TaskState::Failed,
        _ => TaskState::Pending,
    }
}

pub(crate) fn random_token() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the OS has no randomness source");
    hex::encode(b)
}

/// A lease as the database has it, locked for this transaction, and its task.
struct Lease {
    task_id: i64,
    state: String,
    job_id: i64,
    /// The task's place in its job.
    idx: i64,
    task_state: String,
    /// A spot check's known answer.
    expected_sha256: Option<String>,
}

impl Store {
    /// Brings the database to this build's schema and keeps the connection.
    pub fn open(db: Box<dyn Db>, trust: TrustRules) -> Result<Self, StoreError> {
        schema::migrate(db.as_ref())?;
        Ok(Self::on_migrated(db, trust))
    }

    /// Keeps a connection to a database [`Store::open`] already migrated:
    /// a replica's further connections.
    pub fn on_migrated(db: Box<dyn Db>, trust: TrustRules) -> Self {
        Self { db, trust, jobs: HashMap::new(), pruned_ms: 0, next_expiry_look_ms: 0, commit_relaxed: false }
    }

    /// The embedded default: one SQLite file.
    #[cfg(test)]
    pub fn open_sqlite(path: &std::path::Path, trust: TrustRules) -> Result<Self, StoreError> {
        Self::open(Box::new(crate::db::Sqlite::open(path)?), trust)
    }

    /// The schema version of this database now.
    pub fn schema_version(&self) -> u32 {
        schema::version(self.db.dialect())
    }

    /// Records `key` as the pool's at first start; refuses another one
    /// later: receipts and manifests from replicas of one pool must carry
    /// one signature, the one its devices pinned.
    pub fn claim_identity(&mut self, key: &PublicKey, now: u64) -> Result<(), StoreError> {
        let tx = self.db.savepoint()?;
        tx.execute(
            "INSERT INTO pool_identity (id, public_key, recorded_ms) VALUES (1, ?1, ?2) ON CONFLICT DO NOTHING",
            args![key.to_hex(), now],
        )?;
        let recorded = tx.row("SELECT public_key FROM pool_identity WHERE id = 1", args![])?.text(0)?;
        tx.commit()?;
        if recorded != key.to_hex() {
            let theirs: PublicKey =
                recorded.parse().map_err(|e| StoreError::Invalid(format!("the recorded pool key: {e}")))?;
            return Err(StoreError::Conflict(format!(
                "this database belongs to the pool with key {} ({}), not to this key {} ({}): its devices pinned that key and hold receipts signed by it. \
                 Start with that pool's key file (--key-file, or pool.key in --data-dir; every replica of a pool needs the same one)",
                theirs.to_hex(),
                theirs.fingerprint(),
                key.to_hex(),
                key.fingerprint()
            )));
        }
        Ok(())
    }

    /// Opens the writer's batch transaction; operations nest savepoints in it.
    pub fn begin(&mut self) -> Result<(), StoreError> {
        self.db.reconnect_if_closed()?;
        self.commit_relaxed = false;
        Ok(self.db.begin()?)
    }

    /// Opens a transaction for one operation; rolled back if it fails.
    pub fn begin_lone(&mut self) -> Result<(), StoreError> {
        self.db.reconnect_if_closed()?;
        self.commit_relaxed = false;
        Ok(self.db.begin_lone()?)
    }

    pub fn commit(&mut self) -> Result<(), StoreError> {
        Ok(self.db.commit()?)
    }

    pub fn rollback(&mut self) {
        let _ = self.db.rollback();
    }

    /// One round trip to the database, for `/v1/health`.
    pub fn ping(&self) -> Result<(), StoreError> {
        self.db.row("SELECT 1", args![])?;
        Ok(())
    }

    /// Records a request's signature as used; [`StoreError::Replayed`] if
    /// some pool replica saw it already. Signatures are kept until their
    /// request's timestamp would be refused as stale anyway (`expires_ms`).
    ///
    /// On PostgreSQL the insert is deferred: it goes out with the
    /// operation's first statement, and a replay fails it (a duplicate
    /// key), which aborts the transaction and reads as `Replayed` from that
    /// statement on. That saves a round trip on every device request.
    pub fn spend_signature(&mut self, signature: &str, expires_ms: u64, now: u64) -> Result<(), StoreError> {
        if now.saturating_sub(self.pruned_ms) >= 1_000 {
            // A minute's margin: another replica whose clock runs behind
            // this one's still accepts a timestamp this one calls stale.
            // Rows another connection is deleting are left to it: this
            // never waits on a row lock (a lease must not: writer.rs).
            let sql = format!(
                "DELETE FROM seen_signatures WHERE signature IN
                   (SELECT signature FROM seen_signatures WHERE expires_ms < ?1{})",
                self.db.dialect().skip_locked("seen_signatures")
            );
            self.db.defer(&sql, args![now.saturating_sub(60_000)])?;
            self.pruned_ms = now;
        }
        // A digest keeps the table small; 128 bits do not collide by chance.
        let digest = &Sha256::of(signature.as_bytes()).to_hex()[..32];
        if self.db.dialect() == Dialect::Postgres {
            self.db.defer(
                "INSERT INTO seen_signatures (signature, expires_ms) VALUES (?1, ?2)",
                args![digest, expires_ms],
            )?;
            return Ok(());
        }
        let added = self.db.execute(
            "INSERT INTO seen_signatures (signature, expires_ms) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            args![digest, expires_ms],
        )?;
        if added == 1 { Ok(()) } else { Err(StoreError::Replayed) }
    }

    pub fn put_blob(&mut self, bytes: &[u8]) -> Result<Sha256, StoreError> {
        put_blob(self.db.as_ref(), bytes)
    }

    pub fn blob(&self, sha: &Sha256) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .db
            .opt_row("SELECT bytes FROM blobs WHERE sha256 = ?1", args![sha.to_hex()])?
            .map(|mut r| r.blob(0))
            .transpose()?)
    }

    pub fn device_key(&self, device_id: u64) -> Result<Option<PublicKey>, StoreError> {
        let hex = self.db.opt_row("SELECT public_key FROM devices WHERE id = ?1", args![device_id])?;
        hex.map(|h| -> Result<PublicKey, StoreError> {
            h.text(0)?.parse().map_err(|e| StoreError::Invalid(format!("stored device key: {e}")))
        })
        .transpose()
    }

    pub fn create_job(&mut self, spec: &JobSpec, seeds: &[TaskSeed], now: u64) -> Result<u64, StoreError> {
        if blob_size(self.db.as_ref(), &spec.kernel_sha256)?.is_none() {
            return Err(StoreError::Invalid(format!(
                "kernel_sha256 {} is not a stored blob: upload it with POST /v1/blobs first",
                spec.kernel_sha256
            )));
        }
        // Spot checks are not part of the output: only the other tasks are counted.
        let counted: Vec<usize> = (0..seeds.len()).filter(|&i| seeds[i].expected_sha256.is_none()).collect();
        let shards = counted.len().clamp(1, COUNT_SHARDS);
        let tx = self.db.savepoint()?;
        let job_id = tx
            .row(
                "INSERT INTO jobs (name, spec, state, created_ms, kernel_kind, max_memory_bytes, count_shards)
                 VALUES (?1, ?2, 'running', ?3, ?4, ?5, ?6) RETURNING id",
                args![
                    &spec.name,
                    // Inputs live on as blobs, one per task; the spec is read on every lease.
                    serde_json::to_string(&JobSpec { inputs: None, ..spec.clone() }).expect("spec serialises"),
                    now,
                    spec.kernel_kind.as_str(),
                    spec.limits.max_memory_bytes,
                    shards as u64
                ],
            )?
            .int(0)?;
        for shard in 0..shards {
            let open = counted.iter().filter(|&&idx| idx % shards == shard).count();
            tx.defer(
                "INSERT INTO job_counts (job_id, shard, open_tasks) VALUES (?1, ?2, ?3)",
                args![job_id, shard as u64, open as u64],
            )?;
        }
        for (idx, seed) in seeds.iter().enumerate() {
            let input_sha = put_blob(&*tx, &seed.input)?;
            let task_id = tx
                .row(
                    "INSERT INTO tasks (job_id, idx, params, input_sha256, state, expected_sha256)
                     VALUES (?1, ?2, ?3, ?4, 'pending', ?5) RETURNING id",
                    args![
                        job_id,
                        idx as u64,
                        &seed.params,
                        input_sha.to_hex(),
                        seed.expected_sha256.map(|s| s.to_hex())
                    ],
                )?
                .int(0)?;
            for _ in 0..spec.replication {
                tx.defer("INSERT INTO replicas (task_id, state) VALUES (?1, 'queued')", args![task_id])?;
            }
        }
        if let Some(sql) = tx.dialect().refresh_statistics() {
            tx.batch(sql)?;
        }
        tx.commit()?;
        Ok(job_id as u64)
    }

    /// Claims up to `max` replicas for a device: queued ones, or leased ones
    /// whose lease ran out, of jobs the device can run. Never two replicas of
    /// one task to one device, nor (by the pool's [`TrustRules`]) to devices
    /// sharing a token, an organisation or a network.
    pub fn lease(
        &mut self,
        device_id: u64,
        caps: &Capabilities,
        max: u32,
        now: u64,
        network: Option<&str>,
    ) -> Result<Vec<TaskManifest>, StoreError> {
        let spread = self.trust.spread;
        let apart =
            Apart { device_id, token: spread.token, org: spread.org, network: network.filter(|_| spread.network) };
        let lock = self.db.dialect().skip_locked("r, t");
        // Ask for extra rows: replicas of a task already claimed in this
        // lease are skipped. A lease of one needs none: each row read is
        // locked, which PostgreSQL writes to the row (docs/benchmarks.md).
        let rows = if max == 1 { 1 } else { max.saturating_mul(4) };
        // Expired leases first (oldest deadline first), then the queue in
        // order. Each half walks an index and stops at its row limit: the
        // cost of a lease does not grow with the number of tasks waiting.
        // Both halves go out together (one round trip on PostgreSQL).
        // Leases rarely run out (a device vanished), so a connection looks
        // for them once a second, and on every lease while it finds some.
        let look_for_expired = now >= self.next_expiry_look_ms;
        let halves: Vec<(bool, String, Params)> = [true, false]
            .into_iter()
            .filter(|&expired| !expired || look_for_expired)
            .filter_map(|expired| {
                lease_query(expired, caps, &apart, now, rows, lock.as_str()).map(|(s, p)| (expired, s, p))
            })
            .collect();
        let tx = self.db.savepoint()?;
        // A lease may be lost in a database crash (docs/architecture.md): its
        // device's result is then refused as an unknown lease, and the
        // replica goes out again. Only a lease's own transaction: a batch
        // may hold results, which must not be lost.
        if let (true, false, Some(sql)) = (tx.lone(), self.commit_relaxed, tx.dialect().commit_without_waiting()) {
            tx.defer(sql, &[])?;
            self.commit_relaxed = true;
        }
        let queries: Vec<(&str, &[Value])> = halves.iter().map(|(_, sql, p)| (sql.as_str(), p.0.as_slice())).collect();
        let found = tx.query_all(&queries)?;
        if look_for_expired {
            let expired_found = halves.iter().zip(&found).any(|((expired, ..), rows)| *expired && !rows.is_empty());
            self.next_expiry_look_ms = if expired_found { now } else { now + 1_000 };
        }
        let mut claimed: Vec<(i64, i64, i64, String, String, Option<u64>)> = Vec::new();
        for r in found.iter().flatten() {
            let row = (r.int(0)?, r.int(1)?, r.int(2)?, r.text(3)?, r.text(4)?, r.opt_u64(5)?);
            if claimed.len() < max as usize && !claimed.iter().any(|c| c.1 == row.1) {
                claimed.push(row);
            }
        }
        let mut manifests = Vec::with_capacity(claimed.len());
        for (replica_id, task_id, job_id, params, input_sha, input_bytes) in claimed {
            let info = job_info(&*tx, &mut self.jobs, job_id as u64)?;
            let spec = &info.spec;
            let token = random_token();
            let deadline = now + spec.lease_ms;
            let adapter = match spec.kernel_kind {
                KernelKind::Wgsl => caps.wgpu_adapter.as_deref(),
                KernelKind::Wasm => None,
            };
            // The trust rules once more, in a new statement: the query's
            // NOT EXISTS read the task's other replicas as they were when it
            // started, and on PostgreSQL a lease of the same task may have
            // committed while it ran. Holding the task's row now, no other
            // lease of it can commit until this one does.
            let mut p = Params(args![device_id, &token, deadline, replica_id, adapter, apart.network].to_vec());
            let mut recheck = apart.condition(&mut p);
            if let Some(adapter) = adapter {
                recheck += &format!(" AND {}", same_adapter(adapter, now, &mut p));
            }
            let leased = tx.execute(
                &format!(
                    "UPDATE replicas AS r SET state = 'leased', device_id = ?1, lease_token = ?2, lease_deadline_ms = ?3,
                     adapter = ?5, network = ?6 WHERE r.id = ?4 AND {recheck}"
                ),
                &p.0,
            )?;
            if leased == 0 {
                continue;
            }
            let manifest = TaskManifest {
                job_id: job_id as u64,
                task_id: task_id as u64,
                replica_id: replica_id as u64,
                device_id,
                lease_id: replica_id as u64,
                lease_token: token,
                kernel: KernelRef { kind: spec.kernel_kind, sha256: spec.kernel_sha256, size_bytes: info.kernel_size },
                input_sha256: parse_sha(&input_sha)?,
                input_bytes: input_bytes.unwrap_or(0),
                params,
                limits: spec.limits,
                wgsl: spec.wgsl.clone(),
                credits: spec.credit_for(spec.limits.max_fuel),
                issued_at_ms: now,
                deadline_ms: deadline,
            };
            manifests.push(manifest);
        }
        tx.commit()?;
        Ok(manifests)
    }

    /// Extends a live lease; returns its new deadline (ms).
    pub fn heartbeat(&mut self, device_id: u64, lease_id: u64, token: &str, now: u64) -> Result<u64, StoreError> {
        let lease = lock_lease(self.db.as_ref(), lease_id, token, device_id, false)?;
        if lease.state != "leased" {
            return Err(StoreError::Conflict(format!("lease {lease_id} is {}, not leased", lease.state)));
        }
        let deadline = now + job_info(self.db.as_ref(), &mut self.jobs, lease.job_id as u64)?.spec.lease_ms;
        self.db.defer("UPDATE replicas SET lease_deadline_ms = ?1 WHERE id = ?2", args![deadline, lease_id])?;
        Ok(deadline)
    }

    /// `failure`: the task failed on this device (counted against the task).
    pub fn give_back(
        &mut self,
        device_id: u64,
        lease_id: u64,
        token: &str,
        failure: Option<&TaskFailure>,
    ) -> Result<(), StoreError> {
        let tx = self.db.savepoint()?;
        let Lease { task_id, state, .. } = lock_lease(&*tx, lease_id, token, device_id, true)?;
        if state != "leased" {
            return Err(StoreError::Conflict(format!("lease {lease_id} is {state}, not leased")));
        }
        requeue(&*tx, lease_id)?;
        if let Some(f) = failure {
            let what = format!("{}: {}", f.status, f.message);
            let r = tx.row(
                "UPDATE tasks SET failures = failures + 1, last_failure = ?1 WHERE id = ?2 RETURNING failures, job_id",
                args![&what, task_id],
            )?;
            let (failures, job_id) = (r.int(0)?, r.int(1)?);
            if failures >= MAX_TASK_FAILURES {
                tx.execute("UPDATE tasks SET state = 'failed' WHERE id = ?1 AND state = 'pending'", args![task_id])?;
                cancel_open_replicas(&*tx, task_id)?;
                tx.execute(
                    "UPDATE jobs SET state = 'failed', error = ?1 WHERE id = ?2 AND state = 'running'",
                    args![format!("task {task_id} failed {failures} times, last: {what}"), job_id],
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Queues again the device's live leases that it does not list as held
    /// (its agent lost track of them); returns their ids. A lease that ran
    /// out is left alone: claiming it anew already handles it.
    pub fn release_unheld(&mut self, device_id: u64, held: &[u64], now: u64) -> Result<Vec<u64>, StoreError> {
        let tx = self.db.savepoint()?;
        let live = tx.query(
            &format!(
                "SELECT id FROM replicas WHERE state = 'leased' AND device_id = ?1 AND lease_deadline_ms >= ?2 ORDER BY id{}",
                tx.dialect().for_update()
            ),
            args![device_id, now],
        )?;
        let held: std::collections::HashSet<u64> = held.iter().copied().collect();
        let mut released = Vec::new();
        for row in live {
            let id = row.u64(0)?;
            if !held.contains(&id) {
                requeue(&*tx, id)?;
                released.push(id);
            }
        }
        tx.commit()?;
        Ok(released)
    }

    /// Records a result and, when a quorum agrees, finishes the task: credits
    /// and receipts for the agreeing replicas, invalid marks for the others,
    /// and the job's combined output once every task is done.
    #[allow(clippy::too_many_arguments, reason = "one call per field of a result submission")]
    pub fn submit_result(
        &mut self,
        device_id: u64,
        lease_id: u64,
        token: &str,
        output: &[u8],
        fuel: Option<u64>,
        wall_ms: u64,
        cpu_ms: u64,
        key: &Keypair,
        now: u64,
    ) -> Result<ResultOutcome, StoreError> {
        let tx = self.db.savepoint()?;
        let Lease { task_id, state, job_id, idx, task_state: task_state_now, expected_sha256: expected } =
            lock_lease(&*tx, lease_id, token, device_id, true)?;
        let output_sha = Sha256::of(output);
        if state != "leased" {
            // The same device sending the same result again (its agent died
            // before it could record our answer) gets the same answer again.
            if let Some(outcome) = repeat_outcome(&*tx, lease_id, task_id, &output_sha)? {
                return Ok(outcome);
            }
            return Err(StoreError::Conflict(format!("lease {lease_id} is {state}: a result was already recorded")));
        }
        put_blob(&*tx, output)?;
        tx.defer(
            "UPDATE replicas SET state = 'reported', output_sha256 = ?1, fuel = ?2, wall_ms = ?3, cpu_ms = ?4 WHERE id = ?5",
            args![output_sha.to_hex(), fuel, wall_ms, cpu_ms, lease_id],
        )?;
        let info = job_info(&*tx, &mut self.jobs, job_id as u64)?;
        let spec = &info.spec;
        let replicas = task_replicas(&*tx, task_id)?;
        let reported = &replicas.reported;

        let asked = Asked { quorum: spec.quorum, replication: spec.replication };
        let fail_task = |tx: &dyn Db| tx.defer("UPDATE tasks SET state = 'failed' WHERE id = ?1", args![task_id]);
        let ask_another =
            |tx: &dyn Db| tx.defer("INSERT INTO replicas (task_id, state) VALUES (?1, 'queued')", args![task_id]);

        // A spot check judges each answer on arrival (judgement.rs).
        if let Some(expected) = &expected {
            let row = reported.iter().find(|r| r.replica_id == lease_id as i64).ok_or(DbError::NoRow)?;
            let right = &row.output_sha256 == expected;
            let credits = spec.credit_for(row.fuel.map(|f| f as u64));
            let check =
                judgement::spot_check(task_state(&task_state_now), right, replicas.outstanding, reported.len(), asked);
            match check {
                SpotCheck::AskAnother => ask_another(&*tx)?,
                SpotCheck::Fail => fail_task(&*tx)?,
                SpotCheck::Close | SpotCheck::Wait | SpotCheck::AlreadyDone | SpotCheck::AlreadyFailed => {}
            }
            let close = (check == SpotCheck::Close).then_some(Close { canonical_sha256: expected, shard: None });
            let judged = judge(&*tx, task_id, &[(row, right, credits)], close, job_id, key, now)?;
            tx.commit()?;
            return Ok(ResultOutcome {
                task_state: check.task_state(),
                receipt: judged.receipts.into_iter().next().flatten(),
            });
        }

        let mut receipt = None;
        let mut new_state = task_state(&task_state_now);
        if new_state == TaskState::Pending {
            // What must agree: the output, and the fuel used where the job is metered.
            let metered = spec.limits.max_fuel.is_some();
            let ballots: Vec<Ballot<(&str, Option<i64>)>> = reported
                .iter()
                .map(|r| Ballot {
                    device_id: r.device_id,
                    value: (r.output_sha256.as_str(), if metered { r.fuel } else { None }),
                    record: r.record,
                })
                .collect();
            match judgement::by_quorum(&ballots, replicas.outstanding, asked, self.trust) {
                Decision::Done { canonical, valid } => {
                    new_state = TaskState::Done;
                    let verdicts: Vec<_> = reported
                        .iter()
                        .zip(valid)
                        .map(|(r, valid)| (r, valid, spec.credit_for(r.fuel.map(|f| f as u64))))
                        .collect();
                    let close = Close { canonical_sha256: canonical.0, shard: Some(idx % info.count_shards) };
                    let judged = judge(&*tx, task_id, &verdicts, Some(close), job_id, key, now)?;
                    receipt = reported
                        .iter()
                        .zip(judged.receipts)
                        .find(|(r, _)| r.replica_id == lease_id as i64)
                        .and_then(|(_, s)| s);
                    if judged.shard_left == Some(0) {
                        finish_job_if_complete(&*tx, job_id, spec)?;
                    }
                }
                Decision::Wait => {}
                Decision::AskAnother => ask_another(&*tx)?,
                Decision::Fail => {
                    new_state = TaskState::Failed;
                    fail_task(&*tx)?;
                    tx.defer(
                        "UPDATE jobs SET state = 'failed', error = ?1 WHERE id = ?2",
                        args![format!("task {task_id}: no quorum among {} results", reported.len()), job_id],
                    )?;
                }
            }
        }
        tx.commit()?;
        Ok(ResultOutcome { task_state: new_state, receipt })
    }

    fn task_counts(&self, job: Option<u64>) -> Result<TaskCounts, StoreError> {
        let mut counts = TaskCounts::default();
        const COUNTS: &str =
            "SELECT t.state, EXISTS (SELECT 1 FROM replicas r WHERE r.task_id = t.id AND r.state = 'leased'), count(*)
             FROM tasks t";
        let rows = match job {
            Some(job) => self.db.query(&format!("{COUNTS} WHERE t.job_id = ?1 GROUP BY 1, 2"), args![job])?,
            None => self.db.query(&format!("{COUNTS} GROUP BY 1, 2"), args![])?,
        };
        for row in rows {
            let (state, leased, n) = (row.text(0)?, row.bool(1)?, row.u64(2)?);
            counts.total += n;
            match (state.as_str(), leased) {
                ("done", _) => counts.done += n,
                ("failed", _) => counts.failed += n,
                (_, true) => counts.leased += n,
                _ => counts.pending += n,
            }
        }
        Ok(counts)
    }

    pub fn job_status(&self, job_id: u64) -> Result<JobStatus, StoreError> {
        let row = self
            .db
            .opt_row("SELECT name, state, error FROM jobs WHERE id = ?1", args![job_id])?
            .ok_or(StoreError::NotFound { what: "job", id: job_id.to_string() })?;
        let credits =
            self.db.row("SELECT coalesce(sum(credits), 0) FROM receipts WHERE job_id = ?1", args![job_id])?.real(0)?;
        Ok(JobStatus {
            job_id,
            name: row.text(0)?,
            state: match row.text(1)?.as_str() {
                "done" => JobState::Done,
                "failed" => JobState::Failed,
                _ => JobState::Running,
            },
            tasks: self.task_counts(Some(job_id))?,
            credits_granted: credits,
            error: row.opt_text(2)?,
        })
    }

    /// The combined output, once the job is done; `Ok(None)` while it runs.
    pub fn job_output(&self, job_id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let sha = self
            .db
            .opt_row("SELECT output_sha256 FROM jobs WHERE id = ?1", args![job_id])?
            .ok_or(StoreError::NotFound { what: "job", id: job_id.to_string() })?
            .opt_text(0)?;
        match sha {
            Some(sha) => self.blob(&parse_sha(&sha)?),
            None => Ok(None),
        }
    }

    /// One device's credits and reputation.
    pub fn device_stats(&self, device_id: u64) -> Result<DeviceStats, StoreError> {
        let row = self
            .db
            .opt_row("SELECT id, credits, valid_results, invalid_results FROM devices WHERE id = ?1", args![device_id])?
            .ok_or(StoreError::NotFound { what: "device", id: device_id.to_string() })?;
        Ok(device_stats(&row)?)
    }

    pub fn stats(&self) -> Result<PoolStats, StoreError> {
        let jobs = self.db.row("SELECT count(*) FROM jobs", args![])?.u64(0)?;
        let devices = self
            .db
            .query("SELECT id, credits, valid_results, invalid_results FROM devices ORDER BY id", args![])?
            .iter()
            .map(device_stats)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PoolStats {
            jobs,
            tasks: self.task_counts(None)?,
            credits_granted: devices.iter().map(|d| d.credits).sum(),
            devices,
        })
    }
}

fn device_stats(r: &Row) -> Result<DeviceStats, DbError> {
    Ok(DeviceStats { device_id: r.u64(0)?, credits: r.real(1)?, valid_results: r.u64(2)?, invalid_results: r.u64(3)? })
}

/// The recorded outcome of a replica whose result is already in, if `output_sha` is that result.
fn repeat_outcome(
    db: &dyn Db,
    lease_id: u64,
    task_id: i64,
    output_sha: &Sha256,
) -> Result<Option<ResultOutcome>, StoreError> {
    let recorded = db.row("SELECT output_sha256 FROM replicas WHERE id = ?1", args![lease_id])?.opt_text(0)?;
    if recorded.as_deref() != Some(output_sha.to_hex().as_str()) {
        return Ok(None);
    }
    let task_state = task_state(&db.row("SELECT state FROM tasks WHERE id = ?1", args![task_id])?.text(0)?);
    let receipt = db
        .opt_row("SELECT payload, signature FROM receipts WHERE replica_id = ?1", args![lease_id])?
        .map(|r| Ok::<_, DbError>(Signed::from_parts(r.text(0)?, r.text(1)?)))
        .transpose()?;
    Ok(Some(ResultOutcome { task_state, receipt }))
}

/// Combines the job's output if its last open task just closed; called
/// when the closing task's shard of the count reached 0. The job's row is
/// locked first and the shards read in a new statement, which sees
/// every decrement committed before the lock was granted. Two pool
/// replicas closing the last tasks of two shards at once: the first to
/// lock the job finds the other's shard still open (its decrement is not
/// committed, and cannot be until the first lets go of the job), the
/// second then finds all shards at 0. So a job completes exactly once.
fn finish_job_if_complete(db: &dyn Db, job_id: i64, spec: &JobSpec) -> Result<(), StoreError> {
    let state = db
        .row(&format!("SELECT state FROM jobs WHERE id = ?1{}", db.dialect().for_update()), args![job_id])?
        .text(0)?;
    let open =
        db.opt_row("SELECT 1 FROM job_counts WHERE job_id = ?1 AND open_tasks > 0 LIMIT 1", args![job_id])?.is_some();
    if state != "running" || open {
        return Ok(());
    }
    let outputs: Vec<(String, Vec<u8>)> = db
        .query(
            "SELECT t.params, b.bytes FROM tasks t JOIN blobs b ON b.sha256 = t.canonical_sha256
             WHERE t.job_id = ?1 AND t.expected_sha256 IS NULL ORDER BY t.idx",
            args![job_id],
        )?
        .into_iter()
        .map(|mut r| Ok((r.text(0)?, r.blob(1)?)))
        .collect::<Result<_, DbError>>()?;
    match combine::combine(spec, &outputs) {
        Ok(bytes) => {
            let sha = put_blob(db, &bytes)?;
            db.execute(
                "UPDATE jobs SET state = 'done', output_sha256 = ?1 WHERE id = ?2",
                args![sha.to_hex(), job_id],
            )?;
        }
        Err(e) => {
            tracing::warn!(job_id, error = %e, "combining the job's outputs failed");
            db.execute("UPDATE jobs SET state = 'failed', error = ?1 WHERE id = ?2", args![e, job_id])?;
        }
    }
    Ok(())
}

/// Locks a lease's row (after its task's, with `task_first`) and checks
/// that `token` still holds it for `device_id`. One statement: the task is
/// locked inside it (the `MATERIALIZED` CTE runs before the lease's row is
/// locked, which happens last, above the join).
fn lock_lease(db: &dyn Db, lease_id: u64, token: &str, device_id: u64, task_first: bool) -> Result<Lease, StoreError> {
    let not_found = || StoreError::NotFound { what: "lease", id: lease_id.to_string() };
    let dialect = db.dialect();
    let (lock_task, lock_lease) = (if task_first { dialect.for_update() } else { "" }, dialect.for_update_of("r"));
    let row = db
        .opt_row(
            &format!(
                "WITH t AS MATERIALIZED (SELECT id, job_id, state, expected_sha256, idx FROM tasks
                   WHERE id = (SELECT task_id FROM replicas WHERE id = ?1){lock_task})
                 SELECT r.task_id, r.state, r.lease_token, r.device_id, t.job_id, t.state, t.expected_sha256, t.idx
                 FROM replicas r JOIN t ON t.id = r.task_id WHERE r.id = ?1{lock_lease}"
            ),
            args![lease_id],
        )?
        .ok_or_else(not_found)?;
    if row.opt_text(2)?.as_deref() != Some(token) || row.opt_int(3)? != Some(device_id as i64) {
        return Err(StoreError::Conflict(
            "stale lease token: this lease was given to another device or renewed".into(),
        ));
    }
    Ok(Lease {
        task_id: row.int(0)?,
        state: row.text(1)?,
        job_id: row.int(4)?,
        task_state: row.text(5)?,
        expected_sha256: row.opt_text(6)?,
        idx: row.int(7)?,
    })
}

#[cfg(test)]
pub(crate) mod tests;
