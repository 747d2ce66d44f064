//! The database boundary: one `Database` handle and one `Session` type over the two
//! backends the toolkit supports (MySQL/MariaDB through `mysql_async`, SQLite through
//! `rusqlite`), with one value type. Everything above this module writes SQL with `?`
//! placeholders and reads `Row`s; dialect differences in SQL text are decided by callers
//! through [`Dialect`], never by matching on the backend elsewhere.
//!
//! Why an enum and not a trait object: async fns in traits are not object safe, and the set of
//! backends is closed. Each backend lives in its own `impl` block with the same method set, as
//! sqlx keeps one folder per backend.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use mysql_async::prelude::Queryable;

pub use feedsync_core::sql::{Dialect, for_update, format_datetime, insert_ignore, quote_ident};

pub mod schema;

/// One column value as the toolkit sees it. Dates and times are `Text` in the canonical
/// `YYYY-MM-DD HH:MM:SS[.ffffff]` form on both backends, so hashes and comparisons agree.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
    Bytes(Vec<u8>),
}

impl Value {
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(*v),
            Value::Text(s) => s.parse().ok(),
            Value::Float(f) if f.fract() == 0.0 => Some(*f as i64),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The value as text whatever its type (for keys and messages); `None` for NULL.
    pub fn to_text(&self) -> Option<String> {
        match self {
            Value::Null => None,
            Value::Int(v) => Some(v.to_string()),
            Value::Float(v) => Some(v.to_string()),
            Value::Text(s) => Some(s.clone()),
            Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<Option<String>> for Value {
    fn from(v: Option<String>) -> Self {
        v.map_or(Value::Null, Value::Text)
    }
}

/// A result row: shared column names plus values in the same order.
#[derive(Debug, Clone)]
pub struct Row {
    pub columns: Arc<[String]>,
    pub values: Vec<Value>,
}

impl Row {
    pub fn get(&self, column: &str) -> &Value {
        static NULL: Value = Value::Null;
        self.columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(column))
            .map_or(&NULL, |i| &self.values[i])
    }
    pub fn i64(&self, column: &str) -> Option<i64> {
        self.get(column).as_i64()
    }
    pub fn text(&self, column: &str) -> Option<String> {
        self.get(column).to_text()
    }
}

/// What went wrong at the database, classified so retry policy is one decision.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("bad database URL {url:?}: {reason}. Use mysql://user:password@host:3306/database or sqlite://path/to/file.sqlite")]
    BadUrl { url: String, reason: String },
    /// The server could not be reached or the connection dropped: the statement did not run
    /// or its outcome is unknown; retrying later is the right response.
    #[error("database unavailable ({target}): {message}")]
    Unavailable { target: String, message: String },
    /// The server ran the statement and refused it; retrying the same statement fails again.
    #[error("database refused statement: {message} [SQL: {sql}]")]
    Statement { sql: String, message: String },
}

impl DbError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, DbError::Unavailable { .. })
    }
}

pub type DbResult<T> = Result<T, DbError>;

fn sql_head(sql: &str) -> String {
    let flat: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.len() > 160 {
        let mut end = 160;
        while !flat.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &flat[..end])
    } else {
        flat
    }
}

/// A connectable database named by URL.
#[derive(Clone)]
pub enum Database {
    MySql { pool: mysql_async::Pool, name: String, display: String },
    Sqlite { path: PathBuf },
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display_name())
    }
}

/// Largest number of pooled MySQL connections one process opens: the publisher serves many
/// HTTP requests but must never crowd out OpenMRS's own connections.
pub const MYSQL_POOL_CONNECTIONS_MAX: usize = 16;
/// How long a SQLite writer waits for another writer before giving up.
pub const SQLITE_BUSY_TIMEOUT_MS: u64 = 30_000;

impl Database {
    /// Parses `mysql://`, `mariadb://` or `sqlite://` URLs. Opens nothing yet.
    pub fn from_url(url: &str) -> DbResult<Database> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(DbError::BadUrl { url: url.into(), reason: "no file path after sqlite://".into() });
            }
            return Ok(Database::Sqlite { path: PathBuf::from(path) });
        }
        let normalized = if let Some(rest) = url.strip_prefix("mariadb://") {
            format!("mysql://{rest}")
        } else if url.starts_with("mysql://") {
            url.to_owned()
        } else {
            return Err(DbError::BadUrl { url: redact(url), reason: "unknown scheme".into() });
        };
        let parsed = url::Url::parse(&normalized)
            .map_err(|e| DbError::BadUrl { url: redact(url), reason: e.to_string() })?;
        let name = parsed.path().trim_start_matches('/').to_owned();
        if name.is_empty() {
            return Err(DbError::BadUrl { url: redact(url), reason: "no database name in the path".into() });
        }
        let opts = mysql_async::Opts::from_url(&normalized)
            .map_err(|e| DbError::BadUrl { url: redact(url), reason: e.to_string() })?;
        let constraints = mysql_async::PoolConstraints::new(1, MYSQL_POOL_CONNECTIONS_MAX).expect("1 <= max");
        let opts = mysql_async::OptsBuilder::from_opts(opts)
            .pool_opts(mysql_async::PoolOpts::default().with_constraints(constraints))
            // UTC everywhere: datetime columns carry no zone and sites' clocks disagree.
            .init(vec!["SET time_zone = '+00:00'", "SET NAMES utf8mb4"]);
        Ok(Database::MySql { pool: mysql_async::Pool::new(opts), name, display: redact(url) })
    }

    pub fn dialect(&self) -> Dialect {
        match self {
            Database::MySql { .. } => Dialect::MySql,
            Database::Sqlite { .. } => Dialect::Sqlite,
        }
    }

    /// The database (schema) name on MySQL; `main` on SQLite.
    pub fn schema_name(&self) -> &str {
        match self {
            Database::MySql { name, .. } => name,
            Database::Sqlite { .. } => "main",
        }
    }

    /// The URL with any password replaced, for logs and messages.
    pub fn display_name(&self) -> String {
        match self {
            Database::MySql { display, .. } => display.clone(),
            Database::Sqlite { path } => format!("sqlite://{}", path.display()),
        }
    }

    pub async fn session(&self) -> DbResult<Session> {
        match self {
            Database::MySql { pool, display, .. } => {
                let conn = pool.get_conn().await.map_err(|e| mysql_error(e, display, ""))?;
                Ok(Session { inner: SessionInner::MySql(Box::new(conn)), display: display.clone() })
            }
            Database::Sqlite { path } => {
                let path = path.clone();
                let display = self.display_name();
                let d2 = display.clone();
                let conn = tokio::task::spawn_blocking(move || open_sqlite(&path))
                    .await
                    .expect("sqlite open task")
                    .map_err(|e| DbError::Unavailable { target: d2, message: e.to_string() })?;
                Ok(Session { inner: SessionInner::Sqlite(Arc::new(Mutex::new(conn))), display })
            }
        }
    }

    /// Closes pooled connections; call before exit so MySQL sees clean disconnects. Drop every
    /// session first: the pool waits for them. Bounded, so exit never hangs on a lost server.
    pub async fn close(self) {
        if let Database::MySql { pool, .. } = self {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), pool.disconnect()).await;
        }
    }
}

fn open_sqlite(path: &std::path::Path) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_millis(SQLITE_BUSY_TIMEOUT_MS))?;
    // WAL lets feed readers run while OpenMRS-style writers commit.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

/// Replaces the password in a URL with `***`.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

enum SessionInner {
    MySql(Box<mysql_async::Conn>),
    Sqlite(Arc<Mutex<rusqlite::Connection>>),
}

/// One connection. Transactions are plain SQL through [`Session::begin`] and friends, so the
/// same code path drives both backends.
pub struct Session {
    inner: SessionInner,
    display: String,
}

impl Session {
    pub fn dialect(&self) -> Dialect {
        match self.inner {
            SessionInner::MySql(_) => Dialect::MySql,
            SessionInner::Sqlite(_) => Dialect::Sqlite,
        }
    }

    pub async fn query(&mut self, sql: &str, params: &[Value]) -> DbResult<Vec<Row>> {
        match &mut self.inner {
            SessionInner::MySql(conn) => {
                let params = mysql_params(params);
                let rows: Vec<mysql_async::Row> =
                    conn.exec(sql, params).await.map_err(|e| mysql_error(e, &self.display, sql))?;
                Ok(convert_mysql_rows(rows))
            }
            SessionInner::Sqlite(conn) => {
                let conn = conn.clone();
                let sql_owned = sql.to_owned();
                let params = params.to_vec();
                tokio::task::spawn_blocking(move || sqlite_query(&conn.lock().expect("sqlite lock"), &sql_owned, &params))
                    .await
                    .expect("sqlite task")
                    .map_err(|e| sqlite_error(e, &self.display, sql))
            }
        }
    }

    /// Runs one statement; returns the number of affected rows.
    pub async fn execute(&mut self, sql: &str, params: &[Value]) -> DbResult<u64> {
        match &mut self.inner {
            SessionInner::MySql(conn) => {
                let params = mysql_params(params);
                conn.exec_drop(sql, params).await.map_err(|e| mysql_error(e, &self.display, sql))?;
                Ok(conn.affected_rows())
            }
            SessionInner::Sqlite(conn) => {
                let conn = conn.clone();
                let sql_owned = sql.to_owned();
                let params = params.to_vec();
                tokio::task::spawn_blocking(move || {
                    let conn = conn.lock().expect("sqlite lock");
                    let mut stmt = conn.prepare_cached(&sql_owned)?;
                    let n = stmt.execute(rusqlite::params_from_iter(params.iter().map(to_sqlite)))?;
                    Ok(n as u64)
                })
                .await
                .expect("sqlite task")
                .map_err(|e| sqlite_error(e, &self.display, sql))
            }
        }
    }

    /// The id generated by the last insert on this connection.
    pub async fn last_insert_id(&mut self) -> DbResult<i64> {
        match &mut self.inner {
            SessionInner::MySql(conn) => Ok(conn.last_insert_id().unwrap_or(0) as i64),
            SessionInner::Sqlite(conn) => Ok(conn.lock().expect("sqlite lock").last_insert_rowid()),
        }
    }

    /// Runs SQL text without parameters, possibly several statements (DDL, trigger bodies).
    /// On MySQL, pass one statement per call: trigger bodies contain semicolons.
    pub async fn execute_script(&mut self, sql: &str) -> DbResult<()> {
        match &mut self.inner {
            SessionInner::MySql(conn) => {
                conn.query_drop(sql).await.map_err(|e| mysql_error(e, &self.display, sql))
            }
            SessionInner::Sqlite(conn) => {
                let conn = conn.clone();
                let sql_owned = sql.to_owned();
                tokio::task::spawn_blocking(move || conn.lock().expect("sqlite lock").execute_batch(&sql_owned))
                    .await
                    .expect("sqlite task")
                    .map_err(|e| sqlite_error(e, &self.display, sql))
            }
        }
    }

    /// Makes the session's next transactions READ COMMITTED on MySQL: each statement sees the
    /// newest commits and takes no gap locks (so OpenMRS writers are not stalled, and a merge
    /// compares with the row it locked). Nothing on SQLite, whose writer holds the database.
    pub async fn read_committed(&mut self) -> DbResult<()> {
        match self.dialect() {
            Dialect::MySql => self.execute_script("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED").await,
            Dialect::Sqlite => Ok(()),
        }
    }

    /// Starts a write transaction. On SQLite it takes the write lock at once (`IMMEDIATE`) so
    /// two writers fail fast on `busy_timeout` instead of deadlocking on upgrade.
    pub async fn begin(&mut self) -> DbResult<()> {
        match self.dialect() {
            Dialect::MySql => self.execute_script("START TRANSACTION").await,
            Dialect::Sqlite => self.execute_script("BEGIN IMMEDIATE").await,
        }
    }

    pub async fn commit(&mut self) -> DbResult<()> {
        self.execute_script("COMMIT").await
    }

    pub async fn rollback(&mut self) -> DbResult<()> {
        self.execute_script("ROLLBACK").await
    }
}

fn mysql_params(params: &[Value]) -> mysql_async::Params {
    if params.is_empty() {
        return mysql_async::Params::Empty;
    }
    mysql_async::Params::Positional(
        params
            .iter()
            .map(|v| match v {
                Value::Null => mysql_async::Value::NULL,
                Value::Int(i) => mysql_async::Value::Int(*i),
                Value::Float(f) => mysql_async::Value::Double(*f),
                Value::Text(s) => mysql_async::Value::Bytes(s.as_bytes().to_vec()),
                Value::Bytes(b) => mysql_async::Value::Bytes(b.clone()),
            })
            .collect(),
    )
}

/// MySQL's binary-collation character set id: byte strings, not text.
const MYSQL_BINARY_CHARSET: u16 = 63;

fn convert_mysql_rows(rows: Vec<mysql_async::Row>) -> Vec<Row> {
    let Some(first) = rows.first() else { return Vec::new() };
    let meta = first.columns();
    let names: Arc<[String]> = meta.iter().map(|c| c.name_str().into_owned()).collect();
    let binary: Vec<bool> = meta
        .iter()
        .map(|c| {
            use mysql_async::consts::ColumnType::*;
            c.character_set() == MYSQL_BINARY_CHARSET
                && matches!(
                    c.column_type(),
                    MYSQL_TYPE_BLOB | MYSQL_TYPE_TINY_BLOB | MYSQL_TYPE_MEDIUM_BLOB | MYSQL_TYPE_LONG_BLOB
                        | MYSQL_TYPE_VAR_STRING | MYSQL_TYPE_STRING | MYSQL_TYPE_VARCHAR | MYSQL_TYPE_BIT
                )
        })
        .collect();
    let decimal: Vec<bool> = meta
        .iter()
        .map(|c| {
            use mysql_async::consts::ColumnType::*;
            matches!(c.column_type(), MYSQL_TYPE_DECIMAL | MYSQL_TYPE_NEWDECIMAL)
        })
        .collect();
    rows.into_iter()
        .map(|row| {
            let values = row
                .unwrap()
                .into_iter()
                .enumerate()
                .map(|(i, v)| convert_mysql_value(v, binary[i], decimal[i]))
                .collect();
            Row { columns: names.clone(), values }
        })
        .collect()
}

fn convert_mysql_value(v: mysql_async::Value, binary: bool, decimal: bool) -> Value {
    use mysql_async::Value as M;
    match v {
        M::NULL => Value::Null,
        M::Int(i) => Value::Int(i),
        M::UInt(u) => Value::Int(u as i64),
        M::Float(f) => Value::Float(f as f64),
        M::Double(d) => Value::Float(d),
        M::Bytes(b) if binary => {
            // bit(1) columns arrive as one byte; OpenMRS uses them as booleans.
            if b.len() == 1 && b[0] <= 1 { Value::Int(b[0] as i64) } else { Value::Bytes(b) }
        }
        M::Bytes(b) if decimal => {
            // Decimals keep their exact text; converting to f64 would change hashes.
            Value::Text(String::from_utf8_lossy(&b).into_owned())
        }
        M::Bytes(b) => match String::from_utf8(b) {
            Ok(s) => Value::Text(s),
            Err(e) => Value::Bytes(e.into_bytes()),
        },
        M::Date(y, mo, d, h, mi, s, us) => Value::Text(format_datetime(y, mo, d, h, mi, s, us)),
        M::Time(neg, days, h, mi, s, us) => {
            let hours = days * 24 + h as u32;
            let sign = if neg { "-" } else { "" };
            if us == 0 {
                Value::Text(format!("{sign}{hours:02}:{mi:02}:{s:02}"))
            } else {
                Value::Text(format!("{sign}{hours:02}:{mi:02}:{s:02}.{us:06}"))
            }
        }
    }
}

fn mysql_error(e: mysql_async::Error, target: &str, sql: &str) -> DbError {
    match e {
        mysql_async::Error::Server(server) => {
            DbError::Statement { sql: sql_head(sql), message: format!("{} (MySQL error {})", server.message, server.code) }
        }
        mysql_async::Error::Driver(d) => DbError::Statement { sql: sql_head(sql), message: d.to_string() },
        other => DbError::Unavailable { target: target.to_owned(), message: other.to_string() },
    }
}

fn sqlite_error(e: rusqlite::Error, target: &str, sql: &str) -> DbError {
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

fn sqlite_query(conn: &rusqlite::Connection, sql: &str, params: &[Value]) -> rusqlite::Result<Vec<Row>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_redact() {
        assert!(matches!(Database::from_url("sqlite://x.db").unwrap(), Database::Sqlite { .. }));
        assert!(Database::from_url("sqlite://").is_err());
        assert!(Database::from_url("postgres://x/y").is_err());
        assert_eq!(redact("mysql://root:secret@h:3306/db"), "mysql://root:***@h:3306/db");
        let err = Database::from_url("mysql://root@h:3306/").unwrap_err().to_string();
        assert!(err.contains("no database name"), "{err}");
    }

    #[tokio::test]
    async fn sqlite_roundtrip() {
        let dir = std::env::temp_dir().join(format!("feedsync-db-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.sqlite");
        let _ = std::fs::remove_file(&path);
        let db = Database::from_url(&format!("sqlite://{}", path.display())).unwrap();
        let mut s = db.session().await.unwrap();
        s.execute_script("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, x REAL, b BLOB)").await.unwrap();
        s.begin().await.unwrap();
        s.execute("INSERT INTO t (name, x, b) VALUES (?, ?, ?)", &["a".into(), Value::Float(1.5), Value::Bytes(vec![0, 1])])
            .await
            .unwrap();
        s.commit().await.unwrap();
        assert_eq!(s.last_insert_id().await.unwrap(), 1);
        let rows = s.query("SELECT * FROM t WHERE name = ?", &["a".into()]).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].get("x"), &Value::Float(1.5));
        assert_eq!(rows[0].get("B"), &Value::Bytes(vec![0, 1]));
        let err = s.query("SELECT nope FROM t", &[]).await.unwrap_err();
        assert!(!err.is_retryable());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
