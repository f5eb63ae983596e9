//! kill -9 the pool in the middle of a job and start it again on the same
//! database: no task is lost or doubled, and the job completes.

use std::sync::Arc;
use std::time::Duration;

use idlemesh_agent::Agent;
use idlemesh_kernel_mandelbrot as mandelbrot;
use idlemesh_protocol::Keypair;
use serde_json::{Value, json};

use crate::harness::{PoolProcess, agent_config};

async fn get(http: &reqwest::Client, url: &str, token: &str) -> Option<Value> {
    let resp = http.get(url).header("authorization", format!("Bearer {token}")).send().await.ok()?;
    resp.json().await.ok()
}

#[test]
fn a_pool_killed_mid_job_restarts_and_finishes_it() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pool");
    let pool = PoolProcess::start(&dir);
    let (url, token) = (pool.url.clone(), pool.token.clone());
    let listen = url.trim_start_matches("http://").to_string();
    let params = json!({"width": 320, "height": 240, "max_iter": 2000});
    let expected: mandelbrot::Params = serde_json::from_value(params.clone()).unwrap();
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
                "name": "restart", "kernel_kind": "wasm", "kernel_sha256": kernel["sha256"], "params": params,
                "split": {"kind": "tiles", "width": 320, "height": 240, "tile_width": 80, "tile_height": 48},
                "combiner": {"kind": "png_tiles"}, "lease_ms": 2000,
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let job_id = job["job_id"].as_u64().unwrap();
        assert_eq!(job["tasks"], 20);

        let mut agent =
            Agent::connect(agent_config(&url, &tmp.path().join("agent")), Arc::new(Keypair::generate().unwrap()))
                .await
                .unwrap();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(async move { agent.run(stop_rx).await });

        // Kill the pool once some, but not all, tasks are done.
        let status_url = format!("{url}/v1/jobs/{job_id}");
        loop {
            let done = get(&http, &status_url, &token).await.map(|s| s["tasks"]["done"].as_u64().unwrap()).unwrap_or(0);
            if done >= 3 {
                assert!(done < 20, "the job finished before the pool could be killed");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        pool.kill9();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pool = PoolProcess::start_on(&dir, &listen);

        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        let status = loop {
            if let Some(s) = get(&http, &status_url, &token).await
                && s["state"] != "running"
            {
                break s;
            }
            assert!(tokio::time::Instant::now() < deadline, "job did not finish after the restart");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        stop_tx.send(true).unwrap();
        running.await.unwrap().unwrap();

        assert_eq!(status["state"], "done", "{status}");
        assert_eq!(status["tasks"], json!({"total": 20, "pending": 0, "leased": 0, "done": 20, "failed": 0}));
        // Exactly one accepted result, credit and receipt per task: nothing doubled.
        assert_eq!(status["credits_granted"].as_f64(), Some(20.0));
        let stats: Value = http.get(format!("{}/v1/stats", pool.url)).send().await.unwrap().json().await.unwrap();
        assert_eq!(stats["devices"][0]["valid_results"], 20, "{stats}");
        // And the image is whole and right.
        let png_bytes = http
            .get(format!("{}/v1/jobs/{job_id}/output", pool.url))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let mut reader = png::Decoder::new(std::io::Cursor::new(png_bytes.to_vec())).read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        reader.next_frame(&mut pixels).unwrap();
        assert!(pixels == mandelbrot::render_tile(&expected, expected.tile_or_whole()).unwrap());
    });
}
