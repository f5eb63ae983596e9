//! A task that outlives its lease keeps it by heartbeats: another device
//! asking for work all along never gets it, and the result earns its receipt.

use std::sync::Arc;
use std::time::{Duration, Instant};

use idlemesh_agent::Agent;
use idlemesh_protocol::{Keypair, auth};
use serde_json::{Value, json};

use crate::harness::{OperatorHttp, PoolProcess, agent_config};

async fn signed_post(http: &reqwest::Client, url: &str, key: &Keypair, device: u64, path: &str, body: &Value) -> Value {
    let body = serde_json::to_vec(body).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let sig = auth::sign_request(key, device, "POST", path, &body, now);
    http.post(format!("{url}{path}"))
        .header(auth::HEADER_DEVICE, device.to_string())
        .header(auth::HEADER_TIMESTAMP, sig.timestamp.to_string())
        .header(auth::HEADER_SIGNATURE, sig.signature)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

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
                "name": "long", "params": {"width": 640, "height": 480, "max_iter": 5000},
                "split": {"kind": "tiles", "width": 640, "height": 480, "tile_width": 640, "tile_height": 480},
                "combiner": {"kind": "png_tiles"}, "lease_ms": 1000,
            }))
            .await;
        assert_eq!(tasks, 1);
        let mut agent =
            Agent::connect(agent_config(&op.url, &tmp.path().join("agent")), Arc::new(Keypair::generate().unwrap()))
                .await
                .unwrap();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(async move { agent.run(stop_rx).await });

        // Another device asks for work all along.
        let http = reqwest::Client::new();
        let other = Keypair::generate().unwrap();
        let enrolled: Value = http
            .post(format!("{}/v1/enroll", op.url))
            .json(&json!({"public_key": other.public()}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let other_id = enrolled["device_id"].as_u64().unwrap();
        let ask = json!({"capabilities": {"wasm": true, "cores": 1, "memory_bytes": 0}, "max_tasks": 1});
        let started = Instant::now();
        let mut asked = 0;
        let status = loop {
            let s = op.status(job_id).await.unwrap();
            if s["state"] != "running" {
                break s;
            }
            if s["tasks"]["leased"] == 1 {
                let got = signed_post(&http, &op.url, &other, other_id, "/v1/leases", &ask).await;
                assert_eq!(got["tasks"], json!([]), "the task was taken from a device still working on it");
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
