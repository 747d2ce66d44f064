//! Parent and children: two-way sync through a real parent publisher over HTTP, catchment,
//! finding and fetching a patient registered elsewhere, conflicts and their resolution, and
//! bad input at the push endpoint.

use std::collections::BTreeSet;

use feedsync_node::parent as parent_network;
use feedsync_sim::publisher::http;
use feedsync_sim::network::{Network, assert_parent_holds, compare_dbs, exec, model_of, one_text, patient_uuids, run_workload};
use feedsync_node::exchange::{self, Take};
use feedsync_sim::testdb::Source;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parent_and_three_children_on_sqlite() {
    let Some(net) = Network::start(Source::Sqlite25, &["north", "south", "east"]).await else { return };
    let base_patients = patient_uuids(net.db("parent")).await;
    // Metadata is created centrally (the clinic's encounter type, concepts...) and reaches
    // every child; the parent's own patient reaches none.
    run_workload(net.db("parent"), 7, 1).await;
    let parent_patient: BTreeSet<String> = patient_uuids(net.db("parent")).await.difference(&base_patients).cloned().collect();
    net.settle().await;
    assert_eq!(
        one_text(net.db("east"), "SELECT COUNT(*) FROM encounter_type WHERE name = 'Consultation'", &[]).await.as_deref(),
        Some("1"),
        "metadata reaches every child"
    );
    for child in ["north", "south", "east"] {
        assert!(patient_uuids(net.db(child)).await.is_disjoint(&parent_patient), "{child} holds the parent's own patient");
    }
    let base_patients = patient_uuids(net.db("parent")).await;

    // Each facility registers its own patients; the parent ends up with all of them and each
    // facility with its own only.
    run_workload(net.db("north"), 101, 3).await;
    run_workload(net.db("south"), 202, 2).await;
    net.settle().await;
    let north_patients: BTreeSet<String> = patient_uuids(net.db("north")).await.difference(&base_patients).cloned().collect();
    let south_patients: BTreeSet<String> = patient_uuids(net.db("south")).await.difference(&base_patients).cloned().collect();
    assert_eq!(north_patients.len(), 3);
    assert_eq!(south_patients.len(), 2);
    {
        let mut s = net.db("parent").session().await.unwrap();
        let held = exchange::held_items(&mut s, None, 100).await.unwrap();
        assert!(held.is_empty(), "held at the parent: {:#?}", held.iter().map(|h| (&h.peer, &h.item.table, &h.reason)).collect::<Vec<_>>());
    }
    assert_parent_holds(&compare_dbs(net.db("north"), net.db("parent")).await, "north");
    assert_parent_holds(&compare_dbs(net.db("south"), net.db("parent")).await, "south");
    let at_parent = patient_uuids(net.db("parent")).await;
    assert!(north_patients.is_subset(&at_parent) && south_patients.is_subset(&at_parent));
    assert!(patient_uuids(net.db("north")).await.is_disjoint(&south_patients), "north holds none of south's patients");
    assert!(patient_uuids(net.db("east")).await.difference(&base_patients).next().is_none(), "east holds no patient");
    // Metadata reached every child: south's clinicians (users and their persons) are at east.
    let south_users = one_text(net.db("south"), "SELECT COUNT(*) FROM users", &[]).await;
    let east_users = one_text(net.db("east"), "SELECT COUNT(*) FROM users", &[]).await;
    let north_users = one_text(net.db("north"), "SELECT COUNT(*) FROM users", &[]).await;
    assert_eq!(south_users, east_users);
    assert_eq!(north_users, east_users);

    // A north patient turns up at south: found by identifier and by a misspelled name, fetched.
    let patient = north_patients.iter().next().unwrap().clone();
    let identifier = one_text(
        net.db("north"),
        "SELECT pi.identifier FROM patient_identifier pi JOIN person pe ON pe.person_id = pi.patient_id WHERE pe.uuid = ? AND pi.voided = 0",
        &[patient.as_str().into()],
    )
    .await
    .expect("identifier");
    let south = net.child("south");
    let found = south.find_patients(&identifier.to_lowercase(), 10).await.unwrap();
    assert_eq!(found.first().map(|c| c.uuid.as_str()), Some(patient.as_str()), "found by identifier {identifier}");
    let given = one_text(net.db("north"), "SELECT pn.given_name FROM person_name pn JOIN person pe ON pe.person_id = pn.person_id WHERE pe.uuid = ? AND pn.voided = 0", &[patient.as_str().into()]).await.unwrap();
    let family = one_text(net.db("north"), "SELECT pn.family_name FROM person_name pn JOIN person pe ON pe.person_id = pn.person_id WHERE pe.uuid = ? AND pn.voided = 0", &[patient.as_str().into()]).await.unwrap();
    // A name alone is refused (it would list every patient of that name in the network); with
    // birth date and gender, a misspelled name still finds the patient.
    let name_only = south.find_patients(&format!("{given} {family}"), 10).await.unwrap_err();
    assert!(name_only.to_string().contains("needs the birth date and gender too"), "{name_only}");
    let birthdate = one_text(net.db("north"), "SELECT birthdate FROM person WHERE uuid = ?", &[patient.as_str().into()]).await.expect("a birth date");
    let gender = one_text(net.db("north"), "SELECT gender FROM person WHERE uuid = ?", &[patient.as_str().into()]).await.expect("a gender");
    let misspelled = format!("{given} {} {} {gender}", double_a_letter(&family), &birthdate[..10]);
    let found = south.find_patients(&misspelled, 10).await.unwrap();
    assert!(found.iter().any(|c| c.uuid == patient), "{misspelled:?} finds {given} {family}: {found:?}");
    let (applied, held) = south.fetch_patient(&patient, "transferred in, referral 2231").await.unwrap();
    assert!(applied > 3 && held == 0, "fetched {applied} rows, {held} held");
    assert!(patient_uuids(net.db("south")).await.contains(&patient));
    let audit = one_text(net.db("parent"), "SELECT COUNT(*) FROM feedsync_audit WHERE actor = 'south' AND action = 'patient-fetch' AND patient_uuid = ?", &[patient.as_str().into()]).await;
    assert_eq!(audit.as_deref(), Some("1"));

    // Later edits at north reach south; south's edit reaches north and the parent; east never
    // holds any of the patient's rows.
    let name_uuid = one_text(net.db("north"), "SELECT pn.uuid FROM person_name pn JOIN person pe ON pe.person_id = pn.person_id WHERE pe.uuid = ? AND pn.voided = 0", &[patient.as_str().into()]).await.unwrap();
    exec(net.db("north"), "UPDATE person_name SET middle_name = 'Chikondi' WHERE uuid = ?", &[name_uuid.as_str().into()]).await;
    net.settle().await;
    let middle = "SELECT middle_name FROM person_name WHERE uuid = ?";
    assert_eq!(one_text(net.db("south"), middle, &[name_uuid.as_str().into()]).await.as_deref(), Some("Chikondi"));
    exec(net.db("south"), "UPDATE person SET birthdate_estimated = 1 WHERE uuid = ?", &[patient.as_str().into()]).await;
    // South sees the patient: a new encounter there.
    let encounter = "00000000-0000-4000-8000-0000000e0001";
    exec(
        net.db("south"),
        "INSERT INTO encounter (encounter_type, patient_id, location_id, encounter_datetime, creator, date_created, voided, uuid) \
         SELECT (SELECT encounter_type_id FROM encounter_type WHERE name = 'Consultation'), pe.person_id, (SELECT MIN(location_id) FROM location), \
         '2024-06-01 09:30:00', 1, '2024-06-01 09:30:00', 0, ? FROM person pe WHERE pe.uuid = ?",
        &[encounter.into(), patient.as_str().into()],
    )
    .await;
    net.settle().await;
    let estimated = "SELECT birthdate_estimated FROM person WHERE uuid = ?";
    let encounter_of = "SELECT pe.uuid FROM encounter e JOIN person pe ON pe.person_id = e.patient_id WHERE e.uuid = ?";
    for site in ["north", "parent"] {
        assert_eq!(one_text(net.db(site), estimated, &[patient.as_str().into()]).await.as_deref(), Some("1"), "{site}");
        assert_eq!(one_text(net.db(site), encounter_of, &[encounter.into()]).await.as_deref(), Some(patient.as_str()), "south's encounter at {site}");
    }
    assert!(!patient_uuids(net.db("east")).await.contains(&patient));
    for (table, column) in [("person", "uuid"), ("encounter", "uuid")] {
        let sql = format!("SELECT COUNT(*) FROM {table} WHERE {column} IN (?, ?)");
        assert_eq!(one_text(net.db("east"), &sql, &[patient.as_str().into(), encounter.into()]).await.as_deref(), Some("0"), "east {table}");
    }
    let east_rows = "SELECT (SELECT COUNT(*) FROM person_name pn JOIN person pe ON pe.person_id = pn.person_id WHERE pe.uuid = ?) + \
                     (SELECT COUNT(*) FROM patient_identifier pi JOIN person pe ON pe.person_id = pi.patient_id WHERE pe.uuid = ?)";
    assert_eq!(one_text(net.db("east"), east_rows, &[patient.as_str().into(), patient.as_str().into()]).await.as_deref(), Some("0"), "east holds none of the patient's rows");

    // Both facilities edit the same name between rounds: different fields both survive; the
    // same field goes to the version that reached the parent first, and the other is kept.
    exec(net.db("north"), "UPDATE person_name SET given_name = 'Mphatso', family_name2 = 'wa' WHERE uuid = ?", &[name_uuid.as_str().into()]).await;
    exec(net.db("south"), "UPDATE person_name SET given_name = 'Mphatsso', degree = 'BSc' WHERE uuid = ?", &[name_uuid.as_str().into()]).await;
    // North syncs first, so its value reached the parent first.
    net.publisher.publish().await;
    net.child("north").round().await.unwrap();
    net.settle().await;
    for site in ["north", "south", "parent"] {
        let row = "SELECT given_name || '|' || COALESCE(family_name2, '') || '|' || COALESCE(degree, '') FROM person_name WHERE uuid = ?";
        assert_eq!(one_text(net.db(site), row, &[name_uuid.as_str().into()]).await.as_deref(), Some("Mphatso|wa|BSc"), "{site}");
    }
    let mut s = net.db("parent").session().await.unwrap();
    let conflicts = exchange::list_conflicts(&mut s, false, 100).await.unwrap();
    let conflict = conflicts.iter().find(|c| c.key == name_uuid).expect("a conflict record at the parent");
    assert_eq!(conflict.fields, vec!["given_name".to_string()]);
    assert_eq!(conflict.child_version.as_ref().unwrap()["given_name"], serde_json::json!("Mphatsso"), "the losing value is kept");
    assert_eq!(conflict.peer, "south");

    // Resolving at the parent by taking the child's value syncs everywhere.
    let model = model_of(net.db("parent")).await;
    exchange::resolve_conflict(&mut s, &model, conflict.id, &Take::Theirs).await.unwrap();
    drop(s);
    net.settle().await;
    for site in ["north", "south", "parent"] {
        assert_eq!(one_text(net.db(site), "SELECT given_name FROM person_name WHERE uuid = ?", &[name_uuid.as_str().into()]).await.as_deref(), Some("Mphatsso"), "{site}");
    }
    let mut s = net.db("parent").session().await.unwrap();
    assert!(exchange::list_conflicts(&mut s, false, 100).await.unwrap().iter().all(|c| c.id != conflict.id), "resolved");

    // A child whose registration has a catchment rule (an identifier prefix, as Bahmni does)
    // receives the matching patient's whole record, and nobody else's.
    let rules = parent_network::CatchmentRules { identifier_prefixes: vec![identifier.clone()], ..Default::default() };
    let token = parent_network::add_child_with_rules(&mut s, "west", &[], false, &rules).await.unwrap();
    drop(s);
    let west_db = feedsync_sim::testdb::TestDatabase::create(Source::Sqlite25).unwrap();
    let west = feed_subscriber::network::ChildNode::new(
        west_db.database.clone(),
        model_of(&west_db.database).await,
        feed_subscriber::network::HttpParent::new(&format!("http://{}", net.publisher.addr), &token),
    );
    west.prepare().await.unwrap();
    net.publisher.publish().await;
    west.sync_until_idle(20).await.unwrap();
    let west_patients: BTreeSet<String> = patient_uuids(&west_db.database).await.difference(&base_patients).cloned().collect();
    assert_eq!(west_patients, BTreeSet::from([patient.clone()]), "west holds exactly the patient its rule matches");
    for table in ["person_name", "patient_identifier", "visit", "encounter"] {
        let sql = format!("SELECT COUNT(*) FROM {table} x JOIN person pe ON pe.person_id = x.{} WHERE pe.uuid = ?", if table == "person_name" { "person_id" } else { "patient_id" });
        let at_west = one_text(&west_db.database, &sql, &[patient.as_str().into()]).await;
        let at_parent = one_text(net.db("parent"), &sql, &[patient.as_str().into()]).await;
        assert_eq!(at_west, at_parent, "{table} rows of the patient at west");
        if table != "visit" && table != "encounter" {
            assert_ne!(at_parent.as_deref(), Some("0"), "{table}");
        }
    }
    // Later edits reach it.
    exec(net.db("north"), "UPDATE person_name SET middle_name = 'Tendai' WHERE uuid = ?", &[name_uuid.as_str().into()]).await;
    net.settle().await;
    net.publisher.publish().await;
    west.sync_until_idle(20).await.unwrap();
    assert_eq!(one_text(&west_db.database, middle, &[name_uuid.as_str().into()]).await.as_deref(), Some("Tendai"));
}

fn double_a_letter(name: &str) -> String {
    // "Banda" → "Bannda": a typical slip a tolerant search must forgive.
    let chars: Vec<char> = name.chars().collect();
    let i = chars.len() / 2;
    chars[..=i].iter().chain(std::iter::once(&chars[i])).chain(&chars[i + 1..]).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_endpoint_refuses_bad_input_and_applies_nothing() {
    let Some(net) = Network::start(Source::Sqlite25, &["kigali"]).await else { return };
    let addr = net.publisher.addr;
    let token = net.children[0].3.clone();
    let auth = format!("Bearer {token}");
    let events_before = one_text(net.db("parent"), "SELECT COUNT(*) FROM feedsync_journal", &[]).await;

    // No token, unknown child, wrong token, another scheme: 401 and nothing else.
    for header in [None, Some("Bearer ghost.0000".to_owned()), Some(format!("Bearer kigali.{}", "0".repeat(64))), Some("Basic a2lnYWxpOng=".to_owned())] {
        let headers: Vec<(&str, &str)> = header.iter().map(|h| ("authorization", h.as_str())).collect();
        let reply = http(addr, "GET", "/ws/feedsync/network/hello", &headers, None).await;
        assert_eq!(reply.status, 401, "{header:?}: {}", reply.text());
        assert!(reply.text().contains("hint"), "{}", reply.text());
    }
    let h = [("authorization", auth.as_str()), ("content-type", "application/json")];
    // Malformed and oversized bodies.
    let reply = http(addr, "POST", "/ws/feedsync/network/push", &h, Some(b"{not json")).await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    let big = vec![b' '; feedsync_wire::network::PUSH_BODY_BYTES_MAX + 10];
    let reply = http(addr, "POST", "/ws/feedsync/network/push", &h, Some(&big)).await;
    assert_eq!(reply.status, 413, "{}", reply.text());
    // An unknown table, and a category the child may not write: the whole push is refused.
    let location = "{\"seq\":1,\"table\":\"location\",\"key\":\"00000000-0000-4000-8000-0000000000aa\",\"category\":\"location\",\
        \"resource\":{\"table\":\"location\",\"category\":\"location\",\"key\":\"00000000-0000-4000-8000-0000000000aa\",\"hash\":\"x\",\
        \"columns\":{\"name\":\"New outpost\",\"retired\":0,\"date_created\":\"2024-01-01 00:00:00\",\"creator\":{\"ref\":{\"table\":\"users\",\"key\":\"A4F30A1B-5EB9-11DF-A648-37A07F9C90FB\"}},\"uuid\":\"00000000-0000-4000-8000-0000000000aa\"}}}";
    let unknown = "{\"through_seq\":2,\"items\":[{\"seq\":2,\"table\":\"no_such_table\",\"key\":\"k\",\"category\":\"x\"}]}";
    let reply = http(addr, "POST", "/ws/feedsync/network/push", &h, Some(unknown.as_bytes())).await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    let mut s = net.db("parent").session().await.unwrap();
    let limited_token = format!("Bearer {}", parent_network::add_child(&mut s, "limited", &["obs".to_owned()], false).await.unwrap());
    drop(s);
    let hl = [("authorization", limited_token.as_str()), ("content-type", "application/json")];
    let body = format!("{{\"through_seq\":1,\"items\":[{location}]}}");
    let reply = http(addr, "POST", "/ws/feedsync/network/push", &hl, Some(body.as_bytes())).await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert!(reply.text().contains("may not write category"), "{}", reply.text());
    // A revoked child's token gets 401.
    let mut s = net.db("parent").session().await.unwrap();
    parent_network::revoke_child(&mut s, "limited").await.unwrap();
    drop(s);
    let reply = http(addr, "POST", "/ws/feedsync/network/push", &hl, Some(body.as_bytes())).await;
    assert_eq!(reply.status, 401, "{}", reply.text());
    // A reference to an identity the parent does not have: held with the reason, not applied.
    let dangling = location.replace("A4F30A1B-5EB9-11DF-A648-37A07F9C90FB", "ffffffff-0000-4000-8000-000000000000");
    let body = format!("{{\"through_seq\":1,\"items\":[{dangling}]}}");
    let reply = http(addr, "POST", "/ws/feedsync/network/push", &h, Some(body.as_bytes())).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answer = reply.json();
    assert_eq!(answer["results"][0]["status"], "held", "{answer}");
    assert!(answer["results"][0]["reason"].as_str().unwrap().contains("ffffffff-0000-4000-8000-000000000000"), "{answer}");
    assert_eq!(one_text(net.db("parent"), "SELECT COUNT(*) FROM location WHERE uuid = '00000000-0000-4000-8000-0000000000aa'", &[]).await.as_deref(), Some("0"));
    // Nothing above journaled a change at the parent.
    assert_eq!(one_text(net.db("parent"), "SELECT COUNT(*) FROM feedsync_journal", &[]).await, events_before);
    // The same push again is a harmless no-op (acknowledged already).
    let reply = http(addr, "POST", "/ws/feedsync/network/push", &h, Some(body.as_bytes())).await;
    assert_eq!(reply.json()["results"][0]["status"], "already", "{}", reply.text());
    // The corrected version replaces the held one and applies.
    let body = format!("{{\"through_seq\":2,\"items\":[{}]}}", location.replace("\"seq\":1", "\"seq\":2"));
    let reply = http(addr, "POST", "/ws/feedsync/network/push", &h, Some(body.as_bytes())).await;
    assert_eq!(reply.json()["results"][0]["status"], "applied", "{}", reply.text());
    assert_eq!(one_text(net.db("parent"), "SELECT name FROM location WHERE uuid = '00000000-0000-4000-8000-0000000000aa'", &[]).await.as_deref(), Some("New outpost"));
}

/// A district server is a child of the national server and the parent of its facilities:
/// data flows through it both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_district_passes_data_up_and_down() {
    use feedsync_sim::publisher::Publisher;
    use feed_subscriber::network::{ChildNode, HttpParent};
    use feedsync_sim::testdb::TestDatabase;
    // national ← district ← facility
    let Some(national) = Network::start(Source::Sqlite25, &["district"]).await else { return };
    let district_db = national.db("district").clone();
    let district_publisher = Publisher::start(&district_db, |_| {}).await;
    let mut s = district_db.session().await.unwrap();
    let token = parent_network::add_child(&mut s, "facility", &feedsync_sim::network::trusted_categories(), false).await.unwrap();
    drop(s);
    let facility_db = TestDatabase::create(Source::Sqlite25).unwrap();
    let facility = ChildNode::new(facility_db.database.clone(), model_of(&facility_db.database).await, HttpParent::new(&format!("http://{}", district_publisher.addr), &token));
    facility.prepare().await.unwrap();
    // Until a whole pass moves nothing: the district's rounds as a child run in
    // `national.settle()`, the facility's against the district's publisher.
    let settle_all = || async {
        for _ in 0..10 {
            national.settle().await;
            district_publisher.publish().await;
            let moved = facility.round().await.unwrap().moved();
            if !moved && district_publisher.publish().await == 0 {
                return;
            }
        }
        panic!("the three levels did not settle");
    };
    let base = patient_uuids(national.db("parent")).await;
    // Metadata made at the national server reaches the facility through the district.
    run_workload(national.db("parent"), 5, 1).await;
    settle_all().await;
    assert_eq!(one_text(&facility_db.database, "SELECT COUNT(*) FROM encounter_type WHERE name = 'Consultation'", &[]).await.as_deref(), Some("1"));
    let national_patients: BTreeSet<String> = patient_uuids(national.db("parent")).await.difference(&base).cloned().collect();
    // A patient registered at the facility reaches the district and the national server.
    run_workload(&facility_db.database, 55, 1).await;
    settle_all().await;
    let facility_patients: BTreeSet<String> = patient_uuids(&facility_db.database).await.difference(&base).cloned().collect();
    assert_eq!(facility_patients.len(), 1);
    for (site, db) in [("district", &district_db), ("national", national.db("parent"))] {
        assert!(facility_patients.is_subset(&patient_uuids(db).await), "{site} holds the facility's patient");
        assert_parent_holds(&compare_dbs(&facility_db.database, db).await, site);
    }
    // The national server's own patient went nowhere.
    assert!(patient_uuids(&district_db).await.is_disjoint(&national_patients));
    assert!(patient_uuids(&facility_db.database).await.is_disjoint(&national_patients));
    // An edit at the national server to the facility's patient flows down both levels.
    let patient = facility_patients.iter().next().unwrap();
    exec(national.db("parent"), "UPDATE person SET birthdate_estimated = 1 WHERE uuid = ?", &[patient.as_str().into()]).await;
    settle_all().await;
    assert_eq!(one_text(&facility_db.database, "SELECT birthdate_estimated FROM person WHERE uuid = ?", &[patient.as_str().into()]).await.as_deref(), Some("1"));
}

/// A push whose answer is lost after the parent applied it, then a new edit of the same record
/// at the child: the child sends the same push again, and its new edit wins everywhere, with no
/// conflict (nothing is overwritten by the parent's echo of the older version).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_push_answer_loses_no_later_edit() {
    use feed_subscriber::network::{ChildNode, HttpParent, LinkError, ParentLink};
    use feedsync_wire::network::{Changes, ChildReport, Hello, PushRequest, PushResponse, Record};
    use feedsync_node::search::Candidate;
    use std::sync::atomic::{AtomicBool, Ordering};
    struct LosesOneAnswer {
        inner: HttpParent,
        lose: AtomicBool,
    }
    impl ParentLink for LosesOneAnswer {
        async fn hello(&self) -> Result<Hello, LinkError> {
            self.inner.hello().await
        }
        async fn changes(&self, after: i64, limit: usize) -> Result<Changes, LinkError> {
            self.inner.changes(after, limit).await
        }
        async fn push(&self, push: &PushRequest) -> Result<PushResponse, LinkError> {
            let answer = self.inner.push(push).await?;
            if self.lose.swap(false, Ordering::SeqCst) {
                return Err(LinkError { message: "connection reset before the answer".into(), retryable: true, unauthorized: false });
            }
            Ok(answer)
        }
        async fn find_patients(&self, query: &str, limit: usize) -> Result<Vec<Candidate>, LinkError> {
            self.inner.find_patients(query, limit).await
        }
        async fn fetch_patient(&self, uuid: &str, reason: &str) -> Result<Record, LinkError> {
            self.inner.fetch_patient(uuid, reason).await
        }
        async fn report(&self, report: &ChildReport) -> Result<(), LinkError> {
            self.inner.report(report).await
        }
    }
    let Some(net) = Network::start(Source::Sqlite25, &["north"]).await else { return };
    run_workload(net.db("parent"), 3, 0).await;
    run_workload(net.db("north"), 61, 1).await;
    net.settle().await;
    let (_, db, _, token) = &net.children[0];
    let north = ChildNode::new(
        db.database.clone(),
        model_of(&db.database).await,
        LosesOneAnswer { inner: HttpParent::new(&format!("http://{}", net.publisher.addr), token), lose: AtomicBool::new(true) },
    );
    let name = one_text(&db.database, "SELECT pn.uuid FROM person_name pn JOIN patient pt ON pt.patient_id = pn.person_id ORDER BY pn.person_name_id DESC LIMIT 1", &[]).await.unwrap();
    exec(&db.database, "UPDATE person_name SET given_name = 'Wanjiru' WHERE uuid = ?", &[name.as_str().into()]).await;
    let lost = north.round().await;
    assert!(lost.as_ref().is_err_and(|e| e.is_retryable()), "{lost:?}");
    let given = "SELECT given_name FROM person_name WHERE uuid = ?";
    assert_eq!(one_text(net.db("parent"), given, &[name.as_str().into()]).await.as_deref(), Some("Wanjiru"), "the parent applied it");
    exec(&db.database, "UPDATE person_name SET given_name = 'Wanjiku' WHERE uuid = ?", &[name.as_str().into()]).await;
    for _ in 0..3 {
        net.publisher.publish().await;
        north.round().await.unwrap();
    }
    for site in ["north", "parent"] {
        assert_eq!(one_text(net.db(site), given, &[name.as_str().into()]).await.as_deref(), Some("Wanjiku"), "{site}");
    }
    for site in ["north", "parent"] {
        let mut s = net.db(site).session().await.unwrap();
        assert!(exchange::list_conflicts(&mut s, true, 10).await.unwrap().is_empty(), "{site}: no conflict");
    }
}

/// A patient found at the parent right after its facility pushed it, before the parent's
/// sequencer has run, is fetched whole: the fetch publishes what is waiting first (the demo
/// once fetched an empty record this way on a busy machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_fetched_right_after_its_push_arrives_whole() {
    let Some(net) = Network::start(Source::Sqlite25, &["north", "south"]).await else { return };
    net.settle().await;
    let base_patients = patient_uuids(net.db("parent")).await;
    run_workload(net.db("north"), 31, 1).await;
    // North pushes; nobody runs the parent's sequencer.
    net.child("north").round().await.unwrap();
    let pushed: Vec<String> = patient_uuids(net.db("parent")).await.difference(&base_patients).cloned().collect();
    assert_eq!(pushed.len(), 1, "north's patient is at the parent");
    let unsequenced = one_text(net.db("parent"), "SELECT COUNT(*) FROM feedsync_journal", &[]).await.unwrap();
    assert_ne!(unsequenced, "0", "the pushed rows wait in the parent's journal");
    let (applied, held) = net.child("south").fetch_patient(&pushed[0], "transferred in").await.unwrap();
    // Rows that reference metadata north made with the patient (its users, encounter types)
    // wait at south until its next pull brings that metadata.
    assert!(applied + held > 3, "fetched {applied} rows, {held} held: the record came empty");
    net.settle().await;
    let mut s = net.db("south").session().await.unwrap();
    let still_held = exchange::held_items(&mut s, None, 100).await.unwrap();
    assert!(still_held.is_empty(), "held at south after a round: {:?}", still_held.iter().map(|h| (&h.item.table, &h.reason)).collect::<Vec<_>>());
    drop(s);
    let at_north = one_text(net.db("north"), "SELECT COUNT(*) FROM obs o JOIN person pe ON pe.person_id = o.person_id WHERE pe.uuid = ?", &[pushed[0].as_str().into()]).await;
    let at_south = one_text(net.db("south"), "SELECT COUNT(*) FROM obs o JOIN person pe ON pe.person_id = o.person_id WHERE pe.uuid = ?", &[pushed[0].as_str().into()]).await;
    assert_eq!(at_south, at_north, "every obs of the patient came with the fetch");
    // A fetch naming no patient is a clear 400, not a crash.
    let response = http(net.publisher.addr, "POST", "/ws/feedsync/network/patients//fetch", &[("authorization", &format!("Bearer {}", net.children[1].3))], None).await;
    assert_eq!(response.status, 400, "{}", response.text());
    let response = http(net.publisher.addr, "POST", "/ws/feedsync/network/patients/fetch", &[("authorization", &format!("Bearer {}", net.children[1].3))], None).await;
    assert_eq!(response.status, 400, "{}", response.text());
}

async fn name_row(db: &feedsync_db::Database, patient: &str) -> String {
    one_text(db, "SELECT pn.uuid FROM person_name pn JOIN person pe ON pe.person_id = pn.person_id WHERE pe.uuid = ?", &[patient.into()]).await.unwrap()
}

async fn given_name(db: &feedsync_db::Database, name_uuid: &str) -> Option<String> {
    one_text(db, "SELECT given_name FROM person_name WHERE uuid = ?", &[name_uuid.into()]).await
}

/// A push of `resource` (the parent's version with `given_name` changed) from the child whose
/// token is `token`; returns the parent's answer for it.
async fn push_renamed(net: &Network, token: &str, seq: i64, table: &str, key: &str, given_name: &str) -> serde_json::Value {
    let model = model_of(net.db("parent")).await;
    let mut s = net.db("parent").session().await.unwrap();
    let mut resource = exchange::current(&mut s, &model, table, key, &mut Default::default()).await.unwrap().expect("the row is at the parent");
    // Edited from the version both sides agree on, so it is the child's edit, not a conflict.
    let base = feedsync_wire::network::Base { columns: Some(resource.columns.clone()) };
    resource.columns.insert("given_name".into(), serde_json::json!(given_name));
    resource.hash = feedsync_wire::resource::content_hash(&resource.columns);
    let item = feedsync_wire::network::Item { seq, table: table.into(), key: key.into(), category: resource.category.clone(), resource: Some(resource), base: Some(base) };
    let body = serde_json::to_vec(&feedsync_wire::network::PushRequest { through_seq: seq, items: vec![item] }).unwrap();
    let auth = format!("Bearer {token}");
    let reply = http(net.publisher.addr, "POST", "/ws/feedsync/network/push", &[("authorization", auth.as_str()), ("content-type", "application/json")], Some(&body)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["results"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_writes_only_its_catchment_and_no_roles_without_a_grant() {
    let Some(net) = Network::start(Source::Sqlite25, &["north", "south"]).await else { return };
    let base_patients = patient_uuids(net.db("parent")).await;
    run_workload(net.db("north"), 404, 1).await;
    run_workload(net.db("south"), 505, 1).await;
    net.settle().await;
    let new_patient = |child: &str| {
        let base = base_patients.clone();
        let db = net.db(child).clone();
        async move { patient_uuids(&db).await.difference(&base).next().cloned().expect("a new patient") }
    };
    let (north_patient, south_patient) = (new_patient("north").await, new_patient("south").await);
    let parent = net.db("parent").clone();
    let (north_name, south_name) = (name_row(&parent, &north_patient).await, name_row(&parent, &south_patient).await);
    let north_token = net.children.iter().find(|c| c.0 == "north").unwrap().3.clone();

    // North renames south's patient, which it never held: held with the reason, not applied.
    let answer = push_renamed(&net, &north_token, 1_000_000, "person_name", &south_name, "Intruder").await;
    assert_eq!(answer["status"], "held", "{answer}");
    assert!(answer["reason"].as_str().unwrap().contains(&format!("patient {south_patient} is not in north's catchment")), "{answer}");
    assert_ne!(given_name(&parent, &south_name).await.as_deref(), Some("Intruder"));
    // The same push of its own patient applies: nothing else is blocked.
    let answer = push_renamed(&net, &north_token, 1_000_001, "person_name", &north_name, "Renamed").await;
    assert_eq!(answer["status"], "applied", "{answer}");
    assert_eq!(given_name(&parent, &north_name).await.as_deref(), Some("Renamed"));
    // The held change stays held when the parent retries it (at north's next push).
    let answer = push_renamed(&net, &north_token, 1_000_002, "person_name", &north_name, "Renamed again").await;
    assert_eq!(answer["status"], "applied", "{answer}");
    assert_ne!(given_name(&parent, &south_name).await.as_deref(), Some("Intruder"));
    let held = one_text(net.db("parent"), "SELECT COUNT(*) FROM feedsync_inbox WHERE peer = 'north'", &[]).await;
    assert_eq!(held.as_deref(), Some("1"));

    // A child registered with the default categories may not grant roles: `*` does not cover
    // accounts, roles or privileges. The whole push is refused, nothing applied.
    let mut s = net.db("parent").session().await.unwrap();
    let plain = parent_network::add_child(&mut s, "plain", &[], false).await.unwrap();
    drop(s);
    let grant = "{\"through_seq\":1,\"items\":[{\"seq\":1,\"table\":\"user_role\",\"key\":\"A4F30A1B-5EB9-11DF-A648-37A07F9C90FB+System Developer\",\
        \"category\":\"user_role\",\"resource\":{\"table\":\"user_role\",\"category\":\"user_role\",\"key\":\"A4F30A1B-5EB9-11DF-A648-37A07F9C90FB+System Developer\",\
        \"hash\":\"x\",\"columns\":{}}}]}";
    let roles_before = one_text(net.db("parent"), "SELECT COUNT(*) FROM user_role", &[]).await;
    let auth = format!("Bearer {plain}");
    let reply = http(net.publisher.addr, "POST", "/ws/feedsync/network/push", &[("authorization", auth.as_str()), ("content-type", "application/json")], Some(grant.as_bytes())).await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert!(reply.text().contains("may not write category \\\"user_role\\\""), "{}", reply.text());
    assert_eq!(one_text(net.db("parent"), "SELECT COUNT(*) FROM user_role", &[]).await, roles_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_tokens_rotate_with_an_overlap_and_a_revoked_name_can_register_again() {
    let Some(net) = Network::start(Source::Sqlite25, &[]).await else { return };
    let hello = |token: String| {
        let addr = net.publisher.addr;
        async move {
            let auth = format!("Bearer {token}");
            http(addr, "GET", "/ws/feedsync/network/hello", &[("authorization", auth.as_str())], None).await.status
        }
    };
    let mut s = net.db("parent").session().await.unwrap();
    let first = parent_network::add_child(&mut s, "kibuye", &[], false).await.unwrap();
    assert_eq!(hello(first.clone()).await, 200);
    // Rotated with an overlap: both tokens work until it ends.
    let second = parent_network::rotate_child_token(&mut s, "kibuye", 3_600).await.unwrap();
    assert_ne!(first, second);
    assert_eq!((hello(first.clone()).await, hello(second.clone()).await), (200, 200));
    // Rotated without one: only the newest works.
    let third = parent_network::rotate_child_token(&mut s, "kibuye", 0).await.unwrap();
    assert_eq!(hello(third.clone()).await, 200);
    assert_eq!(hello(second.clone()).await, 401, "the token rotated without overlap ends at once");
    assert_eq!(hello(first.clone()).await, 200, "the first is still within its hour");
    // Revoked: every token ends, earlier ones included, and the name cannot be rotated.
    parent_network::revoke_child(&mut s, "kibuye").await.unwrap();
    assert_eq!((hello(first.clone()).await, hello(third.clone()).await), (401, 401));
    assert!(parent_network::rotate_child_token(&mut s, "kibuye", 0).await.is_err());
    // Registered again (a reinstalled facility): a new token, positions from the start.
    exec(net.db("parent"), "UPDATE feedsync_child SET acked_seq = 77 WHERE name = 'kibuye'", &[]).await;
    let again = parent_network::add_child(&mut s, "kibuye", &[], false).await.unwrap();
    assert_eq!(hello(again).await, 200);
    assert_eq!((hello(first).await, hello(third).await), (401, 401), "the old tokens stay dead");
    assert_eq!(one_text(net.db("parent"), "SELECT acked_seq FROM feedsync_child WHERE name = 'kibuye'", &[]).await.as_deref(), Some("0"));
    // A live child's name is still taken.
    let taken = parent_network::add_child(&mut s, "kibuye", &[], false).await.unwrap_err();
    assert!(taken.to_string().contains("child rotate"), "{taken}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_fetch_needs_a_reason_and_is_rate_limited_per_child() {
    let Some(net) = Network::start(Source::Sqlite25, &["north"]).await else { return };
    let base = patient_uuids(net.db("parent")).await;
    run_workload(net.db("parent"), 9, 1).await;
    net.publisher.publish().await;
    let patient = patient_uuids(net.db("parent")).await.difference(&base).next().cloned().expect("a patient registered at the parent");
    let token = net.children[0].3.clone();
    let auth = format!("Bearer {token}");
    let h = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let path = format!("/ws/feedsync/network/patients/{patient}/fetch");
    for body in [&b"{}"[..], b"{\"reason\": \"   \"}", b"not json"] {
        let reply = http(net.publisher.addr, "POST", &path, &h, Some(body)).await;
        assert_eq!(reply.status, 400, "{}", reply.text());
        assert!(reply.text().contains("needs a reason"), "{}", reply.text());
    }
    assert_eq!(one_text(net.db("parent"), "SELECT COUNT(*) FROM feedsync_catchment WHERE child = 'north'", &[]).await.as_deref(), Some("0"), "nothing fetched");
    let reply = http(net.publisher.addr, "POST", &path, &h, Some(b"{\"reason\": \"transferred in, referral 2231\"}")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let detail = one_text(net.db("parent"), "SELECT detail FROM feedsync_audit WHERE actor = 'north' AND action = 'patient-fetch'", &[]).await.unwrap();
    assert!(detail.contains("reason: transferred in, referral 2231"), "{detail}");
    // The hour's fetches are counted from the audit log.
    let mut s = net.db("parent").session().await.unwrap();
    assert!(parent_network::check_fetch_rate(&mut s, "north", 2).await.is_ok());
    exchange::audit(&mut s, "north", "patient-fetch", Some(&patient), "another").await.unwrap();
    let refused = parent_network::check_fetch_rate(&mut s, "north", 2).await.unwrap_err();
    assert!(refused.to_string().contains("fetched 2 patients in the last hour"), "{refused}");
    exec(net.db("parent"), "UPDATE feedsync_audit SET at = '2020-01-01 00:00:00.000' WHERE actor = 'north'", &[]).await;
    assert!(parent_network::check_fetch_rate(&mut s, "north", 2).await.is_ok(), "older fetches do not count");
}
