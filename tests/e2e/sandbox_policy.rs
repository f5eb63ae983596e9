//! The worker sandbox as the agent reports and requires it: `idlemesh
//! status`, the ledger's `task_started` entries, and `require_sandbox`
//! keeping kernels from a machine whose workers lack a layer. The missing
//! layer is missing for real: the agent runs in a user namespace of its own
//! where its uid is unmapped, so its workers can make no namespace.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::agent_process::AgentProcess;
use crate::harness::{OperatorHttp, PoolProcess};

fn job() -> Value {
    serde_json::json!({
        "name": "sandboxed", "params": {"width": 128, "height": 96, "max_iter": 200},
        "split": {"kind": "tiles", "width": 128, "height": 96, "tile_width": 64, "tile_height": 48},
        "combiner": {"kind": "png_tiles"},
    })
}

fn ledger_entries(agent: &AgentProcess, kind: &str) -> Vec<Value> {
    let out = crate::harness::idlemesh(agent.ledger().parent().unwrap(), &["ledger", "show", "--kind", kind, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn codes(s: &Value) -> Vec<String> {
    s["reasons"].as_array().into_iter().flatten().filter_map(|r| r["code"].as_str().map(str::to_owned)).collect()
}

#[test]
fn status_and_the_ledger_show_the_sandbox_and_require_sandbox_holds_back_a_worker_without_a_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = PoolProcess::start(&tmp.path().join("pool"));
    let op = OperatorHttp::new(&pool.url, &pool.token);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (job_id, tasks) = rt.block_on(op.mandelbrot_job(job()));

    // An agent in its own user namespace, uid unmapped: its workers cannot
    // make the namespace they would use to cut themselves off the network.
    let dir = tmp.path().join("agent");
    crate::agent_process::write_settings(
        &dir,
        "cpu_duty_cycle_percent = 100\nrequire_sandbox = [\"seccomp\", \"netns\"]\n",
    );
    let agent = AgentProcess::start_with(&dir, Some(&pool.url), &[], |cmd| {
        let mut wrapped = Command::new("unshare");
        wrapped.args(["--user", "--"]).arg(cmd.get_program()).args(cmd.get_args());
        wrapped
    });
    let s = agent.wait_for("the worker sandbox to be known", Duration::from_secs(30), |s| !s["sandbox"].is_null());
    assert_eq!(s["sandbox"]["seccomp"], true, "{s:#}");
    assert_eq!(s["sandbox"]["netns"], false, "{s:#}");
    assert!(s["sandbox"]["missing"]["netns"].as_str().unwrap().contains("no user namespace could be made"), "{s:#}");
    let s = agent.wait_for("the pause for the missing layer", Duration::from_secs(10), |s| {
        codes(s).contains(&"sandbox_missing".to_owned())
    });
    assert_eq!(s["state"], "paused", "{s:#}");
    let text =
        s["reasons"].as_array().unwrap().iter().find(|r| r["code"] == "sandbox_missing").unwrap()["text"].clone();
    assert!(text.as_str().unwrap().starts_with("the worker sandbox lacks netns ("), "{text}");
    assert!(text.as_str().unwrap().ends_with("which require_sandbox asks for"), "{text}");
    let words = String::from_utf8_lossy(&agent.ctl(&["status"]).stdout).into_owned();
    assert!(words.contains("Sandbox: Tasks cannot read your files"), "{words}");
    assert!(words.contains("netns is not in force"), "{words}");
    // Paused: no kernel reached a worker.
    std::thread::sleep(Duration::from_secs(2));
    assert!(ledger_entries(&agent, "task_started").is_empty());

    // Without the requirement the same machine works, and every task's
    // ledger entry says which walls it ran behind.
    let out = agent.ctl(&["settings", "set", "require_sandbox", "seccomp,landlock"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = rt.block_on(op.until_finished(job_id, Duration::from_secs(120)));
    assert_eq!(s["state"], "done", "{s:#}\n{}", agent.log());
    let started = ledger_entries(&agent, "task_started");
    assert_eq!(started.len() as u64, tasks);
    for entry in &started {
        let body: Value = serde_json::from_str(entry["body"].as_str().unwrap()).unwrap();
        let sandbox = &body["sandbox"];
        assert_eq!((sandbox["seccomp"].as_bool(), sandbox["netns"].as_bool()), (Some(true), Some(false)), "{entry:#}");
        assert!(sandbox["landlock_abi"].as_u64().unwrap() >= 1, "{entry:#}");
    }
}
