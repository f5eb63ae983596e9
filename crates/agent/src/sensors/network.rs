//! Metered networks: NetworkManager's `Metered` property of the primary
//! connection, over the system D-Bus.

use super::NetworkSensor;

pub fn open() -> Box<dyn NetworkSensor> {
    #[cfg(target_os = "linux")]
    match network_manager::NetworkManager::connect() {
        Ok(s) => return Box::new(s),
        Err(e) => tracing::debug!(error = %e, "NetworkManager not reachable: metered network unknown"),
    }
    Box::new(Unknown)
}

struct Unknown;

impl NetworkSensor for Unknown {
    fn metered(&mut self) -> Option<bool> {
        None
    }
}

#[cfg(target_os = "linux")]
mod network_manager {
    use zbus::blocking::Proxy;

    use super::NetworkSensor;

    pub struct NetworkManager {
        proxy: Proxy<'static>,
    }

    impl NetworkManager {
        pub fn connect() -> Result<Self, crate::sensors::SensorError> {
            let proxy = crate::sensors::system_bus_proxy(
                "org.freedesktop.NetworkManager",
                "/org/freedesktop/NetworkManager",
                "org.freedesktop.NetworkManager",
            )?;
            proxy.get_property::<u32>("Metered").map_err(crate::sensors::bus("NetworkManager has no Metered"))?;
            Ok(Self { proxy })
        }
    }

    impl NetworkSensor for NetworkManager {
        fn metered(&mut self) -> Option<bool> {
            // NMMetered: 0 unknown, 1 yes, 2 no, 3 guessed yes, 4 guessed no.
            match self.proxy.get_property::<u32>("Metered").ok()? {
                1 | 3 => Some(true),
                2 | 4 => Some(false),
                _ => None,
            }
        }
    }
}
