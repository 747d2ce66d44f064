//! OpenMRS users reading feeds the way they log in to OpenMRS itself (HTTP Basic), so that an
//! atomfeed client configured for an OpenMRS server (the Bahmni/ICT4H client) works against the
//! publisher unchanged. The password is checked as OpenMRS checks it, against the `users` table
//! of the database being published ([`password_matches`]), and the user must hold the
//! `System Developer` role or the privilege `[auth] openmrs_privilege` names, directly or
//! through inherited roles ([`may_read_feeds`]). Decisions are pure; [`user`] reads the rows.

use sha2::{Digest, Sha512};

use feedsync_db::{DbError, Session, Value};

/// The role OpenMRS gives every privilege (its superuser role).
pub const SUPERUSER_ROLE: &str = "System Developer";
/// The privilege that lets an OpenMRS user read the feeds, unless the config names another.
pub const DEFAULT_PRIVILEGE: &str = "Get Feedsync Feeds";
/// Inherited roles followed at most this deep (`role_role`): a cycle cannot loop forever.
const ROLE_DEPTH_MAX: usize = 16;

/// Whether `password` is the one `stored` (with `salt`) was made from, the way OpenMRS 1.5
/// to 2.7 decide it (`Security.hashMatches` of password + salt): the lowercase hex SHA-512,
/// or either SHA-1 form OpenMRS still accepts from old databases (correct hex, and the hex
/// without leading zeros per byte of OpenMRS ticket 1178). Compared in constant time.
/// OpenMRS 2.8's Argon2id hashes are not accepted (yet): such a user is refused.
pub fn password_matches(stored: &str, salt: Option<&str>, password: &str) -> bool {
    if stored.is_empty() {
        return false;
    }
    let input = format!("{password}{}", salt.unwrap_or(""));
    let sha512 = hex(&Sha512::digest(input.as_bytes()));
    let sha1_digest = sha1::Sha1::digest(input.as_bytes());
    let sha1 = hex(&sha1_digest);
    let sha1_unpadded: String = sha1_digest.iter().map(|b| format!("{b:x}")).collect();
    // Every form is compared, whichever matches, so the time says nothing about which.
    let results = [constant_time_eq(stored, &sha512), constant_time_eq(stored, &sha1), constant_time_eq(stored, &sha1_unpadded)];
    results.iter().any(|m| *m)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Equal lengths and bytes, in time that depends on the lengths only.
fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An OpenMRS account as the login check needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenmrsUser {
    pub username: String,
    pub password: String,
    pub salt: Option<String>,
    pub retired: bool,
    /// Its roles, inherited ones included.
    pub roles: Vec<String>,
    /// The privileges of those roles.
    pub privileges: Vec<String>,
}

/// Whether `user` may read the feeds: not retired, and `System Developer` or `privilege`.
/// Pure.
pub fn may_read_feeds(user: &OpenmrsUser, privilege: &str) -> bool {
    !user.retired && (user.roles.iter().any(|r| r == SUPERUSER_ROLE) || user.privileges.iter().any(|p| p == privilege))
}

/// `Authorization: Basic base64(user:password)`: the user and password, if well formed.
pub fn basic_credentials(header: &str) -> Option<(String, String)> {
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(base64_decode(encoded.trim())?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    (!user.is_empty()).then(|| (user.to_owned(), password.to_owned()))
}

/// Standard base64 with optional padding; `None` for anything else.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let text = text.trim_end_matches('=');
    if text.len() > 4096 || text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut bits, mut count) = (0u32, 0);
    for c in text.bytes() {
        let value = ALPHABET.iter().position(|a| *a == c)? as u32;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    Some(out)
}

/// The account logging in as `login` (its username or system id, as OpenMRS accepts either),
/// with its roles (inherited ones followed through `role_role`) and their privileges; `None`
/// when there is no such account.
pub async fn user(session: &mut Session, login: &str) -> Result<Option<OpenmrsUser>, DbError> {
    let rows = session
        .query("SELECT user_id, username, password, salt, retired FROM users WHERE username = ? OR system_id = ? ORDER BY user_id LIMIT 2", &[login.into(), login.into()])
        .await?;
    // A username equal to another account's system id is ambiguous: prefer the username.
    let Some(row) = rows.iter().find(|r| r.text("username").as_deref() == Some(login)).or(rows.first()) else { return Ok(None) };
    let user_id = row.get("user_id").clone();
    let mut roles: Vec<String> =
        session.query("SELECT role FROM user_role WHERE user_id = ?", &[user_id]).await?.iter().filter_map(|r| r.text("role")).collect();
    let mut frontier = roles.clone();
    for _ in 0..ROLE_DEPTH_MAX {
        if frontier.is_empty() {
            break;
        }
        let marks = vec!["?"; frontier.len()].join(", ");
        let values: Vec<Value> = frontier.iter().map(|r| r.as_str().into()).collect();
        let parents: Vec<String> =
            session.query(&format!("SELECT parent_role FROM role_role WHERE child_role IN ({marks})"), &values).await?.iter().filter_map(|r| r.text("parent_role")).collect();
        frontier = parents.into_iter().filter(|p| !roles.contains(p)).collect();
        frontier.sort();
        frontier.dedup();
        roles.extend(frontier.iter().cloned());
    }
    let privileges = if roles.is_empty() {
        Vec::new()
    } else {
        let marks = vec!["?"; roles.len()].join(", ");
        let values: Vec<Value> = roles.iter().map(|r| r.as_str().into()).collect();
        session.query(&format!("SELECT DISTINCT privilege FROM role_privilege WHERE role IN ({marks})"), &values).await?.iter().filter_map(|r| r.text("privilege")).collect()
    };
    Ok(Some(OpenmrsUser {
        username: row.text("username").unwrap_or_else(|| login.to_owned()),
        password: row.text("password").unwrap_or_default(),
        salt: row.text("salt"),
        retired: row.get("retired").to_text().is_some_and(|v| v != "0"),
        roles,
        privileges,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use feedsync_core::rng::SplitMix64;

    #[test]
    fn the_forms_openmrs_accepts_match_and_nothing_else() {
        let salt = "ab12";
        let sha512 = hex(&Sha512::digest(b"Secret9ab12"));
        assert_eq!(sha512.len(), 128);
        assert!(password_matches(&sha512, Some(salt), "Secret9"));
        assert!(!password_matches(&sha512, Some(salt), "secret9"));
        assert!(!password_matches(&sha512, Some("ab13"), "Secret9"), "the salt counts");
        assert!(!password_matches(&sha512, None, "Secret9"));
        let sha1 = hex(&sha1::Sha1::digest(b"Secret9ab12"));
        assert!(password_matches(&sha1, Some(salt), "Secret9"));
        assert!(!password_matches(&sha1.to_uppercase(), Some(salt), "Secret9"), "OpenMRS stores lowercase");
        assert!(!password_matches("", Some(salt), ""), "an empty stored password never matches");
    }

    #[test]
    fn the_unpadded_sha1_of_ticket_1178_matches() {
        // Find inputs whose SHA-1 has a byte below 0x10, so the two SHA-1 forms differ.
        let mut rng = SplitMix64::new(1178);
        let mut checked = 0;
        for _ in 0..2_000 {
            let password = format!("p{}", rng.next_u64());
            let digest = sha1::Sha1::digest(format!("{password}s").as_bytes());
            if digest.iter().all(|b| *b >= 0x10) {
                continue;
            }
            let unpadded: String = digest.iter().map(|b| format!("{b:x}")).collect();
            assert!(unpadded.len() < 40);
            assert!(password_matches(&unpadded, Some("s"), &password));
            assert!(!password_matches(&unpadded, Some("s"), &format!("{password}x")));
            checked += 1;
        }
        assert!(checked > 100, "{checked}");
    }

    #[test]
    fn wrong_passwords_never_match() {
        let mut rng = SplitMix64::new(99);
        let stored = hex(&Sha512::digest(b"right-passwordsalt"));
        for _ in 0..5_000 {
            let guess = format!("{:x}", rng.next_u64());
            assert!(!password_matches(&stored, Some("salt"), &guess));
        }
        assert!(password_matches(&stored, Some("salt"), "right-password"));
    }

    #[test]
    fn basic_credentials_parse_only_well_formed_headers() {
        assert_eq!(basic_credentials("Basic YWRtaW46QWRtaW4xMjM="), Some(("admin".into(), "Admin123".into())));
        assert_eq!(basic_credentials("basic YWRtaW46QWRtaW4xMjM"), Some(("admin".into(), "Admin123".into())), "no padding, any case");
        assert_eq!(basic_credentials("Basic YTpiOmM="), Some(("a".into(), "b:c".into())), "a colon in the password");
        for bad in ["Bearer YWRtaW46QWRtaW4xMjM=", "Basic", "Basic !!!!", "Basic YWRtaW4=", "Basic OmFi", "Basic Y"] {
            assert_eq!(basic_credentials(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_feeds_need_the_superuser_role_or_the_privilege() {
        let user = |roles: &[&str], privileges: &[&str], retired: bool| OpenmrsUser {
            username: "u".into(),
            password: String::new(),
            salt: None,
            retired,
            roles: roles.iter().map(|s| s.to_string()).collect(),
            privileges: privileges.iter().map(|s| s.to_string()).collect(),
        };
        assert!(may_read_feeds(&user(&["System Developer"], &[], false), DEFAULT_PRIVILEGE));
        assert!(may_read_feeds(&user(&["Clerk"], &["Get Feedsync Feeds"], false), DEFAULT_PRIVILEGE));
        assert!(!may_read_feeds(&user(&["Clerk"], &["Get Patients"], false), DEFAULT_PRIVILEGE));
        assert!(!may_read_feeds(&user(&["System Developer"], &[], true), DEFAULT_PRIVILEGE), "retired");
        assert!(may_read_feeds(&user(&["Clerk"], &["Read Feeds"], false), "Read Feeds"), "the configured privilege");
    }
}
