//! The dashboard's logins, kept at the server: a login gets a random session id (the cookie)
//! and a random CSRF token (sent back with every action), both unguessable and unrelated to the
//! admin token, that expire after [`SESSION_S`] and end at logout or at a restart. Failed
//! logins are counted per address; past [`LOGIN_FAILURES_MAX`] in [`LOGIN_WINDOW_S`], that
//! address waits out the window. Both tables are bounded, and the decisions are pure functions
//! of the clock the caller passes in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a login lasts.
pub const SESSION_S: u64 = 12 * 3600;
/// Logins kept at once; the one closest to expiry goes first when another logs in.
pub const SESSIONS_MAX: usize = 1_000;
/// Wrong tokens one address may send within [`LOGIN_WINDOW_S`].
pub const LOGIN_FAILURES_MAX: u32 = 5;
/// The window failed logins are counted in, and how long an address then waits.
pub const LOGIN_WINDOW_S: u64 = 300;
/// Addresses (or users) whose failures are remembered at once; the oldest go first.
const FAILING_ADDRESSES_MAX: usize = 10_000;

struct Login {
    expires: Instant,
    csrf: String,
}

/// The server's logins and failed attempts. One per server (`App`).
#[derive(Default)]
pub struct AdminSessions {
    logins: Mutex<HashMap<String, Login>>,
    failures: Failures<IpAddr>,
}

/// Failed attempts by key (an address, a user name), each counted from its first failure in
/// the window [`LOGIN_WINDOW_S`]; bounded, the oldest forgotten first.
pub struct Failures<K> {
    counts: Mutex<HashMap<K, (u32, Instant)>>,
}

impl<K> Default for Failures<K> {
    fn default() -> Self {
        Failures { counts: Mutex::new(HashMap::new()) }
    }
}

impl<K: std::hash::Hash + Eq + Clone> Failures<K> {
    /// How long `key` must wait before it may try again, if it must.
    pub fn wait_of(&self, key: &K, now: Instant) -> Option<Duration> {
        let counts = self.counts.lock().expect("failures lock");
        counts.get(key).and_then(|(count, first)| wait(*count, now.saturating_duration_since(*first)))
    }

    /// Counts a failure of `key`.
    pub fn failed(&self, key: K, now: Instant) {
        let mut counts = self.counts.lock().expect("failures lock");
        let window = Duration::from_secs(LOGIN_WINDOW_S);
        counts.retain(|_, (_, first)| now.saturating_duration_since(*first) < window);
        if counts.len() >= FAILING_ADDRESSES_MAX
            && let Some(oldest) = counts.iter().min_by_key(|(_, (_, first))| *first).map(|(k, _)| k.clone())
        {
            counts.remove(&oldest);
        }
        counts.entry(key).or_insert((0, now)).0 += 1;
    }

    /// A success clears the count of `key`.
    pub fn succeeded(&self, key: &K) {
        self.counts.lock().expect("failures lock").remove(key);
    }
}

/// 244 random bits as 64 hex digits (two version-4 uuids without their fixed bits' meaning
/// mattering): a session id or CSRF token nobody can guess.
pub(crate) fn random_token() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

impl AdminSessions {
    /// A new login: its session id and CSRF token.
    pub fn create(&self, now: Instant) -> (String, String) {
        let (id, csrf) = (random_token(), random_token());
        let mut logins = self.logins.lock().expect("sessions lock");
        logins.retain(|_, login| login.expires > now);
        if logins.len() >= SESSIONS_MAX
            && let Some(first) = logins.iter().min_by_key(|(_, login)| login.expires).map(|(id, _)| id.clone())
        {
            logins.remove(&first);
        }
        logins.insert(id.clone(), Login { expires: now + Duration::from_secs(SESSION_S), csrf: csrf.clone() });
        (id, csrf)
    }

    /// The CSRF token of a live login, or `None` (unknown, expired or ended).
    pub fn csrf_of(&self, id: &str, now: Instant) -> Option<String> {
        let logins = self.logins.lock().expect("sessions lock");
        logins.get(id).filter(|login| login.expires > now).map(|login| login.csrf.clone())
    }

    /// Ends a login (logout).
    pub fn end(&self, id: &str) {
        self.logins.lock().expect("sessions lock").remove(id);
    }

    /// How long `address` must wait before it may try a token again, if it must.
    pub fn login_wait(&self, address: IpAddr, now: Instant) -> Option<Duration> {
        self.failures.wait_of(&address, now)
    }

    /// Counts a wrong token from `address`.
    pub fn login_failed(&self, address: IpAddr, now: Instant) {
        self.failures.failed(address, now);
    }

    /// A right token from `address` clears its count.
    pub fn login_succeeded(&self, address: IpAddr) {
        self.failures.succeeded(&address);
    }
}

/// The wait after `count` failures, the first of them `since` ago. Pure.
pub fn wait(count: u32, since: Duration) -> Option<Duration> {
    let window = Duration::from_secs(LOGIN_WINDOW_S);
    (count >= LOGIN_FAILURES_MAX && since < window).then(|| window - since)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_are_random_expire_and_end() {
        let sessions = AdminSessions::default();
        let now = Instant::now();
        let (id, csrf) = sessions.create(now);
        let (other, _) = sessions.create(now);
        assert_ne!(id, other);
        assert_eq!((id.len(), csrf.len()), (64, 64));
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()) && id != csrf);
        assert_eq!(sessions.csrf_of(&id, now + Duration::from_secs(SESSION_S - 1)), Some(csrf));
        assert_eq!(sessions.csrf_of(&id, now + Duration::from_secs(SESSION_S)), None, "expired");
        assert_eq!(sessions.csrf_of("guess", now), None);
        sessions.end(&id);
        assert_eq!(sessions.csrf_of(&id, now), None, "logged out");
        assert!(sessions.csrf_of(&other, now).is_some(), "other logins stay");
    }

    #[test]
    fn the_session_table_is_bounded() {
        let sessions = AdminSessions::default();
        let now = Instant::now();
        let first = sessions.create(now).0;
        for i in 1..=SESSIONS_MAX as u64 {
            sessions.create(now + Duration::from_millis(i));
        }
        assert_eq!(sessions.logins.lock().unwrap().len(), SESSIONS_MAX);
        assert_eq!(sessions.csrf_of(&first, now), None, "the login closest to expiry went first");
    }

    #[test]
    fn wrong_tokens_make_an_address_wait_out_the_window() {
        let sessions = AdminSessions::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.7".parse().unwrap(), "10.0.0.8".parse().unwrap());
        let now = Instant::now();
        for i in 0..LOGIN_FAILURES_MAX {
            assert_eq!(sessions.login_wait(a, now), None, "after {i} failures");
            sessions.login_failed(a, now);
        }
        assert_eq!(sessions.login_wait(a, now), Some(Duration::from_secs(LOGIN_WINDOW_S)));
        assert_eq!(sessions.login_wait(a, now + Duration::from_secs(100)), Some(Duration::from_secs(LOGIN_WINDOW_S - 100)));
        assert_eq!(sessions.login_wait(a, now + Duration::from_secs(LOGIN_WINDOW_S)), None, "the window passed");
        assert_eq!(sessions.login_wait(b, now), None, "another address is not slowed");
        sessions.login_succeeded(a);
        assert_eq!(sessions.login_wait(a, now), None);
        for (count, since, expected) in [(4, 0, None), (5, 0, Some(300)), (9, 299, Some(1)), (9, 300, None)] {
            assert_eq!(wait(count, Duration::from_secs(since)), expected.map(Duration::from_secs), "{count} {since}");
        }
    }
}
