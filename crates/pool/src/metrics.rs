//! What this replica served, for Prometheus. The pool's own counts (jobs,
//! tasks, devices, credits) come from the database and read the same from
//! every replica; these tell the replicas apart behind a load balancer.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub(crate) struct Replica {
    /// Responses by status class: 2xx, 3xx, 4xx, 5xx.
    responses: [AtomicU64; 4],
    /// Database operations run again after PostgreSQL aborted them (deadlocks, a lost connection).
    retried: AtomicU64,
}

impl Replica {
    pub fn responded(&self, status: u16) {
        if let Some(counter) = (status / 100).checked_sub(2).and_then(|i| self.responses.get(i as usize)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn retried(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::from("# TYPE idlemesh_pool_replica_responses_total counter\n");
        for (i, class) in ["2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
            text += &format!(
                "idlemesh_pool_replica_responses_total{{class=\"{class}\"}} {}\n",
                self.responses[i].load(Ordering::Relaxed)
            );
        }
        text += &format!(
            "# TYPE idlemesh_pool_replica_database_retries_total counter\nidlemesh_pool_replica_database_retries_total {}\n",
            self.retried.load(Ordering::Relaxed)
        );
        text
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn responses_are_counted_by_class() {
        let m = super::Replica::default();
        for status in [200, 201, 204, 404, 503, 101] {
            m.responded(status);
        }
        m.retried();
        let text = m.render();
        assert!(text.contains("class=\"2xx\"} 3\n"), "{text}");
        assert!(text.contains("class=\"4xx\"} 1\n") && text.contains("class=\"5xx\"} 1\n"), "{text}");
        assert!(text.contains("idlemesh_pool_replica_database_retries_total 1\n"), "{text}");
    }
}
