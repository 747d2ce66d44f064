//! The sequencer turns journal rows into published events: it gives each a gap-free sequence
//! number, an event uuid, frozen entry content, and its page in its category's feed and in
//! the `all` feed, then deletes the journal rows, all in one transaction.
//!
//! Why this closes the "data gap": the sequencer never reads the journal by a cursor. It takes
//! whatever journal rows are visible (committed), oldest first, and removes what it publishes.
//! A transaction that took a lower journal id but commits later is simply found by a later
//! batch. Event numbers are assigned only here, under one lock, so the published order is the
//! sequencer's commit order and has no holes. A crash rolls the whole batch back.

use std::collections::BTreeMap;

use crate::capture::{EVENT_TABLE, JOURNAL_TABLE, JournalRow, PAGE_TABLE};
use feedsync_db::tables;
use feedsync_db::{DbError, DbResult, Session, Value};
use feedsync_core::model::Model;
use feedsync_wire::resource::resource_path;

use crate::config::{Config, fill_template};

/// The feed spanning every category, in commit order.
pub const ALL_FEED: &str = "all";

/// Where the next entry of a feed goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageCursor {
    /// The open (newest) page, from 1.
    pub page: i64,
    /// Entries already on it.
    pub entries: i64,
}

impl PageCursor {
    pub const FIRST: PageCursor = PageCursor { page: 1, entries: 0 };

    /// Places one entry and returns its page: a full page is closed and the next one opened.
    /// A page is closed for ever once a later page exists, so its entries never change.
    pub fn place(&mut self, page_size: i64) -> i64 {
        debug_assert!(page_size >= 1);
        if self.entries >= page_size {
            self.page += 1;
            self.entries = 0;
        }
        self.entries += 1;
        self.page
    }
}

/// One event ready to insert.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_seq: i64,
    pub event_uuid: String,
    pub table_name: String,
    pub category: String,
    pub action: String,
    pub entity_key: String,
    pub patient_uuid: Option<String>,
    pub location_uuid: Option<String>,
    pub origin: Option<String>,
    pub changed_at: String,
    pub category_page: i64,
    pub all_page: i64,
    pub content: String,
}

/// The pure part: journal rows in, events out, cursors advanced. `uuids` supplies event uuids
/// (random in production, fixed in tests).
pub fn plan_events(
    journal: &[JournalRow],
    model: &Model,
    config: &Config,
    next_seq: i64,
    cursors: &mut BTreeMap<String, PageCursor>,
    uuids: &mut dyn FnMut() -> String,
) -> Vec<NewEvent> {
    let page_size = i64::from(config.feed.page_size);
    let mut events = Vec::with_capacity(journal.len());
    for (i, row) in journal.iter().enumerate() {
        let category = model.entity(&row.table_name).map_or_else(|| row.table_name.clone(), |e| e.category.clone());
        // A row whose identity could not be computed (its parent row was already gone) is
        // still published, under its local key, so nothing disappears silently.
        let entity_key = row
            .entity_key
            .clone()
            .unwrap_or_else(|| format!("unresolved:{}", row.row_key.clone().unwrap_or_default()));
        let category_page = cursors.entry(category.clone()).or_insert(PageCursor::FIRST).place(page_size);
        let all_page = cursors.entry(ALL_FEED.to_owned()).or_insert(PageCursor::FIRST).place(page_size);
        let content = entry_content(config, &category, &row.table_name, &entity_key, row.patient_uuid.as_deref());
        events.push(NewEvent {
            event_seq: next_seq + i as i64,
            event_uuid: uuids(),
            table_name: row.table_name.clone(),
            category,
            action: row.action.clone(),
            entity_key,
            patient_uuid: row.patient_uuid.clone(),
            location_uuid: row.location_uuid.clone(),
            origin: row.origin.clone(),
            changed_at: row.changed_at.clone(),
            category_page,
            all_page,
            content,
        });
    }
    events
}

/// The JSON object of links an entry carries: `rest` and `fhir` (OpenMRS's own APIs, from
/// templates) and `resource` (this publisher's).
pub fn entry_content(config: &Config, category: &str, table: &str, key: &str, patient_uuid: Option<&str>) -> String {
    let mut links = serde_json::Map::new();
    let templates = config.link_templates(category);
    for (name, template) in [("rest", &templates.rest), ("fhir", &templates.fhir)] {
        if let Some(link) = template.as_deref().and_then(|t| fill_template(t, key, patient_uuid)) {
            links.insert(name.into(), link.into());
        }
    }
    links.insert("resource".into(), resource_path(&config.server.path_prefix, table, key).into());
    serde_json::Value::Object(links).to_string()
}

/// The `feedsync_state` row whose lock lets one sequencer at a time run per database.
const SEQUENCER_LOCK_ROW: &str = "sequencer";

const EVENT_COLUMNS: [&str; 13] = [
    "event_seq", "event_uuid", "table_name", "category", "action", "entity_key", "patient_uuid",
    "location_uuid", "origin", "changed_at", "category_page", "all_page", "content",
];

/// Publishes up to `sequencer_batch_rows_max` journal rows; returns how many were consumed
/// (applied-from-feed rows are consumed without an event unless `publish_applied_changes`).
pub async fn sequence_batch(session: &mut Session, model: &Model, config: &Config) -> DbResult<usize> {
    // READ COMMITTED (MySQL): each statement sees the latest commits and takes no gap locks,
    // so OpenMRS writers appending to the journal are never blocked by the sequencer.
    session.read_committed().await?;
    // Outside the transaction: an insert there would take a shared lock on the row that the
    // lock below must upgrade, and two sequencers (a district's publisher and its child
    // rounds) would deadlock on the upgrade.
    tables::ensure_state_row(session, SEQUENCER_LOCK_ROW).await?;
    session.begin().await?;
    match sequence_in_transaction(session, model, config).await {
        Ok(n) => {
            session.commit().await?;
            Ok(n)
        }
        Err(e) => {
            let _ = session.rollback().await;
            Err(e)
        }
    }
}

async fn sequence_in_transaction(session: &mut Session, model: &Model, config: &Config) -> DbResult<usize> {
    let dialect = session.dialect();
    // One sequencer at a time per database, even with two publishers running.
    tables::lock_state_row(session, SEQUENCER_LOCK_ROW).await?;
    let limit = config.feed.sequencer_batch_rows_max;
    let journal: Vec<JournalRow> = session
        .query(&format!("SELECT * FROM {JOURNAL_TABLE} ORDER BY journal_id LIMIT {limit}"), &[])
        .await?
        .iter()
        .map(JournalRow::from_row)
        .collect();
    if journal.is_empty() {
        return Ok(0);
    }
    let next_seq = session
        .query(&format!("SELECT COALESCE(MAX(event_seq), 0) + 1 AS next_seq FROM {EVENT_TABLE}"), &[])
        .await?
        .first()
        .and_then(|r| r.i64("next_seq"))
        .unwrap_or(1);
    let mut cursors: BTreeMap<String, PageCursor> = session
        .query(&format!("SELECT feed, page, entries FROM {PAGE_TABLE}"), &[])
        .await?
        .iter()
        .filter_map(|r| Some((r.text("feed")?, PageCursor { page: r.i64("page")?, entries: r.i64("entries")? })))
        .collect();
    let before = cursors.clone();
    // Changes a feed subscriber applied here are not this server's own: unless configured to
    // republish them (a hub passing data on), they are consumed without an event, so a
    // subscriber never echoes its source's data back. Changes from network peers (a parent, a
    // child) are kept: a parent passes them on, and the exchange leaves out each peer's own.
    let mut publishable: Vec<JournalRow> = journal
        .iter()
        .filter(|j| config.feed.publish_applied_changes || j.origin.as_deref().is_none_or(crate::exchange::is_network_origin))
        .cloned()
        .collect();
    untag_non_patients(session, model, &mut publishable).await?;
    let events = plan_events(&publishable, model, config, next_seq, &mut cursors, &mut || uuid::Uuid::new_v4().to_string());

    // One multi-row insert per chunk: a round trip per event would dominate on MySQL.
    const EVENTS_PER_INSERT_MAX: usize = 200;
    for chunk in events.chunks(EVENTS_PER_INSERT_MAX) {
        let placeholders = vec![format!("({})", vec!["?"; EVENT_COLUMNS.len()].join(", ")); chunk.len()].join(", ");
        let sql = format!("INSERT INTO {EVENT_TABLE} ({}) VALUES {placeholders}", EVENT_COLUMNS.join(", "));
        let mut params = Vec::with_capacity(chunk.len() * EVENT_COLUMNS.len());
        for e in chunk {
            params.extend([
                Value::Int(e.event_seq),
                e.event_uuid.clone().into(),
                e.table_name.clone().into(),
                e.category.clone().into(),
                e.action.clone().into(),
                e.entity_key.clone().into(),
                e.patient_uuid.clone().into(),
                e.location_uuid.clone().into(),
                e.origin.clone().into(),
                e.changed_at.clone().into(),
                Value::Int(e.category_page),
                Value::Int(e.all_page),
                e.content.clone().into(),
            ]);
        }
        session.execute(&sql, &params).await?;
    }
    for (feed, cursor) in &cursors {
        if before.get(feed) == Some(cursor) {
            continue;
        }
        let params = [feed.clone().into(), Value::Int(cursor.page), Value::Int(cursor.entries)];
        let upsert = feedsync_core::sql::upsert_suffix(dialect, &["feed"], &["page", "entries"]);
        let sql = format!("INSERT INTO {PAGE_TABLE} (feed, page, entries) VALUES (?, ?, ?){upsert}");
        session.execute(&sql, &params).await?;
    }
    let ids: Vec<Value> = journal.iter().map(|j| Value::Int(j.journal_id)).collect();
    let placeholders = vec!["?"; ids.len()].join(", ");
    let deleted = session.execute(&format!("DELETE FROM {JOURNAL_TABLE} WHERE journal_id IN ({placeholders})"), &ids).await?;
    if deleted != journal.len() as u64 {
        // Another sequencer took these rows: roll back rather than publish twice.
        return Err(DbError::Statement {
            sql: "DELETE FROM feedsync_journal".into(),
            message: format!("expected to remove {} journal rows, removed {deleted}; another publisher may be sequencing this database", journal.len()),
        });
    }
    Ok(journal.len())
}

/// A person row is tagged with its own uuid as "patient"; only persons who are patients are.
/// Users' and providers' persons are metadata (every child of a network receives them), so
/// their tag is cleared here, after the writer's transaction committed its patient row if
/// there was one. One query per batch.
async fn untag_non_patients(session: &mut Session, model: &Model, rows: &mut [JournalRow]) -> DbResult<()> {
    if model.entity("patient").is_none() || model.entity("person").is_none() {
        return Ok(());
    }
    let tagged: std::collections::BTreeSet<String> = rows.iter().filter_map(|r| r.patient_uuid.clone()).collect();
    let mut patients = std::collections::HashSet::new();
    let tagged: Vec<String> = tagged.into_iter().collect();
    for chunk in tagged.chunks(500) {
        let marks = vec!["?"; chunk.len()].join(", ");
        let params: Vec<Value> = chunk.iter().map(|u| Value::from(u.as_str())).collect();
        let sql = format!("SELECT pe.uuid AS uuid FROM person pe JOIN patient pt ON pt.patient_id = pe.person_id WHERE pe.uuid IN ({marks})");
        patients.extend(session.query(&sql, &params).await?.iter().filter_map(|r| r.text("uuid")));
    }
    for row in rows.iter_mut() {
        if row.patient_uuid.as_ref().is_some_and(|u| !patients.contains(u)) {
            row.patient_uuid = None;
        }
    }
    Ok(())
}

/// Publishes until the journal is empty (or `batches_max` batches); returns rows published.
pub async fn drain(session: &mut Session, model: &Model, config: &Config, batches_max: usize) -> DbResult<usize> {
    let mut total = 0;
    for _ in 0..batches_max {
        let n = sequence_batch(session, model, config).await?;
        total += n;
        if n == 0 {
            break;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(table: &str, key: &str, id: i64) -> JournalRow {
        JournalRow {
            journal_id: id,
            table_name: table.into(),
            action: "CREATED".into(),
            entity_key: Some(key.into()),
            row_key: Some(id.to_string()),
            patient_uuid: None,
            location_uuid: None,
            origin: None,
            changed_at: "2026-01-01 00:00:00.000".into(),
        }
    }

    #[test]
    fn pages_fill_then_close() {
        let mut c = PageCursor::FIRST;
        let pages: Vec<i64> = (0..7).map(|_| c.place(3)).collect();
        assert_eq!(pages, [1, 1, 1, 2, 2, 2, 3]);
        assert_eq!(c, PageCursor { page: 3, entries: 1 });
        // A larger page size later grows only the open page.
        assert_eq!(c.place(5), 3);
    }

    #[test]
    fn every_placement_sequence_is_gap_free_and_bounded() {
        // Thousands of random page sizes and batch splits: pages only grow by one, never
        // exceed the size in force, and numbering does not depend on how rows were batched.
        let mut rng = feedsync_core::rng::SplitMix64::new(0x9E37_79B9_7F4A_7C15);
        let mut next = || rng.next_u64();
        for _ in 0..2_000 {
            let size = (next() % 7 + 1) as i64;
            let n = (next() % 60) as usize;
            let mut one = PageCursor::FIRST;
            let all: Vec<i64> = (0..n).map(|_| one.place(size)).collect();
            let mut split = PageCursor::FIRST;
            let mut pieces = Vec::new();
            let mut left = n;
            while left > 0 {
                let k = ((next() % 5) as usize + 1).min(left);
                let mut copy = split;
                pieces.extend((0..k).map(|_| copy.place(size)));
                split = copy;
                left -= k;
            }
            assert_eq!(all, pieces);
            for w in all.windows(2) {
                assert!(w[1] == w[0] || w[1] == w[0] + 1);
            }
            for p in 1..=one.page {
                assert!(all.iter().filter(|x| **x == p).count() as i64 <= size);
            }
        }
    }

    #[test]
    fn plan_assigns_sequence_pages_and_content() {
        let mut config = Config::default();
        config.feed.page_size = 2;
        let model = Model::default();
        let rows = [journal("obs", "o1", 5), journal("person", "p1", 9), journal("obs", "o2", 12)];
        let mut cursors = BTreeMap::new();
        let mut n = 0;
        let events = plan_events(&rows, &model, &config, 41, &mut cursors, &mut || {
            n += 1;
            format!("uuid-{n}")
        });
        let seqs: Vec<i64> = events.iter().map(|e| e.event_seq).collect();
        assert_eq!(seqs, [41, 42, 43]);
        let all_pages: Vec<i64> = events.iter().map(|e| e.all_page).collect();
        assert_eq!(all_pages, [1, 1, 2]);
        assert_eq!(events[2].category_page, 1, "second obs is on the obs feed's first page");
        assert_eq!(cursors[ALL_FEED], PageCursor { page: 2, entries: 1 });
        let content: serde_json::Value = serde_json::from_str(&events[0].content).unwrap();
        assert_eq!(content["resource"], "/ws/feedsync/resource/obs/o1");
    }

    #[test]
    fn unresolved_identities_are_published_not_dropped() {
        let mut row = journal("patient", "x", 1);
        row.entity_key = None;
        row.row_key = Some("77".into());
        let events = plan_events(&[row], &Model::default(), &Config::default(), 1, &mut BTreeMap::new(), &mut || "u".into());
        assert_eq!(events[0].entity_key, "unresolved:77");
    }
}
