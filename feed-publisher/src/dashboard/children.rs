//! The overview (the parent and every child at a glance, with their problems) and a child's
//! page (its status, rounds, USB transfers, commands, held changes and conflicts).

use std::collections::BTreeMap;

use hyper::StatusCode;
use serde::Serialize;
use serde_json::{Value as Json, json};

use feedsync_core::alerts::{self, AlertsConfig, Problem};
use feedsync_db::Session;
use feedsync_node::config::Config;
use feedsync_node::clock::{age_s, parse_time};
use feedsync_node::exchange::{self, AUDIT_TABLE, COMMAND_TABLE, INBOX_TABLE};
use feedsync_node::parent::{self as network, Child};
use feedsync_node::status::{child_facts, child_statuses, gather_parent};
use feedsync_wire::status::ChildStatus;
use feedsync_wire::network::RoundSummary;

use super::conflicts::conflicts_for;
use super::held::held_page;
use super::rounds::{ROUNDS_PER_CHILD_MAX, RoundRecord, pending_since, recent_rounds, record_round};
use super::{Context, admin_error, context};
use crate::server::HttpError;
use crate::status;

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

/// The dashboard's row for a child: its status (the one per-child status the `status` command
/// and the alert checker read too), the round history for its trend, how long the oldest change
/// has waited each way, and its problems. Records the child's last round when a newer report
/// has arrived than the history holds.
async fn dashboard_child(session: &mut Session, child: &Child, status: ChildStatus, cx: &Context) -> Result<DashboardChild, HttpError> {
    if let Some(reported_at) = &status.reported_at
        && cx.recorded.get(&child.name).is_none_or(|last| last.as_str() < reported_at.as_str())
        && let Some((report, reported_at)) = network::child_report(session, &child.name).await.map_err(admin_error)?
    {
        let record = RoundRecord {
            round: report.round.clone(),
            pending_push: report.pending_push,
            pull_after: report.pull_after,
            held_at_child: report.held_total,
            open_conflicts_at_child: report.open_conflicts,
            held_at_parent: child.held_items,
            waiting_to_child: status.waiting_to_child,
            done_commands: report.done_commands.len(),
        };
        record_round(session, &child.name, &reported_at, &record).await?;
    }
    let waiting_to_child = status.waiting_to_child;
    let oldest_to_child_at = if waiting_to_child > 0 { network::oldest_waiting_for_child(session, child).await? } else { None };
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
    let pushes_since = if status.pending_push.is_some_and(|n| n > 0) { pending_since(&rounds) } else { None };
    let oldest_from_child_at = [oldest_held_here, pushes_since].into_iter().flatten().min_by_key(|t| parse_time(t));
    let oldest_to_child_age_s = age_s(&cx.now, oldest_to_child_at.as_deref());
    let oldest_from_child_age_s = age_s(&cx.now, oldest_from_child_at.as_deref());
    let mut queued_history: Vec<i64> = rounds.iter().rev().map(|r| r.record.queued()).collect();
    if let (Some(pending_push), Some(held_at_child)) = (status.pending_push, status.held_at_child) {
        // The queue now: what the parent holds and sends is current; the child's side is as of its report.
        let now = waiting_to_child + child.held_items + pending_push + held_at_child;
        if queued_history.last() != Some(&now) {
            queued_history.push(now);
        }
    }
    // The same facts `status` gives the alert rules, so both list the same problems.
    let facts = child_facts(&status, &cx.now, |queue| cx.histories.get(&status::history_name(&child.name, queue)).cloned().unwrap_or_default());
    let problems = alerts::child_problems(&facts, status.last_round_error.as_deref(), &cx.alerts);
    Ok(DashboardChild {
        name: status.name,
        revoked: status.revoked,
        revoked_at: status.revoked_at,
        created_at: status.created_at,
        all_patients: child.all_patients,
        categories: child.categories.clone(),
        last_contact: status.last_contact,
        last_contact_age_s: status.last_contact_age_s,
        reported_at: status.reported_at,
        waiting_to_child,
        oldest_to_child_at,
        oldest_to_child_age_s,
        pending_push: status.pending_push,
        oldest_from_child_at,
        oldest_from_child_age_s,
        oldest_waiting_age_s: oldest_to_child_age_s.max(oldest_from_child_age_s),
        held_at_parent: status.held_at_parent,
        held_at_child: status.held_at_child,
        conflicts_at_parent: status.conflicts_at_parent,
        conflicts_at_child: status.conflicts_at_child,
        catchment_patients: status.catchment_patients,
        last_round: status.last_round,
        queued_history,
        problems,
    })
}

/// The parent's own numbers and problems, from the same reading `status` makes.
async fn parent_status(session: &mut Session, config: &Config) -> Result<Json, HttpError> {
    let parent = gather_parent(session, config.feed.page_size).await?;
    let mut problems = alerts::parent_problems(parent.journal_backlog, parent.oldest_journal_age_s, parent.held, parent.open_conflicts);
    if config.server.insecure_http && config.server.tls().is_none() {
        problems.push(alerts::Problem {
            kind: "insecure_http",
            text: "serving plain http (--insecure-http): tokens and patient data cross the network in clear; give the server --tls-cert/--tls-key".into(),
        });
    }
    Ok(json!({
        "journal_backlog": parent.journal_backlog,
        "oldest_journal_at": parent.oldest_journal_at,
        "oldest_journal_age_s": parent.oldest_journal_age_s,
        "last_event_seq": parent.last_event_seq,
        "last_event_at": parent.last_event_at,
        "last_event_age_s": parent.last_event_age_s,
        "held": parent.held,
        "open_conflicts": parent.open_conflicts,
        "problems": problems,
    }))
}

pub(super) async fn overview(session: &mut Session, query: &BTreeMap<String, String>, config: &Config) -> Result<Json, HttpError> {
    let cx = context(session, query, &config.alerts).await?;
    let children = network::list_children(session).await.map_err(admin_error)?;
    let statuses = child_statuses(session, &cx.now, &children).await?;
    let mut rows = Vec::with_capacity(children.len());
    for (child, status) in children.iter().zip(statuses) {
        rows.push(dashboard_child(session, child, status, &cx).await?);
    }
    let parent = parent_status(session, config).await?;
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
    let own = child_statuses(session, &cx.now, std::slice::from_ref(&child)).await?.pop().expect("one status per child");
    let status = dashboard_child(session, &child, own, &cx).await?;
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
