//! HTTPS between agents and pools (issue 17, point 3): `pool serve
//! --tls-cert/--tls-key` with a certificate this test makes (rcgen), an
//! agent that trusts only the certificate authority its IT policy pins
//! (`pool_ca_file`), and plain HTTP refused off this machine unless
//! `allow_insecure_pool` says otherwise.

use std::path::Path;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::{Value, json};

use crate::agent_process::{AgentProcess, write_settings};
use crate::harness::{OperatorHttp, PoolProcess};

/// A certificate authority: its PEM certificate, and an issuer to sign with.
fn authority(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

/// A server certificate for `localhost` and 127.0.0.1 from `ca`: (chain PEM, key PEM).
fn server_certificate(ca: &Issuer<'static, KeyPair>) -> (String, String) {
    let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn job() -> Value {
    json!({
        "name": "https", "params": {"width": 64, "height": 48, "max_iter": 200},
        "split": {"kind": "tiles", "width": 64, "height": 48, "tile_width": 32, "tile_height": 48},
        "combiner": {"kind": "png_tiles"},
    })
}

fn policy(dir: &Path, text: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("policy.toml"), text).unwrap();
}

#[test]
fn agents_reach_an_https_pool_through_the_pinned_authority_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (ca_pem, ca) = authority("Idlemesh test CA");
    let (chain, key) = server_certificate(&ca);
    let files = tmp.path().join("tls");
    std::fs::create_dir_all(&files).unwrap();
    for (name, text) in [("ca.pem", &ca_pem), ("chain.pem", &chain), ("key.pem", &key)] {
        std::fs::write(files.join(name), text).unwrap();
    }
    let (other_pem, _) = authority("Someone else's CA");
    std::fs::write(files.join("other-ca.pem"), &other_pem).unwrap();
    let arg = |name: &str| files.join(name).display().to_string();

    // A certificate that does not go with the key is refused at start, by name.
    let (_, wrong_key) = server_certificate(&ca);
    std::fs::write(files.join("wrong-key.pem"), wrong_key).unwrap();
    let out = crate::harness::idlemesh(
        tmp.path(),
        &[
            "pool",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            &arg("chain.pem"),
            "--tls-key",
            &arg("wrong-key.pem"),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("do not go together"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let pool = PoolProcess::start_with(
        &tmp.path().join("pool"),
        &["--tls-cert", &arg("chain.pem"), "--tls-key", &arg("key.pem")],
    );
    assert!(pool.url.starts_with("https://127.0.0.1:"), "{}", pool.url);
    let url = pool.url.replace("127.0.0.1", "localhost");
    let op = OperatorHttp::trusting(&pool.url, &pool.token, &ca_pem);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (job, _) = rt.block_on(op.mandelbrot_job(job()));

    // An agent whose policy pins another authority: the TLS handshake fails, nothing is sent.
    let wrong = tmp.path().join("wrong");
    policy(&wrong, &format!("pool_ca_file = \"{}\"\n", arg("other-ca.pem")));
    let agent = AgentProcess::start(&wrong, Some(&url), &[]);
    let s = agent.wait_for("the refusal", Duration::from_secs(30), |s| s["pool_problem"].is_string());
    let problem = s["pool_problem"].as_str().unwrap();
    assert!(
        problem.contains("cannot join") && problem.contains("UnknownIssuer"),
        "the certificate is the cause: {problem}"
    );
    assert_eq!(rt.block_on(op.stats())["devices"].as_array().map(Vec::len), Some(0), "no device enrolled");
    drop(agent);

    // The pinned authority: the agent works over HTTPS.
    let good = tmp.path().join("good");
    policy(&good, &format!("pool_ca_file = \"{}\"\n", arg("ca.pem")));
    write_settings(&good, "cpu_duty_cycle_percent = 100\n");
    let agent = AgentProcess::start(&good, Some(&url), &[]);
    agent.wait_for("enrollment over HTTPS", Duration::from_secs(30), |s| s["scheduler"]["device_id"].is_u64());
    let status = rt.block_on(op.until_finished(job, Duration::from_secs(120)));
    assert_eq!(status["state"], "done", "{status}");
}

#[test]
fn plain_http_off_this_machine_is_refused_unless_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("agent");
    // TEST-NET-1: not this machine (nothing is ever sent there while refused).
    let agent = AgentProcess::start(&dir, Some("http://192.0.2.1:8470"), &[]);
    let s = agent.wait_for("the refusal", Duration::from_secs(15), |s| s["pool_problem"].is_string());
    let problem = s["pool_problem"].as_str().unwrap();
    assert!(problem.contains("plain HTTP to another machine") && problem.contains("allow_insecure_pool"), "{problem}");

    // Allowed by the user: the agent tries it (and finds nobody there).
    let set = agent.ctl(&["settings", "set", "allow_insecure_pool", "true"]);
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    let s = agent.wait_for("an attempt", Duration::from_secs(30), |s| {
        s["pool_problem"].as_str().is_some_and(|p| !p.contains("plain HTTP"))
    });
    assert!(s["pool_problem"].as_str().unwrap().contains("unreachable"), "{s:#}");

    // A policy that pins the pools' certificate authorities wants https: the setting does not lift that.
    policy(&dir, "pool_ca_file = \"/etc/idlemesh/pool-ca.pem\"\n");
    agent.wait_for("the refusal again", Duration::from_secs(30), |s| {
        s["pool_problem"].as_str().is_some_and(|p| p.contains("plain HTTP to another machine"))
    });
}
