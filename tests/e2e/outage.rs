//! The pool goes away while the agent works: results finished meanwhile wait
//! in the outbox and are all delivered when it returns, none lost, none doubled.

use std::sync::Arc;
use std::time::Duration;

use idlemesh_agent::{Agent, Ledger};
use idlemesh_protocol::Keypair;
use serde_json::{Value, json};

use crate::harness::{PoolProcess, agent_config};

#[test]
fn results_finished_while_the_pool_is_down_are_delivered_when_it_returns() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pool");
    let pool = PoolProcess::start(&dir);
    let (url, token) = (pool.url.clone(), pool.token.clone());
    let listen = url.trim_start_matches("http://").to_string();
    let agent_dir = tmp.path().join("agent");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let http = reqwest::Client::new();
        let auth = format!("Bearer {token}");
        let kernel: Value = http
            .post(format!("{url}/v1/blobs"))
            .header("authorization", &auth)
            .body(idlemesh_kernels::MANDELBROT.to_vec())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let job: Value = http
            .post(format!("{url}/v1/jobs"))
            .header("authorization", &auth)
            .json(&json!({
                "name": "outage", "kernel_kind": "wasm", "kernel_sha256": kernel["sha256"],
                "params": {"width": 640, "height": 480, "max_iter": 1000},
                "split": {"kind": "tiles", "width": 640, "height": 480, "tile_width": 320, "tile_height": 120},
                "combiner": {"kind": "png_tiles"}, "lease_ms": 600000,
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let job_id = job["job_id"].as_u64().unwrap();
        let tasks = job["tasks"].as_u64().unwrap();
        assert_eq!(tasks, 8);

        // The agent takes every task at once, so it can go on working offline.
        let mut config = agent_config(&url, &agent_dir);
        config.max_tasks_per_lease = 8;
        let mut agent = Agent::connect(config, Arc::new(Keypair::generate().unwrap())).await.unwrap();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(async move { agent.run(stop_rx).await });

        let status_url = format!("{url}/v1/jobs/{job_id}");
        loop {
            let s: Value =
                http.get(&status_url).header("authorization", &auth).send().await.unwrap().json().await.unwrap();
            if s["tasks"]["done"].as_u64().unwrap() >= 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        pool.kill9();

        // The agent finishes the rest with nobody to report to.
        let ledger_path = agent_dir.join("ledger.sqlite");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let finished = Ledger::open(&ledger_path).unwrap().entries(Some("task_finished")).unwrap().len() as u64;
            if finished == tasks {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "agent stalled offline at {finished} tasks");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let receipts_offline = Ledger::open(&ledger_path).unwrap().entries(Some("receipt")).unwrap().len() as u64;
        assert!(receipts_offline < tasks, "some results must have been held back");
        tokio::time::sleep(Duration::from_millis(500)).await;

        let pool = PoolProcess::start_on(&dir, &listen);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Ok(resp) = http.get(&status_url).header("authorization", &auth).send().await
                && let Ok(s) = resp.json::<Value>().await
                && s["state"] != "running"
            {
                break s;
            }
            assert!(tokio::time::Instant::now() < deadline, "results were not delivered after the pool came back");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        stop_tx.send(true).unwrap();
        let summary = running.await.unwrap().unwrap();

        assert_eq!(status["state"], "done", "{status}");
        assert_eq!(summary.tasks_finished, tasks, "no task was run twice: {summary:?}");
        assert_eq!(summary.receipts, tasks, "every result was delivered and receipted: {summary:?}");
        assert_eq!(summary.results_pending, 0);
        let stats: Value = http.get(format!("{}/v1/stats", pool.url)).send().await.unwrap().json().await.unwrap();
        assert_eq!(stats["devices"][0]["valid_results"], tasks, "{stats}");
        assert!(Ledger::open(&ledger_path).unwrap().verify().unwrap().ok());
    });
}
