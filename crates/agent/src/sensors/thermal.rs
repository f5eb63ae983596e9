//! CPU temperature from hwmon (through sysinfo's components).

use sysinfo::Components;

use super::ThermalSensor;

pub struct SysinfoThermal {
    components: Option<Components>,
}

impl SysinfoThermal {
    pub fn new() -> Self {
        Self { components: Components::new_with_refreshed_list().ok() }
    }
}

/// Labels hwmon drivers give CPU sensors (coretemp, k10temp, zenpower, ARM thermal zones).
fn is_cpu(label: &str) -> bool {
    let l = label.to_ascii_lowercase();
    ["cpu", "core", "package", "tctl", "tdie", "k10temp", "coretemp", "soc"].iter().any(|k| l.contains(k))
}

impl ThermalSensor for SysinfoThermal {
    fn cpu_temp_c(&mut self) -> Option<f32> {
        let components = self.components.as_mut()?;
        components.refresh(false);
        components
            .iter()
            .filter(|c| is_cpu(c.label()))
            .filter_map(|c| c.temperature())
            .filter(|t| t.is_finite() && *t > -50.0 && *t < 200.0)
            .reduce(f32::max)
    }
}
