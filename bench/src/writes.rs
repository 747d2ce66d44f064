//! Measurements 1 and 2: what capture costs OpenMRS writers, and how fast the sequencer turns
//! the journal into events, alone and while the writers are still writing.
//!
//! Each round runs the same seeded workload on three fresh databases: plain (no capture),
//! captured (triggers installed; the journal drained afterwards), and concurrent (triggers
//! installed and the sequencer publishing while the workload runs). Rounds alternate the
//! order (plain, captured, concurrent, then concurrent, captured, plain) so slow drift of the
//! machine during the run falls on every kind equally. Only the workload and the drains are
//! timed; loading the dump and installing capture are not.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use feedsync_node::config::Config;
use feedsync_node::sequencer;
use feedsync_db::Database;
use feedsync_sim::workload::{self, WorkloadConfig, WorkloadLog};

use crate::database::{self, Drain};
use crate::counters::{CounterMeter, Counters};

/// How long the concurrent sequencer sleeps when it finds the journal empty. The publisher's
/// default `sequencer_interval_ms` is 1000; a shorter poll makes the sequencer contend with
/// the writers as much as it ever would, which is what this measurement is after.
pub const CONCURRENT_POLL_MS: u64 = 100;
/// Longest one workload (plus, when concurrent, the sequencer catching up) may take.
const WORKLOAD_DEADLINE_MS: u64 = 120_000;

/// One timed workload run.
#[derive(Debug, Clone, Copy)]
pub struct WriteSample {
    /// Committed row writes (inserts, updates, deletes) from the workload's log.
    pub rows: usize,
    pub transactions: usize,
    pub rolled_back_transactions: usize,
    pub seconds: f64,
}

impl WriteSample {
    fn of(log: &WorkloadLog, seconds: f64) -> WriteSample {
        WriteSample {
            rows: log.writes().count(),
            transactions: log.transactions.len(),
            rolled_back_transactions: log.rolled_back_transactions,
            seconds,
        }
    }
    pub fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.seconds
    }
}

/// A captured run: the workload, then a drain of what it journaled.
#[derive(Debug, Clone, Copy)]
pub struct CapturedSample {
    pub write: WriteSample,
    /// Publishing the install snapshot of the dump's rows, before the workload (metadata rows).
    pub snapshot: Drain,
    /// Publishing the workload's journal after the workload finished.
    pub drain: Drain,
}

/// A run with the sequencer publishing while the workload writes.
#[derive(Debug, Clone, Copy)]
pub struct ConcurrentSample {
    pub write: WriteSample,
    pub events: usize,
    /// From the workload's start to the batch that emptied the journal after it finished.
    pub seconds: f64,
    /// Journal rows not yet published when the workload committed its last transaction.
    pub backlog_at_workload_end: usize,
    /// From the workload's end until the journal was empty.
    pub catch_up_seconds: f64,
    pub batches: usize,
}

impl ConcurrentSample {
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.seconds
    }
}

#[derive(Debug, Default)]
pub struct Rounds {
    pub plain: Vec<WriteSample>,
    pub captured: Vec<CapturedSample>,
    pub concurrent: Vec<ConcurrentSample>,
    /// MariaDB session counters around the workload (same seed, so the same in every round):
    /// what each row written costs the server with and without triggers.
    pub plain_counters: Counters,
    pub captured_counters: Counters,
    /// Rows the install snapshot journaled (the dump's metadata), from the last captured run.
    pub snapshot_rows: u64,
    pub triggers: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    Captured,
    Concurrent,
}

/// Runs `repeats` rounds of the three kinds.
pub async fn run(
    workload: &WorkloadConfig,
    config: &Config,
    repeats: usize,
) -> anyhow::Result<Rounds> {
    let mut rounds = Rounds::default();
    for round in 0..repeats {
        let mut order = [Kind::Plain, Kind::Captured, Kind::Concurrent];
        if round % 2 == 1 {
            order.reverse();
        }
        for kind in order {
            let test = database::fresh().await?;
            let result = match kind {
                Kind::Plain => plain(&test.database, workload).await.map(|(s, c)| {
                    rounds.plain.push(s);
                    rounds.plain_counters = c;
                }),
                Kind::Captured => captured(&test.database, workload, config, &mut rounds)
                    .await
                    .map(|s| rounds.captured.push(s)),
                Kind::Concurrent => concurrent(&test.database, workload, config)
                    .await
                    .map(|s| rounds.concurrent.push(s)),
            };
            database::discard(test).await;
            result.with_context(|| format!("round {} ({kind:?})", round + 1))?;
            eprintln!("  round {}/{repeats}: {kind:?} done", round + 1);
        }
    }
    Ok(rounds)
}

/// Runs the workload on its own session and times it; the session's counters are read
/// outside the timed span.
async fn timed_workload(
    database: &Database,
    workload: &WorkloadConfig,
) -> anyhow::Result<(WriteSample, Counters)> {
    let mut session = database.session().await?;
    let meter = CounterMeter::calibrate(&mut session).await?;
    let before = meter.read(&mut session).await?;
    let start = Instant::now();
    let log = tokio::time::timeout(
        Duration::from_millis(WORKLOAD_DEADLINE_MS),
        workload::run(&mut session, workload),
    )
    .await
    .context("the workload did not finish in time; try fewer --patients")??;
    let seconds = start.elapsed().as_secs_f64();
    let after = meter.read(&mut session).await?;
    Ok((WriteSample::of(&log, seconds), meter.since(&after, &before)))
}

async fn plain(
    database: &Database,
    workload: &WorkloadConfig,
) -> anyhow::Result<(WriteSample, Counters)> {
    timed_workload(database, workload).await
}

async fn captured(
    database: &Database,
    workload: &WorkloadConfig,
    config: &Config,
    rounds: &mut Rounds,
) -> anyhow::Result<CapturedSample> {
    let model = database::model(database).await?;
    let report = database::install(database, &model).await?;
    rounds.snapshot_rows = report.snapshot_rows;
    rounds.triggers =
        report.triggers_created + report.triggers_unchanged + report.triggers_replaced;
    // The snapshot is published first so the workload writes into an empty journal, as it
    // would with a publisher already running, and so the drain below holds workload rows only.
    let snapshot = database::drain(database, &model, config).await?;
    let (write, counters) = timed_workload(database, workload).await?;
    rounds.captured_counters = counters;
    let drain = database::drain(database, &model, config).await?;
    ensure!(
        drain.events == write.rows,
        "the workload committed {} row writes but {} events were published; capture lost or duplicated changes",
        write.rows,
        drain.events
    );
    Ok(CapturedSample {
        write,
        snapshot,
        drain,
    })
}

async fn concurrent(
    database: &Database,
    workload: &WorkloadConfig,
    config: &Config,
) -> anyhow::Result<ConcurrentSample> {
    let model = database::model(database).await?;
    database::install(database, &model).await?;
    database::drain(database, &model, config).await?;

    let start = Instant::now();
    let writer = {
        let (database, workload) = (database.clone(), workload.clone());
        tokio::spawn(async move {
            let (sample, _) = timed_workload(&database, &workload).await?;
            anyhow::Ok((sample, Instant::now()))
        })
    };
    let mut session = database.session().await?;
    let mut events = 0;
    let mut batches = 0;
    // (batch end, events so far) for each batch, to find the backlog at the workload's end.
    let mut published_by: Vec<(Instant, usize)> = Vec::new();
    let mut writer_result = None;
    let mut writer = Some(writer);
    loop {
        if start.elapsed() > Duration::from_millis(WORKLOAD_DEADLINE_MS) {
            if let Some(w) = writer.take() {
                w.abort();
            }
            bail!("the concurrent run did not finish within {WORKLOAD_DEADLINE_MS} ms");
        }
        // One batch at a time (not `drain`) so each batch's end time is known.
        let n = sequencer::sequence_batch(&mut session, &model, config).await?;
        if n > 0 {
            events += n;
            batches += 1;
            published_by.push((Instant::now(), events));
        }
        if writer.as_ref().is_some_and(|w| w.is_finished()) {
            writer_result = Some(
                writer
                    .take()
                    .expect("checked")
                    .await
                    .context("workload task panicked")??,
            );
            // The writer is done, but its last commits may have landed after this batch read
            // the journal: go round again rather than stopping on this batch's count.
            continue;
        }
        if n == 0 {
            if writer.is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(CONCURRENT_POLL_MS)).await;
        }
    }
    let (write, workload_end) =
        writer_result.expect("the loop ends only after the writer finished");
    let last = published_by.last().map_or(start, |(t, _)| *t);
    let published_before_end = published_by
        .iter()
        .take_while(|(t, _)| *t <= workload_end)
        .last()
        .map_or(0, |(_, n)| *n);
    ensure!(
        events == write.rows,
        "the workload committed {} row writes but the concurrent sequencer published {events}",
        write.rows
    );
    Ok(ConcurrentSample {
        write,
        events,
        seconds: last.duration_since(start).as_secs_f64(),
        backlog_at_workload_end: write.rows - published_before_end,
        catch_up_seconds: last.saturating_duration_since(workload_end).as_secs_f64(),
        batches,
    })
}
