//! What a USB file carries, inside the sealed bundle (`crate::bundle`): a child's export (its
//! pushes) and the parent's reply (the answers to them and the child's change pages), with the
//! limits both sides hold them to.

use serde::{Deserialize, Serialize};

use crate::network::{Changes, Hello, PushRequest, PushResponse};

/// Most pushes (of at most [`ITEMS_PER_MESSAGE_MAX`] items each) in one export.
pub const EXPORT_PUSHES_MAX: usize = 2_000;
/// Most JSON bytes of pushes in one export. Both sides hold a payload in memory several times
/// over while they parse it, so this stays well below the bundle's own limit; a child with
/// more to send says so and sends the rest in its next export.
pub const EXPORT_PUSH_BYTES_MAX: usize = 128 * 1024 * 1024;
/// Most pages of changes (of at most [`ITEMS_PER_MESSAGE_MAX`] items each) in one reply.
pub const REPLY_PAGES_MAX: usize = 1_000;
/// Most JSON bytes of changes in one reply (see [`EXPORT_PUSH_BYTES_MAX`]); a reply that stops
/// here says the parent has more, which the child receives with its next export's reply or
/// online.
pub const REPLY_CHANGES_BYTES_MAX: usize = 128 * 1024 * 1024;

/// The payload of an export (a `to_parent` bundle).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportPayload {
    /// The child's name (the same as the header's, which is authenticated with it).
    pub child: String,
    /// The child's acknowledged position when it exported: the pushes cover its own events
    /// after this one.
    pub push_after: i64,
    /// Consecutive pushes, as the child would send them online (`through_seq` increasing).
    /// Each item's `seq` is the entity's latest event at the child when it exported (its
    /// state is that new), not its first event in the push.
    pub pushes: Vec<PushRequest>,
    /// Per push, per item: the entity's first own event after `push_after`. With `seq`, it
    /// tells the parent whether the export carries again a row the parent already received
    /// from a newer base (see [`UsbError::StaleExport`]).
    pub first_own_seqs: Vec<Vec<i64>>,
    /// More unacknowledged events remained than one file holds.
    pub more: bool,
    /// The last parent event the child had applied: the reply carries the changes after it.
    pub pull_after: i64,
}

/// A push of the export with the parent's answer to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnsweredPush {
    /// The push as the parent applied it: without the items the child may not write and
    /// without bases (the child's answer handling needs neither).
    pub push: PushRequest,
    pub response: PushResponse,
}

/// The payload of a reply (a `to_child` bundle).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplyPayload {
    pub child: String,
    /// The child's registration and the network's rules, as `GET hello` gives them online;
    /// `last_seq` is the parent's last event when the reply was made.
    pub hello: Hello,
    /// The export this answers: its header's range and creation time.
    pub export_from_seq: i64,
    pub export_to_seq: i64,
    pub export_created_at: String,
    pub pushes: Vec<AnsweredPush>,
    /// Items of the export left out because the child may not write their category.
    pub not_allowed: usize,
    /// The parent's changes for the child after this event (the export's `pull_after`) ...
    pub pull_after: i64,
    /// ... in consecutive pages: each starts after the previous one's `through`.
    pub changes: Vec<Changes>,
    /// The parent has more changes for the child than this file holds.
    pub more_changes: bool,
}

