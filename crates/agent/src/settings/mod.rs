//! User settings and IT policy, merged into the effective settings (DESIGN §6).
//!
//! Precedence, lowest first: built-in defaults < the policy's `[defaults]` <
//! the user's settings file < the policy's `[locked]` values. A locked key
//! cannot be changed by the user: not in the file (the file's value is
//! ignored and the status says so), not through `idlemesh settings set`.
//!
//! A file that does not parse or holds a bad value never stops the agent: the
//! last good version of that file stays in force and the error is reported,
//! naming the file, the key and the value.

mod platform;
pub mod schema;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use idlemesh_protocol::PublicKey;
use toml::Value;

pub use platform::{
    MACOS_POLICY, REGISTRY_POLICY, RegKey, RegValue, default_policy_path, plist_to_table, registry_to_table,
    system_policy_present,
};
pub use schema::{HoursError, Kind, Machine, SPECS, Spec, ValueError, parse_cli_value, parse_hours};

use crate::governor::Limits;

/// Where the policy lives on Linux when nothing overrides it (see
/// [`default_policy_path`] for every platform).
pub const SYSTEM_POLICY_PATH: &str = "/etc/idlemesh/policy.toml";
pub const POLICY_ENV: &str = "IDLEMESH_POLICY";

/// Where the IT policy is read from, given the file `IDLEMESH_POLICY`
/// names (if set) and whether the machine has a system policy. The system
/// policy always wins: a user's shell could set the variable, so it is
/// honoured only on a machine with no system policy at all, where the
/// file it names can add locks but remove none (tests and side-by-side
/// installs use it). Returns the path, and a warning when the variable was
/// set and ignored.
pub fn policy_source(wanted: Option<PathBuf>, system_present: bool) -> (PathBuf, Option<String>) {
    let system = PathBuf::from(default_policy_path());
    match wanted {
        Some(file) if file == system => (system, None),
        Some(file) if system_present => {
            let why = format!(
                "{POLICY_ENV}={} ignored: this machine has a system policy ({}), which no environment variable can replace",
                file.display(),
                system.display()
            );
            (system, Some(why))
        }
        Some(file) => (file, None),
        None => (system, None),
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SettingsError {
    #[error("{file}: cannot read: {message}")]
    Read { file: String, message: String },
    #[error("{file}: not valid TOML: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: unknown setting `{key}` (known: {known})")]
    UnknownKey { file: String, key: String, known: String },
    #[error("{file}: `{key}` = {value}: {expected}")]
    BadValue { file: String, key: String, value: String, expected: String },
    #[error("{file}: `{key}` is in both [defaults] and [locked]")]
    Twice { file: String, key: String },
    #[error("`{key}` is managed by your organisation (locked to {value} by {policy}) and cannot be changed here")]
    Locked { key: String, value: String, policy: String },
    #[error("cannot write the settings file {file}: {message}")]
    Write { file: String, message: String },
}

pub use idlemesh_control::{EffectiveValue, Source};

/// One parsed, checked settings table.
pub type Values = BTreeMap<String, Value>;

/// The IT policy file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    pub defaults: Values,
    pub locked: Values,
    /// A token to enroll with, for pools that require one.
    pub enrollment_token: Option<String>,
    /// The pool's key, pinned by the organisation: the agent enrolls with
    /// and works for no pool whose key differs.
    pub pool_public_key: Option<PublicKey>,
    /// A PEM file of the certificate authorities an https pool's
    /// certificate must come from: these only, not the system's.
    pub pool_ca_file: Option<PathBuf>,
}

/// How a pinned pool key is written in a policy: `ed25519:` and the key's
/// 64 hex digits, as `idlemesh pool serve` prints it (the bare digits are
/// accepted too).
pub fn parse_pool_key(text: &str) -> Result<PublicKey, BadPoolKey> {
    let text = text.trim();
    let hex = text.strip_prefix("ed25519:").unwrap_or(text);
    hex.parse::<PublicKey>().map_err(BadPoolKey)
}

/// A policy's `pool_public_key` that is not a key.
#[derive(Debug, thiserror::Error)]
#[error("expected \"ed25519:\" and the pool's 64-hex-digit public key, as `idlemesh pool serve` prints it ({0})")]
pub struct BadPoolKey(#[source] idlemesh_protocol::ProtocolError);

/// Parses a user settings file's text: a flat table of known keys.
pub fn parse_user(file: &str, text: &str) -> Result<Values, SettingsError> {
    let table: toml::Table =
        toml::from_str(text).map_err(|e| SettingsError::Syntax { file: file.into(), message: one_line(&e) })?;
    check_table(file, "", table)
}

/// Parses a policy file: `enrollment_token`, and `[defaults]` and `[locked]`
/// tables of the same keys as the user's file.
pub fn parse_policy(file: &str, text: &str) -> Result<Policy, SettingsError> {
    let table: toml::Table =
        toml::from_str(text).map_err(|e| SettingsError::Syntax { file: file.into(), message: one_line(&e) })?;
    policy_from_table(file, table)
}

/// Reads a policy file as `idlemesh policy check` does: `Err` when it cannot
/// be read as a whole (not UTF-8, not TOML or a property list); otherwise
/// the policy of its good keys and every bad key's problem.
pub fn check_policy_bytes(file: &str, bytes: &[u8]) -> Result<(Policy, Vec<SettingsError>), SettingsError> {
    let table = if file.ends_with(".plist") {
        plist_to_table(bytes).map_err(|e| SettingsError::Syntax { file: file.into(), message: e.to_string() })?
    } else {
        toml::from_str(utf8(file, bytes)?)
            .map_err(|e| SettingsError::Syntax { file: file.into(), message: one_line(&e) })?
    };
    Ok(policy_from_table_lenient(file, table))
}

/// Reads the Group Policy registry key as `idlemesh policy check` does on
/// Windows: `None` when there is no key.
#[cfg(windows)]
pub fn check_registry_policy() -> Result<Option<(Policy, Vec<SettingsError>)>, SettingsError> {
    match platform::read_registry() {
        Ok(Some(key)) => Ok(Some(policy_from_table_lenient(REGISTRY_POLICY, registry_to_table(&key)))),
        Ok(None) => Ok(None),
        Err(e) => Err(SettingsError::Read { file: REGISTRY_POLICY.into(), message: e.to_string() }),
    }
}

fn utf8<'a>(file: &str, bytes: &'a [u8]) -> Result<&'a str, SettingsError> {
    std::str::from_utf8(bytes)
        .map_err(|e| SettingsError::Read { file: file.into(), message: format!("not UTF-8 text: {e}") })
}

/// Checks a policy already in TOML's shape, whichever format it came from.
/// The first problem is the error (see [`policy_from_table_lenient`] for all).
pub fn policy_from_table(file: &str, table: toml::Table) -> Result<Policy, SettingsError> {
    match policy_from_table_lenient(file, table) {
        (policy, errors) if errors.is_empty() => Ok(policy),
        (_, mut errors) => Err(errors.remove(0)),
    }
}

/// Checks a policy key by key: the policy of every good key, and each bad
/// key's problem (an unknown key, a bad value, a key both a default and
/// locked), so that one mistake names itself without hiding the others.
pub fn policy_from_table_lenient(file: &str, table: toml::Table) -> (Policy, Vec<SettingsError>) {
    let mut policy = Policy::default();
    let mut errors = Vec::new();
    for (key, value) in table {
        match (key.as_str(), value) {
            ("enrollment_token", Value::String(t)) if !t.trim().is_empty() => policy.enrollment_token = Some(t),
            ("enrollment_token", v) => errors.push(SettingsError::BadValue {
                file: file.into(),
                key,
                value: v.to_string(),
                expected: "expected a non-empty string".into(),
            }),
            ("pool_ca_file", Value::String(path)) if std::path::Path::new(&path).is_absolute() => {
                policy.pool_ca_file = Some(PathBuf::from(path))
            }
            ("pool_ca_file", v) => errors.push(SettingsError::BadValue {
                file: file.into(),
                key,
                value: v.to_string(),
                expected: "expected the absolute path of a PEM file of certificate authorities".into(),
            }),
            ("pool_public_key", v) => {
                let key_or_why = match v.as_str() {
                    Some(text) => parse_pool_key(text).map_err(|e| e.to_string()),
                    None => Err("expected a string".to_owned()),
                };
                match key_or_why {
                    Ok(k) => policy.pool_public_key = Some(k),
                    Err(expected) => {
                        errors.push(SettingsError::BadValue { file: file.into(), key, value: v.to_string(), expected })
                    }
                }
            }
            ("defaults", Value::Table(t)) => policy.defaults = check_table_lenient(file, "defaults.", t, &mut errors),
            ("locked", Value::Table(t)) => policy.locked = check_table_lenient(file, "locked.", t, &mut errors),
            _ => errors.push(SettingsError::UnknownKey {
                file: file.into(),
                key,
                known: "enrollment_token, pool_public_key, pool_ca_file, [defaults], [locked]".into(),
            }),
        }
    }
    // A key both a default and locked: locked wins (the stricter reading).
    let twice: Vec<String> = policy.defaults.keys().filter(|k| policy.locked.contains_key(*k)).cloned().collect();
    for key in twice {
        policy.defaults.remove(&key);
        errors.push(SettingsError::Twice { file: file.into(), key });
    }
    (policy, errors)
}

fn check_table(file: &str, prefix: &str, table: toml::Table) -> Result<Values, SettingsError> {
    let mut errors = Vec::new();
    let out = check_table_lenient(file, prefix, table, &mut errors);
    if errors.is_empty() { Ok(out) } else { Err(errors.remove(0)) }
}

/// The good keys of `table`; each bad one goes to `errors`.
fn check_table_lenient(file: &str, prefix: &str, table: toml::Table, errors: &mut Vec<SettingsError>) -> Values {
    let mut out = Values::new();
    for (key, value) in table {
        let Some(spec) = schema::spec(&key) else {
            errors.push(SettingsError::UnknownKey {
                file: file.into(),
                key: format!("{prefix}{key}"),
                known: SPECS.iter().map(|s| s.key).collect::<Vec<_>>().join(", "),
            });
            continue;
        };
        match check_value(file, &format!("{prefix}{key}"), spec, &value) {
            Ok(value) => {
                out.insert(key, value);
            }
            Err(e) => errors.push(e),
        }
    }
    out
}

fn check_value(file: &str, key: &str, spec: &Spec, value: &Value) -> Result<Value, SettingsError> {
    schema::check(spec.kind, value).map_err(|expected| SettingsError::BadValue {
        file: file.into(),
        key: key.into(),
        value: value.to_string(),
        expected: expected.to_string(),
    })
}

fn one_line(e: &toml::de::Error) -> String {
    e.to_string().lines().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join(" ").replace("  ", " ")
}

/// The settings in force.
#[derive(Debug, Clone, PartialEq)]
pub struct Effective {
    pub values: BTreeMap<&'static str, EffectiveValue>,
    pub enrollment_token: Option<String>,
    pub pool_public_key: Option<PublicKey>,
    pub pool_ca_file: Option<PathBuf>,
    pub machine: Machine,
}

impl Effective {
    pub fn merge(machine: Machine, user: &Values, policy: &Policy) -> Self {
        let mut values = BTreeMap::new();
        for spec in SPECS {
            let key = spec.key;
            let (value, source) = if let Some(v) = policy.locked.get(key) {
                (Some(v.clone()), Source::Policy)
            } else if let Some(v) = user.get(key) {
                (Some(v.clone()), Source::User)
            } else if let Some(v) = policy.defaults.get(key) {
                (Some(v.clone()), Source::PolicyDefault)
            } else {
                (schema::default_value(key, machine), Source::Default)
            };
            values.insert(key, EffectiveValue { value, source, locked: source == Source::Policy });
        }
        Self {
            values,
            enrollment_token: policy.enrollment_token.clone(),
            pool_public_key: policy.pool_public_key,
            pool_ca_file: policy.pool_ca_file.clone(),
            machine,
        }
    }

    pub fn get(&self, key: &str) -> Option<Value> {
        self.values.get(key).and_then(|v| v.value.clone())
    }

    pub fn limits(&self) -> Limits {
        schema::to_limits(|k| self.get(k), self.machine)
    }

    /// The pins and the transport the agent trusts pools with.
    pub fn pool_trust(&self) -> crate::PoolTrust {
        crate::PoolTrust {
            policy_pool_key: self.pool_public_key,
            allow_insecure_pool: self.get("allow_insecure_pool").and_then(|v| v.as_bool()).unwrap_or(false),
            pool_ca_file: self.pool_ca_file.clone(),
        }
    }

    pub fn pool_url(&self) -> Option<String> {
        self.get("pool_url").and_then(|v| v.as_str().map(str::to_string))
    }
}

/// A file and the last good version of what it said.
#[derive(Debug)]
struct Watched<T> {
    path: PathBuf,
    /// What the source looked like when last read (a file's mtime, or the
    /// registry key's contents), to re-read only what changed.
    seen: Option<String>,
    good: T,
    error: Option<SettingsError>,
}

impl<T: Default + Clone> Watched<T> {
    fn new(path: PathBuf) -> Self {
        Self { path, seen: None, good: T::default(), error: None }
    }

    /// Re-reads the file if it changed. A missing file means "nothing set";
    /// a bad one keeps the last good contents and records why.
    fn refresh(&mut self, parse: impl Fn(&str, &[u8]) -> Result<T, SettingsError>) -> bool {
        let stamp = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        let path = self.path.clone();
        self.update(format!("{stamp:?}"), || {
            let file = path.display().to_string();
            match std::fs::read(&path) {
                Ok(bytes) => parse(&file, &bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
                Err(e) => Err(SettingsError::Read { file, message: e.to_string() }),
            }
        })
    }

    /// Takes a new reading if the source's stamp changed; a bad one keeps
    /// the last good contents and records why.
    fn update(&mut self, stamp: String, read: impl FnOnce() -> Result<T, SettingsError>) -> bool {
        if self.seen.as_ref() == Some(&stamp) {
            return false;
        }
        self.seen = Some(stamp);
        let parsed = read();
        match parsed {
            Ok(v) => {
                self.good = v;
                self.error = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "keeping the last good settings");
                self.error = Some(e);
            }
        }
        true
    }
}

/// A policy as read key by key: the good keys (in force) and each bad one.
#[derive(Debug, Clone, Default)]
struct PolicyReading {
    policy: Policy,
    bad_keys: Vec<SettingsError>,
}

/// Reads the policy source (a file, or the registry key) if it changed,
/// key by key: a bad key is reported and the rest stay in force; only a
/// source that cannot be read at all is an error (see `policy_unreadable`).
fn read_policy_into(policy: &mut Watched<PolicyReading>) -> bool {
    #[cfg(windows)]
    if policy.path.as_os_str() == REGISTRY_POLICY {
        let read = platform::read_registry();
        let stamp = format!("{read:?}");
        return policy.update(stamp, || match read {
            Ok(Some(key)) => {
                let (policy, bad_keys) = policy_from_table_lenient(REGISTRY_POLICY, registry_to_table(&key));
                Ok(PolicyReading { policy, bad_keys })
            }
            Ok(None) => Ok(PolicyReading::default()),
            Err(e) => Err(SettingsError::Read { file: REGISTRY_POLICY.into(), message: e.to_string() }),
        });
    }
    policy.refresh(|file, bytes| {
        check_policy_bytes(file, bytes).map(|(policy, bad_keys)| PolicyReading { policy, bad_keys })
    })
}

/// The IT policy in force now, for a one-shot reader (`ledger verify`):
/// its good keys, or why it cannot be read at all.
pub fn read_policy(path: PathBuf) -> Result<Policy, SettingsError> {
    let mut watched = Watched::<PolicyReading>::new(path);
    read_policy_into(&mut watched);
    match watched.error {
        Some(e) => Err(e),
        None => Ok(watched.good.policy),
    }
}

/// Whether a bad key is one of the policy's trust anchors (`pool_public_key`, `pool_ca_file`).
fn is_trust_key_error(e: &SettingsError) -> bool {
    matches!(e, SettingsError::BadValue { key, .. } if key == "pool_public_key" || key == "pool_ca_file")
}

/// The user's settings file and the IT policy, watched for changes.
#[derive(Debug)]
pub struct Settings {
    machine: Machine,
    user: Watched<Values>,
    policy: Watched<PolicyReading>,
    effective: Effective,
}

impl Settings {
    pub fn open(machine: Machine, user_path: PathBuf, policy_path: PathBuf) -> Self {
        let mut s = Self {
            machine,
            user: Watched::new(user_path),
            policy: Watched::new(policy_path),
            effective: Effective::merge(machine, &Values::new(), &Policy::default()),
        };
        s.refresh();
        s
    }

    /// Re-reads whichever file changed; true if the effective settings changed.
    pub fn refresh(&mut self) -> bool {
        let a = self.user.refresh(|file, bytes| parse_user(file, utf8(file, bytes)?));
        let b = self.refresh_policy();
        if a || b {
            let next = Effective::merge(self.machine, &self.user.good, &self.policy.good.policy);
            let changed = next != self.effective;
            self.effective = next;
            return changed;
        }
        false
    }

    pub fn effective(&self) -> &Effective {
        &self.effective
    }

    fn refresh_policy(&mut self) -> bool {
        // A system policy deployed while an agent runs with an
        // `IDLEMESH_POLICY` file replaces that file at once, not at the next start.
        if self.policy.path.as_os_str() != default_policy_path() && system_policy_present() {
            let (system, why) = policy_source(Some(self.policy.path.clone()), true);
            tracing::warn!("{}", why.unwrap_or_default());
            self.policy = Watched::new(system);
        }
        read_policy_into(&mut self.policy)
    }

    /// Why the IT policy cannot be read at all, if it cannot: work stops
    /// until it is fixed (an unreadable policy never means "no policy"; the
    /// last good one stays in force meanwhile).
    pub fn policy_unreadable(&self) -> Option<String> {
        self.policy_stops().next()
    }

    /// Every problem with the IT policy: why it cannot be read, and each
    /// bad key (the others apply).
    pub fn policy_errors(&self) -> Vec<String> {
        let others = self.policy.good.bad_keys.iter().filter(|e| !is_trust_key_error(e)).map(ToString::to_string);
        self.policy_stops().chain(others).collect()
    }

    /// The problems that stop work: a policy that cannot be read, and a pin
    /// that cannot be read (it pins nothing, so running on would trust any
    /// pool the policy meant to exclude).
    fn policy_stops(&self) -> impl Iterator<Item = String> + '_ {
        let file = self.policy.error.iter().map(|e| format!("IT policy unreadable: {e}"));
        let pins = self.policy.good.bad_keys.iter().filter(|e| is_trust_key_error(e)).map(|e| {
            format!("IT policy unreadable: {e} (a pool pin that cannot be read stops all work until it is fixed)")
        });
        file.chain(pins)
    }

    /// The governor's limits, with the policy's readability.
    pub fn limits(&self) -> Limits {
        Limits { policy_unreadable: self.policy_unreadable(), ..self.effective.limits() }
    }

    pub fn user_path(&self) -> &Path {
        &self.user.path
    }

    /// Every setting as the control API describes it (`settings_schema`):
    /// what it accepts, its default here, and whether the policy locks it.
    pub fn schema(&self) -> Vec<idlemesh_control::SettingSpec> {
        schema::SPECS
            .iter()
            .map(|spec| {
                let locked = self.effective.values.get(spec.key).is_some_and(|v| v.locked);
                idlemesh_control::SettingSpec {
                    key: spec.key.to_owned(),
                    label: spec.label.to_owned(),
                    help: spec.help.to_owned(),
                    kind: spec.kind,
                    default: schema::default_value(spec.key, self.machine),
                    locked,
                    locked_by: locked.then(|| self.policy.path.display().to_string()),
                }
            })
            .collect()
    }

    pub fn policy_path(&self) -> &Path {
        &self.policy.path
    }

    /// Current problems with the files (the last good values are in force meanwhile).
    pub fn errors(&self) -> Vec<String> {
        let files = [&self.user.error, &self.policy.error].into_iter().flatten();
        files.chain(&self.policy.good.bad_keys).map(|e| e.to_string()).collect()
    }

    /// Changes one user setting: checked, refused if the policy locks it,
    /// written atomically into the user's file with every other line kept.
    pub fn set(&mut self, key: &str, value: &Value) -> Result<(), SettingsError> {
        let spec = self.editable(key)?;
        let value = check_value("settings", key, spec, value)?;
        self.edit(key, Some(value))
    }

    /// Removes one user setting, so the default (or the policy's) applies again.
    pub fn unset(&mut self, key: &str) -> Result<(), SettingsError> {
        self.editable(key)?;
        self.edit(key, None)
    }

    fn editable(&self, key: &str) -> Result<&'static schema::Spec, SettingsError> {
        let spec = schema::spec(key).ok_or_else(|| SettingsError::UnknownKey {
            file: "settings".into(),
            key: key.into(),
            known: SPECS.iter().map(|s| s.key).collect::<Vec<_>>().join(", "),
        })?;
        if let Some(locked) = self.policy.good.policy.locked.get(key) {
            return Err(SettingsError::Locked {
                key: key.into(),
                value: locked.to_string(),
                policy: self.policy.path.display().to_string(),
            });
        }
        Ok(spec)
    }

    fn edit(&mut self, key: &str, value: Option<Value>) -> Result<(), SettingsError> {
        let file = self.user.path.display().to_string();
        // Edit what is on disk, not what we parsed: a file with an error is
        // fixed by setting the bad key, and comments elsewhere survive.
        let text = match std::fs::read_to_string(&self.user.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(SettingsError::Read { file, message: e.to_string() }),
        };
        let mut doc: toml::Table =
            toml::from_str(&text).map_err(|e| SettingsError::Syntax { file: file.clone(), message: one_line(&e) })?;
        match value {
            Some(value) => doc.insert(key.into(), value),
            None => doc.remove(key),
        };
        let text =
            toml::to_string(&doc).map_err(|e| SettingsError::Write { file: file.clone(), message: e.to_string() })?;
        // The file must be good as a whole, or this value would not take effect.
        parse_user(&file, &text)?;
        write_atomically(&self.user.path, text.as_bytes())
            .map_err(|e| SettingsError::Write { file, message: e.to_string() })?;
        self.user.seen = None;
        self.refresh();
        Ok(())
    }
}

pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map(drop).map_err(|e| e.error)
}

#[cfg(test)]
mod tests;
