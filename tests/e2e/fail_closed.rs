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

    // A pin the agent cannot read pins nothing: it joins no pool at all.
    let other = format!("ed25519:{}", Keypair::generate().unwrap().public());
    let dir = tmp.path().join("agent");
    std::fs::create_dir_all(&dir).unwrap();
    let policy = |key: &str| std::fs::write(dir.join("policy.toml"), format!("pool_public_key = \"{key}\"\n")).unwrap();
    policy(&other[..20]);
    write_settings(&dir, "cpu_duty_cycle_percent = 100\n");
    let agent = AgentProcess::start(&dir, Some(&pool.url), &[]);
    let s = agent.wait_for("the stop for the unreadable pin", Duration::from_secs(30), |s| {
        s["pool_problem"].as_str().is_some_and(|p| p.starts_with("IT policy unreadable"))
    });
    assert!(s["reasons"].to_string().contains("policy_unreadable"), "{s:#}");
    assert_eq!(rt.block_on(op.stats())["devices"].as_array().map(Vec::len), Some(0));

    // The organisation pinned a key that is not this pool's.
    policy(&other);
    let s = agent.wait_for("the refusal", Duration::from_secs(30), |s| {
        s["pool_problem"].as_str().is_some_and(|p| p.contains("pins the pool key"))
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
    assert!(
        String::from_utf8_lossy(&verify.stderr).contains("IT policy"),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
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

/// A device speaking the pool's API itself, from its own loopback address
/// (127.0.N.M: Linux routes all of 127/8 to lo), so that the pool sees
/// devices on different networks.
struct Device {
    id: u64,
    key: Keypair,
    http: reqwest::Client,
}

impl Device {
    async fn enroll(base: &str, from: &str, token: &str) -> Self {
        let http = reqwest::Client::builder().local_address(from.parse::<std::net::IpAddr>().unwrap()).build().unwrap();
        let key = Keypair::generate().unwrap();
        let r = http.post(format!("{base}/v1/enroll")).json(&json!({"public_key": key.public(), "token": token}));
        let r: Value = r.send().await.unwrap().json().await.unwrap();
        Self { id: r["device_id"].as_u64().unwrap_or_else(|| panic!("enrolled: {r}")), key, http }
    }

    async fn post(&self, base: &str, path: &str, body: Vec<u8>) -> Value {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let sig = idlemesh_protocol::auth::sign_request(&self.key, self.id, "POST", path, &body, now);
        let resp = self
            .http
            .post(format!("{base}{path}"))
            .header(idlemesh_protocol::auth::HEADER_DEVICE, self.id.to_string())
            .header(idlemesh_protocol::auth::HEADER_TIMESTAMP, sig.timestamp.to_string())
            .header(idlemesh_protocol::auth::HEADER_SIGNATURE, sig.signature)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        resp.json().await.unwrap()
    }

    /// Leases one task and reports `answer(task_id)`; the pool's reply, if a task was leased.
    async fn work(&self, base: &str, answer: impl Fn(u64) -> Vec<u8>) -> Option<Value> {
        let caps = json!({"wasm": true, "wgpu_adapter": null, "cores": 1, "memory_bytes": 0});
        let leased =
            self.post(base, "/v1/leases", json!({"capabilities": caps, "max_tasks": 1}).to_string().into()).await;
        let signed = leased["tasks"].as_array()?.first()?.clone();
        let m: Value = serde_json::from_str(signed["payload"].as_str().unwrap()).unwrap();
        let output = answer(m["task_id"].as_u64().unwrap());
        let result = json!({
            "lease_id": m["lease_id"], "lease_token": m["lease_token"],
            "output_sha256": idlemesh_protocol::Sha256::of(&output), "output": base64_of(&output),
            "fuel": null, "wall_ms": 1, "cpu_ms": 1,
        });
        Some(self.post(base, "/v1/results", result.to_string().into()).await)
    }
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Three devices enrolled with one token on one network, and two honest
/// devices elsewhere: a job whose quorum is one result. Returns the
/// liars' credits and valid results, and whether the job came out right.
fn collusion(pool_flags: &[&str]) -> (f64, u64, bool) {
    let tmp = tempfile::tempdir().unwrap();
    let pool = PoolProcess::start_as_shipped(&tmp.path().join("pool"), pool_flags);
    let op = |args: &[&str]| -> Value {
        let out = crate::harness::operator(&pool, &[args, &["--json"]].concat());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let token = |org: &str| {
        let id = op(&["pool", "org", "create", org])["org_id"].as_u64().unwrap().to_string();
        op(&["pool", "token", "create", "--org", &id, "--expires", "1h"])["token"].as_str().unwrap().to_owned()
    };
    let (cartel, alpha, beta) = (token("Cartel"), token("Alpha lab"), token("Beta lab"));
    let http = OperatorHttp::new(&pool.url, &pool.token);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let base = pool.url.clone();
        let (job_id, _) = http
            .job(
                b"a kernel the pool never runs",
                json!({"name": "collusion", "split": {"kind": "range", "start": 0, "end": 8, "chunk": 1},
                    "combiner": {"kind": "concat"}, "replication": 1, "quorum": 1}),
            )
            .await;
        let mut liars = Vec::new();
        for n in 1..=3 {
            liars.push(Device::enroll(&base, &format!("127.0.1.{n}"), &cartel).await);
        }
        let honest =
            [Device::enroll(&base, "127.0.2.1", &alpha).await, Device::enroll(&base, "127.0.3.1", &beta).await];
        let right = |task: u64| task.to_le_bytes().to_vec();
        // The liars always ask first.
        for _round in 0..40 {
            for liar in &liars {
                liar.work(&base, |_| b"forged".to_vec()).await;
            }
            for device in &honest {
                device.work(&base, right).await;
            }
            if http.status(job_id).await.is_some_and(|s| s["state"] == "done") {
                break;
            }
        }
        let stats = http.stats().await;
        let by = |id: u64| stats["devices"].as_array().unwrap().iter().find(|d| d["device_id"] == id).unwrap().clone();
        let credits: f64 = liars.iter().map(|l| by(l.id)["credits"].as_f64().unwrap()).sum();
        let valid: u64 = liars.iter().map(|l| by(l.id)["valid_results"].as_u64().unwrap()).sum();
        let status = http.status(job_id).await.unwrap();
        let done = status["state"] == "done";
        eprintln!("job after the rounds: {status}");
        // The pool's first job: its tasks are 1 to 8.
        let expected: Vec<u8> = (1..=8u64).flat_map(right).collect();
        let right_output = done && http.output(job_id).await == expected;
        (credits, valid, right_output)
    })
}

#[test]
fn colluding_devices_never_make_a_quorum_on_their_own() {
    // As shipped: replicas spread by token, organisation and network, new
    // devices' results confirmed by another device.
    let (credits, valid, right) = collusion(&[]);
    assert_eq!((credits, valid), (0.0, 0), "the liars earn nothing");
    assert!(right, "the honest devices' answers make the output");

    // Without the spread, the liars confirm each other's forgeries.
    let (credits, valid, _) = collusion(&["--spread-replicas", "none"]);
    assert!(
        credits > 0.0 && valid > 0,
        "the attempt succeeds without the protection: {credits} credits, {valid} valid"
    );
}
