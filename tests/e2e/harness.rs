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
        let token = "test-operator-token".to_string();
        let mut child = Command::new(BIN)
            .args(["pool", "serve", "--listen", "127.0.0.1:0", "--data-dir"])
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

impl Drop for PoolProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
