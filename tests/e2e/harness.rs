//! Starting `idlemesh` processes in temp dirs.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_idlemesh");

/// `idlemesh ARGS` with its data dir in `data_dir`; waits for it.
pub fn idlemesh(data_dir: &Path, args: &[&str]) -> Output {
    run_logged(args, &[("IDLEMESH_DATA_DIR", data_dir.as_os_str()), ("IDLEMESH_LOG", "warn".as_ref())])
}

/// Runs `idlemesh ARGS` with extra environment and shows what it printed.
fn run_logged(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("idlemesh runs");
    eprintln!(
        "$ idlemesh {}\nexit {:?}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A lab's pool: anyone joins, no trust rules (every device is the test's).
const LAB: &[&str] = &["--open-enrollment", "--spread-replicas", "none", "--checked-results", "0"];

/// A `idlemesh pool serve` process on a free loopback port; killed on drop.
pub struct PoolProcess {
    child: Child,
    pub url: String,
    pub token: String,
    /// As the pool printed it for a policy: `ed25519:` and 64 hex digits.
    pub public_key: String,
}

impl PoolProcess {
    pub fn start(dir: &Path) -> Self {
        Self::start_on(dir, "127.0.0.1:0")
    }

    /// On a given address: a restarted pool comes back where its devices look for it.
    pub fn start_on(dir: &Path, listen: &str) -> Self {
        Self::spawn(dir, listen, &[])
    }

    /// A pool that publishes what a credit is worth.
    pub fn start_paying(dir: &Path, per_credit: &str, currency: &str) -> Self {
        Self::spawn(dir, "127.0.0.1:0", &["--payout-per-credit", per_credit, "--payout-currency", currency])
    }

    /// A pool that enrolls only devices with an organisation's token.
    pub fn start_closed(dir: &Path, listen: &str) -> Self {
        Self::spawn_with(dir, listen, &LAB[1..])
    }

    /// A lab pool with `extra` flags (`--tls-cert`...).
    pub fn start_with(dir: &Path, extra: &[&str]) -> Self {
        Self::spawn(dir, "127.0.0.1:0", extra)
    }

    /// One replica of a lab pool on a shared database (`--db URL`), signing
    /// with the shared `key_file`, on `listen` (`127.0.0.1:0` for any port).
    pub fn start_replica(dir: &Path, db: &str, key_file: &Path, listen: &str) -> Self {
        let key_file = key_file.display().to_string();
        Self::spawn(dir, listen, &["--db", db, "--key-file", &key_file])
    }

    /// A pool with `pool serve`'s own defaults and `extra` flags: closed,
    /// replicas spread, trust earned.
    pub fn start_as_shipped(dir: &Path, extra: &[&str]) -> Self {
        Self::spawn_with(dir, "127.0.0.1:0", extra)
    }

    /// Most tests run one owner's devices on one loopback address: a lab.
    fn spawn(dir: &Path, listen: &str, extra: &[&str]) -> Self {
        Self::spawn_with(dir, listen, &[LAB, extra].concat())
    }

    fn spawn_with(dir: &Path, listen: &str, extra: &[&str]) -> Self {
        let token = "test-operator-token".to_string();
        let mut child = Command::new(BIN)
            .args(["pool", "serve", "--listen", listen])
            .args(extra)
            .arg("--data-dir")
            .arg(dir)
            .env("IDLEMESH_OPERATOR_TOKEN", &token)
            .env("IDLEMESH_LOG", "warn")
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pool starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (url, public_key) = loop {
            let line = lines.next().expect("pool printed its address").unwrap();
            if let Some(at) = line.find("listening on ") {
                let key = line.split_whitespace().find(|w| w.starts_with("ed25519:")).expect("the pool's key");
                break (line[at + "listening on ".len()..].trim().to_string(), key.to_string());
            }
        };
        // Keep draining stderr so the pool never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                eprintln!("[pool] {line}")
            }
        });
        Self { child, url, token, public_key }
    }
}

impl PoolProcess {
    /// SIGKILL: no shutdown, no flush, as in a power cut.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PoolProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An agent configuration for tests: the real worker binary, a temp data dir.
pub fn agent_config(pool_url: &str, data_dir: &Path) -> idlemesh_agent::SlotConfig {
    idlemesh_agent::SlotConfig {
        pool_url: pool_url.to_owned(),
        data_dir: data_dir.to_owned(),
        ledger_path: data_dir.join("ledger.sqlite"),
        worker: idlemesh_runtime::WorkerCommand::new(BIN, ["worker"]),
        capabilities: idlemesh_protocol::api::Capabilities {
            wasm: true,
            wgpu_adapter: None,
            cores: 1,
            memory_bytes: 1 << 30,
        },
        device_info: Default::default(),
        enrollment_token: None,
        max_tasks_per_lease: 1,
        max_idle_poll: std::time::Duration::from_millis(100),
        watcher: None,
        require_sandbox: Vec::new(),
        trust: Default::default(),
    }
}

/// `idlemesh ARGS` against a pool, as its operator.
pub fn operator(pool: &PoolProcess, args: &[&str]) -> Output {
    operator_at(&pool.url, &pool.token, args)
}

/// The WGSL Mandelbrot's shader and its layout (`kernels/wgsl`).
pub fn wgsl_mandelbrot() -> (String, String) {
    let wgsl = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../kernels/wgsl");
    let file = |name: &str| wgsl.join(name).to_str().unwrap().to_owned();
    (file("mandelbrot.wgsl"), file("mandelbrot.json"))
}

/// Submits the WGSL Mandelbrot with its layout as the operator: `params`
/// as JSON text, the image `tiles` (`WxH`) cut in `tile`s.
pub fn submit_wgsl_mandelbrot(pool: &PoolProcess, params: &str, tiles: &str, tile: &str) -> Output {
    let (shader, layout) = wgsl_mandelbrot();
    let (shader, layout) = (shader.as_str(), layout.as_str());
    let args = [
        "job",
        "submit",
        "--kernel",
        shader,
        "--manifest",
        layout,
        "--params",
        params,
        "--tiles",
        tiles,
        "--tile",
        tile,
        "--json",
    ];
    operator(pool, &args)
}

pub fn operator_at(url: &str, token: &str, args: &[&str]) -> Output {
    run_logged(args, &[("IDLEMESH_POOL_URL", url.as_ref()), ("IDLEMESH_OPERATOR_TOKEN", token.as_ref())])
}

/// The operator's side of the pool's HTTP API, for tests that drive a pool
/// process from inside an async test: the CLI's client
/// (`idlemesh_pool::client`), with answers as JSON values for assertions.
#[derive(Clone)]
pub struct OperatorHttp {
    client: idlemesh_pool::client::OperatorClient,
    pub url: String,
}

impl OperatorHttp {
    pub fn new(url: &str, token: &str) -> Self {
        Self { client: idlemesh_pool::client::OperatorClient::new(url, token).unwrap(), url: url.to_owned() }
    }

    /// For an https pool whose certificate comes from the CA in `ca_pem`.
    pub fn trusting(url: &str, token: &str, ca_pem: &str) -> Self {
        let client = idlemesh_pool::client::OperatorClient::trusting(url, token, ca_pem).unwrap();
        Self { client, url: url.to_owned() }
    }

    /// Uploads the mandelbrot kernel and submits a job with it; `fields` are
    /// the rest of the job spec. Returns the job id and its task count.
    pub async fn mandelbrot_job(&self, fields: serde_json::Value) -> (u64, u64) {
        self.job(idlemesh_kernels::MANDELBROT, fields).await
    }

    /// Uploads `kernel` (a WASM component, or any bytes for a pool that
    /// never runs it) and submits a job with it; `fields` are the rest of
    /// the job spec. Returns the job id and its task count.
    pub async fn job(&self, kernel: &[u8], mut fields: serde_json::Value) -> (u64, u64) {
        let kernel = self.client.put_blob(kernel.to_vec()).await.unwrap();
        fields["kernel_kind"] = "wasm".into();
        fields["kernel_sha256"] = serde_json::to_value(kernel.sha256).unwrap();
        let spec: idlemesh_protocol::api::JobSpec = serde_json::from_value(fields).expect("a job spec");
        let job = self.client.submit(&spec).await.expect("job created");
        (job.job_id, job.tasks)
    }

    /// The job's status, or `None` while the pool cannot be reached.
    pub async fn status(&self, job: u64) -> Option<serde_json::Value> {
        let status = self.client.status(job).await.ok()?;
        Some(serde_json::to_value(status).unwrap())
    }

    /// Waits (through outages) until the job is no longer running.
    pub async fn until_finished(&self, job: u64, limit: std::time::Duration) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + limit;
        let mut last = None;
        loop {
            if let Some(s) = self.status(job).await {
                if s["state"] != "running" {
                    return s;
                }
                last = Some(s);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {job} did not finish within {limit:?}; last status {last:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    pub async fn stats(&self) -> serde_json::Value {
        serde_json::to_value(self.client.stats().await.unwrap()).unwrap()
    }

    pub async fn output(&self, job: u64) -> Vec<u8> {
        self.client.output(job).await.unwrap()
    }
}

/// Changes one digit of `body`'s `"wall_ms"` in the SQLite file itself, as
/// someone editing their ledger would: the entry's body must be stored
/// there once, contiguously.
pub fn alter_wall_ms(ledger: &Path, body: &str) {
    let mut file = std::fs::read(ledger).unwrap();
    let at = find_unique(&file, body.as_bytes()).expect("the entry's body is stored once, contiguously");
    let digit = at + body.find("\"wall_ms\":").unwrap() + "\"wall_ms\":".len();
    file[digit] = if file[digit] == b'9' { b'8' } else { file[digit] + 1 };
    std::fs::write(ledger, file).unwrap();
}

fn find_unique(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let mut hits = haystack.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle).map(|(i, _)| i);
    let first = hits.next()?;
    hits.next().is_none().then_some(first)
}

/// Asks for an agent's status every `every` until `pred` holds for it, or
/// fails after `limit` with the last status and `log()`.
pub fn wait_for_status(
    what: &str,
    limit: std::time::Duration,
    every: std::time::Duration,
    status: impl Fn() -> serde_json::Value,
    pred: impl Fn(&serde_json::Value) -> bool,
    log: impl Fn() -> String,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let s = status();
        if pred(&s) {
            return s;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}; last status: {s:#}\n{}", log());
        std::thread::sleep(every);
    }
}
