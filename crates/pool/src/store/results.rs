//! Results: replicas' results recorded, their tasks judged (judgement.rs
//! decides, this applies it), credits and signed receipts for the valid
//! results, and a job's output once its last task closes.
//!
//! Results are recorded a batch at a time, with statements that each serve
//! the whole batch: the tasks and leases locked in one, every reported
//! replica written in one, every device's record in one, every receipt in
//! one. On PostgreSQL what a statement costs the server is mostly the
//! statement, not its rows: a batch of eight costs about a third of eight
//! results a statement each (`cargo bench --bench pool -- … floor`,
//! docs/scaling.md). A batch of one is the same code.
//!
//! The batch is judged in order, one result after another, against a view
//! of its tasks held here, exactly as if each had been recorded alone in
//! that order: a later result sees its task closed, its replica cancelled
//! and its devices' records as the earlier ones left them. Only the
//! writing waits for the end. Every refusal (an unknown lease, a stale
//! token, a result already recorded) is decided before anything is
//! written, so a refused result leaves nothing behind.

use std::collections::{BTreeMap, HashMap, HashSet};

use idlemesh_protocol::api::{JobSpec, TaskState};
use idlemesh_protocol::{Keypair, Receipt, Sha256, Signed};

use super::jobs::finish_job_if_complete;
use super::{Params, Store, StoreError, job_info, parse_sha, task_state};
use crate::db::{Db, DbError, Value, args};
use crate::judgement::{self, Asked, Ballot, Decision, SpotCheck};

/// What `submit_result` decided.
#[derive(Debug, Clone)]
pub(crate) struct ResultOutcome {
    pub task_state: TaskState,
    pub receipt: Option<Signed<Receipt>>,
}

/// One device's result for one of its leases.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Submission<'a> {
    pub device_id: u64,
    pub lease_id: u64,
    pub token: &'a str,
    pub output: &'a [u8],
    pub fuel: Option<u64>,
    pub wall_ms: u64,
    pub cpu_ms: u64,
}

/// A replica of a task in the batch's view.
struct Replica {
    /// None: asked for by this batch, not inserted yet.
    id: Option<i64>,
    state: String,
    device_id: Option<i64>,
    output_sha256: Option<String>,
    fuel: Option<i64>,
    wall_ms: i64,
    cpu_ms: i64,
}

/// A task of the batch, locked, as this batch has left it so far.
struct Task {
    job_id: i64,
    state: String,
    /// A spot check's known answer.
    expected_sha256: Option<String>,
    /// Its place in its job.
    idx: i64,
    replicas: Vec<Replica>,
}

/// A lease as the batch locked it.
struct Locked {
    task_id: i64,
    token: Option<String>,
    device_id: Option<i64>,
}

/// A valid result's receipt, to be numbered and signed once the batch is judged.
struct ToReceipt {
    replica_id: i64,
    device_id: i64,
    job_id: i64,
    task_id: i64,
    output_sha256: String,
    fuel: Option<i64>,
    credits: f64,
    wall_ms: i64,
    cpu_ms: i64,
}

/// What the batch will write, gathered while it is judged.
#[derive(Default)]
struct Writes<'a> {
    /// Outputs by their hash.
    blobs: BTreeMap<String, &'a [u8]>,
    reported: Vec<(i64, String, Option<i64>, i64, i64)>,
    verdicts: Vec<(i64, bool)>,
    /// Tasks that get one more replica, once for each.
    asked: Vec<i64>,
    /// Closed tasks, whose replicas still queued or out are cancelled.
    cancelled: Vec<i64>,
    done: Vec<(i64, String)>,
    failed: Vec<i64>,
    /// By job id (jobs' rows in one order), the last error for each.
    failed_jobs: BTreeMap<i64, String>,
    /// By device id (every pool replica updates devices in one order): valid, invalid, credits.
    devices: BTreeMap<i64, (i64, i64, f64)>,
    /// Tasks closed by (job, shard of its count of open tasks).
    counts: BTreeMap<(i64, i64), i64>,
    receipts: Vec<ToReceipt>,
}

/// How a result's receipt is found once the batch is written.
enum ReceiptRef {
    None,
    /// Made by this batch: its place in [`Writes::receipts`].
    Made(usize),
    /// Made before: read back.
    Stored(Signed<Receipt>),
}

/// A result's answer before the batch is written.
enum Answer {
    Refused(StoreError),
    Judged { task_state: TaskState, receipt: ReceiptRef },
}

/// A task closing with its judgement.
struct Close<'c> {
    canonical_sha256: &'c str,
    /// Its shard of the job's count of open tasks (spot checks are not counted).
    shard: Option<i64>,
}

/// The view of a batch's tasks and devices, and what judging them writes.
struct Batch<'a> {
    tasks: HashMap<i64, Task>,
    /// Devices' (valid, invalid) results as the batch has left them.
    records: HashMap<i64, (u64, u64)>,
    writes: Writes<'a>,
}

impl Batch<'_> {
    /// Records the verdicts on reported replicas of a task (each with its
    /// credit): their validity, their devices' records, and for each valid
    /// one a receipt to make. With `close`, the task is done too: its
    /// canonical output kept, its replicas still out cancelled, its shard
    /// of the job's count decremented. Returns the receipts' places.
    fn judge(&mut self, task_id: i64, verdicts: &[(i64, bool, f64)], close: Option<Close<'_>>) -> Vec<Option<usize>> {
        let task = self.tasks.get_mut(&task_id).expect("a task of the batch");
        let mut made = Vec::with_capacity(verdicts.len());
        for &(replica_id, valid, credits) in verdicts {
            let r = task.replicas.iter().find(|r| r.id == Some(replica_id)).expect("a reported replica");
            let device = r.device_id.unwrap_or_default();
            self.writes.verdicts.push((replica_id, valid));
            let record = self.records.entry(device).or_default();
            let total = self.writes.devices.entry(device).or_default();
            if valid {
                record.0 += 1;
                total.0 += 1;
                total.2 += credits;
                made.push(Some(self.writes.receipts.len()));
                self.writes.receipts.push(ToReceipt {
                    replica_id,
                    device_id: device,
                    job_id: task.job_id,
                    task_id,
                    output_sha256: r.output_sha256.clone().unwrap_or_default(),
                    fuel: r.fuel,
                    credits,
                    wall_ms: r.wall_ms,
                    cpu_ms: r.cpu_ms,
                });
            } else {
                record.1 += 1;
                total.1 += 1;
                made.push(None);
            }
        }
        if let Some(close) = close {
            task.state = "done".into();
            for r in &mut task.replicas {
                if r.state == "queued" || r.state == "leased" {
                    r.state = "cancelled".into();
                }
            }
            self.writes.done.push((task_id, close.canonical_sha256.to_owned()));
            self.writes.cancelled.push(task_id);
            if let Some(shard) = close.shard {
                *self.writes.counts.entry((task.job_id, shard)).or_default() += 1;
            }
        }
        made
    }

    fn ask_another(&mut self, task_id: i64) {
        let task = self.tasks.get_mut(&task_id).expect("a task of the batch");
        task.replicas.push(Replica {
            id: None,
            state: "queued".into(),
            device_id: None,
            output_sha256: None,
            fuel: None,
            wall_ms: 0,
            cpu_ms: 0,
        });
        self.writes.asked.push(task_id);
    }

    fn fail_task(&mut self, task_id: i64) {
        self.tasks.get_mut(&task_id).expect("a task of the batch").state = "failed".into();
        self.writes.failed.push(task_id);
    }

    /// Judges one accepted result, its replica just marked reported.
    fn judge_result(
        &mut self,
        lease_id: i64,
        task_id: i64,
        spec: &JobSpec,
        count_shards: i64,
        trust: crate::trust::TrustRules,
    ) -> Answer {
        let task = &self.tasks[&task_id];
        let mut reported: Vec<&Replica> = task.replicas.iter().filter(|r| r.state == "reported").collect();
        // The order the quorum sees them in: by device, then replica.
        reported.sort_by_key(|r| (r.device_id, r.id));
        let outstanding = task.replicas.iter().filter(|r| r.state == "queued" || r.state == "leased").count();
        let asked = Asked { quorum: spec.quorum, replication: spec.replication };
        let now_state = task_state(&task.state);
        let own = |made: Vec<Option<usize>>, ids: &[i64]| {
            ids.iter().zip(made).find(|(id, _)| **id == lease_id).and_then(|(_, m)| m)
        };

        // A spot check judges each answer on arrival (judgement.rs).
        if let Some(expected) = task.expected_sha256.clone() {
            let Some(row) = reported.iter().find(|r| r.id == Some(lease_id)) else {
                return Answer::Refused(StoreError::Db(DbError::NoRow));
            };
            let right = row.output_sha256.as_deref() == Some(expected.as_str());
            let credits = spec.credit_for(row.fuel.map(|f| f as u64));
            let check = judgement::spot_check(now_state, right, outstanding, reported.len(), asked);
            match check {
                SpotCheck::AskAnother => self.ask_another(task_id),
                SpotCheck::Fail => self.fail_task(task_id),
                SpotCheck::Close | SpotCheck::Wait | SpotCheck::AlreadyDone | SpotCheck::AlreadyFailed => {}
            }
            let close = (check == SpotCheck::Close).then_some(Close { canonical_sha256: &expected, shard: None });
            let made = self.judge(task_id, &[(lease_id, right, credits)], close);
            let receipt = own(made, &[lease_id]).map_or(ReceiptRef::None, ReceiptRef::Made);
            return Answer::Judged { task_state: check.task_state(), receipt };
        }

        if now_state != TaskState::Pending {
            return Answer::Judged { task_state: now_state, receipt: ReceiptRef::None };
        }
        // What must agree: the output, and the fuel used where the job is metered.
        let metered = spec.limits.max_fuel.is_some();
        let ballots: Vec<Ballot<(&str, Option<i64>)>> = reported
            .iter()
            .map(|r| {
                let device = r.device_id.unwrap_or_default();
                Ballot {
                    device_id: device,
                    value: (r.output_sha256.as_deref().unwrap_or_default(), if metered { r.fuel } else { None }),
                    record: self.records.get(&device).copied().unwrap_or_default(),
                }
            })
            .collect();
        match judgement::by_quorum(&ballots, outstanding, asked, trust) {
            Decision::Done { canonical, valid } => {
                let canonical = canonical.0.to_owned();
                let verdicts: Vec<(i64, bool, f64)> = reported
                    .iter()
                    .zip(valid)
                    .map(|(r, valid)| (r.id.unwrap_or_default(), valid, spec.credit_for(r.fuel.map(|f| f as u64))))
                    .collect();
                let ids: Vec<i64> = verdicts.iter().map(|v| v.0).collect();
                let shard = Some(task.idx % count_shards);
                let made = self.judge(task_id, &verdicts, Some(Close { canonical_sha256: &canonical, shard }));
                let receipt = own(made, &ids).map_or(ReceiptRef::None, ReceiptRef::Made);
                Answer::Judged { task_state: TaskState::Done, receipt }
            }
            Decision::Wait => Answer::Judged { task_state: TaskState::Pending, receipt: ReceiptRef::None },
            Decision::AskAnother => {
                self.ask_another(task_id);
                Answer::Judged { task_state: TaskState::Pending, receipt: ReceiptRef::None }
            }
            Decision::Fail => {
                let (job_id, results) = (task.job_id, reported.len());
                self.fail_task(task_id);
                self.writes.failed_jobs.insert(job_id, format!("task {task_id}: no quorum among {results} results"));
                Answer::Judged { task_state: TaskState::Failed, receipt: ReceiptRef::None }
            }
        }
    }
}

/// Locks the batch's tasks (in id order, every pool replica taking them in
/// one order) and then its leases, and reads every replica of those tasks
/// with its device's record: one round trip on PostgreSQL.
fn lock_and_read<'a>(db: &dyn Db, lease_ids: &[i64]) -> Result<(HashMap<i64, Locked>, Batch<'a>), StoreError> {
    let dialect = db.dialect();
    let mut p = Params::default();
    let leases = p.list(lease_ids.iter().copied());
    let lock = format!(
        "WITH t AS MATERIALIZED (SELECT id, job_id, state, expected_sha256, idx FROM tasks
           WHERE id IN (SELECT task_id FROM replicas WHERE id IN {leases}) ORDER BY id{})
         SELECT r.id, r.task_id, r.lease_token, r.device_id, t.job_id, t.state, t.expected_sha256, t.idx
         FROM replicas r JOIN t ON t.id = r.task_id WHERE r.id IN {leases} ORDER BY r.id{}",
        dialect.for_update(),
        dialect.for_update_of("r")
    );
    let read = format!(
        "SELECT r.task_id, r.state, r.id, r.device_id, r.output_sha256, r.fuel, r.wall_ms, r.cpu_ms,
                d.valid_results, d.invalid_results
         FROM replicas r LEFT JOIN devices d ON d.id = r.device_id
         WHERE r.task_id IN (SELECT task_id FROM replicas WHERE id IN {leases}) ORDER BY r.task_id, r.id"
    );
    let mut answers = db.query_all(&[(lock.as_str(), &p.0), (read.as_str(), &p.0)])?.into_iter();
    let (locked_rows, replica_rows) = (answers.next().unwrap_or_default(), answers.next().unwrap_or_default());
    let mut locked = HashMap::new();
    let mut batch = Batch { tasks: HashMap::new(), records: HashMap::new(), writes: Writes::default() };
    for r in &locked_rows {
        let task_id = r.int(1)?;
        locked.insert(r.int(0)?, Locked { task_id, token: r.opt_text(2)?, device_id: r.opt_int(3)? });
        batch.tasks.entry(task_id).or_insert(Task {
            job_id: r.int(4)?,
            state: r.text(5)?,
            expected_sha256: r.opt_text(6)?,
            idx: r.int(7)?,
            replicas: Vec::new(),
        });
    }
    for r in &replica_rows {
        let Some(task) = batch.tasks.get_mut(&r.int(0)?) else { continue };
        let device_id = r.opt_int(3)?;
        if let (Some(device), Some(valid), Some(invalid)) = (device_id, r.opt_u64(8)?, r.opt_u64(9)?) {
            batch.records.insert(device, (valid, invalid));
        }
        task.replicas.push(Replica {
            id: Some(r.int(2)?),
            state: r.text(1)?,
            device_id,
            output_sha256: r.opt_text(4)?,
            fuel: r.opt_int(5)?,
            wall_ms: r.opt_int(6)?.unwrap_or_default(),
            cpu_ms: r.opt_int(7)?.unwrap_or_default(),
        });
    }
    Ok((locked, batch))
}

/// The receipt recorded for a replica whose result came in earlier.
fn stored_receipt(db: &dyn Db, replica_id: i64) -> Result<ReceiptRef, StoreError> {
    Ok(db
        .opt_row("SELECT payload, signature FROM receipts WHERE replica_id = ?1", args![replica_id])?
        .map(|r| Ok::<_, DbError>(ReceiptRef::Stored(Signed::from_parts(r.text(0)?, r.text(1)?))))
        .transpose()?
        .unwrap_or(ReceiptRef::None))
}

/// Writes what the batch decided, in the order every pool replica takes
/// locks in (the tasks' replicas, devices by id, shards of the jobs' counts,
/// jobs); returns the receipts, numbered and signed, in [`Writes::receipts`]'
/// order, and the jobs whose count of open tasks reached 0 in a shard. Two
/// round trips on PostgreSQL, however many results.
fn write(db: &dyn Db, w: &Writes<'_>, key: &Keypair, now: u64) -> Result<(Vec<Signed<Receipt>>, Vec<i64>), StoreError> {
    if !w.blobs.is_empty() {
        let mut p = Params::default();
        let rows = p.rows(["", ""], w.blobs.iter().map(|(sha, bytes)| [sha.into(), (*bytes).into()]));
        db.defer(&format!("INSERT INTO blobs (sha256, bytes) VALUES {rows} ON CONFLICT DO NOTHING"), &p.0)?;
    }
    if !w.reported.is_empty() {
        let mut p = Params::default();
        let rows = p.rows(
            ["BIGINT", "TEXT", "BIGINT", "BIGINT", "BIGINT"],
            w.reported.iter().map(|(id, sha, fuel, wall, cpu)| {
                [(*id).into(), sha.into(), (*fuel).into(), (*wall).into(), (*cpu).into()]
            }),
        );
        db.defer(
            &format!(
                "WITH v (id, sha, fuel, wall, cpu) AS (VALUES {rows})
                 UPDATE replicas SET state = 'reported', output_sha256 = v.sha, fuel = v.fuel, wall_ms = v.wall, cpu_ms = v.cpu
                 FROM v WHERE replicas.id = v.id"
            ),
            &p.0,
        )?;
    }
    if !w.verdicts.is_empty() {
        let mut p = Params::default();
        let rows = p.rows(["BIGINT", "BIGINT"], w.verdicts.iter().map(|(id, valid)| [(*id).into(), (*valid).into()]));
        db.defer(
            &format!(
                "WITH v (id, ok) AS (VALUES {rows}) UPDATE replicas SET valid = v.ok FROM v WHERE replicas.id = v.id"
            ),
            &p.0,
        )?;
    }
    // Before the cancelling: a replica asked for and then cancelled within
    // the batch goes in queued and out cancelled, as one after the other would.
    if !w.asked.is_empty() {
        let mut p = Params::default();
        let rows = p.rows(["", ""], w.asked.iter().map(|task| [(*task).into(), "queued".into()]));
        db.defer(&format!("INSERT INTO replicas (task_id, state) VALUES {rows}"), &p.0)?;
    }
    if !w.cancelled.is_empty() {
        let mut p = Params::default();
        let tasks = p.list(w.cancelled.iter().copied());
        db.defer(
            &format!(
                "UPDATE replicas SET state = 'cancelled' WHERE task_id IN {tasks} AND state IN ('queued', 'leased')"
            ),
            &p.0,
        )?;
    }
    if !w.done.is_empty() {
        let mut p = Params::default();
        let rows = p.rows(["BIGINT", "TEXT"], w.done.iter().map(|(id, sha)| [(*id).into(), sha.into()]));
        db.defer(
            &format!(
                "WITH v (id, sha) AS (VALUES {rows})
                 UPDATE tasks SET state = 'done', canonical_sha256 = v.sha FROM v WHERE tasks.id = v.id"
            ),
            &p.0,
        )?;
    }
    if !w.failed.is_empty() {
        let mut p = Params::default();
        let tasks = p.list(w.failed.iter().copied());
        db.defer(&format!("UPDATE tasks SET state = 'failed' WHERE id IN {tasks}"), &p.0)?;
    }
    if !w.devices.is_empty() {
        let mut p = Params::default();
        let rows = p.rows(
            ["BIGINT", "BIGINT", "BIGINT", "DOUBLE PRECISION"],
            w.devices.iter().map(|(id, (ok, bad, paid))| [(*id).into(), (*ok).into(), (*bad).into(), (*paid).into()]),
        );
        db.defer(
            &format!(
                "WITH v (id, ok, bad, paid) AS (VALUES {rows})
                 UPDATE devices SET valid_results = valid_results + v.ok, invalid_results = invalid_results + v.bad,
                     credits = devices.credits + v.paid
                 FROM v WHERE devices.id = v.id"
            ),
            &p.0,
        )?;
    }
    // A receipt's number comes from the database (one sequence for every
    // pool replica) and the receipt signs it: the numbers are reserved
    // first, then each receipt is inserted signed. The jobs' counts go down
    // in the same round trip; two pool replicas closing tasks of one shard
    // at once take turns on its row, and the second decrements what the
    // first left (PostgreSQL re-reads a row it waited for before updating it).
    let reserve = [Value::from(w.receipts.len() as u64)];
    let next_ids = db.dialect().next_ids("receipts");
    let mut counts = Params::default();
    let count_sql = (!w.counts.is_empty()).then(|| {
        let rows = counts.rows(
            ["BIGINT", "BIGINT", "BIGINT"],
            w.counts.iter().map(|((job, shard), n)| [(*job).into(), (*shard).into(), (*n).into()]),
        );
        format!(
            "WITH v (job_id, shard, n) AS (VALUES {rows})
             UPDATE job_counts SET open_tasks = open_tasks - v.n FROM v
             WHERE job_counts.job_id = v.job_id AND job_counts.shard = v.shard RETURNING job_counts.job_id, job_counts.open_tasks"
        )
    });
    let mut queries: Vec<(&str, &[Value])> = Vec::new();
    if !w.receipts.is_empty() {
        queries.push((next_ids.as_str(), &reserve));
    }
    if let Some(sql) = &count_sql {
        queries.push((sql.as_str(), &counts.0));
    }
    let mut answers = db.query_all(&queries)?.into_iter();
    let mut receipt_ids = match w.receipts.is_empty() {
        true => Vec::new(),
        false => answers.next().ok_or(DbError::NoRow)?,
    }
    .into_iter();
    let mut emptied = Vec::new();
    if count_sql.is_some() {
        for row in answers.next().ok_or(DbError::NoRow)? {
            if row.int(1)? == 0 && !emptied.contains(&row.int(0)?) {
                emptied.push(row.int(0)?);
            }
        }
    }
    // Jobs' rows in one order, as everywhere.
    emptied.sort_unstable();
    let mut signed = Vec::with_capacity(w.receipts.len());
    let mut rows = Vec::with_capacity(w.receipts.len());
    for r in &w.receipts {
        let receipt_id = receipt_ids.next().ok_or(DbError::NoRow)?.u64(0)?;
        let receipt = Signed::sign(
            &Receipt {
                receipt_id,
                device_id: r.device_id as u64,
                job_id: r.job_id as u64,
                task_id: r.task_id as u64,
                replica_id: r.replica_id as u64,
                output_sha256: parse_sha(&r.output_sha256)?,
                fuel: r.fuel.map(|f| f as u64),
                credits: r.credits,
                wall_ms: r.wall_ms as u64,
                cpu_ms: r.cpu_ms as u64,
                issued_at_ms: now,
            },
            key,
        );
        rows.push([
            receipt_id.into(),
            r.replica_id.into(),
            r.device_id.into(),
            r.job_id.into(),
            r.credits.into(),
            (&receipt.payload).into(),
            (&receipt.signature).into(),
        ]);
        signed.push(receipt);
    }
    if !rows.is_empty() {
        let mut p = Params::default();
        let rows = p.rows([""; 7], rows);
        db.defer(
            &format!(
                "INSERT INTO receipts (id, replica_id, device_id, job_id, credits, payload, signature) VALUES {rows}"
            ),
            &p.0,
        )?;
    }
    // Jobs last: a batch closing a job's last task takes its shard and
    // then its row (finish_job_if_complete), and so must one failing it.
    for (job_id, error) in &w.failed_jobs {
        db.defer("UPDATE jobs SET state = 'failed', error = ?1 WHERE id = ?2", args![error, *job_id])?;
    }
    Ok((signed, emptied))
}

impl Store {
    /// One result alone ([`Store::submit_results`] with one): the tests'
    /// shorthand.
    #[cfg(test)]
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
        let one = Submission { device_id, lease_id, token, output, fuel, wall_ms, cpu_ms };
        self.submit_results(&[one], key, now)?.pop().ok_or(StoreError::Db(DbError::NoRow))?
    }

    /// Records results and, where a quorum agrees, finishes their tasks:
    /// credits and receipts for the agreeing replicas, invalid marks for the
    /// others, and a job's combined output once every task is done. Several
    /// at once as a batch (module doc): one answer each, in order.
    /// `Err` only when the database failed, and then nothing is written.
    pub fn submit_results(
        &mut self,
        submissions: &[Submission<'_>],
        key: &Keypair,
        now: u64,
    ) -> Result<Vec<Result<ResultOutcome, StoreError>>, StoreError> {
        if submissions.is_empty() {
            return Ok(Vec::new());
        }
        let tx = self.db.savepoint()?;
        let mut lease_ids: Vec<i64> = submissions.iter().map(|s| s.lease_id as i64).collect();
        lease_ids.sort_unstable();
        lease_ids.dedup();
        let (locked, mut batch) = lock_and_read(&*tx, &lease_ids)?;
        // The replicas this batch reported.
        let mut reported_here: HashSet<i64> = HashSet::new();
        let mut answers: Vec<Answer> = Vec::with_capacity(submissions.len());
        for s in submissions {
            let lease_id = s.lease_id as i64;
            let Some(lease) = locked.get(&lease_id) else {
                answers.push(Answer::Refused(StoreError::NotFound { what: "lease", id: s.lease_id.to_string() }));
                continue;
            };
            if lease.token.as_deref() != Some(s.token) || lease.device_id != Some(s.device_id as i64) {
                answers.push(Answer::Refused(StoreError::Conflict(
                    "stale lease token: this lease was given to another device or renewed".into(),
                )));
                continue;
            }
            let task_id = lease.task_id;
            let output_sha = Sha256::of(s.output).to_hex();
            let task = batch.tasks.get_mut(&task_id).ok_or(DbError::NoRow)?;
            let replica = task.replicas.iter_mut().find(|r| r.id == Some(lease_id)).ok_or(DbError::NoRow)?;
            if replica.state != "leased" {
                // The same device sending the same result again (its agent died
                // before it could record our answer) gets the same answer again.
                if replica.output_sha256.as_deref() == Some(output_sha.as_str()) {
                    let task_state = task_state(&task.state);
                    let receipt = match batch.writes.receipts.iter().position(|r| r.replica_id == lease_id) {
                        Some(at) => ReceiptRef::Made(at),
                        None if reported_here.contains(&lease_id) => ReceiptRef::None,
                        None => stored_receipt(&*tx, lease_id)?,
                    };
                    answers.push(Answer::Judged { task_state, receipt });
                } else {
                    answers.push(Answer::Refused(StoreError::Conflict(format!(
                        "lease {lease_id} is {}: a result was already recorded",
                        replica.state
                    ))));
                }
                continue;
            }
            replica.state = "reported".into();
            replica.output_sha256 = Some(output_sha.clone());
            replica.fuel = s.fuel.map(|f| f as i64);
            replica.wall_ms = s.wall_ms as i64;
            replica.cpu_ms = s.cpu_ms as i64;
            batch.writes.blobs.insert(output_sha.clone(), s.output);
            batch.writes.reported.push((lease_id, output_sha, replica.fuel, replica.wall_ms, replica.cpu_ms));
            reported_here.insert(lease_id);
            let job_id = task.job_id as u64;
            let info = job_info(&*tx, &mut self.jobs, job_id)?;
            answers.push(batch.judge_result(lease_id, task_id, &info.spec, info.count_shards, self.trust));
        }
        let (receipts, emptied) = write(&*tx, &batch.writes, key, now)?;
        for job_id in emptied {
            let info = job_info(&*tx, &mut self.jobs, job_id as u64)?;
            finish_job_if_complete(&*tx, job_id, &info.spec)?;
        }
        tx.commit()?;
        Ok(answers
            .into_iter()
            .map(|a| match a {
                Answer::Refused(e) => Err(e),
                Answer::Judged { task_state, receipt } => Ok(ResultOutcome {
                    task_state,
                    receipt: match receipt {
                        ReceiptRef::None => None,
                        ReceiptRef::Made(at) => receipts.get(at).cloned(),
                        ReceiptRef::Stored(r) => Some(r),
                    },
                }),
            })
            .collect())
    }
}
