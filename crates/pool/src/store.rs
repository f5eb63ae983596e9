//! The pool's SQLite storage.
//!
//! Every state change happens in one savepoint here, so a failed operation
//! leaves nothing half-written; the writer thread (`writer.rs`) wraps a batch
//! of operations in one transaction, so a crash leaves either the old state
//! or the new one, and commits are shared. Lease ids are replica ids; each
//! new lease of a replica gets a new random token, which fences off results
//! and heartbeats from an earlier holder.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use idlemesh_protocol::api::{
    Capabilities, DeviceStats, JobSpec, JobState, JobStatus, PoolStats, TaskCounts, TaskFailure, TaskState,
};
use idlemesh_protocol::{KernelKind, KernelRef, Keypair, PublicKey, Receipt, Sha256, Signed, TaskManifest};
use rusqlite::{Connection, OptionalExtension, Params, params};

mod orgs;

use crate::combine;
use crate::split::TaskSeed;
use crate::trust::{self, TrustRules, Vote};

/// Migrations, applied in order at start-up; `user_version` counts them.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE blobs (
    sha256 TEXT PRIMARY KEY,
    bytes BLOB NOT NULL
);
CREATE TABLE devices (
    id INTEGER PRIMARY KEY,
    public_key TEXT NOT NULL UNIQUE,
    info TEXT NOT NULL,
    enrolled_ms INTEGER NOT NULL,
    credits REAL NOT NULL DEFAULT 0,
    valid_results INTEGER NOT NULL DEFAULT 0,
    invalid_results INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    output_sha256 TEXT,
    error TEXT
);
CREATE TABLE tasks (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    idx INTEGER NOT NULL,
    params TEXT NOT NULL,
    input_sha256 TEXT NOT NULL,
    state TEXT NOT NULL,
    canonical_sha256 TEXT,
    UNIQUE (job_id, idx)
);
CREATE TABLE replicas (
    id INTEGER PRIMARY KEY,
    task_id INTEGER NOT NULL REFERENCES tasks(id),
    state TEXT NOT NULL,
    device_id INTEGER REFERENCES devices(id),
    lease_token TEXT,
    lease_deadline_ms INTEGER,
    output_sha256 TEXT,
    fuel INTEGER,
    wall_ms INTEGER,
    cpu_ms INTEGER,
    valid INTEGER
);
CREATE INDEX replicas_claimable ON replicas(state, lease_deadline_ms);
CREATE INDEX replicas_task ON replicas(task_id);
CREATE TABLE receipts (
    id INTEGER PRIMARY KEY,
    replica_id INTEGER NOT NULL UNIQUE REFERENCES replicas(id),
    device_id INTEGER NOT NULL,
    payload TEXT NOT NULL,
    signature TEXT NOT NULL
);
"#,
    // 2: what a device must offer to run a job's tasks, as columns the lease query can filter on.
    r#"
ALTER TABLE jobs ADD COLUMN kernel_kind TEXT NOT NULL DEFAULT 'wasm';
ALTER TABLE jobs ADD COLUMN max_memory_bytes INTEGER NOT NULL DEFAULT 0;
UPDATE jobs SET kernel_kind = json_extract(spec, '$.kernel_kind'),
                max_memory_bytes = coalesce(json_extract(spec, '$.limits.max_memory_bytes'), 0);
"#,
    // 3: the queue in order without sorting it per lease, and a job's open
    // tasks without scanning its done ones (measured: 74 ms -> 0.2 ms per lease
    // with 60,000 queued replicas; docs/benchmarks.md).
    r#"
CREATE INDEX replicas_queue ON replicas(state, id);
CREATE INDEX tasks_open ON tasks(job_id, state);
"#,
    // 4: spot checks, tasks whose right answer the job owner knows.
    r#"
ALTER TABLE tasks ADD COLUMN expected_sha256 TEXT;
"#,
    // 5: organisations, their enrollment tokens (hashes only) and devices.
    r#"
CREATE TABLE orgs (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL
);
CREATE TABLE enrollment_tokens (
    id INTEGER PRIMARY KEY,
    org_id INTEGER NOT NULL REFERENCES orgs(id),
    token_sha256 TEXT NOT NULL UNIQUE,
    label TEXT,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    revoked_ms INTEGER,
    uses INTEGER NOT NULL DEFAULT 0,
    max_uses INTEGER
);
ALTER TABLE devices ADD COLUMN org_id INTEGER REFERENCES orgs(id);
CREATE INDEX devices_org ON devices(org_id);
"#,
    // 6: the GPU adapter a WGSL replica was leased to: GPU results agree
    // only within one adapter class, so a task's replicas stay in one.
    r#"
ALTER TABLE replicas ADD COLUMN adapter TEXT;
"#,
    // 7: failures devices reported for a task (its kernel trapped, timed
    // out, broke the worker's sandbox...): counted against the task, which
    // fails after MAX_TASK_FAILURES, never against the devices.
    r#"
ALTER TABLE tasks ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN last_failure TEXT;
"#,
    // 8: what keeps one person from making a quorum (trust.rs): the token
    // a device enrolled with, and the network each replica was leased from.
    r#"
ALTER TABLE devices ADD COLUMN token_id INTEGER REFERENCES enrollment_tokens(id);
ALTER TABLE replicas ADD COLUMN network TEXT;
-- The queue in task order: a replica added later to confirm or decide a
-- task goes out before newer tasks, so results settle (and pay) soon.
DROP INDEX replicas_queue;
CREATE INDEX replicas_queue ON replicas(state, task_id, id);
"#,
];

/// The schema version this build migrates to.
pub(crate) fn schema_version() -> u32 {
    MIGRATIONS.len() as u32
}

/// Reported failures after which a task (and its job) fails: the kernel,
/// not the devices, is what keeps failing.
pub(crate) const MAX_TASK_FAILURES: i64 = 3;

#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("{0}")]
    Db(#[from] rusqlite::Error),
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{1}")]
    Token(orgs::TokenRefusal, String),
    #[error("committing to the database failed: {0}")]
    Commit(String),
    #[error("the database thread stopped")]
    Closed,
}

pub(crate) struct Store {
    conn: Connection,
    trust: TrustRules,
    /// Job specs never change after submission: parsed once, not per lease.
    jobs: HashMap<u64, Arc<JobInfo>>,
}

/// What the hot paths need of a job.
pub(crate) struct JobInfo {
    pub spec: JobSpec,
    pub kernel_size: u64,
}

fn job_info(
    conn: &Connection,
    cache: &mut HashMap<u64, Arc<JobInfo>>,
    job_id: u64,
) -> Result<Arc<JobInfo>, StoreError> {
    if let Some(info) = cache.get(&job_id) {
        return Ok(info.clone());
    }
    let text: String = conn
        .prepare_cached("SELECT spec FROM jobs WHERE id = ?1")?
        .query_row([job_id as i64], |r| r.get(0))
        .optional()?
        .ok_or(StoreError::NotFound { what: "job", id: job_id.to_string() })?;
    let spec: JobSpec =
        serde_json::from_str(&text).map_err(|e| StoreError::Invalid(format!("stored job spec: {e}")))?;
    let kernel_size: i64 = conn
        .prepare_cached("SELECT length(bytes) FROM blobs WHERE sha256 = ?1")?
        .query_row([spec.kernel_sha256.to_hex()], |r| r.get(0))?;
    let info = Arc::new(JobInfo { spec, kernel_size: kernel_size as u64 });
    cache.insert(job_id, info.clone());
    Ok(info)
}

/// What `submit_result` decided.
pub(crate) struct ResultOutcome {
    pub task_state: TaskState,
    pub receipt: Option<Signed<Receipt>>,
}

/// A reported replica: (replica, device, output SHA-256, fuel, wall ms, CPU ms, judged valid).
type Reported = (i64, i64, String, Option<i64>, i64, i64, Option<bool>);

/// Pays a replica's device and signs its receipt.
fn grant(
    conn: &Connection,
    r: &Reported,
    job_id: i64,
    task_id: i64,
    credits: f64,
    key: &Keypair,
    now: u64,
) -> Result<Signed<Receipt>, StoreError> {
    exec(conn, "UPDATE devices SET credits = credits + ?1 WHERE id = ?2", params![credits, r.1])?;
    let receipt_id: i64 = cached_row(conn, "SELECT coalesce(max(id), 0) + 1 FROM receipts", [], |row| row.get(0))?;
    let signed = Signed::sign(
        &Receipt {
            receipt_id: receipt_id as u64,
            device_id: r.1 as u64,
            job_id: job_id as u64,
            task_id: task_id as u64,
            replica_id: r.0 as u64,
            output_sha256: r.2.parse().map_err(|e| StoreError::Invalid(format!("{e}")))?,
            fuel: r.3.map(|f| f as u64),
            credits,
            wall_ms: r.4 as u64,
            cpu_ms: r.5 as u64,
            issued_at_ms: now,
        },
        key,
    );
    exec(
        conn,
        "INSERT INTO receipts (id, replica_id, device_id, payload, signature) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![receipt_id, r.0, r.1, signed.payload, signed.signature],
    )?;
    Ok(signed)
}

/// Records the verdict on one reported replica: its validity, its device's
/// reputation, and for a valid one the credit and a signed receipt.
#[allow(clippy::too_many_arguments, reason = "one value per field of the receipt it may sign")]
fn judge(
    conn: &Connection,
    r: &Reported,
    valid: bool,
    job_id: i64,
    task_id: i64,
    credits: f64,
    key: &Keypair,
    now: u64,
) -> Result<Option<Signed<Receipt>>, StoreError> {
    exec(conn, "UPDATE replicas SET valid = ?1 WHERE id = ?2", params![valid, r.0])?;
    let tally = if valid {
        "UPDATE devices SET valid_results = valid_results + 1 WHERE id = ?1"
    } else {
        "UPDATE devices SET invalid_results = invalid_results + 1 WHERE id = ?1"
    };
    exec(conn, tally, [r.1])?;
    if valid { grant(conn, r, job_id, task_id, credits, key, now).map(Some) } else { Ok(None) }
}

/// A device's (valid, invalid) results so far.
fn device_record(conn: &Connection, device_id: i64) -> rusqlite::Result<(u64, u64)> {
    cached_row(conn, "SELECT valid_results, invalid_results FROM devices WHERE id = ?1", [device_id], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
    })
}

/// Marks a task done with its canonical output; replicas still out are no longer needed.
fn close_task(conn: &Connection, task_id: i64, canonical_sha256: &str) -> Result<(), StoreError> {
    exec(
        conn,
        "UPDATE tasks SET state = 'done', canonical_sha256 = ?1 WHERE id = ?2",
        params![canonical_sha256, task_id],
    )?;
    exec(
        conn,
        "UPDATE replicas SET state = 'cancelled' WHERE task_id = ?1 AND state IN ('queued', 'leased')",
        [task_id],
    )?;
    Ok(())
}

/// Replicas of a task still queued or out on lease.
fn outstanding(conn: &Connection, task_id: i64) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached("SELECT count(*) FROM replicas WHERE task_id = ?1 AND state IN ('queued', 'leased')")?
        .query_row([task_id], |r| r.get(0))?)
}

/// Executes with a cached prepared statement: parsing SQL on every call cost
/// more than running it on the hot path.
fn exec(conn: &Connection, sql: &str, params: impl Params) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// A leased replica back in the queue, its lease and token void.
fn requeue(conn: &Connection, replica: u64) -> rusqlite::Result<usize> {
    exec(
        conn,
        "UPDATE replicas SET state = 'queued', device_id = NULL, lease_token = NULL, lease_deadline_ms = NULL WHERE id = ?1",
        [replica as i64],
    )
}

/// `query_row` through the statement cache: parsing and planning a statement
/// cost more than running it, and the hot paths run the same few thousands
/// of times a second (measured with perf: a tenth of the writer's time).
fn cached_row<T>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.prepare_cached(sql)?.query_row(params, f)
}

pub(crate) fn random_token() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the OS has no randomness source");
    hex::encode(b)
}

impl Store {
    pub fn open(path: &Path, trust: TrustRules) -> Result<Self, rusqlite::Error> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Every statement of the hot paths stays prepared, and stays prepared
        // when its parameters change: without the planner's stability
        // guarantee, SQLite (built with STAT4) re-plans the lease query
        // whenever a bound value differs (perf: 18 % of the writer's time).
        conn.set_prepared_statement_cache_capacity(64);
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
        let version: i64 = cached_row(&conn, "PRAGMA user_version", [], |r| r.get(0))?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i as i64 + 1)?;
            tx.commit()?;
        }
        Ok(Self { conn, trust, jobs: HashMap::new() })
    }

    /// Opens the writer's batch transaction; operations nest savepoints in it.
    pub fn begin(&mut self) -> rusqlite::Result<()> {
        self.conn.execute_batch("BEGIN IMMEDIATE")
    }

    pub fn commit(&mut self) -> rusqlite::Result<()> {
        self.conn.execute_batch("COMMIT")
    }

    pub fn rollback(&mut self) {
        let _ = self.conn.execute_batch("ROLLBACK");
    }

    pub fn put_blob(&mut self, bytes: &[u8]) -> Result<Sha256, StoreError> {
        let sha = Sha256::of(bytes);
        self.conn
            .execute("INSERT OR IGNORE INTO blobs (sha256, bytes) VALUES (?1, ?2)", params![sha.to_hex(), bytes])?;
        Ok(sha)
    }

    pub fn blob(&self, sha: &Sha256) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(cached_row(&self.conn, "SELECT bytes FROM blobs WHERE sha256 = ?1", [sha.to_hex()], |r| r.get(0))
            .optional()?)
    }

    fn blob_size(&self, sha: &Sha256) -> Result<Option<u64>, StoreError> {
        Ok(cached_row(&self.conn, "SELECT length(bytes) FROM blobs WHERE sha256 = ?1", [sha.to_hex()], |r| {
            r.get::<_, i64>(0)
        })
        .optional()?
        .map(|n| n as u64))
    }

    pub fn device_key(&self, device_id: u64) -> Result<Option<PublicKey>, StoreError> {
        let hex: Option<String> =
            cached_row(&self.conn, "SELECT public_key FROM devices WHERE id = ?1", [device_id as i64], |r| r.get(0))
                .optional()?;
        hex.map(|h| h.parse().map_err(|e| StoreError::Invalid(format!("stored device key: {e}")))).transpose()
    }

    pub fn create_job(&mut self, spec: &JobSpec, seeds: Vec<TaskSeed>, now: u64) -> Result<u64, StoreError> {
        if self.blob_size(&spec.kernel_sha256)?.is_none() {
            return Err(StoreError::Invalid(format!(
                "kernel_sha256 {} is not a stored blob: upload it with POST /v1/blobs first",
                spec.kernel_sha256
            )));
        }
        let tx = self.conn.savepoint()?;
        exec(
            &tx,
            "INSERT INTO jobs (name, spec, state, created_ms, kernel_kind, max_memory_bytes) VALUES (?1, ?2, 'running', ?3, ?4, ?5)",
            params![
                spec.name,
                // Inputs live on as blobs, one per task; the spec is read on every lease.
                serde_json::to_string(&JobSpec { inputs: None, ..spec.clone() }).expect("spec serialises"),
                now as i64,
                spec.kernel_kind.as_str(),
                spec.limits.max_memory_bytes as i64
            ],
        )?;
        let job_id = tx.last_insert_rowid();
        for (idx, seed) in seeds.into_iter().enumerate() {
            let input_sha = Sha256::of(&seed.input);
            exec(
                &tx,
                "INSERT OR IGNORE INTO blobs (sha256, bytes) VALUES (?1, ?2)",
                params![input_sha.to_hex(), seed.input],
            )?;
            exec(
                &tx,
                "INSERT INTO tasks (job_id, idx, params, input_sha256, state, expected_sha256)
                 VALUES (?1, ?2, ?3, ?4, 'pending', ?5)",
                params![job_id, idx as i64, seed.params, input_sha.to_hex(), seed.expected_sha256.map(|s| s.to_hex())],
            )?;
            let task_id = tx.last_insert_rowid();
            for _ in 0..spec.replication {
                exec(&tx, "INSERT INTO replicas (task_id, state) VALUES (?1, 'queued')", [task_id])?;
            }
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
        let network = network.filter(|_| spread.network);
        // Only a pool that spreads by token or organisation needs the device's.
        let (token_id, org_id): (Option<i64>, Option<i64>) = if spread.token || spread.org {
            cached_row(&self.conn, "SELECT token_id, org_id FROM devices WHERE id = ?1", [device_id as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
        } else {
            (None, None)
        };
        let (token_id, org_id) = (token_id.filter(|_| spread.token), org_id.filter(|_| spread.org));
        let tx = self.conn.savepoint()?;
        // Expired leases first (oldest deadline first), then the queue in
        // order. Each half walks an index and stops at `max` rows: the cost of
        // a lease does not grow with the number of tasks waiting.
        let mut claimed: Vec<(i64, i64, i64, String, String)> = Vec::new();
        for (which, order) in [
            ("r.state = 'leased' AND r.lease_deadline_ms < ?1", "r.lease_deadline_ms"),
            ("r.state = 'queued'", "r.task_id, r.id"),
        ] {
            if claimed.len() >= max as usize {
                break;
            }
            let sql = format!(
                "SELECT r.id, t.id, t.job_id, t.params, t.input_sha256
                 FROM replicas r JOIN tasks t ON t.id = r.task_id JOIN jobs j ON j.id = t.job_id
                 WHERE {which} AND t.state = 'pending' AND j.state = 'running'
                   AND ((j.kernel_kind = 'wasm' AND ?4) OR (j.kernel_kind = 'wgsl' AND ?5))
                   AND (?6 = 0 OR j.max_memory_bytes <= ?6)
                   AND NOT EXISTS (SELECT 1 FROM replicas o JOIN devices od ON od.id = o.device_id
                                   WHERE o.task_id = r.task_id AND o.id != r.id AND o.state IN ('leased', 'reported')
                                   AND (o.device_id = ?2 OR od.token_id = ?8 OR od.org_id = ?9 OR o.network = ?10))
                   AND (j.kernel_kind != 'wgsl' OR NOT EXISTS (
                        SELECT 1 FROM replicas c WHERE c.task_id = r.task_id AND c.id != r.id
                        AND (c.state = 'reported' OR (c.state = 'leased' AND c.lease_deadline_ms >= ?1))
                        AND c.adapter IS NOT ?7))
                 ORDER BY {order} LIMIT ?3"
            );
            let mut stmt = tx.prepare_cached(&sql)?;
            let memory = i64::try_from(caps.memory_bytes).unwrap_or(i64::MAX);
            let gpu = caps.wgpu_adapter.is_some();
            // Ask for extra rows: replicas of a task already claimed in this batch are skipped.
            let limit = i64::from(max) * 4;
            // A WGSL task's replicas go to one adapter class (the exact adapter
            // string: vendor, device, driver): floating point on GPUs agrees
            // bit for bit only within one (docs/architecture.md, "WGSL kernels").
            let adapter = caps.wgpu_adapter.as_deref();
            let rows = stmt.query_map(
                params![
                    now as i64,
                    device_id as i64,
                    limit,
                    caps.wasm,
                    gpu,
                    memory,
                    adapter,
                    token_id,
                    org_id,
                    network
                ],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )?;
            for row in rows {
                let row: (i64, i64, i64, String, String) = row?;
                if claimed.len() < max as usize && !claimed.iter().any(|c| c.1 == row.1) {
                    claimed.push(row);
                }
            }
        }
        let mut manifests = Vec::with_capacity(claimed.len());
        for (replica_id, task_id, job_id, params, input_sha) in claimed {
            let info = job_info(&tx, &mut self.jobs, job_id as u64)?;
            let spec = &info.spec;
            let token = random_token();
            let deadline = now + spec.lease_ms;
            let adapter = match spec.kernel_kind {
                KernelKind::Wgsl => caps.wgpu_adapter.as_deref(),
                KernelKind::Wasm => None,
            };
            exec(
                &tx,
                "UPDATE replicas SET state = 'leased', device_id = ?1, lease_token = ?2, lease_deadline_ms = ?3, adapter = ?5,
                 network = ?6 WHERE id = ?4",
                params![device_id as i64, token, deadline as i64, replica_id, adapter, network],
            )?;
            let input_sha256: Sha256 = input_sha.parse().map_err(|e| StoreError::Invalid(format!("{e}")))?;
            let size = |sha: &Sha256| -> Result<u64, StoreError> {
                Ok(cached_row(&tx, "SELECT length(bytes) FROM blobs WHERE sha256 = ?1", [sha.to_hex()], |r| {
                    r.get::<_, i64>(0)
                })? as u64)
            };
            let manifest = TaskManifest {
                job_id: job_id as u64,
                task_id: task_id as u64,
                replica_id: replica_id as u64,
                device_id,
                lease_id: replica_id as u64,
                lease_token: token,
                kernel: KernelRef { kind: spec.kernel_kind, sha256: spec.kernel_sha256, size_bytes: info.kernel_size },
                input_sha256,
                input_bytes: size(&input_sha256)?,
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

    fn check_lease(&self, lease_id: u64, token: &str, device_id: u64) -> Result<(i64, String), StoreError> {
        let row: Option<(i64, String, Option<String>, Option<i64>)> = cached_row(
            &self.conn,
            "SELECT task_id, state, lease_token, device_id FROM replicas WHERE id = ?1",
            [lease_id as i64],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
        let Some((task_id, state, stored_token, holder)) = row else {
            return Err(StoreError::NotFound { what: "lease", id: lease_id.to_string() });
        };
        if stored_token.as_deref() != Some(token) || holder != Some(device_id as i64) {
            return Err(StoreError::Conflict(
                "stale lease token: this lease was given to another device or renewed".into(),
            ));
        }
        Ok((task_id, state))
    }

    pub fn heartbeat(&mut self, device_id: u64, lease_id: u64, token: &str, now: u64) -> Result<u64, StoreError> {
        let (task_id, state) = self.check_lease(lease_id, token, device_id)?;
        if state != "leased" {
            return Err(StoreError::Conflict(format!("lease {lease_id} is {state}, not leased")));
        }
        let job_id: i64 = cached_row(&self.conn, "SELECT job_id FROM tasks WHERE id = ?1", [task_id], |r| r.get(0))?;
        let deadline = now + job_info(&self.conn, &mut self.jobs, job_id as u64)?.spec.lease_ms;
        exec(
            &self.conn,
            "UPDATE replicas SET lease_deadline_ms = ?1 WHERE id = ?2",
            params![deadline as i64, lease_id as i64],
        )?;
        Ok(deadline)
    }

    pub fn give_back(
        &mut self,
        device_id: u64,
        lease_id: u64,
        token: &str,
        failure: Option<&TaskFailure>,
    ) -> Result<(), StoreError> {
        let (task_id, state) = self.check_lease(lease_id, token, device_id)?;
        if state != "leased" {
            return Err(StoreError::Conflict(format!("lease {lease_id} is {state}, not leased")));
        }
        let tx = self.conn.savepoint()?;
        requeue(&tx, lease_id)?;
        if let Some(f) = failure {
            let what = format!("{}: {}", f.status, f.message);
            let (failures, job_id): (i64, i64) = tx.query_row(
                "UPDATE tasks SET failures = failures + 1, last_failure = ?1 WHERE id = ?2 RETURNING failures, job_id",
                params![what, task_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if failures >= MAX_TASK_FAILURES {
                exec(&tx, "UPDATE tasks SET state = 'failed' WHERE id = ?1 AND state = 'pending'", [task_id])?;
                exec(
                    &tx,
                    "UPDATE replicas SET state = 'cancelled' WHERE task_id = ?1 AND state IN ('queued', 'leased')",
                    [task_id],
                )?;
                exec(
                    &tx,
                    "UPDATE jobs SET state = 'failed', error = ?1 WHERE id = ?2 AND state = 'running'",
                    params![format!("task {task_id} failed {failures} times, last: {what}"), job_id],
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
        let tx = self.conn.savepoint()?;
        let live: Vec<i64> = tx
            .prepare_cached(
                "SELECT id FROM replicas WHERE state = 'leased' AND device_id = ?1 AND lease_deadline_ms >= ?2",
            )?
            .query_map(params![device_id as i64, now as i64], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let held: std::collections::HashSet<u64> = held.iter().copied().collect();
        let mut released = Vec::new();
        for id in live.into_iter().map(|id| id as u64).filter(|id| !held.contains(id)) {
            requeue(&tx, id)?;
            released.push(id);
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
        let (task_id, state) = self.check_lease(lease_id, token, device_id)?;
        let output_sha = Sha256::of(output);
        if state != "leased" {
            // The same device sending the same result again (its agent died
            // before it could record our answer) gets the same answer again.
            if let Some(outcome) = self.repeat_outcome(lease_id, task_id, &output_sha)? {
                return Ok(outcome);
            }
            return Err(StoreError::Conflict(format!("lease {lease_id} is {state}: a result was already recorded")));
        }
        let tx = self.conn.savepoint()?;
        exec(&tx, "INSERT OR IGNORE INTO blobs (sha256, bytes) VALUES (?1, ?2)", params![output_sha.to_hex(), output])?;
        exec(
            &tx,
            "UPDATE replicas SET state = 'reported', output_sha256 = ?1, fuel = ?2, wall_ms = ?3, cpu_ms = ?4 WHERE id = ?5",
            params![output_sha.to_hex(), fuel.map(|f| f as i64), wall_ms as i64, cpu_ms as i64, lease_id as i64],
        )?;
        let (job_id, task_state, expected): (i64, String, Option<String>) =
            cached_row(&tx, "SELECT job_id, state, expected_sha256 FROM tasks WHERE id = ?1", [task_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
        let info = job_info(&tx, &mut self.jobs, job_id as u64)?;
        let spec = &info.spec;

        // A spot check judges each answer on arrival, right or wrong, even
        // after the task is done: a late liar must not slip through.
        if let Some(expected) = &expected {
            let row: Reported = cached_row(
                &tx,
                "SELECT id, device_id, output_sha256, fuel, wall_ms, cpu_ms, valid FROM replicas WHERE id = ?1",
                [lease_id as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)),
            )?;
            let right = &row.2 == expected;
            let credits = spec.credit_for(row.3.map(|f| f as u64));
            let receipt = judge(&tx, &row, right, job_id, task_id, credits, key, now)?;
            let task_state = match (task_state.as_str(), right) {
                ("pending", true) => {
                    close_task(&tx, task_id, expected)?;
                    TaskState::Done
                }
                ("pending", false) => {
                    let outstanding = outstanding(&tx, task_id)?;
                    let answered: i64 = cached_row(
                        &tx,
                        "SELECT count(*) FROM replicas WHERE task_id = ?1 AND state = 'reported'",
                        [task_id],
                        |r| r.get(0),
                    )?;
                    if outstanding == 0 && answered < 2 * i64::from(spec.replication) {
                        exec(&tx, "INSERT INTO replicas (task_id, state) VALUES (?1, 'queued')", [task_id])?;
                        TaskState::Pending
                    } else if outstanding == 0 {
                        // Nobody answered right: that says something about the
                        // devices, not about the job, which goes on without it.
                        exec(&tx, "UPDATE tasks SET state = 'failed' WHERE id = ?1", [task_id])?;
                        TaskState::Failed
                    } else {
                        TaskState::Pending
                    }
                }
                ("done", _) => TaskState::Done,
                _ => TaskState::Failed,
            };
            tx.commit()?;
            return Ok(ResultOutcome { task_state, receipt });
        }

        let mut receipt = None;
        let mut new_state = match task_state.as_str() {
            "done" => TaskState::Done,
            "failed" => TaskState::Failed,
            _ => TaskState::Pending,
        };
        if new_state == TaskState::Pending {
            // Quorum: the most common (output, fuel when metered) among reported replicas.
            let metered = spec.limits.max_fuel.is_some();
            let reported: Vec<Reported> = {
                let mut stmt = tx.prepare_cached(
                    "SELECT id, device_id, output_sha256, fuel, wall_ms, cpu_ms, valid FROM replicas
                     WHERE task_id = ?1 AND state = 'reported'",
                )?;
                stmt.query_map([task_id], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
                })?
                .collect::<Result<_, _>>()?
            };
            let vote = |r: &Reported| (r.2.clone(), if metered { r.3 } else { None });
            let votes: Vec<Vote<_>> = reported.iter().map(|r| Vote { device_id: r.1, value: vote(r) }).collect();
            // A result counts alone only from a device that earned it (trust.rs).
            let records: HashMap<i64, (u64, u64)> =
                reported.iter().map(|r| Ok((r.1, device_record(&tx, r.1)?))).collect::<Result<_, rusqlite::Error>>()?;
            let rules = self.trust;
            let winner = trust::quorum_value(&votes, spec.quorum, |device| {
                records.get(&device).is_some_and(|&(valid, invalid)| rules.counts_alone(valid, invalid))
            });
            if let Some(canonical) = winner {
                new_state = TaskState::Done;
                close_task(&tx, task_id, &canonical.0)?;
                for r in &reported {
                    let credits = spec.credit_for(r.3.map(|f| f as u64));
                    let signed = judge(&tx, r, vote(r) == canonical, job_id, task_id, credits, key, now)?;
                    if r.0 == lease_id as i64 {
                        receipt = signed;
                    }
                }
            } else {
                let outstanding = outstanding(&tx, task_id)?;
                if outstanding == 0 {
                    // Disagreement with every replica in, or one result from a
                    // device whose results are still checked: ask one more
                    // device, up to twice the replication (at least three
                    // results where trust is earned), then give up on the task.
                    let most = (2 * spec.replication as usize).max(if rules.checked_results > 0 { 3 } else { 0 });
                    if reported.len() < most {
                        exec(&tx, "INSERT INTO replicas (task_id, state) VALUES (?1, 'queued')", [task_id])?;
                    } else {
                        new_state = TaskState::Failed;
                        exec(&tx, "UPDATE tasks SET state = 'failed' WHERE id = ?1", [task_id])?;
                        exec(
                            &tx,
                            "UPDATE jobs SET state = 'failed', error = ?1 WHERE id = ?2",
                            params![format!("task {task_id}: no quorum among {} results", reported.len()), job_id],
                        )?;
                    }
                }
            }
        }
        tx.commit()?;
        if new_state == TaskState::Done {
            self.finish_job_if_complete(job_id as u64, &info.spec)?;
        }
        Ok(ResultOutcome { task_state: new_state, receipt })
    }

    /// The recorded outcome of a replica whose result is already in, if `output_sha` is that result.
    fn repeat_outcome(
        &self,
        lease_id: u64,
        task_id: i64,
        output_sha: &Sha256,
    ) -> Result<Option<ResultOutcome>, StoreError> {
        let recorded: Option<String> =
            cached_row(&self.conn, "SELECT output_sha256 FROM replicas WHERE id = ?1", [lease_id as i64], |r| r.get(0))
                .optional()?
                .flatten();
        if recorded.as_deref() != Some(output_sha.to_hex().as_str()) {
            return Ok(None);
        }
        let task_state = match cached_row(&self.conn, "SELECT state FROM tasks WHERE id = ?1", [task_id], |r| {
            r.get::<_, String>(0)
        })?
        .as_str()
        {
            "done" => TaskState::Done,
            "failed" => TaskState::Failed,
            _ => TaskState::Pending,
        };
        let receipt = cached_row(
            &self.conn,
            "SELECT payload, signature FROM receipts WHERE replica_id = ?1",
            [lease_id as i64],
            |r| Ok(Signed::from_parts(r.get(0)?, r.get(1)?)),
        )
        .optional()?;
        Ok(Some(ResultOutcome { task_state, receipt }))
    }

    fn finish_job_if_complete(&mut self, job_id: u64, spec: &JobSpec) -> Result<(), StoreError> {
        let open: i64 = cached_row(
            &self.conn,
            "SELECT EXISTS (SELECT 1 FROM tasks WHERE job_id = ?1 AND state IN ('pending', 'failed') AND expected_sha256 IS NULL)",
            [job_id as i64],
            |r| r.get(0),
        )?;
        if open > 0 {
            return Ok(());
        }
        let outputs: Vec<(String, Vec<u8>)> = {
            let mut stmt = self.conn.prepare(
                "SELECT t.params, b.bytes FROM tasks t JOIN blobs b ON b.sha256 = t.canonical_sha256
                 WHERE t.job_id = ?1 AND t.expected_sha256 IS NULL ORDER BY t.idx",
            )?;
            stmt.query_map([job_id as i64], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?
        };
        match combine::combine(spec, &outputs) {
            Ok(bytes) => {
                let sha = self.put_blob(&bytes)?;
                exec(
                    &self.conn,
                    "UPDATE jobs SET state = 'done', output_sha256 = ?1 WHERE id = ?2",
                    params![sha.to_hex(), job_id as i64],
                )?;
            }
            Err(e) => {
                tracing::warn!(job_id, error = %e, "combining the job's outputs failed");
                self.conn
                    .execute("UPDATE jobs SET state = 'failed', error = ?1 WHERE id = ?2", params![e, job_id as i64])?;
            }
        }
        Ok(())
    }

    fn task_counts(&self, job: Option<u64>) -> Result<TaskCounts, StoreError> {
        let mut counts = TaskCounts::default();
        let mut stmt = self.conn.prepare_cached(
            "SELECT t.state, EXISTS (SELECT 1 FROM replicas r WHERE r.task_id = t.id AND r.state = 'leased'), count(*)
             FROM tasks t WHERE ?1 IS NULL OR t.job_id = ?1 GROUP BY 1, 2",
        )?;
        let rows = stmt.query_map([job.map(|j| j as i64)], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?, r.get::<_, i64>(2)?))
        })?;
        for row in rows {
            let (state, leased, n) = row?;
            let n = n as u64;
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
        let (name, state, error): (String, String, Option<String>) =
            cached_row(&self.conn, "SELECT name, state, error FROM jobs WHERE id = ?1", [job_id as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?
            .ok_or(StoreError::NotFound { what: "job", id: job_id.to_string() })?;
        let credits: f64 = cached_row(
            &self.conn,
            "SELECT coalesce(sum(json_extract(payload, '$.credits')), 0.0) FROM receipts WHERE json_extract(payload, '$.job_id') = ?1",
            [job_id as i64],
            |r| r.get(0),
        )?;
        Ok(JobStatus {
            job_id,
            name,
            state: match state.as_str() {
                "done" => JobState::Done,
                "failed" => JobState::Failed,
                _ => JobState::Running,
            },
            tasks: self.task_counts(Some(job_id))?,
            credits_granted: credits,
            error,
        })
    }

    /// The combined output, once the job is done; `Ok(None)` while it runs.
    pub fn job_output(&self, job_id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let sha: Option<String> =
            cached_row(&self.conn, "SELECT output_sha256 FROM jobs WHERE id = ?1", [job_id as i64], |r| r.get(0))
                .optional()?
                .ok_or(StoreError::NotFound { what: "job", id: job_id.to_string() })?;
        match sha {
            Some(sha) => self.blob(&sha.parse().map_err(|e| StoreError::Invalid(format!("{e}")))?),
            None => Ok(None),
        }
    }

    /// One device's credits and reputation.
    pub fn device_stats(&self, device_id: u64) -> Result<DeviceStats, StoreError> {
        cached_row(
            &self.conn,
            "SELECT id, credits, valid_results, invalid_results FROM devices WHERE id = ?1",
            [device_id as i64],
            |r| {
                Ok(DeviceStats {
                    device_id: r.get::<_, i64>(0)? as u64,
                    credits: r.get(1)?,
                    valid_results: r.get::<_, i64>(2)? as u64,
                    invalid_results: r.get::<_, i64>(3)? as u64,
                })
            },
        )
        .optional()?
        .ok_or(StoreError::NotFound { what: "device", id: device_id.to_string() })
    }

    pub fn stats(&self) -> Result<PoolStats, StoreError> {
        let jobs: i64 = cached_row(&self.conn, "SELECT count(*) FROM jobs", [], |r| r.get(0))?;
        let mut stmt =
            self.conn.prepare("SELECT id, credits, valid_results, invalid_results FROM devices ORDER BY id")?;
        let devices = stmt
            .query_map([], |r| {
                Ok(DeviceStats {
                    device_id: r.get::<_, i64>(0)? as u64,
                    credits: r.get(1)?,
                    valid_results: r.get::<_, i64>(2)? as u64,
                    invalid_results: r.get::<_, i64>(3)? as u64,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PoolStats {
            jobs: jobs as u64,
            tasks: self.task_counts(None)?,
            credits_granted: devices.iter().map(|d| d.credits).sum(),
            devices,
        })
    }
}

impl crate::storage::Storage for Store {
    fn begin(&mut self) -> Result<(), StoreError> {
        Ok(Store::begin(self)?)
    }
    fn commit(&mut self) -> Result<(), StoreError> {
        Ok(Store::commit(self)?)
    }
    fn rollback(&mut self) {
        Store::rollback(self)
    }
    fn put_blob(&mut self, bytes: &[u8]) -> Result<Sha256, StoreError> {
        Store::put_blob(self, bytes)
    }
    fn blob(&self, sha: &Sha256) -> Result<Option<Vec<u8>>, StoreError> {
        Store::blob(self, sha)
    }
    fn enroll(
        &mut self,
        key: &PublicKey,
        info: &str,
        token: Option<&str>,
        now: u64,
    ) -> Result<(u64, Option<idlemesh_protocol::api::Org>), StoreError> {
        Store::enroll(self, key, info, token, now)
    }
    fn device_key(&self, device_id: u64) -> Result<Option<PublicKey>, StoreError> {
        Store::device_key(self, device_id)
    }
    fn ping(&self) -> Result<(), StoreError> {
        Ok(cached_row(&self.conn, "SELECT 1", [], |r| r.get::<_, i64>(0)).map(drop)?)
    }
    fn create_job(&mut self, spec: &JobSpec, seeds: Vec<TaskSeed>, now: u64) -> Result<u64, StoreError> {
        Store::create_job(self, spec, seeds, now)
    }
    fn job_status(&self, job_id: u64) -> Result<JobStatus, StoreError> {
        Store::job_status(self, job_id)
    }
    fn job_output(&self, job_id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Store::job_output(self, job_id)
    }
    fn lease(
        &mut self,
        device_id: u64,
        caps: &Capabilities,
        max: u32,
        now: u64,
        network: Option<&str>,
    ) -> Result<Vec<TaskManifest>, StoreError> {
        Store::lease(self, device_id, caps, max, now, network)
    }
    fn heartbeat(&mut self, device_id: u64, lease_id: u64, token: &str, now: u64) -> Result<u64, StoreError> {
        Store::heartbeat(self, device_id, lease_id, token, now)
    }
    fn give_back(
        &mut self,
        device_id: u64,
        lease_id: u64,
        token: &str,
        failure: Option<&TaskFailure>,
    ) -> Result<(), StoreError> {
        Store::give_back(self, device_id, lease_id, token, failure)
    }
    fn release_unheld(&mut self, device_id: u64, held: &[u64], now: u64) -> Result<Vec<u64>, StoreError> {
        Store::release_unheld(self, device_id, held, now)
    }
    fn submit_result(
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
        Store::submit_result(self, device_id, lease_id, token, output, fuel, wall_ms, cpu_ms, key, now)
    }
    fn stats(&self) -> Result<PoolStats, StoreError> {
        Store::stats(self)
    }
    fn device_stats(&self, device_id: u64) -> Result<DeviceStats, StoreError> {
        Store::device_stats(self, device_id)
    }
    fn create_org(&mut self, name: &str, now: u64) -> Result<idlemesh_protocol::api::Org, StoreError> {
        Store::create_org(self, name, now)
    }
    fn orgs(&self) -> Result<Vec<idlemesh_protocol::api::Org>, StoreError> {
        Store::orgs(self)
    }
    fn org_stats(&self, org_id: u64) -> Result<idlemesh_protocol::api::OrgStats, StoreError> {
        Store::org_stats(self, org_id)
    }
    fn create_token(
        &mut self,
        org_id: u64,
        req: &idlemesh_protocol::api::TokenCreate,
        now: u64,
    ) -> Result<idlemesh_protocol::api::TokenCreated, StoreError> {
        Store::create_token(self, org_id, req, now)
    }
    fn revoke_token(&mut self, token_id: u64, now: u64) -> Result<idlemesh_protocol::api::TokenInfo, StoreError> {
        Store::revoke_token(self, token_id, now)
    }
}

#[cfg(test)]
mod tests;
