//! The parent's dashboard and admin API on a real network (a parent publisher over HTTP and
//! children on SQLite): the overview's numbers against the database, held changes (skip needs a
//! reason, retry, what waits behind), conflicts resolved at the parent and at a child, patient
//! search, the rounds history, the audit log, the static pages, and who may use any of it.

use std::net::SocketAddr;

use feed_publisher::dashboard::{ADMIN_TOKEN_ENV, COOKIE_NAME, ROUND_TABLE, ROUNDS_PER_CHILD_MAX};
use feedsync_node::parent as parent_network;
use feedsync_sim::publisher::{HttpReply, Publisher, http};
use feedsync_sim::network::{Network, exec, one_text, run_workload};
use feedsync_db::{Database, Value};
use feedsync_node::exchange;
use feedsync_wire::network::Item;
use feedsync_sim::testdb::{Source, TestDatabase};
use serde_json::{Value as Json, json};

const ADMIN: &str = "/ws/feedsync/admin";

async fn get(addr: SocketAddr, path: &str) -> HttpReply {
    http(addr, "GET", &format!("{ADMIN}{path}"), &[], None).await
}

async fn post(addr: SocketAddr, path: &str, body: Json) -> HttpReply {
    http(addr, "POST", &format!("{ADMIN}{path}"), &[], Some(body.to_string().as_bytes())).await
}

fn ok(reply: HttpReply) -> Json {
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

async fn count(db: &Database, sql: &str, params: &[Value]) -> i64 {
    one_text(db, sql, params).await.unwrap_or_default().parse().unwrap()
}

fn child<'a>(overview: &'a Json, name: &str) -> &'a Json {
    overview["children"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("{name} in {overview}"))
}

fn kinds(problems: &Json) -> Vec<String> {
    problems.as_array().unwrap().iter().map(|p| p["kind"].as_str().unwrap().to_owned()).collect()
}

/// The overview's numbers for one child, against the database and the network's own functions.
async fn assert_child_numbers(net: &Network, overview: &Json, name: &str) {
    let parent = net.db("parent");
    let row = child(overview, name);
    let mut s = parent.session().await.unwrap();
    let registered = parent_network::list_children(&mut s).await.unwrap().into_iter().find(|c| c.name == name).unwrap();
    let waiting = parent_network::waiting_for_child(&mut s, &registered).await.unwrap();
    drop(s);
    assert_eq!(row["waiting_to_child"], json!(waiting), "{name}: waiting parent → child");
    let catchment = count(parent, "SELECT COUNT(*) FROM feedsync_catchment WHERE child = ?", &[name.into()]).await;
    assert_eq!(row["catchment_patients"], json!(catchment), "{name}: catchment");
    let held = count(parent, "SELECT COUNT(*) FROM feedsync_inbox WHERE peer = ?", &[name.into()]).await;
    assert_eq!(row["held_at_parent"], json!(held), "{name}: held at the parent");
    let conflicts = count(parent, "SELECT COUNT(*) FROM feedsync_conflict WHERE status = 'open' AND site_side = 'parent' AND peer = ?", &[name.into()]).await;
    assert_eq!(row["conflicts_at_parent"], json!(conflicts), "{name}: conflicts at the parent");
    if net.children.iter().any(|c| c.0 == name) {
        let at_child = net.db(name);
        let held_there = count(at_child, "SELECT COUNT(*) FROM feedsync_inbox WHERE peer = 'parent'", &[]).await;
        assert_eq!(row["held_at_child"], json!(held_there), "{name}: held at the child (as of its last report)");
        let conflicts_there = count(at_child, "SELECT COUNT(*) FROM feedsync_conflict WHERE status = 'open'", &[]).await;
        assert_eq!(row["conflicts_at_child"], json!(conflicts_there), "{name}: conflicts at the child");
    }
}

/// A location pushed by a child; `creator` and `parent_location` decide whether it can apply.
fn location_item(seq: i64, key: &str, creator: &str, parent_location: Option<&str>) -> Json {
    let mut columns = json!({
        "name": format!("Outpost {key}"), "retired": 0, "date_created": "2024-01-01 00:00:00",
        "creator": {"ref": {"table": "users", "key": creator}}, "uuid": key,
    });
    if let Some(p) = parent_location {
        columns["parent_location"] = json!({"ref": {"table": "location", "key": p}});
    }
    json!({"seq": seq, "table": "location", "key": key, "category": "location",
           "resource": {"table": "location", "category": "location", "key": key, "hash": "x", "columns": columns}})
}

const ADMIN_USER: &str = "A4F30A1B-5EB9-11DF-A648-37A07F9C90FB";
const MISSING_USER: &str = "ffffffff-0000-4000-8000-000000000000";
const OUTPOST_A: &str = "00000000-0000-4000-8000-0000000000aa";
const OUTPOST_B: &str = "00000000-0000-4000-8000-0000000000bb";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_on_a_parent_and_children() {
    let Some(net) = Network::start(Source::Sqlite25, &["north", "south"]).await else { return };
    let addr = net.publisher.addr;
    run_workload(net.db("parent"), 3, 0).await;
    net.settle().await;
    run_workload(net.db("north"), 31, 2).await;
    run_workload(net.db("south"), 32, 1).await;
    net.settle().await;

    // ---- the overview's numbers are the database's ----
    let overview = ok(get(addr, "/overview").await);
    for name in ["north", "south"] {
        assert_child_numbers(&net, &overview, name).await;
        let row = child(&overview, name);
        assert_eq!(row["waiting_to_child"], json!(0), "settled: {row}");
        assert_eq!(row["pending_push"], json!(0), "settled: {row}");
        assert!(row["last_contact_age_s"].as_i64().unwrap() < 600, "{row}");
        assert!(kinds(&row["problems"]).is_empty(), "a settled child has no problems: {row}");
    }
    assert!(child(&overview, "north")["catchment_patients"].as_i64().unwrap() >= 2);
    assert_eq!(overview["totals"]["children"], json!(2));
    assert_eq!(overview["totals"]["with_problems"], json!(0));

    // A change at the parent waits for both children (metadata goes to all); one not yet
    // published waits in the journal.
    exec(net.db("parent"), "UPDATE location SET description = 'district store' WHERE location_id = (SELECT MIN(location_id) FROM location)", &[]).await;
    net.publisher.publish().await;
    exec(net.db("parent"), "UPDATE location SET description = 'district store 2' WHERE location_id = (SELECT MIN(location_id) FROM location)", &[]).await;
    let overview = ok(get(addr, "/overview").await);
    for name in ["north", "south"] {
        assert_child_numbers(&net, &overview, name).await;
        let row = child(&overview, name);
        assert_eq!(row["waiting_to_child"], json!(1), "{row}");
        assert!(row["oldest_to_child_age_s"].is_i64() && row["oldest_waiting_age_s"].is_i64(), "{row}");
    }
    let backlog = count(net.db("parent"), "SELECT COUNT(*) FROM feedsync_journal", &[]).await;
    assert!(backlog >= 1);
    assert_eq!(overview["parent"]["journal_backlog"], json!(backlog));
    let last_seq = count(net.db("parent"), "SELECT MAX(event_seq) FROM feedsync_event", &[]).await;
    assert_eq!(overview["parent"]["last_event_seq"], json!(last_seq));
    net.settle().await;

    // ---- held at the parent: what waits behind, skip needs a reason, retry ----
    let mut s = net.db("parent").session().await.unwrap();
    let laptop_token = parent_network::add_child(&mut s, "laptop", &[], false).await.unwrap();
    drop(s);
    let auth = format!("Bearer {laptop_token}");
    let push = json!({"through_seq": 2, "items": [location_item(1, OUTPOST_A, MISSING_USER, None), location_item(2, OUTPOST_B, ADMIN_USER, Some(OUTPOST_A))]});
    let reply = http(addr, "POST", "/ws/feedsync/network/push", &[("authorization", auth.as_str())], Some(push.to_string().as_bytes())).await;
    assert_eq!(reply.json()["results"][1]["status"], "held", "{}", reply.text());
    let held = ok(get(addr, "/held").await);
    let items = held["parent"]["items"].as_array().unwrap();
    let a = items.iter().find(|i| i["key"] == OUTPOST_A).expect("outpost A held");
    let b = items.iter().find(|i| i["key"] == OUTPOST_B).expect("outpost B held");
    assert_eq!(held["parent"]["held_total"], json!(2));
    assert_eq!(a["from"], "laptop");
    assert!(a["reason"].as_str().unwrap().contains(MISSING_USER), "{a}");
    assert!(b["reason"].as_str().unwrap().contains(OUTPOST_A), "{b}");
    assert_eq!(a["behind"], json!([{"id": b["id"], "table": "location", "key": OUTPOST_B, "why": "needs_this_row"}]), "B waits behind A");
    let (a_id, b_id) = (a["id"].as_i64().unwrap(), b["id"].as_i64().unwrap());
    let overview = ok(get(addr, "/overview").await);
    assert_child_numbers(&net, &overview, "laptop").await;
    assert!(kinds(&child(&overview, "laptop")["problems"]).contains(&"held".to_owned()), "{overview}");
    assert_eq!(overview["parent"]["held"], json!(2));
    assert_eq!(overview["totals"]["with_problems"], json!(1));

    for body in [json!({}), json!({"reason": "   "})] {
        let reply = post(addr, &format!("/held/{a_id}/skip"), body).await;
        assert_eq!(reply.status, 400, "{}", reply.text());
        let error = reply.json();
        assert!(error["hint"].as_str().unwrap().contains("reason") && error["status"] == 400, "{error}");
    }
    assert_eq!(
        count(net.db("parent"), "SELECT COUNT(*) FROM feedsync_inbox WHERE inbox_id = ?", &[Value::Int(a_id)]).await,
        1,
        "nothing skipped without a reason"
    );
    let skipped = ok(post(addr, &format!("/held/{a_id}/skip"), json!({"reason": "test outpost, never existed"})).await);
    assert_eq!(skipped["skipped"], json!(true));
    assert_eq!(count(net.db("parent"), "SELECT COUNT(*) FROM feedsync_inbox WHERE inbox_id = ?", &[Value::Int(a_id)]).await, 0);
    let audit =
        one_text(net.db("parent"), "SELECT detail FROM feedsync_audit WHERE actor = 'dashboard' AND action = 'skip-held' ORDER BY audit_id DESC LIMIT 1", &[])
            .await
            .unwrap();
    assert!(audit.contains(&format!("#{a_id}")) && audit.contains("test outpost, never existed"), "{audit}");
    assert_eq!(post(addr, &format!("/held/{a_id}/skip"), json!({"reason": "again"})).await.status, 404);
    let retried = ok(post(addr, &format!("/held/{b_id}/retry"), json!({})).await);
    assert_eq!(retried["still_held"], json!(true), "B still lacks A: {retried}");
    assert!(retried["reason"].as_str().unwrap().contains(OUTPOST_A));
    assert_eq!(count(net.db("parent"), "SELECT COUNT(*) FROM feedsync_audit WHERE actor = 'dashboard' AND action = 'retry-held'", &[]).await, 1);
    ok(post(addr, &format!("/held/{b_id}/skip"), json!({"reason": "its parent location was skipped"})).await);

    // ---- a conflict found at the parent, resolved field by field through the API ----
    let patient =
        one_text(net.db("north"), "SELECT pe.uuid FROM person pe JOIN patient pt ON pt.patient_id = pe.person_id ORDER BY pt.patient_id DESC LIMIT 1", &[])
            .await
            .unwrap();
    net.child("south").fetch_patient(&patient, "transferred in").await.unwrap();
    net.settle().await;
    let name_uuid = one_text(
        net.db("north"),
        "SELECT pn.uuid FROM person_name pn JOIN person pe ON pe.person_id = pn.person_id WHERE pe.uuid = ? AND pn.voided = 0",
        &[patient.as_str().into()],
    )
    .await
    .unwrap();
    exec(net.db("north"), "UPDATE person_name SET given_name = 'Mphatso' WHERE uuid = ?", &[name_uuid.as_str().into()]).await;
    exec(net.db("south"), "UPDATE person_name SET given_name = 'Mphatsso', degree = 'BSc' WHERE uuid = ?", &[name_uuid.as_str().into()]).await;
    net.publisher.publish().await;
    net.child("north").round().await.unwrap();
    net.settle().await;
    let conflicts = ok(get(addr, "/conflicts").await);
    let found = conflicts["parent"]["items"].as_array().unwrap().iter().find(|c| c["key"] == name_uuid.as_str()).expect("the conflict at the parent").clone();
    assert_eq!((found["found_at"].as_str(), found["mine_is"].as_str(), found["theirs_is"].as_str()), (Some("parent"), Some("parent"), Some("south")));
    let given = found["rows"].as_array().unwrap().iter().find(|r| r["field"] == "given_name").unwrap();
    assert_eq!(
        (&given["mine"], &given["theirs"], &given["conflicted"], &given["differs"]),
        (&json!("Mphatso"), &json!("Mphatsso"), &json!(true), &json!(true))
    );
    assert_eq!(found["rows"][0]["field"], "given_name", "fields both sides changed come first");
    let overview = ok(get(addr, "/overview").await);
    assert_child_numbers(&net, &overview, "south").await;
    assert_eq!(child(&overview, "south")["conflicts_at_parent"], json!(1));
    assert!(kinds(&child(&overview, "south")["problems"]).contains(&"conflicts".to_owned()));
    let id = found["id"].as_i64().unwrap();
    assert_eq!(post(addr, &format!("/conflicts/{id}/resolve"), json!({"take": "newest"})).await.status, 400);
    assert_eq!(post(addr, &format!("/conflicts/{id}/resolve"), json!({"take": "fields", "fields": ["no_such_field=theirs"]})).await.status, 400);
    let resolved = ok(post(addr, &format!("/conflicts/{id}/resolve"), json!({"take": "fields", "fields": ["given_name=theirs"]})).await);
    assert_eq!(resolved["resolved"], json!(true));
    assert_eq!(post(addr, &format!("/conflicts/{id}/resolve"), json!({"take": "mine"})).await.status, 409, "already resolved");
    net.settle().await;
    for site in ["parent", "north", "south"] {
        let row = "SELECT given_name || '|' || COALESCE(degree, '') FROM person_name WHERE uuid = ?";
        assert_eq!(one_text(net.db(site), row, &[name_uuid.as_str().into()]).await.as_deref(), Some("Mphatsso|BSc"), "{site} after the resolution");
    }
    assert_eq!(count(net.db("parent"), "SELECT COUNT(*) FROM feedsync_audit WHERE actor = 'dashboard' AND action = 'conflict-resolve'", &[]).await, 1);
    let everything = ok(get(addr, "/conflicts?all=1").await);
    assert!(everything["parent"]["items"].as_array().unwrap().iter().any(|c| c["id"] == id && c["status"] == "resolved"));

    // ---- at a child: a conflict and a held change, acted on by commands ----
    let model = feedsync_sim::network::model_of(net.db("north")).await;
    let mut s = net.db("north").session().await.unwrap();
    let current = exchange::current(&mut s, &model, "person_name", &name_uuid, &mut Default::default()).await.unwrap().unwrap();
    let mut childs = current.columns.clone();
    childs.insert("family_name".into(), json!("Banda-Phiri"));
    let theirs = serde_json::to_string(&current.columns).unwrap();
    s.execute(
        "INSERT INTO feedsync_conflict (table_name, entity_key, category, site_side, peer, winner, entity_conflict, fields, base, parent_version, child_version, result) \
         VALUES ('person_name', ?, 'person_name', 'child', 'parent', 'parent', 0, '[\"family_name\"]', ?, ?, ?, ?)",
        &[name_uuid.as_str().into(), theirs.clone().into(), theirs.clone().into(), serde_json::to_string(&childs).unwrap().into(), theirs.into()],
    )
    .await
    .unwrap();
    let child_conflict = s.last_insert_id().await.unwrap();
    let stuck: Item = serde_json::from_value(location_item(0, "00000000-0000-4000-8000-0000000000cc", MISSING_USER, None)).unwrap();
    exchange::hold(&mut s, exchange::PEER_PARENT, &stuck, "waiting for rows not here yet: users/ffffffff-0000-4000-8000-000000000000").await.unwrap();
    let child_held = s.last_insert_id().await.unwrap();
    drop(s);
    net.child("north").round().await.unwrap();
    let overview = ok(get(addr, "/overview").await);
    assert_child_numbers(&net, &overview, "north").await;
    assert_eq!(child(&overview, "north")["conflicts_at_child"], json!(1));
    assert_eq!(child(&overview, "north")["held_at_child"], json!(1));
    let conflicts = ok(get(addr, "/conflicts").await);
    let group = conflicts["children"].as_array().unwrap().iter().find(|g| g["child"] == "north").expect("north's conflicts");
    let at_north = &group["items"][0];
    assert_eq!((at_north["id"].as_i64(), at_north["mine_is"].as_str(), at_north["theirs_is"].as_str()), (Some(child_conflict), Some("north"), Some("parent")));
    let held = ok(get(addr, "/held").await);
    let group = held["children"].as_array().unwrap().iter().find(|g| g["child"] == "north").expect("north's held");
    assert_eq!(group["items"][0]["id"], json!(child_held));

    assert_eq!(post(addr, &format!("/children/north/held/{child_held}/skip"), json!({})).await.status, 400, "a skip at a child needs a reason too");
    let queued = ok(post(addr, &format!("/children/north/held/{child_held}/skip"), json!({"reason": "an outpost that was never opened"})).await);
    let skip_command = queued["command"].as_i64().unwrap();
    let queued = ok(post(addr, &format!("/children/north/conflicts/{child_conflict}/resolve"), json!({"take": "mine"})).await);
    let resolve_command = queued["command"].as_i64().unwrap();
    assert_eq!(post(addr, "/children/nowhere/held/1/retry", json!({})).await.status, 404);
    assert_eq!(post(addr, &format!("/children/north/conflicts/{child_conflict}/resolve"), json!({"take": "fields"})).await.status, 400);
    let pending = ok(get(addr, "/conflicts").await);
    let listed = &pending["children"].as_array().unwrap().iter().find(|g| g["child"] == "north").unwrap()["items"][0];
    assert_eq!(listed["queued_command"], json!(resolve_command), "the page shows the command waiting");
    assert_eq!(count(net.db("parent"), "SELECT COUNT(*) FROM feedsync_audit WHERE actor = 'dashboard' AND action = 'command'", &[]).await, 2);
    net.settle().await;
    // The child carried both out: its version (mine, there) reached everyone; the held change is gone.
    for site in ["parent", "north", "south"] {
        assert_eq!(
            one_text(net.db(site), "SELECT family_name FROM person_name WHERE uuid = ?", &[name_uuid.as_str().into()]).await.as_deref(),
            Some("Banda-Phiri"),
            "{site}"
        );
    }
    assert_eq!(count(net.db("north"), "SELECT COUNT(*) FROM feedsync_inbox WHERE inbox_id = ?", &[Value::Int(child_held)]).await, 0);
    for command in [skip_command, resolve_command] {
        assert_eq!(
            one_text(net.db("parent"), "SELECT ok FROM feedsync_command WHERE command_id = ?", &[Value::Int(command)]).await.as_deref(),
            Some("1"),
            "command #{command}"
        );
    }

    // ---- a child's page: registration, rounds seen, commands ----
    let page = ok(get(addr, "/children/north").await);
    assert_eq!(page["registration"]["name"], "north");
    assert!(page["registration"].get("token_hash").is_none(), "no token material on the page");
    let rounds = page["rounds"].as_array().unwrap();
    assert!(rounds.len() >= 2, "the reports seen are kept as rounds: {rounds:?}");
    assert!(rounds.windows(2).all(|w| w[0]["reported_at"].as_str() > w[1]["reported_at"].as_str()), "newest first");
    assert!(page["commands"].as_array().unwrap().iter().any(|c| c["id"] == json!(resolve_command) && c["ok"] == json!(true)));
    assert_eq!(page["usb"], json!([]));
    assert_eq!(get(addr, "/children/nowhere").await.status, 404);
    // Bounded: at most ROUNDS_PER_CHILD_MAX rounds per child.
    for i in 0..ROUNDS_PER_CHILD_MAX {
        exec(
            net.db("parent"),
            &format!("INSERT INTO {ROUND_TABLE} (child, reported_at, summary) VALUES ('north', ?, '{{}}')"),
            &[format!("2000-01-01 00:00:{i:03}").into()],
        )
        .await;
    }
    net.child("north").round().await.unwrap();
    ok(get(addr, "/children/north").await);
    assert_eq!(count(net.db("parent"), &format!("SELECT COUNT(*) FROM {ROUND_TABLE} WHERE child = 'north'"), &[]).await, ROUNDS_PER_CHILD_MAX);
    let newest = one_text(net.db("parent"), &format!("SELECT reported_at FROM {ROUND_TABLE} WHERE child = 'north' ORDER BY round_id DESC LIMIT 1"), &[]).await;
    assert_eq!(newest, one_text(net.db("parent"), "SELECT reported_at FROM feedsync_child WHERE name = 'north'", &[]).await, "the newest round is kept");

    // ---- patients across the network, audited ----
    let identifier = one_text(
        net.db("north"),
        "SELECT pi.identifier FROM patient_identifier pi JOIN person pe ON pe.person_id = pi.patient_id WHERE pe.uuid = ? AND pi.voided = 0",
        &[patient.as_str().into()],
    )
    .await
    .unwrap();
    let found = ok(get(addr, &format!("/patients?q={}", url_encode(&identifier))).await);
    let candidate = found["candidates"].as_array().unwrap().iter().find(|c| c["uuid"] == patient.as_str()).expect("found by identifier");
    let holders: Vec<&str> = candidate["children"].as_array().unwrap().iter().map(|c| c["child"].as_str().unwrap()).collect();
    assert_eq!(holders, ["north", "south"], "{candidate}");
    let audit = one_text(
        net.db("parent"),
        "SELECT detail FROM feedsync_audit WHERE actor = 'dashboard' AND action = 'patient-find' ORDER BY audit_id DESC LIMIT 1",
        &[],
    )
    .await
    .unwrap();
    assert!(audit.contains(&patient), "{audit}");
    assert_eq!(get(addr, "/patients?q=").await.status, 400);

    // ---- the audit log, newest first, filtered ----
    let log = ok(get(addr, "/audit?actor=dashboard").await);
    let entries = log["entries"].as_array().unwrap();
    assert!(entries.iter().all(|e| e["actor"] == "dashboard"));
    let actions: Vec<&str> = entries.iter().map(|e| e["action"].as_str().unwrap()).collect();
    for action in ["skip-held", "retry-held", "conflict-resolve", "command", "patient-find"] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    assert!(entries.windows(2).all(|w| w[0]["id"].as_i64() > w[1]["id"].as_i64()));
    let older = ok(get(addr, &format!("/audit?actor=dashboard&before={}&limit=1", entries[0]["id"])).await);
    assert_eq!(older["entries"][0]["id"], entries[1]["id"]);

    // ---- methods, bodies and routes ----
    let form = http(addr, "POST", &format!("{ADMIN}/held/1/skip"), &[("content-type", "application/x-www-form-urlencoded")], Some(b"reason=x")).await;
    assert_eq!(form.status, 415, "{}", form.text());
    let foreign = http(addr, "POST", &format!("{ADMIN}/held/1/skip"), &[("origin", "http://evil.example")], Some(b"{\"reason\":\"x\"}")).await;
    assert_eq!(foreign.status, 403, "{}", foreign.text());
    assert_eq!(get(addr, "/held/1/skip").await.status, 405);
    let unknown = get(addr, "/nothing-here").await;
    assert_eq!(unknown.status, 404);
    assert!(unknown.json()["hint"].as_str().unwrap().contains("overview"));
    assert_eq!(post(addr, "/held/1/skip", json!({"reason": "x"})).await.status, 404, "no such held change");
}

fn url_encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// One request with the Host header given, as a browser on another name would send it; the
/// answer's headers and body as one text.
async fn raw(addr: SocketAddr, path: &str, host: &str, extra: &[(&str, &str)]) -> (u16, String) {
    let mut headers = vec![("host", host)];
    headers.extend_from_slice(extra);
    let reply = http(addr, "GET", path, &headers, None).await;
    let head: String = reply.headers.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
    (reply.status, format!("{head}\r\n{}", reply.text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_served_compressed_and_only_to_this_machine() {
    if std::env::var(ADMIN_TOKEN_ENV).is_ok() {
        return; // the token test runs this binary again with the token set
    }
    let Some(db) = TestDatabase::create(Source::Sqlite25) else { return };
    let publisher = Publisher::start(&db.database, |_| {}).await;
    let addr = publisher.addr;
    let gzip = [("accept-encoding", "gzip")];
    for (path, content_type, marker) in [
        ("/dashboard/", "text/html; charset=utf-8", "id=\"view\""),
        ("/dashboard/app.js", "text/javascript; charset=utf-8", "function"),
        ("/dashboard/app.css", "text/css; charset=utf-8", "@media"),
    ] {
        let reply = http(addr, "GET", path, &gzip, None).await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.headers["content-type"], content_type, "{path}");
        assert_eq!(reply.headers.get("content-encoding").map(String::as_str), Some("gzip"), "{path}");
        assert!(reply.text().contains(marker), "{path}");
        assert_eq!(reply.headers["x-frame-options"], "DENY");
        assert!(reply.headers["content-security-policy"].contains("default-src 'self'"));
        // Nothing from the internet.
        assert!(!reply.text().contains("http://") && !reply.text().contains("https://"), "{path} refers to another site");
        let etag = reply.headers["etag"].clone();
        let again = http(addr, "GET", path, &[("accept-encoding", "gzip"), ("if-none-match", etag.as_str())], None).await;
        assert_eq!(again.status, 304, "{path} revalidates with its ETag");
    }
    let plain = http(addr, "GET", "/dashboard/app.js", &[], None).await;
    assert!(!plain.headers.contains_key("content-encoding"));
    let redirect = http(addr, "GET", "/dashboard", &[], None).await;
    assert_eq!((redirect.status, redirect.headers["location"].as_str()), (308, "/dashboard/"));
    // With no children the overview still answers.
    let overview = ok(get(addr, "/overview").await);
    assert_eq!(overview["children"], json!([]));
    assert_eq!(ok(get(addr, "/held").await)["parent"]["held_total"], json!(0));
    // Without a token, only this machine: a rebinding host name or a local proxy is refused.
    let (status, text) = raw(addr, &format!("{ADMIN}/overview"), "evil.example", &[]).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("\"hint\"") && text.contains("FEEDSYNC_ADMIN_TOKEN"), "{text}");
    let (status, text) = raw(addr, "/dashboard/", "evil.example:8086", &[]).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("text/html") && text.contains("data-testid=\"refusal\""), "{text}");
    let (status, _) = raw(addr, &format!("{ADMIN}/overview"), &addr.to_string(), &[("x-forwarded-for", "41.186.0.1")]).await;
    assert_eq!(status, 403);
    let (status, _) = raw(addr, &format!("{ADMIN}/overview"), &format!("localhost:{}", addr.port()), &[]).await;
    assert_eq!(status, 200);
    // The login page has nothing to do without a token.
    let login = http(addr, "GET", "/dashboard/login", &[], None).await;
    assert_eq!((login.status, login.headers["location"].as_str()), (303, "/dashboard/"));
}

/// Runs `token_required_inner` in a process of its own with FEEDSYNC_ADMIN_TOKEN set (the
/// variable is read per request, and other tests in this binary run without it).
#[test]
fn with_an_admin_token_every_client_needs_it() {
    if std::env::var(ADMIN_TOKEN_ENV).is_ok() {
        return;
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "token_required_inner", "--nocapture", "--test-threads", "1"])
        .env(ADMIN_TOKEN_ENV, "correct horse battery staple, and a little more")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("1 passed"), "the inner test ran: {stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_required_inner() {
    let Ok(token) = std::env::var(ADMIN_TOKEN_ENV) else { return };
    let Some(db) = TestDatabase::create(Source::Sqlite25) else { return };
    let publisher = Publisher::start(&db.database, |_| {}).await;
    let addr = publisher.addr;
    // Even from this machine: no token, a wrong one, another scheme.
    for headers in [vec![], vec![("authorization", "Bearer wrong")], vec![("authorization", "Basic Y29ycmVjdA==")], vec![("cookie", "feedsync_admin=wrong")]] {
        let reply = http(addr, "GET", &format!("{ADMIN}/overview"), &headers, None).await;
        assert_eq!(reply.status, 403, "{headers:?}: {}", reply.text());
        assert!(reply.json()["hint"].as_str().unwrap().contains("/dashboard/login"));
    }
    let page = http(addr, "GET", "/dashboard/", &[], None).await;
    assert_eq!(page.status, 403);
    assert!(page.text().contains("<form") && page.text().contains("<label for=\"token\""), "the refusal offers the login form: {}", page.text());
    let bearer = format!("Bearer {token}");
    ok(http(addr, "GET", &format!("{ADMIN}/overview"), &[("authorization", bearer.as_str())], None).await);
    // The token is never read from a URL, where logs and history keep it.
    let in_url = http(addr, "GET", &format!("/dashboard/login?token={}", url_encode(&token)), &[], None).await;
    assert_eq!(in_url.status, 400, "{}", in_url.text());
    assert!(!in_url.headers.contains_key("set-cookie") && in_url.text().contains("not read"), "{}", in_url.text());
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let post_login = |offered: String| async move { http(addr, "POST", "/dashboard/login", &[("content-type", "application/x-www-form-urlencoded")], Some(offered.as_bytes())).await };
    let wrong = http(addr, "POST", "/dashboard/login", &form, Some(b"token=nope".as_slice())).await;
    assert_eq!(wrong.status, 403);
    assert!(!wrong.headers.contains_key("set-cookie"));
    // Logging in sets a cookie naming a login kept at the server: nothing derived from the token.
    let login = http(addr, "POST", "/dashboard/login", &form, Some(format!("token={}", url_encode(&token)).as_bytes())).await;
    assert_eq!((login.status, login.headers["location"].as_str()), (303, "/dashboard/"));
    let set_cookie = login.headers["set-cookie"].clone();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict") && !set_cookie.contains("horse"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    assert!(cookie.starts_with(&format!("{COOKIE_NAME}=")));
    let page = http(addr, "GET", "/dashboard/", &[("cookie", cookie.as_str())], None).await;
    assert_eq!(page.status, 200);
    ok(http(addr, "GET", &format!("{ADMIN}/overview"), &[("cookie", cookie.as_str())], None).await);
    // Actions with the cookie need the login's CSRF token, which only the dashboard's page holds.
    let text = page.text();
    let csrf = text.split("name=\"feedsync-csrf\" content=\"").nth(1).and_then(|rest| rest.split('"').next()).unwrap_or_default().to_owned();
    assert_eq!(csrf.len(), 64, "the page carries the login's CSRF token: {text}");
    let action = format!("{ADMIN}/held/999999/retry");
    let json_type = ("content-type", "application/json");
    let forged = http(addr, "POST", &action, &[("cookie", cookie.as_str()), json_type], Some(b"{}".as_slice())).await;
    assert_eq!(forged.status, 403, "{}", forged.text());
    assert!(forged.text().contains("CSRF"), "{}", forged.text());
    let wrong_csrf = http(addr, "POST", &action, &[("cookie", cookie.as_str()), json_type, ("x-feedsync-csrf", &"0".repeat(64))], Some(b"{}".as_slice())).await;
    assert_eq!(wrong_csrf.status, 403, "{}", wrong_csrf.text());
    let with_csrf = http(addr, "POST", &action, &[("cookie", cookie.as_str()), json_type, ("x-feedsync-csrf", csrf.as_str())], Some(b"{}".as_slice())).await;
    assert_eq!(with_csrf.status, 404, "past the CSRF check, to the missing item: {}", with_csrf.text());
    // Logging out ends the login at the server: the same cookie is refused afterwards.
    let logout = http(addr, "GET", "/dashboard/logout", &[("cookie", cookie.as_str())], None).await;
    assert_eq!(logout.status, 303);
    assert_eq!(http(addr, "GET", &format!("{ADMIN}/overview"), &[("cookie", cookie.as_str())], None).await.status, 403);
    assert_eq!(post_login(format!("token={}", url_encode(&token))).await.status, 303, "logging in again works");
    assert_eq!(one_text(&db.database, "SELECT COUNT(*) FROM feedsync_audit WHERE actor = 'dashboard' AND action = 'login'", &[]).await.as_deref(), Some("2"));
    // An address that keeps guessing waits: after 5 wrong tokens even the right one gets 429.
    for _ in 0..5 {
        assert_eq!(post_login("token=guess".to_owned()).await.status, 403);
    }
    let throttled = post_login(format!("token={}", url_encode(&token))).await;
    assert_eq!(throttled.status, 429, "{}", throttled.text());
    assert!(throttled.headers["retry-after"].parse::<u64>().is_ok_and(|s| s > 0 && s <= 300), "{:?}", throttled.headers);
    assert!(!throttled.headers.contains_key("set-cookie"));
}
