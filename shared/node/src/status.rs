//! The one place a publisher's status is read from its database: the journal backlog, the last
//! event, events per feed, what is held and in conflict here, and every child's numbers
//! ([`child_statuses`]). `feed-publisher status`, `/ws/feedsync/status`, `/metrics`, the
//! dashboard and the alert checker all start from these, and [`child_facts`] turns a child's
//! status into the facts the one rule set (`feedsync_core::alerts`) judges, so every view lists
//! the same problems. Reads only, beyond creating the network's tables a database may predate.

use std::collections::BTreeMap;

use feedsync_core::alerts::{ChildFacts, QUEUE_PENDING_PUSH, QUEUE_WAITING_TO_CHILD};
use feedsync_db::{DbError, Session};
use feedsync_wire::status::{CategoryStatus, ChildStatus, ReportSummary, Status};

use crate::capture::{EVENT_TABLE, JOURNAL_TABLE, PAGE_TABLE};
use crate::clock::{age_s, db_now};
use crate::exchange::{CHILD_TABLE, CONFLICT_TABLE, INBOX_TABLE};
use crate::parent::{self, AdminError, Child, ParentError};
use crate::sequencer::ALL_FEED;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("{0}")]
    Database(#[from] DbError),
    #[error("{message}")]
    Other { message: String, retryable: bool },
}

impl StatusError {
    pub fn is_retryable(&self) -> bool {
        match self {
            StatusError::Database(e) => e.is_retryable(),
            StatusError::Other { retryable, .. } => *retryable,
        }
    }
}

impl From<ParentError> for StatusError {
    fn from(e: ParentError) -> Self {
        match e {
            ParentError::Database(e) => StatusError::Database(e),
            other => StatusError::Other { retryable: other.is_retryable(), message: other.to_string() },
        }
    }
}

impl From<AdminError> for StatusError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::Database(e) => StatusError::Database(e),
            other => StatusError::Other { message: other.to_string(), retryable: false },
        }
    }
}

async fn count(session: &mut Session, sql: &str) -> Result<i64, DbError> {
    Ok(session.query(sql, &[]).await?.first().and_then(|r| r.i64("n")).unwrap_or_default())
}

/// The publisher and every child, as of the database's clock now; `alerts` is left empty for
/// the caller, which knows the rules' config and what was announced. `page_size` is the feed's
/// configured page size (a category's event count is computed from its pages).
pub async fn gather(session: &mut Session, page_size: u32) -> Result<Status, StatusError> {
    let mut status = gather_parent(session, page_size).await?;
    let children = parent::list_children(session).await?;
    status.children = child_statuses(session, &status.now, &children).await?;
    Ok(status)
}

/// [`gather`] without the children (`children` is empty): this server's own numbers.
pub async fn gather_parent(session: &mut Session, page_size: u32) -> Result<Status, StatusError> {
    parent::prepare(session).await?;
    let now = db_now(session).await?;
    let journal_backlog = count(session, &format!("SELECT COUNT(*) AS n FROM {JOURNAL_TABLE}")).await?;
    let oldest_journal_at = if journal_backlog > 0 {
        session.query(&format!("SELECT MIN(changed_at) AS at FROM {JOURNAL_TABLE}"), &[]).await?.first().and_then(|r| r.text("at"))
    } else {
        None
    };
    let last = session.query(&format!("SELECT event_seq, changed_at FROM {EVENT_TABLE} ORDER BY event_seq DESC LIMIT 1"), &[]).await?;
    let last_event_seq = last.first().and_then(|r| r.i64("event_seq")).unwrap_or_default();
    let last_event_at = last.first().and_then(|r| r.text("changed_at"));
    let page_size = i64::from(page_size.max(1));
    let mut categories: Vec<CategoryStatus> = session
        .query(&format!("SELECT feed, page, entries FROM {PAGE_TABLE} ORDER BY feed"), &[])
        .await?
        .iter()
        .filter_map(|r| {
            let (category, page, entries) = (r.text("feed")?, r.i64("page")?, r.i64("entries")?);
            let events = if category == ALL_FEED { last_event_seq } else { (page - 1).max(0) * page_size + entries };
            Some(CategoryStatus { category, pages: page, events })
        })
        .collect();
    if last_event_seq > 0 && !categories.iter().any(|c| c.category == ALL_FEED) {
        categories.push(CategoryStatus { category: ALL_FEED.into(), pages: 0, events: last_event_seq });
    }
    let held_by_peer: BTreeMap<String, i64> = session
        .query(&format!("SELECT peer, COUNT(*) AS n FROM {INBOX_TABLE} GROUP BY peer"), &[])
        .await?
        .iter()
        .filter_map(|r| Some((r.text("peer")?, r.i64("n")?)))
        .collect();
    let open_conflicts = count(session, &format!("SELECT COUNT(*) AS n FROM {CONFLICT_TABLE} WHERE status = 'open'")).await?;
    Ok(Status {
        oldest_journal_age_s: age_s(&now, oldest_journal_at.as_deref()),
        last_event_age_s: age_s(&now, last_event_at.as_deref()),
        now,
        journal_backlog,
        oldest_journal_at,
        last_event_seq,
        last_event_at,
        categories,
        held: held_by_peer.values().sum(),
        held_by_peer,
        open_conflicts,
        children: Vec::new(),
        alerts: Vec::new(),
    })
}

/// The one per-child status: each of `children` (as `parent::list_children` gives them, in
/// that order) with its position, what waits each way, what is held and in conflict at either
/// end (the child's side as of its last report) and its last round. Ages are measured against
/// `now`, the database's clock. One read for every child's position and latest report (not one
/// per child), so a parent with a thousand children stays a few queries plus the waiting counts.
pub async fn child_statuses(session: &mut Session, now: &str, children: &[Child]) -> Result<Vec<ChildStatus>, StatusError> {
    let conflicts_by_child: BTreeMap<String, i64> = session
        .query(&format!("SELECT peer, COUNT(*) AS n FROM {CONFLICT_TABLE} WHERE status = 'open' AND site_side = 'parent' GROUP BY peer"), &[])
        .await?
        .iter()
        .filter_map(|r| Some((r.text("peer")?, r.i64("n")?)))
        .collect();
    let mut pulled_after: BTreeMap<String, i64> = BTreeMap::new();
    let mut reports: BTreeMap<String, (ReportSummary, String)> = BTreeMap::new();
    for r in session.query(&format!("SELECT name, COALESCE(pulled_after, 0) AS n, report, reported_at FROM {CHILD_TABLE}"), &[]).await? {
        let Some(name) = r.text("name") else { continue };
        pulled_after.insert(name.clone(), r.i64("n").unwrap_or_default());
        if let Some(report) = r.text("report").and_then(|text| serde_json::from_str::<ReportSummary>(&text).ok()) {
            reports.insert(name, (report, r.text("reported_at").unwrap_or_default()));
        }
    }
    let mut statuses = Vec::with_capacity(children.len());
    for child in children {
        let revoked = child.revoked_at.is_some();
        let report = reports.remove(&child.name);
        let waiting_to_child = if revoked { 0 } else { parent::waiting_for_child(session, child).await? };
        statuses.push(ChildStatus {
            name: child.name.clone(),
            revoked,
            revoked_at: child.revoked_at.clone(),
            created_at: child.created_at.clone(),
            last_contact: child.last_contact.clone(),
            last_contact_age_s: age_s(now, child.last_contact.as_deref()),
            reported_at: report.as_ref().map(|(_, at)| at.clone()),
            acked_seq: child.acked_seq,
            pulled_after: pulled_after.get(&child.name).copied().unwrap_or_default(),
            waiting_to_child,
            pending_push: report.as_ref().map(|(r, _)| r.pending_push),
            held_at_parent: child.held_items,
            held_at_child: report.as_ref().map(|(r, _)| r.held_total),
            conflicts_at_parent: conflicts_by_child.get(&child.name).copied().unwrap_or_default(),
            conflicts_at_child: report.as_ref().map(|(r, _)| r.open_conflicts),
            catchment_patients: child.catchment_patients,
            last_round_error: report.as_ref().and_then(|(r, _)| r.round.error.clone()),
            last_round: report.map(|(r, _)| r.round),
        });
    }
    Ok(statuses)
}

/// What the alert rules judge about one child: its status, its age since registration, and its
/// recent queue observations (`history` gives them by queue name, oldest first).
pub fn child_facts(status: &ChildStatus, now: &str, history: impl Fn(&str) -> Vec<i64>) -> ChildFacts {
    ChildFacts {
        name: status.name.clone(),
        revoked: status.revoked,
        last_contact_age_s: status.last_contact_age_s,
        registered_age_s: age_s(now, Some(&status.created_at)),
        held_at_parent: status.held_at_parent,
        held_at_child: status.held_at_child.unwrap_or_default(),
        conflicts_at_parent: status.conflicts_at_parent,
        conflicts_at_child: status.conflicts_at_child.unwrap_or_default(),
        waiting_history: history(QUEUE_WAITING_TO_CHILD),
        pending_push_history: history(QUEUE_PENDING_PUSH),
    }
}
