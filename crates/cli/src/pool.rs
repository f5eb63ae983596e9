//! `idlemesh pool serve`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use idlemesh_pool::{Pool, PoolConfig};
use idlemesh_protocol::Keypair;

use crate::exit::bad_input;

/// The operator token comes from the environment, never from a command line
/// that other users can read in the process list.
const OPERATOR_TOKEN_ENV: &str = "IDLEMESH_OPERATOR_TOKEN";

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Run the reference pool server.
    Serve {
        #[arg(long, default_value = "127.0.0.1:8470")]
        listen: String,
        /// The SQLite database (default: pool.sqlite in --data-dir).
        #[arg(long)]
        db: Option<PathBuf>,
        /// Where the pool keeps its key (default: pool/ in the data dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long, default_value = "Idlemesh pool")]
        name: String,
        #[arg(long, default_value = "unknown operator")]
        operator: String,
        /// Only devices with an enrollment token may join.
        #[arg(long)]
        closed: bool,
    },
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let Action::Serve { listen, db, data_dir, name, operator, closed } = args.action;
    let addr: SocketAddr =
        listen.parse().map_err(|_| bad_input(format!("--listen {listen:?} is not an address like 127.0.0.1:8470")))?;
    if db.as_ref().is_some_and(|d| d.to_string_lossy().starts_with("postgres://")) {
        return Err(bad_input("PostgreSQL storage is not in this build yet; use a SQLite path"));
    }
    let operator_token = match std::env::var(OPERATOR_TOKEN_ENV) {
        Ok(t) if !t.is_empty() => t,
        _ => {
            let t = hex::encode(&Keypair::generate()?.secret_bytes()[..16]);
            eprintln!("{OPERATOR_TOKEN_ENV} is not set; this run's operator token is {t}");
            t
        }
    };
    let data_dir = data_dir.unwrap_or_else(|| idlemesh_agent::paths::data_dir().join("pool"));
    let pool =
        Pool::open(PoolConfig { data_dir, db_path: db, name, operator, operator_token, open_enrollment: !closed })?;
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        // The bound address, so `--listen 127.0.0.1:0` is usable; tests read this line.
        eprintln!("pool key {}; listening on http://{}", pool.public_key(), listener.local_addr()?);
        pool.serve(listener).await.context("serving")
    })
}
