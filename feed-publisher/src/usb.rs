//! USB transfer, the parent's side, and the payloads both sides put in a bundle. A child with
//! no network exports what its parent has not acknowledged into one file
//! (`feed-subscriber usb export`); here the parent imports it and writes a reply file with what
//! the child should receive (`feed-publisher usb import`); the child imports the reply
//! (`feed-subscriber usb import`). The file format (encryption, authentication, the readable
//! header) is `feedsync_wire::bundle`'s; this module decides what goes inside and applies it
//! with the same functions the online network uses, so USB and online sync mix in any order:
//!
//! - the export's pushes go through [`network::push_items`], which skips every item at or
//!   below the event the parent acknowledged for the child: importing an export twice, or
//!   after online sync sent the same events, applies nothing again;
//! - the reply carries the parent's answer to each push, the child's registration (categories,
//!   conflict policy) and the parent's changes for the child after the position the export
//!   named; the child applies them only where they continue exactly from its own positions
//!   (`feed_subscriber::usb`), so an old or repeated reply changes nothing.
//!
//! Provenance: the bundle header names the child and the event range (the child's own events
//! for an export, the parent's for a reply, whose `answers_to_seq` is the export's `to_seq`).
//! The parent finds the child's registration by the header's name and opens the file with its
//! stored token hash: an unknown or revoked child, a file made with another registration, or
//! a changed byte is refused before anything is applied. Each import is recorded in the audit
//! table (`usb-import`), which also tells an operator when the same export came back.
//!
//! The payload types are defined here because both binaries link this crate; they are plain
//! JSON of the network's wire types (`feedsync_node::exchange`).



use serde::Serialize;

use feedsync_wire::bundle::{self, BundleError, Direction, Header};
use feedsync_node::capture::EVENT_TABLE;
use feedsync_db::{DbError, Session, Value};
use feedsync_node::exchange::{self, AUDIT_TABLE, CHILD_TABLE};
use feedsync_wire::network::{Changes, Hello, ITEMS_PER_MESSAGE_MAX, Item, PolicyConfig, PushRequest, PushStatus};
use feedsync_core::model::Model;

use feedsync_node::parent::{self as network, AdminError, Child, ParentError};
use feedsync_node::usb::{describe_range, now};
use feedsync_wire::usb::{AnsweredPush, ExportPayload, REPLY_CHANGES_BYTES_MAX, REPLY_PAGES_MAX, ReplyPayload};

/// The audit action of an import.
pub const AUDIT_ACTION_IMPORT: &str = "usb-import";

/// Why an import failed. Nothing is applied from a file that fails to open; an import that
/// fails while applying keeps the pushes it finished (each is one transaction), and importing
/// the file again completes it.
#[derive(Debug, thiserror::Error)]
pub enum UsbError {
    // The variants below carry their cause in the message and not as a `source`, so that the
    // CLI's one line (`{:#}`, which appends sources) says it once.
    #[error("{0}")]
    Bundle(BundleError),
    #[error(
        "this file was exported by child '{0}', which is not registered here: import it at that child's own parent, or register it \
         (`feed-publisher child add --name {0}`) and export again at the child with the new token"
    )]
    UnknownChild(String),
    #[error(
        "this file was exported by child '{child}', whose registration was revoked on {revoked_at}: its files are refused, like its token \
         online; to bring the site back, register it under a new name (`feed-publisher child add`) and export at the child with that token"
    )]
    Revoked { child: String, revoked_at: String },
    #[error("the file opened but does not hold a feedsync export ({0}): use the same feedsync version on both sides")]
    Payload(String),
    /// The export was built on bases older than what the parent already has from this child,
    /// for rows changed again since: merging would see the child's own earlier version as the
    /// parent's change, record false conflicts and could drop the child's newest edits.
    #[error(
        "nothing was applied: this export from '{child}' starts after its event {push_after}, but the parent already has its changes up to \
         event {acked} (from an earlier file, or online), and {rows} rows in it changed again since (e.g. {example}); it was made before \
         the child imported the reply to that earlier file. At the child, import that reply first (if it is lost, import the earlier \
         export here again: it applies nothing twice and writes a new reply), then export again and bring the new file"
    )]
    StaleExport { child: String, push_after: i64, acked: i64, rows: usize, example: String },
    #[error("{message}: {hint}")]
    Refused { message: String, hint: &'static str, retryable: bool },
    #[error("the parent's database: {0}")]
    Database(DbError),
}

impl From<BundleError> for UsbError {
    fn from(e: BundleError) -> Self {
        UsbError::Bundle(e)
    }
}

impl From<DbError> for UsbError {
    fn from(e: DbError) -> Self {
        UsbError::Database(e)
    }
}

impl UsbError {
    /// Trying again later may help (the database was unavailable).
    pub fn is_retryable(&self) -> bool {
        match self {
            UsbError::Refused { retryable, .. } => *retryable,
            UsbError::Database(e) => e.is_retryable(),
            _ => false,
        }
    }
}

impl From<ParentError> for UsbError {
    fn from(e: ParentError) -> Self {
        match e {
            ParentError::Database(e) => UsbError::from(e),
            e => UsbError::Refused { retryable: e.is_retryable(), hint: e.hint(), message: e.to_string() },
        }
    }
}

impl From<AdminError> for UsbError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::Database(e) => UsbError::Database(e),
            other => {
                UsbError::Refused { message: other.to_string(), hint: "check the child's registration with `feed-publisher child list`", retryable: false }
            }
        }
    }
}

/// What an import did, and the reply to carry back.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Imported {
    /// The reply file's bytes (a sealed `to_child` bundle).
    #[serde(skip)]
    pub reply: Vec<u8>,
    pub export: Header,
    pub reply_header: Header,
    /// Pushed items applied, already here (an earlier import or online sync had them), held
    /// until they can apply, and left out (a category the child may not write).
    pub applied: usize,
    pub already: usize,
    pub held: usize,
    pub not_allowed: usize,
    /// When the same export was imported before, if it was.
    pub previously_imported_at: Option<String>,
    /// The child had more to send than its file held.
    pub export_more: bool,
    /// Changes the reply carries, and whether the parent has more for the child.
    pub changes_items: usize,
    pub more_changes: bool,
}

impl Imported {
    /// One paragraph for the operator.
    pub fn describe(&self) -> String {
        let e = &self.export;
        let mut text = format!(
            "imported {}'s export ({}, made {}): {} changes applied, {} already here, {} held until what they reference arrives",
            e.child,
            describe_range(e.from_seq, e.to_seq, "own events"),
            e.created_at,
            self.applied,
            self.already,
            self.held
        );
        if self.not_allowed > 0 {
            text += &format!(", {} left out (categories the child may not write)", self.not_allowed);
        }
        if let Some(at) = &self.previously_imported_at {
            text += &format!(". This export was imported before ({at}): nothing was applied twice");
        }
        text += &format!(
            ".\nreply: {} changes for the child ({}){}",
            self.changes_items,
            describe_range(self.reply_header.from_seq, self.reply_header.to_seq, "parent events"),
            if self.more_changes { "; the parent has more: the child receives the rest with its next export's reply, or online" } else { "" }
        );
        if self.export_more {
            text += "\nthe child had more to send than one file holds: export again at the child after importing this reply";
        }
        text
    }
}


/// Imports a child's export: checks its provenance, applies its pushes, and returns the reply
/// with the parent's answers and the changes for the child. The caller sequences the parent's
/// journal before (so the reply carries the latest changes) and after (so the child's data
/// reaches the parent's other children), as the server's sequencer loop does online.
pub async fn import(session: &mut Session, model: &Model, policy: &PolicyConfig, bytes: &[u8]) -> Result<Imported, UsbError> {
    let header = bundle::read_header(bytes)?;
    // Unauthenticated yet: read only to find the key, or to refuse with the precise reason.
    if header.direction != Direction::ToParent {
        return Err(BundleError::WrongDirection { expected: Direction::ToParent, found: header.direction }.into());
    }
    let Some((child, token_hash)) = network::child_by_name(session, &header.child).await? else {
        return Err(UsbError::UnknownChild(header.child));
    };
    if let Some(revoked_at) = child.revoked_at.clone() {
        return Err(UsbError::Revoked { child: child.name, revoked_at });
    }
    let (export_header, payload) = bundle::open(bytes, &token_hash, &child.name, Direction::ToParent)?;
    let export: ExportPayload = serde_json::from_slice(&payload).map_err(|e| UsbError::Payload(e.to_string()))?;
    check_export(&export_header, &export)?;

    let identity = export_identity(&export_header);
    let previously_imported_at = previous_import(session, &child.name, &identity).await?;
    let mut imported = Imported {
        reply: Vec::new(),
        export: export_header.clone(),
        reply_header: export_header.clone(),
        applied: 0,
        already: 0,
        held: 0,
        not_allowed: 0,
        previously_imported_at,
        export_more: export.more,
        changes_items: 0,
        more_changes: false,
    };
    let pushes: Vec<(PushRequest, Vec<i64>)> = export
        .pushes
        .into_iter()
        .zip(export.first_own_seqs)
        .map(|(push, firsts)| allowed_part(model, &child, push, firsts, &mut imported.not_allowed))
        .collect();
    if imported.previously_imported_at.is_none() {
        check_bases(&child.name, child.acked_seq, export.push_after, &pushes)?;
    }
    let mut answered = Vec::with_capacity(pushes.len());
    let items_total: usize = pushes.iter().map(|(push, _)| push.items.len()).sum();
    let progress = feedsync_node::progress::Progress::new("USB import", "items", Some(items_total as u64));
    for (push, _) in pushes {
        // The reply echoes the push without bases: the child's answer handling needs none.
        let mut echoed = push.clone();
        echoed.items.iter_mut().for_each(|item| item.base = None);
        let response = network::push_items(session, model, policy, &child, push).await?;
        for result in &response.results {
            match result.status {
                PushStatus::Applied => imported.applied += 1,
                PushStatus::Already => imported.already += 1,
                PushStatus::Held => imported.held += 1,
            }
        }
        let done = imported.applied + imported.already + imported.held;
        progress.update(done as u64, format!("from {}: {} applied, {} held", child.name, imported.applied, imported.held));
        answered.push(AnsweredPush { push: echoed, response });
    }
    drop(progress);
    touch_last_contact(session, &child.name).await?;

    // The push may have added patients to the child's catchment: changes are read after it.
    let child = network::child_by_name(session, &child.name).await?.map(|(c, _)| c).unwrap_or(child);
    let confirmed = pulled_after(session, &child.name).await?;
    let (changes, more_changes) = changes_for(session, model, &child, export.pull_after).await?;
    // Only the first page confirms (the export's `pull_after`); an older export must not move
    // the position back.
    set_pulled_after(session, &child.name, confirmed.max(export.pull_after)).await?;
    let through = changes.last().map_or(export.pull_after, |page| page.through);
    imported.changes_items = changes.iter().map(|page| page.items.len()).sum();
    imported.more_changes = more_changes;
    let hello = Hello {
        child: child.name.clone(),
        categories: child.categories.clone(),
        policy: policy.clone(),
        last_seq: last_event(session).await?,
        commands: Vec::new(),
    };
    let reply = ReplyPayload {
        child: child.name.clone(),
        hello,
        export_from_seq: export_header.from_seq,
        export_to_seq: export_header.to_seq,
        export_created_at: export_header.created_at.clone(),
        pushes: answered,
        not_allowed: imported.not_allowed,
        pull_after: export.pull_after,
        changes,
        more_changes,
    };
    let reply_header = Header::new(&child.name, Direction::ToChild, export.pull_after + 1, through, Some(export_header.to_seq), now());
    let reply_json = serde_json::to_vec(&reply).expect("a reply serializes");
    imported.reply = bundle::seal(&reply_header, &reply_json, &token_hash)?;
    imported.reply_header = bundle::read_header(&imported.reply)?;

    let detail = format!(
        "{identity}: {} applied, {} already here, {} held, {} not allowed; reply with {} changes ({}){}",
        imported.applied,
        imported.already,
        imported.held,
        imported.not_allowed,
        imported.changes_items,
        describe_range(reply_header.from_seq, reply_header.to_seq, "parent events"),
        if more_changes { ", more remain" } else { "" }
    );
    exchange::audit(session, &child.name, AUDIT_ACTION_IMPORT, None, &detail).await?;
    tracing::info!(child = %child.name, applied = imported.applied, already = imported.already, held = imported.held, changes = imported.changes_items, "USB export imported");
    Ok(imported)
}

/// The payload must agree with its (authenticated) header, and its pushes must follow each
/// other inside the header's range: anything else was not made by a feedsync export.
fn check_export(header: &Header, export: &ExportPayload) -> Result<(), UsbError> {
    if export.child != header.child {
        return Err(UsbError::Payload(format!("its payload names child '{}' but its header '{}'", export.child, header.child)));
    }
    if header.from_seq != export.push_after + 1 {
        return Err(UsbError::Payload(format!("its header starts at event {} but its pushes after event {}", header.from_seq, export.push_after)));
    }
    if export.first_own_seqs.len() != export.pushes.len() || export.pushes.iter().zip(&export.first_own_seqs).any(|(p, f)| p.items.len() != f.len()) {
        return Err(UsbError::Payload("its first own events do not match its pushes item for item".into()));
    }
    let mut previous = export.push_after;
    for push in &export.pushes {
        if push.through_seq <= previous || push.through_seq > header.to_seq {
            return Err(UsbError::Payload(format!(
                "a push through event {} does not follow event {previous} inside the header's range {}..{}",
                push.through_seq, header.from_seq, header.to_seq
            )));
        }
        previous = push.through_seq;
    }
    if previous != header.to_seq {
        return Err(UsbError::Payload(format!("its pushes end at event {previous} but its header at {}", header.to_seq)));
    }
    Ok(())
}

/// The start of an import's audit detail, which names the export exactly.
fn export_identity(header: &Header) -> String {
    format!("export {}..{} made {}", header.from_seq, header.to_seq, header.created_at)
}

/// When this export was imported before, from the audit table.
async fn previous_import(session: &mut Session, child: &str, identity: &str) -> Result<Option<String>, DbError> {
    let rows = session
        .query(
            &format!("SELECT at FROM {AUDIT_TABLE} WHERE actor = ? AND action = ? AND SUBSTR(detail, 1, ?) = ? ORDER BY audit_id LIMIT 1"),
            &[child.into(), AUDIT_ACTION_IMPORT.into(), Value::Int(identity.len() as i64 + 1), format!("{identity}:").into()],
        )
        .await?;
    Ok(rows.first().and_then(|r| r.text("at")))
}

/// The push without items the child may not write (online, the child leaves them out itself;
/// offline it cannot know its registration, so the parent does), with the first own events of
/// the items kept. Counts what it left out.
fn allowed_part(model: &Model, child: &Child, push: PushRequest, first_own_seqs: Vec<i64>, not_allowed: &mut usize) -> (PushRequest, Vec<i64>) {
    let allowed = |item: &Item| model.entity(&item.table).is_none_or(|e| feedsync_wire::network::category_allowed(&child.categories, &e.category));
    let before = push.items.len();
    let (items, firsts): (Vec<Item>, Vec<i64>) = push.items.into_iter().zip(first_own_seqs).filter(|(item, _)| allowed(item)).unzip();
    *not_allowed += before - items.len();
    (PushRequest { through_seq: push.through_seq, items }, firsts)
}

/// Refuses an export that carries again rows the parent already received from this child
/// (their first own event after the export's start is at or below the acknowledged event)
/// and that changed since (their latest event is above it): their bases predate what the
/// parent received, so a merge would take the child's own earlier version for the parent's
/// change. Rows entirely at or below the acknowledged event are skipped by the push as
/// already here, and rows entirely above it are new: both are fine.
fn check_bases(child: &str, acked: i64, push_after: i64, pushes: &[(PushRequest, Vec<i64>)]) -> Result<(), UsbError> {
    if push_after >= acked {
        return Ok(());
    }
    let stale: std::collections::BTreeSet<(&str, &str)> = pushes
        .iter()
        .flat_map(|(push, firsts)| push.items.iter().zip(firsts))
        .filter(|(item, first)| **first <= acked && item.seq > acked)
        .map(|(item, _)| (item.table.as_str(), item.key.as_str()))
        .collect();
    match stale.first() {
        None => Ok(()),
        Some((table, key)) => Err(UsbError::StaleExport { child: child.to_owned(), push_after, acked, rows: stale.len(), example: format!("{table} {key}") }),
    }
}

/// Pages of the parent's changes for `child` after `after`, each after the last, until there
/// are no more or the reply is full (then `true`: more remain).
async fn changes_for(session: &mut Session, model: &Model, child: &Child, mut after: i64) -> Result<(Vec<Changes>, bool), UsbError> {
    let mut pages: Vec<Changes> = Vec::new();
    let mut bytes = 0;
    loop {
        if pages.len() >= REPLY_PAGES_MAX || bytes >= REPLY_CHANGES_BYTES_MAX {
            return Ok((pages, true));
        }
        // The first page's `after` is what the export confirmed; later pages are read ahead.
        let confirm = if pages.is_empty() { network::Confirm::UpTo } else { network::Confirm::Nothing };
        let page = network::changes_read(session, model, child, after, ITEMS_PER_MESSAGE_MAX, confirm).await?;
        if page.through <= after {
            return Ok((pages, false));
        }
        bytes += serde_json::to_vec(&page).map_or(0, |json| json.len());
        after = page.through;
        let more = page.more;
        pages.push(page);
        if !more {
            return Ok((pages, false));
        }
    }
}

async fn touch_last_contact(session: &mut Session, child: &str) -> Result<(), DbError> {
    let now = feedsync_core::sql::now_sql(session.dialect());
    session.execute(&format!("UPDATE {CHILD_TABLE} SET last_contact = {now} WHERE name = ?"), &[child.into()]).await?;
    Ok(())
}

/// How far the parent knows the child has applied its changes (`network::changes` records it).
async fn pulled_after(session: &mut Session, child: &str) -> Result<i64, DbError> {
    let rows = session.query(&format!("SELECT COALESCE(pulled_after, 0) AS n FROM {CHILD_TABLE} WHERE name = ?"), &[child.into()]).await?;
    Ok(rows.first().and_then(|r| r.i64("n")).unwrap_or_default())
}

async fn set_pulled_after(session: &mut Session, child: &str, after: i64) -> Result<(), DbError> {
    session.execute(&format!("UPDATE {CHILD_TABLE} SET pulled_after = ? WHERE name = ?"), &[Value::Int(after), child.into()]).await?;
    Ok(())
}

async fn last_event(session: &mut Session) -> Result<i64, DbError> {
    let rows = session.query(&format!("SELECT COALESCE(MAX(event_seq), 0) AS n FROM {EVENT_TABLE}"), &[]).await?;
    Ok(rows.first().and_then(|r| r.i64("n")).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use feedsync_node::usb::{describe_header, write_file_atomically};

    fn header(from_seq: i64, to_seq: i64) -> Header {
        Header::new("north", Direction::ToParent, from_seq, to_seq, None, "2024-01-01T00:00:00.000Z")
    }

    fn push(through_seq: i64) -> PushRequest {
        PushRequest { through_seq, items: vec![] }
    }

    #[test]
    fn exports_must_agree_with_their_header() {
        let export = |pushes: Vec<PushRequest>| ExportPayload {
            child: "north".into(),
            push_after: 10,
            first_own_seqs: pushes.iter().map(|p| vec![0; p.items.len()]).collect(),
            pushes,
            more: false,
            pull_after: 0,
        };
        assert!(check_export(&header(11, 30), &export(vec![push(20), push(30)])).is_ok());
        assert!(check_export(&header(11, 10), &export(vec![])).is_ok(), "nothing to push: an empty range");
        for (h, pushes) in [
            (header(11, 30), vec![push(30), push(20)]),
            (header(11, 30), vec![push(20)]),
            (header(11, 30), vec![push(20), push(40)]),
            (header(12, 30), vec![push(30)]),
            (header(11, 30), vec![push(10), push(30)]),
        ] {
            assert!(matches!(check_export(&h, &export(pushes.clone())), Err(UsbError::Payload(_))), "{h:?} {pushes:?}");
        }
        let mut other = export(vec![]);
        other.child = "south".into();
        assert!(check_export(&header(11, 10), &other).unwrap_err().to_string().contains("south"));
    }

    #[test]
    fn exports_repeating_rows_the_parent_has_newer_are_refused() {
        let item = |key: &str, seq| Item { seq, table: "person_name".into(), key: key.into(), category: "person".into(), resource: None, base: None };
        // Rows with (first own event, latest event): entirely acknowledged, entirely new, and
        // one changed on both sides of the acknowledged event 20.
        let pushes = |rows: &[(&str, i64, i64)]| {
            vec![(PushRequest { through_seq: 30, items: rows.iter().map(|(k, _, latest)| item(k, *latest)).collect() }, rows.iter().map(|r| r.1).collect())]
        };
        assert!(check_bases("north", 20, 10, &pushes(&[("a", 12, 18), ("b", 22, 30)])).is_ok());
        assert!(check_bases("north", 10, 10, &pushes(&[("a", 12, 30)])).is_ok(), "nothing acknowledged past the export's start");
        let e = check_bases("north", 20, 10, &pushes(&[("a", 12, 18), ("c", 15, 25), ("c", 15, 25)])).unwrap_err();
        assert!(matches!(&e, UsbError::StaleExport { rows: 1, acked: 20, push_after: 10, example, .. } if example == "person_name c"), "{e}");
        assert!(e.to_string().contains("import that reply first"), "{e}");
    }

    #[test]
    fn headers_describe_themselves() {
        let text = describe_header(&header(11, 30));
        assert!(text.contains("child:      north") && text.contains("child events 11 to 30") && text.contains("feed-publisher usb import"), "{text}");
        let reply = Header::new("north", Direction::ToChild, 5, 4, Some(30), "2024-01-01T00:00:00.000Z");
        let text = describe_header(&reply);
        assert!(text.contains("no parent events after 4") && text.contains("up to its event 30"), "{text}");
    }

    #[test]
    fn files_are_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("feedsync_usb_write_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("north.fsync");
        write_file_atomically(&file, b"first").unwrap();
        write_file_atomically(&file, b"second").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"second");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file left");
        assert!(write_file_atomically(&dir.join("missing").join("x"), b"x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
