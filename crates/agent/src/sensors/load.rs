//! Other programs' CPU use: the machine's total minus our own processes, so
//! the agent never pauses because of the work it is doing itself.
//!
//! On Windows the counts come from `GetSystemTimes` and `GetProcessTimes`
//! rather than sysinfo, whose CPU figures there go through the Performance
//! Data Helper (PDH): a heavier path, and one Wine does not implement (the
//! agent aborted under it; docs/architecture.md, "Windows").

#[cfg(not(windows))]
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use super::LoadSensor;

/// This platform's load sensor.
pub fn this_machine() -> Box<dyn LoadSensor> {
    #[cfg(windows)]
    {
        Box::new(windows::TimesLoad::default())
    }
    #[cfg(not(windows))]
    {
        Box::new(SysinfoLoad::new())
    }
}

#[cfg(not(windows))]
pub struct SysinfoLoad {
    sys: Option<System>,
    cores: f32,
    me: u32,
}

#[cfg(not(windows))]
impl SysinfoLoad {
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f32;
        Self { sys: System::new().ok(), cores, me: std::process::id() }
    }
}

#[cfg(not(windows))]
impl LoadSensor for SysinfoLoad {
    fn other_cpu_percent(&mut self, ours: &[u32]) -> Option<f32> {
        let sys = self.sys.as_mut()?;
        sys.refresh_cpu_usage();
        let total = sys.global_cpu_usage();
        let pids: Vec<Pid> = ours.iter().chain([&self.me]).map(|p| Pid::from_u32(*p)).collect();
        sys.refresh_processes_specifics(ProcessesToUpdate::Some(&pids), true, ProcessRefreshKind::nothing().with_cpu());
        // A process's usage is in percent of one core; the total is of the whole machine.
        let own: f32 = pids.iter().filter_map(|p| sys.process(*p)).map(|p| p.cpu_usage()).sum::<f32>() / self.cores;
        total.is_finite().then(|| (total - own).clamp(0.0, 100.0))
    }
}

#[cfg(windows)]
mod windows {
    use std::collections::HashMap;

    use idlemesh_runtime::cpu_time::{machine_100ns, process_100ns};

    use super::LoadSensor;

    /// CPU time counters, in 100 ns units summed over every core, and the
    /// last reading of each, so every call reports the interval since the last.
    #[derive(Default)]
    pub struct TimesLoad {
        /// The machine's (idle, kernel + user) at the last call; kernel time includes idle time.
        machine: Option<(u64, u64)>,
        /// Our processes' kernel + user time at the last call, by pid.
        ours: HashMap<u32, u64>,
    }

    impl LoadSensor for TimesLoad {
        fn other_cpu_percent(&mut self, ours: &[u32]) -> Option<f32> {
            let now = machine_100ns()?;
            let last = self.machine.replace(now);
            let mut ours_now = HashMap::new();
            let mut own = 0u64;
            for pid in ours.iter().copied().chain([std::process::id()]) {
                if let Some(t) = process_100ns(pid) {
                    // A process first seen now counts from now on, as the machine's total does.
                    own += t.saturating_sub(self.ours.get(&pid).copied().unwrap_or(t));
                    ours_now.insert(pid, t);
                }
            }
            self.ours = ours_now;
            let (idle_then, total_then) = last?;
            let total = now.1.saturating_sub(total_then);
            if total == 0 {
                return None;
            }
            let busy = total.saturating_sub(now.0.saturating_sub(idle_then));
            Some((busy.saturating_sub(own) as f32 / total as f32 * 100.0).clamp(0.0, 100.0))
        }
    }
}
