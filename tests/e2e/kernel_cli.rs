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
    // A GPU worker: its driver loaded before the lockdown, then walled in.
    assert_eq!(report["sandbox"]["profile"], "gpu", "{report}");
    assert_eq!(
        (report["sandbox"]["seccomp"].as_bool(), report["sandbox"]["netns"].as_bool()),
        (Some(true), Some(true))
    );
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

/// A WASM kernel in a locked-down worker: the same bytes as native code,
/// the compiled-kernel cache kept across runs (the one directory the worker
/// may write), and the layers in force in the report.
#[test]
fn kernel_run_reports_its_sandbox_and_keeps_its_cache_across_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let kernel = tmp.path().join("mandelbrot.wasm");
    std::fs::write(&kernel, idlemesh_kernels::MANDELBROT).unwrap();
    let params = r#"{"width":64,"height":48,"max_iter":100}"#;
    let expected = {
        let p: idlemesh_kernel_mandelbrot::Params = serde_json::from_str(params).unwrap();
        idlemesh_kernel_mandelbrot::render_tile(&p, p.tile_or_whole()).unwrap()
    };
    let run = |json: bool| {
        let mut args = vec!["kernel", "run", kernel.to_str().unwrap(), "--params", params];
        if json {
            args.push("--json");
        }
        idlemesh(tmp.path(), &args)
    };
    let first = json(&run(true));
    let second = json(&run(true));
    for report in [&first, &second] {
        assert_eq!(report["status"], "ok", "{report}");
        assert_eq!(report["output_sha256"], idlemesh_protocol::Sha256::of(&expected).to_string());
        let sandbox = &report["sandbox"];
        assert_eq!(sandbox["profile"], "cpu");
        for layer in
            ["no_new_privs", "fds_closed", "empty_env", "private_cwd", "rlimits", "landlock_net", "netns", "seccomp"]
        {
            assert_eq!(sandbox[layer], true, "{layer}: {sandbox}");
        }
        assert!(sandbox["landlock_abi"].as_u64().unwrap() >= 4, "{sandbox}");
        assert_eq!(sandbox["missing"], serde_json::json!({}), "{sandbox}");
    }
    assert_eq!((first["cache_hit"].as_bool(), second["cache_hit"].as_bool()), (Some(false), Some(true)));
    let text = String::from_utf8_lossy(&run(false).stdout).into_owned();
    assert!(text.contains("sandbox      no_new_privs fds_closed empty_env private_cwd rlimits landlock(ABI"), "{text}");
}
