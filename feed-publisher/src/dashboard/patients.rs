//! Patient search across the network: the candidates and the children whose catchment holds
//! each; every search is audited.

use std::collections::{BTreeMap, HashMap};

use hyper::StatusCode;
use serde_json::{Value as Json, json};

use feedsync_db::{Session, Value};
use feedsync_node::exchange::{self, CATCHMENT_TABLE};
use feedsync_node::search;

use super::AUDIT_ACTOR;
use crate::server::HttpError;

pub(super) async fn patients(session: &mut Session, query: &BTreeMap<String, String>) -> Result<Json, HttpError> {
    let text = query.get("q").map(String::as_str).unwrap_or_default();
    let parsed = search::parse_query(text)
        .map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, e, "search by identifier, or by name with birth date (YYYY-MM-DD) and gender"))?;
    let limit = query.get("limit").and_then(|l| l.parse::<usize>().ok()).unwrap_or(20).clamp(1, 50);
    let found = search::find_patients(session, &parsed, limit).await?;
    let shown: Vec<&str> = found.iter().map(|c| c.uuid.as_str()).collect();
    exchange::audit(session, AUDIT_ACTOR, "patient-find", None, &format!("query {text:?}: {} candidates shown: {}", found.len(), shown.join(", "))).await?;
    let mut held_by: HashMap<String, Vec<Json>> = HashMap::new();
    if !shown.is_empty() {
        let marks = vec!["?"; shown.len()].join(", ");
        let params: Vec<Value> = shown.iter().map(|u| Value::from(*u)).collect();
        for r in session
            .query(&format!("SELECT child, patient_uuid, reason, added_at FROM {CATCHMENT_TABLE} WHERE patient_uuid IN ({marks}) ORDER BY child"), &params)
            .await?
        {
            if let Some(uuid) = r.text("patient_uuid") {
                held_by.entry(uuid).or_default().push(json!({ "child": r.text("child"), "reason": r.text("reason"), "added_at": r.text("added_at") }));
            }
        }
    }
    let candidates: Vec<Json> = found
        .iter()
        .map(|c| {
            let mut v = serde_json::to_value(c).expect("candidates serialize");
            v["children"] = Json::Array(held_by.remove(&c.uuid).unwrap_or_default());
            v
        })
        .collect();
    Ok(json!({ "query": text, "candidates": candidates }))
}
