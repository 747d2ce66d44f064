//! The limits an XML document from another host must keep before a parser that recurses is
//! given it. `atom_syndication` descends one stack frame per nested element, so a feed page of
//! 20,000 nested elements (220 KB) overflowed the subscriber's stack, and since the page was
//! read again on every restart, the subscriber crashed again each time. [`check`] walks the
//! document once, flat, with `quick-xml`'s streaming reader (no recursion, no allocation per
//! element) and refuses it when it is larger or deeper than allowed. Pure: bytes in, verdict out.
//!
//! Syntax errors are not this module's business: the walk stops at the first one and lets the
//! real parser report it in its own words (it reads the same bytes in the same order, so it
//! meets the error at the same element, no deeper than the walk went).

use quick_xml::Reader;
use quick_xml::events::Event;

/// Nesting a feed page may have. An Atom page is 3 deep (feed, entry, content) and an XHTML
/// content body adds a few more; 64 leaves room for any honest page and keeps a recursive
/// parser far from the end of a 2 MiB thread stack.
pub const FEED_PAGE_DEPTH_MAX: usize = 64;

/// Size a feed page may have. A full page of 500 entries is about 200 KB; 16 MiB is room for
/// pages that carry whole resources as content, and bounds what one page can cost to parse.
pub const FEED_PAGE_BYTES_MAX: usize = 16 << 20;

/// Why a document was refused before parsing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlRefused {
    #[error("it is {bytes} bytes, more than the {max} allowed")]
    TooLarge { bytes: usize, max: usize },
    #[error("its elements nest more than {max} deep (at byte {at}); no feed needs that, so it was not parsed")]
    TooDeep { max: usize, at: u64 },
}

/// Refuses `bytes` when it is over `bytes_max` long or its elements nest deeper than
/// `depth_max`; anything else (including malformed XML) passes, for the parser to judge.
pub fn check(bytes: &[u8], bytes_max: usize, depth_max: usize) -> Result<(), XmlRefused> {
    if bytes.len() > bytes_max {
        return Err(XmlRefused::TooLarge { bytes: bytes.len(), max: bytes_max });
    }
    let mut reader = Reader::from_reader(bytes);
    let mut depth = 0usize;
    loop {
        match reader.read_event() {
            Ok(Event::Start(_)) => {
                depth += 1;
                if depth > depth_max {
                    return Err(XmlRefused::TooDeep { max: depth_max, at: reader.buffer_position() });
                }
            }
            Ok(Event::End(_)) => depth = depth.saturating_sub(1),
            Ok(Event::Eof) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("<?xml version=\"1.0\"?><feed>{}{}</feed>", "<x>".repeat(depth), "</x>".repeat(depth))
    }

    #[test]
    fn honest_pages_pass_and_deep_or_large_ones_are_refused() {
        let page = "<?xml version=\"1.0\"?><feed xmlns=\"http://www.w3.org/2005/Atom\"><entry><id>a</id>\
                    <content type=\"application/vnd.atomfeed+xml\"><![CDATA[/ws/rest/v1/patient/1<x>]]></content></entry></feed>";
        assert_eq!(check(page.as_bytes(), FEED_PAGE_BYTES_MAX, FEED_PAGE_DEPTH_MAX), Ok(()));
        // The feed element counts: 63 inside it is 64 deep.
        assert_eq!(check(nested(FEED_PAGE_DEPTH_MAX - 1).as_bytes(), FEED_PAGE_BYTES_MAX, FEED_PAGE_DEPTH_MAX), Ok(()));
        assert!(matches!(check(nested(FEED_PAGE_DEPTH_MAX).as_bytes(), FEED_PAGE_BYTES_MAX, FEED_PAGE_DEPTH_MAX), Err(XmlRefused::TooDeep { max: 64, .. })));
        // The probe that crashed the subscriber: 20,000 levels.
        assert!(matches!(check(nested(20_000).as_bytes(), FEED_PAGE_BYTES_MAX, FEED_PAGE_DEPTH_MAX), Err(XmlRefused::TooDeep { .. })));
        // Unclosed elements count too (no end tag ever comes).
        let unclosed = format!("<feed>{}", "<x>".repeat(100));
        assert!(matches!(check(unclosed.as_bytes(), FEED_PAGE_BYTES_MAX, FEED_PAGE_DEPTH_MAX), Err(XmlRefused::TooDeep { .. })));
        assert_eq!(check(page.as_bytes(), 10, FEED_PAGE_DEPTH_MAX), Err(XmlRefused::TooLarge { bytes: page.len(), max: 10 }));
    }

    #[test]
    fn siblings_and_empty_elements_do_not_add_depth() {
        let wide = format!("<feed>{}{}</feed>", "<entry><id/></entry>".repeat(10_000), "<link/>".repeat(1_000));
        assert_eq!(check(wide.as_bytes(), FEED_PAGE_BYTES_MAX, 3), Ok(()));
        assert!(check(wide.as_bytes(), FEED_PAGE_BYTES_MAX, 1).is_err(), "entry inside feed is 2 deep");
    }

    #[test]
    fn malformed_xml_is_left_to_the_parser() {
        for text in ["", "not xml at all", "<feed><a></b></feed>", "<feed", "<<<>>>", "<feed>&bogus;</feed>"] {
            assert_eq!(check(text.as_bytes(), FEED_PAGE_BYTES_MAX, FEED_PAGE_DEPTH_MAX), Ok(()), "{text:?}");
        }
    }

    #[test]
    fn the_walk_never_panics_on_arbitrary_bytes() {
        let mut rng = crate::rng::SplitMix64::new(0x6d1);
        let alphabet: &[u8] = b"<>/?!-[]CDAT=\"' ax&;\n\xff\x00";
        for _ in 0..2_000 {
            let len = rng.below_usize(400);
            let bytes: Vec<u8> = (0..len).map(|_| alphabet[rng.below_usize(alphabet.len())]).collect();
            let _ = check(&bytes, FEED_PAGE_BYTES_MAX, 8);
        }
    }
}
