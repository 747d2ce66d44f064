//! Renders one page of a category's event feed as an Atom document (RFC 4287), linked to the
//! pages before and after it as an RFC 5005 archived feed, in the shape that clients of the
//! OpenMRS atomfeed module (ICT4H atomfeed, Bahmni) already read.
//!
//! Invariant: the feed format is decided here and nowhere else. Other modules choose *which*
//! events go on a page and *what* the URLs are; element names, media types, entry id syntax,
//! escaping and layout live in this file only.
//!
//! `render_page` is pure: the same page in gives the same bytes out, with no clock, no
//! environment and no hash-map iteration. Archived pages are served with a strong ETag
//! forever, so a byte that changed between two renders of the same page would make every
//! cache and every client think history was rewritten.
//!
//! Entries are written in the order given. The caller gives them oldest first, as the
//! reference implementation does (it selects `order by id asc` within a page) and as its
//! client expects: it looks for its last-read entry id on a page and processes everything
//! after it, top to bottom.

use std::borrow::Cow;

use quick_xml::escape::{escape, partial_escape};

/// Media type of the feed documents themselves (the `type` of every feed link).
pub const FEED_MEDIA_TYPE: &str = "application/atom+xml";

/// Media type of an entry's content, as the reference implementation writes it.
pub const ENTRY_CONTENT_MEDIA_TYPE: &str = "application/vnd.atomfeed+xml";

/// Prefix of every entry id; the reference implementation's ids are this plus the event uuid,
/// and clients resume by comparing ids, so the syntax must never change.
pub const ENTRY_ID_PREFIX: &str = "tag:atomfeed.ict4h.org:";

const ATOM_NAMESPACE: &str = "http://www.w3.org/2005/Atom";

/// RFC 4287 requires an author on every entry; one at feed level covers them all. The
/// reference implementation put this name on each entry.
const FEED_AUTHOR_NAME: &str = "OpenMRS";

/// One page of a feed, as the caller has decided it.
pub struct FeedPage<'a> {
    /// Stable per category and page number, e.g. `urn:uuid:...`.
    pub feed_id: &'a str,
    /// e.g. `patient`, or `all` for the feed of every category.
    pub title: &'a str,
    /// RFC 3339; the newest entry's time, or some fixed time the caller picks for an empty page.
    pub updated: &'a str,
    pub self_url: &'a str,
    pub via_url: &'a str,
    pub prev_archive_url: Option<&'a str>,
    pub next_archive_url: Option<&'a str>,
    /// e.g. `feedsync feed-publisher 0.1.0`.
    pub generator: &'a str,
    /// Oldest first.
    pub entries: &'a [PageEntry],
}

/// One event on a page.
pub struct PageEntry {
    /// `tag:atomfeed.ict4h.org:<event uuid>`: see [`entry_id`].
    pub id: String,
    /// e.g. `patient`.
    pub title: String,
    /// RFC 3339.
    pub updated: String,
    /// Category term, action tag (`CREATED`...), filter tags; written in this order.
    pub categories: Vec<String>,
    /// JSON text (or, in Bahmni's flavour, a relative URL), carried in CDATA.
    pub content: String,
}

/// The id of the entry for an event, in the reference implementation's syntax.
pub fn entry_id(event_uuid: &str) -> String {
    format!("{ENTRY_ID_PREFIX}{event_uuid}")
}

/// Renders `page` as a UTF-8 Atom document.
pub fn render_page(page: &FeedPage) -> Vec<u8> {
    let content_bytes: usize = page.entries.iter().map(|entry| entry.content.len()).sum();
    let mut out = String::with_capacity(1024 + page.entries.len() * 512 + content_bytes);

    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str("<feed xmlns=\"");
    out.push_str(ATOM_NAMESPACE);
    out.push_str("\">\n");

    push_text_element(&mut out, 1, "title", page.title);
    push_link(&mut out, "self", page.self_url);
    push_link(&mut out, "via", page.via_url);
    if let Some(url) = page.prev_archive_url {
        push_link(&mut out, "prev-archive", url);
    }
    if let Some(url) = page.next_archive_url {
        push_link(&mut out, "next-archive", url);
    }
    push_indent(&mut out, 1);
    out.push_str("<author>\n");
    push_text_element(&mut out, 2, "name", FEED_AUTHOR_NAME);
    push_indent(&mut out, 1);
    out.push_str("</author>\n");
    push_text_element(&mut out, 1, "id", page.feed_id);
    push_text_element(&mut out, 1, "generator", page.generator);
    push_text_element(&mut out, 1, "updated", page.updated);

    for entry in page.entries {
        push_entry(&mut out, entry);
    }

    out.push_str("</feed>\n");
    out.into_bytes()
}

fn push_entry(out: &mut String, entry: &PageEntry) {
    push_indent(out, 1);
    out.push_str("<entry>\n");
    push_text_element(out, 2, "title", &entry.title);
    for category in &entry.categories {
        push_indent(out, 2);
        out.push_str("<category term=\"");
        push_attribute_value(out, category);
        out.push_str("\"/>\n");
    }
    push_text_element(out, 2, "id", &entry.id);
    push_text_element(out, 2, "updated", &entry.updated);
    push_indent(out, 2);
    out.push_str("<content type=\"");
    out.push_str(ENTRY_CONTENT_MEDIA_TYPE);
    out.push_str("\">");
    push_cdata(out, &entry.content);
    out.push_str("</content>\n");
    push_indent(out, 1);
    out.push_str("</entry>\n");
}

fn push_link(out: &mut String, rel: &str, href: &str) {
    push_indent(out, 1);
    out.push_str("<link rel=\"");
    push_attribute_value(out, rel);
    out.push_str("\" type=\"");
    out.push_str(FEED_MEDIA_TYPE);
    out.push_str("\" href=\"");
    push_attribute_value(out, href);
    out.push_str("\"/>\n");
}

fn push_indent(out: &mut String, depth: usize) {
    for _ in 0..depth {
        out.push_str("  ");
    }
}

fn push_text_element(out: &mut String, depth: usize, name: &str, text: &str) {
    push_indent(out, depth);
    out.push('<');
    out.push_str(name);
    out.push('>');
    // `>` is escaped too (partial_escape) because `]]>` is not allowed in text content.
    let escaped = partial_escape(replace_non_xml_chars(text));
    // A parser turns a raw CR (or CR LF) into LF; a character reference survives.
    out.push_str(&escaped.replace('\r', "&#13;"));
    out.push_str("</");
    out.push_str(name);
    out.push_str(">\n");
}

/// For a value inside double quotes.
fn push_attribute_value(out: &mut String, value: &str) {
    let escaped = escape(replace_non_xml_chars(value));
    // Attribute-value normalisation turns raw tab, CR and LF into spaces; character
    // references survive it, so a category term comes back exactly as it went in.
    for ch in escaped.chars() {
        match ch {
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            _ => out.push(ch),
        }
    }
}

/// Writes `content` as CDATA.
///
/// The reference client does not read the content as XML text: its parser (ROME) hands back
/// the content element's children re-serialised, and the client strips one leading
/// `<![CDATA[` and one trailing `]]>` with a regex (`Event.extractContent` in ICT4H atomfeed).
/// So the content must be exactly one CDATA section whenever possible. Splitting the section
/// around `]]>` is correct XML but gives such a client `...]]]]><![CDATA[>...`.
///
/// JSON never needs a split: in valid JSON, `>` and non-ASCII characters occur only inside
/// strings, where `\u003e` and `\u00e9` mean the same as `>` and `é`, and raw control
/// characters cannot occur at all. Anything else (a relative URL, or text that is not JSON)
/// falls back to split sections, with CR as a character reference between them and characters
/// XML cannot carry replaced by U+FFFD.
fn push_cdata(out: &mut String, content: &str) {
    out.push_str("<![CDATA[");
    let verbatim_is_safe = !content.contains("]]>")
        && content
            .chars()
            .all(|ch| ch != '\r' && is_xml_char(ch) && !is_latin1_supplement(ch));
    if verbatim_is_safe {
        out.push_str(content);
    } else if is_json(content) {
        push_json_for_cdata(out, content);
    } else {
        for ch in replace_non_xml_chars(content).chars() {
            match ch {
                '>' if out.ends_with("]]") => out.push_str("]]><![CDATA[>"),
                '\r' => out.push_str("]]>&#13;<![CDATA["),
                _ => out.push(ch),
            }
        }
    }
    out.push_str("]]>");
}

/// Only for text that is valid JSON: see `push_cdata`.
fn push_json_for_cdata(out: &mut String, json: &str) {
    let mut previous = ['\0', '\0'];
    for ch in json.chars() {
        match ch {
            '>' if previous == [']', ']'] => out.push_str("\\u003e"),
            // U+0080..=U+00FF are escaped because Python's feedparser second-guesses element
            // text: it maps U+0080..=U+009F to Windows-1252 characters, and when every
            // character fits in Latin-1 it re-decodes the text as UTF-8 if that succeeds
            // (so `Ã©` becomes `é`). With none of them left raw, its guesses change nothing.
            _ if (ch != '\r' && !is_xml_char(ch)) || is_latin1_supplement(ch) => {
                let mut units = [0u16; 2];
                for unit in ch.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            // A raw CR can only be whitespace between JSON tokens here, so the LF that a
            // parser may turn it into means the same.
            _ => out.push(ch),
        }
        previous = [previous[1], ch];
    }
}

fn is_latin1_supplement(ch: char) -> bool {
    ('\u{80}'..='\u{FF}').contains(&ch)
}

fn is_json(text: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

/// XML 1.0 `Char`: a document containing anything else is not well-formed.
fn is_xml_char(ch: char) -> bool {
    matches!(ch,
        '\t' | '\n' | '\r'
        | '\u{20}'..='\u{D7FF}'
        | '\u{E000}'..='\u{FFFD}'
        | '\u{10000}'..='\u{10FFFF}')
}

fn replace_non_xml_chars(text: &str) -> Cow<'_, str> {
    if text.chars().all(is_xml_char) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|ch| {
                if is_xml_char(ch) {
                    ch
                } else {
                    char::REPLACEMENT_CHARACTER
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(uuid: &str, updated: &str, categories: &[&str], content: &str) -> PageEntry {
        PageEntry {
            id: entry_id(uuid),
            title: "patient".to_string(),
            updated: updated.to_string(),
            categories: categories.iter().map(|term| term.to_string()).collect(),
            content: content.to_string(),
        }
    }

    fn sample_entries() -> Vec<PageEntry> {
        vec![
            entry(
                "0b1e3f0a-1111-4c4c-8a8a-000000000001",
                "2026-11-26T04:29:59.001Z",
                &["patient", "CREATED"],
                r#"{"table":"patient","uuid":"a"}"#,
            ),
            entry(
                "0b1e3f0a-1111-4c4c-8a8a-000000000002",
                "2026-11-26T04:30:00.123Z",
                &["patient", "UPDATED", "location:abc"],
                "/openmrs/ws/rest/v1/patient/a?v=full",
            ),
        ]
    }

    fn sample_page(entries: &[PageEntry]) -> FeedPage<'_> {
        FeedPage {
            feed_id: "urn:uuid:5d0c2f61-7d0b-4e8e-9a53-000000000007",
            title: "patient",
            updated: "2026-11-26T04:30:00.123Z",
            self_url: "http://example.org/feed/patient/7",
            via_url: "http://example.org/feed/patient/7",
            prev_archive_url: Some("http://example.org/feed/patient/6"),
            next_archive_url: Some("http://example.org/feed/patient/8"),
            generator: "feedsync feed-publisher 0.1.0",
            entries,
        }
    }

    fn render_str(page: &FeedPage) -> String {
        String::from_utf8(render_page(page)).expect("render_page writes UTF-8")
    }

    fn parse(bytes: &[u8]) -> atom_syndication::Feed {
        atom_syndication::Feed::read_from(bytes).expect("atom_syndication parses the page")
    }

    fn link_href<'f>(feed: &'f atom_syndication::Feed, rel: &str) -> Option<&'f str> {
        let mut matching = feed.links().iter().filter(|link| link.rel() == rel);
        let first = matching.next().map(|link| link.href());
        assert!(matching.next().is_none(), "more than one {rel} link");
        first
    }

    fn content_value(entry: &atom_syndication::Entry) -> &str {
        entry
            .content()
            .and_then(|content| content.value())
            .unwrap_or("")
    }

    /// Also a reference for what the format looks like.
    #[test]
    fn atom_page_has_exact_expected_layout() {
        let entries = sample_entries();
        let expected = r#"<?xml version="1.0" encoding="UTF-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
  <title>patient</title>
  <link rel="self" type="application/atom+xml" href="http://example.org/feed/patient/7"/>
  <link rel="via" type="application/atom+xml" href="http://example.org/feed/patient/7"/>
  <link rel="prev-archive" type="application/atom+xml" href="http://example.org/feed/patient/6"/>
  <link rel="next-archive" type="application/atom+xml" href="http://example.org/feed/patient/8"/>
  <author>
    <name>OpenMRS</name>
  </author>
  <id>urn:uuid:5d0c2f61-7d0b-4e8e-9a53-000000000007</id>
  <generator>feedsync feed-publisher 0.1.0</generator>
  <updated>2026-11-26T04:30:00.123Z</updated>
  <entry>
    <title>patient</title>
    <category term="patient"/>
    <category term="CREATED"/>
    <id>tag:atomfeed.ict4h.org:0b1e3f0a-1111-4c4c-8a8a-000000000001</id>
    <updated>2026-11-26T04:29:59.001Z</updated>
    <content type="application/vnd.atomfeed+xml"><![CDATA[{"table":"patient","uuid":"a"}]]></content>
  </entry>
  <entry>
    <title>patient</title>
    <category term="patient"/>
    <category term="UPDATED"/>
    <category term="location:abc"/>
    <id>tag:atomfeed.ict4h.org:0b1e3f0a-1111-4c4c-8a8a-000000000002</id>
    <updated>2026-11-26T04:30:00.123Z</updated>
    <content type="application/vnd.atomfeed+xml"><![CDATA[/openmrs/ws/rest/v1/patient/a?v=full]]></content>
  </entry>
</feed>
"#;
        assert_eq!(render_str(&sample_page(&entries)), expected);
    }

    #[test]
    fn atom_page_without_archive_links_or_entries() {
        let page = FeedPage {
            prev_archive_url: None,
            next_archive_url: None,
            entries: &[],
            ..sample_page(&[])
        };
        let text = render_str(&page);
        assert!(!text.contains("archive"));
        assert!(!text.contains("<entry>"));

        let feed = parse(text.as_bytes());
        assert!(feed.entries().is_empty());
        assert_eq!(feed.updated().to_rfc3339(), "2026-11-26T04:30:00.123+00:00");
        assert_eq!(
            link_href(&feed, "self"),
            Some("http://example.org/feed/patient/7")
        );
        assert_eq!(link_href(&feed, "prev-archive"), None);
        assert_eq!(link_href(&feed, "next-archive"), None);
    }

    #[test]
    fn atom_render_is_byte_identical_for_same_input() {
        let entries = sample_entries();
        let first = render_page(&sample_page(&entries));
        let second = render_page(&sample_page(&entries));
        // Equal inputs built separately, so nothing can hang on addresses or allocation.
        let rebuilt_entries = sample_entries();
        let third = render_page(&sample_page(&rebuilt_entries));
        assert_eq!(first, second);
        assert_eq!(first, third);
    }

    #[test]
    fn atom_syndication_reads_links_ids_categories_and_content() {
        let entries = sample_entries();
        let feed = parse(&render_page(&sample_page(&entries)));

        assert_eq!(feed.id(), "urn:uuid:5d0c2f61-7d0b-4e8e-9a53-000000000007");
        assert_eq!(feed.title().as_str(), "patient");
        assert_eq!(feed.updated().to_rfc3339(), "2026-11-26T04:30:00.123+00:00");
        assert_eq!(feed.authors().len(), 1);
        assert_eq!(feed.authors()[0].name(), "OpenMRS");
        assert_eq!(
            feed.generator().map(|generator| generator.value()),
            Some("feedsync feed-publisher 0.1.0")
        );
        for (rel, href) in [
            ("self", "http://example.org/feed/patient/7"),
            ("via", "http://example.org/feed/patient/7"),
            ("prev-archive", "http://example.org/feed/patient/6"),
            ("next-archive", "http://example.org/feed/patient/8"),
        ] {
            assert_eq!(link_href(&feed, rel), Some(href), "{rel}");
        }
        for link in feed.links() {
            assert_eq!(link.mime_type(), Some(FEED_MEDIA_TYPE));
        }

        assert_eq!(feed.entries().len(), entries.len());
        for (parsed, given) in feed.entries().iter().zip(&entries) {
            assert_eq!(parsed.id(), given.id);
            assert_eq!(parsed.title().as_str(), given.title);
            let terms: Vec<&str> = parsed
                .categories()
                .iter()
                .map(|category| category.term())
                .collect();
            assert_eq!(terms, given.categories);
            let content = parsed.content().expect("entry has content");
            assert_eq!(content.content_type(), Some(ENTRY_CONTENT_MEDIA_TYPE));
            assert_eq!(content_value(parsed), given.content);
        }
        assert_eq!(
            feed.entries()[0].updated().to_rfc3339(),
            "2026-11-26T04:29:59.001+00:00"
        );
    }

    #[test]
    fn atom_escapes_markup_and_quotes_in_text_and_attributes() {
        let awkward = r#"a<b>&c"d'e ]]> &amp;"#;
        let entries = vec![PageEntry {
            id: entry_id("x&y<z>"),
            title: awkward.to_string(),
            updated: "2026-11-26T04:30:00Z".to_string(),
            categories: vec![
                awkward.to_string(),
                "tab\there\nnewline\r\nCRLF".to_string(),
            ],
            content: "{}".to_string(),
        }];
        let page = FeedPage {
            title: awkward,
            self_url: "http://example.org/feed?a=1&b=\"2\"",
            ..sample_page(&entries)
        };
        let bytes = render_page(&page);
        let feed = parse(&bytes);

        assert_eq!(feed.title().as_str(), awkward);
        assert_eq!(
            link_href(&feed, "self"),
            Some("http://example.org/feed?a=1&b=\"2\"")
        );
        let parsed = &feed.entries()[0];
        assert_eq!(parsed.id(), "tag:atomfeed.ict4h.org:x&y<z>");
        assert_eq!(parsed.title().as_str(), awkward);
        let terms: Vec<&str> = parsed
            .categories()
            .iter()
            .map(|category| category.term())
            .collect();
        assert_eq!(terms, entries[0].categories);
    }

    #[test]
    fn atom_json_content_with_cdata_terminator_stays_one_section_and_same_json() {
        let json =
            serde_json::json!({"note": "ends ]]> here ]]]> and ]]>", "n": [[1]]}).to_string();
        assert!(json.contains("]]>"));
        let entries = vec![entry("u1", "2026-11-26T04:30:00Z", &["obs"], &json)];
        let text = render_str(&sample_page(&entries));

        let content_start = text.find("<content").unwrap();
        let content_end = text.find("</content>").unwrap();
        let content_element = &text[content_start..content_end];
        assert_eq!(
            content_element.matches("<![CDATA[").count(),
            1,
            "{content_element}"
        );

        let value = parse(text.as_bytes()).entries()[0]
            .content()
            .unwrap()
            .value()
            .unwrap()
            .to_string();
        let reparsed: serde_json::Value = serde_json::from_str(&value).unwrap();
        let original: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(reparsed, original);
    }

    #[test]
    fn atom_non_json_content_with_cdata_terminator_is_split_and_exact() {
        let content = "/path]]>more]]>]]>\rend";
        let entries = vec![entry("u1", "2026-11-26T04:30:00Z", &["obs"], content)];
        let feed = parse(&render_page(&sample_page(&entries)));
        assert_eq!(content_value(&feed.entries()[0]), content);
    }

    #[test]
    fn atom_replaces_characters_xml_cannot_carry() {
        let entries = vec![PageEntry {
            id: entry_id("u\u{0}1"),
            title: "bell\u{7}tab\tesc\u{1b}\u{FFFE}\u{FFFF}end".to_string(),
            updated: "2026-11-26T04:30:00Z".to_string(),
            categories: vec!["vt\u{b}ff\u{c}".to_string()],
            content: "/not/json\u{1}".to_string(),
        }];
        let page = FeedPage {
            title: "nul\u{0}",
            ..sample_page(&entries)
        };
        let bytes = render_page(&page);
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(
            text.chars().all(is_xml_char),
            "raw character XML 1.0 forbids"
        );

        let feed = parse(&bytes);
        assert_eq!(feed.title().as_str(), "nul\u{FFFD}");
        let parsed = &feed.entries()[0];
        assert_eq!(parsed.id(), "tag:atomfeed.ict4h.org:u\u{FFFD}1");
        assert_eq!(
            parsed.title().as_str(),
            "bell\u{FFFD}tab\tesc\u{FFFD}\u{FFFD}\u{FFFD}end"
        );
        assert_eq!(parsed.categories()[0].term(), "vt\u{FFFD}ff\u{FFFD}");
        assert_eq!(content_value(parsed), "/not/json\u{FFFD}");
    }

    #[test]
    fn atom_json_content_keeps_noncharacters_as_json_escapes() {
        // serde_json escapes control characters but writes U+FFFF raw, which XML forbids.
        let json = serde_json::json!({"s": "a\u{1}b\u{FFFF}c\u{1F600}"}).to_string();
        assert!(json.contains('\u{FFFF}'));
        let entries = vec![entry("u1", "2026-11-26T04:30:00Z", &["obs"], &json)];
        let bytes = render_page(&sample_page(&entries));
        assert!(
            std::str::from_utf8(&bytes)
                .unwrap()
                .chars()
                .all(is_xml_char)
        );

        let feed = parse(&bytes);
        let value: serde_json::Value =
            serde_json::from_str(content_value(&feed.entries()[0])).unwrap();
        assert_eq!(
            value,
            serde_json::from_str::<serde_json::Value>(&json).unwrap()
        );
    }

    #[test]
    fn atom_json_content_escapes_latin1_supplement_that_feedparser_would_rewrite() {
        let json = serde_json::json!({"given": "José", "mojibake": "JosÃ©", "c1": "\u{85}\u{9f}", "am": "ሰላም"})
            .to_string();
        let entries = vec![entry("u1", "2026-11-26T04:30:00Z", &["obs"], &json)];
        let text = render_str(&sample_page(&entries));
        assert!(!text.chars().any(is_latin1_supplement), "{text}");
        assert!(text.contains("ሰላም"), "other scripts stay readable");

        let feed = parse(text.as_bytes());
        let value: serde_json::Value =
            serde_json::from_str(content_value(&feed.entries()[0])).unwrap();
        assert_eq!(
            value,
            serde_json::from_str::<serde_json::Value>(&json).unwrap()
        );
    }

    #[test]
    fn atom_every_character_in_every_field_gives_a_well_formed_page() {
        // Every scalar value below U+3000 and around the surrogate and non-character edges.
        let all: String = (0u32..0x3000)
            .chain(0xD700..0xD800)
            .chain(0xE000..0xE100)
            .chain(0xFFF0..0x10010)
            .filter_map(char::from_u32)
            .collect();
        let entries = vec![PageEntry {
            id: all.clone(),
            title: all.clone(),
            updated: "2026-11-26T04:30:00Z".to_string(),
            categories: vec![all.clone()],
            content: all.clone(),
        }];
        let page = FeedPage {
            title: &all,
            feed_id: &all,
            ..sample_page(&entries)
        };
        let bytes = render_page(&page);
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.chars().all(is_xml_char));

        let expected = replace_non_xml_chars(&all);
        let feed = parse(&bytes);
        assert_eq!(feed.title().as_str(), expected);
        let parsed = &feed.entries()[0];
        assert_eq!(parsed.id(), expected);
        assert_eq!(parsed.title().as_str(), expected);
        assert_eq!(parsed.categories()[0].term(), expected);
        assert_eq!(content_value(parsed), expected);
    }

    #[test]
    fn atom_entry_id_uses_reference_syntax() {
        assert_eq!(
            entry_id("3f3a0c5e-2b1d-4c6e-9f7a-0123456789ab"),
            "tag:atomfeed.ict4h.org:3f3a0c5e-2b1d-4c6e-9f7a-0123456789ab"
        );
    }
}
