//! Fresh databases for each measurement: a uniquely named MariaDB database loaded from the real
//! OpenMRS 2.5 dump (through `feedsync_sim::testdb::TestDatabase`), capture installed on
//! request, dropped when the measurement is done. A fresh database per sample keeps one
//! sample's journal, events and buffer-pool state from leaking into the next.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, ensure};
use feedsync_node::config::Config;
use feedsync_node::{load_model, sequencer};
use feedsync_node::capture::{self, InstallReport};
use feedsync_db::Database;
use feedsync_core::model::Model;
use feedsync_core::profile::Profile;
use feedsync_sim::testdb::{DEFAULT_TEST_MYSQL, Source, TestDatabase};

/// Longest the bench waits for pooled connections to close before dropping a database.
const POOL_CLOSE_TIMEOUT_MS: u64 = 5_000;
/// Batches one drain may run: far more than any workload here journals (500 rows a batch).
pub const DRAIN_BATCHES_MAX: usize = 10_000;

/// The MariaDB server the bench uses, refused unless it is on this machine: the bench writes
/// and drops databases and must never be pointed at a shared server by accident.
pub fn server_url() -> anyhow::Result<String> {
    let url = std::env::var("FEEDSYNC_TEST_MYSQL").unwrap_or_else(|_| DEFAULT_TEST_MYSQL.into());
    let parsed = url::Url::parse(&url)
        .with_context(|| format!("FEEDSYNC_TEST_MYSQL is not a URL: {url:?}"))?;
    let host = parsed.host_str().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    ensure!(
        loopback,
        "the bench only uses a MariaDB server on a loopback address, not {host:?}; unset FEEDSYNC_TEST_MYSQL or point it at 127.0.0.1"
    );
    Ok(url)
}

/// Creates and loads a fresh database from the OpenMRS 2.5 dump.
pub async fn fresh() -> anyhow::Result<TestDatabase> {
    let url = server_url()?;
    tokio::task::spawn_blocking(|| TestDatabase::create(Source::MySql25))
        .await
        .context("database loader panicked")?
        .ok_or_else(|| {
            anyhow!(
                "cannot create a database on {url} (see the line above): start MariaDB on 127.0.0.1:3306 with \
                 root and no password, or set FEEDSYNC_TEST_MYSQL; the dump is read from ../shared/openmrs \
                 (or FEEDSYNC_OPENMRS_DUMPS)"
            )
        })
}

/// Creates an empty database (no schema), for asking the server about itself.
pub async fn empty() -> anyhow::Result<TestDatabase> {
    let url = server_url()?;
    tokio::task::spawn_blocking(TestDatabase::empty_mysql)
        .await
        .context("database creator panicked")?
        .ok_or_else(|| anyhow!("cannot create a database on {url} (see the line above): start MariaDB on 127.0.0.1:3306 with root and no password, or set FEEDSYNC_TEST_MYSQL"))
}

/// Closes the database's connections and drops it.
pub async fn discard(test: TestDatabase) {
    // Idle pooled connections do not block DROP DATABASE, but closing them first keeps the
    // server's connection count flat across a run of many databases.
    let _ = tokio::time::timeout(
        Duration::from_millis(POOL_CLOSE_TIMEOUT_MS),
        test.database.clone().close(),
    )
    .await;
    let _ = tokio::task::spawn_blocking(move || drop(test)).await;
}

/// The publisher's model of a database, with the built-in OpenMRS profile.
pub async fn model(database: &Database) -> anyhow::Result<Model> {
    load_model(database, &Profile::openmrs())
        .await
        .context("reading the schema")
}

/// Installs capture (tables, triggers, snapshot of the dump's rows into the journal).
pub async fn install(database: &Database, model: &Model) -> anyhow::Result<InstallReport> {
    let mut session = database.session().await?;
    Ok(capture::install(&mut session, model).await?)
}

/// Events published by one drain and how long it took.
#[derive(Debug, Clone, Copy, Default)]
pub struct Drain {
    pub events: usize,
    pub seconds: f64,
}

impl Drain {
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.seconds
    }
}

/// Publishes the whole journal, as the publisher's sequencer loop does, timed.
pub async fn drain(database: &Database, model: &Model, config: &Config) -> anyhow::Result<Drain> {
    let mut session = database.session().await?;
    let start = Instant::now();
    let events = sequencer::drain(&mut session, model, config, DRAIN_BATCHES_MAX).await?;
    let seconds = start.elapsed().as_secs_f64();
    let left = journal_rows(database).await?;
    ensure!(
        left == 0,
        "the journal still holds {left} rows after a drain of {DRAIN_BATCHES_MAX} batches"
    );
    Ok(Drain { events, seconds })
}

pub async fn journal_rows(database: &Database) -> anyhow::Result<i64> {
    let mut session = database.session().await?;
    let rows = session
        .query(
            &format!("SELECT COUNT(*) AS n FROM {}", capture::JOURNAL_TABLE),
            &[],
        )
        .await?;
    Ok(rows.first().and_then(|r| r.i64("n")).unwrap_or(0))
}
