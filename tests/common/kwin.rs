//! KWin as a headless Wayland compositor (`kwin_wayland --virtual`), for the
//! Wayland idle sensor's tests. Debian 12's KWin 5.27 offers
//! ext-idle-notify-v1, and KWin's fake-input protocol lets the test be the
//! user: pointer motion through the compositor's own input path, which is
//! what ends an idle period for every client.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wayland_client::globals::{GlobalListContents, registry_queue_init};
use wayland_client::protocol::wl_registry;
use wayland_client::{Connection, Dispatch, EventQueue, QueueHandle, delegate_noop};
use wayland_protocols_plasma::fake_input::client::org_kde_kwin_fake_input::OrgKdeKwinFakeInput;

const KWIN: &str = "/usr/bin/kwin_wayland";

/// A running KWin; killed on drop.
pub struct Kwin {
    child: Child,
    /// The binary's copy, the runtime dir with the socket, the log.
    _dir: tempfile::TempDir,
    /// Absolute path of the compositor's socket: a valid `WAYLAND_DISPLAY`.
    pub socket: PathBuf,
    input: FakeInput,
}

impl Kwin {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Debian installs kwin_wayland with the file capability
        // cap_sys_resource; where the bounding set lacks it (containers,
        // sandboxed CI) exec fails with EPERM. A copy carries no capability.
        std::fs::copy(KWIN, dir.path().join("kwin_wayland"))
            .expect("KWin is installed (scripts/setup installs kwin-wayland)");
        let runtime = dir.path().join("run");
        std::fs::create_dir(&runtime).unwrap();
        std::fs::set_permissions(&runtime, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let (child, input) = spawn(dir.path());
        Self { child, socket: runtime.join(SOCKET), _dir: dir, input }
    }

    /// The compositor comes back on the same socket after [`Kwin::stop`].
    pub fn start_again(&mut self) {
        let (child, input) = spawn(self._dir.path());
        self.child = child;
        self.input = input;
    }

    pub fn stop(&mut self) {
        // SIGTERM: KWin takes its Xwayland down with it.
        super::child::terminate(&mut self.child);
    }

    /// The user moves the mouse.
    pub fn input(&mut self, n: u32) {
        let d = if n.is_multiple_of(2) { 3.0 } else { -3.0 };
        self.input.fake.pointer_motion(d, d);
        self.input.queue.roundtrip(&mut FakeState).expect("KWin takes the input");
    }
}

impl Drop for Kwin {
    fn drop(&mut self) {
        self.stop();
    }
}

const SOCKET: &str = "wl-idlemesh";

/// Starts KWin with everything in `dir` and waits until it takes input.
fn spawn(dir: &Path) -> (Child, FakeInput) {
    let runtime = dir.join("run");
    let log = std::fs::File::options().create(true).append(true).open(dir.join("kwin.log")).unwrap();
    let mut child = Command::new(dir.join("kwin_wayland"))
        .args(["--virtual", "--socket", SOCKET, "--no-lockscreen", "--no-global-shortcuts"])
        .args(["--no-kactivities", "--width", "800", "--height", "600"])
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .env("XDG_RUNTIME_DIR", &runtime)
        .env("HOME", dir)
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env("XDG_DATA_HOME", dir.join("data"))
        // Offers the fake-input protocol to the test without a .desktop file.
        .env("KWIN_WAYLAND_NO_PERMISSION_CHECKS", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(input) = FakeInput::connect(&runtime.join(SOCKET)) {
            return (child, input);
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("kwin_wayland exited with {status}:\n{}", read(&dir.join("kwin.log")));
        }
        assert!(Instant::now() < deadline, "KWin did not come up:\n{}", read(&dir.join("kwin.log")));
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

struct FakeInput {
    queue: EventQueue<FakeState>,
    fake: OrgKdeKwinFakeInput,
}

struct FakeState;

impl FakeInput {
    fn connect(socket: &std::path::Path) -> Result<Self, String> {
        let stream = UnixStream::connect(socket).map_err(|e| e.to_string())?;
        let conn = Connection::from_socket(stream).map_err(|e| e.to_string())?;
        let (globals, mut queue) = registry_queue_init::<FakeState>(&conn).map_err(|e| e.to_string())?;
        let fake: OrgKdeKwinFakeInput =
            globals.bind(&queue.handle(), 1..=4, ()).map_err(|e| format!("no fake input: {e}"))?;
        // KWin 5.27 grants this at once; without it, input is ignored.
        fake.authenticate("idlemesh tests".into(), "to be the user".into());
        queue.roundtrip(&mut FakeState).map_err(|e| e.to_string())?;
        Ok(Self { queue, fake })
    }
}

impl Dispatch<wl_registry::WlRegistry, GlobalListContents> for FakeState {
    fn event(
        _: &mut Self,
        _: &wl_registry::WlRegistry,
        _: wl_registry::Event,
        _: &GlobalListContents,
        _: &Connection,
        _: &QueueHandle<Self>,
    ) {
    }
}

delegate_noop!(FakeState: OrgKdeKwinFakeInput);
