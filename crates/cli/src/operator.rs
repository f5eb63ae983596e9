//! The pool operator's client, from the environment. The client itself is
//! `idlemesh_pool::client` (the end-to-end tests use it too).

pub use idlemesh_pool::client::OperatorClient;

const POOL_ENV: &str = "IDLEMESH_POOL_URL";
const TOKEN_ENV: &str = "IDLEMESH_OPERATOR_TOKEN";

/// The pool from `--pool`, else `$IDLEMESH_POOL_URL`, else the local default;
/// the operator token only from `$IDLEMESH_OPERATOR_TOKEN`, never from a
/// command line other users can read in the process list.
pub fn from_env(pool: Option<String>) -> anyhow::Result<OperatorClient> {
    let pool = pool.or_else(|| std::env::var(POOL_ENV).ok()).unwrap_or_else(|| "http://127.0.0.1:8470".into());
    let token = std::env::var(TOKEN_ENV)
        .ok()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| crate::exit::bad_input(format!("set {TOKEN_ENV} to the pool's operator token")))?;
    Ok(OperatorClient::new(&pool, &token)?)
}
