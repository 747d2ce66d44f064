//! Alerts as they travel: what `feed-publisher status --json`, `/ws/feedsync/status`, the
//! webhook and the dashboard carry, and the `[alerts]` section of the publisher's config file.
//! The rules that decide them are `feedsync_core::alerts`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    ChildSilent,
    QueueGrowing,
    FailedEvents,
    ConflictsOpen,
}

impl AlertKind {
    pub const ALL: [AlertKind; 4] = [AlertKind::ChildSilent, AlertKind::QueueGrowing, AlertKind::FailedEvents, AlertKind::ConflictsOpen];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::ChildSilent => "child_silent",
            AlertKind::QueueGrowing => "queue_growing",
            AlertKind::FailedEvents => "failed_events",
            AlertKind::ConflictsOpen => "conflicts_open",
        }
    }
}

/// The queue names, the same as the status fields they come from.
pub const QUEUE_WAITING_TO_CHILD: &str = "waiting_to_child";
pub const QUEUE_PENDING_PUSH: &str = "pending_push";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// What identifies it across checks: `kind`, `kind:child` or `kind:child:queue`.
    pub key: String,
    pub kind: AlertKind,
    /// The child it is about; `None` for this server's own.
    pub child: Option<String>,
    /// `queue_growing` only: which queue.
    pub queue: Option<String>,
    /// The number the rule looked at (seconds silent, changes queued, held or in conflict).
    pub value: i64,
    /// The configured threshold it crossed.
    pub threshold: i64,
    /// What is wrong, in words.
    pub message: String,
    /// What to do about it.
    pub hint: String,
    /// When `serve` first found it firing (database clock); `None` until then.
    #[serde(default)]
    pub since: Option<String>,
}

/// The `[alerts]` section. Every threshold has a unit in its name; `examples/feed-publisher.toml`
/// explains each one and why its default was chosen.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// How often `serve` evaluates the rules and records one observation of each child's
    /// queues (what `queue_growing` looks at).
    pub check_interval_s: u64,
    /// `child_silent`: an active child not heard from (online round or USB import) for longer
    /// than this; a child never heard from counts from its registration.
    pub child_silent_after_s: u64,
    /// `queue_growing`: how many of the latest observations (one per check) a queue must not
    /// have shrunk over...
    pub queue_growing_observations: usize,
    /// ...while growing by at least this many changes from the first to the last of them.
    pub queue_growing_min_increase: i64,
    /// `failed_events`: held changes (at this server for a child, or reported by the child)
    /// at or above this count.
    pub failed_events_min: i64,
    /// `conflicts_open`: open conflict records (at this server with a child, or reported by
    /// the child) at or above this count.
    pub conflicts_open_min: i64,
    /// Where a JSON message is POSTed when an alert starts and when it clears (`http://` only;
    /// put a TLS proxy in front for https). Empty: no webhook, alerts are logged and shown.
    pub webhook_url: String,
    /// Longest one webhook POST may take.
    pub webhook_timeout_ms: u64,
    /// Attempts per message before it is given up (it stays in the log and on the dashboard).
    pub webhook_attempts_max: u32,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            check_interval_s: 60,
            child_silent_after_s: 86_400,
            queue_growing_observations: 30,
            queue_growing_min_increase: 100,
            failed_events_min: 1,
            conflicts_open_min: 1,
            webhook_url: String::new(),
            webhook_timeout_ms: 10_000,
            webhook_attempts_max: 5,
        }
    }
}

/// One thing an operator should look at for one child, as the dashboard lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// `never_connected`, `silent`, `queue_growing`, `held`, `conflicts`, `round_failed`,
    /// `journal_behind`.
    pub kind: &'static str,
    pub text: String,
}
