//! Conflicts, here and at the children, side by side field by field, and their resolution
//! here.

use std::collections::{BTreeSet, HashMap};

use hyper::StatusCode;
use serde::Serialize;
use serde_json::{Value as Json, json};

use feedsync_db::Session;
use feedsync_node::exchange::{self, CONFLICT_TABLE, ResolveError, Take};
use feedsync_node::parent as network;
use feedsync_wire::network::Conflict;

use super::held::queued_commands;
use super::{AUDIT_ACTOR, admin_error, count, take_from};
use crate::server::{App, HttpError};

const CONFLICTS_LISTED_MAX: i64 = 200;

/// One field of a conflict, both sides side by side.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldRow {
    pub field: String,
    pub mine: Option<Json>,
    pub theirs: Option<Json>,
    pub base: Option<Json>,
    pub result: Option<Json>,
    /// Mine and theirs differ here.
    pub differs: bool,
    /// Both sides changed it (the merge had to pick one).
    pub conflicted: bool,
}

/// Every field of either version, those both sides changed first, then the other
/// differences, then the rest. Pure.
pub fn field_rows(c: &Conflict) -> Vec<FieldRow> {
    let (mine, theirs) = c.mine_theirs();
    let names: BTreeSet<&String> = mine.iter().chain(theirs.iter()).flat_map(|f| f.keys()).collect();
    let get = |fields: &Option<feedsync_core::merge::Fields>, name: &str| fields.as_ref().and_then(|f| f.get(name).cloned());
    let mut rows: Vec<FieldRow> = names
        .into_iter()
        .map(|name| {
            let (m, t) = (get(mine, name), get(theirs, name));
            FieldRow {
                field: name.clone(),
                differs: m != t,
                conflicted: c.fields.iter().any(|f| f == name),
                base: get(&c.base, name),
                result: get(&c.result, name),
                mine: m,
                theirs: t,
            }
        })
        .collect();
    rows.sort_by_key(|r| (!r.conflicted, !r.differs, r.field.clone()));
    rows
}

#[derive(Debug, Clone, Serialize)]
struct ConflictView {
    id: i64,
    /// `parent` (this server) or the child's name: where it was found and is resolved.
    found_at: String,
    table: String,
    key: String,
    category: String,
    peer: String,
    detected_at: String,
    winner: String,
    entity_conflict: bool,
    fields: Vec<String>,
    status: String,
    resolution: Option<String>,
    /// Whose version `mine` is (`parent` or the child's name), and `theirs`.
    mine_is: String,
    theirs_is: String,
    mine_present: bool,
    theirs_present: bool,
    rows: Vec<FieldRow>,
    queued_command: Option<i64>,
}

fn conflict_view(c: &Conflict, found_at: &str, queued: &HashMap<(String, &'static str, i64), i64>) -> ConflictView {
    let (mine, theirs) = c.mine_theirs();
    let (mine_is, theirs_is) = if c.site_side == "parent" { ("parent".to_owned(), c.peer.clone()) } else { (found_at.to_owned(), "parent".to_owned()) };
    ConflictView {
        id: c.id,
        found_at: found_at.to_owned(),
        table: c.table.clone(),
        key: c.key.clone(),
        category: c.category.clone(),
        peer: c.peer.clone(),
        detected_at: c.detected_at.clone(),
        winner: c.winner.clone(),
        entity_conflict: c.entity_conflict,
        fields: c.fields.clone(),
        status: c.status.clone(),
        resolution: c.resolution.clone(),
        mine_is,
        theirs_is,
        mine_present: mine.is_some(),
        theirs_present: theirs.is_some(),
        rows: field_rows(c),
        queued_command: if found_at == "parent" { None } else { queued.get(&(found_at.to_owned(), "conflict", c.id)).copied() },
    }
}

pub(super) async fn conflicts_for(session: &mut Session, child: Option<&str>, all: bool) -> Result<Json, HttpError> {
    let queued = queued_commands(session).await?;
    let here: Vec<ConflictView> = exchange::list_conflicts(session, all, CONFLICTS_LISTED_MAX)
        .await?
        .iter()
        .filter(|c| child.is_none_or(|name| c.site_side == "parent" && c.peer == name))
        .map(|c| conflict_view(c, "parent", &queued))
        .collect();
    let open_here = match child {
        Some(name) => session
            .query(&format!("SELECT COUNT(*) AS n FROM {CONFLICT_TABLE} WHERE status = 'open' AND site_side = 'parent' AND peer = ?"), &[name.into()])
            .await?
            .first()
            .and_then(|r| r.i64("n"))
            .unwrap_or_default(),
        None => count(session, &format!("SELECT COUNT(*) AS n FROM {CONFLICT_TABLE} WHERE status = 'open'")).await?,
    };
    let mut children = Vec::new();
    for c in network::list_children(session).await.map_err(admin_error)? {
        if child.is_some_and(|name| name != c.name) {
            continue;
        }
        let Some((report, reported_at)) = network::child_report(session, &c.name).await.map_err(admin_error)? else { continue };
        if report.conflicts.is_empty() && child.is_none() {
            continue;
        }
        let views: Vec<ConflictView> = report.conflicts.iter().map(|k| conflict_view(k, &c.name, &queued)).collect();
        children.push(json!({ "child": c.name, "reported_at": reported_at, "open_conflicts": report.open_conflicts, "items": views }));
    }
    Ok(json!({ "parent": { "open_conflicts": open_here, "items": here }, "children": children }))
}

pub(super) async fn conflicts_page(session: &mut Session, all: bool) -> Result<Json, HttpError> {
    conflicts_for(session, None, all).await
}

pub(super) async fn resolve_here(app: &App, session: &mut Session, id: i64, body: &Json) -> Result<Json, HttpError> {
    let (take_text, fields) = take_from(body)?;
    let take = Take::parse(&take_text, &fields).expect("checked by take_from");
    let record = exchange::conflict(session, id).await?;
    let result = exchange::resolve_conflict(session, &app.model, id, &take).await.map_err(|e| match e {
        ResolveError::NotFound(_) => HttpError::new(StatusCode::NOT_FOUND, e.to_string(), "GET conflicts lists the open ones"),
        ResolveError::AlreadyResolved(..) => {
            HttpError::new(StatusCode::CONFLICT, e.to_string(), "nothing to do; GET conflicts?all=1 shows how it was resolved")
        }
        ResolveError::UnknownField { .. } => HttpError::new(StatusCode::BAD_REQUEST, e.to_string(), "choose among the fields the conflict shows"),
        ResolveError::Apply { .. } => {
            HttpError::new(StatusCode::CONFLICT, e.to_string(), "the chosen version cannot be written now; try the other version or field by field")
        }
        ResolveError::Database(e) => e.into(),
    })?;
    let what = match &take {
        Take::Mine => "took mine (the parent's version)".to_owned(),
        Take::Theirs => "took theirs (the child's version)".to_owned(),
        Take::Fields(_) => format!("took fields {}", fields.join(", ")),
    };
    let entity = record.as_ref().map(|c| format!("{} {} with child {}", c.table, c.key, c.peer)).unwrap_or_default();
    exchange::audit(session, AUDIT_ACTOR, "conflict-resolve", None, &format!("conflict #{id} ({entity}): {what}")).await?;
    Ok(
        json!({ "id": id, "resolved": true, "take": take_text, "fields": fields, "result": result.map(|r| r.columns), "message": format!("conflict #{id} resolved: {what}; the children get it at their next round") }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_fields_side_by_side() {
        let fields = |pairs: &[(&str, Json)]| Some(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect::<feedsync_core::merge::Fields>());
        let conflict = Conflict {
            id: 7,
            table: "person_name".into(),
            key: "n-1".into(),
            category: "person_name".into(),
            site_side: "child".into(),
            peer: "parent".into(),
            detected_at: String::new(),
            winner: "parent".into(),
            entity_conflict: false,
            fields: vec!["given_name".into()],
            base: fields(&[("given_name", json!("Mary")), ("degree", json!(null))]),
            parent_version: fields(&[("given_name", json!("Maria")), ("degree", json!(null)), ("voided", json!(0))]),
            child_version: fields(&[("given_name", json!("Marie")), ("degree", json!("BSc")), ("voided", json!(0))]),
            result: fields(&[("given_name", json!("Maria")), ("degree", json!("BSc")), ("voided", json!(0))]),
            status: "open".into(),
            resolution: None,
        };
        let rows = field_rows(&conflict);
        let summary: Vec<(&str, bool, bool)> = rows.iter().map(|r| (r.field.as_str(), r.conflicted, r.differs)).collect();
        assert_eq!(summary, [("given_name", true, true), ("degree", false, true), ("voided", false, false)]);
        // Found at a child, `mine` is the child's version.
        assert_eq!(rows[0].mine, Some(json!("Marie")));
        assert_eq!(rows[0].theirs, Some(json!("Maria")));
        let view = conflict_view(&conflict, "north", &HashMap::new());
        assert_eq!((view.mine_is.as_str(), view.theirs_is.as_str()), ("north", "parent"));
    }
}
