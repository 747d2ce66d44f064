//! Two-way exchange between a parent and its children: the wire types of the network
//! protocol, the toolkit's network tables, and `receive`, the one place where a version that
//! came from the other side meets the local row: it is merged with what changed here since the
//! two sides last agreed (the base), the result is applied, and a conflict record keeps the
//! losing values. Both sides use it: the parent for pushed changes, the child for pulled ones,
//! so a conflict is decided the same way wherever it is found.
//!
//! Who keeps the base: the child. It stores, per entity, the version last exchanged with its
//! parent (`feedsync_base`) and sends it with every push, so the parent needs no per-child
//! state to merge and a child that was offline for a week is handled like any other.
//!
//! Origins (see `capture::set_origin`): writes applied from the parent carry [`ORIGIN_PARENT`],
//! writes pushed by a child carry `child:<name>`. The sequencer publishes both (a parent passes
//! data on to its other children and a district passes data up and down); a child's push
//! leaves out what came from its parent, and a parent's change feed for a child leaves out what
//! came from that child.

use std::collections::BTreeMap;


use sha2::{Digest, Sha256};

use crate::apply::{self, Applied, ApplyError};
use feedsync_wire::hex;
use feedsync_db::{DbResult, Session, Value, quote_ident};
use feedsync_core::merge::{self, Fields, Side, Version};
use feedsync_core::model::Model;
use crate::lookup::LookupCache;
use feedsync_wire::network::{Base, Conflict, HeldItem, Item, PolicyConfig, PushRequest};
use feedsync_wire::resource::{Resource, Tombstone, content_hash};

pub use feedsync_db::tables::{AUDIT_TABLE, BASE_TABLE, CATCHMENT_TABLE, CHILD_TABLE, CHILD_TOKEN_TABLE, COMMAND_TABLE, CONFLICT_TABLE, INBOX_TABLE, OUTBOX_TABLE, TOKEN_TABLE};

/// The origin of writes applied from this node's parent.
pub const ORIGIN_PARENT: &str = "parent";
/// The peer name under which a child keeps what it holds from its parent.
pub const PEER_PARENT: &str = "parent";

pub fn child_origin(name: &str) -> String {
    format!("child:{name}")
}

/// Whether an origin is a network peer's (kept in the feed so data passes on), as opposed to
/// a plain feed subscription's (`feed:...`, consumed without an event unless configured).
pub fn is_network_origin(origin: &str) -> bool {
    origin == ORIGIN_PARENT || origin.starts_with("child:")
}

// ---- tables ----

/// Creates the network tables where they are missing (they come with the capture tables at
/// `install`; a database that predates them gets them here). Their DDL is in
/// `feedsync_db::tables`.
pub async fn prepare_tables(session: &mut Session) -> DbResult<()> {
    feedsync_db::tables::create(session, feedsync_db::tables::TableSet::Network).await
}

// ---- tokens ----

/// A child's secret: `<name>.<secret>`. Only its SHA-256 is stored at the parent.
pub fn new_token(name: &str) -> String {
    let secret: String = (0..2).map(|_| uuid::Uuid::new_v4().simple().to_string()).collect();
    format!("{name}.{secret}")
}

pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// The child name a token claims (checked against the stored hash by the parent).
pub fn token_child(token: &str) -> Option<&str> {
    token.split_once('.').map(|(name, _)| name).filter(|n| valid_child_name(n))
}

/// Child names: letters, digits, `-` and `_`, 1 to 64 characters (they appear in origins
/// and URLs).
pub fn valid_child_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Compares two hashes in time independent of where they differ.
pub fn hashes_equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub async fn current(session: &mut Session, model: &Model, table: &str, key: &str, cache: &mut LookupCache) -> DbResult<Option<Resource>> {
    let Some(entity) = model.entity(table) else { return Ok(None) };
    match crate::lookup::find_row(session, model, table, key).await? {
        Some(row) => Ok(Some(crate::lookup::render(session, model, entity, key, &row, cache).await?)),
        None => Ok(None),
    }
}

/// The local entity as [`current`] gives it, read under the row's lock, held until the
/// transaction ends (MySQL `FOR UPDATE`; on SQLite the writing transaction holds the database
/// lock already). A locking read also sees the newest committed version whatever the isolation
/// level, so a merge decides on the row as it is, and a local write cannot commit between the
/// merge's read and its write (it would be overwritten without a trace: a lost update).
pub async fn current_locked(session: &mut Session, model: &Model, table: &str, key: &str, cache: &mut LookupCache) -> DbResult<Option<Resource>> {
    let Some(entity) = model.entity(table) else { return Ok(None) };
    let Some((condition, params)) = crate::lookup::identity_condition(session, model, entity, key).await? else { return Ok(None) };
    let dialect = session.dialect();
    let lock = feedsync_db::for_update(dialect);
    let sql = format!("SELECT * FROM {} WHERE {condition}{lock}", quote_ident(dialect, table));
    match session.query(&sql, &params).await?.into_iter().next() {
        Some(row) => Ok(Some(crate::lookup::render(session, model, entity, key, &row, cache).await?)),
        None => Ok(None),
    }
}

/// An item holding the local state of an entity.
pub async fn local_item(session: &mut Session, model: &Model, seq: i64, table: &str, key: &str, cache: &mut LookupCache) -> DbResult<Item> {
    let category = model.entity(table).map(|e| e.category.clone()).unwrap_or_default();
    let resource = current(session, model, table, key, cache).await?;
    Ok(Item { seq, table: table.into(), key: key.into(), category, resource, base: None })
}

pub async fn load_base(session: &mut Session, table: &str, key: &str) -> DbResult<Option<Base>> {
    let rows = session.query(&format!("SELECT hash, body FROM {BASE_TABLE} WHERE table_name = ? AND entity_key = ?"), &[table.into(), key.into()]).await?;
    Ok(rows.first().map(|r| Base { columns: r.text("body").and_then(|b| serde_json::from_str(&b).ok()) }))
}

pub async fn store_base(session: &mut Session, table: &str, key: &str, version: Option<&Resource>) -> DbResult<()> {
    let (hash, body) = match version {
        Some(r) => (Value::from(r.hash.clone()), Value::from(serde_json::to_string(&r.columns).expect("columns serialize"))),
        None => (Value::Null, Value::Null),
    };
    let upsert = feedsync_core::sql::upsert_suffix(session.dialect(), &["table_name", "entity_key"], &["hash", "body"]);
    let sql = format!("INSERT INTO {BASE_TABLE} (table_name, entity_key, hash, body) VALUES (?, ?, ?, ?){upsert}");
    session.execute(&sql, &[table.into(), key.into(), hash, body]).await?;
    Ok(())
}

// ---- a child's push in flight ----

/// The push sent and not answered yet, if any.
pub async fn outbox(session: &mut Session) -> DbResult<Option<PushRequest>> {
    let rows = session.query(&format!("SELECT push FROM {OUTBOX_TABLE} ORDER BY through_seq DESC LIMIT 1"), &[]).await?;
    Ok(rows.first().and_then(|r| serde_json::from_str(&r.text("push")?).ok()))
}

/// Keeps a push before it is sent (replacing any older one).
pub async fn set_outbox(session: &mut Session, push: &PushRequest) -> DbResult<()> {
    session.execute(&format!("DELETE FROM {OUTBOX_TABLE}"), &[]).await?;
    session
        .execute(
            &format!("INSERT INTO {OUTBOX_TABLE} (through_seq, push) VALUES (?, ?)"),
            &[Value::Int(push.through_seq), serde_json::to_string(push).expect("pushes serialize").into()],
        )
        .await?;
    Ok(())
}

/// Forgets pushes answered up to `position`.
pub async fn clear_outbox(session: &mut Session, position: i64) -> DbResult<()> {
    session.execute(&format!("DELETE FROM {OUTBOX_TABLE} WHERE through_seq <= ?"), &[Value::Int(position)]).await?;
    Ok(())
}

// ---- receiving ----

/// Who is receiving, from whom, under which rules.
pub struct Receiver<'a> {
    pub model: &'a Model,
    /// The side the incoming version comes from (the other side is this node).
    pub from: Side,
    /// The peer's name as conflict records show it (`parent`, or the child's name).
    pub peer: &'a str,
    pub policy: &'a PolicyConfig,
    /// At a parent receiving from a child that holds only its catchment: that child's name.
    /// Its writes to patients outside the catchment are held, not applied (`None`: the peer
    /// may write every patient, as a parent or an `--all-patients` child may).
    pub catchment_of: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// The merged version is now the local one.
    Done { result: Option<Resource>, conflict_id: Option<i64>, changed: bool },
    /// Referenced rows are not here yet; nothing was written.
    Waiting { missing: Vec<(String, String)> },
}

/// Merges an incoming version into the local row and applies the result. Run it inside a
/// savepoint: on `Waiting` or an error nothing is meant to stay written.
pub async fn receive(session: &mut Session, receiver: &Receiver<'_>, incoming: &Item, base: Option<&Base>, cache: &mut LookupCache) -> Result<Received, ApplyError> {
    let model = receiver.model;
    let Some(entity) = model.entity(&incoming.table) else {
        // Not published here (an older OpenMRS, or excluded): nothing to merge into.
        return Ok(Received::Done { result: incoming.resource.clone(), conflict_id: None, changed: false });
    };
    let db_error = |e| ApplyError::Unavailable { table: incoming.table.clone(), key: incoming.key.clone(), message: format!("{e}") };
    // Locked: a local write committing between this read and the write below would be lost.
    let mine = current_locked(session, model, &incoming.table, &incoming.key, cache).await.map_err(db_error)?;
    // Compare only columns this database has: a column an older OpenMRS lacks is neither
    // changed nor merged here.
    let local_columns: std::collections::BTreeSet<&str> = entity.columns.iter().map(|c| c.name.as_str()).collect();
    let keep = |fields: &Fields| -> Fields { fields.iter().filter(|(k, _)| local_columns.contains(k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect() };
    let version = |r: &Option<Resource>| match r {
        Some(r) => Version::Present(keep(&r.columns)),
        None => Version::Absent,
    };
    let mine_version = version(&mine);
    let theirs_version = version(&incoming.resource);
    let base_version = base.map(|b| match &b.columns {
        Some(c) => Version::Present(keep(c)),
        None => Version::Absent,
    });
    let (parent, child) = match receiver.from {
        Side::Child => (&mine_version, &theirs_version),
        Side::Parent => (&theirs_version, &mine_version),
    };
    let policy = receiver.policy.policy(&entity.category);
    let merged = merge::merge(base_version.as_ref(), parent, child, policy, merge::OPENMRS_AUDIT_FIELDS);
    let changed = merged.result != mine_version;
    let result: Option<Resource> = match &merged.result {
        Version::Absent => None,
        Version::Present(fields) if !changed => Some(Resource { hash: content_hash(fields), columns: fields.clone(), ..mine.clone().expect("present") }),
        Version::Present(fields) => {
            // Columns only the incoming side has (this database lacks them) travel on so the
            // sender's apply warnings stay the same.
            let mut columns = fields.clone();
            if let Some(theirs) = &incoming.resource {
                for (k, v) in &theirs.columns {
                    columns.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            Some(Resource { table: incoming.table.clone(), category: entity.category.clone(), key: incoming.key.clone(), hash: content_hash(&columns), columns })
        }
    };
    if changed {
        let applied = match &result {
            Some(r) => apply::apply_resource(session, model, r).await?,
            None => {
                let tombstone = Tombstone { table: incoming.table.clone(), category: entity.category.clone(), key: incoming.key.clone(), deleted: true, deleted_at: String::new() };
                apply::apply_tombstone(session, model, &tombstone).await?
            }
        };
        if let Applied::Waiting { missing } = applied {
            return Ok(Received::Waiting { missing });
        }
    }
    let conflict_id = if merged.conflicts.is_empty() && !merged.entity_conflict {
        None
    } else {
        let site_side = match receiver.from {
            Side::Child => Side::Parent,
            Side::Parent => Side::Child,
        };
        let record = NewConflict {
            table: &incoming.table,
            key: &incoming.key,
            category: &entity.category,
            site_side,
            peer: receiver.peer,
            merge: &merged,
            base: base_version.as_ref(),
            parent,
            child,
        };
        Some(record_conflict(session, &record).await.map_err(db_error)?)
    };
    Ok(Received::Done { result, conflict_id, changed })
}

// ---- conflicts ----

struct NewConflict<'a> {
    table: &'a str,
    key: &'a str,
    category: &'a str,
    site_side: Side,
    peer: &'a str,
    merge: &'a merge::Merge,
    base: Option<&'a Version>,
    parent: &'a Version,
    child: &'a Version,
}

fn version_json(version: Option<&Version>) -> Value {
    match version {
        Some(Version::Present(fields)) => serde_json::to_string(fields).expect("fields serialize").into(),
        _ => Value::Null,
    }
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Parent => "parent",
        Side::Child => "child",
    }
}

async fn record_conflict(session: &mut Session, c: &NewConflict<'_>) -> DbResult<i64> {
    let fields: Vec<&str> = c.merge.conflicts.iter().map(|f| f.field.as_str()).collect();
    let winner = c.merge.conflicts.first().map(|f| f.winner).unwrap_or_else(|| if c.merge.result == *c.parent { Side::Parent } else { Side::Child });
    session
        .execute(
            &format!(
                "INSERT INTO {CONFLICT_TABLE} (table_name, entity_key, category, site_side, peer, winner, entity_conflict, fields, base, \
                 parent_version, child_version, result) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ),
            &[
                c.table.into(),
                c.key.into(),
                c.category.into(),
                side_name(c.site_side).into(),
                c.peer.into(),
                side_name(winner).into(),
                Value::Int(c.merge.entity_conflict as i64),
                serde_json::to_string(&fields).expect("names serialize").into(),
                version_json(c.base),
                version_json(Some(c.parent)),
                version_json(Some(c.child)),
                version_json(Some(&c.merge.result)),
            ],
        )
        .await?;
    let id = session.last_insert_id().await?;
    tracing::warn!(table = c.table, key = c.key, peer = c.peer, fields = ?fields, conflict = id, "conflict: both sides changed; the losing values are kept in the conflict record");
    Ok(id)
}

fn parse_fields(text: Option<String>) -> Option<Fields> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

fn conflict_from_row(r: &feedsync_db::Row) -> Conflict {
    Conflict {
        id: r.i64("conflict_id").unwrap_or_default(),
        table: r.text("table_name").unwrap_or_default(),
        key: r.text("entity_key").unwrap_or_default(),
        category: r.text("category").unwrap_or_default(),
        site_side: r.text("site_side").unwrap_or_default(),
        peer: r.text("peer").unwrap_or_default(),
        detected_at: r.text("detected_at").unwrap_or_default(),
        winner: r.text("winner").unwrap_or_default(),
        entity_conflict: r.i64("entity_conflict").unwrap_or_default() != 0,
        fields: r.text("fields").and_then(|f| serde_json::from_str(&f).ok()).unwrap_or_default(),
        base: parse_fields(r.text("base")),
        parent_version: parse_fields(r.text("parent_version")),
        child_version: parse_fields(r.text("child_version")),
        result: parse_fields(r.text("result")),
        status: r.text("status").unwrap_or_default(),
        resolution: r.text("resolution"),
    }
}

/// Conflict records, newest first; only open ones unless `all`.
pub async fn list_conflicts(session: &mut Session, all: bool, limit: i64) -> DbResult<Vec<Conflict>> {
    let filter = if all { "" } else { "WHERE status = 'open'" };
    let rows = session.query(&format!("SELECT * FROM {CONFLICT_TABLE} {filter} ORDER BY conflict_id DESC LIMIT {}", limit.clamp(1, 100_000)), &[]).await?;
    Ok(rows.iter().map(conflict_from_row).collect())
}

pub async fn conflict(session: &mut Session, id: i64) -> DbResult<Option<Conflict>> {
    let rows = session.query(&format!("SELECT * FROM {CONFLICT_TABLE} WHERE conflict_id = ?"), &[Value::Int(id)]).await?;
    Ok(rows.first().map(conflict_from_row))
}

/// How an operator resolves a conflict.
#[derive(Debug, Clone, PartialEq)]
pub enum Take {
    /// This database's version as it was in the conflict.
    Mine,
    /// The other side's version.
    Theirs,
    /// Per field, `mine` or `theirs`; other fields keep the current value.
    Fields(BTreeMap<String, FieldTake>),
}

/// `mine` or `theirs`, for one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldTake {
    Mine,
    Theirs,
}

impl Take {
    /// Parses `mine`, `theirs`, or `fields` with `field=mine|theirs` pairs.
    pub fn parse(take: &str, fields: &[String]) -> Result<Take, String> {
        match take {
            "mine" => Ok(Take::Mine),
            "theirs" => Ok(Take::Theirs),
            "fields" => {
                let mut map = BTreeMap::new();
                for pair in fields {
                    let (name, side) = pair.split_once('=').ok_or_else(|| format!("--field {pair:?}: expected NAME=mine or NAME=theirs"))?;
                    let side = match side {
                        "mine" => FieldTake::Mine,
                        "theirs" => FieldTake::Theirs,
                        other => return Err(format!("--field {name}={other}: expected mine or theirs")),
                    };
                    map.insert(name.to_owned(), side);
                }
                if map.is_empty() {
                    return Err("--take fields needs at least one --field NAME=mine|theirs".into());
                }
                Ok(Take::Fields(map))
            }
            other => Err(format!("--take {other:?}: expected mine, theirs or fields")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no conflict #{0} here; `conflicts list` shows the open ones")]
    NotFound(i64),
    #[error("conflict #{0} is already resolved ({1})")]
    AlreadyResolved(i64, String),
    #[error("conflict #{id}: field {field:?} is not part of this entity; its fields are {known}")]
    UnknownField { id: i64, field: String, known: String },
    #[error("conflict #{id}: the chosen version cannot be applied: {message}")]
    Apply { id: i64, message: String },
    #[error("{0}")]
    Database(#[from] feedsync_db::DbError),
}

/// Writes the chosen version as a local change (so it syncs everywhere like any change) and
/// marks the record resolved, in one transaction.
pub async fn resolve_conflict(session: &mut Session, model: &Model, id: i64, take: &Take) -> Result<Option<Resource>, ResolveError> {
    let record = conflict(session, id).await?.ok_or(ResolveError::NotFound(id))?;
    if record.status != "open" {
        return Err(ResolveError::AlreadyResolved(id, record.resolution.unwrap_or_default()));
    }
    let (mine, theirs) = record.mine_theirs();
    let mut cache = LookupCache::default();
    let now = current(session, model, &record.table, &record.key, &mut cache).await?;
    let chosen: Option<Fields> = match take {
        Take::Mine => mine.clone(),
        Take::Theirs => theirs.clone(),
        Take::Fields(choice) => {
            let mut fields = now.as_ref().map(|r| r.columns.clone()).or_else(|| record.result.clone()).unwrap_or_default();
            for (name, side) in choice {
                let from = match side {
                    FieldTake::Mine => mine,
                    FieldTake::Theirs => theirs,
                };
                let known = || fields.keys().cloned().collect::<Vec<_>>().join(", ");
                if !fields.contains_key(name) && !from.as_ref().is_some_and(|f| f.contains_key(name)) {
                    return Err(ResolveError::UnknownField { id, field: name.clone(), known: known() });
                }
                match from.as_ref().and_then(|f| f.get(name)) {
                    Some(v) => fields.insert(name.clone(), v.clone()),
                    None => fields.remove(name),
                };
            }
            Some(fields)
        }
    };
    let category = model.entity(&record.table).map(|e| e.category.clone()).unwrap_or(record.category.clone());
    let resource = chosen.map(|columns| Resource { table: record.table.clone(), category: category.clone(), key: record.key.clone(), hash: content_hash(&columns), columns });
    let apply_error = |message: String| ResolveError::Apply { id, message };
    session.begin().await?;
    let outcome = async {
        let applied = match &resource {
            Some(r) => apply::apply_resource(session, model, r).await,
            None => {
                let t = Tombstone { table: record.table.clone(), category: category.clone(), key: record.key.clone(), deleted: true, deleted_at: String::new() };
                apply::apply_tombstone(session, model, &t).await
            }
        }
        .map_err(|e| apply_error(e.to_string()))?;
        if let Applied::Waiting { missing } = applied {
            return Err(apply_error(format!("it references rows not here: {missing:?}")));
        }
        let resolution = match take {
            Take::Mine => "took mine".to_owned(),
            Take::Theirs => "took theirs".to_owned(),
            Take::Fields(choice) => format!("took fields {}", choice.iter().map(|(f, s)| format!("{f}={}", if *s == FieldTake::Mine { "mine" } else { "theirs" })).collect::<Vec<_>>().join(", ")),
        };
        let now_sql = feedsync_core::sql::now_sql(session.dialect());
        session
            .execute(&format!("UPDATE {CONFLICT_TABLE} SET status = 'resolved', resolution = ?, resolved_at = {now_sql} WHERE conflict_id = ?"), &[resolution.into(), Value::Int(id)])
            .await?;
        Ok::<(), ResolveError>(())
    }
    .await;
    match outcome {
        Ok(()) => {
            session.commit().await?;
            Ok(resource)
        }
        Err(e) => {
            let _ = session.rollback().await;
            Err(e)
        }
    }
}

// ---- inbox: received items that cannot apply yet ----

pub async fn hold(session: &mut Session, peer: &str, item: &Item, reason: &str) -> DbResult<()> {
    session
        .execute(
            &format!("INSERT INTO {INBOX_TABLE} (peer, table_name, entity_key, item, reason) VALUES (?, ?, ?, ?, ?)"),
            &[peer.into(), item.table.clone().into(), item.key.clone().into(), serde_json::to_string(item).expect("items serialize").into(), reason.into()],
        )
        .await?;
    Ok(())
}

/// Drops held items from `peer` for an entity a newer item from the same peer replaces: items
/// carry whole states, so the newer one makes them obsolete (and one bad version never blocks
/// the corrected one). Returns how many were dropped.
pub async fn supersede_held(session: &mut Session, peer: &str, table: &str, key: &str) -> DbResult<u64> {
    session.execute(&format!("DELETE FROM {INBOX_TABLE} WHERE peer = ? AND table_name = ? AND entity_key = ?"), &[peer.into(), table.into(), key.into()]).await
}

pub async fn held_items(session: &mut Session, peer: Option<&str>, limit: i64) -> DbResult<Vec<HeldItem>> {
    let (filter, params): (&str, Vec<Value>) = match peer {
        Some(p) => ("WHERE peer = ?", vec![p.into()]),
        None => ("", vec![]),
    };
    let rows = session.query(&format!("SELECT * FROM {INBOX_TABLE} {filter} ORDER BY inbox_id LIMIT {}", limit.clamp(1, 100_000)), &params).await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            Some(HeldItem {
                id: r.i64("inbox_id")?,
                peer: r.text("peer")?,
                item: serde_json::from_str(&r.text("item")?).ok()?,
                reason: r.text("reason").unwrap_or_default(),
                attempts: r.i64("attempts").unwrap_or_default(),
                received_at: r.text("received_at").unwrap_or_default(),
            })
        })
        .collect())
}

/// What one attempt to apply an item inside its own savepoint gave.
#[derive(Debug)]
pub enum Attempt {
    Done(Received),
    Waiting(String),
    Refused(String),
}

/// Receives one item inside a savepoint: a refusal or a wait undoes only this item. Errors
/// that mean the database is unavailable escape (the caller rolls back the whole message).
pub async fn attempt(session: &mut Session, receiver: &Receiver<'_>, item: &Item, base: Option<&Base>, cache: &mut LookupCache) -> Result<Attempt, ApplyError> {
    // The patient the row belongs to here, before the child's version is applied.
    let before = match receiver.catchment_of {
        Some(_) => Some(patient_here(session, receiver.model, item).await?),
        None => None,
    };
    session.execute_script("SAVEPOINT feedsync_item").await.map_err(|e| unavailable(item, e))?;
    let outcome = match receive(session, receiver, item, base, cache).await {
        // A deadlock has made MySQL roll back the whole transaction, savepoint included:
        // undoing to the savepoint would fail, and that error would hide the cause. The
        // caller rolls the transaction back.
        Err(e) if e.is_retryable() => return Err(e),
        other => other,
    };
    // A child writes only the patients in its catchment (and registers new ones): checked on
    // the row as it was and as it is now, so moving a row to another patient counts too.
    let mut outside: Option<String> = None;
    if let (Some(child), Some(before), Ok(Received::Done { .. })) = (receiver.catchment_of, &before, &outcome) {
        let after = patient_here(session, receiver.model, item).await?;
        let mut outside_patients = Vec::new();
        for patient in catchment_checks(before.as_deref(), after.as_deref(), &item.table) {
            if !in_catchment(session, child, patient).await.map_err(|e| unavailable(item, e))? {
                outside_patients.push(patient.to_owned());
            }
        }
        if let Some(patient) = outside_patients.first() {
            outside = Some(format!(
                "patient {patient} is not in {child}'s catchment: a child writes only the patients it registered, was given or fetched \
                 (`feed-subscriber patient fetch {patient}` at {child} brings it into the catchment; or skip this change)"
            ));
        }
    }
    let undo = outside.is_some() || !matches!(outcome, Ok(Received::Done { .. }));
    if undo {
        session.execute_script("ROLLBACK TO SAVEPOINT feedsync_item").await.map_err(|e| unavailable(item, e))?;
    }
    session.execute_script("RELEASE SAVEPOINT feedsync_item").await.map_err(|e| unavailable(item, e))?;
    if let Some(reason) = outside {
        return Ok(Attempt::Refused(reason));
    }
    match outcome {
        Ok(Received::Waiting { missing }) => {
            let names: Vec<String> = missing.iter().map(|(t, k)| format!("{t}/{k}")).collect();
            Ok(Attempt::Waiting(format!("waiting for rows not here yet: {}", names.join(", "))))
        }
        Ok(done) => Ok(Attempt::Done(done)),
        Err(e) if e.is_retryable() => Err(e),
        Err(e) => Ok(Attempt::Refused(e.to_string())),
    }
}

/// The patients a child's write must have in its catchment: the row's patient before the write
/// and after it, except a patient the write itself registers (a `patient` row that was not
/// here). Pure.
pub fn catchment_checks<'p>(before: Option<&'p str>, after: Option<&'p str>, table: &str) -> Vec<&'p str> {
    let mut patients: Vec<&str> = before.into_iter().collect();
    let registers = table == "patient" && before.is_none();
    if let Some(after) = after
        && before != Some(after)
        && !registers
    {
        patients.push(after);
    }
    patients
}

/// The patient the row an item names belongs to here, if it exists and is patient data.
async fn patient_here(session: &mut Session, model: &Model, item: &Item) -> Result<Option<String>, ApplyError> {
    crate::parent::patient_of(session, model, &item.table, &item.key).await.map_err(|e| ApplyError::Unavailable { table: item.table.clone(), key: item.key.clone(), message: e.to_string() })
}

async fn in_catchment(session: &mut Session, child: &str, patient: &str) -> DbResult<bool> {
    let sql = format!("SELECT 1 AS n FROM {CATCHMENT_TABLE} WHERE child = ? AND patient_uuid = ?");
    Ok(!session.query(&sql, &[child.into(), patient.into()]).await?.is_empty())
}

fn unavailable(item: &Item, e: feedsync_db::DbError) -> ApplyError {
    ApplyError::Unavailable { table: item.table.clone(), key: item.key.clone(), message: e.to_string() }
}

/// Items that wait on rows arriving later in the same message are tried again after the
/// rest, this many passes at most.
pub const PASSES_MAX: usize = 8;

/// Retries held items from `peer`, oldest first, each entity's first item only; applied ones
/// leave the inbox. `on_applied` is told of each (e.g. to store the base). Returns how many
/// applied.
pub async fn retry_held(
    session: &mut Session,
    receiver: &Receiver<'_>,
    peer: &str,
    cache: &mut LookupCache,
    store_bases: bool,
) -> Result<usize, ApplyError> {
    let mut applied_total = 0;
    for _ in 0..PASSES_MAX {
        let mut applied = 0;
        let items = held_items(session, Some(peer), 10_000).await.map_err(|e| ApplyError::Unavailable { table: INBOX_TABLE.into(), key: peer.into(), message: e.to_string() })?;
        let mut blocked: std::collections::HashSet<(String, String)> = Default::default();
        for held in items {
            let entity = (held.item.table.clone(), held.item.key.clone());
            if blocked.contains(&entity) {
                continue;
            }
            let base = if store_bases {
                load_base(session, &held.item.table, &held.item.key).await.map_err(|e| unavailable(&held.item, e))?
            } else {
                held.item.base.clone()
            };
            match attempt(session, receiver, &held.item, base.as_ref(), cache).await? {
                Attempt::Done(_) => {
                    if store_bases {
                        store_base(session, &held.item.table, &held.item.key, held.item.resource.as_ref()).await.map_err(|e| unavailable(&held.item, e))?;
                    }
                    session.execute(&format!("DELETE FROM {INBOX_TABLE} WHERE inbox_id = ?"), &[Value::Int(held.id)]).await.map_err(|e| unavailable(&held.item, e))?;
                    applied += 1;
                }
                Attempt::Waiting(reason) | Attempt::Refused(reason) => {
                    blocked.insert(entity);
                    session
                        .execute(&format!("UPDATE {INBOX_TABLE} SET reason = ?, attempts = attempts + 1 WHERE inbox_id = ?"), &[reason.into(), Value::Int(held.id)])
                        .await
                        .map_err(|e| unavailable(&held.item, e))?;
                }
            }
        }
        applied_total += applied;
        if applied == 0 {
            break;
        }
    }
    Ok(applied_total)
}

/// Records who looked at or fetched which patient (parent side).
pub async fn audit(session: &mut Session, actor: &str, action: &str, patient_uuid: Option<&str>, detail: &str) -> DbResult<()> {
    session
        .execute(
            &format!("INSERT INTO {AUDIT_TABLE} (actor, action, patient_uuid, detail) VALUES (?, ?, ?, ?)"),
            &[actor.into(), action.into(), patient_uuid.map(str::to_owned).into(), detail.into()],
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use feedsync_wire::network::category_allowed;

    #[test]
    fn tokens_name_their_child_and_hash_stably() {
        let token = new_token("facility-1");
        assert_eq!(token_child(&token), Some("facility-1"));
        assert_eq!(token_hash(&token), token_hash(&token.clone()));
        assert_ne!(token_hash(&token), token_hash(&new_token("facility-1")));
        assert_eq!(token_child("no-dot-here"), None);
        assert_eq!(token_child("bad name.x"), None);
        assert!(hashes_equal("abc", "abc") && !hashes_equal("abc", "abd") && !hashes_equal("abc", "ab"));
    }

    #[test]
    fn origins_and_names() {
        assert!(is_network_origin("parent") && is_network_origin("child:x") && !is_network_origin("feed:abc"));
        assert!(valid_child_name("kigali_01") && !valid_child_name("") && !valid_child_name("a/b") && !valid_child_name(&"x".repeat(65)));
        assert!(category_allowed(&["*".into()], "obs") && category_allowed(&["obs".into()], "obs") && !category_allowed(&["person".into()], "obs"));
        // A child's write is checked against the patient before and after, except a patient
        // the write registers.
        assert_eq!(catchment_checks(Some("p1"), Some("p1"), "person_name"), vec!["p1"]);
        assert_eq!(catchment_checks(Some("p1"), Some("p2"), "obs"), vec!["p1", "p2"], "moving a row to another patient");
        assert_eq!(catchment_checks(None, Some("p2"), "encounter"), vec!["p2"], "a new row for an existing patient");
        assert_eq!(catchment_checks(None, Some("p3"), "patient"), Vec::<&str>::new(), "registering a new patient");
        assert_eq!(catchment_checks(Some("p3"), Some("p3"), "patient"), vec!["p3"], "editing an existing one");
        assert_eq!(catchment_checks(None, None, "location"), Vec::<&str>::new(), "metadata");
        // Accounts, roles and privileges need an explicit grant: `*` is not one.
        for privileged in feedsync_wire::network::PRIVILEGED_CATEGORIES {
            assert!(!category_allowed(&["*".into()], privileged), "{privileged}");
            assert!(category_allowed(&[privileged.into()], privileged) && category_allowed(&["*".into(), "privileged".into()], privileged), "{privileged}");
            assert!(!category_allowed(&["privileged".into()], "obs"), "the grant is not a wildcard");
        }
    }

    #[test]
    fn take_parses_with_clear_errors() {
        assert_eq!(Take::parse("mine", &[]), Ok(Take::Mine));
        assert!(matches!(Take::parse("fields", &["given_name=theirs".into()]), Ok(Take::Fields(m)) if m["given_name"] == FieldTake::Theirs));
        assert!(Take::parse("fields", &[]).unwrap_err().contains("--field"));
        assert!(Take::parse("fields", &["x=both".into()]).unwrap_err().contains("mine or theirs"));
        assert!(Take::parse("newest", &[]).unwrap_err().contains("mine, theirs or fields"));
    }
}
