//! The Idlemesh reference pool server.
//!
//! A pool takes jobs from its operator, splits them into tasks, leases task
//! replicas to enrolled devices with signed manifests, accepts results when a
//! quorum of output hashes agrees, signs receipts for the credit, and combines
//! task outputs into the job's output. Everything is stored in one SQLite
//! file, or in a PostgreSQL database that several pool replicas share.
//!
//! **Owns** the pool's side of the HTTP API, its storage and its decisions
//! (the quorum in `judgement.rs`, the trust rules in [`trust`]). **Must
//! not** hold state a second replica of the same pool would need (all of
//! it is in the database), or run kernels.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use idlemesh_pool::{Pool, PoolConfig};
//! let pool = Pool::open(PoolConfig::new("/var/lib/idlemesh-pool".into()))?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8470").await?;
//! pool.serve(listener).await?;
//! # Ok(()) }
//! ```

mod auth;
pub mod client;
mod combine;
mod db;
pub mod demo;
mod error;
mod http;
mod judgement;
mod keys;
mod metrics;
mod split;
mod store;
#[cfg(any(test, feature = "test-cluster"))]
#[doc(hidden)]
pub mod test_cluster;
pub mod trust;
mod writer;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use idlemesh_protocol::{Keypair, PublicKey};

pub use error::PoolError;

/// Where a pool keeps its state. (`Debug` and `Display` hide a URL's password.)
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// One SQLite file: the embedded default, for one pool process.
    Sqlite(PathBuf),
    /// A PostgreSQL URL (`postgres://user@host/db`): any number of pool
    /// replicas may share it.
    Postgres(String),
}

impl Database {
    /// A `postgres://` (or `postgresql://`) URL, else a SQLite file's path;
    /// an empty value or a URL of another kind is refused, saying why.
    pub fn parse(db: &str) -> Result<Self, BadDatabase> {
        if db.trim().is_empty() {
            return Err(BadDatabase::Empty);
        }
        if db::is_postgres_url(db) {
            return Ok(Self::Postgres(db.to_owned()));
        }
        if let Some((scheme, _)) = db.split_once("://") {
            return Err(BadDatabase::Scheme(scheme.to_owned()));
        }
        Ok(Self::Sqlite(PathBuf::from(db)))
    }
}

/// A `--db` value that names no database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadDatabase {
    #[error("the database is empty")]
    Empty,
    #[error("{0:?}: a database URL starts with postgres:// (any other value is a SQLite file's path)")]
    Scheme(String),
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Self::Postgres(url) => f.debug_tuple("Postgres").field(&db::redact_password(url)).finish(),
        }
    }
}

impl std::fmt::Display for Database {
    /// A URL's password is not shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "{}", path.display()),
            Self::Postgres(url) => f.write_str(&db::redact_password(url)),
        }
    }
}

/// Connections a pool replica keeps to PostgreSQL (one writer thread each):
/// two record results, three run everything else.
const POSTGRES_CONNECTIONS: usize = 5;
/// Operations sharing one transaction: many on SQLite (one writer, commits
/// are what costs); on PostgreSQL only leases, which never wait on a row
/// lock (a transaction holds its row locks until it commits, and other
/// replicas wait on them: writer.rs), and results, recorded together by
/// statements that each serve the whole batch (store/results.rs).
const SQLITE_BATCHES: writer::Batches = writer::Batches { any: 256, skipping_locks: None, results: None };
const POSTGRES_BATCHES: writer::Batches =
    writer::Batches { any: 1, skipping_locks: Some(16), results: Some(writer::ResultBatches { threads: 2, max: 16 }) };

/// How a pool is set up.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Holds the pool's key (`pool.key`, 0600) unless `key_file` is given.
    pub data_dir: PathBuf,
    /// The database; defaults to `pool.sqlite` in `data_dir`.
    pub database: Option<Database>,
    /// The pool's signing key, shared by all replicas of a pool (created,
    /// 0600, if absent); without it, `data_dir/pool.key`. The database
    /// records the pool's public key at first start and refuses a replica
    /// with another.
    pub key_file: Option<PathBuf>,
    pub name: String,
    pub operator: String,
    /// Bearer token for operator endpoints (jobs, blobs).
    pub operator_token: String,
    /// Whether devices may enroll without an enrollment token.
    pub open_enrollment: bool,
    /// What keeps one person from making a quorum.
    pub trust: trust::TrustRules,
    /// What a credit is worth, where the pool pays (shown in `/v1/info`).
    pub payout: Option<idlemesh_protocol::api::Payout>,
}

impl PoolConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            database: None,
            key_file: None,
            name: "Idlemesh pool".into(),
            operator: "unknown operator".into(),
            operator_token: String::new(),
            // The safe side: tokens to join, replicas spread, trust earned.
            open_enrollment: false,
            trust: trust::TrustRules::default(),
            payout: None,
        }
    }
}

/// A pool: its key, its database and its configuration.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    config: PoolConfig,
    key: Arc<Keypair>,
    store: writer::StoreWriter,
    /// Device keys never change once enrolled: verify requests without a database trip.
    device_keys: RwLock<HashMap<u64, PublicKey>>,
    /// Per replica: N replicas allow a device N times the rate (docs/architecture.md).
    lease_rate: auth::LeaseRate,
    metrics: Arc<metrics::Replica>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("name", &self.inner.config.name).field("key", &self.inner.key.public()).finish()
    }
}

impl Pool {
    /// Opens (or creates) the pool's key and database, applying migrations.
    pub fn open(config: PoolConfig) -> Result<Self, PoolError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| PoolError::Io { path: config.data_dir.clone(), source })?;
        let key_file = config.key_file.clone().unwrap_or_else(|| config.data_dir.join("pool.key"));
        let key = keys::load_or_create(&key_file)?;
        let database = config.database.clone().unwrap_or_else(|| Database::Sqlite(config.data_dir.join("pool.sqlite")));
        let (connections, batch) = match &database {
            Database::Sqlite(_) => (1, SQLITE_BATCHES),
            Database::Postgres(_) => (POSTGRES_CONNECTIONS, POSTGRES_BATCHES),
        };
        // The first connection migrates and checks the pool's identity; the others only connect.
        let mut first = open_store(&database, config.trust)?;
        first.claim_identity(&key.public(), now_ms()).map_err(|e| PoolError::Storage(e.to_string()))?;
        let mut stores: Vec<store::Store> = vec![first];
        for _ in 1..connections {
            stores.push(store::Store::on_migrated(connect(&database)?, config.trust));
        }
        let metrics = Arc::new(metrics::Replica::default());
        let store = writer::StoreWriter::start(stores, batch, metrics.clone())
            .map_err(|source| PoolError::Io { path: config.data_dir.clone(), source })?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                key: Arc::new(key),
                store,
                device_keys: RwLock::default(),
                lease_rate: auth::LeaseRate::default(),
                metrics,
            }),
        })
    }

    pub fn public_key(&self) -> PublicKey {
        self.inner.key.public()
    }

    /// The axum router of the HTTP API (DESIGN §5).
    pub fn router(&self) -> axum::Router {
        http::router(self.clone())
    }

    /// Stores a blob (a kernel, an input) in-process, as `PUT /v1/blobs` would.
    pub async fn put_blob(&self, bytes: Vec<u8>) -> Result<idlemesh_protocol::Sha256, PoolError> {
        self.inner.store.run(move |s| s.put_blob(&bytes)).await.map_err(|e| PoolError::Storage(e.to_string()))
    }

    /// Creates a job in-process, as `POST /v1/jobs` would: for an embedding
    /// app (the tray app's demo pool), which has no operator token to send.
    pub async fn submit(
        &self,
        spec: idlemesh_protocol::api::JobSpec,
    ) -> Result<idlemesh_protocol::api::JobCreated, PoolError> {
        let seeds = split::expand(&spec).map_err(PoolError::BadJob)?;
        let tasks = seeds.len() as u64;
        let job_id = self
            .inner
            .store
            .run(move |s| s.create_job(&spec, &seeds, now_ms()))
            .await
            .map_err(|e| PoolError::Storage(e.to_string()))?;
        Ok(idlemesh_protocol::api::JobCreated { job_id, tasks })
    }

    /// Serves the API until the listener fails.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        // The peer's address is the device's network for the trust rules.
        axum::serve(listener, self.router().into_make_service_with_connect_info::<std::net::SocketAddr>()).await
    }

    /// Serves the API over HTTPS (TLS 1.2 and 1.3, rustls) until the listener fails.
    pub async fn serve_tls(self, listener: std::net::TcpListener, tls: Tls) -> std::io::Result<()> {
        listener.set_nonblocking(true)?;
        let config = axum_server::tls_rustls::RustlsConfig::from_config(tls.0);
        axum_server::tls_rustls::from_tcp_rustls(listener, config)?
            .serve(self.router().into_make_service_with_connect_info::<std::net::SocketAddr>())
            .await
    }
}

/// Brings the database up to this build's schema (creating a SQLite file if
/// absent), as `Pool::open` also does; returns the schema version.
pub fn migrate(database: &Database) -> Result<u32, PoolError> {
    let store = open_store(database, trust::TrustRules::default())?;
    Ok(store.schema_version())
}

/// A store on `database`, its schema brought up to date.
fn open_store(database: &Database, trust: trust::TrustRules) -> Result<store::Store, PoolError> {
    store::Store::open(connect(database)?, trust).map_err(|e| PoolError::Db(e.to_string()))
}

fn connect(database: &Database) -> Result<Box<dyn db::Db>, PoolError> {
    let db: Box<dyn db::Db> = match database {
        Database::Sqlite(path) => Box::new(db::Sqlite::open(path).map_err(|e| PoolError::Db(e.to_string()))?),
        Database::Postgres(url) => Box::new(db::Postgres::connect(url).map_err(|e| PoolError::Db(e.to_string()))?),
    };
    Ok(db)
}

/// A pool's TLS certificate chain and key, checked when loaded.
#[derive(Debug, Clone)]
pub struct Tls(Arc<rustls::ServerConfig>);

impl Tls {
    /// Reads a PEM certificate chain (the server's certificate first) and
    /// its PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(cert: &std::path::Path, key: &std::path::Path) -> Result<Self, PoolError> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |path: &std::path::Path, why: String| PoolError::Tls(format!("{}: {why}", path.display()));
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| bad(cert, e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| bad(cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(bad(cert, "no PEM certificate in it".into()));
        }
        let key_der =
            PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, format!("no usable PEM private key: {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| PoolError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .map_err(|e| bad(cert, format!("the certificate and the key do not go together: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self(Arc::new(config)))
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::Database;

    #[test]
    fn a_database_is_a_postgresql_url_or_a_sqlite_path() {
        assert_eq!(Database::parse("postgresql://pool@db/x"), Ok(Database::Postgres("postgresql://pool@db/x".into())));
        assert_eq!(Database::parse("/var/lib/pool.sqlite"), Ok(Database::Sqlite("/var/lib/pool.sqlite".into())));
        assert!(Database::parse("mysql://db/x").unwrap_err().to_string().contains("postgres://"));
        assert!(Database::parse(" ").is_err());
    }
}
