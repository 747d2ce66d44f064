//! The MySQL/MariaDB backend (`mysql_async`): the pool a `Database` holds and the session over
//! one pooled connection. The same functions as `sqlite.rs`, in the same order; `lib.rs`
//! dispatches to one or the other and nothing else in the workspace names the driver.

use std::sync::Arc;

use mysql_async::prelude::Queryable;

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
