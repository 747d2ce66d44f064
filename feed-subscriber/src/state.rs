//! The subscriber's durable state inside the target database: one marker per feed, and the
//! queue of changes that could not be applied yet (waiting for references, or failed with a
//! reason). Both are written in the same transaction as the data they describe, so a crash
//! at any point loses nothing and applies nothing twice.
//!
//! The decisions (is an entity blocked, when is a failed change due again) are pure functions
//! at the bottom; everything else is SQL.

use feedsync_wire::hex;
use feedsync_db::{DbResult, Dialect, Row, Session, Value};
use sha2::{Digest, Sha256};

pub use feedsync_db::tables::{CHANGE_TABLE, FEED_TABLE};

/// Longest wait between two attempts at a failed change.
pub const RETRY_DELAY_MS_MAX: i64 = 3_600_000;
/// First wait after a failure; doubled per attempt up to the maximum.
pub const RETRY_DELAY_MS_FIRST: i64 = 5_000;

/// Creates the state tables where they are missing (their DDL is in `feedsync_db::tables`).
pub async fn prepare(session: &mut Session) -> DbResult<()> {
    feedsync_db::tables::create(session, feedsync_db::tables::TableSet::Subscriber).await
}

/// A feed's id in the state tables: its URL hashed (URLs are too long for a MySQL key).
pub fn feed_id(feed_url: &str) -> String {
    hex(&Sha256::digest(feed_url.as_bytes()))
}

/// The origin marker written with every change applied from a feed, so the local publisher
/// can tell those changes from local ones (fits the journal's 128-character origin column).
pub fn origin(feed_id: &str) -> String {
    format!("feed:{}", &feed_id[..feed_id.len().min(32)])
}

#[derive(Debug, Clone, PartialEq)]
pub struct FeedState {
    pub feed_url: String,
    pub marker_entry_id: Option<String>,
    pub marker_page_url: Option<String>,
    pub entries_read: i64,
    pub last_read_at: Option<String>,
    pub last_error: Option<String>,
}

pub async fn feed_state(session: &mut Session, feed_url: &str) -> DbResult<Option<FeedState>> {
    let rows = session.query(&format!("SELECT * FROM {FEED_TABLE} WHERE feed_id = ?"), &[feed_id(feed_url).into()]).await?;
    Ok(rows.first().map(feed_state_from_row))
}

pub async fn all_feeds(session: &mut Session) -> DbResult<Vec<FeedState>> {
    Ok(session.query(&format!("SELECT * FROM {FEED_TABLE} ORDER BY feed_url"), &[]).await?.iter().map(feed_state_from_row).collect())
}

fn feed_state_from_row(r: &Row) -> FeedState {
    FeedState {
        feed_url: r.text("feed_url").unwrap_or_default(),
        marker_entry_id: r.text("marker_entry_id"),
        marker_page_url: r.text("marker_page_url"),
        entries_read: r.i64("entries_read").unwrap_or(0),
        last_read_at: r.text("last_read_at"),
        last_error: r.text("last_error"),
    }
}

/// Moves a feed's marker; call inside the transaction that applied the entries it covers.
pub async fn set_marker(session: &mut Session, feed_url: &str, entry_id: &str, page_url: &str, entries: i64) -> DbResult<()> {
    let id = feed_id(feed_url);
    let now = feedsync_core::sql::now_sql(session.dialect());
    let updated = session
        .execute(
            &format!(
                "UPDATE {FEED_TABLE} SET marker_entry_id = ?, marker_page_url = ?, entries_read = entries_read + ?, \
                 last_read_at = {now}, last_error = NULL WHERE feed_id = ?"
            ),
            &[entry_id.into(), page_url.into(), Value::Int(entries), id.clone().into()],
        )
        .await?;
    if updated == 0 {
        session
            .execute(
                &format!(
                    "INSERT INTO {FEED_TABLE} (feed_id, feed_url, marker_entry_id, marker_page_url, entries_read, last_read_at) \
                     VALUES (?, ?, ?, ?, ?, {now})"
                ),
                &[id.into(), feed_url.into(), entry_id.into(), page_url.into(), Value::Int(entries)],
            )
            .await?;
    }
    Ok(())
}

/// Forgets a feed's marker (the next read starts from the first page); returns rows changed.
pub async fn reset_marker(session: &mut Session, feed_url: &str) -> DbResult<u64> {
    session
        .execute(
            &format!("UPDATE {FEED_TABLE} SET marker_entry_id = NULL, marker_page_url = NULL, last_error = NULL WHERE feed_id = ?"),
            &[feed_id(feed_url).into()],
        )
        .await
}

/// Records why the last read of a feed failed (cleared by the next marker move).
pub async fn set_feed_error(session: &mut Session, feed_url: &str, error: &str) -> DbResult<()> {
    let id = feed_id(feed_url);
    let n = session
        .execute(&format!("UPDATE {FEED_TABLE} SET last_error = ? WHERE feed_id = ?"), &[error.into(), id.clone().into()])
        .await?;
    if n == 0 {
        session
            .execute(
                &format!("INSERT INTO {FEED_TABLE} (feed_id, feed_url, last_error) VALUES (?, ?, ?)"),
                &[id.into(), feed_url.into(), error.into()],
            )
            .await?;
    }
    Ok(())
}


#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Waiting for referenced rows, or behind an earlier change to the same entity.
    Waiting,
    /// Failed with a reason; retried with backoff.
    Failed,
    /// Skipped by an operator, with a reason that is kept.
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Waiting => "waiting",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
        }
    }
    pub fn parse(text: &str) -> Option<Status> {
        match text {
            "waiting" => Some(Status::Waiting),
            "failed" => Some(Status::Failed),
            "skipped" => Some(Status::Skipped),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueuedChange {
    pub change_id: i64,
    pub feed_url_id: String,
    pub entry_id: String,
    pub table_name: String,
    pub entity_key: String,
    pub link: String,
    pub status: Status,
    pub reason: Option<String>,
    /// `table/key` of each referenced row it waits for.
    pub waits_for: Vec<String>,
    pub attempts: i64,
    pub next_attempt_at: Option<String>,
    pub created_at: String,
    pub skip_reason: Option<String>,
}

fn change_from_row(r: &Row) -> QueuedChange {
    QueuedChange {
        change_id: r.i64("change_id").unwrap_or(0),
        feed_url_id: r.text("feed_id").unwrap_or_default(),
        entry_id: r.text("entry_id").unwrap_or_default(),
        table_name: r.text("table_name").unwrap_or_default(),
        entity_key: r.text("entity_key").unwrap_or_default(),
        link: r.text("link").unwrap_or_default(),
        status: r.text("status").as_deref().and_then(Status::parse).unwrap_or(Status::Failed),
        reason: r.text("reason"),
        waits_for: r.text("waits_for").map(|w| w.split('\n').filter(|s| !s.is_empty()).map(str::to_owned).collect()).unwrap_or_default(),
        attempts: r.i64("attempts").unwrap_or(0),
        next_attempt_at: r.text("next_attempt_at"),
        created_at: r.text("created_at").unwrap_or_default(),
        skip_reason: r.text("skip_reason"),
    }
}

/// Most queued changes read at once; the queue itself has no other bound than the database,
/// which is the point (nothing is ever dropped), but reads of it are paged.
pub const QUEUE_PAGE_ROWS_MAX: i64 = 1_000;

/// Queued changes that are not skipped, oldest first, from `after_change_id`.
pub async fn pending(session: &mut Session, after_change_id: i64) -> DbResult<Vec<QueuedChange>> {
    let rows = session
        .query(
            &format!(
                "SELECT * FROM {CHANGE_TABLE} WHERE status <> 'skipped' AND change_id > ? ORDER BY change_id LIMIT {QUEUE_PAGE_ROWS_MAX}"
            ),
            &[Value::Int(after_change_id)],
        )
        .await?;
    Ok(rows.iter().map(change_from_row).collect())
}

pub async fn all_changes(session: &mut Session, limit: i64) -> DbResult<Vec<QueuedChange>> {
    let rows = session.query(&format!("SELECT * FROM {CHANGE_TABLE} ORDER BY change_id LIMIT {limit}"), &[]).await?;
    Ok(rows.iter().map(change_from_row).collect())
}

pub async fn change(session: &mut Session, change_id: i64) -> DbResult<Option<QueuedChange>> {
    let rows = session.query(&format!("SELECT * FROM {CHANGE_TABLE} WHERE change_id = ?"), &[Value::Int(change_id)]).await?;
    Ok(rows.first().map(change_from_row))
}

/// Whether an entity has an earlier change still queued (not skipped): then a new change to
/// it must queue behind, so changes to one entity apply in feed order.
pub async fn entity_blocked(session: &mut Session, table: &str, key: &str) -> DbResult<Option<i64>> {
    let rows = session
        .query(
            &format!("SELECT MIN(change_id) AS first FROM {CHANGE_TABLE} WHERE table_name = ? AND entity_key = ? AND status <> 'skipped'"),
            &[table.into(), key.into()],
        )
        .await?;
    Ok(rows.first().and_then(|r| r.i64("first")))
}

pub struct NewChange<'a> {
    pub feed_url: &'a str,
    pub entry_id: &'a str,
    pub table: &'a str,
    pub key: &'a str,
    pub link: &'a str,
    pub status: Status,
    pub reason: &'a str,
    pub waits_for: &'a [String],
}

pub async fn enqueue(session: &mut Session, change: &NewChange<'_>) -> DbResult<()> {
    let due = match change.status {
        Status::Failed => Some(retry_due_sql(session.dialect(), 1)),
        _ => None,
    };
    let due_sql = due.unwrap_or_else(|| "NULL".into());
    let attempts = i64::from(change.status == Status::Failed);
    session
        .execute(
            &format!(
                "INSERT INTO {CHANGE_TABLE} (feed_id, entry_id, table_name, entity_key, link, status, reason, waits_for, attempts, next_attempt_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, {due_sql})"
            ),
            &[
                feed_id(change.feed_url).into(),
                change.entry_id.into(),
                change.table.into(),
                change.key.into(),
                change.link.into(),
                change.status.as_str().into(),
                change.reason.into(),
                change.waits_for.join("\n").into(),
                Value::Int(attempts),
            ],
        )
        .await?;
    Ok(())
}

/// After another unsuccessful attempt: new status, reason and (for failures) the next due time.
pub async fn record_attempt(session: &mut Session, change_id: i64, status: Status, reason: &str, waits_for: &[String], attempts: i64) -> DbResult<()> {
    let due = if status == Status::Failed { retry_due_sql(session.dialect(), attempts) } else { "NULL".into() };
    session
        .execute(
            &format!("UPDATE {CHANGE_TABLE} SET status = ?, reason = ?, waits_for = ?, attempts = ?, next_attempt_at = {due} WHERE change_id = ?"),
            &[status.as_str().into(), reason.into(), waits_for.join("\n").into(), Value::Int(attempts), Value::Int(change_id)],
        )
        .await?;
    Ok(())
}

/// Removes the queued changes of an entity up to `through_change_id`: applying the entity's
/// current state covers every earlier change to it.
pub async fn resolve_entity(session: &mut Session, table: &str, key: &str, through_change_id: i64) -> DbResult<u64> {
    session
        .execute(
            &format!("DELETE FROM {CHANGE_TABLE} WHERE table_name = ? AND entity_key = ? AND change_id <= ? AND status <> 'skipped'"),
            &[table.into(), key.into(), Value::Int(through_change_id)],
        )
        .await
}

/// Makes failed changes due now (all, or one).
pub async fn retry_now(session: &mut Session, change_id: Option<i64>) -> DbResult<u64> {
    let now = feedsync_core::sql::now_sql(session.dialect());
    match change_id {
        Some(id) => session.execute(&format!("UPDATE {CHANGE_TABLE} SET next_attempt_at = {now} WHERE change_id = ? AND status = 'failed'"), &[Value::Int(id)]).await,
        None => session.execute(&format!("UPDATE {CHANGE_TABLE} SET next_attempt_at = {now} WHERE status = 'failed'"), &[]).await,
    }
}

/// Skips a queued change with a reason that is kept (the row stays, marked skipped).
pub async fn skip(session: &mut Session, change_id: i64, reason: &str) -> DbResult<u64> {
    session
        .execute(
            &format!("UPDATE {CHANGE_TABLE} SET status = 'skipped', skip_reason = ? WHERE change_id = ? AND status <> 'skipped'"),
            &[reason.into(), Value::Int(change_id)],
        )
        .await
}

/// Whether a failed change is due: its next attempt time has passed. Text comparison works
/// because both backends store `YYYY-MM-DD HH:MM:SS.fff` in UTC.
pub fn is_due(change: &QueuedChange, now: &str) -> bool {
    match change.status {
        Status::Waiting => true,
        Status::Skipped => false,
        Status::Failed => change.next_attempt_at.as_deref().is_none_or(|due| due <= now),
    }
}

/// Delay before attempt `attempts + 1`: doubling from the first delay, capped.
pub fn retry_delay_ms(attempts: i64) -> i64 {
    let shift = attempts.clamp(1, 30) - 1;
    RETRY_DELAY_MS_FIRST.saturating_mul(1i64 << shift).min(RETRY_DELAY_MS_MAX)
}

fn retry_due_sql(dialect: Dialect, attempts: i64) -> String {
    feedsync_core::sql::now_plus_ms_sql(dialect, retry_delay_ms(attempts))
}

/// The database's current UTC time in the state tables' text form.
pub async fn now(session: &mut Session) -> DbResult<String> {
    let sql = format!("SELECT {} AS now", feedsync_core::sql::now_sql(session.dialect()));
    Ok(session.query(&sql, &[]).await?.first().and_then(|r| r.text("now")).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(retry_delay_ms(1), RETRY_DELAY_MS_FIRST);
        assert_eq!(retry_delay_ms(2), 2 * RETRY_DELAY_MS_FIRST);
        assert_eq!(retry_delay_ms(60), RETRY_DELAY_MS_MAX);
        let mut last = 0;
        for a in 1..100 {
            let d = retry_delay_ms(a);
            assert!(d >= last && d <= RETRY_DELAY_MS_MAX);
            last = d;
        }
    }

    #[test]
    fn due_rules() {
        let mut c = QueuedChange {
            change_id: 1,
            feed_url_id: String::new(),
            entry_id: String::new(),
            table_name: "obs".into(),
            entity_key: "k".into(),
            link: String::new(),
            status: Status::Failed,
            reason: None,
            waits_for: vec![],
            attempts: 1,
            next_attempt_at: Some("2026-01-01 00:00:05.000".into()),
            created_at: String::new(),
            skip_reason: None,
        };
        assert!(!is_due(&c, "2026-01-01 00:00:04.999"));
        assert!(is_due(&c, "2026-01-01 00:00:05.000"));
        c.status = Status::Waiting;
        assert!(is_due(&c, "2000-01-01 00:00:00.000"));
        c.status = Status::Skipped;
        assert!(!is_due(&c, "2100-01-01 00:00:00.000"));
    }
}
