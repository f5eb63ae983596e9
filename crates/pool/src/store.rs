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
//!   complete the job exactly once (`jobs::finish_job_if_complete`);
//! - a claimed replica is checked against the trust rules again in a new
//!   statement, which sees leases of its task committed meanwhile;
//! - locks are always taken in one order (task, its replicas, devices by
//!   id, a shard of the job's count, the job), and PostgreSQL's deadlock
//!   victims are run again (writer.rs).
//!
//! SQLite has one writer at a time (`BEGIN IMMEDIATE`) and needs none of it.
//!
//! By concern: `jobs.rs` (jobs, their output, statistics), `leases.rs`
//! (claiming, heartbeats, giving back, the fence), `results.rs` (a result
//! recorded and its task judged), `orgs.rs` (organisations, tokens,
//! enrollment), `schema.rs` (numbered migrations). This file holds the
//! store itself: opening, transactions, the replay guard, blobs.

use std::collections::HashMap;
use std::sync::Arc;

use idlemesh_protocol::api::{JobSpec, TaskState};
use idlemesh_protocol::{PublicKey, Sha256};

mod jobs;
mod leases;
mod orgs;
pub(crate) mod results;
pub(crate) mod schema;

use crate::db::{Db, DbError, Dialect, Value, args};
use crate::trust::TrustRules;

/// Reported failures after which a task (and its job) fails: the kernel,
/// not the devices, is what keeps failing.
pub(crate) const MAX_TASK_FAILURES: i64 = 3;

/// Rows a job's open tasks are counted in (fewer for a smaller job): tasks
/// closing at once take turns on one of them, not all on one row
/// (`results::judge`).
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

/// The numbered parameters of a statement being written.
#[derive(Default)]
struct Params(Vec<Value>);

impl Params {
    /// Binds `v` to the next number; returns its placeholder.
    fn bind(&mut self, v: impl Into<Value>) -> String {
        self.0.push(v.into());
        format!("?{}", self.0.len())
    }

    /// `(?1, ?2, …)`, `values` bound: the right side of an `IN`.
    fn list(&mut self, values: impl IntoIterator<Item = impl Into<Value>>) -> String {
        let items: Vec<String> = values.into_iter().map(|v| self.bind(v)).collect();
        format!("({})", items.join(", "))
    }

    /// The rows of a `VALUES` list, bound, each value cast to its column's
    /// type in `casts` where one is given ("": none). PostgreSQL types a
    /// `VALUES` list by its values, not by the `UPDATE ... FROM` it feeds,
    /// and takes a parameter's type from that; an `INSERT`'s needs none.
    fn rows<const N: usize>(&mut self, casts: [&str; N], rows: impl IntoIterator<Item = [Value; N]>) -> String {
        let rows: Vec<String> = rows
            .into_iter()
            .map(|row| {
                let values: Vec<String> = row
                    .into_iter()
                    .zip(casts)
                    .map(|(v, cast)| match cast {
                        "" => self.bind(v),
                        cast => format!("CAST({} AS {cast})", self.bind(v)),
                    })
                    .collect();
                format!("({})", values.join(", "))
            })
            .collect();
        rows.join(", ")
    }
}

/// What the replay guard keeps of a request signature (its bytes): a
/// digest keeps the table small; 128 bits do not collide by chance.
fn signature_key(signature: &[u8]) -> String {
    Sha256::of(signature).to_hex()[..32].to_owned()
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
    /// `signature`: its bytes (decoded), so that one signature has one key
    /// however it was written.
    pub fn spend_signature(&mut self, signature: &[u8], expires_ms: u64, now: u64) -> Result<(), StoreError> {
        self.spend_signatures(&[(signature, expires_ms)], now)
    }

    /// [`Store::spend_signature`] for several requests at once, in one
    /// statement: a replay among them refuses them all (the writer then
    /// spends them one by one, writer.rs).
    ///
    /// On PostgreSQL the insert is deferred: it goes out with the
    /// operation's first statement, and a replay fails it (a duplicate
    /// key), which aborts the transaction and reads as `Replayed` from that
    /// statement on. That saves a round trip on every device request.
    pub fn spend_signatures(&mut self, signatures: &[(&[u8], u64)], now: u64) -> Result<(), StoreError> {
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
        let mut p = Params::default();
        let rows = p.rows(
            ["", ""],
            signatures.iter().map(|(signature, expires_ms)| [signature_key(signature).into(), (*expires_ms).into()]),
        );
        let sql = format!("INSERT INTO seen_signatures (signature, expires_ms) VALUES {rows}");
        if self.db.dialect() == Dialect::Postgres {
            self.db.defer(&sql, &p.0)?;
            return Ok(());
        }
        let added = self.db.execute(&format!("{sql} ON CONFLICT DO NOTHING"), &p.0)?;
        if added == signatures.len() as u64 { Ok(()) } else { Err(StoreError::Replayed) }
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
}

#[cfg(test)]
pub(crate) mod tests;
