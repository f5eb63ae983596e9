use std::path::PathBuf;

/// Errors opening or running a pool (not per-request errors: see `http`).
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pool key file {path} is malformed (want 32 bytes)")]
    BadKeyFile { path: PathBuf },
    #[error("pool database: {0}")]
    Db(String),
    #[error("{0}")]
    Protocol(#[from] idlemesh_protocol::ProtocolError),
    #[error("job spec: {0}")]
    BadJob(String),
    #[error("pool storage: {0}")]
    Storage(String),
    #[error("TLS: {0}")]
    Tls(String),
}
