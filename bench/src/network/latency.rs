//! Scenario 1: how long an edit committed at child A takes to be visible at child B, online.
//!
//! The parent runs in its own process with its sequencer loop; children A and B are real
//! `ChildNode`s with the real `HttpParent`, each running `round()` and then sleeping the poll
//! interval, exactly as `feed-subscriber run --parent` does. Both fetched the same patient.
//! Each sample commits a unique `person_name.middle_name` at A and watches three databases
//! every `check_interval` until the value is at B, noting when it was
//!
//! 1. at the parent (A's round pushed it and the parent applied it),
//! 2. sequenced there (an event for the name after the one newest at commit), and
//! 3. at B (B's round pulled and applied it).
//!
//! Samples start after a seeded random gap of up to one poll interval, so commits do not lock
//! to the children's phase.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use feed_subscriber::network::{ChildNode, HttpParent};
use feedsync_bench::{cpu, database};
use feedsync_db::Session;
use tokio::sync::watch;

use crate::common::{self, Backend, Spread};
use crate::parent::ParentProcess;

/// Patients the parent's clinic registers; the newest is the one A and B share.
const PARENT_PATIENTS: usize = 2;

pub struct LatencyConfig {
    pub backend: Backend,
    pub samples: usize,
    /// Sleep between a child's rounds (`poll_interval_ms` of `feed-subscriber`).
    pub poll_interval: Duration,
    pub sequencer_interval_ms: u64,
    /// How often the bench looks at the three databases while a sample is in flight.
    pub check_interval: Duration,
    /// A sample not at B after this is counted as timed out.
    pub sample_timeout: Duration,
    pub seed: u64,
}

/// One edit's way from A to B, in milliseconds from its commit at A.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at_parent_ms: f64,
    pub sequenced_ms: f64,
    pub at_b_ms: f64,
}

/// Rounds one child ran while the samples were taken.
#[derive(Debug, Default)]
pub struct RoundLog {
    pub durations_ms: Vec<f64>,
    pub errors: usize,
    pub last_error: Option<String>,
}

pub struct LatencyReport {
    pub samples: Vec<Sample>,
    pub timeouts: usize,
    pub a_rounds: RoundLog,
    pub b_rounds: RoundLog,
    pub seconds: f64,
    pub setup_seconds: f64,
    pub parent_cores: Option<f64>,
    pub usage: cpu::Usage,
    pub load_before: String,
    pub load_after: String,
}

impl LatencyReport {
    pub fn total(&self) -> Spread {
        common::spread(&self.samples.iter().map(|s| s.at_b_ms).collect::<Vec<_>>())
    }
    /// Commit at A to applied at the parent: A's wait for its next round plus its push.
    pub fn a_to_parent(&self) -> Spread {
        common::spread(&self.samples.iter().map(|s| s.at_parent_ms).collect::<Vec<_>>())
    }
    /// Applied at the parent to sequenced: the parent's sequencer interval.
    pub fn parent_sequencing(&self) -> Spread {
        common::spread(&self.samples.iter().map(|s| s.sequenced_ms - s.at_parent_ms).collect::<Vec<_>>())
    }
    /// Sequenced to visible at B: B's wait for its next round plus its pull.
    pub fn parent_to_b(&self) -> Spread {
        common::spread(&self.samples.iter().map(|s| s.at_b_ms - s.sequenced_ms).collect::<Vec<_>>())
    }

    pub fn json(&self) -> serde_json::Value {
        use feedsync_bench::stats::round;
        let rounds = |log: &RoundLog| {
            serde_json::json!({
                "rounds": log.durations_ms.len(),
                "duration_ms": common::spread(&log.durations_ms).json(1),
                "errors": log.errors,
                "last_error": log.last_error,
            })
        };
        serde_json::json!({
            "samples": self.samples.len(),
            "timeouts": self.timeouts,
            "commit_to_visible_at_b_ms": self.total().json(1),
            "stages_ms": {
                "commit_at_a_to_applied_at_parent": self.a_to_parent().json(1),
                "applied_to_sequenced_at_parent": self.parent_sequencing().json(1),
                "sequenced_to_visible_at_b": self.parent_to_b().json(1),
            },
            "child_a": rounds(&self.a_rounds),
            "child_b": rounds(&self.b_rounds),
            "seconds": round(self.seconds, 1),
            "setup_seconds": round(self.setup_seconds, 1),
            "parent_process_cores": self.parent_cores.map(|c| round(c, 3)),
            "cpu": self.usage.json(),
            "load_average_before": self.load_before,
            "load_average_after": self.load_after,
            "raw_ms": self.samples.iter().map(|s| [round(s.at_parent_ms, 1), round(s.sequenced_ms, 1), round(s.at_b_ms, 1)]).collect::<Vec<_>>(),
        })
    }
}

pub async fn run(config: &LatencyConfig) -> anyhow::Result<LatencyReport> {
    let started = Instant::now();
    let site = common::parent_site(config.backend, PARENT_PATIENTS, config.seed).await?;
    let token_a = common::register_child(&site.test.database, "child-a").await?;
    let token_b = common::register_child(&site.test.database, "child-b").await?;
    let parent = ParentProcess::spawn(&site.test.url, config.sequencer_interval_ms).await?;
    let (a_db, b_db) = (common::fresh(config.backend).await?, common::fresh(config.backend).await?);
    let result = async {
        eprintln!("  children A and B catching up with the parent...");
        let a = common::real_child(&a_db, &parent.url(), &token_a).await.context("child A")?;
        let b = common::real_child(&b_db, &parent.url(), &token_b).await.context("child B")?;
        let mut parent_session = site.test.database.session().await?;
        let (patient, name) = common::patients_with_names(&mut parent_session).await?.pop().context("the parent has no patient")?;
        for node in [&a, &b] {
            node.fetch_patient(&patient, "benchmark").await?;
            node.sync_until_idle(10).await?;
        }
        let mut a_session = a_db.database.session().await?;
        let mut b_session = b_db.database.session().await?;
        let at_b = common::one_text(&mut b_session, "SELECT COUNT(*) FROM person_name WHERE uuid = ?", &[name.as_str().into()]).await?;
        ensure!(at_b.as_deref() == Some("1"), "B fetched patient {patient} but does not hold its name {name}");
        // The sequencing check below finds the name's events by its uuid as entity key.
        let events = common::one_text(
            &mut parent_session,
            "SELECT COUNT(*) FROM feedsync_event WHERE table_name = 'person_name' AND entity_key = ?",
            &[name.as_str().into()],
        )
        .await?;
        ensure!(events.is_some_and(|n| n != "0"), "the parent has no event keyed by the name's uuid {name}");
        let setup_seconds = started.elapsed().as_secs_f64();

        eprintln!("  {} samples, children polling every {} ms...", config.samples, config.poll_interval.as_millis());
        let (stop, stopped) = watch::channel(false);
        let meter = cpu::Meter::start();
        let parent_cpu_before = parent.cpu_seconds();
        let load_before = common::load_average();
        let clock = Instant::now();
        let b_offset = config.poll_interval.mul_f64(common::unit(config.seed, &[0xb]));
        let sessions = Sessions { parent: &mut parent_session, a: &mut a_session, b: &mut b_session };
        let (sampled, a_rounds, b_rounds) = tokio::join!(
            async {
                let sampled = take_samples(config, sessions, &name).await;
                let _ = stop.send(true);
                sampled
            },
            round_loop(&a, config.poll_interval, Duration::ZERO, stopped.clone()),
            round_loop(&b, config.poll_interval, b_offset, stopped.clone()),
        );
        let (samples, timeouts) = sampled?;
        let seconds = clock.elapsed().as_secs_f64();
        let parent_cores = match (parent_cpu_before, parent.cpu_seconds()) {
            (Some(before), Some(after)) => Some((after - before) / seconds),
            _ => None,
        };
        Ok(LatencyReport {
            samples,
            timeouts,
            a_rounds,
            b_rounds,
            seconds,
            setup_seconds,
            parent_cores,
            usage: meter.stop(),
            load_before,
            load_after: common::load_average(),
        })
    }
    .await;
    let _ = parent.stop().await;
    database::discard(a_db).await;
    database::discard(b_db).await;
    database::discard(site.test).await;
    result
}

/// The bench's own connections to the three databases, reused for every check.
struct Sessions<'a> {
    parent: &'a mut Session,
    a: &'a mut Session,
    b: &'a mut Session,
}

async fn take_samples(config: &LatencyConfig, s: Sessions<'_>, name: &str) -> anyhow::Result<(Vec<Sample>, usize)> {
    let mut samples = Vec::with_capacity(config.samples);
    let mut timeouts = 0;
    let read_name = "SELECT middle_name FROM person_name WHERE uuid = ?";
    let read_event = "SELECT event_seq FROM feedsync_event WHERE table_name = 'person_name' AND entity_key = ? AND event_seq > ?";
    for i in 0..config.samples {
        tokio::time::sleep(config.poll_interval.mul_f64(common::unit(config.seed, &[i as u64]))).await;
        let newest = common::last_event(s.parent).await?;
        let value = format!("nb{}-{i}", config.seed);
        s.a.execute("UPDATE person_name SET middle_name = ? WHERE uuid = ?", &[value.as_str().into(), name.into()]).await?;
        let committed = Instant::now();
        let ms = || committed.elapsed().as_secs_f64() * 1000.0;
        let (mut at_parent, mut sequenced) = (None, None);
        loop {
            if committed.elapsed() > config.sample_timeout {
                timeouts += 1;
                break;
            }
            if at_parent.is_none() && common::one_text(s.parent, read_name, &[name.into()]).await?.as_deref() == Some(value.as_str()) {
                at_parent = Some(ms());
            }
            if sequenced.is_none() && common::one_text(s.parent, read_event, &[name.into(), newest.into()]).await?.is_some() {
                sequenced = Some(ms());
            }
            if common::one_text(s.b, read_name, &[name.into()]).await?.as_deref() == Some(value.as_str()) {
                // A later stage seen first (within one check) bounds the earlier ones.
                let at_b = ms();
                let sequenced = sequenced.unwrap_or(at_b);
                samples.push(Sample { at_parent_ms: at_parent.unwrap_or(sequenced).min(sequenced), sequenced_ms: sequenced, at_b_ms: at_b });
                break;
            }
            tokio::time::sleep(config.check_interval).await;
        }
    }
    Ok((samples, timeouts))
}

/// `round()`, then sleep the poll interval, until stopped: `feed-subscriber run --parent`'s loop.
async fn round_loop(node: &ChildNode<HttpParent>, poll_interval: Duration, first_delay: Duration, mut stopped: watch::Receiver<bool>) -> RoundLog {
    let mut log = RoundLog::default();
    let mut wait = first_delay;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stopped.changed() => return log,
        }
        let started = Instant::now();
        match node.round().await {
            Ok(_) => log.durations_ms.push(started.elapsed().as_secs_f64() * 1000.0),
            Err(e) => {
                log.errors += 1;
                log.last_error = Some(e.to_string());
            }
        }
        wait = poll_interval;
    }
}
