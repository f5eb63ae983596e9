//! The pool's signing key: generated at first start, kept with 0600 permissions.

use std::fs;
use std::io::Write as _;
use std::path::Path;

use idlemesh_protocol::Keypair;

use crate::PoolError;

pub(crate) fn load_or_create(path: &Path) -> Result<Keypair, PoolError> {
    let io = |source| PoolError::Io { path: path.to_owned(), source };
    match fs::read(path) {
        Ok(bytes) => {
            let seed: [u8; 32] = bytes.try_into().map_err(|_| PoolError::BadKeyFile { path: path.to_owned() })?;
            Ok(Keypair::from_secret_bytes(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate()?;
            let mut options = fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options.open(path).map_err(io)?;
            f.write_all(&key.secret_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.key");
        let a = load_or_create(&path).unwrap();
        let b = load_or_create(&path).unwrap();
        assert_eq!(a.public(), b.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        fs::write(&path, b"short").unwrap();
        assert!(matches!(load_or_create(&path), Err(PoolError::BadKeyFile { .. })));
    }
}
