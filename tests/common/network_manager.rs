//! NetworkManager's `Metered` property on a private bus that the agent
//! takes for the system bus (`DBUS_SYSTEM_BUS_ADDRESS`): the network
//! sensor's real D-Bus code reads it, with its property cache kept current
//! by the PropertiesChanged signal a real NetworkManager emits.

use zbus::blocking::Connection;

const PATH: &str = "/org/freedesktop/NetworkManager";

struct FakeNetworkManager {
    /// NMMetered: 1 yes, 2 no.
    metered: u32,
}

#[zbus::interface(name = "org.freedesktop.NetworkManager")]
impl FakeNetworkManager {
    #[zbus(property)]
    fn metered(&self) -> u32 {
        self.metered
    }
}

/// A private bus with the fake NetworkManager on it; both go on drop.
pub struct NetworkManager {
    pub bus: crate::agent_process::SessionBus,
    conn: Connection,
}

impl NetworkManager {
    pub fn start(metered: bool) -> Self {
        let bus = crate::agent_process::SessionBus::start();
        let conn = zbus::blocking::connection::Builder::address(bus.address.as_str())
            .unwrap()
            .name("org.freedesktop.NetworkManager")
            .unwrap()
            .serve_at(PATH, FakeNetworkManager { metered: if metered { 1 } else { 2 } })
            .unwrap()
            .build()
            .expect("serving NetworkManager on the private bus");
        Self { bus, conn }
    }

    /// Changes the connection's metering, as NetworkManager announces it.
    pub fn set_metered(&self, metered: bool) {
        let iface = self.conn.object_server().interface::<_, FakeNetworkManager>(PATH).unwrap();
        iface.get_mut().metered = if metered { 1 } else { 2 };
        zbus::block_on(iface.get().metered_changed(iface.signal_emitter())).unwrap();
    }
}
