//! Starting `idlemesh` processes in temp dirs.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_idlemesh");

/// `idlemesh ARGS` with its data dir in `data_dir`; waits for it.
pub fn idlemesh(data_dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .args(args)
        .env("IDLEMESH_DATA_DIR", data_dir)
        .env("IDLEMESH_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("idlemesh runs");
    eprintln!(
        "$ idlemesh {}\nexit {:?}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A `idlemesh pool serve` process on a free loopback port; killed on drop.
pub struct PoolProcess {
    child: Child,
    pub url: String,
    pub token: String,
}

impl PoolProcess {
    pub fn start(dir: &Path) -> Self {
        Self::start_on(dir, "127.0.0.1:0")
    }

    /// On a given address: a restarted pool comes back where its devices look for it.
    pub fn start_on(dir: &Path, listen: &str) -> Self {
        let token = "test-operator-token".to_string();
        let mut child = Command::new(BIN)
            .args(["pool", "serve", "--listen", listen, "--data-dir"])
            .arg(dir)
            .env("IDLEMESH_OPERATOR_TOKEN", &token)
            .env("IDLEMESH_LOG", "warn")
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pool starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let url = loop {
            let line = lines.next().expect("pool printed its address").unwrap();
            if let Some(at) = line.find("listening on ") {
                break line[at + "listening on ".len()..].trim().to_string();
            }
        };
        // Keep draining stderr so the pool never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                eprintln!("[pool] {line}")
            }
        });
        Self { child, url, token }
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
pub fn agent_config(pool_url: &str, data_dir: &Path) -> idlemesh_agent::AgentConfig {
    idlemesh_agent::AgentConfig {
        pool_url: pool_url.to_owned(),
        data_dir: data_dir.to_owned(),
        ledger_path: data_dir.join("ledger.sqlite"),
        worker: idlemesh_runtime::WorkerCommand { program: BIN.into(), args: vec!["worker".into()] },
        capabilities: idlemesh_protocol::api::Capabilities {
            wasm: true,
            wgpu_adapter: None,
            cores: 1,
            memory_bytes: 1 << 30,
        },
        device_info: Default::default(),
        max_tasks_per_lease: 1,
        max_idle_poll: std::time::Duration::from_millis(100),
    }
}

/// `idlemesh ARGS` against a pool, as its operator.
pub fn operator(pool: &PoolProcess, args: &[&str]) -> Output {
    operator_at(&pool.url, &pool.token, args)
}

pub fn operator_at(url: &str, token: &str, args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .args(args)
        .env("IDLEMESH_POOL_URL", url)
        .env("IDLEMESH_OPERATOR_TOKEN", token)
        .stdin(Stdio::null())
        .output()
        .expect("idlemesh runs");
    eprintln!(
        "$ idlemesh {}\nexit {:?}\n{}{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
