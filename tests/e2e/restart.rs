//! kill -9 the pool in the middle of a job and start it again on the same
//! database: no task is lost or doubled, and the job completes.

use std::sync::Arc;
use std::time::Duration;

use idlemesh_agent::Slot;
use idlemesh_kernel_mandelbrot as mandelbrot;
use idlemesh_protocol::Keypair;
use serde_json::json;

use crate::harness::{OperatorHttp, PoolProcess, agent_config};

#[test]
fn a_pool_killed_mid_job_restarts_and_finishes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pool");
    let pool = PoolProcess::start(&dir);
    let op = OperatorHttp::new(&pool.url, &pool.token);
    let listen = pool.url.trim_start_matches("http://").to_string();
    let params = json!({"width": 320, "height": 240, "max_iter": 8000});
    let expected: mandelbrot::Params = serde_json::from_value(params.clone()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let (job_id, tasks) = op
            .mandelbrot_job(json!({
                "name": "restart", "params": params, "combiner": {"kind": "png_tiles"}, "lease_ms": 2000,
                "split": {"kind": "tiles", "width": 320, "height": 240, "tile_width": 80, "tile_height": 48},
            }))
            .await;
        assert_eq!(tasks, 20);

        let config = agent_config(&op.url, &tmp.path().join("agent"));
        let mut agent = Slot::connect(config, Arc::new(Keypair::generate().unwrap())).await.unwrap();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(async move { agent.run(stop_rx).await });

        // Kill the pool once some, but not all, tasks are done.
        loop {
            let done = op.status(job_id).await.map(|s| s["tasks"]["done"].as_u64().unwrap()).unwrap_or(0);
            if done >= 3 {
                assert!(done < 20, "the job finished before the pool could be killed");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        pool.kill9();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _pool = PoolProcess::start_on(&dir, &listen);

        let status = op.until_finished(job_id, Duration::from_secs(90)).await;
        stop_tx.send(true).unwrap();
        running.await.unwrap().unwrap();

        assert_eq!(status["state"], "done", "{status}");
        assert_eq!(status["tasks"], json!({"total": 20, "pending": 0, "leased": 0, "done": 20, "failed": 0}));
        // Exactly one accepted result, credit and receipt per task: nothing doubled.
        assert_eq!(status["credits_granted"].as_f64(), Some(20.0));
        let stats = op.stats().await;
        assert_eq!(stats["devices"][0]["valid_results"], 20, "{stats}");
        // And the image is whole and right.
        let mut reader = png::Decoder::new(std::io::Cursor::new(op.output(job_id).await)).read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        reader.next_frame(&mut pixels).unwrap();
        assert!(pixels == mandelbrot::render_tile(&expected, expected.tile_or_whole()).unwrap());
    });
}

#[test]
fn pool_migrate_brings_a_database_to_the_schema_and_is_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("p/pool.sqlite");
    let arg = db.display().to_string();
    for _ in 0..2 {
        let out = crate::harness::idlemesh(tmp.path(), &["pool", "migrate", "--db", &arg]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("schema version 10"),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let conn = rusqlite::Connection::open(&db).unwrap();
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, 10);
}
