//! Where the subscriber's time goes: the steps of `Subscriber::sync_batch` (feed-subscriber's
//! `engine.rs`) replayed one by one on the bench's own session into a fresh B, each timed and
//! with MariaDB's session counters read around it, over the first `--profile-entries` entries
//! of the same feed. The replay calls the same public functions in the same order as the
//! engine (state tables, marker, feed reader, batch fetch, origin, per entry: queue check,
//! savepoint, `apply::apply_resource`, release; marker, commit, queue drain); if the engine
//! changes, this must follow. Its total per entry is printed beside the end-to-end figure so
//! a drift shows.
//!
//! The feed holds every table in the same mix from start to end (see `volume.rs`), so its
//! first entries stand for the whole run.
//!
//! It also counts the reference lookups `apply_resource` makes (one `SELECT` per distinct
//! reference of each resource, no cache across resources) and how many of them repeat a
//! lookup already made in the same batch: those a per-batch cache would save.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use anyhow::{Context, bail};
use feed_subscriber::client::{Fetched, HttpClient};
use feed_subscriber::engine::{BATCH_ENTRIES_MAX, Subscriber};
use feed_subscriber::reader::{EntryContent, FeedReader, Marker};
use feed_subscriber::state;
use feedsync_node::apply::{self, Applied};
use feedsync_node::capture;
use feedsync_db::Session;
use feedsync_core::model::Model;
use feedsync_wire::resource::parse_resource_link;

use feedsync_bench::counters::{CounterMeter, Counters};
use feedsync_bench::database;
use feedsync_bench::server::Server;

/// Session counters read around each step. `Questions` counts every statement the client
/// sent (prepared or not: SAVEPOINT and COMMIT are plain text), so it is "statements".
pub const STEP_COUNTERS: [&str; 9] = [
    "Questions",
    "Com_stmt_execute",
    "Com_stmt_prepare",
    "Handler_read_key",
    "Handler_read_next",
    "Handler_read_rnd_next",
    "Handler_write",
    "Handler_update",
    "Handler_commit",
];
/// Batches one profile may replay, whatever `--profile-entries` says.
const PROFILE_BATCHES_MAX: usize = 2_000;
/// Round trips timed for the latency floor.
const PING_REPEATS: usize = 200;

/// Steps in the engine's order, for printing.
pub const STEPS: [&str; 10] = [
    "state tables + read marker",
    "first read: walk back to page 1",
    "read feed pages (HTTP)",
    "batch fetch (HTTP)",
    "begin + set origin",
    "queue check per entry",
    "savepoint + release per entry",
    "apply_resource",
    "marker + clear origin + commit",
    "queue drain",
];

#[derive(Debug, Clone, Default)]
pub struct Step {
    pub calls: usize,
    pub seconds: f64,
    pub counters: Counters,
}

#[derive(Debug, Clone, Default)]
pub struct TableApply {
    pub resources: usize,
    pub seconds: f64,
    pub counters: Counters,
    /// Reference lookups `apply_resource` makes for these resources.
    pub lookups: usize,
}

#[derive(Debug, Clone, Default)]
pub struct StepProfile {
    pub entries: usize,
    pub batches: usize,
    /// Entries that did not apply at once (queued as waiting or failed), as the engine would.
    pub queued: usize,
    pub steps: BTreeMap<&'static str, Step>,
    pub by_table: BTreeMap<String, TableApply>,
    pub lookups: usize,
    /// Lookups that repeat one made earlier in the same batch.
    pub lookups_repeated_in_batch: usize,
    pub round_trip_ms: f64,
}

impl StepProfile {
    pub fn seconds(&self) -> f64 {
        self.steps.values().map(|s| s.seconds).sum()
    }
    pub fn statements(&self) -> i64 {
        self.steps.values().map(|s| s.counters.get("Questions")).sum()
    }
}

/// Replays the first `entries_max` entries of A's `all` feed into a fresh B.
pub async fn run(server: &Server, entries_max: usize) -> anyhow::Result<StepProfile> {
    let b = database::fresh().await?;
    let result = async {
        let model = database::model(&b.database).await?;
        let mut session = b.database.session().await?;
        replay(server, &b.database, model, &mut session, entries_max).await
    }
    .await;
    database::discard(b).await;
    result
}

async fn replay(
    server: &Server,
    b: &feedsync_db::Database,
    model: Model,
    session: &mut Session,
    entries_max: usize,
) -> anyhow::Result<StepProfile> {
    let feed = format!("http://{}/ws/atomfeed/all/recent", server.addr);
    let client = HttpClient::default();
    let reader = FeedReader::new(client.clone(), &feed);
    let subscriber = Subscriber::new(b.clone(), model.clone(), client.clone(), String::new());
    let meter = CounterMeter::calibrate_names(session, &STEP_COUNTERS).await?;
    let mut profile = StepProfile::default();
    let origin = state::origin(&state::feed_id(&feed));

    // Each step: counters before, the call timed alone, counters after.
    macro_rules! step {
        ($name:expr, $call:expr) => {{
            let before = meter.read(session).await?;
            let start = Instant::now();
            let value = $call;
            let seconds = start.elapsed().as_secs_f64();
            let after = meter.read(session).await?;
            let step = profile.steps.entry($name).or_default();
            step.calls += 1;
            step.seconds += seconds;
            step.counters.add(&meter.since(&after, &before));
            value
        }};
    }

    for _ in 0..PROFILE_BATCHES_MAX {
        if profile.entries >= entries_max {
            break;
        }
        let marker = step!(STEPS[0], {
            state::prepare(session).await?;
            state::feed_state(session, &feed).await?
        })
        .and_then(|s| match (s.marker_entry_id, s.marker_page_url) {
            (Some(entry_id), Some(page_url)) => Some(Marker { entry_id, page_url }),
            _ => None,
        });
        // Without a marker the reader walks from /recent back to the first page, once per
        // feed; that cost is spread over the whole feed, so it is kept apart.
        let read = if marker.is_none() { STEPS[1] } else { STEPS[2] };
        let batch = step!(
            read,
            reader.read_after(marker.as_ref(), BATCH_ENTRIES_MAX).await?
        );
        if batch.entries.is_empty() {
            break;
        }
        let links: Vec<String> = batch
            .entries
            .iter()
            .map(|e| match &e.content {
                EntryContent::Links {
                    resource: Some(link),
                    ..
                } => Ok(link.clone()),
                _ => bail!("entry {} has no resource link", e.id),
            })
            .collect::<anyhow::Result<_>>()?;
        let mut unique = links.clone();
        unique.sort();
        unique.dedup();
        let fetched: HashMap<String, Fetched> = step!(
            STEPS[3],
            unique
                .iter()
                .cloned()
                .zip(client.fetch_resources(&unique).await)
                .collect()
        );

        step!(STEPS[4], {
            session.begin().await?;
            capture::set_origin(session, &origin).await?
        });
        let mut seen_lookups = HashSet::new();
        for link in &links {
            let (table, key) = parse_resource_link(link, "").context("resource link")?;
            let blocked = step!(
                STEPS[5],
                state::entity_blocked(session, &table, &key).await?
            );
            if blocked.is_some() {
                profile.queued += 1;
                continue;
            }
            let resource = match &fetched[link] {
                Fetched::Resource(r) => Some(r),
                Fetched::Deleted(_) => None,
                Fetched::Failed { reason, .. } => bail!("{link}: {reason}"),
            };
            if let Some(r) = resource
                && let Some(entity) = model.entity(&r.table)
                && let Ok(plan) = apply::plan_columns(&model, entity, r)
            {
                let lookups = plan.lookups();
                profile.lookups += lookups.len();
                profile.by_table.entry(table.clone()).or_default().lookups += lookups.len();
                for lookup in lookups {
                    if !seen_lookups.insert(lookup.clone()) {
                        profile.lookups_repeated_in_batch += 1;
                    }
                }
            }
            step!(
                STEPS[6],
                session.execute_script("SAVEPOINT feedsync_change").await?
            );
            let before = meter.read(session).await?;
            let start = Instant::now();
            let applied = match &fetched[link] {
                Fetched::Resource(r) => apply::apply_resource(session, &model, r).await,
                Fetched::Deleted(t) => apply::apply_tombstone(session, &model, t).await,
                Fetched::Failed { .. } => unreachable!("failed fetches stop the profile above"),
            };
            let seconds = start.elapsed().as_secs_f64();
            let after = meter.read(session).await?;
            let counters = meter.since(&after, &before);
            let step = profile.steps.entry(STEPS[7]).or_default();
            step.calls += 1;
            step.seconds += seconds;
            step.counters.add(&counters);
            let by_table = profile.by_table.entry(table.clone()).or_default();
            by_table.resources += 1;
            by_table.seconds += seconds;
            by_table.counters.add(&counters);
            match applied {
                Ok(Applied::Done { .. }) => {
                    step!(
                        STEPS[6],
                        session
                            .execute_script("RELEASE SAVEPOINT feedsync_change")
                            .await?
                    );
                }
                // As the engine does: undo, and (here) only count it; the queue is not the
                // subject of this profile.
                Ok(Applied::Waiting { .. }) | Err(_) => {
                    session
                        .execute_script("ROLLBACK TO SAVEPOINT feedsync_change")
                        .await?;
                    session
                        .execute_script("RELEASE SAVEPOINT feedsync_change")
                        .await?;
                    profile.queued += 1;
                }
            }
        }
        let last = batch.entries.last().expect("non-empty batch");
        step!(STEPS[8], {
            state::set_marker(
                session,
                &feed,
                &last.id,
                &last.page_url,
                batch.entries.len() as i64,
            )
            .await?;
            capture::clear_origin(session).await?;
            session.commit().await?
        });
        step!(STEPS[9], subscriber.drain_queue(session).await?);
        profile.entries += batch.entries.len();
        profile.batches += 1;
        if batch.caught_up {
            break;
        }
    }
    let mut samples = Vec::with_capacity(PING_REPEATS);
    for _ in 0..PING_REPEATS {
        let start = Instant::now();
        session.query("SELECT 1 AS one", &[]).await?;
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    profile.round_trip_ms = feedsync_bench::stats::Summary::of(&samples).median;
    Ok(profile)
}
