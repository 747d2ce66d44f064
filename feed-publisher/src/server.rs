//! The HTTP side of the publisher: feed pages, resources, batch fetch, health; compression,
//! caching headers, limits, and errors that say what to do. Also runs the sequencer loop.
//! Routing is by hand: five routes do not justify a framework.

use std::io::Write;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, SemaphorePermit};

use feedsync_node::capture::{self, EVENT_TABLE};
use feedsync_wire::hex;
use feedsync_db::{Database, DbError};
use feedsync_wire::network::NETWORK_PATH;
use feedsync_core::model::Model;
use feedsync_node::lookup::LookupCache;
use feedsync_wire::resource::{self, BATCH_PATH, BatchItem, BatchRequest, BatchResponse, RESOURCE_PATH, Tombstone};

use feedsync_node::config::Config;
use feedsync_node::feed::{self, ATOMFEED_PATH, PageLinks};
use feedsync_node::sequencer::{self, ALL_FEED};

pub const HEALTH_PATH: &str = "/ws/feedsync/health";
/// Bodies smaller than this are sent uncompressed: gzip's header would outweigh the saving.
const GZIP_BYTES_MIN: usize = 860;
/// Longest the sequencer waits between attempts while the database is failing.
const SEQUENCER_BACKOFF_MS_MAX: u64 = 30_000;

pub struct App {
    pub database: Database,
    pub model: Model,
    pub config: Config,
    /// Stable per database: feed ids are built from it.
    pub feed_id_base: String,
    /// Time shown as `updated` on a feed page with no entries yet.
    pub installed_at: String,
    requests: Semaphore,
    archived_pages: std::sync::Mutex<PageCache>,
    /// Requests answered, by route class and status, and their durations (`/metrics`).
    pub http_metrics: crate::metrics::HttpMetrics,
    /// The dashboard's logins and failed login attempts (kept here, ended by a restart).
    pub admin_sessions: crate::dashboard::AdminSessions,
    /// OpenMRS users' sessions (`JSESSIONID`) and failed logins.
    pub openmrs_sessions: crate::openmrs_session::OpenmrsSessions,
}

impl App {
    pub async fn new(database: Database, model: Model, config: Config) -> Result<App, DbError> {
        let mut session = database.session().await?;
        let install_id = match capture::state(&mut session, "install_id").await? {
            Some(id) => id,
            None => {
                let id = uuid::Uuid::new_v4().to_string();
                capture::set_state(&mut session, "install_id", &id).await?;
                id
            }
        };
        let installed_at = capture::state(&mut session, "snapshot_done")
            .await?
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&chrono::Utc).format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
            .unwrap_or_else(|| "1970-01-01T00:00:00.000Z".into());
        // Tables the network routes and the dashboard use, made once here rather than on every
        // request (a database installed by an older version lacks them).
        feedsync_node::parent::prepare(&mut session).await?;
        crate::dashboard::prepare(&mut session).await?;
        crate::status::prepare(&mut session).await?;
        let requests = Semaphore::new(config.limits.requests_in_flight_max);
        Ok(App {
            database,
            model,
            config,
            feed_id_base: format!("urn:uuid:{install_id}"),
            installed_at,
            requests,
            archived_pages: std::sync::Mutex::new(PageCache::default()),
            http_metrics: Default::default(),
            admin_sessions: Default::default(),
            openmrs_sessions: Default::default(),
        })
    }
}

/// An error answer: status, a message saying what happened, and a hint saying what to do.
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub message: String,
    pub hint: &'static str,
}

impl HttpError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>, hint: &'static str) -> HttpError {
        HttpError { status, message: message.into(), hint }
    }
}

impl From<DbError> for HttpError {
    fn from(e: DbError) -> Self {
        if e.is_retryable() {
            HttpError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), "the database is unreachable; retry later")
        } else {
            tracing::error!(error = %e, "database statement failed");
            HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), "see the publisher's log")
        }
    }
}

type HttpResponse = Response<Full<Bytes>>;

fn error_response(e: HttpError) -> HttpResponse {
    let body = serde_json::json!({ "error": e.message, "hint": e.hint, "status": e.status.as_u16() });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = e.status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if e.status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    response
}

/// A body with its caching and compression decided here, once, for every route.
pub(crate) struct Reply {
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
    /// Archived pages: strong ETag and a long cache lifetime.
    immutable: bool,
    /// Send an ETag (strong if immutable, weak otherwise).
    etag: bool,
    /// Already compressed body and digest, when cached.
    cached: Option<Arc<CachedPage>>,
    /// Set after the common headers, replacing any of the same name (dashboard: security
    /// headers, cookies, redirects).
    headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl Reply {
    pub(crate) fn json(status: StatusCode, body: Vec<u8>, etag: bool) -> Reply {
        Reply { status, content_type: "application/json", body: body.into(), immutable: false, etag, cached: None, headers: Vec::new() }
    }

    /// Any body, with a weak ETag.
    pub(crate) fn new(status: StatusCode, content_type: &'static str, body: Bytes) -> Reply {
        Reply { status, content_type, body, immutable: false, etag: true, cached: None, headers: Vec::new() }
    }

    pub(crate) fn no_etag(mut self) -> Reply {
        self.etag = false;
        self
    }

    pub(crate) fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Reply {
        self.headers.push((name, value));
        self
    }
}

/// An archived page's bytes, compressed form and digest, computed once: the page never changes.
pub struct CachedPage {
    body: Bytes,
    gzip: Bytes,
    digest: String,
}

/// Most bytes of archived pages kept in memory (plain plus gzip); the oldest go first.
pub const PAGE_CACHE_BYTES_MAX: usize = 64 << 20;

#[derive(Default)]
struct PageCache {
    pages: std::collections::HashMap<String, Arc<CachedPage>>,
    order: std::collections::VecDeque<String>,
    bytes: usize,
}

impl PageCache {
    fn get(&self, key: &str) -> Option<Arc<CachedPage>> {
        self.pages.get(key).cloned()
    }

    fn insert(&mut self, key: String, page: Arc<CachedPage>) {
        let size = page.body.len() + page.gzip.len();
        if size > PAGE_CACHE_BYTES_MAX || self.pages.contains_key(&key) {
            return;
        }
        while self.bytes + size > PAGE_CACHE_BYTES_MAX {
            let Some(oldest) = self.order.pop_front() else { break };
            if let Some(old) = self.pages.remove(&oldest) {
                self.bytes -= old.body.len() + old.gzip.len();
            }
        }
        self.bytes += size;
        self.order.push_back(key.clone());
        self.pages.insert(key, page);
    }
}

fn digest(body: &[u8]) -> String {
    hex(&Sha256::digest(body)[..16])
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::default());
    encoder.write_all(body).expect("writing to memory");
    encoder.finish().expect("writing to memory")
}

fn finish(reply: Reply, request_headers: &hyper::HeaderMap) -> HttpResponse {
    let accepts_gzip = request_headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|p| p.trim().starts_with("gzip")));
    let gzip = accepts_gzip && reply.body.len() >= GZIP_BYTES_MIN;
    let etag = reply.etag.then(|| {
        let digest = reply.cached.as_ref().map_or_else(|| digest(&reply.body), |c| c.digest.clone());
        let tag = if gzip { format!("\"{digest}-gz\"") } else { format!("\"{digest}\"") };
        if reply.immutable { tag } else { format!("W/{tag}") }
    });
    let not_modified = etag.as_ref().is_some_and(|tag| {
        request_headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|c| c.trim().trim_start_matches("W/") == tag.trim_start_matches("W/")))
    });
    let body = if not_modified {
        Bytes::new()
    } else if gzip {
        reply.cached.as_ref().map_or_else(|| Bytes::from(self::gzip(&reply.body)), |c| c.gzip.clone())
    } else {
        reply.body
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = if not_modified { StatusCode::NOT_MODIFIED } else { reply.status };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if gzip && !not_modified {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    if let Some(tag) = etag {
        headers.insert(header::ETAG, HeaderValue::from_str(&tag).expect("hex etag"));
    }
    let cache = if reply.immutable { "public, max-age=31536000, immutable" } else { "no-cache" };
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    for (name, value) in reply.headers {
        headers.insert(name, value);
    }
    response
}

/// Handles one request; never panics on bad input and always answers.
pub async fn handle(app: Arc<App>, mut request: Request<Incoming>) -> HttpResponse {
    let started = std::time::Instant::now();
    let route_class = crate::metrics::route_class(request.uri().path(), &app.config.server.path_prefix);
    // A request with a body takes its slot once the body is in (`read_body`), so clients that
    // send slowly wait on their own connection, not in the slots everyone shares.
    let _permit = if carries_body(&request) {
        None
    } else {
        request.extensions_mut().insert(SlotTaken);
        Some(app.requests.acquire().await.expect("semaphore open"))
    };
    let headers = request.headers().clone();
    let response = match route(&app, request).await {
        Ok(reply) => finish(reply, &headers),
        Err(e) => error_response(e),
    };
    app.http_metrics.record(route_class, response.status().as_u16(), started.elapsed());
    response
}

/// Whether a request announces a body (a length above zero, or chunked).
fn carries_body(request: &Request<Incoming>) -> bool {
    let length = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    length.is_some_and(|n| n > 0) || (length.is_none() && request.headers().contains_key(header::TRANSFER_ENCODING))
}

async fn route(app: &App, request: Request<Incoming>) -> Result<Reply, HttpError> {
    let path = request.uri().path().to_owned();
    let prefix = &app.config.server.path_prefix;
    // The prefix is optional on requests so both OpenMRS-style and bare URLs work.
    let path = path.strip_prefix(prefix.as_str()).filter(|p| p.starts_with('/')).unwrap_or(&path).to_owned();
    let method = request.method().clone();
    if let Some(rest) = path.strip_prefix(&format!("{ATOMFEED_PATH}/")) {
        require_get(&method)?;
        let (feed, page) = rest.split_once('/').ok_or_else(|| {
            HttpError::new(StatusCode::NOT_FOUND, format!("no such path {path}"), "feeds are at /ws/atomfeed/{category}/recent and /ws/atomfeed/{category}/{n}")
        })?;
        check_feed_access(app, &request, &[feed]).await?;
        return feed_page(app, &request, feed, page).await;
    }
    if path == ATOMFEED_PATH {
        require_get(&method)?;
        check_feed_access(app, &request, &[]).await?;
        return feed_list(app).await;
    }
    if let Some(rest) = path.strip_prefix(&format!("{RESOURCE_PATH}/")) {
        require_get(&method)?;
        let link = format!("{RESOURCE_PATH}/{rest}");
        let reader = check_feed_access(app, &request, &[link_category(app, &link).as_str()]).await?;
        return single_resource(app, &link, reader).await;
    }
    if path == BATCH_PATH {
        if method != Method::POST {
            return Err(HttpError::new(StatusCode::METHOD_NOT_ALLOWED, "batch fetch takes POST", "POST a JSON body {\"resources\": [links...]}"));
        }
        return batch(app, request).await;
    }
    if let Some(rest) = path.strip_prefix(NETWORK_PATH) {
        return crate::network::route(app, request, rest).await;
    }
    if crate::dashboard::handles(&path) {
        return crate::dashboard::route(app, request, &path).await;
    }
    if path == crate::metrics::METRICS_PATH {
        return crate::metrics::route(app, &request).await;
    }
    if path == crate::status::STATUS_PATH {
        return crate::status::route(app, &request).await;
    }
    if path == HEALTH_PATH {
        return health(app).await;
    }
    if path == crate::openmrs_session::SESSION_PATH {
        return crate::openmrs_session::route(app, &request).await;
    }
    Err(HttpError::new(StatusCode::NOT_FOUND, format!("no such path {path}"), "feeds are at /ws/atomfeed/{category}/recent; /ws/atomfeed lists the categories"))
}

fn require_get(method: &Method) -> Result<(), HttpError> {
    if method == Method::GET || method == Method::HEAD {
        Ok(())
    } else {
        Err(HttpError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed here"), "use GET"))
    }
}

fn base_url(app: &App, request: &Request<Incoming>) -> String {
    let host = if app.config.server.public_url.is_empty() {
        let host = request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
        let scheme = if arrived_over_tls(request) { "https" } else { "http" };
        format!("{scheme}://{host}")
    } else {
        app.config.server.public_url.trim_end_matches('/').to_owned()
    };
    format!("{host}{}", app.config.server.path_prefix)
}

async fn is_known_feed(app: &App, session: &mut feedsync_db::Session, feed: &str) -> Result<bool, HttpError> {
    if feed == ALL_FEED || app.model.entities.values().any(|e| e.category == feed) {
        return Ok(true);
    }
    Ok(feed::known_feeds(session).await?.iter().any(|f| f == feed))
}

async fn feed_page(app: &App, request: &Request<Incoming>, feed: &str, page: &str) -> Result<Reply, HttpError> {
    let mut session = app.database.session().await?;
    if !is_known_feed(app, &mut session, feed).await? {
        return Err(HttpError::new(
            StatusCode::NOT_FOUND,
            format!("unknown category {feed:?}"),
            "GET /ws/atomfeed lists the categories this server publishes; 'all' has every change",
        ));
    }
    let (open, _) = feed::open_page(&mut session, feed).await?;
    let (number, recent) = if page == "recent" {
        (open, true)
    } else {
        let n: i64 = page.parse().map_err(|_| {
            HttpError::new(StatusCode::NOT_FOUND, format!("page {page:?} is not a number"), "pages are numbered from 1; /recent is the newest")
        })?;
        (n, false)
    };
    if number < 1 || number > open {
        return Err(HttpError::new(
            StatusCode::NOT_FOUND,
            format!("feed {feed} has pages 1 to {open}; there is no page {number}"),
            "start from /recent and follow prev-archive links",
        ));
    }
    let links = PageLinks { base: base_url(app, request) };
    let archived = number < open && !recent;
    let cache_key = format!("{}|{feed}|{number}", links.base);
    if archived && let Some(cached) = app.archived_pages.lock().expect("cache lock").get(&cache_key) {
        return Ok(page_reply(cached.body.clone(), true, Some(cached)));
    }
    let events = feed::page_events(&mut session, feed, number).await?;
    let body = Bytes::from(feed::render(feed, number, open, recent, &events, &links, &app.feed_id_base, &app.installed_at));
    if !archived {
        return Ok(page_reply(body, false, None));
    }
    let cached = Arc::new(CachedPage { gzip: Bytes::from(gzip(&body)), digest: digest(&body), body: body.clone() });
    app.archived_pages.lock().expect("cache lock").insert(cache_key, cached.clone());
    Ok(page_reply(body, true, Some(cached)))
}

fn page_reply(body: Bytes, immutable: bool, cached: Option<Arc<CachedPage>>) -> Reply {
    Reply { status: StatusCode::OK, content_type: "application/atom+xml; charset=utf-8", body, immutable, etag: true, cached, headers: Vec::new() }
}

async fn feed_list(app: &App) -> Result<Reply, HttpError> {
    let mut session = app.database.session().await?;
    let mut feeds: Vec<String> = app.model.entities.values().map(|e| e.category.clone()).collect();
    feeds.extend(feed::known_feeds(&mut session).await?);
    feeds.push(ALL_FEED.into());
    feeds.sort();
    feeds.dedup();
    Ok(Reply::json(StatusCode::OK, serde_json::json!({ "feeds": feeds }).to_string().into_bytes(), true))
}

/// Looks up one resource link: the resource, its tombstone, or why neither.
async fn lookup(app: &App, session: &mut feedsync_db::Session, link: &str, cache: &mut LookupCache, reader: Reader) -> Result<BatchItem, HttpError> {
    let item = |status: u16, error: String| BatchItem { link: link.to_owned(), status, resource: None, tombstone: None, error: Some(error) };
    // Links may carry the path prefix or not, like every other route.
    let parsed = resource::parse_resource_link(link, &app.config.server.path_prefix).or_else(|| resource::parse_resource_link(link, ""));
    let Some((table, key)) = parsed else {
        return Ok(item(400, format!("not a resource link: {link:?} (expected {RESOURCE_PATH}/{{table}}/{{key}})")));
    };
    let Some(entity) = app.model.entity(&table) else {
        return Ok(item(404, format!("table {table:?} is not published here")));
    };
    if let Some(row) = feedsync_node::lookup::find_row(session, &app.model, &table, &key).await? {
        let rendered = feedsync_node::lookup::render(session, &app.model, entity, &key, &row, cache).await?;
        let rendered = if reader.credentials { rendered } else { feedsync_node::lookup::without_credentials(&app.model, rendered) };
        return Ok(BatchItem { link: link.to_owned(), status: 200, resource: Some(rendered), tombstone: None, error: None });
    }
    let last = session
        .query(
            &format!("SELECT action, changed_at FROM {EVENT_TABLE} WHERE table_name = ? AND entity_key = ? ORDER BY event_seq DESC LIMIT 1"),
            &[table.clone().into(), key.clone().into()],
        )
        .await?;
    if let Some(event) = last.first().filter(|e| e.text("action").as_deref() == Some("DELETED")) {
        let tombstone = Tombstone {
            table: table.clone(),
            category: entity.category.clone(),
            key,
            deleted: true,
            deleted_at: feed::rfc3339(&event.text("changed_at").unwrap_or_default()),
        };
        return Ok(BatchItem { link: link.to_owned(), status: 410, resource: None, tombstone: Some(tombstone), error: None });
    }
    Ok(item(404, format!("no {table} with identity {key:?} here")))
}

async fn single_resource(app: &App, path: &str, reader: Reader) -> Result<Reply, HttpError> {
    let mut session = app.database.session().await?;
    let item = lookup(app, &mut session, path, &mut LookupCache::default(), reader).await?;
    let status = StatusCode::from_u16(item.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match (&item.resource, &item.tombstone) {
        (Some(r), _) => serde_json::to_vec(r),
        (_, Some(t)) => serde_json::to_vec(t),
        _ => return Err(HttpError::new(status, item.error.unwrap_or_default(), "resource links come from feed entries' content")),
    }
    .expect("resources serialize");
    Ok(Reply::json(status, body, true))
}

async fn batch(app: &App, request: Request<Incoming>) -> Result<Reply, HttpError> {
    let (headers, peer, over_tls) = (request.headers().clone(), request.extensions().get::<PeerAddr>().map(|p| p.0), arrived_over_tls(&request));
    let (body, _slot) = read_body(app, request, app.config.limits.request_body_bytes_max, "send fewer links per request").await?;
    let request: BatchRequest = serde_json::from_slice(&body).map_err(|e| {
        HttpError::new(StatusCode::BAD_REQUEST, format!("batch request is not valid JSON: {e}"), "send {\"resources\": [\"/ws/feedsync/resource/{table}/{key}\", ...]}")
    })?;
    let items_max = app.config.limits.batch_resources_max;
    if request.resources.len() > items_max {
        return Err(HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("batch names {} resources; at most {items_max} per request", request.resources.len()),
            "split the list into several requests",
        ));
    }
    let categories: Vec<String> = request.resources.iter().map(|link| link_category(app, link)).collect();
    let categories: Vec<&str> = categories.iter().map(String::as_str).collect();
    let reader = check_feed_access_by(app, peer, over_tls, &headers, &categories).await?;
    let mut session = app.database.session().await?;
    let mut cache = LookupCache::default();
    let mut resources = Vec::with_capacity(request.resources.len());
    for link in &request.resources {
        resources.push(lookup(app, &mut session, link, &mut cache, reader).await?);
    }
    Ok(Reply::json(StatusCode::OK, serde_json::to_vec(&BatchResponse { resources }).expect("batch serializes"), false))
}

/// Reads a request body of at most `max` bytes (refused early when `Content-Length` says more),
/// within `limits.body_read_timeout_ms`, decompressing `Content-Encoding: gzip` within the same
/// limit (`smaller` says how to send less, for the 413 answer), then takes the request's slot ([`handle`] leaves requests with a body without one until here):
/// keep the returned permit while the request works.
pub(crate) async fn read_body<'a>(app: &'a App, request: Request<Incoming>, max: usize, smaller: &'static str) -> Result<(Bytes, Option<SemaphorePermit<'a>>), HttpError> {
    // A request that announced no body already holds its slot (taken in `handle`).
    let has_slot = request.extensions().get::<SlotTaken>().is_some();
    let bytes = read_body_bytes(request, max, smaller, Duration::from_millis(app.config.limits.body_read_timeout_ms)).await?;
    let permit = if has_slot { None } else { Some(app.requests.acquire().await.expect("semaphore open")) };
    Ok((bytes, permit))
}

/// The category a resource link belongs to (its table's, or the table name for a table this
/// server does not publish, which then answers 404 anyway).
fn link_category(app: &App, link: &str) -> String {
    let table = feedsync_wire::resource::parse_resource_link(link, &app.config.server.path_prefix).map(|(table, _)| table).unwrap_or_default();
    app.model.entity(&table).map_or(table, |e| e.category.clone())
}

/// What a reader admitted to the feeds may receive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reader {
    /// Credential columns (`users.password` and the like): only for a `replica` token or
    /// whoever the dashboard admits, over TLS or from this machine.
    pub credentials: bool,
}

impl Reader {
    const PLAIN: Reader = Reader { credentials: false };
}

/// Whether credentials may go to a reader trusted with them over this link: TLS, or this
/// machine. Pure.
pub fn credentials_may_travel(trusted: bool, over_tls: bool, peer: Option<SocketAddr>) -> bool {
    trusted && (over_tls || peer.is_some_and(|p| p.ip().to_canonical().is_loopback()))
}

async fn check_feed_access(app: &App, request: &Request<Incoming>, categories: &[&str]) -> Result<Reader, HttpError> {
    check_feed_access_by(app, request.extensions().get::<PeerAddr>().map(|p| p.0), arrived_over_tls(request), request.headers(), categories).await
}

/// `[auth]`: with `required` on (the default), feeds, resources and batch answers go only to a
/// bearer token that may read every one of `categories` (see `feedsync_node::auth::may_read`),
/// or need none when all of them are `anonymous_categories` (an empty list: the feed list,
/// which needs a token unless some category is anonymous). Whoever the dashboard admits (this
/// machine without an admin token; with one, that token or a login) reads them too: the
/// dashboard shows the feeds, and it already shows that person every record.
async fn check_feed_access_by(app: &App, peer: Option<SocketAddr>, over_tls: bool, headers: &hyper::HeaderMap, categories: &[&str]) -> Result<Reader, HttpError> {
    let auth = &app.config.auth;
    let admitted = crate::dashboard::dashboard_admits(app, peer, headers).is_ok();
    if !auth.required || admitted {
        // A reader that names itself with a token gets what its token allows, even here.
        let trusted = match crate::dashboard::bearer_token(headers) {
            None => admitted,
            Some(offered) => {
                let mut session = app.database.session().await?;
                feedsync_node::auth::token_for(&mut session, offered).await?.is_some_and(|t| t.scopes.contains(&feedsync_node::auth::Scope::Replica))
            }
        };
        return Ok(Reader { credentials: credentials_may_travel(trusted, over_tls, peer) });
    }
    let anonymous = |c: &&str| auth.anonymous_categories.iter().any(|a| a == c);
    if if categories.is_empty() { !auth.anonymous_categories.is_empty() } else { categories.iter().all(anonymous) } {
        return Ok(Reader::PLAIN);
    }
    const HINT: &str = "send Authorization: Bearer <token>, with a token from `feed-publisher token create --scope feeds`, or log in as an OpenMRS user (HTTP Basic)";
    // An OpenMRS user who may read the feeds reads every category (never credential columns).
    if crate::openmrs_session::authenticate(app, peer, headers).await?.is_some() {
        return Ok(Reader::PLAIN);
    }
    let Some(offered) = crate::dashboard::bearer_token(headers) else {
        return Err(HttpError::new(StatusCode::UNAUTHORIZED, "this server's feeds need a token", HINT));
    };
    let mut session = app.database.session().await?;
    let Some(token) = feedsync_node::auth::token_for(&mut session, offered).await? else {
        return Err(HttpError::new(StatusCode::UNAUTHORIZED, "token not accepted (unknown, revoked or expired)", HINT));
    };
    if let Some(category) = categories.iter().find(|c| !anonymous(c) && !feedsync_node::auth::may_read(&token, c)) {
        return Err(HttpError::new(
            StatusCode::FORBIDDEN,
            format!("token {:?} may not read category {category:?}", token.name),
            "ask for a token with that category (`token create --categories ...`), or read only the categories it has",
        ));
    }
    if categories.is_empty() && !token.scopes.iter().any(|s| matches!(s, feedsync_node::auth::Scope::Feeds | feedsync_node::auth::Scope::Replica)) {
        return Err(HttpError::new(StatusCode::FORBIDDEN, format!("token {:?} has no feeds or replica scope", token.name), HINT));
    }
    let replica = token.scopes.contains(&feedsync_node::auth::Scope::Replica);
    Ok(Reader { credentials: credentials_may_travel(replica, over_tls, peer) })
}

/// Marks a request whose slot `handle` took (it announced no body).
#[derive(Clone, Copy)]
struct SlotTaken;

async fn read_body_bytes(request: Request<Incoming>, max: usize, smaller: &'static str, timeout: Duration) -> Result<Bytes, HttpError> {
    let too_large = || HttpError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("request body is over the limit of {max} bytes"), smaller);
    if request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok()).is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let gzip = request.headers().get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let collected = tokio::time::timeout(timeout, Limited::new(request.into_body(), max).collect()).await.map_err(|_| {
        HttpError::new(StatusCode::REQUEST_TIMEOUT, format!("the request body did not arrive within {} ms", timeout.as_millis()), "send the whole body at once; on a slow link, send less per request")
    })?;
    let body = collected.map_err(|e| {
        if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
            too_large()
        } else {
            HttpError::new(StatusCode::BAD_REQUEST, format!("could not read the request body: {e}"), "send the whole body")
        }
    })?;
    let bytes = body.to_bytes();
    if !gzip {
        return Ok(bytes);
    }
    use std::io::Read;
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&bytes[..]).take(max as u64 + 1).read_to_end(&mut plain).map_err(|e| {
        HttpError::new(StatusCode::BAD_REQUEST, format!("gzip body could not be decompressed: {e}"), "send valid gzip or an uncompressed body")
    })?;
    if plain.len() > max {
        return Err(too_large());
    }
    Ok(plain.into())
}

async fn health(app: &App) -> Result<Reply, HttpError> {
    let mut session = app.database.session().await?;
    let backlog = session.query("SELECT COUNT(*) AS n FROM feedsync_journal", &[]).await?;
    let events = session.query(&format!("SELECT COALESCE(MAX(event_seq), 0) AS n FROM {EVENT_TABLE}"), &[]).await?;
    let body = serde_json::json!({
        "status": "ok",
        "journal_backlog": backlog.first().and_then(|r| r.i64("n")),
        "last_event_seq": events.first().and_then(|r| r.i64("n")),
    });
    Ok(Reply::json(StatusCode::OK, body.to_string().into_bytes(), false))
}

/// Publishes journal rows until shut down, backing off while the database fails.
pub async fn run_sequencer(app: Arc<App>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let interval = Duration::from_millis(app.config.feed.sequencer_interval_ms);
    let mut backoff_ms = app.config.feed.sequencer_interval_ms.max(100);
    loop {
        let wait = match app.database.session().await {
            Ok(mut session) => match sequencer::drain(&mut session, &app.model, &app.config, 1_000).await {
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(events = n, "published");
                    }
                    backoff_ms = app.config.feed.sequencer_interval_ms.max(100);
                    interval
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff_ms, "publishing failed; will retry");
                    backoff_ms = (backoff_ms * 2).min(SEQUENCER_BACKOFF_MS_MAX);
                    Duration::from_millis(backoff_ms)
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff_ms, "database unreachable; will retry");
                backoff_ms = (backoff_ms * 2).min(SEQUENCER_BACKOFF_MS_MAX);
                Duration::from_millis(backoff_ms)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// The client's address, put on each request by [`serve`] (the dashboard serves only this
/// machine unless an admin token is set).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Set on a request that arrived over TLS (absent: plain http).
#[derive(Debug, Clone, Copy)]
pub struct OverTls;

/// Whether `request` arrived over TLS.
pub fn arrived_over_tls<B>(request: &Request<B>) -> bool {
    request.extensions().get::<OverTls>().is_some()
}

/// Accepts plain-http connections until `shutdown` fires ([`serve_with`] without TLS).
pub async fn serve(app: Arc<App>, listener: TcpListener, shutdown: tokio::sync::watch::Receiver<bool>) -> std::io::Result<()> {
    serve_with(app, listener, None, shutdown).await
}

/// Accepts connections until `shutdown` fires, at most `limits.connections_max` at once and
/// `limits.connections_per_address_max` from one address (more are closed as they arrive),
/// each with a header-read timeout; with `tls`, each speaks TLS (the handshake within the
/// same timeout) and nothing else.
pub async fn serve_with(
    app: Arc<App>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let limits = app.config.limits.clone();
    let connections = Arc::new(ConnectionCount::default());
    loop {
        let (stream, peer): (_, SocketAddr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return Ok(()),
        };
        let Some(counted) = connections.admit(peer.ip(), limits.connections_max, limits.connections_per_address_max) else {
            tracing::warn!(%peer, "connection refused: too many open (connections_max / connections_per_address_max)");
            drop(stream);
            continue;
        };
        let app = app.clone();
        let header_timeout = Duration::from_millis(limits.header_read_timeout_ms);
        let tls = tls.clone();
        tokio::spawn(async move {
            let _counted = counted;
            let Some(acceptor) = tls else {
                return serve_connection(app, stream, peer, false, header_timeout).await;
            };
            match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => serve_connection(app, stream, peer, true, header_timeout).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake not finished within header_read_timeout_ms"),
            }
        });
    }
}

/// Serves the requests of one connection, plain or already past its TLS handshake.
async fn serve_connection<I>(app: Arc<App>, io: I, peer: SocketAddr, over_tls: bool, header_timeout: Duration)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(PeerAddr(peer));
        if over_tls {
            request.extensions_mut().insert(OverTls);
        }
        let app = app.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(app, request).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service)
        .await
    {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Why plain http may not be served on `listen`, if it may not: only loopback, unless the
/// operator said `insecure_http`. Pure.
pub fn plain_http_refusal(listen: IpAddr, tls: bool, insecure_http: bool) -> Option<String> {
    if tls || insecure_http || listen.to_canonical().is_loopback() {
        return None;
    }
    Some(format!(
        "refusing to serve plain http on {listen}: other machines would send tokens and read patient data in clear. \
         Give the server a certificate (--tls-cert FILE --tls-key FILE; `feed-publisher tls init --dir tls --name HOST` makes a private CA and one), \
         listen on 127.0.0.1 behind a TLS proxy, or pass --insecure-http on a network you trust"
    ))
}

/// Open connections, in all and by address.
#[derive(Default)]
struct ConnectionCount {
    open: std::sync::Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One admitted connection; counted until dropped.
struct Counted {
    count: Arc<ConnectionCount>,
    address: IpAddr,
}

impl ConnectionCount {
    fn admit(self: &Arc<Self>, address: IpAddr, total_max: usize, per_address_max: usize) -> Option<Counted> {
        let address = address.to_canonical();
        let mut open = self.open.lock().expect("connection count lock");
        let from_address = open.1.get(&address).copied().unwrap_or(0);
        if !admits(open.0, from_address, total_max, per_address_max) {
            return None;
        }
        open.0 += 1;
        *open.1.entry(address).or_insert(0) += 1;
        Some(Counted { count: self.clone(), address })
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut open = self.count.open.lock().expect("connection count lock");
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.address);
            }
        }
    }
}

/// Whether one more connection fits, with `open` open in all and `from_address` from its
/// address. Pure.
fn admits(open: usize, from_address: usize, total_max: usize, per_address_max: usize) -> bool {
    open < total_max && from_address < per_address_max
}

/// Serves until Ctrl-C (or until `stop` turns true), then stops accepting, lets the sequencer
/// finish its batch and the alert loop its round, and returns. `on_listening` is told the
/// bound address first, so a caller can print it (the demo) before requests arrive.
pub async fn serve_until_stopped(
    database: Database,
    model: Model,
    config: Config,
    on_listening: impl FnOnce(SocketAddr),
    mut stop_requested: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let listener = TcpListener::bind(&config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {} (in use? try --listen 127.0.0.1:PORT)", config.server.listen))?;
    let local = listener.local_addr()?;
    let tls = match config.server.tls() {
        Some((cert, key)) => Some(crate::tls::ServerTls::load(cert, key)?),
        None => None,
    };
    if let Some(refusal) = plain_http_refusal(local.ip(), tls.is_some(), config.server.insecure_http) {
        anyhow::bail!(refusal);
    }
    if tls.is_none() && !local.ip().to_canonical().is_loopback() {
        tracing::warn!(listen = %local, "--insecure-http: serving plain http to the network; tokens and patient data cross it in clear");
    }
    let acceptor = tls.as_ref().map(|tls| tls.acceptor()).transpose()?;
    let app = Arc::new(App::new(database, model, config).await?);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(listen = %local, %scheme, database = %app.database.display_name(), "serving feeds at /ws/atomfeed/{{category}}/recent");
    on_listening(local);
    let sequencer = tokio::spawn(run_sequencer(app.clone(), stopped.clone()));
    let alerts = tokio::spawn(crate::status::run_alerts(app.clone(), stopped.clone()));
    if let Some(tls) = tls {
        tokio::spawn(tls.watch(stopped.clone()));
    }
    let http = tokio::spawn(serve_with(app.clone(), listener, acceptor, stopped));
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = stop_requested.wait_for(|stop| *stop) => {}
    }
    tracing::info!("stopping");
    let _ = stop.send(true);
    let _ = sequencer.await;
    let _ = alerts.await;
    let _ = http.await;
    Ok(())
}

/// [`serve_until_stopped`] with nothing but Ctrl-C to stop it: `feed-publisher serve`.
pub async fn serve_until_ctrl_c(database: Database, model: Model, config: Config) -> anyhow::Result<()> {
    let (_keep, never) = tokio::sync::watch::channel(false);
    serve_until_stopped(database, model, config, |_| {}, never).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_travel_to_the_trusted_over_tls_or_to_this_machine() {
        let here: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let there: SocketAddr = "10.0.0.7:5000".parse().unwrap();
        for (trusted, tls, peer, travels) in [
            (true, false, Some(here), true),
            (true, true, Some(there), true),
            (true, false, Some(there), false),
            (true, false, None, false),
            (false, true, Some(here), false),
            (false, false, Some(here), false),
        ] {
            assert_eq!(credentials_may_travel(trusted, tls, peer), travels, "{trusted} {tls} {peer:?}");
        }
    }

    #[test]
    fn plain_http_is_served_to_this_machine_only_unless_allowed() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for (listen, refused) in [("127.0.0.1", false), ("::1", false), ("::ffff:127.0.0.1", false), ("0.0.0.0", true), ("::", true), ("10.1.2.3", true)] {
            assert_eq!(plain_http_refusal(ip(listen), false, false).is_some(), refused, "{listen}");
            assert!(plain_http_refusal(ip(listen), true, false).is_none(), "{listen} with TLS");
            assert!(plain_http_refusal(ip(listen), false, true).is_none(), "{listen} with --insecure-http");
        }
        assert!(plain_http_refusal(ip("0.0.0.0"), false, false).unwrap().contains("--tls-cert"), "the refusal says what to do");
    }

    #[test]
    fn connections_are_admitted_up_to_both_caps() {
        assert!(admits(0, 0, 1_024, 64));
        assert!(admits(1_023, 63, 1_024, 64));
        assert!(!admits(1_024, 0, 1_024, 64), "the total cap");
        assert!(!admits(10, 64, 1_024, 64), "one address's cap");
        let count = Arc::new(ConnectionCount::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let first = count.admit(a, 3, 2).expect("first");
        let second = count.admit(mapped, 3, 2).expect("the same address, IPv4-mapped");
        assert!(count.admit(a, 3, 2).is_none(), "over the address's cap");
        let other = count.admit("10.0.0.2".parse().unwrap(), 3, 2).expect("another address");
        assert!(count.admit("10.0.0.3".parse().unwrap(), 3, 2).is_none(), "over the total cap");
        drop((first, other));
        assert!(count.admit(a, 3, 2).is_some(), "a closed connection frees its place");
        drop(second);
        assert_eq!(count.open.lock().unwrap().0, 0, "every admitted connection was counted out");
    }
}
