//! Joining a pool: a connection this device trusts, the pool's key checked
//! against the pins, enrolment, and a ledger entry for what was disclosed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use idlemesh_control::{Disclosed, LedgerEntry, TaskSummary};
use idlemesh_protocol::api::{EnrollRequest, EnrollResponse, PoolInfo};
use idlemesh_protocol::{Keypair, PublicKey};

use super::{Slot, SlotConfig, SlotError, SlotStatus, random_u64};
use crate::ledger::Ledger;
use crate::outbox::Outbox;
use crate::pool_client::{PoolClient, PoolClientError};

impl Slot {
    /// Contacts the pool, pins its key, enrolls this device and records what
    /// was disclosed.
    pub async fn connect(config: SlotConfig, device_key: Arc<Keypair>) -> Result<Self, SlotError> {
        let mut client = trusted_client(&config, &device_key)?;
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| SlotError::DataDir { path: config.data_dir.clone(), source: e })?;
        let info = client.info().await?;
        let (pool_key, enrolled) = enrol(&config, &mut client, &info, &device_key).await?;
        let payout = info.payout.as_ref().and_then(|p| {
            p.checked()
                .inspect_err(|e| tracing::warn!(pool = %config.pool_url, error = %e, "ignoring the pool's payout rate"))
                .ok()
        });
        let mut ledger = Ledger::open(&config.ledger_path)?;
        ledger.record(&disclosed(&config, &info, pool_key, &enrolled, payout.clone(), &device_key))?;
        tracing::info!(pool = %config.pool_url, device_id = enrolled.device_id, "enrolled");
        let outbox = Outbox::open(&config.data_dir.join("outbox.sqlite"))?;
        let status = SlotStatus {
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
            index: 0,
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
            summary: TaskSummary::default(),
        })
    }
}

/// A client for the pool that only speaks over a connection the trust
/// settings allow: https (or the user's leave for plain HTTP), and the
/// policy's certificate authorities when it names some.
fn trusted_client(config: &SlotConfig, device_key: &Arc<Keypair>) -> Result<PoolClient, SlotError> {
    // A policy that pins the pools' authorities wants https: no setting lifts that.
    let insecure_allowed = config.trust.allow_insecure_pool && config.trust.pool_ca_file.is_none();
    if !insecure_allowed && crate::pool_client::plain_http_off_this_machine(&config.pool_url) {
        return Err(SlotError::InsecurePool(config.pool_url.clone()));
    }
    let roots = match &config.trust.pool_ca_file {
        Some(path) => {
            Some(std::fs::read(path).map_err(|e| SlotError::PoolCa { path: path.clone(), reason: e.to_string() })?)
        }
        None => None,
    };
    PoolClient::with_roots(&config.pool_url, device_key.clone(), roots.as_deref()).map_err(|e| {
        match (e, &config.trust.pool_ca_file) {
            (PoolClientError::BadRoots(reason), Some(path)) => SlotError::PoolCa { path: path.clone(), reason },
            (e, _) => e.into(),
        }
    })
}

/// Enrols with the pool once it proved it holds the pinned key (the
/// policy's pin outranks the device's own); pins that key. Nothing is
/// disclosed to a pool whose key is not the pinned one.
async fn enrol(
    config: &SlotConfig,
    client: &mut PoolClient,
    info: &PoolInfo,
    device_key: &Keypair,
) -> Result<(PublicKey, EnrollResponse), SlotError> {
    let pool_key = match config.trust.policy_pool_key {
        Some(key) => key,
        None => crate::pins::pinned(&config.data_dir, &config.pool_url)?.unwrap_or(info.public_key),
    };
    let key_error = |offered: PublicKey| {
        let (pinned, offered) = (Box::new(pool_key), Box::new(offered));
        if config.trust.policy_pool_key.is_some() {
            SlotError::PoolKeyNotThePolicys { pool: config.pool_url.clone(), pinned, offered }
        } else {
            SlotError::PoolKeyChanged { pinned, offered }
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
    Ok((pool_key, enrolled))
}

/// The ledger's record of what went to the pool: the enrolment's fields,
/// and what every lease request states the device offers (under the name
/// of the request that carries it).
fn disclosed(
    config: &SlotConfig,
    info: &PoolInfo,
    pool_key: PublicKey,
    enrolled: &EnrollResponse,
    payout: Option<idlemesh_protocol::api::Payout>,
    device_key: &Keypair,
) -> LedgerEntry {
    let mut fields = config.device_info.clone();
    let offered = &config.capabilities;
    fields.insert("lease.cores".into(), offered.cores.to_string());
    fields.insert("lease.memory_bytes".into(), offered.memory_bytes.to_string());
    if let Some(adapter) = &offered.wgpu_adapter {
        fields.insert("lease.wgpu_adapter".into(), adapter.clone());
    }
    LedgerEntry::Disclosure(Disclosed {
        pool: config.pool_url.clone(),
        pool_name: Some(info.name.clone()),
        pool_public_key: Some(pool_key),
        device_id: Some(enrolled.device_id),
        purpose: Some("enrollment".into()),
        organisation: enrolled.org.as_ref().map(|o| o.name.clone()),
        fields,
        payout,
        device_public_key: Some(device_key.public()),
    })
}
