//! A StatusNotifier host on a private session bus: what a desktop's panel
//! does to show the tray icon (KDE, GNOME's AppIndicator extension, XFCE,
//! waybar). The app's tray library (libayatana-appindicator) registers its
//! item with the watcher served here; the test then reads the item's icon
//! and menu, and clicks menu entries, over the same D-Bus calls a panel uses.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zbus::blocking::{Connection, Proxy};
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

/// `org.kde.StatusNotifierWatcher`, keeping the items that registered.
struct Watcher {
    items: Arc<Mutex<Vec<(String, String)>>>,
}

#[zbus::interface(name = "org.kde.StatusNotifierWatcher")]
impl Watcher {
    fn register_status_notifier_item(&self, service: &str, #[zbus(header)] header: zbus::message::Header<'_>) {
        let sender = header.sender().map(|s| s.to_string()).unwrap_or_default();
        // Items pass either their object path (ayatana) or a bus name.
        let item = if service.starts_with('/') {
            (sender, service.to_owned())
        } else {
            (service.to_owned(), "/StatusNotifierItem".to_owned())
        };
        self.items.lock().unwrap().push(item);
    }

    fn register_status_notifier_host(&self, _service: &str) {}

    #[zbus(property)]
    fn registered_status_notifier_items(&self) -> Vec<String> {
        self.items.lock().unwrap().iter().map(|(bus, path)| format!("{bus}{path}")).collect()
    }

    #[zbus(property)]
    fn is_status_notifier_host_registered(&self) -> bool {
        true
    }

    #[zbus(property)]
    fn protocol_version(&self) -> i32 {
        0
    }
}

pub struct Host {
    conn: Connection,
    items: Arc<Mutex<Vec<(String, String)>>>,
}

/// One entry of the item's menu.
#[derive(Debug, Clone)]
pub struct MenuEntry {
    pub id: i32,
    pub label: String,
    pub enabled: bool,
}

impl Host {
    /// Serves the watcher on `address`; start it before the app, which looks
    /// for a watcher when it creates its icon.
    pub fn start(address: &str) -> Self {
        let items = Arc::new(Mutex::new(Vec::new()));
        let conn = zbus::blocking::connection::Builder::address(address)
            .unwrap()
            .name("org.kde.StatusNotifierWatcher")
            .unwrap()
            .serve_at("/StatusNotifierWatcher", Watcher { items: items.clone() })
            .unwrap()
            .build()
            .expect("serving the StatusNotifierWatcher on the private bus");
        Self { conn, items }
    }

    /// The first item that registered, waiting up to `limit` for one.
    pub fn item(&self, limit: Duration) -> Item<'_> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some((bus, path)) = self.items.lock().unwrap().first().cloned() {
                return Item { host: self, bus, path };
            }
            assert!(Instant::now() < deadline, "no StatusNotifierItem registered within {limit:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

pub struct Item<'h> {
    host: &'h Host,
    pub bus: String,
    pub path: String,
}

impl Item<'_> {
    fn proxy(&self) -> Proxy<'_> {
        Proxy::new(&self.host.conn, self.bus.as_str(), self.path.as_str(), "org.kde.StatusNotifierItem").unwrap()
    }

    pub fn property<T: TryFrom<OwnedValue>>(&self, name: &str) -> T
    where
        T::Error: Into<zbus::Error>,
    {
        self.proxy().get_property(name).unwrap_or_else(|e| panic!("item property {name}: {e}"))
    }

    /// The icon's file: the tray library writes each icon as a PNG and names it by path.
    pub fn icon_file(&self) -> PathBuf {
        let name: String = self.property("IconName");
        if name.starts_with('/') {
            PathBuf::from(name)
        } else {
            let dir: String = self.property("IconThemePath");
            PathBuf::from(dir).join(format!("{name}.png"))
        }
    }

    /// The RGBA pixel at the icon's centre.
    pub fn icon_centre(&self) -> [u8; 4] {
        let file = self.icon_file();
        let decoder = png::Decoder::new(std::io::BufReader::new(
            std::fs::File::open(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display())),
        ));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgba, "{}", file.display());
        let (w, h) = (info.width as usize, info.height as usize);
        let i = ((h / 2) * w + w / 2) * 4;
        buf[i..i + 4].try_into().unwrap()
    }

    fn menu(&self) -> Proxy<'_> {
        let path: OwnedObjectPath = self.property("Menu");
        Proxy::new(&self.host.conn, self.bus.clone(), path, "com.canonical.dbusmenu").unwrap()
    }

    /// The menu's entries in order (separators left out).
    pub fn menu_entries(&self) -> Vec<MenuEntry> {
        type Layout = (i32, HashMap<String, OwnedValue>, Vec<OwnedValue>);
        let reply = self.menu().call_method("GetLayout", &(0i32, -1i32, Vec::<String>::new())).unwrap();
        let (_revision, (_id, _props, children)): (u32, Layout) = reply.body().deserialize().unwrap();
        let mut entries = Vec::new();
        for child in children {
            let (id, props, _): Layout = Value::from(child).downcast().expect("a menu layout entry");
            if props.get("type").is_some_and(|t| matches!(&**t, Value::Str(s) if s.as_str() == "separator")) {
                continue;
            }
            let label = match props.get("label").map(|v| &**v) {
                Some(Value::Str(s)) => s.to_string(),
                _ => String::new(),
            };
            let enabled = !matches!(props.get("enabled").map(|v| &**v), Some(Value::Bool(false)));
            entries.push(MenuEntry { id, label, enabled });
        }
        entries
    }

    /// Clicks the entry labelled `label`, as a panel does when the user picks it.
    pub fn click(&self, label: &str) {
        let entries = self.menu_entries();
        let entry = entries
            .iter()
            .find(|e| e.label == label)
            .unwrap_or_else(|| panic!("no menu entry {label:?} in {entries:?}"));
        self.menu()
            .call_method("Event", &(entry.id, "clicked", Value::from(0i32), 0u32))
            .unwrap_or_else(|e| panic!("clicking {label:?}: {e}"));
    }

    /// Waits until the menu's first entry (the state in words) satisfies `ok`.
    pub fn wait_state_line(&self, limit: Duration, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let line = self.menu_entries().first().map(|e| e.label.clone()).unwrap_or_default();
            if ok(&line) {
                return line;
            }
            assert!(Instant::now() < deadline, "the tray menu's state line stayed {line:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
