//! Held changes, here (pushed by children) and at the children (from their reports): what
//! waits behind each, retry and skip here, commands queued for a child.

use std::collections::HashMap;

use hyper::StatusCode;
use serde::Serialize;
use serde_json::{Value as Json, json};

use feedsync_core::merge::Side;
use feedsync_db::{Session, Value};
use feedsync_node::capture;
use feedsync_node::clock::{age_s, db_now};
use feedsync_node::exchange::{self, COMMAND_TABLE, INBOX_TABLE, PEER_PARENT, Receiver};
use feedsync_node::lookup::LookupCache;
use feedsync_node::parent::{self as network, AdminError};
use feedsync_wire::network::{CommandAction, HeldItem};

use super::{AUDIT_ACTOR, admin_error, required_reason};
use crate::server::{App, HttpError};

/// Items listed per list; totals are always given.
const HELD_LISTED_MAX: i64 = 500;

/// Another held change that waits on this one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Behind {
    pub id: i64,
    pub table: String,
    pub key: String,
    /// `same_entity` (a later version of the same row) or `needs_this_row` (it references it).
    pub why: &'static str,
}

/// For each held change, the held changes waiting behind it: later ones of the same entity
/// from the same peer (they apply in order), and those whose reason names its row as
/// missing. Pure; `held` is in id order.
pub fn waits_behind(held: &[HeldItem]) -> HashMap<i64, Vec<Behind>> {
    let mut behind: HashMap<i64, Vec<Behind>> = HashMap::new();
    for (i, h) in held.iter().enumerate() {
        let row = format!("{}/{}", h.item.table, h.item.key);
        let list = behind.entry(h.id).or_default();
        for later in &held[i + 1..] {
            if later.peer == h.peer && later.item.table == h.item.table && later.item.key == h.item.key {
                list.push(Behind { id: later.id, table: later.item.table.clone(), key: later.item.key.clone(), why: "same_entity" });
            }
        }
        for other in held {
            if other.id != h.id && (other.item.table != h.item.table || other.item.key != h.item.key) && names_row(&other.reason, &row) {
                list.push(Behind { id: other.id, table: other.item.table.clone(), key: other.item.key.clone(), why: "needs_this_row" });
            }
        }
    }
    behind
}

/// Whether a reason names `table/key` as a whole word (not as the start of a longer key).
fn names_row(reason: &str, row: &str) -> bool {
    reason.match_indices(row).any(|(i, _)| {
        let before = reason[..i].chars().next_back();
        let after = reason[i + row.len()..].chars().next();
        before.is_none_or(|c| !c.is_alphanumeric() && c != '_' && c != '-') && after.is_none_or(|c| !c.is_alphanumeric() && c != '-' && c != '_')
    })
}

#[derive(Debug, Clone, Serialize)]
struct HeldView {
    id: i64,
    /// Where it is held: `parent` (this server) or the child's name.
    held_at: String,
    /// Where it came from: the child that pushed it, or `parent`.
    from: String,
    table: String,
    key: String,
    category: String,
    deleted: bool,
    reason: String,
    attempts: i64,
    received_at: String,
    /// Only for changes held here: the child's clock is not this one.
    age_s: Option<i64>,
    behind: Vec<Behind>,
    columns: Option<feedsync_core::merge::Fields>,
    /// An operator command for it waits for the child's next round.
    queued_command: Option<i64>,
}

fn held_views(items: &[HeldItem], held_at: &str, now: Option<&str>, queued: &HashMap<(String, &'static str, i64), i64>) -> Vec<HeldView> {
    let behind = waits_behind(items);
    items
        .iter()
        .map(|h| HeldView {
            id: h.id,
            held_at: held_at.to_owned(),
            from: if held_at == "parent" { h.peer.clone() } else { PEER_PARENT.to_owned() },
            table: h.item.table.clone(),
            key: h.item.key.clone(),
            category: h.item.category.clone(),
            deleted: h.item.resource.is_none(),
            reason: h.reason.clone(),
            attempts: h.attempts,
            received_at: h.received_at.clone(),
            age_s: now.and_then(|now| age_s(now, Some(&h.received_at))),
            behind: behind.get(&h.id).cloned().unwrap_or_default(),
            columns: h.item.resource.as_ref().map(|r| r.columns.clone()),
            queued_command: queued.get(&(held_at.to_owned(), "held", h.id)).copied(),
        })
        .collect()
}

/// Commands not carried out yet, by (child, `held`|`conflict`, id).
pub(super) async fn queued_commands(session: &mut Session) -> Result<HashMap<(String, &'static str, i64), i64>, HttpError> {
    let rows =
        session.query(&format!("SELECT command_id, child, action FROM {COMMAND_TABLE} WHERE done_at IS NULL ORDER BY command_id LIMIT 10000"), &[]).await?;
    let mut queued = HashMap::new();
    for r in &rows {
        let (Some(id), Some(child), Some(action)) =
            (r.i64("command_id"), r.text("child"), r.text("action").and_then(|a| serde_json::from_str::<CommandAction>(&a).ok()))
        else {
            continue;
        };
        let key = match action {
            CommandAction::RetryHeld { held_id } | CommandAction::SkipHeld { held_id, .. } => (child, "held", held_id),
            CommandAction::ResolveConflict { conflict_id, .. } => (child, "conflict", conflict_id),
        };
        queued.insert(key, id);
    }
    Ok(queued)
}

/// Held changes here (pushed by children) and at the children (from their latest reports);
/// only `child`'s when given.
pub(super) async fn held_page(session: &mut Session, child: Option<&str>) -> Result<Json, HttpError> {
    let now = db_now(session).await?;
    let queued = queued_commands(session).await?;
    let (filter, params): (&str, Vec<Value>) = match child {
        Some(c) => ("WHERE peer = ?", vec![c.into()]),
        None => ("", vec![]),
    };
    let total_here =
        session.query(&format!("SELECT COUNT(*) AS n FROM {INBOX_TABLE} {filter}"), &params).await?.first().and_then(|r| r.i64("n")).unwrap_or_default();
    let here = exchange::held_items(session, child, HELD_LISTED_MAX).await?;
    let mut children = Vec::new();
    for c in network::list_children(session).await.map_err(admin_error)? {
        if child.is_some_and(|name| name != c.name) {
            continue;
        }
        let Some((report, reported_at)) = network::child_report(session, &c.name).await.map_err(admin_error)? else { continue };
        if report.held.is_empty() && child.is_none() {
            continue;
        }
        children.push(json!({
            "child": c.name,
            "reported_at": reported_at,
            "held_total": report.held_total,
            "items": held_views(&report.held, &c.name, None, &queued),
        }));
    }
    Ok(json!({
        "now": now,
        "parent": { "held_total": total_here, "items": held_views(&here, "parent", Some(&now), &queued) },
        "children": children,
    }))
}

/// Retries the change held here (and the rest from the same child, as its next push would).
pub(super) async fn retry_held_here(app: &App, session: &mut Session, id: i64) -> Result<Json, HttpError> {
    let held = find_held(session, id).await?;
    if held.peer == PEER_PARENT {
        return Err(HttpError::new(
            StatusCode::CONFLICT,
            format!("held #{id} came from this server's own parent"),
            "it is retried at this server's next round towards its parent (`feed-subscriber run --parent`)",
        ));
    }
    let peer = held.peer.clone();
    // The child's catchment still limits what it wrote: an operator's retry is not a grant.
    let limited = network::child_by_name(session, &peer).await.map_err(admin_error)?.is_none_or(|(child, _)| !child.all_patients);
    let receiver = Receiver { model: &app.model, from: Side::Child, peer: &peer, policy: &app.config.network, catchment_of: limited.then_some(peer.as_str()) };
    session.read_committed().await?;
    session.begin().await?;
    let outcome = async {
        // Written as the child's change, as if its push had applied it.
        capture::set_origin(session, &exchange::child_origin(&peer)).await?;
        let applied = exchange::retry_held(session, &receiver, &peer, &mut LookupCache::default(), false)
            .await
            .map_err(|e| HttpError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), "the database is unavailable or busy; retry later"))?;
        capture::clear_origin(session).await?;
        Ok::<usize, HttpError>(applied)
    }
    .await;
    let applied = match outcome {
        Ok(n) => {
            session.commit().await?;
            n
        }
        Err(e) => {
            let _ = session.rollback().await;
            return Err(e);
        }
    };
    let still = exchange::held_items(session, Some(&peer), 100_000).await?.into_iter().find(|h| h.id == id);
    let outcome_text = match &still {
        Some(h) => format!("held #{id} is still held: {}", h.reason),
        None => format!("held #{id} applied"),
    };
    exchange::audit(
        session,
        AUDIT_ACTOR,
        "retry-held",
        None,
        &format!("{outcome_text} (from {peer}, {} {}); {applied} held changes applied", held.item.table, held.item.key),
    )
    .await?;
    Ok(
        json!({ "id": id, "applied": still.is_none(), "applied_total": applied, "still_held": still.is_some(), "reason": still.map(|h| h.reason), "message": outcome_text }),
    )
}

async fn find_held(session: &mut Session, id: i64) -> Result<HeldItem, HttpError> {
    let peer = session.query(&format!("SELECT peer FROM {INBOX_TABLE} WHERE inbox_id = ?"), &[Value::Int(id)]).await?.first().and_then(|r| r.text("peer"));
    let not_found = || {
        HttpError::new(StatusCode::NOT_FOUND, format!("no held change #{id} here"), "it may have applied or been skipped already; GET held lists what is held")
    };
    let peer = peer.ok_or_else(not_found)?;
    exchange::held_items(session, Some(&peer), 100_000).await?.into_iter().find(|h| h.id == id).ok_or_else(not_found)
}

pub(super) async fn skip_held_here(session: &mut Session, id: i64, body: &Json) -> Result<Json, HttpError> {
    let reason = required_reason(body)?;
    if !network::skip_held(session, id, &reason, AUDIT_ACTOR).await.map_err(admin_error)? {
        return Err(HttpError::new(
            StatusCode::NOT_FOUND,
            format!("no held change #{id} here"),
            "it may have applied or been skipped already; GET held lists what is held",
        ));
    }
    Ok(json!({ "id": id, "skipped": true, "reason": reason, "message": format!("held #{id} skipped; the reason is kept in the audit log") }))
}

pub(super) async fn queue(session: &mut Session, child: &str, action: &CommandAction) -> Result<Json, HttpError> {
    if !exchange::valid_child_name(child) {
        return Err(admin_error(AdminError::Unknown(child.into())));
    }
    let id = network::queue_command(session, child, action, AUDIT_ACTOR).await.map_err(admin_error)?;
    Ok(
        json!({ "command": id, "child": child, "action": action, "queued": true, "message": format!("queued as command #{id}: {child} carries it out at its next round and reports the result") }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use feedsync_wire::network::Item;

    fn held(id: i64, peer: &str, table: &str, key: &str, reason: &str) -> HeldItem {
        HeldItem {
            id,
            peer: peer.into(),
            item: Item { seq: id, table: table.into(), key: key.into(), category: table.into(), resource: None, base: None },
            reason: reason.into(),
            attempts: 1,
            received_at: String::new(),
        }
    }

    #[test]
    fn what_waits_behind_a_held_change() {
        let items = [
            held(1, "north", "person", "p-1", "value too long"),
            held(2, "north", "person_name", "n-1", "waiting for rows not here yet: person/p-1"),
            held(3, "north", "person", "p-1", "value too long"),
            held(4, "south", "person", "p-1", "waiting for rows not here yet: person/p-10"),
            held(5, "north", "obs", "o-1", "waiting for rows not here yet: person_name/n-1, encounter/e-1"),
        ];
        let behind = waits_behind(&items);
        let ids = |id: i64| behind[&id].iter().map(|b| (b.id, b.why)).collect::<Vec<_>>();
        assert_eq!(ids(1), [(3, "same_entity"), (2, "needs_this_row")]);
        assert_eq!(ids(2), [(5, "needs_this_row")]);
        assert_eq!(ids(3), [(2, "needs_this_row")]);
        // South's copy of p-1 would also let the name apply; it is not behind north's p-1, and
        // p-10 is not p-1.
        assert_eq!(ids(4), [(2, "needs_this_row")]);
        assert!(ids(5).is_empty());
    }

    #[test]
    fn reasons_name_rows_as_whole_words() {
        assert!(names_row("waiting for rows not here yet: person/p-1", "person/p-1"));
        assert!(names_row("waiting for rows not here yet: person/p-1, obs/o-2", "person/p-1"));
        assert!(!names_row("waiting for rows not here yet: person/p-10", "person/p-1"));
        assert!(!names_row("waiting for rows not here yet: xperson/p-1", "person/p-1"));
    }

}
