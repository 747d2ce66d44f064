//! Status, metrics and alerts on a real network (a parent publisher over HTTP, children on
//! SQLite): the parent's status and `/metrics` against the database and the network's own
//! functions, the status route and who may read it, alerts as things go wrong and right, the
//! webhook getting one message per start and one per clear (from a tiny HTTP server here, which
//! fails the first delivery), and the subscriber's `status --json` and `--metrics-listen`.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use feedsync_node::config::Config;
use feed_publisher::metrics::{Sample, find, parse_exposition};
use feedsync_node::parent as parent_network;
use feed_publisher::status::{self, Status};
use feedsync_sim::publisher::{Publisher, http};
use feed_subscriber::network::{ChildNode, HttpParent};
use feedsync_sim::network::{Network, exec, model_of, one_text, run_workload};
use feedsync_db::{Database, Value};
use feedsync_node::exchange;
use feedsync_wire::network::Item;
use feedsync_sim::testdb::{Source, TestDatabase};
use serde_json::{Value as Json, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

static SUBSCRIBER: std::sync::LazyLock<std::path::PathBuf> = std::sync::LazyLock::new(|| feedsync_tests::binary("feed-subscriber"));
const MISSING_USER: &str = "ffffffff-0000-4000-8000-000000000000";

/// A network whose publisher is configured by `configure` (the harness's uses defaults).
async fn network(names: &[&str], configure: impl FnOnce(&mut Config)) -> Option<Network> {
    let parent_db = TestDatabase::create(Source::Sqlite25)?;
    let publisher = Publisher::start(&parent_db.database, configure).await;
    let mut children = Vec::new();
    for name in names {
        let db = TestDatabase::create(Source::Sqlite25)?;
        let mut s = parent_db.database.session().await.unwrap();
        let token = parent_network::add_child(&mut s, name, &[], false).await.unwrap();
        let node = ChildNode::new(db.database.clone(), model_of(&db.database).await, HttpParent::new(&format!("http://{}", publisher.addr), &token));
        node.prepare().await.unwrap();
        children.push((name.to_string(), db, node, token));
    }
    Some(Network { parent_db, publisher, children })
}

async fn count(db: &Database, sql: &str, params: &[Value]) -> i64 {
    one_text(db, sql, params).await.unwrap_or_default().parse().unwrap()
}

async fn status_of(net: &Network) -> Status {
    let mut s = net.db("parent").session().await.unwrap();
    status::compute(&mut s, &net.publisher.app.config).await.unwrap()
}

fn keys(status: &Status) -> Vec<String> {
    status.alerts.iter().map(|a| a.key.clone()).collect()
}

/// A location pushed by a child; with a creator the parent lacks, it is held there.
fn location_item(seq: i64, key: &str, creator: &str) -> Json {
    let columns = json!({
        "name": format!("Outpost {key}"), "retired": 0, "date_created": "2024-01-01 00:00:00",
        "creator": {"ref": {"table": "users", "key": creator}}, "uuid": key,
    });
    json!({"seq": seq, "table": "location", "key": key, "category": "location",
           "resource": {"table": "location", "category": "location", "key": key, "hash": "x", "columns": columns}})
}

/// Pushes, as child `laptop`, a location the parent must hold (its creator is unknown there).
async fn push_held_location(net: &Network, token: &str, key: &str) {
    let push = json!({"through_seq": 1, "items": [location_item(1, key, MISSING_USER)]});
    let auth = format!("Bearer {token}");
    let reply = http(net.publisher.addr, "POST", "/ws/feedsync/network/push", &[("authorization", auth.as_str())], Some(push.to_string().as_bytes())).await;
    assert_eq!(reply.json()["results"][0]["status"], "held", "{}", reply.text());
}

/// Each child's numbers in the status, against the database and the network's functions.
async fn assert_child_numbers(net: &Network, status: &Status, name: &str) {
    let parent = net.db("parent");
    let row = status.child(name).unwrap_or_else(|| panic!("{name} in the status"));
    let mut s = parent.session().await.unwrap();
    let registered = parent_network::list_children(&mut s).await.unwrap().into_iter().find(|c| c.name == name).unwrap();
    assert_eq!(row.waiting_to_child, parent_network::waiting_for_child(&mut s, &registered).await.unwrap(), "{name}: waiting to the child");
    drop(s);
    assert_eq!(row.held_at_parent, count(parent, "SELECT COUNT(*) FROM feedsync_inbox WHERE peer = ?", &[name.into()]).await, "{name}: held at the parent");
    let conflicts = count(parent, "SELECT COUNT(*) FROM feedsync_conflict WHERE status = 'open' AND site_side = 'parent' AND peer = ?", &[name.into()]).await;
    assert_eq!(row.conflicts_at_parent, conflicts, "{name}: conflicts at the parent");
    assert_eq!(row.catchment_patients, count(parent, "SELECT COUNT(*) FROM feedsync_catchment WHERE child = ?", &[name.into()]).await, "{name}: catchment");
    if net.children.iter().any(|c| c.0 == name) {
        let child = net.db(name);
        assert_eq!(row.held_at_child, Some(count(child, "SELECT COUNT(*) FROM feedsync_inbox WHERE peer = 'parent'", &[]).await), "{name}: held at the child");
        assert_eq!(
            row.conflicts_at_child,
            Some(count(child, "SELECT COUNT(*) FROM feedsync_conflict WHERE status = 'open'", &[]).await),
            "{name}: conflicts at the child"
        );
        let mut s = child.session().await.unwrap();
        assert_eq!(row.pending_push, Some(feed_subscriber::network::pending_push(&mut s).await.unwrap()), "{name}: pending push");
    }
}

async fn metrics(net: &Network) -> Vec<Sample> {
    let reply = net.publisher.get("/metrics").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.headers["content-type"].starts_with("text/plain; version=0.0.4"), "{:?}", reply.headers);
    parse_exposition(&reply.text()).unwrap_or_else(|e| panic!("{e}\n{}", reply.text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_metrics_of_a_parent_and_its_children() {
    let Some(net) = Network::start(Source::Sqlite25, &["north", "south"]).await else { return };
    run_workload(net.db("parent"), 3, 0).await;
    net.settle().await;
    run_workload(net.db("north"), 31, 2).await;
    run_workload(net.db("south"), 32, 1).await;
    net.settle().await;

    // ---- a settled network: numbers as the database has them, no alert ----
    let st = status_of(&net).await;
    for name in ["north", "south"] {
        assert_child_numbers(&net, &st, name).await;
        let row = st.child(name).unwrap();
        assert_eq!((row.waiting_to_child, row.pending_push), (0, Some(0)), "settled: {row:?}");
        assert!(row.last_contact_age_s.unwrap() < 600 && row.last_round_error.is_none(), "{row:?}");
    }
    assert!(st.child("north").unwrap().catchment_patients >= 2);
    assert!(st.alerts.is_empty(), "{:?}", st.alerts);
    let last_seq = count(net.db("parent"), "SELECT MAX(event_seq) FROM feedsync_event", &[]).await;
    assert_eq!(st.last_event_seq, last_seq);
    assert_eq!(st.journal_backlog, count(net.db("parent"), "SELECT COUNT(*) FROM feedsync_journal", &[]).await);
    let all = st.categories.iter().find(|c| c.category == "all").unwrap();
    assert_eq!(all.events, last_seq);
    let per_category: i64 = st.categories.iter().filter(|c| c.category != "all").map(|c| c.events).sum();
    assert_eq!(per_category, last_seq, "every event is in one category feed: {:?}", st.categories);
    for c in st.categories.iter().filter(|c| c.category != "all") {
        assert_eq!(
            c.events,
            count(net.db("parent"), "SELECT COUNT(*) FROM feedsync_event WHERE category = ?", &[c.category.as_str().into()]).await,
            "{}",
            c.category
        );
    }
    let text = status::render_text(&st, "parent");
    assert!(text.contains("no problems") && text.contains("north") && text.contains("children: 2 active"), "{text}");

    // ---- things go wrong: one change held at the parent, a conflict at the parent, one held
    // reported by a child, a change waiting for the children, one waiting in the journal, a
    // child silent ----
    let mut s = net.db("parent").session().await.unwrap();
    let laptop_token = parent_network::add_child(&mut s, "laptop", &[], false).await.unwrap();
    drop(s);
    push_held_location(&net, &laptop_token, "00000000-0000-4000-8000-0000000000aa").await;
    let name_uuid = one_text(
        net.db("north"),
        "SELECT pn.uuid FROM person_name pn JOIN person pe ON pe.person_id = pn.person_id JOIN patient pt ON pt.patient_id = pe.person_id WHERE pn.voided = 0 ORDER BY pn.person_name_id DESC LIMIT 1",
        &[],
    )
    .await
    .unwrap();
    exec(net.db("parent"), "UPDATE person_name SET given_name = 'Chisomo' WHERE uuid = ?", &[name_uuid.as_str().into()]).await;
    net.publisher.publish().await;
    exec(net.db("north"), "UPDATE person_name SET given_name = 'Chisomu' WHERE uuid = ?", &[name_uuid.as_str().into()]).await;
    net.child("north").round().await.unwrap();
    net.publisher.publish().await;
    let mut s = net.db("south").session().await.unwrap();
    let stuck: Item = serde_json::from_value(location_item(0, "00000000-0000-4000-8000-0000000000cc", MISSING_USER)).unwrap();
    exchange::hold(&mut s, exchange::PEER_PARENT, &stuck, "waiting for rows not here yet: users/ffffffff-0000-4000-8000-000000000000").await.unwrap();
    drop(s);
    net.child("south").round().await.unwrap();
    exec(net.db("parent"), "UPDATE location SET description = 'district store' WHERE location_id = (SELECT MIN(location_id) FROM location)", &[]).await;
    net.publisher.publish().await;
    exec(net.db("parent"), "UPDATE location SET description = 'district store 2' WHERE location_id = (SELECT MIN(location_id) FROM location)", &[]).await;
    exec(net.db("parent"), "UPDATE feedsync_child SET last_contact = '2000-01-01 00:00:00.000' WHERE name = 'south'", &[]).await;

    let st = status_of(&net).await;
    for name in ["north", "south", "laptop"] {
        assert_child_numbers(&net, &st, name).await;
    }
    assert!(st.journal_backlog >= 1 && st.child("north").unwrap().waiting_to_child >= 1, "{st:?}");
    assert_eq!(st.child("laptop").unwrap().held_at_parent, 1);
    assert_eq!(st.child("north").unwrap().conflicts_at_parent, 1);
    assert_eq!(st.child("south").unwrap().held_at_child, Some(1));
    assert_eq!(st.held, count(net.db("parent"), "SELECT COUNT(*) FROM feedsync_inbox", &[]).await);
    assert_eq!(st.open_conflicts, count(net.db("parent"), "SELECT COUNT(*) FROM feedsync_conflict WHERE status = 'open'", &[]).await);
    assert_eq!(keys(&st), ["child_silent:south", "failed_events:laptop", "failed_events:south", "conflicts_open:north"], "{:#?}", st.alerts);
    let silent = &st.alerts[0];
    assert!(silent.value > 86_400 && silent.message.contains("south") && silent.hint.contains("feed-subscriber run --parent"), "{silent:?}");
    assert!(silent.since.is_none(), "nothing announced it: `serve` is not checking here");
    let text = status::render_text(&st, "parent");
    assert!(text.find("4 problems").unwrap() < text.find("this server:").unwrap(), "{text}");
    assert!(text.contains("what to do:"), "{text}");

    // ---- the same numbers at /metrics and /ws/feedsync/status ----
    let m = metrics(&net).await;
    assert_eq!(find(&m, "feedsync_database_up", &[]), Some(1.0));
    assert_eq!(find(&m, "feedsync_last_event_seq", &[]), Some(st.last_event_seq as f64));
    assert_eq!(find(&m, "feedsync_events_published_total", &[]), Some(st.last_event_seq as f64));
    assert_eq!(find(&m, "feedsync_journal_backlog", &[]), Some(count(net.db("parent"), "SELECT COUNT(*) FROM feedsync_journal", &[]).await as f64));
    assert_eq!(find(&m, "feedsync_children", &[("state", "active")]), Some(3.0));
    assert_eq!(find(&m, "feedsync_held", &[]), Some(st.held as f64));
    for c in &st.children {
        let child = [("child", c.name.as_str())];
        assert_eq!(find(&m, "feedsync_child_waiting_to_child", &child), Some(c.waiting_to_child as f64), "{}", c.name);
        assert_eq!(find(&m, "feedsync_child_held", &[("child", c.name.as_str()), ("side", "parent")]), Some(c.held_at_parent as f64), "{}", c.name);
        assert_eq!(find(&m, "feedsync_child_open_conflicts", &[("child", c.name.as_str()), ("side", "parent")]), Some(c.conflicts_at_parent as f64));
        assert_eq!(find(&m, "feedsync_child_pending_push", &child), c.pending_push.map(|p| p as f64), "{}", c.name);
        let age = find(&m, "feedsync_child_last_contact_age_seconds", &child).unwrap();
        assert!((age - c.last_contact_age_s.unwrap() as f64).abs() <= 5.0, "{}: {age}", c.name);
    }
    assert_eq!(find(&m, "feedsync_child_held", &[("child", "south"), ("side", "child")]), Some(1.0));
    assert_eq!(find(&m, "feedsync_alerts_firing", &[("kind", "failed_events")]), Some(2.0));
    assert_eq!(find(&m, "feedsync_alerts_firing", &[("kind", "child_silent")]), Some(1.0));
    assert_eq!(find(&m, "feedsync_alerts_firing", &[("kind", "queue_growing")]), Some(0.0));
    assert!(find(&m, "feedsync_http_requests_total", &[("route", "network"), ("status", "200")]).unwrap() > 0.0, "children's rounds are counted");
    assert_eq!(find(&m, "feedsync_http_requests_total", &[("route", "metrics"), ("status", "200")]), None, "a scrape is counted once answered");
    let m = metrics(&net).await;
    assert_eq!(find(&m, "feedsync_http_requests_total", &[("route", "metrics"), ("status", "200")]), Some(1.0));
    assert_eq!(net.publisher.app.http_metrics.requests("metrics", 200), 2);
    assert!(find(&m, "feedsync_http_request_duration_seconds_count", &[("route", "network")]).unwrap() > 0.0);

    let reply = net.publisher.get(status::STATUS_PATH).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let served: Status = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(served.alerts.iter().map(|a| &a.key).collect::<Vec<_>>(), st.alerts.iter().map(|a| &a.key).collect::<Vec<_>>());
    assert_eq!((served.last_event_seq, served.held, served.children.len()), (st.last_event_seq, st.held, 3));
    for path in [status::STATUS_PATH, "/metrics"] {
        let proxied = http(net.publisher.addr, "GET", path, &[("x-forwarded-for", "203.0.113.9")], None).await;
        assert_eq!(proxied.status, 403, "{path} through a proxy without the admin token: {}", proxied.text());
    }

    // ---- things go right again: the alerts clear ----
    let mut s = net.db("parent").session().await.unwrap();
    let held = exchange::held_items(&mut s, Some("laptop"), 10).await.unwrap();
    parent_network::skip_held(&mut s, held[0].id, "test outpost, never real", "test").await.unwrap();
    let conflict = exchange::list_conflicts(&mut s, false, 10).await.unwrap().into_iter().find(|c| c.peer == "north").unwrap();
    let model = model_of(net.db("parent")).await;
    exchange::resolve_conflict(&mut s, &model, conflict.id, &exchange::Take::Mine).await.unwrap();
    drop(s);
    exec(net.db("south"), "DELETE FROM feedsync_inbox", &[]).await;
    net.settle().await;
    let st = status_of(&net).await;
    assert!(st.alerts.is_empty(), "{:#?}", st.alerts);
    assert_eq!(st.journal_backlog, 0);
}

// ---- the webhook ----

/// What the test webhook received: the event, the alert's key, and whether it answered 2xx.
type Received = Arc<Mutex<Vec<(String, String, bool)>>>;

/// A tiny HTTP server: records each POSTed alert and answers 500 to the first, 200 after.
async fn webhook_server() -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received: Received = Arc::default();
    let log = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let mut raw = Vec::new();
            let mut buf = [0u8; 8192];
            let body = loop {
                let n = stream.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break None;
                }
                raw.extend_from_slice(&buf[..n]);
                let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
                let length: usize = head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
                assert!(head.contains("idempotency-key:"), "{head}");
                if raw.len() >= end + 4 + length {
                    break Some(raw[end + 4..end + 4 + length].to_vec());
                }
            };
            let Some(body) = body else { continue };
            let message: Json = serde_json::from_slice(&body).unwrap();
            let ok = {
                let mut log = log.lock().unwrap();
                let ok = !log.is_empty();
                log.push((message["event"].as_str().unwrap().to_owned(), message["alert"]["key"].as_str().unwrap().to_owned(), ok));
                ok
            };
            let answer = if ok {
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            } else {
                "HTTP/1.1 500 Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            };
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    });
    (addr, received)
}

fn delivered(received: &Received, event: &str, key: &str) -> usize {
    received.lock().unwrap().iter().filter(|(e, k, ok)| e == event && k == key && *ok).count()
}

async fn wait_for(received: &Received, event: &str, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while delivered(received, event, key) == 0 {
        assert!(Instant::now() < deadline, "no {event} for {key}: {:?}", received.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_gets_one_message_per_start_and_per_clear() {
    let (hook, received) = webhook_server().await;
    let Some(net) = network(&["north"], |c| {
        c.alerts.webhook_url = format!("http://{hook}/alerts");
        c.alerts.check_interval_s = 1;
        c.alerts.webhook_timeout_ms = 5_000;
    })
    .await
    else {
        return;
    };
    run_workload(net.db("parent"), 3, 0).await;
    net.settle().await;
    let mut s = net.db("parent").session().await.unwrap();
    let laptop_token = parent_network::add_child(&mut s, "laptop", &[], false).await.unwrap();
    drop(s);
    let app = net.publisher.app.clone();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let checker = tokio::spawn(status::run_alerts(app.clone(), stopped));
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(received.lock().unwrap().is_empty(), "nothing is wrong yet: {:?}", received.lock().unwrap());

    // Two alerts start: the first delivery is refused (500) and retried.
    exec(net.db("parent"), "UPDATE feedsync_child SET last_contact = '2000-01-01 00:00:00.000' WHERE name = 'north'", &[]).await;
    push_held_location(&net, &laptop_token, "00000000-0000-4000-8000-0000000000ab").await;
    wait_for(&received, "alert_started", "child_silent:north").await;
    wait_for(&received, "alert_started", "failed_events:laptop").await;
    // They keep firing for several checks, and the server restarts: no message again.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    stop.send(true).unwrap();
    checker.await.unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let checker = tokio::spawn(status::run_alerts(app.clone(), stopped));
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(delivered(&received, "alert_started", "child_silent:north"), 1, "{:?}", received.lock().unwrap());
    assert_eq!(delivered(&received, "alert_started", "failed_events:laptop"), 1, "{:?}", received.lock().unwrap());
    let refused = received.lock().unwrap().iter().filter(|r| !r.2).count();
    assert_eq!(refused, 1, "the refused first delivery was retried: {:?}", received.lock().unwrap());
    let st = status_of(&net).await;
    assert!(st.alerts.iter().all(|a| a.since.is_some()), "announced alerts carry since: {:?}", st.alerts);

    // They clear: one message each.
    net.child("north").round().await.unwrap();
    let mut s = net.db("parent").session().await.unwrap();
    let held = exchange::held_items(&mut s, Some("laptop"), 10).await.unwrap();
    parent_network::skip_held(&mut s, held[0].id, "test outpost", "test").await.unwrap();
    drop(s);
    wait_for(&received, "alert_cleared", "child_silent:north").await;
    wait_for(&received, "alert_cleared", "failed_events:laptop").await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    stop.send(true).unwrap();
    checker.await.unwrap();
    let log = received.lock().unwrap().clone();
    let ok: Vec<(String, String)> = log.iter().filter(|r| r.2).map(|r| (r.0.clone(), r.1.clone())).collect();
    assert_eq!(ok.len(), 4, "one start and one clear for each alert: {log:?}");
    for key in ["child_silent:north", "failed_events:laptop"] {
        let started = ok.iter().position(|r| r.0 == "alert_started" && r.1 == key).unwrap();
        let cleared = ok.iter().position(|r| r.0 == "alert_cleared" && r.1 == key).unwrap();
        assert!(started < cleared, "{log:?}");
    }
    let mut s = net.db("parent").session().await.unwrap();
    assert!(status::load_announced(&mut s).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_growing_needs_a_child_in_touch_and_a_queue_that_never_shrank() {
    let Some(net) = network(&["north"], |c| {
        c.alerts.queue_growing_observations = 3;
        c.alerts.queue_growing_min_increase = 2;
    })
    .await
    else {
        return;
    };
    run_workload(net.db("parent"), 3, 0).await;
    net.settle().await;
    let config = net.publisher.app.config.clone();
    let check = || async {
        let mut s = net.db("parent").session().await.unwrap();
        status::check_alerts(&mut s, &config).await.unwrap()
    };
    // The parent keeps changing while north does not pull (it stays in touch: its contact is fresh).
    let mut started = Vec::new();
    for i in 0..4 {
        exec(net.db("parent"), "UPDATE location SET description = ? WHERE location_id = (SELECT MIN(location_id) FROM location)", &[format!("v{i}").into()])
            .await;
        exec(net.db("parent"), "UPDATE location SET description = ? WHERE location_id = (SELECT MAX(location_id) FROM location)", &[format!("w{i}").into()])
            .await;
        net.publisher.publish().await;
        exec(net.db("parent"), "UPDATE feedsync_child SET last_contact = CURRENT_TIMESTAMP WHERE name = 'north'", &[]).await;
        let checked = check().await;
        started.extend(checked.transitions.started.iter().map(|a| a.key.clone()));
    }
    assert_eq!(started, ["queue_growing:north:waiting_to_child"], "fires once the queue grew over 3 observations");
    // North catches up: the queue shrinks and the alert clears.
    net.settle().await;
    let checked = check().await;
    assert_eq!(checked.transitions.cleared.iter().map(|a| a.key.as_str()).collect::<Vec<_>>(), ["queue_growing:north:waiting_to_child"]);
    assert!(checked.status.alerts.is_empty(), "{:?}", checked.status.alerts);
}

// ---- the subscriber's command line ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_status_json_and_metrics_listener() {
    let Some(net) = Network::start(Source::Sqlite25, &["north"]).await else { return };
    run_workload(net.db("parent"), 3, 0).await;
    net.settle().await;
    run_workload(net.db("north"), 31, 1).await;
    let north = &net.children[0];
    let url = north.1.url.clone();

    // A round from the command line, with metrics served while it runs; stderr is a pipe, so
    // no progress line is drawn.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let parent_url = format!("http://{}", net.publisher.addr);
    let mut run = Command::new(&*SUBSCRIBER)
        .args(["run", "--db", &url, "--parent", &parent_url, "--token", &north.3, "--metrics-listen", &listen])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let samples = loop {
        let reply = if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            Some(http(listen.parse().unwrap(), "GET", "/metrics", &[], None).await)
        } else {
            None
        };
        if let Some(reply) = reply {
            assert_eq!(reply.status, 200);
            let samples = parse_exposition(&reply.text()).unwrap_or_else(|e| panic!("{e}\n{}", reply.text()));
            if find(&samples, "feedsync_subscriber_rounds_total", &[]).unwrap() >= 2.0 {
                break samples;
            }
        }
        assert!(Instant::now() < deadline, "no rounds counted in time");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(http(listen.parse().unwrap(), "GET", "/other", &[], None).await.status, 404);
    run.kill().unwrap();
    let output = run.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains('\r') && !stderr.contains("\x1b[2K"), "no progress line when stderr is not a terminal: {stderr:?}");
    assert_eq!(find(&samples, "feedsync_subscriber_database_up", &[]), Some(1.0));
    assert!(find(&samples, "feedsync_subscriber_pushed_total", &[]).unwrap() > 0.0, "north's patient was pushed");
    assert!(find(&samples, "feedsync_subscriber_last_success_timestamp_seconds", &[]).unwrap() > 1.7e9);
    let mut s = net.db("north").session().await.unwrap();
    assert_eq!(find(&samples, "feedsync_subscriber_pending_push", &[]), Some(feed_subscriber::network::pending_push(&mut s).await.unwrap() as f64));
    drop(s);
    assert_eq!(find(&samples, "feedsync_subscriber_held", &[]), Some(0.0));
    assert_eq!(find(&samples, "feedsync_subscriber_queued", &[("status", "waiting")]), Some(0.0));

    // `status --json` at the child: the network part, as the database has it.
    let mut s = net.db("north").session().await.unwrap();
    let stuck: Item = serde_json::from_value(location_item(0, "00000000-0000-4000-8000-0000000000cc", MISSING_USER)).unwrap();
    exchange::hold(&mut s, exchange::PEER_PARENT, &stuck, "waiting for rows not here yet: users/ffffffff-0000-4000-8000-000000000000").await.unwrap();
    drop(s);
    let out = Command::new(&*SUBSCRIBER).args(["status", "--db", &url, "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: Json = serde_json::from_slice(&out.stdout).unwrap();
    let network = &json["network"];
    let mut s = net.db("north").session().await.unwrap();
    let expected = feed_subscriber::network::exchange_position(&mut s).await.unwrap();
    assert_eq!(network["pull_after"], json!(expected.pull_after));
    assert_eq!(network["push_through"], json!(expected.push_through));
    assert_eq!(network["pending_push"], json!(expected.pending_push));
    assert_eq!(network["held_total"], json!(1));
    assert_eq!(network["held"][0]["table"], "location");
    assert!(network["held"][0]["reason"].as_str().unwrap().contains("users/"));
    assert_eq!(network["open_conflicts"], json!(0));
    assert!(json["feeds"].is_array() && json["changes"].is_array());
    let out = Command::new(&*SUBSCRIBER).args(["status", "--db", &url]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("as a child of its parent") && text.contains("held #") && text.contains("users/ffffffff"), "{text}");

    // The parent's database is no child: no network part.
    let out = Command::new(&*SUBSCRIBER).args(["status", "--db", &net.parent_db.url, "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["network"].is_null(), "{json}");
}

// ---- MariaDB ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_metrics_and_alert_checks_on_mariadb() {
    let Some(net) = Network::start(Source::MySql25, &["north"]).await else { return };
    run_workload(net.db("north"), 41, 1).await;
    net.settle().await;
    let config = net.publisher.app.config.clone();
    let check = || async {
        let mut s = net.db("parent").session().await.unwrap();
        status::check_alerts(&mut s, &config).await.unwrap()
    };
    let checked = check().await;
    assert!(checked.transitions.is_empty() && checked.status.alerts.is_empty(), "{:?}", checked.status.alerts);
    assert_child_numbers(&net, &checked.status, "north").await;
    assert_eq!(checked.status.last_event_seq, count(net.db("parent"), "SELECT MAX(event_seq) FROM feedsync_event", &[]).await);

    let mut s = net.db("parent").session().await.unwrap();
    let laptop_token = parent_network::add_child(&mut s, "laptop", &[], false).await.unwrap();
    drop(s);
    push_held_location(&net, &laptop_token, "00000000-0000-4000-8000-0000000000ad").await;
    exec(net.db("parent"), "UPDATE feedsync_child SET last_contact = '2000-01-01 00:00:00.000' WHERE name = 'north'", &[]).await;
    let checked = check().await;
    let started: Vec<&str> = checked.transitions.started.iter().map(|a| a.key.as_str()).collect();
    assert_eq!(started, ["child_silent:north", "failed_events:laptop"]);
    assert!(checked.status.alerts.iter().all(|a| a.since.is_some()));
    assert!(check().await.transitions.is_empty(), "a second check announces nothing again");
    let st = status_of(&net).await;
    assert_eq!(keys(&st), ["child_silent:north", "failed_events:laptop"]);
    let m = metrics(&net).await;
    assert_eq!(find(&m, "feedsync_child_held", &[("child", "laptop"), ("side", "parent")]), Some(1.0));
    assert_eq!(find(&m, "feedsync_alerts_firing", &[("kind", "child_silent")]), Some(1.0));

    net.child("north").round().await.unwrap();
    let mut s = net.db("parent").session().await.unwrap();
    let held = exchange::held_items(&mut s, Some("laptop"), 10).await.unwrap();
    parent_network::skip_held(&mut s, held[0].id, "test outpost", "test").await.unwrap();
    drop(s);
    let checked = check().await;
    let cleared: Vec<&str> = checked.transitions.cleared.iter().map(|a| a.key.as_str()).collect();
    assert_eq!(cleared, ["child_silent:north", "failed_events:laptop"]);
    let history = count(net.db("parent"), "SELECT COUNT(*) FROM feedsync_alert_state WHERE name LIKE 'history:north:%'", &[]).await;
    assert_eq!(history, 2, "one row per queue of the active child");
}
