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
//! The files: `access.rs` (who may use it: token, cookie, login), `rounds.rs` (the rounds
//! history and its table), one file per view (`children.rs`: the overview and a child's page;
//! `held.rs`, `conflicts.rs`, `patients.rs`, `audit.rs`) with its queries and actions, and
//! this one: the routes, the `Context` the overview and a child's page share, the HTML and
//! JSON replies.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use serde::Serialize;
use serde_json::{Value as Json, json};

use feedsync_core::alerts::AlertsConfig;
use feedsync_db::Session;
use feedsync_node::clock::db_now;
use feedsync_node::exchange::Take;
use feedsync_node::parent::AdminError;
use feedsync_wire::network::CommandAction;

use crate::server::{App, HttpError, PeerAddr, Reply, read_body};
use crate::status;

mod access;
mod audit;
mod children;
mod conflicts;
mod held;
mod patients;
mod rounds;
mod sessions;

pub use access::{ADMIN_TOKEN_CHARS_MIN, ADMIN_TOKEN_ENV, Access, AccessDenied, COOKIE_NAME, CSRF_HEADER, admin_token_problem, bearer_token, check_access, dashboard_admits, session_cookie};
pub use sessions::{AdminSessions, Failures};
pub(crate) use sessions::random_token;
pub(crate) use access::cookie_value;
pub use conflicts::{FieldRow, field_rows};
pub use held::{Behind, waits_behind};
pub(crate) use rounds::prepare;
pub use rounds::{ROUND_TABLE, ROUNDS_PER_CHILD_MAX, RoundRecord};

use access::{admin_token, check_action_request, login};
use audit::audit_page;
use children::{child_page, overview};
use conflicts::{conflicts_page, resolve_here};
use held::{held_page, queue, retry_held_here, skip_held_here};
use patients::patients;
use rounds::last_recorded;

pub const DASHBOARD_PATH: &str = "/dashboard";
pub const ADMIN_PATH: &str = "/ws/feedsync/admin";
const LOGIN_PATH: &str = "/dashboard/login";
const LOGOUT_PATH: &str = "/dashboard/logout";
/// Where `index.html` holds its login's CSRF token (empty without a login cookie).
const CSRF_PLACEHOLDER: &str = "@FEEDSYNC_CSRF@";
/// The actor of every audit row an operator's action here writes.
pub const AUDIT_ACTOR: &str = "dashboard";
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
        // Ended at the server too: a copy of the cookie is worth nothing from now on.
        if let Some(id) = session_cookie(request.headers()) {
            app.admin_sessions.end(&id);
        }
        let cookie = format!("{COOKIE_NAME}=; Path={}/; Max-Age=0; HttpOnly; SameSite=Strict", prefix);
        return Ok(redirect(StatusCode::SEE_OTHER, &format!("{prefix}{LOGIN_PATH}"))
            .with_header(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("ascii cookie")));
    }
    let token = admin_token();
    let now = std::time::Instant::now();
    let csrf = session_cookie(request.headers()).and_then(|id| app.admin_sessions.csrf_of(&id, now));
    let access = match check_access(peer, request.headers(), token.as_deref(), &|id| app.admin_sessions.csrf_of(id, now).is_some()) {
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
            // The page carries its login's CSRF token for the actions it sends.
            let page = INDEX_HTML.replace(CSRF_PLACEHOLDER, csrf.as_deref().filter(|_| access == Access::Cookie).unwrap_or_default());
            return Ok(with_security_headers(Reply::new(StatusCode::OK, HTML, Bytes::from(page))).with_header(header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
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
    // An action holds its request slot (taken once its body is in) until it is done.
    let (body, _slot) = if method == Method::POST {
        check_action_request(request.headers(), access, csrf.as_deref())?;
        read_json(app, request).await?
    } else {
        require_read(&method)?;
        (Json::Null, None)
    };
    let mut session = app.database.session().await?;
    let post = method == Method::POST;
    match (post, segments.as_slice()) {
        (false, ["overview"]) => Ok(api_json(&overview(&mut session, &query, &app.config).await?)),
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

/// An action's JSON body, and the request slot taken once it arrived.
async fn read_json<'a>(app: &'a App, request: Request<Incoming>) -> Result<(Json, Option<tokio::sync::SemaphorePermit<'a>>), HttpError> {
    let (bytes, slot) = read_body(app, request, ACTION_BODY_BYTES_MAX, "send a smaller body").await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok((json!({}), slot));
    }
    let body = serde_json::from_slice(&bytes)
        .map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, format!("the body is not valid JSON: {e}"), "send a JSON object, e.g. {\"reason\": \"...\"}"))?;
    Ok((body, slot))
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

// ---- shared by the views ----

/// What the overview and a child's page compute once per request and share across children.
struct Context {
    now: String,
    /// The `[alerts]` rules, with `?silent_hours=` applied.
    alerts: AlertsConfig,
    /// The alert checks' queue observations (what `queue_growing` looks at), by row name.
    histories: BTreeMap<String, Vec<i64>>,
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
    Ok(Context { now, alerts, histories, recorded: last_recorded(session).await? })
}

async fn count(session: &mut Session, sql: &str) -> Result<i64, HttpError> {
    Ok(session.query(sql, &[]).await?.first().and_then(|r| r.i64("n")).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

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
