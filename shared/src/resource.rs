//! Resources: the JSON form of one entity's current state as the publisher serves it and the
//! subscriber applies it. Local integer ids never appear: every reference (declared, from the
//! profile, or hidden in a value) is replaced by the referenced entity's identity. This module
//! owns the wire types, the content hash, and the lookups between identities and local rows.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::capture::hex;
use crate::db::{DbResult, Row, Session, Value, quote_ident};
use crate::model::{Entity, Identity, Model, RowSource, split_join_key};

/// The publisher's path for resources, below its optional path prefix.
pub const RESOURCE_PATH: &str = "/ws/feedsync/resource";
/// The publisher's batch-fetch path, below its optional path prefix.
pub const BATCH_PATH: &str = "/ws/feedsync/resources";

/// One entity's current state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    pub table: String,
    pub category: String,
    pub key: String,
    /// Column name to value. A reference is `{"ref": {"table": ..., "key": ...}}` (key null
    /// when the referenced row does not exist), bytes are `{"hex": "..."}`, dates are text.
    pub columns: BTreeMap<String, serde_json::Value>,
    /// `sha256:<hex>` of the canonical JSON of `columns`.
    pub hash: String,
}

/// What remains of a deleted entity, served with 410 Gone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tombstone {
    pub table: String,
    pub category: String,
    pub key: String,
    pub deleted: bool,
    pub deleted_at: String,
}

/// Request body of batch fetch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchRequest {
    pub resources: Vec<String>,
}

/// One answer in a batch, in request order: exactly one of `resource` and `tombstone` is set
/// when `status` is 200 or 410; otherwise `error` says why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchItem {
    pub link: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub resource: Option<Resource>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tombstone: Option<Tombstone>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchResponse {
    pub resources: Vec<BatchItem>,
}

/// The canonical content hash: SHA-256 over the JSON of the columns with sorted keys.
pub fn content_hash(columns: &BTreeMap<String, serde_json::Value>) -> String {
    let canonical = serde_json::to_vec(columns).expect("json values serialize");
    format!("sha256:{}", hex(&Sha256::digest(&canonical)))
}

pub fn reference_json(table: &str, key: Option<&str>) -> serde_json::Value {
    serde_json::json!({ "ref": { "table": table, "key": key } })
}

/// A plain column value as JSON.
pub fn value_json(value: &Value) -> serde_json::Value {
    match value {
        Value::Null => serde_json::Value::Null,
        Value::Int(i) => (*i).into(),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, serde_json::Value::Number),
        Value::Text(s) => s.clone().into(),
        Value::Bytes(b) => serde_json::json!({ "hex": hex(b) }),
    }
}

/// Percent-encodes a key for a URL path segment (everything but unreserved characters).
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn decode_key(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let h = segment.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The path of an entity's resource below the publisher's path prefix.
pub fn resource_path(path_prefix: &str, table: &str, key: &str) -> String {
    format!("{path_prefix}{RESOURCE_PATH}/{}/{}", encode_key(table), encode_key(key))
}

/// Splits a resource link (absolute URL or path) into table and key.
pub fn parse_resource_link(link: &str, path_prefix: &str) -> Option<(String, String)> {
    let path = match link.find("://") {
        Some(i) => &link[link[i + 3..].find('/').map(|j| i + 3 + j)?..],
        None => link,
    };
    let path = path.split(['?', '#']).next()?;
    let rest = path.strip_prefix(path_prefix)?.strip_prefix(RESOURCE_PATH)?.strip_prefix('/')?;
    let (table, key) = rest.split_once('/')?;
    if key.contains('/') || table.is_empty() || key.is_empty() {
        return None;
    }
    Some((decode_key(table)?, decode_key(key)?))
}

/// Caches reference lookups within one request or batch: the same users, concepts and
/// locations are referenced by almost every row.
#[derive(Default)]
pub struct LookupCache {
    keys: HashMap<(String, String), Option<String>>,
}

/// Entries a cache holds before it is cleared, so a long batch cannot grow it without bound.
const LOOKUP_CACHE_ENTRIES_MAX: usize = 50_000;

/// The condition on `entity`'s own columns that selects the row with identity `key`, or
/// `None` when a row it depends on (a parent, a joined row) does not exist here.
pub async fn identity_condition(
    session: &mut Session,
    model: &Model,
    entity: &Entity,
    key: &str,
) -> DbResult<Option<(String, Vec<Value>)>> {
    let dialect = session.dialect();
    let equals = |column: &str| format!("{} = ?", quote_ident(dialect, column));
    Ok(match &entity.identity {
        Identity::Uuid { column } | Identity::TextKey { column } => Some((equals(column), vec![key.into()])),
        Identity::Parent { column, parent_table } => {
            let target_column = entity.reference(column).map(|r| r.target_column.as_str()).unwrap_or_default();
            match Box::pin(referenced_value(session, model, parent_table, target_column, key)).await? {
                Some(value) => Some((equals(column), vec![value])),
                None => None,
            }
        }
        Identity::Join { parts } => {
            let Some(pieces) = split_join_key(key, parts.len()) else { return Ok(None) };
            let mut conditions = Vec::new();
            let mut params = Vec::new();
            for (part, piece) in parts.iter().zip(pieces) {
                let value = match &part.target_table {
                    Some(target) => {
                        let target_column = entity.reference(&part.column).map(|r| r.target_column.as_str()).unwrap_or_default();
                        match Box::pin(referenced_value(session, model, target, target_column, piece)).await? {
                            Some(value) => value,
                            None => return Ok(None),
                        }
                    }
                    None => Value::Text(piece.to_owned()),
                };
                conditions.push(equals(&part.column));
                params.push(value);
            }
            Some((conditions.join(" AND "), params))
        }
    })
}

/// The value of `column` in the local row of `table` with identity `key`: what a reference to
/// that row holds here.
pub async fn referenced_value(session: &mut Session, model: &Model, table: &str, column: &str, key: &str) -> DbResult<Option<Value>> {
    let Some(entity) = model.entity(table) else { return Ok(None) };
    let Some((condition, params)) = identity_condition(session, model, entity, key).await? else { return Ok(None) };
    let dialect = session.dialect();
    let sql = format!("SELECT {} FROM {} WHERE {condition}", quote_ident(dialect, column), quote_ident(dialect, table));
    Ok(session.query(&sql, &params).await?.into_iter().next().and_then(|r| r.values.into_iter().next()))
}

/// Finds the primary key values of the local row with this identity (empty for a keyless
/// join row that exists).
pub async fn find_primary_key(session: &mut Session, model: &Model, table: &str, key: &str) -> DbResult<Option<Vec<Value>>> {
    let Some(entity) = model.entity(table) else { return Ok(None) };
    if entity.primary_key.is_empty() {
        return Ok(find_row(session, model, table, key).await?.map(|_| Vec::new()));
    }
    let Some((condition, params)) = identity_condition(session, model, entity, key).await? else { return Ok(None) };
    let dialect = session.dialect();
    let columns: Vec<String> = entity.primary_key.iter().map(|c| quote_ident(dialect, c)).collect();
    let sql = format!("SELECT {} FROM {} WHERE {condition}", columns.join(", "), quote_ident(dialect, table));
    Ok(session.query(&sql, &params).await?.into_iter().next().map(|r| r.values))
}

/// Reads the local row with this identity: one statement for uuid and text-key tables.
pub async fn find_row(session: &mut Session, model: &Model, table: &str, key: &str) -> DbResult<Option<Row>> {
    let Some(entity) = model.entity(table) else { return Ok(None) };
    let Some((condition, params)) = identity_condition(session, model, entity, key).await? else { return Ok(None) };
    let sql = format!("SELECT * FROM {} WHERE {condition}", quote_ident(session.dialect(), table));
    Ok(session.query(&sql, &params).await?.into_iter().next())
}

/// The identity of the row `value` references through `column` of `entity`.
pub async fn reference_key(
    session: &mut Session,
    model: &Model,
    entity: &Entity,
    column: &str,
    target: &str,
    value: &Value,
    cache: &mut LookupCache,
) -> DbResult<Option<String>> {
    if value.is_null() {
        return Ok(None);
    }
    let Some(reference) = entity.reference(column) else { return Ok(None) };
    let cache_key = (format!("{target}.{}", reference.target_column), value.to_text().unwrap_or_default());
    if let Some(hit) = cache.keys.get(&cache_key) {
        return Ok(hit.clone());
    }
    let dialect = session.dialect();
    let Some(key_sql) = model.key_sql(dialect, target, &RowSource::Alias("t")) else { return Ok(None) };
    let sql = format!(
        "SELECT {key_sql} AS entity_key FROM {} t WHERE t.{} = ?",
        quote_ident(dialect, target),
        quote_ident(dialect, &reference.target_column)
    );
    let key = session.query(&sql, std::slice::from_ref(value)).await?.first().and_then(|r| r.text("entity_key"));
    if cache.keys.len() >= LOOKUP_CACHE_ENTRIES_MAX {
        cache.keys.clear();
    }
    cache.keys.insert(cache_key, key.clone());
    Ok(key)
}

/// Renders a local row as a resource: references become identities, the local surrogate id
/// is left out, ids inside values are translated.
pub async fn render(
    session: &mut Session,
    model: &Model,
    entity: &Entity,
    key: &str,
    row: &Row,
    cache: &mut LookupCache,
) -> DbResult<Resource> {
    let local_id = entity.local_id_column();
    let mut columns = BTreeMap::new();
    for column in &entity.columns {
        if Some(column.name.as_str()) == local_id {
            continue;
        }
        let value = row.get(&column.name);
        let json = match entity.reference(&column.name) {
            Some(reference) if !value.is_null() => {
                let target = reference.target_table.clone();
                let referenced = reference_key(session, model, entity, &column.name, &target, value, cache).await?;
                reference_json(&target, referenced.as_deref())
            }
            _ => value_json(value),
        };
        columns.insert(column.name.clone(), json);
    }
    if let Some(vr) = &entity.value_reference
        && let Some(target) = value_reference_target(session, model, vr, row, cache).await?
        && let Some(id) = row.get(&vr.value_column).to_text().and_then(|t| t.trim().parse::<i64>().ok())
    {
        let dialect = session.dialect();
        if let Some(key_sql) = model.key_sql(dialect, &target, &RowSource::PrimaryKey(vec!["?".into()])) {
            let found = session.query(&format!("SELECT {key_sql} AS entity_key"), &[Value::Int(id)]).await?;
            let referenced = found.first().and_then(|r| r.text("entity_key"));
            columns.insert(vr.value_column.clone(), reference_json(&target, referenced.as_deref()));
        }
    }
    let hash = content_hash(&columns);
    Ok(Resource { table: entity.table.clone(), category: entity.category.clone(), key: key.to_owned(), columns, hash })
}

/// The table an attribute's value points into, from its type's format (a Java class name).
async fn value_reference_target(
    session: &mut Session,
    model: &Model,
    vr: &crate::model::ValueReference,
    row: &Row,
    cache: &mut LookupCache,
) -> DbResult<Option<String>> {
    let type_id = row.get(&vr.type_column);
    if type_id.is_null() {
        return Ok(None);
    }
    let cache_key = (format!("format:{}", vr.type_table), type_id.to_text().unwrap_or_default());
    let format = if let Some(hit) = cache.keys.get(&cache_key) {
        hit.clone()
    } else {
        let dialect = session.dialect();
        let Some(type_entity) = model.entity(&vr.type_table) else { return Ok(None) };
        let [type_pk] = type_entity.primary_key.as_slice() else { return Ok(None) };
        let sql = format!(
            "SELECT {} AS format FROM {} WHERE {} = ?",
            quote_ident(dialect, &vr.type_format_column),
            quote_ident(dialect, &vr.type_table),
            quote_ident(dialect, type_pk)
        );
        let format = session.query(&sql, std::slice::from_ref(type_id)).await?.first().and_then(|r| r.text("format"));
        cache.keys.insert(cache_key, format.clone());
        format
    };
    Ok(format.and_then(|f| model.class_tables.get(f.trim()).cloned()).filter(|t| model.entity(t).is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_urls() {
        for key in ["8d6c993e-c2cc-11de-8d13-0010c6dffd0f", "System Developer", "a+b", "ü/%?#"] {
            let path = resource_path("/openmrs", "role", key);
            assert_eq!(parse_resource_link(&path, "/openmrs"), Some(("role".into(), key.into())), "{path}");
            let url = format!("http://host:8080{path}?x=1");
            assert_eq!(parse_resource_link(&url, "/openmrs"), Some(("role".into(), key.into())));
        }
        assert_eq!(parse_resource_link("/ws/feedsync/resource/obs", ""), None);
        assert_eq!(parse_resource_link("/elsewhere/obs/x", ""), None);
        assert_eq!(decode_key("%zz"), None);
    }

    #[test]
    fn hash_is_canonical() {
        let mut a = BTreeMap::new();
        a.insert("b".to_string(), serde_json::json!(1));
        a.insert("a".to_string(), reference_json("users", Some("u")));
        let mut b = BTreeMap::new();
        b.insert("a".to_string(), reference_json("users", Some("u")));
        b.insert("b".to_string(), serde_json::json!(1));
        assert_eq!(content_hash(&a), content_hash(&b));
        b.insert("b".to_string(), serde_json::json!(2));
        assert_ne!(content_hash(&a), content_hash(&b));
        assert!(content_hash(&a).starts_with("sha256:"));
    }
}
