//! Whether this machine has a graphical session: someone may be sitting at
//! it. Only a machine without one counts as headless and runs unattended
//! when no idle sensor answers (DESIGN §6, "Presence").
//!
//! A display (`DISPLAY`), a Wayland socket (`WAYLAND_DISPLAY`), or any
//! logind session of type x11, wayland or mir on this machine, the agent's
//! own or another user's: an agent running as a service account must not
//! take a desk user's machine because it cannot see their input.

/// Why this machine counts as having a graphical session; `None`: headless.
pub fn graphical_session() -> Option<String> {
    for var in ["WAYLAND_DISPLAY", "DISPLAY"] {
        if let Some(value) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            return Some(format!("a graphical session is set for this agent ({var}={})", value.to_string_lossy()));
        }
    }
    #[cfg(target_os = "linux")]
    if let Some(found) = logind::graphical_session() {
        return Some(found);
    }
    None
}

#[cfg(target_os = "linux")]
mod logind {
    use zbus::zvariant::OwnedObjectPath;

    /// `ListSessions` entries: id, uid, user name, seat, object path.
    type SessionEntry = (String, u32, String, String, OwnedObjectPath);

    /// The first logind session of a graphical type, described.
    pub fn graphical_session() -> Option<String> {
        let manager = crate::sensors::system_bus_proxy(
            "org.freedesktop.login1",
            "/org/freedesktop/login1",
            "org.freedesktop.login1.Manager",
        )
        .ok()?;
        let sessions: Vec<SessionEntry> = manager.call("ListSessions", &()).ok()?;
        let conn = manager.connection().clone();
        sessions.into_iter().find_map(|(id, _uid, user, _seat, path)| {
            let session =
                zbus::blocking::Proxy::new(&conn, "org.freedesktop.login1", path, "org.freedesktop.login1.Session")
                    .ok()?;
            let kind: String = session.get_property("Type").ok()?;
            matches!(kind.as_str(), "x11" | "wayland" | "mir")
                .then(|| format!("{user} has a graphical session here (logind session {id}, {kind})"))
        })
    }
}
