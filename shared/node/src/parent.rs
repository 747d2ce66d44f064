//! The parent's side of the network, without HTTP: registered children and their tokens, the
//! per-child change page filtered to the child's catchment, merging and applying a child's
//! push, catchment rules, patient fetch, operator commands and children's reports. Refusals are
//! [`ParentError`]s in the network's terms; the publisher's HTTP edge turns them into status
//! codes, and the USB import into its own reasons.
//!
//! Catchment: metadata (rows that belong to no patient, and the person rows of users and
//! providers) goes to every child; a patient's rows go to a child only when the patient is in
//! its catchment: registered or written there (added when the child pushes the patient's
//! rows), fetched there, or every patient for a child registered with `--all-patients`.

use std::collections::{BTreeMap, HashSet};


use crate::apply::ApplyError;
use crate::capture::{self, EVENT_TABLE};
use crate::exchange::{self, AUDIT_TABLE, Attempt, CATCHMENT_TABLE, CHILD_TABLE, CHILD_TOKEN_TABLE, COMMAND_TABLE, Receiver};
use crate::lookup::LookupCache;
use feedsync_core::merge::Side;
use feedsync_core::model::{Model, RowSource};
use feedsync_db::{DbError, Session, Value, for_update, insert_ignore, quote_ident};
pub use feedsync_wire::network::{ADDRESS_COLUMNS, CatchmentRules, Child};
use feedsync_wire::network::{Changes, ChildReport, Command, CommandAction, ITEMS_PER_MESSAGE_MAX, Item, PatientQuery, PolicyConfig, PushRequest, PushResponse, PushResult, PushStatus, Record};

/// Why the parent refused or could not do what a child asked. Each says what happened; the
/// edge that received the request chooses how to answer (a status code, a USB import's reason).
#[derive(Debug, thiserror::Error)]
pub enum ParentError {
    #[error("push holds {items} items; at most {ITEMS_PER_MESSAGE_MAX}")]
    PushTooLarge { items: usize },
    #[error("item {table}/{key}: table {table:?} is not published here")]
    UnknownTable { table: String, key: String },
    #[error("item {table}/{key}: its resource names another entity or the key is empty")]
    WrongResource { table: String, key: String },
    #[error("child {child} may not write category {category:?} (item {table}/{key}); it may write: {}", allowed.join(", "))]
    CategoryNotAllowed { child: String, category: String, table: String, key: String, allowed: Vec<String> },
    #[error("no patient with uuid {uuid:?} here")]
    NoSuchPatient { uuid: String },
    #[error("a patient fetch needs a reason (1 to {FETCH_REASON_CHARS_MAX} characters), kept in the parent's audit log")]
    FetchReasonMissing,
    #[error("child {child} fetched {fetched} patients in the last hour, the most allowed ({max}); the next one is allowed as the hour moves on")]
    FetchRateExceeded { child: String, fetched: i64, max: u32 },
    #[error("a patient search by name needs {missing} too: a name alone would list every patient of that name in the network")]
    SearchTooBroad { missing: &'static str },
    /// Retrying what waits in the inbox failed: the database is unavailable or busy.
    #[error("{0}")]
    Apply(ApplyError),
    #[error("{0}")]
    Database(#[from] DbError),
}

impl ParentError {
    /// What the child (or its operator) can do about it.
    pub fn hint(&self) -> &'static str {
        match self {
            ParentError::PushTooLarge { .. } => "send fewer items per push",
            ParentError::UnknownTable { .. } => "push only tables the parent publishes (feed-publisher check lists them)",
            ParentError::WrongResource { .. } => "send each entity's own resource",
            ParentError::CategoryNotAllowed { .. } => "nothing in this push was applied; register the child with that category or stop writing it there",
            ParentError::NoSuchPatient { .. } => "use the uuid a patient search returned",
            ParentError::FetchReasonMissing => "send {\"reason\": \"...\"} (feed-subscriber patient fetch --reason \"...\"), e.g. \"transferred in, referral letter 2231\"",
            ParentError::FetchRateExceeded { .. } => "fetch fewer patients at once, or ask the parent's operator to raise limits.patient_fetches_per_child_per_hour_max",
            ParentError::SearchTooBroad { .. } => {
                "search by one identifier, or by name with birth date (YYYY-MM-DD; a year either side is searched) and gender M/F/O/U, e.g. `Mary Uwimana 1990-04-12 F`"
            }
            ParentError::Apply(_) => "the parent's database is unavailable or busy; the child retries the push",
            ParentError::Database(e) if e.is_retryable() => "the database is unreachable; retry later",
            ParentError::Database(_) => "see the publisher's log",
        }
    }

    /// Whether the same request may succeed later unchanged.
    pub fn is_retryable(&self) -> bool {
        match self {
            ParentError::Apply(_) => true,
            ParentError::Database(e) => e.is_retryable(),
            _ => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("invalid child name {0:?}: use 1 to 64 letters, digits, '-' or '_'")]
    BadName(String),
    #[error("a child named {0:?} is already registered; `child list` shows it, `child rotate` gives it a new token, `child revoke` ends it")]
    Exists(String),
    #[error("no child named {0:?}; `child list` shows the registered children")]
    Unknown(String),
    #[error("{0}")]
    Database(#[from] feedsync_db::DbError),
}

/// Longest reason a patient fetch may carry.
pub const FETCH_REASON_CHARS_MAX: usize = 500;

/// A fetch's reason, trimmed, if it is one: not empty, at most [`FETCH_REASON_CHARS_MAX`].
pub fn fetch_reason(reason: Option<&str>) -> Result<&str, ParentError> {
    let reason = reason.map(str::trim).unwrap_or_default();
    if reason.is_empty() || reason.chars().count() > FETCH_REASON_CHARS_MAX {
        return Err(ParentError::FetchReasonMissing);
    }
    Ok(reason)
}

/// Refuses a child's next patient fetch when it fetched `max` or more in the last hour (read
/// from the audit log, so a restart forgets nothing).
pub async fn check_fetch_rate(session: &mut Session, child: &str, max: u32) -> Result<(), ParentError> {
    let since = feedsync_core::sql::now_plus_ms_sql(session.dialect(), -3_600_000);
    let sql = format!("SELECT COUNT(*) AS n FROM {AUDIT_TABLE} WHERE actor = ? AND action = 'patient-fetch' AND at > {since}");
    let fetched = session.query(&sql, &[child.into()]).await?.first().and_then(|r| r.i64("n")).unwrap_or_default();
    if fetched >= i64::from(max) {
        return Err(ParentError::FetchRateExceeded { child: child.into(), fetched, max });
    }
    Ok(())
}

/// Whether a child may run this patient search at the parent: by one identifier, or by name
/// with birth date and gender. A name alone would let any facility list every patient of that
/// name in the country (the operator at the parent's dashboard may still search by name).
pub fn check_child_search(query: &PatientQuery) -> Result<(), ParentError> {
    match query {
        PatientQuery::Identifier(_) => Ok(()),
        PatientQuery::Name { birthdate: None, gender: None, .. } => Err(ParentError::SearchTooBroad { missing: "the birth date and gender" }),
        PatientQuery::Name { birthdate: None, .. } => Err(ParentError::SearchTooBroad { missing: "the birth date" }),
        PatientQuery::Name { gender: None, .. } => Err(ParentError::SearchTooBroad { missing: "the gender" }),
        PatientQuery::Name { .. } => Ok(()),
    }
}

/// Registers a child and returns its token (shown once; only its hash is kept).
pub async fn add_child(session: &mut Session, name: &str, categories: &[String], all_patients: bool) -> Result<String, AdminError> {
    add_child_with_rules(session, name, categories, all_patients, &CatchmentRules::default()).await
}

/// Registers a child whose catchment also holds the patients `rules` match. A name revoked
/// earlier may be registered again (a facility reinstalled, a token lost): it starts afresh
/// (positions, report, earlier tokens gone) and keeps its catchment, so its patients come back.
pub async fn add_child_with_rules(session: &mut Session, name: &str, categories: &[String], all_patients: bool, rules: &CatchmentRules) -> Result<String, AdminError> {
    if !exchange::valid_child_name(name) {
        return Err(AdminError::BadName(name.into()));
    }
    prepare(session).await?;
    let existing = session.query(&format!("SELECT revoked_at FROM {CHILD_TABLE} WHERE name = ?"), &[name.into()]).await?;
    if existing.first().is_some_and(|r| r.text("revoked_at").is_none()) {
        return Err(AdminError::Exists(name.into()));
    }
    let token = exchange::new_token(name);
    let categories = if categories.is_empty() { "*".to_owned() } else { categories.join(",") };
    if !existing.is_empty() {
        session.execute(&format!("DELETE FROM {CHILD_TOKEN_TABLE} WHERE child = ?"), &[name.into()]).await?;
        session
            .execute(
                &format!(
                    "UPDATE {CHILD_TABLE} SET token_hash = ?, categories = ?, all_patients = ?, rules = ?, revoked_at = NULL, acked_seq = 0, \
                     pulled_after = NULL, last_contact = NULL, report = NULL, reported_at = NULL, rules_checked_seq = 0 WHERE name = ?"
                ),
                &[
                    exchange::token_hash(&token).into(),
                    categories.into(),
                    Value::Int(all_patients as i64),
                    serde_json::to_string(rules).expect("rules serialize").into(),
                    name.into(),
                ],
            )
            .await?;
        return Ok(token);
    }
    session
        .execute(
            &format!("INSERT INTO {CHILD_TABLE} (name, token_hash, categories, all_patients, rules) VALUES (?, ?, ?, ?, ?)"),
            &[
                name.into(),
                exchange::token_hash(&token).into(),
                categories.into(),
                Value::Int(all_patients as i64),
                serde_json::to_string(rules).expect("rules serialize").into(),
            ],
        )
        .await?;
    Ok(token)
}

pub async fn revoke_child(session: &mut Session, name: &str) -> Result<(), AdminError> {
    prepare(session).await?;
    let now = feedsync_core::sql::now_sql(session.dialect());
    let n = session.execute(&format!("UPDATE {CHILD_TABLE} SET revoked_at = {now} WHERE name = ? AND revoked_at IS NULL"), &[name.into()]).await?;
    if n == 0 {
        return Err(AdminError::Unknown(name.into()));
    }
    // Its earlier tokens end with it.
    session.execute(&format!("DELETE FROM {CHILD_TOKEN_TABLE} WHERE child = ?"), &[name.into()]).await?;
    Ok(())
}

/// Longest overlap a rotation may give the old token.
pub const ROTATION_OVERLAP_S_MAX: u64 = 30 * 86_400;

/// Gives a registered child a new token and returns it; the old one stays valid for
/// `overlap_s` more seconds (0: it ends now), so the child's operator can switch without a gap.
pub async fn rotate_child_token(session: &mut Session, name: &str, overlap_s: u64) -> Result<String, AdminError> {
    prepare(session).await?;
    let Some((child, old_hash)) = child_by_name(session, name).await? else { return Err(AdminError::Unknown(name.into())) };
    if child.revoked_at.is_some() {
        return Err(AdminError::Unknown(name.into()));
    }
    let token = exchange::new_token(name);
    let dialect = session.dialect();
    session.begin().await?;
    let outcome = async {
        session.execute(&format!("DELETE FROM {CHILD_TOKEN_TABLE} WHERE valid_until < {}", feedsync_core::sql::now_sql(dialect)), &[]).await?;
        if overlap_s > 0 {
            let until = feedsync_core::sql::now_plus_ms_sql(dialect, (overlap_s.min(ROTATION_OVERLAP_S_MAX) * 1_000) as i64);
            session.execute(&format!("INSERT INTO {CHILD_TOKEN_TABLE} (token_hash, child, valid_until) VALUES (?, ?, {until})"), &[old_hash.into(), name.into()]).await?;
        }
        session.execute(&format!("UPDATE {CHILD_TABLE} SET token_hash = ? WHERE name = ?"), &[exchange::token_hash(&token).into(), name.into()]).await?;
        Ok::<(), DbError>(())
    }
    .await;
    match outcome {
        Ok(()) => {
            session.commit().await?;
            Ok(token)
        }
        Err(e) => {
            let _ = session.rollback().await;
            Err(e.into())
        }
    }
}

pub async fn list_children(session: &mut Session) -> Result<Vec<Child>, AdminError> {
    prepare(session).await?;
    let rows = session
        .query(
            &format!(
                "SELECT c.*, (SELECT COUNT(*) FROM {CATCHMENT_TABLE} k WHERE k.child = c.name) AS catchment_patients, \
                 (SELECT COUNT(*) FROM {inbox} i WHERE i.peer = c.name) AS held_items FROM {CHILD_TABLE} c ORDER BY c.name",
                inbox = exchange::INBOX_TABLE
            ),
            &[],
        )
        .await?;
    Ok(rows.iter().map(child_from_row).collect())
}

/// A registered child by name (revoked or not), with its stored token hash.
pub async fn child_by_name(session: &mut Session, name: &str) -> Result<Option<(Child, String)>, AdminError> {
    prepare(session).await?;
    let rows = session.query(&format!("SELECT *, 0 AS catchment_patients, 0 AS held_items FROM {CHILD_TABLE} WHERE name = ?"), &[name.into()]).await?;
    Ok(rows.first().map(|r| (child_from_row(r), r.text("token_hash").unwrap_or_default())))
}

fn child_from_row(r: &feedsync_db::Row) -> Child {
    Child {
        name: r.text("name").unwrap_or_default(),
        categories: r.text("categories").unwrap_or_default().split(',').map(str::to_owned).collect(),
        all_patients: r.i64("all_patients").unwrap_or_default() != 0,
        rules: r.text("rules").and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default(),
        created_at: r.text("created_at").unwrap_or_default(),
        revoked_at: r.text("revoked_at"),
        acked_seq: r.i64("acked_seq").unwrap_or_default(),
        last_contact: r.text("last_contact"),
        catchment_patients: r.i64("catchment_patients").unwrap_or_default(),
        held_items: r.i64("held_items").unwrap_or_default(),
    }
}

/// Creates the network tables if this database predates them (they come with `install`).
pub async fn prepare(session: &mut Session) -> Result<(), feedsync_db::DbError> {
    exchange::prepare_tables(session).await
}


/// The registered, unrevoked child a token belongs to (compared in constant time with the
/// stored hash), noting the contact; `None` for any token not accepted.
pub async fn child_for_token(session: &mut Session, token: &str) -> Result<Option<Child>, DbError> {
    let Some(name) = exchange::token_child(token) else { return Ok(None) };
    let rows = session.query(&format!("SELECT *, 0 AS catchment_patients, 0 AS held_items FROM {CHILD_TABLE} WHERE name = ?"), &[name.into()]).await?;
    let Some(row) = rows.first() else { return Ok(None) };
    let stored = row.text("token_hash").unwrap_or_default();
    let offered = exchange::token_hash(token);
    if row.text("revoked_at").is_some() {
        return Ok(None);
    }
    if !exchange::hashes_equal(&stored, &offered) {
        // An earlier token still within the overlap its rotation gave it.
        let now = feedsync_core::sql::now_sql(session.dialect());
        let earlier = session
            .query(&format!("SELECT child FROM {CHILD_TOKEN_TABLE} WHERE token_hash = ? AND child = ? AND valid_until > {now}"), &[offered.into(), name.into()])
            .await?;
        if earlier.is_empty() {
            return Ok(None);
        }
    }
    let now = feedsync_core::sql::now_sql(session.dialect());
    session.execute(&format!("UPDATE {CHILD_TABLE} SET last_contact = {now} WHERE name = ?"), &[name.into()]).await?;
    Ok(Some(child_from_row(row)))
}

// ---- operator commands and child reports ----

/// Queues an operator's action for a child's next round; returns the command's number.
pub async fn queue_command(session: &mut Session, child: &str, action: &CommandAction, actor: &str) -> Result<i64, AdminError> {
    prepare(session).await?;
    if child_by_name(session, child).await?.is_none() {
        return Err(AdminError::Unknown(child.into()));
    }
    let text = serde_json::to_string(action).expect("actions serialize");
    session.execute(&format!("INSERT INTO {COMMAND_TABLE} (child, action, actor) VALUES (?, ?, ?)"), &[child.into(), text.clone().into(), actor.into()]).await?;
    let id = session.last_insert_id().await?;
    exchange::audit(session, actor, "command", None, &format!("child {child}: #{id} {text}")).await?;
    Ok(id)
}

pub async fn pending_commands(session: &mut Session, child: &str) -> Result<Vec<Command>, ParentError> {
    Ok(session
        .query(&format!("SELECT command_id, action FROM {COMMAND_TABLE} WHERE child = ? AND done_at IS NULL ORDER BY command_id LIMIT 100"), &[child.into()])
        .await?
        .iter()
        .filter_map(|r| Some(Command { id: r.i64("command_id")?, action: serde_json::from_str(&r.text("action")?).ok()? }))
        .collect())
}

/// Keeps a child's latest report and closes the commands it carried out.
pub async fn store_report(session: &mut Session, child: &str, report: &ChildReport) -> Result<(), ParentError> {
    let now = feedsync_core::sql::now_sql(session.dialect());
    let text = serde_json::to_string(report).expect("reports serialize");
    session
        .execute(&format!("UPDATE {CHILD_TABLE} SET report = ?, reported_at = {now} WHERE name = ?"), &[text.into(), child.into()])
        .await?;
    for done in &report.done_commands {
        let closed = session
            .execute(
                &format!("UPDATE {COMMAND_TABLE} SET done_at = {now}, ok = ?, message = ? WHERE command_id = ? AND child = ? AND done_at IS NULL"),
                &[Value::Int(done.ok as i64), done.message.as_str().into(), Value::Int(done.id), child.into()],
            )
            .await?;
        if closed == 1 {
            exchange::audit(session, child, "command-done", None, &format!("#{} {}: {}", done.id, if done.ok { "done" } else { "failed" }, done.message)).await?;
        }
    }
    Ok(())
}

/// A child's latest report, if it sent one.
pub async fn child_report(session: &mut Session, child: &str) -> Result<Option<(ChildReport, String)>, AdminError> {
    prepare(session).await?;
    let rows = session.query(&format!("SELECT report, reported_at FROM {CHILD_TABLE} WHERE name = ?"), &[child.into()]).await?;
    Ok(rows.first().and_then(|r| Some((serde_json::from_str(&r.text("report")?).ok()?, r.text("reported_at").unwrap_or_default()))))
}

/// Drops an item held here (pushed by a child) with the operator's reason, kept in the audit
/// log. The child's later versions of the entity apply as usual.
pub async fn skip_held(session: &mut Session, held_id: i64, reason: &str, actor: &str) -> Result<bool, AdminError> {
    prepare(session).await?;
    let Some(item) = exchange::held_items(session, None, 100_000).await?.into_iter().find(|h| h.id == held_id) else { return Ok(false) };
    session.execute(&format!("DELETE FROM {} WHERE inbox_id = ?", exchange::INBOX_TABLE), &[Value::Int(held_id)]).await?;
    exchange::audit(session, actor, "skip-held", None, &format!("held #{held_id} from {} ({} {}): {reason}", item.peer, item.item.table, item.item.key)).await?;
    Ok(true)
}

pub async fn last_seq(session: &mut Session) -> Result<i64, ParentError> {
    let rows = session.query(&format!("SELECT COALESCE(MAX(event_seq), 0) AS n FROM {EVENT_TABLE}"), &[]).await?;
    Ok(rows.first().and_then(|r| r.i64("n")).unwrap_or_default())
}

/// Events read per change page at most, per source (metadata, catchment).
const EVENTS_SCANNED_MAX: i64 = 5_000;

/// The child's next page of changes: events after `after`, minus the child's own, minus
/// patients outside its catchment, each entity once with its current state.
///
/// Cost grows with the child's catchment, not the network: metadata events (no patient tag)
/// and the events of each catchment patient are read through the (patient_uuid, event_seq)
/// index, so other children's patients are never scanned. A child registered with
/// `--all-patients` reads every event instead.
pub async fn changes(session: &mut Session, model: &Model, child: &Child, after: i64, limit: usize) -> Result<Changes, ParentError> {
    changes_read(session, model, child, after, limit, Confirm::UpTo).await
}

/// Whether reading a page confirms that the child applied everything up to its `after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirm {
    /// The child asked (online, or the first page of a USB reply): it applied up to `after`.
    UpTo,
    /// A page read ahead for the child (a USB reply's later pages): confirms nothing.
    Nothing,
}

/// [`changes`], saying whether the read confirms the child's position.
pub async fn changes_read(session: &mut Session, model: &Model, child: &Child, after: i64, limit: usize, confirm: Confirm) -> Result<Changes, ParentError> {
    let columns = "e.event_seq AS event_seq, e.table_name AS table_name, e.entity_key AS entity_key, e.origin AS origin";
    // What is committed now bounds the page: the sequencer commits events in order.
    let newest = last_seq(session).await?;
    // Asking for changes after `after` confirms everything up to it was applied.
    if confirm == Confirm::UpTo {
        session.execute(&format!("UPDATE {CHILD_TABLE} SET pulled_after = ? WHERE name = ?"), &[Value::Int(after), child.name.as_str().into()]).await?;
    }
    let sources: Vec<(String, Vec<Value>)> = if child.all_patients {
        vec![(format!("SELECT {columns} FROM {EVENT_TABLE} e WHERE e.event_seq > ? AND e.event_seq <= ? ORDER BY e.event_seq LIMIT {EVENTS_SCANNED_MAX}"), vec![Value::Int(after), Value::Int(newest)])]
    } else {
        vec![
            (
                format!("SELECT {columns} FROM {EVENT_TABLE} e WHERE e.patient_uuid IS NULL AND e.event_seq > ? AND e.event_seq <= ? ORDER BY e.event_seq LIMIT {EVENTS_SCANNED_MAX}"),
                vec![Value::Int(after), Value::Int(newest)],
            ),
            (
                format!(
                    "SELECT {columns} FROM {CATCHMENT_TABLE} c JOIN {EVENT_TABLE} e ON e.patient_uuid = c.patient_uuid AND e.event_seq > ? AND e.event_seq <= ? \
                     WHERE c.child = ? ORDER BY e.event_seq LIMIT {EVENTS_SCANNED_MAX}"
                ),
                vec![Value::Int(after), Value::Int(newest), child.name.as_str().into()],
            ),
        ]
    };
    // A source that filled its limit may have more after its last event: the page can only
    // cover up to the smallest such event.
    let mut through = newest;
    let mut events: Vec<(i64, String, String, Option<String>)> = Vec::new();
    for (sql, params) in &sources {
        let rows = session.query(sql, params).await?;
        if rows.len() as i64 == EVENTS_SCANNED_MAX
            && let Some(last) = rows.last().and_then(|r| r.i64("event_seq"))
        {
            through = through.min(last);
        }
        events.extend(rows.iter().map(|r| {
            (r.i64("event_seq").unwrap_or_default(), r.text("table_name").unwrap_or_default(), r.text("entity_key").unwrap_or_default(), r.text("origin"))
        }));
    }
    events.sort_by_key(|e| e.0);
    let own = exchange::child_origin(&child.name);
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let mut wanted: Vec<(i64, String, String)> = Vec::new();
    for (seq, table, key, origin) in events {
        if seq > through {
            break;
        }
        if origin.as_deref() == Some(own.as_str()) {
            continue;
        }
        if seen.insert((table.clone(), key.clone())) {
            if wanted.len() == limit {
                // The page is full: it ends just before this event.
                through = seq - 1;
                break;
            }
            wanted.push((seq, table, key));
        }
    }
    let mut cache = LookupCache::default();
    let mut items = Vec::with_capacity(wanted.len());
    let through = through.max(after);
    // Patients a rule added since: their whole record first, until the child confirms it
    // applied a page carrying it (by asking for changes after that page).
    if !child.all_patients {
        apply_rules(session, child, newest).await?;
        for patient in records_due(session, &child.name, after, confirm).await? {
            let record = patient_record(session, model, &patient, &mut cache).await?;
            items.extend(record);
            session
                .execute(&format!("UPDATE {CATCHMENT_TABLE} SET record_sent_through = ? WHERE child = ? AND patient_uuid = ?"), &[Value::Int(through), child.name.as_str().into(), patient.into()])
                .await?;
            if items.len() >= limit {
                break;
            }
        }
    }
    for (seq, table, key) in wanted {
        items.push(exchange::local_item(session, model, seq, &table, &key, &mut cache).await?);
    }
    Ok(Changes { items, through, more: through < newest })
}

/// The queries reading what waits for a child: its metadata events and its catchment events
/// after the last page it confirmed, minus its own (one query for an all-patients child).
/// Each selects `select` over event alias `e` and ends with `tail` (an ORDER BY, a LIMIT).
async fn waiting_queries(session: &mut Session, child: &Child, select: &str, tail: &str) -> Result<Vec<(String, Vec<Value>)>, ParentError> {
    let after = session
        .query(&format!("SELECT COALESCE(pulled_after, 0) AS n FROM {CHILD_TABLE} WHERE name = ?"), &[child.name.as_str().into()])
        .await?
        .first()
        .and_then(|r| r.i64("n"))
        .unwrap_or_default();
    let own = exchange::child_origin(&child.name);
    let not_own = "(e.origin IS NULL OR e.origin <> ?)";
    if child.all_patients {
        return Ok(vec![(format!("SELECT {select} FROM {EVENT_TABLE} e WHERE e.event_seq > ? AND {not_own} {tail}"), vec![Value::Int(after), own.into()])]);
    }
    Ok(vec![
        (
            format!("SELECT {select} FROM {EVENT_TABLE} e WHERE e.event_seq > ? AND {not_own} AND e.patient_uuid IS NULL {tail}"),
            vec![Value::Int(after), own.as_str().into()],
        ),
        (
            format!(
                "SELECT {select} FROM {CATCHMENT_TABLE} c JOIN {EVENT_TABLE} e ON e.patient_uuid = c.patient_uuid AND e.event_seq > ? \
                 WHERE c.child = ? AND {not_own} {tail}"
            ),
            vec![Value::Int(after), child.name.as_str().into(), own.into()],
        ),
    ])
}

/// Events the child has not received yet, counted the way [`changes`] reads them.
pub async fn waiting_for_child(session: &mut Session, child: &Child) -> Result<i64, ParentError> {
    let mut total = 0;
    for (sql, params) in waiting_queries(session, child, "COUNT(*) AS n", "").await? {
        total += session.query(&sql, &params).await?.first().and_then(|r| r.i64("n")).unwrap_or_default();
    }
    Ok(total)
}

/// When the oldest event waiting for the child was made, if any waits.
pub async fn oldest_waiting_for_child(session: &mut Session, child: &Child) -> Result<Option<String>, ParentError> {
    let mut oldest: Option<(i64, String)> = None;
    for (sql, params) in waiting_queries(session, child, "e.event_seq AS seq, e.changed_at AS at", "ORDER BY e.event_seq LIMIT 1").await? {
        let first = session.query(&sql, &params).await?.first().and_then(|r| Some((r.i64("seq")?, r.text("at")?)));
        if let Some(found) = first
            && oldest.as_ref().is_none_or(|o| found.0 < o.0)
        {
            oldest = Some(found);
        }
    }
    Ok(oldest.map(|(_, at)| at))
}

/// Records of rule-added patients still to send; those whose record went out with a page the
/// child has since confirmed (it asks for changes after it) are done.
async fn records_due(session: &mut Session, child: &str, after: i64, confirm: Confirm) -> Result<Vec<String>, ParentError> {
    if confirm == Confirm::UpTo {
        session
        .execute(
            &format!("UPDATE {CATCHMENT_TABLE} SET needs_record = 0 WHERE child = ? AND needs_record = 1 AND record_sent_through IS NOT NULL AND record_sent_through <= ?"),
            &[child.into(), Value::Int(after)],
        )
        .await?;
    }
    Ok(session
        .query(&format!("SELECT patient_uuid FROM {CATCHMENT_TABLE} WHERE child = ? AND needs_record = 1 ORDER BY added_at, patient_uuid LIMIT 20"), &[child.into()])
        .await?
        .iter()
        .filter_map(|r| r.text("patient_uuid"))
        .collect())
}

/// Adds to the child's catchment the patients its rules match among those with events since
/// the rules were last checked (so each event is looked at once per child with rules).
async fn apply_rules(session: &mut Session, child: &Child, newest: i64) -> Result<(), ParentError> {
    if child.rules.is_empty() {
        return Ok(());
    }
    let checked = session
        .query(&format!("SELECT rules_checked_seq FROM {CHILD_TABLE} WHERE name = ?"), &[child.name.as_str().into()])
        .await?
        .first()
        .and_then(|r| r.i64("rules_checked_seq"))
        .unwrap_or_default();
    if checked >= newest {
        return Ok(());
    }
    let candidates: Vec<String> = session
        .query(
            &format!(
                "SELECT DISTINCT e.patient_uuid AS uuid FROM {EVENT_TABLE} e WHERE e.event_seq > ? AND e.event_seq <= ? AND e.patient_uuid IS NOT NULL \
                 AND NOT EXISTS (SELECT 1 FROM {CATCHMENT_TABLE} c WHERE c.child = ? AND c.patient_uuid = e.patient_uuid)"
            ),
            &[Value::Int(checked), Value::Int(newest), child.name.as_str().into()],
        )
        .await?
        .iter()
        .filter_map(|r| r.text("uuid"))
        .collect();
    for chunk in candidates.chunks(500) {
        let marks = vec!["?"; chunk.len()].join(", ");
        let uuids: Vec<Value> = chunk.iter().map(|u| Value::from(u.as_str())).collect();
        let mut matched: Vec<(String, String)> = Vec::new();
        let person = "FROM person pe JOIN patient pt ON pt.patient_id = pe.person_id";
        for prefix in &child.rules.identifier_prefixes {
            let mut params = uuids.clone();
            params.push(Value::Int(prefix.chars().count() as i64));
            params.push(prefix.as_str().into());
            let sql = format!(
                "SELECT DISTINCT pe.uuid AS uuid {person} JOIN patient_identifier pi ON pi.patient_id = pt.patient_id AND pi.voided = 0 \
                 WHERE pe.uuid IN ({marks}) AND SUBSTR(pi.identifier, 1, ?) = ?"
            );
            matched.extend(session.query(&sql, &params).await?.iter().filter_map(|r| Some((r.text("uuid")?, format!("rule:identifier {prefix}")))));
        }
        for location in &child.rules.locations {
            for (table, column) in [("patient_identifier", "patient_id"), ("visit", "patient_id"), ("encounter", "patient_id")] {
                let mut params = uuids.clone();
                params.push(location.as_str().into());
                let sql = format!(
                    "SELECT DISTINCT pe.uuid AS uuid {person} JOIN {table} x ON x.{column} = pt.patient_id AND x.voided = 0 \
                     JOIN location l ON l.location_id = x.location_id WHERE pe.uuid IN ({marks}) AND l.uuid = ?"
                );
                matched.extend(session.query(&sql, &params).await?.iter().filter_map(|r| Some((r.text("uuid")?, format!("rule:location {location}")))));
            }
        }
        if !child.rules.address.is_empty() {
            let mut params = uuids.clone();
            let mut conditions = Vec::new();
            for (column, value) in &child.rules.address {
                if ADDRESS_COLUMNS.contains(&column.as_str()) {
                    conditions.push(format!("a.{column} = ?"));
                    params.push(value.as_str().into());
                }
            }
            let sql = format!(
                "SELECT DISTINCT pe.uuid AS uuid {person} JOIN person_address a ON a.person_id = pe.person_id AND a.voided = 0 WHERE pe.uuid IN ({marks}) AND {}",
                conditions.join(" AND ")
            );
            matched.extend(session.query(&sql, &params).await?.iter().filter_map(|r| Some((r.text("uuid")?, "rule:address".to_owned()))));
        }
        for (uuid, reason) in matched {
            let sql = format!("{} INTO {CATCHMENT_TABLE} (child, patient_uuid, reason, needs_record) VALUES (?, ?, ?, 1)", insert_ignore(session.dialect()));
            session.execute(&sql, &[child.name.as_str().into(), uuid.into(), reason.chars().take(32).collect::<String>().into()]).await?;
        }
    }
    session.execute(&format!("UPDATE {CHILD_TABLE} SET rules_checked_seq = ? WHERE name = ?"), &[Value::Int(newest), child.name.as_str().into()]).await?;
    Ok(())
}

/// A patient's whole record as items, parents first (in the order rows were first captured).
async fn patient_record(session: &mut Session, model: &Model, uuid: &str, cache: &mut LookupCache) -> Result<Vec<Item>, ParentError> {
    let rows = session
        .query(
            &format!(
                "SELECT table_name, entity_key, MIN(event_seq) AS first_seq FROM {EVENT_TABLE} WHERE patient_uuid = ? \
                 GROUP BY table_name, entity_key ORDER BY first_seq LIMIT {}",
                feedsync_wire::network::RECORD_ROWS_MAX
            ),
            &[uuid.into()],
        )
        .await?;
    let mut items = Vec::with_capacity(rows.len());
    for r in &rows {
        let (Some(table), Some(key)) = (r.text("table_name"), r.text("entity_key")) else { continue };
        let item = exchange::local_item(session, model, 0, &table, &key, cache).await?;
        if item.resource.is_some() {
            items.push(item);
        }
    }
    Ok(items)
}

/// Merges and applies a child's push in one transaction; returns the parent's version of
/// every item. Refuses the whole push (nothing applied) when an item names a table or
/// category the child may not write.
pub async fn push_items(session: &mut Session, model: &Model, policy: &PolicyConfig, child: &Child, push: PushRequest) -> Result<PushResponse, ParentError> {
    if push.items.len() > ITEMS_PER_MESSAGE_MAX {
        return Err(ParentError::PushTooLarge { items: push.items.len() });
    }
    for item in &push.items {
        let Some(entity) = model.entity(&item.table) else {
            return Err(ParentError::UnknownTable { table: item.table.clone(), key: item.key.clone() });
        };
        if !feedsync_wire::network::category_allowed(&child.categories, &entity.category) {
            return Err(ParentError::CategoryNotAllowed { child: child.name.clone(), category: entity.category.clone(), table: item.table.clone(), key: item.key.clone(), allowed: child.categories.clone() });
        }
        if item.key.is_empty() || item.resource.as_ref().is_some_and(|r| r.table != item.table || r.key != item.key) {
            return Err(ParentError::WrongResource { table: item.table.clone(), key: item.key.clone() });
        }
    }
    let origin = exchange::child_origin(&child.name);
    let receiver = Receiver { model, from: Side::Child, peer: &child.name, policy, catchment_of: (!child.all_patients).then_some(child.name.as_str()) };
    let mut cache = LookupCache::default();
    let dialect = session.dialect();
    session.read_committed().await?;
    session.begin().await?;
    let outcome = async {
        capture::set_origin(session, &origin).await?;
        let lock = for_update(dialect);
        let acked = session
            .query(&format!("SELECT acked_seq FROM {CHILD_TABLE} WHERE name = ?{lock}"), &[child.name.as_str().into()])
            .await?
            .first()
            .and_then(|r| r.i64("acked_seq"))
            .unwrap_or_default();
        exchange::retry_held(session, &receiver, &child.name, &mut cache, false).await.map_err(ParentError::Apply)?;
        let mut results: Vec<Option<PushResult>> = vec![None; push.items.len()];
        let mut pending: Vec<usize> = Vec::new();
        for (i, item) in push.items.iter().enumerate() {
            if item.seq <= acked {
                let now = exchange::current(session, model, &item.table, &item.key, &mut cache).await?;
                results[i] = Some(PushResult { table: item.table.clone(), key: item.key.clone(), status: PushStatus::Already, result: now, conflict_id: None, reason: None });
            } else {
                pending.push(i);
            }
        }
        // Items waiting for rows later in the same push get further passes.
        let mut waiting: BTreeMap<usize, String> = BTreeMap::new();
        for pass in 0..exchange::PASSES_MAX {
            let mut progressed = false;
            let mut still = Vec::new();
            for &i in &pending {
                let item = &push.items[i];
                if pass == 0 {
                    exchange::supersede_held(session, &child.name, &item.table, &item.key).await?;
                }
                match exchange::attempt(session, &receiver, item, item.base.as_ref(), &mut cache).await.map_err(ParentError::Apply)? {
                    Attempt::Done(exchange::Received::Done { result, conflict_id, .. }) => {
                        progressed = true;
                        waiting.remove(&i);
                        add_to_catchment(session, model, &child.name, &item.table, &item.key, "wrote").await?;
                        results[i] = Some(PushResult { table: item.table.clone(), key: item.key.clone(), status: PushStatus::Applied, result, conflict_id, reason: None });
                    }
                    Attempt::Done(exchange::Received::Waiting { .. }) => unreachable!("attempt reports waiting as Attempt::Waiting"),
                    Attempt::Waiting(reason) => {
                        waiting.insert(i, reason);
                        still.push(i);
                    }
                    Attempt::Refused(reason) => {
                        waiting.insert(i, reason);
                        if pass + 1 < exchange::PASSES_MAX {
                            still.push(i);
                        }
                    }
                }
            }
            pending = still;
            if !progressed || pending.is_empty() {
                break;
            }
        }
        for (i, reason) in waiting {
            let item = &push.items[i];
            tracing::warn!(child = %child.name, table = %item.table, key = %item.key, %reason, "pushed change held until it can apply");
            exchange::hold(session, &child.name, item, &reason).await?;
            results[i] = Some(PushResult { table: item.table.clone(), key: item.key.clone(), status: PushStatus::Held, result: None, conflict_id: None, reason: Some(reason) });
        }
        let acked_through = acked.max(push.through_seq);
        session.execute(&format!("UPDATE {CHILD_TABLE} SET acked_seq = ? WHERE name = ?"), &[Value::Int(acked_through), child.name.as_str().into()]).await?;
        capture::clear_origin(session).await?;
        Ok::<PushResponse, ParentError>(PushResponse { acked_through, results: results.into_iter().map(|r| r.expect("every item decided")).collect() })
    }
    .await;
    match outcome {
        Ok(response) => {
            session.commit().await?;
            Ok(response)
        }
        Err(e) => {
            let _ = session.rollback().await;
            Err(e)
        }
    }
}


/// Adds the patient a row belongs to (if any) to the child's catchment.
async fn add_to_catchment(session: &mut Session, model: &Model, child: &str, table: &str, key: &str, reason: &str) -> Result<(), ParentError> {
    let Some(patient) = patient_of(session, model, table, key).await? else { return Ok(()) };
    insert_catchment(session, child, &patient, reason).await
}

async fn insert_catchment(session: &mut Session, child: &str, patient: &str, reason: &str) -> Result<(), ParentError> {
    let sql = format!("{} INTO {CATCHMENT_TABLE} (child, patient_uuid, reason) VALUES (?, ?, ?)", insert_ignore(session.dialect()));
    session.execute(&sql, &[child.into(), patient.into(), reason.into()]).await?;
    Ok(())
}

/// The uuid of the patient a row belongs to, if it is patient data.
pub async fn patient_of(session: &mut Session, model: &Model, table: &str, key: &str) -> Result<Option<String>, ParentError> {
    let dialect = session.dialect();
    let Some(entity) = model.entity(table) else { return Ok(None) };
    let Some(patient_sql) = model.patient_sql(dialect, table, &RowSource::Alias("t")) else { return Ok(None) };
    let Some((condition, params)) = crate::lookup::identity_condition(session, model, entity, key).await? else { return Ok(None) };
    let sql = format!("SELECT {patient_sql} AS patient_uuid FROM {} t WHERE {condition}", quote_ident(dialect, table));
    let Some(uuid) = session.query(&sql, &params).await?.first().and_then(|r| r.text("patient_uuid")) else { return Ok(None) };
    let is_patient = !session
        .query("SELECT pt.patient_id FROM person pe JOIN patient pt ON pt.patient_id = pe.person_id WHERE pe.uuid = ?", &[uuid.as_str().into()])
        .await?
        .is_empty();
    Ok(is_patient.then_some(uuid))
}

/// Adds a patient to a child's catchment and returns the whole record, parents first.
pub async fn fetch_patient(session: &mut Session, model: &Model, child: &Child, uuid: &str, reason: &str) -> Result<Record, ParentError> {
    let exists = !session
        .query("SELECT pt.patient_id FROM person pe JOIN patient pt ON pt.patient_id = pe.person_id WHERE pe.uuid = ?", &[uuid.into()])
        .await?
        .is_empty();
    if !exists {
        return Err(ParentError::NoSuchPatient { uuid: uuid.into() });
    }
    insert_catchment(session, &child.name, uuid, "fetched").await?;
    let items = patient_record(session, model, uuid, &mut LookupCache::default()).await?;
    exchange::audit(session, &child.name, "patient-fetch", Some(uuid), &format!("{} rows sent; reason: {reason}", items.len())).await?;
    tracing::info!(child = %child.name, patient = uuid, rows = items.len(), "patient fetched into a child's catchment");
    Ok(Record { patient_uuid: uuid.into(), items })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::parse_query;

    #[test]
    fn a_child_searches_by_identifier_or_by_name_with_birth_date_and_gender() {
        for allowed in ["100000-1", "Mary Uwimana 1990-04-12 F", "F 1990-04-12 Uwimana"] {
            assert_eq!(check_child_search(&parse_query(allowed).unwrap()).map_err(|e| e.to_string()), Ok(()), "{allowed}");
        }
        for (refused, missing) in [("Mercy", "birth date and gender"), ("Mercy Banda F", "the birth date"), ("Mercy 1990-04-12", "the gender")] {
            let error = check_child_search(&parse_query(refused).unwrap()).unwrap_err();
            assert!(error.to_string().contains(missing), "{refused}: {error}");
            assert!(error.hint().contains("1990-04-12 F") && !error.is_retryable(), "{refused}: {}", error.hint());
        }
    }
}
