//! Read models over the ledger for people: totals, per day, per pool, and
//! what was disclosed to whom. Built from the entries themselves (receipt
//! credits from the pool-signed payloads), so they can be recomputed and
//! checked at any time; nothing here is stored separately.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::ledger::{Entry, ReceiptEntry};

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
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

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Disclosure {
    pub at_ms: u64,
    pub pool: String,
    pub fields: Value,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LedgerSummary {
    pub totals: Totals,
    /// Keyed by local date, `YYYY-MM-DD`.
    pub per_day: BTreeMap<String, Totals>,
    pub per_pool: BTreeMap<String, Totals>,
    pub disclosures: Vec<Disclosure>,
}

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
        let body: Value = serde_json::from_str(&e.body).unwrap_or(Value::Null);
        let pool = body["pool"].as_str().unwrap_or("").to_string();
        let mut add = |f: &dyn Fn(&mut Totals)| {
            f(&mut out.totals);
            f(out.per_day.entry(local_day(e.at_ms, tz)).or_default());
            if !pool.is_empty() {
                f(out.per_pool.entry(pool.clone()).or_default());
            }
        };
        let num = |k: &str| body[k].as_f64().unwrap_or(0.0);
        match e.kind.as_str() {
            "task_finished" | "task_failed" => {
                let finished = e.kind == "task_finished";
                let (cpu, gpu, energy) = (num("cpu_ms") / 1e3, num("gpu_ms") / 1e3, num("energy_j"));
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
            "traffic" => {
                let (received, sent) = (num("received_bytes") as u64, num("sent_bytes") as u64);
                add(&|t| {
                    t.bytes_in += received;
                    t.bytes_out += sent;
                });
            }
            "receipt" => {
                let credited = serde_json::from_str::<ReceiptEntry>(&e.body)
                    .ok()
                    .and_then(|r| r.receipt.verify(&r.pool_public_key).ok().map(|v| (r.pool_public_key, v, r.payout)))
                    .filter(|(key, v, _)| seen_receipts.insert((key.to_hex(), v.receipt_id)))
                    .map(|(_, v, payout)| (v.credits, payout.and_then(|p| p.checked().ok())));
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
            "paused" => add(&|t| t.pauses += 1),
            "disclosure" => {
                out.disclosures.push(Disclosure { at_ms: e.at_ms, pool: pool.clone(), fields: body["fields"].clone() })
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
            let body: Value = serde_json::from_str(&e.body).unwrap_or(Value::Null);
            self.downloaded += body["received_bytes"].as_u64().unwrap_or(0);
            self.uploaded += body["sent_bytes"].as_u64().unwrap_or(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use idlemesh_protocol::{Keypair, Signed};
    use serde_json::json;

    use super::*;
    use crate::ledger::Ledger;

    #[test]
    fn totals_per_day_and_pool_from_real_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open(&dir.path().join("l.sqlite")).unwrap();
        l.append("disclosure", &json!({"pool": "http://a", "fields": {"cores": "8"}})).unwrap();
        for (pool, cpu) in [("http://a", 1500), ("http://a", 500), ("http://b", 1000)] {
            l.append(
                "task_finished",
                &json!({"pool": pool, "cpu_ms": cpu, "energy_j": 10.0, "bytes_in": 100, "output_bytes": 7}),
            )
            .unwrap();
        }
        l.append("task_failed", &json!({"pool": "http://b", "cpu_ms": 250, "bytes_in": 50, "output_bytes": 9}))
            .unwrap();
        // Traffic counts come from the HTTP client's entries, not the tasks' sizes.
        for (pool, sent, received) in [("http://a", 14, 300), ("http://b", 7, 50)] {
            l.append("traffic", &json!({"pool": pool, "sent_bytes": sent, "received_bytes": received})).unwrap();
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
        l.append("paused", &json!({"reasons": []})).unwrap();

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
        l.append("traffic", &json!({"pool": "http://a", "sent_bytes": 1, "received_bytes": 1000})).unwrap();
        t.update(&l, &today, &jiff::tz::TimeZone::UTC);
        assert_eq!((t.downloaded, t.uploaded), (1350, 22), "only the new entry is added");
        t.update(&l, "2999-01-01", &jiff::tz::TimeZone::UTC);
        assert_eq!((t.downloaded, t.uploaded), (0, 0), "a new day starts from zero");
    }
}
