//! The pooled client: one keep-alive connection pool, with a limit on everything that can grow
//! or hang (body size before and after gzip, time per request, redirects, retries). Facility
//! links are slow and servers misbehave; nothing a server sends may panic the caller, exhaust
//! its memory or stall it forever.
//!
//! Two ways to ask: [`HttpClient::get`] / [`HttpClient::post_json`] for callers that want a 2xx
//! answer (redirects followed, idempotent requests retried, any other status an error), and
//! [`HttpClient::send_once`] for callers that want the exchange as it happened (one request
//! with their method and headers, no redirect followed, no retry, every status an answer).

use std::io::Read;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Serialize;
use url::Url;

use crate::error::{ClientError, error_chain, status_error};
use crate::tls::{self, ClientTls};

/// Sent with every request unless [`HttpClient::with_user_agent`] names the program.
pub const USER_AGENT: &str = "feedsync";

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
    /// Links named in one batch-fetch request ([`HttpClient::fetch_resources`]). The publisher
    /// accepts up to 1,000; 200 keeps each answer a few hundred KiB, so a cut connection loses
    /// little.
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
    /// The `Content-Encoding` the body arrived in and was decoded from (`gzip`); `None` when it
    /// arrived plain, or was kept as sent ([`Request::keep_answer_bytes`]).
    pub decoded_from: Option<String>,
}

/// A request for [`HttpClient::send_once`]: any method, the caller's headers, an optional
/// body. Headers given here win over the client's own (`User-Agent`, `Content-Type:
/// application/json` for a body, `Content-Encoding: gzip` for a gzip body, credentials);
/// `Accept-Encoding` is sent only if given.
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    url: String,
    headers: HeaderMap,
    /// A header that could not be added, reported when the request is sent.
    invalid: Option<String>,
    body: Option<Bytes>,
    answer_bytes_kept_max: Option<usize>,
}

impl Request {
    pub fn new(method: &str, url: &str) -> Request {
        Request { method: method.to_owned(), url: url.to_owned(), headers: HeaderMap::new(), invalid: None, body: None, answer_bytes_kept_max: None }
    }

    /// Adds a header (a repeated name is sent repeatedly). Its value never reaches a log line.
    pub fn header(mut self, name: &str, value: &str) -> Request {
        match (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            (Ok(name), Ok(mut value)) => {
                value.set_sensitive(true);
                self.headers.append(name, value);
            }
            (Err(e), _) => self.invalid = Some(format!("header name {name:?}: {e}")),
            (_, Err(e)) => self.invalid = Some(format!("header {name} has an invalid value: {e}")),
        }
        self
    }

    /// Adds every header of `headers`.
    pub fn headers(mut self, headers: &HeaderMap) -> Request {
        for (name, value) in headers {
            self.headers.append(name, value.clone());
        }
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Request {
        self.body = Some(body.into());
        self
    }

    /// Reads at most `bytes` of the answer's body and drops the rest instead of refusing the
    /// answer: for answers read only to be quoted in a message. Such a body is kept as sent
    /// (never decoded), so its headers still describe it.
    pub fn keep_answer_bytes(mut self, bytes: usize) -> Request {
        self.answer_bytes_kept_max = Some(bytes);
        self
    }
}

/// How much of an answer's body is read.
#[derive(Debug, Clone, Copy)]
enum BodyLimit {
    /// Over this many bytes (also once decompressed) the answer is refused.
    Refuse(usize),
    /// Keep this many bytes as sent and drop the rest.
    Truncate(usize),
}

/// The pooled client. Cloning is cheap and shares the pool.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    limits: ClientLimits,
    /// What https servers must prove, and whether plain http may leave this machine.
    tls: ClientTls,
    /// `Basic ...` or `Bearer ...`, sent only to the origin of the URL a request was made for.
    authorization: Option<HeaderValue>,
    /// When not empty, the only origins the credentials go to (the feeds' own servers): a link
    /// a feed names on another host never receives them.
    credential_origins: Vec<url::Origin>,
    user_agent: HeaderValue,
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
    /// A client with this process's trust ([`tls::install`]; the system's roots when nothing
    /// was installed).
    pub fn new(limits: ClientLimits) -> HttpClient {
        let tls = tls::installed();
        let inner = pooled(&limits, &tls);
        HttpClient { inner, limits, tls, authorization: None, credential_origins: Vec::new(), user_agent: HeaderValue::from_static(USER_AGENT) }
    }

    /// Uses `tls` instead of the process's trust (a new pool).
    pub fn with_tls(mut self, tls: ClientTls) -> HttpClient {
        self.inner = pooled(&self.limits, &tls);
        self.tls = tls;
        self
    }

    /// Names the program in `User-Agent`, so a server's log shows who is asking.
    pub fn with_user_agent(mut self, user_agent: &'static str) -> HttpClient {
        self.user_agent = HeaderValue::from_static(user_agent);
        self
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

    /// Sends the credentials only to the origins (scheme, host, port) of `urls`, e.g. the feeds
    /// being followed: a resource link, redirect or anything else a server names elsewhere is
    /// fetched without them. URLs that do not parse are left out (so they never match).
    pub fn with_credentials_only_to<S: AsRef<str>>(mut self, urls: &[S]) -> HttpClient {
        self.credential_origins = urls.iter().filter_map(|u| Url::parse(u.as_ref()).ok()).map(|u| u.origin()).collect();
        self
    }

    /// The credentials for a request to `url`, if they may go there.
    fn authorization_for(&self, url: &Url) -> Option<&HeaderValue> {
        let allowed = self.credential_origins.is_empty() || self.credential_origins.contains(&url.origin());
        self.authorization.as_ref().filter(|_| allowed)
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
        let response = self.send(Method::POST, &self.parse_url(url)?, Some(bytes)).await?;
        if is_success(response.status) { Ok(response) } else { Err(status_error(&response)) }
    }

    /// Like [`HttpClient::post_json`], with the body gzip-compressed (`Content-Encoding:
    /// gzip`), for servers that accept it (a feed-publisher's network routes do). Not retried.
    pub async fn post_json_gzip<T: Serialize + ?Sized>(&self, url: &str, body: &T) -> Result<HttpResponse, ClientError> {
        let plain = encode_json(url, body)?;
        let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(plain.len() / 4), flate2::Compression::default());
        std::io::Write::write_all(&mut encoder, &plain).expect("writing to memory");
        let bytes = Bytes::from(encoder.finish().expect("writing to memory"));
        let response = self.send(Method::POST, &self.parse_url(url)?, Some(bytes)).await?;
        if is_success(response.status) { Ok(response) } else { Err(status_error(&response)) }
    }

    /// One exchange as the caller built it: no redirect followed, no retry, and every status
    /// is an answer (a 404 or a 308 is returned, not turned into an error). Errors are only
    /// what kept an answer from arriving whole, within the limits. For tests that look at
    /// what a server says, and for POSTs whose caller keeps its own retry policy.
    pub async fn send_once(&self, request: Request) -> Result<HttpResponse, ClientError> {
        let Request { method, url, headers, invalid, body, answer_bytes_kept_max } = request;
        if let Some(message) = invalid {
            return Err(ClientError::Request { url, message });
        }
        let method = Method::from_bytes(method.as_bytes()).map_err(|e| ClientError::Request { url: url.clone(), message: format!("method {method:?}: {e}") })?;
        let parsed = self.parse_url(&url)?;
        let limit = match answer_bytes_kept_max {
            Some(bytes) => BodyLimit::Truncate(bytes),
            None => BodyLimit::Refuse(self.limits.response_bytes_max),
        };
        self.exchange(&method, &parsed, headers, body, self.authorization_for(&parsed), limit).await
    }

    /// Sends until a status `accepted` takes, retrying retryable failures with capped
    /// exponential backoff. Only for requests that are safe to repeat.
    pub(crate) async fn send_with_retries(
        &self,
        method: Method,
        url: &str,
        body: Option<Bytes>,
        accepted: impl Fn(StatusCode) -> bool,
    ) -> Result<HttpResponse, ClientError> {
        let parsed = self.parse_url(url)?;
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
            let authorization = self.authorization_for(&current).filter(|_| current.origin() == origin);
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
            let limit = BodyLimit::Refuse(self.limits.response_bytes_max);
            let response = self.exchange(&method, &current, headers, body.clone(), authorization, limit).await?;
            let Some(location) = redirect_location(&method, &response) else { return Ok(response) };
            let next = current.join(&location).map_err(|e| ClientError::BadRedirect {
                url: current.to_string(),
                reason: format!("Location {location:?} is not a URL ({e})"),
            })?;
            if redirects >= self.limits.redirects_max {
                return Err(ClientError::TooManyRedirects { url: url.to_string(), redirects_max: self.limits.redirects_max, location: next.to_string() });
            }
            self.check_scheme(&next).map_err(|reason| ClientError::BadRedirect { url: current.to_string(), reason })?;
            tracing::debug!(from = %current, to = %next, "following redirect");
            redirects += 1;
            current = next;
        }
    }

    /// One HTTP exchange under the request timeout: send, then read the body within `limit`.
    async fn exchange(
        &self,
        method: &Method,
        url: &Url,
        mut headers: HeaderMap,
        body: Option<Bytes>,
        authorization: Option<&HeaderValue>,
        limit: BodyLimit,
    ) -> Result<HttpResponse, ClientError> {
        headers.entry(header::USER_AGENT).or_insert_with(|| self.user_agent.clone());
        if let Some(value) = authorization {
            headers.entry(header::AUTHORIZATION).or_insert_with(|| value.clone());
        }
        if let Some(bytes) = &body {
            headers.entry(header::CONTENT_TYPE).or_insert_with(|| HeaderValue::from_static("application/json"));
            // JSON never starts with gzip's magic bytes, so they mark a compressed body.
            if bytes.starts_with(&[0x1f, 0x8b]) {
                headers.entry(header::CONTENT_ENCODING).or_insert_with(|| HeaderValue::from_static("gzip"));
            }
        }
        let mut request = hyper::Request::builder()
            .method(method.clone())
            .uri(url.as_str())
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| ClientError::Request { url: url.to_string(), message: e.to_string() })?;
        *request.headers_mut() = headers;
        let timeout_ms = self.limits.request_timeout_ms;
        let exchange = async {
            let response = self.inner.request(request).await.map_err(|e| transport_error(url, &e))?;
            read_response(url, response, limit).await
        };
        tokio::time::timeout(Duration::from_millis(timeout_ms), exchange)
            .await
            .map_err(|_| ClientError::Timeout { url: url.to_string(), timeout_ms })?
    }

    fn parse_url(&self, url: &str) -> Result<Url, ClientError> {
        let parsed = Url::parse(url).map_err(|e| ClientError::BadUrl { url: url.to_owned(), reason: e.to_string() })?;
        self.check_scheme(&parsed).map_err(|reason| ClientError::BadUrl { url: url.to_owned(), reason })?;
        Ok(parsed)
    }

    /// https anywhere; plain http only to this machine, unless the operator allowed it.
    fn check_scheme(&self, url: &Url) -> Result<(), String> {
        match url.scheme() {
            "https" => Ok(()),
            "http" if tls::plain_http_allowed(url, self.tls.insecure_http) => Ok(()),
            "http" => Err(format!(
                "plain http to another machine ({}) would carry tokens and patient data in clear: use https (the server needs --tls-cert/--tls-key), \
                 or pass --insecure-http (or set {}=1) on a network you trust",
                url.host_str().unwrap_or("?"),
                tls::INSECURE_HTTP_ENV
            )),
            other => Err(format!("scheme {other:?} is neither https nor http")),
        }
    }
}

/// One keep-alive pool speaking https, and http where [`HttpClient::check_scheme`] lets it.
fn pooled(limits: &ClientLimits, tls: &ClientTls) -> Client<HttpsConnector<HttpConnector>, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_millis(limits.request_timeout_ms)));
    connector.set_nodelay(true);
    connector.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*tls.config).clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_millis(POOL_IDLE_TIMEOUT_MS))
        .pool_timer(TokioTimer::new())
        .build(connector)
}

pub(crate) fn is_success(status: StatusCode) -> bool {
    status.is_success()
}

pub(crate) fn encode_json<T: Serialize + ?Sized>(url: &str, body: &T) -> Result<Bytes, ClientError> {
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
    let message = error_chain(e);
    if let Some(explained) = tls::explain_handshake(url, &message) {
        return ClientError::Tls { url: url.to_string(), message: explained };
    }
    if e.is_connect() {
        ClientError::Connect { url: url.to_string(), message }
    } else {
        ClientError::Transport { url: url.to_string(), message }
    }
}

/// Reads the body within `limit`: refused as soon as it passes the limit (by its declared
/// length, while streaming, and after gzip decoding), or cut there.
async fn read_response(url: &Url, response: hyper::Response<hyper::body::Incoming>, limit: BodyLimit) -> Result<HttpResponse, ClientError> {
    let (parts, mut body) = response.into_parts();
    let mut headers = parts.headers;
    let limit_bytes = match limit {
        BodyLimit::Truncate(keep_bytes) => {
            let mut bytes = Vec::new();
            // A cut answer is for a message only: a broken body is as good as a short one.
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    let room = keep_bytes - bytes.len();
                    bytes.extend_from_slice(&data[..data.len().min(room)]);
                    if bytes.len() == keep_bytes {
                        break;
                    }
                }
            }
            return Ok(HttpResponse { status: parts.status, headers, body: Bytes::from(bytes), url: url.to_string(), decoded_from: None });
        }
        BodyLimit::Refuse(limit_bytes) => limit_bytes,
    };
    let too_large = |decompressed| ClientError::TooLarge { url: url.to_string(), limit_bytes, decompressed };
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
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
    let encoding = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).map(|v| v.trim().to_ascii_lowercase());
    let (body, decoded_from) = match encoding.as_deref() {
        None | Some("") | Some("identity") => (Bytes::from(bytes), None),
        Some(gzip @ ("gzip" | "x-gzip")) => {
            let decoded = gunzip(&bytes, limit_bytes).map_err(|e| match e {
                GunzipError::TooLarge => too_large(true),
                GunzipError::Corrupt(message) => ClientError::Decode { url: url.to_string(), message: format!("bad gzip body: {message}") },
            })?;
            headers.remove(header::CONTENT_ENCODING);
            headers.remove(header::CONTENT_LENGTH);
            (Bytes::from(decoded), Some(gzip.to_owned()))
        }
        Some(other) => {
            return Err(ClientError::Decode { url: url.to_string(), message: format!("Content-Encoding {other:?} was not asked for (only gzip is)") });
        }
    };
    Ok(HttpResponse { status: parts.status, headers, body, url: url.to_string(), decoded_from })
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

/// Standard base64 with padding, for the basic-auth header: a dependency for 15 lines is not
/// worth it.
pub fn base64(input: &[u8]) -> String {
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
    use crate::error::tests::response;
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
    fn retry_delay_doubles_up_to_the_cap() {
        let limits = ClientLimits { retry_delay_ms_first: 500, retry_delay_ms_max: 5_000, ..ClientLimits::default() };
        let delays: Vec<u64> = (0..6).map(|attempt| retry_delay_ms(&limits, attempt)).collect();
        assert_eq!(delays, [500, 1_000, 2_000, 4_000, 5_000, 5_000]);
        assert_eq!(retry_delay_ms(&limits, 200), 5_000, "no overflow");
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

    #[test]
    fn requests_report_bad_headers_when_sent() {
        let request = Request::new("POST", "http://h/x").header("bad name", "v");
        assert!(request.invalid.as_deref().is_some_and(|m| m.contains("bad name")));
        let request = Request::new("GET", "http://h/x").header("x-a", "1").header("x-a", "2");
        assert_eq!(request.headers.get_all("x-a").iter().count(), 2, "repeated names are kept");
    }
}
