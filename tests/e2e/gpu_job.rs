//! A WGSL job through the whole system: submitted with its layout, leased
//! only to a device that enabled its GPU, run on the real adapter (lavapipe
//! here), combined by the pool.

use std::time::Duration;

use idlemesh_kernel_mandelbrot as mandelbrot;
use serde_json::Value;

use crate::agent_process::{AgentProcess, gpu_workers_of, proc_state, write_settings};
use crate::harness::{OperatorHttp, PoolProcess, operator, submit_wgsl_mandelbrot, wgsl_mandelbrot};

#[test]
fn a_wgsl_job_runs_only_once_the_gpu_is_enabled() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = PoolProcess::start(&tmp.path().join("pool"));
    let params = r#"{"width":64,"height":32,"max_iter":100,"center_re":-0.5,"center_im":0.0,"span":3.0}"#;
    let out = submit_wgsl_mandelbrot(&pool, params, "64x32", "32x16");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let job = created["job_id"].as_u64().unwrap();
    assert_eq!(created["tasks"], 4);
    // A WGSL kernel without its layout is refused before anything is uploaded.
    let (shader, _) = wgsl_mandelbrot();
    let out = operator(&pool, &["job", "submit", "--kernel", &shader, "--range", "0..2"]);
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

/// Whether `pid` computes over 300 ms (its CPU time grows) or stands frozen.
fn computing(pid: u64) -> bool {
    let Some((_, before)) = proc_state(pid) else { return false };
    std::thread::sleep(Duration::from_millis(300));
    proc_state(pid).is_some_and(|(state, after)| state != 'T' && after > before)
}

fn frozen(pid: u64) -> bool {
    let Some((state, before)) = proc_state(pid) else { return false };
    std::thread::sleep(Duration::from_millis(300));
    state == 'T' && proc_state(pid) == Some(('T', before))
}

/// `idlemesh pause --gpu` stops the GPU's kernel and leaves the processor's
/// running, `--cpu` the other way round, each answered once its workers
/// are frozen; `resume --gpu` / `resume` bring them back. Checked in
/// `/proc`, with one GPU and one processor worker running side by side.
#[test]
fn the_gpu_and_the_processor_pause_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = PoolProcess::start(&tmp.path().join("pool"));
    // One long GPU task (every pixel inside the set runs to max_iter), then
    // long processor tasks: one slot runs the GPU's, the other a processor's.
    let params = r#"{"width":256,"height":256,"max_iter":2000000,"center_re":-0.2,"center_im":0.0,"span":0.4}"#;
    let out = submit_wgsl_mandelbrot(&pool, params, "256x256", "256x256");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let op = OperatorHttp::new(&pool.url, &pool.token);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(op.mandelbrot_job(serde_json::json!({
        "name": "cpu", "params": {"width": 160, "height": 120, "max_iter": 400000, "center_re": -0.2, "center_im": 0.0, "span": 0.4},
        "split": {"kind": "tiles", "width": 160, "height": 120, "tile_width": 80, "tile_height": 60},
        "combiner": {"kind": "png_tiles"}, "lease_ms": 600000,
    })));

    let dir = tmp.path().join("device");
    write_settings(&dir, "cpu_duty_cycle_percent = 100\ncpu_cores = 2\ngpu_enabled = true\n");
    let mut agent = AgentProcess::start(&dir, Some(&pool.url), &[("XDG_RUNTIME_DIR", "/tmp")]);
    let s = agent.wait_for("a GPU and a processor worker", Duration::from_secs(120), |s| {
        let w = &s["workers"];
        w["gpu_pids"].as_array().is_some_and(|g| g.len() == 1) && w["pids"].as_array().is_some_and(|p| p.len() == 2)
    });
    let gpu = s["workers"]["gpu_pids"][0].as_u64().unwrap();
    let cpu = s["workers"]["pids"].as_array().unwrap().iter().filter_map(Value::as_u64).find(|&p| p != gpu).unwrap();
    assert!(computing(gpu) && computing(cpu), "both compute at first: {s}");

    let ctl = |args: &[&str]| {
        let out = agent.ctl(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The GPU alone: frozen when `pause` returns, the processor goes on.
    assert_eq!(ctl(&["pause", "--gpu"]).trim(), "GPU work paused until you resume (idlemesh resume --gpu)");
    assert_eq!(proc_state(gpu).unwrap().0, 'T', "the GPU worker is stopped when pause returns");
    assert!(frozen(gpu), "the GPU worker stays frozen");
    assert!(computing(cpu), "the processor worker runs on");
    let s = agent.status();
    assert_eq!(s["state"], "working", "{s}");
    assert_eq!(s["pauses"]["gpu"]["kind"], "until_resumed", "{s}");
    assert_eq!(s["pauses"]["cpu"]["kind"], "none", "{s}");
    assert_eq!(s["manual_pause"]["kind"], "none", "not all work is paused: {s}");
    assert_eq!(s["decision"]["action"]["gpu"], false, "{s}");
    assert_eq!(s["decision"]["action"]["cpu"], true, "{s}");
    assert!(
        s["reasons"].as_array().unwrap().iter().any(|r| r["scope"] == "gpu" && r["code"] == "paused_by_user"),
        "{s}"
    );
    assert_eq!(s["workers"]["frozen_pids"], serde_json::json!([gpu]), "{s}");

    // The processor alone, the GPU back.
    ctl(&["resume", "--gpu"]);
    assert!(computing(gpu), "the GPU worker computes again");
    assert_eq!(
        ctl(&["pause", "--cpu", "1h"]).lines().next().unwrap().split(" until ").next(),
        Some("Processor work paused")
    );
    assert_eq!(proc_state(cpu).unwrap().0, 'T', "the processor worker is stopped when pause returns");
    assert!(frozen(cpu), "the processor worker stays frozen");
    assert!(computing(gpu), "the GPU worker runs on");
    let s = agent.status();
    assert_eq!(
        (s["decision"]["action"]["cpu"].clone(), s["decision"]["action"]["gpu"].clone()),
        (false.into(), true.into()),
        "{s}"
    );

    // A pause of all work covers both; `resume` lifts both.
    ctl(&["pause"]);
    assert!(frozen(gpu) && frozen(cpu), "both frozen");
    assert_eq!(agent.status()["manual_pause"]["kind"], "until_resumed");
    ctl(&["resume"]);
    assert!(computing(gpu) && computing(cpu), "both compute again");
    let s = agent.status();
    assert_eq!(
        (s["pauses"]["cpu"]["kind"].clone(), s["pauses"]["gpu"]["kind"].clone()),
        ("none".into(), "none".into()),
        "{s}"
    );
    agent.stop();
}

/// GPU work on, but no GPU for a worker to find (no Vulkan driver here):
/// pausing the processor leaves nothing to run, and the status says the
/// work is paused, not "using the GPU only".
#[test]
fn with_no_gpu_found_a_processor_pause_stops_all_work() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = PoolProcess::start(&tmp.path().join("pool"));
    let dir = tmp.path().join("device");
    write_settings(&dir, "gpu_enabled = true\n");
    let no_driver = "/nonexistent/icd.json";
    let env = [("WGPU_BACKEND", "vulkan"), ("VK_ICD_FILENAMES", no_driver), ("VK_DRIVER_FILES", no_driver)];
    let mut agent = AgentProcess::start(&dir, Some(&pool.url), &env);
    let s = agent.wait_for("the GPU probe's answer", Duration::from_secs(60), |s| {
        s["sensors"]["snapshot"]["gpu_found"] == false
    });
    assert_eq!(s["decision"]["action"]["gpu"], false, "no GPU, no GPU work: {s}");
    let out = agent.ctl(&["pause", "--cpu"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = agent.status();
    assert_eq!(s["decision"]["action"]["action"], "pause", "nothing left to run: {s}");
    let words = s["decision"]["reasons"].to_string();
    assert!(!words.contains("GPU only"), "{words}");
    // With a GPU found (the same agent, the driver back) it would run the GPU alone:
    // the governor's table test `each_kind_of_work_stops_on_its_own` covers that side.
    agent.stop();
}

/// Stopping GPU work ends the idle GPU worker, which would otherwise keep
/// its device, pipelines and driver (the GPU's memory) while the user plays;
/// a GPU task in progress is frozen instead, and the status gives the bound
/// on what it holds: its `max_memory_bytes`.
#[test]
fn a_gpu_pause_ends_the_idle_gpu_worker() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = PoolProcess::start(&tmp.path().join("pool"));
    let submit = |max_iter: u32, size: &str, tile: &str| {
        let (w, h) = size.split_once('x').unwrap();
        let params = format!(
            r#"{{"width":{w},"height":{h},"max_iter":{max_iter},"center_re":-0.2,"center_im":0.0,"span":0.4}}"#
        );
        let out = submit_wgsl_mandelbrot(&pool, &params, size, tile);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    submit(100, "64x32", "32x16");
    let dir = tmp.path().join("device");
    write_settings(&dir, "cpu_duty_cycle_percent = 100\ncpu_cores = 1\ngpu_enabled = true\n");
    let mut agent = AgentProcess::start(&dir, Some(&pool.url), &[("XDG_RUNTIME_DIR", "/tmp")]);
    let s =
        agent.wait_for("the GPU job", Duration::from_secs(120), |s| s["scheduler"]["summary"]["tasks_finished"] == 4);
    let agent_pid = s["agent"]["pid"].as_u64().unwrap();
    // Kept warm for the next GPU task, as the processor's worker is.
    let idle = gpu_workers_of(agent_pid);
    assert_eq!(idle.len(), 1, "one idle GPU worker: {s}");
    let ctl = |args: &[&str]| {
        let out = agent.ctl(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    ctl(&["pause", "--gpu"]);
    let t0 = std::time::Instant::now();
    while proc_state(idle[0]).is_some_and(|(state, _)| state != 'Z') {
        assert!(t0.elapsed() < Duration::from_secs(10), "the idle GPU worker still runs 10 s into a GPU pause");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(gpu_workers_of(agent_pid).is_empty(), "no GPU worker while GPU work is paused");
    ctl(&["resume", "--gpu"]);

    // A long GPU task, paused in the middle: frozen, its bound shown.
    submit(2_000_000, "256x256", "256x256");
    let s = agent.wait_for("a GPU task", Duration::from_secs(120), |s| {
        s["workers"]["gpu_pids"].as_array().is_some_and(|g| g.len() == 1)
            && s["scheduler"]["current_tasks"].as_array().is_some_and(|t| t.iter().any(|t| t["gpu"] == true))
    });
    let busy = s["workers"]["gpu_pids"][0].as_u64().unwrap();
    ctl(&["pause", "--gpu"]);
    assert_eq!(proc_state(busy).unwrap().0, 'T', "a GPU task in progress is frozen, not ended");
    let s = agent.status();
    let task = s["scheduler"]["current_tasks"].as_array().unwrap().iter().find(|t| t["gpu"] == true).cloned();
    let task = task.unwrap_or_else(|| panic!("the paused GPU task is still shown: {s}"));
    assert_eq!(task["max_memory_bytes"], 256u64 << 20, "the bound on what the frozen worker holds: {s}");
    // Its one slot holds a frozen task: not "working" for the pool.
    assert_eq!(s["state"], "paused", "{s}");
    agent.stop();
}
