//! The SQLite backend (`rusqlite`): one connection per session, opened in WAL mode with a busy
//! timeout, every call run on the blocking pool; and the SQL text of the toolkit's own tables
//! on SQLite (their DDL, the origin marker as a table, no row lock). The same functions as
//! `mysql.rs`, in the same order; `lib.rs` and `tables.rs` dispatch to one or the other, and
//! nothing else in the workspace names the driver.

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::tables::*;
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

// ---- the toolkit's own tables and statements (SQL text; `tables.rs` dispatches) ----

/// The statements creating a set's tables and indexes where they are missing, in order.
pub(crate) fn create_tables(set: TableSet) -> Vec<String> {
    match set {
        TableSet::Capture => vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {JOURNAL_TABLE} (\
                   journal_id INTEGER PRIMARY KEY AUTOINCREMENT, \
                   table_name TEXT NOT NULL, action TEXT NOT NULL, entity_key TEXT NULL, row_key TEXT NULL, \
                   patient_uuid TEXT NULL, location_uuid TEXT NULL, origin TEXT NULL, \
                   changed_at TEXT NOT NULL DEFAULT ({NOW}))"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {EVENT_TABLE} (\
                   event_seq INTEGER NOT NULL PRIMARY KEY, event_uuid TEXT NOT NULL, \
                   table_name TEXT NOT NULL, category TEXT NOT NULL, action TEXT NOT NULL, \
                   entity_key TEXT NOT NULL, patient_uuid TEXT NULL, location_uuid TEXT NULL, \
                   origin TEXT NULL, changed_at TEXT NOT NULL, \
                   category_page INTEGER NOT NULL, all_page INTEGER NOT NULL, content TEXT NOT NULL)"
            ),
            format!("CREATE INDEX IF NOT EXISTS feedsync_event_category_page ON {EVENT_TABLE} (category, category_page, event_seq)"),
            format!("CREATE INDEX IF NOT EXISTS feedsync_event_all_page ON {EVENT_TABLE} (all_page, event_seq)"),
            format!("CREATE INDEX IF NOT EXISTS feedsync_event_entity ON {EVENT_TABLE} (table_name, entity_key)"),
            format!("CREATE TABLE IF NOT EXISTS {PAGE_TABLE} (feed TEXT NOT NULL PRIMARY KEY, page INTEGER NOT NULL, entries INTEGER NOT NULL)"),
            format!("CREATE TABLE IF NOT EXISTS {STATE_TABLE} (name TEXT NOT NULL PRIMARY KEY, value TEXT NULL)"),
            origin_table_ddl(),
        ],
        TableSet::Network => vec![
            format!("CREATE TABLE IF NOT EXISTS {OUTBOX_TABLE} (through_seq INTEGER NOT NULL PRIMARY KEY, push TEXT NOT NULL)"),
            format!(
                "CREATE TABLE IF NOT EXISTS {COMMAND_TABLE} (command_id INTEGER PRIMARY KEY AUTOINCREMENT, child TEXT NOT NULL, action TEXT NOT NULL, \
                 actor TEXT NOT NULL, created_at TEXT NOT NULL DEFAULT ({NOW}), done_at TEXT NULL, ok INTEGER NULL, message TEXT NULL)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {CHILD_TABLE} (name TEXT NOT NULL PRIMARY KEY, token_hash TEXT NOT NULL, categories TEXT NOT NULL, \
                 all_patients INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL DEFAULT ({NOW}), \
                 revoked_at TEXT NULL, acked_seq INTEGER NOT NULL DEFAULT 0, last_contact TEXT NULL, rules_checked_seq INTEGER NOT NULL DEFAULT 0, rules TEXT NULL, \
                 pulled_after INTEGER NULL, report TEXT NULL, reported_at TEXT NULL)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {CATCHMENT_TABLE} (child TEXT NOT NULL, patient_uuid TEXT NOT NULL, reason TEXT NOT NULL, \
                 added_at TEXT NOT NULL DEFAULT ({NOW}), needs_record INTEGER NOT NULL DEFAULT 0, \
                 record_sent_through INTEGER NULL, PRIMARY KEY (child, patient_uuid))"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {BASE_TABLE} (table_name TEXT NOT NULL, entity_key TEXT NOT NULL, hash TEXT NULL, body TEXT NULL, \
                 PRIMARY KEY (table_name, entity_key))"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {CONFLICT_TABLE} (conflict_id INTEGER PRIMARY KEY AUTOINCREMENT, table_name TEXT NOT NULL, \
                 entity_key TEXT NOT NULL, category TEXT NOT NULL, site_side TEXT NOT NULL, peer TEXT NOT NULL, \
                 detected_at TEXT NOT NULL DEFAULT ({NOW}), winner TEXT NOT NULL, \
                 entity_conflict INTEGER NOT NULL, fields TEXT NOT NULL, base TEXT NULL, parent_version TEXT NULL, child_version TEXT NULL, \
                 result TEXT NULL, status TEXT NOT NULL DEFAULT 'open', resolution TEXT NULL, resolved_at TEXT NULL)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {AUDIT_TABLE} (audit_id INTEGER PRIMARY KEY AUTOINCREMENT, \
                 at TEXT NOT NULL DEFAULT ({NOW}), actor TEXT NOT NULL, action TEXT NOT NULL, \
                 patient_uuid TEXT NULL, detail TEXT NULL)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {INBOX_TABLE} (inbox_id INTEGER PRIMARY KEY AUTOINCREMENT, peer TEXT NOT NULL, \
                 table_name TEXT NOT NULL, entity_key TEXT NOT NULL, item TEXT NOT NULL, reason TEXT NOT NULL, \
                 attempts INTEGER NOT NULL DEFAULT 0, received_at TEXT NOT NULL DEFAULT ({NOW}))"
            ),
            // Kept with the network tables (MySQL has it in the events table itself): databases
            // that predate the network got it when the network tables came.
            format!("CREATE INDEX IF NOT EXISTS feedsync_event_patient ON {EVENT_TABLE} (patient_uuid, event_seq)"),
            format!("CREATE TABLE IF NOT EXISTS {CHILD_TOKEN_TABLE} (token_hash TEXT NOT NULL PRIMARY KEY, child TEXT NOT NULL, valid_until TEXT NOT NULL)"),
            format!(
                "CREATE TABLE IF NOT EXISTS {TOKEN_TABLE} (name TEXT NOT NULL PRIMARY KEY, token_hash TEXT NOT NULL UNIQUE, scopes TEXT NOT NULL, \
                 categories TEXT NOT NULL, created_at TEXT NOT NULL DEFAULT ({NOW}), expires_at TEXT NULL, revoked_at TEXT NULL, \
                 previous_hash TEXT NULL, previous_valid_until TEXT NULL)"
            ),
        ],
        TableSet::Subscriber => vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {FEED_TABLE} (\
                   feed_id TEXT NOT NULL PRIMARY KEY, feed_url TEXT NOT NULL, marker_entry_id TEXT NULL, \
                   marker_page_url TEXT NULL, entries_read INTEGER NOT NULL DEFAULT 0, last_read_at TEXT NULL, last_error TEXT NULL)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {CHANGE_TABLE} (\
                   change_id INTEGER PRIMARY KEY AUTOINCREMENT, feed_id TEXT NOT NULL, entry_id TEXT NOT NULL, \
                   table_name TEXT NOT NULL, entity_key TEXT NOT NULL, link TEXT NOT NULL, status TEXT NOT NULL, \
                   reason TEXT NULL, waits_for TEXT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at TEXT NULL, \
                   created_at TEXT NOT NULL DEFAULT ({NOW}), skip_reason TEXT NULL)"
            ),
            format!("CREATE INDEX IF NOT EXISTS feedsync_sub_change_entity ON {CHANGE_TABLE} (table_name, entity_key)"),
            // The target may have no publisher installed, and appliers mark their origin there.
            origin_table_ddl(),
        ],
        TableSet::DashboardRounds => vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {ROUND_TABLE} (round_id INTEGER PRIMARY KEY AUTOINCREMENT, child TEXT NOT NULL, reported_at TEXT NOT NULL, \
                 observed_at TEXT NOT NULL DEFAULT ({NOW}), summary TEXT NOT NULL)"
            ),
            format!("CREATE UNIQUE INDEX IF NOT EXISTS feedsync_dashboard_round_report ON {ROUND_TABLE} (child, reported_at)"),
            format!("CREATE INDEX IF NOT EXISTS feedsync_dashboard_round_child ON {ROUND_TABLE} (child, round_id)"),
        ],
        TableSet::AlertState => vec![format!(
            "CREATE TABLE IF NOT EXISTS {ALERT_STATE_TABLE} (name TEXT NOT NULL PRIMARY KEY, value TEXT NOT NULL, \
             updated_at TEXT NOT NULL DEFAULT ({NOW}))"
        )],
    }
}

/// The current UTC time in the datetime text form, as a column default.
const NOW: &str = "strftime('%Y-%m-%d %H:%M:%f', 'now')";

fn origin_table_ddl() -> String {
    format!("CREATE TABLE IF NOT EXISTS {ORIGIN_TABLE} (origin TEXT NOT NULL)")
}

/// The writing transaction's origin, as a trigger body reads it: the one row of the origin
/// table (SQLite has no session variables; only the writer's own transaction sees the row).
pub(crate) fn origin_sql() -> String {
    format!("(SELECT origin FROM {ORIGIN_TABLE} LIMIT 1)")
}

/// Sets the origin; the last statement takes the origin as its one parameter.
pub(crate) fn set_origin_sql() -> Vec<String> {
    vec![format!("DELETE FROM {ORIGIN_TABLE}"), format!("INSERT INTO {ORIGIN_TABLE} (origin) VALUES (?)")]
}

pub(crate) fn clear_origin_sql() -> String {
    format!("DELETE FROM {ORIGIN_TABLE}")
}

/// No row to prepare: the writing transaction holds the whole database.
pub(crate) fn ensure_state_row_sql() -> Option<String> {
    None
}

/// No row lock: the writing transaction holds the whole database.
pub(crate) fn lock_state_row_sql() -> Option<String> {
    None
}
