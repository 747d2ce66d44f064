//! The audit log, newest first, filtered by actor and action, in pages.

use std::collections::BTreeMap;

use serde_json::{Value as Json, json};

use feedsync_db::{Session, Value};
use feedsync_node::exchange::AUDIT_TABLE;

use crate::server::HttpError;

const AUDIT_LISTED_MAX: i64 = 500;

pub(super) async fn audit_page(session: &mut Session, query: &BTreeMap<String, String>) -> Result<Json, HttpError> {
    let limit = query.get("limit").and_then(|l| l.parse::<i64>().ok()).unwrap_or(100).clamp(1, AUDIT_LISTED_MAX);
    let mut conditions = Vec::new();
    let mut params: Vec<Value> = Vec::new();
    if let Some(before) = query.get("before").and_then(|b| b.parse::<i64>().ok()) {
        conditions.push("audit_id < ?");
        params.push(Value::Int(before));
    }
    if let Some(actor) = query.get("actor").filter(|a| !a.is_empty()) {
        conditions.push("actor = ?");
        params.push(actor.as_str().into());
    }
    if let Some(action) = query.get("action").filter(|a| !a.is_empty()) {
        conditions.push("action = ?");
        params.push(action.as_str().into());
    }
    let filter = if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
    let entries: Vec<Json> = session
        .query(&format!("SELECT audit_id, at, actor, action, patient_uuid, detail FROM {AUDIT_TABLE} {filter} ORDER BY audit_id DESC LIMIT {limit}"), &params)
        .await?
        .iter()
        .map(|r| json!({ "id": r.i64("audit_id"), "at": r.text("at"), "actor": r.text("actor"), "action": r.text("action"), "patient_uuid": r.text("patient_uuid"), "detail": r.text("detail") }))
        .collect();
    Ok(json!({ "entries": entries }))
}
