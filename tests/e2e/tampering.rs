//! A pool (or someone between it and us) that lies: the agent must refuse a
//! kernel whose bytes do not match the signed SHA-256 and a manifest whose
//! signature does not verify, run nothing for them, and carry on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use idlemesh_agent::{Ledger, Slot};
use idlemesh_protocol::{Keypair, Sha256};
use serde_json::{Value, json};

use crate::harness::{OperatorHttp, PoolProcess, agent_config};

/// Forwards everything to the real pool, but breaks the first kernel
/// download and the first manifest it sees.
#[derive(Clone)]
struct Tamperer {
    upstream: String,
    http: reqwest::Client,
    kernel_path: String,
    kernel_tampered: Arc<AtomicBool>,
    manifest_tampered: Arc<AtomicBool>,
}

async fn forward(
    State(t): State<Tamperer>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
    let mut req = t.http.request(method, format!("{}{path}", t.upstream)).body(body);
    for (name, value) in &headers {
        if name.as_str().starts_with("x-idlemesh-") || name == "content-type" || name == "authorization" {
            req = req.header(name, value);
        }
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let mut out_headers = HeaderMap::new();
    if let Some(ct) = resp.headers().get("content-type") {
        out_headers.insert("content-type", ct.clone());
    }
    let mut bytes = resp.bytes().await.unwrap().to_vec();
    if status.is_success() && path == t.kernel_path && !t.kernel_tampered.swap(true, Ordering::SeqCst) {
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
    }
    if status.is_success() && path == "/v1/leases" {
        let mut v: Value = serde_json::from_slice(&bytes).unwrap();
        if let Some(task) = v["tasks"].as_array_mut().and_then(|t| t.first_mut())
            && !t.manifest_tampered.swap(true, Ordering::SeqCst)
        {
            // Inflate the credits without re-signing: what a forger would try.
            let payload = task["payload"].as_str().unwrap().replace("\"credits\":1.0", "\"credits\":1000.0");
            task["payload"] = payload.into();
            bytes = serde_json::to_vec(&v).unwrap();
        }
    }
    (status, out_headers, bytes)
}

#[test]
fn tampered_kernel_and_forged_manifest_are_refused_and_the_agent_carries_on() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = PoolProcess::start(&tmp.path().join("pool"));
    let op = OperatorHttp::new(&pool.url, &pool.token);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (job_id, tasks) = op
            .mandelbrot_job(json!({
                "name": "tamper test", "params": {"width": 64, "height": 48, "max_iter": 64},
                "split": {"kind": "tiles", "width": 64, "height": 48, "tile_width": 16, "tile_height": 48},
                "combiner": {"kind": "png_tiles"},
                // Short, so the replica behind the forged manifest comes back soon.
                "lease_ms": 1000,
            }))
            .await;
        assert_eq!(tasks, 4);
        let kernel_sha = Sha256::of(idlemesh_kernels::MANDELBROT);

        let tamperer = Tamperer {
            upstream: pool.url.clone(),
            http: reqwest::Client::new(),
            kernel_path: format!("/v1/blobs/{kernel_sha}"),
            kernel_tampered: Arc::default(),
            manifest_tampered: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().fallback(forward).with_state(tamperer.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let data = tmp.path().join("agent");
        let ledger_path = data.join("ledger.sqlite");
        let config = agent_config(&proxy_url, &data);
        let mut agent = Slot::connect(config, Arc::new(Keypair::generate().unwrap())).await.unwrap();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(async move { agent.run(stop_rx).await });
        let status = op.until_finished(job_id, Duration::from_secs(60)).await;
        assert_eq!(status["state"], "done", "{status}");
        stop_tx.send(true).unwrap();
        let summary = running.await.unwrap().unwrap();
        assert!(tamperer.kernel_tampered.load(Ordering::SeqCst) && tamperer.manifest_tampered.load(Ordering::SeqCst));
        assert_eq!(summary.tasks_refused, 2, "{summary:?}");
        assert_eq!(summary.tasks_finished, tasks, "{summary:?}");
        assert_eq!(summary.credits, tasks as f64, "forged credits must not count");

        let ledger = Ledger::open(&ledger_path).unwrap();
        let refused: Vec<String> = ledger.entries(Some("task_refused")).unwrap().into_iter().map(|e| e.body).collect();
        assert_eq!(refused.len(), 2);
        assert!(refused.iter().any(|b| b.contains("manifest signature")), "{refused:?}");
        assert!(refused.iter().any(|b| b.contains("kernel SHA-256 mismatch")), "{refused:?}");
        // Nothing ran for the refused attempts: every start is a task that finished.
        let started = ledger.entries(Some("task_started")).unwrap().len() as u64;
        assert_eq!(started, tasks);
        assert!(ledger.verify(None).unwrap().ok());
    });
}
