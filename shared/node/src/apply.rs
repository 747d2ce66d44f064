//! Applying one change from a feed to a target OpenMRS database, by identity. A resource names
//! its row by global identity and every reference by the identity of the row it points at;
//! here each reference becomes the local value the target's referencing column must hold, the
//! local row is found by identity, and it is inserted or updated; a tombstone deletes it.
//!
//! The decisions are pure functions, tested over generated inputs: [`plan_columns`] (resource →
//! what each target column gets and which rows must be looked up), [`resolve_columns`] (lookups
//! done → row values, or the references still missing), [`plan_write`] (the current local row →
//! insert, update of exactly the differing columns, or nothing). [`apply_resource`] and
//! [`apply_tombstone`] only do the IO between them.
//!
//! Not here: transactions, savepoints and the origin marker. The caller runs each apply inside a
//! SAVEPOINT after `capture::set_origin`, so a refused statement undoes only its own change and
//! the applied writes are not echoed as local ones. Nor retry queues: a change whose referenced
//! rows are not here yet comes back as [`Applied::Waiting`] having written nothing.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use feedsync_db::{DbError, Dialect, Row, Session, Value, quote_ident};
use feedsync_core::model::{Entity, Model};
use crate::lookup::{find_row, identity_condition, referenced_value};
use feedsync_wire::resource::{Resource, Tombstone};

/// What applying one change did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// Written (or found already written); warnings say what the target could not hold.
    Done { change: Change, warnings: Vec<ApplyWarning> },
    /// Rows the change references are not here yet, as (table, identity key); nothing was
    /// written. Apply it again when they arrive.
    Waiting { missing: Vec<(String, String)> },
}

impl Applied {
    /// Whether the database changed (false for waiting, unchanged and skipped).
    pub fn changed(&self) -> bool {
        matches!(self, Applied::Done { change: Change::Inserted | Change::Updated { .. } | Change::Deleted, .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Inserted,
    /// The columns whose values changed; no other column was written.
    Updated { columns: Vec<String> },
    Deleted,
    /// The database already held exactly this (for a tombstone: no such row).
    Unchanged,
    /// The target publishes no such table (an older OpenMRS version, or excluded by the
    /// profile); nothing was written and a warning says why.
    Skipped,
}

/// What the target could not hold exactly as the source had it. Not failures: the change was
/// applied, and these are for the operator's log.
#[derive(Debug, Clone, PartialEq)]
pub enum ApplyWarning {
    /// The target table lacks the column (an older OpenMRS version): its value was not applied.
    ColumnDropped { column: String },
    /// The referenced row did not exist at the source: the nullable column was set to NULL.
    DanglingReference { column: String, referenced_table: String },
    /// The target does not know the column as a reference (a module's foreign key declared only
    /// at the source): it was given the referenced row's local primary key, which is what a
    /// foreign key names in every OpenMRS table.
    UnknownReference { column: String, referenced_table: String },
    /// The column is the target's own surrogate key, which the target numbers itself.
    LocalIdIgnored { column: String },
    /// The target publishes no table of this name.
    TableNotHere { reason: String },
}

impl fmt::Display for ApplyWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApplyWarning::ColumnDropped { column } => write!(f, "column {column} does not exist here; its value was not applied"),
            ApplyWarning::DanglingReference { column, referenced_table } => {
                write!(f, "column {column} referenced a {referenced_table} row missing at the source; applied as NULL")
            }
            ApplyWarning::UnknownReference { column, referenced_table } => write!(
                f,
                "column {column} is not a known reference here; it was given the local primary key of the {referenced_table} row"
            ),
            ApplyWarning::LocalIdIgnored { column } => write!(f, "column {column} is this server's own id; not applied"),
            ApplyWarning::TableNotHere { reason } => write!(f, "not applied: {reason}"),
        }
    }
}

/// Why the database refused a statement, read from its message, so a report can group
/// failures and an operator knows what to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A unique key already holds the value under another identity.
    UniqueClash,
    ValueTooLong,
    /// A NOT NULL column got NULL, or was left out and has no default.
    NotNull,
    ForeignKey,
    /// A value the column's type does not accept (bad date, out of range, not a number).
    InvalidValue,
    /// Deadlock or lock wait timeout: retryable. On MySQL a deadlock rolls back the whole
    /// transaction, savepoints included, so the caller retries the transaction, not the change.
    LockConflict,
    Other,
}

/// A change that could not be applied. Each says which change (table and identity key) and,
/// where known, which column; database refusals carry the database's own message unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{table} {key}: the database refused the change{}: {message} [SQL: {sql}]", column_note(.column))]
    Refused { table: String, key: String, column: Option<String>, refusal: Refusal, message: String, sql: String },
    /// The database could not be reached or the connection dropped: the change may or may
    /// not have been written; applying it again is safe because apply is idempotent.
    #[error("{table} {key}: database unavailable, retry later: {message}")]
    Unavailable { table: String, key: String, message: String },
    /// The resource itself cannot be applied here, whatever the database holds: a malformed
    /// value, a dangling reference in a NOT NULL column, a reference to a table not published
    /// here. Retrying does not help; the source must change.
    #[error("{table} {key}: column {column} cannot be applied: {reason}")]
    Untranslatable { table: String, key: String, column: String, reason: String },
}

fn column_note(column: &Option<String>) -> String {
    column.as_ref().map(|c| format!(" (column {c})")).unwrap_or_default()
}

impl ApplyError {
    /// The one retry decision: retry later, or record the failure and move on.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ApplyError::Unavailable { .. } | ApplyError::Refused { refusal: Refusal::LockConflict, .. })
    }

    /// The (table, key) of the change that failed.
    pub fn change(&self) -> (&str, &str) {
        match self {
            ApplyError::Refused { table, key, .. }
            | ApplyError::Unavailable { table, key, .. }
            | ApplyError::Untranslatable { table, key, .. } => (table, key),
        }
    }

    fn from_db(entity: Option<&Entity>, table: &str, key: &str, error: DbError) -> ApplyError {
        match error {
            DbError::Statement { sql, message } => {
                let refusal = classify_refusal(&message);
                let column = refused_column(&message).map(|named| {
                    // MySQL names a unique clash by its index; the index is often named after
                    // its column, and then the column is the more useful name.
                    entity
                        .and_then(|e| e.columns.iter().find(|c| c.name.eq_ignore_ascii_case(&named)))
                        .map_or(named, |c| c.name.clone())
                });
                let column = match (refusal, &column, entity) {
                    (Refusal::UniqueClash, Some(named), Some(e)) if !e.columns.iter().any(|c| &c.name == named) => None,
                    _ => column,
                };
                ApplyError::Refused { table: table.into(), key: key.into(), column, refusal, message, sql }
            }
            DbError::Unavailable { message, .. } => ApplyError::Unavailable { table: table.into(), key: key.into(), message },
            DbError::BadUrl { url, reason } => {
                ApplyError::Unavailable { table: table.into(), key: key.into(), message: format!("bad database URL {url}: {reason}") }
            }
        }
    }
}

/// Classifies a refusal from the message `db.rs` gives: MySQL's ends with `(MySQL error N)`,
/// SQLite's is its own text.
pub fn classify_refusal(message: &str) -> Refusal {
    let code = message
        .rsplit_once("(MySQL error ")
        .and_then(|(_, rest)| rest.trim_end_matches(')').trim().parse::<u32>().ok());
    match code {
        Some(1062 | 1586 | 1022) => return Refusal::UniqueClash,
        Some(1406) => return Refusal::ValueTooLong,
        Some(1048 | 1364) => return Refusal::NotNull,
        Some(1451 | 1452 | 1216 | 1217) => return Refusal::ForeignKey,
        Some(1366 | 1292 | 1264 | 1265 | 1367) => return Refusal::InvalidValue,
        Some(1213 | 1205) => return Refusal::LockConflict,
        Some(_) => return Refusal::Other,
        None => {}
    }
    let lower = message.to_ascii_lowercase();
    if lower.contains("unique constraint failed") {
        Refusal::UniqueClash
    } else if lower.contains("not null constraint failed") {
        Refusal::NotNull
    } else if lower.contains("foreign key constraint failed") {
        Refusal::ForeignKey
    } else if lower.contains("datatype mismatch") || lower.contains("check constraint failed") {
        Refusal::InvalidValue
    } else if lower.contains("database is locked") || lower.contains("database table is locked") {
        Refusal::LockConflict
    } else {
        Refusal::Other
    }
}

/// The column (or, for a MySQL unique clash, the index) a refusal message names.
pub fn refused_column(message: &str) -> Option<String> {
    // MySQL/MariaDB: "Column 'x' cannot be null", "Data too long for column 'x' at row 1",
    // "Field 'x' doesn't have a default value", "Incorrect ... for column `db`.`t`.`x` at row 1",
    // "Duplicate entry 'v' for key 'name'" (MariaDB may qualify it as 'table.name').
    for marker in ["for column ", "Column ", "Field ", "for key "] {
        if let Some(at) = message.find(marker) {
            let rest = &message[at + marker.len()..];
            let quote = rest.chars().next()?;
            if quote != '\'' && quote != '`' {
                continue;
            }
            let quoted: String = rest.split_whitespace().next().unwrap_or_default().to_owned();
            let last = quoted.rsplit('.').next().unwrap_or_default();
            let name = last.trim_matches(|c| c == '\'' || c == '`');
            if !name.is_empty() {
                return Some(name.to_owned());
            }
        }
    }
    // MySQL/MariaDB, a child row naming a missing parent: "... FOREIGN KEY (`x`) REFERENCES ...".
    // (Deleting a parent names the child table's column instead, which is not ours.)
    if message.starts_with("Cannot add or update a child row")
        && let Some((_, rest)) = message.split_once("FOREIGN KEY (`")
        && let Some((name, _)) = rest.split_once('`')
    {
        return Some(name.to_owned());
    }
    // SQLite: "UNIQUE constraint failed: t.x" / "NOT NULL constraint failed: t.x, t.y".
    let (_, rest) = message.split_once("constraint failed: ")?;
    let first = rest.split([',', ' ']).next()?;
    let name = first.rsplit('.').next()?;
    (!name.is_empty()).then(|| name.to_owned())
}

// ---- pure: from a resource to row values ----

/// One column value as a resource carries it.
#[derive(Debug, Clone, PartialEq)]
pub enum WireValue {
    Plain(Value),
    /// `{"ref": {"table": T, "key": K}}`; `key` is `None` when the row was missing at the source.
    Reference { table: String, key: Option<String> },
}

/// Decodes one resource column: `{"ref": ...}`, `{"hex": ...}` (bytes), or plain JSON.
pub fn decode_wire_value(json: &serde_json::Value) -> Result<WireValue, String> {
    use serde_json::Value as J;
    Ok(WireValue::Plain(match json {
        J::Null => Value::Null,
        J::Bool(b) => Value::Int(i64::from(*b)),
        J::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::Int(i),
            // Beyond i64 (an unsigned bigint): exact as text, which both backends convert.
            (None, Some(u), _) => Value::Text(u.to_string()),
            (None, None, Some(f)) => Value::Float(f),
            _ => return Err(format!("number {n} is not representable")),
        },
        J::String(s) => Value::Text(s.clone()),
        J::Object(map) if map.len() == 1 => {
            if let Some(reference) = map.get("ref") {
                let table = reference.get("table").and_then(J::as_str).filter(|t| !t.is_empty());
                let Some(table) = table else { return Err(format!("reference without a table: {reference}")) };
                let key = match reference.get("key") {
                    None | Some(J::Null) => None,
                    Some(J::String(k)) if !k.is_empty() => Some(k.clone()),
                    Some(other) => return Err(format!("reference key must be a non-empty string or null, not {other}")),
                };
                return Ok(WireValue::Reference { table: table.to_owned(), key });
            }
            match map.get("hex") {
                Some(J::String(hex)) => Value::Bytes(decode_hex(hex)?),
                _ => return Err(format!("unexpected object {json}; expected {{\"ref\": ...}} or {{\"hex\": ...}}")),
            }
        }
        other => return Err(format!("unexpected JSON value {other}")),
    }))
}

fn decode_hex(hex: &str) -> Result<Vec<u8>, String> {
    if hex.len() % 2 != 0 {
        return Err(format!("hex value of odd length {}", hex.len()));
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("bad hex digits at offset {i}"))
        })
        .collect()
}

/// A value to read from the local row with a given identity: what a reference to it holds here.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lookup {
    pub table: String,
    pub key: String,
    /// The referenced table's column the reference holds (its primary key, almost always).
    pub column: String,
}

/// Where one target column's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnSource {
    Value(Value),
    /// The referenced row's value; `as_text` for an id hidden in a text value
    /// (`person_attribute.value` of a Location-format attribute).
    Reference { lookup: Lookup, as_text: bool },
}

/// What translating a resource needs: each target column with its source, and the warnings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ColumnPlan {
    /// Target column names (as the target spells them) with where their value comes from.
    pub columns: Vec<(String, ColumnSource)>,
    pub warnings: Vec<ApplyWarning>,
}

impl ColumnPlan {
    /// The distinct lookups to run, in a stable order.
    pub fn lookups(&self) -> BTreeSet<&Lookup> {
        self.columns
            .iter()
            .filter_map(|(_, source)| match source {
                ColumnSource::Reference { lookup, .. } => Some(lookup),
                ColumnSource::Value(_) => None,
            })
            .collect()
    }
}

/// Decides, for each column of `resource`, what the target's row of `entity` gets. Pure.
pub fn plan_columns(model: &Model, entity: &Entity, resource: &Resource) -> Result<ColumnPlan, ApplyError> {
    let untranslatable = |column: &str, reason: String| ApplyError::Untranslatable {
        table: resource.table.clone(),
        key: resource.key.clone(),
        column: column.to_owned(),
        reason,
    };
    let local_id = entity.local_id_column();
    let mut plan = ColumnPlan::default();
    for (name, json) in &resource.columns {
        let Some(column) = entity.columns.iter().find(|c| c.name.eq_ignore_ascii_case(name)) else {
            plan.warnings.push(ApplyWarning::ColumnDropped { column: name.clone() });
            continue;
        };
        if Some(column.name.as_str()) == local_id {
            plan.warnings.push(ApplyWarning::LocalIdIgnored { column: column.name.clone() });
            continue;
        }
        let source = match decode_wire_value(json).map_err(|reason| untranslatable(name, reason))? {
            WireValue::Plain(value) => {
                if !value.is_null() && entity.reference(&column.name).is_some() {
                    // Writing it would store another server's local id: silently wrong data.
                    return Err(untranslatable(
                        name,
                        "it is a reference here but arrived as a plain value (another server's local id): \
                         the source does not know this reference; add it to the profile"
                            .into(),
                    ));
                }
                ColumnSource::Value(value)
            }
            WireValue::Reference { table, key: None } => {
                if !column.nullable {
                    return Err(untranslatable(
                        name,
                        format!("the referenced {table} row was missing at the source, and the column cannot be NULL"),
                    ));
                }
                plan.warnings.push(ApplyWarning::DanglingReference { column: column.name.clone(), referenced_table: table });
                ColumnSource::Value(Value::Null)
            }
            WireValue::Reference { table, key: Some(key) } => {
                let (target_column, as_text) = reference_target(model, entity, &column.name, &table, &mut plan.warnings)
                    .map_err(|reason| untranslatable(name, reason))?;
                ColumnSource::Reference { lookup: Lookup { table, key, column: target_column }, as_text }
            }
        };
        plan.columns.push((column.name.clone(), source));
    }
    Ok(plan)
}

/// Which column of the referenced table a reference in `column` holds here, and whether as text.
fn reference_target(
    model: &Model,
    entity: &Entity,
    column: &str,
    table: &str,
    warnings: &mut Vec<ApplyWarning>,
) -> Result<(String, bool), String> {
    let Some(target) = model.entity(table) else {
        return Err(format!("it references table {table}, which is not published here"));
    };
    if let Some(reference) = entity.reference(column) {
        return if reference.target_table == table {
            Ok((reference.target_column.clone(), false))
        } else {
            Err(format!("it references {table} at the source but {} here", reference.target_table))
        };
    }
    let [primary_key] = target.primary_key.as_slice() else {
        return Err(format!("{table} has no single-column primary key for the reference to hold"));
    };
    if entity.value_reference.as_ref().is_some_and(|v| v.value_column == column) {
        return Ok((primary_key.clone(), true));
    }
    warnings.push(ApplyWarning::UnknownReference { column: column.to_owned(), referenced_table: table.to_owned() });
    Ok((primary_key.clone(), false))
}

/// A row's values once every reference is translated.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RowValues {
    /// Target column and the value it must hold.
    pub columns: Vec<(String, Value)>,
    /// Columns referencing the row itself by its local id (OpenMRS's admin user is its own
    /// creator). A new row's id is allocated by the insert that writes them.
    pub own_id: Option<OwnId>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OwnId {
    /// The table's local id column.
    pub id_column: String,
    /// Columns that take the row's own id.
    pub columns: Vec<String>,
}

/// Finishes the translation with the lookups' results (`found`: lookups whose row exists here,
/// with the value read). Returns the references still missing, as (table, key), if any. Pure.
pub fn resolve_columns(
    entity: &Entity,
    resource: &Resource,
    plan: &ColumnPlan,
    found: &HashMap<Lookup, Value>,
) -> Result<RowValues, Vec<(String, String)>> {
    let mut row = RowValues::default();
    let mut missing = BTreeSet::new();
    let plain = |column: &str| {
        plan.columns.iter().find_map(|(c, source)| match source {
            ColumnSource::Value(v) if c.eq_ignore_ascii_case(column) => Some(v.clone()),
            _ => None,
        })
    };
    for (column, source) in &plan.columns {
        let value = match source {
            ColumnSource::Value(value) => value.clone(),
            ColumnSource::Reference { lookup, as_text } => {
                let value = match found.get(lookup) {
                    Some(value) => value.clone(),
                    None if lookup.table == resource.table && lookup.key == resource.key => {
                        // A reference to the row being written: not missing, it is this row.
                        if !*as_text && entity.local_id_column() == Some(lookup.column.as_str()) {
                            let own = row.own_id.get_or_insert_with(|| OwnId { id_column: lookup.column.clone(), columns: Vec::new() });
                            own.columns.push(column.clone());
                            continue;
                        }
                        match plain(&lookup.column) {
                            Some(value) => value,
                            None => {
                                missing.insert((lookup.table.clone(), lookup.key.clone()));
                                continue;
                            }
                        }
                    }
                    None => {
                        missing.insert((lookup.table.clone(), lookup.key.clone()));
                        continue;
                    }
                };
                if *as_text { value.to_text().map_or(Value::Null, Value::Text) } else { value }
            }
        };
        row.columns.push((column.clone(), value));
    }
    if missing.is_empty() { Ok(row) } else { Err(missing.into_iter().collect()) }
}

/// The statement that makes the local row hold `row`.
#[derive(Debug, Clone, PartialEq)]
pub enum WritePlan {
    /// A new row; its local id is left to the database, or allocated with it (`own_id`).
    Insert { columns: Vec<(String, Value)>, own_id: Option<OwnId> },
    /// Exactly the columns whose values differ; others are not written, so an unchanged
    /// column never fires a trigger or bumps anything.
    Update { columns: Vec<(String, Value)> },
    Unchanged,
}

/// Decides the write from the local row found by identity (`None`: not here). Pure.
pub fn plan_write(existing: Option<&Row>, row: &RowValues) -> WritePlan {
    let Some(current) = existing else {
        return WritePlan::Insert { columns: row.columns.clone(), own_id: row.own_id.clone() };
    };
    let mut changed: Vec<(String, Value)> =
        row.columns.iter().filter(|(column, value)| !same_value(current.get(column), value)).cloned().collect();
    if let Some(own) = &row.own_id {
        // The row exists, so its own id is known (normally the lookup would have found it).
        let id = current.get(&own.id_column).clone();
        for column in &own.columns {
            if !same_value(current.get(column), &id) {
                changed.push((column.clone(), id.clone()));
            }
        }
    }
    if changed.is_empty() { WritePlan::Unchanged } else { WritePlan::Update { columns: changed } }
}

/// Whether a stored value already is the wanted one. Drivers return a column's type (an int for
/// a tinyint, text for a decimal, bytes for a binary string) while a resource carries JSON, so
/// equal numbers and equal bytes count as equal; anything else compares exactly.
pub fn same_value(stored: &Value, wanted: &Value) -> bool {
    match (stored, wanted) {
        (a, b) if a == b => true,
        (Value::Int(i), Value::Float(f)) | (Value::Float(f), Value::Int(i)) => *i as f64 == *f,
        (Value::Text(t), Value::Int(_) | Value::Float(_)) => number_text_equals(t, wanted),
        (Value::Int(_) | Value::Float(_), Value::Text(t)) => number_text_equals(t, stored),
        (Value::Text(t), Value::Bytes(b)) | (Value::Bytes(b), Value::Text(t)) => t.as_bytes() == b.as_slice(),
        _ => false,
    }
}

fn number_text_equals(text: &str, number: &Value) -> bool {
    let Ok(parsed) = text.trim().parse::<f64>() else { return false };
    match number {
        Value::Int(i) => parsed == *i as f64,
        Value::Float(f) => parsed == *f,
        _ => false,
    }
}

/// `INSERT` for a plan. With `own_id`, the id is allocated in the statement itself
/// (`MAX + 1` over the table, which both backends allow as `INSERT ... SELECT` on the same
/// table) so the columns referencing the row itself hold it at once, NOT NULL and foreign
/// keys satisfied. A concurrent insert that takes the same id makes this one fail with a
/// unique clash, which a later retry resolves.
pub fn insert_sql(dialect: Dialect, table: &str, columns: &[&str], own_id: Option<&OwnId>) -> String {
    let quoted: Vec<String> = columns.iter().map(|c| quote_ident(dialect, c)).collect();
    let table = quote_ident(dialect, table);
    match own_id {
        None => format!("INSERT INTO {table} ({}) VALUES ({})", quoted.join(", "), vec!["?"; columns.len()].join(", ")),
        Some(own) => {
            let id = quote_ident(dialect, &own.id_column);
            let next = format!("(COALESCE(MAX({id}), 0) + 1)");
            let mut names = vec![id.clone()];
            names.extend(quoted);
            names.extend(own.columns.iter().map(|c| quote_ident(dialect, c)));
            let mut values = vec![next.clone()];
            values.extend(std::iter::repeat_n("?".to_owned(), columns.len()));
            values.extend(std::iter::repeat_n(next, own.columns.len()));
            format!("INSERT INTO {table} ({}) SELECT {} FROM {table}", names.join(", "), values.join(", "))
        }
    }
}

pub fn update_sql(dialect: Dialect, table: &str, columns: &[&str], condition: &str) -> String {
    let set: Vec<String> = columns.iter().map(|c| format!("{} = ?", quote_ident(dialect, c))).collect();
    format!("UPDATE {} SET {} WHERE {condition}", quote_ident(dialect, table), set.join(", "))
}

/// The condition naming a found row by its primary key values (`None` for a keyless table).
fn primary_key_condition(dialect: Dialect, entity: &Entity, row: &Row) -> Option<(String, Vec<Value>)> {
    if entity.primary_key.is_empty() {
        return None;
    }
    let condition: Vec<String> = entity.primary_key.iter().map(|c| format!("{} = ?", quote_ident(dialect, c))).collect();
    let params = entity.primary_key.iter().map(|c| row.get(c).clone()).collect();
    Some((condition.join(" AND "), params))
}

fn not_here(model: &Model, table: &str) -> Applied {
    let reason = match model.not_published.get(table) {
        Some(why) => format!("table {table} is not published here: {why}"),
        None => format!("table {table} does not exist here"),
    };
    Applied::Done { change: Change::Skipped, warnings: vec![ApplyWarning::TableNotHere { reason }] }
}

// ---- IO ----

/// Applies one resource to the target database whose model is `model`. Writes nothing when it
/// waits or fails; run it inside a savepoint so a refused statement is undone alone.
pub async fn apply_resource(session: &mut Session, model: &Model, resource: &Resource) -> Result<Applied, ApplyError> {
    let Some(entity) = model.entity(&resource.table) else { return Ok(not_here(model, &resource.table)) };
    let fail = |e| ApplyError::from_db(Some(entity), &resource.table, &resource.key, e);
    let plan = plan_columns(model, entity, resource)?;
    let mut found = HashMap::new();
    for lookup in plan.lookups() {
        if let Some(value) = referenced_value(session, model, &lookup.table, &lookup.column, &lookup.key).await.map_err(fail)? {
            found.insert(lookup.clone(), value);
        }
    }
    let row = match resolve_columns(entity, resource, &plan, &found) {
        Ok(row) => row,
        Err(missing) => return Ok(Applied::Waiting { missing }),
    };
    let existing = find_row(session, model, &resource.table, &resource.key).await.map_err(fail)?;
    let dialect = session.dialect();
    let change = match plan_write(existing.as_ref(), &row) {
        WritePlan::Unchanged => Change::Unchanged,
        WritePlan::Insert { columns, own_id } => {
            let names: Vec<&str> = columns.iter().map(|(c, _)| c.as_str()).collect();
            let values: Vec<Value> = columns.iter().map(|(_, v)| v.clone()).collect();
            session.execute(&insert_sql(dialect, &resource.table, &names, own_id.as_ref()), &values).await.map_err(fail)?;
            Change::Inserted
        }
        WritePlan::Update { columns } => {
            let found_by_key = existing.as_ref().and_then(|r| primary_key_condition(dialect, entity, r));
            let (condition, key_params) = match found_by_key {
                Some(condition) => condition,
                None => identity_condition(session, model, entity, &resource.key)
                    .await
                    .map_err(fail)?
                    .expect("the row was just found by this identity"),
            };
            let names: Vec<&str> = columns.iter().map(|(c, _)| c.as_str()).collect();
            let params: Vec<Value> = columns.iter().map(|(_, v)| v.clone()).chain(key_params).collect();
            session.execute(&update_sql(dialect, &resource.table, &names, &condition), &params).await.map_err(fail)?;
            Change::Updated { columns: columns.into_iter().map(|(c, _)| c).collect() }
        }
    };
    Ok(Applied::Done { change, warnings: plan.warnings })
}

/// Deletes the local row with the tombstone's identity; a row already absent is fine.
pub async fn apply_tombstone(session: &mut Session, model: &Model, tombstone: &Tombstone) -> Result<Applied, ApplyError> {
    let Some(entity) = model.entity(&tombstone.table) else { return Ok(not_here(model, &tombstone.table)) };
    let fail = |e| ApplyError::from_db(Some(entity), &tombstone.table, &tombstone.key, e);
    // No condition: a row it depends on (a join row's user) is gone, so it is gone too.
    let Some((condition, params)) = identity_condition(session, model, entity, &tombstone.key).await.map_err(fail)? else {
        return Ok(Applied::Done { change: Change::Unchanged, warnings: Vec::new() });
    };
    let dialect = session.dialect();
    let sql = format!("DELETE FROM {} WHERE {condition}", quote_ident(dialect, &tombstone.table));
    let deleted = session.execute(&sql, &params).await.map_err(fail)?;
    let change = if deleted == 0 { Change::Unchanged } else { Change::Deleted };
    Ok(Applied::Done { change, warnings: Vec::new() })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet, HashMap};
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use feedsync_core::model::{Identity, Reference, ValueReference};
    use crate::lookup::value_json;
    use feedsync_wire::resource::{content_hash, reference_json};
    use feedsync_db::schema::Column;

    /// Generated cases from the one seeded generator; each reproduces from its seed.
    struct Cases(feedsync_core::rng::SplitMix64);

    impl Cases {
        fn below(&mut self, n: u64) -> u64 {
            self.0.below(n)
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
        fn value(&mut self) -> Value {
            match self.below(6) {
                0 => Value::Null,
                1 => Value::Int(self.below(2_000) as i64 - 1_000),
                2 => Value::Float((self.below(20_000) as f64 - 10_000.0) / 8.0),
                3 => Value::Text(format!("text {}", self.below(50))),
                4 => Value::Bytes((0..self.below(5)).map(|_| self.below(256) as u8).collect()),
                _ => Value::Text(format!("2024-01-{:02} 08:00:00", 1 + self.below(28))),
            }
        }
    }

    fn column(name: &str, data_type: &str, nullable: bool) -> Column {
        Column { name: name.into(), data_type: data_type.into(), nullable, ..Column::default() }
    }

    fn reference(column: &str, table: &str, target_column: &str) -> Reference {
        Reference { column: column.into(), target_table: table.into(), target_column: target_column.into(), declared: true }
    }

    fn entity(table: &str, identity: Identity, primary_key: &[&str], columns: Vec<Column>, references: Vec<Reference>) -> Entity {
        Entity {
            table: table.into(),
            category: table.into(),
            identity,
            primary_key: primary_key.iter().map(|c| c.to_string()).collect(),
            columns,
            references,
            value_reference: None,
            patient_path: Vec::new(),
            is_patient_root: false,
            location_column: None,
            credential_columns: Vec::new(),
        }
    }

    fn uuid_identity() -> Identity {
        Identity::Uuid { column: "uuid".into() }
    }

    /// `users` (local id, uuid), `role` (text key) and a generated table `t` whose columns
    /// reference them, itself (`parent`), and hide an id in `value`.
    fn generated_model(cases: &mut Cases) -> Model {
        let mut model = Model::default();
        let users = vec![column("user_id", "int", false), column("uuid", "char", false)];
        model.entities.insert("users".into(), entity("users", uuid_identity(), &["user_id"], users, Vec::new()));
        let role = vec![column("role", "varchar", false)];
        model.entities.insert("role".into(), entity("role", Identity::TextKey { column: "role".into() }, &["role"], role, Vec::new()));
        let has_local_id = cases.chance(70);
        let mut columns = vec![column("uuid", "char", false)];
        if has_local_id {
            columns.insert(0, column("t_id", "int", false));
        }
        let mut references = Vec::new();
        for i in 0..1 + cases.below(6) {
            let name = format!("c{i}");
            let nullable = cases.chance(50);
            match cases.below(4) {
                0 => {
                    columns.push(column(&name, "int", nullable));
                    references.push(reference(&name, "users", "user_id"));
                }
                1 => {
                    columns.push(column(&name, "varchar", nullable));
                    references.push(reference(&name, "role", "role"));
                }
                2 => columns.push(column(&name, "double", nullable)),
                _ => columns.push(column(&name, "varchar", nullable)),
            }
        }
        columns.push(column("parent", "int", true));
        references.push(reference("parent", "t", if has_local_id { "t_id" } else { "uuid" }));
        columns.push(column("value", "varchar", cases.chance(50)));
        let primary_key: &[&str] = if has_local_id { &["t_id"] } else { &["uuid"] };
        let mut t = entity("t", uuid_identity(), primary_key, columns, references);
        t.value_reference = Some(ValueReference {
            value_column: "value".into(),
            type_column: "type_id".into(),
            type_table: "users".into(),
            type_format_column: "format".into(),
        });
        model.entities.insert("t".into(), t);
        model
    }

    const KEY: &str = "0f0e0d0c-0000-4000-8000-000000000001";

    /// What a column of the generated resource should turn into, decided independently of
    /// `plan_columns`.
    #[derive(Debug, PartialEq)]
    enum Expect {
        Dropped,
        LocalIdIgnored,
        Plain(Value),
        Dangling,
        Lookup { table: String, key: String, column: String, as_text: bool },
        Fails,
    }

    fn generated_resource(cases: &mut Cases, model: &Model) -> (Resource, BTreeMap<String, Expect>) {
        let t = &model.entities["t"];
        let mut columns = BTreeMap::new();
        let mut expect = BTreeMap::new();
        for c in &t.columns {
            if !cases.chance(85) {
                continue;
            }
            let local_id = t.local_id_column() == Some(c.name.as_str());
            let (json, outcome) = if local_id {
                (json!(cases.below(100)), Expect::LocalIdIgnored)
            } else if let Some(r) = t.reference(&c.name) {
                match cases.below(10) {
                    0 => (reference_json(&r.target_table, None), if c.nullable { Expect::Dangling } else { Expect::Fails }),
                    1 => (json!(cases.below(100) + 1), Expect::Fails),
                    2 => (serde_json::Value::Null, Expect::Plain(Value::Null)),
                    _ => {
                        // The self reference names this very row half the time.
                        let key = if r.target_table == "t" && cases.chance(50) { KEY.to_owned() } else { format!("k{}", cases.below(4)) };
                        let lookup = Expect::Lookup { table: r.target_table.clone(), key: key.clone(), column: r.target_column.clone(), as_text: false };
                        (reference_json(&r.target_table, Some(&key)), lookup)
                    }
                }
            } else if c.name == "value" && cases.chance(50) {
                let key = format!("k{}", cases.below(4));
                let lookup = Expect::Lookup { table: "users".into(), key: key.clone(), column: "user_id".into(), as_text: true };
                (reference_json("users", Some(&key)), lookup)
            } else if c.name == "uuid" {
                (json!(KEY), Expect::Plain(Value::Text(KEY.into())))
            } else {
                let value = cases.value();
                (value_json(&value), Expect::Plain(value))
            };
            columns.insert(c.name.clone(), json);
            expect.insert(c.name.clone(), outcome);
        }
        for i in 0..cases.below(3) {
            let name = format!("only_at_source_{i}");
            columns.insert(name.clone(), value_json(&cases.value()));
            expect.insert(name, Expect::Dropped);
        }
        let hash = content_hash(&columns);
        (Resource { table: "t".into(), category: "t".into(), key: KEY.into(), columns, hash }, expect)
    }

    #[test]
    fn plan_columns_translates_every_generated_resource() {
        let mut cases = Cases(feedsync_core::rng::SplitMix64::new(0x5EED_0001));
        let (mut failed, mut lookups, mut dropped) = (0, 0, 0);
        for case in 0..600 {
            let model = generated_model(&mut cases);
            let (resource, expect) = generated_resource(&mut cases, &model);
            let result = plan_columns(&model, &model.entities["t"], &resource);
            if expect.values().any(|e| *e == Expect::Fails) {
                let err = result.expect_err(&format!("case {case}: {resource:?}"));
                let ApplyError::Untranslatable { column, .. } = &err else { panic!("case {case}: {err}") };
                assert_eq!(expect.get(column), Some(&Expect::Fails), "case {case}: failed on {column}");
                assert!(!err.is_retryable());
                failed += 1;
                continue;
            }
            let plan = result.unwrap_or_else(|e| panic!("case {case}: {e}"));
            for (name, outcome) in &expect {
                let planned = plan.columns.iter().find(|(c, _)| c == name).map(|(_, s)| s);
                match outcome {
                    Expect::Dropped => {
                        dropped += 1;
                        assert!(planned.is_none());
                        assert!(plan.warnings.contains(&ApplyWarning::ColumnDropped { column: name.clone() }), "case {case}");
                    }
                    Expect::LocalIdIgnored => {
                        assert!(planned.is_none(), "case {case}: the local id is never written");
                        assert!(plan.warnings.contains(&ApplyWarning::LocalIdIgnored { column: name.clone() }));
                    }
                    Expect::Plain(value) => assert_eq!(planned, Some(&ColumnSource::Value(value.clone())), "case {case}: {name}"),
                    Expect::Dangling => {
                        assert_eq!(planned, Some(&ColumnSource::Value(Value::Null)));
                        assert!(plan.warnings.iter().any(|w| matches!(w, ApplyWarning::DanglingReference { column, .. } if column == name)));
                    }
                    Expect::Lookup { table, key, column, as_text } => {
                        lookups += 1;
                        let lookup = Lookup { table: table.clone(), key: key.clone(), column: column.clone() };
                        assert_eq!(planned, Some(&ColumnSource::Reference { lookup, as_text: *as_text }), "case {case}: {name}");
                    }
                    Expect::Fails => unreachable!(),
                }
            }
            assert_eq!(plan.columns.len() + plan.warnings.iter().filter(|w| !matches!(w, ApplyWarning::DanglingReference { .. })).count(), expect.len());
        }
        assert!(failed > 50 && lookups > 500 && dropped > 200, "generator covers every branch: {failed} {lookups} {dropped}");
    }

    #[test]
    fn resolve_reports_exactly_the_missing_rows_and_translates_the_rest() {
        let mut cases = Cases(feedsync_core::rng::SplitMix64::new(0x5EED_0002));
        let (mut waited, mut own) = (0, 0);
        for case in 0..600 {
            let model = generated_model(&mut cases);
            let t = &model.entities["t"];
            let (resource, _) = generated_resource(&mut cases, &model);
            let Ok(plan) = plan_columns(&model, t, &resource) else { continue };
            let mut found = HashMap::new();
            for lookup in plan.lookups() {
                if cases.chance(70) {
                    found.insert(lookup.clone(), Value::Int(cases.below(500) as i64 + 1));
                }
            }
            let is_self = |l: &Lookup| l.table == "t" && l.key == KEY;
            let uuid_planned = plan.columns.iter().any(|(c, s)| c == "uuid" && matches!(s, ColumnSource::Value(_)));
            let expected_missing: BTreeSet<(String, String)> = plan
                .lookups()
                .into_iter()
                .filter(|l| !found.contains_key(*l))
                // A reference to the row itself waits only when its value cannot be known.
                .filter(|l| !is_self(l) || (l.column == "uuid" && !uuid_planned))
                .map(|l| (l.table.clone(), l.key.clone()))
                .collect();
            match resolve_columns(t, &resource, &plan, &found) {
                Err(missing) => {
                    waited += 1;
                    assert_eq!(missing.into_iter().collect::<BTreeSet<_>>(), expected_missing, "case {case}");
                }
                Ok(row) => {
                    assert!(expected_missing.is_empty(), "case {case}: {expected_missing:?} should wait");
                    for (column, source) in &plan.columns {
                        let value = row.columns.iter().find(|(c, _)| c == column).map(|(_, v)| v);
                        match source {
                            ColumnSource::Value(v) => assert_eq!(value, Some(v)),
                            ColumnSource::Reference { lookup, as_text } => match found.get(lookup) {
                                Some(Value::Int(id)) if *as_text => assert_eq!(value, Some(&Value::Text(id.to_string()))),
                                Some(v) => assert_eq!(value, Some(v)),
                                None => {
                                    assert!(is_self(lookup), "case {case}");
                                    if lookup.column == "t_id" {
                                        own += 1;
                                        assert_eq!(value, None, "an own-id column is written by the insert itself");
                                        assert!(row.own_id.as_ref().unwrap().columns.contains(column));
                                    } else {
                                        assert_eq!(value, Some(&Value::Text(KEY.into())), "a self reference by uuid holds the uuid");
                                    }
                                }
                            },
                        }
                    }
                }
            }
        }
        assert!(waited > 100 && own > 10, "generator covers waiting and own ids: {waited} {own}");
    }

    fn row(columns: &[(&str, Value)]) -> Row {
        let names: Arc<[String]> = columns.iter().map(|(c, _)| c.to_string()).collect();
        Row { columns: names, values: columns.iter().map(|(_, v)| v.clone()).collect() }
    }

    /// Stores `value` as a driver might return it: the same, or another type of equal content.
    fn stored_form(cases: &mut Cases, value: &Value) -> Value {
        match (value, cases.below(2)) {
            (Value::Int(i), 0) => Value::Float(*i as f64),
            (Value::Int(i), _) => Value::Text(i.to_string()),
            (Value::Float(f), 0) if f.fract() == 0.0 => Value::Int(*f as i64),
            (Value::Text(t), 0) => Value::Bytes(t.as_bytes().to_vec()),
            (other, _) => other.clone(),
        }
    }

    #[test]
    fn updates_write_exactly_the_differing_columns_and_a_second_apply_writes_nothing() {
        let mut cases = Cases(feedsync_core::rng::SplitMix64::new(0x5EED_0003));
        let mut updates = 0;
        for case in 0..800 {
            let wanted: Vec<(String, Value)> = (0..1 + cases.below(8)).map(|i| (format!("c{i}"), cases.value())).collect();
            let values = RowValues { columns: wanted.clone(), own_id: None };
            assert_eq!(plan_write(None, &values), WritePlan::Insert { columns: wanted.clone(), own_id: None });
            let mut stored: Vec<(String, Value)> = vec![("t_id".into(), Value::Int(7))];
            let mut differing = Vec::new();
            for (column, value) in &wanted {
                match cases.below(4) {
                    0 => {
                        let other = cases.value();
                        if !same_value(&other, value) {
                            differing.push(column.clone());
                        }
                        stored.push((column.clone(), other));
                    }
                    1 => stored.push((column.clone(), stored_form(&mut cases, value))),
                    _ => stored.push((column.clone(), value.clone())),
                }
            }
            let stored_refs: Vec<(&str, Value)> = stored.iter().map(|(c, v)| (c.as_str(), v.clone())).collect();
            let current = row(&stored_refs);
            match plan_write(Some(&current), &values) {
                WritePlan::Unchanged => assert!(differing.is_empty(), "case {case}: {differing:?} differ"),
                WritePlan::Update { columns } => {
                    updates += 1;
                    let names: Vec<String> = columns.iter().map(|(c, _)| c.clone()).collect();
                    assert_eq!(names, differing, "case {case}");
                    let mut after = stored.clone();
                    for (column, value) in columns {
                        after.iter_mut().find(|(c, _)| *c == column).unwrap().1 = value;
                    }
                    let after: Vec<(&str, Value)> = after.iter().map(|(c, v)| (c.as_str(), v.clone())).collect();
                    assert_eq!(plan_write(Some(&row(&after)), &values), WritePlan::Unchanged, "case {case}: not idempotent");
                }
                other => panic!("case {case}: {other:?}"),
            }
        }
        assert!(updates > 300, "{updates}");
    }

    #[test]
    fn own_id_columns_take_the_existing_id_on_update() {
        let own = OwnId { id_column: "user_id".into(), columns: vec!["creator".into()] };
        let values = RowValues { columns: vec![("uuid".into(), "u".into())], own_id: Some(own.clone()) };
        let current = row(&[("user_id", Value::Int(5)), ("uuid", "u".into()), ("creator", Value::Int(1))]);
        assert_eq!(plan_write(Some(&current), &values), WritePlan::Update { columns: vec![("creator".into(), Value::Int(5))] });
        let current = row(&[("user_id", Value::Int(5)), ("uuid", "u".into()), ("creator", Value::Int(5))]);
        assert_eq!(plan_write(Some(&current), &values), WritePlan::Unchanged);
        assert_eq!(
            insert_sql(Dialect::MySql, "users", &["uuid"], Some(&own)),
            "INSERT INTO `users` (`user_id`, `uuid`, `creator`) SELECT (COALESCE(MAX(`user_id`), 0) + 1), ?, \
             (COALESCE(MAX(`user_id`), 0) + 1) FROM `users`"
        );
    }

    #[test]
    fn statements() {
        assert_eq!(insert_sql(Dialect::Sqlite, "obs", &["uuid", "value_numeric"], None), "INSERT INTO \"obs\" (\"uuid\", \"value_numeric\") VALUES (?, ?)");
        assert_eq!(update_sql(Dialect::MySql, "obs", &["voided", "void_reason"], "`obs_id` = ?"), "UPDATE `obs` SET `voided` = ?, `void_reason` = ? WHERE `obs_id` = ?");
    }

    #[test]
    fn wire_values_round_trip_from_what_the_publisher_renders() {
        let mut cases = Cases(feedsync_core::rng::SplitMix64::new(0x5EED_0004));
        for _ in 0..500 {
            let value = cases.value();
            assert_eq!(decode_wire_value(&value_json(&value)), Ok(WireValue::Plain(value)));
        }
        assert_eq!(decode_wire_value(&json!(true)), Ok(WireValue::Plain(Value::Int(1))));
        assert_eq!(decode_wire_value(&json!(u64::MAX)), Ok(WireValue::Plain(Value::Text(u64::MAX.to_string()))));
        assert_eq!(
            decode_wire_value(&reference_json("users", Some("u1"))),
            Ok(WireValue::Reference { table: "users".into(), key: Some("u1".into()) })
        );
        assert_eq!(decode_wire_value(&reference_json("users", None)), Ok(WireValue::Reference { table: "users".into(), key: None }));
        for bad in [json!({"hex": "abc"}), json!({"hex": "zz"}), json!({"ref": {"key": "x"}}), json!({"ref": {"table": "t", "key": 3}}), json!([1]), json!({"a": 1, "b": 2})] {
            assert!(decode_wire_value(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn equal_content_counts_as_unchanged() {
        for (stored, wanted) in [
            (Value::Int(1), Value::Float(1.0)),
            (Value::Text("1.50".into()), Value::Float(1.5)),
            (Value::Text("12".into()), Value::Int(12)),
            (Value::Bytes(b"ab".to_vec()), Value::Text("ab".into())),
            (Value::Null, Value::Null),
        ] {
            assert!(same_value(&stored, &wanted), "{stored:?} {wanted:?}");
        }
        for (stored, wanted) in [
            (Value::Int(1), Value::Int(2)),
            (Value::Null, Value::Int(0)),
            (Value::Text("".into()), Value::Null),
            (Value::Text("a".into()), Value::Int(0)),
            (Value::Float(0.1), Value::Float(0.2)),
        ] {
            assert!(!same_value(&stored, &wanted), "{stored:?} {wanted:?}");
        }
    }

    #[test]
    fn refusals_are_classified_from_the_real_messages() {
        for (message, refusal, column) in [
            ("Duplicate entry 'Clash' for key 'concept_name_tag_unique_tags' (MySQL error 1062)", Refusal::UniqueClash, Some("concept_name_tag_unique_tags")),
            ("Data too long for column 'name' at row 1 (MySQL error 1406)", Refusal::ValueTooLong, Some("name")),
            ("Column 'creator' cannot be null (MySQL error 1048)", Refusal::NotNull, Some("creator")),
            ("Field 'note_id' doesn't have a default value (MySQL error 1364)", Refusal::NotNull, Some("note_id")),
            ("Incorrect datetime value: 'x' for column `openmrs`.`obs`.`obs_datetime` at row 1 (MySQL error 1292)", Refusal::InvalidValue, Some("obs_datetime")),
            (
                "Cannot delete or update a parent row: a foreign key constraint fails (`db`.`scheduler_task_config`, CONSTRAINT `scheduler_creator` FOREIGN KEY (`created_by`) REFERENCES `users` (`user_id`)) (MySQL error 1451)",
                Refusal::ForeignKey,
                None,
            ),
            (
                "Cannot add or update a child row: a foreign key constraint fails (`db`.`obs`, CONSTRAINT `obs_concept` FOREIGN KEY (`concept_id`) REFERENCES `concept` (`concept_id`)) (MySQL error 1452)",
                Refusal::ForeignKey,
                Some("concept_id"),
            ),
            ("Deadlock found when trying to get lock; try restarting transaction (MySQL error 1213)", Refusal::LockConflict, None),
            ("UNIQUE constraint failed: concept_name_tag.tag", Refusal::UniqueClash, Some("tag")),
            ("NOT NULL constraint failed: location.name", Refusal::NotNull, Some("name")),
            ("FOREIGN KEY constraint failed", Refusal::ForeignKey, None),
            ("no such table: x", Refusal::Other, None),
        ] {
            assert_eq!(classify_refusal(message), refusal, "{message}");
            assert_eq!(refused_column(message).as_deref(), column, "{message}");
        }
        let e = ApplyError::from_db(None, "obs", "k", DbError::Statement { sql: "x".into(), message: "Deadlock found (MySQL error 1213)".into() });
        assert!(e.is_retryable());
        let e = ApplyError::from_db(None, "obs", "k", DbError::Unavailable { target: "db".into(), message: "gone".into() });
        assert!(e.is_retryable());
        assert_eq!(e.change(), ("obs", "k"));
    }

    #[test]
    fn a_unique_clash_names_the_column_when_the_index_is_named_after_it() {
        let mut e = entity("care_setting", uuid_identity(), &["care_setting_id"], vec![column("name", "varchar", false)], Vec::new());
        e.columns.push(column("uuid", "char", false));
        let refused = |message: &str| ApplyError::from_db(Some(&e), "care_setting", "k", DbError::Statement { sql: "INSERT".into(), message: message.into() });
        let ApplyError::Refused { column, refusal, message, .. } = refused("Duplicate entry 'x' for key 'name' (MySQL error 1062)") else { panic!() };
        assert_eq!((column.as_deref(), refusal), (Some("name"), Refusal::UniqueClash));
        assert!(message.contains("Duplicate entry 'x'"), "the database's message is kept whole");
        let ApplyError::Refused { column, .. } = refused("Duplicate entry 'x' for key 'some_index' (MySQL error 1062)") else { panic!() };
        assert_eq!(column, None, "an index name is not a column");
    }
}
