//! Lookups between identities and local rows: the SQL that finds a row by its global identity,
//! translates a local reference to the referenced entity's identity and back, and renders a row
//! as a [`Resource`]. A per-request [`LookupCache`] keeps repeated lookups (the same users,
//! concepts and locations on almost every row) from reaching the database twice.

use std::collections::{BTreeMap, HashMap};

use feedsync_db::{DbResult, Row, Session, Value, quote_ident};
use feedsync_core::model::{Entity, Identity, Model, RowSource, split_join_key};
use feedsync_wire::resource::{Resource, content_hash, reference_json};
use feedsync_wire::hex;

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
/// `resource` without its table's credential columns, for a reader not trusted with them
/// (a `feeds` token, an OpenMRS login, an anonymous category, a link in clear); its hash then
/// describes what is left. Pure.
pub fn without_credentials(model: &Model, mut resource: Resource) -> Resource {
    if let Some(entity) = model.entity(&resource.table)
        && entity.without_credentials(&mut resource.columns)
    {
        resource.hash = content_hash(&resource.columns);
    }
    resource
}

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
    vr: &feedsync_core::model::ValueReference,
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

