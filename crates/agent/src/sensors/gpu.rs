//! GPU utilisation, read without loading any GPU driver into the agent:
//! amdgpu's `gpu_busy_percent` in sysfs, and NVIDIA's through NVML
//! (`libnvidia-ml`, a management library, not a driver), loaded at run time
//! and only where an NVIDIA card is present, so nothing NVIDIA is needed to
//! build or run. The busiest GPU counts. Every program's own use, where the
//! kernel counts it per client (amdgpu, i915, xe: the only counter Intel's
//! kernels have), comes from `drm_clients` (DRM fdinfo).
//!
//! (sysinfo's GPU list was used before: for a card that is neither AMD's
//! nor NVIDIA's it loads Vulkan, and with it the card's driver, into the
//! process that asks.)

use std::path::{Path, PathBuf};

use super::GpuSensor;

const AMD: &str = "0x1002";
const NVIDIA: &str = "0x10de";

pub struct DrmGpus {
    /// `/sys/class/drm`.
    root: PathBuf,
    /// Every program's use, from `/proc/*/fdinfo`.
    clients: super::drm_clients::DrmClients,
    /// Loaded at the first reading (GPU work on), where an NVIDIA card is.
    nvml: Option<Option<nvml::Nvml>>,
}

impl DrmGpus {
    pub fn new() -> Self {
        Self {
            root: PathBuf::from("/sys/class/drm"),
            clients: super::drm_clients::DrmClients::new("/proc"),
            nvml: None,
        }
    }
}

/// The DRM cards (`card0`, not their connectors `card0-HDMI-A-1`).
fn cards(root: &Path) -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(root) else { return Vec::new() };
    dir.flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.strip_prefix("card").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|e| e.path())
        .collect()
}

fn vendor(card: &Path) -> Option<String> {
    Some(std::fs::read_to_string(card.join("device/vendor")).ok()?.trim().to_ascii_lowercase())
}

/// amdgpu's busy share of each AMD card, percent.
fn amdgpu_busy(root: &Path) -> Vec<f32> {
    cards(root)
        .iter()
        .filter(|c| vendor(c).as_deref() == Some(AMD))
        .filter_map(|c| std::fs::read_to_string(c.join("device/gpu_busy_percent")).ok()?.trim().parse::<f32>().ok())
        .filter(|p| p.is_finite() && (0.0..=100.0).contains(p))
        .collect()
}

impl GpuSensor for DrmGpus {
    fn busy_percent(&mut self) -> Option<f32> {
        let mut all = amdgpu_busy(&self.root);
        let root = &self.root;
        let nvml = self.nvml.get_or_insert_with(|| {
            cards(root).iter().any(|c| vendor(c).as_deref() == Some(NVIDIA)).then(nvml::Nvml::load).flatten()
        });
        if let Some(nvml) = nvml {
            all.extend(nvml.busy_percent());
        }
        all.into_iter().reduce(f32::max)
    }

    fn shares(&mut self, ours: &[u32]) -> Option<super::GpuShares> {
        self.clients.read(ours)
    }
}

mod nvml {
    use std::ffi::c_void;

    /// `nvmlUtilization_t`.
    #[repr(C)]
    #[derive(Default)]
    struct Utilization {
        gpu: u32,
        memory: u32,
    }

    type Device = *mut c_void;
    type Init = unsafe extern "C" fn() -> i32;
    type Count = unsafe extern "C" fn(*mut u32) -> i32;
    type Handle = unsafe extern "C" fn(u32, *mut Device) -> i32;
    type Rates = unsafe extern "C" fn(Device, *mut Utilization) -> i32;

    /// NVML, initialised, with its devices' handles.
    pub struct Nvml {
        rates: Rates,
        devices: Vec<Device>,
        _lib: libloading::Library,
    }

    impl Nvml {
        /// `None` where NVML is absent (no NVIDIA driver) or will not start.
        pub fn load() -> Option<Self> {
            // SAFETY: NVML's initialisers have no preconditions; the symbols
            // are declared with NVML's C signatures (nvml.h, API v2).
            unsafe {
                let lib = libloading::Library::new("libnvidia-ml.so.1").ok()?;
                let init: Init = *lib.get(b"nvmlInit_v2\0").ok()?;
                let count: Count = *lib.get(b"nvmlDeviceGetCount_v2\0").ok()?;
                let handle: Handle = *lib.get(b"nvmlDeviceGetHandleByIndex_v2\0").ok()?;
                let rates: Rates = *lib.get(b"nvmlDeviceGetUtilizationRates\0").ok()?;
                if init() != 0 {
                    tracing::info!("NVML did not start: NVIDIA GPU use is not known");
                    return None;
                }
                let mut n = 0;
                if count(&mut n) != 0 {
                    return None;
                }
                let devices = (0..n)
                    .filter_map(|i| {
                        let mut d: Device = std::ptr::null_mut();
                        (handle(i, &mut d) == 0).then_some(d)
                    })
                    .collect();
                Some(Self { rates, devices, _lib: lib })
            }
        }

        pub fn busy_percent(&self) -> Vec<f32> {
            self.devices
                .iter()
                .filter_map(|&d| {
                    let mut u = Utilization::default();
                    // SAFETY: `d` is a handle NVML gave while the library stays loaded.
                    (unsafe { (self.rates)(d, &mut u) } == 0).then_some(u.gpu as f32)
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amd_cards_count_others_and_connectors_do_not() {
        let tmp = tempfile::tempdir().unwrap();
        let card = |name: &str, vendor: &str, busy: &str| {
            let dev = tmp.path().join(name).join("device");
            std::fs::create_dir_all(&dev).unwrap();
            std::fs::write(dev.join("vendor"), format!("{vendor}\n")).unwrap();
            std::fs::write(dev.join("gpu_busy_percent"), format!("{busy}\n")).unwrap();
        };
        card("card0", "0x1002", "37");
        card("card1", "0x8086", "99"); // Intel: no such counter is read
        card("card0-DP-1", "0x1002", "88"); // a connector, not a card
        card("card2", "0x1002", "not a number");
        let clients = super::super::drm_clients::DrmClients::new(tmp.path().join("proc"));
        let mut gpus = DrmGpus { root: tmp.path().to_owned(), clients, nvml: Some(None) };
        assert_eq!(gpus.busy_percent(), Some(37.0));
        card("card3", "0x1002", "63");
        assert_eq!(gpus.busy_percent(), Some(63.0), "the busiest GPU");
        let clients = super::super::drm_clients::DrmClients::new(tmp.path().join("proc"));
        let mut none = DrmGpus { root: tmp.path().join("absent"), clients, nvml: Some(None) };
        assert_eq!(none.busy_percent(), None, "no GPU, or no counter: unknown");
    }

    /// An NVIDIA card whose NVML cannot be loaded (no `libnvidia-ml` here,
    /// as on a machine with the card but without NVIDIA's driver): the real
    /// loader says so once, the busy share is unknown, and an AMD card
    /// beside it still counts.
    #[test]
    fn an_nvidia_card_without_nvml_is_unknown_not_an_error() {
        // SAFETY: loading NVML runs no initialiser of ours; only checks it is there.
        if unsafe { libloading::Library::new("libnvidia-ml.so.1") }.is_ok() {
            eprintln!("NVML is installed here: the absent case cannot be shown");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dev = tmp.path().join("card0/device");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("vendor"), "0x10de\n").unwrap();
        let clients = super::super::drm_clients::DrmClients::new(tmp.path().join("proc"));
        let mut gpus = DrmGpus { root: tmp.path().to_owned(), clients, nvml: None };
        assert_eq!(gpus.busy_percent(), None);
        assert!(matches!(gpus.nvml, Some(None)), "tried once, not at every reading");
        let amd = tmp.path().join("card1/device");
        std::fs::create_dir_all(&amd).unwrap();
        std::fs::write(amd.join("vendor"), "0x1002\n").unwrap();
        std::fs::write(amd.join("gpu_busy_percent"), "12\n").unwrap();
        assert_eq!(gpus.busy_percent(), Some(12.0));
    }
}
