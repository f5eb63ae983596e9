//! A task that outlives its lease keeps it by heartbeats: another device
//! asking for work all along never gets it, and the result earns its receipt.

use std::sync::Arc;
use std::time::{Duration, Instant};

use idlemesh_agent::{PoolClient, Slot};
use idlemesh_protocol::Keypair;
use idlemesh_protocol::api::{Capabilities, EnrollRequest};
use serde_json::json;

use crate::harness::{OperatorHttp, PoolProcess, agent_config};

#[test]
fn a_long_task_keeps_its_lease_by_heartbeats() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = PoolProcess::start(&tmp.path().join("pool"));
    let op = OperatorHttp::new(&pool.url, &pool.token);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        // One task of a few seconds, on a one-second lease.
        let (job_id, tasks) = op
            .mandelbrot_job(json!({
                "name": "long", "params": {"width": 640, "height": 480, "max_iter": 20000},
                "split": {"kind": "tiles", "width": 640, "height": 480, "tile_width": 640, "tile_height": 480},
                "combiner": {"kind": "png_tiles"}, "lease_ms": 1000,
            }))
            .await;
        assert_eq!(tasks, 1);
        let mut agent =
            Slot::connect(agent_config(&op.url, &tmp.path().join("agent")), Arc::new(Keypair::generate().unwrap()))
                .await
                .unwrap();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(async move { agent.run(stop_rx).await });

        // Another device, with the agent's own client, asks for work all along.
        let other = Arc::new(Keypair::generate().unwrap());
        let mut client = PoolClient::new(&op.url, other.clone()).unwrap();
        client
            .enroll(&EnrollRequest { public_key: other.public(), token: None, device_info: Default::default() })
            .await
            .unwrap();
        let caps = Capabilities { wasm: true, wgpu_adapter: None, cores: 1, memory_bytes: 0 };
        let started = Instant::now();
        let mut asked = 0;
        let status = loop {
            let s = op.status(job_id).await.unwrap();
            if s["state"] != "running" {
                break s;
            }
            if s["tasks"]["leased"] == 1 {
                let got = client.lease(caps.clone(), 1).await.unwrap();
                assert!(got.tasks.is_empty(), "the task was taken from a device still working on it");
                asked += 1;
            }
            assert!(started.elapsed() < Duration::from_secs(120), "job did not finish");
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        stop_tx.send(true).unwrap();
        let summary = running.await.unwrap().unwrap();
        assert_eq!(status["state"], "done");
        assert_eq!(summary.receipts, 1, "{summary:?}");
        assert!(started.elapsed() > Duration::from_millis(2500), "the task must outlive its lease to test anything");
        assert!(asked >= 8, "the other device asked only {asked} times");
    });
}
