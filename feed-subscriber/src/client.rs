//! The subscriber's HTTP client: one pooled keep-alive client for feed pages, resources and
//! batch fetches, with a limit on everything that can grow or hang (body size before and after
//! gzip, time per request, redirects, retries) and errors that say whether trying again can
//! help. Facility links are slow and servers misbehave; nothing a server sends may panic the
//! subscriber, exhaust its memory or stall it forever.
//!
//! [`HttpClient::fetch_resources`] turns resource links into resources with as few requests as
//! the publisher allows: the batch endpoint takes up to [`ClientLimits::batch_links_max`] links
//! per request, and one GET per link is the fallback for publishers without it. On a 2G link
//! the difference between 1 request and 200 is the difference between minutes and hours.

use std::io::Read;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Serialize;
use url::Url;

use feedsync_wire::resource::{BATCH_PATH, BatchItem, BatchRequest, BatchResponse, RESOURCE_PATH, Resource, Tombstone};

/// Sent with every request so a publisher's log shows who is reading.
pub const USER_AGENT: &str = "feedsync feed-subscriber";

/// Named limits; every one has a unit in its name. [`Default`] suits a subscriber on a slow
/// link talking to a feed-publisher.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientLimits {
    /// Largest response body accepted, counted as it streams in and again after gzip
    /// decoding, so a small compressed body cannot expand past it either.
    pub response_bytes_max: usize,
    /// Longest one HTTP exchange (connect, send, whole answer) may take; each redirect hop
    /// and each retry gets its own.
    pub request_timeout_ms: u64,
    /// Redirects followed for one request before giving up.
    pub redirects_max: u32,
    /// Extra attempts after a retryable failure, for idempotent requests only.
    pub retries_max: u32,
    /// Wait before the first retry; doubled for each further one.
    pub retry_delay_ms_first: u64,
    /// Longest wait between two attempts.
    pub retry_delay_ms_max: u64,
    /// Links named in one batch-fetch request. The publisher accepts up to 1,000; 200 keeps
    /// each answer a few hundred KiB, so a cut connection loses little.
    pub batch_links_max: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            response_bytes_max: 32 << 20,
            request_timeout_ms: 30_000,
            redirects_max: 5,
            retries_max: 3,
            retry_delay_ms_first: 500,
            retry_delay_ms_max: 5_000,
            batch_links_max: 200,
        }
    }
}

/// A complete answer: the body is whole and already decompressed.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: StatusCode,
    /// `Content-Encoding` and `Content-Length` are removed once the body is decoded, so they
    /// never describe bytes the caller does not have.
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The URL that gave this answer, after redirects: relative links in the body resolve
    /// against it.
    pub url: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url:?} is not a URL this client can fetch: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot connect to {url}: {message}. Check that the server runs and is reachable from here; retrying later may help")]
    Connect { url: String, message: String },
    #[error(
        "no complete answer from {url} within {timeout_ms} ms: the server or the link is slow or stuck. \
         Retrying later may help; on a slow link raise request_timeout_ms"
    )]
    Timeout { url: String, timeout_ms: u64 },
    #[error("the connection to {url} failed during the exchange: {message}. Retrying later may help")]
    Transport { url: String, message: String },
    #[error("{url} answered {status}: {message}")]
    Status { url: String, status: u16, message: String },
    #[error(
        "the answer from {url} is over the limit of {limit_bytes} bytes{}. \
         If the server is right to send that much, raise response_bytes_max",
        if *.decompressed { " once decompressed" } else { "" }
    )]
    TooLarge { url: String, limit_bytes: usize, decompressed: bool },
    #[error(
        "{url} redirected more than {redirects_max} times (the last to {location}): a redirect loop? \
         Fix the server's configuration, or configure the URL the redirects end at"
    )]
    TooManyRedirects { url: String, redirects_max: u32, location: String },
    #[error("{url} answered a redirect that cannot be followed: {reason}")]
    BadRedirect { url: String, reason: String },
    #[error("the answer from {url} cannot be decoded: {message}")]
    Decode { url: String, message: String },
    #[error("the request to {url} cannot be built: {message}")]
    Request { url: String, message: String },
}

impl ClientError {
    /// The one retry decision: true when the same request may succeed later unchanged.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Connect { .. } | ClientError::Timeout { .. } | ClientError::Transport { .. } => true,
            ClientError::Status { status, .. } => status_is_retryable(*status),
            ClientError::BadUrl { .. }
            | ClientError::TooLarge { .. }
            | ClientError::TooManyRedirects { .. }
            | ClientError::BadRedirect { .. }
            | ClientError::Decode { .. }
            | ClientError::Request { .. } => false,
        }
    }

    /// The HTTP status, when the server answered with an error status.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// 5xx: the server failed (503 is a publisher whose database is away). 408 and 429: the
/// server asks to be asked again later. Every other 4xx will be refused again.
fn status_is_retryable(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

/// What a resource link gave, in the order the links were given.
#[derive(Debug, Clone, PartialEq)]
pub enum Fetched {
    Resource(Resource),
    /// The entity was deleted (410 Gone with a tombstone).
    Deleted(Tombstone),
    /// Neither: `reason` says why, `retryable` whether asking again later may help.
    Failed { link: String, reason: String, retryable: bool },
}

/// The pooled client. Cloning is cheap and shares the pool.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
    limits: ClientLimits,
    /// `Basic ...`, sent only to the origin of the URL a request was made for.
    authorization: Option<HeaderValue>,
}

impl std::fmt::Debug for HttpClient {
    // By hand so credentials never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").field("limits", &self.limits).field("basic_auth", &self.authorization.is_some()).finish()
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient::new(ClientLimits::default())
    }
}

/// Idle pooled connections are closed after this; servers close theirs sooner or later and a
/// stale connection costs a failed first write.
const POOL_IDLE_TIMEOUT_MS: u64 = 60_000;

impl HttpClient {
    pub fn new(limits: ClientLimits) -> HttpClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(limits.request_timeout_ms)));
        connector.set_nodelay(true);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_millis(POOL_IDLE_TIMEOUT_MS))
            .pool_timer(TokioTimer::new())
            .build(connector);
        HttpClient { inner, limits, authorization: None }
    }

    /// Sends HTTP basic credentials, given as `user:password` (as OpenMRS REST expects), with
    /// every request to the origin each request was made for; never after a redirect to
    /// another origin.
    pub fn with_basic_auth(mut self, user_password: &str) -> HttpClient {
        let mut value = HeaderValue::from_str(&format!("Basic {}", base64(user_password.as_bytes()))).expect("base64 is a valid header value");
        value.set_sensitive(true);
        self.authorization = Some(value);
        self
    }

    /// Sends `Authorization: Bearer <token>` (a child's token for its parent), to the origin
    /// each request was made for only, like basic credentials.
    pub fn with_bearer(mut self, token: &str) -> HttpClient {
        let mut value = HeaderValue::from_str(&format!("Bearer {token}")).unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid-token"));
        value.set_sensitive(true);
        self.authorization = Some(value);
        self
    }

    pub fn limits(&self) -> &ClientLimits {
        &self.limits
    }

    /// GETs `url`, following redirects and retrying retryable failures. Any status other than
    /// 2xx is an error ([`ClientError::Status`], with the server's own explanation).
    pub async fn get(&self, url: &str) -> Result<HttpResponse, ClientError> {
        self.send_with_retries(Method::GET, url, None, is_success).await
    }

    /// POSTs `body` as JSON; any status other than 2xx is an error. Not retried: a POST may
    /// have taken effect before its answer was lost, so the caller decides.
    pub async fn post_json<T: Serialize + ?Sized>(&self, url: &str, body: &T) -> Result<HttpResponse, ClientError> {
        let bytes = encode_json(url, body)?;
        let response = self.send(Method::POST, &parse_url(url)?, Some(bytes)).await?;
        if is_success(response.status) { Ok(response) } else { Err(status_error(&response)) }
    }

    /// Like [`HttpClient::post_json`], with the body gzip-compressed (`Content-Encoding:
    /// gzip`), for servers that accept it (a feed-publisher's network routes do). Not retried.
    pub async fn post_json_gzip<T: Serialize + ?Sized>(&self, url: &str, body: &T) -> Result<HttpResponse, ClientError> {
        let plain = encode_json(url, body)?;
        let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(plain.len() / 4), flate2::Compression::default());
        std::io::Write::write_all(&mut encoder, &plain).expect("writing to memory");
        let bytes = Bytes::from(encoder.finish().expect("writing to memory"));
        let response = self.send(Method::POST, &parse_url(url)?, Some(bytes)).await?;
        if is_success(response.status) { Ok(response) } else { Err(status_error(&response)) }
    }

    /// Fetches resources by their links: through the publisher's batch endpoint where the
    /// links allow (`<origin><prefix>/ws/feedsync/resource/...`), else one GET per link. One
    /// answer per link, in link order; a link that fails is [`Fetched::Failed`] and never
    /// stops the others.
    pub async fn fetch_resources(&self, links: &[String]) -> Vec<Fetched> {
        let mut answers: Vec<Option<Fetched>> = vec![None; links.len()];
        let mut endpoints_without_batch: Vec<String> = Vec::new();
        for group in plan_batches(links, self.limits.batch_links_max) {
            let chunk: Vec<&str> = group.indexes.iter().map(|&i| links[i].as_str()).collect();
            let batched = match &group.endpoint {
                Some(endpoint) if !endpoints_without_batch.contains(endpoint) => match self.fetch_batch(endpoint, &chunk).await {
                    BatchOutcome::Answered(fetched) => Some(fetched),
                    BatchOutcome::Unsupported => {
                        tracing::info!(%endpoint, "no batch fetch here; fetching one link at a time");
                        endpoints_without_batch.push(endpoint.clone());
                        None
                    }
                    BatchOutcome::OneByOne => None,
                },
                _ => None,
            };
            let fetched = match batched {
                Some(fetched) => fetched,
                None => {
                    let mut one_by_one = Vec::with_capacity(chunk.len());
                    for link in &chunk {
                        one_by_one.push(self.fetch_one(link).await);
                    }
                    one_by_one
                }
            };
            assert_eq!(fetched.len(), group.indexes.len(), "one answer per link");
            for (index, answer) in group.indexes.iter().zip(fetched) {
                answers[*index] = Some(answer);
            }
        }
        answers.into_iter().map(|answer| answer.expect("every link is in exactly one group")).collect()
    }

    async fn fetch_batch(&self, endpoint: &str, chunk: &[&str]) -> BatchOutcome {
        let request = BatchRequest { resources: chunk.iter().map(|link| link.to_string()).collect() };
        let body = match encode_json(endpoint, &request) {
            Ok(body) => body,
            Err(e) => return BatchOutcome::Answered(failed_all(chunk, &e.to_string(), false)),
        };
        // The batch POST only reads, so retrying it is as safe as retrying a GET.
        let accepted = |status: StatusCode| is_success(status) || matches!(status.as_u16(), 404 | 405 | 413);
        match self.send_with_retries(Method::POST, endpoint, Some(body), accepted).await {
            Ok(response) => match response.status.as_u16() {
                404 | 405 => BatchOutcome::Unsupported,
                // Over the publisher's request limits: each link on its own is still fine.
                413 => BatchOutcome::OneByOne,
                _ => BatchOutcome::Answered(batch_answers(endpoint, chunk, &response.body)),
            },
            // One resource too large for the whole answer: one by one, only it fails.
            Err(ClientError::TooLarge { .. }) => BatchOutcome::OneByOne,
            Err(e) => BatchOutcome::Answered(failed_all(chunk, &e.to_string(), e.is_retryable())),
        }
    }

    async fn fetch_one(&self, link: &str) -> Fetched {
        let accepted = |status: StatusCode| is_success(status) || matches!(status.as_u16(), 404 | 410);
        match self.send_with_retries(Method::GET, link, None, accepted).await {
            Ok(response) => single_answer(link, &response),
            Err(e) => Fetched::Failed { link: link.to_owned(), reason: e.to_string(), retryable: e.is_retryable() },
        }
    }

    /// Sends until a status `accepted` takes, retrying retryable failures with capped
    /// exponential backoff. Only for requests that are safe to repeat.
    async fn send_with_retries(
        &self,
        method: Method,
        url: &str,
        body: Option<Bytes>,
        accepted: impl Fn(StatusCode) -> bool,
    ) -> Result<HttpResponse, ClientError> {
        let parsed = parse_url(url)?;
        let mut attempt = 0;
        loop {
            let result = match self.send(method.clone(), &parsed, body.clone()).await {
                Ok(response) if accepted(response.status) => Ok(response),
                Ok(response) => Err(status_error(&response)),
                Err(e) => Err(e),
            };
            match result {
                Err(e) if e.is_retryable() && attempt < self.limits.retries_max => {
                    let delay_ms = retry_delay_ms(&self.limits, attempt);
                    tracing::warn!(%url, error = %e, attempt = attempt + 1, delay_ms, "request failed; retrying");
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// One request, following redirects; any final status is returned as it is.
    async fn send(&self, method: Method, url: &Url, body: Option<Bytes>) -> Result<HttpResponse, ClientError> {
        let origin = url.origin();
        let mut current = url.clone();
        let mut redirects = 0;
        loop {
            let authorization = self.authorization.as_ref().filter(|_| current.origin() == origin);
            let response = self.exchange(&method, &current, body.clone(), authorization).await?;
            let Some(location) = redirect_location(&method, &response) else { return Ok(response) };
            let next = current.join(&location).map_err(|e| ClientError::BadRedirect {
                url: current.to_string(),
                reason: format!("Location {location:?} is not a URL ({e})"),
            })?;
            if redirects >= self.limits.redirects_max {
                return Err(ClientError::TooManyRedirects { url: url.to_string(), redirects_max: self.limits.redirects_max, location: next.to_string() });
            }
            check_scheme(&next).map_err(|reason| ClientError::BadRedirect { url: current.to_string(), reason })?;
            tracing::debug!(from = %current, to = %next, "following redirect");
            redirects += 1;
            current = next;
        }
    }

    /// One HTTP exchange under the request timeout: send, then read the whole body within the
    /// size limit.
    async fn exchange(&self, method: &Method, url: &Url, body: Option<Bytes>, authorization: Option<&HeaderValue>) -> Result<HttpResponse, ClientError> {
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(url.as_str())
            .header(header::USER_AGENT, USER_AGENT)
            .header(header::ACCEPT_ENCODING, "gzip");
        if let Some(value) = authorization {
            builder = builder.header(header::AUTHORIZATION, value.clone());
        }
        if let Some(bytes) = &body {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
            // JSON never starts with gzip's magic bytes, so they mark a compressed body.
            if bytes.starts_with(&[0x1f, 0x8b]) {
                builder = builder.header(header::CONTENT_ENCODING, "gzip");
            }
        }
        let request = builder
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| ClientError::Request { url: url.to_string(), message: e.to_string() })?;
        let timeout_ms = self.limits.request_timeout_ms;
        let exchange = async {
            let response = self.inner.request(request).await.map_err(|e| transport_error(url, &e))?;
            read_response(url, response, self.limits.response_bytes_max).await
        };
        tokio::time::timeout(Duration::from_millis(timeout_ms), exchange)
            .await
            .map_err(|_| ClientError::Timeout { url: url.to_string(), timeout_ms })?
    }
}

enum BatchOutcome {
    /// One answer per link of the chunk.
    Answered(Vec<Fetched>),
    /// The server has no batch endpoint: never ask it again.
    Unsupported,
    /// This chunk must go one link at a time.
    OneByOne,
}

fn is_success(status: StatusCode) -> bool {
    status.is_success()
}

fn parse_url(url: &str) -> Result<Url, ClientError> {
    let parsed = Url::parse(url).map_err(|e| ClientError::BadUrl { url: url.to_owned(), reason: e.to_string() })?;
    check_scheme(&parsed).map_err(|reason| ClientError::BadUrl { url: url.to_owned(), reason })?;
    Ok(parsed)
}

fn check_scheme(url: &Url) -> Result<(), String> {
    match url.scheme() {
        "http" => Ok(()),
        "https" => Err("https is not supported yet: use http, or a TLS-terminating proxy on this machine".into()),
        other => Err(format!("scheme {other:?} is not http")),
    }
}

fn encode_json<T: Serialize + ?Sized>(url: &str, body: &T) -> Result<Bytes, ClientError> {
    serde_json::to_vec(body).map(Bytes::from).map_err(|e| ClientError::Request { url: url.to_owned(), message: format!("body is not JSON: {e}") })
}

/// The redirect to follow, if `response` is one this method may follow: any of 301, 302, 303,
/// 307, 308 for GET; for other methods only 307 and 308, which keep the method and body
/// (301-303 would turn a POST into a GET).
fn redirect_location(method: &Method, response: &HttpResponse) -> Option<String> {
    let followable = match response.status.as_u16() {
        301..=303 => method == Method::GET,
        307 | 308 => true,
        _ => false,
    };
    if !followable {
        return None;
    }
    response.headers.get(header::LOCATION).and_then(|value| value.to_str().ok()).map(str::to_owned)
}

/// `min(first * 2^attempt, max)`.
fn retry_delay_ms(limits: &ClientLimits, attempt: u32) -> u64 {
    limits.retry_delay_ms_first.saturating_mul(1u64 << attempt.min(32)).min(limits.retry_delay_ms_max)
}

fn transport_error(url: &Url, e: &hyper_util::client::legacy::Error) -> ClientError {
    // hyper's top-level message is generic; the cause (refused, reset, ...) is in the chain.
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    if e.is_connect() {
        ClientError::Connect { url: url.to_string(), message }
    } else {
        ClientError::Transport { url: url.to_string(), message }
    }
}

/// Reads the whole body, refusing it as soon as it passes `limit_bytes` (by its declared
/// length, while streaming, and after gzip decoding).
async fn read_response(url: &Url, response: hyper::Response<hyper::body::Incoming>, limit_bytes: usize) -> Result<HttpResponse, ClientError> {
    let too_large = |decompressed| ClientError::TooLarge { url: url.to_string(), limit_bytes, decompressed };
    let (parts, mut body) = response.into_parts();
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit_bytes as u64) {
        return Err(too_large(false));
    }
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ClientError::Transport { url: url.to_string(), message: format!("reading the body: {e}") })?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > limit_bytes {
                return Err(too_large(false));
            }
            bytes.extend_from_slice(&data);
        }
    }
    let mut headers = parts.headers;
    let encoding = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).map(|v| v.trim().to_ascii_lowercase());
    let body = match encoding.as_deref() {
        None | Some("") | Some("identity") => Bytes::from(bytes),
        Some("gzip") | Some("x-gzip") => {
            let decoded = gunzip(&bytes, limit_bytes).map_err(|e| match e {
                GunzipError::TooLarge => too_large(true),
                GunzipError::Corrupt(message) => ClientError::Decode { url: url.to_string(), message: format!("bad gzip body: {message}") },
            })?;
            headers.remove(header::CONTENT_ENCODING);
            headers.remove(header::CONTENT_LENGTH);
            Bytes::from(decoded)
        }
        Some(other) => {
            return Err(ClientError::Decode { url: url.to_string(), message: format!("Content-Encoding {other:?} was not asked for (only gzip is)") });
        }
    };
    Ok(HttpResponse { status: parts.status, headers, body, url: url.to_string() })
}

#[derive(Debug, PartialEq)]
enum GunzipError {
    TooLarge,
    Corrupt(String),
}

/// Decodes gzip, reading at most one byte past the limit so a bomb costs only the limit.
fn gunzip(compressed: &[u8], limit_bytes: usize) -> Result<Vec<u8>, GunzipError> {
    let mut decoded = Vec::new();
    flate2::read::MultiGzDecoder::new(compressed)
        .take(limit_bytes as u64 + 1)
        .read_to_end(&mut decoded)
        .map_err(|e| GunzipError::Corrupt(e.to_string()))?;
    if decoded.len() > limit_bytes {
        return Err(GunzipError::TooLarge);
    }
    Ok(decoded)
}

/// A [`ClientError::Status`] whose message carries the server's own explanation: the JSON
/// `{"error", "hint"}` feed-publisher sends, or the start of any other body.
fn status_error(response: &HttpResponse) -> ClientError {
    let status = response.status.as_u16();
    let explained = serde_json::from_slice::<serde_json::Value>(&response.body).ok().and_then(|json| {
        let error = json.get("error")?.as_str()?.to_owned();
        Some(match json.get("hint").and_then(|hint| hint.as_str()) {
            Some(hint) if !hint.is_empty() => format!("{error} (server's hint: {hint})"),
            _ => error,
        })
    });
    let said = explained.unwrap_or_else(|| body_excerpt(&response.body));
    let advice = match status {
        401 | 403 => "check the credentials configured for this server",
        _ if status_is_retryable(status) => "retrying later may help",
        300..=399 => "a redirect that was not followed; configure the URL it points to",
        _ => "the server refuses this request; retrying will not help",
    };
    let reason = response.status.canonical_reason().unwrap_or("");
    let message = if said.is_empty() { format!("{reason}; {advice}") } else { format!("{reason}: {said}; {advice}") };
    ClientError::Status { url: response.url.clone(), status, message }
}

/// Characters of a body shown in an error: enough to recognise an HTML error page or a proxy's
/// message, not so much that one log line becomes a page.
const BODY_EXCERPT_CHARS_MAX: usize = 200;

fn body_excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() > BODY_EXCERPT_CHARS_MAX {
        format!("{}...", text.chars().take(BODY_EXCERPT_CHARS_MAX).collect::<String>())
    } else {
        text
    }
}

/// The batch endpoint serving `link`: everything before `/ws/feedsync/resource/` (origin and
/// path prefix) plus the batch path. `None` for links that are not absolute feed-publisher
/// resource links; those are fetched on their own.
pub fn batch_endpoint(link: &str) -> Option<String> {
    let url = Url::parse(link).ok()?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return None;
    }
    let after_authority = link.find("://").map(|i| i + 3)?;
    let path_start = after_authority + link[after_authority..].find('/')?;
    let marker = format!("{RESOURCE_PATH}/");
    let at = path_start + link[path_start..].find(&marker)?;
    Some(format!("{}{BATCH_PATH}", &link[..at]))
}

/// Links of one request: the same batch endpoint (or none), at most `batch_links_max`.
#[derive(Debug, PartialEq)]
struct LinkGroup {
    endpoint: Option<String>,
    /// Positions in the caller's list, ascending.
    indexes: Vec<usize>,
}

/// Groups links by batch endpoint, in order of first appearance, chunked.
fn plan_batches(links: &[String], batch_links_max: usize) -> Vec<LinkGroup> {
    let batch_links_max = batch_links_max.max(1);
    let mut by_endpoint: Vec<(Option<String>, Vec<usize>)> = Vec::new();
    for (index, link) in links.iter().enumerate() {
        let endpoint = batch_endpoint(link);
        match by_endpoint.iter_mut().find(|(e, _)| *e == endpoint) {
            Some((_, indexes)) => indexes.push(index),
            None => by_endpoint.push((endpoint, vec![index])),
        }
    }
    let mut groups = Vec::new();
    for (endpoint, indexes) in by_endpoint {
        for chunk in indexes.chunks(batch_links_max) {
            groups.push(LinkGroup { endpoint: endpoint.clone(), indexes: chunk.to_vec() });
        }
    }
    groups
}

fn failed_all(chunk: &[&str], reason: &str, retryable: bool) -> Vec<Fetched> {
    chunk.iter().map(|link| Fetched::Failed { link: link.to_string(), reason: reason.to_owned(), retryable }).collect()
}

/// One answer per link from a batch answer body; answers are matched by position and must
/// name the link asked for.
fn batch_answers(endpoint: &str, chunk: &[&str], body: &[u8]) -> Vec<Fetched> {
    let response: BatchResponse = match serde_json::from_slice(body) {
        Ok(response) => response,
        Err(e) => {
            let reason = format!("the batch answer from {endpoint} is not a batch response ({e}): {}", body_excerpt(body));
            return failed_all(chunk, &reason, false);
        }
    };
    if response.resources.len() != chunk.len() {
        let reason = format!("the batch answer from {endpoint} has {} items for {} links", response.resources.len(), chunk.len());
        return failed_all(chunk, &reason, false);
    }
    chunk
        .iter()
        .zip(response.resources)
        .map(|(link, item)| {
            if item.link != *link {
                let reason = format!("the batch answer from {endpoint} names {:?} where {link:?} was asked for", item.link);
                return Fetched::Failed { link: link.to_string(), reason, retryable: false };
            }
            batch_item(item)
        })
        .collect()
}

fn batch_item(item: BatchItem) -> Fetched {
    match (item.status, item.resource, item.tombstone) {
        (200, Some(resource), _) => Fetched::Resource(resource),
        (410, _, Some(tombstone)) => Fetched::Deleted(tombstone),
        (status, _, _) => {
            let said = item.error.unwrap_or_else(|| "no resource or tombstone given".into());
            Fetched::Failed { link: item.link, reason: format!("status {status}: {said}"), retryable: status_is_retryable(status) }
        }
    }
}

/// The answer to a GET of one resource link (200, 404 or 410: others were errors already).
fn single_answer(link: &str, response: &HttpResponse) -> Fetched {
    let failed = |reason: String, retryable| Fetched::Failed { link: link.to_owned(), reason, retryable };
    match response.status.as_u16() {
        200..=299 => match serde_json::from_slice::<Resource>(&response.body) {
            Ok(resource) => Fetched::Resource(resource),
            Err(e) => failed(format!("{} answered 200 but not with a resource ({e}): {}", response.url, body_excerpt(&response.body)), false),
        },
        410 => match serde_json::from_slice::<Tombstone>(&response.body) {
            Ok(tombstone) => Fetched::Deleted(tombstone),
            Err(e) => failed(format!("{} answered 410 Gone but not with a tombstone ({e}): {}", response.url, body_excerpt(&response.body)), false),
        },
        _ => {
            let error = status_error(response);
            failed(error.to_string(), error.is_retryable())
        }
    }
}

/// Standard base64 with padding, for the basic-auth header: a dependency for 15 lines is not
/// worth it.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let bytes = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let bits = (u32::from(bytes[0]) << 16) | (u32::from(bytes[1]) << 8) | u32::from(bytes[2]);
        for position in 0..4 {
            if position <= chunk.len() {
                out.push(ALPHABET[((bits >> (18 - 6 * position)) & 0x3f) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, expected) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")]
        {
            assert_eq!(base64(input.as_bytes()), expected, "{input}");
        }
        assert_eq!(base64(b"admin:Admin123"), "YWRtaW46QWRtaW4xMjM=");
    }

    #[test]
    fn batch_endpoint_keeps_origin_and_prefix() {
        assert_eq!(
            batch_endpoint("http://h:8086/openmrs/ws/feedsync/resource/obs/o1").as_deref(),
            Some("http://h:8086/openmrs/ws/feedsync/resources")
        );
        assert_eq!(batch_endpoint("http://h/ws/feedsync/resource/patient/a%2Bb").as_deref(), Some("http://h/ws/feedsync/resources"));
        assert_eq!(batch_endpoint("/ws/feedsync/resource/obs/o1"), None, "relative: no origin");
        assert_eq!(batch_endpoint("http://h/openmrs/ws/rest/v1/patient/x?v=full"), None);
        assert_eq!(batch_endpoint("http://h/ws/feedsync/resources"), None, "the batch path itself is no resource");
        assert_eq!(batch_endpoint("not a url"), None);
    }

    #[test]
    fn batches_group_by_endpoint_keep_order_and_respect_the_chunk_size() {
        let links: Vec<String> = [
            "http://a/ws/feedsync/resource/t/1",
            "http://b/p/ws/feedsync/resource/t/2",
            "http://a/ws/feedsync/resource/t/3",
            "http://a/ws/rest/v1/patient/4",
            "http://a/ws/feedsync/resource/t/5",
            "http://a/ws/feedsync/resource/t/6",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let groups = plan_batches(&links, 2);
        let summary: Vec<(Option<&str>, Vec<usize>)> = groups.iter().map(|g| (g.endpoint.as_deref(), g.indexes.clone())).collect();
        assert_eq!(
            summary,
            vec![
                (Some("http://a/ws/feedsync/resources"), vec![0, 2]),
                (Some("http://a/ws/feedsync/resources"), vec![4, 5]),
                (Some("http://b/p/ws/feedsync/resources"), vec![1]),
                (None, vec![3]),
            ]
        );
        let mut all: Vec<usize> = groups.iter().flat_map(|g| g.indexes.clone()).collect();
        all.sort();
        assert_eq!(all, (0..links.len()).collect::<Vec<_>>(), "every link exactly once");
        assert!(plan_batches(&[], 200).is_empty());
    }

    #[test]
    fn retry_delay_doubles_up_to_the_cap() {
        let limits = ClientLimits { retry_delay_ms_first: 500, retry_delay_ms_max: 5_000, ..ClientLimits::default() };
        let delays: Vec<u64> = (0..6).map(|attempt| retry_delay_ms(&limits, attempt)).collect();
        assert_eq!(delays, [500, 1_000, 2_000, 4_000, 5_000, 5_000]);
        assert_eq!(retry_delay_ms(&limits, 200), 5_000, "no overflow");
    }

    #[test]
    fn retryable_is_decided_by_the_kind_of_failure() {
        let url = || "http://h/x".to_string();
        assert!(ClientError::Connect { url: url(), message: "refused".into() }.is_retryable());
        assert!(ClientError::Timeout { url: url(), timeout_ms: 1 }.is_retryable());
        assert!(ClientError::Transport { url: url(), message: "reset".into() }.is_retryable());
        for status in [500, 502, 503, 504, 408, 429] {
            assert!(ClientError::Status { url: url(), status, message: String::new() }.is_retryable(), "{status}");
        }
        for status in [400, 401, 403, 404, 405, 410, 413] {
            assert!(!ClientError::Status { url: url(), status, message: String::new() }.is_retryable(), "{status}");
        }
        assert!(!ClientError::TooLarge { url: url(), limit_bytes: 1, decompressed: true }.is_retryable());
        assert!(!ClientError::TooManyRedirects { url: url(), redirects_max: 5, location: url() }.is_retryable());
        assert!(!ClientError::BadUrl { url: url(), reason: String::new() }.is_retryable());
    }

    fn response(status: u16, body: &str) -> HttpResponse {
        HttpResponse { status: StatusCode::from_u16(status).unwrap(), headers: HeaderMap::new(), body: Bytes::from(body.to_owned()), url: "http://h/x".into() }
    }

    #[test]
    fn status_errors_carry_the_servers_explanation_and_advice() {
        let e = status_error(&response(503, r#"{"error":"database unreachable","hint":"retry later","status":503}"#));
        let text = e.to_string();
        assert!(text.contains("503") && text.contains("database unreachable") && text.contains("retry later"), "{text}");
        assert!(e.is_retryable());
        let e = status_error(&response(404, "<html><body>Not here</body></html>"));
        assert!(e.to_string().contains("Not here") && e.to_string().contains("will not help"), "{e}");
        let long = "x".repeat(10_000);
        assert!(status_error(&response(500, &long)).to_string().len() < 600);
    }

    #[test]
    fn redirects_are_followed_only_where_the_method_allows() {
        let mut redirect = response(302, "");
        redirect.headers.insert(header::LOCATION, HeaderValue::from_static("/next"));
        assert_eq!(redirect_location(&Method::GET, &redirect).as_deref(), Some("/next"));
        assert_eq!(redirect_location(&Method::POST, &redirect), None, "302 would turn a POST into a GET");
        redirect.status = StatusCode::PERMANENT_REDIRECT;
        assert_eq!(redirect_location(&Method::POST, &redirect).as_deref(), Some("/next"));
        assert_eq!(redirect_location(&Method::GET, &response(301, "")), None, "no Location: nothing to follow");
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn gunzip_stops_at_the_limit() {
        let small = gzip(b"hello");
        assert_eq!(gunzip(&small, 5).unwrap(), b"hello");
        assert_eq!(gunzip(&small, 4), Err(GunzipError::TooLarge));
        let bomb = gzip(&vec![0u8; 20 << 20]);
        assert!(bomb.len() < 100_000, "20 MiB of zeros compresses to {} bytes", bomb.len());
        assert_eq!(gunzip(&bomb, 1 << 20), Err(GunzipError::TooLarge));
        assert!(matches!(gunzip(b"not gzip at all", 100), Err(GunzipError::Corrupt(_))));
    }

    fn item(link: &str, status: u16) -> BatchItem {
        BatchItem { link: link.into(), status, resource: None, tombstone: None, error: Some("no such row".into()) }
    }

    #[test]
    fn batch_answers_are_matched_to_links() {
        let resource = Resource { table: "obs".into(), category: "observation".into(), key: "o1".into(), columns: Default::default(), hash: "sha256:x".into() };
        let tombstone = Tombstone { table: "obs".into(), category: "observation".into(), key: "o2".into(), deleted: true, deleted_at: "t".into() };
        let items = vec![
            BatchItem { link: "l1".into(), status: 200, resource: Some(resource.clone()), tombstone: None, error: None },
            BatchItem { link: "l2".into(), status: 410, resource: None, tombstone: Some(tombstone.clone()), error: None },
            item("l3", 404),
            item("other", 200),
        ];
        let body = serde_json::to_vec(&BatchResponse { resources: items }).unwrap();
        let answers = batch_answers("http://h/b", &["l1", "l2", "l3", "l4"], &body);
        assert_eq!(answers[0], Fetched::Resource(resource));
        assert_eq!(answers[1], Fetched::Deleted(tombstone));
        assert!(matches!(&answers[2], Fetched::Failed { link, reason, retryable: false } if link == "l3" && reason.contains("404") && reason.contains("no such row")));
        assert!(matches!(&answers[3], Fetched::Failed { link, reason, .. } if link == "l4" && reason.contains("\"other\"")));

        let short = batch_answers("http://h/b", &["l1", "l2"], &serde_json::to_vec(&BatchResponse { resources: vec![item("l1", 404)] }).unwrap());
        assert!(short.iter().all(|f| matches!(f, Fetched::Failed { reason, .. } if reason.contains("1 items for 2 links"))));
        let garbage = batch_answers("http://h/b", &["l1"], b"<html>oops</html>");
        assert!(matches!(&garbage[0], Fetched::Failed { reason, retryable: false, .. } if reason.contains("not a batch response") && reason.contains("oops")));
    }

    #[test]
    fn single_answers_say_exactly_what_went_wrong() {
        assert!(matches!(single_answer("l", &response(200, "{garbage")), Fetched::Failed { reason, retryable: false, .. } if reason.contains("not with a resource")));
        assert!(matches!(single_answer("l", &response(410, "{}")), Fetched::Failed { reason, .. } if reason.contains("not with a tombstone")));
        let missing = single_answer("l", &response(404, r#"{"error":"no obs with identity \"x\" here","hint":"h","status":404}"#));
        assert!(matches!(&missing, Fetched::Failed { reason, retryable: false, .. } if reason.contains("404") && reason.contains("no obs with identity")), "{missing:?}");
    }
}
