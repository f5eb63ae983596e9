//! `idlemesh kernel run` as a user runs it: WASM and WGSL kernels, `--json`
//! fields, exit statuses.

use std::path::PathBuf;

use crate::harness::idlemesh;

fn wgsl(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../kernels/wgsl").join(name).to_string_lossy().into_owned()
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

#[test]
fn kernel_run_runs_wgsl_on_the_gpu_and_reports_the_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let n = 8;
    let (a, b) = (idlemesh_kernel_matmul::matrix(n, 1), idlemesh_kernel_matmul::matrix(n, 2));
    let input = tmp.path().join("ab.bin");
    std::fs::write(&input, a.iter().chain(&b).flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let output = tmp.path().join("c.bin");
    let (shader, manifest) = (wgsl("matmul.wgsl"), wgsl("matmul.json"));
    let args = [
        "kernel",
        "run",
        &shader,
        "--manifest",
        &manifest,
        "--input",
        input.to_str().unwrap(),
        "--params",
        r#"{"n":8}"#,
        "--output",
        output.to_str().unwrap(),
        "--json",
    ];
    let out = idlemesh(tmp.path(), &args);
    assert_eq!(out.status.code(), Some(0));
    let report = json(&out);
    assert_eq!(report["status"], "ok");
    assert_eq!(report["output_bytes"], n * n * 4);
    assert!(report["adapter"].as_str().is_some_and(|a| !a.is_empty()), "{report}");
    let written = std::fs::read(&output).unwrap();
    assert_eq!(report["output_sha256"], idlemesh_protocol::Sha256::of(&written).to_hex());
    let c: Vec<f32> = written.chunks_exact(4).map(|x| f32::from_le_bytes(x.try_into().unwrap())).collect();
    for (g, w) in c.iter().zip(idlemesh_kernel_matmul::multiply(n, &a, &b)) {
        assert!((g - w).abs() < 1e-5, "{g} vs {w}");
    }

    // A shader that does not compile is the kernel's failure: exit 1, named.
    let bad = tmp.path().join("bad.wgsl");
    std::fs::write(&bad, "@compute fn main( {").unwrap();
    let out = idlemesh(tmp.path(), &["kernel", "run", bad.to_str().unwrap(), "--manifest", &manifest, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)["status"], "invalid-kernel");

    // Bad usage is exit 2 with a message naming the problem.
    let out = idlemesh(tmp.path(), &["kernel", "run", &shader]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--manifest"));
    let broken = tmp.path().join("broken.json");
    std::fs::write(&broken, r#"{"invocations": [], "bindings": []}"#).unwrap();
    let out = idlemesh(tmp.path(), &["kernel", "run", &shader, "--manifest", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invocations has 0 entries"));
}
