//! Installing packages into a private root with the distribution's own tools
//! (`dpkg --root`, `rpm --root`), so tests never change the machine.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `cmd`, panicking with its output if it fails; returns stdout+stderr.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// A dpkg database of its own under `root`.
pub struct DpkgRoot {
    pub root: PathBuf,
}

impl DpkgRoot {
    pub fn new(root: &Path) -> Self {
        std::fs::create_dir_all(root.join("var/lib/dpkg/info")).unwrap();
        std::fs::create_dir_all(root.join("var/lib/dpkg/updates")).unwrap();
        std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
        Self { root: root.to_path_buf() }
    }

    /// `dpkg ARGS` against this root, not yet run.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("dpkg");
        cmd.arg(format!("--root={}", self.root.display())).args(["--force-not-root", "--log=/dev/null"]).args(args);
        cmd
    }

    pub fn dpkg(&self, args: &[&str]) -> String {
        run(&mut self.command(args))
    }
}

/// An rpm database of its own under `root`.
pub struct RpmRoot {
    pub root: PathBuf,
}

impl RpmRoot {
    pub fn new(root: &Path) -> Self {
        std::fs::create_dir_all(root).unwrap();
        let this = Self { root: root.to_path_buf() };
        this.rpm(&["--initdb"]);
        this
    }

    pub fn rpm(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("rpm");
        cmd.arg("--root").arg(&self.root).args(args);
        run(&mut cmd)
    }
}
