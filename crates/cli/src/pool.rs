//! `idlemesh pool serve`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use idlemesh_pool::trust::{Spread, TrustRules};
use idlemesh_pool::{Database, Pool, PoolConfig};
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
        /// Serve HTTPS with this PEM certificate chain (with --tls-key).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The certificate's PEM private key (with --tls-cert).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        #[command(flatten)]
        files: PoolFiles,
        /// The pool's signing key (created, 0600, if absent; default:
        /// pool.key in --data-dir). Every replica of a pool needs the same
        /// one: the database refuses a replica with another.
        #[arg(long)]
        key_file: Option<PathBuf>,
        #[arg(long, default_value = "Idlemesh pool")]
        name: String,
        #[arg(long, default_value = "unknown operator")]
        operator: String,
        /// Let any device join without an organisation's enrollment token
        /// (a public project). Off by default: devices need a token.
        #[arg(long)]
        open_enrollment: bool,
        /// Devices need an enrollment token (the default; kept for scripts).
        #[arg(long, hide = true, conflicts_with = "open_enrollment")]
        closed: bool,
        /// What two devices holding replicas of one task must not share:
        /// any of token, org, network (their source address's prefix), or none.
        #[arg(long, default_value = "token,org,network", value_parser = Spread::parse)]
        spread_replicas: Spread,
        /// The IPv4 prefix length that makes two addresses one network.
        #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u8).range(0..=32))]
        ipv4_prefix: u8,
        /// The IPv6 prefix length that makes two addresses one network.
        #[arg(long, default_value_t = 48, value_parser = clap::value_parser!(u8).range(0..=128))]
        ipv6_prefix: u8,
        /// Results of a device that a second device must confirm before one
        /// counts alone (each disagreement with a quorum adds ten); 0 trusts
        /// every result alone (a lab of one owner's machines).
        #[arg(long, default_value_t = 3)]
        checked_results: u64,
        /// What one credit is worth, where the pool pays (with --payout-currency);
        /// agents value their receipts with it.
        #[arg(long, requires = "payout_currency")]
        payout_per_credit: Option<f64>,
        /// The payout's currency code: EUR, USD...
        #[arg(long, requires = "payout_per_credit")]
        payout_currency: Option<String>,
    },
    /// Bring the pool's database to this version's schema and exit (`serve` also does it on start).
    Migrate {
        #[command(flatten)]
        files: PoolFiles,
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

/// A PostgreSQL URL may hold a password: from the environment (a systemd
/// `EnvironmentFile`, 0600), it stays out of the process list.
const DB_ENV: &str = "IDLEMESH_POOL_DB";

/// Where a pool keeps its key and its database (`serve` and `migrate`).
#[derive(clap::Args)]
struct PoolFiles {
    /// The database: a SQLite file (default: pool.sqlite in --data-dir), or a
    /// PostgreSQL URL (postgres://user@host/db) that any number of `pool
    /// serve` replicas share. Default: $IDLEMESH_POOL_DB if set.
    #[arg(long)]
    db: Option<String>,
    /// Where the pool keeps its key and, by default, its database (default: pool/ in the data dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl PoolFiles {
    /// The data dir and the database, with their defaults.
    fn resolve(self) -> anyhow::Result<(PathBuf, Database)> {
        let data_dir = self.data_dir.unwrap_or_else(|| idlemesh_agent::paths::data_dir().join("pool"));
        let db = match self.db.or_else(|| std::env::var(DB_ENV).ok().filter(|v| !v.is_empty())) {
            Some(db) => Database::parse(&db).map_err(|why| bad_input(format!("--db: {why}")))?,
            None => Database::Sqlite(data_dir.join("pool.sqlite")),
        };
        Ok((data_dir, db))
    }
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
    let (listen, tls, files, key_file, name, operator, open_enrollment, trust, payout) = match args.action {
        Action::Serve {
            listen,
            tls_cert,
            tls_key,
            files,
            key_file,
            name,
            operator,
            open_enrollment,
            closed: _,
            spread_replicas,
            ipv4_prefix,
            ipv6_prefix,
            checked_results,
            payout_per_credit,
            payout_currency,
        } => {
            let trust = TrustRules { spread: spread_replicas, ipv4_prefix, ipv6_prefix, checked_results };
            let tls = tls_cert.zip(tls_key);
            (
                listen,
                tls,
                files,
                key_file,
                name,
                operator,
                open_enrollment,
                trust,
                payout_per_credit.zip(payout_currency),
            )
        }
        Action::Org { action, client } => return orgs(action, client),
        Action::Token { action, client } => return tokens(action, client),
        Action::Migrate { files } => return migrate(files),
    };
    let addr: SocketAddr =
        listen.parse().map_err(|_| bad_input(format!("--listen {listen:?} is not an address like 127.0.0.1:8470")))?;
    let (data_dir, db) = files.resolve()?;
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
    let pool = Pool::open(PoolConfig {
        data_dir,
        database: Some(db),
        key_file,
        name,
        operator,
        operator_token,
        open_enrollment,
        trust,
        payout,
    })?;
    for line in trust_in_words(open_enrollment, &trust) {
        eprintln!("{line}");
    }
    let tls = tls
        .map(|(cert, key)| idlemesh_pool::Tls::from_pem_files(&cert, &key))
        .transpose()
        .map_err(|e| bad_input(format!("--tls-cert/--tls-key: {e}")))?;
    rustls::crypto::ring::default_provider().install_default().ok();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async move {
        let listener = std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        // The bound address, so `--listen 127.0.0.1:0` is usable; tests read this line.
        // As a policy pins it (`pool_public_key`), with its fingerprint.
        let key = pool.public_key();
        eprintln!("pool key ed25519:{key} ({}); listening on {scheme}://{}", key.fingerprint(), listener.local_addr()?);
        match tls {
            Some(tls) => pool.serve_tls(listener, tls).await.context("serving"),
            None => {
                listener.set_nonblocking(true)?;
                pool.serve(tokio::net::TcpListener::from_std(listener)?).await.context("serving")
            }
        }
    })
}

fn migrate(files: PoolFiles) -> anyhow::Result<()> {
    let (_, db) = files.resolve()?;
    if let Database::Sqlite(path) = &db
        && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let version = idlemesh_pool::migrate(&db).with_context(|| format!("migrating {db}"))?;
    println!("{db}: schema version {version}");
    Ok(())
}

/// What the pool's enrollment and trust settings mean, said at start.
fn trust_in_words(open_enrollment: bool, trust: &TrustRules) -> Vec<String> {
    let mut lines = Vec::new();
    if open_enrollment {
        lines.push(
            "open enrollment: anyone who can reach this pool can join it, run its jobs' tasks and report results; \
             one person can enroll many devices, so keep replication and the trust rules on"
                .to_owned(),
        );
    } else {
        lines.push("closed enrollment: devices join with an enrollment token (`pool token create`)".to_owned());
    }
    lines.push(format!(
        "replicas of one task never go to two devices sharing: {} (networks: IPv4 /{}, IPv6 /{})",
        trust.spread, trust.ipv4_prefix, trust.ipv6_prefix
    ));
    lines.push(if trust.checked_results == 0 {
        "every result counts alone where a job's quorum is 1: no device's results are checked by another".to_owned()
    } else {
        format!(
            "a device's first {} results are each confirmed by a second device before one counts alone; \
             each result that disagreed with a quorum adds {} more",
            trust.checked_results,
            idlemesh_pool::trust::DISAGREEMENT_COST
        )
    });
    lines
}

fn block_on<T, E: Into<anyhow::Error>>(f: impl std::future::Future<Output = Result<T, E>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f).map_err(Into::into)
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
