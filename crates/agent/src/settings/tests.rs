use std::time::{Duration, SystemTime};

use super::*;

const MACHINE: Machine = Machine { cores: 8, memory_bytes: 16_000_000_000 };

fn settings(dir: &tempfile::TempDir, user: Option<&str>, policy: Option<&str>) -> Settings {
    let (u, p) = (dir.path().join("settings.toml"), dir.path().join("policy.toml"));
    if let Some(t) = user {
        std::fs::write(&u, t).unwrap();
    }
    if let Some(t) = policy {
        std::fs::write(&p, t).unwrap();
    }
    Settings::open(MACHINE, u, p)
}

/// Rewrites a watched file so the watcher sees a new modification time
/// even on file systems with coarse timestamps.
fn rewrite(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(1)).unwrap();
}

#[test]
fn no_files_means_the_design_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(&dir, None, None);
    assert!(s.errors().is_empty());
    let l = s.effective().limits();
    assert_eq!(l, Limits::defaults(8, 16_000_000_000));
    assert_eq!(s.effective().pool_url(), None);
    assert!(s.effective().values.values().all(|v| v.source == Source::Default && !v.locked));
}

#[test]
fn user_values_override_defaults_and_policy_defaults_but_not_locks() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(
        &dir,
        Some("cpu_duty_cycle_percent = 30\nidle_minutes = 1\nmin_battery_percent = 20\n"),
        Some(
            "enrollment_token = \"tok\"\n[defaults]\ncpu_duty_cycle_percent = 50\ngpu_enabled = true\n\
             [locked]\nmin_battery_percent = 90\npool_url = \"https://pool.example.org/\"\n",
        ),
    );
    assert!(s.errors().is_empty(), "{:?}", s.errors());
    let e = s.effective();
    assert_eq!(e.values["cpu_duty_cycle_percent"].source, Source::User);
    assert_eq!(e.values["gpu_enabled"].source, Source::PolicyDefault);
    assert_eq!(e.values["min_battery_percent"].source, Source::Policy);
    assert!(e.values["min_battery_percent"].locked);
    assert_eq!(e.pool_url().as_deref(), Some("https://pool.example.org"));
    assert_eq!(e.enrollment_token.as_deref(), Some("tok"));
    let l = e.limits();
    assert_eq!((l.duty_cycle_percent, l.gpu_enabled, l.min_battery_percent), (30, true, 90));
    assert_eq!(l.idle_after, Duration::from_secs(60));
}

#[test]
fn bad_values_name_the_file_the_key_and_the_value() {
    let cases: &[(&str, &str)] = &[
        ("cpu_duty_cycle_percent = 150", "`cpu_duty_cycle_percent` = 150: expected a whole number from 1 to 100"),
        ("gpu_enabled = \"yes\"", "`gpu_enabled` = \"yes\": expected true or false"),
        ("allowed_hours = \"25:00-06:00\"", "`allowed_hours` = \"25:00-06:00\""),
        ("allowed_hours = \"08:00-08:00\"", "empty window"),
        ("pool_url = \"ftp://x\"", "`pool_url` = \"ftp://x\": expected a URL"),
        ("daily_upload_cap_mb = -1", "expected megabytes"),
        ("idle_minuts = 3", "unknown setting `idle_minuts`"),
        ("idle_minutes = ", "not valid TOML"),
    ];
    for (text, want) in cases {
        let err = parse_user("/home/u/settings.toml", text).unwrap_err().to_string();
        assert!(err.starts_with("/home/u/settings.toml: "), "{text}: {err}");
        assert!(err.contains(want), "{text}: {err} should say {want}");
    }
    let err = parse_policy("/etc/p.toml", "[locked]\ncpu_cores = 0").unwrap_err().to_string();
    assert!(err.contains("`locked.cpu_cores` = 0"), "{err}");
    let err = parse_policy("/etc/p.toml", "[defaults]\ngpu_enabled = true\n[locked]\ngpu_enabled = false")
        .unwrap_err()
        .to_string();
    assert!(err.contains("both"), "{err}");
    let err = parse_policy("/etc/p.toml", "cpu_cores = 2").unwrap_err().to_string();
    assert!(err.contains("unknown setting `cpu_cores`"), "{err}");
}

#[test]
fn a_bad_file_keeps_the_last_good_values_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&dir, Some("cpu_duty_cycle_percent = 40\n"), Some("[locked]\nrun_on_battery = false\n"));
    assert_eq!(s.effective().limits().duty_cycle_percent, 40);

    rewrite(s.user_path(), "cpu_duty_cycle_percent = 400\n");
    s.refresh();
    assert_eq!(s.effective().limits().duty_cycle_percent, 40, "last good value stays");
    assert_eq!(s.errors().len(), 1);
    assert!(s.errors()[0].contains("cpu_duty_cycle_percent` = 400"), "{:?}", s.errors());

    let policy = s.policy_path().to_owned();
    rewrite(&policy, "[locked\n");
    s.refresh();
    assert_eq!(s.errors().len(), 2);
    assert!(s.effective().values["run_on_battery"].locked, "the last good policy stays in force");
    // ... and nothing runs until it is fixed: an unreadable policy is not "no policy".
    let why = s.policy_unreadable().expect("unreadable");
    assert!(why.starts_with("IT policy unreadable: ") && why.contains("not valid TOML"), "{why}");
    assert_eq!(s.limits().policy_unreadable.as_deref(), Some(why.as_str()));

    rewrite(s.user_path(), "cpu_duty_cycle_percent = 70\n");
    rewrite(&policy, "[locked]\nrun_on_battery = true\n");
    assert!(s.refresh());
    assert!(s.errors().is_empty());
    assert_eq!(s.limits().policy_unreadable, None);
    assert_eq!(s.effective().limits().duty_cycle_percent, 70);
    assert!(s.effective().limits().run_on_battery);
}

#[test]
fn set_writes_the_user_file_and_refuses_locked_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&dir, Some("# mine\nidle_minutes = 5\n"), Some("[locked]\nmin_battery_percent = 90\n"));
    s.set("cpu_duty_cycle_percent", &parse_cli_value("25")).unwrap();
    s.set("allowed_hours", &parse_cli_value("22:00-06:00")).unwrap();
    let l = s.effective().limits();
    assert_eq!(l.duty_cycle_percent, 25);
    assert_eq!(l.allowed_hours, parse_hours("22:00-06:00").unwrap());
    assert_eq!(l.idle_after, Duration::from_secs(300), "other keys kept");

    let err = s.set("min_battery_percent", &parse_cli_value("10")).unwrap_err();
    assert!(matches!(err, SettingsError::Locked { .. }));
    assert!(err.to_string().contains("managed by your organisation"), "{err}");
    assert_eq!(s.effective().limits().min_battery_percent, 90);
    let on_disk = std::fs::read_to_string(s.user_path()).unwrap();
    assert!(!on_disk.contains("min_battery_percent"), "{on_disk}");

    // Writing the locked key into the file by hand changes nothing either.
    rewrite(s.user_path(), "min_battery_percent = 10\n");
    s.refresh();
    assert_eq!(s.effective().limits().min_battery_percent, 90);
    assert_eq!(s.effective().values["min_battery_percent"].source, Source::Policy);

    assert!(matches!(s.set("cpu_duty_cycle_percent", &parse_cli_value("0")), Err(SettingsError::BadValue { .. })));
    assert!(matches!(s.set("nonsense", &parse_cli_value("1")), Err(SettingsError::UnknownKey { .. })));
}

#[test]
fn unset_returns_to_the_default_and_refuses_locked_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(
        &dir,
        Some("# mine\nidle_minutes = 5\ncpu_duty_cycle_percent = 30\n"),
        Some("[locked]\nmin_battery_percent = 90\n"),
    );
    s.unset("cpu_duty_cycle_percent").unwrap();
    assert_eq!(s.effective().limits().duty_cycle_percent, 60);
    assert_eq!(s.effective().values["cpu_duty_cycle_percent"].source, Source::Default);
    let on_disk = std::fs::read_to_string(s.user_path()).unwrap();
    assert!(!on_disk.contains("cpu_duty_cycle_percent") && on_disk.contains("idle_minutes"), "{on_disk}");
    assert!(matches!(s.unset("min_battery_percent"), Err(SettingsError::Locked { .. })));
    assert!(matches!(s.unset("nonsense"), Err(SettingsError::UnknownKey { .. })));
}

#[test]
fn set_refuses_to_overwrite_a_file_it_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&dir, Some("idle_minutes = 5\n[broken\n"), None);
    let err = s.set("cpu_cores", &parse_cli_value("2")).unwrap_err();
    assert!(matches!(err, SettingsError::Syntax { .. }), "{err}");
    assert!(std::fs::read_to_string(s.user_path()).unwrap().contains("[broken"), "the user's file is untouched");

    // A file whose other values are bad: the new value could not take effect, so say so.
    rewrite(s.user_path(), "cpu_duty_cycle_percent = 500\n");
    s.refresh();
    let err = s.set("cpu_cores", &parse_cli_value("2")).unwrap_err();
    assert!(err.to_string().contains("`cpu_duty_cycle_percent` = 500"), "{err}");
    assert!(!std::fs::read_to_string(s.user_path()).unwrap().contains("cpu_cores"));
}

#[test]
fn hours_parse_and_wrap() {
    assert_eq!(parse_hours("always").unwrap(), None);
    let h = parse_hours("22:00-06:00").unwrap().unwrap();
    assert!(h.contains(23 * 60) && h.contains(5 * 60) && !h.contains(12 * 60));
    for bad in ["22-06", "22:00", "9:00-10:00", "10:60-11:00", "a:bc-de:fg"] {
        assert!(parse_hours(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_policy_checked_key_by_key_keeps_every_good_key_and_names_every_bad_one() {
    let text = r#"
enrollment_token = "imt_x"
colour = "blue"
[locked]
pool_url = "https://pool.example.org"
cpu_duty_cycle_percent = 250
require_sandbox = ["seccomp", "selinux"]
min_battery_percent = 90
[defaults]
idle_minutes = 5
min_battery_percent = 50
"#;
    let table: toml::Table = toml::from_str(text).unwrap();
    let (policy, errors) = policy_from_table_lenient("policy.toml", table.clone());
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(messages.len(), 4, "{messages:#?}");
    assert!(messages.iter().any(|m| m.contains("unknown setting `colour`")), "{messages:#?}");
    assert!(messages.iter().any(|m| m.contains("`locked.cpu_duty_cycle_percent` = 250")), "{messages:#?}");
    assert!(messages.iter().any(|m| m.contains("`locked.require_sandbox`") && m.contains("selinux")), "{messages:#?}");
    assert!(messages.iter().any(|m| m.contains("`min_battery_percent` is in both")), "{messages:#?}");
    // Every good key is there; the key in both stays locked (the stricter reading).
    assert_eq!(policy.enrollment_token.as_deref(), Some("imt_x"));
    assert_eq!(policy.locked["pool_url"], Value::String("https://pool.example.org".into()));
    assert_eq!(policy.locked["min_battery_percent"], Value::Integer(90));
    assert!(!policy.locked.contains_key("cpu_duty_cycle_percent"));
    assert_eq!(policy.defaults.keys().collect::<Vec<_>>(), ["idle_minutes"]);
    // The strict reading still stops at the first problem.
    assert!(policy_from_table("policy.toml", table).is_err());
    // A file that is not TOML at all is unreadable as a whole.
    assert!(matches!(check_policy_bytes("policy.toml", b"[locked\npool_url ="), Err(SettingsError::Syntax { .. })));
}

#[test]
fn a_bad_policy_key_is_named_and_every_good_key_stays_locked() {
    let dir = tempfile::tempdir().unwrap();
    let policy = "[locked]\nrun_on_battery = false\nmin_battery_percent = 90\ncpu_duty_cycle_percent = 250\n\
                  [defaults]\nidle_minuts = 5\n";
    let s = settings(&dir, Some("run_on_battery = true\n"), Some(policy));
    // The good keys apply and stay locked: one typo does not unlock the machine.
    assert!(s.effective().values["run_on_battery"].locked);
    assert!(!s.limits().run_on_battery);
    assert_eq!(s.limits().min_battery_percent, 90);
    assert!(!s.effective().values["cpu_duty_cycle_percent"].locked, "the bad value is not applied");
    assert_eq!(s.limits().policy_unreadable, None, "a bad key does not stop work");
    let errors = s.policy_errors();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("`locked.cpu_duty_cycle_percent` = 250")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("unknown setting `defaults.idle_minuts`")), "{errors:?}");
    assert_eq!(s.errors().len(), 2, "the bad keys are settings errors too");
}

#[test]
fn an_environment_variable_cannot_replace_a_system_policy() {
    let system = PathBuf::from(default_policy_path());
    let mine = PathBuf::from("/home/someone/no-limits.toml");
    // Where the machine has a system policy, the user's file is ignored and the warning says why.
    let (path, warning) = policy_source(Some(mine.clone()), true);
    assert_eq!(path, system);
    let warning = warning.expect("a warning");
    assert!(warning.contains("IDLEMESH_POLICY=/home/someone/no-limits.toml ignored"), "{warning}");
    // Only where it has none (tests, side-by-side installs) the variable names the file.
    assert_eq!(policy_source(Some(mine.clone()), false), (mine, None));
    assert_eq!(policy_source(None, true), (system.clone(), None));
    assert_eq!(policy_source(None, false), (system.clone(), None));
    assert_eq!(policy_source(Some(system.clone()), true), (system, None));
}

#[test]
fn a_policy_pins_the_pool_key_and_a_bad_key_is_named() {
    let key = idlemesh_protocol::Keypair::generate().unwrap().public();
    let (policy, errors) =
        check_policy_bytes("p.toml", format!("pool_public_key = \"ed25519:{key}\"\n").as_bytes()).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(policy.pool_public_key, Some(key));
    assert_eq!(Effective::merge(MACHINE, &Values::new(), &policy).pool_public_key, Some(key));
    let (policy, errors) = check_policy_bytes("p.toml", b"pool_public_key = \"ed25519:abc\"\n").unwrap();
    assert_eq!(policy.pool_public_key, None);
    assert!(errors[0].to_string().contains("`pool_public_key` = \"ed25519:abc\": expected \"ed25519:\""), "{errors:?}");
}

#[test]
fn a_policy_pins_the_pools_certificate_authorities_by_an_absolute_path() {
    let (policy, errors) = check_policy_bytes("p.toml", b"pool_ca_file = \"/etc/idlemesh/pool-ca.pem\"\n").unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(policy.pool_ca_file.as_deref(), Some(std::path::Path::new("/etc/idlemesh/pool-ca.pem")));
    let (policy, errors) = check_policy_bytes("p.toml", b"pool_ca_file = \"pool-ca.pem\"\n").unwrap();
    assert_eq!(policy.pool_ca_file, None);
    assert!(errors[0].to_string().contains("absolute path"), "{errors:?}");
}

#[test]
fn the_schema_says_what_each_key_accepts_its_default_and_who_locks_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(&dir, None, Some("[locked]\ncpu_cores = 1\n"));
    let schema = s.schema();
    let keys: Vec<&str> = schema.iter().map(|s| s.key.as_str()).collect();
    let documented: Vec<&str> = schema::SPECS.iter().map(|s| s.key).collect();
    assert_eq!(keys, documented, "every setting, in the table's order");
    let cores = schema.iter().find(|s| s.key == "cpu_cores").unwrap();
    assert_eq!(cores.kind, schema::Kind::Int { min: 1, max: 1024 });
    assert_eq!(cores.default, Some(Value::Integer(i64::from(MACHINE.cores / 2))));
    assert!(cores.locked);
    assert_eq!(cores.locked_by.as_deref(), Some(s.policy_path().display().to_string().as_str()));
    let idle = schema.iter().find(|s| s.key == "idle_minutes").unwrap();
    assert!(!idle.locked && idle.locked_by.is_none());
    assert!(schema.iter().all(|s| !s.label.is_empty() && !s.help.is_empty()), "each has words for a form");
}

/// The dashboard's tests answer `settings_schema` with what the agent
/// serves (ui/src/test/settings-schema.json), not with a copy of their own.
#[test]
fn the_dashboards_test_schema_is_the_agents() {
    let dir = tempfile::tempdir().unwrap();
    // A machine like the fixtures' status: two cores, 8 GB.
    let machine = Machine { cores: 2, memory_bytes: 8_000_000_000 };
    let s = Settings::open(machine, dir.path().join("none.toml"), dir.path().join("no-policy.toml"));
    let now = serde_json::to_string_pretty(&s.schema()).unwrap() + "\n";
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ui/src/test/settings-schema.json");
    assert!(
        idlemesh_control::generated_file_is_fresh(&path, &now).unwrap(),
        "{} is not the schema the agent serves; run `IDLEMESH_UPDATE_TS=1 cargo test -p idlemesh-agent --lib settings` and commit it",
        path.display()
    );
}
