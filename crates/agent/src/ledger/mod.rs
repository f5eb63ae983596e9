//! The local ledger: append-only, hash-chained entries in SQLite.
//!
//! Each entry's hash covers its sequence number, time, kind, body and the
//! previous entry's hash, so changing any byte of any entry breaks the chain
//! from there on, and [`Ledger::verify`] names the first entry that no longer
//! matches. Receipt entries carry the pool's signature, which verify checks
//! too. Writes use `synchronous=FULL`: an entry that `append` returned is on
//! disk. [`summarise`] sums it up for people (the dashboard, `ledger show
//! --summary`).

mod summary;

use std::path::Path;

pub use idlemesh_control::{BadEntry, LedgerEntry, LedgerRecord, VerifyReport};
use idlemesh_protocol::{PublicKey, Sha256};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
pub(crate) use summary::{DailyTransfer, local_day};
pub use summary::{LedgerSummary, Totals, summarise};

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger database {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("ledger database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("{0} is not an Idlemesh ledger (no entries table)")]
    NotALedger(String),
    #[error("an entry of kind {0} is only read, never written")]
    Unwritable(&'static str),
}

/// One ledger entry as stored (the body as JSON text, as it was hashed).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub seq: u64,
    pub at_ms: u64,
    pub kind: String,
    /// JSON text.
    pub body: String,
    pub prev_hash: String,
    pub hash: String,
}

impl Entry {
    /// The entry read through the control API's types.
    pub fn record(&self) -> LedgerRecord {
        LedgerRecord {
            seq: self.seq,
            at_ms: self.at_ms,
            entry: LedgerEntry::read(&self.kind, &self.body),
            prev_hash: self.prev_hash.clone(),
            hash: self.hash.clone(),
        }
    }
}

fn entry_hash(seq: u64, at_ms: u64, kind: &str, body: &str, prev_hash: &str) -> String {
    let text = format!("idlemesh-ledger-v1\n{seq}\n{at_ms}\n{kind}\n{body}\n{prev_hash}");
    Sha256::of(text.as_bytes()).to_hex()
}

/// One row per entry, each holding the hash of the one before.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);";

#[derive(Debug)]
pub struct Ledger {
    conn: Connection,
}

impl Ledger {
    /// Opens or creates the ledger at `path`.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        Ok(Self { conn: crate::durable::open(path, SCHEMA)? })
    }

    /// Opens an existing ledger without creating anything (for `verify`/`show`).
    pub fn open_existing(path: &Path) -> Result<Self, LedgerError> {
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE;
        let conn = Connection::open_with_flags(path, flags)
            .map_err(|source| LedgerError::Open { path: path.display().to_string(), source })?;
        let has_table: bool = conn
            .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'entries'", [], |r| r.get(0))
            .map_err(|source| LedgerError::Open { path: path.display().to_string(), source })?;
        if !has_table {
            return Err(LedgerError::NotALedger(path.display().to_string()));
        }
        Ok(Self { conn })
    }

    /// Appends an entry and returns it. The read of the previous hash and the
    /// insert are one immediate transaction, so concurrent writers chain, not fork.
    pub fn append(&mut self, kind: &str, body: &impl Serialize) -> Result<Entry, LedgerError> {
        self.append_text(kind, serde_json::to_string(body).expect("ledger bodies serialise"))
    }

    fn append_text(&mut self, kind: &str, body: String) -> Result<Entry, LedgerError> {
        let at_ms = crate::now_ms();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let last: Option<(i64, String)> = tx
            .query_row("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let (seq, prev_hash) = match last {
            Some((seq, hash)) => (seq as u64 + 1, hash),
            None => (1, GENESIS.to_owned()),
        };
        let hash = entry_hash(seq, at_ms, kind, &body, &prev_hash);
        tx.execute(
            "INSERT INTO entries (seq, at_ms, kind, body, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![seq as i64, at_ms as i64, kind, body, prev_hash, hash],
        )?;
        tx.commit()?;
        Ok(Entry { seq, at_ms, kind: kind.to_owned(), body, prev_hash, hash })
    }

    /// Appends one typed entry: its kind and its body as JSON text.
    pub fn record(&mut self, entry: &LedgerEntry) -> Result<Entry, LedgerError> {
        let body = entry.body_text().ok_or(LedgerError::Unwritable(entry.kind()))?;
        self.append_text(entry.kind(), body)
    }

    /// Entries in order, optionally only of one kind.
    pub fn entries(&self, kind: Option<&str>) -> Result<Vec<Entry>, LedgerError> {
        self.query(
            "SELECT seq, at_ms, kind, body, prev_hash, hash FROM entries WHERE ?1 IS NULL OR kind = ?1 ORDER BY seq",
            rusqlite::params![kind],
        )
    }

    /// Entries after `seq`, in order: for readers that follow the ledger as it grows.
    pub fn entries_after(&self, seq: u64) -> Result<Vec<Entry>, LedgerError> {
        self.query(
            "SELECT seq, at_ms, kind, body, prev_hash, hash FROM entries WHERE seq > ?1 ORDER BY seq",
            rusqlite::params![seq as i64],
        )
    }

    fn query(&self, sql: &str, params: impl rusqlite::Params) -> Result<Vec<Entry>, LedgerError> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map(params, |r| {
            Ok(Entry {
                seq: r.get::<_, i64>(0)? as u64,
                at_ms: r.get::<_, i64>(1)? as u64,
                kind: r.get(2)?,
                body: r.get(3)?,
                prev_hash: r.get(4)?,
                hash: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Recomputes the chain and checks every receipt's signature against
    /// the key pinned for its pool: `policy_key` (the IT policy's
    /// `pool_public_key`) where set, else the key this device enrolled with
    /// (the pool's latest `enrollment` disclosure since it last left that
    /// pool), never the key the receipt's own entry names, which whoever
    /// forges the receipt would write too.
    pub fn verify(&self, policy_key: Option<&PublicKey>) -> Result<VerifyReport, LedgerError> {
        let mut report = VerifyReport { entries: 0, receipts_checked: 0, head: GENESIS.to_owned(), first_bad: None };
        let mut expected_prev = GENESIS.to_owned();
        let mut enrolled = std::collections::HashMap::<String, PublicKey>::new();
        for (i, e) in self.entries(None)?.into_iter().enumerate() {
            report.entries += 1;
            let bad = |broken: Broken| Some(BadEntry { seq: e.seq, reason: broken.to_string() });
            let problem = if e.seq != i as u64 + 1 {
                bad(Broken::Sequence { found: e.seq, expected: i as u64 + 1 })
            } else if e.prev_hash != expected_prev {
                bad(Broken::Link)
            } else if entry_hash(e.seq, e.at_ms, &e.kind, &e.body, &e.prev_hash) != e.hash {
                bad(Broken::Altered)
            } else if e.kind == "receipt" {
                report.receipts_checked += 1;
                check_receipt(&LedgerEntry::read(&e.kind, &e.body), |pool| policy_key.or(enrolled.get(pool)))
                    .err()
                    .and_then(bad)
            } else if policy_key.is_none() {
                track_pins(&LedgerEntry::read(&e.kind, &e.body), &mut enrolled).err().and_then(bad)
            } else {
                // The organisation's pin decides alone: an earlier key this
                // device trusted on its own is history, not tampering.
                None
            };
            if problem.is_some() {
                report.first_bad = problem;
                return Ok(report);
            }
            expected_prev = e.hash.clone();
            report.head = e.hash;
        }
        Ok(report)
    }
}

/// The key an `enrollment` disclosure pins for its pool, and a `pool_left`
/// entry unpins (rejoining may then trust a new key, as the agent does).
fn track_pins(entry: &LedgerEntry, enrolled: &mut std::collections::HashMap<String, PublicKey>) -> Result<(), Broken> {
    match entry {
        LedgerEntry::PoolLeft(left) => {
            enrolled.remove(&left.pool);
            Ok(())
        }
        LedgerEntry::Disclosure(d) if d.purpose.as_deref() == Some("enrollment") => {
            let Some(key) = d.pool_public_key else {
                return Err(Broken::EnrollmentWithoutKey(d.pool.clone()));
            };
            match enrolled.get(&d.pool) {
                Some(pinned) if *pinned != key => {
                    Err(Broken::Repinned { pool: d.pool.clone(), offered: Box::new(key), pinned: Box::new(*pinned) })
                }
                Some(_) => Ok(()),
                None => {
                    enrolled.insert(d.pool.clone(), key);
                    Ok(())
                }
            }
        }
        LedgerEntry::Unreadable(u) if matches!(u.kind.as_str(), "disclosure" | "pool_left") => {
            Err(Broken::Malformed { kind: u.kind.clone(), why: u.why.clone() })
        }
        _ => Ok(()),
    }
}

/// The kind of the entry written when the device leaves a pool.
pub const POOL_LEFT: &str = "pool_left";

/// The body of a `receipt` entry.
pub(crate) type ReceiptEntry = idlemesh_control::ReceiptBody;

fn check_receipt<'a>(entry: &LedgerEntry, pinned: impl FnOnce(&str) -> Option<&'a PublicKey>) -> Result<(), Broken> {
    let entry = match entry {
        LedgerEntry::Receipt(r) => r,
        LedgerEntry::Unreadable(u) => return Err(Broken::Malformed { kind: "receipt".into(), why: u.why.clone() }),
        _ => return Err(Broken::NotAReceipt),
    };
    let Some(key) = pinned(&entry.pool) else {
        return Err(Broken::NotEnrolled(entry.pool.clone()));
    };
    if entry.pool_public_key != *key {
        return Err(Broken::OtherKey {
            pool: entry.pool.clone(),
            named: Box::new(entry.pool_public_key),
            pinned: Box::new(*key),
        });
    }
    entry.receipt.verify(key).map(drop).map_err(|source| Broken::Signature { pool: entry.pool.clone(), source })
}

/// Why [`Ledger::verify`] stops at an entry; its words are the report's reason.
#[derive(Debug, thiserror::Error)]
enum Broken {
    #[error("sequence number {found} where {expected} was expected: an entry was removed or inserted")]
    Sequence { found: u64, expected: u64 },
    #[error("its link to the previous entry does not match that entry's hash")]
    Link,
    #[error("its content does not match its hash: the entry was altered")]
    Altered,
    #[error("enrollment with {0} names no pool key")]
    EnrollmentWithoutKey(String),
    #[error(
        "enrollment with {pool} under the key {} while this device had pinned {} for that pool and never left it",
        offered.fingerprint(), pinned.fingerprint()
    )]
    Repinned { pool: String, offered: Box<PublicKey>, pinned: Box<PublicKey> },
    #[error("{kind} entry is malformed: {why}")]
    Malformed { kind: String, why: String },
    #[error("receipt entry is malformed")]
    NotAReceipt,
    #[error("a receipt from {0}, a pool this device has no enrollment with")]
    NotEnrolled(String),
    #[error(
        "a receipt from {pool} names the pool key {}, but the key pinned for that pool is {}",
        named.fingerprint(), pinned.fingerprint()
    )]
    OtherKey { pool: String, named: Box<PublicKey>, pinned: Box<PublicKey> },
    #[error("receipt signature from {pool}: {source}")]
    Signature {
        pool: String,
        #[source]
        source: idlemesh_protocol::ProtocolError,
    },
}

/// A receipt for tests of what reads the ledger.
/// RFC 3339 UTC time with milliseconds, as the exports write it.
pub fn format_time(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// The entries as CSV (RFC 4180 quoting), one row per entry, bodies as JSON text.
pub fn to_csv(entries: &[Entry]) -> String {
    fn field(s: &str) -> String {
        if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
    }
    let mut out = String::from("seq,at,kind,body,prev_hash,hash\n");
    for e in entries {
        let row = [
            e.seq.to_string(),
            format_time(e.at_ms),
            e.kind.clone(),
            e.body.clone(),
            e.prev_hash.clone(),
            e.hash.clone(),
        ];
        out.push_str(&row.iter().map(|f| field(f)).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
pub(crate) fn sample_receipt(credits: f64) -> idlemesh_protocol::Receipt {
    idlemesh_protocol::Receipt {
        receipt_id: 1,
        device_id: 1,
        job_id: 1,
        task_id: 1,
        replica_id: 1,
        output_sha256: Sha256::of(b"x"),
        fuel: None,
        credits,
        wall_ms: 1,
        cpu_ms: 1,
        issued_at_ms: 1,
    }
}

#[cfg(test)]
mod tests {
    use idlemesh_protocol::Signed;
    use serde_json::json;

    use super::*;

    #[test]
    fn chain_verifies_and_names_the_altered_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        let mut ledger = Ledger::open(&path).unwrap();
        for i in 0..5 {
            ledger.append("task_finished", &json!({"task": i, "cpu_ms": 10})).unwrap();
        }
        let report = ledger.verify(None).unwrap();
        assert!(report.ok());
        assert_eq!(report.entries, 5);

        ledger
            .conn
            .execute("UPDATE entries SET body = replace(body, '\"task\":2', '\"task\":9') WHERE seq = 3", [])
            .unwrap();
        let report = ledger.verify(None).unwrap();
        assert_eq!(report.first_bad.as_ref().map(|b| b.seq), Some(3), "{report:?}");

        // Recomputing the altered entry's own hash only moves the break to the next link.
        let e = &ledger.entries(None).unwrap()[2];
        let rehashed = entry_hash(e.seq, e.at_ms, &e.kind, &e.body, &e.prev_hash);
        ledger.conn.execute("UPDATE entries SET hash = ?1 WHERE seq = 3", [rehashed]).unwrap();
        assert_eq!(ledger.verify(None).unwrap().first_bad.map(|b| b.seq), Some(4));
    }

    #[test]
    fn removed_entries_and_forged_receipts_are_caught() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(&dir.path().join("l.sqlite")).unwrap();
        let key = idlemesh_protocol::Keypair::generate().unwrap();
        enroll(&mut ledger, "p", &key.public());
        let receipt = sample_receipt(1.0);
        let mut signed = Signed::sign(&receipt, &key);
        ledger
            .append(
                "receipt",
                &ReceiptEntry {
                    pool: "p".into(),
                    pool_public_key: key.public(),
                    receipt: signed.clone(),
                    payout: None,
                },
            )
            .unwrap();
        assert_eq!(ledger.verify(None).unwrap().receipts_checked, 1);
        // A receipt whose credits were inflated before it was chained: the chain holds, the signature does not.
        signed.payload = signed.payload.replace("\"credits\":1.0", "\"credits\":100.0");
        ledger
            .append(
                "receipt",
                &ReceiptEntry { pool: "p".into(), pool_public_key: key.public(), receipt: signed, payout: None },
            )
            .unwrap();
        let report = ledger.verify(None).unwrap();
        assert_eq!(report.first_bad.as_ref().map(|b| b.seq), Some(3));
        assert!(report.first_bad.unwrap().reason.contains("receipt signature"));

        let mut ledger = Ledger::open(&dir.path().join("m.sqlite")).unwrap();
        for i in 0..3 {
            ledger.append("pause", &json!({"i": i})).unwrap();
        }
        ledger.conn.execute("DELETE FROM entries WHERE seq = 2", []).unwrap();
        assert_eq!(ledger.verify(None).unwrap().first_bad.map(|b| b.seq), Some(3));
    }

    fn enroll(ledger: &mut Ledger, pool: &str, key: &PublicKey) {
        let body = json!({"pool": pool, "pool_public_key": key, "purpose": "enrollment", "fields": {}});
        ledger.append("disclosure", &body).unwrap();
    }

    fn receipt(ledger: &mut Ledger, pool: &str, signer: &idlemesh_protocol::Keypair) {
        let entry = ReceiptEntry {
            pool: pool.into(),
            pool_public_key: signer.public(),
            receipt: Signed::sign(&sample_receipt(1.0), signer),
            payout: None,
        };
        ledger.append("receipt", &entry).unwrap();
    }

    #[test]
    fn receipts_are_checked_against_the_pinned_key_not_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let pool = idlemesh_protocol::Keypair::generate().unwrap();
        let forger = idlemesh_protocol::Keypair::generate().unwrap();

        // Honest: enrolled with the pool's key, receipts signed by it.
        let mut ledger = Ledger::open(&dir.path().join("a.sqlite")).unwrap();
        enroll(&mut ledger, "http://p", &pool.public());
        receipt(&mut ledger, "http://p", &pool);
        assert!(ledger.verify(None).unwrap().ok());
        assert!(ledger.verify(Some(&pool.public())).unwrap().ok());
        // The organisation pinned another key: every receipt is refused, naming both.
        let report = ledger.verify(Some(&forger.public())).unwrap();
        let bad = report.first_bad.expect("refused");
        assert_eq!(bad.seq, 2);
        assert!(
            bad.reason.contains(&pool.public().fingerprint()) && bad.reason.contains(&forger.public().fingerprint())
        );

        // A receipt signed by a key of its own choosing, naming that key: its
        // signature is valid, yet it is not the pool's.
        receipt(&mut ledger, "http://p", &forger);
        let bad = ledger.verify(None).unwrap().first_bad.expect("refused");
        assert_eq!(bad.seq, 3);
        assert!(bad.reason.contains("the key pinned for that pool is"), "{}", bad.reason);

        // A receipt from a pool never enrolled with.
        let mut ledger = Ledger::open(&dir.path().join("b.sqlite")).unwrap();
        receipt(&mut ledger, "http://elsewhere", &forger);
        assert!(ledger.verify(None).unwrap().first_bad.unwrap().reason.contains("no enrollment"));

        // A second enrollment under a new key without leaving the pool is named;
        // after leaving it, the new key is the pin.
        let mut ledger = Ledger::open(&dir.path().join("c.sqlite")).unwrap();
        enroll(&mut ledger, "http://p", &pool.public());
        enroll(&mut ledger, "http://p", &forger.public());
        assert_eq!(ledger.verify(None).unwrap().first_bad.map(|b| b.seq), Some(2));
        let mut ledger = Ledger::open(&dir.path().join("d.sqlite")).unwrap();
        enroll(&mut ledger, "http://p", &pool.public());
        ledger.append(POOL_LEFT, &json!({"pool": "http://p", "pool_public_key": pool.public()})).unwrap();
        enroll(&mut ledger, "http://p", &forger.public());
        receipt(&mut ledger, "http://p", &forger);
        assert!(ledger.verify(None).unwrap().ok());
    }
}
