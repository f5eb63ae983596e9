//! The demo flow: pool, agent over HTTP, worker process, PNG, ledger.

use idlemesh_kernel_mandelbrot as mandelbrot;
use serde_json::Value;

use crate::harness::idlemesh;

#[test]
fn demo_renders_the_exact_image_and_keeps_a_verifiable_ledger() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = tmp.path().join("out");
    let run = idlemesh(&data, &["demo", "--headless", "--out", out.to_str().unwrap(), "--json"]);
    assert!(run.status.success(), "demo failed");
    let summary: Value = serde_json::from_slice(&run.stdout).expect("demo --json prints JSON");
    let tasks = summary["tasks"].as_u64().unwrap();
    assert!(tasks >= 16, "{tasks} tasks");
    assert_eq!(summary["tasks_finished"].as_u64(), Some(tasks));
    assert_eq!(summary["receipts"].as_u64(), Some(tasks));
    assert_eq!(summary["credits"].as_f64(), Some(tasks as f64));
    assert!(summary["cpu_seconds"].as_f64().unwrap() > 0.0);

    // The PNG: right size, every pixel equal to the natively computed image.
    let png_path = out.join("mandelbrot.png");
    assert_eq!(summary["png"].as_str(), Some(png_path.to_str().unwrap()));
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png_path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    assert_eq!((info.width, info.height), (1024, 768));
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let params: mandelbrot::Params = serde_json::from_str(
        r#"{"width":1024,"height":768,"max_iter":256,"center_re":-0.5,"center_im":0.0,"span":3.0}"#,
    )
    .unwrap();
    let native = mandelbrot::render_tile(&params, params.tile_or_whole()).unwrap();
    assert_eq!(native.len(), pixels.len());
    let differing = native.iter().zip(&pixels).filter(|(a, b)| a != b).count();
    assert_eq!(differing, 0, "{differing} bytes differ from the native image");

    // The ledger: in the agent's data dir, one finished entry per task.
    let ledger = data.join("ledger.sqlite");
    assert_eq!(summary["ledger"].as_str(), Some(ledger.to_str().unwrap()));
    let show = idlemesh(&data, &["ledger", "show", "--kind", "task_finished", "--json"]);
    assert!(show.status.success());
    let finished: Vec<Value> = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(finished.len() as u64, tasks);
    let mut task_ids: Vec<u64> = finished
        .iter()
        .map(|e| {
            let body: Value = serde_json::from_str(e["body"].as_str().unwrap()).unwrap();
            assert_eq!(body["status"], "ok");
            assert!(body["wall_ms"].is_u64() && body["cpu_ms"].is_u64());
            body["task_id"].as_u64().unwrap()
        })
        .collect();
    task_ids.sort();
    task_ids.dedup();
    assert_eq!(task_ids.len() as u64, tasks, "one finished entry per distinct task");

    let verify = idlemesh(&data, &["ledger", "verify"]);
    assert!(verify.status.success(), "verify of an untouched ledger failed");

    // Change one byte of one entry in the SQLite file itself.
    let victim = &finished[finished.len() / 2];
    let seq = victim["seq"].as_u64().unwrap();
    let body = victim["body"].as_str().unwrap();
    assert!(
        !data.join("ledger.sqlite-wal").exists()
            || std::fs::metadata(data.join("ledger.sqlite-wal")).unwrap().len() == 0
    );
    crate::harness::alter_wall_ms(&ledger, body);

    let verify = idlemesh(&data, &["ledger", "verify", "--ledger", ledger.to_str().unwrap()]);
    assert_eq!(verify.status.code(), Some(1), "verify must fail on an altered ledger");
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(text.contains(&format!("entry {seq} ")), "verify must name entry {seq}: {text}");

    let json = idlemesh(&data, &["ledger", "verify", "--json"]);
    let report: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["first_bad"]["seq"].as_u64(), Some(seq));
    assert_eq!(report["ok"], false);
}

#[test]
fn bad_input_exits_2_with_a_message() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope.sqlite");
    let out = idlemesh(tmp.path(), &["ledger", "verify", "--ledger", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no ledger at"));
    let out = idlemesh(tmp.path(), &["demo", "--width", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let out = idlemesh(tmp.path(), &["no-such-command"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn version_names_the_sandbox() {
    let tmp = tempfile::tempdir().unwrap();
    let out = idlemesh(tmp.path(), &["--version"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("wasmtime 48."), "{text}");
    assert!(text.contains("profile "), "{text}");
}
