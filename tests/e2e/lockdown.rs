//! The escape drill (issue: worker lockdown): native code inside a worker
//! that locked down exactly as `idlemesh worker` does tries to reach the
//! user's files, the network, other processes and the kernel's riskier
//! interfaces. Every attempt must be refused; the same attempts in a drill
//! with the lockdown off must succeed, so this test fails if a wall falls.

use std::io::Read as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use idlemesh_protocol::Sha256;
use idlemesh_runtime::{Layer, Profile, RunLimits, Status, WorkRequest, WorkerCommand, WorkerError, WorkerProcess};
use serde_json::{Value, json};

use crate::harness::BIN;

/// The drill is an example of the CLI package: built by `cargo test`, never
/// by `cargo build --release`, so no shipped build carries it.
fn drill() -> PathBuf {
    let path = Path::new(BIN).parent().unwrap().join("examples/escape_drill");
    assert!(path.exists(), "{} is missing: `cargo test` builds it (cargo build --release --examples)", path.display());
    path
}

#[derive(Debug, PartialEq)]
enum Verdict {
    /// The attempt did what it tried, with what it said.
    Succeeded(String),
    /// A wall answered with an error (Landlock: "Permission denied").
    Refused(String),
    /// The seccomp filter stopped the worker; the supervisor names the call.
    Stopped(String),
}

struct Drill {
    command: WorkerCommand,
    worker: Option<WorkerProcess>,
}

impl Drill {
    fn new(profile: Profile, confined: bool, cache: &Path) -> Self {
        let mut args: Vec<std::ffi::OsString> = vec!["--cache-dir".into(), cache.into()];
        if !confined {
            args.push("--unconfined".into());
        }
        // Without the lockdown, without the namespaces the supervisor makes too.
        let command = WorkerCommand { isolate: confined, ..WorkerCommand::new(drill(), args) }.with_profile(profile);
        Self { command, worker: None }
    }

    fn worker(&mut self) -> &mut WorkerProcess {
        self.worker.get_or_insert_with(|| WorkerProcess::spawn(&self.command).expect("the drill worker starts"))
    }

    fn attempt(&mut self, params: Value) -> Verdict {
        let params = params.to_string();
        let req = WorkRequest {
            task: params.clone(),
            kernel_sha256: Sha256::of(b""),
            kernel: b"",
            input: b"",
            params: &params,
            resume: None,
            wgsl: None,
            limits: RunLimits::default(),
            timeout: Duration::from_secs(20),
        };
        let mut worker = self.worker.take().unwrap_or_else(|| WorkerProcess::spawn(&self.command).unwrap());
        let result = worker.run(&req, |_| {}, |_| {});
        if result.is_ok() && worker.is_alive() {
            self.worker = Some(worker);
        }
        let outcome = match result {
            Ok(report) => report.outcome,
            // Only an exec that worked ends the worker this way: /bin/sh said so and left.
            Err(WorkerError::Died(how)) if how.contains("drill-exec-ok") => return Verdict::Succeeded(how),
            Err(e) => panic!("{params}: the drill worker failed: {e}"),
        };
        let error = outcome.error.clone().unwrap_or_default();
        match outcome.status {
            Status::Ok => Verdict::Succeeded(String::from_utf8_lossy(&outcome.output).into_owned()),
            Status::Error => Verdict::Refused(error),
            Status::SandboxViolation => Verdict::Stopped(error),
            other => panic!("{params}: unexpected status {other}: {error}"),
        }
    }
}

/// What the drill tries, each with the call the seccomp filter stops it at
/// (`None`: refused by Landlock before any forbidden call).
struct Attempts {
    home_file: PathBuf,
    tmp_file: PathBuf,
    listener: TcpListener,
}

impl Attempts {
    fn new(home: &Path) -> Self {
        let home_file = home.join(".ssh/id_ed25519");
        std::fs::create_dir_all(home_file.parent().unwrap()).unwrap();
        std::fs::write(&home_file, "the user's private key").unwrap();
        let tmp_file = std::env::temp_dir().join(format!("idlemesh-drill-{}-{}", std::process::id(), rand_suffix()));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        Self { home_file, tmp_file, listener }
    }

    fn list(&self, profile: Profile) -> Vec<(&'static str, Value, Option<&'static str>)> {
        let port = self.listener.local_addr().unwrap().port();
        let mut list = vec![
            ("read /etc/passwd", json!({"attempt": "read_file", "path": "/etc/passwd"}), None),
            ("read a file in $HOME", json!({"attempt": "read_file", "path": self.home_file}), None),
            ("create a file in /tmp", json!({"attempt": "create_file", "path": self.tmp_file}), None),
            ("list /proc/1", json!({"attempt": "list_dir", "path": "/proc/1"}), None),
            ("connect to a loopback listener", json!({"attempt": "connect", "port": port}), Some("socket")),
            ("execve /bin/sh", json!({"attempt": "exec"}), Some("execve")),
            ("fork", json!({"attempt": "fork"}), Some("clone")),
            ("ptrace the parent", json!({"attempt": "ptrace_parent"}), Some("ptrace")),
            ("signal the parent", json!({"attempt": "kill_parent"}), Some("kill")),
            ("keyctl on the user keyring", json!({"attempt": "keyctl"}), Some("keyctl")),
            ("io_uring_setup", json!({"attempt": "io_uring"}), Some("io_uring_setup")),
        ];
        if profile == Profile::Cpu {
            // A CPU worker's one `ioctl` is PAGEMAP_SCAN; a GPU driver's are many.
            list.push(("an ioctl other than PAGEMAP_SCAN", json!({"attempt": "ioctl"}), Some("ioctl")));
        }
        list
    }

    fn connections(&self) -> usize {
        std::iter::from_fn(|| self.listener.accept().ok()).count()
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos().into()
}

fn drill_profile(profile: Profile) {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let attempts = Attempts::new(&dir.path().join("home"));

    // Locked down: every attempt refused, and nothing it tried happened.
    let mut locked = Drill::new(profile, true, &cache);
    let sandbox = locked.worker().sandbox().clone();
    eprintln!("drill ({profile:?}): sandbox {sandbox:?}");
    for layer in Layer::ALL {
        // This machine (and CI's) has every layer; Landlock binds the
        // threads a GPU driver started before it only from ABI 8.
        assert!(sandbox.has(layer), "{layer} is not in force: {:?}", sandbox.missing.get(&layer));
    }
    assert!(sandbox.landlock_abi >= 4);
    assert_eq!(sandbox.profile, profile);
    for (what, params, call) in attempts.list(profile) {
        let result = locked.attempt(params);
        eprintln!("drill ({profile:?}, locked down): {what}: {result:?}");
        match call {
            None => {
                assert!(matches!(&result, Verdict::Refused(e) if e.contains("Permission denied")), "{what}: {result:?}")
            }
            Some(call) => assert!(
                matches!(&result, Verdict::Stopped(e) if e.contains(&format!("({call})"))),
                "{what}: expected the worker stopped at {call}, got {result:?}"
            ),
        }
    }
    assert_eq!(attempts.connections(), 0, "the listener saw a connection from a locked-down worker");
    assert!(!attempts.tmp_file.exists(), "a locked-down worker created {}", attempts.tmp_file.display());
    // The parent (this test) lives, and a locked-down worker still works after a violation.
    assert_eq!(locked.attempt(json!({"attempt": "nothing"})), Verdict::Refused("unknown attempt \"nothing\"".into()));

    // The same attempts without the lockdown: each succeeds, so the walls
    // above are what stopped them.
    let mut open = Drill::new(profile, false, &cache);
    assert!(!open.worker().sandbox().has(Layer::Seccomp));
    for (what, params, _) in attempts.list(profile) {
        let result = open.attempt(params);
        eprintln!("drill ({profile:?}, no lockdown): {what}: {result:?}");
        assert!(matches!(result, Verdict::Succeeded(_)), "{what} failed even without the lockdown: {result:?}");
    }
    assert_eq!(attempts.connections(), 1, "the unconfined drill's connection");
    let mut written = String::new();
    std::fs::File::open(&attempts.tmp_file).unwrap().read_to_string(&mut written).unwrap();
    assert_eq!(written, "escaped");
    std::fs::remove_file(&attempts.tmp_file).unwrap();
}

#[test]
fn a_locked_down_worker_cannot_escape_and_an_open_one_can() {
    drill_profile(Profile::Cpu);
}

#[test]
fn a_locked_down_gpu_worker_cannot_escape_and_an_open_one_can() {
    drill_profile(Profile::Gpu);
}

/// A worker stopped by its filter fails only its task: the agent records
/// `sandbox-violation` with the call, tells the pool the task failed, and
/// runs the next task in a new worker; the pool fails the task after three
/// such reports, and the device's record is untouched.
#[test]
fn a_sandbox_violation_fails_the_task_cleanly_and_the_pool_hears_of_it() {
    use base64::Engine as _;
    let tmp = tempfile::tempdir().unwrap();
    let pool = crate::harness::PoolProcess::start(&tmp.path().join("pool"));
    let op = crate::harness::OperatorHttp::new(&pool.url, &pool.token);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let b64 = |v: Value| base64::engine::general_purpose::STANDARD.encode(v.to_string());
    // One task does nothing wrong, the other forks (a violation) each time it runs.
    let (job, tasks) = rt.block_on(op.mandelbrot_job(json!({
        "name": "violation", "inputs": [b64(json!({"attempt": "noop"})), b64(json!({"attempt": "fork"}))],
        "combiner": {"kind": "concat"},
    })));
    assert_eq!(tasks, 2);
    let data = tmp.path().join("agent");
    let mut config = crate::harness::agent_config(&pool.url, &data);
    config.worker = WorkerCommand::new(drill(), Vec::<String>::new());
    let summary = rt.block_on(async {
        let key = std::sync::Arc::new(idlemesh_protocol::Keypair::generate().unwrap());
        let mut agent = idlemesh_agent::Slot::connect(config, key).await.unwrap();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(async move { agent.run(stop_rx).await });
        let status = op.until_finished(job, Duration::from_secs(60)).await;
        stop_tx.send(true).unwrap();
        let summary = running.await.unwrap().unwrap();
        assert_eq!(status["state"], "failed", "{status:#}");
        let error = status["error"].as_str().unwrap();
        assert!(error.contains("failed 3 times") && error.contains("sandbox-violation"), "{error}");
        assert_eq!(status["tasks"]["done"], 1, "the good task's result counted: {status:#}");
        summary
    });
    assert_eq!((summary.tasks_failed, summary.tasks_finished), (3, 1));
    let out = crate::harness::idlemesh(&data, &["ledger", "show", "--kind", "task_failed", "--json"]);
    let failed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(failed.len(), 3);
    for entry in failed {
        let body: Value = serde_json::from_str(entry["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["status"], "sandbox-violation", "{body:#}");
        assert!(body["error"].as_str().unwrap().contains("(clone)"), "{body:#}");
    }
    let stats = rt.block_on(op.stats());
    let device = &stats["devices"][0];
    assert_eq!((device["valid_results"].as_u64(), device["invalid_results"].as_u64()), (Some(1), Some(0)), "{stats:#}");
}
