//! The toolkit's own tables inside a user's database, all in one place: every `feedsync_*`
//! table is named once here, grouped in the [`TableSet`] each owner creates, and created by
//! [`create`] (`IF NOT EXISTS`, so running it again changes nothing). The statements
//! themselves are written per backend, side by side, in `mysql.rs` and `sqlite.rs`
//! (`create_tables`), because the two servers differ in types, keys and indexes; this module
//! only dispatches. The few other statements on these tables whose text differs by backend
//! (the origin marker, the sequencer's row lock) are here too, for the same reason.
//!
//! Invariant: every table named here carries [`PREFIX`], and `uninstall` (in
//! `feedsync_node::capture`) removes exactly the tables and triggers carrying it.

use crate::{DbResult, Dialect, Session, Value, mysql, sqlite};

/// The reserved prefix of every table and trigger the toolkit adds to a database.
pub const PREFIX: &str = "feedsync_";

// Capture (`feedsync_node::capture`, `sequencer`).
pub const JOURNAL_TABLE: &str = "feedsync_journal";
pub const EVENT_TABLE: &str = "feedsync_event";
pub const PAGE_TABLE: &str = "feedsync_page";
pub const STATE_TABLE: &str = "feedsync_state";
/// SQLite has no session variables: an applier inserts its origin here inside its own write
/// transaction and deletes it before commit, so no other transaction ever sees the row.
/// SQLite only.
pub const ORIGIN_TABLE: &str = "feedsync_origin";
/// The MySQL session variable an applier sets to its origin before writing.
pub const MYSQL_ORIGIN_VARIABLE: &str = "@feedsync_origin";

// The network (`feedsync_node::exchange`, `parent`).
pub const CHILD_TABLE: &str = "feedsync_child";
pub const CATCHMENT_TABLE: &str = "feedsync_catchment";
/// Feed readers' tokens (`feed-publisher token create`): scopes, categories, expiry, and the
/// previous token during a rotation's overlap.
pub const TOKEN_TABLE: &str = "feedsync_token";
/// A child's earlier tokens, each valid until the overlap a rotation gave it ends.
pub const CHILD_TOKEN_TABLE: &str = "feedsync_child_token";
pub const BASE_TABLE: &str = "feedsync_base";
pub const CONFLICT_TABLE: &str = "feedsync_conflict";
pub const AUDIT_TABLE: &str = "feedsync_audit";
pub const INBOX_TABLE: &str = "feedsync_inbox";
pub const COMMAND_TABLE: &str = "feedsync_command";
/// A child's push in flight: sent again, unchanged, when its answer was lost.
pub const OUTBOX_TABLE: &str = "feedsync_outbox";

// The subscriber (`feed_subscriber::state`).
pub const FEED_TABLE: &str = "feedsync_sub_feed";
pub const CHANGE_TABLE: &str = "feedsync_sub_change";

// The publisher's dashboard and alerts (`feed_publisher::dashboard::rounds`, `status`).
pub const ROUND_TABLE: &str = "feedsync_dashboard_round";
pub const ALERT_STATE_TABLE: &str = "feedsync_alert_state";

/// The tables one owner creates together, when it starts or installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableSet {
    /// Change capture (made by `install`): journal, events, page cursors, state, and on SQLite
    /// the origin marker.
    Capture,
    /// The parent/child network, both sides (made with the capture tables, and again where a
    /// database predates them). On SQLite it also adds the events' patient index.
    Network,
    /// A subscriber's markers and queue in its target database, and on SQLite the origin
    /// marker (the target may have no publisher installed).
    Subscriber,
    /// The dashboard's bounded rounds history.
    DashboardRounds,
    /// The publisher's alert state and queue histories.
    AlertState,
}

impl TableSet {
    pub const ALL: [TableSet; 5] = [TableSet::Capture, TableSet::Network, TableSet::Subscriber, TableSet::DashboardRounds, TableSet::AlertState];

    /// The tables of the set, in creation order (the origin marker exists on SQLite only).
    pub fn tables(self) -> &'static [&'static str] {
        match self {
            TableSet::Capture => &[JOURNAL_TABLE, EVENT_TABLE, PAGE_TABLE, STATE_TABLE, ORIGIN_TABLE],
            TableSet::Network => {
                &[OUTBOX_TABLE, COMMAND_TABLE, CHILD_TABLE, CATCHMENT_TABLE, BASE_TABLE, CONFLICT_TABLE, AUDIT_TABLE, INBOX_TABLE, CHILD_TOKEN_TABLE, TOKEN_TABLE]
            }
            TableSet::Subscriber => &[FEED_TABLE, CHANGE_TABLE, ORIGIN_TABLE],
            TableSet::DashboardRounds => &[ROUND_TABLE],
            TableSet::AlertState => &[ALERT_STATE_TABLE],
        }
    }
}

/// Every toolkit table, each once (the one list `uninstall`'s prefix scan is checked against).
pub fn all_tables() -> Vec<&'static str> {
    let mut all: Vec<&'static str> = Vec::new();
    for table in TableSet::ALL.iter().flat_map(|set| set.tables()) {
        if !all.contains(table) {
            all.push(table);
        }
    }
    all
}

/// The statements creating a set's tables and indexes if they are missing, in order. Run
/// each with [`Session::execute_script`].
pub fn ddl(dialect: Dialect, set: TableSet) -> Vec<String> {
    match dialect {
        Dialect::MySql => mysql::create_tables(set),
        Dialect::Sqlite => sqlite::create_tables(set),
    }
}

/// Creates a set's tables and indexes where they are missing; changes nothing otherwise.
pub async fn create(session: &mut Session, set: TableSet) -> DbResult<()> {
    for statement in ddl(session.dialect(), set) {
        session.execute_script(&statement).await?;
    }
    Ok(())
}

/// The origin of the writing transaction, as SQL a trigger body reads (NULL for a local
/// write): see [`set_origin`].
pub fn origin_sql(dialect: Dialect) -> String {
    match dialect {
        Dialect::MySql => mysql::origin_sql(),
        Dialect::Sqlite => sqlite::origin_sql(),
    }
}

/// Marks the session's following writes as applied from `origin`. On SQLite call it inside
/// the write transaction and call [`clear_origin`] before commit.
pub async fn set_origin(session: &mut Session, origin: &str) -> DbResult<()> {
    let statements = match session.dialect() {
        Dialect::MySql => mysql::set_origin_sql(),
        Dialect::Sqlite => sqlite::set_origin_sql(),
    };
    let last = statements.len().saturating_sub(1);
    for (i, sql) in statements.iter().enumerate() {
        // Only the last statement takes the origin (see the backends' `set_origin_sql`).
        let params = if i == last { vec![Value::from(origin)] } else { Vec::new() };
        session.execute(sql, &params).await?;
    }
    Ok(())
}

/// Ends what [`set_origin`] started: the session's following writes are local again.
pub async fn clear_origin(session: &mut Session) -> DbResult<()> {
    let sql = match session.dialect() {
        Dialect::MySql => mysql::clear_origin_sql(),
        Dialect::Sqlite => sqlite::clear_origin_sql(),
    };
    session.execute(&sql, &[]).await?;
    Ok(())
}

/// Makes sure the state row `name` exists so [`lock_state_row`] has a row to lock. Call it
/// outside the transaction: inside, it would take a shared lock that the lock must upgrade,
/// and two lockers would deadlock on the upgrade. Nothing on SQLite.
pub async fn ensure_state_row(session: &mut Session, name: &str) -> DbResult<()> {
    let sql = match session.dialect() {
        Dialect::MySql => mysql::ensure_state_row_sql(),
        Dialect::Sqlite => sqlite::ensure_state_row_sql(),
    };
    if let Some(sql) = sql {
        session.execute(&sql, &[name.into()]).await?;
    }
    Ok(())
}

/// Locks the state row `name` until the transaction ends, so one holder at a time runs what
/// it guards. Nothing on SQLite, where the writing transaction already holds the database.
pub async fn lock_state_row(session: &mut Session, name: &str) -> DbResult<()> {
    let sql = match session.dialect() {
        Dialect::MySql => mysql::lock_state_row_sql(),
        Dialect::Sqlite => sqlite::lock_state_row_sql(),
    };
    if let Some(sql) = sql {
        session.query(&sql, &[name.into()]).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table a `CREATE TABLE IF NOT EXISTS` statement makes, if it is one.
    fn created_table(statement: &str) -> Option<&str> {
        let rest = statement.strip_prefix("CREATE TABLE IF NOT EXISTS ")?;
        rest.split([' ', '(']).next()
    }

    #[test]
    fn every_table_carries_the_prefix_and_is_listed_once() {
        let all = all_tables();
        assert_eq!(all.len(), 19, "{all:?}");
        for table in &all {
            assert!(table.starts_with(PREFIX), "{table} lacks the reserved prefix: uninstall would leave it behind");
        }
    }

    #[test]
    fn each_backend_creates_exactly_the_tables_a_set_lists() {
        for set in TableSet::ALL {
            for dialect in [Dialect::MySql, Dialect::Sqlite] {
                let statements = ddl(dialect, set);
                let created: Vec<&str> = statements.iter().filter_map(|s| created_table(s)).collect();
                let wanted: Vec<&str> =
                    set.tables().iter().copied().filter(|t| dialect == Dialect::Sqlite || *t != ORIGIN_TABLE).collect();
                assert_eq!(created, wanted, "{set:?} on {dialect:?}");
                for statement in &statements {
                    assert!(statement.contains("IF NOT EXISTS"), "{statement}");
                }
            }
        }
    }

    #[tokio::test]
    async fn sqlite_creates_every_set_twice_and_the_prefix_finds_them_all() {
        let dir = std::env::temp_dir().join(format!("feedsync-db-tables-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.sqlite");
        let _ = std::fs::remove_file(&path);
        let db = crate::Database::from_url(&format!("sqlite://{}", path.display())).unwrap();
        let mut s = db.session().await.unwrap();
        for _ in 0..2 {
            for set in TableSet::ALL {
                create(&mut s, set).await.unwrap();
            }
        }
        let mut found = crate::schema::list_prefixed(&mut s, crate::schema::ObjectKind::Table).await.unwrap();
        found.sort();
        let mut all: Vec<String> = all_tables().into_iter().map(str::to_owned).collect();
        all.sort();
        assert_eq!(found, all);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
