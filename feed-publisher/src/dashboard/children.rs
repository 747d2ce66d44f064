//! The overview (the parent and every child at a glance, with their problems) and a child's
//! page (its status, rounds, USB transfers, commands, held changes and conflicts).

use std::collections::BTreeMap;

use hyper::StatusCode;
use serde::Serialize;
use serde_json::{Value as Json, json};

use feedsync_core::alerts::{self, AlertsConfig, ChildFacts, Problem, QUEUE_PENDING_PUSH, QUEUE_WAITING_TO_CHILD, describe_age, plural};
use feedsync_db::Session;
use feedsync_node::capture::{EVENT_TABLE, JOURNAL_TABLE};
use feedsync_node::clock::{age_s, parse_time};
use feedsync_node::exchange::{self, AUDIT_TABLE, COMMAND_TABLE, CONFLICT_TABLE, INBOX_TABLE};
use feedsync_node::parent::{self as network, Child};
use feedsync_wire::network::RoundSummary;

use super::conflicts::conflicts_for;
use super::held::held_page;
use super::rounds::{ROUNDS_PER_CHILD_MAX, RoundRecord, pending_since, recent_rounds, record_round};
use super::{Context, admin_error, context, count};
use crate::server::HttpError;
use crate::status;

/// Journal rows older than this mean the sequencer is not keeping up.
const JOURNAL_STALL_S: i64 = 300;
/// Rounds read per child for trends (growth, how long pushes have been pending).
const TREND_ROUNDS_MAX: i64 = 20;
const USB_LISTED_MAX: i64 = 200;
const COMMANDS_LISTED_MAX: i64 = 100;

#[derive(Debug, Clone, Serialize)]
struct DashboardChild {
    name: String,
    revoked: bool,
    revoked_at: Option<String>,
    created_at: String,
    all_patients: bool,
    categories: Vec<String>,
    last_contact: Option<String>,
    last_contact_age_s: Option<i64>,
    reported_at: Option<String>,
    /// Parent → child: events the child has not received yet.
    waiting_to_child: i64,
    oldest_to_child_at: Option<String>,
    oldest_to_child_age_s: Option<i64>,
    /// Child → parent: the child's own events not acknowledged, as of its last report.
    pending_push: Option<i64>,
    /// Since when (at least) the child has had changes left to push, or the oldest change it
    /// pushed that is held here.
    oldest_from_child_at: Option<String>,
    oldest_from_child_age_s: Option<i64>,
    /// The older of the two directions.
    oldest_waiting_age_s: Option<i64>,
    held_at_parent: i64,
    held_at_child: Option<i64>,
    conflicts_at_parent: i64,
    conflicts_at_child: Option<i64>,
    catchment_patients: i64,
    last_round: Option<RoundSummary>,
    /// Queued totals of the recent rounds, oldest first.
    queued_history: Vec<i64>,
    problems: Vec<Problem>,
}

async fn child_status(session: &mut Session, child: &Child, cx: &Context) -> Result<DashboardChild, HttpError> {
    let report = network::child_report(session, &child.name).await.map_err(admin_error)?;
    let waiting_to_child = network::waiting_for_child(session, child).await?;
    let oldest_to_child_at = if waiting_to_child > 0 { network::oldest_waiting_for_child(session, child).await? } else { None };
    if let Some((report, reported_at)) = &report
        && cx.recorded.get(&child.name).is_none_or(|last| last.as_str() < reported_at.as_str())
    {
        let record = RoundRecord {
            round: report.round.clone(),
            pending_push: report.pending_push,
            pull_after: report.pull_after,
            held_at_child: report.held_total,
            open_conflicts_at_child: report.open_conflicts,
            held_at_parent: child.held_items,
            waiting_to_child,
            done_commands: report.done_commands.len(),
        };
        record_round(session, &child.name, reported_at, &record).await?;
    }
    let rounds = recent_rounds(session, &child.name, TREND_ROUNDS_MAX).await?;
    let oldest_held_here = if child.held_items > 0 {
        session
            .query(&format!("SELECT MIN(received_at) AS at FROM {INBOX_TABLE} WHERE peer = ?"), &[child.name.as_str().into()])
            .await?
            .first()
            .and_then(|r| r.text("at"))
    } else {
        None
    };
    let pushes_since = if report.as_ref().is_some_and(|(r, _)| r.pending_push > 0) { pending_since(&rounds) } else { None };
    let oldest_from_child_at = [oldest_held_here, pushes_since].into_iter().flatten().min_by_key(|t| parse_time(t));
    let last_contact_age_s = age_s(&cx.now, child.last_contact.as_deref());
    let oldest_to_child_age_s = age_s(&cx.now, oldest_to_child_at.as_deref());
    let oldest_from_child_age_s = age_s(&cx.now, oldest_from_child_at.as_deref());
    let conflicts_at_parent = cx.conflicts_by_peer.get(&child.name).copied().unwrap_or_default();
    let mut queued_history: Vec<i64> = rounds.iter().rev().map(|r| r.record.queued()).collect();
    if let Some((report, _)) = &report {
        // The queue now: what the parent holds and sends is current; the child's side is as of its report.
        let now = waiting_to_child + child.held_items + report.pending_push + report.held_total;
        if queued_history.last() != Some(&now) {
            queued_history.push(now);
        }
    }
    // The same facts `status` gives the alert rules, so both list the same problems.
    let history = |queue: &str| cx.histories.get(&status::history_name(&child.name, queue)).cloned().unwrap_or_default();
    let facts = ChildFacts {
        name: child.name.clone(),
        revoked: child.revoked_at.is_some(),
        last_contact_age_s,
        registered_age_s: age_s(&cx.now, Some(&child.created_at)),
        held_at_parent: child.held_items,
        held_at_child: report.as_ref().map_or(0, |(r, _)| r.held_total),
        conflicts_at_parent,
        conflicts_at_child: report.as_ref().map_or(0, |(r, _)| r.open_conflicts),
        waiting_history: history(QUEUE_WAITING_TO_CHILD),
        pending_push_history: history(QUEUE_PENDING_PUSH),
    };
    let round_error = report.as_ref().and_then(|(r, _)| r.round.error.clone());
    Ok(DashboardChild {
        name: child.name.clone(),
        revoked: child.revoked_at.is_some(),
        revoked_at: child.revoked_at.clone(),
        created_at: child.created_at.clone(),
        all_patients: child.all_patients,
        categories: child.categories.clone(),
        last_contact: child.last_contact.clone(),
        last_contact_age_s,
        reported_at: report.as_ref().map(|(_, at)| at.clone()),
        waiting_to_child,
        oldest_to_child_at,
        oldest_to_child_age_s,
        pending_push: report.as_ref().map(|(r, _)| r.pending_push),
        oldest_from_child_at,
        oldest_from_child_age_s,
        oldest_waiting_age_s: oldest_to_child_age_s.max(oldest_from_child_age_s),
        held_at_parent: child.held_items,
        held_at_child: report.as_ref().map(|(r, _)| r.held_total),
        conflicts_at_parent,
        conflicts_at_child: report.as_ref().map(|(r, _)| r.open_conflicts),
        catchment_patients: child.catchment_patients,
        last_round: report.as_ref().map(|(r, _)| r.round.clone()),
        queued_history,
        problems: alerts::child_problems(&facts, round_error.as_deref(), &cx.alerts),
    })
}

async fn parent_status(session: &mut Session, now: &str) -> Result<Json, HttpError> {
    let journal_backlog = count(session, &format!("SELECT COUNT(*) AS n FROM {JOURNAL_TABLE}")).await?;
    let oldest_journal_at = if journal_backlog > 0 {
        session.query(&format!("SELECT MIN(changed_at) AS at FROM {JOURNAL_TABLE}"), &[]).await?.first().and_then(|r| r.text("at"))
    } else {
        None
    };
    let last = session.query(&format!("SELECT event_seq, changed_at FROM {EVENT_TABLE} ORDER BY event_seq DESC LIMIT 1"), &[]).await?;
    let last_event_seq = last.first().and_then(|r| r.i64("event_seq")).unwrap_or_default();
    let last_event_at = last.first().and_then(|r| r.text("changed_at"));
    let held = count(session, &format!("SELECT COUNT(*) AS n FROM {INBOX_TABLE}")).await?;
    let open_conflicts = count(session, &format!("SELECT COUNT(*) AS n FROM {CONFLICT_TABLE} WHERE status = 'open'")).await?;
    let oldest_journal_age_s = age_s(now, oldest_journal_at.as_deref());
    let mut problems = Vec::new();
    if let Some(age) = oldest_journal_age_s.filter(|a| *a > JOURNAL_STALL_S) {
        problems.push(Problem {
            kind: "journal_behind",
            text: format!("{} captured but not published for {}: see the publisher's log", plural(journal_backlog, "change", "changes"), describe_age(age)),
        });
    }
    if held > 0 {
        problems.push(Problem { kind: "held", text: format!("{held} held (failed events) at the parent") });
    }
    if open_conflicts > 0 {
        problems.push(Problem { kind: "conflicts", text: format!("{} at the parent", plural(open_conflicts, "open conflict", "open conflicts")) });
    }
    Ok(json!({
        "journal_backlog": journal_backlog,
        "oldest_journal_at": oldest_journal_at,
        "oldest_journal_age_s": oldest_journal_age_s,
        "last_event_seq": last_event_seq,
        "last_event_at": last_event_at,
        "last_event_age_s": age_s(now, last_event_at.as_deref()),
        "held": held,
        "open_conflicts": open_conflicts,
        "problems": problems,
    }))
}

pub(super) async fn overview(session: &mut Session, query: &BTreeMap<String, String>, alerts: &AlertsConfig) -> Result<Json, HttpError> {
    let cx = context(session, query, alerts).await?;
    let children = network::list_children(session).await.map_err(admin_error)?;
    let mut rows = Vec::with_capacity(children.len());
    for child in &children {
        rows.push(child_status(session, child, &cx).await?);
    }
    let parent = parent_status(session, &cx.now).await?;
    let active = || rows.iter().filter(|r| !r.revoked);
    let totals = json!({
        "children": active().count(),
        "revoked": rows.len() - active().count(),
        "with_problems": active().filter(|r| !r.problems.is_empty()).count(),
        "waiting_to_children": active().map(|r| r.waiting_to_child).sum::<i64>(),
        "pending_push": active().filter_map(|r| r.pending_push).sum::<i64>(),
        "held_at_parent": rows.iter().map(|r| r.held_at_parent).sum::<i64>(),
        "held_at_children": active().filter_map(|r| r.held_at_child).sum::<i64>(),
        "conflicts_at_children": active().filter_map(|r| r.conflicts_at_child).sum::<i64>(),
        "catchment_patients": active().map(|r| r.catchment_patients).sum::<i64>(),
    });
    Ok(json!({ "now": cx.now, "silent_after_s": cx.alerts.child_silent_after_s, "parent": parent, "totals": totals, "children": rows }))
}

pub(super) async fn child_page(session: &mut Session, name: &str, query: &BTreeMap<String, String>, alerts: &AlertsConfig) -> Result<Json, HttpError> {
    let unknown = || HttpError::new(StatusCode::NOT_FOUND, format!("no child named {name:?}"), "the overview lists the registered children");
    if !exchange::valid_child_name(name) {
        return Err(unknown());
    }
    let cx = context(session, query, alerts).await?;
    let child = network::list_children(session).await.map_err(admin_error)?.into_iter().find(|c| c.name == name).ok_or_else(unknown)?;
    let status = child_status(session, &child, &cx).await?;
    let report = network::child_report(session, name).await.map_err(admin_error)?;
    let rounds = recent_rounds(session, name, ROUNDS_PER_CHILD_MAX).await?;
    let usb: Vec<Json> = session
        .query(
            &format!(
                "SELECT audit_id, at, action, detail FROM {AUDIT_TABLE} WHERE actor = ? AND action LIKE 'usb%' ORDER BY audit_id DESC LIMIT {USB_LISTED_MAX}"
            ),
            &[name.into()],
        )
        .await?
        .iter()
        .map(|r| json!({ "id": r.i64("audit_id"), "at": r.text("at"), "action": r.text("action"), "detail": r.text("detail") }))
        .collect();
    let commands: Vec<Json> = session
        .query(
            &format!("SELECT command_id, action, actor, created_at, done_at, ok, message FROM {COMMAND_TABLE} WHERE child = ? ORDER BY command_id DESC LIMIT {COMMANDS_LISTED_MAX}"),
            &[name.into()],
        )
        .await?
        .iter()
        .map(|r| {
            json!({
                "id": r.i64("command_id"),
                "action": r.text("action").and_then(|a| serde_json::from_str::<Json>(&a).ok()),
                "actor": r.text("actor"),
                "created_at": r.text("created_at"),
                "done_at": r.text("done_at"),
                "ok": r.i64("ok").map(|v| v != 0),
                "message": r.text("message"),
            })
        })
        .collect();
    let mut registration = serde_json::to_value(&child).expect("children serialize");
    registration.as_object_mut().expect("an object").remove("held_items");
    Ok(json!({
        "now": cx.now,
        "status": status,
        "registration": registration,
        "report": report.as_ref().map(|(r, _)| r),
        "reported_at": report.as_ref().map(|(_, at)| at),
        "rounds": rounds,
        "usb": usb,
        "commands": commands,
        "held": held_page(session, Some(name)).await?,
        "conflicts": conflicts_for(session, Some(name), false).await?,
    }))
}
