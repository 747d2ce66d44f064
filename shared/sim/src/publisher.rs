//! Test support for this crate's tests, the subscriber's and the benchmarks: a publisher on a
//! test database served on a loopback port, [`http`] (one request through the toolkit's own
//! client, `feedsync-http`, showing every status and header, so tests exercise the real
//! server, not a mock), a feed walker that follows links as an Atom client does, an
//! independent reader of database rows to check resources against, and a TCP proxy that can
//! take a database "down".

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use feedsync_node::config::Config;
use feed_publisher::server::{self, App};
use feedsync_node::{load_model, sequencer};
use feedsync_node::capture;
use feedsync_db::{Database, Session, Value};
use feedsync_core::model::Model;
use feedsync_core::profile::Profile;
use crate::workload::{Op, Write};
use feedsync_http::{ClientError, ClientLimits, HttpClient, HttpResponse, Request};

pub struct Publisher {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Publisher {
    /// Installs capture and serves the database; the sequencer does not run by itself, tests
    /// call [`Publisher::publish`] so what a page holds is under their control.
    pub async fn start(database: &Database, configure: impl FnOnce(&mut Config)) -> Publisher {
        Publisher::start_with(database, None, configure).await
    }

    /// [`Publisher::start`], speaking only TLS with `tls` when given.
    pub async fn start_with(database: &Database, tls: Option<feed_publisher::tls::TlsAcceptor>, configure: impl FnOnce(&mut Config)) -> Publisher {
        let model = load_model(database, &Profile::openmrs()).await.expect("model");
        let mut session = database.session().await.unwrap();
        capture::install(&mut session, &model).await.expect("install");
        let mut config = Config { database_url: String::new(), ..Config::default() };
        configure(&mut config);
        let app = Arc::new(App::new(database.clone(), model, config).await.expect("app"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(server::serve_with(app.clone(), listener, tls, stopped));
        Publisher { addr, app, stop }
    }

    pub fn model(&self) -> &Model {
        &self.app.model
    }

    /// Publishes everything journaled so far; returns the number of events.
    pub async fn publish(&self) -> usize {
        let mut session = self.app.database.session().await.unwrap();
        sequencer::drain(&mut session, &self.app.model, &self.app.config, 100_000).await.expect("sequencer")
    }

    pub async fn get(&self, path: &str) -> HttpReply {
        http(self.addr, "GET", path, &[], None).await
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

pub struct HttpReply {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl HttpReply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Largest answer a test reads: a whole feed page or batch of a big workload fits.
const TEST_RESPONSE_BYTES_MAX: usize = 256 << 20;
/// Longest a test waits for one answer; a stuck server fails the test rather than hangs it.
const TEST_REQUEST_TIMEOUT_MS: u64 = 120_000;

impl From<HttpResponse> for HttpReply {
    /// Header names in lower case (the last of a repeated name); a gzip body is decoded and
    /// its `content-encoding` kept, so tests see what the server sent.
    fn from(response: HttpResponse) -> HttpReply {
        let mut headers: BTreeMap<String, String> =
            response.headers.iter().map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).trim().to_owned())).collect();
        if let Some(encoding) = response.decoded_from {
            headers.insert("content-encoding".into(), encoding);
        }
        HttpReply { status: response.status.as_u16(), headers, body: response.body.to_vec() }
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), as given: no redirect
/// followed, every status an answer; `Content-Type: application/json` with a body unless
/// `extra_headers` name one; gzip bodies are decoded (and flagged in headers). Panics when no
/// answer comes.
pub async fn http(addr: SocketAddr, method: &str, path: &str, extra_headers: &[(&str, &str)], body: Option<&[u8]>) -> HttpReply {
    try_http(addr, method, path, extra_headers, body).await.unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// [`http`], returning what kept an answer from coming instead of panicking (for a server that
/// may not be up yet).
pub async fn try_http(addr: SocketAddr, method: &str, path: &str, extra_headers: &[(&str, &str)], body: Option<&[u8]>) -> Result<HttpReply, ClientError> {
    let mut request = Request::new(method, &format!("http://{addr}{path}")).header("connection", "close");
    for (name, value) in extra_headers {
        request = request.header(name, value);
    }
    if let Some(body) = body {
        request = request.body(body.to_vec());
    }
    // A client per request: each test has its own runtime, and a pooled connection must not
    // outlive the runtime it was made on.
    let limits = ClientLimits { response_bytes_max: TEST_RESPONSE_BYTES_MAX, request_timeout_ms: TEST_REQUEST_TIMEOUT_MS, ..ClientLimits::default() };
    HttpClient::new(limits).send_once(request).await.map(HttpReply::from)
}

/// One entry as a feed reader sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: String,
    pub categories: Vec<String>,
    pub content: serde_json::Value,
    pub page: i64,
}

impl Entry {
    pub fn action(&self) -> &str {
        &self.categories[1]
    }
    pub fn resource_link(&self) -> String {
        self.content["resource"].as_str().expect("resource link").to_owned()
    }
    /// (table, key) from the resource link.
    pub fn identity(&self) -> (String, String) {
        feedsync_wire::resource::parse_resource_link(&self.resource_link(), "").expect("parsable link")
    }
}

pub struct WalkedFeed {
    /// Page number to the exact bytes served.
    pub pages: BTreeMap<i64, Vec<u8>>,
    pub entries: Vec<Entry>,
    pub open_page: i64,
}

fn link(feed: &atom_syndication::Feed, rel: &str) -> Option<String> {
    feed.links().iter().find(|l| l.rel() == rel).map(|l| l.href().to_owned())
}

fn path_of(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    after_scheme.find('/').map_or("/".into(), |i| after_scheme[i..].to_owned())
}

/// Reads a whole feed as the reference Atom client does: from /recent back through
/// prev-archive to the first page, then forward through next-archive.
pub async fn walk(publisher: &Publisher, feed: &str) -> WalkedFeed {
    walk_at(publisher.addr, feed).await
}

pub async fn get(addr: SocketAddr, path: &str) -> HttpReply {
    http(addr, "GET", path, &[], None).await
}

pub async fn walk_at(addr: SocketAddr, feed: &str) -> WalkedFeed {
    let recent = get(addr, &format!("/ws/atomfeed/{feed}/recent")).await;
    assert_eq!(recent.status, 200, "{}", recent.text());
    let parsed = atom_syndication::Feed::read_from(&recent.body[..]).expect("recent parses");
    let via = link(&parsed, "via").expect("recent has via");
    let open_page: i64 = via.rsplit('/').next().unwrap().parse().unwrap();
    let mut url = via;
    let mut current = parsed;
    while let Some(prev) = link(&current, "prev-archive") {
        let reply = get(addr, &path_of(&prev)).await;
        assert_eq!(reply.status, 200);
        current = atom_syndication::Feed::read_from(&reply.body[..]).expect("page parses");
        url = prev;
    }
    let mut pages = BTreeMap::new();
    let mut entries = Vec::new();
    loop {
        let reply = get(addr, &path_of(&url)).await;
        assert_eq!(reply.status, 200, "{url}: {}", reply.text());
        let page: i64 = url.rsplit('/').next().unwrap().parse().unwrap();
        let parsed = atom_syndication::Feed::read_from(&reply.body[..]).expect("page parses");
        for e in parsed.entries() {
            let content = e.content().and_then(|c| c.value()).expect("entry content");
            entries.push(Entry {
                id: e.id().to_owned(),
                categories: e.categories().iter().map(|c| c.term().to_owned()).collect(),
                content: serde_json::from_str(content).expect("JSON content"),
                page,
            });
        }
        pages.insert(page, reply.body);
        match link(&parsed, "next-archive") {
            Some(next) => url = next,
            None => break,
        }
    }
    assert_eq!(*pages.keys().last().unwrap(), open_page, "next-archive links lead to the open page");
    WalkedFeed { pages, entries, open_page }
}

/// Runs tests/atom_check.py (feedparser) over page files; skips without Python/feedparser
/// unless CI=true.
pub fn feedparser_check(pages: &BTreeMap<i64, Vec<u8>>) {
    let have = std::process::Command::new("python3").args(["-c", "import feedparser"]).output().is_ok_and(|o| o.status.success());
    if !have {
        crate::testdb::skip_or_fail("python3 with feedparser is not installed (pip install feedparser)");
        return;
    }
    let dir = std::env::temp_dir().join(crate::testdb::unique_name("feedsync_pages"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    for (n, bytes) in pages {
        let f = dir.join(format!("page-{n}.xml"));
        std::fs::write(&f, bytes).unwrap();
        files.push(f);
    }
    let script = crate::testdb::workspace_root().join("tests/atom_check.py");
    let out = std::process::Command::new("python3").arg(script).args(&files).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "feedparser check failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// Reads the row an identity names with hand-written SQL, independent of the publisher's
/// identity code, for the tables the workload writes.
pub async fn independent_row(s: &mut Session, table: &str, key: &str) -> Option<feedsync_db::Row> {
    let (sql, params): (String, Vec<Value>) = match table {
        "patient" => ("SELECT p.* FROM patient p JOIN person x ON x.person_id = p.patient_id WHERE x.uuid = ?".into(), vec![key.into()]),
        "concept_numeric" | "concept_complex" => (
            format!("SELECT n.* FROM {table} n JOIN concept c ON c.concept_id = n.concept_id WHERE c.uuid = ?"),
            vec![key.into()],
        ),
        "drug_order" | "test_order" | "referral_order" => {
            (format!("SELECT d.* FROM {table} d JOIN orders o ON o.order_id = d.order_id WHERE o.uuid = ?"), vec![key.into()])
        }
        "user_role" => {
            let (u, r) = key.split_once('+').unwrap();
            ("SELECT ur.* FROM user_role ur JOIN users u ON u.user_id = ur.user_id WHERE u.uuid = ? AND ur.role = ?".into(), vec![u.into(), r.into()])
        }
        "role_privilege" => {
            let (r, p) = key.split_once('+').unwrap();
            ("SELECT * FROM role_privilege WHERE role = ? AND privilege = ?".into(), vec![r.into(), p.into()])
        }
        "role_role" => {
            let (p, c) = key.split_once('+').unwrap();
            ("SELECT * FROM role_role WHERE parent_role = ? AND child_role = ?".into(), vec![p.into(), c.into()])
        }
        "user_property" => {
            let (u, p) = key.split_once('+').unwrap();
            ("SELECT up.* FROM user_property up JOIN users u ON u.user_id = up.user_id WHERE u.uuid = ? AND up.property = ?".into(), vec![u.into(), p.into()])
        }
        "role" => ("SELECT * FROM role WHERE role = ?".into(), vec![key.into()]),
        "privilege" => ("SELECT * FROM privilege WHERE privilege = ?".into(), vec![key.into()]),
        "global_property" => ("SELECT * FROM global_property WHERE property = ?".into(), vec![key.into()]),
        "location_tag_map" => {
            let (l, t) = key.split_once('+').unwrap();
            (
                "SELECT m.* FROM location_tag_map m JOIN location l ON l.location_id = m.location_id \
                 JOIN location_tag t ON t.location_tag_id = m.location_tag_id WHERE l.uuid = ? AND t.uuid = ?"
                    .into(),
                vec![l.into(), t.into()],
            )
        }
        _ => (format!("SELECT * FROM {table} WHERE uuid = ?"), vec![key.into()]),
    };
    s.query(&sql, &params).await.unwrap_or_else(|e| panic!("{table}: {e}")).into_iter().next()
}

/// The local id a reference to (`table`, `key`) must hold, resolved by hand-written SQL.
pub async fn independent_local_id(s: &mut Session, table: &str, key: &str) -> Option<Value> {
    match table {
        "role" | "privilege" | "global_property" => Some(Value::Text(key.to_owned())),
        "patient" => s.query("SELECT person_id FROM person WHERE uuid = ?", &[key.into()]).await.unwrap().first().map(|r| r.values[0].clone()),
        _ => {
            let pk = match table {
                "users" => "user_id".to_owned(),
                "obs" => "obs_id".to_owned(),
                "orders" => "order_id".to_owned(),
                _ => format!("{table}_id"),
            };
            s.query(&format!("SELECT {pk} FROM {table} WHERE uuid = ?"), &[key.into()]).await.unwrap().first().map(|r| r.values[0].clone())
        }
    }
}

fn same_value(json: &serde_json::Value, db: &Value) -> bool {
    match (json, db) {
        (serde_json::Value::Null, Value::Null) => true,
        (serde_json::Value::String(a), Value::Text(b)) => a == b,
        (serde_json::Value::Number(n), Value::Int(i)) => n.as_i64() == Some(*i),
        (serde_json::Value::Number(n), Value::Float(f)) => n.as_f64() == Some(*f),
        (serde_json::Value::Number(n), Value::Text(t)) => t.parse::<f64>().ok() == n.as_f64(),
        _ => false,
    }
}

/// Checks one served resource against the row read independently; returns a description of
/// the first difference.
pub async fn check_resource(s: &mut Session, model: &Model, resource: &serde_json::Value) -> Result<(), String> {
    let table = resource["table"].as_str().unwrap();
    let key = resource["key"].as_str().unwrap();
    let row = independent_row(s, table, key).await.ok_or_else(|| format!("{table}/{key}: served but not in the database"))?;
    let entity = model.entity(table).unwrap();
    let columns = resource["columns"].as_object().unwrap();
    for (i, name) in row.columns.iter().enumerate() {
        let db = &row.values[i];
        let Some(json) = columns.get(name) else {
            let omitted = Some(name.as_str()) == entity.local_id_column() || !entity.has_column(name);
            if omitted {
                continue;
            }
            return Err(format!("{table}/{key}: column {name} missing from the resource"));
        };
        if let Some(reference) = json.get("ref") {
            let target = reference["table"].as_str().unwrap();
            let expected = match reference["key"].as_str() {
                Some(k) => independent_local_id(s, target, k).await,
                None => None,
            };
            let db_id = db.to_text();
            if expected.as_ref().and_then(Value::to_text) != db_id {
                return Err(format!("{table}/{key}: {name} holds {db:?} but the resource references {target}/{} ({expected:?})", reference["key"]));
            }
        } else if !same_value(json, db) {
            return Err(format!("{table}/{key}: {name} is {db:?} in the database but {json} in the resource"));
        }
    }
    if columns.len() > row.columns.len() {
        return Err(format!("{table}/{key}: resource has columns the row lacks"));
    }
    Ok(())
}

fn action_matches(op: Op, action: &str) -> bool {
    match op {
        Op::Insert => action == "CREATED",
        Op::Delete => action == "DELETED",
        Op::Update => matches!(action, "UPDATED" | "VOIDED" | "UNVOIDED" | "RETIRED" | "UNRETIRED"),
    }
}

/// Asserts that `entries` (the feed after the snapshot) hold exactly the logged writes: per
/// entity in commit order with matching actions, and per table as many events as writes.
pub fn assert_writes_published(entries: &[Entry], writes: &[Write]) {
    let mut feed_by_entity: BTreeMap<(String, String), Vec<&str>> = BTreeMap::new();
    let mut feed_per_table: BTreeMap<String, usize> = BTreeMap::new();
    for e in entries {
        let identity = e.identity();
        *feed_per_table.entry(identity.0.clone()).or_default() += 1;
        feed_by_entity.entry(identity).or_default().push(e.action());
    }
    let mut log_by_entity: BTreeMap<(String, String), Vec<Op>> = BTreeMap::new();
    let mut log_per_table: BTreeMap<String, usize> = BTreeMap::new();
    for w in writes {
        *log_per_table.entry(w.table.clone()).or_default() += 1;
        if let Some(uuid) = &w.uuid {
            log_by_entity.entry((w.table.clone(), uuid.clone())).or_default().push(w.op);
        }
    }
    for (entity, ops) in &log_by_entity {
        let actions = feed_by_entity.get(entity).unwrap_or_else(|| panic!("{entity:?} written but never published"));
        assert_eq!(actions.len(), ops.len(), "{entity:?}: {ops:?} vs {actions:?}");
        for (op, action) in ops.iter().zip(actions) {
            assert!(action_matches(*op, action), "{entity:?}: {op:?} published as {action}");
        }
    }
    assert_eq!(feed_per_table, log_per_table, "per table, as many events as writes (tables without uuid included)");
}

/// A TCP forwarder standing between the publisher and MariaDB, so a test can take the
/// database "down" (existing connections cut, new ones refused) and bring it back.
pub struct Proxy {
    pub addr: SocketAddr,
    up: Arc<std::sync::atomic::AtomicBool>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let generation = Arc::new(generation);
        let (up2, gen2) = (up.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up2.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let mut cut = gen2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy { addr, up, generation }
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, std::sync::atomic::Ordering::SeqCst);
        if !up {
            self.generation.send_modify(|g| *g += 1);
        }
    }
}
