//! Rounds history: a child's report keeps only its latest round, so the dashboard keeps its own
//! bounded history in [`ROUND_TABLE`], a row each time it sees a report it has not seen
//! before (when the overview or a child's page is computed).

use std::collections::HashMap;

use serde::Serialize;

use feedsync_db::{Session, Value};
use feedsync_wire::network::RoundSummary;

use crate::server::HttpError;

/// This module's own table (reserved prefix; `uninstall` drops it with the others; its DDL is
/// in `feedsync_db::tables`).
pub use feedsync_db::tables::ROUND_TABLE;
/// Rounds kept per child; older ones are deleted as new ones are recorded.
pub const ROUNDS_PER_CHILD_MAX: i64 = 200;

/// Creates the dashboard's table; run once when the server starts ([`crate::server::App::new`]).
pub(crate) async fn prepare(session: &mut Session) -> Result<(), feedsync_db::DbError> {
    feedsync_db::tables::create(session, feedsync_db::tables::TableSet::DashboardRounds).await
}

/// One round as this module keeps it: the child's round summary plus the queues seen when the
/// report was observed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RoundRecord {
    pub round: RoundSummary,
    pub pending_push: i64,
    pub pull_after: i64,
    pub held_at_child: i64,
    pub open_conflicts_at_child: i64,
    pub held_at_parent: i64,
    pub waiting_to_child: i64,
    pub done_commands: usize,
}

impl RoundRecord {
    /// Everything waiting between the two sides, whichever direction.
    pub fn queued(&self) -> i64 {
        self.pending_push + self.held_at_child + self.held_at_parent + self.waiting_to_child
    }
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct RecordedRound {
    reported_at: String,
    observed_at: String,
    #[serde(flatten)]
    pub(super) record: RoundRecord,
}

pub(super) async fn record_round(session: &mut Session, child: &str, reported_at: &str, record: &RoundRecord) -> Result<(), HttpError> {
    let insert = format!("{} INTO {ROUND_TABLE} (child, reported_at, summary) VALUES (?, ?, ?)", feedsync_db::insert_ignore(session.dialect()));
    let summary = serde_json::to_string(record).expect("records serialize");
    if session.execute(&insert, &[child.into(), reported_at.into(), summary.into()]).await? == 0 {
        return Ok(());
    }
    // Bounded: the oldest beyond the limit go.
    let cutoff = session
        .query(&format!("SELECT round_id FROM {ROUND_TABLE} WHERE child = ? ORDER BY round_id DESC LIMIT 1 OFFSET {ROUNDS_PER_CHILD_MAX}"), &[child.into()])
        .await?
        .first()
        .and_then(|r| r.i64("round_id"));
    if let Some(cutoff) = cutoff {
        session.execute(&format!("DELETE FROM {ROUND_TABLE} WHERE child = ? AND round_id <= ?"), &[child.into(), Value::Int(cutoff)]).await?;
    }
    Ok(())
}

pub(super) async fn last_recorded(session: &mut Session) -> Result<HashMap<String, String>, HttpError> {
    Ok(session
        .query(&format!("SELECT child, MAX(reported_at) AS last FROM {ROUND_TABLE} GROUP BY child"), &[])
        .await?
        .iter()
        .filter_map(|r| Some((r.text("child")?, r.text("last")?)))
        .collect())
}

pub(super) async fn recent_rounds(session: &mut Session, child: &str, limit: i64) -> Result<Vec<RecordedRound>, HttpError> {
    Ok(session
        .query(&format!("SELECT reported_at, observed_at, summary FROM {ROUND_TABLE} WHERE child = ? ORDER BY round_id DESC LIMIT {limit}"), &[child.into()])
        .await?
        .iter()
        .map(|r| RecordedRound {
            reported_at: r.text("reported_at").unwrap_or_default(),
            observed_at: r.text("observed_at").unwrap_or_default(),
            record: r.text("summary").and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default(),
        })
        .collect())
}

/// When the child's pushes started waiting: the oldest of the latest unbroken run of rounds
/// that ended with changes still to push (newest first in). `None` when none wait.
pub(super) fn pending_since(rounds_newest_first: &[RecordedRound]) -> Option<String> {
    let mut since = None;
    for round in rounds_newest_first {
        if round.record.pending_push <= 0 {
            break;
        }
        since = Some(round.reported_at.clone());
    }
    since
}
