//! USB transfer, the child's side: `export` writes everything the parent has not acknowledged
//! (the child's own events, as the pushes an online round would send) into one sealed file;
//! `import_reply` applies the parent's reply to it. The payloads and the parent's side are in
//! `feed_publisher::usb`, the file format in `feedsync_wire::bundle`.
//!
//! Nothing here moves a position by itself: the pushes are built from the acknowledged
//! position without moving it (an export is not an acknowledgement), and a reply is applied
//! with [`ChildNode::apply_push_reply`] and [`ChildNode::apply_changes`], which apply only what
//! continues from this child's positions. So a reply imported twice, a reply older than one
//! already imported, and a reply overtaken by online sync all change nothing, and online
//! rounds carry on from wherever USB left the positions.
//!
//! Provenance: the file must be sealed with this child's token (its name and key) and travel
//! to the child; it must answer an export this database made (exports are remembered in
//! `feedsync_state`, the last [`EXPORTS_REMEMBERED`]), so a reply carried to another database
//! registered under the same name (a copy, a restored backup) is refused before it applies.

use std::path::Path;

use serde::{Deserialize, Serialize};

use feedsync_wire::usb::{EXPORT_PUSH_BYTES_MAX, EXPORT_PUSHES_MAX, ExportPayload, ReplyPayload};
use feedsync_wire::bundle::{self, BundleError, Direction, Header};
use feedsync_node::capture::{self, EVENT_TABLE};
use feedsync_db::{DbError, Session, Value};
use feedsync_node::exchange::{self, ORIGIN_PARENT, PEER_PARENT};
use feedsync_wire::network::{Changes, Hello, PolicyConfig, PushRequest, PushResponse, Record};
use feedsync_node::lookup::LookupCache;
use feedsync_node::search::Candidate;

use crate::network::{ChildError, ChildNode, LinkError, ParentLink, RoundReport};

/// State names in `feedsync_state`.
const EXPORTS_STATE: &str = "usb.exports";
const LAST_REPLY_STATE: &str = "usb.last_reply";
/// How many exports a child remembers, so that a reply to any of them is recognised.
pub const EXPORTS_REMEMBERED: usize = 50;
/// Sequencer batches an export runs first, at most (as an online round does).
const SEQUENCER_BATCHES_MAX: usize = 10_000;

/// The parent link of a child that works from USB files only: every online call fails with a
/// message saying so. (`ChildNode` needs a link type; USB never calls it.)
pub struct NoParentLink;

impl NoParentLink {
    fn refuse<T>() -> Result<T, LinkError> {
        Err(LinkError {
            message: "this child has no network link to its parent here: it works from USB files (`feed-subscriber usb export` / `usb import`)".into(),
            retryable: false,
            unauthorized: false,
        })
    }
}

impl ParentLink for NoParentLink {
    async fn hello(&self) -> Result<Hello, LinkError> {
        Self::refuse()
    }
    async fn changes(&self, _after: i64, _limit: usize) -> Result<Changes, LinkError> {
        Self::refuse()
    }
    async fn push(&self, _push: &PushRequest) -> Result<PushResponse, LinkError> {
        Self::refuse()
    }
    async fn find_patients(&self, _query: &str, _limit: usize) -> Result<Vec<Candidate>, LinkError> {
        Self::refuse()
    }
    async fn fetch_patient(&self, _uuid: &str, _reason: &str) -> Result<Record, LinkError> {
        Self::refuse()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UsbError {
    #[error("the token is not a child token (expected NAME.SECRET, exactly as `feed-publisher child add` printed it at the parent): pass this child's token")]
    InvalidToken,
    // The variants below carry their cause in the message and not as a `source`, so that the
    // CLI's one line (`{:#}`, which appends sources) says it once.
    #[error("{0}")]
    Bundle(BundleError),
    #[error("the file opened but does not hold a feedsync reply ({0}): use the same feedsync version on both sides")]
    Payload(String),
    #[error(
        "this reply answers an export made {created_at} ({range}), which this database did not make (or made more than {EXPORTS_REMEMBERED} \
         exports ago): it belongs to another database registered as '{child}' (a copy, or a backup restored since); import it where that \
         export was made, or export again here and take the new file to the parent"
    )]
    NotOurExport { child: String, created_at: String, range: String },
    /// Boxed: it is large, and every other variant small.
    #[error("{0}")]
    Child(Box<ChildError>),
    #[error(
        "cannot write {path} ({message}): check that the stick is mounted, writable and has room; nothing was acknowledged or \
         remembered, export again"
    )]
    Write { path: String, message: String },
    #[error("this database: {0}")]
    Database(DbError),
}

impl From<ChildError> for UsbError {
    fn from(e: ChildError) -> Self {
        UsbError::Child(Box::new(e))
    }
}

impl From<feedsync_node::apply::ApplyError> for UsbError {
    fn from(e: feedsync_node::apply::ApplyError) -> Self {
        UsbError::Child(Box::new(e.into()))
    }
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
            UsbError::Child(e) => e.is_retryable(),
            UsbError::Database(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// An export this database made, as remembered to recognise the reply to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ExportRecord {
    child: String,
    from_seq: i64,
    to_seq: i64,
    created_at: String,
}

/// The reply last applied here, to tell "imported twice" from "overtaken".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ReplyRecord {
    answers_to_seq: i64,
    to_seq: i64,
    created_at: String,
    parent_last_seq: i64,
    imported_at: String,
}

/// A sealed export and what it holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Export {
    #[serde(skip)]
    pub bytes: Vec<u8>,
    pub header: Header,
    /// Own changes given event numbers just before exporting.
    pub sequenced: usize,
    pub pushes: usize,
    /// Entities in the pushes (each entity once per push, with its current state).
    pub items: usize,
    /// More unacknowledged events remain than one file holds: export again after importing
    /// this file's reply.
    pub more: bool,
    /// The last parent event this child had applied: the reply brings the changes after it.
    pub pull_after: i64,
    /// Earlier exports from the same acknowledged position (no reply or online sync moved it
    /// since): this one repeats their changes.
    pub unanswered: usize,
}

impl Export {
    pub fn describe(&self) -> String {
        let h = &self.header;
        let range = if h.to_seq < h.from_seq {
            format!("no own changes after event {} to send", h.from_seq - 1)
        } else {
            format!("own events {} to {}: {} changed rows in {} pushes", h.from_seq, h.to_seq, self.items, self.pushes)
        };
        let mut text = format!("exported {} ({range}); the reply will bring the parent's changes after its event {}", h.child, self.pull_after);
        if self.more {
            text += "\nmore changes wait than one file holds: after importing this file's reply, export again for the rest";
        }
        if self.unanswered > 0 {
            text += &format!(
                "\nnote: {} earlier exports have no reply imported here yet, and this file repeats their changes. Take only the newest file to \
                 the parent; if the parent imported an earlier one, import its reply here first and export again, or the parent refuses \
                 this file when rows it holds changed again",
                self.unanswered
            );
        }
        text
    }
}

/// How a reply import went as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyOutcome {
    /// Applied (everything, or the part this child did not have yet).
    Applied,
    /// This very reply was imported before: nothing to do.
    AlreadyImported,
    /// This child is already further than the reply (online sync, or a newer reply, brought
    /// the same and more): nothing to do.
    Overtaken,
}

/// What importing a reply did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplyReport {
    pub outcome: ReplyOutcome,
    pub header: Header,
    /// The parent's answers to the export's pushes applied here, and those this child had
    /// already (older than its acknowledged position).
    pub pushes_applied: usize,
    pub pushes_stale: usize,
    /// Pages of the parent's changes applied, and those skipped because they do not continue
    /// from this child's position.
    pub pages_applied: usize,
    pub pages_skipped: usize,
    /// Rows in the pages applied (the parent's changes for this child).
    pub changes_received: usize,
    /// Held rows that could apply after this reply.
    pub unheld: usize,
    /// Rows the export left out (categories this child may not write).
    pub not_allowed: usize,
    /// The parent holds more changes for this child than the reply carried.
    pub more_changes: bool,
    /// When this reply was imported before (for `AlreadyImported`).
    pub imported_before_at: Option<String>,
    pub round: RoundReport,
}

impl ReplyReport {
    pub fn describe(&self) -> String {
        let r = &self.round;
        let mut text = match self.outcome {
            ReplyOutcome::AlreadyImported => {
                format!("this reply was already imported ({}): nothing to do", self.imported_before_at.as_deref().unwrap_or("earlier"))
            }
            ReplyOutcome::Overtaken => {
                "this reply is older than what this child already has (online sync or a newer reply brought it): nothing to do, nothing went back in time"
                    .to_owned()
            }
            ReplyOutcome::Applied => format!(
                "reply applied: the parent confirmed {} changes sent from here ({} held there until what they reference arrives); {} changes \
                 received from the parent ({} held here until what they reference arrives); {} conflicts recorded",
                r.pushed, r.held_at_parent, self.changes_received, r.held_here, r.conflicts
            ),
        };
        if self.outcome == ReplyOutcome::Applied && self.pushes_stale + self.pages_skipped > 0 {
            text += "; the rest of it was already here (online sync or an earlier reply)";
        }
        if self.unheld > 0 {
            text += &format!("; {} rows held earlier could now apply", self.unheld);
        }
        if self.not_allowed > 0 {
            text += &format!("\n{} changed rows were left out at the parent: this child's registration does not allow their categories", self.not_allowed);
        }
        if self.more_changes && self.outcome == ReplyOutcome::Applied {
            text += "\nthe parent has more changes for this child than one file holds: export again (or sync online) to receive the rest";
        }
        text
    }
}

fn child_name(token: &str) -> Result<&str, UsbError> {
    exchange::token_child(token).ok_or(UsbError::InvalidToken)
}

/// Sequences this child's journal, then seals every own event the parent has not
/// acknowledged into one export (up to [`EXPORT_PUSHES_MAX`] pushes and
/// [`EXPORT_PUSH_BYTES_MAX`] bytes). Moves no position; remembers the export so its reply is
/// recognised. The database must be prepared ([`ChildNode::prepare`]).
pub async fn export<L: ParentLink>(node: &ChildNode<L>, token: &str) -> Result<Export, UsbError> {
    let export = build_export(node, token).await?;
    remember_export(node, &export).await?;
    Ok(export)
}

/// [`export`] into `path`, written whole or not at all (see
/// `feedsync_node::usb::write_file_atomically`); the export is remembered only once the file
/// is written, so a failed write leaves no trace.
pub async fn export_to_file<L: ParentLink>(node: &ChildNode<L>, token: &str, path: &Path) -> Result<Export, UsbError> {
    let export = build_export(node, token).await?;
    feedsync_node::usb::write_file_atomically(path, &export.bytes)
        .map_err(|e| UsbError::Write { path: path.display().to_string(), message: e.to_string() })?;
    remember_export(node, &export).await?;
    Ok(export)
}

async fn build_export<L: ParentLink>(node: &ChildNode<L>, token: &str) -> Result<Export, UsbError> {
    let child = child_name(token)?.to_owned();
    let mut session = node.database.session().await?;
    let sequenced = feedsync_node::sequencer::drain(&mut session, &node.model, &node.sequencer_config, SEQUENCER_BATCHES_MAX).await?;
    let push_after = node.push_position(&mut session).await?;
    let pull_after = node.pull_position(&mut session).await?;
    // Offline the child cannot ask which categories it may write: it offers all, and the
    // parent leaves out what the registration does not allow, as the child would online.
    let hello = Hello { child: child.clone(), categories: vec!["*".into(), feedsync_wire::network::PRIVILEGED_GRANT.into()], policy: PolicyConfig::default(), last_seq: 0, commands: Vec::new() };
    let mut report = RoundReport::default();
    let mut pushes: Vec<PushRequest> = Vec::new();
    let mut first_own_seqs: Vec<Vec<i64>> = Vec::new();
    let mut through = push_after;
    let mut bytes = 0;
    let mut more = false;
    loop {
        if pushes.len() >= EXPORT_PUSHES_MAX || bytes >= EXPORT_PUSH_BYTES_MAX {
            more = events_after(&mut session, through).await?;
            break;
        }
        let Some(mut push) = node.build_push_after(&mut session, &hello, through, &mut report).await? else { break };
        first_own_seqs.push(event_range_of_items(&mut session, push_after, &mut push).await?);
        bytes += serde_json::to_vec(&push).map_or(0, |json| json.len());
        through = push.through_seq;
        pushes.push(push);
    }
    let header = Header::new(&child, Direction::ToParent, push_after + 1, through, None, feedsync_node::usb::now());
    let items = pushes.iter().map(|p| p.items.len()).sum();
    // Earlier exports from the same position, with changes: this one repeats them whole.
    let unanswered = exports_made(&mut session).await?.iter().filter(|e| e.child == child && e.from_seq == push_after + 1 && e.to_seq >= e.from_seq).count();
    let payload = ExportPayload { child: child.clone(), push_after, pushes, first_own_seqs, more, pull_after };
    let json = serde_json::to_vec(&payload).expect("an export serializes");
    let sealed = bundle::seal(&header, &json, &exchange::token_hash(token))?;
    let header = bundle::read_header(&sealed)?;
    tracing::info!(child = %header.child, from = header.from_seq, to = header.to_seq, items, "USB export sealed");
    Ok(Export { bytes: sealed, header, sequenced, pushes: payload.pushes.len(), items, more, pull_after, unanswered })
}

/// Each item's `seq` becomes the latest event of its entity here, not its first one in the
/// push: the item carries the entity's current state, which is at least that new. The parent
/// skips an item at or below the event it acknowledged; with the first event, a later export
/// repeating an entity an earlier export carried older would be skipped, its newer state
/// lost. Returns each item's first own event after `push_after` (see `ExportPayload`).
async fn event_range_of_items(session: &mut Session, push_after: i64, push: &mut PushRequest) -> Result<Vec<i64>, DbError> {
    let mut firsts = Vec::with_capacity(push.items.len());
    for item in &mut push.items {
        // Own events are the ones a push carries: local writes (no origin) and this node's
        // own children's (see `ChildNode::build_push`).
        let sql = format!(
            "SELECT MAX(event_seq) AS latest, MIN(CASE WHEN origin IS NULL OR origin LIKE 'child:%' THEN event_seq END) AS first_own \
             FROM {EVENT_TABLE} WHERE table_name = ? AND entity_key = ? AND event_seq > ?"
        );
        let rows = session.query(&sql, &[item.table.as_str().into(), item.key.as_str().into(), Value::Int(push_after)]).await?;
        let row = rows.first();
        item.seq = item.seq.max(row.and_then(|r| r.i64("latest")).unwrap_or_default());
        firsts.push(row.and_then(|r| r.i64("first_own")).unwrap_or(item.seq));
    }
    Ok(firsts)
}

async fn events_after(session: &mut Session, seq: i64) -> Result<bool, DbError> {
    Ok(!session.query(&format!("SELECT event_seq FROM {EVENT_TABLE} WHERE event_seq > ? LIMIT 1"), &[Value::Int(seq)]).await?.is_empty())
}

async fn exports_made(session: &mut Session) -> Result<Vec<ExportRecord>, DbError> {
    Ok(capture::state(session, EXPORTS_STATE).await?.and_then(|json| serde_json::from_str(&json).ok()).unwrap_or_default())
}

async fn remember_export<L: ParentLink>(node: &ChildNode<L>, export: &Export) -> Result<(), DbError> {
    let mut session = node.database.session().await?;
    let session = &mut session;
    let header = &export.header;
    let record = ExportRecord { child: header.child.clone(), from_seq: header.from_seq, to_seq: header.to_seq, created_at: header.created_at.clone() };
    let mut exports = exports_made(session).await?;
    exports.push(record);
    let excess = exports.len().saturating_sub(EXPORTS_REMEMBERED);
    exports.drain(..excess);
    capture::set_state(session, EXPORTS_STATE, &serde_json::to_string(&exports).expect("records serialize")).await
}

/// Opens a reply from the parent, checks that it answers an export this database made, and
/// applies what continues from this child's positions: the parent's answers to the pushes,
/// then the parent's changes. Held rows are retried afterwards. See the module doc for why a
/// repeated or stale reply changes nothing.
pub async fn import_reply<L: ParentLink>(node: &ChildNode<L>, token: &str, bytes: &[u8]) -> Result<ReplyReport, UsbError> {
    let child = child_name(token)?;
    let (header, payload) = bundle::open(bytes, &exchange::token_hash(token), child, Direction::ToChild)?;
    let reply: ReplyPayload = serde_json::from_slice(&payload).map_err(|e| UsbError::Payload(e.to_string()))?;
    check_reply(&header, &reply)?;
    let mut session = node.database.session().await?;
    let answered =
        ExportRecord { child: child.to_owned(), from_seq: reply.export_from_seq, to_seq: reply.export_to_seq, created_at: reply.export_created_at.clone() };
    if !exports_made(&mut session).await?.contains(&answered) {
        let range =
            if answered.to_seq < answered.from_seq { "no own events".to_owned() } else { format!("own events {} to {}", answered.from_seq, answered.to_seq) };
        return Err(UsbError::NotOurExport { child: child.to_owned(), created_at: answered.created_at, range });
    }
    let last_reply: Option<ReplyRecord> = capture::state(&mut session, LAST_REPLY_STATE).await?.and_then(|json| serde_json::from_str(&json).ok());
    let this_reply = ReplyRecord {
        answers_to_seq: reply.export_to_seq,
        to_seq: header.to_seq,
        created_at: header.created_at.clone(),
        parent_last_seq: reply.hello.last_seq,
        imported_at: feedsync_node::usb::now(),
    };
    let same_as_last = last_reply
        .as_ref()
        .is_some_and(|r| r.answers_to_seq == this_reply.answers_to_seq && r.to_seq == this_reply.to_seq && r.created_at == this_reply.created_at);
    let mut report = ReplyReport {
        outcome: ReplyOutcome::Applied,
        header: header.clone(),
        pushes_applied: 0,
        pushes_stale: 0,
        pages_applied: 0,
        pages_skipped: 0,
        changes_received: 0,
        unheld: 0,
        not_allowed: reply.not_allowed,
        more_changes: reply.more_changes,
        imported_before_at: None,
        round: RoundReport::default(),
    };
    // The parent's versions in a reply made before one already applied are older than what
    // that reply brought: even where they would line up with a position, they would go back
    // in time. Online sync needs no such check: it always asks for the current state.
    let older_than_applied = last_reply.as_ref().is_some_and(|r| reply.hello.last_seq < r.parent_last_seq);
    if older_than_applied {
        report.pushes_stale = reply.pushes.len();
        report.pages_skipped = reply.changes.len();
    } else {
        let items_total: usize = reply.pushes.iter().map(|a| a.response.results.len()).chain(reply.changes.iter().map(|page| page.items.len())).sum();
        let progress = feedsync_node::progress::Progress::new("USB import", "items", Some(items_total as u64));
        let mut items_done = 0;
        for answered in &reply.pushes {
            if node.apply_push_reply(&mut session, &reply.hello, &answered.push, &answered.response, &mut report.round).await? {
                report.pushes_applied += 1;
            } else {
                report.pushes_stale += 1;
            }
            items_done += answered.response.results.len();
            progress.update(items_done as u64, "the parent's answers to this child's changes");
        }
        // Pages apply only as a chain from exactly this child's position: a later page alone
        // (after online sync moved the position onto its start) was read before the changes
        // this child already has.
        if node.pull_position(&mut session).await? == reply.pull_after {
            let mut after = reply.pull_after;
            for page in &reply.changes {
                if !node.apply_changes(&mut session, &reply.hello, after, page, &mut report.round).await? {
                    break;
                }
                report.pages_applied += 1;
                report.changes_received += page.items.len();
                after = page.through;
                items_done += page.items.len();
                progress.update(items_done as u64, format!("the parent's changes: {} received", report.changes_received));
            }
        }
        drop(progress);
        report.pages_skipped = reply.changes.len() - report.pages_applied;
    }
    let applied_something = report.pushes_applied + report.pages_applied > 0;
    let had_something = !reply.pushes.is_empty() || !reply.changes.is_empty();
    if applied_something {
        report.unheld = retry_held(node, &mut session, &reply.hello).await?;
    }
    report.outcome = match (applied_something, had_something, same_as_last) {
        (true, _, _) => ReplyOutcome::Applied,
        (false, _, true) => ReplyOutcome::AlreadyImported,
        (false, true, false) => ReplyOutcome::Overtaken,
        (false, false, false) => ReplyOutcome::Applied,
    };
    if report.outcome == ReplyOutcome::AlreadyImported {
        report.imported_before_at = last_reply.map(|r| r.imported_at);
    } else if report.outcome == ReplyOutcome::Applied {
        let newest = ReplyRecord { parent_last_seq: this_reply.parent_last_seq.max(last_reply.map_or(0, |r| r.parent_last_seq)), ..this_reply };
        capture::set_state(&mut session, LAST_REPLY_STATE, &serde_json::to_string(&newest).expect("records serialize")).await?;
    }
    tracing::info!(child, outcome = ?report.outcome, pushes = report.pushes_applied, pages = report.pages_applied, "USB reply imported");
    Ok(report)
}

/// The payload must agree with its (authenticated) header and be a chain of pages.
fn check_reply(header: &Header, reply: &ReplyPayload) -> Result<(), UsbError> {
    let mismatch = |what: String| Err(UsbError::Payload(what));
    if reply.child != header.child || reply.hello.child != header.child {
        return mismatch(format!("its payload names child '{}' but its header '{}'", reply.child, header.child));
    }
    if header.answers_to_seq != Some(reply.export_to_seq) {
        return mismatch(format!("its header answers {:?} but its payload the export up to event {}", header.answers_to_seq, reply.export_to_seq));
    }
    let mut after = reply.pull_after;
    for page in &reply.changes {
        if page.through <= after {
            return mismatch(format!("a page of changes through event {} does not follow event {after}", page.through));
        }
        after = page.through;
    }
    if header.from_seq != reply.pull_after + 1 || header.to_seq != after {
        return mismatch(format!("its header covers {}..{} but its changes {}..{after}", header.from_seq, header.to_seq, reply.pull_after + 1));
    }
    if let Some(push) = reply.pushes.iter().find(|p| p.push.through_seq > reply.export_to_seq) {
        return mismatch(format!("it answers a push through event {} beyond the export's end {}", push.push.through_seq, reply.export_to_seq));
    }
    Ok(())
}

/// Retries rows held from the parent, in one transaction with the parent's origin (as the
/// end of an online round does).
async fn retry_held<L: ParentLink>(node: &ChildNode<L>, session: &mut Session, hello: &Hello) -> Result<usize, UsbError> {
    let receiver = node.receiver(hello);
    let mut cache = LookupCache::default();
    session.begin().await?;
    let outcome = async {
        capture::set_origin(session, ORIGIN_PARENT).await?;
        let applied = exchange::retry_held(session, &receiver, PEER_PARENT, &mut cache, true).await?;
        capture::clear_origin(session).await?;
        Ok::<usize, UsbError>(applied)
    }
    .await;
    match outcome {
        Ok(applied) => {
            session.commit().await?;
            Ok(applied)
        }
        Err(e) => {
            let _ = session.rollback().await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use feedsync_wire::usb::AnsweredPush;
    use feedsync_wire::network::PushResponse;

    fn reply(pull_after: i64, throughs: &[i64]) -> ReplyPayload {
        ReplyPayload {
            child: "north".into(),
            hello: Hello { child: "north".into(), categories: vec!["*".into()], policy: PolicyConfig::default(), last_seq: 99, commands: Vec::new() },
            export_from_seq: 1,
            export_to_seq: 40,
            export_created_at: "2024-01-01T00:00:00.000Z".into(),
            pushes: vec![AnsweredPush { push: PushRequest { through_seq: 40, items: vec![] }, response: PushResponse { acked_through: 40, results: vec![] } }],
            not_allowed: 0,
            pull_after,
            changes: throughs.iter().map(|&through| Changes { items: vec![], through, more: false }).collect(),
            more_changes: false,
        }
    }

    fn header(from_seq: i64, to_seq: i64) -> Header {
        Header::new("north", Direction::ToChild, from_seq, to_seq, Some(40), "2024-01-02T00:00:00.000Z")
    }

    #[test]
    fn replies_must_agree_with_their_header() {
        assert!(check_reply(&header(11, 30), &reply(10, &[20, 30])).is_ok());
        assert!(check_reply(&header(11, 10), &reply(10, &[])).is_ok());
        for (h, r) in [
            (header(11, 30), reply(10, &[30, 20])),
            (header(11, 30), reply(10, &[20])),
            (header(12, 30), reply(10, &[30])),
            (Header { answers_to_seq: Some(39), ..header(11, 30) }, reply(10, &[30])),
            (Header { child: "south".into(), ..header(11, 30) }, reply(10, &[30])),
        ] {
            assert!(matches!(check_reply(&h, &r), Err(UsbError::Payload(_))), "{h:?}");
        }
        let mut beyond = reply(10, &[30]);
        beyond.pushes[0].push.through_seq = 41;
        assert!(check_reply(&header(11, 30), &beyond).unwrap_err().to_string().contains("beyond the export's end"));
    }

    #[test]
    fn tokens_name_the_child() {
        assert_eq!(child_name("north.0123").unwrap(), "north");
        assert!(matches!(child_name("no-secret"), Err(UsbError::InvalidToken)));
    }
}
