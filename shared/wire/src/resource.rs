//! Resources: the JSON form of one entity's current state as the publisher serves it and the
//! subscriber applies it. Local integer ids never appear: every reference (declared, from the
//! profile, or hidden in a value) is replaced by the referenced entity's identity. This module
//! owns the wire types, the content hash and resource links; the lookups between identities
//! and local rows are `feedsync_node::lookup`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::hex;

/// An entity's columns by name, as JSON values (references as `{"ref": {...}}` objects).
pub type Fields = BTreeMap<String, serde_json::Value>;

/// The publisher's path for resources, below its optional path prefix.
pub const RESOURCE_PATH: &str = "/ws/feedsync/resource";
/// The publisher's batch-fetch path, below its optional path prefix.
pub const BATCH_PATH: &str = "/ws/feedsync/resources";

/// One entity's current state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    pub table: String,
    pub category: String,
    pub key: String,
    /// Column name to value. A reference is `{"ref": {"table": ..., "key": ...}}` (key null
    /// when the referenced row does not exist), bytes are `{"hex": "..."}`, dates are text.
    pub columns: BTreeMap<String, serde_json::Value>,
    /// `sha256:<hex>` of the canonical JSON of `columns`.
    pub hash: String,
}

/// What remains of a deleted entity, served with 410 Gone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tombstone {
    pub table: String,
    pub category: String,
    pub key: String,
    pub deleted: bool,
    pub deleted_at: String,
}

/// Request body of batch fetch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchRequest {
    pub resources: Vec<String>,
}

/// One answer in a batch, in request order: exactly one of `resource` and `tombstone` is set
/// when `status` is 200 or 410; otherwise `error` says why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchItem {
    pub link: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub resource: Option<Resource>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tombstone: Option<Tombstone>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchResponse {
    pub resources: Vec<BatchItem>,
}

/// The canonical content hash: SHA-256 over the JSON of the columns with sorted keys.
pub fn content_hash(columns: &BTreeMap<String, serde_json::Value>) -> String {
    let canonical = serde_json::to_vec(columns).expect("json values serialize");
    format!("sha256:{}", hex(&Sha256::digest(&canonical)))
}

pub fn reference_json(table: &str, key: Option<&str>) -> serde_json::Value {
    serde_json::json!({ "ref": { "table": table, "key": key } })
}

/// Percent-encodes a key for a URL path segment (everything but unreserved characters).
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn decode_key(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let h = segment.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The path of an entity's resource below the publisher's path prefix.
pub fn resource_path(path_prefix: &str, table: &str, key: &str) -> String {
    format!("{path_prefix}{RESOURCE_PATH}/{}/{}", encode_key(table), encode_key(key))
}

/// Splits a resource link (absolute URL or path) into table and key.
pub fn parse_resource_link(link: &str, path_prefix: &str) -> Option<(String, String)> {
    let path = match link.find("://") {
        Some(i) => &link[link[i + 3..].find('/').map(|j| i + 3 + j)?..],
        None => link,
    };
    let path = path.split(['?', '#']).next()?;
    let rest = path.strip_prefix(path_prefix)?.strip_prefix(RESOURCE_PATH)?.strip_prefix('/')?;
    let (table, key) = rest.split_once('/')?;
    if key.contains('/') || table.is_empty() || key.is_empty() {
        return None;
    }
    Some((decode_key(table)?, decode_key(key)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_urls() {
        for key in ["8d6c993e-c2cc-11de-8d13-0010c6dffd0f", "System Developer", "a+b", "ü/%?#"] {
            let path = resource_path("/openmrs", "role", key);
            assert_eq!(parse_resource_link(&path, "/openmrs"), Some(("role".into(), key.into())), "{path}");
            let url = format!("http://host:8080{path}?x=1");
            assert_eq!(parse_resource_link(&url, "/openmrs"), Some(("role".into(), key.into())));
        }
        assert_eq!(parse_resource_link("/ws/feedsync/resource/obs", ""), None);
        assert_eq!(parse_resource_link("/elsewhere/obs/x", ""), None);
        assert_eq!(decode_key("%zz"), None);
    }

    #[test]
    fn hash_is_canonical() {
        let mut a = BTreeMap::new();
        a.insert("b".to_string(), serde_json::json!(1));
        a.insert("a".to_string(), reference_json("users", Some("u")));
        let mut b = BTreeMap::new();
        b.insert("a".to_string(), reference_json("users", Some("u")));
        b.insert("b".to_string(), serde_json::json!(1));
        assert_eq!(content_hash(&a), content_hash(&b));
        b.insert("b".to_string(), serde_json::json!(2));
        assert_ne!(content_hash(&a), content_hash(&b));
        assert!(content_hash(&a).starts_with("sha256:"));
    }
}
