//! A WGSL job through the whole system: submitted with its layout, leased
//! only to a device that enabled its GPU, run on the real adapter (lavapipe
//! here), combined by the pool.

use std::time::Duration;

use idlemesh_kernel_mandelbrot as mandelbrot;
use serde_json::Value;

use crate::agent_process::{AgentProcess, write_settings};
use crate::harness::{OperatorHttp, PoolProcess, operator};

#[test]
fn a_wgsl_job_runs_only_once_the_gpu_is_enabled() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = PoolProcess::start(&tmp.path().join("pool"));
    let wgsl = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../kernels/wgsl");
    let (shader, layout) = (wgsl.join("mandelbrot.wgsl"), wgsl.join("mandelbrot.json"));
    let params = r#"{"width":64,"height":32,"max_iter":100,"center_re":-0.5,"center_im":0.0,"span":3.0}"#;
    let args = [
        "job",
        "submit",
        "--kernel",
        shader.to_str().unwrap(),
        "--manifest",
        layout.to_str().unwrap(),
        "--params",
        params,
        "--tiles",
        "64x32",
        "--tile",
        "32x16",
        "--json",
    ];
    let out = operator(&pool, &args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let job = created["job_id"].as_u64().unwrap();
    assert_eq!(created["tasks"], 4);
    // A WGSL kernel without its layout is refused before anything is uploaded.
    let out = operator(&pool, &["job", "submit", "--kernel", shader.to_str().unwrap(), "--range", "0..2"]);
    assert_eq!(out.status.code(), Some(2));

    // GPU use is off by default: the device gets no GPU work.
    let dir = tmp.path().join("device");
    write_settings(&dir, "cpu_duty_cycle_percent = 100\n");
    let mut agent = AgentProcess::start(&dir, Some(&pool.url), &[("XDG_RUNTIME_DIR", "/tmp")]);
    agent.wait_for("enrolled", Duration::from_secs(30), |s| s["scheduler"]["device_id"].is_u64());
    std::thread::sleep(Duration::from_secs(3));
    let op = OperatorHttp::new(&pool.url, &pool.token);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let status = rt.block_on(op.status(job)).unwrap();
    assert_eq!(status["tasks"]["pending"], 4, "no GPU task leased while the GPU is off: {status}");

    // Enabled: the agent probes the adapter, offers it, and the job completes.
    let out = agent.ctl(&["settings", "set", "gpu_enabled", "true"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s =
        agent.wait_for("the GPU job", Duration::from_secs(120), |s| s["scheduler"]["summary"]["tasks_finished"] == 4);
    let status = rt.block_on(op.until_finished(job, Duration::from_secs(30)));
    assert_eq!(status["state"], "done", "{status}\n{s}");
    assert!(agent.log().contains("GPU work enabled"), "{}", agent.log());

    // The combined output is the four tiles' counts in order, each matching
    // the native f32 reference (up to a GPU's fused multiply-adds).
    let output = rt.block_on(op.output(job));
    assert_eq!(output.len(), 64 * 32 * 4);
    let p: mandelbrot::Params = serde_json::from_str(params).unwrap();
    let mut want = Vec::new();
    for (x, y) in [(0, 0), (32, 0), (0, 16), (32, 16)] {
        let tile = mandelbrot::Tile { x, y, width: 32, height: 16 };
        want.extend(mandelbrot::escape_counts_f32(&p, tile).unwrap());
    }
    let got: Vec<u32> = output.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect();
    let same = got.iter().zip(&want).filter(|(a, b)| a == b).count();
    assert!(same * 100 >= want.len() * 98, "{same} of {} counts match", want.len());
    agent.stop();
}
