//! Other programs' CPU use: the machine's total minus our own processes, so
//! the agent never pauses because of the work it is doing itself.

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use super::LoadSensor;

pub struct SysinfoLoad {
    sys: Option<System>,
    cores: f32,
    me: u32,
}

impl SysinfoLoad {
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f32;
        Self { sys: System::new().ok(), cores, me: std::process::id() }
    }
}

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
