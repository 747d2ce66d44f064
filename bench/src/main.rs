//! `publisher-bench`: reports the feed publisher's throughput on MariaDB (what capture costs
//! OpenMRS writers, how fast the sequencer publishes, how fast feed pages and batch fetch are
//! served) and where the time goes. It only reports: no figure here is a pass/fail threshold,
//! because on a shared, noisy machine absolute numbers move from run to run. Compare the rows
//! of one run with each other (ratios), not with another run.
//!
//! Every figure is the median of `--repeats` samples, each sample on a fresh database loaded
//! from the real OpenMRS 2.5 dump. Exit codes: 0 done, 1 a measurement failed, 2 bad flags.

mod profile;
mod serving;
mod writes;

use feedsync_bench::{client, counters, cpu, database, server, stats};

use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use feedsync_node::config::Config;
use feedsync_sim::workload::{self, WorkloadConfig};
use serde_json::json;

use crate::stats::{Summary, number, round};

/// Largest values the flags accept, so a typo cannot start a run of hours.
const PATIENTS_MAX: usize = 2_000;
const REPEATS_MAX: usize = 15;
const CONNECTIONS_MAX: usize = 64;
const REQUESTS_PER_CONNECTION_MAX: usize = 100_000;
const DEADLINE_SECONDS_MAX: u64 = 3_600;

#[derive(Parser, Debug)]
#[command(
    name = "publisher-bench",
    about = "Report the feed publisher's throughput on MariaDB at 127.0.0.1:3306 (root, no password)",
    after_help = "Run in release mode: cargo run --release -p feedsync-bench --bin publisher-bench -- --patients 60\n\
        Uses FEEDSYNC_TEST_MYSQL (loopback only) and FEEDSYNC_OPENMRS_DUMPS like the test suites."
)]
struct Args {
    /// Patients the seeded OpenMRS workload registers (each gets visits, encounters, obs).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=PATIENTS_MAX as u64))]
    patients: u64,
    /// Workload seed: the same seed writes the same rows.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Samples per figure; the median is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=REPEATS_MAX as u64))]
    repeats: u64,
    /// Concurrent keep-alive connections for the feed-page load (and the parallel batch case).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=CONNECTIONS_MAX as u64))]
    connections: u64,
    /// Requests each connection sends per feed-page run.
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..=REQUESTS_PER_CONNECTION_MAX as u64))]
    requests: u64,
    /// Give up (exit 1) if the whole run takes longer than this.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(10..=DEADLINE_SECONDS_MAX))]
    deadline_seconds: u64,
    /// Also print the results as one JSON object (the last line of standard output).
    #[arg(long)]
    json: bool,
}

impl Args {
    fn rerun_command(&self) -> String {
        format!(
            "cargo run --release -p feedsync-bench --bin publisher-bench -- --patients {} --seed {} --repeats {} --connections {} --requests {}{}",
            self.patients,
            self.seed,
            self.repeats,
            self.connections,
            self.requests,
            if self.json { " --json" } else { "" }
        )
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let hints = feedsync_bench::edge::Hints {
        name: "publisher-bench",
        on_error: "the databases it created are dropped; rerun with fewer --patients or --repeats if a step timed out",
        on_deadline: "lower --patients, --repeats or --requests, or raise --deadline-seconds",
    };
    feedsync_bench::edge::run_with_deadline(args.deadline_seconds, hints, run(&args))
}

async fn run(args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let workload = WorkloadConfig {
        seed: args.seed,
        patients: args.patients as usize,
        ..WorkloadConfig::default()
    };
    let config = Config {
        database_url: String::new(),
        ..Config::default()
    };
    let repeats = args.repeats as usize;
    let connections = args.connections as usize;
    let requests_per_connection = args.requests as usize;
    let server_version = mariadb_version().await?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());

    println!("publisher-bench: feed publisher throughput on MariaDB");
    println!("rerun:    {}", args.rerun_command());
    println!(
        "machine:  {cores} cores, MariaDB {server_version} at {}",
        database::server_url()?
    );
    println!(
        "          shared and noisy: compare rows of one run with each other (ratios), not across runs"
    );
    println!(
        "workload: seed {}, {} patients, {} visits each, {} obs per encounter, {}% edits, {}% rolled back; dump openmrs-2.5-fhir2.sql",
        workload.seed,
        workload.patients,
        workload.visits_per_patient,
        workload.obs_per_encounter,
        workload.edit_percent,
        workload.rollback_percent
    );
    println!("figures:  median of {repeats} runs [min..max]; each run on a fresh database");
    println!();

    eprintln!(
        "measuring writes (plain / captured / captured with the sequencer running), {repeats} rounds..."
    );
    let rounds = writes::run(&workload, &config, repeats).await?;
    let writes_json = report_writes(&rounds, &workload);

    eprintln!("preparing a database for the HTTP measurements...");
    let test = database::fresh().await?;
    let result = serve_and_measure(
        &test.database,
        &workload,
        &config,
        connections,
        requests_per_connection,
        repeats,
    )
    .await;
    database::discard(test).await;
    let serving_json = result?;

    let elapsed = started.elapsed().as_secs_f64();
    println!();
    println!("total run time {elapsed:.0} s");
    if args.json {
        let object = json!({
            "rerun": args.rerun_command(),
            "machine": { "cores": cores, "mariadb_version": server_version },
            "workload": { "seed": workload.seed, "patients": workload.patients, "visits_per_patient": workload.visits_per_patient,
                          "obs_per_encounter": workload.obs_per_encounter },
            "repeats": repeats,
            "writes": writes_json,
            "serving": serving_json,
            "run_seconds": round(elapsed, 1),
        });
        println!("{object}");
    }
    Ok(())
}

async fn mariadb_version() -> anyhow::Result<String> {
    // An empty throwaway database just to ask the version: the bench touches no other database.
    let test = database::empty().await?;
    let version = async {
        let mut session = test.database.session().await?;
        let rows = session.query("SELECT VERSION() AS v", &[]).await?;
        anyhow::Ok(rows.first().and_then(|r| r.text("v")).unwrap_or_default())
    }
    .await;
    database::discard(test).await;
    version
}

fn ratio_summary(numerators: &[f64], denominators: &[f64]) -> Summary {
    Summary::of(
        &numerators
            .iter()
            .zip(denominators)
            .map(|(a, b)| a / b)
            .collect::<Vec<_>>(),
    )
}

fn report_writes(rounds: &writes::Rounds, workload: &WorkloadConfig) -> serde_json::Value {
    let plain: Vec<f64> = rounds
        .plain
        .iter()
        .map(writes::WriteSample::rows_per_second)
        .collect();
    let captured: Vec<f64> = rounds
        .captured
        .iter()
        .map(|c| c.write.rows_per_second())
        .collect();
    let concurrent: Vec<f64> = rounds
        .concurrent
        .iter()
        .map(|c| c.write.rows_per_second())
        .collect();
    let drain: Vec<f64> = rounds
        .captured
        .iter()
        .map(|c| c.drain.events_per_second())
        .collect();
    let snapshot: Vec<f64> = rounds
        .captured
        .iter()
        .map(|c| c.snapshot.events_per_second())
        .collect();
    let concurrent_events: Vec<f64> = rounds
        .concurrent
        .iter()
        .map(writes::ConcurrentSample::events_per_second)
        .collect();
    let backlog: Vec<f64> = rounds
        .concurrent
        .iter()
        .map(|c| c.backlog_at_workload_end as f64)
        .collect();
    let catch_up: Vec<f64> = rounds
        .concurrent
        .iter()
        .map(|c| c.catch_up_seconds)
        .collect();
    // Ratios per round: the two runs of one round ran minutes apart at most, under the same load.
    let capture_ratio = ratio_summary(&captured, &plain);
    let concurrent_ratio = ratio_summary(&concurrent, &captured);
    let (plain_s, captured_s, concurrent_s) = (
        Summary::of(&plain),
        Summary::of(&captured),
        Summary::of(&concurrent),
    );
    let sample = rounds
        .plain
        .first()
        .or(rounds.captured.first().map(|c| &c.write))
        .copied();
    let snapshot_events = rounds.captured.first().map_or(0, |c| c.snapshot.events);
    let workload_events = rounds.captured.first().map_or(0, |c| c.drain.events);

    if let Some(s) = sample {
        println!(
            "workload size: {} committed row writes in {} transactions ({} rolled back), {} patients",
            s.rows, s.transactions, s.rolled_back_transactions, workload.patients
        );
    }
    println!(
        "capture: {} triggers; install snapshot journals {} rows of the dump",
        rounds.triggers, rounds.snapshot_rows
    );
    println!();
    println!("1. Write overhead of capture (OpenMRS-style workload, time of the workload only)");
    println!("   {:<44} {}", "plain database, rows written/s", plain_s);
    println!(
        "   {:<44} {}",
        "capture installed, rows written/s", captured_s
    );
    println!(
        "   {:<44} {}   => with capture, writers keep {:.0}% of their plain rate",
        "captured / plain (per round)",
        capture_ratio,
        capture_ratio.median * 100.0
    );
    let rows = sample.map_or(1.0, |s| s.rows.max(1) as f64);
    // Only counters the triggers can change are compared: the workload's own setup reads
    // information_schema, whose scan counts vary with the number of tables in the database.
    let (plain_per_row, captured_per_row) = (
        rounds.plain_counters.per(rows),
        rounds.captured_counters.per(rows),
    );
    let added: Vec<String> = [
        "Com_stmt_execute",
        "Handler_write",
        "Handler_read_key",
        "Handler_read_next",
    ]
    .iter()
    .map(|c| {
        let delta = captured_per_row.get(*c).copied().unwrap_or(0.0)
            - plain_per_row.get(*c).copied().unwrap_or(0.0);
        format!(
            "{c} {}{}",
            if delta >= 0.0 { "+" } else { "" },
            number(delta)
        )
    })
    .collect();
    println!(
        "   triggers add per row written (MariaDB session counters, captured minus plain): {}",
        added.join(", ")
    );
    println!();
    println!(
        "2. Events captured and published (sequencer, page_size {}, batches of up to {} rows)",
        Config::default().feed.page_size,
        Config::default().feed.sequencer_batch_rows_max
    );
    println!(
        "   {:<44} {}   ({} events)",
        "drain after the workload, events/s",
        Summary::of(&drain),
        workload_events
    );
    println!(
        "   {:<44} {}   ({} events, metadata rows)",
        "drain of the install snapshot, events/s",
        Summary::of(&snapshot),
        snapshot_events
    );
    println!(
        "   concurrent: sequencer publishing while the workload writes (polls every {} ms when idle)",
        writes::CONCURRENT_POLL_MS
    );
    println!(
        "   (events/s here is capped by the writers: the sequencer can only publish what has been committed)"
    );
    println!(
        "   {:<44} {}",
        "  events/s, workload start to journal empty",
        Summary::of(&concurrent_events)
    );
    println!("   {:<44} {}", "  workload rows written/s", concurrent_s);
    println!(
        "   {:<44} {}   => writers keep {:.0}% of their captured-alone rate",
        "  concurrent / captured alone (per round)",
        concurrent_ratio,
        concurrent_ratio.median * 100.0
    );
    println!(
        "   {:<44} {}",
        "  journal backlog at workload end, rows",
        Summary::of(&backlog)
    );
    println!(
        "   {:<44} {}",
        "  catch-up after workload end, s",
        Summary::of(&catch_up)
    );

    json!({
        "rows_written": sample.map(|s| s.rows),
        "transactions": sample.map(|s| s.transactions),
        "triggers": rounds.triggers,
        "snapshot_rows": rounds.snapshot_rows,
        "plain_rows_per_second": plain_s.json(),
        "captured_rows_per_second": captured_s.json(),
        "captured_over_plain": capture_ratio.json(),
        "plain_counters_per_row": counters::per_json(&rounds.plain_counters.per(rows)),
        "captured_counters_per_row": counters::per_json(&rounds.captured_counters.per(rows)),
        "drain_events_per_second": Summary::of(&drain).json(),
        "drain_events": workload_events,
        "snapshot_drain_events_per_second": Summary::of(&snapshot).json(),
        "snapshot_events": snapshot_events,
        "concurrent": {
            "poll_ms": writes::CONCURRENT_POLL_MS,
            "events_per_second": Summary::of(&concurrent_events).json(),
            "workload_rows_per_second": concurrent_s.json(),
            "concurrent_over_captured": concurrent_ratio.json(),
            "backlog_at_workload_end_rows": Summary::of(&backlog).json(),
            "catch_up_seconds": Summary::of(&catch_up).json(),
            "batches": rounds.concurrent.iter().map(|c| c.batches).collect::<Vec<_>>(),
        },
    })
}

async fn serve_and_measure(
    database: &feedsync_db::Database,
    workload: &WorkloadConfig,
    config: &Config,
    connections: usize,
    requests_per_connection: usize,
    repeats: usize,
) -> anyhow::Result<serde_json::Value> {
    let model = database::model(database).await?;
    database::install(database, &model).await?;
    database::drain(database, &model, config).await?;
    {
        let mut session = database.session().await?;
        workload::run(&mut session, workload)
            .await
            .context("workload")?;
    }
    // This drain runs on the bench's own session so its status counters can be read around it.
    let mut session = database.session().await?;
    let drain = profile::drain(&mut session, &model, config).await?;
    let server = server::Server::start(database, model, config.clone()).await?;
    let (open, archived) = serving::feed_pages(&server).await?;

    eprintln!(
        "measuring feed pages ({connections} connections x {requests_per_connection} requests per case, {repeats} rounds)..."
    );
    let meter = cpu::Meter::start();
    let pages = serving::pages(&server, connections, requests_per_connection, repeats).await?;
    let pages_cpu = meter.stop();

    eprintln!("measuring batch fetch...");
    let links = serving::resource_links(&server).await?;
    let meter = cpu::Meter::start();
    let (check, batches) = serving::batches(&server, &links, connections, repeats).await?;
    let batches_cpu = meter.stop();

    eprintln!("profiling the steps in-process...");
    let round_trip_ms = profile::round_trip_ms(&mut session).await?;
    let page_profile = profile::page(&server, &mut session, archived).await?;
    let batch_profile = profile::batch(&server, &mut session, &links).await?;
    drop(server);

    println!();
    println!(
        "3. Feed pages of the all feed (page_size {}: {open} pages, archived = page {archived}); {connections} keep-alive connections x {requests_per_connection} requests per run",
        config.feed.page_size
    );
    println!(
        "   {:<20} {:>8} {:<26} {:<30}",
        "case", "entries", "requests/s", "bytes/response (head+body)"
    );
    let mut pages_json = Vec::new();
    for p in &pages {
        println!(
            "   {:<20} {:>8} {:<26} {:<30}",
            p.case.label(),
            p.case.entries,
            p.requests_per_second.to_string(),
            number(p.response_bytes.median)
        );
        pages_json.push(json!({
            "case": p.case.label(), "path": p.case.path, "gzip": p.case.gzip, "entries": p.case.entries,
            "requests_per_second": p.requests_per_second.json(),
            "response_bytes": round(p.response_bytes.median, 0),
            "body_bytes_identity": p.case.body_bytes_identity,
            "deadline_hit": p.runs.iter().any(|r| r.deadline_hit),
            "requests_per_run": p.runs.first().map(|r| r.requests),
        }));
    }
    let find = |page: &str, gzip: bool| {
        pages
            .iter()
            .find(|p| p.case.page == page && p.case.gzip == gzip)
    };
    let mut page_ratios = serde_json::Map::new();
    for page in ["archived", "recent"] {
        if let (Some(identity), Some(gzip)) = (find(page, false), find(page, true)) {
            let speed = ratio_summary(
                &samples(&gzip.requests_per_second),
                &samples(&identity.requests_per_second),
            );
            let size = gzip.response_bytes.median / identity.response_bytes.median;
            println!(
                "   {page}: gzip/identity requests/s {speed}; gzip answers are {:.0}% of identity bytes",
                size * 100.0
            );
            page_ratios.insert(page.into(), json!({ "gzip_over_identity_requests_per_second": speed.json(), "gzip_over_identity_bytes": round(size, 3) }));
        }
    }
    if pages.iter().any(|p| p.runs.iter().any(|r| r.deadline_hit)) {
        println!(
            "   note: some runs stopped at their deadline; their rate covers the requests that completed"
        );
    }
    println!("   {}", pages_cpu.describe());

    println!();
    let statuses: Vec<String> = check
        .statuses
        .iter()
        .map(|(s, n)| format!("{n} x {s}"))
        .collect();
    println!(
        "4. Batch fetch: POST {} with {} links a request; {} distinct resource links from the all feed (items: {})",
        feedsync_wire::resource::BATCH_PATH,
        serving::BATCH_LINKS,
        links.len(),
        statuses.join(", ")
    );
    println!(
        "   {:<20} {:<26} {:>12} {:>16} {:>18}",
        "case", "resources/s", "requests/res", "request B/res", "response B/res"
    );
    let mut batches_json = Vec::new();
    for b in &batches {
        let requests_per_resource = b.requests as f64 / b.resources as f64;
        println!(
            "   {:<20} {:<26} {:>12} {:>16} {:>18}",
            b.case.label(),
            b.resources_per_second.to_string(),
            number(requests_per_resource),
            number(b.request_bytes_per_resource.median),
            number(b.response_bytes_per_resource.median)
        );
        batches_json.push(json!({
            "case": b.case.label(), "connections": b.case.connections, "gzip": b.case.gzip,
            "resources": b.resources, "requests": b.requests,
            "resources_per_second": b.resources_per_second.json(),
            "requests_per_resource": round(requests_per_resource, 5),
            "request_bytes_per_resource": round(b.request_bytes_per_resource.median, 1),
            "response_bytes_per_resource": round(b.response_bytes_per_resource.median, 1),
        }));
    }
    if let (Some(one), Some(many), Some(identity)) =
        (batches.first(), batches.get(1), batches.get(2))
    {
        let parallel = ratio_summary(
            &samples(&many.resources_per_second),
            &samples(&one.resources_per_second),
        );
        println!(
            "   {} connections / 1 connection: {parallel}; gzip answers are {:.0}% of identity bytes",
            many.case.connections,
            one.response_bytes_per_resource.median / identity.response_bytes_per_resource.median
                * 100.0
        );
    }
    println!("   {}", batches_cpu.describe());

    println!();
    println!(
        "5. Where the time goes (publisher library calls timed in-process on one session; MariaDB session counters)"
    );
    println!(
        "   round trip of SELECT 1: {} ms (the floor under every statement)",
        number(round_trip_ms)
    );
    println!(
        "   sequencer drain: {} events in {} batches, {} events/s; per event: {}",
        drain.events,
        drain.batches,
        number(drain.events as f64 / drain.seconds),
        counters::per_text(&drain.counters.per(drain.events.max(1) as f64))
    );
    println!(
        "   archived page ({} entries, {} B, {} B gzipped), per request: SQL {} ms, render {} ms, sha256 {} ms, gzip {} ms",
        page_profile.entries,
        page_profile.body_bytes,
        page_profile.gzip_bytes,
        number(page_profile.query_ms.median),
        number(page_profile.render_ms.median),
        number(page_profile.sha256_ms.median),
        number(page_profile.gzip_ms.median)
    );
    println!(
        "     for comparison, gzip level 1 instead of 6: {} ms, {} B",
        number(page_profile.gzip_fast_ms.median),
        page_profile.gzip_fast_bytes
    );
    println!(
        "     SQL counters per request: {} (event table holds {} rows)",
        counters::per_text(&page_profile.counters.per(1.0)),
        page_profile.events_in_table
    );
    println!("     plan of the page query: {}", page_profile.plan);
    println!(
        "   batch fetch per resource ({} found, {} missing): find_row {} ms, render {} ms",
        batch_profile.resources,
        batch_profile.missing,
        number(batch_profile.find_row_ms_per_resource),
        number(batch_profile.render_ms_per_resource)
    );
    let looked_up = (batch_profile.resources + batch_profile.missing).max(1) as f64;
    println!(
        "     find_row per resource: {}",
        counters::per_text(&batch_profile.find_row_counters.per(looked_up))
    );
    println!(
        "     render per resource:   {}",
        counters::per_text(
            &batch_profile
                .render_counters
                .per(batch_profile.resources.max(1) as f64)
        )
    );
    let mut tables: Vec<(&String, &profile::TableCost)> = batch_profile.by_table.iter().collect();
    tables.sort_by(|a, b| b.1.milliseconds.total_cmp(&a.1.milliseconds));
    let costliest: Vec<String> = tables
        .iter()
        .take(6)
        .map(|(t, c)| {
            format!(
                "{t} {}x {} ms/{} stmts each",
                c.resources,
                number(c.milliseconds / c.resources as f64),
                number(c.statements as f64 / c.resources as f64)
            )
        })
        .collect();
    println!("     costliest tables in total: {}", costliest.join("; "));
    let scanning: Vec<String> = tables
        .iter()
        .filter(|(_, c)| c.scanned_rows > 0)
        .map(|(t, c)| {
            format!(
                "{t} {} rows per lookup",
                number(c.scanned_rows as f64 / c.resources as f64)
            )
        })
        .collect();
    if !scanning.is_empty() {
        println!("     lookups that scan tables: {}", scanning.join("; "));
    }

    Ok(json!({
        "all_feed_pages": open,
        "archived_page": archived,
        "pages": pages_json,
        "page_ratios": page_ratios,
        "pages_cpu": pages_cpu.json(),
        "batch": {
            "links": links.len(),
            "links_per_request": serving::BATCH_LINKS,
            "item_statuses": check.statuses.iter().map(|(s, n)| (s.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "cases": batches_json,
            "cpu": batches_cpu.json(),
        },
        "profile": {
            "round_trip_ms": round(round_trip_ms, 4),
            "sequencer": {
                "events": drain.events, "batches": drain.batches, "seconds": round(drain.seconds, 3),
                "counters_per_event": counters::per_json(&drain.counters.per(drain.events.max(1) as f64)),
            },
            "archived_page": {
                "entries": page_profile.entries, "body_bytes": page_profile.body_bytes, "gzip_bytes": page_profile.gzip_bytes,
                "sql_ms": page_profile.query_ms.json(), "render_ms": page_profile.render_ms.json(),
                "sha256_ms": page_profile.sha256_ms.json(), "gzip_ms": page_profile.gzip_ms.json(),
                "gzip_level_1_ms": page_profile.gzip_fast_ms.json(), "gzip_level_1_bytes": page_profile.gzip_fast_bytes,
                "counters_per_request": counters::per_json(&page_profile.counters.per(1.0)),
                "events_in_table": page_profile.events_in_table, "plan": page_profile.plan,
            },
            "batch": {
                "resources": batch_profile.resources, "missing": batch_profile.missing,
                "find_row_ms_per_resource": round(batch_profile.find_row_ms_per_resource, 4),
                "render_ms_per_resource": round(batch_profile.render_ms_per_resource, 4),
                "find_row_counters_per_resource": counters::per_json(&batch_profile.find_row_counters.per(looked_up)),
                "render_counters_per_resource": counters::per_json(&batch_profile.render_counters.per(batch_profile.resources.max(1) as f64)),
                "by_table": batch_profile.by_table.iter().map(|(t, c)| (t.clone(), json!({
                    "resources": c.resources, "ms_per_resource": round(c.milliseconds / c.resources as f64, 4),
                    "statements_per_resource": round(c.statements as f64 / c.resources as f64, 2),
                    "scanned_rows_per_resource": round(c.scanned_rows as f64 / c.resources as f64, 2),
                }))).collect::<serde_json::Map<_, _>>(),
            },
        },
    }))
}

fn samples(summary: &Summary) -> Vec<f64> {
    summary.samples.clone()
}
