//! Sinks and OpenMRS notifications against real HTTP: a feed-publisher running in-process on
//! a SQLite OpenMRS database, the hand-written OpenMRS atomfeed pages of `tests/fixtures`
//! served with a fake OpenMRS REST API behind basic auth, a webhook receiver that fails before
//! it accepts, and a fake OpenMRS that records cache and search-index calls (or never
//! answers). Every test is bounded in time: a hang is a failure.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use feedsync_sim::publisher::{Publisher, check_resource, walk};
use feed_subscriber::client::{ClientLimits, HttpClient};
use feed_subscriber::openmrs_notify::{Notifier, NotifierConfig};
use feed_subscriber::sink::{Delivery, DeliveryBody, RetryPolicy, Sink, SinkError, SinkLimits, SinkProgress, SinkRunError, run_sink};
use feed_subscriber::sink::webhook::{IDEMPOTENCY_KEY_HEADER, batch_idempotency_key};
use feed_subscriber::sink::{JsonLinesSink, WebhookLimits, WebhookSink};
use feed_subscriber::state;
use feedsync_db::Database;
use feedsync_sim::testdb::{Source, TestDatabase, unique_name};
use feedsync_sim::workload::{self, WorkloadConfig};

/// Longest any one test may take; far above what each needs.
const TEST_SECONDS_MAX: u64 = 120;

async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(TEST_SECONDS_MAX), test).await.expect("the test hung")
}

/// Retries in milliseconds, so failure paths run fast.
const QUICK_RETRY: RetryPolicy = RetryPolicy { retries_max: 3, retry_delay_ms_first: 5, retry_delay_ms_max: 20 };

fn quick_client() -> HttpClient {
    HttpClient::new(ClientLimits { request_timeout_ms: 5_000, retries_max: 2, retry_delay_ms_first: 10, retry_delay_ms_max: 40, ..ClientLimits::default() })
}

fn limits(batch_entries_max: usize) -> SinkLimits {
    SinkLimits { batch_entries_max, retry: QUICK_RETRY, poll_interval_ms: 100 }
}

/// A folder for one test's files (state database, JSON lines), removed after.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(unique_name("feedsync_sinks"));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn state_db(&self) -> Database {
        Database::from_url(&format!("sqlite://{}", self.path("state.sqlite").display())).unwrap()
    }

    fn lines(&self, name: &str) -> Vec<Delivery> {
        let text = std::fs::read_to_string(self.path(name)).unwrap_or_default();
        text.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a delivery ({e}): {line}"))).collect()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ids(deliveries: &[Delivery]) -> Vec<String> {
    deliveries.iter().map(|d| d.entry_id.clone()).collect()
}

// ---------------------------------------------------------------------------------------------
// A recording HTTP server: fixture feeds, fake OpenMRS REST, webhook receivers.

#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
    body: Bytes,
    /// The status the server answered.
    status: u16,
}

impl Recorded {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{} {} sent no JSON ({e})", self.method, self.path))
    }
}

/// Status, content type and body.
type Answer = (u16, &'static str, String);
type Answering = Arc<dyn Fn(&str, &Recorded) -> Answer + Send + Sync>;

struct FakeServer {
    base: String,
    log: Arc<Mutex<Vec<Recorded>>>,
}

impl FakeServer {
    /// `answer` gets the server's base URL (for links in bodies) and the request.
    async fn start(answer: impl Fn(&str, &Recorded) -> Answer + Send + Sync + 'static) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let log: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let answer: Answering = Arc::new(answer);
        let (server_base, server_log) = (base.clone(), log.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (base, log, answer) = (server_base.clone(), server_log.clone(), answer.clone());
                let service = service_fn(move |request: Request<Incoming>| {
                    let (base, log, answer) = (base.clone(), log.clone(), answer.clone());
                    async move {
                        let (head, body) = request.into_parts();
                        let mut recorded = Recorded {
                            method: head.method.to_string(),
                            path: head.uri.path_and_query().map_or_else(String::new, |p| p.to_string()),
                            headers: head.headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned())).collect(),
                            body: body.collect().await.map(|b| b.to_bytes()).unwrap_or_default(),
                            status: 0,
                        };
                        let (status, content_type, text) = answer(&base, &recorded);
                        recorded.status = status;
                        log.lock().unwrap().push(recorded);
                        Ok::<_, Infallible>(Response::builder().status(status).header("content-type", content_type).body(Full::new(Bytes::from(text))).unwrap())
                    }
                });
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        FakeServer { base, log }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn recorded(&self, method: &str, path_prefix: &str) -> Vec<Recorded> {
        self.log.lock().unwrap().iter().filter(|r| r.method == method && r.path.starts_with(path_prefix)).cloned().collect()
    }
}

const JSON: &str = "application/json";
const FEED_PATH: &str = "/openmrs/ws/atomfeed/patient";
const REST_PATIENT_PATH: &str = "/openmrs/ws/rest/v1/patient/";
const HOOK_PATH: &str = "/hook";
/// `admin:Admin123`, OpenMRS's demo credentials, as a basic-auth header.
const ADMIN_PASSWORD: &str = "admin:Admin123";
const ADMIN_BASIC: &str = "Basic YWRtaW46QWRtaW4xMjM=";
/// The fixture patient the fake OpenMRS no longer has (404).
const GONE_PATIENT: &str = "a3c5e7f9-1b2d-4f6a-8c0e-000000000005";

fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// The fixture feed pages and the patients they link to, as OpenMRS serves them: REST only with
/// credentials. `None` for any other path.
fn fake_openmrs(base: &str, request: &Recorded) -> Option<Answer> {
    if let Some(page) = request.path.strip_prefix(FEED_PATH) {
        let file = match page {
            "/recent" => "recent.xml",
            "/1" => "page-1.xml",
            "/2" => "page-2.xml",
            "/3" => "page-3.xml",
            _ => return Some((404, JSON, r#"{"error":"no such page"}"#.into())),
        };
        return Some((200, "application/atom+xml", fixture(file).replace("@BASE@", base)));
    }
    let uuid = request.path.strip_prefix(REST_PATIENT_PATH)?.split('?').next()?;
    if request.headers.get("authorization").map(String::as_str) != Some(ADMIN_BASIC) {
        return Some((401, JSON, r#"{"error":{"message":"User is not logged in"}}"#.into()));
    }
    if uuid == GONE_PATIENT {
        return Some((404, JSON, r#"{"error":{"message":"Object with given uuid doesn't exist"}}"#.into()));
    }
    Some((200, JSON, patient_json(uuid).to_string()))
}

/// What the fake OpenMRS REST serves for a patient: gender by the uuid's last digit.
fn patient_json(uuid: &str) -> serde_json::Value {
    let gender = if uuid.ends_with(['1', '3', '5', '7', '9']) { "M" } else { "F" };
    serde_json::json!({"uuid": uuid, "display": format!("Patient {uuid}"), "person": {"uuid": uuid, "gender": gender}})
}

/// The fixture feed's entries in feed order: (entry id suffix, patient uuid suffix).
const FIXTURE_ENTRIES: [(u32, u32); 13] = [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (7, 7), (8, 8), (9, 9), (10, 1), (11, 11), (12, 2), (13, 3)];

fn fixture_entry_id(n: u32) -> String {
    format!("tag:atomfeed.ict4h.org:6f0b2c1e-4b1a-4c3e-9d2a-{n:012}")
}

fn fixture_patient(n: u32) -> String {
    format!("a3c5e7f9-1b2d-4f6a-8c0e-{n:012}")
}

// ---------------------------------------------------------------------------------------------
// A real publisher.

/// A publisher on a fresh SQLite OpenMRS after a workload, and its `all` feed as an
/// independent Atom walk reads it.
async fn published() -> Option<(TestDatabase, Publisher, Vec<feedsync_sim::publisher::Entry>)> {
    let test = TestDatabase::create(Source::Sqlite25)?;
    let publisher = Publisher::start(&test.database, |c| c.feed.page_size = 20).await;
    let mut session = test.database.session().await.unwrap();
    workload::run(&mut session, &WorkloadConfig { seed: 11, ..WorkloadConfig::default() }).await.expect("workload");
    publisher.publish().await;
    let entries = walk(&publisher, "all").await.entries;
    assert!(entries.len() > 100, "several pages: {} entries", entries.len());
    Some((test, publisher, entries))
}

fn all_feed(publisher: &Publisher) -> String {
    format!("http://{}/ws/atomfeed/all/recent", publisher.addr)
}

const PUBLISHER_BATCH_ENTRIES: usize = 37;

#[tokio::test]
async fn a_real_feed_goes_to_json_lines_once_each_in_order_with_its_resource() {
    bounded(async {
        let Some((test, publisher, entries)) = published().await else { return };
        let scratch = Scratch::new();
        let feed = all_feed(&publisher);
        let mut sink = JsonLinesSink::append_to(scratch.path("out.jsonl")).unwrap();
        let started = Instant::now();
        let progress =
            run_sink(&quick_client(), std::slice::from_ref(&feed), &scratch.state_db(), &mut sink, true, &limits(PUBLISHER_BATCH_ENTRIES)).await.expect("run");
        let elapsed = started.elapsed();

        let lines = scratch.lines("out.jsonl");
        let expected: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
        assert_eq!(ids(&lines), expected, "every entry exactly once, in feed order");
        assert_eq!(
            progress,
            SinkProgress {
                entries_delivered: entries.len(),
                failures_delivered: 0,
                batches_delivered: entries.len().div_ceil(PUBLISHER_BATCH_ENTRIES),
                retries: 0,
                caught_up: true
            }
        );
        let mut session = test.database.session().await.unwrap();
        let mut resources_checked = BTreeSet::new();
        for (line, entry) in lines.iter().zip(&entries) {
            assert_eq!(line.feed_url, feed);
            assert_eq!(line.categories, entry.categories);
            assert_eq!(line.action.as_deref(), Some(entry.action()));
            let (table, key) = entry.identity();
            match &line.body {
                DeliveryBody::Resource(resource) => {
                    assert_eq!((&resource.table, &resource.key), (&table, &key), "{}", line.entry_id);
                    if resources_checked.insert((table, key)) {
                        check_resource(&mut session, publisher.model(), &serde_json::to_value(resource).unwrap()).await.expect("resource matches its row");
                    }
                }
                DeliveryBody::Tombstone(tombstone) => assert_eq!((&tombstone.table, &tombstone.key), (&table, &key), "{}", line.entry_id),
                other => panic!("{} delivered {other:?}", line.entry_id),
            }
        }
        assert!(lines.iter().any(|l| matches!(l.body, DeliveryBody::Tombstone(_))), "the workload deletes join rows");

        // Caught up: another run delivers nothing and writes nothing.
        let again =
            run_sink(&quick_client(), std::slice::from_ref(&feed), &scratch.state_db(), &mut sink, true, &limits(PUBLISHER_BATCH_ENTRIES)).await.unwrap();
        assert_eq!(again.entries_delivered, 0);
        assert_eq!(scratch.lines("out.jsonl").len(), entries.len());
        eprintln!("{} entries delivered to JSON lines in {} batches in {elapsed:?}", entries.len(), progress.batches_delivered);
    })
    .await
}

/// What a scripted sink does on a given call (counted from 1 over its life).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// Fails retryably before writing anything.
    RetryableFailure,
    /// Writes the batch, then refuses it for good: a crash after the write, before the marker.
    WriteThenRefuse,
    /// Writes the batch, then never returns: the run is killed while the batch is in flight.
    WriteThenStall,
}

struct ScriptedSink {
    inner: JsonLinesSink,
    script: HashMap<usize, Fault>,
    calls: usize,
    /// The entry ids of every batch written, per call.
    written: Vec<Vec<String>>,
    /// Told when the sink starts stalling, so the test kills the run at that moment.
    stalled: Arc<tokio::sync::Notify>,
}

impl ScriptedSink {
    fn new(inner: JsonLinesSink, script: &[(usize, Fault)]) -> ScriptedSink {
        ScriptedSink { inner, script: script.iter().copied().collect(), calls: 0, written: Vec::new(), stalled: Arc::default() }
    }
}

impl Sink for ScriptedSink {
    async fn deliver(&mut self, batch: &[Delivery]) -> Result<(), SinkError> {
        self.calls += 1;
        let fault = self.script.get(&self.calls).copied();
        if fault == Some(Fault::RetryableFailure) {
            return Err(SinkError::retryable("the disk is briefly away"));
        }
        self.inner.deliver(batch).await?;
        self.written.push(ids(batch));
        match fault {
            Some(Fault::WriteThenRefuse) => Err(SinkError::permanent("downstream refuses this entry").at_entry(&batch[1].entry_id)),
            Some(Fault::WriteThenStall) => {
                self.stalled.notify_one();
                std::future::pending().await
            }
            _ => Ok(()),
        }
    }
}

#[tokio::test]
async fn a_killed_run_resumes_after_the_marker_losing_nothing_and_repeating_only_the_batch_in_flight() {
    bounded(async {
        let Some((_test, publisher, entries)) = published().await else { return };
        let scratch = Scratch::new();
        let feed = [all_feed(&publisher)];
        let out = scratch.path("out.jsonl");
        let run_limits = limits(PUBLISHER_BATCH_ENTRIES);

        // Run 1: a retryable failure is retried (nothing repeats); then the sink writes batch 3
        // and fails for good, which stops the run naming the entry.
        let script = [(2, Fault::RetryableFailure), (4, Fault::WriteThenRefuse)];
        let mut first = ScriptedSink::new(JsonLinesSink::append_to(&out).unwrap(), &script);
        let error = run_sink(&quick_client(), &feed, &scratch.state_db(), &mut first, true, &run_limits).await.expect_err("the sink refused");
        let refused_batch = first.written.last().unwrap().clone();
        assert!(matches!(&error, SinkRunError::Delivery { retries: 0, .. }), "{error:?}");
        assert!(!error.is_retryable());
        assert_eq!(error.entry_id(), Some(refused_batch[1].as_str()), "names the entry the sink refused");
        let message = error.to_string();
        assert!(message.contains(&refused_batch[1]) && message.contains(&feed[0]) && message.contains("downstream refuses"), "{message}");
        assert_eq!(first.written.len(), 3, "batch 2 was written once, after its retry");

        // Run 2: killed while its second batch is in flight (written, marker not moved).
        let mut second = ScriptedSink::new(JsonLinesSink::append_to(&out).unwrap(), &[(2, Fault::WriteThenStall)]);
        let (stalled, client, state_db) = (second.stalled.clone(), quick_client(), scratch.state_db());
        tokio::select! {
            result = run_sink(&client, &feed, &state_db, &mut second, true, &run_limits) => panic!("the run should stall, not end: {result:?}"),
            // Dropping the run's future here is the kill.
            () = stalled.notified() => {}
        }
        assert_eq!(second.written[0], refused_batch, "resumed at the batch the sink refused");
        let stalled_batch = second.written[1].clone();

        // Run 3: to the end.
        let mut third = JsonLinesSink::append_to(&out).unwrap();
        run_sink(&quick_client(), &feed, &scratch.state_db(), &mut third, true, &run_limits).await.expect("resumed run");
        assert_eq!(third.lines_written() as usize, entries.len() - entries.iter().position(|e| e.id == stalled_batch[0]).unwrap());

        let lines = ids(&scratch.lines("out.jsonl"));
        let mut seen = BTreeSet::new();
        let unique: Vec<String> = lines.iter().filter(|id| seen.insert(id.to_string())).cloned().collect();
        assert_eq!(unique, entries.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), "nothing lost, order kept");
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for id in &lines {
            *counts.entry(id).or_default() += 1;
        }
        let repeated: BTreeSet<&str> = counts.iter().filter(|(_, n)| **n > 1).map(|(id, _)| *id).collect();
        let in_flight: BTreeSet<&str> = refused_batch.iter().chain(&stalled_batch).map(String::as_str).collect();
        assert_eq!(repeated, in_flight, "only the batches in flight are delivered twice");
        assert!(counts.values().all(|n| *n <= 2));
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// OpenMRS atomfeed feeds: entries link to OpenMRS REST.

#[tokio::test]
async fn an_openmrs_atomfeed_feed_delivers_the_rest_json_fetched_with_credentials() {
    bounded(async {
        let server = FakeServer::start(|base, request| fake_openmrs(base, request).unwrap_or((404, JSON, "{}".into()))).await;
        let scratch = Scratch::new();
        let feed = [server.url(&format!("{FEED_PATH}/recent"))];

        // Without credentials OpenMRS answers 401: a setup error that stops the run, never a
        // stream of failure records.
        let mut refused = JsonLinesSink::append_to(scratch.path("refused.jsonl")).unwrap();
        let error = run_sink(&quick_client(), &feed, &scratch.state_db(), &mut refused, true, &limits(4)).await.expect_err("401");
        assert!(matches!(&error, SinkRunError::Fetch { retryable: false, .. }), "{error:?}");
        assert!(error.to_string().contains("credentials") && error.to_string().contains(&fixture_entry_id(1)), "{error}");
        assert_eq!(refused.lines_written(), 0);

        let client = quick_client().with_basic_auth(ADMIN_PASSWORD);
        let mut sink = JsonLinesSink::append_to(scratch.path("out.jsonl")).unwrap();
        let progress = run_sink(&client, &feed, &scratch.state_db(), &mut sink, true, &limits(4)).await.expect("run");
        assert_eq!((progress.entries_delivered, progress.failures_delivered), (13, 1));

        let lines = scratch.lines("out.jsonl");
        assert_eq!(ids(&lines), FIXTURE_ENTRIES.iter().map(|(entry, _)| fixture_entry_id(*entry)).collect::<Vec<_>>());
        for (line, (entry, patient)) in lines.iter().zip(FIXTURE_ENTRIES) {
            let uuid = fixture_patient(patient);
            let link = server.url(&format!("{REST_PATIENT_PATH}{uuid}?v=full"));
            match &line.body {
                DeliveryBody::Rest { link: fetched, json } => {
                    assert_eq!((fetched, json), (&link, &patient_json(&uuid)), "entry {entry}");
                }
                DeliveryBody::Failed { link: Some(failed), reason } => {
                    assert_eq!((failed, uuid.as_str()), (&link, GONE_PATIENT));
                    assert!(reason.contains("404") && reason.contains("doesn't exist"), "{reason}");
                }
                other => panic!("entry {entry}: {other:?}"),
            }
        }
        let actions: Vec<Option<&str>> = lines.iter().map(|l| l.action.as_deref()).collect();
        assert_eq!(actions[..10], [None; 10], "Bahmni's pages carry no action");
        assert_eq!(actions[10..], [Some("CREATED"), Some("UPDATED"), Some("VOIDED")]);
        assert_eq!(lines[11].categories, ["patient", "UPDATED", "location:8d6c993e-c2cc-11de-8d13-0010c6dffd0f"]);
        let rest_gets = server.recorded("GET", REST_PATIENT_PATH);
        assert!(rest_gets.iter().filter(|r| r.status != 401).all(|r| r.headers.get("authorization").map(String::as_str) == Some(ADMIN_BASIC)));
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Webhooks.

/// Serves the fixture feed, its REST patients, and a webhook at [`HOOK_PATH`] answering the
/// statuses `hook_statuses` in turn, then 200.
async fn webhook_server(hook_statuses: &'static [u16]) -> FakeServer {
    let hook_posts = AtomicUsize::new(0);
    FakeServer::start(move |base, request| {
        if request.path == HOOK_PATH {
            let n = hook_posts.fetch_add(1, Ordering::SeqCst);
            return match hook_statuses.get(n) {
                Some(503) => (503, JSON, r#"{"error":"warming up"}"#.into()),
                Some(&status) => (status, JSON, r#"{"error":"patient gender missing"}"#.into()),
                None => (200, JSON, r#"{"accepted":true}"#.into()),
            };
        }
        fake_openmrs(base, request).unwrap_or((404, JSON, "{}".into()))
    })
    .await
}

fn quick_webhook(url: &str, body_bytes_max: usize) -> WebhookSink {
    let limits = WebhookLimits { body_bytes_max, request_timeout_ms: 5_000, retry: QUICK_RETRY };
    WebhookSink::new(url, limits).unwrap()
}

const WEBHOOK_BODY_BYTES_MAX: usize = 1_500;

#[tokio::test]
async fn a_webhook_that_fails_twice_gets_every_entry_with_stable_idempotency_keys() {
    bounded(async {
        let server = webhook_server(&[503, 503]).await;
        let scratch = Scratch::new();
        let feed = [server.url(&format!("{FEED_PATH}/recent"))];
        let client = quick_client().with_basic_auth(ADMIN_PASSWORD);
        let mut sink = quick_webhook(&server.url(HOOK_PATH), WEBHOOK_BODY_BYTES_MAX);
        let progress = run_sink(&client, &feed, &scratch.state_db(), &mut sink, true, &limits(5)).await.expect("delivered after the 503s");
        assert_eq!(progress.entries_delivered, 13);

        let posts = server.recorded("POST", HOOK_PATH);
        assert_eq!(posts.iter().map(|p| p.status).take(3).collect::<Vec<_>>(), [503, 503, 200]);
        assert_eq!(posts[0].body, posts[2].body, "the retry sends the same request");
        assert!(posts.len() > 3, "batches over {WEBHOOK_BODY_BYTES_MAX} bytes are split: {} requests", posts.len());
        let mut accepted = Vec::new();
        for post in &posts {
            assert!(post.body.len() <= WEBHOOK_BODY_BYTES_MAX);
            assert_eq!(post.headers.get("content-type").map(String::as_str), Some(JSON));
            let items = post.json();
            let items = items.as_array().expect("a JSON array");
            let entry_ids: Vec<&str> = items.iter().map(|item| item["entry_id"].as_str().unwrap()).collect();
            for item in items {
                assert_eq!(item["idempotency_key"], item["entry_id"], "each item keyed by its entry id");
            }
            assert_eq!(post.headers.get(IDEMPOTENCY_KEY_HEADER), Some(&batch_idempotency_key(entry_ids.iter().copied())), "the request keyed by its entries");
            if post.status == 200 {
                accepted.extend(entry_ids.iter().map(|id| id.to_string()));
            }
        }
        assert_eq!(posts[0].headers.get(IDEMPOTENCY_KEY_HEADER), posts[2].headers.get(IDEMPOTENCY_KEY_HEADER), "stable across retries");
        assert_eq!(accepted, FIXTURE_ENTRIES.iter().map(|(entry, _)| fixture_entry_id(*entry)).collect::<Vec<_>>(), "every entry accepted once, in order");
        let first = &posts[2].json()[0];
        assert_eq!(first["rest"]["json"], patient_json(&fixture_patient(1)));
        assert_eq!(sink.requests_accepted() as usize, posts.len() - 2);
    })
    .await
}

#[tokio::test]
async fn a_webhook_answering_400_stops_the_run_naming_the_entry_and_keeps_the_marker() {
    bounded(async {
        let server = webhook_server(&[400; 64]).await;
        let scratch = Scratch::new();
        let feed = [server.url(&format!("{FEED_PATH}/recent"))];
        let client = quick_client().with_basic_auth(ADMIN_PASSWORD);
        let mut sink = quick_webhook(&server.url(HOOK_PATH), WEBHOOK_BODY_BYTES_MAX);
        let error = run_sink(&client, &feed, &scratch.state_db(), &mut sink, true, &limits(5)).await.expect_err("400");
        assert!(!error.is_retryable());
        assert_eq!(error.entry_id(), Some(fixture_entry_id(1).as_str()));
        let message = error.to_string();
        assert!(message.contains("400") && message.contains("patient gender missing") && message.contains("nothing is skipped"), "{message}");
        assert_eq!(server.recorded("POST", HOOK_PATH).len(), 1, "a 400 is not retried");

        let mut session = scratch.state_db().session().await.unwrap();
        let feed_state = state::feed_state(&mut session, &feed[0]).await.unwrap().expect("the error is recorded");
        assert_eq!(feed_state.marker_entry_id, None, "the marker did not move");
        assert!(feed_state.last_error.unwrap().contains(&fixture_entry_id(1)));
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// OpenMRS cache eviction and search index notifications.

const CLEAR_CACHE: &str = "/openmrs/ws/rest/v1/cleardbcache";
const SEARCH_INDEX: &str = "/openmrs/ws/rest/v1/searchindexupdate";

fn quick_notifier(openmrs_url: String, database: Option<Database>) -> NotifierConfig {
    NotifierConfig {
        user_password: Some(ADMIN_PASSWORD.into()),
        database,
        request_timeout_ms: 2_000,
        retry: RetryPolicy { retries_max: 3, retry_delay_ms_first: 10, retry_delay_ms_max: 50 },
        ..NotifierConfig::new(openmrs_url)
    }
}

async fn column(session: &mut feedsync_db::Session, sql: &str, params: &[feedsync_db::Value]) -> Vec<String> {
    session.query(sql, params).await.unwrap().iter().map(|r| r.values[0].to_text().unwrap()).collect()
}

#[tokio::test]
async fn openmrs_is_told_of_changed_rows_deduplicated_and_retried_after_a_500() {
    bounded(async {
        let Some(test) = TestDatabase::create(Source::Sqlite25) else { return };
        let mut session = test.database.session().await.unwrap();
        workload::run(&mut session, &WorkloadConfig { seed: 3, ..WorkloadConfig::default() }).await.expect("workload");
        let newest = "SELECT p.uuid FROM patient t JOIN person p ON p.person_id = t.patient_id ORDER BY t.patient_id DESC LIMIT 1";
        let patient = column(&mut session, newest, &[]).await.remove(0);
        let of_patient = [patient.as_str().into()];
        let names = column(&mut session, "SELECT n.uuid FROM person_name n JOIN person p ON p.person_id = n.person_id WHERE p.uuid = ?", &of_patient).await;
        let identifiers =
            column(&mut session, "SELECT i.uuid FROM patient_identifier i JOIN person p ON p.person_id = i.patient_id WHERE p.uuid = ?", &of_patient).await;
        let attributes =
            column(&mut session, "SELECT a.uuid FROM person_attribute a JOIN person p ON p.person_id = a.person_id WHERE p.uuid = ?", &of_patient).await;
        assert!(!names.is_empty() && !identifiers.is_empty(), "the workload registers patients with names and identifiers");

        let calls = AtomicUsize::new(0);
        let openmrs =
            FakeServer::start(move |_, request| match (request.headers.get("authorization").map(String::as_str), calls.fetch_add(1, Ordering::SeqCst)) {
                (Some(ADMIN_BASIC), 0) => (500, JSON, r#"{"error":{"message":"Transaction rolled back"}}"#.into()),
                (Some(ADMIN_BASIC), _) => (204, JSON, String::new()),
                (_, _) => (401, JSON, "{}".into()),
            })
            .await;
        let (notifier, handle) = Notifier::new(quick_notifier(openmrs.url("/openmrs/"), Some(test.database.clone())));
        notifier.touched("patient", &patient);
        notifier.touched("person", &patient);
        notifier.touched("person_name", &names[0]);
        notifier.touched("person_name", &names[0]);
        notifier.touched("users", "u-1");
        notifier.touched("patient_identifier", "i-9");
        notifier.touched("obs", "o-1");
        notifier.deleted("person_address", "a-1");
        let stats = handle.drain(10_000).await;
        assert_eq!((stats.rows_pending, stats.calls_failed, stats.calls_retried), (0, 0, 1), "{stats:?}");

        let body = |resource: &str, sub: Option<&str>, uuid: Option<&str>| serde_json::json!({"resource": resource, "subResource": sub, "uuid": uuid});
        let mut expected_evictions = vec![
            body("person", None, Some(&patient)),
            body("person", Some("name"), Some(&names[0])),
            body("user", None, Some("u-1")),
            body("person", Some("address"), None),
        ];
        let mut expected_index: Vec<serde_json::Value> = names.iter().map(|n| body("person", Some("name"), Some(n))).collect();
        expected_index.extend(identifiers.iter().map(|i| body("patient", Some("identifier"), Some(i))));
        expected_index.extend(attributes.iter().map(|a| body("person", Some("attribute"), Some(a))));
        expected_index.push(body("patient", Some("identifier"), Some("i-9")));
        let accepted = |path: &str| {
            let mut bodies: Vec<serde_json::Value> = openmrs.recorded("POST", path).iter().filter(|r| r.status == 204).map(Recorded::json).collect();
            bodies.sort_by_key(|b| b.to_string());
            bodies
        };
        for (path, expected) in [(CLEAR_CACHE, &mut expected_evictions), (SEARCH_INDEX, &mut expected_index)] {
            expected.sort_by_key(|b| b.to_string());
            expected.dedup();
            assert_eq!(&accepted(path), expected, "{path}: each call once");
        }
        let all = openmrs.recorded("POST", "/openmrs/ws/rest/v1/");
        assert_eq!(all[0].status, 500);
        assert_eq!(all.iter().filter(|r| r.body == all[0].body).count(), 2, "the call that met a 500 was made again");
        assert!(all.iter().all(|r| r.headers.get("authorization").map(String::as_str) == Some(ADMIN_BASIC)));
        assert_eq!(stats.calls_sent as usize, expected_evictions.len() + expected_index.len());
        assert!(stats.rows_coalesced >= 1, "{stats:?}");
    })
    .await
}

#[tokio::test]
async fn a_dead_openmrs_never_slows_the_caller_and_the_queue_stays_bounded() {
    bounded(async {
        // Accepts connections and never answers: the worst kind of dead.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_url = format!("http://{}/openmrs", listener.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let mut connections = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                connections.push(stream);
            }
        });
        const PENDING_ROWS_MAX: usize = 1_000;
        const TOUCHES: usize = 100_000;
        let config = NotifierConfig { pending_rows_max: PENDING_ROWS_MAX, request_timeout_ms: 200, ..quick_notifier(dead_url, None) };
        let (notifier, handle) = Notifier::new(config);
        let started = Instant::now();
        for i in 0..TOUCHES {
            let table = ["person_name", "patient_identifier", "users", "person_attribute"][i % 4];
            notifier.touched(table, &format!("uuid-{i}"));
        }
        let touching = started.elapsed();
        let stats = notifier.stats();
        assert!(touching < Duration::from_secs(3), "{TOUCHES} touches took {touching:?}");
        assert!(stats.rows_pending <= PENDING_ROWS_MAX + 7, "{stats:?}");
        assert!(stats.rows_widened > 0, "{stats:?}");

        let draining = Instant::now();
        let stats = handle.drain(300).await;
        assert!(draining.elapsed() < Duration::from_secs(2), "drain is bounded: {:?}", draining.elapsed());
        assert_eq!(stats.calls_sent, 0);
        assert!(stats.rows_pending > 0, "not notified, and said so: {stats:?}");
        held.abort();
        eprintln!("{TOUCHES} touches against a dead OpenMRS in {touching:?}; {stats:?}");
    })
    .await
}

/// Needs the engine to call the notifier (the lead's patch to engine.rs).
#[tokio::test]
async fn applying_a_feed_tells_openmrs_about_every_written_person_row_and_replays_tell_nothing() {
    bounded(async {
        let Some((_source, publisher, _entries)) = published().await else { return };
        let Some(target) = TestDatabase::create(Source::Sqlite25) else { return };
        let mut session = target.database.session().await.unwrap();
        let uuids = async |session: &mut feedsync_db::Session, table: &str| -> BTreeSet<String> {
            column(session, &format!("SELECT uuid FROM {table}"), &[]).await.into_iter().collect()
        };
        let (names_before, identifiers_before) = (uuids(&mut session, "person_name").await, uuids(&mut session, "patient_identifier").await);
        let openmrs = FakeServer::start(|_, _| (204, JSON, String::new())).await;
        let (notifier, handle) = Notifier::new(quick_notifier(openmrs.url("/openmrs"), Some(target.database.clone())));
        let model = feedsync_node::load_model(&target.database, &feedsync_core::profile::Profile::openmrs()).await.unwrap();
        let subscriber =
            feed_subscriber::engine::Subscriber::new(target.database.clone(), model, quick_client(), String::new()).with_notifier(notifier.clone());
        let feed = [all_feed(&publisher)];
        subscriber.sync_until_caught_up(&feed).await.expect("sync");
        while notifier.stats().rows_pending > 0 || openmrs.recorded("POST", "/openmrs/").is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let indexed = |sub: &str| -> BTreeSet<String> {
            openmrs
                .recorded("POST", SEARCH_INDEX)
                .iter()
                .map(Recorded::json)
                .filter(|b| b["subResource"] == sub)
                .filter_map(|b| b["uuid"].as_str().map(str::to_owned))
                .collect()
        };
        for (sub, table, before) in [("name", "person_name", &names_before), ("identifier", "patient_identifier", &identifiers_before)] {
            let after = uuids(&mut session, table).await;
            let created: BTreeSet<String> = after.difference(before).cloned().collect();
            let reindexed = indexed(sub);
            assert!(!created.is_empty() && created.is_subset(&reindexed), "{table}: created {created:?}, reindexed {reindexed:?}");
            assert!(reindexed.is_subset(&after), "{table}: only rows that exist");
        }
        let calls_after_sync = openmrs.recorded("POST", "/openmrs/").len();

        // Replaying the whole feed writes nothing new, so OpenMRS hears nothing.
        session.execute("DELETE FROM feedsync_sub_feed", &[]).await.unwrap();
        subscriber.sync_until_caught_up(&feed).await.expect("replay");
        let stats = handle.drain(5_000).await;
        assert_eq!(openmrs.recorded("POST", "/openmrs/").len(), calls_after_sync, "{stats:?}");
        eprintln!("{calls_after_sync} OpenMRS calls for the sync, none for the replay; {stats:?}");
    })
    .await
}
