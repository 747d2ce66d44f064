//! The MySQL/MariaDB backend (`mysql_async`): the pool a `Database` holds, the session over
//! one pooled connection, and the SQL text of the toolkit's own tables on MySQL (their DDL,
//! the origin marker as a session variable, the sequencer's row lock). The same functions as
//! `sqlite.rs`, in the same order; `lib.rs` and `tables.rs` dispatch to one or the other, and
//! nothing else in the workspace names the driver.

use std::sync::Arc;

use mysql_async::prelude::Queryable;

use crate::tables::*;
use crate::{DbError, DbResult, MYSQL_POOL_CONNECTIONS_MAX, Row, Value, format_datetime, redact, sql_head};

/// Builds the pool for a `mysql://` URL (already normalized from `mariadb://`). Opens nothing.
pub(crate) fn pool(normalized: &str, url: &str) -> DbResult<mysql_async::Pool> {
    let opts = mysql_async::Opts::from_url(normalized).map_err(|e| DbError::BadUrl { url: redact(url), reason: e.to_string() })?;
    let constraints = mysql_async::PoolConstraints::new(1, MYSQL_POOL_CONNECTIONS_MAX).expect("1 <= max");
    let opts = mysql_async::OptsBuilder::from_opts(opts)
        .pool_opts(mysql_async::PoolOpts::default().with_constraints(constraints))
        // UTC everywhere: datetime columns carry no zone and sites' clocks disagree.
        .init(vec!["SET time_zone = '+00:00'", "SET NAMES utf8mb4"]);
    Ok(mysql_async::Pool::new(opts))
}

/// Closes pooled connections, bounded so exit never hangs on a lost server.
pub(crate) async fn close(pool: mysql_async::Pool) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), pool.disconnect()).await;
}

/// One pooled connection.
pub(crate) struct MySqlSession {
    conn: Box<mysql_async::Conn>,
    display: String,
}

impl MySqlSession {
    pub(crate) async fn open(pool: &mysql_async::Pool, display: &str) -> DbResult<MySqlSession> {
        let conn = pool.get_conn().await.map_err(|e| error(e, display, ""))?;
        Ok(MySqlSession { conn: Box::new(conn), display: display.to_owned() })
    }

    pub(crate) async fn query(&mut self, sql: &str, values: &[Value]) -> DbResult<Vec<Row>> {
        let rows: Vec<mysql_async::Row> = self.conn.exec(sql, params(values)).await.map_err(|e| error(e, &self.display, sql))?;
        Ok(convert_rows(rows))
    }

    pub(crate) async fn execute(&mut self, sql: &str, values: &[Value]) -> DbResult<u64> {
        self.conn.exec_drop(sql, params(values)).await.map_err(|e| error(e, &self.display, sql))?;
        Ok(self.conn.affected_rows())
    }

    pub(crate) fn last_insert_id(&self) -> i64 {
        self.conn.last_insert_id().unwrap_or(0) as i64
    }

    /// One statement per call: trigger bodies contain semicolons.
    pub(crate) async fn execute_script(&mut self, sql: &str) -> DbResult<()> {
        self.conn.query_drop(sql).await.map_err(|e| error(e, &self.display, sql))
    }

    pub(crate) async fn read_committed(&mut self) -> DbResult<()> {
        self.execute_script("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED").await
    }

    pub(crate) async fn begin(&mut self) -> DbResult<()> {
        self.execute_script("START TRANSACTION").await
    }
}

fn params(params: &[Value]) -> mysql_async::Params {
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

fn convert_rows(rows: Vec<mysql_async::Row>) -> Vec<Row> {
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
                .map(|(i, v)| convert_value(v, binary[i], decimal[i]))
                .collect();
            Row { columns: names.clone(), values }
        })
        .collect()
}

fn convert_value(v: mysql_async::Value, binary: bool, decimal: bool) -> Value {
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

pub(crate) fn error(e: mysql_async::Error, target: &str, sql: &str) -> DbError {
    match e {
        mysql_async::Error::Server(server) => {
            DbError::Statement { sql: sql_head(sql), message: format!("{} (MySQL error {})", server.message, server.code) }
        }
        mysql_async::Error::Driver(d) => DbError::Statement { sql: sql_head(sql), message: d.to_string() },
        other => DbError::Unavailable { target: target.to_owned(), message: other.to_string() },
    }
}

// ---- the toolkit's own tables and statements (SQL text; `tables.rs` dispatches) ----

/// The statements creating a set's tables and indexes where they are missing, in order.
pub(crate) fn create_tables(set: TableSet) -> Vec<String> {
    match set {
        TableSet::Capture => vec![
            // journal_id orders changes only within what one reader sees; the sequencer,
            // not this number, gives events their published order (see node::sequencer).
            format!(
                "CREATE TABLE IF NOT EXISTS {JOURNAL_TABLE} (\
                   journal_id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, \
                   table_name VARCHAR(64) NOT NULL, \
                   action VARCHAR(16) NOT NULL, \
                   entity_key VARCHAR(512) NULL, \
                   row_key VARCHAR(512) NULL, \
                   patient_uuid VARCHAR(38) NULL, \
                   location_uuid VARCHAR(38) NULL, \
                   origin VARCHAR(128) NULL, \
                   changed_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)\
                 ) {TABLE_OPTIONS}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {EVENT_TABLE} (\
                   event_seq BIGINT NOT NULL PRIMARY KEY, \
                   event_uuid CHAR(36) NOT NULL, \
                   table_name VARCHAR(64) NOT NULL, \
                   category VARCHAR(64) NOT NULL, \
                   action VARCHAR(16) NOT NULL, \
                   entity_key VARCHAR(512) NOT NULL, \
                   patient_uuid VARCHAR(38) NULL, \
                   location_uuid VARCHAR(38) NULL, \
                   origin VARCHAR(128) NULL, \
                   changed_at DATETIME(3) NOT NULL, \
                   category_page BIGINT NOT NULL, \
                   all_page BIGINT NOT NULL, \
                   content TEXT NOT NULL, \
                   KEY feedsync_event_category_page (category, category_page, event_seq), \
                   KEY feedsync_event_all_page (all_page, event_seq), \
                   KEY feedsync_event_entity (table_name, entity_key(191)), \
                   KEY feedsync_event_patient (patient_uuid, event_seq)\
                 ) {TABLE_OPTIONS}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {PAGE_TABLE} (\
                   feed VARCHAR(64) NOT NULL PRIMARY KEY, \
                   page BIGINT NOT NULL, \
                   entries BIGINT NOT NULL\
                 ) {TABLE_OPTIONS}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {STATE_TABLE} (\
                   name VARCHAR(191) NOT NULL PRIMARY KEY, \
                   value TEXT NULL\
                 ) {TABLE_OPTIONS}"
            ),
        ],
        TableSet::Network => vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {OUTBOX_TABLE} (through_seq BIGINT NOT NULL PRIMARY KEY, push LONGTEXT NOT NULL\
                 ) {TABLE_OPTIONS}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {COMMAND_TABLE} (command_id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, child VARCHAR(64) NOT NULL, \
                 action TEXT NOT NULL, actor VARCHAR(128) NOT NULL, created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3), \
                 done_at DATETIME(3) NULL, ok TINYINT NULL, message TEXT NULL, KEY feedsync_command_child (child, done_at)\
                 ) {TABLE_OPTIONS}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {CHILD_TABLE} (name VARCHAR(64) NOT NULL PRIMARY KEY, token_hash CHAR(64) NOT NULL, \
                 categories TEXT NOT NULL, all_patients TINYINT NOT NULL DEFAULT 0, created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3), \
                 revoked_at DATETIME(3) NULL, acked_seq BIGINT NOT NULL DEFAULT 0, last_contact DATETIME(3) NULL, rules_checked_seq BIGINT NOT NULL DEFAULT 0, rules TEXT NULL, \
                 pulled_after BIGINT NULL, report MEDIUMTEXT NULL, reported_at DATETIME(3) NULL\
                 ) {TABLE_OPTIONS}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {CATCHMENT_TABLE} (child VARCHAR(64) NOT NULL, patient_uuid VARCHAR(38) NOT NULL, \
                 reason VARCHAR(32) NOT NULL, added_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3), needs_record TINYINT NOT NULL DEFAULT 0, \
                 record_sent_through BIGINT NULL, PRIMARY KEY (child, patient_uuid)\
                 ) {TABLE_OPTIONS}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {BASE_TABLE} (table_name VARCHAR(64) NOT NULL, entity_key VARCHAR(191) NOT NULL, \
                 hash VARCHAR(80) NULL, body MEDIUMTEXT NULL, PRIMARY KEY (table_name, entity_key)\
                 ) {TABLE_OPTIONS}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {CONFLICT_TABLE} (conflict_id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, \
                 table_name VARCHAR(64) NOT NULL, entity_key VARCHAR(512) NOT NULL, category VARCHAR(64) NOT NULL, \
                 site_side VARCHAR(8) NOT NULL, peer VARCHAR(128) NOT NULL, detected_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3), \
                 winner VARCHAR(8) NOT NULL, entity_conflict TINYINT NOT NULL, fields TEXT NOT NULL, base MEDIUMTEXT NULL, \
                 parent_version MEDIUMTEXT NULL, child_version MEDIUMTEXT NULL, result MEDIUMTEXT NULL, \
                 status VARCHAR(16) NOT NULL DEFAULT 'open', resolution TEXT NULL, resolved_at DATETIME(3) NULL, \
                 KEY feedsync_conflict_status (status, conflict_id)\
                 ) {TABLE_OPTIONS}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {AUDIT_TABLE} (audit_id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, \
                 at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3), actor VARCHAR(128) NOT NULL, action VARCHAR(32) NOT NULL, \
                 patient_uuid VARCHAR(38) NULL, detail TEXT NULL\
                 ) {TABLE_OPTIONS}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {INBOX_TABLE} (inbox_id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, \
                 peer VARCHAR(128) NOT NULL, table_name VARCHAR(64) NOT NULL, entity_key VARCHAR(512) NOT NULL, \
                 item MEDIUMTEXT NOT NULL, reason TEXT NOT NULL, attempts INT NOT NULL DEFAULT 0, \
                 received_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3), KEY feedsync_inbox_peer (peer, inbox_id)\
                 ) {TABLE_OPTIONS}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {CHILD_TOKEN_TABLE} (token_hash CHAR(64) NOT NULL PRIMARY KEY, child VARCHAR(64) NOT NULL, \
                 valid_until DATETIME(3) NOT NULL, KEY feedsync_child_token_child (child)\
                 ) {TABLE_OPTIONS}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {TOKEN_TABLE} (name VARCHAR(64) NOT NULL PRIMARY KEY, token_hash CHAR(64) NOT NULL, \
                 scopes VARCHAR(255) NOT NULL, categories TEXT NOT NULL, created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3), \
                 expires_at DATETIME(3) NULL, revoked_at DATETIME(3) NULL, previous_hash CHAR(64) NULL, previous_valid_until DATETIME(3) NULL, \
                 UNIQUE KEY feedsync_token_hash (token_hash), KEY feedsync_token_previous (previous_hash)\
                 ) {TABLE_OPTIONS}"
            ),
        ],
        TableSet::Subscriber => vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {FEED_TABLE} (\
                   feed_id CHAR(64) NOT NULL PRIMARY KEY, feed_url TEXT NOT NULL, \
                   marker_entry_id VARCHAR(255) NULL, marker_page_url TEXT NULL, \
                   entries_read BIGINT NOT NULL DEFAULT 0, last_read_at DATETIME(3) NULL, last_error TEXT NULL\
                 ) {TABLE_OPTIONS}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {CHANGE_TABLE} (\
                   change_id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, feed_id CHAR(64) NOT NULL, \
                   entry_id VARCHAR(255) NOT NULL, table_name VARCHAR(64) NOT NULL, entity_key VARCHAR(512) NOT NULL, \
                   link TEXT NOT NULL, status VARCHAR(16) NOT NULL, reason TEXT NULL, waits_for TEXT NULL, \
                   attempts INT NOT NULL DEFAULT 0, next_attempt_at DATETIME(3) NULL, \
                   created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3), skip_reason TEXT NULL, \
                   KEY feedsync_sub_change_entity (table_name, entity_key(191))\
                 ) {TABLE_OPTIONS}"
            ),
        ],
        TableSet::DashboardRounds => vec![format!(
            "CREATE TABLE IF NOT EXISTS {ROUND_TABLE} (round_id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, child VARCHAR(64) NOT NULL, \
             reported_at VARCHAR(32) NOT NULL, observed_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3), summary TEXT NOT NULL, \
             UNIQUE KEY feedsync_dashboard_round_report (child, reported_at), KEY feedsync_dashboard_round_child (child, round_id)\
             ) {TABLE_OPTIONS}"
        )],
        TableSet::AlertState => vec![format!(
            "CREATE TABLE IF NOT EXISTS {ALERT_STATE_TABLE} (name VARCHAR(191) NOT NULL PRIMARY KEY, value MEDIUMTEXT NOT NULL, \
             updated_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)) {TABLE_OPTIONS}"
        )],
    }
}

/// Every toolkit table: transactional, and utf8mb4 whatever the server's default.
const TABLE_OPTIONS: &str = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4";

/// The writing session's origin, as a trigger body reads it: a session variable.
pub(crate) fn origin_sql() -> String {
    MYSQL_ORIGIN_VARIABLE.into()
}

/// Sets the origin; the last statement takes the origin as its one parameter.
pub(crate) fn set_origin_sql() -> Vec<String> {
    vec![format!("SET {MYSQL_ORIGIN_VARIABLE} = ?")]
}

pub(crate) fn clear_origin_sql() -> String {
    format!("SET {MYSQL_ORIGIN_VARIABLE} = NULL")
}

/// Inserts the state row named by the one parameter if it is missing.
pub(crate) fn ensure_state_row_sql() -> Option<String> {
    Some(format!("INSERT IGNORE INTO {STATE_TABLE} (name, value) VALUES (?, '')"))
}

/// Locks the state row named by the one parameter until the transaction ends.
pub(crate) fn lock_state_row_sql() -> Option<String> {
    Some(format!("SELECT value FROM {STATE_TABLE} WHERE name = ? FOR UPDATE"))
}
