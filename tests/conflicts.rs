//! Conflicts end to end, through a real parent and two children that both hold one patient:
//! edit vs void, edit vs delete, void vs void, the same identity created on two sides, and a
//! child offline for a long time. Nothing is ever silently lost: every losing value is in a
//! conflict record. (The rules themselves are specified and tested case by case in
//! `shared/core/src/merge.rs`.)

use feedsync_sim::network::{Network, exec, one_text, run_workload};
use feedsync_db::Value;
use feedsync_node::exchange;
use feedsync_wire::network::Conflict;
use feedsync_sim::testdb::Source;

async fn conflicts_everywhere(net: &Network) -> Vec<(String, Conflict)> {
    let mut all = Vec::new();
    for site in ["parent", "north", "south"] {
        let mut s = net.db(site).session().await.unwrap();
        all.extend(exchange::list_conflicts(&mut s, true, 1_000).await.unwrap().into_iter().map(|c| (site.to_owned(), c)));
    }
    all
}

fn losing_values(conflicts: &[(String, Conflict)], key: &str, field: &str) -> Vec<serde_json::Value> {
    conflicts
        .iter()
        .filter(|(_, c)| c.key == key)
        .flat_map(|(_, c)| [c.parent_version.as_ref(), c.child_version.as_ref()])
        .flatten()
        .filter_map(|v| v.get(field).cloned())
        .collect()
}

async fn same_everywhere(net: &Network, sql: &str, key: &str) -> Option<String> {
    let at_parent = one_text(net.db("parent"), sql, &[key.into()]).await;
    for site in ["north", "south"] {
        assert_eq!(one_text(net.db(site), sql, &[key.into()]).await, at_parent, "{site} differs from the parent for {sql} {key}");
    }
    at_parent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflict_cases_end_to_end() {
    let Some(net) = Network::start(Source::Sqlite25, &["north", "south"]).await else { return };
    run_workload(net.db("parent"), 3, 0).await;
    net.settle().await;
    run_workload(net.db("north"), 31, 1).await;
    net.settle().await;
    let patient = one_text(
        net.db("north"),
        "SELECT pe.uuid FROM person pe JOIN patient pt ON pt.patient_id = pe.person_id ORDER BY pt.patient_id DESC LIMIT 1",
        &[],
    )
    .await
    .unwrap();
    net.child("south").fetch_patient(&patient, "transferred in").await.unwrap();
    let person_id = |site: &'static str| {
        let patient = patient.clone();
        let db = net.db(site).clone();
        async move { one_text(&db, "SELECT person_id FROM person WHERE uuid = ?", &[patient.as_str().into()]).await.unwrap() }
    };
    let name = one_text(net.db("north"), "SELECT pn.uuid FROM person_name pn JOIN person pe ON pe.person_id = pn.person_id WHERE pe.uuid = ? AND pn.voided = 0", &[patient.as_str().into()]).await.unwrap();
    let identifier = one_text(net.db("north"), "SELECT pi.uuid FROM patient_identifier pi JOIN person pe ON pe.person_id = pi.patient_id WHERE pe.uuid = ? AND pi.voided = 0", &[patient.as_str().into()]).await.unwrap();
    let attribute_type = one_text(net.db("north"), "SELECT person_attribute_type_id FROM person_attribute_type ORDER BY person_attribute_type_id LIMIT 1", &[]).await.unwrap();
    // Two attributes, the same at both children once synced.
    for (uuid, value) in [("00000000-0000-4000-8000-00000000a001", "0788000001"), ("00000000-0000-4000-8000-00000000a002", "Kigali")] {
        exec(
            net.db("north"),
            "INSERT INTO person_attribute (person_id, value, person_attribute_type_id, creator, date_created, voided, uuid) VALUES (?, ?, ?, 1, '2024-03-01 10:00:00', 0, ?)",
            &[Value::Int(person_id("north").await.parse().unwrap()), value.into(), Value::Int(attribute_type.parse().unwrap()), uuid.into()],
        )
        .await;
    }
    net.settle().await;
    assert_eq!(one_text(net.db("south"), "SELECT value FROM person_attribute WHERE uuid = ?", &["00000000-0000-4000-8000-00000000a001".into()]).await.as_deref(), Some("0788000001"));

    // Between two rounds: edit vs void of a name, edit vs delete of an attribute, void vs void
    // of an identifier, and the same new attribute (same uuid) created at both children.
    exec(net.db("north"), "UPDATE person_name SET given_name = 'Tiyamike' WHERE uuid = ?", &[name.as_str().into()]).await;
    exec(net.db("south"), "UPDATE person_name SET voided = 1, voided_by = 1, date_voided = '2024-05-02 09:00:00', void_reason = 'duplicate' WHERE uuid = ?", &[name.as_str().into()]).await;
    exec(net.db("north"), "UPDATE person_attribute SET value = '0788000002' WHERE uuid = ?", &["00000000-0000-4000-8000-00000000a001".into()]).await;
    exec(net.db("south"), "DELETE FROM person_attribute WHERE uuid = ?", &["00000000-0000-4000-8000-00000000a001".into()]).await;
    exec(net.db("north"), "UPDATE patient_identifier SET voided = 1, voided_by = 1, date_voided = '2024-05-02 10:00:00', void_reason = 'typo' WHERE uuid = ?", &[identifier.as_str().into()]).await;
    exec(net.db("south"), "UPDATE patient_identifier SET voided = 1, voided_by = 1, date_voided = '2024-05-03 11:00:00', void_reason = 'wrong patient' WHERE uuid = ?", &[identifier.as_str().into()]).await;
    for (site, value) in [("north", "Nkhotakota"), ("south", "Zomba")] {
        exec(
            net.db(site),
            "INSERT INTO person_attribute (person_id, value, person_attribute_type_id, creator, date_created, voided, uuid) VALUES (?, ?, ?, 1, '2024-05-01 08:00:00', 0, ?)",
            &[Value::Int(person_id(site).await.parse().unwrap()), value.into(), Value::Int(attribute_type.parse().unwrap()), "00000000-0000-4000-8000-00000000a003".into()],
        )
        .await;
    }
    // North reaches the parent first.
    net.publisher.publish().await;
    net.child("north").round().await.unwrap();
    net.settle().await;
    let conflicts = conflicts_everywhere(&net).await;

    // Edit vs void: different fields, both survive, no conflict.
    let row = "SELECT given_name || '|' || voided || '|' || COALESCE(void_reason, '') FROM person_name WHERE uuid = ?";
    assert_eq!(same_everywhere(&net, row, &name).await.as_deref(), Some("Tiyamike|1|duplicate"));
    assert!(conflicts.iter().all(|(_, c)| c.key != name), "edit vs void is no conflict: {conflicts:?}");

    // Edit vs delete: the edit reached the parent first and stays; the delete is recorded.
    let attribute = "SELECT value FROM person_attribute WHERE uuid = ?";
    assert_eq!(same_everywhere(&net, attribute, "00000000-0000-4000-8000-00000000a001").await.as_deref(), Some("0788000002"));
    let record = conflicts.iter().find(|(_, c)| c.key == "00000000-0000-4000-8000-00000000a001").expect("edit vs delete recorded");
    assert!(record.1.entity_conflict && record.1.child_version.is_none(), "{record:?}");

    // Void vs void: voided everywhere; the reason that reached the parent first stays, the
    // other is kept.
    let voided = "SELECT voided || '|' || void_reason FROM patient_identifier WHERE uuid = ?";
    assert_eq!(same_everywhere(&net, voided, &identifier).await.as_deref(), Some("1|typo"));
    assert!(losing_values(&conflicts, &identifier, "void_reason").contains(&serde_json::json!("wrong patient")), "{conflicts:?}");

    // The same identity created on two sides: one row everywhere, the other value kept.
    assert_eq!(same_everywhere(&net, attribute, "00000000-0000-4000-8000-00000000a003").await.as_deref(), Some("Nkhotakota"));
    assert!(losing_values(&conflicts, "00000000-0000-4000-8000-00000000a003", "value").contains(&serde_json::json!("Zomba")));
    let copies = "SELECT COUNT(*) FROM person_attribute WHERE uuid = ?";
    assert_eq!(same_everywhere(&net, copies, "00000000-0000-4000-8000-00000000a003").await.as_deref(), Some("1"));

    // South offline for a long time: meanwhile north edits the family name twice and a
    // middle name; south edits the family name and the second attribute. When south comes
    // back, different fields merge and the same field keeps the parent's value; south's is
    // kept in a conflict record.
    exec(net.db("south"), "UPDATE person_name SET family_name = 'Phiri-Offline' WHERE uuid = ?", &[name.as_str().into()]).await;
    exec(net.db("south"), "UPDATE person_attribute SET value = 'Lilongwe' WHERE uuid = ?", &["00000000-0000-4000-8000-00000000a002".into()]).await;
    for value in ["Banda", "Banda-Mwale"] {
        exec(net.db("north"), "UPDATE person_name SET family_name = ? WHERE uuid = ?", &[value.into(), name.as_str().into()]).await;
        for _ in 0..3 {
            net.publisher.publish().await;
            net.child("north").round().await.unwrap();
        }
    }
    exec(net.db("north"), "UPDATE person_name SET middle_name = 'Chisomo' WHERE uuid = ?", &[name.as_str().into()]).await;
    net.publisher.publish().await;
    net.child("north").round().await.unwrap();
    net.settle().await;
    let merged = "SELECT family_name || '|' || COALESCE(middle_name, '') FROM person_name WHERE uuid = ?";
    assert_eq!(same_everywhere(&net, merged, &name).await.as_deref(), Some("Banda-Mwale|Chisomo"));
    assert_eq!(same_everywhere(&net, attribute, "00000000-0000-4000-8000-00000000a002").await.as_deref(), Some("Lilongwe"), "an edit nobody else made survives");
    let conflicts = conflicts_everywhere(&net).await;
    assert!(losing_values(&conflicts, &name, "family_name").contains(&serde_json::json!("Phiri-Offline")), "{conflicts:?}");
}

/// A conflict found at a child (the parent's change arrives while the child has an unpushed
/// edit of the same field) is reported to the parent with the child's status; an operator at
/// the parent resolves it there, the child carries the resolution out at its next round, and
/// it reaches everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_found_at_a_child_is_reported_and_resolved_from_the_parent() {
    use feedsync_node::parent as parent_network;
    use feed_subscriber::network::{ParentLink, RoundReport};
    use feedsync_wire::network::CommandAction;
    let Some(net) = Network::start(Source::Sqlite25, &["north", "south"]).await else { return };
    run_workload(net.db("parent"), 3, 0).await;
    net.settle().await;
    run_workload(net.db("north"), 41, 1).await;
    net.settle().await;
    let patient = one_text(net.db("north"), "SELECT pe.uuid FROM person pe JOIN patient pt ON pt.patient_id = pe.person_id ORDER BY pt.patient_id DESC LIMIT 1", &[]).await.unwrap();
    let south = net.child("south");
    south.fetch_patient(&patient, "transferred in").await.unwrap();
    let name = one_text(net.db("north"), "SELECT pn.uuid FROM person_name pn JOIN person pe ON pe.person_id = pn.person_id WHERE pe.uuid = ? AND pn.voided = 0", &[patient.as_str().into()]).await.unwrap();
    net.settle().await;

    exec(net.db("north"), "UPDATE person_name SET given_name = 'Atupele' WHERE uuid = ?", &[name.as_str().into()]).await;
    net.publisher.publish().await;
    net.child("north").round().await.unwrap();
    net.publisher.publish().await;
    // South edits the same field and, before pushing, receives north's version.
    exec(net.db("south"), "UPDATE person_name SET given_name = 'Atupelle' WHERE uuid = ?", &[name.as_str().into()]).await;
    let hello = south.parent.hello().await.unwrap();
    let mut session = net.db("south").session().await.unwrap();
    let after = south.pull_position(&mut session).await.unwrap();
    let page = south.parent.changes(after, 500).await.unwrap();
    let mut report = RoundReport::default();
    assert!(south.apply_changes(&mut session, &hello, after, &page, &mut report).await.unwrap());
    assert_eq!(report.conflicts, 1, "the conflict is found at the child");
    drop(session);
    net.settle().await;
    let given = "SELECT given_name FROM person_name WHERE uuid = ?";
    assert_eq!(one_text(net.db("south"), given, &[name.as_str().into()]).await.as_deref(), Some("Atupele"), "the parent's value won");

    // The parent sees it in south's report.
    let mut s = net.db("parent").session().await.unwrap();
    let (status, _) = parent_network::child_report(&mut s, "south").await.unwrap().expect("south reported");
    assert_eq!(status.open_conflicts, 1);
    let conflict = status.conflicts[0].clone();
    assert_eq!(conflict.key, name);
    assert_eq!(conflict.child_version.as_ref().unwrap()["given_name"], serde_json::json!("Atupelle"));
    // An operator at the parent takes the child's version ("mine" is the child's side there).
    let command = parent_network::queue_command(&mut s, "south", &CommandAction::ResolveConflict { conflict_id: conflict.id, take: "mine".into(), fields: vec![] }, "dashboard:test").await.unwrap();
    drop(s);
    net.settle().await;
    for site in ["north", "south", "parent"] {
        assert_eq!(one_text(net.db(site), given, &[name.as_str().into()]).await.as_deref(), Some("Atupelle"), "{site}");
    }
    let done = one_text(net.db("parent"), "SELECT ok || '|' || message FROM feedsync_command WHERE command_id = ?", &[Value::Int(command)]).await;
    assert!(done.as_deref().is_some_and(|d| d.starts_with("1|")), "command closed: {done:?}");
    let mut s = net.db("parent").session().await.unwrap();
    assert_eq!(parent_network::child_report(&mut s, "south").await.unwrap().unwrap().0.open_conflicts, 0);
}
