//! The reading half of the subscriber against real HTTP: hand-written pages in the reference
//! OpenMRS atomfeed format served from `tests/fixtures`, a real feed-publisher running
//! in-process on a SQLite OpenMRS database, and servers that misbehave (malformed pages,
//! rewritten archives, missing and broken resources, huge bodies, gzip bombs, redirect loops,
//! silence). Every test is bounded in time: a hang is a failure, not a stuck CI run.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use feedsync_node::config::Config;
use feed_publisher::server::{self, App};
use feedsync_node::{load_model, sequencer};
use feed_subscriber::client::{ClientError, ClientLimits, Fetched, HttpClient};
use feed_subscriber::reader::{EntryContent, FeedReader, Marker, ReadBatch, ReadError};
use feedsync_node::capture;
use feedsync_db::Database;
use feedsync_core::profile::Profile;
use feedsync_wire::resource::{Resource, Tombstone, parse_resource_link};
use feedsync_sim::testdb::{Source, TestDatabase};
use feedsync_sim::workload::{self, WorkloadConfig};

/// Longest any one test may take; far above what each needs.
const TEST_SECONDS_MAX: u64 = 120;

async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(TEST_SECONDS_MAX), test).await.expect("the test hung")
}

/// Limits small enough that failure paths run in milliseconds.
fn quick_limits() -> ClientLimits {
    ClientLimits { request_timeout_ms: 2_000, retries_max: 2, retry_delay_ms_first: 10, retry_delay_ms_max: 40, ..ClientLimits::default() }
}

// ---------------------------------------------------------------------------------------------
// A tiny HTTP server answering from a function, recording every request.

/// A request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    authorization: Option<String>,
    accept_encoding: Option<String>,
    body: Bytes,
}

type Handler = Arc<dyn Fn(&Seen) -> Response<Full<Bytes>> + Send + Sync>;

struct TestServer {
    base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl TestServer {
    async fn start(handler: impl Fn(&Seen) -> Response<Full<Bytes>> + Send + Sync + 'static) -> TestServer {
        let handler: Handler = Arc::new(handler);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (handler, log) = (handler.clone(), log.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let (handler, log) = (handler.clone(), log.clone());
                        async move {
                            let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
                            let mut seen = Seen {
                                method: request.method().to_string(),
                                path: request.uri().path_and_query().map_or("/".into(), |p| p.to_string()),
                                authorization: header("authorization"),
                                accept_encoding: header("accept-encoding"),
                                body: Bytes::new(),
                            };
                            seen.body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            log.lock().unwrap().push(seen.clone());
                            Ok::<_, Infallible>(handler(&seen))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        TestServer { base: format!("http://{addr}"), seen }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `METHOD path` of every request so far.
    fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().iter().map(|s| format!("{} {}", s.method, s.path)).collect()
    }
}

fn reply(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder().status(status).header("content-type", content_type).body(Full::new(body.into())).unwrap()
}

fn json_reply(status: u16, body: serde_json::Value) -> Response<Full<Bytes>> {
    reply(status, "application/json", body.to_string())
}

// ---------------------------------------------------------------------------------------------
// The fixture feed: three pages of a patient feed in the reference format.

const FEED_PATH: &str = "/openmrs/ws/atomfeed/patient";

fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// Serves the fixture pages; `page_2` names the file served as page 2.
async fn fixture_server(page_2: &'static str) -> TestServer {
    let base: Arc<Mutex<String>> = Arc::new(Mutex::new(String::new()));
    let base_in_handler = base.clone();
    let server = TestServer::start(move |seen| {
        let file = match seen.path.strip_prefix(FEED_PATH) {
            Some("/recent") => "recent.xml",
            Some("/1") => "page-1.xml",
            Some("/2") => page_2,
            Some("/3") => "page-3.xml",
            _ => return json_reply(404, serde_json::json!({"error": format!("no such path {}", seen.path), "hint": "h", "status": 404})),
        };
        let text = fixture(file).replace("@BASE@", &base_in_handler.lock().unwrap());
        reply(200, "application/atom+xml", text)
    })
    .await;
    *base.lock().unwrap() = server.base.clone();
    server
}

/// The fixture feed's server, a reader of it, and a marker after entry 8, in the middle of
/// page 2.
async fn fixture_reader_with_marker(page_2: &'static str) -> (TestServer, FeedReader, Marker) {
    let server = fixture_server(page_2).await;
    let reader = FeedReader::new(HttpClient::new(quick_limits()), server.url(&format!("{FEED_PATH}/recent")));
    let marker = Marker { entry_id: fixture_entry_id(8), page_url: server.url(&format!("{FEED_PATH}/2")) };
    (server, reader, marker)
}

fn ids_of(batch: &ReadBatch) -> Vec<String> {
    batch.entries.iter().map(|e| e.id.clone()).collect()
}

fn fixture_entry_id(n: u32) -> String {
    format!("tag:atomfeed.ict4h.org:6f0b2c1e-4b1a-4c3e-9d2a-{n:012}")
}

fn patient_uuid(n: u32) -> String {
    format!("a3c5e7f9-1b2d-4f6a-8c0e-{n:012}")
}

#[tokio::test]
async fn fixtures_without_marker_walk_back_to_the_first_page_then_read_forward() {
    bounded(async {
        let server = fixture_server("page-2.xml").await;
        let client = HttpClient::new(quick_limits()).with_basic_auth("admin:Admin123");
        let reader = FeedReader::new(client, server.url(&format!("{FEED_PATH}/recent")));
        let batch = reader.read_after(None, 100).await.expect("the fixture feed reads");

        assert!(batch.caught_up);
        let ids = ids_of(&batch);
        assert_eq!(ids, (1..=13).map(fixture_entry_id).collect::<Vec<_>>(), "oldest first, each once");
        assert_eq!(
            server.requests(),
            [
                format!("GET {FEED_PATH}/recent"),
                format!("GET {FEED_PATH}/2"),
                format!("GET {FEED_PATH}/1"),
                format!("GET {FEED_PATH}/2"),
                format!("GET {FEED_PATH}/3"),
            ],
            "back through prev-archive, the first page is not fetched twice, then forward through next-archive"
        );
        for seen in server.seen.lock().unwrap().iter() {
            assert_eq!(seen.authorization.as_deref(), Some("Basic YWRtaW46QWRtaW4xMjM="));
            assert_eq!(seen.accept_encoding.as_deref(), Some("gzip"));
        }

        // Bahmni's flavour: one relative REST URL, resolved against the page.
        let first = &batch.entries[0];
        assert_eq!(first.content, EntryContent::Url(server.url(&format!("/openmrs/ws/rest/v1/patient/{}?v=full", patient_uuid(1)))));
        assert_eq!(first.categories, ["patient"]);
        assert_eq!(first.updated.to_rfc3339(), "2024-03-04T09:01:00+00:00");
        // Sync 2.0's flavour: a JSON object of links.
        let last = &batch.entries[12];
        assert_eq!(
            last.content,
            EntryContent::Links {
                resource: None,
                rest: Some(server.url(&format!("/openmrs/ws/rest/v1/patient/{}?v=full", patient_uuid(3)))),
                fhir: Some(server.url(&format!("/openmrs/ws/fhir2/R4/Patient/{}", patient_uuid(3)))),
            }
        );
        assert_eq!(batch.entries[11].categories, ["patient", "UPDATED", "location:8d6c993e-c2cc-11de-8d13-0010c6dffd0f"]);
        // Markers name numbered pages, never /recent, which moves.
        let pages: Vec<String> = batch.entries.iter().map(|e| e.page_url.rsplit('/').next().unwrap().to_owned()).collect();
        assert_eq!(pages, ["1", "1", "1", "1", "1", "2", "2", "2", "2", "2", "3", "3", "3"]);
        assert_eq!(batch.marker(), Some(Marker { entry_id: fixture_entry_id(13), page_url: server.url(&format!("{FEED_PATH}/3")) }));

        // The same feed in batches of 4, keeping the marker after each: the same entries.
        let mut marker: Option<Marker> = None;
        let mut read = Vec::new();
        let mut batches = 0;
        loop {
            let batch = reader.read_after(marker.as_ref(), 4).await.unwrap();
            batches += 1;
            assert!(batch.entries.len() <= 4);
            read.extend(batch.entries.iter().map(|e| e.id.clone()));
            marker = batch.marker().or(marker);
            if batch.caught_up {
                break;
            }
            assert_eq!(batch.entries.len(), 4, "a batch short of its maximum is the last");
        }
        assert_eq!(read, ids);
        assert_eq!(batches, 4);
        let again = reader.read_after(marker.as_ref(), 4).await.unwrap();
        assert!(again.entries.is_empty() && again.caught_up, "caught up: nothing new");
    })
    .await
}

#[tokio::test]
async fn fixtures_from_a_marker_in_the_middle_of_page_2() {
    bounded(async {
        let (server, reader, marker) = fixture_reader_with_marker("page-2.xml").await;
        let batch = reader.read_after(Some(&marker), 100).await.unwrap();
        assert_eq!(ids_of(&batch), (9..=13).map(fixture_entry_id).collect::<Vec<_>>());
        assert!(batch.caught_up);
        assert_eq!(server.requests(), [format!("GET {FEED_PATH}/2"), format!("GET {FEED_PATH}/3")], "no walk back with a marker");

        let batch = reader.read_after(Some(&marker), 2).await.unwrap();
        assert_eq!(ids_of(&batch), [fixture_entry_id(9), fixture_entry_id(10)]);
        assert!(!batch.caught_up, "page 3 is still to read");
        let next = reader.read_after(batch.marker().as_ref(), 2).await.unwrap();
        assert_eq!(ids_of(&next), [fixture_entry_id(11), fixture_entry_id(12)]);
        assert!(!next.caught_up);
    })
    .await
}

#[tokio::test]
async fn an_archived_page_that_changed_is_an_error_not_a_skip() {
    bounded(async {
        let (server, reader, marker) = fixture_reader_with_marker("page-2-changed.xml").await;
        let error = reader.read_after(Some(&marker), 100).await.unwrap_err();
        match &error {
            ReadError::MarkerNotOnPage { page_url, entry_id, entries_on_page } => {
                assert_eq!(page_url, &marker.page_url);
                assert_eq!(entry_id, &marker.entry_id);
                assert_eq!(*entries_on_page, 5);
            }
            other => panic!("expected MarkerNotOnPage, got {other:?}"),
        }
        assert!(!error.is_retryable());
        let message = error.to_string();
        for said in [marker.page_url.as_str(), marker.entry_id.as_str(), "changed", "marker"] {
            assert!(message.contains(said), "{said:?} missing from: {message}");
        }
        assert_eq!(server.requests(), [format!("GET {FEED_PATH}/2")], "nothing read past the changed page");
    })
    .await
}

#[tokio::test]
async fn malformed_pages_and_missing_pages_are_clear_errors() {
    bounded(async {
        let server = TestServer::start(|seen| match seen.path.as_str() {
            "/feed/recent" => reply(200, "application/atom+xml", "<?xml version=\"1.0\"?><feed xmlns=\"http://www.w3.org/2005/Atom\"><entry><id>x"),
            "/login" => reply(200, "text/html", "<html><body>Please log in</body></html>"),
            _ => json_reply(404, serde_json::json!({"error": "unknown category \"nope\"", "hint": "GET /ws/atomfeed lists the categories", "status": 404})),
        })
        .await;
        let client = HttpClient::new(quick_limits());
        for (path, expected) in [("/feed/recent", "not a readable Atom feed"), ("/login", "Please log in")] {
            let error = FeedReader::new(client.clone(), server.url(path)).read_after(None, 10).await.unwrap_err();
            assert!(matches!(&error, ReadError::MalformedPage { page_url, .. } if *page_url == server.url(path)), "{error:?}");
            assert!(error.to_string().contains(expected), "{error}");
            assert!(!error.is_retryable());
        }
        let error = FeedReader::new(client, server.url("/nope/recent")).read_after(None, 10).await.unwrap_err();
        assert!(matches!(&error, ReadError::Fetch { source: ClientError::Status { status: 404, .. }, .. }), "{error:?}");
        assert!(error.to_string().contains("lists the categories"), "the publisher's hint is passed on: {error}");
        assert!(!error.is_retryable());
        assert_eq!(server.requests().len(), 3, "a 404 is not retried");
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Resources that fail.

fn sample_resource(key: &str) -> Resource {
    Resource { table: "patient".into(), category: "patient".into(), key: key.into(), columns: BTreeMap::new(), hash: "sha256:00".into() }
}

#[tokio::test]
async fn resources_that_fail_become_failed_answers_with_their_reason() {
    bounded(async {
        let huge = "x".repeat(200_000);
        let server = TestServer::start(move |seen| {
            let Some(key) = seen.path.strip_prefix("/openmrs/ws/feedsync/resource/patient/") else {
                // No batch endpoint, like a publisher that predates it.
                return json_reply(404, serde_json::json!({"error": "no such path", "hint": "h", "status": 404}));
            };
            match key {
                "ok" => json_reply(200, serde_json::to_value(sample_resource("ok")).unwrap()),
                "gone" => json_reply(
                    410,
                    serde_json::to_value(Tombstone { table: "patient".into(), category: "patient".into(), key: "gone".into(), deleted: true, deleted_at: "2024-01-01T00:00:00.000Z".into() })
                        .unwrap(),
                ),
                "garbage" => reply(200, "application/json", "{\"table\": \"patient\", oops"),
                "huge" => reply(200, "application/json", huge.clone()),
                "down" => json_reply(503, serde_json::json!({"error": "database unreachable", "hint": "retry later", "status": 503})),
                _ => json_reply(404, serde_json::json!({"error": format!("no patient with identity {key:?} here"), "hint": "h", "status": 404})),
            }
        })
        .await;
        let limits = ClientLimits { response_bytes_max: 64 << 10, ..quick_limits() };
        let client = HttpClient::new(limits);
        let link = |key: &str| server.url(&format!("/openmrs/ws/feedsync/resource/patient/{key}"));
        let links: Vec<String> = ["ok", "missing", "gone", "garbage", "huge", "down", "ok"].iter().map(|k| link(k)).collect();
        let fetched = client.fetch_resources(&links).await;

        assert_eq!(fetched.len(), links.len(), "one answer per link");
        assert_eq!(fetched[0], Fetched::Resource(sample_resource("ok")));
        assert_eq!(fetched[6], Fetched::Resource(sample_resource("ok")));
        let failed = |i: usize| match &fetched[i] {
            Fetched::Failed { link, reason, retryable } => {
                assert_eq!(link, &links[i]);
                (reason.clone(), *retryable)
            }
            other => panic!("link {} should have failed: {other:?}", links[i]),
        };
        let (reason, retryable) = failed(1);
        assert!(reason.contains("404") && reason.contains("no patient with identity \"missing\""), "{reason}");
        assert!(!retryable);
        assert!(matches!(&fetched[2], Fetched::Deleted(t) if t.key == "gone" && t.deleted));
        let (reason, retryable) = failed(3);
        assert!(reason.contains("not with a resource") && reason.contains("oops"), "{reason}");
        assert!(!retryable);
        let (reason, retryable) = failed(4);
        assert!(reason.contains("over the limit of 65536 bytes"), "{reason}");
        assert!(!retryable);
        let (reason, retryable) = failed(5);
        assert!(reason.contains("503") && reason.contains("database unreachable"), "{reason}");
        assert!(retryable);

        let requests = server.requests();
        assert_eq!(requests[0], "POST /openmrs/ws/feedsync/resources", "the batch endpoint is tried first");
        assert_eq!(requests.iter().filter(|r| r.starts_with("POST")).count(), 1, "and not again once it is known missing");
        let down_attempts = requests.iter().filter(|r| r.ends_with("/patient/down")).count();
        assert_eq!(down_attempts, 3, "a 503 is retried retries_max times");
        let missing_attempts = requests.iter().filter(|r| r.ends_with("/patient/missing")).count();
        assert_eq!(missing_attempts, 1, "a 404 is not retried");
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Servers that send too much, redirect forever, or say nothing.

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// Accepts connections and answers each with `head` then `body_bytes` bytes of `x`, streamed
/// without a length, then closes: only counting while reading can stop such a body.
async fn streaming_server(body_bytes: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                // The request first: a client rejects an answer to a question not yet asked.
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/atom+xml\r\nConnection: close\r\n\r\n").await;
                let chunk = vec![b'x'; 64 << 10];
                let mut sent = 0;
                while sent < body_bytes {
                    if stream.write_all(&chunk).await.is_err() {
                        return; // the client hung up, as it should
                    }
                    sent += chunk.len();
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_declared_streamed_or_compressed() {
    bounded(async {
        let limit_bytes = 256 << 10;
        let bomb = Bytes::from(gzip(&vec![b' '; 64 << 20]));
        assert!(bomb.len() < limit_bytes, "the bomb itself is small: {} bytes", bomb.len());
        let server = TestServer::start(move |seen| match seen.path.as_str() {
            "/declared/recent" => reply(200, "application/atom+xml", vec![b'x'; 10 << 20]),
            _ => Response::builder().header("content-encoding", "gzip").body(Full::new(bomb.clone())).unwrap(),
        })
        .await;
        let streaming = streaming_server(50 << 20).await;
        let client = HttpClient::new(ClientLimits { response_bytes_max: limit_bytes, ..quick_limits() });

        let cases = [
            (server.url("/declared/recent"), false),
            (format!("http://{streaming}/streamed/recent"), false),
            (server.url("/bomb/recent"), true),
        ];
        for (url, compressed) in cases {
            let started = Instant::now();
            let error = FeedReader::new(client.clone(), url.clone()).read_after(None, 10).await.unwrap_err();
            match &error {
                ReadError::Fetch { page_url, source: ClientError::TooLarge { limit_bytes: limit, decompressed, .. } } => {
                    assert_eq!(page_url, &url);
                    assert_eq!(*limit, limit_bytes);
                    assert_eq!(*decompressed, compressed, "{url}");
                }
                other => panic!("{url}: expected TooLarge, got {other:?}"),
            }
            assert!(!error.is_retryable(), "the same page will be as large next time");
            assert!(error.to_string().contains("response_bytes_max"), "{error}");
            assert!(started.elapsed() < Duration::from_secs(10), "{url} took {:?}", started.elapsed());
        }
        assert_eq!(server.requests().len(), 2, "not retried");
    })
    .await
}

#[tokio::test]
async fn a_feed_that_redirects_forever_ends_quickly() {
    bounded(async {
        let server = TestServer::start(|seen| {
            // Ping-pong between two URLs: a loop no single hop reveals.
            let next = if seen.path == "/a/recent" { "/b/recent" } else { "/a/recent" };
            Response::builder().status(302).header("location", next).body(Full::new(Bytes::new())).unwrap()
        })
        .await;
        let client = HttpClient::new(quick_limits());
        let started = Instant::now();
        let error = FeedReader::new(client, server.url("/a/recent")).read_after(None, 10).await.unwrap_err();
        assert!(
            matches!(&error, ReadError::Fetch { source: ClientError::TooManyRedirects { redirects_max: 5, .. }, .. }),
            "{error:?}"
        );
        assert!(!error.is_retryable());
        assert!(error.to_string().contains("redirect loop"), "{error}");
        assert_eq!(server.requests().len(), 6, "the first request and 5 redirects");
        assert!(started.elapsed() < Duration::from_secs(5));
    })
    .await
}

#[tokio::test]
async fn redirects_are_followed_to_the_feed() {
    bounded(async {
        let fixtures = fixture_server("page-2.xml").await;
        let target = fixtures.url(&format!("{FEED_PATH}/recent"));
        let server = TestServer::start(move |_| Response::builder().status(301).header("location", target.clone()).body(Full::new(Bytes::new())).unwrap()).await;
        let client = HttpClient::new(quick_limits()).with_basic_auth("admin:Admin123");
        let batch = FeedReader::new(client, server.url("/old/feed")).read_after(None, 100).await.unwrap();
        assert_eq!(batch.entries.len(), 13);
        assert!(batch.entries.iter().all(|e| e.page_url.starts_with(&fixtures.base)), "pages are named where they really are");
        assert!(server.seen.lock().unwrap().iter().all(|s| s.authorization.is_some()));
        let at_fixtures = fixtures.seen.lock().unwrap().clone();
        assert_eq!(at_fixtures[0].path, format!("{FEED_PATH}/recent"));
        assert_eq!(at_fixtures[0].authorization, None, "credentials are not carried across a redirect to another origin");
        assert!(at_fixtures[1..].iter().all(|s| s.authorization.is_some()), "requests made for that origin carry them");
    })
    .await
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    bounded(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = Arc::new(Mutex::new(Vec::new()));
        let holder = held.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                holder.lock().unwrap().push(stream); // accepted, never answered
            }
        });
        let limits = ClientLimits { request_timeout_ms: 300, retries_max: 1, ..quick_limits() };
        let started = Instant::now();
        let error = FeedReader::new(HttpClient::new(limits), format!("http://{addr}/ws/atomfeed/all/recent")).read_after(None, 10).await.unwrap_err();
        assert!(matches!(&error, ReadError::Fetch { source: ClientError::Timeout { timeout_ms: 300, .. }, .. }), "{error:?}");
        assert!(error.is_retryable(), "a stuck server may answer later");
        assert!(error.to_string().contains("request_timeout_ms"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5), "two attempts of 300 ms, took {:?}", started.elapsed());
        assert_eq!(held.lock().unwrap().len(), 2, "one retry");
    })
    .await
}

#[tokio::test]
async fn an_unreachable_server_is_retryable_and_bad_urls_are_not() {
    bounded(async {
        let addr = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        }; // closed again: connections are refused
        let client = HttpClient::new(quick_limits());
        let error = FeedReader::new(client.clone(), format!("http://{addr}/ws/atomfeed/all/recent")).read_after(None, 10).await.unwrap_err();
        assert!(matches!(&error, ReadError::Fetch { source: ClientError::Connect { .. }, .. }), "{error:?}");
        assert!(error.is_retryable());

        // Plain http to another machine is refused before any connection, like a bad URL.
        for url in ["not a url", "ftp://h/feed", "http://h/feed"] {
            let error = client.get(url).await.unwrap_err();
            assert!(matches!(error, ClientError::BadUrl { .. }), "{url}: {error:?}");
            assert!(!error.is_retryable());
        }
        let fetched = client.fetch_resources(&["/ws/feedsync/resource/obs/relative".to_string()]).await;
        assert!(matches!(&fetched[0], Fetched::Failed { retryable: false, reason, .. } if reason.contains("not a URL")), "{fetched:?}");
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// A real publisher, in-process, on a SQLite OpenMRS database.

struct Publisher {
    base: String,
    app: Arc<App>,
    seen: Arc<Mutex<Vec<String>>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Publisher {
    /// Installs capture and serves the database; the sequencer does not run by itself
    /// ([`Publisher::publish`] does it), so what the feed holds is under the test's control.
    /// Every request is recorded, to count them.
    async fn start(database: &Database, page_size: u32) -> Publisher {
        let model = load_model(database, &Profile::openmrs()).await.expect("model");
        let mut session = database.session().await.unwrap();
        capture::install(&mut session, &model).await.expect("install");
        let mut config = Config::default();
        config.feed.page_size = page_size;
        let app = Arc::new(App::new(database.clone(), model, config).await.expect("app"));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let (app_in_loop, log) = (app.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok(pair) => pair, Err(_) => continue },
                    _ = stopped.changed() => return,
                };
                let (app, log) = (app_in_loop.clone(), log.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                        let (app, log) = (app.clone(), log.clone());
                        // As `server::serve` does: the peer decides what this machine may read.
                        request.extensions_mut().insert(server::PeerAddr(peer));
                        async move {
                            log.lock().unwrap().push(format!("{} {}", request.method(), request.uri().path()));
                            Ok::<_, Infallible>(server::handle(app, request).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Publisher { base: format!("http://{addr}"), app, seen, stop }
    }

    async fn publish(&self) -> usize {
        let mut session = self.app.database.session().await.unwrap();
        sequencer::drain(&mut session, &self.app.model, &self.app.config, 100_000).await.expect("sequencer")
    }

    fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

const PUBLISHER_PAGE_SIZE: u32 = 20;
const READ_BATCH_ENTRIES: usize = 37;

#[tokio::test]
async fn a_real_publisher_is_read_once_each_in_order_and_fetched_in_batches() {
    bounded(async {
        let Some(test) = TestDatabase::create(Source::Sqlite25) else { return };
        let publisher = Publisher::start(&test.database, PUBLISHER_PAGE_SIZE).await;
        publisher.publish().await;
        let mut session = test.database.session().await.unwrap();
        let config = WorkloadConfig { seed: 11, ..WorkloadConfig::default() };
        workload::run(&mut session, &config).await.expect("workload");
        publisher.publish().await;

        // What the `all` feed must hold, read from the publisher's table, not its pages.
        let expected: Vec<String> = session
            .query("SELECT event_uuid FROM feedsync_event ORDER BY event_seq", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| format!("tag:atomfeed.ict4h.org:{}", row.text("event_uuid").unwrap()))
            .collect();
        assert!(expected.len() > 10 * PUBLISHER_PAGE_SIZE as usize, "several pages: {} events", expected.len());

        let client = HttpClient::new(quick_limits());
        let reader = FeedReader::new(client.clone(), format!("{}/ws/atomfeed/all/recent", publisher.base));
        let mut marker: Option<Marker> = None;
        let mut entries = Vec::new();
        let rounds_max = expected.len() / READ_BATCH_ENTRIES + 3;
        for round in 0.. {
            assert!(round < rounds_max, "reading does not end");
            let batch = reader.read_after(marker.as_ref(), READ_BATCH_ENTRIES).await.expect("the publisher's feed reads");
            assert!(batch.entries.len() <= READ_BATCH_ENTRIES);
            if let Some(next) = batch.marker() {
                assert!(!next.page_url.ends_with("/recent"), "markers name numbered pages: {next:?}");
                marker = Some(next);
            }
            let caught_up = batch.caught_up;
            let full = batch.entries.len() == READ_BATCH_ENTRIES;
            entries.extend(batch.entries);
            if caught_up {
                break;
            }
            assert!(full, "only the last batch may be short");
        }
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, expected, "every entry exactly once, in feed order");

        // Every resource, fetched through the batch endpoint.
        let mut last_action: BTreeMap<(String, String), String> = BTreeMap::new();
        let mut links = BTreeSet::new();
        for entry in &entries {
            let EntryContent::Links { resource: Some(link), .. } = &entry.content else { panic!("{entry:?} has no resource link") };
            assert!(link.starts_with(&publisher.base), "resolved against the page: {link}");
            let identity = parse_resource_link(link, "").expect("a resource link");
            last_action.insert(identity, entry.categories[1].clone());
            links.insert(link.clone());
        }
        let links: Vec<String> = links.into_iter().collect();
        let before = publisher.requests().len();
        let fetched = client.fetch_resources(&links).await;
        let requests = &publisher.requests()[before..];

        assert_eq!(fetched.len(), links.len());
        let (mut resources, mut deleted) = (0, 0);
        for (link, answer) in links.iter().zip(&fetched) {
            let (table, key) = parse_resource_link(link, "").unwrap();
            let was_deleted = last_action[&(table.clone(), key.clone())] == "DELETED";
            match answer {
                Fetched::Resource(r) => {
                    assert_eq!((&r.table, &r.key), (&table, &key), "{link}");
                    assert!(!was_deleted, "{link} was deleted but served");
                    resources += 1;
                }
                Fetched::Deleted(t) => {
                    assert_eq!((&t.table, &t.key), (&table, &key), "{link}");
                    assert!(was_deleted, "{link} is not deleted but has a tombstone");
                    deleted += 1;
                }
                Fetched::Failed { reason, .. } => panic!("{link} failed: {reason}"),
            }
        }
        assert!(resources > 0 && deleted > 0, "{resources} resources, {deleted} tombstones");
        let batch_requests = requests.iter().filter(|r| *r == "POST /ws/feedsync/resources").count();
        assert_eq!(batch_requests, links.len().div_ceil(200), "batches of 200 links");
        assert_eq!(requests.len(), batch_requests, "no request per link: {} links, {} requests", links.len(), requests.len());
        eprintln!(
            "read {} entries in batches of {READ_BATCH_ENTRIES}; fetched {} links ({resources} resources, {deleted} tombstones) in {} requests",
            entries.len(),
            links.len(),
            requests.len()
        );
    })
    .await
}

#[tokio::test]
async fn a_deeply_nested_page_stops_its_own_feed_and_the_other_feeds_go_on() {
    bounded(async {
        let Some(source) = TestDatabase::create(Source::Sqlite25) else { return };
        let Some(target) = TestDatabase::create(Source::Sqlite25) else { return };
        let publisher = Publisher::start(&source.database, PUBLISHER_PAGE_SIZE).await;
        let mut session = source.database.session().await.unwrap();
        workload::run(&mut session, &WorkloadConfig { seed: 5, ..WorkloadConfig::default() }).await.expect("workload");
        publisher.publish().await;
        // The probe that overflowed the subscriber's stack: 20,000 nested extension elements.
        let hostile = TestServer::start(|_| {
            let body = format!("<feed xmlns=\"http://www.w3.org/2005/Atom\" xmlns:e=\"urn:e\">{}{}</feed>", "<e:x>".repeat(20_000), "</e:x>".repeat(20_000));
            reply(200, "application/atom+xml", body)
        })
        .await;
        let (bad, good) = (hostile.url("/ws/atomfeed/all/recent"), format!("{}/ws/atomfeed/all/recent", publisher.base));
        let model = load_model(&target.database, &Profile::openmrs()).await.unwrap();
        let subscriber = feed_subscriber::engine::Subscriber::new(target.database.clone(), model, HttpClient::new(quick_limits()), String::new());

        let error = subscriber.sync_until_caught_up(&[bad.clone(), good.clone()]).await.expect_err("the hostile feed fails");
        assert!(error.stops_only_its_feed(), "{error}");
        assert!(error.to_string().contains("nest more than 64 deep"), "{error}");
        // The good feed was read to its end in the same round, after the bad one failed.
        let again = subscriber.sync_until_caught_up(std::slice::from_ref(&good)).await.expect("the good feed");
        assert_eq!(again.entries_read, 0, "already caught up: {again:?}");
        let mut target_session = target.database.session().await.unwrap();
        let patients = target_session.query("SELECT COUNT(*) AS n FROM patient", &[]).await.unwrap()[0].i64("n").unwrap();
        let at_source = session.query("SELECT COUNT(*) AS n FROM patient", &[]).await.unwrap()[0].i64("n").unwrap();
        assert_eq!(patients, at_source, "every patient of the good feed applied");
        // And the bad feed fails the same way again, without crashing, at every try.
        let error = subscriber.sync_until_caught_up(std::slice::from_ref(&bad)).await.expect_err("still hostile");
        assert!(error.stops_only_its_feed(), "{error}");
    })
    .await;
}
