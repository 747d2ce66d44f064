//! Capture on the real OpenMRS schemas: install builds the model from the live database,
//! creates triggers and snapshots existing rows; writes by plain SQL are journaled; install is
//! idempotent; uninstall removes exactly what install added.

use feedsync_node::capture;
use feedsync_db::Session;
use feedsync_core::model;
use feedsync_core::profile::Profile;
use feedsync_db::schema::read_schema;
use feedsync_sim::testdb::{Source, TestDatabase};

async fn table_names(session: &mut Session, schema: &str) -> Vec<String> {
    read_schema(session, schema).await.unwrap().tables.into_keys().collect()
}

async fn count(session: &mut Session, sql: &str) -> i64 {
    session.query(sql, &[]).await.unwrap()[0].values[0].as_i64().unwrap()
}

async fn check_install_cycle(source: Source) {
    let Some(test) = TestDatabase::create(source) else { return };
    let db = &test.database;
    let mut s = db.session().await.unwrap();
    let before = table_names(&mut s, db.schema_name()).await;
    let schema = read_schema(&mut s, db.schema_name()).await.unwrap();
    let model = model::build(&schema, &Profile::openmrs());
    for table in ["person", "patient", "obs", "encounter", "users", "location", "user_role", "global_property"] {
        assert!(model.entities.contains_key(table), "{source:?}: {table} should be published: {:?}", model.not_published.get(table));
    }
    assert!(model.not_published.contains_key("liquibasechangelog"));

    let mut expected_rows = 0;
    for table in &model.snapshot_order {
        expected_rows += count(&mut s, &format!("SELECT COUNT(*) FROM {}", feedsync_db::quote_ident(db.dialect(), table))).await;
    }
    let report = capture::install(&mut s, &model).await.unwrap();
    assert_eq!(report.triggers_created, 3 * model.entities.len());
    assert_eq!(report.snapshot_rows as i64, expected_rows);
    assert_eq!(count(&mut s, "SELECT COUNT(*) FROM feedsync_journal").await, expected_rows);
    assert_eq!(count(&mut s, "SELECT COUNT(*) FROM feedsync_journal WHERE entity_key IS NULL").await, 0, "every snapshot row has an identity");
    // The admin user's person is snapshotted before the user row that references it.
    let first_person = count(&mut s, "SELECT MIN(journal_id) FROM feedsync_journal WHERE table_name = 'person'").await;
    let first_user = count(&mut s, "SELECT MIN(journal_id) FROM feedsync_journal WHERE table_name = 'users'").await;
    assert!(first_person < first_user);

    let again = capture::install(&mut s, &model).await.unwrap();
    assert_eq!(again.triggers_unchanged, 3 * model.entities.len());
    assert_eq!((again.triggers_created, again.triggers_replaced, again.snapshot_rows), (0, 0, 0));

    // A direct SQL write is captured, with its identity and action.
    s.execute(
        "INSERT INTO location (name, creator, date_created, retired, uuid) VALUES ('Kigali HC', 1, '2026-01-01 00:00:00', 0, 'aaaaaaaa-0000-4000-8000-000000000001')",
        &[],
    )
    .await
    .unwrap();
    s.execute("UPDATE location SET retired = 1, retired_by = 1, retire_reason = 'closed' WHERE uuid = 'aaaaaaaa-0000-4000-8000-000000000001'", &[])
        .await
        .unwrap();
    s.execute("DELETE FROM location WHERE uuid = 'aaaaaaaa-0000-4000-8000-000000000001'", &[]).await.unwrap();
    let rows = s
        .query("SELECT action, entity_key, origin FROM feedsync_journal WHERE table_name = 'location' AND entity_key = 'aaaaaaaa-0000-4000-8000-000000000001' ORDER BY journal_id", &[])
        .await
        .unwrap();
    let actions: Vec<String> = rows.iter().map(|r| r.text("action").unwrap()).collect();
    assert_eq!(actions, ["CREATED", "RETIRED", "DELETED"]);
    assert!(rows.iter().all(|r| r.get("origin").is_null()));

    // Applied changes carry their origin.
    s.begin().await.unwrap();
    capture::set_origin(&mut s, "feed:parent").await.unwrap();
    s.execute("UPDATE global_property SET property_value = 'x' WHERE property = 'default_locale'", &[]).await.unwrap();
    capture::clear_origin(&mut s).await.unwrap();
    s.commit().await.unwrap();
    let rows = s
        .query("SELECT origin, entity_key FROM feedsync_journal WHERE table_name = 'global_property' AND action = 'UPDATED'", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].text("origin").as_deref(), Some("feed:parent"));
    assert_eq!(rows[0].text("entity_key").as_deref(), Some("default_locale"));

    // Every toolkit table, whoever owns it, is found by the prefix scan uninstall uses.
    for set in feedsync_db::tables::TableSet::ALL {
        feedsync_db::tables::create(&mut s, set).await.unwrap();
    }
    let mut listed = capture::list_tables(&mut s).await.unwrap();
    listed.sort();
    let mut known: Vec<String> = feedsync_db::tables::all_tables()
        .into_iter()
        .filter(|t| s.dialect() == feedsync_db::Dialect::Sqlite || *t != capture::ORIGIN_TABLE)
        .map(str::to_owned)
        .collect();
    known.sort();
    assert_eq!(listed, known, "the prefix scan and feedsync_db::tables disagree");

    let removed = capture::uninstall(&mut s).await.unwrap();
    assert_eq!(removed.tables_dropped, known.len());
    assert_eq!(removed.triggers_dropped, 3 * model.entities.len());
    assert_eq!(table_names(&mut s, db.schema_name()).await, before, "uninstall leaves exactly the original tables");
    assert!(capture::list_triggers(&mut s).await.unwrap().is_empty());
    let again = capture::uninstall(&mut s).await.unwrap();
    assert_eq!((again.triggers_dropped, again.tables_dropped), (0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn install_cycle_mariadb_25() {
    check_install_cycle(Source::MySql25).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn install_cycle_mariadb_198() {
    check_install_cycle(Source::MySql198).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn install_cycle_sqlite() {
    check_install_cycle(Source::Sqlite25).await;
}

/// A database that lost every constraint in a dump and restore publishes the same: the core
/// references come from the profile, not from declared keys.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_without_constraints_has_the_same_model() {
    let Some(test) = TestDatabase::create(Source::MySql25) else { return };
    let db = &test.database;
    let mut s = db.session().await.unwrap();
    let with = model::build(&read_schema(&mut s, db.schema_name()).await.unwrap(), &Profile::openmrs());
    let constraints = s
        .query(
            "SELECT TABLE_NAME AS t, CONSTRAINT_NAME AS c FROM information_schema.TABLE_CONSTRAINTS \
             WHERE TABLE_SCHEMA = DATABASE() AND CONSTRAINT_TYPE = 'FOREIGN KEY'",
            &[],
        )
        .await
        .unwrap();
    assert!(constraints.len() > 300, "the 2.5 dump declares its foreign keys ({})", constraints.len());
    for row in &constraints {
        let (t, c) = (row.text("t").unwrap(), row.text("c").unwrap());
        s.execute_script(&format!("ALTER TABLE `{t}` DROP FOREIGN KEY `{c}`")).await.unwrap();
    }
    let without = model::build(&read_schema(&mut s, db.schema_name()).await.unwrap(), &Profile::openmrs());
    assert!(read_schema(&mut s, db.schema_name()).await.unwrap().tables.values().all(|t| t.foreign_keys.is_empty()));
    assert_eq!(with.entities.keys().collect::<Vec<_>>(), without.entities.keys().collect::<Vec<_>>());
    for (table, entity) in &with.entities {
        let other = &without.entities[table];
        let refs = |e: &model::Entity| e.references.iter().map(|r| (r.column.clone(), r.target_table.clone())).collect::<Vec<_>>();
        assert_eq!(refs(entity), refs(other), "{table}: references differ without constraints");
        assert_eq!(entity.identity, other.identity, "{table}");
        assert_eq!(entity.patient_path.len(), other.patient_path.len(), "{table}");
    }
    assert_eq!(with.snapshot_order, without.snapshot_order);
}
