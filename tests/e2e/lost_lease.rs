//! An agent stopped after the pool granted it leases but before it wrote
//! them down (kill -9, power cut) does not strand them until their deadline:
//! starting again, it tells the pool which leases it holds, and the pool
//! queues the others at once.

use std::sync::Arc;
use std::time::Duration;

use idlemesh_agent::{PoolClient, PoolClientError, Slot};
use idlemesh_protocol::api::{Capabilities, EnrollRequest, ResultSubmission};
use idlemesh_protocol::{Base64Bytes, Keypair, Sha256};
use serde_json::json;

use crate::harness::{OperatorHttp, PoolProcess, agent_config};

#[test]
fn leases_granted_to_a_run_that_never_recorded_them_are_released_when_it_starts_again() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = PoolProcess::start(&tmp.path().join("pool"));
    let op = OperatorHttp::new(&pool.url, &pool.token);
    let agent_dir = tmp.path().join("agent");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        // Leases of ten minutes: waiting one out would fail this test.
        let (job_id, tasks) = op
            .mandelbrot_job(json!({
                "name": "lost-lease", "params": {"width": 320, "height": 240, "max_iter": 500},
                "split": {"kind": "tiles", "width": 320, "height": 240, "tile_width": 160, "tile_height": 120},
                "combiner": {"kind": "png_tiles"}, "lease_ms": 600000,
            }))
            .await;
        assert_eq!(tasks, 4);
        let key = Arc::new(Keypair::generate().unwrap());

        // The device's earlier run: the pool grants it three leases, and the
        // run dies before writing any of them down.
        let mut earlier = PoolClient::new(&op.url, key.clone()).unwrap();
        earlier
            .enroll(&EnrollRequest { public_key: key.public(), token: None, device_info: Default::default() })
            .await
            .unwrap();
        let caps = Capabilities { wasm: true, wgpu_adapter: None, cores: 1, memory_bytes: 1 << 30 };
        let granted = earlier.lease(caps, 3).await.unwrap().tasks;
        assert_eq!(granted.len(), 3);
        let status = op.status(job_id).await.unwrap();
        assert_eq!((&status["tasks"]["leased"], &status["tasks"]["pending"]), (&json!(3), &json!(1)), "{status}");

        // Started again (same key, data dir that knows nothing of them): the
        // three come back to the queue and the job finishes well inside the
        // leases' ten minutes.
        let mut agent = Slot::connect(agent_config(&op.url, &agent_dir), key).await.unwrap();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(async move { agent.run(stop_rx).await });
        let status = op.until_finished(job_id, Duration::from_secs(120)).await;
        stop_tx.send(true).unwrap();
        let summary = running.await.unwrap().unwrap();
        assert_eq!(status["state"], "done", "{status}");
        assert_eq!(summary.receipts, tasks, "{summary:?}");

        // The old run's lease tokens are fenced off: a late result earns nothing.
        let pool_key = earlier.info().await.unwrap().public_key;
        let old = granted[0].verify(&pool_key).unwrap();
        let late = earlier
            .submit_result(&ResultSubmission {
                lease_id: old.lease_id,
                lease_token: old.lease_token,
                output_sha256: Sha256::of(b"late"),
                output: Base64Bytes(b"late".to_vec()),
                fuel: None,
                wall_ms: 1,
                cpu_ms: 1,
            })
            .await;
        assert!(late.as_ref().is_err_and(PoolClientError::is_conflict), "{late:?}");
        let stats = op.stats().await;
        assert_eq!(stats["devices"][0]["valid_results"], tasks, "{stats}");
    });
}
