//! An energy figure for each task, for the ledger.
//!
//! Where the CPU package's RAPL counter is readable (Intel and AMD, powercap
//! sysfs; usually root only since 2020), the package's energy over the task
//! is shared out by the task's part of all busy CPU time in that interval.
//! Elsewhere a simple model: busy core-seconds times a typical laptop core's
//! draw. The method is recorded with the figure, so nobody mistakes the
//! estimate for a measurement.

use serde::Serialize;

/// A typical laptop core under full load, in watts (model only).
pub const MODEL_WATTS_PER_CORE: f64 = 10.0;
const RAPL: &str = "/sys/class/powercap/intel-rapl:0";

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Energy {
    pub joules: f64,
    /// `"rapl"` (measured, shared by CPU time) or `"model"` (estimated).
    pub method: &'static str,
}

/// Started when a task starts; [`EnergyMeter::finish`] when it ends.
#[derive(Debug, Clone)]
pub struct EnergyMeter {
    rapl: Option<(u64, u64)>,
    busy_jiffies: Option<u64>,
}

fn read_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Busy CPU time of the whole machine so far, in clock ticks (USER_HZ).
fn busy_jiffies() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal: idle and iowait are not busy; steal is not ours.
    let total: u64 = fields.iter().take(7).sum();
    Some(total - fields.get(3)? - fields.get(4).unwrap_or(&0))
}

impl EnergyMeter {
    pub fn start() -> Self {
        let rapl = read_u64(&format!("{RAPL}/energy_uj"))
            .zip(read_u64(&format!("{RAPL}/max_energy_range_uj")))
            .filter(|(_, range)| *range > 0);
        Self { rapl, busy_jiffies: busy_jiffies() }
    }

    /// The task's energy, given the CPU time its worker used.
    pub fn finish(&self, task_cpu_ms: u64) -> Energy {
        let task_cpu_s = task_cpu_ms as f64 / 1e3;
        let measured = (|| {
            let (start_uj, range) = self.rapl?;
            let end_uj = read_u64(&format!("{RAPL}/energy_uj"))?;
            // The counter wraps at max_energy_range_uj.
            let used_uj = if end_uj >= start_uj { end_uj - start_uj } else { range - start_uj + end_uj };
            let busy_s = (busy_jiffies()?.saturating_sub(self.busy_jiffies?)) as f64 / 100.0;
            let share = if busy_s > 0.0 { (task_cpu_s / busy_s).min(1.0) } else { 1.0 };
            Some(used_uj as f64 / 1e6 * share)
        })();
        match measured {
            Some(joules) => Energy { joules, method: "rapl" },
            None => Energy { joules: task_cpu_s * MODEL_WATTS_PER_CORE, method: "model" },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_scales_with_cpu_time_and_says_it_is_a_model() {
        let meter = EnergyMeter { rapl: None, busy_jiffies: None };
        assert_eq!(meter.finish(1500), Energy { joules: 15.0, method: "model" });
        assert!(busy_jiffies().is_some(), "/proc/stat is readable on Linux");
    }
}
