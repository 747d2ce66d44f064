//! The publisher's status: one snapshot ([`Status`]) computed from the database — the journal
//! backlog, the last event, events per category, every child (last contact, what waits each
//! way, what is held and in conflict at either end, catchment, last round), what is held and in
//! conflict here — with the alerts firing now. `feed-publisher status` prints it (problems
//! first, each with what to do) or its JSON; `GET /ws/feedsync/status` serves the JSON (with the
//! dashboard's access rule); `/metrics` and the dashboard read it too.
//!
//! Alerts: the rules are pure ([`feedsync_core::alerts`]); this module gathers their facts, and in
//! `serve` ([`run_alerts`]) checks them every `alerts.check_interval_s`, logs each alert that
//! starts or clears, and POSTs it to `alerts.webhook_url` through a bounded queue with retries.
//!
//! Where alert state lives: in the table [`ALERT_STATE_TABLE`] (reserved prefix; `uninstall`
//! drops it), not in the serve loop's memory, because the observations `queue_growing` needs
//! and the set of alerts already announced must survive a restart (or a restarted server would
//! announce every firing alert again and forget half an hour of observations), and because
//! `feed-publisher status` runs in another process and must show the same alerts. Only the
//! checker in `serve` writes it; everything else reads. It holds one row per child and queue
//! (the last [`QUEUE_OBSERVATIONS_MAX`] observations, one per check) and one row per alert
//! announced. Observations older than three check intervals are stale (the server was stopped):
//! they are ignored, and the next check starts them afresh, so a gap never looks like growth.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::{Deserialize, Serialize};

use feedsync_node::capture::{EVENT_TABLE, JOURNAL_TABLE, PAGE_TABLE};
use feedsync_db::{DbError, Session};
use feedsync_node::exchange::{CHILD_TABLE, CONFLICT_TABLE, INBOX_TABLE};
use feedsync_wire::network::RoundSummary;

use feedsync_core::alerts::{self, Alert, ChildFacts, Event, Facts, QUEUE_PENDING_PUSH, QUEUE_WAITING_TO_CHILD, Transitions};
use feedsync_node::clock::{age_s, db_now};
use feedsync_node::config::{AlertsConfig, Config, QUEUE_OBSERVATIONS_MAX};
use feedsync_node::parent::{self as network, AdminError, ParentError};
use feedsync_node::sequencer::ALL_FEED;
use crate::server::{App, HttpError, Reply};

pub const STATUS_PATH: &str = "/ws/feedsync/status";
/// The alert checker's table: queue observations and alerts announced.
pub use feedsync_db::tables::ALERT_STATE_TABLE;
/// Journal rows older than this mean the sequencer is not publishing (shown as a problem).
pub const JOURNAL_STALL_S: i64 = 300;
/// Webhook messages waiting to be delivered at most; more are given up with an error in the log.
pub const WEBHOOK_QUEUE_MAX: usize = 1_000;
/// How long a stopping server waits for webhook messages still queued.
const WEBHOOK_DRAIN_MS_MAX: u64 = 5_000;
/// Observations older than this many check intervals are stale.
const STALE_CHECKS: i64 = 3;

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

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("{0}")]
    Database(#[from] DbError),
    #[error("{message}")]
    Other { message: String, retryable: bool },
}

impl StatusError {
    pub fn is_retryable(&self) -> bool {
        match self {
            StatusError::Database(e) => e.is_retryable(),
            StatusError::Other { retryable, .. } => *retryable,
        }
    }
}

impl From<ParentError> for StatusError {
    fn from(e: ParentError) -> Self {
        match e {
            ParentError::Database(e) => StatusError::Database(e),
            other => StatusError::Other { retryable: other.is_retryable(), message: other.to_string() },
        }
    }
}

impl From<AdminError> for StatusError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::Database(e) => StatusError::Database(e),
            other => StatusError::Other { message: other.to_string(), retryable: false },
        }
    }
}

impl From<StatusError> for HttpError {
    fn from(e: StatusError) -> Self {
        match e {
            StatusError::Database(e) => e.into(),
            StatusError::Other { message, retryable: true } => {
                HttpError::new(StatusCode::SERVICE_UNAVAILABLE, message, "the database is unreachable; retry later")
            }
            StatusError::Other { message, retryable: false } => HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, message, "see the publisher's log"),
        }
    }
}

impl Status {
    /// Computes the status and the alerts firing now. Reads only (beyond creating the toolkit's
    /// tables a database may predate); the queue observations are those `serve` recorded.
    pub async fn compute(session: &mut Session, config: &Config) -> Result<Status, StatusError> {
        let mut status = gather(session, config).await?;
        let histories = load_histories(session, &status.now, &config.alerts).await?;
        status.alerts = alerts::evaluate(&facts(&status, &histories), &config.alerts);
        let announced = load_announced(session).await?;
        for alert in &mut status.alerts {
            alert.since = announced.iter().find(|a| a.key == alert.key).and_then(|a| a.since.clone());
        }
        Ok(status)
    }

    pub fn child(&self, name: &str) -> Option<&ChildStatus> {
        self.children.iter().find(|c| c.name == name)
    }
}

// ---- gathering ----


async fn count(session: &mut Session, sql: &str) -> Result<i64, DbError> {
    Ok(session.query(sql, &[]).await?.first().and_then(|r| r.i64("n")).unwrap_or_default())
}

async fn gather(session: &mut Session, config: &Config) -> Result<Status, StatusError> {
    network::prepare(session).await?;
    prepare(session).await?;
    let now = db_now(session).await?;
    let journal_backlog = count(session, &format!("SELECT COUNT(*) AS n FROM {JOURNAL_TABLE}")).await?;
    let oldest_journal_at = if journal_backlog > 0 {
        session.query(&format!("SELECT MIN(changed_at) AS at FROM {JOURNAL_TABLE}"), &[]).await?.first().and_then(|r| r.text("at"))
    } else {
        None
    };
    let last = session.query(&format!("SELECT event_seq, changed_at FROM {EVENT_TABLE} ORDER BY event_seq DESC LIMIT 1"), &[]).await?;
    let last_event_seq = last.first().and_then(|r| r.i64("event_seq")).unwrap_or_default();
    let last_event_at = last.first().and_then(|r| r.text("changed_at"));
    let page_size = i64::from(config.feed.page_size.max(1));
    let mut categories: Vec<CategoryStatus> = session
        .query(&format!("SELECT feed, page, entries FROM {PAGE_TABLE} ORDER BY feed"), &[])
        .await?
        .iter()
        .filter_map(|r| {
            let (category, page, entries) = (r.text("feed")?, r.i64("page")?, r.i64("entries")?);
            let events = if category == ALL_FEED { last_event_seq } else { (page - 1).max(0) * page_size + entries };
            Some(CategoryStatus { category, pages: page, events })
        })
        .collect();
    if last_event_seq > 0 && !categories.iter().any(|c| c.category == ALL_FEED) {
        categories.push(CategoryStatus { category: ALL_FEED.into(), pages: 0, events: last_event_seq });
    }
    let held_by_peer: BTreeMap<String, i64> = session
        .query(&format!("SELECT peer, COUNT(*) AS n FROM {INBOX_TABLE} GROUP BY peer"), &[])
        .await?
        .iter()
        .filter_map(|r| Some((r.text("peer")?, r.i64("n")?)))
        .collect();
    let open_conflicts = count(session, &format!("SELECT COUNT(*) AS n FROM {CONFLICT_TABLE} WHERE status = 'open'")).await?;
    let conflicts_by_child: BTreeMap<String, i64> = session
        .query(&format!("SELECT peer, COUNT(*) AS n FROM {CONFLICT_TABLE} WHERE status = 'open' AND site_side = 'parent' GROUP BY peer"), &[])
        .await?
        .iter()
        .filter_map(|r| Some((r.text("peer")?, r.i64("n")?)))
        .collect();
    // One read for every child's position and latest report (not one per child): a scrape of
    // a parent with a thousand children stays a few queries plus the waiting counts.
    let mut pulled_after: BTreeMap<String, i64> = BTreeMap::new();
    let mut reports: BTreeMap<String, (ReportSummary, String)> = BTreeMap::new();
    for r in session.query(&format!("SELECT name, COALESCE(pulled_after, 0) AS n, report, reported_at FROM {CHILD_TABLE}"), &[]).await? {
        let Some(name) = r.text("name") else { continue };
        pulled_after.insert(name.clone(), r.i64("n").unwrap_or_default());
        if let Some(report) = r.text("report").and_then(|text| serde_json::from_str::<ReportSummary>(&text).ok()) {
            reports.insert(name, (report, r.text("reported_at").unwrap_or_default()));
        }
    }
    let mut children = Vec::new();
    for child in network::list_children(session).await? {
        let revoked = child.revoked_at.is_some();
        let report = reports.remove(&child.name);
        let waiting_to_child = if revoked { 0 } else { network::waiting_for_child(session, &child).await? };
        children.push(ChildStatus {
            last_contact_age_s: age_s(&now, child.last_contact.as_deref()),
            reported_at: report.as_ref().map(|(_, at)| at.clone()),
            pulled_after: pulled_after.get(&child.name).copied().unwrap_or_default(),
            waiting_to_child,
            pending_push: report.as_ref().map(|(r, _)| r.pending_push),
            held_at_parent: child.held_items,
            held_at_child: report.as_ref().map(|(r, _)| r.held_total),
            conflicts_at_parent: conflicts_by_child.get(&child.name).copied().unwrap_or_default(),
            conflicts_at_child: report.as_ref().map(|(r, _)| r.open_conflicts),
            last_round_error: report.as_ref().and_then(|(r, _)| r.round.error.clone()),
            last_round: report.map(|(r, _)| r.round),
            catchment_patients: child.catchment_patients,
            acked_seq: child.acked_seq,
            name: child.name,
            revoked,
            revoked_at: child.revoked_at,
            created_at: child.created_at,
            last_contact: child.last_contact,
        });
    }
    Ok(Status {
        oldest_journal_age_s: age_s(&now, oldest_journal_at.as_deref()),
        last_event_age_s: age_s(&now, last_event_at.as_deref()),
        now,
        journal_backlog,
        oldest_journal_at,
        last_event_seq,
        last_event_at,
        categories,
        held: held_by_peer.values().sum(),
        held_by_peer,
        open_conflicts,
        children,
        alerts: Vec::new(),
    })
}

/// The parts of a child's report (`feedsync_wire::network::ChildReport`) the status shows; the held items and
/// conflicts it lists are skipped unread.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ReportSummary {
    pending_push: i64,
    held_total: i64,
    open_conflicts: i64,
    round: RoundSummary,
}

/// The alert rules' facts: the status plus each child's recent queue observations.
fn facts(status: &Status, histories: &BTreeMap<String, Vec<i64>>) -> Facts {
    let names: BTreeSet<&str> = status.children.iter().map(|c| c.name.as_str()).collect();
    let history = |child: &str, queue: &str| histories.get(&history_name(child, queue)).cloned().unwrap_or_default();
    Facts {
        children: status
            .children
            .iter()
            .map(|c| ChildFacts {
                name: c.name.clone(),
                revoked: c.revoked,
                last_contact_age_s: c.last_contact_age_s,
                registered_age_s: age_s(&status.now, Some(&c.created_at)),
                held_at_parent: c.held_at_parent,
                held_at_child: c.held_at_child.unwrap_or_default(),
                conflicts_at_parent: c.conflicts_at_parent,
                conflicts_at_child: c.conflicts_at_child.unwrap_or_default(),
                waiting_history: history(&c.name, QUEUE_WAITING_TO_CHILD),
                pending_push_history: history(&c.name, QUEUE_PENDING_PUSH),
            })
            .collect(),
        held_from_others: status.held_by_peer.iter().filter(|(peer, _)| !names.contains(peer.as_str())).map(|(p, n)| (p.clone(), *n)).collect(),
        conflicts_with_others: (status.open_conflicts - status.children.iter().map(|c| c.conflicts_at_parent).sum::<i64>()).max(0),
    }
}

// ---- the alert state table ----

/// Creates the alert state table if this database predates it (its DDL is in
/// `feedsync_db::tables`).
pub async fn prepare(session: &mut Session) -> Result<(), DbError> {
    feedsync_db::tables::create(session, feedsync_db::tables::TableSet::AlertState).await
}

const HISTORY_PREFIX: &str = "history:";
const ANNOUNCED_PREFIX: &str = "firing:";

pub(crate) fn history_name(child: &str, queue: &str) -> String {
    format!("{HISTORY_PREFIX}{child}:{queue}")
}

async fn put(session: &mut Session, name: &str, value: &str) -> Result<(), DbError> {
    let now = feedsync_core::sql::now_sql(session.dialect());
    let upsert = feedsync_core::sql::upsert_suffix(session.dialect(), &["name"], &["value", "updated_at"]);
    let sql = format!("INSERT INTO {ALERT_STATE_TABLE} (name, value, updated_at) VALUES (?, ?, {now}){upsert}");
    session.execute(&sql, &[name.into(), value.into()]).await?;
    Ok(())
}

async fn remove(session: &mut Session, name: &str) -> Result<(), DbError> {
    session.execute(&format!("DELETE FROM {ALERT_STATE_TABLE} WHERE name = ?"), &[name.into()]).await?;
    Ok(())
}

/// Queue observations that are not stale, by row name.
pub(crate) async fn load_histories(session: &mut Session, now: &str, config: &AlertsConfig) -> Result<BTreeMap<String, Vec<i64>>, DbError> {
    let stale_after_s = STALE_CHECKS * config.check_interval_s as i64;
    Ok(session
        .query(&format!("SELECT name, value, updated_at FROM {ALERT_STATE_TABLE} WHERE name LIKE 'history:%'"), &[])
        .await?
        .iter()
        .filter(|r| age_s(now, r.text("updated_at").as_deref()).is_some_and(|age| age <= stale_after_s))
        .filter_map(|r| Some((r.text("name")?, serde_json::from_str::<Vec<i64>>(&r.text("value")?).ok()?)))
        .collect())
}

/// The alerts announced (started and not yet cleared), with their `since`.
pub async fn load_announced(session: &mut Session) -> Result<Vec<Alert>, DbError> {
    Ok(session
        .query(&format!("SELECT value FROM {ALERT_STATE_TABLE} WHERE name LIKE 'firing:%' ORDER BY name"), &[])
        .await?
        .iter()
        .filter_map(|r| serde_json::from_str(&r.text("value")?).ok())
        .collect())
}

/// One check's outcome: the status (alerts with their `since`) and what started and cleared.
#[derive(Debug, Clone)]
pub struct Checked {
    pub status: Status,
    pub transitions: Transitions,
}

/// One check of the alert rules, as `serve` runs it every `alerts.check_interval_s`: records
/// an observation of every active child's queues, evaluates the rules, and records which alerts
/// started (with `since` = now) and cleared. The caller logs and sends the transitions.
pub async fn check_alerts(session: &mut Session, config: &Config) -> Result<Checked, StatusError> {
    let mut status = gather(session, config).await?;
    // The check's writes (an observation per child and queue, the alerts announced) in one
    // transaction: one flush to disk per check, and a failed check records nothing.
    session.begin().await?;
    match record_check(session, config, &mut status).await {
        Ok(transitions) => {
            session.commit().await?;
            Ok(Checked { status, transitions })
        }
        Err(e) => {
            let _ = session.rollback().await;
            Err(e)
        }
    }
}

async fn record_check(session: &mut Session, config: &Config, status: &mut Status) -> Result<Transitions, StatusError> {
    let mut histories = load_histories(session, &status.now, &config.alerts).await?;
    let mut kept: BTreeSet<String> = BTreeSet::new();
    for child in status.children.iter().filter(|c| !c.revoked) {
        let observed = [(QUEUE_WAITING_TO_CHILD, Some(child.waiting_to_child)), (QUEUE_PENDING_PUSH, child.pending_push)];
        for (queue, value) in observed {
            let Some(value) = value else { continue };
            let name = history_name(&child.name, queue);
            let history = histories.entry(name.clone()).or_default();
            alerts::observe(history, value, QUEUE_OBSERVATIONS_MAX);
            put(session, &name, &serde_json::to_string(history).expect("numbers serialize")).await?;
            kept.insert(name);
        }
    }
    // Rows of revoked or removed children, and stale ones not renewed, go.
    let rows: Vec<String> =
        session.query(&format!("SELECT name FROM {ALERT_STATE_TABLE} WHERE name LIKE 'history:%'"), &[]).await?.iter().filter_map(|r| r.text("name")).collect();
    for name in rows.iter().filter(|n| !kept.contains(*n)) {
        remove(session, name).await?;
    }
    histories.retain(|name, _| kept.contains(name));
    status.alerts = alerts::evaluate(&facts(status, &histories), &config.alerts);
    let announced = load_announced(session).await?;
    let mut transitions = alerts::transitions(&announced, &status.alerts);
    for alert in &mut transitions.started {
        alert.since = Some(status.now.clone());
        put(session, &format!("{ANNOUNCED_PREFIX}{}", alert.key), &serde_json::to_string(alert).expect("alerts serialize")).await?;
    }
    for alert in &transitions.cleared {
        remove(session, &format!("{ANNOUNCED_PREFIX}{}", alert.key)).await?;
    }
    for alert in &mut status.alerts {
        alert.since = announced.iter().chain(&transitions.started).find(|a| a.key == alert.key).and_then(|a| a.since.clone());
    }
    Ok(transitions)
}

// ---- the checker in `serve` ----

/// What names this server in webhook messages: its public URL, else its listen address.
fn server_name(config: &Config) -> String {
    if config.server.public_url.is_empty() { config.server.listen.clone() } else { config.server.public_url.clone() }
}

/// Checks the alert rules every `alerts.check_interval_s` until shut down; logs each alert that
/// starts or clears and sends it to the webhook, if one is configured.
pub async fn run_alerts(app: Arc<App>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let config = &app.config.alerts;
    let webhook = (!config.webhook_url.is_empty()).then(|| Webhook::start(config));
    let server = server_name(&app.config);
    let interval = Duration::from_secs(config.check_interval_s);
    loop {
        let outcome = match app.database.session().await {
            Ok(mut session) => check_alerts(&mut session, &app.config).await,
            Err(e) => Err(e.into()),
        };
        match outcome {
            Ok(checked) => announce(&checked, webhook.as_ref(), &server),
            Err(e) => tracing::warn!(error = %e, retry_in_s = config.check_interval_s, "checking alerts failed; will retry"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => break,
        }
    }
    if let Some(webhook) = webhook {
        webhook.close(Duration::from_millis(WEBHOOK_DRAIN_MS_MAX)).await;
    }
}

/// Logs each transition and queues its webhook message.
pub fn announce(checked: &Checked, webhook: Option<&Webhook>, server: &str) {
    for alert in &checked.transitions.started {
        tracing::warn!(alert = %alert.key, kind = alert.kind.as_str(), value = alert.value, hint = %alert.hint, "alert started: {}", alert.message);
    }
    for alert in &checked.transitions.cleared {
        tracing::info!(alert = %alert.key, kind = alert.kind.as_str(), since = alert.since.as_deref().unwrap_or(""), "alert cleared: {}", alert.message);
    }
    let Some(webhook) = webhook else { return };
    let events = checked.transitions.started.iter().map(|a| (Event::Started, a)).chain(checked.transitions.cleared.iter().map(|a| (Event::Cleared, a)));
    for (event, alert) in events {
        let body = alerts::webhook_message(event, alert, &checked.status.now, server);
        webhook.send(WebhookMessage {
            body: body.to_string().into_bytes(),
            idempotency_key: alerts::idempotency_key(event, alert),
            what: format!("{} {}", event.as_str(), alert.key),
        });
    }
}

/// One message for the webhook.
#[derive(Debug, Clone)]
pub struct WebhookMessage {
    pub body: Vec<u8>,
    pub idempotency_key: String,
    /// For the log.
    pub what: String,
}

/// Delivers webhook messages in order, each with retries (bounded attempts, growing waits),
/// from a bounded queue: a webhook that is down never holds up the checker or the server.
pub struct Webhook {
    sender: tokio::sync::mpsc::Sender<WebhookMessage>,
    task: tokio::task::JoinHandle<()>,
}

impl Webhook {
    pub fn start(config: &AlertsConfig) -> Webhook {
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<WebhookMessage>(WEBHOOK_QUEUE_MAX);
        let url = config.webhook_url.clone();
        let timeout = Duration::from_millis(config.webhook_timeout_ms);
        let attempts_max = config.webhook_attempts_max.max(1);
        let task = tokio::spawn(async move {
            let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Full<Bytes>>();
            while let Some(message) = receiver.recv().await {
                for attempt in 1..=attempts_max {
                    match post(&client, &url, &message, timeout).await {
                        Ok(status) => {
                            tracing::info!(webhook = %url, status, message = %message.what, "alert sent to the webhook");
                            break;
                        }
                        Err((error, retryable)) if retryable && attempt < attempts_max => {
                            let wait_ms = alerts::webhook_retry_delay_ms(attempt);
                            tracing::warn!(webhook = %url, %error, attempt, retry_in_ms = wait_ms, message = %message.what, "webhook failed; will retry");
                            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                        }
                        Err((error, _)) => {
                            tracing::error!(webhook = %url, %error, attempts = attempt, message = %message.what, "webhook message given up; the alert is in this log and on the dashboard");
                            break;
                        }
                    }
                }
            }
        });
        Webhook { sender, task }
    }

    /// Queues a message; when the queue is full (the webhook has been failing for long), the
    /// message is given up with an error in the log.
    pub fn send(&self, message: WebhookMessage) {
        if let Err(e) = self.sender.try_send(message) {
            let message = match e {
                tokio::sync::mpsc::error::TrySendError::Full(m) | tokio::sync::mpsc::error::TrySendError::Closed(m) => m,
            };
            tracing::error!(queued_max = WEBHOOK_QUEUE_MAX, message = %message.what, "webhook queue full; message given up (the alert is in this log)");
        }
    }

    /// Lets queued messages go out for at most `grace`, then stops.
    pub async fn close(self, grace: Duration) {
        let Webhook { sender, mut task } = self;
        drop(sender);
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
            tracing::warn!("stopping with webhook messages undelivered");
        }
    }
}

type WebhookClient = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// One POST; `Err((why, retryable))` unless the answer is 2xx. A 4xx other than 408 and 429 is
/// not retried: the same message would be refused again.
async fn post(client: &WebhookClient, url: &str, message: &WebhookMessage, timeout: Duration) -> Result<u16, (String, bool)> {
    let request = Request::post(url)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, "feedsync feed-publisher")
        .header("idempotency-key", message.idempotency_key.as_str())
        .body(Full::new(Bytes::from(message.body.clone())))
        .map_err(|e| (format!("bad webhook request: {e}"), false))?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| (format!("{e}"), true))?;
        let status = response.status();
        // The answer's body is not needed, but reading it lets the connection be reused.
        let _ = http_body_util::Limited::new(response.into_body(), 64 * 1024).collect().await;
        Ok::<StatusCode, (String, bool)>(status)
    };
    let status = tokio::time::timeout(timeout, exchange).await.map_err(|_| (format!("no answer within {} ms", timeout.as_millis()), true))??;
    if status.is_success() {
        return Ok(status.as_u16());
    }
    let retryable = status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS;
    Err((format!("answered {status}"), retryable))
}

// ---- the route ----

/// `GET /ws/feedsync/status`: the [`Status`] as JSON, for this machine only unless
/// `FEEDSYNC_ADMIN_TOKEN` is set (then with the token), like the dashboard.
pub(crate) async fn route(app: &App, request: &Request<Incoming>) -> Result<Reply, HttpError> {
    crate::metrics::check_access(request)?;
    if request.method() != hyper::Method::GET && request.method() != hyper::Method::HEAD {
        return Err(HttpError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{} is not allowed here", request.method()), "use GET"));
    }
    let mut session = app.database.session().await?;
    let status = Status::compute(&mut session, &app.config).await?;
    Ok(Reply::json(StatusCode::OK, serde_json::to_vec(&status).expect("status serializes"), false))
}

// ---- text ----

/// `feed-publisher status` without `--json`: problems first, each with what to do, then this
/// server, then each child.
pub fn render_text(status: &Status, database: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "status of {database} at {}", status.now);
    let mut problems: Vec<(String, String)> = status
        .alerts
        .iter()
        .map(|a| (format!("{}{}", a.message, a.since.as_ref().map(|s| format!(" (alert since {s})")).unwrap_or_default()), a.hint.clone()))
        .collect();
    if let Some(age) = status.oldest_journal_age_s.filter(|a| *a > JOURNAL_STALL_S) {
        problems.push((
            format!("{} changes captured up to {} ago are not published yet", status.journal_backlog, alerts::describe_age(age)),
            "`feed-publisher serve` publishes them: is it running? Its log says why it cannot".into(),
        ));
    }
    let _ = writeln!(out);
    if problems.is_empty() {
        let _ = writeln!(out, "no problems");
    } else {
        let _ = writeln!(out, "{} problem{}:", problems.len(), if problems.len() == 1 { "" } else { "s" });
        for (what, hint) in &problems {
            let _ = writeln!(out, "  ! {what}");
            let _ = writeln!(out, "    what to do: {hint}");
        }
    }
    let ago = |age: Option<i64>| age.map(|a| format!("{} ago", alerts::describe_age(a))).unwrap_or_else(|| "never".into());
    let _ = writeln!(out, "\nthis server:");
    let _ = writeln!(
        out,
        "  journal: {} changes waiting to be published{}",
        status.journal_backlog,
        status.oldest_journal_age_s.map(|a| format!(" (oldest {})", ago(Some(a)))).unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "  last event: {}",
        if status.last_event_seq == 0 { "none yet".to_owned() } else { format!("#{} ({})", status.last_event_seq, ago(status.last_event_age_s)) }
    );
    let held: Vec<String> = status.held_by_peer.iter().map(|(peer, n)| format!("{n} from {peer}")).collect();
    let _ = writeln!(out, "  held here: {}{}", status.held, if held.is_empty() { String::new() } else { format!(" ({})", held.join(", ")) });
    let _ = writeln!(out, "  open conflicts here: {}", status.open_conflicts);
    if !status.categories.is_empty() {
        let list: Vec<String> = status.categories.iter().map(|c| format!("{} {}", c.category, c.events)).collect();
        let _ = writeln!(out, "  events by feed: {}", list.join(", "));
    }
    let active = status.children.iter().filter(|c| !c.revoked).count();
    let _ = writeln!(out, "\nchildren: {active} active, {} revoked", status.children.len() - active);
    for c in &status.children {
        if c.revoked {
            let _ = writeln!(out, "  {:<20} revoked {}; {} held at the parent", c.name, c.revoked_at.as_deref().unwrap_or(""), c.held_at_parent);
            continue;
        }
        let opt = |v: Option<i64>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
        let round = match (&c.last_round, &c.last_round_error) {
            (_, Some(e)) => format!("last round failed: {e}"),
            (Some(r), None) => format!("last round ok ({} pushed, {} received)", r.pushed, r.pulled),
            (None, None) => "no round reported".into(),
        };
        let _ = writeln!(
            out,
            "  {:<20} last contact {}; waiting to child {}, pending from child {}; held {} at the parent, {} at the child; conflicts {} / {}; {} patients; {round}",
            c.name,
            ago(c.last_contact_age_s),
            c.waiting_to_child,
            opt(c.pending_push),
            c.held_at_parent,
            opt(c.held_at_child),
            c.conflicts_at_parent,
            opt(c.conflicts_at_child),
            c.catchment_patients,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_puts_problems_first_with_what_to_do() {
        let status = Status {
            now: "2026-01-02 00:00:00.000".into(),
            journal_backlog: 3,
            oldest_journal_at: Some("2026-01-01 23:00:00.000".into()),
            oldest_journal_age_s: Some(3600),
            last_event_seq: 10,
            last_event_at: None,
            last_event_age_s: None,
            categories: vec![CategoryStatus { category: "all".into(), pages: 1, events: 10 }],
            held: 0,
            held_by_peer: BTreeMap::new(),
            open_conflicts: 0,
            children: Vec::new(),
            alerts: vec![Alert {
                key: "child_silent:north".into(),
                kind: alerts::AlertKind::ChildSilent,
                child: Some("north".into()),
                queue: None,
                value: 90_000,
                threshold: 86_400,
                message: "child north not heard from for 1 d 1 h".into(),
                hint: "check the link".into(),
                since: None,
            }],
        };
        let text = render_text(&status, "sqlite://x");
        let problems = text.find("2 problems").unwrap();
        assert!(problems < text.find("this server").unwrap(), "{text}");
        assert!(text.contains("  ! child north not heard from for 1 d 1 h\n    what to do: check the link"), "{text}");
        assert!(text.contains("not published yet"), "{text}");
    }
}
