//! Where the IT policy comes from on each platform (DESIGN §6), turned into
//! the TOML policy's shape so one parser checks every key and value:
//!
//! - Linux: `/etc/idlemesh/policy.toml`, read as it is.
//! - Windows: `HKLM\Software\Policies\Idlemesh` (set by Group Policy with
//!   `installers/windows/idlemesh.admx`): the value `enrollment_token`, and
//!   the subkeys `Defaults` and `Locked` with one value per setting, named
//!   as in the TOML file (DWORD for numbers and booleans, REG_SZ for text).
//! - macOS: the managed preferences of `com.idlemesh.agent` (from the
//!   configuration profile `installers/macos/com.idlemesh.agent.mobileconfig`),
//!   `/Library/Managed Preferences/com.idlemesh.agent.plist`: the keys
//!   `enrollment_token`, `Defaults` and `Locked` (dictionaries).
//!
//! The conversions are pure and tested on every platform; only reading the
//! registry needs Windows.

use toml::{Table, Value};

use super::schema::{self, Kind};

/// The system's policy source on this platform: a file, the registry key,
/// or the managed-preferences file.
pub fn default_policy_path() -> &'static str {
    if cfg!(windows) {
        REGISTRY_POLICY
    } else if cfg!(target_os = "macos") {
        MACOS_POLICY
    } else {
        super::SYSTEM_POLICY_PATH
    }
}

/// Whether this machine has a system policy, in any state: a file that
/// exists (even unreadable, even a dangling link), a directory that cannot
/// be searched, a registry key that exists or cannot be opened. Where it
/// has one, no environment variable can replace it (see
/// [`super::policy_source`]).
pub fn system_policy_present() -> bool {
    #[cfg(windows)]
    {
        !matches!(read_registry(), Ok(None))
    }
    #[cfg(not(windows))]
    {
        match std::fs::symlink_metadata(default_policy_path()) {
            Ok(_) => true,
            Err(e) => e.kind() != std::io::ErrorKind::NotFound,
        }
    }
}

/// Names the registry key where a file path would go.
pub const REGISTRY_POLICY: &str = r"HKLM\Software\Policies\Idlemesh";
pub const MACOS_POLICY: &str = "/Library/Managed Preferences/com.idlemesh.agent.plist";

/// A registry value as Group Policy writes it.
#[derive(Debug, Clone, PartialEq)]
pub enum RegValue {
    Sz(String),
    Dword(u32),
    Qword(u64),
}

/// A registry key's values and subkeys, as read (or as a test writes them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegKey {
    pub values: Vec<(String, RegValue)>,
    pub subkeys: Vec<(String, RegKey)>,
}

/// The registry policy as a TOML policy table. A value whose type does not
/// fit its setting is passed on as it is, so the checker names it.
pub fn registry_to_table(root: &RegKey) -> Table {
    let mut table = Table::new();
    for (name, value) in &root.values {
        table.insert(name.clone(), reg_value(name, value));
    }
    for (name, key) in &root.subkeys {
        let section = name.to_ascii_lowercase();
        let values = key.values.iter().map(|(k, v)| (k.clone(), reg_value(k, v))).collect();
        table.insert(section, Value::Table(values));
    }
    table
}

fn reg_value(key: &str, value: &RegValue) -> Value {
    let kind = schema::spec(key).map(|s| s.kind);
    let number = match value {
        RegValue::Dword(n) => Some(u64::from(*n)),
        RegValue::Qword(n) => Some(*n),
        RegValue::Sz(_) => None,
    };
    match (kind, number, value) {
        (Some(Kind::Bool), Some(n @ (0 | 1)), _) => Value::Boolean(n == 1),
        (Some(Kind::Float { .. }), Some(n), _) => Value::Float(n as f64),
        (Some(Kind::Float { .. }), None, RegValue::Sz(s)) => {
            s.trim().parse::<f64>().map(Value::Float).unwrap_or_else(|_| Value::String(s.clone()))
        }
        // Caps are text in the ADMX (a number or "unlimited").
        (Some(Kind::CapMb | Kind::Int { .. }), None, RegValue::Sz(s)) => {
            s.trim().parse::<i64>().map(Value::Integer).unwrap_or_else(|_| Value::String(s.clone()))
        }
        (_, Some(n), _) => Value::Integer(i64::try_from(n).unwrap_or(i64::MAX)),
        (_, None, RegValue::Sz(s)) => Value::String(s.clone()),
        (_, None, _) => unreachable!("only REG_SZ has no number"),
    }
}

/// macOS managed preferences (a binary or XML plist) as a TOML policy table.
pub fn plist_to_table(bytes: &[u8]) -> Result<Table, PlistError> {
    let value = plist::Value::from_reader(std::io::Cursor::new(bytes))?;
    let dict = value.into_dictionary().ok_or(PlistError::NotADictionary)?;
    dict_to_table(dict, true)
}

/// Managed preferences that cannot be read as a policy.
#[derive(Debug, thiserror::Error)]
pub enum PlistError {
    #[error("not a property list: {0}")]
    NotAPlist(#[from] plist::Error),
    #[error("the property list is not a dictionary")]
    NotADictionary,
    #[error("`{key}` has an unsupported type ({found})")]
    Unsupported { key: String, found: String },
}

fn dict_to_table(dict: plist::Dictionary, top: bool) -> Result<Table, PlistError> {
    let mut table = Table::new();
    for (key, value) in dict {
        // A profile's own bookkeeping keys travel with the preferences.
        if top && key.starts_with("Payload") {
            continue;
        }
        let name = if top {
            key.to_ascii_lowercase()
                .replace("enrollmenttoken", "enrollment_token")
                .replace("poolpublickey", "pool_public_key")
                .replace("poolcafile", "pool_ca_file")
        } else {
            key
        };
        let value = match value {
            plist::Value::Boolean(b) => Value::Boolean(b),
            plist::Value::Integer(i) => Value::Integer(
                i.as_signed().or_else(|| i.as_unsigned().map(|u| i64::try_from(u).unwrap_or(i64::MAX))).unwrap_or(0),
            ),
            plist::Value::Real(r) => Value::Float(r),
            plist::Value::String(s) => Value::String(s),
            plist::Value::Dictionary(d) if top => Value::Table(dict_to_table(d, false)?),
            other => return Err(PlistError::Unsupported { key: name, found: format!("{other:?}") }),
        };
        table.insert(name, value);
    }
    Ok(table)
}

/// Reads the policy key from the registry; `None` when there is none.
#[cfg(windows)]
pub fn read_registry() -> std::io::Result<Option<RegKey>> {
    use winreg::RegKey as WinKey;
    use winreg::enums::{HKEY_LOCAL_MACHINE, KEY_READ, REG_DWORD, REG_QWORD, REG_SZ};

    fn read(key: &WinKey, depth: u32) -> std::io::Result<RegKey> {
        let mut out = RegKey::default();
        for item in key.enum_values() {
            let (name, raw) = item?;
            let value = match raw.vtype {
                REG_DWORD => RegValue::Dword(key.get_value(&name)?),
                REG_QWORD => RegValue::Qword(key.get_value(&name)?),
                REG_SZ => RegValue::Sz(key.get_value(&name)?),
                // Anything else is passed on as text, to be named as a bad value.
                _ => RegValue::Sz(format!("{raw}")),
            };
            out.values.push((name, value));
        }
        if depth == 0 {
            for name in key.enum_keys() {
                let name = name?;
                let sub = key.open_subkey_with_flags(&name, KEY_READ)?;
                out.subkeys.push((name, read(&sub, depth + 1)?));
            }
        }
        Ok(out)
    }

    match WinKey::predef(HKEY_LOCAL_MACHINE).open_subkey_with_flags(r"Software\Policies\Idlemesh", KEY_READ) {
        Ok(key) => read(&key, 0).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{SettingsError, policy_from_table};

    #[test]
    fn a_group_policy_registry_key_is_a_policy() {
        let reg = RegKey {
            values: vec![("enrollment_token".into(), RegValue::Sz("imt_abc".into()))],
            subkeys: vec![
                (
                    "Defaults".into(),
                    RegKey {
                        values: vec![
                            ("cpu_duty_cycle_percent".into(), RegValue::Dword(40)),
                            ("gpu_enabled".into(), RegValue::Dword(1)),
                            ("max_cpu_temp_c".into(), RegValue::Sz("77.5".into())),
                            ("idle_minutes".into(), RegValue::Dword(10)),
                            ("daily_upload_cap_mb".into(), RegValue::Sz("unlimited".into())),
                            ("daily_download_cap_mb".into(), RegValue::Sz(" 500 ".into())),
                        ],
                        subkeys: vec![],
                    },
                ),
                (
                    "Locked".into(),
                    RegKey {
                        values: vec![
                            ("pool_url".into(), RegValue::Sz("https://pool.example.org".into())),
                            ("run_on_battery".into(), RegValue::Dword(0)),
                            ("memory_per_task_mb".into(), RegValue::Qword(2048)),
                        ],
                        subkeys: vec![],
                    },
                ),
            ],
        };
        let p = policy_from_table("registry", registry_to_table(&reg)).unwrap();
        assert_eq!(p.enrollment_token.as_deref(), Some("imt_abc"));
        assert_eq!(p.defaults["cpu_duty_cycle_percent"], Value::Integer(40));
        assert_eq!(p.defaults["gpu_enabled"], Value::Boolean(true));
        assert_eq!(p.defaults["max_cpu_temp_c"], Value::Float(77.5));
        assert_eq!(p.defaults["idle_minutes"], Value::Float(10.0));
        assert_eq!(p.defaults["daily_download_cap_mb"], Value::Integer(500));
        assert_eq!(p.locked["run_on_battery"], Value::Boolean(false));
        assert_eq!(p.locked["memory_per_task_mb"], Value::Integer(2048));

        // A bad value is named with its key, as for the TOML file.
        let bad = RegKey {
            values: vec![],
            subkeys: vec![(
                "Locked".into(),
                RegKey { values: vec![("gpu_enabled".into(), RegValue::Dword(7))], subkeys: vec![] },
            )],
        };
        let err = policy_from_table("registry", registry_to_table(&bad)).unwrap_err();
        assert!(matches!(&err, SettingsError::BadValue { key, .. } if key == "locked.gpu_enabled"), "{err}");
        let unknown = RegKey { values: vec![("colour".into(), RegValue::Sz("red".into()))], subkeys: vec![] };
        assert!(matches!(
            policy_from_table("registry", registry_to_table(&unknown)),
            Err(SettingsError::UnknownKey { .. })
        ));
    }

    /// The shipped configuration profile's payload is a valid policy, and
    /// the shipped ADMX covers every setting, locked and as a default.
    #[test]
    fn the_shipped_macos_profile_and_windows_templates_cover_every_setting() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../installers");
        let profile = std::fs::read(root.join("macos/com.idlemesh.agent.mobileconfig")).unwrap();
        let outer = plist::Value::from_reader(std::io::Cursor::new(&profile)).unwrap().into_dictionary().unwrap();
        let content = outer.get("PayloadContent").unwrap().as_array().unwrap();
        let payload = content[0].as_dictionary().unwrap().clone();
        assert_eq!(payload.get("PayloadType").and_then(|v| v.as_string()), Some("com.idlemesh.agent"));
        let mut bytes = Vec::new();
        plist::Value::Dictionary(payload).to_writer_xml(&mut bytes).unwrap();
        let p = policy_from_table("profile", plist_to_table(&bytes).unwrap()).unwrap();
        assert!(p.enrollment_token.is_some());
        assert_eq!(p.locked["pool_url"], Value::String("https://pool.example.org".into()));
        assert!(!p.defaults.is_empty());

        let admx = std::fs::read_to_string(root.join("windows/idlemesh.admx")).unwrap();
        let adml = std::fs::read_to_string(root.join("windows/en-US/idlemesh.adml")).unwrap();
        assert!(
            admx.contains(r#"key="Software\Policies\Idlemesh""#) && admx.contains(r#"valueName="enrollment_token""#)
        );
        for spec in schema::SPECS {
            for section in ["Defaults", "Locked"] {
                let key = format!(r#"key="Software\Policies\Idlemesh\{section}""#);
                let name = format!(r#"valueName="{}""#, spec.key);
                assert!(
                    admx.lines().any(|l| l.contains(&key) && l.contains(&name)),
                    "the ADMX has no {section} policy for {}",
                    spec.key
                );
            }
            assert!(adml.contains(spec.key), "the ADML does not explain {}", spec.key);
        }
    }

    #[test]
    fn a_binary_plist_and_bad_types_are_handled() {
        let mut dict = plist::Dictionary::new();
        dict.insert("EnrollmentToken".into(), plist::Value::String("imt_x".into()));
        dict.insert("PayloadUUID".into(), plist::Value::String("ignored".into()));
        let mut locked = plist::Dictionary::new();
        locked.insert("cpu_cores".into(), plist::Value::Integer(2.into()));
        locked.insert("max_cpu_temp_c".into(), plist::Value::Real(80.0));
        dict.insert("Locked".into(), plist::Value::Dictionary(locked));
        let mut bytes = Vec::new();
        plist::Value::Dictionary(dict.clone()).to_writer_binary(&mut bytes).unwrap();
        let p = policy_from_table("plist", plist_to_table(&bytes).unwrap()).unwrap();
        assert_eq!(p.enrollment_token.as_deref(), Some("imt_x"));
        assert_eq!(p.locked["cpu_cores"], Value::Integer(2));
        dict.insert("Defaults".into(), plist::Value::Array(vec![]));
        let mut bytes = Vec::new();
        plist::Value::Dictionary(dict).to_writer_xml(&mut bytes).unwrap();
        assert!(plist_to_table(&bytes).unwrap_err().to_string().contains("defaults"));
        assert!(plist_to_table(b"garbage").unwrap_err().to_string().contains("property list"));
    }
}
