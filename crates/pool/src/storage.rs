//! What the pool needs of its database, as one trait.
//!
//! [`crate::store::Store`] implements it on SQLite (one file, the embedded
//! default) and on PostgreSQL (several stateless pool replicas on one
//! database); how the replicas stay out of each other's way is told in
//! `store.rs`. The HTTP layer sees only this trait (through the writer).

use idlemesh_protocol::api::{
    Capabilities, DeviceStats, JobSpec, JobStatus, Org, OrgStats, PoolStats, TokenCreate, TokenCreated, TokenInfo,
};
use idlemesh_protocol::{Keypair, PublicKey, Sha256, TaskManifest};

use crate::split::TaskSeed;
use crate::store::{ResultOutcome, StoreError};

pub(crate) trait Storage: Send {
    /// Opens the writer's batch transaction; operations nest savepoints in it.
    fn begin(&mut self) -> Result<(), StoreError>;
    /// Opens a transaction for one operation; rolled back if it fails.
    fn begin_lone(&mut self) -> Result<(), StoreError>;
    fn commit(&mut self) -> Result<(), StoreError>;
    fn rollback(&mut self);

    /// One round trip to the database, for `/v1/health`.
    fn ping(&self) -> Result<(), StoreError>;

    /// Records a device request's signature until `expires_ms`;
    /// `Replayed` (now or from the operation's next statement) if it was
    /// used before, by any pool replica on this database.
    fn spend_signature(&mut self, signature: &str, expires_ms: u64, now: u64) -> Result<(), StoreError>;

    fn put_blob(&mut self, bytes: &[u8]) -> Result<Sha256, StoreError>;
    fn blob(&self, sha: &Sha256) -> Result<Option<Vec<u8>>, StoreError>;

    /// Enrolls a device (or finds it again), with an organisation's token if given.
    fn enroll(
        &mut self,
        key: &PublicKey,
        info: &str,
        token: Option<&str>,
        now: u64,
    ) -> Result<(u64, Option<Org>), StoreError>;
    fn device_key(&self, device_id: u64) -> Result<Option<PublicKey>, StoreError>;

    fn create_job(&mut self, spec: &JobSpec, seeds: &[TaskSeed], now: u64) -> Result<u64, StoreError>;
    fn job_status(&self, job_id: u64) -> Result<JobStatus, StoreError>;
    fn job_output(&self, job_id: u64) -> Result<Option<Vec<u8>>, StoreError>;

    /// Claims up to `max` replicas the device can run, never two of one
    /// task, nor to devices sharing what the pool's trust rules spread over;
    /// `network` is the device's as those rules name it (`None`: unknown).
    fn lease(
        &mut self,
        device_id: u64,
        caps: &Capabilities,
        max: u32,
        now: u64,
        network: Option<&str>,
    ) -> Result<Vec<TaskManifest>, StoreError>;
    fn heartbeat(&mut self, device_id: u64, lease_id: u64, token: &str, now: u64) -> Result<u64, StoreError>;
    /// `failure`: the task failed on this device (counted against the task).
    fn give_back(
        &mut self,
        device_id: u64,
        lease_id: u64,
        token: &str,
        failure: Option<&idlemesh_protocol::api::TaskFailure>,
    ) -> Result<(), StoreError>;
    /// Queues again the device's live leases missing from `held`; returns their ids.
    fn release_unheld(&mut self, device_id: u64, held: &[u64], now: u64) -> Result<Vec<u64>, StoreError>;
    #[allow(clippy::too_many_arguments, reason = "one call per field of a result submission")]
    fn submit_result(
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
    ) -> Result<ResultOutcome, StoreError>;

    fn stats(&self) -> Result<PoolStats, StoreError>;
    fn device_stats(&self, device_id: u64) -> Result<DeviceStats, StoreError>;

    fn create_org(&mut self, name: &str, now: u64) -> Result<Org, StoreError>;
    fn orgs(&self) -> Result<Vec<Org>, StoreError>;
    fn org_stats(&self, org_id: u64) -> Result<OrgStats, StoreError>;
    fn create_token(&mut self, org_id: u64, req: &TokenCreate, now: u64) -> Result<TokenCreated, StoreError>;
    fn revoke_token(&mut self, token_id: u64, now: u64) -> Result<TokenInfo, StoreError>;
}
