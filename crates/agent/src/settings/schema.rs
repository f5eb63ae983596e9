//! Every setting a user or an IT policy may set (DESIGN §6): its key, what it
//! accepts and its default. One table, so the settings file, the policy file,
//! `idlemesh settings set` and `idlemesh status --json` cannot disagree.

use std::time::Duration;

use toml::Value;

use idlemesh_runtime::Layer;

use crate::governor::{Hours, Limits};

/// What this machine has, for the defaults that depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Machine {
    pub cores: u32,
    pub memory_bytes: u64,
}

impl Machine {
    pub fn this() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
        let memory_bytes = sysinfo::System::new()
            .map(|mut sys| {
                sys.refresh_memory();
                sys.total_memory()
            })
            .unwrap_or(0)
            .max(256 << 20);
        Self { cores, memory_bytes }
    }
}

pub use idlemesh_control::SettingKind as Kind;

#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub key: &'static str,
    pub kind: Kind,
    /// A short name for a form (the dashboard's).
    pub label: &'static str,
    /// What it does, in a sentence or two.
    pub help: &'static str,
}

pub const SPECS: &[Spec] = &[
    Spec {
        key: "pool_url",
        kind: Kind::Url,
        label: "Pool address",
        help: "The pool this computer works for, such as https://pool.example.org.",
    },
    Spec {
        key: "idle_minutes",
        kind: Kind::Float { min: 0.0, max: 24.0 * 60.0, step: 0.5 },
        label: "Start after I have been away for (minutes)",
        help: "Work starts only when nobody has used the keyboard or mouse for this long. 0 starts right away.",
    },
    Spec {
        key: "cpu_cores",
        kind: Kind::Int { min: 1, max: 1024 },
        label: "Processor cores to lend",
        help: "At most this many cores work for the pool at the same time.",
    },
    Spec {
        key: "cpu_duty_cycle_percent",
        kind: Kind::Int { min: 1, max: 100 },
        label: "Share of each core’s time (%)",
        help: "Work runs for this share of every tenth of a second and rests for the remainder, which keeps the computer cool and quiet.",
    },
    Spec {
        key: "gpu_enabled",
        kind: Kind::Bool,
        label: "Use the graphics card (GPU)",
        help: "Off until you turn it on. GPU work may make the fans louder.",
    },
    Spec {
        key: "run_on_battery",
        kind: Kind::Bool,
        label: "Work while on battery",
        help: "When off, work stops as soon as the charger is unplugged.",
    },
    Spec {
        key: "min_battery_percent",
        kind: Kind::Int { min: 0, max: 100 },
        label: "Lowest battery charge (%)",
        help: "Never work when the battery is below this charge.",
    },
    Spec {
        key: "max_cpu_temp_c",
        kind: Kind::Float { min: 40.0, max: 110.0, step: 1.0 },
        label: "Highest processor temperature (°C)",
        help: "Work pauses when the processor gets this hot and starts again once it has cooled down.",
    },
    Spec {
        key: "allowed_hours",
        kind: Kind::Hours,
        label: "Allowed hours",
        help: "Type \"always\", or a daily window such as 22:00-06:00 (it may run past midnight).",
    },
    Spec {
        key: "memory_per_task_mb",
        kind: Kind::Int { min: 16, max: 1 << 30 },
        label: "Memory per task (MB)",
        help: "The most memory one task may use.",
    },
    Spec {
        key: "daily_upload_cap_mb",
        kind: Kind::CapMb,
        label: "Daily upload limit (MB)",
        help: "Megabytes sent to pools per day at most, or \"unlimited\".",
    },
    Spec {
        key: "daily_download_cap_mb",
        kind: Kind::CapMb,
        label: "Daily download limit (MB)",
        help: "Megabytes received from pools per day at most, or \"unlimited\".",
    },
    Spec {
        key: "pause_on_metered_network",
        kind: Kind::Bool,
        label: "Pause on metered networks",
        help: "Stop working on mobile hotspots and other networks that count your data.",
    },
    Spec {
        key: "allow_insecure_pool",
        kind: Kind::Bool,
        label: "Allow pools without encryption",
        help: "Off: only pools reached over https (or on this computer) are used, so nobody on the way can read or change the traffic.",
    },
    Spec {
        key: "allow_metered",
        kind: Kind::Bool,
        label: "Use metered networks for new work and uploads",
        help: "Off: on a mobile hotspot nothing that can wait is sent or fetched; finished results wait on this computer.",
    },
    Spec {
        key: "metered_small_traffic",
        kind: Kind::Bool,
        label: "On metered networks, still keep or give back tasks",
        help: "A few hundred bytes per task so the pool knows this computer still has it. Off: nothing at all is sent.",
    },
    Spec {
        key: "max_other_cpu_percent",
        kind: Kind::Float { min: 1.0, max: 100.0, step: 1.0 },
        label: "Make way when my programs use more than (% of the CPU)",
        help: "When your own programs need the processor this much, work pauses for them.",
    },
    Spec {
        key: "max_other_gpu_percent",
        kind: Kind::Float { min: 1.0, max: 100.0, step: 1.0 },
        label: "Make way when other programs use more than (% of the GPU)",
        help: "When a game, a video or another program keeps the graphics card this busy, GPU work waits for it; processor work goes on. Linux only for now; on NVIDIA cards another program is seen only while no GPU work of ours runs.",
    },
    Spec {
        key: "pause_when_fullscreen",
        kind: Kind::Bool,
        label: "Pause while a full-screen window is in front",
        help: "A game or a film shown full screen stops all work until it leaves full screen, even if you have not touched the mouse. On X11 desktops only for now (Wayland compositors do not tell other programs).",
    },
    Spec {
        key: "exclusive_programs",
        kind: Kind::Programs,
        label: "Pause while these programs run",
        help: "Program names as your system lists them (for example steam, obs), separated by commas. While any of them runs, nothing is lent. Empty: none. Linux only for now.",
    },
    Spec {
        key: "require_sandbox",
        kind: Kind::Layers,
        label: "Run tasks only behind these walls",
        help: "Operating-system walls a task must have, separated by commas (for example seccomp, landlock, netns). Without one, work pauses and says why. Empty: none required.",
    },
];

pub fn spec(key: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.key == key)
}

/// The built-in default of `key` on `machine`; `None` for "not set".
pub fn default_value(key: &str, machine: Machine) -> Option<Value> {
    let v = match key {
        "pool_url" => return None,
        "idle_minutes" => Value::Float(3.0),
        "cpu_cores" => Value::Integer(i64::from((machine.cores / 2).max(1))),
        "cpu_duty_cycle_percent" => Value::Integer(60),
        "gpu_enabled" => Value::Boolean(false),
        "run_on_battery" => Value::Boolean(false),
        "min_battery_percent" => Value::Integer(80),
        "max_cpu_temp_c" => Value::Float(85.0),
        "allowed_hours" => Value::String("always".into()),
        "memory_per_task_mb" => Value::Integer((machine.memory_bytes / 4 / 1_000_000) as i64),
        "daily_upload_cap_mb" | "daily_download_cap_mb" => Value::String("unlimited".into()),
        "pause_on_metered_network" => Value::Boolean(true),
        "allow_metered" | "metered_small_traffic" | "allow_insecure_pool" => Value::Boolean(false),
        "max_other_cpu_percent" => Value::Float(50.0),
        "max_other_gpu_percent" => Value::Float(20.0),
        "pause_when_fullscreen" => Value::Boolean(true),
        "exclusive_programs" => Value::Array(Vec::new()),
        "require_sandbox" => Value::Array(Vec::new()),
        _ => return None,
    };
    Some(v)
}

/// What a value should have been, in words (a settings error and the
/// dashboard show them).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValueError {
    #[error("expected true or false")]
    NotBool,
    #[error("expected a whole number from {min} to {max}")]
    Int { min: i64, max: i64 },
    #[error("expected a number from {min} to {max}")]
    Float { min: f64, max: f64 },
    #[error(transparent)]
    Hours(#[from] HoursError),
    #[error("expected \"always\" or a window such as \"22:00-06:00\"")]
    NotHours,
    #[error("expected a URL such as \"https://pool.example.org\"")]
    BadUrl,
    #[error("expected a URL starting with http:// or https://")]
    NotUrl,
    #[error("expected megabytes (0 or more) or \"unlimited\"")]
    NotCap,
    #[error("expected layer names, not {0}")]
    NotALayerName(String),
    #[error(transparent)]
    UnknownLayer(#[from] idlemesh_protocol::sandbox::UnknownLayer),
    #[error("expected a list of sandbox layers such as [\"seccomp\", \"landlock\"]")]
    NotLayers,
    #[error("expected program names, not {0}")]
    NotAProgramName(String),
    #[error("{0:?} is not a program name (a name such as steam, without a path)")]
    BadProgramName(String),
    #[error("expected a list of program names such as [\"steam\", \"obs\"]")]
    NotPrograms,
}

/// An `allowed_hours` window that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HoursError {
    #[error("expected \"always\" or a window such as \"22:00-06:00\", not {0:?}")]
    Malformed(String),
    #[error("{0:?} is an empty window; use \"always\" to allow any time")]
    Empty(String),
}

/// Checks one value against its spec and returns it in canonical form
/// (integers where a float is expected become floats), or says what was expected.
pub fn check(kind: Kind, v: &Value) -> Result<Value, ValueError> {
    match (kind, v) {
        (Kind::Bool, Value::Boolean(_)) => Ok(v.clone()),
        (Kind::Bool, _) => Err(ValueError::NotBool),
        (Kind::Int { min, max }, Value::Integer(i)) if (min..=max).contains(i) => Ok(v.clone()),
        (Kind::Int { min, max }, _) => Err(ValueError::Int { min, max }),
        (Kind::Float { min, max, .. }, Value::Integer(i)) if (min..=max).contains(&(*i as f64)) => {
            Ok(Value::Float(*i as f64))
        }
        (Kind::Float { min, max, .. }, Value::Float(f)) if (min..=max).contains(f) => Ok(v.clone()),
        (Kind::Float { min, max, .. }, _) => Err(ValueError::Float { min, max }),
        (Kind::Hours, Value::String(s)) => parse_hours(s).map(|_| v.clone()).map_err(ValueError::from),
        (Kind::Hours, _) => Err(ValueError::NotHours),
        (Kind::Url, Value::String(s)) if s.starts_with("http://") || s.starts_with("https://") => {
            if s.len() > "https://".len() && !s.contains(char::is_whitespace) {
                Ok(Value::String(s.trim_end_matches('/').to_string()))
            } else {
                Err(ValueError::BadUrl)
            }
        }
        (Kind::Url, _) => Err(ValueError::NotUrl),
        (Kind::CapMb, Value::Integer(i)) if *i >= 0 => Ok(v.clone()),
        (Kind::CapMb, Value::String(s)) if s == "unlimited" => Ok(v.clone()),
        (Kind::CapMb, _) => Err(ValueError::NotCap),
        (Kind::Layers, Value::String(s)) => {
            let names: Vec<Value> =
                s.split(',').map(str::trim).filter(|n| !n.is_empty()).map(|n| Value::String(n.into())).collect();
            check(kind, &Value::Array(names))
        }
        (Kind::Layers, Value::Array(items)) => {
            let mut layers = Vec::new();
            for item in items {
                let name = item.as_str().ok_or_else(|| ValueError::NotALayerName(item.to_string()))?;
                let layer: Layer = name.parse()?;
                if !layers.contains(&layer) {
                    layers.push(layer);
                }
            }
            Ok(Value::Array(layers.into_iter().map(|l| Value::String(l.as_str().into())).collect()))
        }
        (Kind::Layers, _) => Err(ValueError::NotLayers),
        (Kind::Programs, Value::String(s)) => {
            let names: Vec<Value> =
                s.split(',').map(str::trim).filter(|n| !n.is_empty()).map(|n| Value::String(n.into())).collect();
            check(kind, &Value::Array(names))
        }
        (Kind::Programs, Value::Array(items)) => {
            let mut names: Vec<String> = Vec::new();
            for item in items {
                let name = item.as_str().ok_or_else(|| ValueError::NotAProgramName(item.to_string()))?.trim();
                if name.is_empty() || name.len() > 255 || name.contains('/') || name.chars().any(char::is_control) {
                    return Err(ValueError::BadProgramName(name.to_owned()));
                }
                if !names.iter().any(|n| n == name) {
                    names.push(name.to_owned());
                }
            }
            Ok(Value::Array(names.into_iter().map(Value::String).collect()))
        }
        (Kind::Programs, _) => Err(ValueError::NotPrograms),
    }
}

/// `None` for "always".
pub fn parse_hours(s: &str) -> Result<Option<Hours>, HoursError> {
    if s == "always" {
        return Ok(None);
    }
    let bad = || HoursError::Malformed(s.to_owned());
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let minute = |t: &str| -> Option<u16> {
        let (h, m) = t.trim().split_once(':')?;
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60 && t.trim().len() == 5).then_some(h * 60 + m)
    };
    let (start_minute, end_minute) = (minute(a).ok_or_else(bad)?, minute(b).ok_or_else(bad)?);
    if start_minute == end_minute {
        return Err(HoursError::Empty(s.to_owned()));
    }
    Ok(Some(Hours { start_minute, end_minute }))
}

/// Reads a text value the way a TOML file would (`60`, `true`, `"22:00-06:00"`),
/// and bare words as strings, so `idlemesh settings set allowed_hours 22:00-06:00` works.
pub fn parse_cli_value(raw: &str) -> Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| Value::String(raw.into())),
        Err(_) => Value::String(raw.into()),
    }
}

/// Turns checked values into the governor's limits. Every key has a value
/// here (defaults fill the gaps), so the lookups cannot miss.
pub fn to_limits(get: impl Fn(&str) -> Option<Value>, machine: Machine) -> Limits {
    let int = |k: &str| get(k).and_then(|v| v.as_integer()).unwrap_or(0);
    let float = |k: &str| get(k).and_then(|v| v.as_float()).unwrap_or(0.0);
    let boolean = |k: &str| get(k).and_then(|v| v.as_bool()).unwrap_or(false);
    let cap = |k: &str| get(k).and_then(|v| v.as_integer()).map(|mb| mb as u64 * 1_000_000);
    let hours = get("allowed_hours").and_then(|v| v.as_str().and_then(|s| parse_hours(s).ok().flatten()));
    Limits {
        idle_after: Duration::from_secs_f64(float("idle_minutes") * 60.0),
        cores: (int("cpu_cores") as u32).clamp(1, machine.cores.max(1)),
        duty_cycle_percent: int("cpu_duty_cycle_percent").clamp(1, 100) as u8,
        gpu_enabled: boolean("gpu_enabled"),
        run_on_battery: boolean("run_on_battery"),
        min_battery_percent: int("min_battery_percent").clamp(0, 100) as u8,
        max_cpu_temp_c: float("max_cpu_temp_c") as f32,
        allowed_hours: hours,
        memory_per_task_bytes: (int("memory_per_task_mb").max(16) as u64 * 1_000_000).min(machine.memory_bytes),
        daily_upload_cap_bytes: cap("daily_upload_cap_mb"),
        daily_download_cap_bytes: cap("daily_download_cap_mb"),
        pause_on_metered_network: boolean("pause_on_metered_network"),
        allow_metered: boolean("allow_metered"),
        metered_small_traffic: boolean("metered_small_traffic"),
        max_other_cpu_percent: float("max_other_cpu_percent") as f32,
        max_other_gpu_percent: float("max_other_gpu_percent") as f32,
        pause_when_fullscreen: boolean("pause_when_fullscreen"),
        exclusive_programs: get("exclusive_programs")
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|v| Some(v.as_str()?.to_owned()))
            .collect(),
        require_sandbox: get("require_sandbox")
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|v| v.as_str()?.parse().ok())
            .collect(),
        policy_unreadable: None,
        lend_now: false,
    }
}
