//! Three `pool serve` replicas on one PostgreSQL database, agents spread
//! across them, one replica killed with `kill -9` in the middle of a job and
//! another started in its place: the job completes, the image is exact,
//! every task has one quorum, no result is lost or credited twice, and every
//! agent's ledger verifies.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use idlemesh_agent::Slot;
use idlemesh_kernel_mandelbrot as mandelbrot;
use idlemesh_pool::test_cluster::Cluster;
use idlemesh_protocol::{Keypair, PublicKey};
use serde_json::json;

use crate::harness::{OperatorHttp, PoolProcess, agent_config};

const TASKS: u64 = 20;
const REPLICATION: u64 = 2;

/// (receipt id, credits) of the receipts in an agent's ledger.
fn ledger_receipts(ledger: &std::path::Path) -> Vec<(u64, f64)> {
    let ledger = idlemesh_agent::Ledger::open(ledger).unwrap();
    ledger
        .entries(Some("receipt"))
        .unwrap()
        .iter()
        .map(|e| {
            let body: serde_json::Value = serde_json::from_str(&e.body).unwrap();
            let payload: serde_json::Value =
                serde_json::from_str(body["receipt"]["payload"].as_str().unwrap()).unwrap();
            (payload["receipt_id"].as_u64().unwrap(), payload["credits"].as_f64().unwrap())
        })
        .collect()
}

#[test]
fn three_replicas_on_one_database_survive_losing_one_mid_job() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = Cluster::shared();
    let db = cluster.create_database().unwrap();
    let db_name = db.split('?').next().unwrap().rsplit('/').next().unwrap().to_owned();
    let key_file = tmp.path().join("pool.key");
    // The first replica makes the key; the others are given the same file.
    let replicas: Vec<PoolProcess> = (0..3)
        .map(|i| PoolProcess::start_replica(&tmp.path().join(format!("replica{i}")), &db, &key_file, "127.0.0.1:0"))
        .collect();
    assert!(replicas.iter().all(|r| r.public_key == replicas[0].public_key), "one pool, one key");
    // A replica with another key is refused by the database.
    let stranger = std::process::Command::new(crate::harness::BIN)
        .args(["pool", "serve", "--listen", "127.0.0.1:0", "--db", &db, "--data-dir"])
        .arg(tmp.path().join("stranger"))
        .env("IDLEMESH_OPERATOR_TOKEN", "t")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&stranger.stderr);
    assert!(!stranger.status.success() && said.contains("not to this key") && said.contains("--key-file"), "{said}");

    let pool_key: PublicKey = replicas[0].public_key.trim_start_matches("ed25519:").parse().unwrap();
    let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
    let token = replicas[0].token.clone();
    let op = OperatorHttp::new(&urls[0], &token);
    let params = json!({"width": 320, "height": 240, "max_iter": 4000});
    let expected: mandelbrot::Params = serde_json::from_value(params.clone()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut replicas = replicas;
    rt.block_on(async {
        let (job_id, tasks) = op
            .mandelbrot_job(json!({
                "name": "replicas", "params": params, "combiner": {"kind": "png_tiles"}, "lease_ms": 2000,
                "replication": REPLICATION, "quorum": REPLICATION,
                "split": {"kind": "tiles", "width": 320, "height": 240, "tile_width": 80, "tile_height": 48},
            }))
            .await;
        assert_eq!(tasks, TASKS);

        // One agent per replica.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut running = Vec::new();
        for (i, url) in urls.iter().enumerate() {
            let config = agent_config(url, &tmp.path().join(format!("agent{i}")));
            let mut agent = Slot::connect(config, Arc::new(Keypair::generate().unwrap())).await.unwrap();
            let stop = stop_rx.clone();
            running.push(tokio::spawn(async move { agent.run(stop).await }));
        }

        // Kill the second replica once some, but not all, tasks are done;
        // start another where its agent looks for it.
        loop {
            let done = op.status(job_id).await.map(|s| s["tasks"]["done"].as_u64().unwrap()).unwrap_or(0);
            if done >= 3 {
                assert!(done < TASKS, "the job finished before a replica could be killed");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let killed = replicas.remove(1);
        let listen = killed.url.trim_start_matches("http://").to_owned();
        killed.kill9();
        tokio::time::sleep(Duration::from_millis(300)).await;
        replicas.push(PoolProcess::start_replica(&tmp.path().join("replica1-again"), &db, &key_file, &listen));

        let status = op.until_finished(job_id, Duration::from_secs(240)).await;
        assert_eq!(status["state"], "done", "{status}");
        assert_eq!(status["tasks"], json!({"total": TASKS, "pending": 0, "leased": 0, "done": TASKS, "failed": 0}));
        // Every replica answers for the same pool.
        for url in &urls {
            let other = OperatorHttp::new(url, &token);
            assert_eq!(other.status(job_id).await.unwrap()["state"], "done");
        }
        let mut reader = png::Decoder::new(std::io::Cursor::new(op.output(job_id).await)).read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        reader.next_frame(&mut pixels).unwrap();
        assert!(pixels == mandelbrot::render_tile(&expected, expected.tile_or_whole()).unwrap(), "the image is exact");

        // The result that completes a task's quorum is answered with its
        // receipt; one whose answer the killed replica never sent is sent
        // again from the agent's outbox and answered with the same receipt.
        // (The first result of a task is answered "pending", and its
        // receipt stays with the pool: docs/architecture.md.)
        let ledgers: Vec<_> = (0..3).map(|i| tmp.path().join(format!("agent{i}/ledger.sqlite"))).collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while ledgers.iter().map(|l| ledger_receipts(l).len() as u64).sum::<u64>() < TASKS {
            assert!(std::time::Instant::now() < deadline, "receipts missing from the agents' ledgers");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        stop_tx.send(true).unwrap();
        for r in running {
            r.await.unwrap().unwrap();
        }

        // The database: one quorum per task, one receipt per accepted replica, nothing paid twice.
        let sql = |q: &str| cluster.psql(&db_name, q).unwrap();
        assert_eq!(sql("SELECT count(*) FROM tasks WHERE state = 'done' AND canonical_sha256 IS NOT NULL"), TASKS.to_string());
        assert_eq!(
            sql("SELECT count(*) FROM (SELECT task_id FROM replicas WHERE valid = 1 GROUP BY task_id HAVING count(*) = 2) q"),
            TASKS.to_string(),
            "each task accepted exactly its quorum of replicas"
        );
        assert_eq!(sql("SELECT count(*) FROM replicas WHERE valid = 0"), "0");
        assert_eq!(sql("SELECT count(DISTINCT device_id) FROM replicas WHERE valid = 1"), "3", "every agent worked");
        assert_eq!(sql("SELECT count(*), count(DISTINCT replica_id) FROM receipts"), format!("{0}|{0}", TASKS * REPLICATION));
        assert_eq!(sql("SELECT sum(credits) FROM devices"), (TASKS * REPLICATION).to_string());
        assert_eq!(status["credits_granted"].as_f64(), Some((TASKS * REPLICATION) as f64));

        // The agents: every receipt once, in one ledger, one the pool
        // issued, and each ledger verifies against the pool's key.
        let issued: HashSet<u64> = sql("SELECT id FROM receipts").lines().map(|l| l.parse().unwrap()).collect();
        let mut seen = HashSet::new();
        let mut credits = 0.0;
        for ledger in &ledgers {
            let receipts = ledger_receipts(ledger);
            for (id, c) in receipts {
                assert!(seen.insert(id), "receipt {id} twice");
                assert!(issued.contains(&id), "receipt {id} was not issued by the pool");
                credits += c;
            }
            let report = idlemesh_agent::Ledger::open(ledger).unwrap().verify(Some(&pool_key)).unwrap();
            assert!(report.ok(), "{}: {report:?}", ledger.display());
        }
        assert!(seen.len() as u64 >= TASKS, "each task's completing result brought its receipt home");
        assert_eq!(credits, seen.len() as f64, "one credit a task");
    });
}
