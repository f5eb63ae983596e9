//! What the tray app's end-to-end tests and benchmarks share: a pool with
//! slow work, and the environment that gives the app its own home, data,
//! config, policy, socket, display and session bus.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use idlemesh_pool::{Pool, PoolConfig};
use serde_json::json;

use crate::{session_bus, xvfb};

/// Children inherit the session keyring of the thread that starts them: the
/// app's device key lives there (kernel keyutils), not in the user's keyring.
pub fn session_keyring() {
    // SAFETY: KEYCTL_JOIN_SESSION_KEYRING (1) with no name, integer arguments only.
    let r = unsafe { libc::syscall(libc::SYS_keyctl, 1, 0usize, 0usize, 0usize, 0usize) };
    assert!(r >= 0, "keyctl: {}", std::io::Error::last_os_error());
}

/// A pool for the app's tests, in `dir`: open to any device, or (not
/// `open_enrollment`) only to devices with an enrollment token.
pub fn test_pool(dir: &Path, name: &str, open_enrollment: bool) -> Pool {
    Pool::open(PoolConfig {
        data_dir: dir.to_path_buf(),
        database: None,
        key_file: None,
        name: name.into(),
        operator: "tests".into(),
        operator_token: "test-operator-token-0123456789".into(),
        open_enrollment,
        trust: idlemesh_pool::trust::TrustRules::single_owner(),
        payout: None,
    })
    .unwrap()
}

/// Serves `pool` on a loopback port; its URL, and the server's task.
pub async fn serve(pool: Pool) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let _ = pool.serve(listener).await;
    });
    (url, server)
}

/// A pool with a job of slow tiles, so a worker is busy while the test pauses it.
pub async fn pool_with_job(dir: &Path) -> (String, tokio::task::JoinHandle<()>) {
    let pool = test_pool(dir, "app test pool", true);
    let kernel = pool.put_blob(idlemesh_kernels::MANDELBROT.to_vec()).await.unwrap();
    let mut spec = idlemesh_pool::demo::mandelbrot_job(kernel, 1024, 1024, 1, 8);
    // Deep zoom into the set's edge: most pixels run to max_iter, seconds per tile.
    spec.params["max_iter"] = json!(8_000);
    spec.params["span"] = json!(0.5);
    pool.submit(spec).await.unwrap();
    serve(pool).await
}

pub fn proc_state(pid: u64) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit(") ").next().and_then(|rest| rest.chars().next()).unwrap_or('?')
}

/// The app's environment: its own home, data, config, policy (one locked
/// key) and socket under `root`; work at once for `pool_url`.
pub struct AppEnv {
    pub env: Vec<(String, String)>,
    pub socket: PathBuf,
    pub config_dir: PathBuf,
}

pub fn app_env(root: &Path, pool_url: &str, x: &xvfb::Xvfb, bus: &session_bus::SessionBus) -> AppEnv {
    let config_dir = root.join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    // Work at once (Xvfb has had no input), at full speed, for the test pool.
    std::fs::write(
        config_dir.join("settings.toml"),
        format!("pool_url = \"{pool_url}\"\nidle_minutes = 0\ncpu_cores = 1\ncpu_duty_cycle_percent = 100\n"),
    )
    .unwrap();
    let policy = root.join("policy.toml");
    std::fs::write(&policy, "[locked]\nmin_battery_percent = 90\n").unwrap();
    let runtime_dir = root.join("run");
    std::fs::create_dir_all(&runtime_dir).unwrap();
    std::fs::set_permissions(&runtime_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let socket = root.join("agent.sock");
    let env: Vec<(String, String)> = [
        ("HOME", root.join("home")),
        ("XDG_RUNTIME_DIR", runtime_dir.clone()),
        ("XDG_CONFIG_HOME", root.join("home/.config")),
        ("XDG_DATA_HOME", root.join("home/.local/share")),
        ("IDLEMESH_DATA_DIR", root.join("data")),
        ("IDLEMESH_CONFIG_DIR", config_dir.clone()),
        ("IDLEMESH_POLICY", policy.clone()),
        ("IDLEMESH_CONTROL_SOCKET", socket.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.display().to_string()))
    .chain(
        [
            ("DISPLAY", x.display.as_str()),
            ("DBUS_SESSION_BUS_ADDRESS", bus.address.as_str()),
            ("IDLEMESH_KEYRING", "keyutils"),
            ("IDLEMESH_LOG", "info"),
            // Silences the accessibility bus.
            ("NO_AT_BRIDGE", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string())),
    )
    .collect();
    AppEnv { env, socket, config_dir }
}

/// Starts `program` (the app, built or installed) with `env`, its output in `log`.
pub fn spawn_logged(program: &Path, env: Vec<(String, String)>, log: &Path) -> Child {
    let log_file = std::fs::File::create(log).unwrap();
    Command::new(program)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()))
}

/// Polls `ok` every millisecond until it holds; returns how long that took.
pub fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !ok() {
        assert!(started.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
    started.elapsed()
}
