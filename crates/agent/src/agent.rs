//! The scheduler: lease, verify, run, report, record.
//!
//! Nothing from the pool is trusted until it is checked: a manifest must carry
//! a valid signature from the pool key pinned at enrollment, and the kernel
//! and input bytes must hash to what that manifest promised. A task that fails
//! a check is refused (logged, recorded in the ledger, handed back) and the
//! agent carries on with the next one.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idlemesh_control::{
    Checkpoint, Disclosed, LedgerEntry, ResultRefused, TaskEnded, TaskGivenBack, TaskRefused, TaskStarted, TrafficBody,
};
use idlemesh_protocol::api::{Capabilities, EnrollRequest, Payout, ResultSubmission, TaskFailure};
use idlemesh_protocol::{KernelKind, Keypair, PublicKey, Receipt, Sha256, Signed, TaskManifest};
use idlemesh_runtime::{Layer, Profile, RunLimits, RunReport, Status, WorkRequest, WorkerCommand, WorkerProcess};
use tokio::sync::watch;

use crate::governor::Traffic;
use crate::ledger::{Ledger, LedgerError, ReceiptEntry};
use crate::outbox::{Outbox, Pending};
use crate::pool_client::{PoolClient, PoolClientError};
use crate::watcher::Watcher;

/// After refusing a task for its worker's sandbox: longer than the watcher
/// takes to pause for the same reason, or the settings change that caused it
/// to restart the scheduler.
const SANDBOX_REFUSAL_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct AgentConfig {
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
pub enum AgentError {
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

impl AgentError {
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

pub use idlemesh_control::CurrentTask;
/// What one run of the agent did.
pub use idlemesh_control::TaskSummary as AgentSummary;

/// What the scheduler is doing, for `idlemesh status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SchedulerStatus {
    pub pool: String,
    pub device_id: Option<u64>,
    /// The organisation this device enrolled with, if any.
    pub managed_by: Option<String>,
    /// The task running now, if any.
    pub current_task: Option<CurrentTask>,
    pub summary: AgentSummary,
    pub last_pool_error: Option<String>,
    /// What the scheduler waits for before it asks for work, if anything.
    pub waiting_for: Option<String>,
}

pub struct Agent {
    config: AgentConfig,
    /// 0 for the agent that enrolled; others are extra slots (one task each)
    /// sharing its enrollment; recorded with each task it starts.
    slot: u32,
    /// One slot delivers the outbox at a time (it delivers everyone's results).
    flush_lock: Arc<tokio::sync::Mutex<()>>,
    /// WGSL kernels that hung or lost the GPU device here: never run again
    /// by this agent (DESIGN §3), shared by every slot.
    gpu_banned: Arc<Mutex<std::collections::HashSet<Sha256>>>,
    /// Leases an earlier run left in flight, read before any slot leases anew.
    to_recover: Vec<Signed<TaskManifest>>,
    status: Arc<Mutex<SchedulerStatus>>,
    client: PoolClient,
    pool_key: PublicKey,
    /// The pool's published value of a credit, recorded with each receipt.
    payout: Option<Payout>,
    ledger: Ledger,
    outbox: Outbox,
    /// A warm worker per profile: WASM tasks never share a process with a GPU driver.
    workers: HashMap<Profile, WorkerProcess>,
    blobs: HashMap<Sha256, Arc<Vec<u8>>>,
    summary: AgentSummary,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("pool", &self.config.pool_url)
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

/// Why a task was not run.
struct Refusal {
    lease: Option<(u64, String)>,
    task_id: Option<u64>,
    reason: String,
}

impl Agent {
    /// Contacts the pool, pins its key, enrolls this device and records what
    /// was disclosed.
    pub async fn connect(config: AgentConfig, device_key: Arc<Keypair>) -> Result<Self, AgentError> {
        // A policy that pins the pools' authorities wants https: no setting lifts that.
        let insecure_allowed = config.trust.allow_insecure_pool && config.trust.pool_ca_file.is_none();
        if !insecure_allowed && crate::pool_client::plain_http_off_this_machine(&config.pool_url) {
            return Err(AgentError::InsecurePool(config.pool_url.clone()));
        }
        let roots = match &config.trust.pool_ca_file {
            Some(path) => Some(
                std::fs::read(path).map_err(|e| AgentError::PoolCa { path: path.clone(), reason: e.to_string() })?,
            ),
            None => None,
        };
        let mut client =
            PoolClient::with_roots(&config.pool_url, device_key.clone(), roots.as_deref()).map_err(|e| {
                match (e, &config.trust.pool_ca_file) {
                    (PoolClientError::BadRoots(reason), Some(path)) => {
                        AgentError::PoolCa { path: path.clone(), reason }
                    }
                    (e, _) => e.into(),
                }
            })?;
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| AgentError::DataDir { path: config.data_dir.clone(), source: e })?;
        let info = client.info().await?;
        // Nothing is disclosed to a pool whose key is not the pinned one;
        // the policy's pin outranks the device's own.
        let pool_key = match config.trust.policy_pool_key {
            Some(key) => key,
            None => crate::pins::pinned(&config.data_dir, &config.pool_url)?.unwrap_or(info.public_key),
        };
        let key_error = |offered: PublicKey| {
            let (pinned, offered) = (Box::new(pool_key), Box::new(offered));
            if config.trust.policy_pool_key.is_some() {
                AgentError::PoolKeyNotThePolicys { pool: config.pool_url.clone(), pinned, offered }
            } else {
                AgentError::PoolKeyChanged { pinned, offered }
            }
        };
        if info.public_key != pool_key {
            return Err(key_error(info.public_key));
        }
        // Anyone can repeat a public key: the server must also sign a fresh
        // nonce with it before the token and the device's details go out.
        let nonce = format!("{:016x}{:016x}{:016x}{:016x}", random_u64(), random_u64(), random_u64(), random_u64());
        let proof = client.challenge(&nonce).await?;
        if !proof.verify(&pool_key).is_ok_and(|c| c.nonce == nonce) {
            return Err(key_error(info.public_key));
        }
        let enrolled = client
            .enroll(&EnrollRequest {
                public_key: device_key.public(),
                token: config.enrollment_token.clone(),
                device_info: config.device_info.clone(),
            })
            .await?;
        if enrolled.pool_public_key != pool_key {
            return Err(key_error(enrolled.pool_public_key));
        }
        crate::pins::pin(&config.data_dir, &config.pool_url, pool_key)?;
        let payout = info.payout.as_ref().and_then(|p| {
            p.checked()
                .inspect_err(|e| tracing::warn!(pool = %config.pool_url, error = %e, "ignoring the pool's payout rate"))
                .ok()
        });
        // Every lease request states what the device offers: disclosed too,
        // under the name of the request that carries it.
        let mut fields = config.device_info.clone();
        let offered = &config.capabilities;
        fields.insert("lease.cores".into(), offered.cores.to_string());
        fields.insert("lease.memory_bytes".into(), offered.memory_bytes.to_string());
        if let Some(adapter) = &offered.wgpu_adapter {
            fields.insert("lease.wgpu_adapter".into(), adapter.clone());
        }
        let mut ledger = Ledger::open(&config.ledger_path)?;
        ledger.record(&LedgerEntry::Disclosure(Disclosed {
            pool: config.pool_url.clone(),
            pool_name: Some(info.name.clone()),
            pool_public_key: Some(pool_key),
            device_id: Some(enrolled.device_id),
            purpose: Some("enrollment".into()),
            organisation: enrolled.org.as_ref().map(|o| o.name.clone()),
            fields,
            payout: payout.clone(),
            device_public_key: Some(device_key.public()),
        }))?;
        tracing::info!(pool = %config.pool_url, device_id = enrolled.device_id, "enrolled");
        let outbox = Outbox::open(&config.data_dir.join("outbox.sqlite"))?;
        let status = SchedulerStatus {
            pool: config.pool_url.clone(),
            device_id: Some(enrolled.device_id),
            managed_by: enrolled.org.map(|o| o.name),
            ..Default::default()
        };
        let to_recover = outbox.inflight()?;
        // A lease granted just before the agent stopped, and never written
        // down, would sit at the pool until its deadline: hand such back now.
        let mut held: Vec<u64> =
            to_recover.iter().filter_map(|s| s.verify(&pool_key).ok()).map(|m| m.lease_id).collect();
        held.extend(outbox.pending_leases(&config.pool_url)?);
        match client.sync_leases(held).await {
            Ok(released) if !released.is_empty() => {
                tracing::info!(?released, "the pool queued again leases an earlier run never recorded");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not tell the pool which leases this device holds"),
        }
        Ok(Self {
            config,
            slot: 0,
            flush_lock: Arc::default(),
            gpu_banned: Arc::default(),
            to_recover,
            status: Arc::new(Mutex::new(status)),
            client,
            pool_key,
            payout,
            ledger,
            outbox,
            workers: HashMap::new(),
            blobs: HashMap::new(),
            summary: AgentSummary::default(),
        })
    }

    /// Another slot working for the same pool as the same device, so
    /// `cores` tasks run side by side. Shares the enrollment and the pinned
    /// key; has its own worker and its own connections to the ledger and
    /// outbox files (both take concurrent writers).
    pub fn another_slot(&self, slot: u32) -> Result<Self, AgentError> {
        let status = SchedulerStatus {
            pool: self.config.pool_url.clone(),
            device_id: self.client.device_id(),
            managed_by: self.status.lock().expect("status lock").managed_by.clone(),
            ..Default::default()
        };
        Ok(Self {
            config: self.config.clone(),
            slot,
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
            summary: AgentSummary::default(),
        })
    }

    pub fn device_id(&self) -> Option<u64> {
        self.client.device_id()
    }

    pub fn pool_key(&self) -> PublicKey {
        self.pool_key
    }

    /// A live view of what the scheduler is doing.
    pub fn status(&self) -> Arc<Mutex<SchedulerStatus>> {
        self.status.clone()
    }

    fn publish(&self, f: impl FnOnce(&mut SchedulerStatus)) {
        let pending = self.outbox.len().unwrap_or(0);
        let mut st = self.status.lock().expect("status lock");
        f(&mut st);
        st.summary = self.summary.clone();
        st.summary.results_pending = pending;
    }

    /// Resumes the leases a previous run was working on when it stopped
    /// (killed, crashed, powered off), or gives them back when their
    /// deadline is gone: nothing leased is silently dropped.
    async fn recover_inflight(&mut self) -> Result<(), AgentError> {
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

    fn allowed(&self, stop: &watch::Receiver<bool>) -> impl Future<Output = bool> + Send + 'static {
        let decisions = self.config.watcher.as_ref().map(Watcher::decisions);
        decision_until(decisions, stop.clone(), |d| !d.is_paused())
    }

    /// Works until `stop` turns true, then returns what it did. Errors talking
    /// to the pool are logged and retried with backoff; only ledger failures
    /// end the run, since work that cannot be recorded must not be done.
    pub async fn run(&mut self, mut stop: watch::Receiver<bool>) -> Result<AgentSummary, AgentError> {
        let mut failures = 0u32;
        self.flush_outbox().await?;
        self.recover_inflight().await?;
        while !*stop.borrow() {
            self.flush_outbox().await?;
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
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
        self.summary.results_pending = self.outbox.len()?;
        self.publish(|_| {});
        Ok(self.summary.clone())
    }

    async fn handle(&mut self, signed: Signed<TaskManifest>) -> Result<(), AgentError> {
        match self.check(&signed).await {
            // Already in flight: recorded when leased, or left by an earlier run.
            Ok((manifest, kernel, input)) => self.execute(manifest, kernel, input).await,
            Err(refusal) => {
                tracing::warn!(task_id = ?refusal.task_id, reason = %refusal.reason, "refusing a task: nothing was run");
                self.summary.tasks_refused += 1;
                self.ledger.record(&LedgerEntry::TaskRefused(TaskRefused {
                    pool: self.config.pool_url.clone(),
                    task_id: refusal.task_id,
                    reason: refusal.reason.clone(),
                }))?;
                if let Some((lease_id, token)) = refusal.lease {
                    self.give_back(lease_id, &token, None).await;
                    self.outbox.forget(lease_id)?;
                }
                Ok(())
            }
        }
    }

    /// Every check before a task may run.
    async fn check(
        &mut self,
        signed: &Signed<TaskManifest>,
    ) -> Result<(TaskManifest, Arc<Vec<u8>>, Arc<Vec<u8>>), Refusal> {
        let manifest = signed.verify(&self.pool_key).map_err(|e| Refusal {
            lease: None,
            task_id: None,
            reason: format!("manifest signature: {e}"),
        })?;
        let refuse = |m: &TaskManifest, reason: String| Refusal {
            lease: Some((m.lease_id, m.lease_token.clone())),
            task_id: Some(m.task_id),
            reason,
        };
        if Some(manifest.device_id) != self.client.device_id() {
            return Err(refuse(&manifest, format!("manifest is for device {}, not this one", manifest.device_id)));
        }
        if manifest.deadline_ms <= crate::now_ms() {
            return Err(refuse(&manifest, "lease deadline already passed".into()));
        }
        // The user's memory limit per task: a task that needs more is not run
        // with less (it would only fail later); it goes back for a bigger machine.
        let allowed = self.config.capabilities.memory_bytes;
        if allowed > 0 && manifest.limits.max_memory_bytes > allowed {
            return Err(refuse(
                &manifest,
                format!(
                    "the task needs up to {} MB of memory; your limit per task is {} MB",
                    manifest.limits.max_memory_bytes / 1_000_000,
                    allowed / 1_000_000
                ),
            ));
        }
        match (manifest.kernel.kind, &manifest.wgsl) {
            (KernelKind::Wasm, None) => {}
            (KernelKind::Wasm, Some(_)) => return Err(refuse(&manifest, "a WASM kernel with a WGSL layout".into())),
            (KernelKind::Wgsl, None) => return Err(refuse(&manifest, "a WGSL kernel without its layout".into())),
            (KernelKind::Wgsl, Some(_)) if self.config.capabilities.wgpu_adapter.is_none() => {
                return Err(refuse(&manifest, "GPU use is off on this device".into()));
            }
            (KernelKind::Wgsl, Some(_)) => {
                if self.gpu_banned.lock().expect("lock").contains(&manifest.kernel.sha256) {
                    return Err(refuse(
                        &manifest,
                        "this kernel hung or lost the GPU here before; GPU work for it stopped".into(),
                    ));
                }
            }
        }
        // A network that turned metered after the lease: fetch nothing; the
        // task goes back (where lease upkeep may go out) or lapses.
        let uncached = |sha: &Sha256| !self.blobs.contains_key(sha);
        if self.traffic() != Traffic::All && (uncached(&manifest.kernel.sha256) || uncached(&manifest.input_sha256)) {
            return Err(refuse(&manifest, "the network is metered: the kernel and input were not downloaded".into()));
        }
        let kernel = self.fetch_verified(&manifest.kernel.sha256, "kernel").await.map_err(|e| refuse(&manifest, e))?;
        let input = self.fetch_verified(&manifest.input_sha256, "input").await.map_err(|e| refuse(&manifest, e))?;
        Ok((manifest, kernel, input))
    }

    async fn fetch_verified(&mut self, sha: &Sha256, what: &str) -> Result<Arc<Vec<u8>>, String> {
        if let Some(b) = self.blobs.get(sha) {
            return Ok(b.clone());
        }
        let bytes = self.client.blob(sha).await.map_err(|e| format!("downloading the {what}: {e}"))?;
        let actual = Sha256::of(&bytes);
        if actual != *sha {
            return Err(format!("{what} SHA-256 mismatch: the manifest promised {sha}, the pool sent {actual}"));
        }
        let bytes = Arc::new(bytes);
        // Kernels are reused across tasks; inputs rarely are, but are small.
        if self.blobs.len() > 64 {
            self.blobs.clear();
        }
        self.blobs.insert(*sha, bytes.clone());
        Ok(bytes)
    }

    fn checkpoint_path(&self, m: &TaskManifest) -> PathBuf {
        self.config.data_dir.join("checkpoints").join(format!("{}-{}-{}.bin", m.job_id, m.task_id, m.kernel.sha256))
    }

    /// The warm worker for `profile`, or a new one (whose sandbox the watcher learns).
    async fn worker_for(&mut self, profile: Profile) -> Result<WorkerProcess, idlemesh_runtime::WorkerError> {
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

    async fn execute(&mut self, m: TaskManifest, kernel: Arc<Vec<u8>>, input: Arc<Vec<u8>>) -> Result<(), AgentError> {
        let checkpoint_path = self.checkpoint_path(&m);
        let resume = std::fs::read(&checkpoint_path).ok();
        let profile = if m.wgsl.is_some() { Profile::Gpu } else { Profile::Cpu };
        let worker = self.worker_for(profile).await.map_err(|e| e.to_string());
        let sandbox = worker.as_ref().ok().map(|w| w.sandbox().clone());
        // A worker without a layer the user or policy requires gets no
        // kernel: the task is refused, not started, and goes back as this
        // device's problem. The watcher has learned the same sandbox, so the
        // governor pauses for it; until it does, do not lease again at once.
        if let Some(reason) = sandbox.as_ref().and_then(|s| s.refusal(&self.config.require_sandbox)) {
            tracing::warn!(task_id = m.task_id, %reason, "refusing a task: nothing was run");
            if let Ok(w) = worker {
                self.workers.insert(profile, w);
            }
            self.summary.tasks_refused += 1;
            self.ledger.record(&LedgerEntry::TaskRefused(TaskRefused {
                pool: self.config.pool_url.clone(),
                task_id: Some(m.task_id),
                reason: reason.clone(),
            }))?;
            self.give_back(m.lease_id, &m.lease_token, None).await;
            self.outbox.forget(m.lease_id)?;
            self.publish(|_| {});
            tokio::time::sleep(SANDBOX_REFUSAL_BACKOFF).await;
            return Ok(());
        }
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
                .as_ref()
                .map(|c| Checkpoint { checkpoint_sha256: Sha256::of(c), checkpoint_bytes: c.len() as u64 }),
            slot: self.slot,
            sandbox,
        }))?;

        let limits = RunLimits {
            max_memory_bytes: m.limits.max_memory_bytes,
            max_output_bytes: m.limits.max_output_bytes,
            max_fuel: m.limits.max_fuel,
            // Replicas of a task share the seed, so their randomness agrees.
            seed: u64::from_le_bytes(
                Sha256::of(format!("{}/{}", m.job_id, m.task_id).as_bytes()).0[..8].try_into().unwrap(),
            ),
        };
        let params = m.params.clone();
        let task = format!("{}/{}", m.job_id, m.task_id);
        let timeout = Duration::from_millis(m.limits.timeout_ms);
        let ckpt = checkpoint_path.clone();
        let kernel_sha256 = m.kernel.sha256;
        let wgsl = m.wgsl.clone();
        let abandoned = Arc::new(AtomicBool::new(false));
        let energy = crate::energy::EnergyMeter::start();
        let (worker, report) = match worker {
            Err(why) => (None, Err(why)),
            Ok(mut worker) => {
                let control = worker.control();
                if let Some(w) = &self.config.watcher {
                    w.attach(control.clone(), wgsl.is_some());
                }
                let current = CurrentTask {
                    job_id: m.job_id,
                    task_id: m.task_id,
                    kernel_sha256,
                    started_ms: crate::now_ms(),
                    deadline_ms: m.deadline_ms,
                    progress: None,
                };
                self.publish(|st| st.current_task = Some(current));
                let heartbeat = self.keep_lease_alive(&m, control.clone(), abandoned.clone());
                let status = self.status.clone();
                let result = tokio::task::spawn_blocking(move || {
                    let req = WorkRequest {
                        task,
                        kernel_sha256,
                        kernel: &kernel,
                        input: &input,
                        params: &params,
                        resume: resume.as_deref(),
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
                    let report = worker.run(&req, on_progress, |state| save_checkpoint(&ckpt, &state));
                    // A worker that timed out was killed, one that errored,
                    // broke its sandbox or retired after a GPU failure is
                    // gone: start a new one.
                    let keep = report.is_ok() && worker.is_alive();
                    (keep.then_some(worker), report.map_err(|e| e.to_string()))
                })
                .await
                .expect("the worker thread does not panic");
                heartbeat.abort();
                if let Some(w) = &self.config.watcher {
                    w.detach(control.pid());
                }
                self.publish(|st| st.current_task = None);
                result
            }
        };
        if let Some(worker) = worker {
            self.workers.insert(profile, worker);
        }
        if abandoned.load(Ordering::SeqCst) {
            // The checkpoint stays: if this device gets the task again, it resumes.
            tracing::info!(task_id = m.task_id, "gave a task back: paused for longer than its lease");
            self.ledger.record(&LedgerEntry::TaskGivenBack(TaskGivenBack {
                pool: self.config.pool_url.clone(),
                job_id: m.job_id,
                task_id: m.task_id,
                reason: "paused for longer than the lease".into(),
            }))?;
            self.give_back(m.lease_id, &m.lease_token, None).await;
            self.outbox.forget(m.lease_id)?;
            return Ok(());
        }
        let _ = std::fs::remove_file(&checkpoint_path);

        // A report is the kernel's doing; no report (no worker, a worker
        // that died, a sandbox the settings refuse) is this device's.
        let kernel_failed = report.is_ok();
        let report = match report {
            Ok(r) => r,
            Err(e) => RunReport { outcome: idlemesh_runtime::Outcome::failed(Status::Error, e), wall_ms: 0, cpu_ms: 0 },
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
            bytes_in: kernel_and_input_bytes(&m),
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
            let failure = kernel_failed.then(|| TaskFailure {
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

    /// Heartbeats the lease at a third of its length while the task runs, so
    /// a long task is not taken away and given to another device. A task
    /// held paused for longer than a whole lease is given up instead (its
    /// worker killed, the lease returned): the pool should not wait on a
    /// machine its user has taken back.
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
                let paused = decisions.as_ref().is_some_and(|d| {
                    let d = d.borrow();
                    !(if gpu { d.gpu_runs() } else { d.cpu_runs() })
                });
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

    /// Delivers every due result, oldest first. Stops at the first one the
    /// pool cannot take now (unreachable, busy) and schedules it for later;
    /// a result the pool refuses for good (a stale lease) is recorded and dropped.
    async fn flush_outbox(&mut self) -> Result<(), AgentError> {
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

    /// Which traffic with the pool may go out now; without a watcher (the
    /// demo, tests driving a scheduler) everything.
    fn traffic(&self) -> Traffic {
        self.config.watcher.as_ref().map_or(Traffic::All, |w| w.decisions().borrow().traffic)
    }

    /// Gives a lease back, if lease upkeep may go out now; otherwise it
    /// runs out at its deadline and the pool hands it on.
    async fn give_back(&mut self, lease_id: u64, token: &str, failure: Option<TaskFailure>) {
        if self.traffic().may_keep_leases() {
            let _ = self.client.give_back_failed(lease_id, token, failure).await;
        }
    }

    /// Writes the bytes exchanged with the pool since the last such entry:
    /// the Privacy page's and `ledger show --summary`'s traffic, and the daily caps.
    fn record_traffic(&mut self) -> Result<(), AgentError> {
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

    async fn deliver_due(&mut self) -> Result<(), AgentError> {
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

    fn keep_receipt(&mut self, p: &Pending, receipt: Signed<Receipt>) -> Result<(), AgentError> {
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

pub(crate) fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}

fn kernel_and_input_bytes(m: &TaskManifest) -> u64 {
    m.kernel.size_bytes + m.input_bytes
}

/// Atomic: write a temp file, fsync, rename over the old checkpoint.
fn save_checkpoint(path: &std::path::Path, state: &[u8]) {
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

/// Waits until the governor's decision passes `wanted` (or `stop`); true
/// if it does. Without a watcher there is nothing to wait for.
async fn decision_until(
    decisions: Option<watch::Receiver<crate::Decision>>,
    mut stop: watch::Receiver<bool>,
    wanted: impl Fn(&crate::Decision) -> bool,
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
