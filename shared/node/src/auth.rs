//! Who may read the feeds: named bearer tokens with scopes and categories, created at the
//! publisher (`feed-publisher token create`), stored as hashes only, with an expiry, revocable,
//! and rotatable with an overlap during which the previous token still works. The decision
//! whether a token may read a category ([`may_read`]) is pure; the rest is the table
//! (`feedsync_token`). Children keep their own tokens (`parent.rs`), limited to their catchment.

use feedsync_core::sql::{now_plus_ms_sql, now_sql};
use feedsync_db::{DbError, Session, Value};

use crate::exchange::{self, TOKEN_TABLE};

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Feeds, resources and batch fetch of the token's categories, without credential columns.
    Feeds,
    /// As `feeds`, for a full replica (credential columns included once they are published).
    Replica,
    /// The dashboard, its admin API and the status.
    Admin,
    /// `/metrics`.
    Metrics,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Feeds, Scope::Replica, Scope::Admin, Scope::Metrics];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Feeds => "feeds",
            Scope::Replica => "replica",
            Scope::Admin => "admin",
            Scope::Metrics => "metrics",
        }
    }
}

/// Longest a rotation's previous token may stay valid.
pub const ROTATION_OVERLAP_S_MAX: u64 = 30 * 86_400;
/// Longest a token name may be.
const NAME_CHARS_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("unknown scope {0:?}: use feeds, replica, admin or metrics (comma-separated)")]
    BadScope(String),
    #[error("a token needs at least one scope: feeds, replica, admin or metrics")]
    NoScope,
    #[error("invalid token name {0:?}: use 1 to 64 letters, digits, '-' or '_'")]
    BadName(String),
    #[error("a token named {0:?} exists; `token rotate` gives it a new value, `token revoke` ends it")]
    Exists(String),
    #[error("no live token named {0:?}; `token list` shows them")]
    Unknown(String),
    #[error("{0}")]
    Database(#[from] DbError),
}

/// A token as `token list` shows it and a request is judged by (never its value or hash).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenInfo {
    pub name: String,
    pub scopes: Vec<Scope>,
    /// `*` for every category.
    pub categories: Vec<String>,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
}

/// Parses `feeds,metrics`.
pub fn parse_scopes(text: &str) -> Result<Vec<Scope>, AuthError> {
    let mut scopes = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let scope = Scope::ALL.into_iter().find(|s| s.as_str() == part).ok_or_else(|| AuthError::BadScope(part.into()))?;
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    if scopes.is_empty() {
        return Err(AuthError::NoScope);
    }
    scopes.sort();
    Ok(scopes)
}

/// Whether `token` may read the feed, resources and batch answers of `category` (`all`, the
/// feed of every category, needs `*`). Pure.
pub fn may_read(token: &TokenInfo, category: &str) -> bool {
    let reads = token.scopes.iter().any(|s| matches!(s, Scope::Feeds | Scope::Replica));
    reads && token.categories.iter().any(|c| c == "*" || (c == category && category != "all"))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= NAME_CHARS_MAX && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A new token's value: 244 random bits, recognisable by its prefix in a leaked log.
fn new_value() -> String {
    format!("fst_{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// Creates a token and returns its value (shown once; only its hash is kept).
pub async fn create_token(session: &mut Session, name: &str, scopes: &[Scope], categories: &[String], expires_s: Option<u64>) -> Result<String, AuthError> {
    if !valid_name(name) {
        return Err(AuthError::BadName(name.into()));
    }
    if scopes.is_empty() {
        return Err(AuthError::NoScope);
    }
    exchange::prepare_tables(session).await?;
    if !session.query(&format!("SELECT name FROM {TOKEN_TABLE} WHERE name = ?"), &[name.into()]).await?.is_empty() {
        return Err(AuthError::Exists(name.into()));
    }
    let value = new_value();
    let categories = if categories.is_empty() { "*".to_owned() } else { categories.join(",") };
    let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    let expires = match expires_s {
        Some(s) => now_plus_ms_sql(session.dialect(), (s.min(10 * 365 * 86_400) * 1_000) as i64),
        None => "NULL".to_owned(),
    };
    session
        .execute(
            &format!("INSERT INTO {TOKEN_TABLE} (name, token_hash, scopes, categories, expires_at) VALUES (?, ?, ?, ?, {expires})"),
            &[name.into(), exchange::token_hash(&value).into(), scopes.join(",").into(), categories.into()],
        )
        .await?;
    Ok(value)
}

fn info_from_row(r: &feedsync_db::Row) -> TokenInfo {
    TokenInfo {
        name: r.text("name").unwrap_or_default(),
        scopes: parse_scopes(&r.text("scopes").unwrap_or_default()).unwrap_or_default(),
        categories: r.text("categories").unwrap_or_default().split(',').map(str::to_owned).collect(),
        created_at: r.text("created_at").unwrap_or_default(),
        expires_at: r.text("expires_at"),
        revoked_at: r.text("revoked_at"),
    }
}

pub async fn list_tokens(session: &mut Session) -> Result<Vec<TokenInfo>, AuthError> {
    exchange::prepare_tables(session).await?;
    let rows = session.query(&format!("SELECT name, scopes, categories, created_at, expires_at, revoked_at FROM {TOKEN_TABLE} ORDER BY name"), &[]).await?;
    Ok(rows.iter().map(info_from_row).collect())
}

/// Ends a token (and its rotation's previous value) now.
pub async fn revoke_token(session: &mut Session, name: &str) -> Result<(), AuthError> {
    exchange::prepare_tables(session).await?;
    let now = now_sql(session.dialect());
    let n = session
        .execute(&format!("UPDATE {TOKEN_TABLE} SET revoked_at = {now}, previous_hash = NULL WHERE name = ? AND revoked_at IS NULL"), &[name.into()])
        .await?;
    if n == 0 {
        return Err(AuthError::Unknown(name.into()));
    }
    Ok(())
}

/// Gives a live token a new value and returns it; the old value keeps working for `overlap_s`
/// more seconds (0: it ends now).
pub async fn rotate_token(session: &mut Session, name: &str, overlap_s: u64) -> Result<String, AuthError> {
    exchange::prepare_tables(session).await?;
    let dialect = session.dialect();
    let until = now_plus_ms_sql(dialect, (overlap_s.min(ROTATION_OVERLAP_S_MAX) * 1_000) as i64);
    let value = new_value();
    let n = session
        .execute(
            &format!(
                "UPDATE {TOKEN_TABLE} SET previous_hash = token_hash, previous_valid_until = {until}, token_hash = ? \
                 WHERE name = ? AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > {now})",
                now = now_sql(dialect)
            ),
            &[exchange::token_hash(&value).into(), name.into()],
        )
        .await?;
    if n == 0 {
        return Err(AuthError::Unknown(name.into()));
    }
    Ok(value)
}

/// The live token `value` is (or was, within its rotation's overlap); `None` for anything else.
pub async fn token_for(session: &mut Session, value: &str) -> Result<Option<TokenInfo>, DbError> {
    let hash = exchange::token_hash(value.trim());
    let now = now_sql(session.dialect());
    let rows = session
        .query(
            &format!(
                "SELECT name, scopes, categories, created_at, expires_at, revoked_at FROM {TOKEN_TABLE} \
                 WHERE (token_hash = ? OR (previous_hash = ? AND previous_valid_until > {now})) \
                 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > {now})"
            ),
            &[Value::Text(hash.clone()), Value::Text(hash)],
        )
        .await?;
    Ok(rows.first().map(info_from_row))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(scopes: &[Scope], categories: &[&str]) -> TokenInfo {
        TokenInfo {
            name: "t".into(),
            scopes: scopes.to_vec(),
            categories: categories.iter().map(|c| c.to_string()).collect(),
            created_at: String::new(),
            expires_at: None,
            revoked_at: None,
        }
    }

    #[test]
    fn scopes_parse_and_decide_what_a_token_reads() {
        assert_eq!(parse_scopes("metrics, feeds,feeds").unwrap(), vec![Scope::Feeds, Scope::Metrics]);
        assert!(matches!(parse_scopes("feeds,root"), Err(AuthError::BadScope(s)) if s == "root"));
        assert!(matches!(parse_scopes(" , "), Err(AuthError::NoScope)));
        let reader = token(&[Scope::Feeds], &["patient", "encounter"]);
        assert!(may_read(&reader, "patient") && may_read(&reader, "encounter"));
        assert!(!may_read(&reader, "observation") && !may_read(&reader, "all"), "only its categories; `all` needs *");
        assert!(may_read(&token(&[Scope::Replica], &["*"]), "all"));
        assert!(!may_read(&token(&[Scope::Admin, Scope::Metrics], &["*"]), "patient"), "admin and metrics do not read feeds");
        assert!(!may_read(&token(&[Scope::Feeds], &["all"]), "all"), "`all` is not a category a token can name");
    }
}
