//! `feed-subscriber`: follow feeds, fetch the resources they name, apply them to an OpenMRS
//! database by identity; show and act on what waits. Errors print one line and a hint;
//! exit codes: 0 success, 1 failure, 2 bad command line.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use feed_subscriber::config::Config;
use feed_subscriber::engine::Subscriber;
use feed_subscriber::network::{ChildNode, HttpParent};
use feed_subscriber::openmrs_notify::{Notifier, NotifierHandle};
use feed_subscriber::sink::{SinkLimits, run_sink};
use feed_subscriber::{sink, state, usb};
use feedsync_db::Database;
use feedsync_core::model;
use feedsync_core::profile::Profile;
use feedsync_db::schema::read_schema;

#[derive(Parser)]
#[command(
    name = "feed-subscriber",
    version,
    about = "Follow feed-publisher feeds and apply their changes to an OpenMRS database",
    long_about = "Follow feed-publisher feeds and apply their changes to an OpenMRS database, by identity.\n\n\
        A change that cannot apply yet (its references have not arrived, or the database refused it) is kept \
        with its reason and retried; only later changes to the same entity wait behind it. Nothing is skipped \
        unless an operator says so, with a reason that is kept.",
    after_help = "Example: feed-subscriber run --feed http://parent:8086/ws/atomfeed/all/recent --db mysql://openmrs:secret@127.0.0.1:3306/openmrs --once\n\
        Then:    feed-subscriber status --db mysql://openmrs:secret@127.0.0.1:3306/openmrs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    tls: feedsync_cli::TlsArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Follow feeds and apply their changes; with --once, until caught up, then exit.
    Run(RunArgs),
    /// Markers per feed, and every queued change with its reason and what it waits for.
    Status(DbArgs),
    /// Make failed changes due now (one with --change ID, or all).
    Retry(ActArgs),
    /// Skip one queued change; its reason is kept. Later changes to the entity then go ahead.
    Skip(SkipArgs),
    /// Forget a feed's marker so the next run reads it again from its first page (safe:
    /// applying is idempotent). For a feed whose archived page changed under the marker.
    Reset(ResetArgs),
    /// Find a patient registered at another site (at the parent), and bring their record here.
    #[command(subcommand)]
    Patient(PatientCommand),
    /// Conflicts found when the parent's changes met changes made here.
    #[command(subcommand)]
    Conflicts(feedsync_cli::ConflictsCommand),
    /// Sync with the parent without network: export to a USB file, import the parent's reply.
    #[command(subcommand, long_about = USB_HELP)]
    Usb(UsbCommand),
}

/// How the USB round trip goes (the same text as `feed-publisher usb --help`).
const USB_HELP: &str = feedsync_cli::usb_help!("Sync with the parent without network, with files carried on a USB stick.");

#[derive(Args)]
struct UsbChildArgs {
    /// This child's database.
    #[arg(long, env = "FEEDSYNC_DB")]
    db: String,
    /// This child's token, from `feed-publisher child add` at the parent (it names the child
    /// and keys the files).
    #[arg(long, env = "FEEDSYNC_TOKEN", hide_env_values = true)]
    token: String,
}

#[derive(Subcommand)]
enum UsbCommand {
    /// Write everything the parent has not acknowledged to one file, for `feed-publisher usb import`.
    Export {
        #[command(flatten)]
        child: UsbChildArgs,
        /// The file to write (written whole or not at all).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Import the parent's reply to an export of this child.
    Import {
        #[command(flatten)]
        child: UsbChildArgs,
        /// The reply file (from `feed-publisher usb import --reply-out`).
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
    },
    /// Show a USB file's header (child, direction, event range, created_at) without opening it.
    Inspect {
        /// An export or a reply.
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
    },
}

#[derive(Args)]
struct ParentArgs {
    /// This child's database.
    #[arg(long, env = "FEEDSYNC_DB")]
    db: String,
    /// The parent publisher's address, e.g. http://district:8086 (with its path prefix, if any).
    #[arg(long, env = "FEEDSYNC_PARENT")]
    parent: String,
    /// This child's token, from `feed-publisher child add` at the parent.
    #[arg(long, env = "FEEDSYNC_TOKEN", hide_env_values = true)]
    token: String,
}

#[derive(Subcommand)]
enum PatientCommand {
    /// Search the parent by identifier, or by name with birth date (YYYY-MM-DD) and gender
    /// (M/F); tolerant of spelling. Prints minimal demographics of candidates.
    Find {
        #[command(flatten)]
        parent: ParentArgs,
        /// An identifier, or words of the name with an optional date and gender.
        query: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Add the patient to this site's catchment and bring the whole record here; later
    /// changes then flow both ways.
    Fetch {
        #[command(flatten)]
        parent: ParentArgs,
        /// The patient's uuid, from `patient find`.
        uuid: String,
        /// Why this site needs the record (kept in the parent's audit log), e.g. "transferred
        /// in, referral letter 2231".
        #[arg(long)]
        reason: String,
    },
}

#[derive(Args)]
struct ResetArgs {
    #[arg(long, env = "FEEDSYNC_DB")]
    db: String,
    /// The feed URL, as given to `run`.
    #[arg(long)]
    feed: String,
}

#[derive(Args)]
struct RunArgs {
    /// Feed URL to follow (repeat for several).
    #[arg(long = "feed")]
    feeds: Vec<String>,
    /// Target database URL (overrides database_url in the config file).
    #[arg(long, env = "FEEDSYNC_DB")]
    db: Option<String>,
    /// TOML config file; see examples/feed-subscriber.toml for every key and its default.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Follow until caught up, apply everything that can be applied, then exit 0.
    #[arg(long)]
    once: bool,
    /// Deliver to a sink instead of applying to a database: jsonl:PATH, jsonl:- (standard
    /// output) or webhook:http://host/path. OpenMRS REST links are fetched with the
    /// credentials in FEEDSYNC_FEED_CREDENTIALS (user:password), if set.
    #[arg(long)]
    sink: Option<String>,
    /// With --sink: the database keeping the markers (sqlite://FILE or mysql://...).
    #[arg(long, env = "FEEDSYNC_STATE_DB")]
    state_db: Option<String>,
    /// Two-way sync as a child of this parent (a feed-publisher address): push this
    /// database's changes up, apply the parent's down. Needs --token.
    #[arg(long, env = "FEEDSYNC_PARENT")]
    parent: Option<String>,
    /// This child's token, from `feed-publisher child add` at the parent; with --feed, the
    /// token the publisher's feeds ask for (`feed-publisher token create --scope feeds`), sent
    /// to the feeds' own servers only.
    #[arg(long, env = "FEEDSYNC_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics while running, e.g. 127.0.0.1:9187 (no
    /// authentication: keep it on loopback or a network only the monitoring host reaches).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
}

/// `--metrics-listen`: starts the metrics listener (it stops when the returned sender drops).
async fn start_metrics(
    address: Option<&str>,
    database: &Database,
) -> anyhow::Result<(std::sync::Arc<feed_subscriber::metrics::Metrics>, Option<tokio::sync::watch::Sender<bool>>)> {
    use feed_subscriber::metrics;
    let counters = std::sync::Arc::new(metrics::Metrics::default());
    let Some(address) = address else { return Ok((counters, None)) };
    let listener =
        metrics::bind(address).await.with_context(|| format!("cannot listen on {address} for metrics (in use? try --metrics-listen 127.0.0.1:PORT)"))?;
    tracing::info!(listen = %listener.local_addr()?, "metrics at /metrics");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(metrics::serve(counters.clone(), database.clone(), listener, stopped));
    Ok((counters, Some(stop)))
}

/// The network part of `status` as JSON: `null` unless this database syncs as a child.
async fn network_status(session: &mut feedsync_db::Session) -> anyhow::Result<Option<feed_subscriber::network::ExchangePosition>> {
    if !feed_subscriber::network::is_child(session).await? {
        return Ok(None);
    }
    feedsync_node::exchange::prepare_tables(session).await?;
    Ok(Some(feed_subscriber::network::exchange_position(session).await?))
}

fn network_status_json(status: &feed_subscriber::network::ExchangePosition) -> serde_json::Value {
    serde_json::json!({
        "push_through": status.push_through,
        "pull_after": status.pull_after,
        "last_event": status.last_event,
        "pending_push": status.pending_push,
        "held_total": status.held.len(),
        "held": status.held.iter().map(|h| serde_json::json!({
            "id": h.id, "table": h.item.table, "key": h.item.key, "reason": h.reason, "attempts": h.attempts, "received_at": h.received_at,
        })).collect::<Vec<_>>(),
        "open_conflicts": status.open_conflicts,
        "conflicts": status.conflicts.iter().map(|c| serde_json::json!({
            "id": c.id, "table": c.table, "key": c.key, "category": c.category, "fields": c.fields, "winner": c.winner, "detected_at": c.detected_at,
        })).collect::<Vec<_>>(),
    })
}

/// Held items listed in the text `status` (all are in `--json`, up to 1,000).
const STATUS_HELD_LISTED_MAX: usize = 50;

fn print_network_status(status: &feed_subscriber::network::ExchangePosition) {
    println!("as a child of its parent:");
    println!(
        "  pushed: the parent has accepted own events through {} of {}; {} changes not yet accepted{}",
        status.push_through,
        status.last_event,
        status.pending_push,
        if status.pending_push > 0 { " (the next round pushes them)" } else { "" }
    );
    println!("  pulled: the parent's changes applied through its event {}", status.pull_after);
    if status.held.is_empty() {
        println!("  held here: none");
    } else {
        println!("  held here: {} changes from the parent wait until they can apply (failed events); each is retried every round", status.held.len());
        for h in status.held.iter().take(STATUS_HELD_LISTED_MAX) {
            println!("    held #{} {} {}: {} ({} attempts, since {})", h.id, h.item.table, h.item.key, h.reason, h.attempts, h.received_at);
        }
        if status.held.len() > STATUS_HELD_LISTED_MAX {
            println!("    ... and {} more (--json lists them)", status.held.len() - STATUS_HELD_LISTED_MAX);
        }
    }
    if status.open_conflicts == 0 {
        println!("  open conflicts here: none");
    } else {
        println!(
            "  open conflicts here: {}; both versions are kept: `feed-subscriber conflicts list --db ...` shows them, `conflicts resolve --db ... ID --take mine|theirs` resolves one",
            status.open_conflicts
        );
        for c in &status.conflicts {
            println!("    conflict #{} {} {}: {} (kept for now: {}'s, since {})", c.id, c.table, c.key, c.fields.join(", "), c.winner, c.detected_at);
        }
    }
}

/// Longest wait at exit for OpenMRS to be told about the last rows applied.
const NOTIFY_DRAIN_MS_MAX: u64 = 10_000;

/// `run --sink`: follows the feeds into a sink instead of a database. Progress goes to
/// standard error, which stays free when the sink is standard output.
async fn run_into_sink(config: &Config, spec: &str, state_db: Option<&str>, once: bool, token: Option<&str>) -> anyhow::Result<()> {
    anyhow::ensure!(!config.feeds.is_empty(), "no feed given: pass --feed URL (repeatable) or set feeds = [...]");
    let state_url = state_db.context("--sink needs --state-db URL (sqlite://FILE or mysql://...): the markers are kept there")?;
    let state_db = Database::from_url(state_url)?;
    let mut sink = sink::open_sink(spec)?;
    let mut client = feed_subscriber::client::subscriber_client(Default::default());
    if let Ok(credentials) = std::env::var("FEEDSYNC_FEED_CREDENTIALS") {
        // To the feeds' own servers only, never to a host a feed's links name.
        client = client.with_basic_auth(&credentials).with_credentials_only_to(&config.feeds);
    } else if let Some(token) = token {
        client = client.with_bearer(token).with_credentials_only_to(&config.feeds);
    }
    let limits = SinkLimits { poll_interval_ms: config.poll_interval_ms, ..SinkLimits::default() };
    let p = tokio::select! {
        result = run_sink(&client, &config.feeds, &state_db, &mut sink, once, &limits) => result?,
        _ = tokio::signal::ctrl_c() => return Ok(()),
    };
    eprintln!("caught up: {} entries delivered in {} batches, {} of them failure records", p.entries_delivered, p.batches_delivered, p.failures_delivered);
    Ok(())
}

/// Waits (bounded) for OpenMRS to be told about the rows applied, and says how it went.
async fn finish_notifying(notifier: Option<(Notifier, NotifierHandle)>) {
    let Some((_, handle)) = notifier else { return };
    let stats = handle.drain(NOTIFY_DRAIN_MS_MAX).await;
    tracing::info!(calls = stats.calls_sent, failed = stats.calls_failed, rows_not_notified = stats.rows_pending, "OpenMRS notified");
}

#[derive(Args)]
struct DbArgs {
    /// Target database URL.
    #[arg(long, env = "FEEDSYNC_DB")]
    db: String,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ActArgs {
    #[arg(long, env = "FEEDSYNC_DB")]
    db: String,
    /// The queued change (see `status`); all failed changes when omitted.
    #[arg(long)]
    change: Option<i64>,
}

#[derive(Args)]
struct SkipArgs {
    #[arg(long, env = "FEEDSYNC_DB")]
    db: String,
    /// The queued change (see `status`).
    #[arg(long)]
    change: i64,
    /// Why it is skipped (kept with the change).
    #[arg(long)]
    reason: String,
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    cli.tls.install()?;
    match cli.command {
        Command::Run(args) => {
            let mut config = match &args.config {
                Some(path) => Config::load(path)?,
                None => Config::default(),
            };
            if !args.feeds.is_empty() {
                config.feeds = args.feeds.clone();
            }
            if let Some(spec) = &args.sink {
                anyhow::ensure!(args.metrics_listen.is_none(), "--metrics-listen works with a database or --parent, not yet with --sink");
                return run_into_sink(&config, spec, args.state_db.as_deref(), args.once, args.token.as_deref()).await;
            }
            if let Some(db) = args.db {
                config.database_url = db;
            }
            if let Some(parent) = &args.parent {
                let token = args.token.as_deref().context("--parent needs --token TOKEN (printed by `feed-publisher child add` at the parent)")?;
                anyhow::ensure!(!config.database_url.is_empty(), "no database given: pass --db URL");
                return run_child(&config, parent, token, args.once, args.metrics_listen.as_deref()).await;
            }
            config.validate()?;
            let database = Database::from_url(&config.database_url)?;
            let mut session = database.session().await.with_context(|| format!("cannot open {}", database.display_name()))?;
            let schema = read_schema(&mut session, database.schema_name()).await?;
            let model = model::build(&schema, &Profile::openmrs());
            anyhow::ensure!(!model.entities.is_empty(), "{} holds no OpenMRS tables: load an OpenMRS schema first", database.display_name());
            state::prepare(&mut session).await?;
            drop(session);
            let (metrics, _metrics_stop) = start_metrics(args.metrics_listen.as_deref(), &database).await?;
            let password = std::env::var("FEEDSYNC_OPENMRS_PASSWORD").ok();
            let notifier = config.notifier_config(&database, password.as_deref()).map(Notifier::new);
            let mut client = feed_subscriber::client::subscriber_client(Default::default());
            if let Some(token) = &args.token {
                client = client.with_bearer(token).with_credentials_only_to(&config.feeds);
            }
            let mut subscriber = Subscriber::new(database, model, client, config.path_prefix.clone());
            if let Some((notifier, _)) = &notifier {
                subscriber = subscriber.with_notifier(notifier.clone());
            }
            let result = async {
                if args.once {
                    let p = subscriber.sync_until_caught_up(&config.feeds).await?;
                    metrics.record_sync(&p);
                    println!(
                        "caught up: {} entries read, {} applied, {} queued, {} queued earlier now applied",
                        p.entries_read, p.applied, p.queued, p.unblocked
                    );
                    return Ok(());
                }
                loop {
                    tokio::select! {
                        result = subscriber.sync_until_caught_up(&config.feeds) => match result {
                            Ok(p) => {
                                metrics.record_sync(&p);
                                if p.entries_read > 0 || p.unblocked > 0 {
                                    tracing::info!(read = p.entries_read, applied = p.applied, queued = p.queued, unblocked = p.unblocked, "synced");
                                }
                            }
                            Err(e) if e.is_retryable() => {
                                metrics.record_error(&e.to_string());
                                tracing::warn!(error = %e, "will retry");
                            }
                            // A page that cannot be read stops its own feed, not the service:
                            // the other feeds went on this round, and this one is read again
                            // at every poll until its publisher serves a readable page.
                            Err(e) if e.stops_only_its_feed() => {
                                metrics.record_error(&e.to_string());
                                tracing::error!(error = %e, "this feed waits; the other feeds go on");
                            }
                            Err(e) => return Err(anyhow::Error::from(e)),
                        },
                        _ = tokio::signal::ctrl_c() => return Ok(()),
                    }
                    tokio::time::sleep(Duration::from_millis(config.poll_interval_ms)).await;
                }
            }
            .await;
            finish_notifying(notifier).await;
            return result;
        }
        Command::Status(args) => {
            let database = Database::from_url(&args.db)?;
            let mut session = database.session().await?;
            state::prepare(&mut session).await?;
            let feeds = state::all_feeds(&mut session).await?;
            let changes = state::all_changes(&mut session, state::QUEUE_PAGE_ROWS_MAX).await?;
            let network = network_status(&mut session).await?;
            if args.json {
                let json = serde_json::json!({
                    "network": network.as_ref().map(network_status_json),
                    "feeds": feeds.iter().map(|f| serde_json::json!({
                        "feed": f.feed_url, "marker_entry_id": f.marker_entry_id, "marker_page_url": f.marker_page_url,
                        "entries_read": f.entries_read, "last_read_at": f.last_read_at, "last_error": f.last_error,
                    })).collect::<Vec<_>>(),
                    "changes": changes.iter().map(|c| serde_json::json!({
                        "change": c.change_id, "status": c.status.as_str(), "table": c.table_name, "key": c.entity_key,
                        "entry_id": c.entry_id, "reason": c.reason, "waits_for": c.waits_for, "attempts": c.attempts,
                        "next_attempt_at": c.next_attempt_at, "skip_reason": c.skip_reason,
                    })).collect::<Vec<_>>(),
                });
                println!("{}", serde_json::to_string_pretty(&json)?);
            } else {
                for f in &feeds {
                    println!("feed {}", f.feed_url);
                    println!("  marker: {} on {}", f.marker_entry_id.as_deref().unwrap_or("(none: starts at the first page)"), f.marker_page_url.as_deref().unwrap_or("-"));
                    println!("  entries read: {}; last read: {}", f.entries_read, f.last_read_at.as_deref().unwrap_or("never"));
                    if let Some(e) = &f.last_error {
                        println!("  last error: {e}");
                    }
                }
                if feeds.is_empty() {
                    println!("no feed followed yet");
                }
                let (mut waiting, mut failed) = (0, 0);
                for c in &changes {
                    match c.status {
                        state::Status::Waiting => waiting += 1,
                        state::Status::Failed => failed += 1,
                        state::Status::Skipped => {}
                    }
                    println!(
                        "change #{} {} {} {}: {}{}",
                        c.change_id,
                        c.status.as_str(),
                        c.table_name,
                        c.entity_key,
                        c.reason.as_deref().unwrap_or(""),
                        c.skip_reason.as_deref().map(|r| format!(" (skipped: {r})")).unwrap_or_default()
                    );
                }
                println!("{waiting} waiting, {failed} failed");
                if let Some(network) = &network {
                    println!();
                    print_network_status(network);
                }
            }
            drop(session);
            database.close().await;
        }
        Command::Retry(args) => {
            let database = Database::from_url(&args.db)?;
            let mut session = database.session().await?;
            state::prepare(&mut session).await?;
            let n = state::retry_now(&mut session, args.change).await?;
            println!("{n} failed changes are due now; the next `run` retries them");
            drop(session);
            database.close().await;
        }
        Command::Skip(args) => {
            anyhow::ensure!(!args.reason.trim().is_empty(), "a reason is required: --reason \"why this change is skipped\"");
            let database = Database::from_url(&args.db)?;
            let mut session = database.session().await?;
            state::prepare(&mut session).await?;
            let n = state::skip(&mut session, args.change, args.reason.trim()).await?;
            anyhow::ensure!(n == 1, "no queued change #{} (see `feed-subscriber status`)", args.change);
            println!("change #{} skipped; its reason is kept", args.change);
            drop(session);
            database.close().await;
        }
        Command::Patient(command) => patient_command(command).await?,
        Command::Conflicts(command) => feedsync_cli::conflicts(command).await?,
        Command::Usb(command) => usb_command(command).await?,
        Command::Reset(args) => {
            let database = Database::from_url(&args.db)?;
            let mut session = database.session().await?;
            state::prepare(&mut session).await?;
            let n = state::reset_marker(&mut session, &args.feed).await?;
            anyhow::ensure!(n == 1, "no marker for feed {} (see `feed-subscriber status` for the feeds followed)", args.feed);
            println!("marker of {} forgotten: the next run reads it from its first page", args.feed);
            drop(session);
            database.close().await;
        }
    }
    Ok(())
}

async fn open_child(db: &str, parent: &str, token: &str) -> anyhow::Result<ChildNode<HttpParent>> {
    let database = Database::from_url(db)?;
    let mut session = database.session().await.with_context(|| format!("cannot open {}", database.display_name()))?;
    let schema = read_schema(&mut session, database.schema_name()).await?;
    let model = model::build(&schema, &Profile::openmrs());
    anyhow::ensure!(!model.entities.is_empty(), "{} holds no OpenMRS tables: load an OpenMRS schema first", database.display_name());
    drop(session);
    Ok(ChildNode::new(database, model, HttpParent::new(parent, token)))
}

/// `run --parent URL --token TOKEN`: rounds of push and pull; with --once until a round moves
/// nothing, then exit 0.
async fn run_child(config: &Config, parent: &str, token: &str, once: bool, metrics_listen: Option<&str>) -> anyhow::Result<()> {
    let child = open_child(&config.database_url, parent, token).await?;
    let (metrics, _metrics_stop) = start_metrics(metrics_listen, &child.database).await?;
    eprintln!("preparing {} (capture tables and triggers; the first time, a snapshot)...", child.database.display_name());
    child.prepare().await?;
    if once {
        let r = child.sync_until_idle(1_000).await?;
        metrics.record_round(&r);
        println!(
            "in step with {parent}: {} pushed ({} held at the parent, {} not allowed), {} received ({} held here), {} conflicts recorded",
            r.pushed, r.held_at_parent, r.not_allowed, r.pulled, r.held_here, r.conflicts
        );
        return Ok(());
    }
    loop {
        tokio::select! {
            result = child.round() => match result {
                Ok(r) => {
                    metrics.record_round(&r);
                    if r.moved() {
                        tracing::info!(pushed = r.pushed, received = r.pulled, held_here = r.held_here, conflicts = r.conflicts, "round");
                    }
                }
                Err(e) if e.is_retryable() => {
                    metrics.record_error(&e.to_string());
                    tracing::warn!(error = %e, "parent unreachable; will retry");
                }
                Err(e) => return Err(e.into()),
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        tokio::time::sleep(Duration::from_millis(config.poll_interval_ms)).await;
    }
}

fn read_usb_file(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {} (is the stick mounted? check the path)", path.display()))
}

/// A child that works from USB files: its database prepared (capture tables and triggers; the
/// first time, a snapshot of existing rows, which the first export offers to the parent).
async fn open_usb_child(args: &UsbChildArgs) -> anyhow::Result<ChildNode<usb::NoParentLink>> {
    anyhow::ensure!(
        feedsync_node::exchange::token_child(&args.token).is_some(),
        "--token is not a child token: pass it exactly as `feed-publisher child add` printed it at the parent (NAME.SECRET)"
    );
    let database = Database::from_url(&args.db)?;
    let mut session = database.session().await.with_context(|| format!("cannot open {}", database.display_name()))?;
    let schema = read_schema(&mut session, database.schema_name()).await?;
    let model = model::build(&schema, &Profile::openmrs());
    anyhow::ensure!(!model.entities.is_empty(), "{} holds no OpenMRS tables: load an OpenMRS schema first", database.display_name());
    drop(session);
    let child = ChildNode::new(database, model, usb::NoParentLink);
    child.prepare().await?;
    Ok(child)
}

async fn usb_command(command: UsbCommand) -> anyhow::Result<()> {
    match command {
        UsbCommand::Inspect { input } => {
            let bytes = read_usb_file(&input)?;
            let header = feedsync_wire::bundle::read_header(&bytes).with_context(|| format!("{}", input.display()))?;
            println!("{}", feedsync_node::usb::describe_header(&header));
        }
        UsbCommand::Export { child, out } => {
            let node = open_usb_child(&child).await?;
            let export = usb::export_to_file(&node, &child.token, &out).await?;
            println!("{}", export.describe());
            println!("written to {}: import it at the parent with `feed-publisher usb import`", out.display());
            node.database.close().await;
        }
        UsbCommand::Import { child, input } => {
            let bytes = read_usb_file(&input)?;
            let node = open_usb_child(&child).await?;
            let report = usb::import_reply(&node, &child.token, &bytes).await.with_context(|| format!("{}", input.display()))?;
            println!("{}", report.describe());
            node.database.close().await;
        }
    }
    Ok(())
}

async fn patient_command(command: PatientCommand) -> anyhow::Result<()> {
    match command {
        PatientCommand::Find { parent, query, json } => {
            let child = open_child(&parent.db, &parent.parent, &parent.token).await?;
            let text = query.join(" ");
            let found = child.find_patients(&text, 10).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&found)?);
            } else {
                for c in &found {
                    let name = [&c.given_name, &c.middle_name, &c.family_name].iter().filter_map(|n| n.as_deref()).collect::<Vec<_>>().join(" ");
                    println!(
                        "{}  {name}  {} born {}  ids {}  (score {:.2}, by {})",
                        c.uuid,
                        c.gender.as_deref().unwrap_or("?"),
                        c.birthdate.as_deref().unwrap_or("?"),
                        c.identifiers.join(", "),
                        c.score,
                        c.matched_by
                    );
                }
                println!("{} candidates; bring one here with `feed-subscriber patient fetch ... UUID`", found.len());
            }
        }
        PatientCommand::Fetch { parent, uuid, reason } => {
            let child = open_child(&parent.db, &parent.parent, &parent.token).await?;
            child.prepare().await?;
            let (applied, held) = child.fetch_patient(&uuid, &reason).await?;
            println!("patient {uuid} fetched: {applied} rows applied, {held} held until what they reference arrives; later changes flow both ways");
        }
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    feedsync_cli::run_main(run(cli));
}
