//! Following one Atom feed (RFC 5005 archived pages) from a marker, the way existing OpenMRS
//! feed clients do, so feed-publisher and the OpenMRS atomfeed module are read alike:
//!
//! - Without a marker, start at the first page: fetch the feed URL (`/recent`), walk back
//!   through `prev-archive` to the page that has none, then read forward.
//! - With a marker (the last entry read and the page it was on), fetch that page, take the
//!   entries after the marker's entry, then follow `next-archive`.
//!
//! Markers name the page by its stable URL (the `via` link of an open page), because `/recent`
//! moves. Archived pages never change, so the marker's entry must still be on its page; if it
//! is not, history was rewritten and reading stops with an error instead of guessing where to
//! go on (a guess would skip or repeat changes silently).
//!
//! The decisions about where reading starts and when it stops are pure functions
//! ([`entries_after`], [`at_page_end`]); [`FeedReader`] does the fetching around them.

use std::collections::HashSet;

use atom_syndication::Feed;
use feedsync_core::xml_guard::{self, FEED_PAGE_BYTES_MAX, FEED_PAGE_DEPTH_MAX};
use url::Url;

use crate::client::{ClientError, HttpClient};

/// Pages one [`FeedReader::read_after`] call may fetch. The walk back to the first page costs
/// one fetch per page, once per feed; 10,000 pages of 500 entries is five million changes.
pub const PAGES_MAX_DEFAULT: usize = 10_000;

/// How far a feed has been read: the last entry taken and the page it was on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub entry_id: String,
    /// The page's stable URL (its `via` link), never `/recent`.
    pub page_url: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FeedEntry {
    /// e.g. `tag:atomfeed.ict4h.org:<event uuid>`.
    pub id: String,
    pub updated: chrono::DateTime<chrono::FixedOffset>,
    /// Category terms in page order: category, action, filter tags for feed-publisher.
    pub categories: Vec<String>,
    pub content: EntryContent,
    /// The stable URL of the page the entry is on: what a marker after this entry names.
    pub page_url: String,
}

impl FeedEntry {
    /// The marker that says this entry, and everything before it, has been read.
    pub fn marker(&self) -> Marker {
        Marker { entry_id: self.id.clone(), page_url: self.page_url.clone() }
    }
}

/// An entry's content, with relative URLs resolved against the page's URL.
#[derive(Debug, Clone, PartialEq)]
pub enum EntryContent {
    /// A JSON object of links (feed-publisher, OpenMRS Sync 2.0): `resource` is
    /// feed-publisher's own, `rest` and `fhir` are OpenMRS's APIs.
    Links { resource: Option<String>, rest: Option<String>, fhir: Option<String> },
    /// Anything else, as text: Bahmni's flavour is one relative URL such as
    /// `/openmrs/ws/rest/v1/patient/<uuid>?v=full`. Text that is not a URL (or is broken
    /// JSON) is kept as it was, so one odd entry is the consumer's to report and never stops
    /// the reading of a feed.
    Url(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReadBatch {
    /// Oldest first; each entry is read exactly once when markers are kept after each batch.
    pub entries: Vec<FeedEntry>,
    /// The newest page was read to its end: there is nothing more to read now.
    pub caught_up: bool,
}

impl ReadBatch {
    /// The marker to keep once every entry of this batch is handled; `None` for an empty batch
    /// (keep the marker read from).
    pub fn marker(&self) -> Option<Marker> {
        self.entries.last().map(FeedEntry::marker)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read feed page {page_url}: {source}")]
    Fetch {
        page_url: String,
        #[source]
        source: ClientError,
    },
    #[error(
        "feed page {page_url} is not a readable Atom feed: {reason}. Check that the feed URL names a feed \
         (e.g. .../ws/atomfeed/patient/recent) and that no proxy or login page answers in its place"
    )]
    MalformedPage { page_url: String, reason: String },
    #[error(
        "entry {entry_id} is no longer on feed page {page_url} ({entries_on_page} entries there), where it was read last: \
         the page changed, which an archived page never should (was the publisher's database restored from a backup, \
         or capture re-installed on a fresh database?). Nothing was skipped or read twice. To go on, an operator can \
         reset this feed's marker to read the feed again from its first page (safe: applying is idempotent, but slow \
         for long feeds), or set the marker to an entry on this page after checking which changes were missed"
    )]
    MarkerNotOnPage { page_url: String, entry_id: String, entries_on_page: usize },
    #[error(
        "reading feed {feed_url} took more than {pages_max} pages without reaching {goal}; \
         if the feed really is this long, raise pages_max"
    )]
    TooManyPages { feed_url: String, pages_max: usize, goal: &'static str },
    #[error("the {rel} link of feed page {page_url} leads back to {repeated_url}, already read: the feed's links form a loop")]
    LinkLoop { page_url: String, rel: &'static str, repeated_url: String },
}

impl ReadError {
    /// Only a page that could not be fetched may be read later; the others need a person.
    pub fn is_retryable(&self) -> bool {
        match self {
            ReadError::Fetch { source, .. } => source.is_retryable(),
            ReadError::MalformedPage { .. } | ReadError::MarkerNotOnPage { .. } | ReadError::TooManyPages { .. } | ReadError::LinkLoop { .. } => false,
        }
    }
}

/// The marker's entry is not among the page's entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkerNotOnPage;

/// Index of the first entry still to read on a page: 0 without a marker, else the one after
/// the marker's entry. Should an id occur twice, the first occurrence counts, as in the
/// reference client: reading something again is harmless, skipping it is not.
pub fn entries_after<S: AsRef<str>>(page_entries: &[S], marker_entry: Option<&str>) -> Result<usize, MarkerNotOnPage> {
    let Some(marker_entry) = marker_entry else { return Ok(0) };
    page_entries.iter().position(|id| id.as_ref() == marker_entry).map(|index| index + 1).ok_or(MarkerNotOnPage)
}

/// What to do when a batch has taken what it can from a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageEnd {
    /// Read this page next.
    Continue { next_page_url: String },
    Stop { caught_up: bool },
}

/// `page_exhausted`: every entry of the page is in the batch; `batch_full`: the batch has
/// all the entries it may hold. The newest page is the one without `next-archive`; reaching its
/// end is being caught up, even if the batch is full at that very point.
pub fn at_page_end(page_exhausted: bool, next_archive: Option<&str>, batch_full: bool) -> PageEnd {
    match (page_exhausted, next_archive) {
        (false, _) => PageEnd::Stop { caught_up: false },
        (true, None) => PageEnd::Stop { caught_up: true },
        (true, Some(_)) if batch_full => PageEnd::Stop { caught_up: false },
        (true, Some(next)) => PageEnd::Continue { next_page_url: next.to_owned() },
    }
}

/// One parsed feed page.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// Where the page was fetched from (after redirects); relative links resolve against it.
    pub fetched_url: String,
    /// Its stable URL: `via` if it has one, else where it was fetched from (archived pages of
    /// the reference server have no `via`; their own URL is stable). An open page without
    /// `via` would make markers name `/recent`, which breaks once that page is archived; both
    /// feed-publisher and the reference server give it one.
    pub page_url: String,
    pub prev_archive: Option<String>,
    pub next_archive: Option<String>,
    pub entries: Vec<FeedEntry>,
}

/// Parses an Atom page fetched from `fetched_url`. Pure: no IO.
pub fn parse_page(fetched_url: &str, bytes: &[u8]) -> Result<Page, ReadError> {
    let malformed = |reason: String| ReadError::MalformedPage { page_url: fetched_url.to_owned(), reason };
    let base = Url::parse(fetched_url).map_err(|e| malformed(format!("its URL does not parse: {e}")))?;
    xml_guard::check(bytes, FEED_PAGE_BYTES_MAX, FEED_PAGE_DEPTH_MAX).map_err(|e| malformed(e.to_string()))?;
    let feed = Feed::read_from(bytes).map_err(|e| malformed(format!("{e} (starts with {:?})", text_start(bytes))))?;
    let link = |rel: &str| feed.links().iter().find(|link| link.rel() == rel).map(|link| resolve(&base, link.href()));
    let page_url = link("via").unwrap_or_else(|| fetched_url.to_owned());
    let mut entries = Vec::with_capacity(feed.entries().len());
    for (index, entry) in feed.entries().iter().enumerate() {
        let id = entry.id().trim();
        if id.is_empty() {
            return Err(malformed(format!("entry {} has no id, so no marker could ever point at it", index + 1)));
        }
        let content = entry.content().and_then(|content| content.value()).unwrap_or("");
        entries.push(FeedEntry {
            id: id.to_owned(),
            updated: *entry.updated(),
            categories: entry.categories().iter().map(|category| category.term().to_owned()).collect(),
            content: parse_content(&base, content),
            page_url: page_url.clone(),
        });
    }
    Ok(Page { fetched_url: fetched_url.to_owned(), page_url, prev_archive: link("prev-archive"), next_archive: link("next-archive"), entries })
}

/// The first characters of a body, for an error about it: an HTML login page or a proxy's
/// message is recognised at once.
fn text_start(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(80)]).split_whitespace().collect::<Vec<_>>().join(" ")
}

fn resolve(base: &Url, reference: &str) -> String {
    base.join(reference.trim()).map(String::from).unwrap_or_else(|_| reference.to_owned())
}

/// Reads an entry's content text. The reference server wraps content in CDATA itself, and
/// some servers escape that CDATA instead of writing it, so a parser hands back the markers;
/// they are removed as the reference client does.
fn parse_content(base: &Url, raw: &str) -> EntryContent {
    let mut text = raw.trim();
    if let Some(inner) = text.strip_prefix("<![CDATA[").and_then(|t| t.strip_suffix("]]>")) {
        text = inner.trim();
    }
    if text.starts_with('{') {
        if let Ok(serde_json::Value::Object(object)) = serde_json::from_str::<serde_json::Value>(text) {
            let link = |name: &str| object.get(name).and_then(|value| value.as_str()).map(|href| resolve(base, href));
            return EntryContent::Links { resource: link("resource"), rest: link("rest"), fhir: link("fhir") };
        }
        return EntryContent::Url(text.to_owned());
    }
    if text.is_empty() || text.contains(char::is_whitespace) {
        return EntryContent::Url(text.to_owned());
    }
    EntryContent::Url(resolve(base, text))
}

/// Reads one feed through an [`HttpClient`].
#[derive(Debug, Clone)]
pub struct FeedReader {
    client: HttpClient,
    feed_url: String,
    pages_max: usize,
}

impl FeedReader {
    /// `feed_url` is where reading without a marker starts: the feed's newest page, e.g.
    /// `http://host:8086/ws/atomfeed/patient/recent`.
    pub fn new(client: HttpClient, feed_url: impl Into<String>) -> FeedReader {
        FeedReader { client, feed_url: feed_url.into(), pages_max: PAGES_MAX_DEFAULT }
    }

    /// Most pages one [`FeedReader::read_after`] call fetches.
    pub fn with_pages_max(mut self, pages_max: usize) -> FeedReader {
        self.pages_max = pages_max.max(1);
        self
    }

    pub fn feed_url(&self) -> &str {
        &self.feed_url
    }

    /// Fetches and parses one page.
    pub async fn fetch_page(&self, url: &str) -> Result<Page, ReadError> {
        tracing::debug!(%url, "reading feed page");
        let response = self.client.get(url).await.map_err(|source| ReadError::Fetch { page_url: url.to_owned(), source })?;
        parse_page(&response.url, &response.body)
    }

    /// Up to `entries_max` entries after `marker` (from the first page without one), oldest
    /// first. Keep `ReadBatch::marker()` once they are handled, and pass it next time.
    pub async fn read_after(&self, marker: Option<&Marker>, entries_max: usize) -> Result<ReadBatch, ReadError> {
        let mut visited: HashSet<String> = HashSet::new();
        let (mut page, mut start) = match marker {
            None => (self.first_page(&mut visited).await?, 0),
            Some(marker) => {
                let page = self.fetch_page(&marker.page_url).await?;
                visited.insert(page.page_url.clone());
                let ids: Vec<&str> = page.entries.iter().map(|entry| entry.id.as_str()).collect();
                let start = entries_after(&ids, Some(&marker.entry_id)).map_err(|MarkerNotOnPage| ReadError::MarkerNotOnPage {
                    page_url: marker.page_url.clone(),
                    entry_id: marker.entry_id.clone(),
                    entries_on_page: ids.len(),
                })?;
                (page, start)
            }
        };
        let mut entries = Vec::new();
        loop {
            let room = entries_max - entries.len();
            let end = page.entries.len().min(start + room);
            let page_exhausted = end == page.entries.len();
            entries.extend(page.entries.drain(start..end));
            let next_page_url = match at_page_end(page_exhausted, page.next_archive.as_deref(), entries.len() >= entries_max) {
                PageEnd::Stop { caught_up } => return Ok(ReadBatch { entries, caught_up }),
                PageEnd::Continue { next_page_url } => next_page_url,
            };
            if visited.len() >= self.pages_max {
                if entries.is_empty() {
                    // Only empty pages so far: returning nothing would make no progress ever.
                    return Err(ReadError::TooManyPages { feed_url: self.feed_url.clone(), pages_max: self.pages_max, goal: "an entry after the marker" });
                }
                return Ok(ReadBatch { entries, caught_up: false });
            }
            let next = self.fetch_page(&next_page_url).await?;
            if !visited.insert(next.page_url.clone()) {
                return Err(ReadError::LinkLoop { page_url: page.page_url, rel: "next-archive", repeated_url: next.page_url });
            }
            page = next;
            start = 0;
        }
    }

    /// The oldest page: from the feed URL back through `prev-archive` until a page has none.
    async fn first_page(&self, visited: &mut HashSet<String>) -> Result<Page, ReadError> {
        let mut page = self.fetch_page(&self.feed_url).await?;
        visited.insert(page.page_url.clone());
        while let Some(previous) = page.prev_archive.clone() {
            if visited.len() >= self.pages_max {
                return Err(ReadError::TooManyPages { feed_url: self.feed_url.clone(), pages_max: self.pages_max, goal: "the first page" });
            }
            let older = self.fetch_page(&previous).await?;
            if !visited.insert(older.page_url.clone()) {
                return Err(ReadError::LinkLoop { page_url: page.page_url, rel: "prev-archive", repeated_url: older.page_url });
            }
            page = older;
        }
        // Only the pages from here on count against the forward walk.
        visited.clear();
        visited.insert(page.page_url.clone());
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_after_starts_after_the_marker() {
        let page = ["a", "b", "c"];
        assert_eq!(entries_after(&page, None), Ok(0));
        assert_eq!(entries_after(&page, Some("a")), Ok(1));
        assert_eq!(entries_after(&page, Some("c")), Ok(3), "marker last: nothing left on this page");
        assert_eq!(entries_after(&page, Some("z")), Err(MarkerNotOnPage));
        assert_eq!(entries_after::<&str>(&[], Some("a")), Err(MarkerNotOnPage));
        assert_eq!(entries_after::<&str>(&[], None), Ok(0));
        assert_eq!(entries_after(&["a", "b", "a"], Some("a")), Ok(1), "first occurrence: re-read rather than skip");
        let owned: Vec<String> = vec!["x".into(), "y".into()];
        assert_eq!(entries_after(&owned, Some("x")), Ok(1));
    }

    #[test]
    fn page_end_decisions() {
        assert_eq!(at_page_end(false, Some("n"), true), PageEnd::Stop { caught_up: false });
        assert_eq!(at_page_end(false, None, true), PageEnd::Stop { caught_up: false }, "entries left on the newest page");
        assert_eq!(at_page_end(true, None, false), PageEnd::Stop { caught_up: true });
        assert_eq!(at_page_end(true, None, true), PageEnd::Stop { caught_up: true }, "full exactly at the end of the newest page");
        assert_eq!(at_page_end(true, Some("n"), true), PageEnd::Stop { caught_up: false });
        assert_eq!(at_page_end(true, Some("n"), false), PageEnd::Continue { next_page_url: "n".into() });
    }

    /// Simulates reading a paged feed in batches with markers, using only the pure decisions,
    /// for many page layouts and batch sizes: every entry exactly once, in order.
    #[test]
    fn batches_with_markers_read_every_entry_once() {
        for page_sizes in [vec![0], vec![3], vec![5, 5, 2], vec![5, 5, 0], vec![1, 1, 1, 1], vec![4, 4, 4, 4, 4, 3]] {
            let pages: Vec<Vec<String>> = {
                let mut next = 0;
                page_sizes.iter().map(|&n| (0..n).map(|_| { next += 1; format!("e{next}") }).collect()).collect()
            };
            let all: Vec<String> = pages.concat();
            for entries_max in 1..=7 {
                let mut marker: Option<(usize, String)> = None;
                let mut read = Vec::new();
                for _round in 0..100 {
                    let (mut page, mut start) = match &marker {
                        None => (0, 0),
                        Some((page, id)) => (*page, entries_after(&pages[*page], Some(id)).unwrap()),
                    };
                    let mut batch: Vec<(usize, String)> = Vec::new();
                    let caught_up = loop {
                        let end = pages[page].len().min(start + entries_max - batch.len());
                        batch.extend(pages[page][start..end].iter().map(|id| (page, id.clone())));
                        let next = (page + 1 < pages.len()).then(|| (page + 1).to_string());
                        match at_page_end(end == pages[page].len(), next.as_deref(), batch.len() >= entries_max) {
                            PageEnd::Stop { caught_up } => break caught_up,
                            PageEnd::Continue { next_page_url } => {
                                page = next_page_url.parse().unwrap();
                                start = 0;
                            }
                        }
                    };
                    assert!(batch.len() <= entries_max);
                    read.extend(batch.iter().map(|(_, id)| id.clone()));
                    if let Some(last) = batch.last() {
                        marker = Some(last.clone());
                    }
                    if caught_up {
                        break;
                    }
                }
                assert_eq!(read, all, "pages {page_sizes:?}, batches of {entries_max}");
            }
        }
    }

    const PAGE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
  <title>patient</title>
  <link rel="self" type="application/atom+xml" href="http://h/openmrs/ws/atomfeed/patient/recent"/>
  <link rel="via" type="application/atom+xml" href="http://h/openmrs/ws/atomfeed/patient/3"/>
  <link rel="prev-archive" type="application/atom+xml" href="2"/>
  <id>urn:uuid:x</id>
  <updated>2024-01-01T08:00:00Z</updated>
  <entry>
    <title>Patient</title>
    <category term="patient"/>
    <id>tag:atomfeed.ict4h.org:1</id>
    <updated>2024-01-01T08:00:00Z</updated>
    <content type="application/vnd.atomfeed+xml"><![CDATA[/openmrs/ws/rest/v1/patient/p1?v=full]]></content>
  </entry>
  <entry>
    <title>patient</title>
    <category term="patient"/><category term="UPDATED"/>
    <id>tag:atomfeed.ict4h.org:2</id>
    <updated>2024-01-01T08:01:00.500+02:00</updated>
    <content type="application/vnd.atomfeed+xml"><![CDATA[{"rest":"/openmrs/ws/rest/v1/patient/p2?v=full","resource":"/ws/feedsync/resource/patient/p2","other":1}]]></content>
  </entry>
  <entry>
    <title>patient</title>
    <id>tag:atomfeed.ict4h.org:3</id>
    <updated>2024-01-01T08:02:00Z</updated>
    <content type="application/vnd.atomfeed+xml">&lt;![CDATA[{"resource":"http://elsewhere/r"}]]&gt;</content>
  </entry>
</feed>
"#;

    #[test]
    fn pages_parse_with_links_resolved() {
        let page = parse_page("http://h/openmrs/ws/atomfeed/patient/recent", PAGE.as_bytes()).unwrap();
        assert_eq!(page.page_url, "http://h/openmrs/ws/atomfeed/patient/3");
        assert_eq!(page.prev_archive.as_deref(), Some("http://h/openmrs/ws/atomfeed/patient/2"), "relative href resolved");
        assert_eq!(page.next_archive, None);
        let ids: Vec<&str> = page.entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["tag:atomfeed.ict4h.org:1", "tag:atomfeed.ict4h.org:2", "tag:atomfeed.ict4h.org:3"]);
        assert_eq!(page.entries[0].content, EntryContent::Url("http://h/openmrs/ws/rest/v1/patient/p1?v=full".into()));
        assert_eq!(
            page.entries[1].content,
            EntryContent::Links {
                resource: Some("http://h/ws/feedsync/resource/patient/p2".into()),
                rest: Some("http://h/openmrs/ws/rest/v1/patient/p2?v=full".into()),
                fhir: None
            }
        );
        assert_eq!(page.entries[1].categories, ["patient", "UPDATED"]);
        assert_eq!(page.entries[1].updated.to_rfc3339(), "2024-01-01T08:01:00.500+02:00");
        assert_eq!(page.entries[2].content, EntryContent::Links { resource: Some("http://elsewhere/r".into()), rest: None, fhir: None }, "escaped CDATA markers");
        assert!(page.entries.iter().all(|e| e.page_url == page.page_url));
        assert_eq!(page.entries[1].marker(), Marker { entry_id: "tag:atomfeed.ict4h.org:2".into(), page_url: page.page_url.clone() });
    }

    #[test]
    fn odd_content_is_kept_not_fatal() {
        let base = Url::parse("http://h/feed/1").unwrap();
        assert_eq!(parse_content(&base, ""), EntryContent::Url(String::new()));
        assert_eq!(parse_content(&base, "{\"resource\": "), EntryContent::Url("{\"resource\":".into()));
        assert_eq!(parse_content(&base, "not a url at all"), EntryContent::Url("not a url at all".into()));
        assert_eq!(parse_content(&base, " patient/x "), EntryContent::Url("http://h/feed/patient/x".into()));
        assert_eq!(parse_content(&base, "{\"resource\": 5}"), EntryContent::Links { resource: None, rest: None, fhir: None });
    }

    #[test]
    fn malformed_pages_name_the_page() {
        for body in ["<html><body>Login</body></html>", "<feed xmlns=\"http://www.w3.org/2005/Atom\"><entry><id>x</id>", "", "{\"error\":1}"] {
            let error = parse_page("http://h/feed/recent", body.as_bytes()).unwrap_err();
            assert!(matches!(&error, ReadError::MalformedPage { page_url, .. } if page_url == "http://h/feed/recent"), "{body}: {error}");
            assert!(!error.is_retryable());
        }
        let no_id = "<feed xmlns=\"http://www.w3.org/2005/Atom\"><entry><title>t</title></entry></feed>";
        let error = parse_page("http://h/feed/recent", no_id.as_bytes()).unwrap_err();
        assert!(error.to_string().contains("has no id"), "{error}");
    }

    #[test]
    fn a_deeply_nested_page_is_an_error_not_a_crash() {
        // The probe that overflowed the stack: 20,000 nested elements, 220 KB. Run on a small
        // thread stack so the test fails (by crashing) if the page ever reaches the parser.
        // Nested in an extension element: the parser keeps those, one frame per level.
        let body = format!("<feed xmlns=\"http://www.w3.org/2005/Atom\" xmlns:e=\"urn:e\">{}{}</feed>", "<e:x>".repeat(20_000), "</e:x>".repeat(20_000));
        let error = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || parse_page("http://h/feed/recent", body.as_bytes()).unwrap_err())
            .unwrap()
            .join()
            .expect("the page was refused before any recursive parse");
        assert!(matches!(&error, ReadError::MalformedPage { .. }), "{error}");
        assert!(error.to_string().contains("nest more than 64 deep"), "{error}");
        assert!(!error.is_retryable());
    }
}
