//! Running a checked task in a worker: its start recorded, its
//! checkpoints kept, its lease kept alive while it runs, and given up when
//! the user holds the machine for longer than the lease.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use idlemesh_control::{Checkpoint, CurrentTask, LedgerEntry, TaskGivenBack, TaskStarted};
use idlemesh_protocol::{Sha256, TaskManifest};
use idlemesh_runtime::{Profile, RunLimits, RunReport, SandboxReport, WorkRequest, WorkerError, WorkerProcess};

use super::verify::Refusal;
use super::{Slot, SlotError};
use crate::energy::EnergyMeter;
use crate::watcher::Watcher;

/// After refusing a task for its worker's sandbox: longer than the watcher
/// takes to pause for the same reason, or the settings change that caused it
/// to restart the scheduler.
const SANDBOX_REFUSAL_BACKOFF: Duration = Duration::from_secs(5);

/// What a task needs on its way into the worker.
struct Run {
    kernel: Arc<Vec<u8>>,
    input: Arc<Vec<u8>>,
    resume: Option<Vec<u8>>,
    checkpoint_path: PathBuf,
}

impl Slot {
    /// Runs a task that passed every check, then hands what came of it to
    /// `finish`.
    pub(super) async fn execute(
        &mut self,
        m: TaskManifest,
        kernel: Arc<Vec<u8>>,
        input: Arc<Vec<u8>>,
    ) -> Result<(), SlotError> {
        let checkpoint_path = self.checkpoint_path(&m);
        let resume = std::fs::read(&checkpoint_path).ok();
        let profile = if m.wgsl.is_some() { Profile::Gpu } else { Profile::Cpu };
        let worker = self.worker_for(profile).await;
        let sandbox = worker.as_ref().ok().map(|w| w.sandbox().clone());
        // A worker without a layer the user or policy requires gets no
        // kernel: the task is refused, not started, and goes back as this
        // device's problem. The watcher has learned the same sandbox, so the
        // governor pauses for it; until it does, do not lease again at once.
        if let Some(reason) = sandbox.as_ref().and_then(|s| s.refusal(&self.config.require_sandbox)) {
            if let Ok(w) = worker {
                self.workers.insert(profile, w);
            }
            let lease = Some((m.lease_id, m.lease_token.clone()));
            self.refuse(Refusal { lease, task_id: Some(m.task_id), reason }).await?;
            self.publish(|_| {});
            tokio::time::sleep(SANDBOX_REFUSAL_BACKOFF).await;
            return Ok(());
        }
        self.record_start(&m, resume.as_deref(), sandbox)?;
        let energy = EnergyMeter::start();
        let abandoned = Arc::new(AtomicBool::new(false));
        let report = match worker {
            Err(e) => Err(e),
            Ok(worker) => {
                let run = Run { kernel, input, resume, checkpoint_path: checkpoint_path.clone() };
                self.run_on(worker, profile, &m, run, abandoned.clone()).await
            }
        };
        if abandoned.load(Ordering::SeqCst) {
            return self.give_up_paused(&m).await;
        }
        let _ = std::fs::remove_file(&checkpoint_path);
        self.finish(&m, report, energy).await
    }

    fn checkpoint_path(&self, m: &TaskManifest) -> PathBuf {
        self.config.data_dir.join("checkpoints").join(format!("{}-{}-{}.bin", m.job_id, m.task_id, m.kernel.sha256))
    }

    /// The warm worker for `profile`, or a new one (whose sandbox the watcher learns).
    async fn worker_for(&mut self, profile: Profile) -> Result<WorkerProcess, WorkerError> {
        if let Some(worker) = self.workers.remove(&profile) {
            return Ok(worker);
        }
        let command = self.config.worker.with_profile(profile);
        let worker = tokio::task::spawn_blocking(move || WorkerProcess::spawn(&command))
            .await
            .expect("starting a worker does not panic")?;
        if let Some(w) = &self.config.watcher {
            w.sandbox_seen(worker.sandbox().clone());
        }
        Ok(worker)
    }

    fn record_start(
        &mut self,
        m: &TaskManifest,
        resume: Option<&[u8]>,
        sandbox: Option<SandboxReport>,
    ) -> Result<(), SlotError> {
        self.ledger.record(&LedgerEntry::TaskStarted(TaskStarted {
            pool: self.config.pool_url.clone(),
            job_id: m.job_id,
            task_id: m.task_id,
            replica_id: m.replica_id,
            lease_id: m.lease_id,
            kernel_kind: m.kernel.kind,
            kernel_sha256: m.kernel.sha256,
            input_sha256: m.input_sha256,
            input_bytes: m.input_bytes,
            credits_offered: m.credits,
            resumed_from_checkpoint: resume.is_some(),
            // Which checkpoint: the state a killed or preempted run saved.
            resumed_from: resume
                .map(|c| Checkpoint { checkpoint_sha256: Sha256::of(c), checkpoint_bytes: c.len() as u64 }),
            slot: self.index,
            sandbox,
        }))?;
        Ok(())
    }

    /// Runs the task on `worker` (off the async threads), with the watcher
    /// holding the worker and the lease kept alive meanwhile. A worker that
    /// survives the task stays warm for the next one.
    async fn run_on(
        &mut self,
        mut worker: WorkerProcess,
        profile: Profile,
        m: &TaskManifest,
        run: Run,
        abandoned: Arc<AtomicBool>,
    ) -> Result<RunReport, WorkerError> {
        let control = worker.control();
        let gpu = m.wgsl.is_some();
        if let Some(w) = &self.config.watcher {
            w.attach(control.clone(), gpu);
        }
        let current = CurrentTask {
            job_id: m.job_id,
            task_id: m.task_id,
            kernel_sha256: m.kernel.sha256,
            started_ms: crate::now_ms(),
            deadline_ms: m.deadline_ms,
            progress: None,
            gpu,
            max_memory_bytes: m.limits.max_memory_bytes,
        };
        self.publish(|st| st.current_task = Some(current));
        let heartbeat = self.keep_lease_alive(m, control.clone(), abandoned);
        let status = self.status.clone();
        let (task, kernel_sha256, params, wgsl) =
            (format!("{}/{}", m.job_id, m.task_id), m.kernel.sha256, m.params.clone(), m.wgsl.clone());
        let (limits, timeout) = (run_limits(m), Duration::from_millis(m.limits.timeout_ms));
        let running = tokio::task::spawn_blocking(move || {
            let req = WorkRequest {
                task,
                kernel_sha256,
                kernel: &run.kernel,
                input: &run.input,
                params: &params,
                resume: run.resume.as_deref(),
                wgsl: wgsl.as_ref(),
                limits,
                timeout,
            };
            let on_progress = |done: f32| {
                let mut st = status.lock().expect("status lock");
                if let Some(t) = st.current_task.as_mut() {
                    t.progress = Some(done.clamp(0.0, 1.0));
                }
            };
            let report = worker.run(&req, on_progress, |state| save_checkpoint(&run.checkpoint_path, &state));
            // A worker that timed out was killed, one that errored, broke
            // its sandbox or retired after a GPU failure is gone: start a
            // new one.
            let keep = report.is_ok() && worker.is_alive();
            (keep.then_some(worker), report)
        });
        // While a processor task runs, a GPU pause still ends this slot's
        // idle GPU worker.
        let mut running = std::pin::pin!(running);
        let mut gpu_stopped = std::pin::pin!(self.gpu_stopped());
        let mut watching_gpu = !gpu;
        let (worker, report) = loop {
            let idle_gpu = watching_gpu && self.workers.contains_key(&Profile::Gpu);
            tokio::select! {
                done = &mut running => break done.expect("the worker thread does not panic"),
                () = &mut gpu_stopped, if idle_gpu => {
                    // Once: a finished future is not polled again.
                    watching_gpu = false;
                    self.end_idle_gpu_worker_if_stopped();
                }
            }
        };
        heartbeat.abort();
        if let Some(w) = &self.config.watcher {
            w.detach(control.pid());
        }
        self.publish(|st| st.current_task = None);
        if let Some(worker) = worker {
            self.workers.insert(profile, worker);
        }
        report
    }

    /// A task held paused for longer than its lease goes back to the pool.
    /// The checkpoint stays: if this device gets the task again, it resumes.
    async fn give_up_paused(&mut self, m: &TaskManifest) -> Result<(), SlotError> {
        tracing::info!(task_id = m.task_id, "gave a task back: paused for longer than its lease");
        self.ledger.record(&LedgerEntry::TaskGivenBack(TaskGivenBack {
            pool: self.config.pool_url.clone(),
            job_id: m.job_id,
            task_id: m.task_id,
            reason: "paused for longer than the lease".into(),
        }))?;
        self.give_back(m.lease_id, &m.lease_token, None).await;
        self.outbox.forget(m.lease_id)?;
        Ok(())
    }

    fn keep_lease_alive(
        &self,
        m: &TaskManifest,
        control: idlemesh_runtime::WorkerControl,
        abandoned: Arc<AtomicBool>,
    ) -> tokio::task::JoinHandle<()> {
        let client = self.client.clone();
        let (lease_id, token, task_id) = (m.lease_id, m.lease_token.clone(), m.task_id);
        let lease = Duration::from_millis(m.deadline_ms.saturating_sub(m.issued_at_ms).max(600));
        let period = lease / 3;
        let decisions = self.config.watcher.as_ref().map(Watcher::decisions);
        let gpu = m.wgsl.is_some();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            let mut paused_since: Option<tokio::time::Instant> = None;
            loop {
                tick.tick().await;
                // Paused: this task's kind of work may not run (all work, or
                // the GPU's or the processor's alone).
                let paused = decisions.as_ref().is_some_and(|d| !d.borrow().kind_runs(gpu));
                let since = if paused {
                    *paused_since.get_or_insert_with(tokio::time::Instant::now)
                } else {
                    paused_since = None;
                    tokio::time::Instant::now()
                };
                if since.elapsed() >= lease {
                    abandoned.store(true, Ordering::SeqCst);
                    control.kill();
                    return;
                }
                // On a metered network without the user's leave, not even a
                // heartbeat: the lease may run out and go to another device.
                if !decisions.as_ref().is_none_or(|d| d.borrow().traffic.may_keep_leases()) {
                    continue;
                }
                match client.heartbeat(lease_id, &token).await {
                    Ok(_) => {}
                    Err(e) if e.is_conflict() => {
                        tracing::warn!(task_id, "lost the lease: another device holds this task now");
                        return;
                    }
                    Err(e) => tracing::warn!(task_id, error = %e, "heartbeat failed; trying again"),
                }
            }
        })
    }
}

/// The manifest's limits for the worker. Replicas of a task share the
/// seed, so their randomness agrees.
fn run_limits(m: &TaskManifest) -> RunLimits {
    let seed = Sha256::of(format!("{}/{}", m.job_id, m.task_id).as_bytes()).0;
    RunLimits {
        max_memory_bytes: m.limits.max_memory_bytes,
        max_output_bytes: m.limits.max_output_bytes,
        max_fuel: m.limits.max_fuel,
        seed: u64::from_le_bytes(seed[..8].try_into().expect("a SHA-256 has 8 bytes")),
    }
}

/// Atomic: write a temp file, fsync, rename over the old checkpoint.
fn save_checkpoint(path: &Path, state: &[u8]) {
    use std::io::Write as _;
    let result = (|| -> std::io::Result<()> {
        let dir = path.parent().expect("checkpoint paths have a parent");
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        tmp.write_all(state)?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map(drop).map_err(|e| e.error)
    })();
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "could not save a checkpoint");
    }
}
