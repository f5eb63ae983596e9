//! Read models over the ledger for people: totals, per day, per pool, and
//! what was disclosed to whom. Built from the entries themselves (receipt
//! credits from the pool-signed payloads), so they can be recomputed and
//! checked at any time; nothing here is stored separately.

use idlemesh_control::LedgerEntry;
pub use idlemesh_control::{Disclosure, LedgerSummary, Totals};

use super::Entry;

/// The local calendar date of a ledger time.
pub fn local_day(at_ms: u64, tz: &jiff::tz::TimeZone) -> String {
    jiff::Timestamp::from_millisecond(at_ms as i64)
        .map(|t| t.to_zoned(tz.clone()).date().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Summarises `entries` (in ledger order) with days in `tz`.
pub fn summarise(entries: &[Entry], tz: &jiff::tz::TimeZone) -> LedgerSummary {
    let mut out = LedgerSummary::default();
    // An agent killed between recording a receipt and clearing its outbox
    // is sent the same receipt again: count each once.
    let mut seen_receipts = std::collections::HashSet::new();
    for e in entries {
        let entry = LedgerEntry::read(&e.kind, &e.body);
        let pool = entry.pool().unwrap_or_default().to_owned();
        let mut add = |f: &dyn Fn(&mut Totals)| {
            f(&mut out.totals);
            f(out.per_day.entry(local_day(e.at_ms, tz)).or_default());
            if !pool.is_empty() {
                f(out.per_pool.entry(pool.clone()).or_default());
            }
        };
        match &entry {
            LedgerEntry::TaskFinished(t) | LedgerEntry::TaskFailed(t) => {
                let finished = matches!(entry, LedgerEntry::TaskFinished(_));
                let (cpu, gpu, energy) = (t.cpu_ms as f64 / 1e3, t.gpu_ms as f64 / 1e3, t.energy_j);
                add(&|t| {
                    if finished {
                        t.tasks_finished += 1;
                    } else {
                        t.tasks_failed += 1;
                    }
                    t.cpu_s += cpu;
                    t.gpu_s += gpu;
                    t.energy_j += energy;
                });
            }
            // Bytes as the HTTP client counted them, every request included.
            LedgerEntry::Traffic(b) => {
                let (received, sent) = (b.received_bytes, b.sent_bytes);
                add(&|t| {
                    t.bytes_in += received;
                    t.bytes_out += sent;
                });
            }
            LedgerEntry::Receipt(r) => {
                let credited = r
                    .receipt
                    .verify(&r.pool_public_key)
                    .ok()
                    .filter(|v| seen_receipts.insert((r.pool_public_key.to_hex(), v.receipt_id)))
                    .map(|v| (v.credits, r.payout.as_ref().and_then(|p| p.checked().ok())));
                // A receipt whose signature fails earns nothing here (verify names it).
                if let Some((c, payout)) = credited {
                    add(&|t| {
                        t.receipts += 1;
                        t.credits += c;
                        if let Some(p) = &payout {
                            *t.earnings.entry(p.currency.clone()).or_default() += c * p.per_credit;
                        }
                    });
                }
            }
            LedgerEntry::Paused(_) => add(&|t| t.pauses += 1),
            LedgerEntry::Disclosure(d) => {
                out.disclosures.push(Disclosure { at_ms: e.at_ms, pool: pool.clone(), fields: d.fields.clone() })
            }
            _ => {}
        }
    }
    out
}

/// Today's bytes in and out, followed incrementally as the ledger grows
/// (for the daily transfer caps).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DailyTransfer {
    pub day: String,
    pub downloaded: u64,
    pub uploaded: u64,
    last_seq: u64,
}

impl DailyTransfer {
    /// Takes in entries newer than those seen; `today` resets the counts when the day changes.
    pub fn update(&mut self, ledger: &crate::Ledger, today: &str, tz: &jiff::tz::TimeZone) {
        if self.day != today {
            *self = Self { day: today.to_string(), last_seq: 0, ..Self::default() };
        }
        let Ok(entries) = ledger.entries_after(self.last_seq) else { return };
        for e in entries {
            self.last_seq = e.seq;
            if e.kind != "traffic" || local_day(e.at_ms, tz) != self.day {
                continue;
            }
            if let LedgerEntry::Traffic(t) = LedgerEntry::read(&e.kind, &e.body) {
                self.downloaded += t.received_bytes;
                self.uploaded += t.sent_bytes;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use idlemesh_control::{Disclosed, PauseBody, TaskEnded, TrafficBody};
    use idlemesh_protocol::{Keypair, Sha256, Signed};

    use super::*;
    use crate::ledger::{Ledger, ReceiptEntry};

    fn ended(pool: &str, cpu_ms: u64, bytes_in: u64) -> TaskEnded {
        TaskEnded {
            pool: pool.into(),
            job_id: 1,
            task_id: 1,
            replica_id: 1,
            kernel_sha256: Sha256::of(b"k"),
            status: "ok".into(),
            error: None,
            output_sha256: None,
            output_bytes: 7,
            wall_ms: cpu_ms,
            cpu_ms,
            gpu_ms: 0,
            fuel: None,
            peak_memory_bytes: 0,
            bytes_in,
            adapter: None,
            energy_j: 10.0,
            energy_method: Some("model".into()),
        }
    }

    fn traffic(pool: &str, sent_bytes: u64, received_bytes: u64) -> LedgerEntry {
        LedgerEntry::Traffic(TrafficBody { pool: pool.into(), sent_bytes, received_bytes })
    }

    #[test]
    fn totals_per_day_and_pool_from_real_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open(&dir.path().join("l.sqlite")).unwrap();
        l.record(&LedgerEntry::Disclosure(Disclosed {
            pool: "http://a".into(),
            pool_name: None,
            pool_public_key: None,
            device_id: None,
            purpose: None,
            organisation: None,
            fields: BTreeMap::from([("cores".to_string(), "8".to_string())]),
            payout: None,
            device_public_key: None,
        }))
        .unwrap();
        for (pool, cpu) in [("http://a", 1500), ("http://a", 500), ("http://b", 1000)] {
            l.record(&LedgerEntry::TaskFinished(ended(pool, cpu, 100))).unwrap();
        }
        l.record(&LedgerEntry::TaskFailed(ended("http://b", 250, 50))).unwrap();
        // Traffic counts come from the HTTP client's entries, not the tasks' sizes.
        for (pool, sent, received) in [("http://a", 14, 300), ("http://b", 7, 50)] {
            l.record(&traffic(pool, sent, received)).unwrap();
        }
        let key = Keypair::generate().unwrap();
        let receipt = crate::ledger::sample_receipt(2.5);
        let entry = ReceiptEntry {
            pool: "http://a".into(),
            pool_public_key: key.public(),
            receipt: Signed::sign(&receipt, &key),
            payout: Some(idlemesh_protocol::api::Payout::new(0.5, "EUR").unwrap()),
        };
        l.append("receipt", &entry).unwrap();
        l.append("receipt", &entry).unwrap(); // the same receipt again: counted once
        // A receipt signed by someone else earns nothing in the summary.
        let forged = ReceiptEntry {
            pool: "http://a".into(),
            pool_public_key: key.public(),
            receipt: Signed::sign(&receipt, &Keypair::generate().unwrap()),
            payout: Some(idlemesh_protocol::api::Payout::new(0.5, "EUR").unwrap()),
        };
        l.append("receipt", &forged).unwrap();
        l.record(&LedgerEntry::Paused(PauseBody { reasons: Vec::new() })).unwrap();
        // A body no type reads counts for nothing, and breaks nothing.
        l.append("task_finished", &serde_json::json!({"pool": "http://a", "cpu_ms": 99})).unwrap();

        let s = summarise(&l.entries(None).unwrap(), &jiff::tz::TimeZone::UTC);
        assert_eq!(s.totals.tasks_finished, 3);
        assert_eq!(s.totals.tasks_failed, 1);
        assert!((s.totals.cpu_s - 3.25).abs() < 1e-9);
        assert_eq!((s.totals.bytes_in, s.totals.bytes_out), (350, 21));
        assert_eq!((s.totals.receipts, s.totals.credits, s.totals.pauses), (1, 2.5, 1));
        assert_eq!(s.per_pool["http://a"].tasks_finished, 2);
        assert_eq!((s.per_pool["http://a"].bytes_out, s.per_pool["http://a"].bytes_in), (14, 300));
        assert_eq!(s.per_pool["http://a"].credits, 2.5);
        // 2.5 credits at 0.5 EUR each; the forged and repeated receipts add nothing.
        assert_eq!(s.totals.earnings, BTreeMap::from([("EUR".to_string(), 1.25)]));
        assert!(s.per_pool["http://b"].earnings.is_empty());
        assert_eq!(s.per_pool["http://b"].tasks_failed, 1);
        assert_eq!(s.per_day.len(), 1);
        assert_eq!(s.per_day.values().next().unwrap(), &s.totals);
        assert_eq!(s.disclosures.len(), 1);
        assert_eq!(s.disclosures[0].fields["cores"], "8");

        let today = local_day(crate::now_ms(), &jiff::tz::TimeZone::UTC);
        let mut t = DailyTransfer::default();
        t.update(&l, &today, &jiff::tz::TimeZone::UTC);
        assert_eq!((t.downloaded, t.uploaded), (350, 21));
        l.record(&traffic("http://a", 1, 1000)).unwrap();
        t.update(&l, &today, &jiff::tz::TimeZone::UTC);
        assert_eq!((t.downloaded, t.uploaded), (1350, 22), "only the new entry is added");
        t.update(&l, "2999-01-01", &jiff::tz::TimeZone::UTC);
        assert_eq!((t.downloaded, t.uploaded), (0, 0), "a new day starts from zero");
    }
}
