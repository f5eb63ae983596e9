//! `idlemesh policy check`: an administrator validates a policy file before
//! shipping it (docs/deploy.md).

use crate::harness::idlemesh;

#[test]
fn policy_check_names_every_bad_key_and_passes_the_shipped_sample() {
    let tmp = tempfile::tempdir().unwrap();
    let sample = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../installers/linux/policy.toml");
    let out = idlemesh(tmp.path(), &["policy", "check", sample.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("enrollment token: set"));

    let bad = tmp.path().join("policy.toml");
    std::fs::write(
        &bad,
        "[locked]\npool_url = \"https://pool.example.org\"\ncpu_cores = 0\n[defaults]\nidle_minuts = 5\n",
    )
    .unwrap();
    let out = idlemesh(tmp.path(), &["policy", "check", bad.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    let errors = report["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{report:#}");
    assert!(errors.iter().any(|e| e.as_str().unwrap().contains("`locked.cpu_cores` = 0")), "{report:#}");
    assert!(
        errors.iter().any(|e| e.as_str().unwrap().contains("unknown setting `defaults.idle_minuts`")),
        "{report:#}"
    );
    assert_eq!(report["locked"]["pool_url"], "https://pool.example.org", "the good key is kept: {report:#}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 bad key(s)"));

    std::fs::write(&bad, "this is = not [toml").unwrap();
    let out = idlemesh(tmp.path(), &["policy", "check", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("IT policy unreadable:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = idlemesh(tmp.path(), &["policy", "check", tmp.path().join("missing.toml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("IT policy unreadable:"));
}
