//! The one clock the toolkit reads for ages: the database's. Every stored time was written by
//! the database (`feedsync_core::sql::now_sql`), so an age computed against its `now` compares
//! like with like whatever the host's clock or zone says.

use feedsync_db::{DbResult, Session};

/// The database's current time, in the datetime text form it writes.
pub async fn db_now(session: &mut Session) -> DbResult<String> {
    let sql = format!("SELECT {} AS now", feedsync_core::sql::now_sql(session.dialect()));
    Ok(session.query(&sql, &[]).await?.first().and_then(|r| r.text("now")).unwrap_or_default())
}

/// Reads a time as the database writes it (also with `T` and a trailing `Z`).
pub fn parse_time(text: &str) -> Option<chrono::NaiveDateTime> {
    let text = text.trim().trim_end_matches('Z').replace('T', " ");
    chrono::NaiveDateTime::parse_from_str(&text, "%Y-%m-%d %H:%M:%S%.f").ok()
}

/// Seconds from `then` to `now` (both as the database writes times), never negative; `None`
/// when either is missing or unreadable.
pub fn age_s(now: &str, then: Option<&str>) -> Option<i64> {
    let (now, then) = (parse_time(now)?, parse_time(then?)?);
    Some((now - then).num_seconds().max(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_between_database_times() {
        assert_eq!(age_s("2026-01-02 10:00:00.000", Some("2026-01-01 09:00:00")), Some(25 * 3600));
        assert_eq!(age_s("2026-01-02 10:00:00.500000", Some("2026-01-02T09:59:30.000Z")), Some(30));
        assert_eq!(age_s("2026-01-02 00:00:00.000", Some("2026-01-01 00:00:00")), Some(86_400));
        assert_eq!(age_s("2026-01-01 00:00:00", Some("2026-01-01T00:00:05.5Z")), Some(0), "a clock step back is not negative");
        assert_eq!(age_s("2026-01-02 10:00:00", Some("not a time")), None);
        assert_eq!(age_s("garbage", Some("2026-01-01 00:00:00")), None);
        assert_eq!(age_s("2026-01-02 10:00:00", None), None);
    }
}
