//! Who may use the dashboard ([`check_access`]): without `FEEDSYNC_ADMIN_TOKEN` only this
//! machine, with it every client showing the token (`Authorization: Bearer`) or a login's
//! session cookie (`sessions.rs`: random, kept at the server, expiring); what an action request
//! must look like (JSON, and with a cookie the login's CSRF token); the login page, which takes
//! the token in a POST body only (never in a URL, where logs and browser history keep it) and
//! slows down an address that keeps guessing.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode};

use feedsync_node::exchange;

use super::sessions::SESSION_S;
use super::{ACTION_BODY_BYTES_MAX, AUDIT_ACTOR, plain_page, redirect};
use crate::server::{App, HttpError, Reply, read_body};

/// When set (and not empty), every dashboard request must carry this token.
pub const ADMIN_TOKEN_ENV: &str = "FEEDSYNC_ADMIN_TOKEN";
/// The cookie `/dashboard/login` sets: a login's random session id, nothing derived from the token.
pub const COOKIE_NAME: &str = "feedsync_admin";
/// The header an action sent with the login cookie must carry: that login's CSRF token (the
/// dashboard's page holds it; a form or script on another site cannot read it).
pub const CSRF_HEADER: &str = "x-feedsync-csrf";
/// Shortest admin token accepted: 32 characters, 128 bits written as hex (`openssl rand -hex 16`).
pub const ADMIN_TOKEN_CHARS_MIN: usize = 32;

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

/// Why a request may not see the dashboard, and what to do instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessDenied {
    pub message: String,
    pub hint: &'static str,
}

const LOOPBACK_HINT: &str = "open the dashboard on the parent itself (http://127.0.0.1:PORT/dashboard/) or through an SSH tunnel; \
     to open it from elsewhere, start `feed-publisher serve` with FEEDSYNC_ADMIN_TOKEN set and log in at /dashboard/login";
const TOKEN_HINT: &str = "log in at /dashboard/login with the value of FEEDSYNC_ADMIN_TOKEN, or send Authorization: Bearer <that value>";
const SHORT_TOKEN_HINT: &str = "set FEEDSYNC_ADMIN_TOKEN to at least 32 random characters (e.g. the output of `openssl rand -hex 16`) and restart `feed-publisher serve`";

/// Why a configured admin token cannot be used, if it cannot: shorter than
/// [`ADMIN_TOKEN_CHARS_MIN`], so guessable. Nobody gets in with it.
pub fn admin_token_problem(token: &str) -> Option<String> {
    let chars = token.trim().chars().count();
    (chars < ADMIN_TOKEN_CHARS_MIN).then(|| format!("{ADMIN_TOKEN_ENV} is {chars} characters long; at least {ADMIN_TOKEN_CHARS_MIN} are needed, so nobody gets in with it"))
}

/// Decides whether a request may use the dashboard. Pure: the caller passes the peer address
/// (`None` when unknown), the headers, the configured token (`None` or empty: not set) and
/// whether a session id belongs to a live login.
pub fn check_access(peer: Option<SocketAddr>, headers: &HeaderMap, admin_token: Option<&str>, live_session: &dyn Fn(&str) -> bool) -> Result<Access, AccessDenied> {
    if let Some(token) = admin_token.filter(|t| !t.trim().is_empty()) {
        if let Some(problem) = admin_token_problem(token) {
            return Err(AccessDenied { message: problem, hint: SHORT_TOKEN_HINT });
        }
        let bearer = bearer_token(headers);
        if let Some(offered) = bearer
            && exchange::hashes_equal(&exchange::token_hash(offered), &exchange::token_hash(token))
        {
            return Ok(Access::Bearer);
        }
        if let Some(session) = session_cookie(headers)
            && live_session(&session)
        {
            return Ok(Access::Cookie);
        }
        let message = if bearer.is_some() || cookie_value(headers, COOKIE_NAME).is_some() {
            "the admin token was not accepted"
        } else {
            "the dashboard needs the admin token (FEEDSYNC_ADMIN_TOKEN is set on this server)"
        };
        return Err(AccessDenied { message: message.into(), hint: TOKEN_HINT });
    }
    let Some(peer) = peer else {
        return Err(AccessDenied { message: "the dashboard could not tell where this request came from".into(), hint: LOOPBACK_HINT });
    };
    if !peer.ip().to_canonical().is_loopback() {
        return Err(AccessDenied {
            message: format!("the dashboard answers only this machine without a token; this request came from {}", peer.ip()),
            hint: LOOPBACK_HINT,
        });
    }
    // A proxy on this machine makes every client look local: its requests need the token.
    for name in ["forwarded", "x-forwarded-for", "x-real-ip"] {
        if headers.contains_key(name) {
            return Err(AccessDenied {
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
        return Err(AccessDenied { message: format!("Host {host:?} is not a name of this machine"), hint: LOOPBACK_HINT });
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

/// The token of an `Authorization: Bearer <token>` header, trimmed, if there is one.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::trim).filter(|t| !t.is_empty())
}

/// Whether the dashboard's rule admits a request: this machine without `FEEDSYNC_ADMIN_TOKEN`;
/// with it, that token or a live login. What `/metrics`, the status and (as the dashboard
/// shows them) the feeds also accept.
pub fn dashboard_admits(app: &App, peer: Option<SocketAddr>, headers: &HeaderMap) -> Result<Access, AccessDenied> {
    let token = admin_token();
    let now = Instant::now();
    check_access(peer, headers, token.as_deref(), &|id| app.admin_sessions.csrf_of(id, now).is_some())
}

/// The login session id a request's cookie names, if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    cookie_value(headers, COOKIE_NAME).filter(|v| !v.is_empty())
}

pub(crate) fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_owned())
}

pub(super) fn admin_token() -> Option<String> {
    std::env::var(ADMIN_TOKEN_ENV).ok().filter(|t| !t.trim().is_empty())
}

/// Actions must be POSTs of JSON: a form on another site cannot send that content type (and
/// a script there would need this server's CORS consent, never given). Without a token, an
/// `Origin` naming another site is refused too; with one, the login cookie is `SameSite=Strict`
/// and a TLS proxy in front may rewrite `Host`, so `Origin` is not compared.
///
/// With the login cookie, the action must also carry that login's CSRF token in
/// [`CSRF_HEADER`] (`csrf`: the token of the login the cookie names).
pub(super) fn check_action_request(headers: &HeaderMap, access: Access, csrf: Option<&str>) -> Result<(), HttpError> {
    let json =
        headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/json"));
    if !json {
        return Err(HttpError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "dashboard actions take a JSON body",
            "send Content-Type: application/json (the dashboard's pages do)",
        ));
    }
    if access == Access::Cookie {
        let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let matches = csrf.is_some_and(|expected| !sent.is_empty() && exchange::hashes_equal(sent, expected));
        if !matches {
            return Err(HttpError::new(
                StatusCode::FORBIDDEN,
                "an action with the login cookie came without this login's CSRF token",
                "act from the dashboard's own pages (they send it in X-Feedsync-CSRF); scripts send Authorization: Bearer instead",
            ));
        }
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

pub(super) async fn login(app: &App, request: Request<Incoming>, peer: Option<SocketAddr>, prefix: &str) -> Result<Reply, HttpError> {
    let Some(token) = admin_token() else {
        // Nothing to log in to: access is by where the request comes from.
        return Ok(redirect(StatusCode::SEE_OTHER, &format!("{prefix}/dashboard/")));
    };
    if let Some(problem) = admin_token_problem(&token) {
        return Ok(plain_page(StatusCode::FORBIDDEN, prefix, "Log in", &problem, SHORT_TOKEN_HINT, false));
    }
    let in_url = request.uri().query().is_some_and(|q| url::form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "token"));
    if in_url {
        return Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "the admin token was sent in the URL, where logs and browser history keep it; it was not read",
            "log in with the form at /dashboard/login (it POSTs the token), and change the token if that URL was shared or logged",
        ));
    }
    if request.method() != Method::POST {
        return Ok(plain_page(StatusCode::OK, prefix, "Log in", "This dashboard needs the admin token.", TOKEN_HINT, true));
    }
    let address = peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.ip().to_canonical());
    if let Some(wait) = app.admin_sessions.login_wait(address, Instant::now()) {
        let wait_s = wait.as_secs().max(1);
        tracing::warn!(peer = ?peer, wait_s, "dashboard login refused: too many wrong tokens from this address");
        return Ok(plain_page(StatusCode::TOO_MANY_REQUESTS, prefix, "Log in", &format!("Too many wrong tokens from this address; try again in {wait_s} s."), TOKEN_HINT, false)
            .with_header(header::RETRY_AFTER, HeaderValue::from(wait_s)));
    }
    let (body, _slot) = read_body(app, request, ACTION_BODY_BYTES_MAX, "send a smaller body").await?;
    let Some(offered) = url::form_urlencoded::parse(&body).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned()) else {
        return Ok(plain_page(StatusCode::OK, prefix, "Log in", "This dashboard needs the admin token.", TOKEN_HINT, true));
    };
    if !exchange::hashes_equal(&exchange::token_hash(offered.trim()), &exchange::token_hash(&token)) {
        app.admin_sessions.login_failed(address, Instant::now());
        tracing::warn!(peer = ?peer, "dashboard login with a wrong token");
        return Ok(plain_page(StatusCode::FORBIDDEN, prefix, "Log in", "That token was not accepted.", TOKEN_HINT, true));
    }
    app.admin_sessions.login_succeeded(address);
    let (session_id, _csrf) = app.admin_sessions.create(Instant::now());
    let mut session = app.database.session().await?;
    let from = peer.map_or_else(|| "an unknown address".to_owned(), |p| p.ip().to_string());
    exchange::audit(&mut session, AUDIT_ACTOR, "login", None, &format!("logged in from {from}")).await?;
    let cookie = format!("{COOKIE_NAME}={session_id}; Path={prefix}/; Max-Age={SESSION_S}; HttpOnly; SameSite=Strict");
    Ok(redirect(StatusCode::SEE_OTHER, &format!("{prefix}/dashboard/")).with_header(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("ascii cookie")))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            assert_eq!(check_access(Some(peer), &host, None, &|_| false), Ok(Access::Loopback), "{peer}");
        }
        assert_eq!(check_access(Some(local), &headers(&[("host", "localhost:8086")]), None, &|_| false), Ok(Access::Loopback));
        assert_eq!(check_access(Some(local), &headers(&[("host", "[::1]:8086")]), None, &|_| false), Ok(Access::Loopback));
        assert_eq!(check_access(Some(local), &HeaderMap::new(), Some(""), &|_| false), Ok(Access::Loopback), "an empty token is no token");
        let refused = check_access(Some(remote), &host, None, &|_| false).unwrap_err();
        assert!(refused.message.contains("10.0.0.7") && refused.hint.contains("FEEDSYNC_ADMIN_TOKEN"), "{refused:?}");
        assert!(check_access(None, &host, None, &|_| false).is_err(), "unknown peer");
        // A local proxy, a rebinding attack.
        assert!(check_access(Some(local), &headers(&[("host", "127.0.0.1"), ("x-forwarded-for", "41.1.2.3")]), None, &|_| false).is_err());
        assert!(check_access(Some(local), &headers(&[("host", "evil.example:8086")]), None, &|_| false).unwrap_err().message.contains("evil.example"));
        // A bearer token means nothing when none is configured.
        assert!(check_access(Some(remote), &headers(&[("authorization", "Bearer x")]), None, &|_| false).is_err());
    }

    #[test]
    fn with_a_token_every_client_must_show_it() {
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let remote: SocketAddr = "10.0.0.7:5000".parse().unwrap();
        let token = Some("0123456789abcdef0123456789abcdef");
        let live = |id: &str| id == "live-session";
        assert_eq!(check_access(Some(remote), &headers(&[("authorization", "Bearer 0123456789abcdef0123456789abcdef")]), token, &live), Ok(Access::Bearer));
        let cookie = format!("theme=dark; {COOKIE_NAME}=live-session");
        assert_eq!(check_access(Some(remote), &headers(&[("cookie", &cookie)]), token, &live), Ok(Access::Cookie));
        for wrong in [
            vec![],
            vec![("authorization", "Bearer 0123456789abcdef0123456789abcdeF")],
            vec![("cookie", "feedsync_admin=0123456789abcdef0123456789abcdef")],
            vec![("cookie", "feedsync_admin=ended-session")],
            vec![("cookie", "feedsync_admin=")],
            vec![("authorization", "Basic czNjcmV0LXRva2Vu")],
        ] {
            let refused = check_access(Some(remote), &headers(&wrong), token, &live).unwrap_err();
            assert!(refused.hint.contains("/dashboard/login"), "{wrong:?}: {refused:?}");
        }
        // Loopback is no excuse once a token is set (a local proxy would make everyone local).
        assert!(check_access(Some(local), &headers(&[("host", "127.0.0.1")]), token, &live).is_err());
    }

    #[test]
    fn a_short_admin_token_lets_nobody_in() {
        let remote: SocketAddr = "10.0.0.7:5000".parse().unwrap();
        let short = "correct horse battery";
        assert!(admin_token_problem(short).unwrap().contains("21 characters long; at least 32"));
        assert_eq!(admin_token_problem(&"x".repeat(ADMIN_TOKEN_CHARS_MIN)), None);
        let bearer = format!("Bearer {short}");
        let refused = check_access(Some(remote), &headers(&[("authorization", &bearer)]), Some(short), &|_| true).unwrap_err();
        assert!(refused.message.contains("nobody gets in") && refused.hint.contains("openssl rand -hex 16"), "{refused:?}");
    }

    #[test]
    fn actions_need_json_from_this_site() {
        let json_from = |origin: &str| headers(&[("content-type", "application/json"), ("origin", origin), ("host", "127.0.0.1:8086")]);
        assert_eq!(check_action_request(&json_from("http://evil.example"), Access::Loopback, None).unwrap_err().status, StatusCode::FORBIDDEN);
        // With the token, a proxy may have rewritten Host; the cookie is SameSite=Strict.
        let with_csrf = |origin: &str, csrf: &str| {
            headers(&[("content-type", "application/json"), ("origin", origin), ("host", "127.0.0.1:8086"), (CSRF_HEADER, csrf)])
        };
        assert!(check_action_request(&with_csrf("https://district.example", "the-login-csrf"), Access::Cookie, Some("the-login-csrf")).is_ok());
        // With the cookie, the login's CSRF token is needed: missing, wrong, or no login.
        assert_eq!(check_action_request(&json_from("https://district.example"), Access::Cookie, Some("the-login-csrf")).unwrap_err().status, StatusCode::FORBIDDEN);
        assert_eq!(check_action_request(&with_csrf("https://district.example", "guess"), Access::Cookie, Some("the-login-csrf")).unwrap_err().status, StatusCode::FORBIDDEN);
        assert_eq!(check_action_request(&with_csrf("https://district.example", "guess"), Access::Cookie, None).unwrap_err().status, StatusCode::FORBIDDEN);
        // A bearer token is no ambient credential: no CSRF token needed.
        assert!(check_action_request(&json_from("https://district.example"), Access::Bearer, None).is_ok());
        assert!(check_action_request(&headers(&[("content-type", "application/json"), ("host", "127.0.0.1:8086")]), Access::Loopback, None).is_ok());
        assert!(check_action_request(&json_from("http://127.0.0.1:8086"), Access::Loopback, None).is_ok());
        let form = headers(&[("content-type", "application/x-www-form-urlencoded")]);
        for access in [Access::Loopback, Access::Bearer, Access::Cookie] {
            assert_eq!(check_action_request(&form, access, Some("the-login-csrf")).unwrap_err().status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        }
    }
}
