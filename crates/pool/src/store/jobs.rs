//! Jobs: their creation (tasks and replicas queued, the job's count of
//! open tasks in shards), their status and combined output, and the
//! pool's and devices' statistics.

use idlemesh_protocol::api::{DeviceStats, JobSpec, JobState, JobStatus, PoolStats, TaskCounts};

use super::{COUNT_SHARDS, Store, StoreError, blob_size, parse_sha, put_blob};
use crate::combine;
use crate::db::{Db, DbError, Row, args};
use crate::split::TaskSeed;

pub(super) fn device_stats(r: &Row) -> Result<DeviceStats, DbError> {
    Ok(DeviceStats { device_id: r.u64(0)?, credits: r.real(1)?, valid_results: r.u64(2)?, invalid_results: r.u64(3)? })
}

/// Combines the job's output if its last open task just closed; called
/// when the closing task's shard of the count reached 0. The job's row is
/// locked first and the shards read in a new statement, which sees
/// every decrement committed before the lock was granted. Two pool
/// replicas closing the last tasks of two shards at once: the first to
/// lock the job finds the other's shard still open (its decrement is not
/// committed, and cannot be until the first lets go of the job), the
/// second then finds all shards at 0. So a job completes exactly once.
pub(super) fn finish_job_if_complete(db: &dyn Db, job_id: i64, spec: &JobSpec) -> Result<(), StoreError> {
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

impl Store {
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
