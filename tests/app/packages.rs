//! The tray app's packages (Tauri bundler, through `scripts/package-linux`),
//! installed with the headless package they depend on into a private root
//! with dpkg, started from there under Xvfb until its tray icon shows and its
//! agent runs a task with the installed binary as worker, quit from the
//! tray menu, and removed, leaving the user's ledger. The .rpm is checked
//! and installed into a private rpm database likewise.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use idlemesh_agent::control::{self, Request};
use serde_json::Value;

use crate::app_env::{AppEnv, app_env, pool_with_job, session_keyring, spawn_logged, wait_until};
use crate::private_root::{DpkgRoot, RpmRoot, run};
use crate::{APP, session_bus, sni, xvfb};

/// Starts the installed app, sees its tray icon and a task run, quits it from the menu.
fn start_installed_app(app: &Path, root: &Path) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (pool_url, _server) = rt.block_on(pool_with_job(&root.join("pool")));
    let x = xvfb::Xvfb::with_screen("1024x768x24");
    let bus = session_bus::SessionBus::start();
    let host = sni::Host::start(&bus.address);
    let AppEnv { env, socket, .. } = app_env(root, &pool_url, &x, &bus);
    let log = root.join("installed-app.log");
    let mut child = spawn_logged(app, env, &log);
    let item = host.item(Duration::from_secs(30));
    wait_until("the agent's socket", Duration::from_secs(30), || socket.exists());
    let status = || -> Value { rt.block_on(control::call(&socket, &Request::Status)).unwrap_or_default() };
    wait_until("a task to run", Duration::from_secs(90), || status()["state"] == "working");
    let s = status();
    let worker = s["workers"]["pids"][0].as_u64().expect("a worker");
    let exe = std::fs::read_link(format!("/proc/{worker}/exe")).unwrap();
    assert_eq!(exe, app, "the worker is the installed binary");
    item.wait_state_line(Duration::from_secs(5), |l| l == "Idlemesh: Working for the pool");
    item.click("Quit Idlemesh");
    let mut exit = None;
    wait_until("the installed app to quit", Duration::from_secs(15), || {
        exit = child.try_wait().unwrap();
        exit.is_some()
    });
    assert!(exit.unwrap().success(), "{:?}:\n{}", exit, std::fs::read_to_string(&log).unwrap_or_default());
}

#[test]
fn the_tray_app_packages_install_start_and_remove_cleanly_leaving_the_ledger() {
    session_keyring();
    rustls::crypto::ring::default_provider().install_default().ok();
    let tmp = tempfile::tempdir().unwrap();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let cli = Path::new(APP).with_file_name("idlemesh");
    let out = run(Command::new("bash")
        .arg(repo.join("scripts/package-linux"))
        .arg(&cli)
        .arg(tmp.path().join("pkgs"))
        .arg(APP));
    let find = |suffix: &str| -> String {
        out.lines()
            .find(|l| l.ends_with(suffix))
            .unwrap_or_else(|| panic!("no package ending {suffix} in:\n{out}"))
            .to_owned()
    };
    let (agent_deb, app_deb) = (find("/idlemesh_0.1.0_amd64.deb"), find("/idlemesh-app_0.1.0_amd64.deb"));
    let app_rpm = find("/idlemesh-app-0.1.0-1.x86_64.rpm");
    let agent_rpm = find("/idlemesh-0.1.0-1.x86_64.rpm");

    let info = run(Command::new("dpkg-deb").args(["--info", &app_deb]));
    for field in
        ["Package: idlemesh-app", "Depends: idlemesh (= 0.1.0)", "libwebkit2gtk-4.1-0", "libayatana-appindicator3-1"]
    {
        assert!(info.contains(field), "{field} missing:\n{info}");
    }

    // dpkg, into a root of its own: nothing on this machine changes.
    let deb_root = DpkgRoot::new(&tmp.path().join("deb-root"));
    let (root, dpkg) = (&deb_root.root, |args: &[&str]| deb_root.dpkg(args));
    // Without its headless package the app is refused (its Depends is real);
    // the fake root has no libc6 or WebKit, so only that one is checked here.
    let refused = deb_root.command(&["-i", &app_deb]).output().unwrap();
    assert!(!refused.status.success(), "dpkg installed the app without `idlemesh`");
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("depends on idlemesh (= 0.1.0)"), "{why}");
    dpkg(&["--remove", "idlemesh-app"]);
    dpkg(&["--force-depends", "-i", &agent_deb, &app_deb]);
    let app = root.join("usr/bin/idlemesh-app");
    assert!(app.exists() && root.join("usr/bin/idlemesh").exists());
    // The dashboard ships beside the tray, and only it links WebKit.
    let dashboard = root.join("usr/bin/idlemesh-dashboard");
    assert!(dashboard.exists(), "the dashboard program is installed beside the tray");
    let linked = |binary: &Path| run(Command::new("ldd").arg(binary));
    assert!(!linked(&app).contains("libwebkit2gtk"), "the tray links WebKit");
    assert!(linked(&dashboard).contains("libwebkit2gtk"), "the dashboard is the webview");
    let desktop = std::fs::read_to_string(root.join("usr/share/applications/idlemesh-app.desktop")).unwrap();
    assert!(desktop.contains("Name=Idlemesh\n") && desktop.contains("Exec=idlemesh-app\n"), "{desktop}");
    let autostart =
        std::fs::read_to_string(root.join("usr/share/idlemesh-app/autostart/idlemesh-app.desktop")).unwrap();
    assert!(autostart.contains("Exec=idlemesh-app\n"), "{autostart}");
    assert!(!root.join("etc/xdg/autostart").exists(), "autostart is opt-in: nothing in /etc/xdg/autostart");
    assert!(root.join("usr/share/icons/hicolor/128x128/apps/idlemesh-app.png").exists());
    let version = run(Command::new(root.join("usr/bin/idlemesh")).arg("--version"));
    assert!(version.contains("wasmtime 48."), "{version}");

    let home = tmp.path().join("user");
    std::fs::create_dir_all(&home).unwrap();
    start_installed_app(&app, &home);
    let ledger = home.join("data/ledger.sqlite");
    assert!(ledger.exists(), "the installed app kept a ledger");

    dpkg(&["-r", "idlemesh-app", "idlemesh"]);
    assert!(!app.exists() && !dashboard.exists() && !root.join("usr/bin/idlemesh").exists(), "removed");
    assert!(!root.join("usr/share/applications/idlemesh-app.desktop").exists());
    assert!(ledger.exists(), "the user's ledger stays");

    // rpm, likewise: the same files, the same dependency, installed and erased.
    let rpm_root = RpmRoot::new(&tmp.path().join("rpm-root"));
    let (root, rpm) = (&rpm_root.root, |args: &[&str]| rpm_root.rpm(args));
    let requires = rpm(&["-qpR", &app_rpm]);
    assert!(requires.contains("idlemesh = 0.1.0"), "{requires}");
    let files = rpm(&["-qpl", &app_rpm]);
    assert!(files.contains("/usr/bin/idlemesh-app") && files.contains("/usr/share/applications/idlemesh-app.desktop"));
    assert!(files.contains("/usr/bin/idlemesh-dashboard"), "{files}");
    rpm(&["-i", "--nodeps", "--noscripts", &agent_rpm, &app_rpm]);
    // The installed binary runs as its own worker and finds the GPU (lavapipe here).
    let adapter = run(Command::new(root.join("usr/bin/idlemesh-app")).args(["worker", "--probe-gpu"]));
    assert!(!adapter.trim().is_empty(), "the worker named no adapter");
    rpm(&["-e", "--nodeps", "--noscripts", "idlemesh-app", "idlemesh"]);
    assert!(!root.join("usr/bin/idlemesh-app").exists(), "removed");
}

/// RFC 7396 merge patch: how Tauri lays `tauri.<platform>.conf.json` over `tauri.conf.json`.
fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(base), Value::Object(patch)) => {
            for (k, v) in patch {
                if v.is_null() {
                    base.remove(k);
                } else {
                    merge(base.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (base, patch) => *base = patch.clone(),
    }
}

/// The Windows (MSI, NSIS) and macOS (app, dmg) bundles cannot be built
/// here; their configuration is still checked: it must be a valid Tauri
/// config once merged, and name what the docs promise.
#[test]
fn the_windows_and_macos_bundle_configs_are_valid_tauri_configs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |name: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let config = |platform: &str| -> tauri::utils::config::Config {
        let mut merged = read("tauri.conf.json");
        merge(&mut merged, &read(&format!("tauri.{platform}.conf.json")));
        serde_json::from_value(merged).unwrap_or_else(|e| panic!("tauri.{platform}.conf.json: {e}"))
    };

    let windows = config("windows");
    assert_eq!(serde_json::to_value(&windows.bundle.targets).unwrap(), serde_json::json!(["msi", "nsis"]));
    let wix = windows.bundle.windows.wix.as_ref().expect("a WiX section");
    assert!(wix.upgrade_code.is_some(), "a fixed upgrade code, so new versions replace old ones");
    assert_eq!(wix.component_group_refs, ["IdlemeshPolicy"]);
    let fragment = std::fs::read_to_string(dir.join(&wix.fragment_paths[0])).unwrap();
    assert!(fragment.contains(r#"<ComponentGroup Id="IdlemeshPolicy">"#));
    // The MSI properties write where the ADMX templates and the agent's registry reader look.
    let admx = std::fs::read_to_string(dir.join("../installers/windows/idlemesh.admx")).unwrap();
    for (key, value) in
        [(r"Software\Policies\Idlemesh\Locked", "pool_url"), (r"Software\Policies\Idlemesh", "enrollment_token")]
    {
        let reg = format!(r#"Key="{key}" Name="{value}""#);
        assert!(fragment.contains(&reg), "the fragment writes {reg}");
        assert!(admx.contains(&format!(r#"key="{key}" valueName="{value}""#)), "the ADMX has {key}\\{value}");
    }
    let nsis = windows.bundle.windows.nsis.as_ref().expect("an NSIS section");
    assert!(matches!(nsis.install_mode, tauri::utils::config::NSISInstallerMode::PerMachine));

    let macos = config("macos");
    assert_eq!(serde_json::to_value(&macos.bundle.targets).unwrap(), serde_json::json!(["app", "dmg"]));
    assert_eq!(macos.bundle.macos.minimum_system_version.as_deref(), Some("11.0"));
    let plist = std::fs::read_to_string(dir.join("Info.plist")).unwrap();
    assert!(plist.contains("<key>LSUIElement</key>\n  <true/>"), "a menu-bar app without a Dock icon");
}
