//! Every check a task passes before it may run.

use std::sync::Arc;

use idlemesh_control::{LedgerEntry, TaskRefused};
use idlemesh_protocol::{KernelKind, Sha256, Signed, TaskManifest};

use super::{Slot, SlotError};
use crate::governor::Traffic;
use crate::pool_client::PoolClientError;

/// Why a kernel or input could not be had; the task's refusal says it.
#[derive(Debug, thiserror::Error)]
pub(super) enum FetchError {
    #[error("downloading the {what}: {source}")]
    Download {
        what: &'static str,
        #[source]
        source: PoolClientError,
    },
    #[error("{what} SHA-256 mismatch: the manifest promised {promised}, the pool sent {sent}")]
    Mismatch { what: &'static str, promised: Sha256, sent: Sha256 },
}

/// Why a task was not run.
pub(super) struct Refusal {
    pub(super) lease: Option<(u64, String)>,
    pub(super) task_id: Option<u64>,
    pub(super) reason: String,
}

impl Slot {
    /// Records a refused task and hands its lease back: nothing was run.
    pub(super) async fn refuse(&mut self, refusal: Refusal) -> Result<(), SlotError> {
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

    /// Every check before a task may run.
    pub(super) async fn check(
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
        let kernel = self
            .fetch_verified(&manifest.kernel.sha256, "kernel")
            .await
            .map_err(|e| refuse(&manifest, e.to_string()))?;
        let input =
            self.fetch_verified(&manifest.input_sha256, "input").await.map_err(|e| refuse(&manifest, e.to_string()))?;
        Ok((manifest, kernel, input))
    }

    /// The bytes the manifest promised, from the cache or the pool.
    async fn fetch_verified(&mut self, sha: &Sha256, what: &'static str) -> Result<Arc<Vec<u8>>, FetchError> {
        if let Some(b) = self.blobs.get(sha) {
            return Ok(b.clone());
        }
        let bytes = self.client.blob(sha).await.map_err(|source| FetchError::Download { what, source })?;
        let sent = Sha256::of(&bytes);
        if sent != *sha {
            return Err(FetchError::Mismatch { what, promised: *sha, sent });
        }
        let bytes = Arc::new(bytes);
        // Kernels are reused across tasks; inputs rarely are, but are small.
        if self.blobs.len() > 64 {
            self.blobs.clear();
        }
        self.blobs.insert(*sha, bytes.clone());
        Ok(bytes)
    }
}
