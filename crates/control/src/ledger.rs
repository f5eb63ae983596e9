//! The ledger as the control API carries it: each entry's kind with its
//! typed body ([`LedgerEntry`]), the read models built from them
//! ([`LedgerSummary`]) and what `verify` found ([`VerifyReport`]). The agent
//! writes its entries from these types and reads them back through them, so
//! no one reads a body by key.
//!
//! The hash chain covers each body's text as it was stored; these types are
//! how it is read, never how it is hashed. A body no type here reads (an
//! older or newer agent's) is kept whole as [`Unreadable`].

use std::collections::BTreeMap;

use idlemesh_protocol::api::Payout;
use idlemesh_protocol::sandbox::SandboxReport;
use idlemesh_protocol::{KernelKind, PublicKey, Receipt, Sha256, Signed};
use serde::{Deserialize, Serialize};
use ts_rs::TS;

use crate::decision::Reason;

/// One entry with its place in the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
pub struct LedgerRecord {
    pub seq: u64,
    pub at_ms: u64,
    #[serde(flatten)]
    pub entry: LedgerEntry,
    pub prev_hash: String,
    pub hash: String,
}

/// What one entry records: its `kind` and its `body`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
#[serde(tag = "kind", content = "body", rename_all = "snake_case")]
#[expect(
    clippy::large_enum_variant,
    reason = "at most 10,000 entries are held at once (about 6 MB, briefly); a box per body would not pay"
)]
pub enum LedgerEntry {
    /// Device information sent to a pool, and to which.
    Disclosure(Disclosed),
    TaskStarted(TaskStarted),
    TaskFinished(TaskEnded),
    TaskFailed(TaskEnded),
    /// A task this device would not run (a bad manifest, a sandbox too weak).
    TaskRefused(TaskRefused),
    /// A task handed back unfinished (paused past its lease...).
    TaskGivenBack(TaskGivenBack),
    /// A result the pool would not take: it earns nothing.
    ResultRefused(ResultRefused),
    /// A pool-signed credit.
    Receipt(ReceiptBody),
    /// HTTP bytes exchanged with a pool since the previous such entry.
    Traffic(TrafficBody),
    Paused(PauseBody),
    Resumed(PauseBody),
    /// The device left a pool and forgot its key.
    PoolLeft(PoolLeft),
    /// A kind or body this build does not read, kept as stored.
    Unreadable(Unreadable),
}

impl LedgerEntry {
    /// The kind as the ledger stores it (`task_finished`…).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Disclosure(_) => "disclosure",
            Self::TaskStarted(_) => "task_started",
            Self::TaskFinished(_) => "task_finished",
            Self::TaskFailed(_) => "task_failed",
            Self::TaskRefused(_) => "task_refused",
            Self::TaskGivenBack(_) => "task_given_back",
            Self::ResultRefused(_) => "result_refused",
            Self::Receipt(_) => "receipt",
            Self::Traffic(_) => "traffic",
            Self::Paused(_) => "paused",
            Self::Resumed(_) => "resumed",
            Self::PoolLeft(_) => "pool_left",
            Self::Unreadable(_) => "unreadable",
        }
    }

    /// Reads a stored entry; what cannot be read is kept as [`Unreadable`].
    pub fn read(kind: &str, body: &str) -> Self {
        let parsed = serde_json::from_str::<serde_json::Value>(body)
            .and_then(|body| serde_json::from_value::<Self>(serde_json::json!({"kind": kind, "body": body})));
        match parsed {
            Ok(Self::Unreadable(_)) => Self::Unreadable(Unreadable {
                kind: kind.to_owned(),
                body: body.to_owned(),
                why: "a stored entry cannot claim to be unreadable".into(),
            }),
            Ok(entry) => entry,
            Err(e) => Self::Unreadable(Unreadable { kind: kind.to_owned(), body: body.to_owned(), why: e.to_string() }),
        }
    }

    /// The body as the ledger stores it (JSON text); `None` for
    /// [`Unreadable`], which is never written.
    pub fn body_text(&self) -> Option<String> {
        if matches!(self, Self::Unreadable(_)) {
            return None;
        }
        let tagged = serde_json::to_value(self).ok()?;
        serde_json::to_string(&tagged["body"]).ok()
    }

    /// The pool the entry concerns, if any.
    pub fn pool(&self) -> Option<&str> {
        match self {
            Self::Disclosure(b) => Some(&b.pool),
            Self::TaskStarted(b) => Some(&b.pool),
            Self::TaskFinished(b) | Self::TaskFailed(b) => Some(&b.pool),
            Self::TaskRefused(b) => Some(&b.pool),
            Self::TaskGivenBack(b) => Some(&b.pool),
            Self::ResultRefused(b) => Some(&b.pool),
            Self::Receipt(b) => Some(&b.pool),
            Self::Traffic(b) => Some(&b.pool),
            Self::PoolLeft(b) => Some(&b.pool),
            Self::Paused(_) | Self::Resumed(_) | Self::Unreadable(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
pub struct Disclosed {
    pub pool: String,
    /// The pool's own name (`/v1/info`).
    #[serde(default)]
    pub pool_name: Option<String>,
    #[ts(type = "string | null")]
    #[serde(default)]
    pub pool_public_key: Option<PublicKey>,
    #[ts(type = "number | null")]
    #[serde(default)]
    pub device_id: Option<u64>,
    /// Why it was sent (`enrollment`).
    #[serde(default)]
    pub purpose: Option<String>,
    /// The organisation enrolled with, if any.
    #[serde(default)]
    pub organisation: Option<String>,
    /// Each field sent and its value.
    pub fields: BTreeMap<String, String>,
    /// The pool's published rate then, where it pays.
    #[ts(type = "{ per_credit: number; currency: string } | null")]
    #[serde(default)]
    pub payout: Option<Payout>,
    #[ts(type = "string | null")]
    #[serde(default)]
    pub device_public_key: Option<PublicKey>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
pub struct TaskStarted {
    pub pool: String,
    pub job_id: u64,
    pub task_id: u64,
    pub replica_id: u64,
    pub lease_id: u64,
    #[ts(type = "\"wasm\" | \"wgsl\"")]
    pub kernel_kind: KernelKind,
    #[ts(type = "string")]
    pub kernel_sha256: Sha256,
    #[ts(type = "string")]
    pub input_sha256: Sha256,
    pub input_bytes: u64,
    pub credits_offered: f64,
    #[serde(default)]
    pub resumed_from_checkpoint: bool,
    /// Which checkpoint a killed or preempted run saved, when resumed.
    #[serde(default)]
    pub resumed_from: Option<Checkpoint>,
    /// Which of the scheduler's slots ran it.
    #[serde(default)]
    pub slot: u32,
    /// The OS layers of the worker that ran it.
    #[serde(default)]
    pub sandbox: Option<SandboxReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
pub struct Checkpoint {
    #[ts(type = "string")]
    pub checkpoint_sha256: Sha256,
    pub checkpoint_bytes: u64,
}

/// A task's end (`task_finished` or `task_failed`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
pub struct TaskEnded {
    pub pool: String,
    pub job_id: u64,
    pub task_id: u64,
    pub replica_id: u64,
    #[ts(type = "string")]
    pub kernel_sha256: Sha256,
    /// As `idlemesh kernel run` says it: ok, trapped, out-of-fuel…
    pub status: String,
    #[serde(default)]
    pub error: Option<String>,
    /// Set when it finished.
    #[ts(type = "string | null")]
    #[serde(default)]
    pub output_sha256: Option<Sha256>,
    #[serde(default)]
    pub output_bytes: u64,
    #[serde(default)]
    pub wall_ms: u64,
    #[serde(default)]
    pub cpu_ms: u64,
    #[serde(default)]
    pub gpu_ms: u64,
    #[serde(default)]
    pub fuel: Option<u64>,
    #[serde(default)]
    pub peak_memory_bytes: u64,
    /// The kernel and input downloaded for it.
    #[serde(default)]
    pub bytes_in: u64,
    /// The GPU adapter, for a WGSL kernel.
    #[serde(default)]
    pub adapter: Option<String>,
    /// Joules used: measured (`rapl`) or estimated (`model`).
    #[serde(default)]
    pub energy_j: f64,
    #[serde(default)]
    pub energy_method: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
pub struct TaskRefused {
    pub pool: String,
    /// `null` when the manifest was too broken to name its task.
    #[ts(type = "number | null")]
    pub task_id: Option<u64>,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
pub struct TaskGivenBack {
    pub pool: String,
    pub job_id: u64,
    pub task_id: u64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
pub struct ResultRefused {
    pub pool: String,
    pub job_id: u64,
    pub task_id: u64,
    /// The HTTP status the pool answered with.
    pub status: u16,
    pub code: String,
    pub message: String,
}

/// A pool-signed receipt, as kept: `ledger verify` checks its signature
/// against the key pinned for the pool.
#[derive(Debug, Clone, Serialize, Deserialize, TS)]
pub struct ReceiptBody {
    pub pool: String,
    #[ts(type = "string")]
    pub pool_public_key: PublicKey,
    /// The pool's signed payload (a `Receipt` as JSON text) and signature.
    #[ts(type = "{ payload: string; signature: string }")]
    pub receipt: Signed<Receipt>,
    /// The pool's published rate when the receipt came (`/v1/info`), which
    /// values its credits: the earnings. Absent where the pool does not pay.
    #[ts(optional, type = "{ per_credit: number; currency: string }")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payout: Option<Payout>,
}

impl PartialEq for ReceiptBody {
    fn eq(&self, other: &Self) -> bool {
        self.pool == other.pool
            && self.pool_public_key == other.pool_public_key
            && self.receipt.payload == other.receipt.payload
            && self.receipt.signature == other.receipt.signature
            && self.payout == other.payout
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
pub struct TrafficBody {
    pub pool: String,
    pub sent_bytes: u64,
    pub received_bytes: u64,
}

/// Why work paused, or resumed: the governor's reasons then.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
pub struct PauseBody {
    pub reasons: Vec<Reason>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
pub struct PoolLeft {
    pub pool: String,
    #[ts(type = "string")]
    pub pool_public_key: PublicKey,
}

/// An entry this build cannot read: its kind and body as stored, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
pub struct Unreadable {
    pub kind: String,
    pub body: String,
    pub why: String,
}

/// Totals over some entries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, TS)]
pub struct Totals {
    pub tasks_finished: u64,
    pub tasks_failed: u64,
    pub cpu_s: f64,
    pub gpu_s: f64,
    /// Joules; an estimate unless every task was measured by RAPL.
    pub energy_j: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub receipts: u64,
    pub credits: f64,
    /// Credits valued at the paying pools' published rates, per currency.
    pub earnings: BTreeMap<String, f64>,
    pub pauses: u64,
}

/// What was disclosed, when and to which pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
pub struct Disclosure {
    pub at_ms: u64,
    pub pool: String,
    pub fields: BTreeMap<String, String>,
}

/// The ledger summed up for people (the `ledger_summary` request).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, TS)]
pub struct LedgerSummary {
    pub totals: Totals,
    /// Keyed by local date, `YYYY-MM-DD`.
    pub per_day: BTreeMap<String, Totals>,
    pub per_pool: BTreeMap<String, Totals>,
    pub disclosures: Vec<Disclosure>,
}

/// The first entry that does not verify, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
pub struct BadEntry {
    pub seq: u64,
    pub reason: String,
}

/// What `ledger verify` found (the `ledger_verify` request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
pub struct VerifyReport {
    pub entries: u64,
    pub receipts_checked: u64,
    /// Hash of the last entry: anchors the whole chain (empty: no entries).
    pub head: String,
    pub first_bad: Option<BadEntry>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.first_bad.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_reads_back_as_written_and_an_unknown_one_is_kept_whole() {
        let entry = LedgerEntry::Traffic(TrafficBody { pool: "https://p".into(), sent_bytes: 3, received_bytes: 9 });
        let body = entry.body_text().unwrap();
        // Keys sorted, as the json! bodies before were.
        assert_eq!(body, r#"{"pool":"https://p","received_bytes":9,"sent_bytes":3}"#);
        assert_eq!(LedgerEntry::read(entry.kind(), &body), entry);
        // A newer agent's kind, and a body that lost a field: kept, with why.
        for (kind, body) in [("quota_used", "{}"), ("traffic", r#"{"pool":"https://p"}"#), ("traffic", "not json")] {
            match LedgerEntry::read(kind, body) {
                LedgerEntry::Unreadable(u) => {
                    assert_eq!((u.kind.as_str(), u.body.as_str()), (kind, body));
                    assert!(!u.why.is_empty());
                }
                other => panic!("{kind} {body} read as {other:?}"),
            }
        }
        // Nothing stored can pass itself off as unreadable, and unreadable is never written.
        let forged = LedgerEntry::read("unreadable", r#"{"kind":"receipt","body":"{}","why":"x"}"#);
        assert!(matches!(&forged, LedgerEntry::Unreadable(u) if u.kind == "unreadable"), "{forged:?}");
        assert_eq!(forged.body_text(), None);
        // The UI's shape: kind and body beside the chain fields.
        let record = LedgerRecord { seq: 1, at_ms: 2, entry, prev_hash: "a".into(), hash: "b".into() };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["kind"], "traffic");
        assert_eq!(json["body"]["received_bytes"], 9);
        assert_eq!(serde_json::from_value::<LedgerRecord>(json).unwrap(), record);
    }
}
