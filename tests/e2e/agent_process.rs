//! Running `idlemesh agent` and Xvfb as child processes, for the end-to-end
//! tests and the agent benchmarks.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::BIN;

#[path = "../common/xvfb.rs"]
mod xvfb;
pub use xvfb::Xvfb;
#[path = "../common/child.rs"]
mod child;
#[path = "../common/kwin.rs"]
mod kwin;
pub use kwin::Kwin;
#[path = "../common/mutter.rs"]
mod mutter;
pub use mutter::Mutter;
#[path = "../common/session_bus.rs"]
mod session_bus;
pub use session_bus::SessionBus;

/// Children inherit the session keyring of the thread that starts them, so
/// every agent a test starts finds the device key its predecessor stored.
/// Credentials are per thread on Linux, and each test has its own thread.
pub fn session_keyring() {
    thread_local!(static ONCE: std::sync::Once = const { std::sync::Once::new() });
    ONCE.with(|once| {
        once.call_once(|| {
            // KEYCTL_JOIN_SESSION_KEYRING (1) with no name: a new anonymous session keyring.
            // SAFETY: a plain syscall with integer arguments.
            let r = unsafe { libc::syscall(libc::SYS_keyctl, 1, 0usize, 0usize, 0usize, 0usize) };
            assert!(r >= 0, "keyctl: {}", std::io::Error::last_os_error());
        })
    });
}

pub struct AgentProcess {
    child: Option<Child>,
    /// The agent's own pid (not the wrapper's, when wrapped).
    pid: Option<i32>,
    dir: PathBuf,
    env: Vec<(String, String)>,
}

impl AgentProcess {
    /// Starts `idlemesh agent` with its files in `dir` and waits for its socket.
    pub fn start(dir: &Path, pool: Option<&str>, extra_env: &[(&str, &str)]) -> Self {
        Self::start_with(dir, pool, extra_env, |cmd| cmd)
    }

    /// The agent under `umockdev-run` with the devices of `device` (a
    /// `.umockdev` file in `tests/e2e/data`), and the test bed's folder, in
    /// which the test changes what the fake devices say.
    pub fn start_under_umockdev(dir: &Path, device: &str, extra_env: &[(&str, &str)]) -> (Self, PathBuf) {
        let device = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/e2e/data").join(device);
        let bed_file = dir.join("umockdev-dir");
        let agent = Self::start_with(dir, None, extra_env, |cmd| {
            let prefix = ["umockdev-run".as_ref(), "-d".as_ref(), device.as_os_str(), "--".as_ref()];
            run_under(cmd, &prefix, &format!("echo \"$UMOCKDEV_DIR\" > '{}'", bed_file.display()))
        });
        let bed = PathBuf::from(std::fs::read_to_string(&bed_file).unwrap().trim());
        (agent, bed)
    }

    /// The same, with the command wrapped (in umockdev-run, for example).
    pub fn start_with(
        dir: &Path,
        pool: Option<&str>,
        extra_env: &[(&str, &str)],
        wrap: impl FnOnce(Command) -> Command,
    ) -> Self {
        session_keyring();
        std::fs::create_dir_all(dir.join("config")).unwrap();
        let mut env: Vec<(String, String)> = vec![
            ("IDLEMESH_DATA_DIR".into(), dir.join("data").display().to_string()),
            ("IDLEMESH_CONFIG_DIR".into(), dir.join("config").display().to_string()),
            ("IDLEMESH_POLICY".into(), dir.join("policy.toml").display().to_string()),
            ("IDLEMESH_CONTROL_SOCKET".into(), dir.join("agent.sock").display().to_string()),
            ("IDLEMESH_KEYRING".into(), "keyutils".into()),
            ("IDLEMESH_LOG".into(), "info".into()),
        ];
        env.extend(extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut cmd = Command::new(BIN);
        cmd.arg("agent").stdin(Stdio::null()).stdout(Stdio::null());
        if let Some(url) = pool {
            cmd.args(["--pool", url]);
        }
        // No display unless the test gives one: the idle sensor is then "none".
        cmd.env_remove("DISPLAY").env_remove("WAYLAND_DISPLAY").env_remove("DBUS_SESSION_BUS_ADDRESS");
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let mut cmd = wrap(cmd);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        let log = std::fs::File::options().create(true).append(true).open(dir.join("agent.log")).unwrap();
        cmd.stderr(log);
        let mut agent = Self { child: Some(cmd.spawn().expect("agent starts")), pid: None, dir: dir.to_owned(), env };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = agent.ctl(&["status", "--json"]);
            if out.status.success() {
                let s: Value = serde_json::from_slice(&out.stdout).unwrap();
                agent.pid = s["agent"]["pid"].as_i64().map(|p| p as i32);
                break;
            }
            if let Some(status) = agent.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the agent exited with {status}:\n{}", agent.log());
            }
            assert!(Instant::now() < deadline, "the agent did not answer on its socket:\n{}", agent.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        agent
    }

    /// `idlemesh ARGS` against this agent.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args).stdin(Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.env("IDLEMESH_LOG", "warn");
        cmd.output().expect("idlemesh runs")
    }

    pub fn status(&self) -> Value {
        let out = self.ctl(&["status", "--json"]);
        assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Waits until `pred` holds for the status, or fails with the last one seen.
    pub fn wait_for(&self, what: &str, limit: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        crate::harness::wait_for_status(what, limit, Duration::from_millis(20), || self.status(), pred, || self.log())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    pub fn ledger(&self) -> PathBuf {
        self.dir.join("data").join("ledger.sqlite")
    }

    pub fn kill9(&mut self) {
        if let Some(pid) = self.pid.take() {
            // SAFETY: kill(2); the agent is our child or our grandchild.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait: the agent's orderly shutdown.
    pub fn stop(&mut self) {
        if let Some(pid) = self.pid.take() {
            // SAFETY: kill(2); the agent is our child or our grandchild.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Writes the agent's user settings file (in the config dir `AgentProcess` uses).
pub fn write_settings(dir: &Path, text: &str) {
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::write(dir.join("config/settings.toml"), text).unwrap();
}

/// `cmd` run by `prefix` (e.g. `umockdev-run -d FILE --`) through `sh -c
/// script`, where the script ends by exec'ing the original command.
pub fn run_under(cmd: Command, prefix: &[&std::ffi::OsStr], script: &str) -> Command {
    let mut wrapped = Command::new(prefix[0]);
    wrapped.args(&prefix[1..]).args(["sh", "-c"]).arg(format!("{script} && exec \"$0\" \"$@\""));
    wrapped.arg(cmd.get_program()).args(cmd.get_args());
    wrapped
}

/// Whether a process is stopped (SIGSTOP), and its CPU ticks so far.
pub fn proc_state(pid: u64) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields[0].chars().next()?;
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after the state.
    let ticks = fields[11].parse::<u64>().ok()? + fields[12].parse::<u64>().ok()?;
    Some((state, ticks))
}

/// The GPU workers `parent` started (by their `--gpu` argument), alive now.
pub fn gpu_workers_of(parent: u64) -> Vec<u64> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().collect();
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let gpu = cmdline.split(|b| *b == 0).any(|arg| arg == b"--gpu");
        if fields[1].parse::<u64>().ok() == Some(parent) && fields[0] != "Z" && gpu {
            pids.push(pid);
        }
    }
    pids
}
