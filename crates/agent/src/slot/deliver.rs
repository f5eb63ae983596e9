//! What comes of a task: its end in the ledger, its result delivered
//! (durably, through the outbox), its receipt kept, the traffic it cost.

use idlemesh_control::{LedgerEntry, ResultRefused, TaskEnded, TrafficBody};
use idlemesh_protocol::api::{ResultSubmission, TaskFailure};
use idlemesh_protocol::{Receipt, Sha256, Signed, TaskManifest};
use idlemesh_runtime::{Outcome, RunReport, Status, WorkerError};

use super::{Slot, SlotError, random_u64};
use crate::energy::EnergyMeter;
use crate::governor::Traffic;
use crate::ledger::ReceiptEntry;
use crate::outbox::Pending;
use crate::pool_client::PoolClientError;

impl Slot {
    /// Records what came of a task that ran (or could not: no worker, a
    /// worker that died): a failure goes back to the pool, a result into
    /// the outbox and on to the pool.
    pub(super) async fn finish(
        &mut self,
        m: &TaskManifest,
        report: Result<RunReport, WorkerError>,
        energy: EnergyMeter,
    ) -> Result<(), SlotError> {
        // A report is the kernel's doing; no report (no worker, a worker
        // that died, a sandbox the settings refuse) is this device's.
        let kernels_doing = report.is_ok();
        let report = match report {
            Ok(r) => r,
            Err(e) => RunReport { outcome: Outcome::failed(Status::Error, e.to_string()), wall_ms: 0, cpu_ms: 0 },
        };
        self.summary.cpu_ms += report.cpu_ms;
        self.summary.wall_ms += report.wall_ms;
        let o = &report.outcome;
        let gpu_failed =
            o.status == Status::TimedOut || o.error.as_deref().is_some_and(|e| e.starts_with("GPU device lost"));
        if m.wgsl.is_some() && gpu_failed {
            tracing::warn!(kernel = %m.kernel.sha256, "a WGSL kernel hung or lost the GPU: no more GPU work for it here");
            self.gpu_banned.lock().expect("lock").insert(m.kernel.sha256);
        }
        let output_sha256 = Sha256::of(&o.output);
        let joules = energy.finish(report.cpu_ms);
        let ended = TaskEnded {
            pool: self.config.pool_url.clone(),
            job_id: m.job_id,
            task_id: m.task_id,
            replica_id: m.replica_id,
            kernel_sha256: m.kernel.sha256,
            status: o.status.as_str().to_owned(),
            error: o.error.clone(),
            output_sha256: (o.status == Status::Ok).then_some(output_sha256),
            output_bytes: o.output.len() as u64,
            wall_ms: report.wall_ms,
            cpu_ms: report.cpu_ms,
            gpu_ms: o.gpu_ms,
            fuel: o.fuel,
            peak_memory_bytes: o.peak_memory_bytes,
            bytes_in: m.kernel.size_bytes + m.input_bytes,
            adapter: o.adapter.clone(),
            energy_j: joules.joules,
            energy_method: Some(joules.method.to_owned()),
        };
        if o.status != Status::Ok {
            tracing::warn!(task_id = m.task_id, status = %o.status, error = ?o.error, "task failed");
            self.summary.tasks_failed += 1;
            self.ledger.record(&LedgerEntry::TaskFailed(ended))?;
            // The pool hears that the task failed (not that this device is
            // broken), and fails a task that keeps failing everywhere.
            let failure = kernels_doing.then(|| TaskFailure {
                status: o.status.to_string(),
                message: o.error.clone().unwrap_or_default().chars().take(TaskFailure::MAX_MESSAGE_CHARS).collect(),
            });
            self.give_back(m.lease_id, &m.lease_token, failure).await;
            self.outbox.forget(m.lease_id)?;
            self.publish(|_| {});
            return Ok(());
        }
        self.summary.tasks_finished += 1;
        self.ledger.record(&LedgerEntry::TaskFinished(ended))?;

        let submission = ResultSubmission {
            lease_id: m.lease_id,
            lease_token: m.lease_token.clone(),
            output_sha256,
            output: report.outcome.output.into(),
            fuel: report.outcome.fuel,
            wall_ms: report.wall_ms,
            cpu_ms: report.cpu_ms,
        };
        // Durable before the first attempt: from here on the result cannot be lost.
        self.outbox.put(&Pending {
            pool: self.config.pool_url.clone(),
            job_id: m.job_id,
            task_id: m.task_id,
            device_id: m.device_id,
            submission,
        })?;
        self.flush_outbox().await
    }

    /// Delivers every due result, oldest first. Stops at the first one the
    /// pool cannot take now (unreachable, busy) and schedules it for later;
    /// a result the pool refuses for good (a stale lease) is recorded and dropped.
    pub(super) async fn flush_outbox(&mut self) -> Result<(), SlotError> {
        // On a metered network results wait in the outbox (durable) unless
        // the user allowed such traffic.
        if self.traffic() != Traffic::All {
            self.record_traffic()?;
            self.publish(|_| {});
            return Ok(());
        }
        let Ok(_one_at_a_time) = self.flush_lock.clone().try_lock_owned() else { return Ok(()) };
        self.deliver_due().await?;
        self.record_traffic()?;
        self.publish(|_| {});
        Ok(())
    }

    /// Gives a lease back, if lease upkeep may go out now; otherwise it
    /// runs out at its deadline and the pool hands it on.
    pub(super) async fn give_back(&mut self, lease_id: u64, token: &str, failure: Option<TaskFailure>) {
        if self.traffic().may_keep_leases() {
            let _ = self.client.give_back_failed(lease_id, token, failure).await;
        }
    }

    /// Writes the bytes exchanged with the pool since the last such entry:
    /// the Privacy page's and `ledger show --summary`'s traffic, and the daily caps.
    fn record_traffic(&mut self) -> Result<(), SlotError> {
        let (sent, received) = self.client.traffic().take();
        if sent + received > 0 {
            self.ledger.record(&LedgerEntry::Traffic(TrafficBody {
                pool: self.config.pool_url.clone(),
                sent_bytes: sent,
                received_bytes: received,
            }))?;
        }
        Ok(())
    }

    async fn deliver_due(&mut self) -> Result<(), SlotError> {
        while let Some((p, attempts)) = self.outbox.next_due(crate::now_ms())? {
            let lease_id = p.submission.lease_id;
            match self.client.submit_result(&p.submission).await {
                Ok(resp) => {
                    if let Some(receipt) = resp.receipt {
                        self.keep_receipt(&p, receipt)?;
                    }
                    self.outbox.done(lease_id)?;
                }
                Err(PoolClientError::Refused { status, code, message, .. }) if status != 429 && status < 500 => {
                    tracing::warn!(task_id = p.task_id, status, %message, "the pool refused a result; it earns nothing");
                    self.ledger.record(&LedgerEntry::ResultRefused(ResultRefused {
                        pool: p.pool.clone(),
                        job_id: p.job_id,
                        task_id: p.task_id,
                        status,
                        code: code.clone(),
                        message: message.clone(),
                    }))?;
                    self.outbox.done(lease_id)?;
                }
                Err(e) => {
                    let wait = crate::outbox::backoff_ms(attempts, random_u64());
                    tracing::warn!(task_id = p.task_id, error = %e, retry_in_ms = wait, "posting a result failed; it stays in the outbox");
                    self.outbox.retry_later(lease_id, attempts + 1, crate::now_ms() + wait)?;
                    break;
                }
            }
        }
        Ok(())
    }

    fn keep_receipt(&mut self, p: &Pending, receipt: Signed<Receipt>) -> Result<(), SlotError> {
        match receipt.verify(&self.pool_key) {
            Ok(r)
                if r.device_id == p.device_id
                    && r.task_id == p.task_id
                    && r.output_sha256 == p.submission.output_sha256 =>
            {
                self.summary.receipts += 1;
                self.summary.credits += r.credits;
                self.ledger.record(&LedgerEntry::Receipt(ReceiptEntry {
                    pool: p.pool.clone(),
                    pool_public_key: self.pool_key,
                    receipt,
                    payout: self.payout.clone(),
                }))?;
            }
            Ok(_) => tracing::warn!(task_id = p.task_id, "ignoring a receipt for another task or output"),
            Err(e) => tracing::warn!(task_id = p.task_id, error = %e, "ignoring a receipt with a bad signature"),
        }
        Ok(())
    }
}
