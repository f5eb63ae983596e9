//! Sensors: what the machine is doing right now, each behind a small trait
//! with a real OS implementation. A sensor that is absent or cannot be read
//! answers `None` ("unknown"), never an error that could stop the agent.
//!
//! Reading costs differ by orders of magnitude, so the watcher polls input
//! idleness often (it decides how fast the user gets the machine back) and
//! everything else every couple of seconds.

mod drm_clients;
mod gpu;
mod idle;
mod load;
mod network;
mod power;
mod screen;
mod session;
mod thermal;

use std::time::Duration;

use crate::governor::{Battery, Snapshot};

pub use idle::open_idle_sensor;
#[cfg(all(test, target_os = "linux"))]
pub(crate) use idle::{X11Idle, xvfb};
pub use screen::{ScreenSensor, running_program};
pub use session::graphical_session;

/// Seconds since the user last touched keyboard or mouse.
pub trait IdleSensor {
    /// `None`: no session to watch (headless, or the display went away).
    fn idle(&mut self) -> Option<Duration>;
    /// Which mechanism answers, for `idlemesh status`.
    fn name(&self) -> &'static str;
    /// Why `idle` answers "unknown", where the sensor knows.
    fn unknown_because(&self) -> Option<String> {
        None
    }
    /// Calls `wake`, from a thread of the sensor's own, when input ends a
    /// quiet spell (the user coming back), so the watcher need not poll for
    /// it. False: this sensor can only be polled.
    fn wake_on_input(&mut self, wake: Wake) -> bool {
        let _ = wake;
        false
    }
    /// Whether input wakes the watcher now. While it does not (a sensor
    /// without events, or their source lost), the watcher polls.
    fn wakes_on_input(&self) -> bool {
        false
    }
}

/// What an idle sensor calls when input ends a quiet spell.
pub type Wake = std::sync::Arc<dyn Fn() + Send + Sync>;

/// CPU use of everything except the agent and its workers.
pub trait LoadSensor {
    /// Percent of the whole machine; `ours` are the pids to leave out.
    fn other_cpu_percent(&mut self, ours: &[u32]) -> Option<f32>;
}

pub trait PowerSensor {
    /// `None` on machines without a battery.
    fn battery(&mut self) -> Option<Battery>;
}

pub trait ThermalSensor {
    fn cpu_temp_c(&mut self) -> Option<f32>;
}

pub trait GpuSensor {
    /// The busiest GPU's utilisation in percent, where a driver reports it.
    fn busy_percent(&mut self) -> Option<f32>;
    /// The busiest engine's share of every program and of every program
    /// but `ours`, where the kernel counts use per client.
    fn shares(&mut self, ours: &[u32]) -> Option<GpuShares> {
        let _ = ours;
        None
    }
}

pub use drm_clients::{Shares as GpuShares, scan as scan_gpu_clients};

pub trait NetworkSensor {
    /// Whether the current connection is metered, where the OS knows.
    fn metered(&mut self) -> Option<bool>;
}

/// Why a sensor's source could not be reached. The sensor then answers
/// "unknown" and the status says why; nothing stops over it.
#[cfg(target_os = "linux")]
#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    #[error("cannot open the X display: {0}")]
    XDisplay(#[from] x11rb::errors::ConnectError),
    #[error("the X connection failed: {0}")]
    XConnection(#[from] x11rb::errors::ConnectionError),
    #[error("the X server refused a request: {0}")]
    XReply(#[from] x11rb::errors::ReplyError),
    #[error("the X server refused a request: {0}")]
    XReplyOrId(#[from] x11rb::errors::ReplyOrIdError),
    /// What the display, bus or compositor lacks, in words.
    #[error("{0}")]
    Missing(&'static str),
    #[error("{what}: {source}")]
    Bus {
        what: &'static str,
        #[source]
        source: Box<zbus::Error>,
    },
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach the Wayland compositor at {}: {source}", path.display())]
    WaylandSocket {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach the Wayland compositor: {0}")]
    WaylandConnect(#[from] wayland_client::ConnectError),
    #[error("the Wayland registry failed: {0}")]
    WaylandRegistry(#[from] wayland_client::globals::GlobalError),
    #[error("the Wayland compositor failed: {0}")]
    WaylandDispatch(#[from] wayland_client::DispatchError),
}

/// A D-Bus failure while `what`.
#[cfg(target_os = "linux")]
fn bus(what: &'static str) -> impl FnOnce(zbus::Error) -> SensorError {
    move |source| SensorError::Bus { what, source: Box::new(source) }
}

/// A proxy to a service on the system D-Bus (logind, NetworkManager).
#[cfg(target_os = "linux")]
fn system_bus_proxy(
    destination: &str,
    path: &str,
    interface: &str,
) -> Result<zbus::blocking::Proxy<'static>, SensorError> {
    let conn = zbus::blocking::Connection::system().map_err(bus("no system bus"))?;
    zbus::blocking::Proxy::new_owned(conn, destination.to_string(), path.to_string(), interface.to_string())
        .map_err(bus("no proxy for the service"))
}

/// The slow sensors' last readings; idle time is read separately and often.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlowReadings {
    pub other_cpu_percent: Option<f32>,
    pub battery: Option<Battery>,
    pub cpu_temp_c: Option<f32>,
    pub gpu_busy_percent: Option<f32>,
    /// Per program, where the kernel counts it (DRM fdinfo).
    pub gpu_shares: Option<GpuShares>,
    pub metered_network: Option<bool>,
}

/// Every sensor of this machine. Some OS handles (NVML's, D-Bus proxies)
/// must stay on the thread that opened them, so the watcher builds its
/// sensors on its own thread.
pub struct Sensors {
    pub idle: Box<dyn IdleSensor>,
    pub load: Box<dyn LoadSensor>,
    pub power: Box<dyn PowerSensor>,
    pub thermal: Box<dyn ThermalSensor>,
    pub gpu: Box<dyn GpuSensor>,
    pub network: Box<dyn NetworkSensor>,
    /// Whether the focused window is full screen.
    pub screen: Box<dyn ScreenSensor>,
    /// Why this machine has a person to yield to (see [`graphical_session`]);
    /// `None`: headless.
    pub graphical_session: Option<String>,
}

impl std::fmt::Debug for Sensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sensors").field("idle", &self.idle.name()).finish_non_exhaustive()
    }
}

impl Sensors {
    /// The real sensors of this OS.
    pub fn this_machine() -> Self {
        Self {
            idle: open_idle_sensor(),
            load: load::this_machine(),
            power: Box::new(power::SysfsPower::new()),
            thermal: Box::new(thermal::SysinfoThermal::new()),
            gpu: Box::new(gpu::DrmGpus::new()),
            network: network::open(),
            screen: screen::open(),
            graphical_session: graphical_session(),
        }
    }

    /// What the governor needs when no idle sensor answers: `Some` on a
    /// machine with a graphical session (where "unknown" must stop work),
    /// saying why it counts as one and why no sensor answers.
    pub fn presence_unknown(&self) -> Option<String> {
        let session = self.graphical_session.as_ref()?;
        Some(match self.idle.unknown_because() {
            Some(why) => format!("{session}, but no idle sensor answers: {why}"),
            None => format!("{session}, but the {} idle sensor does not answer", self.idle.name()),
        })
    }

    /// `gpu`: whether to read the GPU's busy counter too.
    pub fn read_slow(&mut self, ours: &[u32], gpu: bool) -> SlowReadings {
        SlowReadings {
            other_cpu_percent: self.load.other_cpu_percent(ours),
            battery: self.power.battery(),
            cpu_temp_c: self.thermal.cpu_temp_c(),
            gpu_busy_percent: if gpu { self.gpu.busy_percent() } else { None },
            gpu_shares: if gpu { self.gpu.shares(ours) } else { None },
            metered_network: self.network.metered(),
        }
    }
}

/// Builds the governor's snapshot from the latest readings and the clock.
pub fn snapshot(
    now: jiff::Zoned,
    user_idle: Option<Duration>,
    slow: &SlowReadings,
    uploaded_today_bytes: u64,
    downloaded_today_bytes: u64,
) -> Snapshot {
    let at_ms = now.timestamp().as_millisecond().max(0) as u64;
    let local_minute_of_day = (now.hour() as u16) * 60 + now.minute() as u16;
    let utc_offset_minutes = now.offset().seconds() / 60;
    Snapshot {
        at_ms,
        local_minute_of_day,
        utc_offset_minutes,
        user_idle,
        other_cpu_percent: slow.other_cpu_percent,
        battery: slow.battery,
        cpu_temp_c: slow.cpu_temp_c,
        // The device's own counter (amdgpu, NVML), else the clients' sum
        // (Intel's kernels count busyness only per client).
        gpu_busy_percent: slow.gpu_busy_percent.or(slow.gpu_shares.map(|s| s.all)),
        // The watcher knows whether our own GPU kernels run, what is full
        // screen and which programs run.
        other_gpu_percent: None,
        gpu_found: None,
        fullscreen: None,
        exclusive_program: None,
        metered_network: slow.metered_network,
        uploaded_today_bytes,
        downloaded_today_bytes,
        sandbox: None,
        graphical_session: None,
    }
}
