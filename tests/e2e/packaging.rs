//! The Linux packages, built by `scripts/package-linux` from this build's
//! binary, installed into a private root with the distribution's own tools
//! (dpkg, rpm), run, and removed again; the user's ledger stays.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::BIN;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// The installed binary does what the built one does: reports its
/// versions and runs the demo (its workers are the installed binary too).
fn exercise(root: &Path, home: &Path) {
    let bin = root.join("usr/bin/idlemesh");
    let version = run(Command::new(&bin).arg("--version"));
    assert!(version.contains("wasmtime 48.") && version.contains("wgpu 30."), "{version}");
    let data = home.join("data");
    let out = run(Command::new(&bin).args(["demo", "--headless"]).env("IDLEMESH_DATA_DIR", &data));
    assert!(out.contains("tasks"), "{out}");
    assert!(data.join("ledger.sqlite").exists());
    let unit = std::fs::read_to_string(root.join("usr/lib/systemd/user/idlemesh-agent.service")).unwrap();
    for hardening in
        ["NoNewPrivileges=yes", "ProtectSystem=full", "PrivateTmp=yes", "ExecStart=/usr/bin/idlemesh agent"]
    {
        assert!(unit.contains(hardening), "the user unit lacks {hardening}");
    }
    assert!(root.join("usr/lib/systemd/system/idlemesh-agent@.service").exists());
    assert!(root.join("usr/share/doc/idlemesh/policy.toml.sample").exists());
}

#[test]
fn deb_and_rpm_install_run_and_remove_cleanly_leaving_the_ledger() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    // "-": not the tray app's packages, which tests/app/packages.rs covers.
    let out = run(Command::new("bash")
        .arg(repo.join("scripts/package-linux"))
        .arg(BIN)
        .arg(tmp.path().join("pkgs"))
        .arg("-"));
    let deb = out.lines().find(|l| l.ends_with(".deb")).expect("a .deb was built").to_owned();
    let rpm = out.lines().find(|l| l.ends_with(".rpm")).expect("an .rpm was built (rpmbuild comes with scripts/setup)");

    // dpkg, into a root of its own: nothing on this machine changes.
    let root = tmp.path().join("deb-root");
    std::fs::create_dir_all(root.join("var/lib/dpkg/info")).unwrap();
    std::fs::create_dir_all(root.join("var/lib/dpkg/updates")).unwrap();
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    let dpkg = |args: &[&str]| {
        let mut cmd = Command::new("dpkg");
        cmd.arg(format!("--root={}", root.display())).args(["--force-not-root", "--log=/dev/null"]).args(args);
        run(&mut cmd)
    };
    let info = run(Command::new("dpkg-deb").args(["--info", &deb]));
    assert!(info.contains("Package: idlemesh") && info.contains("Recommends: mesa-vulkan-drivers"), "{info}");
    // The fake root has no libc6 package to satisfy Depends.
    dpkg(&["--force-depends", "-i", &deb]);
    let home = tmp.path().join("deb-user");
    exercise(&root, &home);
    dpkg(&["-r", "idlemesh"]);
    assert!(!root.join("usr/bin/idlemesh").exists(), "removed");
    assert!(!root.join("usr/lib/systemd/user/idlemesh-agent.service").exists());
    assert!(home.join("data/ledger.sqlite").exists(), "the user's ledger stays");

    // rpm, likewise.
    let root = tmp.path().join("rpm-root");
    std::fs::create_dir_all(&root).unwrap();
    let rpm_cmd = |args: &[&str]| {
        let mut cmd = Command::new("rpm");
        cmd.arg("--root").arg(&root).args(args);
        run(&mut cmd)
    };
    rpm_cmd(&["--initdb"]);
    let files = rpm_cmd(&["-qpl", rpm]);
    assert!(files.contains("/usr/bin/idlemesh") && files.contains("idlemesh-agent.service"), "{files}");
    rpm_cmd(&["-i", "--nodeps", "--noscripts", rpm]);
    let home = tmp.path().join("rpm-user");
    exercise(&root, &home);
    rpm_cmd(&["-e", "--nodeps", "--noscripts", "idlemesh"]);
    assert!(!root.join("usr/bin/idlemesh").exists(), "removed");
    assert!(home.join("data/ledger.sqlite").exists(), "the user's ledger stays");
}
