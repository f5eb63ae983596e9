//! The one way the agent opens an SQLite file it must not lose (the
//! ledger, the outbox of results not yet delivered): write-ahead log,
//! `synchronous=FULL` so what a call returned is on disk when power goes,
//! a busy timeout because several of the agent's slots share the file, and
//! its folder private to the user (it names pools, tasks and earnings).

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use crate::ledger::LedgerError;

/// Opens (or creates) the file at `path` and makes sure `schema` (SQL of
/// `CREATE TABLE IF NOT EXISTS` statements) is in it.
pub(crate) fn open(path: &Path, schema: &str) -> Result<Connection, LedgerError> {
    let open = |source| LedgerError::Open { path: path.display().to_string(), source };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        // A folder that cannot be made shows as the open's error below.
        let _ = idlemesh_runtime::private_dir(parent);
    }
    let conn = Connection::open(path).map_err(open)?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(open)?;
    conn.pragma_update(None, "synchronous", "FULL").map_err(open)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(open)?;
    conn.execute_batch(schema).map_err(open)?;
    Ok(conn)
}
