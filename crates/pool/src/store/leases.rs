//! Leases: claiming replicas for a device within the trust rules, keeping
//! them alive, giving them back, and the fence (a lease's row locked and
//! its token checked) that every later step of a lease goes through.

use idlemesh_protocol::api::{Capabilities, TaskFailure};
use idlemesh_protocol::{KernelKind, KernelRef, TaskManifest};

use super::{MAX_TASK_FAILURES, Params, Store, StoreError, job_info, parse_sha, random_token};
use crate::db::{Db, Value, args};

/// What a lease query reads: a replica, its task and its job.
pub(super) const LEASE_FROM: &str = "FROM replicas r JOIN tasks t ON t.id = r.task_id JOIN jobs j ON j.id = t.job_id";

/// Whom a device must not share a task with, by the pool's [`TrustRules`]:
/// itself always; devices of its token, its organisation or its network
/// where the rules say so.
pub(super) struct Apart<'a> {
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
pub(super) fn same_adapter(adapter: &str, now: u64, p: &mut Params) -> String {
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
pub(super) fn lease_query(
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

/// A lease as the database has it, locked for this transaction, and its task.
pub(super) struct Lease {
    pub task_id: i64,
    pub state: String,
    pub job_id: i64,
}

/// Locks a lease's row (after its task's, with `task_first`) and checks
/// that `token` still holds it for `device_id`. One statement: the task is
/// locked inside it (the `MATERIALIZED` CTE runs before the lease's row is
/// locked, which happens last, above the join).
pub(super) fn lock_lease(
    db: &dyn Db,
    lease_id: u64,
    token: &str,
    device_id: u64,
    task_first: bool,
) -> Result<Lease, StoreError> {
    let not_found = || StoreError::NotFound { what: "lease", id: lease_id.to_string() };
    let dialect = db.dialect();
    let (lock_task, lock_lease) = (if task_first { dialect.for_update() } else { "" }, dialect.for_update_of("r"));
    let row = db
        .opt_row(
            &format!(
                "WITH t AS MATERIALIZED (SELECT id, job_id FROM tasks
                   WHERE id = (SELECT task_id FROM replicas WHERE id = ?1){lock_task})
                 SELECT r.task_id, r.state, r.lease_token, r.device_id, t.job_id
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
    Ok(Lease { task_id: row.int(0)?, state: row.text(1)?, job_id: row.int(4)? })
}

/// A leased replica back in the queue, its lease and token void.
pub(super) fn requeue(db: &dyn Db, replica: u64) -> Result<(), StoreError> {
    db.execute(
        "UPDATE replicas SET state = 'queued', device_id = NULL, lease_token = NULL, lease_deadline_ms = NULL WHERE id = ?1",
        args![replica],
    )?;
    Ok(())
}

pub(super) fn cancel_open_replicas(db: &dyn Db, task_id: i64) -> Result<(), StoreError> {
    db.defer(
        "UPDATE replicas SET state = 'cancelled' WHERE task_id = ?1 AND state IN ('queued', 'leased')",
        args![task_id],
    )?;
    Ok(())
}

impl Store {
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
        if tx.lone() && !self.commit_relaxed {
            tx.commit_without_waiting()?;
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
                // A lease locked now is being worked on (a result for it is
                // being recorded): passed over, not waited for while this
                // holds the device's other leases.
                tx.dialect().skip_locked("replicas")
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
}
