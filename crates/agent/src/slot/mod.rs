//! A slot: one task at a time for one pool, in its own worker process —
//! lease, verify, run, deliver, record. The running agent keeps one slot
//! per core the user lends.
//!
//! Nothing from the pool is trusted until it is checked: a manifest must carry
//! a valid signature from the pool key pinned at enrollment, and the kernel
//! and input bytes must hash to what that manifest promised. A task that fails
//! a check is refused (logged, recorded in the ledger, handed back) and the
//! slot carries on with the next one.
//!
//! - `enrol`: joining a pool (its connection, its key, what is disclosed).
//! - `verify`: every check a task passes before it may run.
//! - `execute`: running it in a worker, checkpoints, keeping the lease.
//! - `deliver`: results, receipts and the traffic they cost.

mod deliver;
mod enrol;
mod execute;
mod verify;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idlemesh_control::{CurrentTask, LedgerEntry, TaskGivenBack, TaskSummary};
use idlemesh_protocol::api::{Capabilities, Payout};
use idlemesh_protocol::{PublicKey, Sha256, Signed, TaskManifest};
use idlemesh_runtime::{Layer, Profile, WorkerCommand, WorkerProcess};
use tokio::sync::watch;

use crate::governor::Traffic;
use crate::ledger::{Ledger, LedgerError};
use crate::outbox::Outbox;
use crate::pool_client::{PoolClient, PoolClientError};
use crate::watcher::Watcher;

#[derive(Debug, Clone)]
pub struct SlotConfig {
    pub pool_url: String,
    pub data_dir: PathBuf,
    pub ledger_path: PathBuf,
    pub worker: WorkerCommand,
    pub capabilities: Capabilities,
    /// Exactly what is disclosed to the pool at enrollment.
    pub device_info: BTreeMap<String, String>,
    /// An organisation's enrollment token (from the IT policy), for pools
    /// that require one; it makes this device "managed by" the organisation.
    pub enrollment_token: Option<String>,
    pub max_tasks_per_lease: u32,
    /// Longest wait between two lease requests when the pool has no work.
    pub max_idle_poll: Duration,
    /// The governor's watcher: when present, work is leased only while it
    /// allows, and every worker is handed to it to freeze and throttle.
    pub watcher: Option<Watcher>,
    /// OS sandbox layers a worker must report before it is given a kernel.
    pub require_sandbox: Vec<Layer>,
    /// Which pools and connections to trust.
    pub trust: PoolTrust,
}

/// What decides which pools, and which connections to them, this device
/// trusts (the IT policy's pins, the user's `allow_insecure_pool`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolTrust {
    /// The pool key the IT policy pins (`pool_public_key`): no other key is
    /// trusted, whatever this device pinned on its own.
    pub policy_pool_key: Option<PublicKey>,
    /// Whether a plain-HTTP pool off this machine may be used (`allow_insecure_pool`).
    pub allow_insecure_pool: bool,
    /// The IT policy's certificate authorities for https pools
    /// (`pool_ca_file`): these only, instead of the system's.
    pub pool_ca_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error(transparent)]
    Pool(#[from] PoolClientError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("cannot create the data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the pool's key changed: this device pinned {} when it enrolled, the pool now offers {}. \
         It may be a different server or a man in the middle; refusing to continue. \
         If the operator really replaced the key, remove this pool from pinned_pools.json in the data dir.",
        pinned.fingerprint(), offered.fingerprint()
    )]
    PoolKeyChanged { pinned: Box<PublicKey>, offered: Box<PublicKey> },
    #[error(
        "the IT policy pins the pool key {} (pool_public_key), but {pool} offers {}: \
         refusing to enroll with or work for it. It may be a different server or a man in the middle; \
         ask whoever manages this machine.",
        pinned.fingerprint(), offered.fingerprint()
    )]
    PoolKeyNotThePolicys { pool: String, pinned: Box<PublicKey>, offered: Box<PublicKey> },
    #[error(
        "{0} is plain HTTP to another machine: anyone on the way could read and change what this device \
         sends and receives. Use the pool's https:// address, or allow it with allow_insecure_pool"
    )]
    InsecurePool(String),
    #[error("cannot read the certificate authorities the IT policy pins for pools (pool_ca_file {path}): {reason}")]
    PoolCa { path: PathBuf, reason: String },
    #[error(transparent)]
    Pin(#[from] crate::pins::PinError),
}

impl SlotError {
    /// Why joining a pool failed, as a stable code (`pool_problem_code`).
    pub fn code(&self) -> idlemesh_control::PoolProblemCode {
        use idlemesh_control::PoolProblemCode;
        match self {
            Self::Pool(PoolClientError::Unreachable { .. }) => PoolProblemCode::Unreachable,
            Self::Pool(PoolClientError::Refused { .. }) => PoolProblemCode::Refused,
            Self::PoolKeyChanged { .. } | Self::PoolKeyNotThePolicys { .. } => PoolProblemCode::PoolKeyChanged,
            Self::InsecurePool(_) => PoolProblemCode::InsecurePool,
            _ => PoolProblemCode::CannotJoin,
        }
    }

    /// The pool's own words, when it refused.
    pub fn pool_said(&self) -> Option<&str> {
        match self {
            Self::Pool(PoolClientError::Refused { message, .. }) => Some(message),
            _ => None,
        }
    }
}

/// What a slot is doing, for `idlemesh status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SlotStatus {
    pub pool: String,
    pub device_id: Option<u64>,
    /// The organisation this device enrolled with, if any.
    pub managed_by: Option<String>,
    /// The task running now, if any.
    pub current_task: Option<CurrentTask>,
    pub summary: TaskSummary,
    pub last_pool_error: Option<String>,
    /// What the scheduler waits for before it asks for work, if anything.
    pub waiting_for: Option<String>,
}

/// One task at a time for one pool; see the module's doc.
pub struct Slot {
    config: SlotConfig,
    /// 0 for the slot that enrolled; others share its enrollment. Recorded
    /// with each task a slot starts.
    index: u32,
    /// One slot delivers the outbox at a time (it delivers everyone's results).
    flush_lock: Arc<tokio::sync::Mutex<()>>,
    /// WGSL kernels that hung or lost the GPU device here: never run again
    /// by this agent (DESIGN §3), shared by every slot.
    gpu_banned: Arc<Mutex<std::collections::HashSet<Sha256>>>,
    /// Leases an earlier run left in flight, read before any slot leases anew.
    to_recover: Vec<Signed<TaskManifest>>,
    status: Arc<Mutex<SlotStatus>>,
    client: PoolClient,
    pool_key: PublicKey,
    /// The pool's published value of a credit, recorded with each receipt.
    payout: Option<Payout>,
    ledger: Ledger,
    outbox: Outbox,
    /// A warm worker per profile: WASM tasks never share a process with a GPU driver.
    workers: HashMap<Profile, WorkerProcess>,
    blobs: HashMap<Sha256, Arc<Vec<u8>>>,
    summary: TaskSummary,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("pool", &self.config.pool_url)
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

impl Slot {
    /// Another slot working for the same pool as the same device, so
    /// `cores` tasks run side by side. Shares the enrollment and the pinned
    /// key; has its own worker and its own connections to the ledger and
    /// outbox files (both take concurrent writers).
    pub fn another_slot(&self, index: u32) -> Result<Self, SlotError> {
        let status = SlotStatus {
            pool: self.config.pool_url.clone(),
            device_id: self.client.device_id(),
            managed_by: self.status.lock().expect("status lock").managed_by.clone(),
            ..Default::default()
        };
        Ok(Self {
            config: self.config.clone(),
            index,
            flush_lock: self.flush_lock.clone(),
            gpu_banned: self.gpu_banned.clone(),
            to_recover: Vec::new(),
            status: Arc::new(Mutex::new(status)),
            client: self.client.clone(),
            pool_key: self.pool_key,
            payout: self.payout.clone(),
            ledger: Ledger::open(&self.config.ledger_path)?,
            outbox: Outbox::open(&self.config.data_dir.join("outbox.sqlite"))?,
            workers: HashMap::new(),
            blobs: HashMap::new(),
            summary: TaskSummary::default(),
        })
    }

    pub fn device_id(&self) -> Option<u64> {
        self.client.device_id()
    }

    pub fn pool_key(&self) -> PublicKey {
        self.pool_key
    }

    /// A live view of what the scheduler is doing.
    pub fn status(&self) -> Arc<Mutex<SlotStatus>> {
        self.status.clone()
    }

    fn publish(&self, f: impl FnOnce(&mut SlotStatus)) {
        let pending = self.outbox.len().unwrap_or(0);
        let mut st = self.status.lock().expect("status lock");
        f(&mut st);
        st.summary = self.summary.clone();
        st.summary.results_pending = pending;
    }

    /// Resumes the leases a previous run was working on when it stopped
    /// (killed, crashed, powered off), or gives them back when their
    /// deadline is gone: nothing leased is silently dropped.
    async fn recover_inflight(&mut self) -> Result<(), SlotError> {
        for signed in std::mem::take(&mut self.to_recover) {
            let Ok(m) = signed.verify(&self.pool_key) else {
                // Signed by another pool (the pool was changed): not ours to resume here.
                continue;
            };
            if m.deadline_ms > crate::now_ms() + 1_000 {
                tracing::info!(task_id = m.task_id, "resuming a task an earlier run had started");
                self.handle(signed).await?;
            } else {
                tracing::info!(
                    task_id = m.task_id,
                    "giving back a task whose deadline passed while the agent was down"
                );
                self.give_back(m.lease_id, &m.lease_token, None).await;
                self.ledger.record(&LedgerEntry::TaskGivenBack(TaskGivenBack {
                    pool: self.config.pool_url.clone(),
                    job_id: m.job_id,
                    task_id: m.task_id,
                    reason: "the lease ran out while the agent was not running".into(),
                }))?;
                self.outbox.forget(m.lease_id)?;
            }
        }
        Ok(())
    }

    /// Waits until every kind of traffic may go out again (an unmetered
    /// network or the user's leave, and a daily cap not used up); false if
    /// stopped meanwhile.
    async fn wait_for_all_traffic(&mut self, stop: &watch::Receiver<bool>) -> bool {
        self.publish(|st| {
            st.waiting_for =
                Some("an unmetered network, or tomorrow's transfer allowance (today's cap is used up)".into())
        });
        let decisions = self.config.watcher.as_ref().map(Watcher::decisions);
        let result = decision_until(decisions, stop.clone(), |d| d.traffic == Traffic::All).await;
        self.publish(|st| st.waiting_for = None);
        result
    }

    /// What this slot offers the pool now: the GPU only while GPU work may
    /// run, the processor only while its work may (the user may pause one).
    fn capabilities_now(&self) -> Capabilities {
        let mut caps = self.config.capabilities.clone();
        if let Some(w) = &self.config.watcher {
            let decision = w.decisions().borrow().clone();
            if !decision.gpu_runs() {
                caps.wgpu_adapter = None;
            }
            if !decision.cpu_runs() {
                caps.wasm = false;
            }
        }
        caps
    }

    /// Which traffic with the pool may go out now; without a watcher (the
    /// demo, tests driving a scheduler) everything.
    fn traffic(&self) -> Traffic {
        self.config.watcher.as_ref().map_or(Traffic::All, |w| w.decisions().borrow().traffic)
    }

    /// While GPU work may not run, no idle GPU worker is kept warm: its
    /// device, pipelines and driver hold GPU memory the user (or the game
    /// that stopped GPU work) wants back. A GPU worker paused in the middle
    /// of a task is frozen instead, holding at most that task's buffers
    /// (its `max_memory_bytes`, shown with the task in the status).
    fn end_idle_gpu_worker_if_stopped(&mut self) {
        let stopped = self.config.watcher.as_ref().is_some_and(|w| !w.decisions().borrow().gpu_runs());
        if stopped && self.workers.remove(&Profile::Gpu).is_some() {
            tracing::info!(slot = self.index, "GPU work stopped: ended the idle GPU worker and its hold on the GPU");
        }
    }

    /// Resolves once GPU work may not run; never without a watcher.
    fn gpu_stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let decisions = self.config.watcher.as_ref().map(Watcher::decisions);
        async move {
            if let Some(mut decisions) = decisions {
                loop {
                    if !decisions.borrow_and_update().gpu_runs() {
                        return;
                    }
                    if decisions.changed().await.is_err() {
                        break;
                    }
                }
            }
            std::future::pending().await
        }
    }

    fn allowed(&self, stop: &watch::Receiver<bool>) -> impl Future<Output = bool> + Send + 'static {
        let decisions = self.config.watcher.as_ref().map(Watcher::decisions);
        decision_until(decisions, stop.clone(), |d| !d.is_paused())
    }

    /// Runs a leased task if it passes every check; refuses it otherwise.
    async fn handle(&mut self, signed: Signed<TaskManifest>) -> Result<(), SlotError> {
        match self.check(&signed).await {
            // Already in flight: recorded when leased, or left by an earlier run.
            Ok((manifest, kernel, input)) => self.execute(manifest, kernel, input).await,
            Err(refusal) => self.refuse(refusal).await,
        }
    }

    /// Works until `stop` turns true, then returns what it did. Errors talking
    /// to the pool are logged and retried with backoff; only ledger failures
    /// end the run, since work that cannot be recorded must not be done.
    pub async fn run(&mut self, mut stop: watch::Receiver<bool>) -> Result<TaskSummary, SlotError> {
        let mut failures = 0u32;
        self.flush_outbox().await?;
        self.recover_inflight().await?;
        while !*stop.borrow() {
            self.flush_outbox().await?;
            self.end_idle_gpu_worker_if_stopped();
            if !self.allowed(&stop).await {
                break;
            }
            // Asking for work (and then fetching it) is traffic that can wait.
            if self.traffic() != Traffic::All {
                if !self.wait_for_all_traffic(&stop).await {
                    break;
                }
                continue;
            }
            let leased = self.client.lease(self.capabilities_now(), self.config.max_tasks_per_lease).await;
            let wait = match leased {
                Ok(resp) if !resp.tasks.is_empty() => {
                    failures = 0;
                    // Every lease is remembered before any runs: a crash while
                    // one waits in the queue must not strand it.
                    for signed in &resp.tasks {
                        if let Ok(m) = signed.verify(&self.pool_key) {
                            self.outbox.start(m.lease_id, signed)?;
                        }
                    }
                    let mut tasks = resp.tasks.into_iter().peekable();
                    while tasks.peek().is_some() {
                        // Metered since the lease: the rest go back unfetched.
                        if self.traffic() != Traffic::All {
                            break;
                        }
                        self.handle(tasks.next().expect("peeked")).await?;
                        if *stop.borrow() {
                            break;
                        }
                    }
                    // Leases we will not get to go back to the pool at once.
                    for rest in tasks {
                        if let Ok(m) = rest.verify(&self.pool_key) {
                            self.give_back(m.lease_id, &m.lease_token, None).await;
                            self.outbox.forget(m.lease_id)?;
                        }
                    }
                    continue;
                }
                Ok(resp) => Duration::from_millis(resp.retry_after_ms.unwrap_or(1_000)).min(self.config.max_idle_poll),
                Err(e) => {
                    // Jittered, so agents coming back after an outage do not knock in step.
                    let wait = Duration::from_millis(crate::outbox::backoff_ms(failures, random_u64()).min(60_000));
                    failures += 1;
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "asking the pool for work failed");
                    self.publish(|st| st.last_pool_error = Some(e.to_string()));
                    wait
                }
            };
            // A GPU pause (or another program's GPU load) ends the warm
            // GPU worker now, not at the next lease.
            let holds_gpu = self.workers.contains_key(&Profile::Gpu);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
                () = self.gpu_stopped(), if holds_gpu => {}
            }
        }
        self.summary.results_pending = self.outbox.len()?;
        self.publish(|_| {});
        Ok(self.summary.clone())
    }
}

pub(crate) fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}

/// Waits until the governor's decision passes `wanted` (or `stop`); true
/// if it does. Without a watcher there is nothing to wait for.
async fn decision_until(
    decisions: Option<watch::Receiver<crate::governor::Decision>>,
    mut stop: watch::Receiver<bool>,
    wanted: impl Fn(&crate::governor::Decision) -> bool,
) -> bool {
    let Some(mut decisions) = decisions else { return !*stop.borrow() };
    loop {
        if *stop.borrow() {
            return false;
        }
        if wanted(&decisions.borrow_and_update()) {
            return true;
        }
        tokio::select! {
            r = decisions.changed() => if r.is_err() { return false },
            _ = stop.changed() => {}
        }
    }
}
