//! Feed pages from published events: which page is open, what a page holds, its links, and
//! the bytes (through `atom`). Archived pages are a pure function of stored events and the
//! base URL, so they are byte-identical every time they are served.

use crate::capture::{EVENT_TABLE, PAGE_TABLE};
use feedsync_db::{DbResult, Row, Session, Value};

use feedsync_core::atom::{PageEntry, FeedPage, entry_id, render_page};
use crate::sequencer::ALL_FEED;

/// Without a version number: a generator string that changed on upgrade would change every
/// archived page's bytes.
pub const GENERATOR: &str = "feedsync feed-publisher";
pub const ATOMFEED_PATH: &str = "/ws/atomfeed";

/// The newest page of a feed and how many entries it has (page 1 with none if the feed has
/// never had an entry).
pub async fn open_page(session: &mut Session, feed: &str) -> DbResult<(i64, i64)> {
    let rows = session.query(&format!("SELECT page, entries FROM {PAGE_TABLE} WHERE feed = ?"), &[feed.into()]).await?;
    Ok(rows.first().map_or((1, 0), |r| (r.i64("page").unwrap_or(1), r.i64("entries").unwrap_or(0))))
}

/// Feeds that have ever had an entry.
pub async fn known_feeds(session: &mut Session) -> DbResult<Vec<String>> {
    Ok(session.query(&format!("SELECT feed FROM {PAGE_TABLE} ORDER BY feed"), &[]).await?.iter().filter_map(|r| r.text("feed")).collect())
}

pub async fn page_events(session: &mut Session, feed: &str, page: i64) -> DbResult<Vec<Row>> {
    if feed == ALL_FEED {
        session.query(&format!("SELECT * FROM {EVENT_TABLE} WHERE all_page = ? ORDER BY event_seq"), &[Value::Int(page)]).await
    } else {
        session
            .query(&format!("SELECT * FROM {EVENT_TABLE} WHERE category = ? AND category_page = ? ORDER BY event_seq"), &[feed.into(), Value::Int(page)])
            .await
    }
}

/// `2026-11-26 04:30:00.123000` (MySQL) or `2026-11-26 04:30:00.123` (SQLite) to RFC 3339 in
/// UTC with milliseconds, the one form the feeds use.
pub fn rfc3339(datetime: &str) -> String {
    let (date, time) = datetime.trim().split_once([' ', 'T']).unwrap_or((datetime, "00:00:00"));
    let time = time.trim_end_matches('Z');
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let millis: String = fraction.chars().chain(std::iter::repeat('0')).take(3).collect();
    format!("{date}T{hms}.{millis}Z")
}

pub struct PageLinks {
    pub base: String,
}

impl PageLinks {
    /// `base` is scheme, host, port and path prefix, e.g. `http://host:8086/openmrs`.
    pub fn page_url(&self, feed: &str, page: i64) -> String {
        format!("{}{ATOMFEED_PATH}/{feed}/{page}", self.base)
    }
    pub fn recent_url(&self, feed: &str) -> String {
        format!("{}{ATOMFEED_PATH}/{feed}/recent", self.base)
    }
}

/// Renders page `page` of `feed`. `open` is the feed's newest page; `recent` says whether the
/// request named `/recent` (its self link is then the recent URL). `empty_updated` is the time
/// used when the page has no entries.
pub fn render(
    feed: &str,
    page: i64,
    open: i64,
    recent: bool,
    events: &[Row],
    links: &PageLinks,
    feed_id_base: &str,
    empty_updated: &str,
) -> Vec<u8> {
    let entries: Vec<PageEntry> = events.iter().map(entry).collect();
    let updated = entries.last().map_or_else(|| empty_updated.to_owned(), |e| e.updated.clone());
    let self_url = if recent { links.recent_url(feed) } else { links.page_url(feed, page) };
    let via_url = links.page_url(feed, page);
    let prev = (page > 1).then(|| links.page_url(feed, page - 1));
    let next = (page < open).then(|| links.page_url(feed, page + 1));
    let feed_id = format!("{feed_id_base}:{feed}:{page}");
    render_page(&FeedPage {
        feed_id: &feed_id,
        title: feed,
        updated: &updated,
        self_url: &self_url,
        via_url: &via_url,
        prev_archive_url: prev.as_deref(),
        next_archive_url: next.as_deref(),
        generator: GENERATOR,
        entries: &entries,
    })
}

fn entry(row: &Row) -> PageEntry {
    let category = row.text("category").unwrap_or_default();
    let mut categories = vec![category.clone(), row.text("action").unwrap_or_default()];
    if let Some(patient) = row.text("patient_uuid") {
        categories.push(format!("patient:{patient}"));
    }
    if let Some(location) = row.text("location_uuid") {
        categories.push(format!("location:{location}"));
    }
    PageEntry {
        id: entry_id(&row.text("event_uuid").unwrap_or_default()),
        title: category,
        updated: rfc3339(&row.text("changed_at").unwrap_or_default()),
        categories,
        content: row.text("content").unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339("2026-11-26 04:30:00.123000"), "2026-11-26T04:30:00.123Z");
        assert_eq!(rfc3339("2026-11-26 04:30:00.1"), "2026-11-26T04:30:00.100Z");
        assert_eq!(rfc3339("2026-11-26 04:30:00"), "2026-11-26T04:30:00.000Z");
        assert_eq!(rfc3339("2026-11-26T04:30:00.5Z"), "2026-11-26T04:30:00.500Z");
    }

    #[test]
    fn links_of_first_middle_and_open_pages() {
        let links = PageLinks { base: "http://h/openmrs".into() };
        let bytes = render("patient", 2, 3, false, &[], &links, "urn:x", "2026-01-01T00:00:00.000Z");
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("rel=\"prev-archive\"") && text.contains("/ws/atomfeed/patient/1\""));
        assert!(text.contains("rel=\"next-archive\"") && text.contains("/ws/atomfeed/patient/3\""));
        let open = String::from_utf8(render("patient", 3, 3, true, &[], &links, "urn:x", "t")).unwrap();
        assert!(!open.contains("next-archive"));
        assert!(open.contains("http://h/openmrs/ws/atomfeed/patient/recent"));
        let first = String::from_utf8(render("patient", 1, 3, false, &[], &links, "urn:x", "t")).unwrap();
        assert!(!first.contains("prev-archive"));
    }
}
