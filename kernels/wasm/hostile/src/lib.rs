//! A kernel that misbehaves on purpose. `params` is the name of one
//! misbehaviour; the sandbox tests run each and check how it ends.
//!
//! Modes that probe what the sandbox grants (`probe`) return a report of what
//! they could reach, so the tests assert on what a kernel actually saw.

#[cfg(target_arch = "wasm32")]
mod component {
    use std::hint::black_box;
    use std::io::Write as _;

    use idlemesh_guest::{Host, Task};

    #[allow(unconditional_recursion, reason = "the stack overflow is this mode's point")]
    fn recurse(n: u64) -> u64 {
        // black_box keeps the call from becoming a loop.
        black_box(recurse(black_box(n + 1))) + 1
    }

    /// What the kernel could see of the world, one line per probe.
    fn probe() -> String {
        let mut report = String::new();
        let file = std::fs::read("/etc/passwd").map(|b| b.len());
        report.push_str(&format!("file: {}\n", if file.is_ok() { "READ" } else { "denied" }));
        let dir = std::fs::read_dir("/").map(|d| d.count());
        report.push_str(&format!("dir: {}\n", if dir.is_ok() { "LISTED" } else { "denied" }));
        let created = std::fs::write("escape.txt", b"x");
        report.push_str(&format!("write: {}\n", if created.is_ok() { "WROTE" } else { "denied" }));
        report.push_str(&format!("env: {}\n", std::env::vars().count()));
        report.push_str(&format!("args: {}\n", std::env::args().count()));
        let tcp = std::net::TcpStream::connect("127.0.0.1:22");
        report.push_str(&format!("tcp: {}\n", if tcp.is_ok() { "CONNECTED" } else { "denied" }));
        let udp = std::net::UdpSocket::bind("0.0.0.0:0");
        report.push_str(&format!("udp: {}\n", if udp.is_ok() { "BOUND" } else { "denied" }));
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        report.push_str(&format!("wall_clock_s: {now}\n"));
        let mut random = [0u8; 8];
        let seeded = std::collections::hash_map::RandomState::new();
        use std::hash::BuildHasher as _;
        random.copy_from_slice(&seeded.hash_one(1u8).to_le_bytes());
        report.push_str(&format!("hash_seed: {:x}\n", u64::from_le_bytes(random)));
        report
    }

    pub fn run(task: &Task, host: &mut impl Host) -> Result<Vec<u8>, String> {
        match task.params.trim().trim_matches('"') {
            "spin" => loop {
                black_box(());
            },
            "spin-calling-host" => loop {
                host.progress(0.5);
            },
            // Progress that jumps back and forth on every call: each
            // value is new, so only the rate limit keeps the pipe quiet.
            "progress-flood" => {
                for i in 0..2_000_000u32 {
                    host.progress(if i % 2 == 0 { 0.25 } else { 0.75 });
                }
                Ok(b"reported".to_vec())
            }
            "checkpoint-spam" => loop {
                host.checkpoint(&[1, 2, 3]);
            },
            "grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(black_box(vec![1u8; 1 << 20]));
                }
            }
            "recurse" => Ok(recurse(0).to_le_bytes().to_vec()),
            "big-output" => Ok(vec![7u8; 32 << 20]),
            "log-spam" => {
                let line = "x".repeat(1024);
                for _ in 0..10_000 {
                    host.log(&line);
                }
                let _ = std::io::stdout().write_all(&vec![b'y'; 1 << 20]);
                Ok(b"still here".to_vec())
            }
            "huge-checkpoint" => {
                host.checkpoint(&vec![0u8; 64 << 20]);
                Ok(Vec::new())
            }
            "panic" => panic!("kernel panicked on purpose"),
            "divide-by-zero" => Ok((black_box(1u32) / black_box(0u32)).to_le_bytes().to_vec()),
            "error" => Err("kernel refused its input".into()),
            "probe" => Ok(probe().into_bytes()),
            "echo" => Ok(task.input.clone()),
            other => Err(format!("unknown mode {other:?}")),
        }
    }

    idlemesh_guest::kernel!(run);
}
