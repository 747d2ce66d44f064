//! Where the time goes: the publisher's own library calls timed one by one in this process,
//! with MariaDB's per-connection status counters read around them (`feedsync_bench::counters`
//! says which and why they are exact for the bench's session).

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Instant;

use anyhow::Context;
use feedsync_node::config::Config;
use feedsync_node::feed::{self, PageLinks};
use feedsync_node::sequencer::{self, ALL_FEED};
use feedsync_node::capture::EVENT_TABLE;
use feedsync_db::Session;
use feedsync_core::model::Model;
use feedsync_node::lookup::LookupCache;
use feedsync_wire::resource;
use sha2::{Digest, Sha256};

use crate::database::DRAIN_BATCHES_MAX;
use crate::counters::{CounterMeter, Counters};
use crate::serving::BATCH_LINKS;
use crate::server::Server;
use crate::stats::Summary;

/// Times each step is repeated to take a median.
const STEP_REPEATS: usize = 20;
/// Round trips timed for the latency floor.
const PING_REPEATS: usize = 200;

/// Median round trip of the cheapest statement: the floor under every query the publisher runs.
pub async fn round_trip_ms(session: &mut Session) -> anyhow::Result<f64> {
    let mut samples = Vec::with_capacity(PING_REPEATS);
    for _ in 0..PING_REPEATS {
        let start = Instant::now();
        session.query("SELECT 1 AS one", &[]).await?;
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(Summary::of(&samples).median)
}

/// A drain of the journal with this session's counters around it.
#[derive(Debug)]
pub struct DrainProfile {
    pub events: usize,
    pub seconds: f64,
    pub batches: usize,
    pub counters: Counters,
}

pub async fn drain(
    session: &mut Session,
    model: &Model,
    config: &Config,
) -> anyhow::Result<DrainProfile> {
    let meter = CounterMeter::calibrate(session).await?;
    let before = meter.read(session).await?;
    let start = Instant::now();
    let mut events = 0;
    let mut batches = 0;
    for _ in 0..DRAIN_BATCHES_MAX {
        let n = sequencer::sequence_batch(session, model, config).await?;
        if n == 0 {
            break;
        }
        events += n;
        batches += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    let after = meter.read(session).await?;
    let counters = meter.since(&after, &before);
    Ok(DrainProfile {
        events,
        seconds,
        batches,
        counters,
    })
}

/// One archived page served, split into its steps, each timed alone.
#[derive(Debug)]
pub struct PageProfile {
    pub entries: usize,
    pub body_bytes: usize,
    pub gzip_bytes: usize,
    /// `open_page` plus `page_events`: the SQL a page request runs.
    pub query_ms: Summary,
    pub render_ms: Summary,
    pub sha256_ms: Summary,
    pub gzip_ms: Summary,
    /// The same body at gzip level 1 instead of the server's default level 6, for comparison.
    pub gzip_fast_ms: Summary,
    pub gzip_fast_bytes: usize,
    /// Per page request (the SQL step only).
    pub counters: Counters,
    /// Rows in the event table, to compare with the rows a page request reads.
    pub events_in_table: i64,
    /// MariaDB's plan for the page query: access type, index, estimated rows, extra.
    pub plan: String,
}

pub async fn page(
    server: &Server,
    session: &mut Session,
    page: i64,
) -> anyhow::Result<PageProfile> {
    let app = &server.app;
    let links = PageLinks {
        base: format!("http://{}", server.addr),
    };
    let (mut query_ms, mut render_ms, mut sha256_ms, mut gzip_ms, mut gzip_fast_ms) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut body_bytes, mut gzip_bytes, mut gzip_fast_bytes, mut entries) = (0, 0, 0, 0);
    let meter = CounterMeter::calibrate(session).await?;
    let before = meter.read(session).await?;
    for _ in 0..STEP_REPEATS {
        let start = Instant::now();
        let (open, _) = feed::open_page(session, ALL_FEED).await?;
        let events = feed::page_events(session, ALL_FEED, page).await?;
        query_ms.push(start.elapsed().as_secs_f64() * 1000.0);
        entries = events.len();

        let start = Instant::now();
        let body = feed::render(
            ALL_FEED,
            page,
            open,
            false,
            &events,
            &links,
            &app.feed_id_base,
            &app.installed_at,
        );
        render_ms.push(start.elapsed().as_secs_f64() * 1000.0);
        body_bytes = body.len();

        // The server hashes every body for its ETag and gzips it per request (server.rs, finish).
        let start = Instant::now();
        std::hint::black_box(Sha256::digest(&body));
        sha256_ms.push(start.elapsed().as_secs_f64() * 1000.0);

        let start = Instant::now();
        let mut encoder = flate2::write::GzEncoder::new(
            Vec::with_capacity(body.len() / 4),
            flate2::Compression::default(),
        );
        encoder.write_all(&body).context("gzip to memory")?;
        gzip_bytes = encoder.finish().context("gzip to memory")?.len();
        gzip_ms.push(start.elapsed().as_secs_f64() * 1000.0);

        let start = Instant::now();
        let mut encoder = flate2::write::GzEncoder::new(
            Vec::with_capacity(body.len() / 4),
            flate2::Compression::fast(),
        );
        encoder.write_all(&body).context("gzip to memory")?;
        gzip_fast_bytes = encoder.finish().context("gzip to memory")?.len();
        gzip_fast_ms.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    let after = meter.read(session).await?;
    let counters = meter.since(&after, &before);
    let counters = Counters(
        counters
            .0
            .into_iter()
            .map(|(k, v)| (k, v / STEP_REPEATS as i64))
            .collect(),
    );
    let events_in_table = session
        .query(&format!("SELECT COUNT(*) AS n FROM {EVENT_TABLE}"), &[])
        .await?
        .first()
        .and_then(|r| r.i64("n"))
        .unwrap_or(0);
    // The same statement feed::page_events runs for the all feed, with the page inlined
    // because EXPLAIN takes no placeholders.
    let plan = session
        .query(
            &format!(
                "EXPLAIN SELECT * FROM {EVENT_TABLE} WHERE all_page = {page} ORDER BY event_seq"
            ),
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            let field = |name: &str| r.text(name).unwrap_or_else(|| "NULL".into());
            format!(
                "type={} key={} rows={} extra={}",
                field("type"),
                field("key"),
                field("rows"),
                field("Extra")
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    Ok(PageProfile {
        events_in_table,
        plan,
        entries,
        body_bytes,
        gzip_bytes,
        query_ms: Summary::of(&query_ms),
        render_ms: Summary::of(&render_ms),
        sha256_ms: Summary::of(&sha256_ms),
        gzip_ms: Summary::of(&gzip_ms),
        gzip_fast_ms: Summary::of(&gzip_fast_ms),
        gzip_fast_bytes,
        counters,
    })
}

/// Batch fetch's per-resource work (`find_row`, then `render`), timed separately, with a cache
/// per [`BATCH_LINKS`] links as the server keeps one per request.
#[derive(Debug)]
pub struct BatchProfile {
    pub resources: usize,
    pub missing: usize,
    pub find_row_ms_per_resource: f64,
    pub render_ms_per_resource: f64,
    pub find_row_counters: Counters,
    pub render_counters: Counters,
    /// Resources, statements and time by table: which kinds of rows cost most.
    pub by_table: BTreeMap<String, TableCost>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct TableCost {
    pub resources: usize,
    pub milliseconds: f64,
    pub statements: i64,
    /// Rows read by table scans while looking these resources up.
    pub scanned_rows: i64,
}

pub async fn batch(
    server: &Server,
    session: &mut Session,
    links: &[String],
) -> anyhow::Result<BatchProfile> {
    let model = &server.app.model;
    let mut profile = BatchProfile {
        resources: 0,
        missing: 0,
        find_row_ms_per_resource: 0.0,
        render_ms_per_resource: 0.0,
        find_row_counters: Counters::default(),
        render_counters: Counters::default(),
        by_table: BTreeMap::new(),
    };
    let (mut find_seconds, mut render_seconds) = (0.0, 0.0);
    let mut find_counters: BTreeMap<String, i64> = BTreeMap::new();
    let mut render_counters: BTreeMap<String, i64> = BTreeMap::new();
    let add = |into: &mut BTreeMap<String, i64>, c: &Counters| {
        for (k, v) in &c.0 {
            *into.entry(k.clone()).or_default() += v;
        }
    };
    let meter = CounterMeter::calibrate(session).await?;
    for chunk in links.chunks(BATCH_LINKS) {
        let mut cache = LookupCache::default();
        for link in chunk {
            let Some((table, key)) = resource::parse_resource_link(link, "") else {
                continue;
            };
            let Some(entity) = model.entity(&table) else {
                continue;
            };
            let before = meter.read(session).await?;
            let start = Instant::now();
            let row = feedsync_node::lookup::find_row(session, model, &table, &key).await?;
            let found = start.elapsed().as_secs_f64();
            let middle = meter.read(session).await?;
            let find = meter.since(&middle, &before);
            add(&mut find_counters, &find);
            find_seconds += found;
            let cost = profile.by_table.entry(table.clone()).or_default();
            cost.resources += 1;
            cost.milliseconds += found * 1000.0;
            cost.statements += find.get("Com_stmt_execute");
            cost.scanned_rows += find.get("Handler_read_rnd_next");
            let Some(row) = row else {
                profile.missing += 1;
                continue;
            };
            let start = Instant::now();
            std::hint::black_box(
                feedsync_node::lookup::render(session, model, entity, &key, &row, &mut cache).await?,
            );
            let rendered = start.elapsed().as_secs_f64();
            let after = meter.read(session).await?;
            let render = meter.since(&after, &middle);
            add(&mut render_counters, &render);
            render_seconds += rendered;
            cost.milliseconds += rendered * 1000.0;
            cost.statements += render.get("Com_stmt_execute");
            cost.scanned_rows += render.get("Handler_read_rnd_next");
            profile.resources += 1;
        }
    }
    let n = (profile.resources + profile.missing).max(1) as f64;
    profile.find_row_ms_per_resource = find_seconds * 1000.0 / n;
    profile.render_ms_per_resource = render_seconds * 1000.0 / profile.resources.max(1) as f64;
    profile.find_row_counters = Counters(find_counters);
    profile.render_counters = Counters(render_counters);
    Ok(profile)
}
