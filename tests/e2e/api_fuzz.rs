//! Schema-driven fuzzing of the pool's HTTP API against the OpenAPI document
//! it serves: thousands of generated requests, valid and malformed, and not
//! one may get a 5xx, an undocumented status or a body that breaks its schema.

use std::path::PathBuf;
use std::process::Command;

use crate::harness::PoolProcess;

fn schemathesis() -> PathBuf {
    if let Some(p) = std::env::var_os("IDLEMESH_SCHEMATHESIS") {
        return p.into();
    }
    let st = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/venv/bin/st");
    assert!(st.exists(), "schemathesis is missing at {}: run scripts/setup", st.display());
    st
}

#[test]
fn fuzzing_the_api_finds_no_server_errors() {
    let tmp = tempfile::tempdir().unwrap();
    fuzz(&PoolProcess::start(&tmp.path().join("pool")));
}

/// The same on a replica of a pool on PostgreSQL: its stricter types (no
/// NUL in text, 64-bit integers) must not turn odd input into a 5xx.
#[test]
fn fuzzing_a_replica_on_postgresql_finds_no_server_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let db = idlemesh_pool::test_cluster::Cluster::shared().create_database().unwrap();
    fuzz(&PoolProcess::start_replica(&tmp.path().join("pool"), &db, &tmp.path().join("pool.key"), "127.0.0.1:0"));
}

fn fuzz(pool: &PoolProcess) {
    let out = Command::new(schemathesis())
        .arg("run")
        .arg(format!("{}/v1/openapi.json", pool.url))
        .args(["--header", &format!("Authorization: Bearer {}", pool.token)])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--max-time", "45", "--workers", "2"])
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .output()
        .expect("schemathesis runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let tail: String = text.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    // On failure the whole report: schemathesis names errors (not only
    // failed checks) in sections above the summary.
    let shown = if out.status.success() { tail.as_str() } else { text.as_ref() };
    eprintln!("{shown}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schemathesis found failures:\n{tail}");
    assert!(text.contains("passed"), "schemathesis ran no test cases:\n{tail}");
}
