//! The SQLite backend (`rusqlite`): one connection per session, opened in WAL mode with a busy
//! timeout, every call run on the blocking pool. The same functions as `mysql.rs`, in the
//! same order; `lib.rs` dispatches to one or the other and nothing else in the workspace names
//! the driver.

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::{DbError, DbResult, Row, SQLITE_BUSY_TIMEOUT_MS, Value, sql_head};

/// One connection, shared with the blocking task that runs each call.
pub(crate) struct SqliteSession {
    conn: Arc<Mutex<rusqlite::Connection>>,
    display: String,
}

impl SqliteSession {
    pub(crate) async fn open(path: &Path, display: &str) -> DbResult<SqliteSession> {
        let path = path.to_owned();
        let conn = tokio::task::spawn_blocking(move || open_blocking(&path))
            .await
            .expect("sqlite open task")
            .map_err(|e| DbError::Unavailable { target: display.to_owned(), message: e.to_string() })?;
        Ok(SqliteSession { conn: Arc::new(Mutex::new(conn)), display: display.to_owned() })
    }

    pub(crate) async fn query(&mut self, sql: &str, values: &[Value]) -> DbResult<Vec<Row>> {
        let (conn, sql_owned, values) = (self.conn.clone(), sql.to_owned(), values.to_vec());
        tokio::task::spawn_blocking(move || query_blocking(&conn.lock().expect("sqlite lock"), &sql_owned, &values))
            .await
            .expect("sqlite task")
            .map_err(|e| error(e, &self.display, sql))
    }

    pub(crate) async fn execute(&mut self, sql: &str, values: &[Value]) -> DbResult<u64> {
        let (conn, sql_owned, values) = (self.conn.clone(), sql.to_owned(), values.to_vec());
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().expect("sqlite lock");
            let mut stmt = conn.prepare_cached(&sql_owned)?;
            let n = stmt.execute(rusqlite::params_from_iter(values.iter().map(to_sqlite)))?;
            Ok(n as u64)
        })
        .await
        .expect("sqlite task")
        .map_err(|e| error(e, &self.display, sql))
    }

    pub(crate) fn last_insert_id(&self) -> i64 {
        self.conn.lock().expect("sqlite lock").last_insert_rowid()
    }

    /// Several statements may go in one call.
    pub(crate) async fn execute_script(&mut self, sql: &str) -> DbResult<()> {
        let (conn, sql_owned) = (self.conn.clone(), sql.to_owned());
        tokio::task::spawn_blocking(move || conn.lock().expect("sqlite lock").execute_batch(&sql_owned))
            .await
            .expect("sqlite task")
            .map_err(|e| error(e, &self.display, sql))
    }

    /// Nothing to do: the one writer holds the whole database, so there are no gap locks to avoid.
    pub(crate) async fn read_committed(&mut self) -> DbResult<()> {
        Ok(())
    }

    /// Takes the write lock at once (`IMMEDIATE`), so two writers fail fast on the busy
    /// timeout instead of deadlocking on upgrade.
    pub(crate) async fn begin(&mut self) -> DbResult<()> {
        self.execute_script("BEGIN IMMEDIATE").await
    }
}

fn open_blocking(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_millis(SQLITE_BUSY_TIMEOUT_MS))?;
    // WAL lets feed readers run while OpenMRS-style writers commit.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

fn error(e: rusqlite::Error, target: &str, sql: &str) -> DbError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::CannotOpen
                    | rusqlite::ErrorCode::SystemIoFailure
            ) =>
        {
            DbError::Unavailable { target: target.to_owned(), message: e.to_string() }
        }
        _ => DbError::Statement { sql: sql_head(sql), message: e.to_string() },
    }
}

fn to_sqlite(v: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as S;
    match v {
        Value::Null => S::Null,
        Value::Int(i) => S::Integer(*i),
        Value::Float(f) => S::Real(*f),
        Value::Text(s) => S::Text(s.clone()),
        Value::Bytes(b) => S::Blob(b.clone()),
    }
}

fn query_blocking(conn: &rusqlite::Connection, sql: &str, params: &[Value]) -> rusqlite::Result<Vec<Row>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let names: Arc<[String]> = stmt.column_names().into_iter().map(str::to_owned).collect();
    let width = names.len();
    let mut rows = stmt.query(rusqlite::params_from_iter(params.iter().map(to_sqlite)))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let mut values = Vec::with_capacity(width);
        for i in 0..width {
            values.push(match row.get_ref(i)? {
                rusqlite::types::ValueRef::Null => Value::Null,
                rusqlite::types::ValueRef::Integer(v) => Value::Int(v),
                rusqlite::types::ValueRef::Real(v) => Value::Float(v),
                rusqlite::types::ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                rusqlite::types::ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
            });
        }
        out.push(Row { columns: names.clone(), values });
    }
    Ok(out)
}
