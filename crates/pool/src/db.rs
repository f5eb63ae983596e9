//! The few things the store asks of a SQL database, so that one store
//! (`store.rs`: leasing, fencing, quorum, job completion) runs on SQLite and
//! on PostgreSQL alike.
//!
//! Statements are written once, with `?1`-style numbered parameters, in the
//! SQL both engines share (`RETURNING`, `ON CONFLICT`, `IS DISTINCT FROM`);
//! the PostgreSQL connection renumbers them `$1`. What differs is asked of
//! the [`Dialect`] (row locks: SQLite has one writer and needs none;
//! refreshing statistics), of each connection (how a transaction begins)
//! and of the schema's migrations (`store/schema.rs`).

mod postgres;
mod sqlite;

pub(crate) use postgres::{Postgres, is_url as is_postgres_url, redact_password};
pub(crate) use sqlite::Sqlite;

/// Which engine a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// Appended to a `SELECT` of one row that the transaction is about to
    /// change: two pool replicas judging one task take turns.
    pub fn for_update(self) -> &'static str {
        match self {
            Self::Sqlite => "",
            Self::Postgres => " FOR UPDATE",
        }
    }

    /// Appended to a `SELECT` of a join to lock the rows of `table` only.
    pub fn for_update_of(self, table: &str) -> String {
        match self {
            Self::Sqlite => String::new(),
            Self::Postgres => format!(" FOR UPDATE OF {table}"),
        }
    }

    /// Appended to the lease query: rows another replica is claiming are
    /// passed over, not waited for.
    pub fn skip_locked(self, tables: &str) -> String {
        match self {
            Self::Sqlite => String::new(),
            Self::Postgres => format!(" FOR UPDATE OF {tables} SKIP LOCKED"),
        }
    }

    /// A query for `?1` new ids of `table`'s `id` column: from its
    /// sequence on PostgreSQL (shared by every pool replica), after the
    /// highest on SQLite (one writer, inside its transaction).
    pub fn next_ids(self, table: &str) -> String {
        match self {
            Self::Sqlite => format!(
                "WITH RECURSIVE n (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
                 SELECT (SELECT coalesce(max(id), 0) FROM {table}) + i FROM n"
            ),
            Self::Postgres => {
                format!("SELECT nextval(pg_get_serial_sequence('{table}', 'id')) FROM generate_series(1, ?1)")
            }
        }
    }

    /// Run after a job's tasks are added. PostgreSQL plans by its
    /// statistics, and a big job's tasks, unknown to them until autovacuum
    /// gets round to it, made it plan the lease as a sort of the whole
    /// queue (measured: 450 ms a lease instead of 0.2 ms); the refresh also
    /// remakes the connections' generic plans. SQLite's planner is held to
    /// its first plan (QPSG) and needs nothing.
    pub fn refresh_statistics(self) -> Option<&'static str> {
        match self {
            Self::Sqlite => None,
            Self::Postgres => Some("ANALYZE jobs, tasks, replicas"),
        }
    }
}

/// One value bound to a statement or read from a row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

macro_rules! value_from {
    ($($t:ty => |$v:ident| $e:expr),* $(,)?) => {
        $(impl From<$t> for Value {
            fn from($v: $t) -> Self {
                $e
            }
        })*
    };
}

value_from! {
    i64 => |v| Value::Int(v),
    i32 => |v| Value::Int(v.into()),
    u32 => |v| Value::Int(v.into()),
    // Ids, sizes and times in ms: all far below 2^63.
    u64 => |v| Value::Int(v as i64),
    bool => |v| Value::Int(v.into()),
    f64 => |v| Value::Real(v),
    String => |v| Value::Text(v),
    &str => |v| Value::Text(v.to_owned()),
    &String => |v| Value::Text(v.clone()),
    Vec<u8> => |v| Value::Blob(v),
    &[u8] => |v| Value::Blob(v.to_vec()),
    &Vec<u8> => |v| Value::Blob(v.clone()),
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// The parameters of one statement: `args![a, b]`.
macro_rules! args {
    ($($v:expr),* $(,)?) => { &[$($crate::db::Value::from($v)),*][..] };
}
pub(crate) use args;

#[derive(Debug, thiserror::Error)]
pub(crate) enum DbError {
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {message}")]
    Postgres {
        message: String,
        /// The SQLSTATE, for errors the server sent.
        code: Option<String>,
        /// The constraint a statement violated.
        constraint: Option<String>,
    },
    /// The connection broke (the server restarted, a proxy cut it): it is
    /// opened again before the next transaction.
    #[error("PostgreSQL: the connection closed: {0}")]
    Closed(String),
    #[error("column {column}: expected {expected}, found {found:?}")]
    Type { column: usize, expected: &'static str, found: Value },
    #[error("expected a row, found none")]
    NoRow,
}

impl DbError {
    /// An error of the connection rather than of a statement.
    pub fn postgres(message: String) -> Self {
        Self::Postgres { message, code: None, constraint: None }
    }

    /// Whether a statement inserted a key that `constraint` (a unique
    /// index or primary key, by name) already held.
    pub fn duplicate_in(&self, constraint: &str) -> bool {
        matches!(self, Self::Postgres { code: Some(code), constraint: Some(c), .. } if code == "23505" && c == constraint)
    }

    /// Whether running the same operation again may succeed: PostgreSQL
    /// chose it to break a deadlock, or an earlier failure in the same
    /// transaction aborted it.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Postgres { code: Some(code), .. } if ["40001", "40P01", "25P02"].contains(&code.as_str()))
            || matches!(self, Self::Closed(_))
    }
}

/// A row, its columns in the order the statement named them.
#[derive(Debug)]
pub(crate) struct Row(pub(crate) Vec<Value>);

impl Row {
    fn get(&self, column: usize) -> &Value {
        self.0.get(column).unwrap_or(&Value::Null)
    }

    fn wrong(&self, column: usize, expected: &'static str) -> DbError {
        DbError::Type { column, expected, found: self.get(column).clone() }
    }

    pub fn opt_int(&self, column: usize) -> Result<Option<i64>, DbError> {
        match self.get(column) {
            Value::Null => Ok(None),
            Value::Int(v) => Ok(Some(*v)),
            _ => Err(self.wrong(column, "an integer")),
        }
    }

    pub fn int(&self, column: usize) -> Result<i64, DbError> {
        self.opt_int(column)?.ok_or_else(|| self.wrong(column, "an integer"))
    }

    pub fn u64(&self, column: usize) -> Result<u64, DbError> {
        Ok(self.int(column)? as u64)
    }

    pub fn opt_u64(&self, column: usize) -> Result<Option<u64>, DbError> {
        Ok(self.opt_int(column)?.map(|v| v as u64))
    }

    pub fn bool(&self, column: usize) -> Result<bool, DbError> {
        Ok(self.int(column)? != 0)
    }

    pub fn real(&self, column: usize) -> Result<f64, DbError> {
        match self.get(column) {
            Value::Real(v) => Ok(*v),
            Value::Int(v) => Ok(*v as f64),
            _ => Err(self.wrong(column, "a number")),
        }
    }

    pub fn opt_text(&self, column: usize) -> Result<Option<String>, DbError> {
        match self.get(column) {
            Value::Null => Ok(None),
            Value::Text(s) => Ok(Some(s.clone())),
            _ => Err(self.wrong(column, "text")),
        }
    }

    pub fn text(&self, column: usize) -> Result<String, DbError> {
        self.opt_text(column)?.ok_or_else(|| self.wrong(column, "text"))
    }

    pub fn blob(&mut self, column: usize) -> Result<Vec<u8>, DbError> {
        match self.0.get_mut(column) {
            Some(Value::Blob(b)) => Ok(std::mem::take(b)),
            _ => Err(self.wrong(column, "bytes")),
        }
    }
}

/// One connection to the pool's database.
pub(crate) trait Db: Send {
    fn dialect(&self) -> Dialect;
    /// Runs a statement; returns how many rows it changed.
    fn execute(&self, sql: &str, params: &[Value]) -> Result<u64, DbError>;
    fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError>;
    /// Runs a statement whose outcome the caller need not know yet. On
    /// PostgreSQL inside a transaction it goes out with the next statement
    /// (or the commit): several cost one round trip, and an error of one
    /// is returned by that next call.
    fn defer(&self, sql: &str, params: &[Value]) -> Result<(), DbError> {
        self.execute(sql, params).map(drop)
    }
    /// Runs several queries, on PostgreSQL in one round trip; their rows in order.
    fn query_all(&self, queries: &[(&str, &[Value])]) -> Result<Vec<Vec<Row>>, DbError> {
        queries.iter().map(|(sql, params)| self.query(sql, params)).collect()
    }
    /// Runs statements without parameters: schema changes, savepoints.
    fn batch(&self, sql: &str) -> Result<(), DbError>;
    /// Opens a transaction that writes (SQLite takes its write lock now, not at the first write).
    fn begin(&self) -> Result<(), DbError>;
    /// Opens a transaction for one operation, which its caller rolls back
    /// if the operation fails: savepoints inside it are left out (on
    /// PostgreSQL each is a round trip).
    fn begin_lone(&self) -> Result<(), DbError> {
        self.begin()
    }
    /// Whether the transaction is [`Db::begin_lone`]'s.
    fn lone(&self) -> bool {
        false
    }
    /// Makes the open transaction's commit return before its changes are
    /// on disk (they follow within a fraction of a second; a database crash
    /// in between loses them, never half of them). Each commit otherwise
    /// waits for its own flush while the transaction's locks are held.
    /// SQLite: nothing (its writer shares one commit among many operations).
    fn commit_without_waiting(&self) -> Result<(), DbError> {
        Ok(())
    }
    fn commit(&self) -> Result<(), DbError>;
    fn rollback(&self) -> Result<(), DbError>;
    fn in_transaction(&self) -> bool;
    /// Connects again if the connection was lost (a database restart).
    fn reconnect_if_closed(&mut self) -> Result<(), DbError> {
        Ok(())
    }
}

impl dyn Db + '_ {
    /// The first row, if any.
    pub fn opt_row(&self, sql: &str, params: &[Value]) -> Result<Option<Row>, DbError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// Exactly the first row; none is an error.
    pub fn row(&self, sql: &str, params: &[Value]) -> Result<Row, DbError> {
        self.opt_row(sql, params)?.ok_or(DbError::NoRow)
    }

    /// A savepoint in the current transaction (or a transaction of its
    /// own outside one), rolled back unless committed.
    pub fn savepoint(&self) -> Result<Savepoint<'_>, DbError> {
        if self.lone() {
            return Ok(Savepoint { db: self, outer: false, done: true });
        }
        let outer = !self.in_transaction();
        if outer {
            self.begin()?
        } else {
            self.batch("SAVEPOINT op")?
        }
        Ok(Savepoint { db: self, outer, done: false })
    }
}

/// Everything since it began, kept by [`Savepoint::commit`] or undone when dropped.
pub(crate) struct Savepoint<'a> {
    db: &'a (dyn Db + 'a),
    /// A transaction of its own, not a savepoint in one.
    outer: bool,
    done: bool,
}

impl Savepoint<'_> {
    pub fn commit(mut self) -> Result<(), DbError> {
        if std::mem::replace(&mut self.done, true) {
            return Ok(()); // in a lone operation's transaction: nothing to release
        }
        if self.outer { self.db.commit() } else { self.db.batch("RELEASE SAVEPOINT op") }
    }
}

impl<'a> std::ops::Deref for Savepoint<'a> {
    type Target = dyn Db + 'a;
    fn deref(&self) -> &Self::Target {
        self.db
    }
}

impl Drop for Savepoint<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = if self.outer {
                self.db.rollback()
            } else {
                self.db.batch("ROLLBACK TO SAVEPOINT op; RELEASE SAVEPOINT op")
            };
        }
    }
}
