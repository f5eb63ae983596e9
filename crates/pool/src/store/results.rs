//! Results: a replica's result recorded, its task judged (judgement.rs
//! decides, this applies it), credits and signed receipts for the valid
//! results, and the job's output once its last task closes.

use idlemesh_protocol::api::TaskState;
use idlemesh_protocol::{Keypair, Receipt, Sha256, Signed};

use super::jobs::finish_job_if_complete;
use super::leases::{Lease, lock_lease};
use super::{Params, Store, StoreError, job_info, parse_sha, put_blob, task_state};
use crate::db::{Db, DbError, Value, args};
use crate::judgement::{self, Asked, Ballot, Decision, SpotCheck};

/// What `submit_result` decided.
pub(crate) struct ResultOutcome {
    pub task_state: TaskState,
    pub receipt: Option<Signed<Receipt>>,
}

/// A replica whose result is in, and its device's record so far.
pub(super) struct Reported {
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
pub(super) struct TaskReplicas {
    /// Those whose result is in, by device id: devices' rows are then
    /// updated in one order by every pool replica.
    reported: Vec<Reported>,
    /// Those still queued or out on lease.
    outstanding: usize,
}

/// Reads a task's replicas (its row locked by the caller) in one statement.
pub(super) fn task_replicas(db: &dyn Db, task_id: i64) -> Result<TaskReplicas, StoreError> {
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

/// What [`judge`] did.
pub(super) struct Judged {
    /// Each verdict's receipt, for the valid ones.
    receipts: Vec<Option<Signed<Receipt>>>,
    /// The open tasks left in the closed task's shard of the job's count.
    shard_left: Option<i64>,
}

/// A task closing with its judgement.
pub(super) struct Close<'a> {
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
pub(super) fn judge(
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

/// The recorded outcome of a replica whose result is already in, if `output_sha` is that result.
pub(super) fn repeat_outcome(
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

impl Store {
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
}
