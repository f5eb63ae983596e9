//! An operator's round trip with `idlemesh job`, against a real pool process
//! worked on by a real agent.

use std::sync::Arc;
use std::time::Duration;

use idlemesh_agent::Slot;
use idlemesh_kernel_mandelbrot as mandelbrot;
use idlemesh_protocol::Keypair;
use serde_json::Value;

use crate::harness::{PoolProcess, agent_config, operator, operator_at};

#[test]
fn submit_status_and_fetch_a_job_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = PoolProcess::start(&tmp.path().join("pool"));
    let kernel = tmp.path().join("mandelbrot.wasm");
    std::fs::write(&kernel, idlemesh_kernels::MANDELBROT).unwrap();
    let k = kernel.to_str().unwrap();
    let params = r#"{"width":64,"height":48,"max_iter":80}"#;

    // Bad input is refused with exit 2 and a reason, before anything is stored.
    let no_split = operator(&pool, &["job", "submit", "--kernel", k]);
    assert_eq!(no_split.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_split.stderr).contains("how to split"));
    let bad_quorum = operator(&pool, &["job", "submit", "--kernel", k, "--range", "0..4", "--quorum", "3"]);
    assert_eq!(bad_quorum.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_quorum.stderr).contains("quorum"));

    let submitted = operator(
        &pool,
        &[
            "job",
            "submit",
            "--kernel",
            k,
            "--name",
            "tiles",
            "--params",
            params,
            "--tiles",
            "64x48",
            "--tile",
            "32x24",
            "--combiner",
            "png-tiles",
            "--json",
        ],
    );
    assert!(submitted.status.success());
    let created: Value = serde_json::from_slice(&submitted.stdout).unwrap();
    let id = created["job_id"].as_u64().unwrap().to_string();
    assert_eq!(created["tasks"], 4);

    let status = operator(&pool, &["job", "status", &id, "--json"]);
    let s: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!((s["state"].as_str(), s["tasks"]["pending"].as_u64()), (Some("running"), Some(4)));
    let early = operator(&pool, &["job", "fetch", &id]);
    assert_eq!(early.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&early.stderr).contains("no output yet"));

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let waited = rt.block_on(async {
        let config = agent_config(&pool.url, &tmp.path().join("agent"));
        let mut agent = Slot::connect(config, Arc::new(Keypair::generate().unwrap())).await.unwrap();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(async move { agent.run(stop_rx).await });
        let (url, token, id) = (pool.url.clone(), pool.token.clone(), id.clone());
        let wait =
            tokio::task::spawn_blocking(move || operator_at(&url, &token, &["job", "status", &id, "--wait", "--json"]));
        let waited = tokio::time::timeout(Duration::from_secs(60), wait).await.expect("job finishes").unwrap();
        stop_tx.send(true).unwrap();
        assert_eq!(running.await.unwrap().unwrap().tasks_finished, 4);
        waited
    });
    assert!(waited.status.success());
    let s: Value = serde_json::from_slice(&waited.stdout).unwrap();
    assert_eq!(
        (s["state"].as_str(), s["tasks"]["done"].as_u64(), s["credits_granted"].as_f64()),
        (Some("done"), Some(4), Some(4.0))
    );

    let png_path = tmp.path().join("out.png");
    let fetched = operator(&pool, &["job", "fetch", &id, "--output", png_path.to_str().unwrap()]);
    assert!(fetched.status.success());
    let mut reader =
        png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png_path).unwrap())).read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    reader.next_frame(&mut pixels).unwrap();
    let p: mandelbrot::Params = serde_json::from_str(params).unwrap();
    assert!(pixels == mandelbrot::render_tile(&p, p.tile_or_whole()).unwrap(), "fetched image differs from native");
}
