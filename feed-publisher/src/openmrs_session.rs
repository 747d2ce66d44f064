//! OpenMRS logins at the HTTP edge: HTTP Basic on the feed routes, and `GET
//! /ws/rest/v1/session` answering a `JSESSIONID` cookie the feed routes then accept, as
//! OpenMRS does. The decisions (password forms, roles, privilege) are in
//! `feedsync_node::openmrs_login`; here are the sessions (server-side, random, expiring after
//! [`SESSION_IDLE_S`] unused), the slowing down of wrong passwords per user and per address,
//! and the status codes: a wrong password is 401 and nothing else.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper::header::{self, HeaderValue};
use hyper::{HeaderMap, StatusCode};
use serde_json::json;

use feedsync_node::openmrs_login::{self, basic_credentials, may_read_feeds, password_matches};

use crate::dashboard::{Failures, cookie_value, random_token};
use crate::server::{App, HttpError, Reply};

/// OpenMRS's session route, under the path prefix like every route.
pub const SESSION_PATH: &str = "/ws/rest/v1/session";
/// The cookie name OpenMRS (Tomcat) uses, which atomfeed clients send back.
pub const SESSION_COOKIE: &str = "JSESSIONID";
/// A session unused this long ends (Tomcat's default).
pub const SESSION_IDLE_S: u64 = 30 * 60;
/// Sessions kept at once; the one unused longest goes first.
pub const SESSIONS_MAX: usize = 10_000;

/// The OpenMRS sessions and failed logins of one server.
#[derive(Default)]
pub struct OpenmrsSessions {
    /// Session id → (username, last use).
    sessions: Mutex<HashMap<String, (String, Instant)>>,
    by_user: Failures<String>,
    by_address: Failures<IpAddr>,
}

impl OpenmrsSessions {
    fn create(&self, username: &str, now: Instant) -> String {
        let id = random_token();
        let mut sessions = self.sessions.lock().expect("sessions lock");
        let idle = Duration::from_secs(SESSION_IDLE_S);
        sessions.retain(|_, (_, used)| now.saturating_duration_since(*used) < idle);
        if sessions.len() >= SESSIONS_MAX
            && let Some(oldest) = sessions.iter().min_by_key(|(_, (_, used))| *used).map(|(id, _)| id.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(id.clone(), (username.to_owned(), now));
        id
    }

    /// The user of a live session, which it keeps alive.
    fn user_of(&self, id: &str, now: Instant) -> Option<String> {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        let idle = Duration::from_secs(SESSION_IDLE_S);
        let (user, used) = sessions.get_mut(id).filter(|(_, used)| now.saturating_duration_since(*used) < idle)?;
        *used = now;
        Some(user.clone())
    }

    fn end(&self, id: &str) {
        self.sessions.lock().expect("sessions lock").remove(id);
    }
}

const HINT: &str = "log in as an OpenMRS user with the System Developer role or the privilege [auth] openmrs_privilege names";

/// Who an OpenMRS credential in `headers` is: `Ok(Some(user))` when it is accepted, `Ok(None)`
/// when the request carries none (or logins are off), an error when one was offered and refused.
pub async fn authenticate(app: &App, peer: Option<SocketAddr>, headers: &HeaderMap) -> Result<Option<String>, HttpError> {
    if !app.config.auth.openmrs_logins {
        return Ok(None);
    }
    let now = Instant::now();
    if let Some(id) = cookie_value(headers, SESSION_COOKIE).filter(|v| !v.is_empty()) {
        // A cookie from another server (OpenMRS's own, on the same host) is no credential
        // here; other credentials in the request still count.
        if let Some(user) = app.openmrs_sessions.user_of(&id, now) {
            return Ok(Some(user));
        }
    }
    let Some((login, password)) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(basic_credentials) else {
        return Ok(None);
    };
    let address = peer.map(|p| p.ip().to_canonical());
    let waits = [app.openmrs_sessions.by_user.wait_of(&login, now), address.and_then(|a| app.openmrs_sessions.by_address.wait_of(&a, now))];
    if let Some(wait) = waits.into_iter().flatten().max() {
        return Err(HttpError::new(StatusCode::TOO_MANY_REQUESTS, format!("too many wrong passwords: try again in {} s", wait.as_secs().max(1)), HINT));
    }
    let mut session = app.database.session().await?;
    let user = openmrs_login::user(&mut session, &login).await?;
    drop(session);
    let accepted = user.as_ref().filter(|u| password_matches(&u.password, u.salt.as_deref(), &password));
    let Some(user) = accepted else {
        app.openmrs_sessions.by_user.failed(login.clone(), now);
        if let Some(address) = address {
            app.openmrs_sessions.by_address.failed(address, now);
        }
        tracing::warn!(user = %login, peer = ?address, "OpenMRS login refused: wrong user or password");
        return Err(HttpError::new(StatusCode::UNAUTHORIZED, "user or password not accepted", HINT));
    };
    app.openmrs_sessions.by_user.succeeded(&login);
    if let Some(address) = address {
        app.openmrs_sessions.by_address.succeeded(&address);
    }
    if !may_read_feeds(user, &app.config.auth.openmrs_privilege) {
        return Err(HttpError::new(
            StatusCode::FORBIDDEN,
            format!("OpenMRS user {:?} may not read the feeds", user.username),
            "give the user the System Developer role, or a role with the privilege [auth] openmrs_privilege names (default \"Get Feedsync Feeds\")",
        ));
    }
    Ok(Some(user.username.clone()))
}

/// `GET /ws/rest/v1/session`: with Basic credentials, a new session and its cookie, as OpenMRS
/// answers; with a live cookie, that session; with neither, `{"authenticated": false}`.
/// `DELETE` ends the session.
pub(crate) async fn route(app: &App, request: &hyper::Request<hyper::body::Incoming>) -> Result<Reply, HttpError> {
    let headers = request.headers();
    if request.method() == hyper::Method::DELETE {
        if let Some(id) = cookie_value(headers, SESSION_COOKIE) {
            app.openmrs_sessions.end(&id);
        }
        return Ok(Reply::new(StatusCode::NO_CONTENT, "application/json", bytes::Bytes::new()).no_etag());
    }
    if request.method() != hyper::Method::GET {
        return Err(HttpError::new(StatusCode::METHOD_NOT_ALLOWED, "the session takes GET (log in) or DELETE (log out)", "use GET with HTTP Basic credentials"));
    }
    let peer = request.extensions().get::<crate::server::PeerAddr>().map(|p| p.0);
    let user = authenticate(app, peer, headers).await?;
    let body = |id: Option<&str>, user: Option<&str>| {
        let value = match (id, user) {
            (Some(id), Some(user)) => json!({"sessionId": id, "authenticated": true, "user": {"username": user}}),
            _ => json!({"authenticated": false}),
        };
        bytes::Bytes::from(value.to_string())
    };
    let Some(user) = user else {
        return Ok(Reply::new(StatusCode::OK, "application/json", body(None, None)).no_etag());
    };
    // Accepted without Basic credentials: by its live session cookie, which stays.
    if !headers.contains_key(header::AUTHORIZATION)
        && let Some(id) = cookie_value(headers, SESSION_COOKIE)
    {
        return Ok(Reply::new(StatusCode::OK, "application/json", body(Some(&id), Some(&user))).no_etag());
    }
    let id = app.openmrs_sessions.create(&user, Instant::now());
    let secure = if crate::server::arrived_over_tls(request) { "; Secure" } else { "" };
    let prefix = &app.config.server.path_prefix;
    let cookie = format!("{SESSION_COOKIE}={id}; Path={prefix}/; HttpOnly; SameSite=Lax{secure}");
    let cookie = HeaderValue::from_str(&cookie).map_err(|_| HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, "session cookie", "report this"))?;
    Ok(Reply::new(StatusCode::OK, "application/json", body(Some(&id), Some(&user))).no_etag().with_header(header::SET_COOKIE, cookie))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_random_kept_alive_by_use_and_end() {
        let sessions = OpenmrsSessions::default();
        let t0 = Instant::now();
        let a = sessions.create("admin", t0);
        let b = sessions.create("admin", t0);
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        let idle = Duration::from_secs(SESSION_IDLE_S);
        assert_eq!(sessions.user_of(&a, t0 + idle / 2).as_deref(), Some("admin"));
        assert_eq!(sessions.user_of(&a, t0 + idle / 2 + idle - Duration::from_secs(1)).as_deref(), Some("admin"), "use keeps it alive");
        assert_eq!(sessions.user_of(&b, t0 + idle), None, "unused, it expired");
        sessions.end(&a);
        assert_eq!(sessions.user_of(&a, t0 + idle), None);
        assert_eq!(sessions.user_of("guess", t0), None);
    }
}
