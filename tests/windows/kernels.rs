//! `idlemesh.exe kernel run` under Wine against `idlemesh kernel run` on
//! Linux, for every WASM kernel and every hostile mode.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::wat_kernel::wat_kernel;
use crate::wine::{LINUX_BIN, run, win_path, wine};

/// One run of `kernel run --json` on each side: (exit code, report, output bytes).
struct Both {
    linux: (Option<i32>, Value, Vec<u8>),
    windows: (Option<i32>, Value, Vec<u8>),
}

fn report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("--json prints JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// `kernel run KERNEL --input INPUT --params PARAMS EXTRA --json` on Linux
/// and on Windows, each writing its own output file in `dir`.
fn run_both(dir: &Path, name: &str, kernel: &Path, input: &Path, params: &str, extra: &[&str]) -> Both {
    let side = |windows: bool| {
        let output = dir.join(format!("{name}-{}.out", if windows { "windows" } else { "linux" }));
        let _ = std::fs::remove_file(&output);
        let path = |p: &Path| if windows { win_path(p) } else { p.display().to_string() };
        let mut cmd = if windows { wine().idlemesh() } else { Command::new(LINUX_BIN) };
        cmd.args(["kernel", "run", &path(kernel), "--input", &path(input), "--params", params, "--output"])
            .arg(path(&output))
            .args(extra)
            .arg("--json")
            // The data dir is not read by `kernel run`; keep it out of $HOME anyway.
            .env("IDLEMESH_DATA_DIR", dir.join("data"));
        let out = run(
            &format!("{} kernel run {name} {params}", if windows { "idlemesh.exe" } else { "idlemesh" }),
            cmd,
            Duration::from_secs(120),
        );
        (out.status.code(), report(&out), std::fs::read(&output).unwrap_or_default())
    };
    Both { linux: side(false), windows: side(true) }
}

#[test]
fn every_kernel_gives_the_same_bytes_and_fuel_on_windows_as_on_linux() {
    let tmp = tempfile::tempdir().unwrap();
    let image: Vec<u8> = (0..256u32 * 256 * 4).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let cases: [(&str, &[u8], Vec<u8>, &str); 5] = [
        ("mandelbrot", idlemesh_kernels::MANDELBROT, Vec::new(), r#"{"width":96,"height":64,"max_iter":256}"#),
        ("sha256chain", idlemesh_kernels::SHA256CHAIN, Vec::new(), r#"{"seed":"idlemesh","iterations":20000}"#),
        ("matmul", idlemesh_kernels::MATMUL, Vec::new(), r#"{"n":64,"seed":1}"#),
        (
            "nbody",
            idlemesh_kernels::NBODY,
            idlemesh_kernel_nbody::bodies(256, 1),
            r#"{"n":256,"dt":0.01,"eps2":0.001}"#,
        ),
        ("downscale", idlemesh_kernels::DOWNSCALE, image, r#"{"width":256,"height":256,"factor":4}"#),
    ];
    for (name, kernel, input, params) in cases {
        let (kernel_file, input_file) =
            (tmp.path().join(format!("{name}.wasm")), tmp.path().join(format!("{name}.in")));
        std::fs::write(&kernel_file, kernel).unwrap();
        std::fs::write(&input_file, &input).unwrap();
        // Metered, so the fuel each used is compared too.
        let both = run_both(tmp.path(), name, &kernel_file, &input_file, params, &["--max-fuel", "100000000000"]);
        let ((l_code, l, l_out), (w_code, w, w_out)) = (both.linux, both.windows);
        assert_eq!((l_code, l["status"].as_str()), (Some(0), Some("ok")), "{name} on Linux: {l}");
        assert_eq!((w_code, w["status"].as_str()), (Some(0), Some("ok")), "{name} on Windows: {w}");
        assert!(!l_out.is_empty(), "{name} wrote no output");
        assert!(
            l_out == w_out,
            "{name}: the Windows output differs from Linux's ({} vs {} bytes)",
            w_out.len(),
            l_out.len()
        );
        assert_eq!(w["output_sha256"], l["output_sha256"], "{name}");
        assert!(l["fuel"].as_u64().is_some_and(|f| f > 0), "{name}: {l}");
        // Metered replicas of one task on Linux and Windows must agree on
        // fuel too (quorum votes on output and fuel). Instantiation's fuel,
        // which differs between platforms, is not counted.
        assert_eq!(w["fuel"], l["fuel"], "{name}: fuel used");
        // GetProcessTimes on Windows, as CLOCK_PROCESS_CPUTIME_ID on Linux
        // (compiling the kernel alone takes tens of ms of CPU).
        assert!(w["cpu_ms"].as_u64().is_some_and(|ms| ms > 0), "{name}: no CPU time on Windows: {w}");
    }
}

#[test]
fn hostile_kernels_end_the_same_way_on_windows_as_on_linux() {
    let tmp = tempfile::tempdir().unwrap();
    let kernel = tmp.path().join("hostile.wasm");
    std::fs::write(&kernel, idlemesh_kernels::HOSTILE).unwrap();
    let empty = tmp.path().join("empty.in");
    std::fs::write(&empty, b"").unwrap();
    // Each mode with the status it must end in (hostile.rs runs the same
    // corpus through worker processes on Linux, with more detail).
    let modes = [
        ("spin", "timed-out"),
        ("spin-calling-host", "timed-out"),
        ("checkpoint-spam", "trapped"),
        ("grow", "out-of-memory"),
        ("recurse", "trapped"),
        ("panic", "trapped"),
        ("divide-by-zero", "trapped"),
        ("error", "error"),
        ("big-output", "error"),
        ("log-spam", "ok"),
        ("huge-checkpoint", "trapped"),
        ("probe", "ok"),
    ];
    for (mode, status) in modes {
        let params = format!("\"{mode}\"");
        // Room for what the mode must be stopped by, not by memory first.
        let memory_mb = match mode {
            "huge-checkpoint" => "256",
            "big-output" => "128",
            _ => "64",
        };
        let extra = ["--timeout-s", "2", "--max-memory-mb", memory_mb, "--max-output-mb", "1"];
        let both = run_both(tmp.path(), mode, &kernel, &empty, &params, &extra);
        let ((l_code, l, l_out), (w_code, w, w_out)) = (both.linux, both.windows);
        assert_eq!(l["status"].as_str(), Some(status), "{mode} on Linux: {l}");
        assert_eq!(w["status"].as_str(), Some(status), "{mode} on Windows: {w}");
        assert_eq!(w_code, l_code, "{mode}: exit status");
        assert!(w_out == l_out, "{mode}: output differs");
        if mode == "probe" {
            // What the kernel could reach on Windows: nothing, as on Linux
            // (and its output, equal to Linux's, says so line by line).
            let seen = String::from_utf8_lossy(&w_out);
            for line in
                ["file: denied", "dir: denied", "write: denied", "env: 0", "args: 0", "tcp: denied", "udp: denied"]
            {
                assert!(seen.lines().any(|l| l == line), "expected {line:?} in:\n{seen}");
            }
        }
    }
}

/// A component of plain WebAssembly (a counted loop, no WASI): metering
/// itself agrees between the builds, instruction for instruction.
#[test]
fn a_plain_webassembly_kernel_uses_the_same_fuel_on_windows_as_on_linux() {
    let tmp = tempfile::tempdir().unwrap();
    let kernel = tmp.path().join("loop.wasm");
    let counted_loop = "(local $i i32)
      (loop $l
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $l (i32.lt_u (local.get $i) (i32.const 100000))))";
    std::fs::write(&kernel, wat_kernel(1, "", counted_loop)).unwrap();
    let empty = tmp.path().join("empty.in");
    std::fs::write(&empty, b"").unwrap();
    let both = run_both(tmp.path(), "loop", &kernel, &empty, "{}", &["--max-fuel", "100000000"]);
    let (l, w) = (both.linux.1, both.windows.1);
    assert_eq!((l["status"].as_str(), w["status"].as_str()), (Some("ok"), Some("ok")), "{l}\n{w}");
    // 100,000 rounds of a 6-instruction loop, and a little around it.
    assert!(l["fuel"].as_u64().is_some_and(|f| f > 600_000), "{l}");
    assert_eq!(w["fuel"], l["fuel"], "fuel of the same plain kernel");
}
