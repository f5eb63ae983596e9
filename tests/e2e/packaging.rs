//! The Linux packages, built by `scripts/package-linux` from this build's
//! binary, installed into a private root with the distribution's own tools
//! (dpkg, rpm), run, and removed again; the user's ledger stays.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::BIN;
use crate::private_root::{DpkgRoot, RpmRoot, run};

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
    let deb_root = DpkgRoot::new(&tmp.path().join("deb-root"));
    let (root, dpkg) = (&deb_root.root, |args: &[&str]| deb_root.dpkg(args));
    let info = run(Command::new("dpkg-deb").args(["--info", &deb]));
    assert!(info.contains("Package: idlemesh") && info.contains("Recommends: mesa-vulkan-drivers"), "{info}");
    // The fake root has no libc6 package to satisfy Depends.
    dpkg(&["--force-depends", "-i", &deb]);
    let home = tmp.path().join("deb-user");
    exercise(root, &home);
    dpkg(&["-r", "idlemesh"]);
    assert!(!root.join("usr/bin/idlemesh").exists(), "removed");
    assert!(!root.join("usr/lib/systemd/user/idlemesh-agent.service").exists());
    assert!(home.join("data/ledger.sqlite").exists(), "the user's ledger stays");

    // rpm, likewise.
    let rpm_root = RpmRoot::new(&tmp.path().join("rpm-root"));
    let (root, rpm_cmd) = (&rpm_root.root, |args: &[&str]| rpm_root.rpm(args));
    let files = rpm_cmd(&["-qpl", rpm]);
    assert!(files.contains("/usr/bin/idlemesh") && files.contains("idlemesh-agent.service"), "{files}");
    rpm_cmd(&["-i", "--nodeps", "--noscripts", rpm]);
    let home = tmp.path().join("rpm-user");
    exercise(root, &home);
    rpm_cmd(&["-e", "--nodeps", "--noscripts", "idlemesh"]);
    assert!(!root.join("usr/bin/idlemesh").exists(), "removed");
    assert!(home.join("data/ledger.sqlite").exists(), "the user's ledger stays");
}
