//! The pool's tables, and the migrations that bring a database to them.
//!
//! SQLite's list grew one migration at a time since the first release;
//! PostgreSQL's starts where SQLite's is now. A change to the schema adds a
//! migration to both lists, each in its own dialect.

use crate::db::{Db, DbError, Dialect, args};

/// SQLite's migrations, applied in order at start-up; `user_version` counts them.
pub(crate) const SQLITE: &[&str] = &[
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
    // 9: what several pool replicas share (PostgreSQL has it from its
    // first migration): signatures already used, so a request replayed to
    // another replica is refused too; the pool's public key, so a replica
    // started with another key is refused; a receipt's job and credit as
    // columns, summed per job without parsing every payload; a job's count
    // of open tasks, so completing one needs no walk over its tasks.
    r#"
CREATE TABLE seen_signatures (
    signature TEXT PRIMARY KEY,
    expires_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE pool_identity (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    public_key TEXT NOT NULL,
    recorded_ms INTEGER NOT NULL
);
CREATE INDEX seen_signatures_expiry ON seen_signatures(expires_ms);
ALTER TABLE receipts ADD COLUMN job_id INTEGER;
ALTER TABLE receipts ADD COLUMN credits REAL;
UPDATE receipts SET job_id = json_extract(payload, '$.job_id'), credits = json_extract(payload, '$.credits');
CREATE INDEX receipts_job ON receipts(job_id);
ALTER TABLE jobs ADD COLUMN open_tasks INTEGER NOT NULL DEFAULT 0;
UPDATE jobs SET open_tasks = (SELECT count(*) FROM tasks t WHERE t.job_id = jobs.id AND t.state != 'done' AND t.expected_sha256 IS NULL);
"#,
    // 10: a job's open tasks counted in shards (task index modulo the
    // job's count_shards): tasks closing at once on several pool replicas
    // take turns on one of a job's rows, not all on one (store.rs,
    // results::judge). Jobs from before keep one shard.
    r#"
CREATE TABLE job_counts (
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    shard INTEGER NOT NULL,
    open_tasks INTEGER NOT NULL,
    PRIMARY KEY (job_id, shard)
) WITHOUT ROWID;
INSERT INTO job_counts (job_id, shard, open_tasks) SELECT id, 0, open_tasks FROM jobs;
ALTER TABLE jobs ADD COLUMN count_shards INTEGER NOT NULL DEFAULT 1;
ALTER TABLE jobs DROP COLUMN open_tasks;
"#,
];

/// PostgreSQL's migrations; `schema_migrations` records those applied.
const POSTGRES: &[&str] = &[
    // 1: SQLite's 1-9 in one.
    r#"
CREATE TABLE blobs (
    sha256 TEXT PRIMARY KEY,
    bytes BYTEA NOT NULL
);
CREATE TABLE orgs (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_ms BIGINT NOT NULL
);
CREATE TABLE enrollment_tokens (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    org_id BIGINT NOT NULL REFERENCES orgs(id),
    token_sha256 TEXT NOT NULL UNIQUE,
    label TEXT,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    revoked_ms BIGINT,
    uses BIGINT NOT NULL DEFAULT 0,
    max_uses BIGINT
);
CREATE TABLE devices (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    public_key TEXT NOT NULL UNIQUE,
    info TEXT NOT NULL,
    enrolled_ms BIGINT NOT NULL,
    credits DOUBLE PRECISION NOT NULL DEFAULT 0,
    valid_results BIGINT NOT NULL DEFAULT 0,
    invalid_results BIGINT NOT NULL DEFAULT 0,
    org_id BIGINT REFERENCES orgs(id),
    token_id BIGINT REFERENCES enrollment_tokens(id)
);
CREATE INDEX devices_org ON devices(org_id);
CREATE TABLE jobs (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    output_sha256 TEXT,
    error TEXT,
    kernel_kind TEXT NOT NULL DEFAULT 'wasm',
    max_memory_bytes BIGINT NOT NULL DEFAULT 0,
    -- Tasks of the output not done yet: job completion without a walk over them.
    open_tasks BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE tasks (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    job_id BIGINT NOT NULL REFERENCES jobs(id),
    idx BIGINT NOT NULL,
    params TEXT NOT NULL,
    input_sha256 TEXT NOT NULL,
    state TEXT NOT NULL,
    canonical_sha256 TEXT,
    expected_sha256 TEXT,
    failures BIGINT NOT NULL DEFAULT 0,
    last_failure TEXT,
    UNIQUE (job_id, idx)
);
CREATE INDEX tasks_open ON tasks(job_id, state);
CREATE TABLE replicas (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    task_id BIGINT NOT NULL REFERENCES tasks(id),
    state TEXT NOT NULL,
    device_id BIGINT REFERENCES devices(id),
    lease_token TEXT,
    lease_deadline_ms BIGINT,
    output_sha256 TEXT,
    fuel BIGINT,
    wall_ms BIGINT,
    cpu_ms BIGINT,
    valid BIGINT,
    adapter TEXT,
    network TEXT
);
CREATE INDEX replicas_claimable ON replicas(state, lease_deadline_ms);
-- A task's replicas in one state (its reported ones, for the quorum) by
-- one index: with only replicas_claimable to go by, a generic plan
-- scanned every reported replica of the pool for each result.
CREATE INDEX replicas_task ON replicas(task_id, state);
CREATE INDEX replicas_queue ON replicas(state, task_id, id);
CREATE INDEX replicas_device ON replicas(device_id);
CREATE TABLE receipts (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    replica_id BIGINT NOT NULL UNIQUE REFERENCES replicas(id),
    device_id BIGINT NOT NULL,
    payload TEXT NOT NULL,
    signature TEXT NOT NULL,
    job_id BIGINT,
    credits DOUBLE PRECISION
);
CREATE INDEX receipts_job ON receipts(job_id);
CREATE TABLE seen_signatures (
    signature TEXT PRIMARY KEY,
    expires_ms BIGINT NOT NULL
);
CREATE TABLE pool_identity (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    public_key TEXT NOT NULL,
    recorded_ms BIGINT NOT NULL
);
CREATE INDEX seen_signatures_expiry ON seen_signatures(expires_ms);
"#,
    // 2: a replica's row is in the index of the state it is in only, so
    // leasing, reporting and cancelling write fewer index entries; pages
    // keep room for a changed row, so an update that changes no indexed
    // column (a verdict, a device's credit, a job's count) writes none (a
    // heap-only tuple); and a job's open tasks counted in shards, as in
    // SQLite's 10. docs/benchmarks.md has the figures.
    r#"
DROP INDEX replicas_claimable;
DROP INDEX replicas_queue;
DROP INDEX replicas_device;
CREATE INDEX replicas_expiry ON replicas(lease_deadline_ms) WHERE state = 'leased';
CREATE INDEX replicas_queued ON replicas(task_id, id) WHERE state = 'queued';
CREATE INDEX replicas_held ON replicas(device_id) WHERE state = 'leased';
ALTER TABLE replicas SET (fillfactor = 80);
ALTER TABLE tasks SET (fillfactor = 90);
ALTER TABLE devices SET (fillfactor = 80);
ALTER TABLE jobs SET (fillfactor = 50);
CREATE TABLE job_counts (
    job_id BIGINT NOT NULL REFERENCES jobs(id),
    shard BIGINT NOT NULL,
    open_tasks BIGINT NOT NULL,
    PRIMARY KEY (job_id, shard)
) WITH (fillfactor = 50);
INSERT INTO job_counts (job_id, shard, open_tasks) SELECT id, 0, open_tasks FROM jobs;
ALTER TABLE jobs ADD COLUMN count_shards BIGINT NOT NULL DEFAULT 1;
ALTER TABLE jobs DROP COLUMN open_tasks;
"#,
];

/// Replicas starting together migrate one at a time: the others wait on
/// this advisory lock, then find the work done. (Any fixed number will do;
/// this one reads "idlemesh".)
const MIGRATION_LOCK: i64 = 0x6964_6c65_6d65_7368;

fn migrations(dialect: Dialect) -> &'static [&'static str] {
    match dialect {
        Dialect::Sqlite => SQLITE,
        Dialect::Postgres => POSTGRES,
    }
}

/// The schema version this build migrates a database of this kind to.
pub(crate) fn version(dialect: Dialect) -> u32 {
    migrations(dialect).len() as u32
}

/// Applies the migrations the database lacks, each in its own transaction.
pub(crate) fn migrate(db: &dyn Db) -> Result<(), DbError> {
    let list = migrations(db.dialect());
    match db.dialect() {
        Dialect::Sqlite => {
            let applied = db.row("PRAGMA user_version", args![])?.int(0)?;
            for (i, sql) in list.iter().enumerate().skip(applied as usize) {
                let tx = db.savepoint()?;
                tx.batch(sql)?;
                tx.batch(&format!("PRAGMA user_version = {}", i + 1))?;
                tx.commit()?;
            }
        }
        Dialect::Postgres => {
            let tx = db.savepoint()?;
            tx.execute("SELECT pg_advisory_xact_lock(?1)", args![MIGRATION_LOCK])?;
            tx.batch(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_ms BIGINT NOT NULL)",
            )?;
            let applied = tx.row("SELECT coalesce(max(version), 0) FROM schema_migrations", args![])?.int(0)?;
            for (i, sql) in list.iter().enumerate().skip(applied as usize) {
                tx.batch(sql)?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, applied_ms) VALUES (?1, ?2)",
                    args![i as i64 + 1, crate::now_ms()],
                )?;
            }
            tx.commit()?;
        }
    }
    Ok(())
}
