//! The Windows agent daemon under Wine against a Linux `pool serve`: real
//! tasks, a setting locked by a registry policy, pause and resume through
//! the named pipe (`idlemesh.exe pause` / `resume`) with the worker's
//! threads suspended in between, and its ledger verified by the Windows build.

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{OperatorHttp, PoolProcess};
use crate::wine::{output, run, win_path, wine};

/// Marks every process of one test's agent (Wine passes the environment
/// on to the Windows processes it starts), so they can be found and ended.
const RUN_MARK: &str = "IDLEMESH_WINE_TEST_RUN";

/// The policy key as Group Policy writes it (installers/windows/idlemesh.admx).
const POLICY_KEY: &str = r"HKLM\Software\Policies\Idlemesh";

/// `idlemesh.exe agent` under Wine, its control pipe private to this test.
struct WindowsAgent {
    child: Child,
    dir: PathBuf,
    env: Vec<(&'static str, String)>,
    mark: String,
}

impl WindowsAgent {
    fn start(dir: &Path, pool: &str) -> Self {
        std::fs::create_dir_all(dir.join("config")).unwrap();
        let mark = format!("{}-{}", std::process::id(), dir.display());
        let env = vec![
            ("IDLEMESH_DATA_DIR", win_path(&dir.join("data"))),
            ("IDLEMESH_CONFIG_DIR", win_path(&dir.join("config"))),
            ("IDLEMESH_CONTROL_SOCKET", format!(r"\\.\pipe\idlemesh-test-{}", std::process::id())),
            (RUN_MARK, mark.clone()),
        ];
        let mut cmd = wine().idlemesh();
        cmd.args(["agent", "--pool", pool]).env("IDLEMESH_LOG", "info").envs(env.iter().map(|(k, v)| (k, v)));
        let log = std::fs::File::create(dir.join("agent.log")).unwrap();
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn().expect("wine starts the agent");
        let mut agent = Self { child, dir: dir.to_owned(), env, mark };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !agent.ctl(&["status", "--json"]).status.success() {
            if let Some(status) = agent.child.try_wait().unwrap() {
                panic!("the Windows agent exited with {status}:\n{}", agent.log());
            }
            assert!(Instant::now() < deadline, "the Windows agent did not answer on its pipe:\n{}", agent.log());
            std::thread::sleep(Duration::from_millis(200));
        }
        agent
    }

    /// `idlemesh.exe ARGS` against this agent, over its named pipe.
    fn ctl(&self, args: &[&str]) -> Output {
        let mut cmd = wine().idlemesh();
        cmd.args(args).env("IDLEMESH_LOG", "warn").envs(self.env.iter().map(|(k, v)| (k, v)));
        output(cmd, Duration::from_secs(60)).expect("wine runs idlemesh.exe")
    }

    fn status(&self) -> Value {
        let out = self.ctl(&["status", "--json"]);
        assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn wait_for(&self, what: &str, limit: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        // Each status is a Wine process start: asked for less often.
        crate::harness::wait_for_status(what, limit, Duration::from_millis(200), || self.status(), pred, || self.log())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// The Linux processes of this agent's workers (each Windows process
    /// is one under Wine), by the mark in their environment.
    fn worker_processes(&self) -> Vec<u32> {
        marked_processes(&self.mark)
            .into_iter()
            .filter(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                cmdline.split(|&b| b == 0).any(|arg| arg == b"worker")
            })
            .collect()
    }
}

impl Drop for WindowsAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Whatever of this run is left (workers, should the agent's end not take them along).
        for pid in marked_processes(&self.mark) {
            // SAFETY: kill(2) on a process this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// Processes whose environment carries `RUN_MARK=mark`.
fn marked_processes(mark: &str) -> Vec<u32> {
    let wanted = format!("{RUN_MARK}={mark}");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == wanted.as_bytes()))
        })
        .collect()
}

/// CPU time (user + system, in clock ticks) of these processes together.
fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the command's closing parenthesis; utime and stime are the 14th and 15th.
            let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
            Some(fields[11].parse::<u64>().ok()? + fields[12].parse::<u64>().ok()?)
        })
        .sum()
}

/// `reg ARGS` inside the Wine prefix.
fn reg(args: &[&str]) -> Output {
    let mut cmd = wine().command(Path::new("reg"));
    cmd.args(args);
    run(&format!("reg {}", args.join(" ")), cmd, Duration::from_secs(60))
}

/// Removes the policy key when the test ends, however it ends.
struct PolicyKey;

impl Drop for PolicyKey {
    fn drop(&mut self) {
        let _ = reg(&["delete", POLICY_KEY, "/f"]);
    }
}

fn slow_job() -> Value {
    // Inside the set every pixel runs to max_iter: seconds per tile, so a
    // task is running when we look.
    json!({
        "name": "windows", "params": {"width": 160, "height": 120, "max_iter": 200000, "center_re": -0.2, "center_im": 0.0, "span": 0.4},
        "split": {"kind": "tiles", "width": 160, "height": 120, "tile_width": 80, "tile_height": 60},
        "combiner": {"kind": "png_tiles"}, "lease_ms": 600000,
    })
}

#[test]
fn the_windows_agent_works_pauses_through_its_pipe_and_obeys_a_registry_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = PoolProcess::start(&tmp.path().join("pool"));
    let op = OperatorHttp::new(&pool.url, &pool.token);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (job, _tasks) = rt.block_on(op.mandelbrot_job(slow_job()));

    // IT's policy, from the registry: the GPU off and locked.
    let _policy = PolicyKey;
    let added =
        reg(&["add", &format!(r"{POLICY_KEY}\Locked"), "/v", "gpu_enabled", "/t", "REG_DWORD", "/d", "0", "/f"]);
    assert!(added.status.success(), "reg add failed");
    // An administrator's check reads the same key, and names a bad value.
    let bad = reg(&["add", &format!(r"{POLICY_KEY}\Locked"), "/v", "cpu_cores", "/t", "REG_SZ", "/d", "lots", "/f"]);
    assert!(bad.status.success(), "reg add failed");
    let mut check = wine().idlemesh();
    check.args(["policy", "check", "--json"]);
    let check = run("idlemesh.exe policy check", check, Duration::from_secs(60));
    assert_eq!(check.status.code(), Some(2), "a bad registry value passed the check");
    let report: Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(report["file"], POLICY_KEY, "{report}");
    assert_eq!(report["locked"]["gpu_enabled"], false, "{report}");
    assert!(report["errors"].to_string().contains("cpu_cores"), "{report}");
    assert!(reg(&["delete", &format!(r"{POLICY_KEY}\Locked"), "/v", "cpu_cores", "/f"]).status.success());

    let dir = tmp.path().join("agent");
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::write(dir.join("config/settings.toml"), "cpu_duty_cycle_percent = 100\ncpu_cores = 1\n").unwrap();
    let agent = WindowsAgent::start(&dir, &pool.url);

    let s = agent.status();
    assert_eq!(s["settings"]["gpu_enabled"], json!({"value": false, "source": "policy", "locked": true}), "{s:#}");
    assert_eq!(s["settings"]["cpu_duty_cycle_percent"]["source"], "user", "{s:#}");
    let out = agent.ctl(&["settings", "set", "gpu_enabled", "true"]);
    assert_eq!(out.status.code(), Some(2), "a locked setting was changed");
    assert!(String::from_utf8_lossy(&out.stderr).contains("managed by your organisation"));

    // Real tasks from the Linux pool, in a Windows worker process.
    let s = agent.wait_for("a task to run", Duration::from_secs(120), |s| {
        s["state"] == "working"
            && s["scheduler"]["current_tasks"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["progress"].as_f64().is_some_and(|p| p > 0.0)))
    });
    let workers = agent.worker_processes();
    assert!(!workers.is_empty(), "no worker process found; status {s:#}");
    // Working: its CPU time grows (the check below would see this).
    let before = cpu_ticks(&workers);
    std::thread::sleep(Duration::from_secs(1));
    assert!(cpu_ticks(&workers) > before, "the worker is not computing before the pause");

    // Paused through the named pipe: the worker's threads are suspended by
    // the time the command returns, so it makes no progress at all.
    let out = agent.ctl(&["pause", "1h"]);
    assert!(out.status.success(), "pause failed: {}", String::from_utf8_lossy(&out.stderr));
    let s = agent.status();
    assert_eq!(s["state"], "paused", "{s:#}");
    assert_eq!(s["reasons"][0]["code"], "paused_by_user", "{s:#}");
    // The tasks' progress only: a heartbeat may move a lease's deadline meanwhile.
    let progress_of = |s: &Value| -> Vec<Value> {
        s["scheduler"]["current_tasks"].as_array().into_iter().flatten().map(|t| t["progress"].clone()).collect()
    };
    let progress = progress_of(&s);
    let frozen_at = cpu_ticks(&workers);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(cpu_ticks(&workers), frozen_at, "the paused worker kept computing");
    assert_eq!(progress_of(&agent.status()), progress, "the paused task moved");
    assert_eq!(agent.worker_processes(), workers, "the worker was ended, not suspended");

    // Resumed: the same worker goes on.
    let out = agent.ctl(&["resume"]);
    assert!(out.status.success(), "resume failed: {}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(Duration::from_secs(1));
    assert!(cpu_ticks(&workers) > frozen_at, "the resumed worker does not compute");

    let status = rt.block_on(op.until_finished(job, Duration::from_secs(600)));
    assert_eq!(status["state"], "done", "{status}\n{}", agent.log());

    // Its ledger, verified by the Windows build while the agent runs.
    let mut verify = wine().idlemesh();
    verify.args(["ledger", "verify"]).env("IDLEMESH_DATA_DIR", win_path(&dir.join("data")));
    let verify = run("idlemesh.exe ledger verify", verify, Duration::from_secs(120));
    assert_eq!(verify.status.code(), Some(0), "the Windows agent's ledger does not verify");

    // An agent that dies (kill -9: no handler runs) takes its workers along,
    // a suspended one too, which would otherwise wait for ever: they are in
    // a job object the system closes with the agent.
    let (job, _tasks) = rt.block_on(op.mandelbrot_job(slow_job()));
    let out = agent.ctl(&["resume"]);
    assert!(out.status.success(), "resume failed: {}", String::from_utf8_lossy(&out.stderr));
    agent.wait_for("a task of the second job", Duration::from_secs(120), |s| {
        s["scheduler"]["current_tasks"].as_array().is_some_and(|t| t.iter().any(|t| t["job_id"] == job))
    });
    let out = agent.ctl(&["pause"]);
    assert!(out.status.success(), "pause failed: {}", String::from_utf8_lossy(&out.stderr));
    let workers = agent.worker_processes();
    assert!(!workers.is_empty(), "no worker to outlive its agent");
    let mut agent = agent;
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while let Some(pid) = workers.iter().find(|pid| Path::new(&format!("/proc/{pid}")).exists()) {
        assert!(Instant::now() < deadline, "worker {pid} outlived its agent");
        std::thread::sleep(Duration::from_millis(100));
    }
}
