//! The store's state machine on values: fencing, replication, quorum.

use idlemesh_protocol::api::{Capabilities, JobSpec, JobState, TaskFailure, TaskState};
use idlemesh_protocol::{Keypair, Signed, TaskManifest};
use serde_json::json;

use super::{Store, StoreError};
use crate::split;
use crate::trust::TrustRules;

/// The database a test runs on: every test here runs on both.
#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// Keeps a test's SQLite file alive.
struct Files(#[allow(dead_code, reason = "held for its Drop")] Option<tempfile::TempDir>);

impl Backend {
    fn open(self, rules: TrustRules) -> (Store, Files) {
        match self {
            Self::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                (Store::open_sqlite(&dir.path().join("pool.sqlite"), rules).unwrap(), Files(Some(dir)))
            }
            Self::Postgres => {
                let url = crate::test_cluster::Cluster::shared().create_database().unwrap();
                let db = crate::db::Postgres::connect(&url).unwrap();
                (Store::open(Box::new(db), rules).unwrap(), Files(None))
            }
        }
    }
}

/// Each test, once per backend: `sqlite::name` and `postgres::name`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $name() {
                super::$name(super::Backend::Sqlite)
            })*
        }
        mod postgres {
            $(#[test]
            fn $name() {
                super::$name(super::Backend::Postgres)
            })*
        }
    };
}

/// A job of `tasks` one-number tasks, concatenated, its kernel stored first.
pub(crate) fn range_job(store: &mut Store, tasks: i64, replication: u32, quorum: u32) -> u64 {
    let kernel = store.put_blob(b"k").unwrap();
    let spec: JobSpec = serde_json::from_value(json!({
        "name": "t", "kernel_kind": "wasm", "kernel_sha256": kernel,
        "split": {"kind": "range", "start": 0, "end": tasks, "chunk": 1},
        "replication": replication, "quorum": quorum, "combiner": {"kind": "concat"},
    }))
    .unwrap();
    store.create_job(&spec, &split::expand(&spec).unwrap(), 1_000).unwrap()
}

struct World {
    store: Store,
    key: Keypair,
    devices: Vec<u64>,
    _files: Files,
}

fn world(b: Backend, devices: usize, replication: u32, quorum: u32, tasks: i64) -> (World, u64) {
    let (mut store, files) = b.open(TrustRules::single_owner());
    let kernel = store.put_blob(b"kernel bytes").unwrap();
    let spec: JobSpec = serde_json::from_value(json!({
        "name": "t", "kernel_kind": "wasm", "kernel_sha256": kernel,
        "split": {"kind": "range", "start": 0, "end": tasks, "chunk": 1},
        "replication": replication, "quorum": quorum, "credits_per_task": 2.5,
        "combiner": {"kind": "concat"}, "lease_ms": 10_000,
    }))
    .unwrap();
    let seeds = split::expand(&spec).unwrap();
    let job = store.create_job(&spec, &seeds, 1_000).unwrap();
    let devices = (0..devices)
        .map(|_| store.enroll(&Keypair::generate().unwrap().public(), "{}", None, 1_000).unwrap().0)
        .collect();
    (World { store, key: Keypair::generate().unwrap(), devices, _files: files }, job)
}

impl World {
    /// Leases and verifies the manifests, as a device would.
    fn lease(&mut self, device: u64, max: u32, now: u64) -> Vec<TaskManifest> {
        let caps = Capabilities { wasm: true, wgpu_adapter: None, cores: 2, memory_bytes: 0 };
        self.store.lease(device, &caps, max, now, None).unwrap()
    }
}

fn report(
    w: &mut World,
    m: &TaskManifest,
    output: &[u8],
    now: u64,
) -> Result<super::results::ResultOutcome, StoreError> {
    w.store.submit_result(m.device_id, m.lease_id, &m.lease_token, output, None, 5, 4, &w.key, now)
}

fn a_device_never_gets_two_replicas_of_one_task(b: Backend) {
    let (mut w, _) = world(b, 2, 3, 2, 2);
    let a = w.devices[0];
    let leased = w.lease(a, 10, 2_000);
    assert_eq!(leased.len(), 2, "one replica of each of the two tasks");
    assert_ne!(leased[0].task_id, leased[1].task_id);
    // Asking again gets nothing more for this device while it holds them.
    assert!(w.lease(a, 10, 2_000).is_empty());
    let b = w.lease(w.devices[1], 10, 2_000);
    assert_eq!(b.len(), 2);
}

fn expired_leases_are_fenced_off(b: Backend) {
    let (mut w, _) = world(b, 2, 1, 1, 1);
    let (a, b) = (w.devices[0], w.devices[1]);
    let first = w.lease(a, 1, 2_000).remove(0);
    // Still leased: nobody else gets it.
    assert!(w.lease(b, 1, 5_000).is_empty());
    // After the deadline it goes to b, with a new token.
    let second = w.lease(b, 1, first.deadline_ms + 1).remove(0);
    assert_eq!(second.replica_id, first.replica_id);
    assert_ne!(second.lease_token, first.lease_token);
    // a's late result and heartbeat are refused and earn nothing.
    assert!(matches!(report(&mut w, &first, b"late", 13_000), Err(StoreError::Conflict(_))));
    assert!(matches!(w.store.heartbeat(a, first.lease_id, &first.lease_token, 13_000), Err(StoreError::Conflict(_))));
    let done = report(&mut w, &second, b"on time", 13_000).unwrap();
    assert_eq!(done.task_state, TaskState::Done);
    let stats = w.store.stats().unwrap();
    assert_eq!(stats.devices.iter().find(|d| d.device_id == a).unwrap().credits, 0.0);
    assert_eq!(stats.devices.iter().find(|d| d.device_id == b).unwrap().credits, 2.5);
    // A second, different result on the same lease is refused too.
    assert!(matches!(report(&mut w, &second, b"again", 13_000), Err(StoreError::Conflict(_))));
    // The same result again (an agent that died before recording the answer)
    // gets the same receipt back and earns nothing twice.
    let repeat = report(&mut w, &second, b"on time", 14_000).unwrap();
    assert_eq!(repeat.task_state, TaskState::Done);
    assert_eq!(repeat.receipt.as_ref().map(|r| &r.payload), done.receipt.as_ref().map(|r| &r.payload));
    assert!(done.receipt.is_some());
    let stats = w.store.stats().unwrap();
    assert_eq!(stats.devices.iter().find(|d| d.device_id == b).unwrap().credits, 2.5);
}

fn heartbeat_extends_and_give_back_requeues(b: Backend) {
    let (mut w, _) = world(b, 2, 1, 1, 1);
    let (a, b) = (w.devices[0], w.devices[1]);
    let m = w.lease(a, 1, 2_000).remove(0);
    let extended = w.store.heartbeat(a, m.lease_id, &m.lease_token, 9_000).unwrap();
    assert_eq!(extended, 19_000);
    // The old deadline (12_000) has passed but the heartbeat moved it: not claimable.
    assert!(w.lease(b, 1, 12_500).is_empty());
    assert!(matches!(w.store.give_back(a, m.lease_id, "wrong token", None), Err(StoreError::Conflict(_))));
    w.store.give_back(a, m.lease_id, &m.lease_token, None).unwrap();
    assert_eq!(w.lease(b, 1, 12_500).len(), 1);
}

fn a_task_that_keeps_failing_fails_its_job_and_costs_the_devices_nothing(b: Backend) {
    let (mut w, job) = world(b, 3, 1, 1, 2);
    let failure = TaskFailure { status: "sandbox-violation".into(), message: "the worker called ptrace".into() };
    let mut now = 2_000;
    for (round, device) in [w.devices[0], w.devices[1], w.devices[2]].into_iter().enumerate() {
        // The failing task is the first in the queue again each time.
        let m = w.lease(device, 1, now).remove(0);
        assert_eq!(m.task_id, 1, "round {round}");
        w.store.give_back(device, m.lease_id, &m.lease_token, Some(&failure)).unwrap();
        now += 1;
        let status = w.store.job_status(job).unwrap();
        let failed = round + 1 == super::MAX_TASK_FAILURES as usize;
        assert_eq!(status.state == JobState::Failed, failed, "round {round}: {status:?}");
        if failed {
            assert!(status.error.unwrap().contains("sandbox-violation: the worker called ptrace"));
        }
    }
    // Nothing of the failed job is handed out any more, and nobody's record suffered.
    assert!(w.lease(w.devices[0], 5, now).is_empty());
    for d in w.store.stats().unwrap().devices {
        assert_eq!((d.valid_results, d.invalid_results), (0, 0));
    }
}

fn a_plain_give_back_counts_no_failure(b: Backend) {
    let (mut w, job) = world(b, 1, 1, 1, 1);
    let a = w.devices[0];
    for i in 0..5 {
        let m = w.lease(a, 1, 2_000 + i).remove(0);
        w.store.give_back(a, m.lease_id, &m.lease_token, None).unwrap();
    }
    assert_eq!(w.store.job_status(job).unwrap().state, JobState::Running);
}

fn leases_a_device_no_longer_holds_are_queued_again(b: Backend) {
    let (mut w, _) = world(b, 2, 1, 1, 4);
    let (a, b) = (w.devices[0], w.devices[1]);
    let kept = w.lease(a, 1, 2_000).remove(0);
    let lost = w.lease(a, 1, 2_000).remove(0);
    let others = w.lease(b, 1, 2_000).remove(0);
    // Leased at 1_000, lease_ms 10_000: ran out at 11_000 by the time of the sync.
    let expired = w.lease(a, 1, 1_000).remove(0);

    let released = w.store.release_unheld(a, &[kept.lease_id, 999_999], 11_500).unwrap();
    assert_eq!(released, [lost.lease_id], "only the live lease the device did not list");
    // The one it listed is still its own; another device's is untouched.
    w.store.heartbeat(a, kept.lease_id, &kept.lease_token, 11_500).unwrap();
    w.store.heartbeat(b, others.lease_id, &others.lease_token, 11_500).unwrap();
    // The released lease's old token earns nothing; the replica goes to the next asker.
    assert!(matches!(report(&mut w, &lost, b"late", 11_600), Err(StoreError::Conflict(_))));
    let again = w.lease(b, 4, 11_600);
    let ids: Vec<u64> = again.iter().map(|m| m.lease_id).collect();
    assert!(ids.contains(&lost.lease_id) && ids.contains(&expired.lease_id), "{ids:?}");
    // Nothing left to release: syncing twice changes nothing.
    assert!(w.store.release_unheld(a, &[kept.lease_id], 11_700).unwrap().is_empty());
}

fn quorum_agrees_marks_the_odd_one_out_and_signs_receipts(b: Backend) {
    let (mut w, job) = world(b, 3, 2, 2, 1);
    let (a, b, c) = (w.devices[0], w.devices[1], w.devices[2]);
    let ma = w.lease(a, 1, 2_000).remove(0);
    let mb = w.lease(b, 1, 2_000).remove(0);
    assert!(w.lease(c, 1, 2_000).is_empty(), "k = 2 replicas only");
    let ra = report(&mut w, &ma, b"42", 3_000).unwrap();
    assert_eq!(ra.task_state, TaskState::Pending);
    assert!(ra.receipt.is_none());
    // b disagrees: no quorum, so a third replica is created for another device.
    let rb = report(&mut w, &mb, b"41", 3_000).unwrap();
    assert_eq!(rb.task_state, TaskState::Pending);
    let mc = w.lease(c, 1, 3_000).remove(0);
    let rc = report(&mut w, &mc, b"42", 4_000).unwrap();
    assert_eq!(rc.task_state, TaskState::Done);
    let receipt = rc.receipt.unwrap().verify(&w.key.public()).unwrap();
    assert_eq!((receipt.device_id, receipt.credits), (c, 2.5));
    assert_eq!(receipt.output_sha256, idlemesh_protocol::Sha256::of(b"42"));

    let stats = w.store.stats().unwrap();
    let by = |d: u64| stats.devices.iter().find(|s| s.device_id == d).unwrap().clone();
    assert_eq!((by(a).valid_results, by(a).credits), (1, 2.5));
    assert_eq!((by(b).invalid_results, by(b).credits), (1, 0.0));
    assert_eq!(by(c).valid_results, 1);
    let status = w.store.job_status(job).unwrap();
    assert_eq!(status.tasks.done, 1);
    assert_eq!(status.credits_granted, 5.0);
    assert_eq!(w.store.job_output(job).unwrap().unwrap(), b"42");
}

fn jobs_need_a_stored_kernel(b: Backend) {
    let (mut w, _) = world(b, 1, 1, 1, 1);
    let spec: JobSpec = serde_json::from_value(json!({
        "name": "t", "kernel_kind": "wasm", "kernel_sha256": "a".repeat(64),
        "inputs": ["AA=="], "combiner": {"kind": "concat"},
    }))
    .unwrap();
    let seeds = split::expand(&spec).unwrap();
    assert!(
        matches!(w.store.create_job(&spec, &seeds, 1), Err(StoreError::Invalid(m)) if m.contains("POST /v1/blobs"))
    );
}

fn devices_get_only_jobs_they_can_run(b: Backend) {
    let (mut w, _) = world(b, 1, 1, 1, 1);
    let a = w.devices[0];
    let lease = |w: &mut World, caps: Capabilities| w.store.lease(a, &caps, 5, 2_000, None).unwrap().len();
    // The job needs 256 MiB (the default limit) and a WASM runtime.
    let small = Capabilities { wasm: true, wgpu_adapter: None, cores: 2, memory_bytes: 128 << 20 };
    assert_eq!(lease(&mut w, small), 0);
    let gpu_only = Capabilities { wasm: false, wgpu_adapter: Some("lavapipe".into()), cores: 2, memory_bytes: 8 << 30 };
    assert_eq!(lease(&mut w, gpu_only), 0);
    let fits = Capabilities { wasm: true, wgpu_adapter: None, cores: 2, memory_bytes: 8 << 30 };
    assert_eq!(lease(&mut w, fits), 1);
}

fn replicas_of_a_gpu_task_stay_within_one_adapter_class(b: Backend) {
    let (mut store, _files) = b.open(TrustRules::single_owner());
    let kernel = store.put_blob(b"@compute @workgroup_size(1) fn main() {}").unwrap();
    let spec: JobSpec = serde_json::from_value(json!({
        "name": "gpu", "kernel_kind": "wgsl", "kernel_sha256": kernel,
        "wgsl": {"entry_point": "main", "invocations": [1],
                 "bindings": [{"binding": 0, "role": "output", "size": "4"}]},
        "split": {"kind": "range", "start": 0, "end": 1, "chunk": 1},
        "replication": 2, "quorum": 2, "credits_per_task": 1.0,
        "combiner": {"kind": "concat"}, "lease_ms": 10_000,
    }))
    .unwrap();
    store.create_job(&spec, &split::expand(&spec).unwrap(), 1_000).unwrap();
    let mut device = || store.enroll(&Keypair::generate().unwrap().public(), "{}", None, 1_000).unwrap().0;
    let (a, b, c) = (device(), device(), device());
    let gpu =
        |name: &str| Capabilities { wasm: true, wgpu_adapter: Some(name.into()), cores: 2, memory_bytes: 8 << 30 };
    let lavapipe = "llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan, Cpu)";
    let nvidia = "NVIDIA GeForce RTX 3060 (Vulkan, DiscreteGpu)";

    let first = store.lease(a, &gpu(lavapipe), 5, 2_000, None).unwrap();
    assert_eq!(first.len(), 1);
    // Another adapter would not agree bit for bit: it gets nothing.
    assert!(store.lease(b, &gpu(nvidia), 5, 2_000, None).unwrap().is_empty());
    // The same adapter gets the second replica.
    let second = store.lease(c, &gpu(lavapipe), 5, 2_000, None).unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].task_id, first[0].task_id);
    assert_ne!(second[0].replica_id, first[0].replica_id);

    // Both leases lapse unreported: the class binds nothing any more, and the
    // other adapter may take the task, after which it binds its own class.
    let later = first[0].deadline_ms.max(second[0].deadline_ms) + 1;
    let taken = store.lease(b, &gpu(nvidia), 1, later, None).unwrap();
    assert_eq!(taken.len(), 1);
    assert!(store.lease(a, &gpu(lavapipe), 5, later, None).unwrap().is_empty(), "now bound to the other class");
}

fn a_metered_job_pays_by_the_fuel_the_replicas_agree_on(b: Backend) {
    let (mut store, _files) = b.open(TrustRules::single_owner());
    let kernel = store.put_blob(b"kernel bytes").unwrap();
    let job = |rate: serde_json::Value, limits: serde_json::Value| -> Result<JobSpec, String> {
        let spec: JobSpec = serde_json::from_value(json!({
            "name": "metered", "kernel_kind": "wasm", "kernel_sha256": kernel,
            "split": {"kind": "range", "start": 0, "end": 1, "chunk": 1},
            "replication": 2, "quorum": 2, "credits_per_million_fuel": rate, "limits": limits,
            "combiner": {"kind": "concat"}, "lease_ms": 10_000,
        }))
        .unwrap();
        split::expand(&spec).map(|_| spec)
    };
    // Metered credit without metered tasks, or at a negative rate: refused, saying why.
    let e = job(json!(0.5), json!({})).unwrap_err();
    assert!(e.contains("needs limits.max_fuel"), "{e}");
    let e = job(json!(-1.0), json!({"max_fuel": 10_000_000})).unwrap_err();
    assert!(e.contains("credits_per_million_fuel"), "{e}");

    let spec = job(json!(0.5), json!({"max_fuel": 10_000_000})).unwrap();
    store.create_job(&spec, &split::expand(&spec).unwrap(), 1_000).unwrap();
    let key = Keypair::generate().unwrap();
    let caps = Capabilities { wasm: true, wgpu_adapter: None, cores: 2, memory_bytes: 0 };
    let (a, b) = (
        store.enroll(&Keypair::generate().unwrap().public(), "{}", None, 1_000).unwrap().0,
        store.enroll(&Keypair::generate().unwrap().public(), "{}", None, 1_000).unwrap().0,
    );
    let ma = store.lease(a, &caps, 1, 2_000, None).unwrap().remove(0);
    let mb = store.lease(b, &caps, 1, 2_000, None).unwrap().remove(0);
    assert_eq!(ma.credits, 5.0, "the manifest states the most a task can earn: 10 M fuel at 0.5");
    let fuel = Some(3_000_000);
    let first = store.submit_result(a, ma.lease_id, &ma.lease_token, b"out", fuel, 5, 4, &key, 3_000).unwrap();
    assert_eq!(first.task_state, TaskState::Pending);
    let second = store.submit_result(b, mb.lease_id, &mb.lease_token, b"out", fuel, 5, 4, &key, 3_000).unwrap();
    assert_eq!(second.task_state, TaskState::Done);
    let receipt = second.receipt.unwrap().verify(&key.public()).unwrap();
    assert_eq!((receipt.fuel, receipt.credits), (Some(3_000_000), 1.5), "3 M fuel at 0.5 a million");
}

#[test]
fn migrations_apply_to_an_existing_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.sqlite");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(super::schema::SQLITE[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute("INSERT INTO jobs (name, spec, state, created_ms) VALUES ('old', '{\"kernel_kind\":\"wgsl\",\"limits\":{\"max_memory_bytes\":5}}', 'running', 1)", []).unwrap();
    }
    let store = Store::open_sqlite(&path, TrustRules::single_owner()).unwrap();
    let row = store.db.row("SELECT kernel_kind, max_memory_bytes FROM jobs", crate::db::args![]).unwrap();
    assert_eq!((row.text(0).unwrap().as_str(), row.int(1).unwrap()), ("wgsl", 5));
    let version = store.db.row("PRAGMA user_version", crate::db::args![]).unwrap().int(0).unwrap();
    assert_eq!(version as u32, super::schema::version(crate::db::Dialect::Sqlite));
}

fn two_honest_devices_outvote_a_liar(b: Backend) {
    // k = 3, q = 2: two agreeing devices and one liar.
    let (mut w, job) = world(b, 3, 3, 2, 1);
    let (honest1, honest2, liar) = (w.devices[0], w.devices[1], w.devices[2]);
    let m1 = w.lease(honest1, 1, 2_000).remove(0);
    let ml = w.lease(liar, 1, 2_000).remove(0);
    let m2 = w.lease(honest2, 1, 2_000).remove(0);
    let lie = report(&mut w, &ml, b"forged answer", 3_000).unwrap();
    assert_eq!((lie.task_state, lie.receipt.is_none()), (TaskState::Pending, true));
    let first = report(&mut w, &m1, b"true answer", 3_000).unwrap();
    assert_eq!((first.task_state, first.receipt.is_none()), (TaskState::Pending, true));
    let second = report(&mut w, &m2, b"true answer", 3_000).unwrap();
    assert_eq!(second.task_state, TaskState::Done);
    let receipt = second.receipt.unwrap().verify(&w.key.public()).unwrap();
    assert_eq!(receipt.device_id, honest2);

    assert_eq!(w.store.job_output(job).unwrap().unwrap(), b"true answer", "the honest output wins");
    // Receipts: one per honest device, none for the liar.
    let receipts: Vec<(i64, String, String)> = w
        .store
        .db
        .query("SELECT device_id, payload, signature FROM receipts ORDER BY device_id", crate::db::args![])
        .unwrap()
        .iter()
        .map(|r| (r.int(0).unwrap(), r.text(1).unwrap(), r.text(2).unwrap()))
        .collect();
    let holders: Vec<u64> = receipts.iter().map(|r| r.0 as u64).collect();
    assert_eq!(holders, vec![honest1, honest2]);
    for (_, payload, signature) in receipts {
        let signed: Signed<idlemesh_protocol::Receipt> =
            serde_json::from_value(json!({"payload": payload, "signature": signature})).unwrap();
        assert!(signed.verify(&w.key.public()).is_ok());
    }
    let stats = w.store.stats().unwrap();
    let by = |d: u64| stats.devices.iter().find(|s| s.device_id == d).unwrap().clone();
    assert_eq!((by(liar).valid_results, by(liar).invalid_results, by(liar).credits), (0, 1, 0.0));
    assert_eq!((by(honest1).valid_results, by(honest1).credits), (1, 2.5));
    assert_eq!((by(honest2).valid_results, by(honest2).credits), (1, 2.5));
}

fn manifests_and_receipts_verify_and_modified_ones_fail(b: Backend) {
    let (mut w, _) = world(b, 1, 1, 1, 1);
    let a = w.devices[0];
    let caps = Capabilities { wasm: true, wgpu_adapter: None, cores: 2, memory_bytes: 0 };
    let signed = Signed::sign(&w.store.lease(a, &caps, 1, 2_000, None).unwrap().remove(0), &w.key);
    let manifest = signed.verify(&w.key.public()).unwrap();
    let mut forged = signed.clone();
    forged.payload = forged.payload.replace("\"credits\":2.5", "\"credits\":25.0");
    assert_ne!(forged.payload, signed.payload);
    assert!(forged.verify(&w.key.public()).is_err());
    assert!(signed.verify(&Keypair::generate().unwrap().public()).is_err(), "another pool's key");

    let receipt = report(&mut w, &manifest, b"x", 3_000).unwrap().receipt.unwrap();
    assert!(receipt.verify(&w.key.public()).is_ok());
    let mut forged = receipt.clone();
    forged.payload = forged.payload.replace(&format!("\"device_id\":{a}"), "\"device_id\":999");
    assert_ne!(forged.payload, receipt.payload);
    assert!(forged.verify(&w.key.public()).is_err());
}

fn spot_checks_catch_a_liar_and_stay_out_of_the_output(b: Backend) {
    let (mut store, _files) = b.open(TrustRules::single_owner());
    let key = Keypair::generate().unwrap();
    let kernel = store.put_blob(b"kernel bytes").unwrap();
    // k = 2, q = 1: both devices get a replica of every task.
    let spec: JobSpec = serde_json::from_value(json!({
        "name": "t", "kernel_kind": "wasm", "kernel_sha256": kernel, "replication": 2,
        "split": {"kind": "range", "start": 0, "end": 2, "chunk": 1},
        "combiner": {"kind": "concat"},
        "spot_checks": [{"params": {"start": 100, "end": 101}, "expected_sha256": idlemesh_protocol::Sha256::of(b"known")}],
    }))
    .unwrap();
    let seeds = split::expand(&spec).unwrap();
    assert_eq!(seeds.len(), 3);
    assert!(seeds[0].expected_sha256.is_none() && seeds[1].expected_sha256.is_some(), "spot check hidden mid-queue");
    let job = store.create_job(&spec, &seeds, 1_000).unwrap();
    let caps = Capabilities { wasm: true, wgpu_adapter: None, cores: 2, memory_bytes: 0 };
    let liar = store.enroll(&Keypair::generate().unwrap().public(), "{}", None, 1).unwrap().0;
    let honest = store.enroll(&Keypair::generate().unwrap().public(), "{}", None, 1).unwrap().0;
    let liar_tasks = store.lease(liar, &caps, 10, 2_000, None).unwrap();
    let honest_tasks = store.lease(honest, &caps, 10, 2_000, None).unwrap();
    assert_eq!((liar_tasks.len(), honest_tasks.len()), (3, 3));

    // The liar answers everything first, wrongly: ordinary tasks (q = 1)
    // take it, the spot check does not and pays nothing.
    for m in &liar_tasks {
        let outcome = store.submit_result(liar, m.lease_id, &m.lease_token, b"wrong", None, 1, 1, &key, 3_000).unwrap();
        assert_eq!(outcome.receipt.is_some(), !m.params.contains("100"), "{}", m.params);
    }
    // The honest device answers the spot check right: judged valid, paid.
    let spot = honest_tasks.iter().find(|m| m.params.contains("100")).unwrap();
    let outcome =
        store.submit_result(honest, spot.lease_id, &spot.lease_token, b"known", None, 1, 1, &key, 4_000).unwrap();
    assert_eq!(outcome.task_state, TaskState::Done);
    assert!(outcome.receipt.unwrap().verify(&key.public()).is_ok());

    let stats = store.stats().unwrap();
    let by = |d: u64| stats.devices.iter().find(|s| s.device_id == d).unwrap().clone();
    assert_eq!((by(liar).valid_results, by(liar).invalid_results, by(liar).credits), (2, 1, 2.0));
    assert_eq!((by(honest).valid_results, by(honest).invalid_results, by(honest).credits), (1, 0, 1.0));
    // The job's output leaves the spot check out.
    assert_eq!(store.job_status(job).unwrap().state, idlemesh_protocol::api::JobState::Done);
    assert_eq!(store.job_output(job).unwrap().unwrap(), b"wrongwrong");
}

fn enrollment_tokens_expire_are_revocable_and_counted(b: Backend) {
    use idlemesh_protocol::api::TokenCreate;

    use super::orgs::TokenRefusal;
    let (mut store, _files) = b.open(TrustRules::single_owner());
    let org = store.create_org("  Acme Research ", 1_000).unwrap();
    assert_eq!(org.name, "Acme Research");
    assert!(matches!(store.create_org("Acme Research", 1_000), Err(StoreError::Conflict(_))));
    assert!(matches!(store.create_org(" ", 1_000), Err(StoreError::Invalid(_))));
    let make = |store: &mut Store, expires_in_s, max_uses| {
        store.create_token(org.org_id, &TokenCreate { expires_in_s, max_uses, label: None }, 1_000).unwrap()
    };
    let day = make(&mut store, 86_400, None);
    assert!(day.token.starts_with("imt_") && day.token.len() > 40);
    let once = make(&mut store, 86_400, Some(1));
    let short = make(&mut store, 10, None);
    assert!(matches!(
        store.create_token(99, &TokenCreate { expires_in_s: 10, max_uses: None, label: None }, 1),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.create_token(org.org_id, &TokenCreate { expires_in_s: 0, max_uses: None, label: None }, 1),
        Err(StoreError::Invalid(_))
    ));

    let key = || Keypair::generate().unwrap().public();
    let refusal = |r: Result<(u64, Option<_>), StoreError>| match r {
        Err(StoreError::Token(why, _)) => why,
        other => panic!("expected a refusal, got {other:?}"),
    };
    // A valid token enrolls into the organisation; enrolling again is idempotent.
    let laptop = key();
    let (id, got) = store.enroll(&laptop, r#"{"cores":"4"}"#, Some(&day.token), 2_000).unwrap();
    assert_eq!(got.as_ref().map(|o| o.org_id), Some(org.org_id));
    assert_eq!(store.enroll(&laptop, "{}", None, 3_000).unwrap(), (id, got));
    // Limited, expired, unknown and revoked tokens are refused, each saying why.
    store.enroll(&key(), "{}", Some(&once.token), 2_000).unwrap();
    assert_eq!(refusal(store.enroll(&key(), "{}", Some(&once.token), 2_000)), TokenRefusal::UsedUp);
    assert_eq!(refusal(store.enroll(&key(), "{}", Some(&short.token), 11_000)), TokenRefusal::Expired);
    assert_eq!(refusal(store.enroll(&key(), "{}", Some("imt_guess"), 2_000)), TokenRefusal::Unknown);
    let revoked = store.revoke_token(day.info.token_id, 5_000).unwrap();
    assert_eq!(revoked.revoked_ms, Some(5_000));
    assert_eq!(store.revoke_token(day.info.token_id, 6_000).unwrap().revoked_ms, Some(5_000), "first revocation kept");
    assert_eq!(refusal(store.enroll(&key(), "{}", Some(&day.token), 6_000)), TokenRefusal::Revoked);
    // A device already enrolled with it stays enrolled, token revoked or expired.
    assert_eq!(store.enroll(&laptop, "{}", Some(&day.token), 6_000).unwrap().0, id);
    assert_eq!(store.enroll(&laptop, "{}", Some(&day.token), 999_999_999).unwrap().0, id);
    // A refused enrollment wrote nothing: the organisation has its two devices.
    let stats = store.org_stats(org.org_id).unwrap();
    assert_eq!(stats.devices.len(), 2);
    assert_eq!(stats.devices[0].device_info.get("cores").map(String::as_str), Some("4"));
    assert_eq!(stats.tokens.len(), 3);
    assert_eq!(stats.tokens.iter().map(|t| t.uses).collect::<Vec<_>>(), vec![1, 1, 0]);
    // A device of one organisation cannot be moved to another by a token.
    let other = store.create_org("Other", 1).unwrap();
    let theirs = store
        .create_token(other.org_id, &TokenCreate { expires_in_s: 60, max_uses: None, label: None }, 1_000)
        .unwrap();
    assert!(matches!(store.enroll(&laptop, "{}", Some(&theirs.token), 2_000), Err(StoreError::Conflict(_))));
    assert!(matches!(store.org_stats(42), Err(StoreError::NotFound { .. })));
}

fn replicas_of_a_task_never_go_to_devices_sharing_a_token_an_organisation_or_a_network(b: Backend) {
    use idlemesh_protocol::api::TokenCreate;

    use crate::trust::Spread;
    let caps = Capabilities { wasm: true, wgpu_adapter: None, cores: 2, memory_bytes: 0 };
    let setup = |spread: Spread| {
        let rules = TrustRules { spread, ..TrustRules::single_owner() };
        let (mut store, files) = b.open(rules);
        range_job(&mut store, 1, 2, 2);
        let org = store.create_org("Acme", 1_000).unwrap();
        let other = store.create_org("Other", 1_000).unwrap();
        let token = |s: &mut Store, org| {
            s.create_token(org, &TokenCreate { expires_in_s: 3_600, max_uses: None, label: None }, 1_000).unwrap().token
        };
        let (t1, t2, t3) =
            (token(&mut store, org.org_id), token(&mut store, org.org_id), token(&mut store, other.org_id));
        let mut enroll =
            |t: &str| store.enroll(&Keypair::generate().unwrap().public(), "{}", Some(t), 1_000).unwrap().0;
        let ids = [enroll(&t1), enroll(&t1), enroll(&t2), enroll(&t3)];
        (store, ids, files)
    };
    let lease = |s: &mut Store, device, net: &str| s.lease(device, &caps, 1, 2_000, Some(net)).unwrap().len();

    // Token: a second device of the same token gets nothing; another org's does.
    let (mut s, [a, same_token, same_org, other_org], _d) = setup(Spread { token: true, org: false, network: false });
    assert_eq!(lease(&mut s, a, "10.0.0.0/24"), 1);
    assert_eq!(lease(&mut s, same_token, "10.0.1.0/24"), 0);
    assert_eq!(lease(&mut s, same_org, "10.0.2.0/24"), 1, "same org, another token: allowed by this spread");
    let _ = other_org;

    // Organisation: every device of the org is one.
    let (mut s, [a, _, same_org, other_org], _d) = setup(Spread { token: false, org: true, network: false });
    assert_eq!(lease(&mut s, a, "10.0.0.0/24"), 1);
    assert_eq!(lease(&mut s, same_org, "10.0.2.0/24"), 0);
    assert_eq!(lease(&mut s, other_org, "10.0.3.0/24"), 1);

    // Network: devices of different orgs behind one prefix are one.
    let (mut s, [a, _, _, other_org], _d) = setup(Spread { token: false, org: false, network: true });
    assert_eq!(lease(&mut s, a, "10.0.0.0/24"), 1);
    assert_eq!(lease(&mut s, other_org, "10.0.0.0/24"), 0);
    assert_eq!(lease(&mut s, other_org, "10.9.0.0/24"), 1);

    // Without any spread (the protection off), the same token takes the second replica.
    let (mut s, [a, same_token, ..], _d) = setup(Spread::NONE);
    assert_eq!(lease(&mut s, a, "10.0.0.0/24"), 1);
    assert_eq!(lease(&mut s, same_token, "10.0.0.0/24"), 1);
}

fn a_new_devices_result_is_confirmed_before_it_counts_and_a_liar_stays_checked(b: Backend) {
    let (mut w, _job) = world(b, 3, 1, 1, 6);
    w.store.trust = TrustRules { checked_results: 2, ..TrustRules::single_owner() };
    let (a, b, liar) = (w.devices[0], w.devices[1], w.devices[2]);
    // a's first result alone does not close the task: a second replica is queued.
    let m = w.lease(a, 1, 2_000).remove(0);
    assert_eq!(report(&mut w, &m, b"right", 3_000).unwrap().task_state, TaskState::Pending);
    let check = w.lease(b, 1, 3_000).remove(0);
    assert_eq!(check.task_id, m.task_id, "the check comes first in the queue");
    let outcome = report(&mut w, &check, b"right", 4_000).unwrap();
    assert_eq!(outcome.task_state, TaskState::Done);
    // The liar's answer is checked, outvoted by the trusted... once a has earned trust.
    for now in [5_000, 7_000] {
        let m = w.lease(a, 1, now).remove(0);
        if report(&mut w, &m, b"right", now + 1).unwrap().task_state == TaskState::Pending {
            let c = w.lease(b, 1, now + 2).remove(0);
            report(&mut w, &c, b"right", now + 3).unwrap();
        }
    }
    let m = w.lease(liar, 1, 10_000).remove(0);
    assert_eq!(report(&mut w, &m, b"forged", 10_001).unwrap().task_state, TaskState::Pending);
    let c = w.lease(a, 1, 10_002).remove(0);
    assert_eq!(c.task_id, m.task_id);
    let outcome = report(&mut w, &c, b"right", 10_003).unwrap();
    assert_eq!(outcome.task_state, TaskState::Done, "a trusted device's answer counts alone");
    let stats = w.store.stats().unwrap();
    let liar_stats = stats.devices.iter().find(|d| d.device_id == liar).unwrap();
    assert_eq!((liar_stats.valid_results, liar_stats.invalid_results, liar_stats.credits), (0, 1, 0.0));
    // Its next result is checked again: one disagreement costs ten more confirmed results.
    let m = w.lease(liar, 1, 11_000).remove(0);
    assert_eq!(report(&mut w, &m, b"right", 11_001).unwrap().task_state, TaskState::Pending);
}

/// A device request as the writer runs it: its own transaction, the
/// signature spent first, then the work; committed only if all went well.
fn signed_lease(w: &mut World, signature: &str, device: u64, now: u64) -> Result<Vec<TaskManifest>, StoreError> {
    let caps = Capabilities { wasm: true, wgpu_adapter: None, cores: 2, memory_bytes: 0 };
    w.store.begin_lone()?;
    let done = w
        .store
        .spend_signature(signature.as_bytes(), now + 60_000, now)
        .and_then(|()| w.store.lease(device, &caps, 1, now, None));
    match done {
        Ok(leased) => w.store.commit().map(|()| leased),
        Err(e) => {
            w.store.rollback();
            Err(e)
        }
    }
}

fn a_request_signature_is_spent_once_and_a_replay_changes_nothing(b: Backend) {
    let (mut w, _) = world(b, 1, 1, 1, 3);
    let d = w.devices[0];
    assert_eq!(signed_lease(&mut w, "signature one", d, 2_000).unwrap().len(), 1);
    // The same signature again (on PostgreSQL found by the lease's own
    // statement, which carried the deferred insert).
    let replay = signed_lease(&mut w, "signature one", d, 2_001);
    assert!(matches!(replay, Err(StoreError::Replayed)), "{:?}", replay.map(|m| m.len()));
    // The replayed lease left nothing behind: two tasks still queued.
    assert_eq!(w.lease(d, 10, 2_002).len(), 2);
    // A replay whose operation sends nothing more is refused at the commit.
    w.store.begin_lone().unwrap();
    let spent = w.store.spend_signature(b"signature one", 62_000, 2_003).and_then(|()| w.store.commit());
    assert!(matches!(spent, Err(StoreError::Replayed)), "{spent:?}");
    w.store.rollback();
    // A new signature is fine.
    w.store.begin_lone().unwrap();
    w.store.spend_signature(b"signature two", 62_000, 2_004).unwrap();
    w.store.commit().unwrap();
}

/// Results recorded as one batch end exactly as the same results recorded
/// one by one in the same order: the same answers (refusals, task states,
/// receipts), devices' records, tasks, job and output. The batch has two
/// results closing a task, the same result sent twice, a disagreement that
/// asks for another replica, a stale token, an unknown lease, and a result
/// whose task an earlier one in the batch closed.
fn a_batch_of_results_ends_as_the_same_results_one_by_one(b: Backend) {
    let run = |batched: bool| {
        let (mut w, job) = world(b, 7, 2, 2, 3);
        let m: Vec<TaskManifest> = (0..6).map(|i| w.lease(w.devices[i], 1, 2_000).remove(0)).collect();
        for pair in m.chunks(2) {
            assert_eq!(pair[0].task_id, pair[1].task_id, "replicas of one task go to devices side by side");
        }
        // A third replica of the first task, queued by hand, out to device 6:
        // the task closes before its result comes in.
        w.store
            .db
            .execute("INSERT INTO replicas (task_id, state) VALUES (?1, 'queued')", crate::db::args![m[0].task_id])
            .unwrap();
        let late = w.lease(w.devices[6], 1, 2_000).remove(0);
        assert_eq!(late.task_id, m[0].task_id);
        fn sub<'m>(m: &'m TaskManifest, output: &'static [u8]) -> super::results::Submission<'m> {
            super::results::Submission {
                device_id: m.device_id,
                lease_id: m.lease_id,
                token: &m.lease_token,
                output,
                fuel: None,
                wall_ms: 5,
                cpu_ms: 4,
            }
        }
        let stale = super::results::Submission { token: "stale", ..sub(&m[4], b"c") };
        let unknown = super::results::Submission { lease_id: 999_999, ..sub(&m[5], b"c") };
        let all = [
            sub(&m[0], b"a"),
            sub(&m[1], b"a"),
            sub(&m[0], b"a"),
            sub(&late, b"a"),
            sub(&m[2], b"x"),
            sub(&m[3], b"y"),
            stale,
            sub(&m[5], b"c"),
            unknown,
            sub(&m[4], b"c"),
        ];
        let answers: Vec<Result<super::results::ResultOutcome, StoreError>> = if batched {
            w.store.submit_results(&all, &w.key, 3_000).unwrap()
        } else {
            all.iter().map(|s| w.store.submit_results(&[*s], &w.key, 3_000).unwrap().remove(0)).collect()
        };
        let answers: Vec<String> = answers
            .iter()
            .map(|a| match a {
                Ok(o) => format!("{:?} {:?}", o.task_state, o.receipt.as_ref().map(|r| r.payload.clone())),
                Err(e) => format!("refused: {e}"),
            })
            .collect();
        // The disagreement asked for one more replica: device 6 gets it.
        let again = w.lease(w.devices[6], 1, 3_000);
        let state = (
            serde_json::to_value(w.store.stats().unwrap()).unwrap(),
            serde_json::to_value(w.store.job_status(job).unwrap()).unwrap(),
            w.store.job_output(job).unwrap(),
            again.iter().map(|m| m.task_id).collect::<Vec<_>>(),
        );
        (answers, state)
    };
    let (one_by_one, batched) = (run(false), run(true));
    assert!(
        one_by_one.0[2].starts_with("Done Some("),
        "the same result again gets its receipt again: {:?}",
        one_by_one.0
    );
    assert!(one_by_one.0[3].starts_with("refused: lease"), "{:?}", one_by_one.0);
    assert!(one_by_one.0[6].starts_with("refused: stale"), "{:?}", one_by_one.0);
    assert_eq!(one_by_one.1.3.len(), 1, "another replica was asked for");
    assert_eq!(batched.0, one_by_one.0);
    assert_eq!(batched.1, one_by_one.1);
}

on_both_backends!(
    a_batch_of_results_ends_as_the_same_results_one_by_one,
    a_request_signature_is_spent_once_and_a_replay_changes_nothing,
    a_device_never_gets_two_replicas_of_one_task,
    expired_leases_are_fenced_off,
    heartbeat_extends_and_give_back_requeues,
    a_task_that_keeps_failing_fails_its_job_and_costs_the_devices_nothing,
    a_plain_give_back_counts_no_failure,
    leases_a_device_no_longer_holds_are_queued_again,
    quorum_agrees_marks_the_odd_one_out_and_signs_receipts,
    jobs_need_a_stored_kernel,
    devices_get_only_jobs_they_can_run,
    replicas_of_a_gpu_task_stay_within_one_adapter_class,
    a_metered_job_pays_by_the_fuel_the_replicas_agree_on,
    two_honest_devices_outvote_a_liar,
    manifests_and_receipts_verify_and_modified_ones_fail,
    spot_checks_catch_a_liar_and_stay_out_of_the_output,
    enrollment_tokens_expire_are_revocable_and_counted,
    replicas_of_a_task_never_go_to_devices_sharing_a_token_an_organisation_or_a_network,
    a_new_devices_result_is_confirmed_before_it_counts_and_a_liar_stays_checked,
);

/// Two pool replicas close a job's last two tasks at once, each in its own
/// transaction on its own connection: the second to judge waits for the
/// first's hold on the job's row and must then count from what the first
/// left, or the job would never complete. (A lock-then-look in one
/// statement failed this: it read the first's task as still pending.)
#[test]
fn replicas_closing_the_last_two_tasks_at_once_complete_the_job() {
    let url = crate::test_cluster::Cluster::shared().create_database().unwrap();
    let open =
        || Store::open(Box::new(crate::db::Postgres::connect(&url).unwrap()), TrustRules::single_owner()).unwrap();
    let (mut first, mut second) = (open(), open());
    let job = range_job(&mut first, 2, 1, 1);
    let caps = Capabilities { wasm: true, wgpu_adapter: None, cores: 2, memory_bytes: 0 };
    let key = Keypair::generate().unwrap();
    let mut leases = Vec::new();
    for _ in 0..2 {
        let device = first.enroll(&Keypair::generate().unwrap().public(), "{}", None, 1_000).unwrap().0;
        leases.push(first.lease(device, &caps, 1, 2_000, None).unwrap().remove(0));
    }
    let (a, b) = (leases.remove(0), leases.remove(0));
    let (judged, judge) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let judged = judged; // dropped if this panics: the judge below then stops waiting
            first.begin().unwrap();
            first.submit_result(a.device_id, a.lease_id, &a.lease_token, b"a", None, 1, 1, &key, 3_000).unwrap();
            judged.send(()).unwrap();
            // The other replica's judgement now waits on this one's hold on the job's row.
            std::thread::sleep(std::time::Duration::from_millis(300));
            first.commit().unwrap();
        });
        judge.recv().unwrap();
        second.begin().unwrap();
        second.submit_result(b.device_id, b.lease_id, &b.lease_token, b"b", None, 1, 1, &key, 3_000).unwrap();
        second.commit().unwrap();
    });
    let status = second.job_status(job).unwrap();
    assert_eq!(status.state, JobState::Done, "{status:?}");
    assert_eq!(second.job_output(job).unwrap().unwrap(), b"ab");
}
