//! docs/kernels.md, run as written: every `sh` block of the walkthrough,
//! in order, in one shell, the way an operator would type them. The test
//! gives the shell what a reader's machine has (`idlemesh` on the PATH, a
//! free port, the agent's files and keyring in a temp dir) and nothing else.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::agent_process::session_keyring;
use crate::harness::BIN;

/// The commands of the `sh` blocks of a Markdown text, in order.
fn sh_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "an sh block is never closed");
    blocks
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `wc`'s three counts of a file, as the template kernel reports them.
fn wc(path: &Path, min_word_length: usize) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap();
    let words = bytes.split(|b| b.is_ascii_whitespace()).filter(|w| w.len() >= min_word_length.max(1)).count();
    let lines = bytes.iter().filter(|&&b| b == b'\n').count();
    serde_json::json!({"lines": lines, "words": words, "bytes": bytes.len()})
}

#[test]
fn sh_blocks_are_found_in_order() {
    let md = "text\n```sh\none\ntwo\n```\n```text\nnot this\n```\n```sh\nthree\n```\n";
    assert_eq!(sh_blocks(md), ["one\ntwo\n", "three\n"]);
}

#[test]
fn the_kernel_walkthrough_runs_as_written() {
    let doc_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/kernels.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap();
    let blocks = sh_blocks(&doc);
    assert!(blocks.len() >= 8, "docs/kernels.md lost its walkthrough: {} sh blocks", blocks.len());
    let script = blocks.concat();

    // Outside this repository, as a reader's project would be.
    let tmp = tempfile::tempdir().unwrap();
    let bin_dir = tmp.path().join("bin");
    std::fs::create_dir(&bin_dir).unwrap();
    std::os::unix::fs::symlink(BIN, bin_dir.join("idlemesh")).unwrap();
    let agent = tmp.path().join("agent");
    std::fs::create_dir_all(agent.join("config")).unwrap();
    session_keyring();

    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut shell = Command::new("bash");
    shell.args(["-euo", "pipefail", "-c", &script]).current_dir(tmp.path()).stdin(Stdio::null());
    // What Cargo tells this test about the workspace would steer the
    // reader's build into it (its target dir, its flags): a reader has none.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let cargo_var = key.starts_with("CARGO_") && key != "CARGO_HOME";
        if cargo_var || ["RUSTFLAGS", "RUSTC_WRAPPER", "RUSTC_WORKSPACE_WRAPPER", "OUT_DIR"].contains(&key.as_str()) {
            shell.env_remove(&key);
        }
    }
    shell
        .env("PATH", path)
        .env("PORT", free_port().to_string())
        .env("IDLEMESH_DATA_DIR", agent.join("data"))
        .env("IDLEMESH_CONFIG_DIR", agent.join("config"))
        .env("IDLEMESH_POLICY", agent.join("policy.toml"))
        .env("IDLEMESH_CONTROL_SOCKET", agent.join("agent.sock"))
        .env("IDLEMESH_KEYRING", "keyutils")
        .env("IDLEMESH_LOG", "warn")
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("DBUS_SESSION_BUS_ADDRESS");
    let log = tmp.path().join("walkthrough.log");
    let log_file = std::fs::File::create(&log).unwrap();
    shell.stdout(log_file.try_clone().unwrap()).stderr(log_file);
    // Its own process group, so the pool and agent it starts in the
    // background go with it whatever happens.
    shell.process_group(0);
    let mut child = shell.spawn().expect("bash starts");
    let group = child.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(900);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // SAFETY: a plain kill of the group this test made.
    unsafe { libc::kill(-group, libc::SIGKILL) };
    let _ = child.wait();
    let printed = std::fs::read_to_string(&log).unwrap_or_default();
    let lines: Vec<&str> = printed.lines().collect();
    let tail = lines[lines.len().saturating_sub(60)..].join("\n");
    assert!(status.is_some_and(|s| s.success()), "the walkthrough stopped ({status:?}); its last lines:\n{tail}");

    // What the reader is told to expect.
    let project = tmp.path().join("wordcount");
    assert!(project.join("target/wasm32-wasip2/release/wordcount.wasm").is_file());
    let result = std::fs::read_to_string(project.join("result.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = result.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        lines,
        [wc(&project.join("src/lib.rs"), 2), wc(&project.join("Cargo.toml"), 2)],
        "one line per input, in order, counting words of 2 letters or more"
    );
    assert!(printed.contains("test result: ok. 4 passed"), "cargo test ran the template's tests:\n{tail}");
}
