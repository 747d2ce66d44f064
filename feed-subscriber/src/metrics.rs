//! Prometheus metrics for `feed-subscriber run ... --metrics-listen 127.0.0.1:9187`: a tiny HTTP
//! listener answering `GET /metrics` (anything else: 404) with counters the run loop keeps in
//! atomics (rounds, entries applied and queued, pushes, conflicts, last success, last error) and
//! gauges read from the target database at each scrape (queued changes by status; as a child:
//! held changes, open conflicts, pending push, positions). The text format is the publisher's
//! ([`feedsync_core::exposition::Exposition`]).
//!
//! The listener has no authentication: bind it to loopback (the default suggestion) or to an
//! address only the monitoring host reaches. A database that does not answer a scrape shows as
//! `feedsync_subscriber_database_up 0`.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use feedsync_core::exposition::{CONTENT_TYPE, Exposition, Kind};
use feedsync_node::capture;
use feedsync_db::{Database, DbError, Session};
use feedsync_node::exchange::{CONFLICT_TABLE, INBOX_TABLE, PEER_PARENT};

use crate::engine::Progress;
use crate::network::{self, RoundReport};
use crate::state;

pub const METRICS_PATH: &str = "/metrics";
/// Scrapes answered at once; more wait (a scrape reads a few counts from the database).
const SCRAPES_IN_FLIGHT_MAX: usize = 4;
/// Longest last error kept for the `feedsync_subscriber_last_error_info` label.
const LAST_ERROR_CHARS_MAX: usize = 300;

/// What the run loop counts. Shared with the listener.
#[derive(Debug, Default)]
pub struct Metrics {
    pub rounds: AtomicU64,
    pub round_errors: AtomicU64,
    pub entries_read: AtomicU64,
    pub entries_applied: AtomicU64,
    pub entries_queued: AtomicU64,
    pub pushed: AtomicU64,
    pub conflicts_recorded: AtomicU64,
    /// Unix seconds of the last round that ended without error (0: none yet).
    pub last_success_unix_s: AtomicI64,
    /// Unix seconds and text of the last error.
    last_error: Mutex<Option<(i64, String)>>,
}

fn unix_now_s() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Metrics {
    /// A pass of `run` over its feeds (until caught up) that succeeded.
    pub fn record_sync(&self, p: &Progress) {
        self.rounds.fetch_add(1, Ordering::Relaxed);
        self.entries_read.fetch_add(p.entries_read as u64, Ordering::Relaxed);
        self.entries_applied.fetch_add((p.applied + p.unblocked) as u64, Ordering::Relaxed);
        self.entries_queued.fetch_add(p.queued as u64, Ordering::Relaxed);
        self.last_success_unix_s.store(unix_now_s(), Ordering::Relaxed);
    }

    /// A round with the parent that succeeded.
    pub fn record_round(&self, r: &RoundReport) {
        self.rounds.fetch_add(1, Ordering::Relaxed);
        self.entries_read.fetch_add(r.pulled as u64 + r.held_here as u64, Ordering::Relaxed);
        self.entries_applied.fetch_add((r.pulled + r.unheld) as u64, Ordering::Relaxed);
        self.entries_queued.fetch_add(r.held_here as u64, Ordering::Relaxed);
        self.pushed.fetch_add(r.pushed as u64, Ordering::Relaxed);
        self.conflicts_recorded.fetch_add(r.conflicts as u64, Ordering::Relaxed);
        self.last_success_unix_s.store(unix_now_s(), Ordering::Relaxed);
    }

    /// A pass or round that failed.
    pub fn record_error(&self, error: &str) {
        self.rounds.fetch_add(1, Ordering::Relaxed);
        self.round_errors.fetch_add(1, Ordering::Relaxed);
        let text: String = error.chars().take(LAST_ERROR_CHARS_MAX).collect();
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some((unix_now_s(), text));
    }

    pub fn last_error(&self) -> Option<(i64, String)> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What a scrape reads from the target database.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DatabaseGauges {
    pub waiting: i64,
    pub failed: i64,
    pub skipped: i64,
    /// Present when the database syncs as a child.
    pub child: Option<ChildGauges>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChildGauges {
    pub held: i64,
    pub open_conflicts: i64,
    pub pending_push: i64,
    pub push_through: i64,
    pub pull_after: i64,
}

async fn count(session: &mut Session, sql: &str) -> Result<i64, DbError> {
    Ok(session.query(sql, &[]).await?.first().and_then(|r| r.i64("n")).unwrap_or_default())
}

/// Counts only: a scrape must stay cheap however long the queue is.
pub async fn read_gauges(session: &mut Session) -> Result<DatabaseGauges, DbError> {
    let tables = capture::list_tables(session).await?;
    let mut gauges = DatabaseGauges::default();
    if tables.iter().any(|t| t == state::CHANGE_TABLE) {
        for row in session.query(&format!("SELECT status, COUNT(*) AS n FROM {} GROUP BY status", state::CHANGE_TABLE), &[]).await? {
            let n = row.i64("n").unwrap_or_default();
            match row.text("status").as_deref().and_then(state::Status::parse) {
                Some(state::Status::Waiting) => gauges.waiting += n,
                Some(state::Status::Failed) | None => gauges.failed += n,
                Some(state::Status::Skipped) => gauges.skipped += n,
            }
        }
    }
    if network::is_child(session).await? {
        let has = |t: &str| tables.iter().any(|x| x == t);
        let held = if has(INBOX_TABLE) { count(session, &format!("SELECT COUNT(*) AS n FROM {INBOX_TABLE} WHERE peer = '{PEER_PARENT}'")).await? } else { 0 };
        let open_conflicts =
            if has(CONFLICT_TABLE) { count(session, &format!("SELECT COUNT(*) AS n FROM {CONFLICT_TABLE} WHERE status = 'open'")).await? } else { 0 };
        let position = |v: Option<String>| v.and_then(|v| v.parse::<i64>().ok()).unwrap_or_default();
        gauges.child = Some(ChildGauges {
            held,
            open_conflicts,
            pending_push: network::pending_push(session).await?,
            push_through: position(capture::state(session, network::PUSH_THROUGH).await?),
            pull_after: position(capture::state(session, network::PULL_AFTER).await?),
        });
    }
    Ok(gauges)
}

/// The metrics text. Pure: counters and what the database said (`None`: it did not answer).
pub fn render(metrics: &Metrics, gauges: Option<&DatabaseGauges>) -> String {
    let mut out = Exposition::new();
    let counter = |out: &mut Exposition, name: &str, help: &str, v: &AtomicU64| {
        out.single(name, Kind::Counter, help, v.load(Ordering::Relaxed) as f64);
    };
    counter(&mut out, "feedsync_subscriber_rounds_total", "Rounds with the parent, or passes over the feeds until caught up, since start.", &metrics.rounds);
    counter(&mut out, "feedsync_subscriber_round_errors_total", "Rounds or passes that ended with an error.", &metrics.round_errors);
    counter(&mut out, "feedsync_subscriber_entries_read_total", "Feed entries read, or entities received from the parent.", &metrics.entries_read);
    counter(&mut out, "feedsync_subscriber_entries_applied_total", "Entries applied (including queued or held ones applied later).", &metrics.entries_applied);
    counter(
        &mut out,
        "feedsync_subscriber_entries_queued_total",
        "Entries that could not apply yet and were queued or held with their reason.",
        &metrics.entries_queued,
    );
    counter(&mut out, "feedsync_subscriber_pushed_total", "Own changes pushed to the parent (as a child).", &metrics.pushed);
    counter(&mut out, "feedsync_subscriber_conflicts_recorded_total", "Conflict records written here (as a child).", &metrics.conflicts_recorded);
    let last_success = metrics.last_success_unix_s.load(Ordering::Relaxed);
    out.family(
        "feedsync_subscriber_last_success_timestamp_seconds",
        Kind::Gauge,
        "Unix time of the last round or pass that ended without error (no sample: none yet).",
    );
    if last_success > 0 {
        out.sample("feedsync_subscriber_last_success_timestamp_seconds", &[], last_success as f64);
    }
    let last_error = metrics.last_error();
    out.family("feedsync_subscriber_last_error_timestamp_seconds", Kind::Gauge, "Unix time of the last error (no sample: none since start).");
    if let Some((at, _)) = &last_error {
        out.sample("feedsync_subscriber_last_error_timestamp_seconds", &[], *at as f64);
    }
    out.family("feedsync_subscriber_last_error_info", Kind::Gauge, "The last error's text, as a label (value 1; no sample: none since start).");
    if let Some((_, text)) = &last_error {
        out.sample("feedsync_subscriber_last_error_info", &[("error", text)], 1.0);
    }
    out.single("feedsync_subscriber_database_up", Kind::Gauge, "1 when the target database answered this scrape, else 0.", gauges.is_some() as u8 as f64);
    if let Some(g) = gauges {
        out.family(
            "feedsync_subscriber_queued",
            Kind::Gauge,
            "Changes from feeds queued in the target database, by status (waiting for references, failed, skipped by an operator).",
        );
        out.sample("feedsync_subscriber_queued", &[("status", "waiting")], g.waiting as f64);
        out.sample("feedsync_subscriber_queued", &[("status", "failed")], g.failed as f64);
        out.sample("feedsync_subscriber_queued", &[("status", "skipped")], g.skipped as f64);
        if let Some(c) = &g.child {
            out.single("feedsync_subscriber_held", Kind::Gauge, "Changes from the parent held here until they can apply (failed events).", c.held as f64);
            out.single("feedsync_subscriber_open_conflicts", Kind::Gauge, "Open conflict records here.", c.open_conflicts as f64);
            out.single("feedsync_subscriber_pending_push", Kind::Gauge, "Own changes the parent has not acknowledged yet.", c.pending_push as f64);
            out.single("feedsync_subscriber_push_through_seq", Kind::Gauge, "The last own event the parent acknowledged.", c.push_through as f64);
            out.single("feedsync_subscriber_pull_after_seq", Kind::Gauge, "The last parent event applied here.", c.pull_after as f64);
        }
    }
    out.finish()
}

/// Binds the listener (so a wrong address fails at start, with the address in the error).
pub async fn bind(address: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// Answers scrapes until `shutdown` fires.
pub async fn serve(metrics: Arc<Metrics>, database: Database, listener: TcpListener, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(SCRAPES_IN_FLIGHT_MAX));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let (metrics, database, slots) = (metrics.clone(), database.clone(), slots.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let (metrics, database, slots) = (metrics.clone(), database.clone(), slots.clone());
                async move { Ok::<_, std::convert::Infallible>(answer(&metrics, &database, &slots, &request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn answer(metrics: &Metrics, database: &Database, slots: &Semaphore, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &'static str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
        response
    };
    if request.uri().path() != METRICS_PATH {
        return reply(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", format!("no such path {}; metrics are at {METRICS_PATH}\n", request.uri().path()));
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", "use GET\n".into());
    }
    let _slot = slots.acquire().await.expect("semaphore open");
    let gauges = match database.session().await {
        Ok(mut session) => read_gauges(&mut session).await.map_err(|e| tracing::warn!(error = %e, "metrics: the database did not answer")).ok(),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: the database is unreachable");
            None
        }
    };
    reply(StatusCode::OK, CONTENT_TYPE, render(metrics, gauges.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use feedsync_core::exposition::{find, parse_exposition};

    #[test]
    fn rendered_metrics_parse_and_say_what_was_counted() {
        let m = Metrics::default();
        let text = render(&m, None);
        let samples = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(find(&samples, "feedsync_subscriber_database_up", &[]), Some(0.0));
        assert_eq!(find(&samples, "feedsync_subscriber_last_success_timestamp_seconds", &[]), None);
        m.record_sync(&Progress { entries_read: 10, applied: 7, queued: 3, unblocked: 1, caught_up: true });
        m.record_round(&RoundReport { pushed: 4, pulled: 5, held_here: 1, unheld: 2, conflicts: 1, ..RoundReport::default() });
        m.record_error("parent: connection refused \"x\"\nsecond line");
        let gauges = DatabaseGauges {
            waiting: 2,
            failed: 1,
            skipped: 0,
            child: Some(ChildGauges { held: 1, open_conflicts: 2, pending_push: 3, push_through: 40, pull_after: 50 }),
        };
        let text = render(&m, Some(&gauges));
        let samples = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(find(&samples, "feedsync_subscriber_rounds_total", &[]), Some(3.0));
        assert_eq!(find(&samples, "feedsync_subscriber_round_errors_total", &[]), Some(1.0));
        assert_eq!(find(&samples, "feedsync_subscriber_entries_applied_total", &[]), Some(8.0 + 7.0));
        assert_eq!(find(&samples, "feedsync_subscriber_entries_queued_total", &[]), Some(4.0));
        assert_eq!(find(&samples, "feedsync_subscriber_pushed_total", &[]), Some(4.0));
        assert_eq!(find(&samples, "feedsync_subscriber_queued", &[("status", "waiting")]), Some(2.0));
        assert_eq!(find(&samples, "feedsync_subscriber_pending_push", &[]), Some(3.0));
        assert_eq!(find(&samples, "feedsync_subscriber_last_error_info", &[("error", "parent: connection refused \"x\"\nsecond line")]), Some(1.0));
        assert!(find(&samples, "feedsync_subscriber_last_success_timestamp_seconds", &[]).unwrap() > 1.7e9);
    }
}
