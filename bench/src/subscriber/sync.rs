//! The end-to-end measurement: the publisher on A and the subscriber applying into a fresh B,
//! both in this process, HTTP over loopback through the counting proxy. Timed from B's empty
//! marker to `Subscriber::sync_until_caught_up` returning (every feed caught up, the retry
//! queue drained); then B is compared with A by identity, so every run proves it synced
//! correctly (a difference fails the run).

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use feed_subscriber::client::HttpClient;
use feed_subscriber::engine::{Progress, Subscriber};
use feed_subscriber::state;
use feedsync_node::compare::{CompareOptions, compare};
use feedsync_db::Database;
use feedsync_core::model::Model;
use feedsync_wire::resource::{BATCH_PATH, RESOURCE_PATH};

use feedsync_bench::counters::{Counters, Scope};
use feedsync_bench::cpu;
use feedsync_bench::database;
use feedsync_bench::proxy::{Proxy, Tap, Tapped, Totals};
use feedsync_bench::server::Server;

/// Server-wide MariaDB counters read around the sync. They cover the publisher's statements
/// on A and the subscriber's on B (and anyone else's on the server): evidence of totals
/// (statements, disk reads, fsyncs per resource), not of which side ran them.
pub const GLOBAL_COUNTERS: [&str; 9] = [
    "Questions",
    "Com_stmt_execute",
    "Com_stmt_prepare",
    "Handler_read_key",
    "Handler_read_rnd_next",
    "Handler_write",
    "Innodb_buffer_pool_read_requests",
    "Innodb_buffer_pool_reads",
    "Innodb_data_fsyncs",
];

/// Request kinds for the counts: what a feedsync subscriber asks for.
pub fn classify(method: &str, target: &str) -> &'static str {
    if target.contains("/ws/atomfeed/") {
        "feed page"
    } else if method == "POST" && target.ends_with(BATCH_PATH) {
        "batch fetch"
    } else if target.contains(RESOURCE_PATH) {
        "single resource"
    } else {
        "other"
    }
}

/// Keeps the batch-fetch answers: the PouchDB peer loads exactly the resources B received.
pub fn tap_batches(method: &str, target: &str) -> bool {
    method == "POST" && target.ends_with(BATCH_PATH)
}

/// One timed sync into a fresh B.
#[derive(Debug, Clone)]
pub struct SyncSample {
    pub seconds: f64,
    pub progress: Progress,
    pub totals: Totals,
    pub cpu: cpu::Usage,
    pub global: Counters,
    pub compare_seconds: f64,
    pub rows_compared: u64,
    pub tables_compared: usize,
}

impl SyncSample {
    pub fn resources_per_second(&self) -> f64 {
        self.progress.applied as f64 / self.seconds
    }
}

/// Syncs A (served by `server`) into a fresh B and compares them. Returns the sample and, when
/// `keep_answers`, the batch-fetch answers as they crossed the wire.
pub async fn run(
    server: &Server,
    model_a: &Model,
    deadline: Duration,
    keep_answers: bool,
) -> anyhow::Result<(SyncSample, Vec<Tapped>)> {
    let b = database::fresh().await?;
    let result = run_into(server, model_a, &b.database, deadline, keep_answers).await;
    database::discard(b).await;
    result
}

async fn run_into(
    server: &Server,
    model_a: &Model,
    b: &Database,
    deadline: Duration,
    keep_answers: bool,
) -> anyhow::Result<(SyncSample, Vec<Tapped>)> {
    let model_b = database::model(b).await?;
    let tap: Tap = if keep_answers {
        tap_batches
    } else {
        |_, _| false
    };
    let proxy = Proxy::start(server.addr, classify, tap).await?;
    let feed = format!("http://{}/ws/atomfeed/all/recent", proxy.addr);
    let subscriber = Subscriber::new(b.clone(), model_b.clone(), HttpClient::default(), String::new());
    let mut watch = b.session().await?;
    let global_before = Counters::read(&mut watch, Scope::Global, &GLOBAL_COUNTERS).await?;
    let meter = cpu::Meter::start();
    let start = Instant::now();
    let progress = tokio::time::timeout(
        deadline,
        subscriber.sync_until_caught_up(std::slice::from_ref(&feed)),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the sync did not catch up within {deadline:?}"))?
    .context("sync")?;
    let seconds = start.elapsed().as_secs_f64();
    let usage = meter.stop();
    let global = Counters::read(&mut watch, Scope::Global, &GLOBAL_COUNTERS)
        .await?
        .minus(&global_before);
    // Every answer is in once the sync returns: the subscriber reads each one whole.
    let totals = proxy.totals();
    let answers = proxy.take_tapped();
    drop(subscriber);
    drop(proxy);
    if let Some(error) = &totals.framing_error {
        bail!("the counting proxy could not follow the HTTP stream: {error}");
    }
    ensure!(!totals.tap_overflow, "the batch answers were too large to keep");
    let queued = state::all_changes(&mut watch, 1_000).await?;

    eprintln!("  comparing B with A by identity...");
    let compare_start = Instant::now();
    let mut session_a = server.app.database.session().await?;
    let comparison = compare(
        &mut session_a,
        model_a,
        &mut watch,
        &model_b,
        &CompareOptions::default(),
    )
    .await?;
    let compare_seconds = compare_start.elapsed().as_secs_f64();
    if !comparison.is_equal() || !queued.is_empty() {
        bail!(
            "B does not hold exactly A's data after the sync ({} changes left queued):\n{comparison}",
            queued.len()
        );
    }
    Ok((
        SyncSample {
            seconds,
            progress,
            totals,
            cpu: usage,
            global,
            compare_seconds,
            rows_compared: comparison.tables.iter().map(|t| t.rows_a).sum(),
            tables_compared: comparison.tables.len(),
        },
        answers,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_classified_by_what_they_ask() {
        assert_eq!(classify("GET", "/ws/atomfeed/all/recent"), "feed page");
        assert_eq!(classify("GET", "/ws/atomfeed/all/12"), "feed page");
        assert_eq!(classify("POST", "/ws/feedsync/resources"), "batch fetch");
        assert_eq!(classify("GET", "/ws/feedsync/resource/obs/x"), "single resource");
        assert_eq!(classify("GET", "/ws/feedsync/health"), "other");
        assert!(tap_batches("POST", "/ws/feedsync/resources"));
        assert!(!tap_batches("GET", "/ws/atomfeed/all/1"));
    }
}
