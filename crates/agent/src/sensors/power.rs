//! Battery charge and mains power. The charge comes from the battery crate
//! (it reads `/sys/class/power_supply` on Linux, the OS APIs elsewhere);
//! whether mains power is connected is read from the same sysfs class, since
//! the crate reports batteries only.

use starship_battery::units::ratio::percent;
use starship_battery::{Manager, State};

use super::PowerSensor;
use crate::governor::Battery;

const POWER_SUPPLY: &str = "/sys/class/power_supply";

pub struct SysfsPower {
    manager: Option<Manager>,
}

impl SysfsPower {
    pub fn new() -> Self {
        Self { manager: Manager::new().ok() }
    }
}

impl Default for SysfsPower {
    fn default() -> Self {
        Self::new()
    }
}

impl PowerSensor for SysfsPower {
    fn battery(&mut self) -> Option<Battery> {
        let batteries: Vec<_> = self.manager.as_ref()?.batteries().ok()?.filter_map(Result::ok).collect();
        if batteries.is_empty() {
            return None;
        }
        // Several batteries (some ThinkPads): the charge that is left overall.
        let full: f32 = batteries.iter().map(|b| b.energy_full().value).sum();
        let now: f32 = batteries.iter().map(|b| b.energy().value).sum();
        let charge = if full > 0.0 {
            now / full * 100.0
        } else {
            batteries.iter().map(|b| b.state_of_charge().get::<percent>()).sum::<f32>() / batteries.len() as f32
        };
        let charging = batteries.iter().any(|b| matches!(b.state(), State::Charging | State::Full));
        let on_ac = mains_online().unwrap_or(charging);
        Some(Battery { percent: charge.clamp(0.0, 100.0), on_ac })
    }
}

/// `Some(true)` if any mains adapter is online, `None` if the machine has none listed.
fn mains_online() -> Option<bool> {
    let mut seen = false;
    for entry in std::fs::read_dir(POWER_SUPPLY).ok()?.flatten() {
        let read = |f: &str| std::fs::read_to_string(entry.path().join(f)).map(|s| s.trim().to_string());
        if read("type").is_ok_and(|t| t == "Mains") {
            seen = true;
            if read("online").is_ok_and(|o| o == "1") {
                return Some(true);
            }
        }
    }
    seen.then_some(false)
}
