//! Native notifications for the few changes a user should hear about
//! (paused on battery, tasks failing, credit milestones), each once, not on
//! every status tick.

use idlemesh_control::{AgentStatus, ReasonCode};

#[derive(Debug, Default)]
pub struct Notifier {
    battery_told: bool,
    failures_seen: Option<u64>,
    credits_seen: Option<f64>,
}

/// Failed tasks since the last notice that make a notice.
const FAILURES_WORTH_TELLING: u64 = 3;

impl Notifier {
    /// What to tell the user about this status, given what came before.
    pub fn observe(&mut self, status: &AgentStatus) -> Vec<String> {
        let mut out = Vec::new();
        let battery = status
            .reasons
            .iter()
            .filter(|_| status.paused)
            .find(|r| matches!(r.code, ReasonCode::OnBattery | ReasonCode::BatteryLow));
        match battery {
            Some(reason) if !self.battery_told => {
                self.battery_told = true;
                out.push(format!("Paused: {}", reason.text));
            }
            Some(_) => {}
            None => self.battery_told = false,
        }
        let Some(scheduler) = &status.scheduler else { return out };
        let failed = scheduler.summary.tasks_failed;
        let seen = *self.failures_seen.get_or_insert(failed);
        if failed >= seen + FAILURES_WORTH_TELLING {
            self.failures_seen = Some(failed);
            let why = scheduler.last_pool_error.as_ref().map(|e| format!(" Last problem: {e}")).unwrap_or_default();
            out.push(format!("{} tasks failed on this computer recently.{why}", failed - seen));
        }
        let credits = scheduler.summary.credits;
        let seen = *self.credits_seen.get_or_insert(credits);
        if let Some(m) = milestone_crossed(seen, credits) {
            out.push(format!("You have earned {m} credits with this computer. Thank you!"));
        }
        self.credits_seen = Some(credits);
        out
    }
}

/// The highest of 10, 100, 1,000 … passed on the way from `before` to `now`.
fn milestone_crossed(before: f64, now: f64) -> Option<u64> {
    let mut m = 10u64;
    let mut crossed = None;
    while (m as f64) <= now {
        if (m as f64) > before {
            crossed = Some(m);
        }
        m = m.checked_mul(10)?;
    }
    crossed
}

/// Shows `message` as a desktop notification, off the tray's UI thread (a
/// slow notification service must not hold up the menu).
pub fn show(message: &str) {
    let message = message.to_owned();
    std::thread::spawn(move || {
        let shown = notify_rust::Notification::new().appname("Idlemesh").summary("Idlemesh").body(&message).show();
        if let Err(e) = shown {
            // No notification service (a bare X session): the tray still says it.
            tracing::debug!(error = %e, "notification not shown");
        }
    });
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn status(paused: bool, code: &str, failed: u64, credits: f64) -> AgentStatus {
        serde_json::from_value(json!({
            "state": if paused { "paused" } else { "working" },
            "paused": paused,
            "reasons": [{"code": code, "text": "on battery 41% < 50%"}],
            "decision": null, "manual_pause": null, "sensors": null, "workers": null, "sandbox": null,
            "sandbox_in_words": null, "pool_problem": null, "pool_problem_code": null, "pool_retry_at_ms": null,
            "pool_said": null, "settings": {}, "settings_errors": [], "policy_errors": [], "files": null,
            "agent": null, "temporary_pool": null,
            "scheduler": {"pool": "http://p", "device_id": 1, "managed_by": null, "slots": 1, "current_task": null,
                          "current_tasks": [], "last_pool_error": null,
                          "summary": {"tasks_finished": 0, "tasks_failed": failed, "tasks_refused": 0, "cpu_ms": 0,
                                      "wall_ms": 0, "credits": credits, "receipts": 0, "results_pending": 0}},
        }))
        .expect("a status")
    }

    #[test]
    fn each_change_is_told_once() {
        let mut n = Notifier::default();
        assert!(n.observe(&status(false, "power_ok", 0, 0.0)).is_empty());
        assert_eq!(n.observe(&status(true, "on_battery", 0, 0.0)), ["Paused: on battery 41% < 50%"]);
        assert!(n.observe(&status(true, "on_battery", 0, 0.0)).is_empty(), "not again while it lasts");
        assert!(n.observe(&status(false, "power_ok", 2, 9.0)).is_empty());
        assert_eq!(n.observe(&status(true, "battery_low", 2, 9.0)).len(), 1, "a new battery pause is told");
        let told = n.observe(&status(false, "power_ok", 3, 12.0));
        assert_eq!(told.len(), 2, "{told:?}");
        assert!(told[0].starts_with("3 tasks failed"), "{told:?}");
        assert!(told[1].contains("10 credits"), "{told:?}");
        assert!(n.observe(&status(false, "power_ok", 4, 99.0)).is_empty());
        assert!(n.observe(&status(false, "power_ok", 4, 1500.0))[0].contains("1000 credits"));
    }

    #[test]
    fn milestones() {
        assert_eq!(milestone_crossed(0.0, 9.9), None);
        assert_eq!(milestone_crossed(9.0, 10.0), Some(10));
        assert_eq!(milestone_crossed(10.0, 99.0), None);
        assert_eq!(milestone_crossed(5.0, 150.0), Some(100));
    }
}
