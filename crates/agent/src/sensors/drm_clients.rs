//! GPU use per program, from the DRM clients' usage the kernel publishes
//! in `/proc/PID/fdinfo` (the kernel's drm-usage-stats: amdgpu, i915, xe,
//! msm, panfrost, v3d...): each open GPU file says its driver, its device,
//! its client id and each engine's busy time. Reading them loads no driver
//! and opens no device, and it is the only counter Intel's kernels have.
//!
//! Two readings a second apart give each engine's busy share, for all
//! clients and for all but our workers', so another program's load is
//! seen while our own GPU kernels run. Only processes this user may read
//! count (a game runs as the user; a root compositor's share is missed).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

/// One DRM client's usage, as its fdinfo states it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientUsage {
    /// `drm-pdev` (the device's PCI address), else `drm-driver`.
    pub device: String,
    pub client_id: u64,
    /// Busy time per engine, ns (`drm-engine-<engine>: <n> ns`).
    pub engine_ns: BTreeMap<String, u64>,
    /// Engines with several instances (`drm-engine-capacity-<engine>`).
    pub capacity: BTreeMap<String, u64>,
    /// xe: busy cycles and the GPU's total cycles per engine class
    /// (`drm-cycles-<class>`, `drm-total-cycles-<class>`).
    pub cycles: BTreeMap<String, (u64, u64)>,
}

/// Reads one fdinfo; `None` for a file that is not a DRM client with usage.
pub fn parse(text: &str) -> Option<ClientUsage> {
    let mut usage = ClientUsage::default();
    let (mut driver, mut pdev, mut client) = (None, None, None);
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        let number = || value.split_whitespace().next().and_then(|n| n.parse::<u64>().ok());
        match key.trim() {
            "drm-driver" => driver = Some(value.to_owned()),
            "drm-pdev" => pdev = Some(value.to_owned()),
            "drm-client-id" => client = number(),
            key => {
                if let Some(engine) = key.strip_prefix("drm-engine-capacity-") {
                    usage.capacity.insert(engine.to_owned(), number()?.max(1));
                } else if let Some(engine) = key.strip_prefix("drm-engine-") {
                    // Only nanoseconds are a busy time (older kernels
                    // wrote other units nowhere; skip what is not ns).
                    if value.ends_with(" ns") {
                        usage.engine_ns.insert(engine.to_owned(), number()?);
                    }
                } else if let Some(class) = key.strip_prefix("drm-total-cycles-") {
                    totals.insert(class.to_owned(), number()?);
                } else if let Some(class) = key.strip_prefix("drm-cycles-") {
                    usage.cycles.entry(class.to_owned()).or_default().0 = number()?;
                }
            }
        }
    }
    for (class, total) in totals {
        usage.cycles.entry(class).or_default().1 = total;
    }
    usage.client_id = client?;
    usage.device = pdev.or(driver)?;
    (!usage.engine_ns.is_empty() || !usage.cycles.is_empty()).then_some(usage)
}

/// DRM clients by device and client id, with the processes holding each.
type Clients = HashMap<(String, u64), (ClientUsage, Vec<u32>)>;

/// Every DRM client under `proc_root` (a `/proc`), with the processes that
/// hold it: only descriptors that point into `/dev/dri/` are read.
pub fn scan(proc_root: &Path) -> Clients {
    scan_for_descriptors(proc_root).0
}

/// A GPU descriptor found by a full scan: its fdinfo file.
type Descriptor = (u32, std::path::PathBuf);

/// The clients, and the descriptors they were read from.
fn scan_for_descriptors(proc_root: &Path) -> (Clients, Vec<Descriptor>) {
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir(proc_root) else { return (Clients::new(), found) };
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            let points_at_gpu = std::fs::read_link(fd.path()).is_ok_and(|target| target.starts_with("/dev/dri/"));
            if points_at_gpu {
                found.push((pid, entry.path().join("fdinfo").join(fd.file_name())));
            }
        }
    }
    (read_descriptors(&found), found)
}

/// The clients behind descriptors found earlier (gone ones are skipped).
fn read_descriptors(descriptors: &[Descriptor]) -> Clients {
    let mut clients = Clients::new();
    for (pid, info) in descriptors {
        let Some(usage) = std::fs::read_to_string(info).ok().as_deref().and_then(parse) else { continue };
        let (kept, holders) = clients.entry((usage.device.clone(), usage.client_id)).or_default();
        *kept = usage;
        if !holders.contains(pid) {
            holders.push(*pid);
        }
    }
    clients
}

/// The busiest engine's share, percent: of every client, and of every
/// client but ours.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shares {
    pub all: f32,
    pub others: f32,
}

/// Readings between two full scans: finding the GPU's descriptors means a
/// `readlink` of every descriptor of every process (1.5 ms for 400 here,
/// docs/benchmarks.md); reading the ones found costs next to nothing. A
/// program that opens the GPU is seen at the next full scan.
const FULL_SCAN_EVERY: u32 = 5;

/// Follows the DRM clients from one reading to the next.
pub struct DrmClients {
    root: std::path::PathBuf,
    last: Option<(Instant, Clients)>,
    descriptors: Vec<Descriptor>,
    readings: u32,
}

impl DrmClients {
    pub fn new(proc_root: impl Into<std::path::PathBuf>) -> Self {
        Self { root: proc_root.into(), last: None, descriptors: Vec::new(), readings: 0 }
    }

    /// The shares since the last reading; `None` at the first reading and
    /// where no client reports usage (no such driver, or no GPU in use).
    pub fn read(&mut self, ours: &[u32]) -> Option<Shares> {
        let now = Instant::now();
        let clients = if self.readings.is_multiple_of(FULL_SCAN_EVERY) {
            let (clients, descriptors) = scan_for_descriptors(&self.root);
            self.descriptors = descriptors;
            clients
        } else {
            read_descriptors(&self.descriptors)
        };
        self.readings = self.readings.wrapping_add(1);
        let since = self
            .last
            .as_ref()
            .and_then(|(then, before)| shares(before, &clients, now.duration_since(*then).as_nanos() as u64, ours));
        self.last = Some((now, clients));
        since
    }
}

/// Each engine's busy share between two readings `wall_ns` apart, summed
/// over the clients present in both; the busiest engine of any device.
fn shares(before: &Clients, now: &Clients, wall_ns: u64, ours: &[u32]) -> Option<Shares> {
    if wall_ns == 0 {
        return None;
    }
    // (device, engine) → the share of every client, and of every client but ours.
    let mut busy: BTreeMap<(String, String), [f64; 2]> = BTreeMap::new();
    let mut any = false;
    for (key, (was, _)) in before {
        let Some((is, holders)) = now.get(key) else { continue };
        any = true;
        let ours = holders.iter().any(|p| ours.contains(p));
        let mut add = |engine: &str, share: f64| {
            let e = busy.entry((is.device.clone(), engine.to_owned())).or_default();
            e[0] += share;
            if !ours {
                e[1] += share;
            }
        };
        for (engine, ns) in &is.engine_ns {
            let spent = ns.saturating_sub(*was.engine_ns.get(engine).unwrap_or(ns)) as f64;
            let capacity = *is.capacity.get(engine).unwrap_or(&1) as f64;
            add(engine, spent / (wall_ns as f64 * capacity));
        }
        // xe: busy cycles out of the GPU's cycles in between.
        for (class, (cycles, total)) in &is.cycles {
            let (was_cycles, was_total) = was.cycles.get(class).copied().unwrap_or((*cycles, *total));
            let elapsed = total.saturating_sub(was_total);
            if elapsed > 0 {
                add(class, cycles.saturating_sub(was_cycles) as f64 / elapsed as f64);
            }
        }
    }
    if !any {
        return None;
    }
    let percent = |i: usize| busy.values().map(|s| (s[i] * 100.0).clamp(0.0, 100.0) as f32).fold(0.0, f32::max);
    Some(Shares { all: percent(0), others: percent(1) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const AMDGPU: &str = "pos:\t0\nflags:\t02100002\nmnt_id:\t24\nino:\t1130\ndrm-driver:\tamdgpu\n\
        drm-client-id:\t41\ndrm-pdev:\t0000:03:00.0\npasid:\t32771\ndrm-memory-vram:\t16384 KiB\n\
        drm-engine-gfx:\t2000000000 ns\ndrm-engine-compute:\t0 ns\n";
    const I915: &str = "pos: 0\nflags: 02100002\ndrm-driver: i915\ndrm-client-id: 7\ndrm-pdev: 0000:00:02.0\n\
        drm-engine-render: 9288864723 ns\ndrm-engine-copy: 2035071108 ns\ndrm-engine-video: 0 ns\n\
        drm-engine-capacity-video: 2\ndrm-engine-video-enhance: 0 ns\n";
    const XE: &str = "drm-driver: xe\ndrm-client-id: 10\ndrm-pdev: 0000:00:02.0\ndrm-total-cycles-rcs: 7655183225\n\
        drm-cycles-rcs: 28257900\ndrm-total-cycles-bcs: 7655183225\ndrm-cycles-bcs: 0\n";

    #[test]
    fn each_drivers_fdinfo_reads_and_other_files_do_not() {
        let amd = parse(AMDGPU).unwrap();
        assert_eq!((amd.device.as_str(), amd.client_id), ("0000:03:00.0", 41));
        assert_eq!(amd.engine_ns["gfx"], 2_000_000_000);
        let intel = parse(I915).unwrap();
        assert_eq!(intel.engine_ns.len(), 4);
        assert_eq!(intel.capacity["video"], 2);
        let xe = parse(XE).unwrap();
        assert_eq!(xe.cycles["rcs"], (28_257_900, 7_655_183_225));
        // An ordinary file, and a GPU file of a driver without usage stats.
        assert_eq!(parse("pos:\t0\nflags:\t02\nmnt_id:\t24\nino:\t5\n"), None);
        assert_eq!(parse("drm-driver: vgem\ndrm-client-id: 3\n"), None);
    }

    fn client(device: &str, id: u64, gfx_ns: u64) -> ClientUsage {
        ClientUsage {
            device: device.into(),
            client_id: id,
            engine_ns: BTreeMap::from([("gfx".into(), gfx_ns)]),
            ..ClientUsage::default()
        }
    }

    #[test]
    fn our_workers_share_is_told_apart_from_other_programs() {
        let second = 1_000_000_000u64;
        let before: Clients = HashMap::from([
            (("gpu".into(), 1), (client("gpu", 1, 0), vec![100])),
            (("gpu".into(), 2), (client("gpu", 2, 0), vec![200])),
        ]);
        // Our worker (pid 100) busy 70 % of the second, a game (200) 25 %.
        let now: Clients = HashMap::from([
            (("gpu".into(), 1), (client("gpu", 1, 700_000_000), vec![100])),
            (("gpu".into(), 2), (client("gpu", 2, 250_000_000), vec![200])),
            // Started since: no share until the next reading.
            (("gpu".into(), 3), (client("gpu", 3, 900_000_000), vec![300])),
        ]);
        let s = shares(&before, &now, second, &[100]).unwrap();
        assert!((s.all - 95.0).abs() < 0.01 && (s.others - 25.0).abs() < 0.01, "{s:?}");
        // Without knowing ours, all of it counts as others'.
        assert!((shares(&before, &now, second, &[]).unwrap().others - 95.0).abs() < 0.01);
        // Nothing in both readings: no figure.
        assert_eq!(shares(&Clients::new(), &now, second, &[]), None);
    }

    #[test]
    fn capacity_and_cycles_are_shares_of_their_engine() {
        let second = 1_000_000_000u64;
        let mut was = parse(I915).unwrap();
        was.engine_ns.insert("video".into(), 0);
        let mut is = was.clone();
        // Both video engines busy the whole second: 100 %, not 200 %.
        is.engine_ns.insert("video".into(), 2 * second);
        let key = (was.device.clone(), was.client_id);
        let before: Clients = HashMap::from([(key.clone(), (was, vec![1]))]);
        let now: Clients = HashMap::from([(key, (is, vec![1]))]);
        assert_eq!(shares(&before, &now, second, &[]).unwrap().all, 100.0);
        let was = parse(XE).unwrap();
        let mut is = was.clone();
        is.cycles.insert("rcs".into(), (28_257_900 + 300, 7_655_183_225 + 1000));
        let key = (was.device.clone(), was.client_id);
        let before: Clients = HashMap::from([(key.clone(), (was, vec![1]))]);
        let now: Clients = HashMap::from([(key, (is, vec![1]))]);
        assert!((shares(&before, &now, second, &[]).unwrap().all - 30.0).abs() < 0.01);
    }

    /// The real scan over a tree laid out as `/proc` is: descriptors as
    /// links, only those into `/dev/dri/` read.
    #[cfg(unix)]
    #[test]
    fn a_scan_reads_gpu_descriptors_only() {
        let root = tempfile::tempdir().unwrap();
        let fd = |pid: u32, n: u32, target: &str, info: &str| {
            let p = root.path().join(pid.to_string());
            std::fs::create_dir_all(p.join("fd")).unwrap();
            std::fs::create_dir_all(p.join("fdinfo")).unwrap();
            std::os::unix::fs::symlink(target, p.join("fd").join(n.to_string())).unwrap();
            std::fs::write(p.join("fdinfo").join(n.to_string()), info).unwrap();
        };
        fd(100, 3, "/dev/dri/renderD128", AMDGPU);
        // The same client through a second descriptor, and in a child.
        fd(100, 4, "/dev/dri/renderD128", AMDGPU);
        fd(101, 3, "/dev/dri/renderD128", AMDGPU);
        // GPU-looking text behind a descriptor that is not the GPU's.
        fd(200, 5, "/home/u/notes.txt", I915);
        let clients = scan(root.path());
        assert_eq!(clients.len(), 1, "{clients:?}");
        let (usage, holders) = &clients[&("0000:03:00.0".to_string(), 41)];
        assert_eq!(usage.engine_ns["gfx"], 2_000_000_000);
        let mut holders = holders.clone();
        holders.sort();
        assert_eq!(holders, [100, 101]);
        // Two readings of the real tree: the client's time grew by half a second.
        let mut clients = DrmClients::new(root.path());
        assert_eq!(clients.read(&[]), None, "the first reading has nothing to compare with");
        std::fs::write(root.path().join("100/fdinfo/3"), AMDGPU.replace("2000000000 ns", "2500000000 ns")).unwrap();
        std::fs::write(root.path().join("100/fdinfo/4"), AMDGPU.replace("2000000000 ns", "2500000000 ns")).unwrap();
        std::fs::write(root.path().join("101/fdinfo/3"), AMDGPU.replace("2000000000 ns", "2500000000 ns")).unwrap();
        let s = clients.read(&[]).expect("a share");
        assert!(s.all > 0.0 && s.all <= 100.0, "{s:?}");
        assert_eq!(clients.read(&[100]).map(|s| s.others), Some(0.0), "nothing more spent, and it is ours");
        // A program that opens the GPU now is found by the next full scan
        // (the sixth reading), and its use counts from the one after.
        fd(300, 7, "/dev/dri/renderD128", &I915.replace("9288864723 ns", "0 ns"));
        for reading in 4..=6 {
            let others = clients.read(&[100]).map(|s| s.others);
            assert_eq!(others, Some(0.0), "reading {reading}: known clients only, or nothing to compare yet");
        }
        std::fs::write(root.path().join("300/fdinfo/7"), I915.replace("9288864723 ns", "900000000000 ns")).unwrap();
        let s = clients.read(&[100]).expect("a share");
        assert_eq!(s.others, 100.0, "the new program's use, all of it another's: {s:?}");
    }
}
