//! The database boundary: one `Database` handle and one `Session` type over the two
//! backends the toolkit supports (MySQL/MariaDB through `mysql_async`, SQLite through
//! `rusqlite`), with one value type. Everything above this module writes SQL with `?`
//! placeholders and reads `Row`s; dialect differences in SQL text are decided by callers
//! through [`Dialect`], never by matching on the backend elsewhere.
//!
//! Why an enum and not a trait object: async fns in traits are not object safe, and the set of
//! backends is closed. Each backend lives in its own file with the same functions in the same
//! order (`mysql.rs`, `sqlite.rs`), as sqlx keeps one folder per backend; `Session` only
//! dispatches. The toolkit's own `feedsync_*` tables are listed once in `tables.rs`, their
//! DDL written per backend in those two files.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use mysql::MySqlSession;
use sqlite::SqliteSession;

pub use feedsync_core::sql::{Dialect, for_update, format_datetime, insert_ignore, quote_ident};

mod mysql;
pub mod schema;
mod sqlite;
pub mod tables;

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
        Ok(Database::MySql { pool: mysql::pool(&normalized, url)?, name, display: redact(url) })
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
        let inner = match self {
            Database::MySql { pool, display, .. } => SessionInner::MySql(MySqlSession::open(pool, display).await?),
            Database::Sqlite { path } => SessionInner::Sqlite(SqliteSession::open(path, &self.display_name()).await?),
        };
        Ok(Session { inner })
    }

    /// Closes pooled connections; call before exit so MySQL sees clean disconnects. Drop every
    /// session first: the pool waits for them. Bounded, so exit never hangs on a lost server.
    pub async fn close(self) {
        if let Database::MySql { pool, .. } = self {
            mysql::close(pool).await;
        }
    }
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
    MySql(MySqlSession),
    Sqlite(SqliteSession),
}

/// Calls the same function on whichever backend the session is.
macro_rules! on_backend {
    ($session:expr, $backend:ident => $call:expr) => {
        match &mut $session.inner {
            SessionInner::MySql($backend) => $call,
            SessionInner::Sqlite($backend) => $call,
        }
    };
}

/// One connection. Transactions are plain SQL through [`Session::begin`] and friends, so the
/// same code path drives both backends.
pub struct Session {
    inner: SessionInner,
}

impl Session {
    pub fn dialect(&self) -> Dialect {
        match self.inner {
            SessionInner::MySql(_) => Dialect::MySql,
            SessionInner::Sqlite(_) => Dialect::Sqlite,
        }
    }

    pub async fn query(&mut self, sql: &str, params: &[Value]) -> DbResult<Vec<Row>> {
        on_backend!(self, backend => backend.query(sql, params).await)
    }

    /// Runs one statement; returns the number of affected rows.
    pub async fn execute(&mut self, sql: &str, params: &[Value]) -> DbResult<u64> {
        on_backend!(self, backend => backend.execute(sql, params).await)
    }

    /// The id generated by the last insert on this connection.
    pub async fn last_insert_id(&mut self) -> DbResult<i64> {
        Ok(on_backend!(self, backend => backend.last_insert_id()))
    }

    /// Runs SQL text without parameters, possibly several statements (DDL, trigger bodies).
    /// On MySQL, pass one statement per call: trigger bodies contain semicolons.
    pub async fn execute_script(&mut self, sql: &str) -> DbResult<()> {
        on_backend!(self, backend => backend.execute_script(sql).await)
    }

    /// Makes the session's next transactions READ COMMITTED on MySQL: each statement sees the
    /// newest commits and takes no gap locks (so OpenMRS writers are not stalled, and a merge
    /// compares with the row it locked). Nothing on SQLite, whose writer holds the database.
    pub async fn read_committed(&mut self) -> DbResult<()> {
        on_backend!(self, backend => backend.read_committed().await)
    }

    /// Starts a write transaction. On SQLite it takes the write lock at once (`IMMEDIATE`) so
    /// two writers fail fast on `busy_timeout` instead of deadlocking on upgrade.
    pub async fn begin(&mut self) -> DbResult<()> {
        on_backend!(self, backend => backend.begin().await)
    }

    pub async fn commit(&mut self) -> DbResult<()> {
        self.execute_script("COMMIT").await
    }

    pub async fn rollback(&mut self) -> DbResult<()> {
        self.execute_script("ROLLBACK").await
    }
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
