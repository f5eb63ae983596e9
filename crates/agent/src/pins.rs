//! The pool keys this device pinned when it first enrolled.
//!
//! Trust on first use, kept: once a device has enrolled with a pool, a pool
//! at that URL with another key is a different pool or a man in the middle,
//! and the agent stops rather than sending it anything more. Public keys
//! are not secrets, so the pins are a plain JSON file in the data dir,
//! written atomically (a crash leaves the old pins or the new ones).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use idlemesh_protocol::PublicKey;

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("cannot read the pinned pool keys in {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("cannot save the pinned pool keys in {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("pinned_pools.json")
}

/// The key pinned for `pool_url`, if any.
pub fn pinned(data_dir: &Path, pool_url: &str) -> Result<Option<PublicKey>, PinError> {
    Ok(read(data_dir)?.get(pool_url).copied())
}

/// Pins `key` for `pool_url` (first enrollment only: an existing pin is never replaced).
pub fn pin(data_dir: &Path, pool_url: &str, key: PublicKey) -> Result<(), PinError> {
    let mut pins = read(data_dir)?;
    if pins.contains_key(pool_url) {
        return Ok(());
    }
    pins.insert(pool_url.to_owned(), key);
    write(data_dir, &pins)
}

/// Every pool this device has enrolled with, and its pinned key.
pub fn all(data_dir: &Path) -> Result<BTreeMap<String, PublicKey>, PinError> {
    read(data_dir)
}

/// Forgets `pool_url`'s key (leaving the pool): joining it again trusts
/// whatever key it then shows, as on first enrollment.
pub fn unpin(data_dir: &Path, pool_url: &str) -> Result<(), PinError> {
    let mut pins = read(data_dir)?;
    if pins.remove(pool_url).is_some() {
        write(data_dir, &pins)?;
    }
    Ok(())
}

fn write(data_dir: &Path, pins: &BTreeMap<String, PublicKey>) -> Result<(), PinError> {
    let file = path(data_dir);
    let write = || -> std::io::Result<()> {
        let mut tmp = tempfile::NamedTempFile::new_in(data_dir)?;
        serde_json::to_writer_pretty(&mut tmp, pins)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&file)?;
        Ok(())
    };
    write().map_err(|source| PinError::Write { path: path(data_dir), source })
}

fn read(data_dir: &Path) -> Result<BTreeMap<String, PublicKey>, PinError> {
    let file = path(data_dir);
    match std::fs::read(&file) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| PinError::Read { path: file, reason: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(PinError::Read { path: file, reason: e.to_string() }),
    }
}

#[cfg(test)]
mod tests {
    use idlemesh_protocol::Keypair;

    use super::*;

    #[test]
    fn the_first_key_stays_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Keypair::generate().unwrap().public(), Keypair::generate().unwrap().public());
        assert_eq!(pinned(dir.path(), "http://p").unwrap(), None);
        pin(dir.path(), "http://p", a).unwrap();
        pin(dir.path(), "http://p", b).unwrap();
        pin(dir.path(), "http://q", b).unwrap();
        assert_eq!(pinned(dir.path(), "http://p").unwrap(), Some(a));
        assert_eq!(pinned(dir.path(), "http://q").unwrap(), Some(b));
        unpin(dir.path(), "http://p").unwrap();
        assert_eq!(all(dir.path()).unwrap().into_keys().collect::<Vec<_>>(), ["http://q"]);
        pin(dir.path(), "http://p", b).unwrap();
        assert_eq!(pinned(dir.path(), "http://p").unwrap(), Some(b), "a left pool is trusted anew");
        std::fs::write(path(dir.path()), "not json").unwrap();
        assert!(matches!(pinned(dir.path(), "http://p"), Err(PinError::Read { .. })));
    }
}
