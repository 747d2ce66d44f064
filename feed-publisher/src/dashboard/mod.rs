//! The parent's web dashboard and its admin JSON API: the network at a glance (each child's
//! last contact, what waits in each direction and since when, held changes, conflicts,
//! catchment), a child's page (rounds, USB transfers, commands), held changes with retry and
//! skip, conflicts side by side with resolve, patient search across the network, a feed
//! browser and the audit log.
//!
//! The pages are three static files (`assets/dashboard/`), embedded in the binary so nothing
//! is fetched from the internet; they call the JSON routes under [`ADMIN_PATH`]. Everything
//! an operator does here is written to `feedsync_audit` with the actor [`AUDIT_ACTOR`].
//!
//! Access ([`check_access`]): without `FEEDSYNC_ADMIN_TOKEN` only this machine may use the
//! dashboard (a loopback peer, a loopback `Host`, no proxy headers); with it, every client must
//! show the token (`Authorization: Bearer`, or the cookie `/dashboard/login` sets). Actions are
//! POSTs with a JSON body, which a page on another site cannot send without this server's
//! consent, so a browser visiting a hostile page cannot act on the operator's behalf.
//!
//! Rounds history: a child's report keeps only its latest round, so this module keeps its own
//! bounded history in [`ROUND_TABLE`], a row each time it sees a report it has not seen
//! before (when the overview or a child's page is computed).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode};
use serde::Serialize;
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};

use feedsync_node::capture::{self, EVENT_TABLE, JOURNAL_TABLE};
use feedsync_wire::hex;
use feedsync_db::{Dialect, Session, Value};
use feedsync_core::alerts::{self, AlertsConfig, ChildFacts, Problem, QUEUE_PENDING_PUSH, QUEUE_WAITING_TO_CHILD, describe_age, plural};
use feedsync_node::clock::{age_s, db_now, parse_time};
use crate::status;
use feedsync_node::exchange::{self, AUDIT_TABLE, CATCHMENT_TABLE, COMMAND_TABLE, CONFLICT_TABLE, INBOX_TABLE, PEER_PARENT, Receiver, ResolveError, Take};
use feedsync_wire::network::{CommandAction, Conflict, HeldItem, RoundSummary};
use feedsync_core::merge::Side;
use feedsync_node::lookup::LookupCache;
use feedsync_node::search;

use feedsync_node::parent::{self as network, AdminError, Child};
use crate::server::{App, HttpError, PeerAddr, Reply, read_body};

pub const DASHBOARD_PATH: &str = "/dashboard";
pub const ADMIN_PATH: &str = "/ws/feedsync/admin";
const LOGIN_PATH: &str = "/dashboard/login";
const LOGOUT_PATH: &str = "/dashboard/logout";
/// When set (and not empty), every dashboard request must carry this token.
pub const ADMIN_TOKEN_ENV: &str = "FEEDSYNC_ADMIN_TOKEN";
/// The cookie `/dashboard/login` sets: a digest of the token, never the token itself.
pub const COOKIE_NAME: &str = "feedsync_admin";
/// How long a login lasts.
const COOKIE_MAX_AGE_S: i64 = 12 * 3600;
/// The actor of every audit row an operator's action here writes.
pub const AUDIT_ACTOR: &str = "dashboard";
/// This module's own table (reserved prefix; `uninstall` drops it with the others).
pub const ROUND_TABLE: &str = "feedsync_dashboard_round";
/// Rounds kept per child; older ones are deleted as new ones are recorded.
pub const ROUNDS_PER_CHILD_MAX: i64 = 200;
/// Journal rows older than this mean the sequencer is not keeping up.
const JOURNAL_STALL_S: i64 = 300;
/// Rounds read per child for trends (growth, how long pushes have been pending).
const TREND_ROUNDS_MAX: i64 = 20;
/// Items listed per list; totals are always given.
const HELD_LISTED_MAX: i64 = 500;
const CONFLICTS_LISTED_MAX: i64 = 200;
const AUDIT_LISTED_MAX: i64 = 500;
const USB_LISTED_MAX: i64 = 200;
const COMMANDS_LISTED_MAX: i64 = 100;
/// Largest action body accepted.
const ACTION_BODY_BYTES_MAX: usize = 64 * 1024;
/// Longest skip reason kept.
const REASON_CHARS_MAX: usize = 1_000;

const INDEX_HTML: &str = include_str!("../../assets/dashboard/index.html");
const APP_CSS: &str = include_str!("../../assets/dashboard/app.css");
const APP_JS: &str = include_str!("../../assets/dashboard/app.js");

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

const ROUTES_HINT: &str = "admin routes: GET overview, children/{name}, held, conflicts, patients?q=, audit; POST held/{id}/retry|skip, \
     conflicts/{id}/resolve, children/{name}/held/{id}/retry|skip, children/{name}/conflicts/{id}/resolve";

/// Whether `path` (without the configured prefix) is the dashboard's.
pub fn handles(path: &str) -> bool {
    path == DASHBOARD_PATH || path.starts_with("/dashboard/") || path == ADMIN_PATH || path.starts_with("/ws/feedsync/admin/")
}

// ---- access ----

/// How a request was let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// From this machine, no token configured.
    Loopback,
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// The login cookie.
    Cookie,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
    pub hint: &'static str,
}

const LOOPBACK_HINT: &str = "open the dashboard on the parent itself (http://127.0.0.1:PORT/dashboard/) or through an SSH tunnel; \
     to open it from elsewhere, start `feed-publisher serve` with FEEDSYNC_ADMIN_TOKEN set and log in at /dashboard/login";
const TOKEN_HINT: &str = "log in at /dashboard/login with the value of FEEDSYNC_ADMIN_TOKEN, or send Authorization: Bearer <that value>";

/// Decides whether a request may use the dashboard. Pure: the caller passes the peer address
/// (`None` when unknown), the headers and the configured token (`None` or empty: not set).
pub fn check_access(peer: Option<SocketAddr>, headers: &HeaderMap, admin_token: Option<&str>) -> Result<Access, Refusal> {
    if let Some(token) = admin_token.filter(|t| !t.trim().is_empty()) {
        let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
        if let Some(offered) = bearer
            && exchange::hashes_equal(&exchange::token_hash(offered), &exchange::token_hash(token))
        {
            return Ok(Access::Bearer);
        }
        if let Some(cookie) = cookie_value(headers, COOKIE_NAME)
            && exchange::hashes_equal(&cookie, &cookie_for(token))
        {
            return Ok(Access::Cookie);
        }
        let message = if bearer.is_some() || cookie_value(headers, COOKIE_NAME).is_some() {
            "the admin token was not accepted"
        } else {
            "the dashboard needs the admin token (FEEDSYNC_ADMIN_TOKEN is set on this server)"
        };
        return Err(Refusal { message: message.into(), hint: TOKEN_HINT });
    }
    let Some(peer) = peer else {
        return Err(Refusal { message: "the dashboard could not tell where this request came from".into(), hint: LOOPBACK_HINT });
    };
    if !peer.ip().to_canonical().is_loopback() {
        return Err(Refusal {
            message: format!("the dashboard answers only this machine without a token; this request came from {}", peer.ip()),
            hint: LOOPBACK_HINT,
        });
    }
    // A proxy on this machine makes every client look local: its requests need the token.
    for name in ["forwarded", "x-forwarded-for", "x-real-ip"] {
        if headers.contains_key(name) {
            return Err(Refusal {
                message: format!("this request came through a proxy ({name} header); without a token only direct local requests are served"),
                hint: LOOPBACK_HINT,
            });
        }
    }
    // A hostile web page can point its own host name at 127.0.0.1 (DNS rebinding); the Host it
    // sends then names that site, not this machine.
    if let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok())
        && !is_loopback_host(host)
    {
        return Err(Refusal { message: format!("Host {host:?} is not a name of this machine"), hint: LOOPBACK_HINT });
    }
    Ok(Access::Loopback)
}

fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else if host.matches(':').count() == 1 {
        host.split(':').next().unwrap_or_default()
    } else {
        host
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// The cookie value for a token: a digest, so the token itself is not kept by the browser.
pub fn cookie_for(token: &str) -> String {
    hex(&Sha256::digest(format!("feedsync-dashboard-cookie:{token}").as_bytes()))
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_owned())
}

fn admin_token() -> Option<String> {
    std::env::var(ADMIN_TOKEN_ENV).ok().filter(|t| !t.trim().is_empty())
}

/// Actions must be POSTs of JSON: a form on another site cannot send that content type (and
/// a script there would need this server's CORS consent, never given). Without a token, an
/// `Origin` naming another site is refused too; with one, the login cookie is `SameSite=Strict`
/// and a TLS proxy in front may rewrite `Host`, so `Origin` is not compared.
fn check_action_request(headers: &HeaderMap, access: Access) -> Result<(), HttpError> {
    let json =
        headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/json"));
    if !json {
        return Err(HttpError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "dashboard actions take a JSON body",
            "send Content-Type: application/json (the dashboard's pages do)",
        ));
    }
    if access == Access::Loopback
        && let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())
    {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest).trim_end_matches('/');
        if !origin_host.eq_ignore_ascii_case(host) {
            return Err(HttpError::new(
                StatusCode::FORBIDDEN,
                format!("an action from another site ({origin}) was refused"),
                "act from the dashboard's own pages",
            ));
        }
    }
    Ok(())
}

// ---- routing ----

fn with_security_headers(reply: Reply) -> Reply {
    reply
        .with_header(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"))
        .with_header(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"))
        .with_header(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"))
        .with_header(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY))
}

fn asset(content_type: &'static str, body: &'static str) -> Reply {
    with_security_headers(Reply::new(StatusCode::OK, content_type, Bytes::from_static(body.as_bytes())))
}

fn api_json(value: &impl Serialize) -> Reply {
    let body = serde_json::to_vec(value).expect("replies serialize");
    // Patient names and identifiers: not to be kept in caches.
    with_security_headers(Reply::json(StatusCode::OK, body, false)).with_header(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))
}

fn redirect(status: StatusCode, location: &str) -> Reply {
    let value = HeaderValue::from_str(location).unwrap_or_else(|_| HeaderValue::from_static("/dashboard/"));
    with_security_headers(Reply::new(status, HTML, Bytes::new()).no_etag()).with_header(header::LOCATION, value)
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// A small page (refusal, login) that works without the dashboard's script.
fn plain_page(status: StatusCode, prefix: &str, title: &str, message: &str, hint: &str, login_form: bool) -> Reply {
    let prefix = escape_html(prefix);
    let form = if login_form {
        format!(
            "<form method=\"post\" action=\"{prefix}{LOGIN_PATH}\"><p><label for=\"token\">Admin token (FEEDSYNC_ADMIN_TOKEN)</label><br>\
             <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required></p>\
             <p><button type=\"submit\" data-testid=\"login\">Log in</button></p></form>"
        )
    } else {
        String::new()
    };
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} - feedsync dashboard</title><link rel=\"stylesheet\" href=\"{prefix}/dashboard/app.css\"></head>\
         <body><main class=\"narrow\"><h1>{title}</h1><p role=\"alert\" data-testid=\"refusal\">{}</p><p>{}</p>{form}</main></body></html>\n",
        escape_html(message),
        escape_html(hint),
        title = escape_html(title),
    );
    with_security_headers(Reply::new(status, HTML, Bytes::from(body)).no_etag()).with_header(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))
}

/// Serves `/dashboard...` and `/ws/feedsync/admin/...` (`path` is without the configured prefix).
pub(crate) async fn route(app: &App, request: Request<Incoming>, path: &str) -> Result<Reply, HttpError> {
    let prefix = app.config.server.path_prefix.clone();
    let method = request.method().clone();
    // The stylesheet holds no data; the refusal and login pages use it.
    if path == "/dashboard/app.css" {
        require_read(&method)?;
        return Ok(asset(CSS, APP_CSS));
    }
    let peer = request.extensions().get::<PeerAddr>().map(|p| p.0);
    if path == LOGIN_PATH {
        return login(app, request, peer, &prefix).await;
    }
    if path == LOGOUT_PATH {
        let cookie = format!("{COOKIE_NAME}=; Path={}/; Max-Age=0; HttpOnly; SameSite=Strict", prefix);
        return Ok(redirect(StatusCode::SEE_OTHER, &format!("{prefix}{LOGIN_PATH}"))
            .with_header(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("ascii cookie")));
    }
    let token = admin_token();
    let access = match check_access(peer, request.headers(), token.as_deref()) {
        Ok(access) => access,
        Err(refusal) => {
            tracing::warn!(peer = ?peer, path, reason = %refusal.message, "dashboard request refused");
            if path.starts_with(DASHBOARD_PATH) {
                return Ok(plain_page(StatusCode::FORBIDDEN, &prefix, "Not allowed", &refusal.message, refusal.hint, token.is_some()));
            }
            return Err(HttpError::new(StatusCode::FORBIDDEN, refusal.message, refusal.hint));
        }
    };
    match path {
        DASHBOARD_PATH => return Ok(redirect(StatusCode::PERMANENT_REDIRECT, &format!("{prefix}/dashboard/"))),
        "/dashboard/" | "/dashboard/index.html" => {
            require_read(&method)?;
            return Ok(asset(HTML, INDEX_HTML));
        }
        "/dashboard/app.js" => {
            require_read(&method)?;
            return Ok(asset(JAVASCRIPT, APP_JS));
        }
        _ => {}
    }
    let Some(rest) = path.strip_prefix(ADMIN_PATH) else {
        return Err(HttpError::new(StatusCode::NOT_FOUND, format!("no such path {path}"), "the dashboard is at /dashboard/"));
    };
    let query: BTreeMap<String, String> = request.uri().query().map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
    let segments: Vec<String> = rest.split('/').filter(|s| !s.is_empty()).map(str::to_owned).collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let body = if method == Method::POST {
        check_action_request(request.headers(), access)?;
        read_json(request).await?
    } else {
        require_read(&method)?;
        Json::Null
    };
    let mut session = app.database.session().await?;
    let post = method == Method::POST;
    match (post, segments.as_slice()) {
        (false, ["overview"]) => Ok(api_json(&overview(&mut session, &query, &app.config.alerts).await?)),
        (false, ["children", name]) => Ok(api_json(&child_page(&mut session, name, &query, &app.config.alerts).await?)),
        (false, ["held"]) => Ok(api_json(&held_page(&mut session, query.get("child").map(String::as_str)).await?)),
        (false, ["conflicts"]) => Ok(api_json(&conflicts_page(&mut session, query.get("all").is_some_and(|v| v == "1" || v == "true")).await?)),
        (false, ["patients"]) => Ok(api_json(&patients(&mut session, &query).await?)),
        (false, ["audit"]) => Ok(api_json(&audit_page(&mut session, &query).await?)),
        (true, ["held", id, "retry"]) => Ok(api_json(&retry_held_here(app, &mut session, number(id)?).await?)),
        (true, ["held", id, "skip"]) => Ok(api_json(&skip_held_here(&mut session, number(id)?, &body).await?)),
        (true, ["conflicts", id, "resolve"]) => Ok(api_json(&resolve_here(app, &mut session, number(id)?, &body).await?)),
        (true, ["children", name, "held", id, action @ ("retry" | "skip")]) => {
            let id = number(id)?;
            let command = if *action == "retry" {
                CommandAction::RetryHeld { held_id: id }
            } else {
                CommandAction::SkipHeld { held_id: id, reason: required_reason(&body)? }
            };
            Ok(api_json(&queue(&mut session, name, &command).await?))
        }
        (true, ["children", name, "conflicts", id, "resolve"]) => {
            let (take, fields) = take_from(&body)?;
            let command = CommandAction::ResolveConflict { conflict_id: number(id)?, take, fields };
            Ok(api_json(&queue(&mut session, name, &command).await?))
        }
        (false, ["held", ..] | ["conflicts", ..] | ["children", _, "held" | "conflicts", ..]) => {
            Err(HttpError::new(StatusCode::METHOD_NOT_ALLOWED, "actions take POST", "POST with a JSON body, e.g. {\"reason\": \"...\"}"))
        }
        (true, ["overview" | "children" | "held" | "conflicts" | "patients" | "audit", ..]) if segments.len() <= 2 => {
            Err(HttpError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{rest} takes GET"), ROUTES_HINT))
        }
        _ => Err(HttpError::new(StatusCode::NOT_FOUND, format!("no admin route {rest}"), ROUTES_HINT)),
    }
}

fn require_read(method: &Method) -> Result<(), HttpError> {
    if method == Method::GET || method == Method::HEAD {
        Ok(())
    } else {
        Err(HttpError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed here"), "use GET"))
    }
}

fn number(text: &str) -> Result<i64, HttpError> {
    text.parse().map_err(|_| HttpError::new(StatusCode::NOT_FOUND, format!("{text:?} is not a number"), "ids are whole numbers, as the lists show them"))
}

async fn read_json(request: Request<Incoming>) -> Result<Json, HttpError> {
    let bytes = read_body(request, ACTION_BODY_BYTES_MAX, "send a smaller body").await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, format!("the body is not valid JSON: {e}"), "send a JSON object, e.g. {\"reason\": \"...\"}"))
}

fn required_reason(body: &Json) -> Result<String, HttpError> {
    let reason = body.get("reason").and_then(Json::as_str).map(str::trim).unwrap_or_default();
    if reason.is_empty() {
        return Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "a skip needs a reason",
            "send {\"reason\": \"why this change may be dropped\"}; the reason is kept in the audit log",
        ));
    }
    Ok(reason.chars().take(REASON_CHARS_MAX).collect())
}

/// `take` and `fields` of a resolve body, checked as `conflicts resolve` checks them.
fn take_from(body: &Json) -> Result<(String, Vec<String>), HttpError> {
    let take = body.get("take").and_then(Json::as_str).unwrap_or_default().to_owned();
    let fields: Vec<String> =
        body.get("fields").and_then(Json::as_array).map(|a| a.iter().filter_map(|f| f.as_str().map(str::to_owned)).collect()).unwrap_or_default();
    Take::parse(&take, &fields).map_err(|e| {
        HttpError::new(
            StatusCode::BAD_REQUEST,
            e,
            "send {\"take\": \"mine\"}, {\"take\": \"theirs\"} or {\"take\": \"fields\", \"fields\": [\"given_name=theirs\", ...]}",
        )
    })?;
    Ok((take, fields))
}

fn admin_error(e: AdminError) -> HttpError {
    match e {
        AdminError::Database(e) => e.into(),
        AdminError::Unknown(name) => HttpError::new(StatusCode::NOT_FOUND, format!("no child named {name:?}"), "the overview lists the registered children"),
        other => HttpError::new(StatusCode::BAD_REQUEST, other.to_string(), "see `feed-publisher child --help`"),
    }
}

// ---- login ----

async fn login(app: &App, request: Request<Incoming>, peer: Option<SocketAddr>, prefix: &str) -> Result<Reply, HttpError> {
    let Some(token) = admin_token() else {
        // Nothing to log in to: access is by where the request comes from.
        return Ok(redirect(StatusCode::SEE_OTHER, &format!("{prefix}/dashboard/")));
    };
    let mut offered: Option<String> =
        request.uri().query().and_then(|q| url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned()));
    if request.method() == Method::POST {
        let body = read_body(request, ACTION_BODY_BYTES_MAX, "send a smaller body").await?;
        offered = url::form_urlencoded::parse(&body).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned()).or(offered);
    }
    let Some(offered) = offered else {
        return Ok(plain_page(StatusCode::OK, prefix, "Log in", "This dashboard needs the admin token.", TOKEN_HINT, true));
    };
    if !exchange::hashes_equal(&exchange::token_hash(offered.trim()), &exchange::token_hash(&token)) {
        tracing::warn!(peer = ?peer, "dashboard login with a wrong token");
        return Ok(plain_page(StatusCode::FORBIDDEN, prefix, "Log in", "That token was not accepted.", TOKEN_HINT, true));
    }
    let mut session = app.database.session().await?;
    let from = peer.map_or_else(|| "an unknown address".to_owned(), |p| p.ip().to_string());
    exchange::audit(&mut session, AUDIT_ACTOR, "login", None, &format!("logged in from {from}")).await?;
    let cookie = format!("{COOKIE_NAME}={}; Path={prefix}/; Max-Age={COOKIE_MAX_AGE_S}; HttpOnly; SameSite=Strict", cookie_for(&token));
    Ok(redirect(StatusCode::SEE_OTHER, &format!("{prefix}/dashboard/")).with_header(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("ascii cookie")))
}

// ---- this module's table ----

fn round_ddl(dialect: Dialect) -> Vec<String> {
    match dialect {
        Dialect::MySql => vec![format!(
            "CREATE TABLE IF NOT EXISTS {ROUND_TABLE} (round_id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, child VARCHAR(64) NOT NULL, \
             reported_at VARCHAR(32) NOT NULL, observed_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3), summary TEXT NOT NULL, \
             UNIQUE KEY feedsync_dashboard_round_report (child, reported_at), KEY feedsync_dashboard_round_child (child, round_id)\
             ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        )],
        Dialect::Sqlite => vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {ROUND_TABLE} (round_id INTEGER PRIMARY KEY AUTOINCREMENT, child TEXT NOT NULL, reported_at TEXT NOT NULL, \
                 observed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')), summary TEXT NOT NULL)"
            ),
            format!("CREATE UNIQUE INDEX IF NOT EXISTS feedsync_dashboard_round_report ON {ROUND_TABLE} (child, reported_at)"),
            format!("CREATE INDEX IF NOT EXISTS feedsync_dashboard_round_child ON {ROUND_TABLE} (child, round_id)"),
        ],
    }
}

/// Creates the dashboard's table; run once when the server starts ([`crate::server::App::new`]).
pub(crate) async fn prepare(session: &mut Session) -> Result<(), feedsync_db::DbError> {
    for ddl in round_ddl(session.dialect()) {
        session.execute_script(&ddl).await?;
    }
    Ok(())
}

/// One round as this module keeps it: the child's round summary plus the queues seen when the
/// report was observed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RoundRecord {
    pub round: RoundSummary,
    pub pending_push: i64,
    pub pull_after: i64,
    pub held_at_child: i64,
    pub open_conflicts_at_child: i64,
    pub held_at_parent: i64,
    pub waiting_to_child: i64,
    pub done_commands: usize,
}

impl RoundRecord {
    /// Everything waiting between the two sides, whichever direction.
    pub fn queued(&self) -> i64 {
        self.pending_push + self.held_at_child + self.held_at_parent + self.waiting_to_child
    }
}

#[derive(Debug, Clone, Serialize)]
struct RecordedRound {
    reported_at: String,
    observed_at: String,
    #[serde(flatten)]
    record: RoundRecord,
}

async fn record_round(session: &mut Session, child: &str, reported_at: &str, record: &RoundRecord) -> Result<(), HttpError> {
    let insert = format!("{} INTO {ROUND_TABLE} (child, reported_at, summary) VALUES (?, ?, ?)", feedsync_db::insert_ignore(session.dialect()));
    let summary = serde_json::to_string(record).expect("records serialize");
    if session.execute(&insert, &[child.into(), reported_at.into(), summary.into()]).await? == 0 {
        return Ok(());
    }
    // Bounded: the oldest beyond the limit go.
    let cutoff = session
        .query(&format!("SELECT round_id FROM {ROUND_TABLE} WHERE child = ? ORDER BY round_id DESC LIMIT 1 OFFSET {ROUNDS_PER_CHILD_MAX}"), &[child.into()])
        .await?
        .first()
        .and_then(|r| r.i64("round_id"));
    if let Some(cutoff) = cutoff {
        session.execute(&format!("DELETE FROM {ROUND_TABLE} WHERE child = ? AND round_id <= ?"), &[child.into(), Value::Int(cutoff)]).await?;
    }
    Ok(())
}

async fn last_recorded(session: &mut Session) -> Result<HashMap<String, String>, HttpError> {
    Ok(session
        .query(&format!("SELECT child, MAX(reported_at) AS last FROM {ROUND_TABLE} GROUP BY child"), &[])
        .await?
        .iter()
        .filter_map(|r| Some((r.text("child")?, r.text("last")?)))
        .collect())
}

async fn recent_rounds(session: &mut Session, child: &str, limit: i64) -> Result<Vec<RecordedRound>, HttpError> {
    Ok(session
        .query(&format!("SELECT reported_at, observed_at, summary FROM {ROUND_TABLE} WHERE child = ? ORDER BY round_id DESC LIMIT {limit}"), &[child.into()])
        .await?
        .iter()
        .map(|r| RecordedRound {
            reported_at: r.text("reported_at").unwrap_or_default(),
            observed_at: r.text("observed_at").unwrap_or_default(),
            record: r.text("summary").and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default(),
        })
        .collect())
}

/// When the child's pushes started waiting: the oldest of the latest unbroken run of rounds
/// that ended with changes still to push (newest first in). `None` when none wait.
fn pending_since(rounds_newest_first: &[RecordedRound]) -> Option<String> {
    let mut since = None;
    for round in rounds_newest_first {
        if round.record.pending_push <= 0 {
            break;
        }
        since = Some(round.reported_at.clone());
    }
    since
}

#[derive(Debug, Clone, Serialize)]
struct DashboardChild {
    name: String,
    revoked: bool,
    revoked_at: Option<String>,
    created_at: String,
    all_patients: bool,
    categories: Vec<String>,
    last_contact: Option<String>,
    last_contact_age_s: Option<i64>,
    reported_at: Option<String>,
    /// Parent → child: events the child has not received yet.
    waiting_to_child: i64,
    oldest_to_child_at: Option<String>,
    oldest_to_child_age_s: Option<i64>,
    /// Child → parent: the child's own events not acknowledged, as of its last report.
    pending_push: Option<i64>,
    /// Since when (at least) the child has had changes left to push, or the oldest change it
    /// pushed that is held here.
    oldest_from_child_at: Option<String>,
    oldest_from_child_age_s: Option<i64>,
    /// The older of the two directions.
    oldest_waiting_age_s: Option<i64>,
    held_at_parent: i64,
    held_at_child: Option<i64>,
    conflicts_at_parent: i64,
    conflicts_at_child: Option<i64>,
    catchment_patients: i64,
    last_round: Option<RoundSummary>,
    /// Queued totals of the recent rounds, oldest first.
    queued_history: Vec<i64>,
    problems: Vec<Problem>,
}

struct Context {
    now: String,
    /// The `[alerts]` rules, with `?silent_hours=` applied.
    alerts: AlertsConfig,
    /// The alert checks' queue observations (what `queue_growing` looks at), by row name.
    histories: BTreeMap<String, Vec<i64>>,
    conflicts_by_peer: HashMap<String, i64>,
    recorded: HashMap<String, String>,
}

async fn context(session: &mut Session, query: &BTreeMap<String, String>, alerts: &AlertsConfig) -> Result<Context, HttpError> {
    let mut alerts = alerts.clone();
    if let Some(h) = query.get("silent_hours") {
        alerts.child_silent_after_s = h
            .parse::<f64>()
            .ok()
            .filter(|h| *h > 0.0 && *h < 1e9)
            .map(|h| ((h * 3600.0) as u64).max(1))
            .ok_or_else(|| HttpError::new(StatusCode::BAD_REQUEST, format!("silent_hours={h:?} is not a positive number"), "e.g. silent_hours=24"))?;
    }
    let now = db_now(session).await?;
    let histories = status::load_histories(session, &now, &alerts).await?;
    let conflicts_by_peer = session
        .query(&format!("SELECT peer, COUNT(*) AS n FROM {CONFLICT_TABLE} WHERE status = 'open' AND site_side = 'parent' GROUP BY peer"), &[])
        .await?
        .iter()
        .filter_map(|r| Some((r.text("peer")?, r.i64("n")?)))
        .collect();
    Ok(Context { now, alerts, histories, conflicts_by_peer, recorded: last_recorded(session).await? })
}

async fn child_status(session: &mut Session, child: &Child, cx: &Context) -> Result<DashboardChild, HttpError> {
    let report = network::child_report(session, &child.name).await.map_err(admin_error)?;
    let waiting_to_child = network::waiting_for_child(session, child).await?;
    let oldest_to_child_at = if waiting_to_child > 0 { network::oldest_waiting_for_child(session, child).await? } else { None };
    if let Some((report, reported_at)) = &report
        && cx.recorded.get(&child.name).is_none_or(|last| last.as_str() < reported_at.as_str())
    {
        let record = RoundRecord {
            round: report.round.clone(),
            pending_push: report.pending_push,
            pull_after: report.pull_after,
            held_at_child: report.held_total,
            open_conflicts_at_child: report.open_conflicts,
            held_at_parent: child.held_items,
            waiting_to_child,
            done_commands: report.done_commands.len(),
        };
        record_round(session, &child.name, reported_at, &record).await?;
    }
    let rounds = recent_rounds(session, &child.name, TREND_ROUNDS_MAX).await?;
    let oldest_held_here = if child.held_items > 0 {
        session
            .query(&format!("SELECT MIN(received_at) AS at FROM {INBOX_TABLE} WHERE peer = ?"), &[child.name.as_str().into()])
            .await?
            .first()
            .and_then(|r| r.text("at"))
    } else {
        None
    };
    let pushes_since = if report.as_ref().is_some_and(|(r, _)| r.pending_push > 0) { pending_since(&rounds) } else { None };
    let oldest_from_child_at = [oldest_held_here, pushes_since].into_iter().flatten().min_by_key(|t| parse_time(t));
    let last_contact_age_s = age_s(&cx.now, child.last_contact.as_deref());
    let oldest_to_child_age_s = age_s(&cx.now, oldest_to_child_at.as_deref());
    let oldest_from_child_age_s = age_s(&cx.now, oldest_from_child_at.as_deref());
    let conflicts_at_parent = cx.conflicts_by_peer.get(&child.name).copied().unwrap_or_default();
    let mut queued_history: Vec<i64> = rounds.iter().rev().map(|r| r.record.queued()).collect();
    if let Some((report, _)) = &report {
        // The queue now: what the parent holds and sends is current; the child's side is as of its report.
        let now = waiting_to_child + child.held_items + report.pending_push + report.held_total;
        if queued_history.last() != Some(&now) {
            queued_history.push(now);
        }
    }
    // The same facts `status` gives the alert rules, so both list the same problems.
    let history = |queue: &str| cx.histories.get(&status::history_name(&child.name, queue)).cloned().unwrap_or_default();
    let facts = ChildFacts {
        name: child.name.clone(),
        revoked: child.revoked_at.is_some(),
        last_contact_age_s,
        registered_age_s: age_s(&cx.now, Some(&child.created_at)),
        held_at_parent: child.held_items,
        held_at_child: report.as_ref().map_or(0, |(r, _)| r.held_total),
        conflicts_at_parent,
        conflicts_at_child: report.as_ref().map_or(0, |(r, _)| r.open_conflicts),
        waiting_history: history(QUEUE_WAITING_TO_CHILD),
        pending_push_history: history(QUEUE_PENDING_PUSH),
    };
    let round_error = report.as_ref().and_then(|(r, _)| r.round.error.clone());
    Ok(DashboardChild {
        name: child.name.clone(),
        revoked: child.revoked_at.is_some(),
        revoked_at: child.revoked_at.clone(),
        created_at: child.created_at.clone(),
        all_patients: child.all_patients,
        categories: child.categories.clone(),
        last_contact: child.last_contact.clone(),
        last_contact_age_s,
        reported_at: report.as_ref().map(|(_, at)| at.clone()),
        waiting_to_child,
        oldest_to_child_at,
        oldest_to_child_age_s,
        pending_push: report.as_ref().map(|(r, _)| r.pending_push),
        oldest_from_child_at,
        oldest_from_child_age_s,
        oldest_waiting_age_s: oldest_to_child_age_s.max(oldest_from_child_age_s),
        held_at_parent: child.held_items,
        held_at_child: report.as_ref().map(|(r, _)| r.held_total),
        conflicts_at_parent,
        conflicts_at_child: report.as_ref().map(|(r, _)| r.open_conflicts),
        catchment_patients: child.catchment_patients,
        last_round: report.as_ref().map(|(r, _)| r.round.clone()),
        queued_history,
        problems: alerts::child_problems(&facts, round_error.as_deref(), &cx.alerts),
    })
}

async fn count(session: &mut Session, sql: &str) -> Result<i64, HttpError> {
    Ok(session.query(sql, &[]).await?.first().and_then(|r| r.i64("n")).unwrap_or_default())
}

async fn parent_status(session: &mut Session, now: &str) -> Result<Json, HttpError> {
    let journal_backlog = count(session, &format!("SELECT COUNT(*) AS n FROM {JOURNAL_TABLE}")).await?;
    let oldest_journal_at = if journal_backlog > 0 {
        session.query(&format!("SELECT MIN(changed_at) AS at FROM {JOURNAL_TABLE}"), &[]).await?.first().and_then(|r| r.text("at"))
    } else {
        None
    };
    let last = session.query(&format!("SELECT event_seq, changed_at FROM {EVENT_TABLE} ORDER BY event_seq DESC LIMIT 1"), &[]).await?;
    let last_event_seq = last.first().and_then(|r| r.i64("event_seq")).unwrap_or_default();
    let last_event_at = last.first().and_then(|r| r.text("changed_at"));
    let held = count(session, &format!("SELECT COUNT(*) AS n FROM {INBOX_TABLE}")).await?;
    let open_conflicts = count(session, &format!("SELECT COUNT(*) AS n FROM {CONFLICT_TABLE} WHERE status = 'open'")).await?;
    let oldest_journal_age_s = age_s(now, oldest_journal_at.as_deref());
    let mut problems = Vec::new();
    if let Some(age) = oldest_journal_age_s.filter(|a| *a > JOURNAL_STALL_S) {
        problems.push(Problem {
            kind: "journal_behind",
            text: format!("{} captured but not published for {}: see the publisher's log", plural(journal_backlog, "change", "changes"), describe_age(age)),
        });
    }
    if held > 0 {
        problems.push(Problem { kind: "held", text: format!("{held} held (failed events) at the parent") });
    }
    if open_conflicts > 0 {
        problems.push(Problem { kind: "conflicts", text: format!("{} at the parent", plural(open_conflicts, "open conflict", "open conflicts")) });
    }
    Ok(json!({
        "journal_backlog": journal_backlog,
        "oldest_journal_at": oldest_journal_at,
        "oldest_journal_age_s": oldest_journal_age_s,
        "last_event_seq": last_event_seq,
        "last_event_at": last_event_at,
        "last_event_age_s": age_s(now, last_event_at.as_deref()),
        "held": held,
        "open_conflicts": open_conflicts,
        "problems": problems,
    }))
}

async fn overview(session: &mut Session, query: &BTreeMap<String, String>, alerts: &AlertsConfig) -> Result<Json, HttpError> {
    let cx = context(session, query, alerts).await?;
    let children = network::list_children(session).await.map_err(admin_error)?;
    let mut rows = Vec::with_capacity(children.len());
    for child in &children {
        rows.push(child_status(session, child, &cx).await?);
    }
    let parent = parent_status(session, &cx.now).await?;
    let active = || rows.iter().filter(|r| !r.revoked);
    let totals = json!({
        "children": active().count(),
        "revoked": rows.len() - active().count(),
        "with_problems": active().filter(|r| !r.problems.is_empty()).count(),
        "waiting_to_children": active().map(|r| r.waiting_to_child).sum::<i64>(),
        "pending_push": active().filter_map(|r| r.pending_push).sum::<i64>(),
        "held_at_parent": rows.iter().map(|r| r.held_at_parent).sum::<i64>(),
        "held_at_children": active().filter_map(|r| r.held_at_child).sum::<i64>(),
        "conflicts_at_children": active().filter_map(|r| r.conflicts_at_child).sum::<i64>(),
        "catchment_patients": active().map(|r| r.catchment_patients).sum::<i64>(),
    });
    Ok(json!({ "now": cx.now, "silent_after_s": cx.alerts.child_silent_after_s, "parent": parent, "totals": totals, "children": rows }))
}

// ---- a child's page ----

async fn child_page(session: &mut Session, name: &str, query: &BTreeMap<String, String>, alerts: &AlertsConfig) -> Result<Json, HttpError> {
    let unknown = || HttpError::new(StatusCode::NOT_FOUND, format!("no child named {name:?}"), "the overview lists the registered children");
    if !exchange::valid_child_name(name) {
        return Err(unknown());
    }
    let cx = context(session, query, alerts).await?;
    let child = network::list_children(session).await.map_err(admin_error)?.into_iter().find(|c| c.name == name).ok_or_else(unknown)?;
    let status = child_status(session, &child, &cx).await?;
    let report = network::child_report(session, name).await.map_err(admin_error)?;
    let rounds = recent_rounds(session, name, ROUNDS_PER_CHILD_MAX).await?;
    let usb: Vec<Json> = session
        .query(
            &format!(
                "SELECT audit_id, at, action, detail FROM {AUDIT_TABLE} WHERE actor = ? AND action LIKE 'usb%' ORDER BY audit_id DESC LIMIT {USB_LISTED_MAX}"
            ),
            &[name.into()],
        )
        .await?
        .iter()
        .map(|r| json!({ "id": r.i64("audit_id"), "at": r.text("at"), "action": r.text("action"), "detail": r.text("detail") }))
        .collect();
    let commands: Vec<Json> = session
        .query(
            &format!("SELECT command_id, action, actor, created_at, done_at, ok, message FROM {COMMAND_TABLE} WHERE child = ? ORDER BY command_id DESC LIMIT {COMMANDS_LISTED_MAX}"),
            &[name.into()],
        )
        .await?
        .iter()
        .map(|r| {
            json!({
                "id": r.i64("command_id"),
                "action": r.text("action").and_then(|a| serde_json::from_str::<Json>(&a).ok()),
                "actor": r.text("actor"),
                "created_at": r.text("created_at"),
                "done_at": r.text("done_at"),
                "ok": r.i64("ok").map(|v| v != 0),
                "message": r.text("message"),
            })
        })
        .collect();
    let mut registration = serde_json::to_value(&child).expect("children serialize");
    registration.as_object_mut().expect("an object").remove("held_items");
    Ok(json!({
        "now": cx.now,
        "status": status,
        "registration": registration,
        "report": report.as_ref().map(|(r, _)| r),
        "reported_at": report.as_ref().map(|(_, at)| at),
        "rounds": rounds,
        "usb": usb,
        "commands": commands,
        "held": held_page(session, Some(name)).await?,
        "conflicts": conflicts_for(session, Some(name), false).await?,
    }))
}

// ---- held changes ----

/// Another held change that waits on this one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Behind {
    pub id: i64,
    pub table: String,
    pub key: String,
    /// `same_entity` (a later version of the same row) or `needs_this_row` (it references it).
    pub why: &'static str,
}

/// For each held change, the held changes waiting behind it: later ones of the same entity
/// from the same peer (they apply in order), and those whose reason names its row as
/// missing. Pure; `held` is in id order.
pub fn waits_behind(held: &[HeldItem]) -> HashMap<i64, Vec<Behind>> {
    let mut behind: HashMap<i64, Vec<Behind>> = HashMap::new();
    for (i, h) in held.iter().enumerate() {
        let row = format!("{}/{}", h.item.table, h.item.key);
        let list = behind.entry(h.id).or_default();
        for later in &held[i + 1..] {
            if later.peer == h.peer && later.item.table == h.item.table && later.item.key == h.item.key {
                list.push(Behind { id: later.id, table: later.item.table.clone(), key: later.item.key.clone(), why: "same_entity" });
            }
        }
        for other in held {
            if other.id != h.id && (other.item.table != h.item.table || other.item.key != h.item.key) && names_row(&other.reason, &row) {
                list.push(Behind { id: other.id, table: other.item.table.clone(), key: other.item.key.clone(), why: "needs_this_row" });
            }
        }
    }
    behind
}

/// Whether a reason names `table/key` as a whole word (not as the start of a longer key).
fn names_row(reason: &str, row: &str) -> bool {
    reason.match_indices(row).any(|(i, _)| {
        let before = reason[..i].chars().next_back();
        let after = reason[i + row.len()..].chars().next();
        before.is_none_or(|c| !c.is_alphanumeric() && c != '_' && c != '-') && after.is_none_or(|c| !c.is_alphanumeric() && c != '-' && c != '_')
    })
}

#[derive(Debug, Clone, Serialize)]
struct HeldView {
    id: i64,
    /// Where it is held: `parent` (this server) or the child's name.
    held_at: String,
    /// Where it came from: the child that pushed it, or `parent`.
    from: String,
    table: String,
    key: String,
    category: String,
    deleted: bool,
    reason: String,
    attempts: i64,
    received_at: String,
    /// Only for changes held here: the child's clock is not this one.
    age_s: Option<i64>,
    behind: Vec<Behind>,
    columns: Option<feedsync_core::merge::Fields>,
    /// An operator command for it waits for the child's next round.
    queued_command: Option<i64>,
}

fn held_views(items: &[HeldItem], held_at: &str, now: Option<&str>, queued: &HashMap<(String, &'static str, i64), i64>) -> Vec<HeldView> {
    let behind = waits_behind(items);
    items
        .iter()
        .map(|h| HeldView {
            id: h.id,
            held_at: held_at.to_owned(),
            from: if held_at == "parent" { h.peer.clone() } else { PEER_PARENT.to_owned() },
            table: h.item.table.clone(),
            key: h.item.key.clone(),
            category: h.item.category.clone(),
            deleted: h.item.resource.is_none(),
            reason: h.reason.clone(),
            attempts: h.attempts,
            received_at: h.received_at.clone(),
            age_s: now.and_then(|now| age_s(now, Some(&h.received_at))),
            behind: behind.get(&h.id).cloned().unwrap_or_default(),
            columns: h.item.resource.as_ref().map(|r| r.columns.clone()),
            queued_command: queued.get(&(held_at.to_owned(), "held", h.id)).copied(),
        })
        .collect()
}

/// Commands not carried out yet, by (child, `held`|`conflict`, id).
async fn queued_commands(session: &mut Session) -> Result<HashMap<(String, &'static str, i64), i64>, HttpError> {
    let rows =
        session.query(&format!("SELECT command_id, child, action FROM {COMMAND_TABLE} WHERE done_at IS NULL ORDER BY command_id LIMIT 10000"), &[]).await?;
    let mut queued = HashMap::new();
    for r in &rows {
        let (Some(id), Some(child), Some(action)) =
            (r.i64("command_id"), r.text("child"), r.text("action").and_then(|a| serde_json::from_str::<CommandAction>(&a).ok()))
        else {
            continue;
        };
        let key = match action {
            CommandAction::RetryHeld { held_id } | CommandAction::SkipHeld { held_id, .. } => (child, "held", held_id),
            CommandAction::ResolveConflict { conflict_id, .. } => (child, "conflict", conflict_id),
        };
        queued.insert(key, id);
    }
    Ok(queued)
}

/// Held changes here (pushed by children) and at the children (from their latest reports);
/// only `child`'s when given.
async fn held_page(session: &mut Session, child: Option<&str>) -> Result<Json, HttpError> {
    let now = db_now(session).await?;
    let queued = queued_commands(session).await?;
    let (filter, params): (&str, Vec<Value>) = match child {
        Some(c) => ("WHERE peer = ?", vec![c.into()]),
        None => ("", vec![]),
    };
    let total_here =
        session.query(&format!("SELECT COUNT(*) AS n FROM {INBOX_TABLE} {filter}"), &params).await?.first().and_then(|r| r.i64("n")).unwrap_or_default();
    let here = exchange::held_items(session, child, HELD_LISTED_MAX).await?;
    let mut children = Vec::new();
    for c in network::list_children(session).await.map_err(admin_error)? {
        if child.is_some_and(|name| name != c.name) {
            continue;
        }
        let Some((report, reported_at)) = network::child_report(session, &c.name).await.map_err(admin_error)? else { continue };
        if report.held.is_empty() && child.is_none() {
            continue;
        }
        children.push(json!({
            "child": c.name,
            "reported_at": reported_at,
            "held_total": report.held_total,
            "items": held_views(&report.held, &c.name, None, &queued),
        }));
    }
    Ok(json!({
        "now": now,
        "parent": { "held_total": total_here, "items": held_views(&here, "parent", Some(&now), &queued) },
        "children": children,
    }))
}

/// Retries the change held here (and the rest from the same child, as its next push would).
async fn retry_held_here(app: &App, session: &mut Session, id: i64) -> Result<Json, HttpError> {
    let held = find_held(session, id).await?;
    if held.peer == PEER_PARENT {
        return Err(HttpError::new(
            StatusCode::CONFLICT,
            format!("held #{id} came from this server's own parent"),
            "it is retried at this server's next round towards its parent (`feed-subscriber run --parent`)",
        ));
    }
    let peer = held.peer.clone();
    let receiver = Receiver { model: &app.model, from: Side::Child, peer: &peer, policy: &app.config.network };
    session.read_committed().await?;
    session.begin().await?;
    let outcome = async {
        // Written as the child's change, as if its push had applied it.
        capture::set_origin(session, &exchange::child_origin(&peer)).await?;
        let applied = exchange::retry_held(session, &receiver, &peer, &mut LookupCache::default(), false)
            .await
            .map_err(|e| HttpError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), "the database is unavailable or busy; retry later"))?;
        capture::clear_origin(session).await?;
        Ok::<usize, HttpError>(applied)
    }
    .await;
    let applied = match outcome {
        Ok(n) => {
            session.commit().await?;
            n
        }
        Err(e) => {
            let _ = session.rollback().await;
            return Err(e);
        }
    };
    let still = exchange::held_items(session, Some(&peer), 100_000).await?.into_iter().find(|h| h.id == id);
    let outcome_text = match &still {
        Some(h) => format!("held #{id} is still held: {}", h.reason),
        None => format!("held #{id} applied"),
    };
    exchange::audit(
        session,
        AUDIT_ACTOR,
        "retry-held",
        None,
        &format!("{outcome_text} (from {peer}, {} {}); {applied} held changes applied", held.item.table, held.item.key),
    )
    .await?;
    Ok(
        json!({ "id": id, "applied": still.is_none(), "applied_total": applied, "still_held": still.is_some(), "reason": still.map(|h| h.reason), "message": outcome_text }),
    )
}

async fn find_held(session: &mut Session, id: i64) -> Result<HeldItem, HttpError> {
    let peer = session.query(&format!("SELECT peer FROM {INBOX_TABLE} WHERE inbox_id = ?"), &[Value::Int(id)]).await?.first().and_then(|r| r.text("peer"));
    let not_found = || {
        HttpError::new(StatusCode::NOT_FOUND, format!("no held change #{id} here"), "it may have applied or been skipped already; GET held lists what is held")
    };
    let peer = peer.ok_or_else(not_found)?;
    exchange::held_items(session, Some(&peer), 100_000).await?.into_iter().find(|h| h.id == id).ok_or_else(not_found)
}

async fn skip_held_here(session: &mut Session, id: i64, body: &Json) -> Result<Json, HttpError> {
    let reason = required_reason(body)?;
    if !network::skip_held(session, id, &reason, AUDIT_ACTOR).await.map_err(admin_error)? {
        return Err(HttpError::new(
            StatusCode::NOT_FOUND,
            format!("no held change #{id} here"),
            "it may have applied or been skipped already; GET held lists what is held",
        ));
    }
    Ok(json!({ "id": id, "skipped": true, "reason": reason, "message": format!("held #{id} skipped; the reason is kept in the audit log") }))
}

async fn queue(session: &mut Session, child: &str, action: &CommandAction) -> Result<Json, HttpError> {
    if !exchange::valid_child_name(child) {
        return Err(admin_error(AdminError::Unknown(child.into())));
    }
    let id = network::queue_command(session, child, action, AUDIT_ACTOR).await.map_err(admin_error)?;
    Ok(
        json!({ "command": id, "child": child, "action": action, "queued": true, "message": format!("queued as command #{id}: {child} carries it out at its next round and reports the result") }),
    )
}

// ---- conflicts ----

/// One field of a conflict, both sides side by side.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldRow {
    pub field: String,
    pub mine: Option<Json>,
    pub theirs: Option<Json>,
    pub base: Option<Json>,
    pub result: Option<Json>,
    /// Mine and theirs differ here.
    pub differs: bool,
    /// Both sides changed it (the merge had to pick one).
    pub conflicted: bool,
}

/// Every field of either version, those both sides changed first, then the other
/// differences, then the rest. Pure.
pub fn field_rows(c: &Conflict) -> Vec<FieldRow> {
    let (mine, theirs) = c.mine_theirs();
    let names: BTreeSet<&String> = mine.iter().chain(theirs.iter()).flat_map(|f| f.keys()).collect();
    let get = |fields: &Option<feedsync_core::merge::Fields>, name: &str| fields.as_ref().and_then(|f| f.get(name).cloned());
    let mut rows: Vec<FieldRow> = names
        .into_iter()
        .map(|name| {
            let (m, t) = (get(mine, name), get(theirs, name));
            FieldRow {
                field: name.clone(),
                differs: m != t,
                conflicted: c.fields.iter().any(|f| f == name),
                base: get(&c.base, name),
                result: get(&c.result, name),
                mine: m,
                theirs: t,
            }
        })
        .collect();
    rows.sort_by_key(|r| (!r.conflicted, !r.differs, r.field.clone()));
    rows
}

#[derive(Debug, Clone, Serialize)]
struct ConflictView {
    id: i64,
    /// `parent` (this server) or the child's name: where it was found and is resolved.
    found_at: String,
    table: String,
    key: String,
    category: String,
    peer: String,
    detected_at: String,
    winner: String,
    entity_conflict: bool,
    fields: Vec<String>,
    status: String,
    resolution: Option<String>,
    /// Whose version `mine` is (`parent` or the child's name), and `theirs`.
    mine_is: String,
    theirs_is: String,
    mine_present: bool,
    theirs_present: bool,
    rows: Vec<FieldRow>,
    queued_command: Option<i64>,
}

fn conflict_view(c: &Conflict, found_at: &str, queued: &HashMap<(String, &'static str, i64), i64>) -> ConflictView {
    let (mine, theirs) = c.mine_theirs();
    let (mine_is, theirs_is) = if c.site_side == "parent" { ("parent".to_owned(), c.peer.clone()) } else { (found_at.to_owned(), "parent".to_owned()) };
    ConflictView {
        id: c.id,
        found_at: found_at.to_owned(),
        table: c.table.clone(),
        key: c.key.clone(),
        category: c.category.clone(),
        peer: c.peer.clone(),
        detected_at: c.detected_at.clone(),
        winner: c.winner.clone(),
        entity_conflict: c.entity_conflict,
        fields: c.fields.clone(),
        status: c.status.clone(),
        resolution: c.resolution.clone(),
        mine_is,
        theirs_is,
        mine_present: mine.is_some(),
        theirs_present: theirs.is_some(),
        rows: field_rows(c),
        queued_command: if found_at == "parent" { None } else { queued.get(&(found_at.to_owned(), "conflict", c.id)).copied() },
    }
}

async fn conflicts_for(session: &mut Session, child: Option<&str>, all: bool) -> Result<Json, HttpError> {
    let queued = queued_commands(session).await?;
    let here: Vec<ConflictView> = exchange::list_conflicts(session, all, CONFLICTS_LISTED_MAX)
        .await?
        .iter()
        .filter(|c| child.is_none_or(|name| c.site_side == "parent" && c.peer == name))
        .map(|c| conflict_view(c, "parent", &queued))
        .collect();
    let open_here = match child {
        Some(name) => session
            .query(&format!("SELECT COUNT(*) AS n FROM {CONFLICT_TABLE} WHERE status = 'open' AND site_side = 'parent' AND peer = ?"), &[name.into()])
            .await?
            .first()
            .and_then(|r| r.i64("n"))
            .unwrap_or_default(),
        None => count(session, &format!("SELECT COUNT(*) AS n FROM {CONFLICT_TABLE} WHERE status = 'open'")).await?,
    };
    let mut children = Vec::new();
    for c in network::list_children(session).await.map_err(admin_error)? {
        if child.is_some_and(|name| name != c.name) {
            continue;
        }
        let Some((report, reported_at)) = network::child_report(session, &c.name).await.map_err(admin_error)? else { continue };
        if report.conflicts.is_empty() && child.is_none() {
            continue;
        }
        let views: Vec<ConflictView> = report.conflicts.iter().map(|k| conflict_view(k, &c.name, &queued)).collect();
        children.push(json!({ "child": c.name, "reported_at": reported_at, "open_conflicts": report.open_conflicts, "items": views }));
    }
    Ok(json!({ "parent": { "open_conflicts": open_here, "items": here }, "children": children }))
}

async fn conflicts_page(session: &mut Session, all: bool) -> Result<Json, HttpError> {
    conflicts_for(session, None, all).await
}

async fn resolve_here(app: &App, session: &mut Session, id: i64, body: &Json) -> Result<Json, HttpError> {
    let (take_text, fields) = take_from(body)?;
    let take = Take::parse(&take_text, &fields).expect("checked by take_from");
    let record = exchange::conflict(session, id).await?;
    let result = exchange::resolve_conflict(session, &app.model, id, &take).await.map_err(|e| match e {
        ResolveError::NotFound(_) => HttpError::new(StatusCode::NOT_FOUND, e.to_string(), "GET conflicts lists the open ones"),
        ResolveError::AlreadyResolved(..) => {
            HttpError::new(StatusCode::CONFLICT, e.to_string(), "nothing to do; GET conflicts?all=1 shows how it was resolved")
        }
        ResolveError::UnknownField { .. } => HttpError::new(StatusCode::BAD_REQUEST, e.to_string(), "choose among the fields the conflict shows"),
        ResolveError::Apply { .. } => {
            HttpError::new(StatusCode::CONFLICT, e.to_string(), "the chosen version cannot be written now; try the other version or field by field")
        }
        ResolveError::Database(e) => e.into(),
    })?;
    let what = match &take {
        Take::Mine => "took mine (the parent's version)".to_owned(),
        Take::Theirs => "took theirs (the child's version)".to_owned(),
        Take::Fields(_) => format!("took fields {}", fields.join(", ")),
    };
    let entity = record.as_ref().map(|c| format!("{} {} with child {}", c.table, c.key, c.peer)).unwrap_or_default();
    exchange::audit(session, AUDIT_ACTOR, "conflict-resolve", None, &format!("conflict #{id} ({entity}): {what}")).await?;
    Ok(
        json!({ "id": id, "resolved": true, "take": take_text, "fields": fields, "result": result.map(|r| r.columns), "message": format!("conflict #{id} resolved: {what}; the children get it at their next round") }),
    )
}

// ---- patients and audit ----

async fn patients(session: &mut Session, query: &BTreeMap<String, String>) -> Result<Json, HttpError> {
    let text = query.get("q").map(String::as_str).unwrap_or_default();
    let parsed = search::parse_query(text)
        .map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, e, "search by identifier, or by name with birth date (YYYY-MM-DD) and gender"))?;
    let limit = query.get("limit").and_then(|l| l.parse::<usize>().ok()).unwrap_or(20).clamp(1, 50);
    let found = search::find_patients(session, &parsed, limit).await?;
    let shown: Vec<&str> = found.iter().map(|c| c.uuid.as_str()).collect();
    exchange::audit(session, AUDIT_ACTOR, "patient-find", None, &format!("query {text:?}: {} candidates shown: {}", found.len(), shown.join(", "))).await?;
    let mut held_by: HashMap<String, Vec<Json>> = HashMap::new();
    if !shown.is_empty() {
        let marks = vec!["?"; shown.len()].join(", ");
        let params: Vec<Value> = shown.iter().map(|u| Value::from(*u)).collect();
        for r in session
            .query(&format!("SELECT child, patient_uuid, reason, added_at FROM {CATCHMENT_TABLE} WHERE patient_uuid IN ({marks}) ORDER BY child"), &params)
            .await?
        {
            if let Some(uuid) = r.text("patient_uuid") {
                held_by.entry(uuid).or_default().push(json!({ "child": r.text("child"), "reason": r.text("reason"), "added_at": r.text("added_at") }));
            }
        }
    }
    let candidates: Vec<Json> = found
        .iter()
        .map(|c| {
            let mut v = serde_json::to_value(c).expect("candidates serialize");
            v["children"] = Json::Array(held_by.remove(&c.uuid).unwrap_or_default());
            v
        })
        .collect();
    Ok(json!({ "query": text, "candidates": candidates }))
}

async fn audit_page(session: &mut Session, query: &BTreeMap<String, String>) -> Result<Json, HttpError> {
    let limit = query.get("limit").and_then(|l| l.parse::<i64>().ok()).unwrap_or(100).clamp(1, AUDIT_LISTED_MAX);
    let mut conditions = Vec::new();
    let mut params: Vec<Value> = Vec::new();
    if let Some(before) = query.get("before").and_then(|b| b.parse::<i64>().ok()) {
        conditions.push("audit_id < ?");
        params.push(Value::Int(before));
    }
    if let Some(actor) = query.get("actor").filter(|a| !a.is_empty()) {
        conditions.push("actor = ?");
        params.push(actor.as_str().into());
    }
    if let Some(action) = query.get("action").filter(|a| !a.is_empty()) {
        conditions.push("action = ?");
        params.push(action.as_str().into());
    }
    let filter = if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
    let entries: Vec<Json> = session
        .query(&format!("SELECT audit_id, at, actor, action, patient_uuid, detail FROM {AUDIT_TABLE} {filter} ORDER BY audit_id DESC LIMIT {limit}"), &params)
        .await?
        .iter()
        .map(|r| json!({ "id": r.i64("audit_id"), "at": r.text("at"), "actor": r.text("actor"), "action": r.text("action"), "patient_uuid": r.text("patient_uuid"), "detail": r.text("detail") }))
        .collect();
    Ok(json!({ "entries": entries }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use feedsync_wire::network::Item;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(header::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn without_a_token_only_this_machine_gets_in() {
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let local6: SocketAddr = "[::1]:5000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().unwrap();
        let remote: SocketAddr = "10.0.0.7:5000".parse().unwrap();
        let host = headers(&[("host", "127.0.0.1:8086")]);
        for peer in [local, local6, mapped] {
            assert_eq!(check_access(Some(peer), &host, None), Ok(Access::Loopback), "{peer}");
        }
        assert_eq!(check_access(Some(local), &headers(&[("host", "localhost:8086")]), None), Ok(Access::Loopback));
        assert_eq!(check_access(Some(local), &headers(&[("host", "[::1]:8086")]), None), Ok(Access::Loopback));
        assert_eq!(check_access(Some(local), &HeaderMap::new(), Some("")), Ok(Access::Loopback), "an empty token is no token");
        let refused = check_access(Some(remote), &host, None).unwrap_err();
        assert!(refused.message.contains("10.0.0.7") && refused.hint.contains("FEEDSYNC_ADMIN_TOKEN"), "{refused:?}");
        assert!(check_access(None, &host, None).is_err(), "unknown peer");
        // A local proxy, a rebinding attack.
        assert!(check_access(Some(local), &headers(&[("host", "127.0.0.1"), ("x-forwarded-for", "41.1.2.3")]), None).is_err());
        assert!(check_access(Some(local), &headers(&[("host", "evil.example:8086")]), None).unwrap_err().message.contains("evil.example"));
        // A bearer token means nothing when none is configured.
        assert!(check_access(Some(remote), &headers(&[("authorization", "Bearer x")]), None).is_err());
    }

    #[test]
    fn with_a_token_every_client_must_show_it() {
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let remote: SocketAddr = "10.0.0.7:5000".parse().unwrap();
        let token = Some("s3cret-token");
        assert_eq!(check_access(Some(remote), &headers(&[("authorization", "Bearer s3cret-token")]), token), Ok(Access::Bearer));
        let cookie = format!("theme=dark; {COOKIE_NAME}={}", cookie_for("s3cret-token"));
        assert_eq!(check_access(Some(remote), &headers(&[("cookie", &cookie)]), token), Ok(Access::Cookie));
        assert!(!cookie.contains("s3cret-token"), "the cookie does not hold the token");
        for wrong in [
            vec![],
            vec![("authorization", "Bearer s3cret-tokeN")],
            vec![("cookie", "feedsync_admin=s3cret-token")],
            vec![("authorization", "Basic czNjcmV0LXRva2Vu")],
        ] {
            let refused = check_access(Some(remote), &headers(&wrong), token).unwrap_err();
            assert!(refused.hint.contains("/dashboard/login"), "{wrong:?}: {refused:?}");
        }
        // Loopback is no excuse once a token is set (a local proxy would make everyone local).
        assert!(check_access(Some(local), &headers(&[("host", "127.0.0.1")]), token).is_err());
    }

    #[test]
    fn actions_need_json_from_this_site() {
        let json_from = |origin: &str| headers(&[("content-type", "application/json"), ("origin", origin), ("host", "127.0.0.1:8086")]);
        assert_eq!(check_action_request(&json_from("http://evil.example"), Access::Loopback).unwrap_err().status, StatusCode::FORBIDDEN);
        // With the token, a proxy may have rewritten Host; the cookie is SameSite=Strict.
        assert!(check_action_request(&json_from("https://district.example"), Access::Cookie).is_ok());
        assert!(check_action_request(&headers(&[("content-type", "application/json"), ("host", "127.0.0.1:8086")]), Access::Loopback).is_ok());
        assert!(check_action_request(&json_from("http://127.0.0.1:8086"), Access::Loopback).is_ok());
        let form = headers(&[("content-type", "application/x-www-form-urlencoded")]);
        for access in [Access::Loopback, Access::Bearer, Access::Cookie] {
            assert_eq!(check_action_request(&form, access).unwrap_err().status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        }
    }

    fn held(id: i64, peer: &str, table: &str, key: &str, reason: &str) -> HeldItem {
        HeldItem {
            id,
            peer: peer.into(),
            item: Item { seq: id, table: table.into(), key: key.into(), category: table.into(), resource: None, base: None },
            reason: reason.into(),
            attempts: 1,
            received_at: String::new(),
        }
    }

    #[test]
    fn what_waits_behind_a_held_change() {
        let items = [
            held(1, "north", "person", "p-1", "value too long"),
            held(2, "north", "person_name", "n-1", "waiting for rows not here yet: person/p-1"),
            held(3, "north", "person", "p-1", "value too long"),
            held(4, "south", "person", "p-1", "waiting for rows not here yet: person/p-10"),
            held(5, "north", "obs", "o-1", "waiting for rows not here yet: person_name/n-1, encounter/e-1"),
        ];
        let behind = waits_behind(&items);
        let ids = |id: i64| behind[&id].iter().map(|b| (b.id, b.why)).collect::<Vec<_>>();
        assert_eq!(ids(1), [(3, "same_entity"), (2, "needs_this_row")]);
        assert_eq!(ids(2), [(5, "needs_this_row")]);
        assert_eq!(ids(3), [(2, "needs_this_row")]);
        // South's copy of p-1 would also let the name apply; it is not behind north's p-1, and
        // p-10 is not p-1.
        assert_eq!(ids(4), [(2, "needs_this_row")]);
        assert!(ids(5).is_empty());
    }

    #[test]
    fn conflict_fields_side_by_side() {
        let fields = |pairs: &[(&str, Json)]| Some(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect::<feedsync_core::merge::Fields>());
        let conflict = Conflict {
            id: 7,
            table: "person_name".into(),
            key: "n-1".into(),
            category: "person_name".into(),
            site_side: "child".into(),
            peer: "parent".into(),
            detected_at: String::new(),
            winner: "parent".into(),
            entity_conflict: false,
            fields: vec!["given_name".into()],
            base: fields(&[("given_name", json!("Mary")), ("degree", json!(null))]),
            parent_version: fields(&[("given_name", json!("Maria")), ("degree", json!(null)), ("voided", json!(0))]),
            child_version: fields(&[("given_name", json!("Marie")), ("degree", json!("BSc")), ("voided", json!(0))]),
            result: fields(&[("given_name", json!("Maria")), ("degree", json!("BSc")), ("voided", json!(0))]),
            status: "open".into(),
            resolution: None,
        };
        let rows = field_rows(&conflict);
        let summary: Vec<(&str, bool, bool)> = rows.iter().map(|r| (r.field.as_str(), r.conflicted, r.differs)).collect();
        assert_eq!(summary, [("given_name", true, true), ("degree", false, true), ("voided", false, false)]);
        // Found at a child, `mine` is the child's version.
        assert_eq!(rows[0].mine, Some(json!("Marie")));
        assert_eq!(rows[0].theirs, Some(json!("Maria")));
        let view = conflict_view(&conflict, "north", &HashMap::new());
        assert_eq!((view.mine_is.as_str(), view.theirs_is.as_str()), ("north", "parent"));
    }

    #[test]
    fn reasons_name_rows_as_whole_words() {
        assert!(names_row("waiting for rows not here yet: person/p-1", "person/p-1"));
        assert!(names_row("waiting for rows not here yet: person/p-1, obs/o-2", "person/p-1"));
        assert!(!names_row("waiting for rows not here yet: person/p-10", "person/p-1"));
        assert!(!names_row("waiting for rows not here yet: xperson/p-1", "person/p-1"));
    }

    #[test]
    fn paths_the_dashboard_serves() {
        for path in ["/dashboard", "/dashboard/", "/dashboard/app.js", "/ws/feedsync/admin/overview", "/ws/feedsync/admin"] {
            assert!(handles(path), "{path}");
        }
        for path in ["/dashboardx", "/ws/feedsync/administrator", "/ws/feedsync/health", "/ws/atomfeed"] {
            assert!(!handles(path), "{path}");
        }
    }
}
