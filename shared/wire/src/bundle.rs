//! USB bundles: the file format that carries sync data between a child site and its parent
//! when there is no network, on a USB stick. This module owns the format and nothing else
//! reads or writes it; it does no IO (the caller reads and writes the files, and supplies the
//! creation time).
//!
//! A bundle is encrypted (a lost stick reveals no patient data), authenticated (a modified,
//! damaged or truncated file is refused with an error that says which), and carries a
//! readable header (which child, which direction, which event range) that `read_header` shows
//! without the key and that is itself authenticated: editing it makes the file fail to open.
//!
//! # Key
//!
//! Each child has a secret token `<name>.<secret>`; the parent stores only
//! `token_hash = lowercase hex of sha256(token)`, so both sides have `token_hash`. The file
//! key is HKDF-SHA256 (no salt) of the 64 ASCII characters of `token_hash`, with info
//! [`KEY_INFO`], 32 bytes. Whoever can read the parent's registrations can open that child's
//! bundles; they already hold the same patient data.
//!
//! # Layout (all integers big-endian)
//!
//! | offset        | bytes | field                                                            |
//! |---------------|-------|------------------------------------------------------------------|
//! | 0             | 8     | magic, [`MAGIC`] (`FEEDSYNC`)                                    |
//! | 8             | 1     | binary format version, [`FORMAT_VERSION`] (1)                    |
//! | 9             | 4     | `header_len`, u32, 1 to [`HEADER_MAX_BYTES`]                     |
//! | 13            | n     | header: the JSON of [`Header`], UTF-8, `header_len` bytes        |
//! | 13 + n        | 24    | nonce, random from the operating system                          |
//! | 37 + n        | 8     | `ciphertext_len`, u64, at least 16                               |
//! | 45 + n        | c     | XChaCha20-Poly1305 of gzip(payload), its 16-byte tag at the end  |
//! | 45 + n + c    |       | end of file: nothing may follow                                  |
//!
//! The associated data of the AEAD is every byte before the ciphertext (offsets 0 to 45 + n:
//! magic, version, lengths, header and nonce), so no byte of the file can change unnoticed.
//! `ciphertext_len` is there so that a short copy is reported as truncated, not as tampered.
//!
//! # Checks on open, in order
//!
//! Framing (magic, version, lengths, header JSON, `format`), then the header's child and
//! direction against what the caller expects, then authentication, then the payload size
//! limit and decompression. Child and direction are compared before authentication only to
//! give the precise refusal (a file for another child also has another key, and would
//! otherwise be reported as tampered); nothing is accepted until the tag verifies.
//!
//! # Limits
//!
//! The payload is held in memory on both sides, so it is bounded by [`PAYLOAD_MAX_BYTES`]
//! before compression on seal and during decompression on open: a decompression bomb is
//! refused with [`BundleError::TooLarge`] after at most that many bytes.

use std::io::{Read, Write};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The value of [`Header::format`] this version reads and writes.
pub const FORMAT: &str = "feedsync-usb/1";
/// The first bytes of every bundle.
pub const MAGIC: [u8; 8] = *b"FEEDSYNC";
/// The binary layout version, the byte after [`MAGIC`].
pub const FORMAT_VERSION: u8 = 1;
/// HKDF info string of the file key.
pub const KEY_INFO: &[u8] = b"feedsync usb bundle v1";
/// Largest serialized header. A header is a few hundred bytes; the bound keeps a damaged
/// length field from being believed.
pub const HEADER_MAX_BYTES: u32 = 64 * 1024;
/// Largest payload, uncompressed: 1 GiB. Both sides hold the whole payload in memory (and the
/// opening side the decrypted compressed copy too), which a site's small server can afford;
/// a child with more to send splits it into several bundles by event range.
pub const PAYLOAD_MAX_BYTES: u64 = 1024 * 1024 * 1024;

const NONCE_BYTES: usize = 24;
const TAG_BYTES: usize = 16;
const TOKEN_HASH_HEX_CHARS: usize = 64;
/// Offset of the header JSON: magic, version byte, `header_len`.
const HEADER_OFFSET: usize = MAGIC.len() + 1 + 4;
/// Bytes between the header JSON and the ciphertext: nonce, `ciphertext_len`.
const NONCE_AND_LENGTH_BYTES: usize = NONCE_BYTES + 8;

/// Which way a bundle travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Exported by a child, imported at its parent.
    ToParent,
    /// A reply exported by the parent, imported at the child.
    ToChild,
}

impl Direction {
    /// Where a bundle travelling this way is imported, for error hints.
    fn import_place(self) -> &'static str {
        match self {
            Direction::ToParent => "at the parent",
            Direction::ToChild => "at the child",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Direction::ToParent => "from a child to its parent",
            Direction::ToChild => "from the parent to a child",
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::ToParent => "to_parent",
            Direction::ToChild => "to_child",
        })
    }
}

/// The readable, authenticated provenance of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Always [`FORMAT`].
    pub format: String,
    /// The child's registration name (the `<name>` of its token).
    pub child: String,
    pub direction: Direction,
    /// First event sequence the payload covers, numbered on the sending side.
    pub from_seq: i64,
    /// Last event sequence the payload covers, numbered on the sending side.
    pub to_seq: i64,
    /// For a reply: the `to_seq` of the child's export it answers; otherwise `None`.
    pub answers_to_seq: Option<i64>,
    /// When the bundle was made, RFC 3339, supplied by the caller.
    pub created_at: String,
    /// Length of the payload before compression; [`seal`] sets it.
    pub payload_bytes: u64,
}

impl Header {
    /// A header for [`seal`], which fills in `payload_bytes`.
    pub fn new(
        child: impl Into<String>,
        direction: Direction,
        from_seq: i64,
        to_seq: i64,
        answers_to_seq: Option<i64>,
        created_at: impl Into<String>,
    ) -> Header {
        Header {
            format: FORMAT.to_string(),
            child: child.into(),
            direction,
            from_seq,
            to_seq,
            answers_to_seq,
            created_at: created_at.into(),
            payload_bytes: 0,
        }
    }
}

/// Why a bundle could not be sealed or opened. Each message says what happened and what to do.
/// None is worth retrying as is: the file or the caller's input has to change.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(
        "this is not a feedsync USB bundle (it does not start with the bundle's magic bytes): \
         check that you picked the right file"
    )]
    NotABundle,
    #[error(
        "this bundle is in format {found}, which this version of feedsync does not read \
         (it reads {FORMAT}): use the same feedsync version on both sides"
    )]
    UnsupportedFormat { found: String },
    #[error(
        "the file ends after {found_bytes} bytes but its framing needs at least \
         {expected_bytes}: the copy is incomplete (stick removed too early?); copy the file \
         again from the sending machine"
    )]
    Truncated {
        expected_bytes: u64,
        found_bytes: u64,
    },
    #[error(
        "this file was exported for child '{found}' but is being imported as '{expected}': \
         import it at {found}'s parent or with {found}'s registration"
    )]
    WrongChild { expected: String, found: String },
    #[error(
        "this file travels {} but is being imported as one travelling {}: import it {}",
        .found.describe(), .expected.describe(), .found.import_place()
    )]
    WrongDirection {
        expected: Direction,
        found: Direction,
    },
    #[error(
        "the file failed authentication: it was modified or damaged after export, or it was \
         sealed with another key (another child's registration, or a token changed since): \
         copy it again from the sending machine; if it still fails, check that both sides use \
         this child's current registration"
    )]
    Tampered,
    #[error(
        "the payload is {payload_bytes} bytes or more uncompressed, over the limit of \
         {limit_bytes} bytes: export a smaller event range per file"
    )]
    TooLarge {
        payload_bytes: u64,
        limit_bytes: u64,
    },
    #[error(
        "the bundle is damaged: {0}: copy it again from the sending machine; if it is damaged \
         there too, export it again"
    )]
    Corrupt(String),
    /// The caller passed something that is not a token hash (often the token itself).
    #[error(
        "the key is not a token hash ({found_chars} characters; expected 64 lowercase hex \
         digits, the sha256 of the child's token): pass the registration's token_hash, not the \
         token"
    )]
    InvalidTokenHash { found_chars: usize },
    /// `seal` was given a header it cannot write.
    #[error("cannot seal the bundle: {0}: this is a bug in the caller, report it")]
    InvalidHeader(String),
    #[error(
        "the operating system's random source failed ({0}): nothing was written; try again, and \
         check the machine's random source if it keeps failing"
    )]
    RandomUnavailable(String),
}

/// Encrypts and authenticates `payload` under the key derived from `token_hash_hex`, with
/// `header` readable in front. `header.payload_bytes` is set to `payload.len()`; the other
/// fields are written as given, and `header.format` must be [`FORMAT`].
pub fn seal(header: &Header, payload: &[u8], token_hash_hex: &str) -> Result<Vec<u8>, BundleError> {
    seal_with_limit(header, payload, token_hash_hex, PAYLOAD_MAX_BYTES)
}

/// Reads the header without the key (for `inspect`). The whole framing is still checked, so a
/// truncated or misframed file is refused here too; the header is not yet authenticated.
pub fn read_header(bytes: &[u8]) -> Result<Header, BundleError> {
    Ok(parse(bytes)?.header)
}

/// Checks, authenticates, decrypts and decompresses a bundle that must come from
/// `expected_child` and travel `expected_direction`. Returns the header and the payload.
pub fn open(
    bytes: &[u8],
    token_hash_hex: &str,
    expected_child: &str,
    expected_direction: Direction,
) -> Result<(Header, Vec<u8>), BundleError> {
    open_with_limit(
        bytes,
        token_hash_hex,
        expected_child,
        expected_direction,
        PAYLOAD_MAX_BYTES,
    )
}

fn seal_with_limit(
    header: &Header,
    payload: &[u8],
    token_hash_hex: &str,
    payload_max_bytes: u64,
) -> Result<Vec<u8>, BundleError> {
    let cipher = file_cipher(token_hash_hex)?;
    if header.format != FORMAT {
        return Err(BundleError::InvalidHeader(format!(
            "header.format is {:?}, this version writes {FORMAT:?}",
            header.format
        )));
    }
    let payload_bytes = payload.len() as u64;
    if payload_bytes > payload_max_bytes {
        return Err(BundleError::TooLarge {
            payload_bytes,
            limit_bytes: payload_max_bytes,
        });
    }
    let header = Header {
        payload_bytes,
        ..header.clone()
    };
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(payload.len() / 4 + 64),
        flate2::Compression::default(),
    );
    encoder
        .write_all(payload)
        .expect("writing to a Vec cannot fail");
    let compressed = encoder.finish().expect("writing to a Vec cannot fail");
    seal_compressed(&header, &compressed, &cipher)
}

/// Frames and encrypts an already compressed payload. Split from `seal_with_limit` so tests
/// can seal a payload whose header lies about its size.
fn seal_compressed(
    header: &Header,
    compressed: &[u8],
    cipher: &XChaCha20Poly1305,
) -> Result<Vec<u8>, BundleError> {
    let header_json = serde_json::to_vec(header).expect("a Header serializes");
    let header_len = u32::try_from(header_json.len())
        .ok()
        .filter(|len| *len <= HEADER_MAX_BYTES)
        .ok_or_else(|| {
            BundleError::InvalidHeader(format!(
                "the header is {} bytes, over the limit of {HEADER_MAX_BYTES}",
                header_json.len()
            ))
        })?;
    let mut nonce = [0u8; NONCE_BYTES];
    getrandom::fill(&mut nonce).map_err(|e| BundleError::RandomUnavailable(e.to_string()))?;
    let ciphertext_len = compressed.len() + TAG_BYTES;

    let mut bundle = Vec::with_capacity(
        HEADER_OFFSET + header_json.len() + NONCE_AND_LENGTH_BYTES + ciphertext_len,
    );
    bundle.extend_from_slice(&MAGIC);
    bundle.push(FORMAT_VERSION);
    bundle.extend_from_slice(&header_len.to_be_bytes());
    bundle.extend_from_slice(&header_json);
    bundle.extend_from_slice(&nonce);
    bundle.extend_from_slice(&(ciphertext_len as u64).to_be_bytes());
    let ciphertext = cipher
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: compressed,
                aad: &bundle,
            },
        )
        .map_err(|_| BundleError::TooLarge {
            payload_bytes: compressed.len() as u64,
            limit_bytes: PAYLOAD_MAX_BYTES,
        })?;
    assert_eq!(
        ciphertext.len(),
        ciphertext_len,
        "the tag is appended to the ciphertext"
    );
    bundle.extend_from_slice(&ciphertext);
    Ok(bundle)
}

fn open_with_limit(
    bytes: &[u8],
    token_hash_hex: &str,
    expected_child: &str,
    expected_direction: Direction,
    payload_max_bytes: u64,
) -> Result<(Header, Vec<u8>), BundleError> {
    let cipher = file_cipher(token_hash_hex)?;
    let framed = parse(bytes)?;
    let header = framed.header;
    // Unauthenticated yet: compared only to refuse with the precise reason.
    if header.child != expected_child {
        return Err(BundleError::WrongChild {
            expected: expected_child.to_string(),
            found: header.child,
        });
    }
    if header.direction != expected_direction {
        return Err(BundleError::WrongDirection {
            expected: expected_direction,
            found: header.direction,
        });
    }
    let compressed = cipher
        .decrypt(
            &XNonce::from(*framed.nonce),
            Payload {
                msg: framed.ciphertext,
                aad: framed.associated_data,
            },
        )
        .map_err(|_| BundleError::Tampered)?;
    // Authenticated from here on: the header is what the sender wrote.
    if header.payload_bytes > payload_max_bytes {
        return Err(BundleError::TooLarge {
            payload_bytes: header.payload_bytes,
            limit_bytes: payload_max_bytes,
        });
    }
    let payload = decompress(&compressed, header.payload_bytes, payload_max_bytes)?;
    Ok((header, payload))
}

/// Inflates at most `payload_max_bytes` (one byte more to tell "exactly at the limit" from
/// "over it"), whatever the header claims, then checks the claim.
fn decompress(
    compressed: &[u8],
    payload_bytes: u64,
    payload_max_bytes: u64,
) -> Result<Vec<u8>, BundleError> {
    let capacity = usize::try_from(payload_bytes.min(payload_max_bytes)).unwrap_or(0);
    let mut payload = Vec::with_capacity(capacity);
    flate2::read::GzDecoder::new(compressed)
        .take(payload_max_bytes.saturating_add(1))
        .read_to_end(&mut payload)
        .map_err(|e| {
            BundleError::Corrupt(format!("the sender's payload does not decompress ({e})"))
        })?;
    let found_bytes = payload.len() as u64;
    if found_bytes > payload_max_bytes {
        return Err(BundleError::TooLarge {
            payload_bytes: found_bytes,
            limit_bytes: payload_max_bytes,
        });
    }
    if found_bytes != payload_bytes {
        return Err(BundleError::Corrupt(format!(
            "the header says the payload is {payload_bytes} bytes but it is {found_bytes}"
        )));
    }
    Ok(payload)
}

/// A bundle whose framing checked out; nothing in it is authenticated yet.
struct Framed<'a> {
    header: Header,
    /// Every byte before the ciphertext.
    associated_data: &'a [u8],
    nonce: &'a [u8; NONCE_BYTES],
    ciphertext: &'a [u8],
}

fn parse(bytes: &[u8]) -> Result<Framed<'_>, BundleError> {
    let found_bytes = bytes.len() as u64;
    let truncated = |expected_bytes: usize| BundleError::Truncated {
        expected_bytes: expected_bytes as u64,
        found_bytes,
    };
    if bytes.len() < MAGIC.len() {
        return Err(if MAGIC.starts_with(bytes) {
            truncated(HEADER_OFFSET)
        } else {
            BundleError::NotABundle
        });
    }
    if bytes[..MAGIC.len()] != MAGIC {
        return Err(BundleError::NotABundle);
    }
    let Some(&version) = bytes.get(MAGIC.len()) else {
        return Err(truncated(HEADER_OFFSET));
    };
    if version != FORMAT_VERSION {
        return Err(BundleError::UnsupportedFormat {
            found: format!("binary version {version}"),
        });
    }
    let Some(header_len) = bytes.get(MAGIC.len() + 1..HEADER_OFFSET) else {
        return Err(truncated(HEADER_OFFSET));
    };
    let header_len = u32::from_be_bytes(header_len.try_into().expect("four bytes"));
    if header_len == 0 || header_len > HEADER_MAX_BYTES {
        return Err(BundleError::Corrupt(format!(
            "the header length {header_len} is outside 1..={HEADER_MAX_BYTES}"
        )));
    }
    let header_end = HEADER_OFFSET + header_len as usize;
    let ciphertext_start = header_end + NONCE_AND_LENGTH_BYTES;
    if bytes.len() < ciphertext_start + TAG_BYTES {
        return Err(truncated(ciphertext_start + TAG_BYTES));
    }
    let header: Header = serde_json::from_slice(&bytes[HEADER_OFFSET..header_end])
        .map_err(|e| BundleError::Corrupt(format!("the header is not readable ({e})")))?;
    if header.format != FORMAT {
        return Err(BundleError::UnsupportedFormat {
            found: header.format,
        });
    }
    let nonce: &[u8; NONCE_BYTES] = bytes[header_end..header_end + NONCE_BYTES]
        .try_into()
        .expect("length checked above");
    let ciphertext_len = u64::from_be_bytes(
        bytes[header_end + NONCE_BYTES..ciphertext_start]
            .try_into()
            .expect("eight bytes"),
    );
    if ciphertext_len < TAG_BYTES as u64 {
        return Err(BundleError::Corrupt(format!(
            "the ciphertext length {ciphertext_len} is shorter than the {TAG_BYTES}-byte tag"
        )));
    }
    let expected_bytes = (ciphertext_start as u64).saturating_add(ciphertext_len);
    if found_bytes < expected_bytes {
        return Err(BundleError::Truncated {
            expected_bytes,
            found_bytes,
        });
    }
    if found_bytes > expected_bytes {
        return Err(BundleError::Corrupt(format!(
            "{} unexpected bytes follow the end of the bundle",
            found_bytes - expected_bytes
        )));
    }
    Ok(Framed {
        header,
        associated_data: &bytes[..ciphertext_start],
        nonce,
        ciphertext: &bytes[ciphertext_start..],
    })
}

/// The file cipher for one child: HKDF-SHA256 of its token hash (see the module doc).
fn file_cipher(token_hash_hex: &str) -> Result<XChaCha20Poly1305, BundleError> {
    let is_token_hash = token_hash_hex.len() == TOKEN_HASH_HEX_CHARS
        && token_hash_hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !is_token_hash {
        return Err(BundleError::InvalidTokenHash {
            found_chars: token_hash_hex.chars().count(),
        });
    }
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(None, token_hash_hex.as_bytes())
        .expand(KEY_INFO, &mut key)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    Ok(XChaCha20Poly1305::new(&Key::from(key)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex;
    use sha2::Digest;

    fn token_hash(token: &str) -> String {
        hex(&Sha256::digest(token.as_bytes()))
    }

    fn key() -> String {
        token_hash("clinic-a.s3cr3t-t0ken")
    }

    fn header() -> Header {
        Header::new(
            "clinic-a",
            Direction::ToParent,
            101,
            250,
            None,
            "2025-01-02T03:04:05Z",
        )
    }

    fn payload() -> Vec<u8> {
        br#"[{"seq":101,"table":"patient","key":"5f1c"},{"seq":250,"table":"obs","key":"9a2e"}]"#
            .to_vec()
    }

    fn sealed() -> Vec<u8> {
        seal(&header(), &payload(), &key()).expect("seals")
    }

    fn open_as_parent(bytes: &[u8]) -> Result<(Header, Vec<u8>), BundleError> {
        open(bytes, &key(), "clinic-a", Direction::ToParent)
    }

    /// Where the header JSON ends in a bundle made by `sealed()`.
    fn header_end(bytes: &[u8]) -> usize {
        HEADER_OFFSET + u32::from_be_bytes(bytes[9..13].try_into().unwrap()) as usize
    }

    /// Rebuilds a bundle around a new header, keeping nonce and ciphertext: framing is valid,
    /// the associated data is not the sealed one.
    fn reframe(bytes: &[u8], edit: impl FnOnce(&mut Header)) -> Vec<u8> {
        let mut header = read_header(bytes).unwrap();
        edit(&mut header);
        let json = serde_json::to_vec(&header).unwrap();
        let mut out = Vec::new();
        out.extend_from_slice(&bytes[..MAGIC.len() + 1]);
        out.extend_from_slice(&(json.len() as u32).to_be_bytes());
        out.extend_from_slice(&json);
        out.extend_from_slice(&bytes[header_end(bytes)..]);
        out
    }

    #[test]
    fn round_trip() {
        let bytes = sealed();
        let (opened_header, opened_payload) = open_as_parent(&bytes).unwrap();
        let expected = Header {
            payload_bytes: payload().len() as u64,
            ..header()
        };
        assert_eq!(opened_header, expected);
        assert_eq!(opened_payload, payload());
        assert_eq!(read_header(&bytes).unwrap(), expected);
    }

    #[test]
    fn reply_round_trip_carries_answers_to_seq() {
        let reply = Header::new(
            "clinic-a",
            Direction::ToChild,
            7,
            9,
            Some(250),
            "2025-01-03T00:00:00Z",
        );
        let bytes = seal(&reply, b"reply", &key()).unwrap();
        let (opened, payload) = open(&bytes, &key(), "clinic-a", Direction::ToChild).unwrap();
        assert_eq!(opened.answers_to_seq, Some(250));
        assert_eq!(payload, b"reply");
    }

    #[test]
    fn layout_matches_the_module_doc() {
        let bytes = sealed();
        assert_eq!(&bytes[..8], b"FEEDSYNC");
        assert_eq!(bytes[8], 1);
        let end = header_end(&bytes);
        let header: serde_json::Value = serde_json::from_slice(&bytes[13..end]).unwrap();
        assert_eq!(header["format"], FORMAT);
        assert_eq!(header["child"], "clinic-a");
        assert_eq!(header["direction"], "to_parent");
        assert_eq!(header["answers_to_seq"], serde_json::Value::Null);
        let ciphertext_len = u64::from_be_bytes(bytes[end + 24..end + 32].try_into().unwrap());
        assert_eq!(bytes.len() as u64, (end + 32) as u64 + ciphertext_len);
        // The payload is not readable in the file.
        assert!(!bytes.windows(7).any(|w| w == b"patient"));
    }

    #[test]
    fn every_single_byte_flip_is_refused() {
        let bytes = sealed();
        let end = header_end(&bytes);
        for position in 0..bytes.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut damaged = bytes.clone();
                damaged[position] ^= mask;
                let _ = read_header(&damaged); // Must not panic; may succeed on a body flip.
                let error = open_as_parent(&damaged).expect_err("a flipped byte is refused");
                let allowed = match position {
                    0..8 => matches!(error, BundleError::NotABundle),
                    8 => matches!(error, BundleError::UnsupportedFormat { .. }),
                    9..13 => matches!(
                        error,
                        BundleError::Truncated { .. } | BundleError::Corrupt(_)
                    ),
                    p if p < end => matches!(
                        error,
                        BundleError::Corrupt(_)
                            | BundleError::Tampered
                            | BundleError::WrongChild { .. }
                            | BundleError::WrongDirection { .. }
                            | BundleError::UnsupportedFormat { .. }
                    ),
                    p if p < end + 24 => matches!(error, BundleError::Tampered),
                    p if p < end + 32 => {
                        matches!(
                            error,
                            BundleError::Truncated { .. } | BundleError::Corrupt(_)
                        )
                    }
                    _ => matches!(error, BundleError::Tampered),
                };
                assert!(
                    allowed,
                    "byte {position} ^ {mask:#04x}: unexpected {error:?}"
                );
            }
        }
    }

    #[test]
    fn truncation_at_every_length_is_refused_as_truncated() {
        let bytes = sealed();
        for length in 0..bytes.len() {
            let short = &bytes[..length];
            for result in [
                read_header(short).map(|_| ()),
                open_as_parent(short).map(|_| ()),
            ] {
                match result {
                    Err(BundleError::Truncated {
                        found_bytes,
                        expected_bytes,
                    }) => {
                        assert_eq!(found_bytes, length as u64);
                        assert!(expected_bytes > found_bytes);
                    }
                    other => panic!("length {length}: expected Truncated, got {other:?}"),
                }
            }
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = sealed();
        bytes.push(0);
        assert!(matches!(
            open_as_parent(&bytes),
            Err(BundleError::Corrupt(_))
        ));
    }

    #[test]
    fn not_a_bundle() {
        assert!(matches!(
            open_as_parent(b"PK\x03\x04 a zip file"),
            Err(BundleError::NotABundle)
        ));
        assert!(matches!(read_header(b"{}"), Err(BundleError::NotABundle)));
    }

    #[test]
    fn wrong_key_is_tampered() {
        let bytes = sealed();
        let other_key = token_hash("clinic-a.an-older-token");
        let result = open(&bytes, &other_key, "clinic-a", Direction::ToParent);
        assert!(matches!(result, Err(BundleError::Tampered)), "{result:?}");
    }

    #[test]
    fn wrong_child_names_both() {
        let bytes = sealed();
        let other_key = token_hash("clinic-b.secret");
        match open(&bytes, &other_key, "clinic-b", Direction::ToParent) {
            Err(error @ BundleError::WrongChild { .. }) => assert_eq!(
                error.to_string(),
                "this file was exported for child 'clinic-a' but is being imported as \
                 'clinic-b': import it at clinic-a's parent or with clinic-a's registration"
            ),
            other => panic!("expected WrongChild, got {other:?}"),
        }
    }

    #[test]
    fn wrong_direction_says_where_to_import() {
        let bytes = sealed();
        match open(&bytes, &key(), "clinic-a", Direction::ToChild) {
            Err(
                error @ BundleError::WrongDirection {
                    expected: Direction::ToChild,
                    found: Direction::ToParent,
                },
            ) => assert!(
                error.to_string().ends_with("import it at the parent"),
                "{error}"
            ),
            other => panic!("expected WrongDirection, got {other:?}"),
        }
    }

    #[test]
    fn edited_header_reframed_correctly_is_tampered() {
        let bytes = sealed();
        let claims_other_child = reframe(&bytes, |h| h.child = "clinic-b".into());
        assert_eq!(read_header(&claims_other_child).unwrap().child, "clinic-b");
        let result = open(&claims_other_child, &key(), "clinic-b", Direction::ToParent);
        assert!(matches!(result, Err(BundleError::Tampered)), "{result:?}");

        let other_range = reframe(&bytes, |h| h.to_seq = 999);
        assert!(matches!(
            open_as_parent(&other_range),
            Err(BundleError::Tampered)
        ));

        let unchanged = reframe(&bytes, |_| {});
        assert_eq!(unchanged, bytes, "reframe itself keeps the bundle intact");
        assert!(open_as_parent(&unchanged).is_ok());
    }

    fn gzip_of_zeros(zero_bytes: usize) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let chunk = vec![0u8; 1024 * 1024];
        for _ in 0..zero_bytes / chunk.len() {
            encoder.write_all(&chunk).unwrap();
        }
        encoder.finish().unwrap()
    }

    #[test]
    fn decompression_bomb_is_too_large() {
        let limit_bytes = 1024 * 1024;
        let bomb = gzip_of_zeros(16 * 1024 * 1024);
        let cipher = file_cipher(&key()).unwrap();
        // A sender with the key whose header understates the payload.
        let lying = Header {
            payload_bytes: 100,
            ..header()
        };
        let bytes = seal_compressed(&lying, &bomb, &cipher).unwrap();
        let result = open_with_limit(&bytes, &key(), "clinic-a", Direction::ToParent, limit_bytes);
        match result {
            Err(BundleError::TooLarge {
                payload_bytes,
                limit_bytes: limit,
            }) => {
                assert_eq!(limit, limit_bytes);
                assert_eq!(
                    payload_bytes,
                    limit_bytes + 1,
                    "inflating stopped at the limit"
                );
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // An honest header over the limit is refused before inflating.
        let honest = Header {
            payload_bytes: 16 * 1024 * 1024,
            ..header()
        };
        let bytes = seal_compressed(&honest, &bomb, &cipher).unwrap();
        let result = open_with_limit(&bytes, &key(), "clinic-a", Direction::ToParent, limit_bytes);
        assert!(matches!(
            result,
            Err(BundleError::TooLarge {
                payload_bytes: 16_777_216,
                ..
            })
        ));
    }

    #[test]
    fn payload_over_the_limit_is_not_sealed() {
        let result = seal_with_limit(&header(), &[0u8; 11], &key(), 10);
        assert!(matches!(
            result,
            Err(BundleError::TooLarge {
                payload_bytes: 11,
                limit_bytes: 10
            })
        ));
        assert!(seal_with_limit(&header(), &[0u8; 10], &key(), 10).is_ok());
    }

    #[test]
    fn header_understating_payload_is_corrupt() {
        let cipher = file_cipher(&key()).unwrap();
        let lying = Header {
            payload_bytes: 3,
            ..header()
        };
        let bytes = seal_compressed(&lying, &gzip_of_zeros(1024 * 1024), &cipher).unwrap();
        assert!(matches!(
            open_as_parent(&bytes),
            Err(BundleError::Corrupt(_))
        ));
    }

    #[test]
    fn empty_payload() {
        let bytes = seal(&header(), &[], &key()).unwrap();
        let (opened, payload) = open_as_parent(&bytes).unwrap();
        assert_eq!(opened.payload_bytes, 0);
        assert!(payload.is_empty());
    }

    #[test]
    fn two_seals_differ_and_both_open() {
        let first = sealed();
        let second = sealed();
        assert_ne!(first, second, "each seal draws a fresh nonce");
        assert_eq!(open_as_parent(&first).unwrap().1, payload());
        assert_eq!(open_as_parent(&second).unwrap().1, payload());
    }

    #[test]
    fn key_must_be_a_token_hash() {
        let token = "clinic-a.s3cr3t-t0ken";
        let error = seal(&header(), &payload(), token).unwrap_err();
        assert!(matches!(
            error,
            BundleError::InvalidTokenHash { found_chars: 21 }
        ));
        assert!(
            !error.to_string().contains("s3cr3t"),
            "the message must not echo a secret"
        );
        let upper = key().to_uppercase();
        assert!(matches!(open_as_parent(&sealed()).map(|_| ()), Ok(())));
        assert!(matches!(
            open(&sealed(), &upper, "clinic-a", Direction::ToParent),
            Err(BundleError::InvalidTokenHash { .. })
        ));
    }

    #[test]
    fn seal_refuses_another_format() {
        let other = Header {
            format: "feedsync-usb/2".into(),
            ..header()
        };
        assert!(matches!(
            seal(&other, b"x", &key()),
            Err(BundleError::InvalidHeader(_))
        ));
    }

    #[test]
    fn newer_format_in_header_is_unsupported() {
        let bytes = reframe(&sealed(), |h| h.format = "feedsync-usb/2".into());
        match read_header(&bytes) {
            Err(BundleError::UnsupportedFormat { found }) => assert_eq!(found, "feedsync-usb/2"),
            other => panic!("expected UnsupportedFormat, got {other:?}"),
        }
    }

    #[test]
    fn every_error_says_what_to_do() {
        let errors = [
            BundleError::NotABundle,
            BundleError::UnsupportedFormat {
                found: "feedsync-usb/2".into(),
            },
            BundleError::Truncated {
                expected_bytes: 10,
                found_bytes: 5,
            },
            BundleError::WrongChild {
                expected: "a".into(),
                found: "b".into(),
            },
            BundleError::WrongDirection {
                expected: Direction::ToParent,
                found: Direction::ToChild,
            },
            BundleError::Tampered,
            BundleError::TooLarge {
                payload_bytes: 2,
                limit_bytes: 1,
            },
            BundleError::Corrupt("x".into()),
            BundleError::InvalidTokenHash { found_chars: 3 },
            BundleError::InvalidHeader("x".into()),
            BundleError::RandomUnavailable("x".into()),
        ];
        for error in errors {
            let message = error.to_string();
            assert!(message.contains(": "), "{message}");
            assert!(!message.contains('\n'), "one line: {message}");
        }
    }
}
