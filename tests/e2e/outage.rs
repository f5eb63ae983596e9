//! The pool goes away while the agent works: results finished meanwhile wait
//! in the outbox and are all delivered when it returns, none lost, none doubled.

use std::sync::Arc;
use std::time::Duration;

use idlemesh_agent::{Ledger, Slot};
use idlemesh_protocol::Keypair;
use serde_json::json;

use crate::harness::{OperatorHttp, PoolProcess, agent_config};

#[test]
fn results_finished_while_the_pool_is_down_are_delivered_when_it_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pool");
    let pool = PoolProcess::start(&dir);
    let op = OperatorHttp::new(&pool.url, &pool.token);
    let listen = pool.url.trim_start_matches("http://").to_string();
    let agent_dir = tmp.path().join("agent");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let (job_id, tasks) = op
            .mandelbrot_job(json!({
                "name": "outage", "params": {"width": 640, "height": 480, "max_iter": 1000},
                "split": {"kind": "tiles", "width": 640, "height": 480, "tile_width": 320, "tile_height": 120},
                "combiner": {"kind": "png_tiles"}, "lease_ms": 600000,
            }))
            .await;
        assert_eq!(tasks, 8);

        // The agent takes every task at once, so it can go on working offline.
        let mut config = agent_config(&op.url, &agent_dir);
        config.max_tasks_per_lease = 8;
        let mut agent = Slot::connect(config, Arc::new(Keypair::generate().unwrap())).await.unwrap();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(async move { agent.run(stop_rx).await });

        while op.status(job_id).await.is_none_or(|s| s["tasks"]["done"].as_u64().unwrap() < 1) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        pool.kill9();

        // The agent finishes the rest with nobody to report to.
        let ledger_path = agent_dir.join("ledger.sqlite");
        let count = |kind: &str| Ledger::open(&ledger_path).unwrap().entries(Some(kind)).unwrap().len() as u64;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while count("task_finished") < tasks {
            assert!(
                tokio::time::Instant::now() < deadline,
                "agent stalled offline at {} tasks",
                count("task_finished")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(count("receipt") < tasks, "some results must have been held back");
        tokio::time::sleep(Duration::from_millis(500)).await;

        let _pool = PoolProcess::start_on(&dir, &listen);
        let status = op.until_finished(job_id, Duration::from_secs(120)).await;
        stop_tx.send(true).unwrap();
        let summary = running.await.unwrap().unwrap();

        assert_eq!(status["state"], "done", "{status}");
        assert_eq!(summary.tasks_finished, tasks, "no task was run twice: {summary:?}");
        assert_eq!(summary.receipts, tasks, "every result was delivered and receipted: {summary:?}");
        assert_eq!(summary.results_pending, 0);
        let stats = op.stats().await;
        assert_eq!(stats["devices"][0]["valid_results"], tasks, "{stats}");
        assert!(Ledger::open(&ledger_path).unwrap().verify(None).unwrap().ok());
    });
}
