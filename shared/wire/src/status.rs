//! The publisher's status as it travels: what `feed-publisher status --json` prints and
//! `GET /ws/feedsync/status` serves (one snapshot of the publisher and its network), and the
//! part of a child's report the status reads. `feedsync_node::status` gathers it.

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use crate::alerts::Alert;
use crate::network::RoundSummary;

/// One snapshot of the publisher and its network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The database's clock when this was computed (every age here is measured against it).
    pub now: String,
    /// Changes captured but not yet published.
    pub journal_backlog: i64,
    pub oldest_journal_at: Option<String>,
    pub oldest_journal_age_s: Option<i64>,
    pub last_event_seq: i64,
    pub last_event_at: Option<String>,
    pub last_event_age_s: Option<i64>,
    /// Each feed (the categories and `all`) with its pages and events.
    pub categories: Vec<CategoryStatus>,
    /// Changes held here until they can apply, in all and by peer (children by name, this
    /// server's own parent as `parent`).
    pub held: i64,
    pub held_by_peer: BTreeMap<String, i64>,
    /// Open conflict records here.
    pub open_conflicts: i64,
    pub children: Vec<ChildStatus>,
    /// Firing now, by kind then key; `since` is set once `serve` announced it.
    pub alerts: Vec<Alert>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoryStatus {
    pub category: String,
    pub pages: i64,
    /// Events in the feed: exact for `all` (event numbers have no gaps); for a category,
    /// computed from its pages with the configured page size, so exact unless `feed.page_size`
    /// changed after pages were archived. Reading one row per feed keeps this cheap on a
    /// database with millions of events.
    pub events: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildStatus {
    pub name: String,
    pub revoked: bool,
    pub revoked_at: Option<String>,
    pub created_at: String,
    pub last_contact: Option<String>,
    pub last_contact_age_s: Option<i64>,
    /// When its last status report arrived (after its last round).
    pub reported_at: Option<String>,
    /// The last of its own events the parent acknowledged.
    pub acked_seq: i64,
    /// The last parent event it confirmed it applied.
    pub pulled_after: i64,
    /// Parent → child: events it has not received yet (0 for a revoked child).
    pub waiting_to_child: i64,
    /// Child → parent: its own events the parent has not accepted, as of its last report.
    pub pending_push: Option<i64>,
    pub held_at_parent: i64,
    pub held_at_child: Option<i64>,
    pub conflicts_at_parent: i64,
    pub conflicts_at_child: Option<i64>,
    pub catchment_patients: i64,
    pub last_round: Option<RoundSummary>,
    pub last_round_error: Option<String>,
}

impl Status {
    pub fn child(&self, name: &str) -> Option<&ChildStatus> {
        self.children.iter().find(|c| c.name == name)
    }
}

/// The parts of a child's report ([`crate::network::ChildReport`]) the status shows; the held
/// items and conflicts it lists are skipped unread, so reading every child's report stays cheap.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ReportSummary {
    pub pending_push: i64,
    pub pull_after: i64,
    pub held_total: i64,
    pub open_conflicts: i64,
    pub round: RoundSummary,
    pub done_commands: Vec<IgnoredAny>,
}
