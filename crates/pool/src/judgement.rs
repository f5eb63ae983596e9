//! How a task's results are judged: values in, a decision out, no I/O.
//!
//! As BOINC's validator finds the canonical result and compares each one
//! with it, the store reads a task's replicas, asks here what follows, and
//! writes that in the transaction that recorded the result
//! (`store/results.rs`). Two kinds of task are judged:
//!
//! - **By quorum**: the most common value (the output's hash, and the fuel
//!   used where the job is metered) wins once `quorum` devices agree on it,
//!   one result counting alone only from a device that earned it
//!   ([`TrustRules::counts_alone`]). With every replica in and no winner,
//!   one more device is asked, up to twice the replication (at least three
//!   results where trust is earned), and then the task fails.
//! - **Spot checks**, whose right answer the operator knows: each answer is
//!   judged on arrival, even after the task is done, so a late liar is
//!   caught too.

use idlemesh_protocol::api::TaskState;

use crate::trust::{TrustRules, Vote, quorum_value};

/// A result that is in.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ballot<V> {
    pub device_id: i64,
    /// What must agree with the others.
    pub value: V,
    /// The device's (valid, invalid) results before this verdict.
    pub record: (u64, u64),
}

/// What a job asks of its tasks' results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Asked {
    /// Agreeing results that complete a task.
    pub quorum: u32,
    /// Devices each task goes to at first.
    pub replication: u32,
}

/// What follows a result of a task judged by quorum.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision<V> {
    /// A quorum agrees: the task is done with `canonical`, and `valid`
    /// says for each ballot, in order, whether it agreed.
    Done { canonical: V, valid: Vec<bool> },
    /// No quorum yet, and replicas are still out: wait for them.
    Wait,
    /// Every replica is in and none makes a quorum: ask one more device.
    AskAnother,
    /// No quorum after as many results as the job allows: the task fails,
    /// and its job with it.
    Fail,
}

/// Judges a pending task's `ballots` (every result in so far), with
/// `outstanding` replicas still queued or out on lease.
pub(crate) fn by_quorum<V: PartialEq + Clone>(
    ballots: &[Ballot<V>],
    outstanding: usize,
    asked: Asked,
    rules: TrustRules,
) -> Decision<V> {
    let votes: Vec<Vote<V>> = ballots.iter().map(|b| Vote { device_id: b.device_id, value: b.value.clone() }).collect();
    let trusted = |device: i64| {
        ballots.iter().find(|b| b.device_id == device).is_some_and(|b| rules.counts_alone(b.record.0, b.record.1))
    };
    if let Some(canonical) = quorum_value(&votes, asked.quorum, trusted) {
        let valid = ballots.iter().map(|b| b.value == canonical).collect();
        return Decision::Done { canonical, valid };
    }
    if outstanding > 0 {
        return Decision::Wait;
    }
    let most = (2 * asked.replication as usize).max(if rules.checked_results > 0 { 3 } else { 0 });
    if ballots.len() < most { Decision::AskAnother } else { Decision::Fail }
}

/// What follows an answer to a spot check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpotCheck {
    /// Right, and the first right one: the task is done.
    Close,
    /// Wrong, with every replica in: one more device is asked.
    AskAnother,
    /// Wrong, and as many answers as the job allows are in, none right:
    /// the task fails (that says something about the devices, not about
    /// the job, which goes on without it).
    Fail,
    /// Wrong, with replicas still out: wait for them.
    Wait,
    /// The task was closed already: only this answer is judged.
    AlreadyDone,
    /// The task failed already: only this answer is judged.
    AlreadyFailed,
}

impl SpotCheck {
    /// The task's state once this is applied.
    pub fn task_state(self) -> TaskState {
        match self {
            Self::Close | Self::AlreadyDone => TaskState::Done,
            Self::AskAnother | Self::Wait => TaskState::Pending,
            Self::Fail | Self::AlreadyFailed => TaskState::Failed,
        }
    }
}

/// Judges one answer to a spot check: `right` or not, with the task in
/// `state`, `outstanding` replicas still out and `answers` in (this one
/// included).
pub(crate) fn spot_check(state: TaskState, right: bool, outstanding: usize, answers: usize, asked: Asked) -> SpotCheck {
    match (state, right) {
        (TaskState::Pending, true) => SpotCheck::Close,
        (TaskState::Pending, false) if outstanding > 0 => SpotCheck::Wait,
        (TaskState::Pending, false) if answers < 2 * asked.replication as usize => SpotCheck::AskAnother,
        (TaskState::Pending, false) => SpotCheck::Fail,
        (TaskState::Done, _) => SpotCheck::AlreadyDone,
        (TaskState::Failed, _) => SpotCheck::AlreadyFailed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ballot(device_id: i64, value: &'static str, record: (u64, u64)) -> Ballot<&'static str> {
        Ballot { device_id, value, record }
    }

    /// (why, ballots, replicas still out, what the job asks, rules, expected).
    type Case = (&'static str, Vec<Ballot<&'static str>>, usize, Asked, TrustRules, Decision<&'static str>);

    const NEW: (u64, u64) = (0, 0);
    const PROVEN: (u64, u64) = (50, 0);

    #[test]
    fn quorum_table() {
        let earned = TrustRules::default();
        let lab = TrustRules::single_owner();
        let one = Asked { quorum: 1, replication: 1 };
        let two_of_two = Asked { quorum: 2, replication: 2 };
        let done = |canonical, valid: &[bool]| Decision::Done { canonical, valid: valid.to_vec() };
        #[rustfmt::skip]
        let cases: &[Case] = &[
            ("a proven device's result counts alone",
             vec![ballot(1, "a", PROVEN)], 0, one, earned, done("a", &[true])),
            ("a new device's result is checked by a second device",
             vec![ballot(1, "a", NEW)], 0, one, earned, Decision::AskAnother),
            ("in a lab every result counts alone",
             vec![ballot(1, "a", NEW)], 0, one, lab, done("a", &[true])),
            ("the second device agrees: done, both valid",
             vec![ballot(1, "a", NEW), ballot(2, "a", NEW)], 0, one, earned, done("a", &[true, true])),
            ("two new devices disagree: a third is asked",
             vec![ballot(1, "a", NEW), ballot(2, "b", NEW)], 0, one, earned, Decision::AskAnother),
            ("the third sides with one: the other is invalid",
             vec![ballot(1, "a", NEW), ballot(2, "b", NEW), ballot(3, "b", NEW)], 0, one, earned,
             done("b", &[false, true, true])),
            ("three new devices, three answers: the task fails",
             vec![ballot(1, "a", NEW), ballot(2, "b", NEW), ballot(3, "c", NEW)], 0, one, earned, Decision::Fail),
            ("quorum two: one result waits for the replica still out",
             vec![ballot(1, "a", PROVEN)], 1, two_of_two, earned, Decision::Wait),
            ("quorum two: two agree",
             vec![ballot(1, "a", PROVEN), ballot(2, "a", NEW)], 0, two_of_two, earned, done("a", &[true, true])),
            ("quorum two, disagreement: up to twice the replication",
             vec![ballot(1, "a", PROVEN), ballot(2, "b", PROVEN), ballot(3, "c", PROVEN)], 0, two_of_two, lab,
             Decision::AskAnother),
            ("quorum two, four results and no two agree: fail",
             vec![ballot(1, "a", PROVEN), ballot(2, "b", PROVEN), ballot(3, "c", PROVEN), ballot(4, "d", PROVEN)], 0,
             two_of_two, lab, Decision::Fail),
            ("a device that lied once is checked again",
             vec![ballot(1, "a", (12, 1))], 0, one, earned, Decision::AskAnother),
            ("the proven device wins over a new one that disagrees",
             vec![ballot(2, "b", NEW), ballot(1, "a", PROVEN)], 0, one, earned, done("a", &[false, true])),
            ("a lab with replication one fails a task only after two results",
             vec![ballot(1, "a", NEW)], 0, Asked { quorum: 2, replication: 1 }, lab, Decision::AskAnother),
        ];
        for (why, ballots, outstanding, asked, rules, expected) in cases {
            assert_eq!(&by_quorum(ballots, *outstanding, *asked, *rules), expected, "{why}");
        }
    }

    #[test]
    fn spot_check_table() {
        let asked = Asked { quorum: 1, replication: 1 };
        #[rustfmt::skip]
        let cases = [
            ("right: done",                             TaskState::Pending, true,  0, 1, SpotCheck::Close, TaskState::Done),
            ("right while others are out: done",        TaskState::Pending, true,  2, 1, SpotCheck::Close, TaskState::Done),
            ("wrong, others out: wait",                 TaskState::Pending, false, 1, 1, SpotCheck::Wait, TaskState::Pending),
            ("wrong, all in: ask another",              TaskState::Pending, false, 0, 1, SpotCheck::AskAnother, TaskState::Pending),
            ("wrong twice with replication 1: fail",    TaskState::Pending, false, 0, 2, SpotCheck::Fail, TaskState::Failed),
            ("a late answer to a closed task, right",   TaskState::Done,    true,  0, 3, SpotCheck::AlreadyDone, TaskState::Done),
            ("a late liar is judged too",               TaskState::Done,    false, 0, 3, SpotCheck::AlreadyDone, TaskState::Done),
            ("an answer to a failed task",              TaskState::Failed,  true,  0, 3, SpotCheck::AlreadyFailed, TaskState::Failed),
        ];
        for (why, state, right, outstanding, answers, expected, after) in cases {
            let got = spot_check(state, right, outstanding, answers, asked);
            assert_eq!((got, got.task_state()), (expected, after), "{why}");
        }
        // With replication 2, four wrong answers before the task fails.
        let two = Asked { quorum: 1, replication: 2 };
        assert_eq!(spot_check(TaskState::Pending, false, 0, 3, two), SpotCheck::AskAnother);
        assert_eq!(spot_check(TaskState::Pending, false, 0, 4, two), SpotCheck::Fail);
    }
}
