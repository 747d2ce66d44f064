//! Who may use the dashboard ([`check_access`]): without `FEEDSYNC_ADMIN_TOKEN` only this
//! machine, with it every client showing the token (`Authorization: Bearer` or the login
//! cookie); what an action request must look like; the login page.

use std::net::{IpAddr, SocketAddr};

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode};
use sha2::{Digest, Sha256};

use feedsync_node::exchange;
use feedsync_wire::hex;

use super::{ACTION_BODY_BYTES_MAX, AUDIT_ACTOR, plain_page, redirect};
use crate::server::{App, HttpError, Reply, read_body};

/// When set (and not empty), every dashboard request must carry this token.
pub const ADMIN_TOKEN_ENV: &str = "FEEDSYNC_ADMIN_TOKEN";
/// The cookie `/dashboard/login` sets: a digest of the token, never the token itself.
pub const COOKIE_NAME: &str = "feedsync_admin";
/// How long a login lasts.
const COOKIE_MAX_AGE_S: i64 = 12 * 3600;

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

/// Decides whether a request may use the dashboard. Pure: the caller passes the peer address
/// (`None` when unknown), the headers and the configured token (`None` or empty: not set).
pub fn check_access(peer: Option<SocketAddr>, headers: &HeaderMap, admin_token: Option<&str>) -> Result<Access, AccessDenied> {
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

pub(super) fn admin_token() -> Option<String> {
    std::env::var(ADMIN_TOKEN_ENV).ok().filter(|t| !t.trim().is_empty())
}

/// Actions must be POSTs of JSON: a form on another site cannot send that content type (and
/// a script there would need this server's CORS consent, never given). Without a token, an
/// `Origin` naming another site is refused too; with one, the login cookie is `SameSite=Strict`
/// and a TLS proxy in front may rewrite `Host`, so `Origin` is not compared.
pub(super) fn check_action_request(headers: &HeaderMap, access: Access) -> Result<(), HttpError> {
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

pub(super) async fn login(app: &App, request: Request<Incoming>, peer: Option<SocketAddr>, prefix: &str) -> Result<Reply, HttpError> {
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
}
