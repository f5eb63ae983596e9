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
    /// The pending `BEGIN` also makes the commit not wait for the disk
    /// (one message, not a statement of its own).
    begin_relaxed: Cell<bool>,
    /// Statements deferred ([`Db::defer`]): they go with the next one.
    deferred: RefCell<Vec<(Statement, Vec<Value>)>>,
    lone: Cell<bool>,
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        if e.is_closed() {
            return DbError::Closed(e.to_string());
        }
        match e.as_db_error() {
            Some(db) => DbError::Postgres {
                message: db.message().to_owned(),
                code: Some(db.code().code().to_owned()),
                constraint: db.constraint().map(str::to_owned),
            },
            // "error connecting to server: Connection refused (os error 111)"
            None => {
                let mut message = e.to_string();
                let mut cause = e.source();
                while let Some(c) = cause {
                    message = format!("{message}: {c}");
                    cause = c.source();
                }
                DbError::postgres(message)
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
            url.parse().map_err(|e: tokio_postgres::Error| DbError::postgres(format!("the database URL: {e}")))?;
        config.connect_timeout(Duration::from_secs(5));
        config.application_name("idlemesh-pool");
        // Off any async task's thread: the runtime here cannot run inside another.
        std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| DbError::postgres(format!("starting the database thread's runtime: {e}")))?;
                let client = open(&rt, &config)?;
                Ok(Self {
                    rt,
                    config: config.clone(),
                    client,
                    statements: RefCell::default(),
                    in_transaction: Cell::default(),
                    begin_pending: Cell::default(),
                    begin_relaxed: Cell::default(),
                    deferred: RefCell::default(),
                    lone: Cell::default(),
                })
            })
            .join()
            .unwrap_or_else(|_| Err(DbError::postgres("connecting panicked".into())))
        })
    }

    /// `work`, preceded by what is still to be sent of the transaction: its
    /// `BEGIN` and the deferred statements. All go out before any answer is
    /// awaited (one round trip, not several): the client sends requests in
    /// the order they are first polled, and `join!` and `join_all` poll in
    /// order. The first error in that order is the one returned: after it
    /// the transaction is aborted and the later statements fail for that.
    async fn pipelined<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, DbError> {
        let begin = self.begin_pending.replace(false);
        let deferred = std::mem::take(&mut *self.deferred.borrow_mut());
        if !begin && deferred.is_empty() {
            return Ok(work.await?);
        }
        let begin_sql = match self.begin_relaxed.replace(false) {
            true => "BEGIN; SET LOCAL synchronous_commit = off",
            false => "BEGIN",
        };
        let began = async { if begin { self.client.batch_execute(begin_sql).await } else { Ok(()) } };
        let deferred = futures_util::future::join_all(deferred.iter().map(|(statement, params)| {
            let params = refs(params);
            async move { self.client.execute(statement, &params).await }
        }));
        let (began, deferred, done) = tokio::join!(began, deferred, work);
        began?;
        for d in deferred {
            d?;
        }
        Ok(done?)
    }

    fn end(&self, how: &str) -> Result<(), DbError> {
        self.in_transaction.set(false);
        self.begin_relaxed.set(false);
        self.lone.set(false);
        if how == "ROLLBACK" {
            self.deferred.borrow_mut().clear();
        }
        if self.begin_pending.get() && self.deferred.borrow().is_empty() {
            self.begin_pending.set(false);
            return Ok(()); // nothing was sent: nothing to end
        }
        self.rt.block_on(self.pipelined(self.client.batch_execute(how)))
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
    //
    // And never compile a statement to machine code: a generic plan's cost
    // is estimated for the whole queue, which crossed the JIT threshold,
    // and compiling took 33 ms of a 28 ms lease query (auto_explain).
    rt.block_on(client.batch_execute(
        "SET plan_cache_mode = force_generic_plan; SET enable_mergejoin = off; SET enable_hashjoin = off; SET jit = off",
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

fn rows(rows: &[tokio_postgres::Row]) -> Result<Vec<Row>, DbError> {
    rows.iter().map(|r| Ok(Row((0..r.len()).map(|i| r.try_get::<_, Value>(i)).collect::<Result<_, _>>()?))).collect()
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
        self.rt.block_on(self.pipelined(self.client.execute(&statement, &params)))
    }

    fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError> {
        let statement = self.statement(sql)?;
        let params = refs(params);
        rows(&self.rt.block_on(self.pipelined(self.client.query(&statement, &params)))?)
    }

    fn defer(&self, sql: &str, params: &[Value]) -> Result<(), DbError> {
        if !self.in_transaction.get() {
            return self.execute(sql, params).map(drop); // no commit would send it
        }
        let statement = self.statement(sql)?;
        self.deferred.borrow_mut().push((statement, params.to_vec()));
        Ok(())
    }

    fn query_all(&self, queries: &[(&str, &[Value])]) -> Result<Vec<Vec<Row>>, DbError> {
        let statements = queries.iter().map(|(sql, _)| self.statement(sql)).collect::<Result<Vec<_>, _>>()?;
        let all = futures_util::future::join_all(statements.iter().zip(queries).map(|(statement, (_, params))| {
            let params = refs(params);
            async move { self.client.query(statement, &params).await }
        }));
        // One future for `pipelined`: the first error in order wins.
        let all = async { all.await.into_iter().collect::<Result<Vec<_>, _>>() };
        self.rt.block_on(self.pipelined(all))?.iter().map(|rows_of_one| rows(rows_of_one)).collect()
    }

    fn batch(&self, sql: &str) -> Result<(), DbError> {
        self.rt.block_on(self.pipelined(self.client.batch_execute(sql)))
    }

    fn begin(&self) -> Result<(), DbError> {
        self.begin_pending.set(true);
        self.begin_relaxed.set(false);
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

    fn commit_without_waiting(&self) -> Result<(), DbError> {
        if self.begin_pending.get() {
            self.begin_relaxed.set(true);
            return Ok(());
        }
        self.defer("SET LOCAL synchronous_commit = off", &[])
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
            self.begin_relaxed.set(false);
            self.deferred.borrow_mut().clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            super::redact_password("postgres://pool:s3cret@db:5432/idlemesh"),
            "postgres://pool:***@db:5432/idlemesh"
        );
        assert_eq!(super::redact_password("postgres://pool@db/idlemesh"), "postgres://pool@db/idlemesh");
        assert_eq!(
            super::redact_password("postgresql:///idlemesh?host=/run/pg"),
            "postgresql:///idlemesh?host=/run/pg"
        );
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
