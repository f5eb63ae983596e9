//! GPU utilisation where a driver reports it: NVML (loaded at run time, so
//! nothing NVIDIA is needed to build or run) and amdgpu's sysfs counter,
//! both through sysinfo. Absent on most machines, and then `None`.

use sysinfo::Gpus;

use super::GpuSensor;

pub struct SysinfoGpu {
    gpus: Option<Gpus>,
}

impl SysinfoGpu {
    pub fn new() -> Self {
        Self { gpus: Gpus::new_with_refreshed_list().ok().filter(|g| g.iter().next().is_some()) }
    }
}

impl GpuSensor for SysinfoGpu {
    fn busy_percent(&mut self) -> Option<f32> {
        let gpus = self.gpus.as_mut()?;
        gpus.refresh(false);
        gpus.iter().filter_map(|g| g.usage()).filter(|u| u.is_finite()).reduce(f32::max)
    }
}
