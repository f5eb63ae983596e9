//! GNOME's compositor as a headless Wayland session (`mutter --headless
//! --virtual-monitor`) on a private session bus, for the GNOME idle
//! sensor's tests. Debian 12's Mutter 43 offers no ext-idle-notify-v1; it
//! has `org.gnome.Mutter.IdleMonitor`, and its RemoteDesktop D-Bus API lets
//! the test be the user: pointer motion through Mutter's own input path,
//! which resets its idle time as a real mouse does.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use std::time::{Duration, Instant};

use zbus::blocking::Proxy;
use zbus::zvariant::OwnedObjectPath;

const MUTTER: &str = "/usr/bin/mutter";

/// A running Mutter and its bus; both stopped on drop.
pub struct Mutter {
    child: Child,
    dir: tempfile::TempDir,
    /// Absolute path of the compositor's socket: a valid `WAYLAND_DISPLAY`.
    pub socket: PathBuf,
    /// The private session bus Mutter serves its D-Bus APIs on.
    pub bus: super::SessionBus,
    input: Option<RemoteInput>,
}

impl Mutter {
    pub fn start() -> Self {
        assert!(Path::new(MUTTER).exists(), "Mutter is installed (scripts/setup installs mutter)");
        let dir = tempfile::tempdir().unwrap();
        let runtime = dir.path().join("run");
        std::fs::create_dir(&runtime).unwrap();
        std::fs::set_permissions(&runtime, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let bus = super::SessionBus::start();
        let socket = runtime.join("wayland-0");
        let child = spawn(dir.path(), &bus.address);
        let mut mutter = Self { child, bus, dir, socket, input: None };
        mutter.wait_ready();
        mutter
    }

    /// Mutter comes back on the same bus and socket after [`Mutter::stop`].
    pub fn start_again(&mut self) {
        self.child = spawn(self.dir.path(), &self.bus.address);
        self.wait_ready();
    }

    pub fn stop(&mut self) {
        self.input = None;
        super::child::terminate(&mut self.child);
    }

    /// The user moves the mouse.
    pub fn input(&mut self, n: u32) {
        let d = if n.is_multiple_of(2) { 3.0 } else { -3.0 };
        let input = self.input.as_ref().expect("Mutter is running");
        let () = input.session.call("NotifyPointerMotionRelative", &(d, d)).expect("Mutter takes the input");
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(input) = RemoteInput::connect(&self.bus.address) {
                self.input = Some(input);
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("mutter exited with {status}:\n{}", read(&self.dir.path().join("mutter.log")));
            }
            assert!(
                Instant::now() < deadline,
                "Mutter did not come up:\n{}",
                read(&self.dir.path().join("mutter.log"))
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Mutter {
    fn drop(&mut self) {
        self.stop(); // before the bus (a field) goes
    }
}

fn spawn(dir: &Path, bus: &str) -> Child {
    let log = std::fs::File::options().create(true).append(true).open(dir.join("mutter.log")).unwrap();
    Command::new(MUTTER)
        .args(["--headless", "--virtual-monitor", "800x600", "--wayland", "--no-x11"])
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .env("DBUS_SESSION_BUS_ADDRESS", bus)
        .env("XDG_RUNTIME_DIR", dir.join("run"))
        .env("HOME", dir)
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("GSETTINGS_BACKEND", "memory")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A started RemoteDesktop session: it lives as long as this connection.
struct RemoteInput {
    session: Proxy<'static>,
}

impl RemoteInput {
    fn connect(bus: &str) -> Result<Self, String> {
        let conn =
            zbus::blocking::connection::Builder::address(bus).and_then(|b| b.build()).map_err(|e| e.to_string())?;
        let remote = Proxy::new(
            &conn,
            "org.gnome.Mutter.RemoteDesktop",
            "/org/gnome/Mutter/RemoteDesktop",
            "org.gnome.Mutter.RemoteDesktop",
        )
        .map_err(|e| e.to_string())?;
        let path: OwnedObjectPath = remote.call("CreateSession", &()).map_err(|e| e.to_string())?;
        let session = Proxy::new_owned(
            conn.clone(),
            "org.gnome.Mutter.RemoteDesktop".to_owned(),
            path.to_string(),
            "org.gnome.Mutter.RemoteDesktop.Session".to_owned(),
        )
        .map_err(|e| e.to_string())?;
        let () = session.call("Start", &()).map_err(|e| e.to_string())?;
        Ok(Self { session })
    }
}
