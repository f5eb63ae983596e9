//! PostgreSQL: the database several `pool serve` replicas share.
//!
//! The store is synchronous and runs on the writer's own threads (writer.rs),
//! so each connection owns a current-thread tokio runtime and waits on each
//! statement. Connecting and statements therefore must not happen on an
//! async task's thread; [`Postgres::connect`] makes its own thread for that.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::error::Error as StdError;
use std::time::Duration;

use bytes::BytesMut;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, Config, NoTls, Statement};

use super::{Db, DbError, Dialect, Row, Value};

type BoxError = Box<dyn StdError + Sync + Send>;

pub(crate) struct Postgres {
    rt: tokio::runtime::Runtime,
    config: Config,
    client: Client,
    /// Prepared once per connection: PostgreSQL plans a prepared statement
    /// once and reuses the plan.
    statements: RefCell<HashMap<String, Statement>>,
    in_transaction: Cell<bool>,
    /// A `BEGIN` not sent yet: it goes with the transaction's first statement.
    begin_pending: Cell<bool>,
    lone: Cell<bool>,
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        if e.is_closed() {
            return DbError::Closed(e.to_string());
        }
        match e.as_db_error() {
            Some(db) => DbError::Postgres { message: db.message().to_owned(), code: Some(db.code().code().to_owned()) },
            // "error connecting to server: Connection refused (os error 111)"
            None => {
                let mut message = e.to_string();
                let mut cause = e.source();
                while let Some(c) = cause {
                    message = format!("{message}: {c}");
                    cause = c.source();
                }
                DbError::Postgres { message, code: None }
            }
        }
    }
}

/// `postgres://…` (or `postgresql://…`) names a PostgreSQL database.
pub(crate) fn is_url(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

/// The URL with its password (if any, after the user or as a `password`
/// parameter) replaced, for messages and logs.
pub(crate) fn redact_password(url: &str) -> String {
    let url = match url.split_once('?') {
        Some((base, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| if kv.starts_with("password=") { "password=***".to_owned() } else { kv.to_owned() })
                .collect();
            format!("{base}?{}", query.join("&"))
        }
        None => url.to_owned(),
    };
    let url = url.as_str();
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

impl Postgres {
    /// Connects to `url` (`postgres://user:password@host:port/db`, or a
    /// Unix socket directory as `?host=/dir`).
    pub fn connect(url: &str) -> Result<Self, DbError> {
        let mut config: Config =
            url.parse().map_err(|e: tokio_postgres::Error| DbError::Postgres { message: format!("the database URL: {e}"), code: None })?;
        config.connect_timeout(Duration::from_secs(5));
        config.application_name("idlemesh-pool");
        // Off any async task's thread: the runtime here cannot run inside another.
        std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| {
                    DbError::Postgres { message: format!("starting the database thread's runtime: {e}"), code: None }
                })?;
                let client = open(&rt, &config)?;
                Ok(Self {
                    rt,
                    config: config.clone(),
                    client,
                    statements: RefCell::default(),
                    in_transaction: Cell::default(),
                    begin_pending: Cell::default(),
                    lone: Cell::default(),
                })
            })
            .join()
            .unwrap_or_else(|_| Err(DbError::Postgres { message: "connecting panicked".into(), code: None }))
        })
    }

    /// `work`, preceded by the transaction's `BEGIN` if that is still to
    /// be sent: both go out before either answer is awaited (one round
    /// trip, not two). The client sends requests in the order they are
    /// first polled, and `join!` polls left to right.
    async fn after_begin<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, tokio_postgres::Error> {
        if !self.begin_pending.replace(false) {
            return work.await;
        }
        let (began, done) = tokio::join!(self.client.batch_execute("BEGIN"), work);
        began?;
        done
    }

    fn end(&self, how: &str) -> Result<(), DbError> {
        self.in_transaction.set(false);
        self.lone.set(false);
        if self.begin_pending.replace(false) {
            return Ok(()); // nothing was sent: nothing to end
        }
        Ok(self.rt.block_on(self.client.batch_execute(how))?)
    }

    fn statement(&self, sql: &str) -> Result<Statement, DbError> {
        if let Some(s) = self.statements.borrow().get(sql) {
            return Ok(s.clone());
        }
        let statement = self.rt.block_on(self.client.prepare(&numbered(sql)))?;
        self.statements.borrow_mut().insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

fn open(rt: &tokio::runtime::Runtime, config: &Config) -> Result<Client, DbError> {
    let (client, connection) = rt.block_on(config.connect(NoTls))?;
    // Driven whenever this thread waits on a statement.
    rt.spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "the database connection ended");
        }
    });
    // Plan each prepared statement once, not per execution. By default
    // PostgreSQL re-plans a statement for its parameters until it trusts
    // a generic plan, and it never came to trust the lease query's:
    // planning took as long as running it (pg_stat_statements: 0.42 ms of
    // 0.85 ms a lease; docs/benchmarks.md). Generic plans are remade when
    // the tables' statistics change, which creating a job refreshes
    // (Dialect::refresh_statistics).
    //
    // And join by looking rows up, never by merging or hashing whole
    // tables: every statement here touches a handful of rows, but generic
    // plans merged the lease's candidates with the tasks table walked from
    // its first row, slower the longer a job ran (docs/benchmarks.md).
    rt.block_on(client.batch_execute(
        "SET plan_cache_mode = force_generic_plan; SET enable_mergejoin = off; SET enable_hashjoin = off",
    ))?;
    Ok(client)
}

/// `?1` → `$1`: the store's statements are written in SQLite's numbering.
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match (self, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Int(v), &Type::INT8) => v.to_sql(ty, out),
            (Value::Int(v), &Type::INT4) => i32::try_from(*v)?.to_sql(ty, out),
            (Value::Int(v), &Type::INT2) => i16::try_from(*v)?.to_sql(ty, out),
            (Value::Int(v), &Type::BOOL) => (*v != 0).to_sql(ty, out),
            (Value::Int(v), &Type::FLOAT8) => (*v as f64).to_sql(ty, out),
            (Value::Real(v), &Type::FLOAT8) => v.to_sql(ty, out),
            (Value::Text(s), _) => s.as_str().to_sql(ty, out),
            (Value::Blob(b), &Type::BYTEA) => b.as_slice().to_sql(ty, out),
            (v, ty) => Err(format!("cannot bind {v:?} to a parameter of type {ty}").into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for Value {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(match *ty {
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Value::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT2 => Value::Int(i16::from_sql(ty, raw)?.into()),
            Type::BOOL => Value::Int(bool::from_sql(ty, raw)?.into()),
            Type::FLOAT8 => Value::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => Value::Real(f32::from_sql(ty, raw)?.into()),
            Type::BYTEA => Value::Blob(<Vec<u8>>::from_sql(ty, raw)?),
            _ => Value::Text(String::from_sql(ty, raw)?),
        })
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(Value::Null)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::INT8 | Type::INT4 | Type::INT2 | Type::BOOL | Type::FLOAT8 | Type::FLOAT4 | Type::BYTEA)
            || <String as FromSql>::accepts(ty)
    }
}

fn refs(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

impl Db for Postgres {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn execute(&self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        let statement = self.statement(sql)?;
        let params = refs(params);
        Ok(self.rt.block_on(self.after_begin(self.client.execute(&statement, &params)))?)
    }

    fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError> {
        let statement = self.statement(sql)?;
        let params = refs(params);
        let rows = self.rt.block_on(self.after_begin(self.client.query(&statement, &params)))?;
        rows.iter()
            .map(|r| Ok(Row((0..r.len()).map(|i| r.try_get::<_, Value>(i)).collect::<Result<_, _>>()?)))
            .collect()
    }

    fn batch(&self, sql: &str) -> Result<(), DbError> {
        Ok(self.rt.block_on(self.after_begin(self.client.batch_execute(sql)))?)
    }

    fn begin(&self) -> Result<(), DbError> {
        self.begin_pending.set(true);
        self.in_transaction.set(true);
        self.lone.set(false);
        Ok(())
    }

    fn begin_lone(&self) -> Result<(), DbError> {
        self.begin()?;
        self.lone.set(true);
        Ok(())
    }

    fn lone(&self) -> bool {
        self.lone.get()
    }

    fn commit(&self) -> Result<(), DbError> {
        self.end("COMMIT")
    }

    fn rollback(&self) -> Result<(), DbError> {
        self.end("ROLLBACK")
    }

    fn in_transaction(&self) -> bool {
        self.in_transaction.get()
    }

    // A database that restarted, or a connection a proxy cut: connect again
    // before the next transaction rather than fail every request.
    fn reconnect_if_closed(&mut self) -> Result<(), DbError> {
        if self.client.is_closed() {
            tracing::warn!("the database connection was closed; connecting again");
            self.client = open(&self.rt, &self.config)?;
            self.statements.borrow_mut().clear();
            self.in_transaction.set(false);
            self.begin_pending.set(false);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(super::redact_password("postgres://pool:s3cret@db:5432/idlemesh"), "postgres://pool:***@db:5432/idlemesh");
        assert_eq!(super::redact_password("postgres://pool@db/idlemesh"), "postgres://pool@db/idlemesh");
        assert_eq!(super::redact_password("postgresql:///idlemesh?host=/run/pg"), "postgresql:///idlemesh?host=/run/pg");
        assert_eq!(
            super::redact_password("postgresql:///idlemesh?user=pool&password=s3cret&host=/run/pg"),
            "postgresql:///idlemesh?user=pool&password=***&host=/run/pg"
        );
    }

    #[test]
    fn parameters_are_renumbered_for_postgresql() {
        assert_eq!(super::numbered("SELECT ?1, ?12 WHERE a = '?' AND b = ?"), "SELECT $1, $12 WHERE a = '?' AND b = ?");
    }
}
