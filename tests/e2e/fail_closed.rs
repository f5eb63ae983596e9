//! Trust paths that must fail closed (issue 16): a pool key the IT policy
//! pins, and a system policy no environment variable can replace. Real
//! agent and pool processes; the policy is a real file the agent watches.

use std::path::Path;
use std::time::Duration;

use idlemesh_protocol::{Keypair, PublicKey};
use serde_json::{Value, json};

use crate::agent_process::{AgentProcess, write_settings};
use crate::harness::{OperatorHttp, PoolProcess};

fn small_job() -> Value {
    json!({
        "name": "pinned", "params": {"width": 64, "height": 48, "max_iter": 100},
        "split": {"kind": "tiles", "width": 64, "height": 48, "tile_width": 32, "tile_height": 48},
        "combiner": {"kind": "png_tiles"},
    })
}

fn fingerprint(key: &str) -> String {
    key.trim_start_matches("ed25519:").parse::<PublicKey>().unwrap().fingerprint()
}

fn entries(agent: &AgentProcess, kind: &str) -> Vec<Value> {
    let out = agent.ctl(&["ledger", "show", "--kind", kind, "--json"]);
    if !out.status.success() {
        return Vec::new(); // no ledger yet: nothing was written
    }
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_pool_key_pinned_by_policy_refuses_any_other_pool_and_ledger_verify_follows_it() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = PoolProcess::start(&tmp.path().join("pool"));
    let op = OperatorHttp::new(&pool.url, &pool.token);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (job, _) = rt.block_on(op.mandelbrot_job(small_job()));

    // The organisation pinned a key that is not this pool's.
    let other = format!("ed25519:{}", Keypair::generate().unwrap().public());
    let dir = tmp.path().join("agent");
    std::fs::create_dir_all(&dir).unwrap();
    let policy = |key: &str| std::fs::write(dir.join("policy.toml"), format!("pool_public_key = \"{key}\"\n")).unwrap();
    policy(&other);
    write_settings(&dir, "cpu_duty_cycle_percent = 100\n");
    let agent = AgentProcess::start(&dir, Some(&pool.url), &[]);
    let s = agent.wait_for("the refusal", Duration::from_secs(30), |s| {
        s["pool_problem"].as_str().is_some_and(|p| p.contains("pool_public_key"))
    });
    let problem = s["pool_problem"].as_str().unwrap();
    assert!(problem.contains(&fingerprint(&other)) && problem.contains(&fingerprint(&pool.public_key)), "{problem}");
    assert!(problem.contains("refusing to enroll"), "{problem}");
    // Nothing was disclosed to it and nothing was pinned on the device's own.
    assert!(entries(&agent, "disclosure").is_empty());
    assert!(!dir.join("data/pinned_pools.json").exists());
    let stats = rt.block_on(op.stats());
    assert_eq!(stats["devices"].as_array().map(Vec::len), Some(0), "{stats:#}");

    // The right key: the agent enrolls (within its retry backoff) and works.
    policy(&pool.public_key);
    rt.block_on(op.until_finished(job, Duration::from_secs(120)));
    let verify = agent.ctl(&["ledger", "verify"]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
    assert!(String::from_utf8_lossy(&verify.stdout).contains("receipt signatures checked"));

    // `ledger verify` checks receipts against the policy's key, not the one
    // the receipts' own entries name: pinning another key fails them all.
    policy(&other);
    let verify = agent.ctl(&["ledger", "verify", "--json"]);
    assert_eq!(verify.status.code(), Some(1), "{}", String::from_utf8_lossy(&verify.stderr));
    let report: Value = serde_json::from_slice(&verify.stdout).unwrap();
    let reason = report["first_bad"]["reason"].as_str().unwrap();
    assert!(reason.contains(&fingerprint(&other)) && reason.contains(&fingerprint(&pool.public_key)), "{reason}");
    // And a policy that cannot be read vouches for no key.
    std::fs::write(dir.join("policy.toml"), "pool_public_key = \n").unwrap();
    let verify = agent.ctl(&["ledger", "verify"]);
    assert!(!verify.status.success());
    assert!(String::from_utf8_lossy(&verify.stderr).contains("IT policy"), "{}", String::from_utf8_lossy(&verify.stderr));
}

const SYSTEM_POLICY: &str = "/etc/idlemesh/policy.toml";

/// A system policy for one test, removed afterwards even if the test fails.
struct SystemPolicy;

impl SystemPolicy {
    fn write(text: &str) -> Self {
        std::fs::create_dir_all("/etc/idlemesh").unwrap();
        std::fs::write(SYSTEM_POLICY, text).unwrap();
        Self
    }
}

impl Drop for SystemPolicy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(SYSTEM_POLICY);
        let _ = std::fs::remove_dir("/etc/idlemesh");
    }
}

#[test]
fn an_environment_variable_cannot_replace_the_system_policy() {
    // SAFETY: getuid(2) has no preconditions.
    if unsafe { libc::getuid() } != 0 || Path::new(SYSTEM_POLICY).exists() {
        eprintln!("skipped: needs root and a machine without {SYSTEM_POLICY} (CI runs as root on a fresh machine)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("agent");
    std::fs::create_dir_all(&dir).unwrap();
    // The user's own "policy", named by IDLEMESH_POLICY (AgentProcess sets it).
    std::fs::write(dir.join("policy.toml"), "[locked]\nmin_battery_percent = 10\n").unwrap();

    // Without a system policy the variable names the file (tests rely on that).
    let agent = AgentProcess::start(&dir, None, &[]);
    let s = agent.status();
    assert_eq!(s["settings"]["min_battery_percent"], json!({"value": 10, "source": "policy", "locked": true}));

    // Deployed while the agent runs: the system policy replaces the user's at once.
    let _system = SystemPolicy::write("[locked]\nmin_battery_percent = 95\n");
    let s = agent.wait_for("the system policy", Duration::from_secs(15), |s| {
        s["settings"]["min_battery_percent"]["value"] == 95
    });
    assert_eq!(s["files"]["policy"], SYSTEM_POLICY, "{s:#}");
    drop(agent);

    // An agent started with the variable while a system policy exists ignores it and says so.
    let agent = AgentProcess::start(&dir, None, &[]);
    let s = agent.status();
    assert_eq!(s["settings"]["min_battery_percent"], json!({"value": 95, "source": "policy", "locked": true}));
    assert_eq!(s["files"]["policy"], SYSTEM_POLICY);
    assert!(agent.log().contains("IDLEMESH_POLICY=") && agent.log().contains("ignored"), "{}", agent.log());
    let set = agent.ctl(&["settings", "set", "min_battery_percent", "10"]);
    assert!(!set.status.success(), "a locked key stays locked");
}
