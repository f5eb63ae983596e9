//! Results waiting for the pool: written before the first upload, deleted
//! only once the pool has answered. A pool that is down for hours, or an
//! agent killed between finishing a task and reporting it, loses nothing.
//!
//! The same file keeps the leases being worked on (`inflight`), so an agent
//! killed mid-task resumes them from their checkpoint when it starts again,
//! or gives them back if their deadline is gone.

use std::path::Path;

use idlemesh_protocol::api::ResultSubmission;
use idlemesh_protocol::{Signed, TaskManifest};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::ledger::LedgerError;

/// One result to deliver, with what is needed to check its receipt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Pending {
    pub pool: String,
    pub job_id: u64,
    pub task_id: u64,
    pub device_id: u64,
    pub submission: ResultSubmission,
}

/// Results not yet delivered, and the leases being worked on.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS outbox (
    lease_id INTEGER PRIMARY KEY,
    pending TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS inflight (
    lease_id INTEGER PRIMARY KEY,
    manifest TEXT NOT NULL
);";

#[derive(Debug)]
pub(crate) struct Outbox {
    conn: Connection,
}

impl Outbox {
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        // An acknowledged task must survive power loss: its result is here.
        Ok(Self { conn: crate::durable::open(path, SCHEMA)? })
    }

    /// Queues a result; its lease stops being in flight in the same transaction.
    pub fn put(&mut self, p: &Pending) -> Result<(), LedgerError> {
        let text = serde_json::to_string(p).expect("pending results serialise");
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO outbox (lease_id, pending) VALUES (?1, ?2)",
            params![p.submission.lease_id as i64, text],
        )?;
        tx.execute("DELETE FROM inflight WHERE lease_id = ?1", [p.submission.lease_id as i64])?;
        tx.commit()?;
        Ok(())
    }

    /// Remembers a lease being worked on, with its signed manifest.
    pub fn start(&self, lease_id: u64, manifest: &Signed<TaskManifest>) -> Result<(), LedgerError> {
        let text = serde_json::to_string(manifest).expect("manifests serialise");
        self.conn.execute(
            "INSERT OR REPLACE INTO inflight (lease_id, manifest) VALUES (?1, ?2)",
            params![lease_id as i64, text],
        )?;
        Ok(())
    }

    /// The lease ended without a result (failed, given back).
    pub fn forget(&self, lease_id: u64) -> Result<(), LedgerError> {
        self.conn.execute("DELETE FROM inflight WHERE lease_id = ?1", [lease_id as i64])?;
        Ok(())
    }

    /// Leases an earlier run was working on when it stopped.
    pub fn inflight(&self) -> Result<Vec<Signed<TaskManifest>>, LedgerError> {
        let mut stmt = self.conn.prepare("SELECT manifest FROM inflight ORDER BY lease_id")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows.iter().filter_map(|t| serde_json::from_str(t).ok()).collect())
    }

    /// Leases whose results for `pool` wait here for delivery.
    pub fn pending_leases(&self, pool: &str) -> Result<Vec<u64>, LedgerError> {
        let mut stmt = self.conn.prepare("SELECT pending FROM outbox ORDER BY lease_id")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows
            .iter()
            .filter_map(|t| serde_json::from_str::<Pending>(t).ok())
            .filter(|p| p.pool == pool)
            .map(|p| p.submission.lease_id)
            .collect())
    }

    /// The oldest result that is due, if any.
    pub fn next_due(&self, now_ms: u64) -> Result<Option<(Pending, u32)>, LedgerError> {
        let row: Option<(String, i64)> = self
            .conn
            .query_row(
                "SELECT pending, attempts FROM outbox WHERE next_attempt_ms <= ?1 ORDER BY lease_id LIMIT 1",
                [now_ms as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(row.and_then(|(text, attempts)| match serde_json::from_str(&text) {
            Ok(p) => Some((p, attempts as u32)),
            Err(e) => {
                tracing::error!(error = %e, "unreadable entry in the outbox");
                None
            }
        }))
    }

    pub fn len(&self) -> Result<u64, LedgerError> {
        Ok(self.conn.query_row("SELECT count(*) FROM outbox", [], |r| r.get::<_, i64>(0))? as u64)
    }

    pub fn done(&self, lease_id: u64) -> Result<(), LedgerError> {
        self.conn.execute("DELETE FROM outbox WHERE lease_id = ?1", [lease_id as i64])?;
        Ok(())
    }

    pub fn retry_later(&self, lease_id: u64, attempts: u32, next_attempt_ms: u64) -> Result<(), LedgerError> {
        self.conn.execute(
            "UPDATE outbox SET attempts = ?1, next_attempt_ms = ?2 WHERE lease_id = ?3",
            params![attempts as i64, next_attempt_ms as i64, lease_id as i64],
        )?;
        Ok(())
    }
}

/// Exponential backoff with full jitter: 0.5 s doubling up to 5 minutes,
/// then a random point below that, so a thousand agents coming back after an
/// outage do not all knock at once.
pub(crate) fn backoff_ms(attempts: u32, random: u64) -> u64 {
    let ceiling = 500u64.saturating_mul(1 << attempts.min(20)).min(5 * 60 * 1000);
    ceiling / 2 + random % (ceiling / 2).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use idlemesh_protocol::Sha256;

    fn pending(lease: u64) -> Pending {
        Pending {
            pool: "p".into(),
            job_id: 1,
            task_id: lease,
            device_id: 1,
            submission: ResultSubmission {
                lease_id: lease,
                lease_token: "t".into(),
                output_sha256: Sha256::of(b"o"),
                output: b"o".to_vec().into(),
                fuel: None,
                wall_ms: 1,
                cpu_ms: 1,
            },
        }
    }

    #[test]
    fn results_survive_reopening_and_wait_their_turn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.sqlite");
        {
            let mut o = Outbox::open(&path).unwrap();
            o.put(&pending(7)).unwrap();
            o.put(&pending(3)).unwrap();
        }
        let o = Outbox::open(&path).unwrap();
        assert_eq!(o.len().unwrap(), 2);
        let (first, attempts) = o.next_due(10).unwrap().unwrap();
        assert_eq!((first.submission.lease_id, attempts), (3, 0));
        o.retry_later(3, 1, 1_000).unwrap();
        assert_eq!(o.next_due(10).unwrap().unwrap().0.submission.lease_id, 7);
        o.done(7).unwrap();
        assert!(o.next_due(10).unwrap().is_none(), "3 is not due until 1000");
        assert_eq!(o.next_due(1_000).unwrap().unwrap().1, 1);
    }

    #[test]
    fn backoff_grows_with_jitter_and_a_ceiling() {
        assert!((250..500).contains(&backoff_ms(0, 123)));
        assert!((4_000..8_000).contains(&backoff_ms(4, 999_999)));
        assert!(backoff_ms(40, u64::MAX) <= 5 * 60 * 1000);
        assert_ne!(backoff_ms(6, 1), backoff_ms(6, 2));
    }
}
