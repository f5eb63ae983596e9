//! Secrets in the OS keyring, never in files or logs: the device's ed25519
//! key (and, later, pool tokens).
//!
//! Linux has two real backends. The Secret Service (GNOME Keyring, KWallet)
//! is the desktop's, persistent and unlocked with the session; the kernel's
//! keyutils is there on every machine, including headless ones, but its keys
//! live until reboot. `IDLEMESH_KEYRING=secret-service|keyutils` picks one;
//! by default the Secret Service is used when the session offers it.
//! Windows uses the Credential Manager, macOS the login keychain.
//!
//! A headless machine has no Secret Service, and kernel keys end at reboot.
//! There the agent runs as a systemd service and its key is a systemd
//! credential: encrypted at rest with the machine's TPM2 and/or host key
//! (`systemd-creds encrypt`), decrypted by systemd at start into a private,
//! unswappable directory only the service can read (`$CREDENTIALS_DIRECTORY`).
//! When that credential is there it is the device key, and no keyring is used.

use std::sync::Arc;

use idlemesh_protocol::Keypair;
use keyring_core::{Entry, Error as KeyringError};

pub const KEYRING_ENV: &str = "IDLEMESH_KEYRING";
const SERVICE: &str = "idlemesh";

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("no usable keyring: {0}")]
    NoKeyring(String),
    #[error(
        "unknown keyring {0:?} in {KEYRING_ENV}: expected secret-service or keyutils (Linux), windows, keychain (macOS)"
    )]
    UnknownBackend(String),
    #[error(
        "the keyring refused: {0} (with the kernel keyring this usually means the process has no session keyring: start the agent from a login session, or under `keyctl session -`)"
    )]
    Keyring(#[from] KeyringError),
    #[error("the systemd credential {CREDENTIAL} is not a device key: {0}")]
    Credential(String),
    #[error("the device key in the keyring is damaged ({0}); remove the entry `{SERVICE}/{1}` to enroll anew")]
    Damaged(String, String),
}

/// Chooses the keyring backend for this process; returns its name.
pub fn use_os_keyring() -> Result<&'static str, SecretsError> {
    let wanted = std::env::var(KEYRING_ENV).ok().filter(|s| !s.is_empty());
    let (name, store) = platform_store(wanted.as_deref())?;
    keyring_core::set_default_store(store);
    Ok(name)
}

type Store = Arc<keyring_core::CredentialStore>;

#[cfg(target_os = "linux")]
fn platform_store(wanted: Option<&str>) -> Result<(&'static str, Store), SecretsError> {
    let secret_service = || {
        secret_service_present().map_err(|e| e.to_string())?;
        zbus_secret_service_keyring_store::Store::new().map(|s| s as Store).map_err(|e| e.to_string())
    };
    let keyutils = || linux_keyutils_keyring_store::Store::new().map(|s| s as Store).map_err(|e| e.to_string());
    Ok(match wanted {
        Some("secret-service") => ("secret-service", secret_service().map_err(SecretsError::NoKeyring)?),
        Some("keyutils") => ("keyutils", keyutils().map_err(SecretsError::NoKeyring)?),
        Some(other) => return Err(SecretsError::UnknownBackend(other.into())),
        None => match secret_service() {
            Ok(s) => ("secret-service", s),
            Err(e) => {
                tracing::info!(error = %e, "no Secret Service in this session: using the kernel keyring");
                ("keyutils", keyutils().map_err(SecretsError::NoKeyring)?)
            }
        },
    })
}

/// Whether a Secret Service is on the session bus, running or startable
/// (D-Bus activation). Without one the store itself is made all the same,
/// and only fails at the first key, as a refusal: a missing keyring must
/// read as missing (and, by default, fall back to the kernel keyring).
#[cfg(target_os = "linux")]
fn secret_service_present() -> Result<(), NoSecretService> {
    let conn = zbus::blocking::Connection::session()?;
    let bus = zbus::blocking::fdo::DBusProxy::new(&conn)?;
    let name = zbus::names::BusName::try_from(SECRET_SERVICE).expect("a valid bus name");
    if bus.name_has_owner(name)? {
        return Ok(());
    }
    if bus.list_activatable_names()?.iter().any(|n| n.as_str() == SECRET_SERVICE) {
        return Ok(());
    }
    Err(NoSecretService::Absent)
}

#[cfg(target_os = "linux")]
const SECRET_SERVICE: &str = "org.freedesktop.secrets";

/// Why the Secret Service is not there to ask.
#[cfg(target_os = "linux")]
#[derive(Debug, thiserror::Error)]
enum NoSecretService {
    #[error("no session bus: {0}")]
    Bus(#[from] zbus::Error),
    #[error("the session bus did not answer: {0}")]
    Asking(#[from] zbus::fdo::Error),
    #[error("no Secret Service in this session: nothing on the session bus owns or can start {SECRET_SERVICE}")]
    Absent,
}

/// The Windows Credential Manager.
#[cfg(windows)]
fn platform_store(wanted: Option<&str>) -> Result<(&'static str, Store), SecretsError> {
    match wanted {
        None | Some("windows") => windows_native_keyring_store::Store::new()
            .map(|s| ("windows", s as Store))
            .map_err(|e| SecretsError::NoKeyring(e.to_string())),
        Some(other) => Err(SecretsError::UnknownBackend(other.into())),
    }
}

/// The user's login keychain.
#[cfg(target_os = "macos")]
fn platform_store(wanted: Option<&str>) -> Result<(&'static str, Store), SecretsError> {
    match wanted {
        None | Some("keychain") => apple_native_keyring_store::keychain::Store::new()
            .map(|s| ("keychain", s as Store))
            .map_err(|e| SecretsError::NoKeyring(e.to_string())),
        Some(other) => Err(SecretsError::UnknownBackend(other.into())),
    }
}

#[cfg(not(any(target_os = "linux", windows, target_os = "macos")))]
fn platform_store(_wanted: Option<&str>) -> Result<(&'static str, Store), SecretsError> {
    Err(SecretsError::NoKeyring("no keyring store for this platform".into()))
}

/// The name of the device key's systemd credential.
pub const CREDENTIAL: &str = "idlemesh-device-key";

/// The device key systemd handed this service as a credential, if any: 32
/// random bytes, raw or as 64 hex digits.
pub fn device_key_from_credential() -> Result<Option<Keypair>, SecretsError> {
    let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) else {
        return Ok(None);
    };
    let path = std::path::Path::new(&dir).join(CREDENTIAL);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SecretsError::Credential(format!("cannot read it: {e}"))),
    };
    let hex_digits = std::str::from_utf8(&bytes).map(str::trim).ok().filter(|t| t.len() == 64);
    let mut seed = [0u8; 32];
    match hex_digits {
        _ if bytes.len() == 32 => seed.copy_from_slice(&bytes),
        Some(t) => hex::decode_to_slice(t, &mut seed)
            // Not the decoder's message: it would quote a character of the key.
            .map_err(|_| SecretsError::Credential("64 characters but not hex digits".into()))?,
        None => {
            return Err(SecretsError::Credential(format!(
                "{} bytes; expected 32 random bytes, raw or as 64 hex digits",
                bytes.len()
            )));
        }
    }
    Ok(Some(Keypair::from_secret_bytes(&seed)))
}

/// The device key for `scope` (one per data dir, so side-by-side agents are
/// distinct devices): read from the keyring, or made and stored on first use.
pub fn device_key(scope: &str) -> Result<Keypair, SecretsError> {
    let user = format!("device-key:{scope}");
    let entry = Entry::new(SERVICE, &user)?;
    match entry.get_secret() {
        Ok(bytes) => {
            let seed: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| SecretsError::Damaged(format!("{} bytes instead of 32", bytes.len()), user.clone()))?;
            Ok(Keypair::from_secret_bytes(&seed))
        }
        Err(KeyringError::NoEntry) => {
            let key = Keypair::generate().map_err(|e| SecretsError::NoKeyring(e.to_string()))?;
            entry.set_secret(&key.secret_bytes())?;
            // Read back: a keyring that silently drops writes would make a new device each start.
            let back = entry.get_secret()?;
            if back.as_slice() != key.secret_bytes().as_slice() {
                return Err(SecretsError::Damaged("it did not keep what was written".into(), user));
            }
            tracing::info!(public_key = %key.public(), "made a new device key and stored it in the keyring");
            Ok(key)
        }
        Err(e) => Err(e.into()),
    }
}

/// Removes the device key for `scope`: the tests clean up the OS keyring
/// with it (the agent itself never forgets its key).
#[cfg(all(test, target_os = "linux"))]
pub fn forget_device_key(scope: &str) -> Result<(), SecretsError> {
    match Entry::new(SERVICE, &format!("device-key:{scope}"))?.delete_credential() {
        Ok(()) | Err(KeyringError::NoEntry) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A stable name for a data dir, to scope its device key.
pub fn scope_of(data_dir: &std::path::Path) -> String {
    let abs = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_owned());
    idlemesh_protocol::Sha256::of(abs.as_os_str().as_encoded_bytes()).to_string()[..16].to_string()
}

// These use the kernel keyring, which only Linux has.
#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Needs a writable kernel keyring: the session keyring of this process
    /// tree. Test runs that have none create one first (see `join_session_keyring`).
    #[test]
    fn device_key_round_trips_through_the_kernel_keyring() {
        join_session_keyring();
        // SAFETY: no other thread of this test reads the environment meanwhile.
        unsafe { std::env::set_var(KEYRING_ENV, "keyutils") };
        assert_eq!(use_os_keyring().unwrap(), "keyutils");
        let scope = format!("unit-test-{}", std::process::id());
        let a = device_key(&scope).unwrap();
        let b = device_key(&scope).unwrap();
        assert_eq!(a.public(), b.public(), "the same key comes back");
        let other = device_key(&format!("{scope}-other")).unwrap();
        assert_ne!(a.public(), other.public(), "each data dir is its own device");
        forget_device_key(&scope).unwrap();
        forget_device_key(&format!("{scope}-other")).unwrap();
        let c = device_key(&scope).unwrap();
        assert_ne!(a.public(), c.public(), "forgotten means a new device");
        forget_device_key(&scope).unwrap();
    }

    fn join_session_keyring() {
        // KEYCTL_JOIN_SESSION_KEYRING with no name: a fresh anonymous session
        // keyring for this process (and its children), as `keyctl session -` does.
        // SAFETY: a plain syscall with integer arguments.
        let r = unsafe { libc::syscall(libc::SYS_keyctl, 1, 0usize, 0usize, 0usize, 0usize) };
        assert!(r >= 0, "keyctl join session: {}", std::io::Error::last_os_error());
    }
}
