//! IT enrollment end to end: an operator creates an organisation and a
//! token, the policy file carries the pool and the token, the agent enrolls,
//! pins the pool's key and shows who manages it; expired and revoked tokens
//! enroll nobody, and a pool that changes its key is refused.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::agent_process::AgentProcess;
use crate::harness::{PoolProcess, operator};

fn json(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

fn policy(dir: &Path, pool: &str, token: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("policy.toml"),
        format!("enrollment_token = \"{token}\"\n[locked]\npool_url = \"{pool}\"\nrun_on_battery = true\n"),
    )
    .unwrap();
}

fn problem(agent: &AgentProcess, what: &str) -> String {
    let s =
        agent.wait_for(what, Duration::from_secs(30), |s| s["pool_problem"].as_str().is_some_and(|p| p.contains(what)));
    s["pool_problem"].as_str().unwrap().to_owned()
}

#[test]
fn devices_enroll_with_an_organisations_token_and_only_with_a_good_one() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = PoolProcess::start_closed(&tmp.path().join("pool"), "127.0.0.1:0");
    let org = json(&operator(&pool, &["pool", "org", "create", "Acme Research", "--json"]));
    let org_id = org["org_id"].as_u64().unwrap().to_string();
    let token = json(&operator(&pool, &["pool", "token", "create", "--org", &org_id, "--expires", "1h", "--json"]));
    let secret = token["token"].as_str().unwrap();
    assert!(secret.starts_with("imt_"));

    // A managed device: the policy names the pool and the token.
    let managed = tmp.path().join("managed");
    policy(&managed, &pool.url, secret);
    let mut agent = AgentProcess::start(&managed, None, &[]);
    let s = agent.wait_for("managed by", Duration::from_secs(30), |s| s["scheduler"]["managed_by"] == "Acme Research");
    let device_id = s["scheduler"]["device_id"].as_u64().unwrap();
    let stats = json(&operator(&pool, &["pool", "org", "stats", &org_id, "--json"]));
    assert_eq!(stats["devices"].as_array().unwrap().len(), 1);
    assert_eq!(stats["devices"][0]["device_id"], device_id);
    assert!(stats["devices"][0]["device_info"]["cores"].is_string(), "{stats}");
    assert_eq!(stats["tokens"][0]["uses"], 1);
    // The disclosure, with the organisation, is in the device's own ledger.
    let ledger = idlemesh_agent::Ledger::open(&agent.ledger()).unwrap();
    let disclosed = ledger.entries(Some("disclosure")).unwrap();
    assert!(disclosed.iter().any(|e| e.body.contains("\"organisation\":\"Acme Research\"")), "{disclosed:?}");
    assert!(managed.join("data/pinned_pools.json").exists());
    agent.stop();

    // An expired token and a revoked one enroll nobody, and say why.
    let short = json(&operator(&pool, &["pool", "token", "create", "--org", &org_id, "--expires", "1s", "--json"]));
    std::thread::sleep(Duration::from_millis(1500));
    let late = tmp.path().join("late");
    policy(&late, &pool.url, short["token"].as_str().unwrap());
    let mut agent = AgentProcess::start(&late, None, &[]);
    assert!(problem(&agent, "expired").contains("enrollment token"));
    agent.stop();

    let doomed = json(&operator(&pool, &["pool", "token", "create", "--org", &org_id, "--json"]));
    let id = doomed["token_id"].as_u64().unwrap().to_string();
    let revoked = json(&operator(&pool, &["pool", "token", "revoke", &id, "--json"]));
    assert!(revoked["revoked_ms"].is_u64());
    let refused = tmp.path().join("refused");
    policy(&refused, &pool.url, doomed["token"].as_str().unwrap());
    let mut agent = AgentProcess::start(&refused, None, &[]);
    problem(&agent, "revoked");
    agent.stop();

    // No token at all: a closed pool says it needs one.
    let bare = tmp.path().join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::write(bare.join("policy.toml"), format!("[locked]\npool_url = \"{}\"\n", pool.url)).unwrap();
    let mut agent = AgentProcess::start(&bare, None, &[]);
    problem(&agent, "needs an enrollment token");
    agent.stop();

    let stats = json(&operator(&pool, &["pool", "org", "stats", &org_id, "--json"]));
    assert_eq!(stats["devices"].as_array().unwrap().len(), 1, "refused devices were not enrolled");
    // Bad operator input is exit 2 and named.
    let out = operator(&pool, &["pool", "token", "create", "--org", &org_id, "--expires", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--expires"));
    // An unknown id is the caller's input too.
    let out = operator(&pool, &["pool", "org", "stats", "999"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));

    // A different pool (a new key) at the same address: the managed device
    // refuses it and discloses nothing more.
    let addr = pool.url.trim_start_matches("http://").to_owned();
    pool.kill9();
    let impostor = PoolProcess::start_on(&tmp.path().join("impostor"), &addr);
    let mut agent = AgentProcess::start(&managed, None, &[]);
    let why = problem(&agent, "key changed");
    assert!(why.contains("man in the middle"), "{why}");
    agent.stop();
    let ledger = idlemesh_agent::Ledger::open(&managed.join("data/ledger.sqlite")).unwrap();
    assert_eq!(ledger.entries(Some("disclosure")).unwrap().len(), 1, "nothing was disclosed to the impostor");
    drop(impostor);
}

/// A man in the middle who repeats the pool's public key (anyone can) but
/// does not hold its private key: the device asks it to sign a fresh nonce,
/// the signature fails against the pinned key, and no enrollment request
/// (token, device details) is ever sent.
#[test]
fn a_server_repeating_the_pinned_key_without_holding_it_gets_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::routing::{get, post};
    use idlemesh_protocol::api::{PoolChallenge, PoolInfo};
    use idlemesh_protocol::{Keypair, Signed};

    let real = Keypair::generate().unwrap();
    let forger = Arc::new(Keypair::generate().unwrap());
    let enrolls = Arc::new(AtomicUsize::new(0));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let info = PoolInfo {
        name: "pool".into(),
        operator: "op".into(),
        public_key: real.public(),
        device_info_requested: vec![],
        open_enrollment: true,
        payout: None,
    };
    let hits = enrolls.clone();
    let app = axum::Router::new()
        .route("/v1/info", get(move || async move { axum::Json(info) }))
        .route(
            "/v1/challenge",
            post(move |axum::Json(c): axum::Json<PoolChallenge>| {
                let forger = forger.clone();
                async move { axum::Json(Signed::sign(&c, &forger)) }
            }),
        )
        .route(
            "/v1/enroll",
            post(move || async move {
                hits.fetch_add(1, Ordering::SeqCst);
                axum::http::StatusCode::FORBIDDEN
            }),
        );
    rt.spawn(async move { axum::serve(listener, app).await });

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("device");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    // This device enrolled with the real pool at this address before.
    std::fs::write(dir.join("data/pinned_pools.json"), format!("{{\"{url}\": \"{}\"}}", real.public().to_hex()))
        .unwrap();
    policy(&dir, &url, "imt_secret_for_the_real_pool");
    let mut agent = AgentProcess::start(&dir, None, &[]);
    let why = problem(&agent, "key changed");
    assert!(why.contains("man in the middle"), "{why}");
    std::thread::sleep(Duration::from_millis(500));
    agent.stop();
    assert_eq!(enrolls.load(Ordering::SeqCst), 0, "the token and device details were never sent");
}
