//! `idlemesh pool serve`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use idlemesh_pool::{Pool, PoolConfig};
use idlemesh_protocol::Keypair;
use idlemesh_protocol::api::{Payout, TokenCreate};

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
        /// What one credit is worth, where the pool pays (with --payout-currency);
        /// agents value their receipts with it.
        #[arg(long, requires = "payout_currency")]
        payout_per_credit: Option<f64>,
        /// The payout's currency code: EUR, USD...
        #[arg(long, requires = "payout_per_credit")]
        payout_currency: Option<String>,
    },
    /// Organisations: `org create NAME`, `org stats ID`.
    Org {
        #[command(subcommand)]
        action: OrgAction,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Enrollment tokens: `token create --org ID --expires 30d`, `token revoke ID`.
    Token {
        #[command(subcommand)]
        action: TokenAction,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(clap::Args)]
struct ClientArgs {
    /// The pool's base URL (default: $IDLEMESH_POOL_URL, else http://127.0.0.1:8470).
    /// The operator token comes from $IDLEMESH_OPERATOR_TOKEN.
    #[arg(long, global = true)]
    pool: Option<String>,
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum OrgAction {
    /// Create an organisation; prints its id.
    Create { name: String },
    /// The organisation's devices, their contribution, and its tokens.
    Stats { id: u64 },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Create an enrollment token for an organisation; prints the secret once.
    Create {
        #[arg(long)]
        org: u64,
        /// How long it may be used: 30d, 12h, 1w...
        #[arg(long, default_value = "30d")]
        expires: String,
        /// How many devices may enroll with it (default: any number).
        #[arg(long)]
        max_uses: Option<u64>,
        #[arg(long)]
        label: Option<String>,
    },
    /// Revoke a token: no new device can enroll with it.
    Revoke { id: u64 },
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let (listen, db, data_dir, name, operator, closed, payout) = match args.action {
        Action::Serve { listen, db, data_dir, name, operator, closed, payout_per_credit, payout_currency } => {
            (listen, db, data_dir, name, operator, closed, payout_per_credit.zip(payout_currency))
        }
        Action::Org { action, client } => return orgs(action, client),
        Action::Token { action, client } => return tokens(action, client),
    };
    let addr: SocketAddr =
        listen.parse().map_err(|_| bad_input(format!("--listen {listen:?} is not an address like 127.0.0.1:8470")))?;
    if db.as_ref().is_some_and(|d| d.to_string_lossy().starts_with("postgres://")) {
        return Err(bad_input("PostgreSQL storage is not in this build yet; use a SQLite path"));
    }
    let payout = payout
        .map(|(rate, currency)| Payout::new(rate, &currency))
        .transpose()
        .map_err(|e| bad_input(format!("--payout-per-credit/--payout-currency: {e}")))?;
    let operator_token = match std::env::var(OPERATOR_TOKEN_ENV) {
        Ok(t) if !t.is_empty() => t,
        _ => {
            let t = hex::encode(&Keypair::generate()?.secret_bytes()[..16]);
            eprintln!("{OPERATOR_TOKEN_ENV} is not set; this run's operator token is {t}");
            t
        }
    };
    let data_dir = data_dir.unwrap_or_else(|| idlemesh_agent::paths::data_dir().join("pool"));
    let pool = Pool::open(PoolConfig {
        data_dir,
        db_path: db,
        name,
        operator,
        operator_token,
        open_enrollment: !closed,
        payout,
    })?;
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        // The bound address, so `--listen 127.0.0.1:0` is usable; tests read this line.
        // As a policy pins it (`pool_public_key`), with its fingerprint.
        let key = pool.public_key();
        eprintln!("pool key ed25519:{key} ({}); listening on http://{}", key.fingerprint(), listener.local_addr()?);
        pool.serve(listener).await.context("serving")
    })
}

fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f)
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn orgs(action: OrgAction, args: ClientArgs) -> anyhow::Result<()> {
    let client = crate::operator::from_env(args.pool)?;
    match action {
        OrgAction::Create { name } => {
            if name.trim().is_empty() {
                return Err(bad_input("the organisation needs a name"));
            }
            let org = block_on(client.create_org(&name))?;
            if args.json {
                return print_json(&org);
            }
            println!("organisation {} {:?} created", org.org_id, org.name);
        }
        OrgAction::Stats { id } => {
            let s = block_on(client.org_stats(id))?;
            if args.json {
                return print_json(&s);
            }
            println!("organisation {} {:?}", s.org.org_id, s.org.name);
            println!(
                "{} devices, {} credits, {} valid and {} invalid results",
                s.devices.len(),
                s.credits,
                s.valid_results,
                s.invalid_results
            );
            for d in &s.devices {
                println!(
                    "  device {:>6}  {:>10.2} credits  {:>6} valid  {:>4} invalid",
                    d.device_id, d.credits, d.valid_results, d.invalid_results
                );
            }
            for t in &s.tokens {
                let state = match t.revoked_ms {
                    Some(_) => "revoked".to_owned(),
                    None if jiff::Timestamp::now().as_millisecond() >= t.expires_ms as i64 => "expired".to_owned(),
                    None => format!("expires {}", jiff::Timestamp::from_millisecond(t.expires_ms as i64)?),
                };
                let uses = t.max_uses.map_or(format!("{}", t.uses), |m| format!("{}/{m}", t.uses));
                println!("  token {:>6}  {state}  {uses} uses  {}", t.token_id, t.label.as_deref().unwrap_or(""));
            }
        }
    }
    Ok(())
}

fn tokens(action: TokenAction, args: ClientArgs) -> anyhow::Result<()> {
    let client = crate::operator::from_env(args.pool)?;
    match action {
        TokenAction::Create { org, expires, max_uses, label } => {
            let lifetime = humantime::parse_duration(&expires)
                .map_err(|e| bad_input(format!("--expires {expires:?}: {e} (say 30d, 12h, 1w)")))?;
            if max_uses == Some(0) {
                return Err(bad_input("--max-uses must be at least 1"));
            }
            let spec = TokenCreate { expires_in_s: lifetime.as_secs(), max_uses, label };
            let t = block_on(client.create_token(org, &spec))?;
            if args.json {
                return print_json(&t);
            }
            println!("{}", t.token);
            eprintln!(
                "enrollment token {} for organisation {}, valid until {}; put it in the devices' policy file. \
                 It is shown only now.",
                t.info.token_id,
                t.info.org_id,
                jiff::Timestamp::from_millisecond(t.info.expires_ms as i64)?
            );
        }
        TokenAction::Revoke { id } => {
            let t = block_on(client.revoke_token(id))?;
            if args.json {
                return print_json(&t);
            }
            println!("enrollment token {} revoked; devices already enrolled with it stay", t.token_id);
        }
    }
    Ok(())
}
