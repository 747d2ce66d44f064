//! `network-bench`: the parent/child network under load. Two scenarios:
//!
//! 1. `latency` (`latency.rs`): an edit committed at child A until visible at child B, both
//!    real children polling the parent, as p50/p99/max and split into its stages.
//! 2. `children` (`children.rs`): one parent serving 100, then 1,000 simulated children that
//!    poll every few seconds, with CPU and memory read for the parent process alone.
//!
//! The parent always runs in its own process (`parent.rs`: this executable started again with
//! `--serve-parent`). It only reports: no figure is a pass/fail threshold. Compare the rows of
//! one run with each other, not with another run. Exit codes: 0 done, 1 a measurement failed
//! or overran `--deadline-seconds`, 2 bad flags.

mod children;
mod common;
mod latency;
mod parent;
mod steps;

use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use serde_json::json;

use feedsync_bench::stats::{number, round};

use crate::children::{ChildrenConfig, ChildrenReport};
use crate::common::Backend;
use crate::latency::{LatencyConfig, LatencyReport};

/// Largest values the flags accept, so a typo cannot start a run of days.
const SAMPLES_MAX: u64 = 10_000;
const CHILDREN_MAX: u64 = 5_000;
const INTERVAL_MS_MAX: u64 = 600_000;
const MEASURE_SECONDS_MAX: u64 = 3_600;
const CATCHMENT_PATIENTS_MAX: u64 = 20;
const REAL_CHILDREN_MAX: u64 = 20;
const DEADLINE_SECONDS_MAX: u64 = 4 * 3_600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Commit at child A to visible at child B.
    Latency,
    /// One parent serving many polling children.
    Children,
    /// Both, latency first.
    Both,
}

#[derive(Parser, Debug)]
#[command(
    name = "network-bench",
    about = "Measure the parent/child network: commit-to-visible latency between two children, and what one parent costs per polling child",
    after_help = "Run in release mode: cargo run --release -p feedsync-bench --bin network-bench -- --scenario both\n\
        SQLite by default (temporary files); --mysql uses MariaDB at 127.0.0.1:3306 (FEEDSYNC_TEST_MYSQL, loopback only)\n\
        loaded from the OpenMRS 2.5 dump (FEEDSYNC_OPENMRS_DUMPS). The parent runs as a second process of this executable."
)]
struct Args {
    /// Which measurement to run.
    #[arg(long, value_enum, default_value_t = Scenario::Both)]
    scenario: Scenario,
    /// Put the parent and the real children on MariaDB (a fresh database each, from the real
    /// dump) instead of SQLite files.
    #[arg(long)]
    mysql: bool,
    /// The parent's sequencer interval (`feed.sequencer_interval_ms`), in both scenarios.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(10..=INTERVAL_MS_MAX))]
    sequencer_interval_ms: u64,
    /// Workload seed; also fixes every jitter and gap, so a rerun schedules the same way.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Latency: edits timed from commit at A to visible at B.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=SAMPLES_MAX))]
    samples: u64,
    /// Latency: children A and B sleep this long after each round (`poll_interval_ms`).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(10..=INTERVAL_MS_MAX))]
    poll_interval_ms: u64,
    /// Latency: how often the bench reads the three databases while an edit is on its way
    /// (the resolution of every latency figure).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1_000))]
    check_interval_ms: u64,
    /// Latency: an edit not at B after this many milliseconds counts as timed out.
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(100..=INTERVAL_MS_MAX))]
    sample_timeout_ms: u64,

    /// Children: how many simulated children, one run per value (comma-separated), smallest first.
    #[arg(long, value_delimiter = ',', default_values_t = vec![100, 1_000], value_parser = clap::value_parser!(u64).range(1..=CHILDREN_MAX))]
    children: Vec<u64>,
    /// Children: each child's sleep between rounds, in milliseconds, before jitter.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(100..=INTERVAL_MS_MAX))]
    child_poll_interval_ms: u64,
    /// Children: each sleep is scaled by a seeded factor within ± this many percent.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=90))]
    jitter_percent: u32,
    /// Children: length of the measured window, after every child has run a round.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=MEASURE_SECONDS_MAX))]
    measure_seconds: u64,
    /// Children: patients in each child's catchment (its own; the parent registers them all).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=CATCHMENT_PATIENTS_MAX))]
    catchment_patients: u64,
    /// Children: commits per second at the parent while children poll (0: none).
    #[arg(long, default_value_t = 2.0)]
    writes_per_second: f64,
    /// Children: share of those commits that edit metadata (sent to every child); the rest
    /// edit one patient's name (sent to its child only).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=100))]
    metadata_percent: u32,
    /// Children: each child pushes one edited name every this many rounds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    push_every_rounds: u64,
    /// Children: real `ChildNode`s (own database, real HTTP client) polling alongside.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=REAL_CHILDREN_MAX))]
    real_children: u64,

    /// Give up (exit 1) if the whole run takes longer than this.
    #[arg(long, default_value_t = 3_600, value_parser = clap::value_parser!(u64).range(10..=DEADLINE_SECONDS_MAX))]
    deadline_seconds: u64,
    /// Also print the results as one JSON object (the last line of standard output).
    #[arg(long)]
    json: bool,
    /// Internal: run only the parent publisher on this database URL and serve until standard
    /// input closes. The bench starts itself this way; there is no need to use it by hand.
    #[arg(long, value_name = "DATABASE_URL")]
    serve_parent: Option<String>,
}

impl Args {
    fn backend(&self) -> Backend {
        if self.mysql { Backend::MariaDb } else { Backend::Sqlite }
    }

    fn rerun_command(&self) -> String {
        let scenario = self.scenario.to_possible_value().expect("no skipped variants").get_name().to_owned();
        let children: Vec<String> = self.children.iter().map(u64::to_string).collect();
        format!(
            "cargo run --release -p feedsync-bench --bin network-bench -- --scenario {scenario}{} --sequencer-interval-ms {} --seed {} \
             --samples {} --poll-interval-ms {} --check-interval-ms {} --children {} --child-poll-interval-ms {} --jitter-percent {} \
             --measure-seconds {} --catchment-patients {} --writes-per-second {} --metadata-percent {} --push-every-rounds {} --real-children {}{}",
            if self.mysql { " --mysql" } else { "" },
            self.sequencer_interval_ms,
            self.seed,
            self.samples,
            self.poll_interval_ms,
            self.check_interval_ms,
            children.join(","),
            self.child_poll_interval_ms,
            self.jitter_percent,
            self.measure_seconds,
            self.catchment_patients,
            self.writes_per_second,
            self.metadata_percent,
            self.push_every_rounds,
            self.real_children,
            if self.json { " --json" } else { "" }
        )
    }

    fn latency_config(&self) -> LatencyConfig {
        LatencyConfig {
            backend: self.backend(),
            samples: self.samples as usize,
            poll_interval: Duration::from_millis(self.poll_interval_ms),
            sequencer_interval_ms: self.sequencer_interval_ms,
            check_interval: Duration::from_millis(self.check_interval_ms),
            sample_timeout: Duration::from_millis(self.sample_timeout_ms),
            seed: self.seed,
        }
    }

    fn children_config(&self, children: u64) -> ChildrenConfig {
        ChildrenConfig {
            backend: self.backend(),
            children: children as usize,
            poll_interval: Duration::from_millis(self.child_poll_interval_ms),
            jitter_percent: self.jitter_percent,
            measure: Duration::from_secs(self.measure_seconds),
            catchment_patients: self.catchment_patients as usize,
            writes_per_second: self.writes_per_second,
            metadata_percent: self.metadata_percent,
            push_every_rounds: self.push_every_rounds,
            real_children: self.real_children as usize,
            sequencer_interval_ms: self.sequencer_interval_ms,
            seed: self.seed,
        }
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Some(url) = &args.serve_parent {
        return parent::serve(url.clone(), args.sequencer_interval_ms);
    }
    if !(0.0..=1_000.0).contains(&args.writes_per_second) {
        eprintln!("network-bench: --writes-per-second {} is outside 0..=1000", args.writes_per_second);
        return std::process::ExitCode::from(2);
    }
    let hints = feedsync_bench::edge::Hints {
        name: "network-bench",
        on_error: "the databases and the parent process it started are removed; run a smaller --children or fewer --samples to see the failing step sooner",
        on_deadline: "lower --samples, --children or --measure-seconds, or raise --deadline-seconds",
    };
    // `edge::run_with_deadline` creates its deadline timer before entering its own runtime,
    // which panics ("there is no reactor running") outside one. Until edge.rs creates it inside
    // `block_on`, give it a runtime context whose one worker drives that timer.
    let timer = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_time().build().expect("timer runtime");
    let _context = timer.enter();
    feedsync_bench::edge::run_with_deadline(args.deadline_seconds, hints, run(&args))
}

async fn run(args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("network-bench: the parent/child network under load, parent in its own process, on {}", args.backend().name());
    println!("rerun:    {}", args.rerun_command());
    println!("machine:  {cores} cores, load average {} at start; shared and noisy: compare rows of one run with each other", common::load_average());

    let mut latency_report = None;
    if matches!(args.scenario, Scenario::Latency | Scenario::Both) {
        eprintln!("latency: parent, children A and B...");
        let report = latency::run(&args.latency_config()).await?;
        print_latency(args, &report);
        latency_report = Some(report);
    }
    let mut children_reports = Vec::new();
    if matches!(args.scenario, Scenario::Children | Scenario::Both) {
        let mut sizes = args.children.clone();
        sizes.sort_unstable();
        for &n in &sizes {
            eprintln!("children: {n} simulated children...");
            children_reports.push(children::run(&args.children_config(n)).await?);
        }
        print_children(args, &children_reports);
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!();
    println!("total run time {elapsed:.0} s; load average {} at the end", common::load_average());
    if args.json {
        let scaling = match (children_reports.first(), children_reports.last()) {
            (Some(small), Some(large)) if children_reports.len() > 1 => {
                Some(children::scaling(small, large).into_iter().map(|(k, v)| (k, v.map(|v| round(v, 3)))).collect::<std::collections::BTreeMap<_, _>>())
            }
            _ => None,
        };
        let object = json!({
            "bench": "network-bench",
            "rerun": args.rerun_command(),
            "backend": args.backend().name(),
            "cores": cores,
            "sequencer_interval_ms": args.sequencer_interval_ms,
            "latency": latency_report.as_ref().map(LatencyReport::json),
            "children": children_reports.iter().map(ChildrenReport::json).collect::<Vec<_>>(),
            "children_scaling_largest_over_smallest": scaling,
            "seconds": round(elapsed, 1),
        });
        println!("{object}");
    }
    Ok(())
}

fn print_latency(args: &Args, r: &LatencyReport) {
    let row = |label: &str, value: String| println!("   {label:<66} {value}");
    println!();
    println!(
        "1. Commit at child A to visible at child B: real children polling every {} ms (round, then sleep), parent sequencer every {} ms",
        args.poll_interval_ms, args.sequencer_interval_ms
    );
    println!("   {} edits of one person_name.middle_name at A, checked every {} ms at the parent and at B", args.samples, args.check_interval_ms);
    row("setup s (parent, A and B caught up, patient fetched by both)", format!("{:.0}", r.setup_seconds));
    row("sampling s (load average before; after)", format!("{:.0} ({}; {})", r.seconds, r.load_before, r.load_after));
    row("commit at A -> visible at B, ms", r.total().describe());
    row("  stage: commit at A -> applied at the parent (A's wait + push)", r.a_to_parent().describe());
    row("  stage: applied -> sequenced at the parent (sequencer wait)", r.parent_sequencing().describe());
    row("  stage: sequenced -> visible at B (B's wait + pull)", r.parent_to_b().describe());
    row(
        "  expected from the intervals alone: each wait uniform over, ms",
        format!("[0, {}] A, [0, {}] parent, [0, {}] B", args.poll_interval_ms, args.sequencer_interval_ms, args.poll_interval_ms),
    );
    row("timed out (not at B within the sample timeout)", r.timeouts.to_string());
    let rounds = |log: &latency::RoundLog| {
        let s = common::spread(&log.durations_ms);
        format!(
            "{} rounds, p50 {} ms, p99 {} ms; {} failed{}",
            s.count,
            number(s.p50),
            number(s.p99),
            log.errors,
            log.last_error.as_deref().map(|e| format!(" (last: {e})")).unwrap_or_default()
        )
    };
    row("child A's rounds", rounds(&r.a_rounds));
    row("child B's rounds", rounds(&r.b_rounds));
    row(
        "CPU cores busy: parent process; bench (A, B, checks); mariadbd",
        format!(
            "{}; {}; {}",
            r.parent_cores.map_or("n/a".into(), |c| format!("{c:.3}")),
            r.usage.bench_cores.map_or("n/a".into(), |c| format!("{c:.2}")),
            r.usage.database_cores.map_or("n/a".into(), |c| format!("{c:.2}"))
        ),
    );
}

fn print_children(args: &Args, reports: &[ChildrenReport]) {
    println!();
    println!(
        "2. One parent, simulated children polling every {} ms ± {}% (hello, a push every {} rounds, changes until empty), {} real children alongside",
        args.child_poll_interval_ms, args.jitter_percent, args.push_every_rounds, args.real_children
    );
    println!(
        "   {} patients per child's catchment; writer at the parent: {}/s, {}% metadata; {} s window after every child ran a round",
        args.catchment_patients, args.writes_per_second, args.metadata_percent, args.measure_seconds
    );
    children::print_table(reports);
    if let (Some(small), Some(large)) = (reports.first(), reports.last())
        && reports.len() > 1
    {
        let ratios = children::scaling(small, large);
        let show = |k: &str| ratios.get(k).copied().flatten().map_or("n/a".into(), |v| format!("{v:.2}"));
        println!(
            "   {} children / {}: requests/s x{}, parent CPU x{}, CPU per child x{}, CPU per request x{}, RSS x{}, changes p50 x{}, p99 x{}",
            large.config.children,
            small.config.children,
            show("requests_per_second"),
            show("parent_cores"),
            show("parent_cores_per_child"),
            show("parent_cpu_ms_per_request"),
            show("parent_rss"),
            show("changes_latency_p50"),
            show("changes_latency_p99")
        );
    }
}
