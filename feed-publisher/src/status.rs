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

use hyper::body::Incoming;
use hyper::{Request, StatusCode};

use feedsync_db::{DbError, Session};
use feedsync_http::{ClientError, ClientLimits, HttpClient, status_is_retryable};

use feedsync_core::alerts::{self, Alert, Event, Facts, QUEUE_PENDING_PUSH, QUEUE_WAITING_TO_CHILD, Transitions};
use feedsync_node::clock::age_s;
use feedsync_node::config::{AlertsConfig, Config, QUEUE_OBSERVATIONS_MAX};
use feedsync_node::status::child_facts;
pub use feedsync_node::status::StatusError;
pub use feedsync_wire::status::{CategoryStatus, ChildStatus, Status};
use crate::server::{App, HttpError, Reply};

pub const STATUS_PATH: &str = "/ws/feedsync/status";
/// The alert checker's table: queue observations and alerts announced.
pub use feedsync_db::tables::ALERT_STATE_TABLE;
pub use feedsync_core::alerts::JOURNAL_STALL_S;
/// Webhook messages waiting to be delivered at most; more are given up with an error in the log.
pub const WEBHOOK_QUEUE_MAX: usize = 1_000;
/// How long a stopping server waits for webhook messages still queued.
const WEBHOOK_DRAIN_MS_MAX: u64 = 5_000;
/// Observations older than this many check intervals are stale.
const STALE_CHECKS: i64 = 3;

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

// ---- gathering ----


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

async fn gather(session: &mut Session, config: &Config) -> Result<Status, StatusError> {
    prepare(session).await?;
    feedsync_node::status::gather(session, config.feed.page_size).await
}

/// The alert rules' facts: the status plus each child's recent queue observations.
fn facts(status: &Status, histories: &BTreeMap<String, Vec<i64>>) -> Facts {
    let names: BTreeSet<&str> = status.children.iter().map(|c| c.name.as_str()).collect();
    Facts {
        children: status
            .children
            .iter()
            .map(|c| child_facts(c, &status.now, |queue| histories.get(&history_name(&c.name, queue)).cloned().unwrap_or_default()))
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
            let limits = ClientLimits { request_timeout_ms: timeout.as_millis() as u64, ..ClientLimits::default() };
            let client = HttpClient::new(limits).with_user_agent(USER_AGENT);
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

/// Sent with every webhook POST, so the receiver's log shows who is calling.
const USER_AGENT: &str = "feedsync feed-publisher";
/// Bytes of the webhook's answer read: it is not needed, but reading it lets the connection be
/// reused.
const WEBHOOK_ANSWER_BYTES_MAX: usize = 64 * 1024;

/// One POST; `Err((why, retryable))` unless the answer is 2xx. A 4xx other than 408 and 429 is
/// not retried: the same message would be refused again.
async fn post(client: &HttpClient, url: &str, message: &WebhookMessage, timeout: Duration) -> Result<u16, (String, bool)> {
    let request = feedsync_http::Request::new("POST", url)
        .header("content-type", "application/json")
        .header("idempotency-key", &message.idempotency_key)
        .body(message.body.clone())
        .keep_answer_bytes(WEBHOOK_ANSWER_BYTES_MAX);
    let status = match client.send_once(request).await {
        Ok(response) => response.status,
        Err(ClientError::Timeout { .. }) => return Err((format!("no answer within {} ms", timeout.as_millis()), true)),
        Err(ClientError::Request { message, .. }) => return Err((format!("bad webhook request: {message}"), false)),
        Err(e @ (ClientError::Connect { .. } | ClientError::Transport { .. })) => return Err((e.to_string(), true)),
        Err(e) => return Err((e.to_string(), e.is_retryable())),
    };
    if status.is_success() {
        return Ok(status.as_u16());
    }
    Err((format!("answered {status}"), status_is_retryable(status.as_u16())))
}

// ---- the route ----

/// `GET /ws/feedsync/status`: the [`Status`] as JSON, for this machine only unless
/// `FEEDSYNC_ADMIN_TOKEN` is set (then with the token), like the dashboard.
pub(crate) async fn route(app: &App, request: &Request<Incoming>) -> Result<Reply, HttpError> {
    crate::metrics::check_access(app, request)?;
    if request.method() != hyper::Method::GET && request.method() != hyper::Method::HEAD {
        return Err(HttpError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{} is not allowed here", request.method()), "use GET"));
    }
    let mut session = app.database.session().await?;
    let status = compute(&mut session, &app.config).await?;
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
