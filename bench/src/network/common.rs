//! What both network scenarios need: a parent database with capture installed and a seeded
//! clinic on it, children registered at it, one value read by SQL, seeded jitter, quantiles
//! and the machine's load average.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use anyhow::{Context, anyhow};
use feedsync_node::config::Config;
use feedsync_db::{Database, Session, Value};
use feedsync_core::model::Model;
use feedsync_sim::testdb::{Source, TestDatabase};
use feedsync_sim::workload::{self, WorkloadConfig};

use feed_subscriber::network::{ChildNode, HttpParent};
use feedsync_bench::database;

/// Which database the parent and the real children run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    MariaDb,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::MariaDb => "MariaDB",
        }
    }
}

/// A fresh OpenMRS 2.5 database: the shipped SQLite schema in a temporary file, or MariaDB
/// loaded from the real dump (through the bench's loopback-only `database::fresh`).
pub async fn fresh(backend: Backend) -> anyhow::Result<TestDatabase> {
    match backend {
        Backend::MariaDb => database::fresh().await,
        Backend::Sqlite => tokio::task::spawn_blocking(|| TestDatabase::create(Source::Sqlite25))
            .await
            .context("database loader panicked")?
            .ok_or_else(|| anyhow!("cannot create a SQLite database from shared/sim/schema/openmrs-2.5.sqlite.sql (see the line above)")),
    }
}

/// A parent database: capture installed, a seeded clinic of `patients` registered (one visit,
/// three obs each), everything published, as a parent that has been running for a while.
pub struct ParentSite {
    pub test: TestDatabase,
    pub model: Model,
}

pub async fn parent_site(backend: Backend, patients: usize, seed: u64) -> anyhow::Result<ParentSite> {
    let test = fresh(backend).await?;
    let model = database::model(&test.database).await?;
    database::install(&test.database, &model).await?;
    let mut session = test.database.session().await?;
    let clinic = WorkloadConfig { seed, patients, visits_per_patient: 1, obs_per_encounter: 3, ..WorkloadConfig::default() };
    workload::run(&mut session, &clinic).await.context("registering the parent's patients")?;
    drop(session);
    database::drain(&test.database, &model, &Config::default()).await?;
    Ok(ParentSite { test, model })
}

/// Patients at a site with the uuid of one current name each, oldest first.
pub async fn patients_with_names(session: &mut Session) -> anyhow::Result<Vec<(String, String)>> {
    let rows = session
        .query(
            "SELECT pe.uuid AS patient, MIN(pn.uuid) AS name FROM person pe JOIN patient pt ON pt.patient_id = pe.person_id \
             JOIN person_name pn ON pn.person_id = pe.person_id AND pn.voided = 0 GROUP BY pe.person_id, pe.uuid ORDER BY pe.person_id",
            &[],
        )
        .await?;
    Ok(rows.iter().filter_map(|r| Some((r.text("patient")?, r.text("name")?))).collect())
}

/// The first column of the first row, as text.
pub async fn one_text(session: &mut Session, sql: &str, params: &[Value]) -> anyhow::Result<Option<String>> {
    Ok(session.query(sql, params).await?.first().and_then(|r| r.values.first().and_then(Value::to_text)))
}

/// The parent's newest event number.
pub async fn last_event(session: &mut Session) -> anyhow::Result<i64> {
    let text = one_text(session, "SELECT COALESCE(MAX(event_seq), 0) FROM feedsync_event", &[]).await?;
    Ok(text.and_then(|t| t.parse().ok()).unwrap_or_default())
}

/// Registers a child at the parent (every category, patients by catchment) and returns its
/// token, as `feed-publisher child add` does.
pub async fn register_child(database: &Database, name: &str) -> anyhow::Result<String> {
    let mut session = database.session().await?;
    Ok(feedsync_node::parent::add_child(&mut session, name, &feedsync_sim::network::trusted_categories(), false).await?)
}

/// Rounds a real child runs at setup to catch up with its parent at most.
const SETTLE_ROUNDS_MAX: usize = 50;

/// A real child (`ChildNode` with the real `HttpParent`) on `test`, registered at the parent
/// with `token`, prepared and caught up with the parent.
pub async fn real_child(test: &TestDatabase, parent_url: &str, token: &str) -> anyhow::Result<ChildNode<HttpParent>> {
    let model = database::model(&test.database).await?;
    let node = ChildNode::new(test.database.clone(), model, HttpParent::new(parent_url, token));
    node.prepare().await?;
    node.sync_until_idle(SETTLE_ROUNDS_MAX).await?;
    Ok(node)
}

/// A number in [0, 1) fixed by the seed and the parts: jitter that reruns the same way.
pub fn unit(seed: u64, parts: &[u64]) -> f64 {
    let mut hasher = DefaultHasher::new();
    (seed, parts).hash(&mut hasher);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// `base` scaled by a seeded factor in [1 - percent/100, 1 + percent/100].
pub fn jittered(base: Duration, percent: u32, seed: u64, parts: &[u64]) -> Duration {
    let spread = f64::from(percent) / 100.0;
    base.mul_f64(1.0 - spread + 2.0 * spread * unit(seed, parts))
}

/// The value at quantile `q` of sorted samples (nearest rank); NaN when there are none.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// p50, p99 and max of unsorted samples.
pub fn spread(samples: &[f64]) -> Spread {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    Spread {
        count: sorted.len(),
        p50: quantile(&sorted, 0.50),
        p99: quantile(&sorted, 0.99),
        max: sorted.last().copied().unwrap_or(f64::NAN),
        mean: if sorted.is_empty() { f64::NAN } else { sorted.iter().sum::<f64>() / sorted.len() as f64 },
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub count: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Spread {
    pub fn json(&self, decimals: i32) -> serde_json::Value {
        use feedsync_bench::stats::round;
        serde_json::json!({ "count": self.count, "p50": round(self.p50, decimals), "p99": round(self.p99, decimals), "max": round(self.max, decimals), "mean": round(self.mean, decimals) })
    }

    /// `p50 812, p99 2950, max 3011 (mean 1400, 200 samples)`.
    pub fn describe(&self) -> String {
        use feedsync_bench::stats::number;
        format!("p50 {}, p99 {}, max {} (mean {}, {} samples)", number(self.p50), number(self.p99), number(self.max), number(self.mean), self.count)
    }
}

/// The first three fields of /proc/loadavg ("1.12 1.15 1.00"), or "n/a" off Linux.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_else(|_| "n/a".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&sorted, 0.5), 50.0);
        assert_eq!(quantile(&sorted, 0.99), 99.0);
        assert_eq!(quantile(&sorted[..1], 0.99), 1.0);
        assert!(quantile(&[], 0.5).is_nan());
        let s = spread(&[3.0, 1.0, 2.0]);
        assert_eq!((s.p50, s.max, s.mean), (2.0, 3.0, 2.0));
    }

    #[test]
    fn jitter_stays_in_its_band_and_reruns_the_same() {
        let base = Duration::from_secs(10);
        for i in 0..1_000 {
            let d = jittered(base, 20, 7, &[i]);
            assert!(d >= Duration::from_secs(8) && d <= Duration::from_secs(12), "{d:?}");
            assert_eq!(d, jittered(base, 20, 7, &[i]));
        }
        let mean = (0..10_000).map(|i| unit(1, &[i])).sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
    }
}
