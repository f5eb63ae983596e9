//! Compiled components on local disk, keyed by the kernel's SHA-256 and the
//! engine's compatibility hash (wasmtime version and every setting that
//! changes code generation).
//!
//! Only artifacts this process compiled itself are ever loaded: the directory
//! is private to the user, and nothing from the network is written into it
//! except through [`ArtifactCache::store`] after a local compile.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use idlemesh_protocol::Sha256;
use wasmtime::Engine;
use wasmtime::component::Component;

#[derive(Debug)]
pub(crate) struct ArtifactCache {
    dir: PathBuf,
    engine_hash: u64,
}

/// Makes `dir` (and its parents) if needed, private to the user. A
/// directory already private is left as it is: a locked-down worker may
/// create directories in its cache, but not change modes.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        if fs::metadata(dir)?.permissions().mode() & 0o777 != 0o700 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        fs::create_dir_all(dir)
    }
}

impl ArtifactCache {
    pub fn open(dir: &Path, engine: &Engine) -> std::io::Result<Self> {
        private_dir(dir)?;
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        // The artifact is of the rewritten kernel: a new rewrite, a new key.
        crate::nan_canon::VERSION.hash(&mut h);
        Ok(Self { dir: dir.to_owned(), engine_hash: h.finish() })
    }

    fn path(&self, sha: &Sha256) -> PathBuf {
        self.dir.join(format!("{sha}-{:016x}.cwasm", self.engine_hash))
    }

    pub fn load(&self, engine: &Engine, sha: &Sha256) -> Option<Component> {
        let path = self.path(sha);
        if !path.exists() {
            return None;
        }
        // SAFETY: the file was written by `store` below from a component this
        // agent compiled locally, in a directory only this user can write;
        // wasmtime checks its header against the engine before using it.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "dropping unusable compiled artifact");
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    /// Writes atomically (temp file, fsync, rename) so a crash never leaves a
    /// half-written artifact under the final name.
    pub fn store(&self, sha: &Sha256, component: &Component) {
        let result = (|| -> std::io::Result<()> {
            let bytes = component.serialize().map_err(std::io::Error::other)?;
            let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
            tmp.write_all(&bytes)?;
            tmp.as_file().sync_all()?;
            tmp.persist(self.path(sha)).map(drop).map_err(|e| e.error)
        })();
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not cache a compiled kernel");
        }
    }
}
