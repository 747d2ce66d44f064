//! Change capture inside an OpenMRS database: the triggers that journal every committed
//! insert, update and delete on published tables, install (the toolkit's own tables, whose DDL
//! is in `feedsync_db::tables`, then the triggers) with the initial snapshot, uninstall, and
//! the origin marker that tells local changes from applied ones.
//!
//! Why triggers: they see every writer (the OpenMRS API, direct SQL, scripts) on every supported
//! server (MySQL 5.6+, MariaDB 10.x, SQLite) with no binlog configuration and nothing to purge:
//! the journal lives in the same database, inside the writer's transaction, so a publisher down
//! for a week loses nothing. The SQL text is generated here from the model; the statements are
//! run by [`install`] and [`uninstall`].
//!
//! Invariant: every object this module creates is named with [`PREFIX`]; uninstall removes
//! exactly the objects carrying it.

use sha2::{Digest, Sha256};

pub use feedsync_wire::hex;

use feedsync_db::schema::{ObjectKind, list_prefixed};
use feedsync_db::tables::{self, TableSet};
use feedsync_db::{DbResult, Dialect, Session, quote_ident};
use feedsync_core::model::{Entity, Identity, Model, RowSource};

pub use feedsync_db::tables::{EVENT_TABLE, JOURNAL_TABLE, MYSQL_ORIGIN_VARIABLE, ORIGIN_TABLE, PAGE_TABLE, PREFIX, STATE_TABLE};
/// Version of the capture layout; stored at install.
pub const CAPTURE_VERSION: &str = "1";
const MYSQL_IDENTIFIER_LENGTH_MAX: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Insert,
    Update,
    Delete,
}

impl Operation {
    pub const ALL: [Operation; 3] = [Operation::Insert, Operation::Update, Operation::Delete];
    fn suffix(self) -> &'static str {
        match self {
            Operation::Insert => "ai",
            Operation::Update => "au",
            Operation::Delete => "ad",
        }
    }
    fn keyword(self) -> &'static str {
        match self {
            Operation::Insert => "INSERT",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
        }
    }
}

/// A trigger's name: prefix, table, operation; shortened with a hash when MySQL's 64-character
/// limit would be exceeded, so two long table names never collide.
pub fn trigger_name(table: &str, operation: Operation) -> String {
    let name = format!("{PREFIX}{table}_{}", operation.suffix());
    if name.len() <= MYSQL_IDENTIFIER_LENGTH_MAX {
        return name;
    }
    let hash = hex(&Sha256::digest(table.as_bytes())[..4]);
    let keep = MYSQL_IDENTIFIER_LENGTH_MAX - PREFIX.len() - hash.len() - 5;
    let mut cut = keep;
    while !table.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{PREFIX}{}_{hash}_{}", &table[..cut], operation.suffix())
}

/// The action tag of a change, as SQL over the old and new row (`OLD`/`NEW` aliases).
fn action_sql(entity: &Entity, operation: Operation) -> String {
    match operation {
        Operation::Insert => "'CREATED'".into(),
        Operation::Delete => "'DELETED'".into(),
        Operation::Update => {
            let mut arms = Vec::new();
            for (flag, on, off) in [("voided", "VOIDED", "UNVOIDED"), ("retired", "RETIRED", "UNRETIRED")] {
                if entity.has_column(flag) {
                    // COALESCE: a NULL flag counts as not voided/retired, as OpenMRS reads it.
                    arms.push(format!(
                        "WHEN COALESCE(OLD.{flag}, 0) = 0 AND COALESCE(NEW.{flag}, 0) <> 0 THEN '{on}' \
                         WHEN COALESCE(OLD.{flag}, 0) <> 0 AND COALESCE(NEW.{flag}, 0) = 0 THEN '{off}'"
                    ));
                }
            }
            if arms.is_empty() { "'UPDATED'".into() } else { format!("CASE {} ELSE 'UPDATED' END", arms.join(" ")) }
        }
    }
}

fn row_key_sql(dialect: Dialect, entity: &Entity, alias: &str) -> String {
    let columns: Vec<String> = entity
        .primary_key
        .iter()
        .map(|c| format!("{alias}.{}", quote_ident(dialect, c)))
        .collect();
    if columns.is_empty() {
        return "NULL".into();
    }
    feedsync_core::sql::comma_joined(dialect, &columns)
}

/// The journal values for one row: (action, entity_key, row_key, patient_uuid, location_uuid).
fn journal_values(model: &Model, dialect: Dialect, entity: &Entity, alias: &str, action: String) -> String {
    let source = RowSource::Alias(alias);
    let key = model.key_sql(dialect, &entity.table, &source).unwrap_or_else(|| "NULL".into());
    let patient = model.patient_sql(dialect, &entity.table, &source).unwrap_or_else(|| "NULL".into());
    let location = model.location_sql(dialect, &entity.table, &source).unwrap_or_else(|| "NULL".into());
    let row_key = row_key_sql(dialect, entity, alias);
    format!("{action}, {key}, {row_key}, {patient}, {location}")
}

const JOURNAL_COLUMNS: &str = "table_name, action, entity_key, row_key, patient_uuid, location_uuid, origin";

/// The `CREATE TRIGGER` statement for one table and operation.
pub fn trigger_sql(model: &Model, dialect: Dialect, table: &str, operation: Operation) -> Option<String> {
    let entity = model.entity(table)?;
    let alias = if operation == Operation::Delete { "OLD" } else { "NEW" };
    let values = journal_values(model, dialect, entity, alias, action_sql(entity, operation));
    let insert = format!(
        "INSERT INTO {JOURNAL_TABLE} ({JOURNAL_COLUMNS}) VALUES ({}, {values}, {})",
        sql_string(table),
        tables::origin_sql(dialect)
    );
    let name = trigger_name(table, operation);
    let on = quote_ident(dialect, table);
    Some(feedsync_core::sql::create_trigger_sql(dialect, &name, operation.keyword(), &on, &insert))
}

/// The statement journaling every existing row of a table, as the initial snapshot does.
pub fn snapshot_sql(model: &Model, dialect: Dialect, table: &str, action: &str) -> Option<String> {
    let entity = model.entity(table)?;
    let values = journal_values(model, dialect, entity, "t", sql_string(action));
    let order: Vec<String> = entity.primary_key.iter().map(|c| format!("t.{}", quote_ident(dialect, c))).collect();
    let order_by = if order.is_empty() { String::new() } else { format!(" ORDER BY {}", order.join(", ")) };
    Some(format!(
        "INSERT INTO {JOURNAL_TABLE} ({JOURNAL_COLUMNS}) SELECT {}, {values}, NULL FROM {} t{order_by}",
        sql_string(table),
        quote_ident(dialect, table)
    ))
}

pub fn sql_string(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn fingerprint(sql: &str) -> String {
    hex(&Sha256::digest(sql.as_bytes()))
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct InstallReport {
    pub triggers_created: usize,
    pub triggers_unchanged: usize,
    pub triggers_replaced: usize,
    /// Rows journaled by the initial snapshot (or a re-snapshot after a trigger changed).
    pub snapshot_rows: u64,
    pub snapshot_tables: usize,
}

pub async fn state(session: &mut Session, name: &str) -> DbResult<Option<String>> {
    let rows = session.query(&format!("SELECT value FROM {STATE_TABLE} WHERE name = ?"), &[name.into()]).await?;
    Ok(rows.first().and_then(|r| r.text("value")))
}

pub async fn set_state(session: &mut Session, name: &str, value: &str) -> DbResult<()> {
    let upsert = feedsync_core::sql::upsert_suffix(session.dialect(), &["name"], &["value"]);
    let sql = format!("INSERT INTO {STATE_TABLE} (name, value) VALUES (?, ?){upsert}");
    session.execute(&sql, &[name.into(), value.into()]).await?;
    Ok(())
}

/// Prepares a database: toolkit tables, triggers on every published table, and, the first time,
/// a snapshot of every existing row (referenced tables first). Idempotent: a second run changes
/// nothing unless the model changed (then only the changed tables' triggers are replaced and
/// those tables re-snapshotted, which covers any write made while a trigger was being replaced).
pub async fn install(session: &mut Session, model: &Model) -> DbResult<InstallReport> {
    let dialect = session.dialect();
    tables::create(session, TableSet::Capture).await?;
    tables::create(session, TableSet::Network).await?;
    let mut report = InstallReport::default();
    let mut resnapshot = Vec::new();
    // Read what exists once: information_schema.TRIGGERS is slow to query per trigger.
    let present: std::collections::BTreeSet<String> = list_triggers(session).await?.into_iter().collect();
    let fingerprints: std::collections::BTreeMap<String, String> = session
        .query(&format!("SELECT name, value FROM {STATE_TABLE} WHERE name LIKE 'trigger:%'"), &[])
        .await?
        .iter()
        .filter_map(|r| Some((r.text("name")?, r.text("value")?)))
        .collect();
    for table in &model.snapshot_order {
        let mut replaced = false;
        for operation in Operation::ALL {
            let Some(sql) = trigger_sql(model, dialect, table, operation) else { continue };
            let name = trigger_name(table, operation);
            let wanted = fingerprint(&sql);
            let have = fingerprints.get(&format!("trigger:{name}"));
            let exists = present.contains(&name);
            if exists && have == Some(&wanted) {
                report.triggers_unchanged += 1;
                continue;
            }
            if exists {
                session.execute_script(&drop_trigger_sql(dialect, &name)).await?;
                report.triggers_replaced += 1;
                replaced = true;
            } else {
                report.triggers_created += 1;
            }
            session.execute_script(&sql).await?;
            set_state(session, &format!("trigger:{name}"), &wanted).await?;
        }
        if replaced {
            resnapshot.push(table.clone());
        }
    }
    if state(session, "snapshot_done").await?.is_none() {
        report.snapshot_tables = model.snapshot_order.len();
        // INSERT ... SELECT under REPEATABLE READ share-locks every row it reads, which would
        // stall OpenMRS writers for the whole snapshot.
        session.read_committed().await?;
        session.begin().await?;
        let progress = crate::progress::Progress::new("snapshot", "tables", Some(model.snapshot_order.len() as u64));
        let result = async {
            let mut rows = 0;
            for (done, table) in model.snapshot_order.iter().enumerate() {
                progress.update(done as u64, format!("journaling {table}; {} rows so far", crate::progress::thousands(rows)));
                if let Some(sql) = snapshot_sql(model, dialect, table, "CREATED") {
                    rows += session.execute(&sql, &[]).await?;
                }
            }
            drop(progress);
            set_state(session, "snapshot_done", &chrono::Utc::now().to_rfc3339()).await?;
            set_state(session, "capture_version", CAPTURE_VERSION).await?;
            Ok::<u64, feedsync_db::DbError>(rows)
        }
        .await;
        match result {
            Ok(rows) => {
                session.commit().await?;
                report.snapshot_rows = rows;
            }
            Err(e) => {
                let _ = session.rollback().await;
                return Err(e);
            }
        }
    } else {
        for table in &resnapshot {
            if let Some(sql) = snapshot_sql(model, dialect, table, "UPDATED") {
                report.snapshot_rows += session.execute(&sql, &[]).await?;
                report.snapshot_tables += 1;
            }
        }
    }
    Ok(report)
}

fn drop_trigger_sql(dialect: Dialect, name: &str) -> String {
    format!("DROP TRIGGER IF EXISTS {}", quote_ident(dialect, name))
}

/// Every trigger in the database carrying the toolkit's prefix.
pub async fn list_triggers(session: &mut Session) -> DbResult<Vec<String>> {
    list_prefixed(session, ObjectKind::Trigger).await
}

/// Every table in the database carrying the toolkit's prefix (every table of
/// `feedsync_db::tables`, and any an older version left).
pub async fn list_tables(session: &mut Session) -> DbResult<Vec<String>> {
    list_prefixed(session, ObjectKind::Table).await
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct UninstallReport {
    pub triggers_dropped: usize,
    pub tables_dropped: usize,
}

/// Removes exactly what [`install`] added: every trigger and table named with [`PREFIX`].
/// Triggers go first so no OpenMRS write fails on a missing journal table.
pub async fn uninstall(session: &mut Session) -> DbResult<UninstallReport> {
    let dialect = session.dialect();
    let mut report = UninstallReport::default();
    for name in list_triggers(session).await? {
        session.execute_script(&drop_trigger_sql(dialect, &name)).await?;
        report.triggers_dropped += 1;
    }
    for name in list_tables(session).await? {
        session.execute_script(&format!("DROP TABLE IF EXISTS {}", quote_ident(dialect, &name))).await?;
        report.tables_dropped += 1;
    }
    Ok(report)
}

/// Marks the session's following writes as applied from `origin` (a feed or peer name), so
/// the local publisher can tell them from local changes. On SQLite call it inside the write
/// transaction and call [`clear_origin`] before commit.
pub async fn set_origin(session: &mut Session, origin: &str) -> DbResult<()> {
    tables::set_origin(session, origin).await
}

pub async fn clear_origin(session: &mut Session) -> DbResult<()> {
    tables::clear_origin(session).await
}

/// Tables the model publishes that lack one of their triggers (e.g. a module installed after
/// `feed-publisher install`): their changes are not being captured.
pub async fn missing_triggers(session: &mut Session, model: &Model) -> DbResult<Vec<String>> {
    let present = list_triggers(session).await?;
    Ok(model
        .snapshot_order
        .iter()
        .filter(|t| Operation::ALL.iter().any(|op| !present.contains(&trigger_name(t, *op))))
        .cloned()
        .collect())
}

/// Whether an identity rule is one a row can be found by (used by checks and reports).
pub fn describe_identity(identity: &Identity) -> String {
    match identity {
        Identity::Uuid { column } => format!("uuid column {column}"),
        Identity::TextKey { column } => format!("text key {column}"),
        Identity::Parent { column, parent_table } => format!("same as its {parent_table} row (via {column})"),
        Identity::Join { parts } => {
            let names: Vec<String> = parts
                .iter()
                .map(|p| match &p.target_table {
                    Some(t) => format!("{} -> {t}", p.column),
                    None => p.column.clone(),
                })
                .collect();
            format!("join of {}", names.join(" + "))
        }
    }
}

/// Values journaled for one change, as the publisher reads them back.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalRow {
    pub journal_id: i64,
    pub table_name: String,
    pub action: String,
    pub entity_key: Option<String>,
    pub row_key: Option<String>,
    pub patient_uuid: Option<String>,
    pub location_uuid: Option<String>,
    pub origin: Option<String>,
    pub changed_at: String,
}

impl JournalRow {
    pub fn from_row(row: &feedsync_db::Row) -> JournalRow {
        JournalRow {
            journal_id: row.i64("journal_id").unwrap_or(0),
            table_name: row.text("table_name").unwrap_or_default(),
            action: row.text("action").unwrap_or_default(),
            entity_key: row.text("entity_key"),
            row_key: row.text("row_key"),
            patient_uuid: row.text("patient_uuid"),
            location_uuid: row.text("location_uuid"),
            origin: row.text("origin"),
            changed_at: row.text("changed_at").unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_names_fit_mysql() {
        assert_eq!(trigger_name("obs", Operation::Insert), "feedsync_obs_ai");
        let long = "a_module_table_with_a_really_long_name_that_goes_on_and_on_forever";
        let a = trigger_name(long, Operation::Update);
        let b = trigger_name(&format!("{long}_2"), Operation::Update);
        assert!(a.len() <= 64 && b.len() <= 64);
        assert_ne!(a, b);
        assert!(a.starts_with(PREFIX) && a.ends_with("_au"));
    }
}
