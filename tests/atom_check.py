#!/usr/bin/env python3
"""Strict check of Atom feed pages written by feed-publisher, as Python's feedparser reads them.

feedparser is a second, independent reader of our pages (the Rust tests already read them with
atom_syndication), and it is what Python feed clients use. Each file is also parsed with the
standard library's ElementTree, which is strict about well-formedness and does no guessing, and
the two views must agree on every value a client acts on.

Usage:
    python3 tests/atom_check.py FILE...         prints "OK <file> <n> entries" per file
    python3 tests/atom_check.py --json FILE...  prints one JSON summary per file, one per line

Exit status: 0 when every file passes; 1 when any file fails a check (each problem is printed
to stderr as "FAIL <file>: <problem>") or feedparser is not installed; 2 for a usage error.

The JSON summary of a file:
    {"file": ..., "feed": {"id", "title", "updated", "links": {rel: href}},
     "entry_ids": [...in document order...],
     "entries": [{"id", "title", "updated", "categories": [term...], "content_type", "content"}]}
Compare "content" with the database as JSON values, not as strings: the publisher may write
characters inside JSON strings as \\uXXXX escapes so that every reader sees the same value.
"""

import argparse
import json
import sys
import xml.etree.ElementTree as ElementTree
from urllib.parse import urlsplit

ATOM = "{http://www.w3.org/2005/Atom}"
ENTRY_CONTENT_MEDIA_TYPE = "application/vnd.atomfeed+xml"
REQUIRED_FEED_LINK_RELS = ("self", "via")
ARCHIVE_LINK_RELS = ("prev-archive", "next-archive")
PROBLEMS_SHOWN_PER_FILE_MAX = 20


def main():
    parser = argparse.ArgumentParser(
        description="Strictly check Atom feed pages as feedparser reads them."
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print a JSON summary per file (one per line) instead of OK lines",
    )
    parser.add_argument("files", nargs="+", metavar="FILE")
    arguments = parser.parse_args()

    try:
        import feedparser
    except ImportError:
        print(
            "atom_check.py: the Python package feedparser is not installed "
            "(install it with: pip install feedparser)",
            file=sys.stderr,
        )
        return 1

    failed = False
    for path in arguments.files:
        problems, summary = check_file(feedparser, path)
        if problems:
            failed = True
            for problem in problems[:PROBLEMS_SHOWN_PER_FILE_MAX]:
                print(f"FAIL {path}: {problem}", file=sys.stderr)
            if len(problems) > PROBLEMS_SHOWN_PER_FILE_MAX:
                hidden = len(problems) - PROBLEMS_SHOWN_PER_FILE_MAX
                print(f"FAIL {path}: ... and {hidden} more problems", file=sys.stderr)
        elif arguments.json:
            print(json.dumps(summary, sort_keys=True))
        else:
            print(f"OK {path} {len(summary['entries'])} entries")
        sys.stdout.flush()
    return 1 if failed else 0


def check_file(feedparser, path):
    """Returns (problems, summary); summary is None when the file could not be read at all."""
    try:
        with open(path, "rb") as file:
            document = file.read()
    except OSError as error:
        return [f"cannot read the file: {error}"], None

    # Bytes, not the path: given a string that is not an existing file, feedparser parses the
    # string itself as a document or fetches it as a URL.
    parsed = feedparser.parse(document)
    if parsed.bozo:
        return [f"feedparser finds the document malformed: {parsed.bozo_exception!r}"], None
    if parsed.get("version") != "atom10":
        return [f"feedparser reads it as {parsed.get('version')!r}, not atom10"], None
    try:
        root = ElementTree.fromstring(document)
    except ElementTree.ParseError as error:
        return [f"ElementTree finds the document malformed: {error}"], None
    if root.tag != ATOM + "feed":
        return [f"root element is {root.tag}, not an Atom feed"], None

    problems = []
    feed = parsed.feed
    summary_feed = {
        "id": feed.get("id"),
        "title": feed.get("title"),
        "updated": feed.get("updated"),
        "links": links_by_rel(feed.get("links", []), "feed", problems),
    }
    check_feed(feed, summary_feed, root, problems)

    summary_entries = []
    xml_entries = root.findall(ATOM + "entry")
    if len(xml_entries) != len(parsed.entries):
        problems.append(
            f"feedparser sees {len(parsed.entries)} entries, ElementTree {len(xml_entries)}"
        )
    seen_ids = set()
    for position, (entry, xml_entry) in enumerate(zip(parsed.entries, xml_entries)):
        summary_entry = check_entry(entry, xml_entry, position, problems)
        if summary_entry["id"] in seen_ids:
            problems.append(f"entry {position}: id {summary_entry['id']!r} is repeated")
        seen_ids.add(summary_entry["id"])
        summary_entries.append(summary_entry)

    # The publisher gives the newest entry's time as the page's; a page older than one of its
    # entries makes caches and clients miss that entry.
    if feed.get("updated_parsed"):
        for position, entry in enumerate(parsed.entries):
            entry_time = entry.get("updated_parsed")
            if entry_time and entry_time > feed.updated_parsed:
                problems.append(
                    f"entry {position} updated {entry.get('updated')!r} is newer than the "
                    f"feed's updated {feed.get('updated')!r}"
                )

    summary = {
        "file": path,
        "feed": summary_feed,
        "entry_ids": [entry["id"] for entry in summary_entries],
        "entries": summary_entries,
    }
    return problems, summary


def check_feed(feed, summary_feed, root, problems):
    for key in ("id", "title", "updated"):
        if not feed.get(key):
            problems.append(f"feed has no {key}")
    if feed.get("updated") and not feed.get("updated_parsed"):
        problems.append(f"feed updated {feed.get('updated')!r} is not a date feedparser reads")
    for rel in REQUIRED_FEED_LINK_RELS:
        if not summary_feed["links"].get(rel):
            problems.append(f'feed has no rel="{rel}" link with an href')

    # What the raw document says, link by link, so that an archive link feedparser dropped or
    # changed is caught (clients walk prev-archive and next-archive).
    xml_links = {}
    for link in root.findall(ATOM + "link"):
        rel = link.get("rel", "alternate")
        if rel in xml_links:
            continue  # reported as a duplicate through feedparser's view
        xml_links[rel] = link.get("href")
    for rel in ARCHIVE_LINK_RELS:
        if rel in xml_links and not xml_links[rel]:
            problems.append(f'feed has a rel="{rel}" link without an href')
    for rel, href in xml_links.items():
        if summary_feed["links"].get(rel) != href:
            problems.append(
                f'rel="{rel}" link: the document says {href!r}, '
                f"feedparser reads {summary_feed['links'].get(rel)!r}"
            )
    for rel in summary_feed["links"]:
        if rel not in xml_links:
            problems.append(f'feedparser reads a rel="{rel}" link the document does not have')

    compare_text(feed.get("id"), root.find(ATOM + "id"), "feed id", problems)
    compare_text(feed.get("title"), root.find(ATOM + "title"), "feed title", problems)


def check_entry(entry, xml_entry, position, problems):
    where = f"entry {position}"
    contents = entry.get("content", [])
    content = contents[0] if contents else {}
    summary_entry = {
        "id": entry.get("id"),
        "title": entry.get("title"),
        "updated": entry.get("updated"),
        "categories": [tag.get("term") for tag in entry.get("tags", [])],
        "content_type": content.get("type"),
        "content": content.get("value"),
    }

    for key in ("id", "title", "updated"):
        if not entry.get(key):
            problems.append(f"{where} has no {key}")
    if entry.get("updated") and not entry.get("updated_parsed"):
        problems.append(f"{where} updated {entry.get('updated')!r} is not a date feedparser reads")

    categories = summary_entry["categories"]
    if not categories:
        problems.append(f"{where} has no category")
    if any(not term for term in categories):
        problems.append(f"{where} has a category without a term")
    xml_categories = [category.get("term") for category in xml_entry.findall(ATOM + "category")]
    if categories != xml_categories:
        problems.append(
            f"{where} categories: the document says {xml_categories!r}, "
            f"feedparser reads {categories!r}"
        )

    if len(contents) != 1:
        problems.append(f"{where} has {len(contents)} content elements, not 1")
    if content.get("type") != ENTRY_CONTENT_MEDIA_TYPE:
        problems.append(
            f"{where} content type is {content.get('type')!r}, not {ENTRY_CONTENT_MEDIA_TYPE!r}"
        )
    value = content.get("value")
    if value is not None and not (is_json(value) or is_plain_relative_url(value)):
        problems.append(
            f"{where} content is neither JSON nor a plain relative URL: {shorten(value)!r}"
        )

    compare_text(entry.get("id"), xml_entry.find(ATOM + "id"), f"{where} id", problems)
    compare_text(entry.get("title"), xml_entry.find(ATOM + "title"), f"{where} title", problems)
    compare_text(value, xml_entry.find(ATOM + "content"), f"{where} content", problems)
    return summary_entry


def links_by_rel(links, where, problems):
    by_rel = {}
    for link in links:
        rel = link.get("rel", "alternate")
        if rel in by_rel:
            problems.append(f'{where} has more than one rel="{rel}" link')
            continue
        by_rel[rel] = link.get("href")
    return by_rel


def compare_text(feedparser_value, xml_element, what, problems):
    """feedparser rewrites some text (Windows-1252 and Latin-1 guesses); a client would see
    something other than what the publisher wrote, so a difference is a failure."""
    xml_value = None if xml_element is None else (xml_element.text or "")
    if feedparser_value is None and xml_value is None:
        return
    feedparser_value = feedparser_value or ""
    xml_value = xml_value or ""
    if feedparser_value != xml_value:
        first_difference = next(
            (
                index
                for index, (ours, theirs) in enumerate(zip(xml_value, feedparser_value))
                if ours != theirs
            ),
            min(len(xml_value), len(feedparser_value)),
        )
        start = max(0, first_difference - 20)
        end = first_difference + 20
        problems.append(
            f"{what} differs from character {first_difference}: the document says "
            f"{xml_value[start:end]!r}, feedparser reads {feedparser_value[start:end]!r}"
        )


def is_json(text):
    def reject_constant(name):
        raise ValueError(f"{name} is not JSON")

    try:
        json.loads(text, parse_constant=reject_constant)
    except ValueError:
        return False
    return True


def is_plain_relative_url(text):
    """Bahmni's flavour of content, e.g. /openmrs/ws/rest/v1/patient/<uuid>?v=full."""
    if not text or not text.isascii() or not text.isprintable() or " " in text:
        return False
    parts = urlsplit(text)
    return not parts.scheme and not parts.netloc and bool(parts.path)


def shorten(text, length_max=120):
    if text is None or len(text) <= length_max:
        return text
    return text[:length_max] + "..."


if __name__ == "__main__":
    sys.exit(main())
