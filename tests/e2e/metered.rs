//! A metered network means no traffic that can wait (issue 16): the
//! network sensor's real D-Bus code reads NetworkManager's `Metered`
//! property from a fake NetworkManager on a private bus, and a TCP relay
//! between the agent and the pool sees every byte on the wire.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::agent_process::{AgentProcess, write_settings};
use crate::harness::{OperatorHttp, PoolProcess};
use crate::network_manager::NetworkManager;
use crate::tcp_meter::TcpMeter;

fn job() -> Value {
    // Deep in the set: about a second or two per tile here.
    json!({
        "name": "metered", "params": {"width": 160, "height": 120, "max_iter": 40000, "center_re": -0.2, "center_im": 0.0, "span": 0.4},
        "split": {"kind": "tiles", "width": 160, "height": 120, "tile_width": 80, "tile_height": 60},
        "combiner": {"kind": "png_tiles"}, "lease_ms": 600000,
    })
}

#[test]
fn on_a_metered_network_nothing_that_can_wait_goes_out_and_every_byte_is_counted() {
    let nm = NetworkManager::start(false);
    let tmp = tempfile::tempdir().unwrap();
    let pool = PoolProcess::start(&tmp.path().join("pool"));
    let wire = TcpMeter::start(&pool.url);
    let op = OperatorHttp::new(&pool.url, &pool.token);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (job, tasks) = rt.block_on(op.mandelbrot_job(job()));
    let done = || rt.block_on(op.status(job)).unwrap()["tasks"]["done"].as_u64().unwrap();

    // Computing may go on while metered; traffic may not (the defaults:
    // allow_metered and metered_small_traffic off).
    let dir = tmp.path().join("agent");
    write_settings(&dir, "cpu_duty_cycle_percent = 100\npause_on_metered_network = false\n");
    let agent = AgentProcess::start(&dir, Some(&wire.url), &[("DBUS_SYSTEM_BUS_ADDRESS", &nm.bus.address)]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while done() < 1 {
        assert!(Instant::now() < deadline, "no task done:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(100));
    }

    nm.set_metered(true);
    let s = agent.wait_for("the metered network", Duration::from_secs(10), |s| s["decision"]["traffic"] == "none");
    assert_eq!(s["sensors"]["snapshot"]["metered_network"], true, "{s:#}");
    std::thread::sleep(Duration::from_millis(500)); // a request already on its way lands
    let (done_then, wire_then) = (done(), wire.bytes());
    let finished_then = s["scheduler"]["summary"]["tasks_finished"].as_u64().unwrap_or(0);
    // Long enough for a tile to finish (heartbeats fall due only every 200 s
    // of this job's 600 s lease: their gating is not what this watches).
    let s = agent.wait_for("a task finished while metered", Duration::from_secs(60), |s| {
        s["scheduler"]["summary"]["tasks_finished"].as_u64().unwrap_or(0) > finished_then
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(wire.bytes(), wire_then, "not one byte went to the pool while metered");
    assert_eq!(done(), done_then, "no result was uploaded");
    assert!(s["scheduler"]["summary"]["results_pending"].as_u64().unwrap() >= 1, "{s:#}");

    // Still metered, with the user's leave (`allow_metered`): the waiting
    // results go up at once. What held them was the setting, nothing else.
    let set = agent.ctl(&["settings", "set", "allow_metered", "true"]);
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    let deadline = Instant::now() + Duration::from_secs(30);
    while done() <= done_then {
        assert!(Instant::now() < deadline, "allowed on the metered network, yet nothing was uploaded");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_ne!(wire.bytes(), wire_then);
    assert!(agent.ctl(&["settings", "set", "allow_metered", "false"]).status.success());

    // Unmetered again: the job finishes.
    nm.set_metered(false);
    let status = rt.block_on(op.until_finished(job, Duration::from_secs(300)));
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(done(), tasks);

    // The bytes the agent counted (at its HTTP client) are the bytes on the wire.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (ledger_out, ledger_in, (up, down)) = loop {
        let out = agent.ctl(&["ledger", "show", "--summary", "--json"]);
        let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
        let t = &summary["per_pool"][&wire.url];
        let (o, i) = (t["bytes_out"].as_u64().unwrap_or(0), t["bytes_in"].as_u64().unwrap_or(0));
        let (up, down) = wire.bytes();
        // The ledger lags the wire by the requests made since its last entry.
        if (o as f64) >= 0.97 * up as f64 && (i as f64) >= 0.97 * down as f64 || Instant::now() > deadline {
            break (o, i, (up, down));
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!(
        "counted by the agent: {ledger_out} B sent, {ledger_in} B received; on the wire: {up} B up, {down} B down"
    );
    assert!(ledger_out <= up && ledger_out as f64 >= 0.97 * up as f64, "sent: agent {ledger_out}, wire {up}");
    assert!(ledger_in <= down && ledger_in as f64 >= 0.97 * down as f64, "received: agent {ledger_in}, wire {down}");
}
