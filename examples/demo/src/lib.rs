//! The demo network behind `feedsync-demo`, the README's first command: a parent and N
//! children in one process, each an OpenMRS database (SQLite files from the schema built into
//! the binary, or MariaDB databases from the real dump), a clinic simulator
//! (`feedsync_sim::clinic`) keeping the facilities busy, and scenes at fixed points of the
//! timeline (`timeline.rs`): a patient moving to another facility, two facilities editing the
//! same record, a facility offline, a USB transfer.
//!
//! Everything runs with the toolkit's own pieces, as separate servers would: the parent is
//! the publisher's `App` served over HTTP with its sequencer loop; each child is a
//! `ChildNode<HttpParent>` whose `round()` runs on an interval and talks to the parent over
//! loopback HTTP. Nothing here bypasses the network code.
//!
//! This module is the binary's body (it prints to the terminal and returns `anyhow` errors);
//! it lives in the library so its pieces stay next to the code they drive.
//!
//! Stopping: the clinics stop first, each round loop finishes its current round, a facility
//! still offline comes back, every facility syncs until nothing moves, then the parent stops
//! serving. The databases
//! stay where they are, and [`Summary::print`] says where and how to look at them.

pub mod databases;
mod timeline;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use feedsync_node::config::Config;
use feed_publisher::server::{self, App};
use feedsync_node::parent as parent_network;
use feedsync_node::{load_model, sequencer};
use feedsync_node::capture;
use feedsync_sim::clinic::{self, Clinic, FACILITIES, Facility};
use feedsync_db::Database;
use feedsync_core::profile::Profile;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use feed_subscriber::network::{ChildNode, HttpParent, RoundReport};
use databases::Backend;

/// Most children a demo runs: one per facility the clinic simulator knows.
pub const CHILDREN_MAX: usize = FACILITIES.len();
/// Most clinic actions per second: beyond it the databases, not the timeline, set the pace.
pub const SPEED_MAX: f64 = 1_000.0;
/// Passes of "every facility syncs once" before the demo stops waiting for the network to
/// settle (the first sync, and the last one when stopping).
const SETTLE_PASSES_MAX: usize = 20;
/// How often the parent's sequencer publishes what its journal holds.
const PARENT_SEQUENCER_INTERVAL_MS: u64 = 500;

/// What `feedsync-demo` was asked for.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub seed: u64,
    pub children: usize,
    /// Clinic actions per second, all facilities together.
    pub speed: f64,
    /// Folder for the SQLite files, the USB files and the children's tokens.
    pub dir: PathBuf,
    pub listen: String,
    /// MariaDB server URL without a database; SQLite when `None`.
    pub mysql: Option<String>,
    pub dump: Option<PathBuf>,
    /// Stop by itself after this much simulated time; run until stopped when `None`.
    pub duration: Option<Duration>,
    pub round_interval: Duration,
}

impl DemoOptions {
    fn validate(&self) -> anyhow::Result<()> {
        if !(1..=CHILDREN_MAX).contains(&self.children) {
            bail!("--children {}: the demo runs 1 to {CHILDREN_MAX} facilities", self.children);
        }
        if !(self.speed > 0.0 && self.speed <= SPEED_MAX) {
            bail!("--speed {}: give clinic actions per second, more than 0 and at most {SPEED_MAX}", self.speed);
        }
        if self.round_interval < Duration::from_millis(50) {
            bail!("--round-interval-ms {}: at least 50", self.round_interval.as_millis());
        }
        Ok(())
    }
}

/// A facility of the network: its database, its child node and whether its link is up.
pub(crate) struct Site {
    pub facility: &'static Facility,
    pub database: Database,
    pub token: String,
    /// Held for a whole round, or for a scene that needs no round to run meanwhile.
    pub node: tokio::sync::Mutex<ChildNode<HttpParent>>,
    /// The round loop skips rounds while false (the facility is offline).
    pub online: AtomicBool,
}

impl Site {
    pub fn name(&self) -> &'static str {
        self.facility.name
    }

    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::SeqCst)
    }
}

/// Prints what happens, one line each, with the time since the simulation started.
pub(crate) struct Narrator {
    started: std::sync::OnceLock<Instant>,
    who_width: usize,
}

impl Narrator {
    fn new(names: &[&str]) -> Narrator {
        Narrator { started: std::sync::OnceLock::new(), who_width: names.iter().map(|n| n.len()).max().unwrap_or(6).max(6) }
    }

    fn start_clock(&self) {
        let _ = self.started.set(Instant::now());
    }

    fn clock(&self) -> String {
        match self.started.get() {
            Some(started) => {
                let seconds = started.elapsed().as_secs();
                format!("[{:02}:{:02}]", seconds / 60, seconds % 60)
            }
            None => "[setup]".to_owned(),
        }
    }

    /// A line about one site; continuation lines are indented under the text.
    pub fn say(&self, who: &str, text: &str) {
        let clock = self.clock();
        let indent = " ".repeat(clock.len() + self.who_width + 2);
        let text = text.replace('\n', &format!("\n{indent}"));
        println!("{clock} {who:<width$} {text}", width = self.who_width);
    }

    /// A scene of the timeline, so it stands out among the clinics' lines.
    pub fn scene(&self, text: &str) {
        println!("{} ==> {text}", self.clock());
    }

    /// A line before the simulation (setup) or after it (the summary), without a clock.
    pub fn note(&self, text: &str) {
        println!("{text}");
    }
}

/// `1 conflict`, `2 conflicts`.
pub(crate) fn count(n: usize, thing: &str) -> String {
    if n == 1 { format!("1 {thing}") } else { format!("{n} {thing}s") }
}

/// One line for a round that moved something; `None` for a quiet one. What the parent
/// answers to a push counts as applied here too (its merged version of each row sent).
pub(crate) fn describe_round(r: &RoundReport) -> Option<String> {
    if r.pushed + r.pulled + r.unheld == 0 {
        return None;
    }
    let mut parts = Vec::new();
    if r.pushed > 0 {
        parts.push(format!("sent {}", count(r.pushed, "changed row")));
    }
    if r.pulled > 0 {
        parts.push(format!("applied {} from the parent", r.pulled));
    }
    if r.held_at_parent > 0 {
        parts.push(format!("{} held at the parent until what they reference arrives", r.held_at_parent));
    }
    if r.held_here > 0 {
        parts.push(format!("{} held here until what they reference arrives", r.held_here));
    }
    if r.unheld > 0 {
        parts.push(format!("{} held ones applied", r.unheld));
    }
    if r.conflicts > 0 {
        parts.push(format!("{} recorded here", count(r.conflicts, "conflict")));
    }
    Some(format!("sync: {}", parts.join(", ")))
}

/// The parent: its app (database, model, config), served over HTTP by `server::serve`.
pub(crate) struct Parent {
    pub app: Arc<App>,
}

impl Parent {
    /// Publishes what the journal holds (the sequencer loop does too; this is for steps that
    /// want the events now). Returns the number of events.
    pub async fn publish(&self) -> anyhow::Result<usize> {
        let mut session = self.app.database.session().await?;
        Ok(sequencer::drain(&mut session, &self.app.model, &self.app.config, 100_000).await?)
    }
}

/// Where the demo left everything, for [`Summary::print`].
#[derive(Debug, Clone)]
pub struct Summary {
    pub dir: PathBuf,
    /// The parent first, then the children.
    pub nodes: Vec<NodeSummary>,
    pub conflicts_at_parent: Option<usize>,
    pub tokens_file: Option<PathBuf>,
    /// The parent's address while it served.
    pub served_at: Option<String>,
    /// How to open a node's database with the database's own client: `sqlite3 FILE` or
    /// `mariadb -h HOST ... DATABASE`.
    pub client_commands: Vec<String>,
    /// Stopped before the simulation began.
    pub interrupted_during_setup: bool,
}

#[derive(Debug, Clone)]
pub struct NodeSummary {
    pub name: String,
    /// The database URL the toolkit's commands take.
    pub url: String,
    /// The SQLite file, or the MariaDB database name.
    pub location: String,
    /// Patients at the end, when counted.
    pub patients: Option<i64>,
}

impl Summary {
    pub fn print(&self) {
        println!();
        if self.interrupted_during_setup {
            println!("stopped during setup. What was created stays here:");
        } else {
            println!("stopped. The databases stay where they are:");
        }
        for node in &self.nodes {
            let mut counts = node.patients.map(|n| count(n as usize, "patient")).unwrap_or_default();
            if node.name == "parent"
                && let Some(conflicts) = self.conflicts_at_parent
            {
                counts += &format!(", {}", count(conflicts, "conflict"));
            }
            let counts = if counts.is_empty() { String::new() } else { format!("  ({counts})") };
            println!("  {:<12} {}{counts}", node.name, node.location);
        }
        let (Some(parent), Some(client)) = (self.nodes.first(), self.client_commands.first()) else { return };
        let served_at = self.served_at.as_deref().unwrap_or("127.0.0.1:8086");
        let mut commands = vec![
            (format!("{client} 'SELECT identifier FROM patient_identifier'"), "every patient's identifier, at the parent"),
            (format!("feed-publisher child list --db {}", parent.url), "the children: positions, catchment, held changes"),
            (format!("feed-publisher conflicts list --db {}", parent.url), "both versions of each conflict, to resolve"),
        ];
        if let Some(child) = self.nodes.get(1) {
            commands.push((format!("feed-subscriber status --db {}", child.url), "a facility's sync position"));
        }
        commands.push((format!("feed-publisher serve --db {} --listen {served_at}", parent.url), "the parent's feeds and dashboard again"));
        let width = commands.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
        println!("Look at them (from the source tree, put `cargo run --release -p feed-publisher --` or `-p feed-subscriber --` first):");
        for (command, what) in commands {
            println!("  {command:<width$}  # {what}");
        }
        if let Some(tokens) = &self.tokens_file {
            println!("The children's tokens, for `feed-subscriber run --parent ... --token ...`, are in {}", tokens.display());
        }
    }
}

/// Runs the demo until `stop` turns true or `options.duration` has passed. Returns where
/// everything is; errors are for what makes the demo impossible (a database that cannot be
/// created, an address in use).
pub async fn run(options: DemoOptions, mut stop: watch::Receiver<bool>) -> anyhow::Result<Summary> {
    options.validate()?;
    std::fs::create_dir_all(&options.dir).with_context(|| format!("cannot create the demo's folder {}", options.dir.display()))?;
    let backend = match &options.mysql {
        Some(server) => Backend::mariadb(server, options.dump.as_deref()).await?,
        None => Backend::Sqlite { dir: options.dir.clone() },
    };
    let facilities: Vec<&'static Facility> = FACILITIES[..options.children].iter().collect();
    let names: Vec<&str> = std::iter::once("parent").chain(facilities.iter().map(|f| f.name)).collect();
    backend.check_fresh(&names)?;
    let narrator = Arc::new(Narrator::new(&names));
    let mut summary = Summary {
        dir: options.dir.clone(),
        nodes: names.iter().map(|n| NodeSummary { name: n.to_string(), url: backend.url(n), location: backend.location(n), patients: None }).collect(),
        conflicts_at_parent: None,
        tokens_file: None,
        served_at: None,
        client_commands: names.iter().map(|n| backend.client_command(n)).collect(),
        interrupted_during_setup: false,
    };
    narrator.note(&format!(
        "feedsync demo: a parent and {} children ({}) on {}, seed {}, {} clinic actions per second",
        facilities.len(),
        facilities.iter().map(|f| format!("{} in {}", f.name, f.country.name)).collect::<Vec<_>>().join(", "),
        backend.describe(),
        options.seed,
        options.speed
    ));
    let (server_stop, server_stopped) = watch::channel(false);
    let setup = tokio::select! {
        outcome = setup(&options, &backend, &facilities, &narrator, &mut summary, server_stopped) => outcome?,
        _ = stop.changed() => {
            let _ = server_stop.send(true);
            summary.interrupted_during_setup = true;
            return Ok(summary);
        }
    };
    let Setup { parent, sites, server_tasks } = setup;

    let mut clinics = Vec::new();
    for site in &sites {
        clinics.push(Clinic::open(&site.database, site.facility, options.seed).await.with_context(|| format!("opening the clinic of {}", site.name()))?);
    }
    let (loops_stop, loops_stopped) = watch::channel(false);
    let mut loops = Vec::new();
    for (i, site) in sites.iter().enumerate() {
        // Staggered, so the facilities do not all knock at the parent at once.
        let offset = options.round_interval.mul_f64(i as f64 / sites.len() as f64);
        loops.push(tokio::spawn(round_loop(site.clone(), options.round_interval, offset, narrator.clone(), loops_stopped.clone())));
    }
    narrator.note(&format!(
        "the clinics open: {} actions per second{}. Ctrl-C stops.\n",
        options.speed,
        options.duration.map(|d| format!(" for {} seconds", d.as_secs_f64())).unwrap_or_default()
    ));
    narrator.start_clock();
    let usb_dir = options.dir.join("usb");
    let mut timeline = timeline::Timeline::new(&sites, clinics, &parent, &narrator, usb_dir, options.seed);
    timeline.run(options.speed, options.duration, &mut stop).await;
    drop(timeline);

    narrator.scene("stopping: the clinics close, each facility finishes its round and syncs what is left");
    let _ = loops_stop.send(true);
    for handle in loops {
        let _ = handle.await;
    }
    // A facility still offline comes back for the last sync, so the databases left behind
    // agree and can be compared.
    for site in sites.iter().filter(|s| !s.is_online()) {
        site.online.store(true, Ordering::SeqCst);
        narrator.say(site.name(), "comes back online for the last sync");
    }
    match settle(&parent, &sites).await {
        Ok(true) => narrator.say("demo", "every facility is in step with the parent"),
        Ok(false) => narrator.say("demo", &format!("the network was still moving after {SETTLE_PASSES_MAX} passes; stopping anyway")),
        Err(e) => narrator.say("demo", &format!("the last sync failed: {e:#}")),
    }
    let _ = server_stop.send(true);
    for handle in server_tasks {
        let _ = handle.await;
    }
    count_at_the_end(&mut summary, &parent, &sites).await;
    drop(sites);
    Ok(summary)
}

struct Setup {
    parent: Parent,
    sites: Vec<Arc<Site>>,
    server_tasks: Vec<JoinHandle<()>>,
}

/// Databases, capture, metadata, registrations, the parent serving, the children prepared
/// and synced once.
async fn setup(
    options: &DemoOptions,
    backend: &Backend,
    facilities: &[&'static Facility],
    narrator: &Narrator,
    summary: &mut Summary,
    server_stopped: watch::Receiver<bool>,
) -> anyhow::Result<Setup> {
    narrator.note(&format!("creating the parent's OpenMRS 2.5 database: {}", backend.location("parent")));
    let parent_db = backend.create("parent").await?;
    let model = load_model(&parent_db, &Profile::openmrs()).await.context("reading the parent's schema")?;
    let mut session = parent_db.session().await?;
    capture::install(&mut session, &model).await.context("installing change capture at the parent")?;
    let metadata = clinic::create_metadata(&parent_db, facilities).await.context("creating the clinics' metadata at the parent")?;
    narrator.note(&format!(
        "at the parent: {} concepts (vital signs, lab results), {} facility locations, {} clinicians, visit and encounter types, the identifier type \"Facility Number\"",
        metadata.concepts, metadata.locations, metadata.clinicians
    ));
    let mut tokens = Vec::new();
    for facility in facilities {
        tokens.push(parent_network::add_child(&mut session, facility.name, &["*".to_owned(), feedsync_wire::network::PRIVILEGED_GRANT.to_owned()], false).await.with_context(|| format!("registering {}", facility.name))?);
    }
    drop(session);
    let tokens_file = options.dir.join("tokens.txt");
    let listing: String = facilities.iter().zip(&tokens).map(|(f, t)| format!("{} {t}\n", f.name)).collect();
    std::fs::write(&tokens_file, format!("# The demo children's tokens (demo only): NAME TOKEN\n{listing}"))
        .with_context(|| format!("writing {}", tokens_file.display()))?;
    summary.tokens_file = Some(tokens_file);
    narrator.note(&format!("registered {} children at the parent (each syncs its own patients, and metadata from everywhere)", facilities.len()));

    let listener = tokio::net::TcpListener::bind(&options.listen)
        .await
        .with_context(|| format!("cannot listen on {} (in use? try --listen 127.0.0.1:0)", options.listen))?;
    let addr = listener.local_addr()?;
    let mut config = Config { database_url: backend.url("parent"), ..Config::default() };
    config.server.listen = addr.to_string();
    config.feed.sequencer_interval_ms = PARENT_SEQUENCER_INTERVAL_MS;
    let app = Arc::new(App::new(parent_db, model, config).await?);
    let serving = app.clone();
    let server_tasks = vec![
        tokio::spawn(server::run_sequencer(app.clone(), server_stopped.clone())),
        tokio::spawn(async move {
            if let Err(e) = server::serve(serving, listener, server_stopped).await {
                tracing::error!(error = %e, "the parent stopped serving");
            }
        }),
    ];
    let base = base_url(addr);
    summary.served_at = Some(addr.to_string());
    narrator.note(&format!("listening on {base}"));
    let login = if std::env::var(feed_publisher::dashboard::ADMIN_TOKEN_ENV).is_ok_and(|t| !t.trim().is_empty()) {
        format!(" (log in with the token in {})", feed_publisher::dashboard::ADMIN_TOKEN_ENV)
    } else {
        String::new()
    };
    narrator.note(&format!("dashboard:  {base}/dashboard{login}"));
    narrator.note(&format!("feeds:      {base}/ws/atomfeed/all/recent (every change at the parent), {base}/ws/atomfeed (the categories)"));
    narrator.note(&format!("folder:     {}", options.dir.display()));
    let parent = Parent { app };

    let mut sites = Vec::new();
    for (facility, token) in facilities.iter().zip(tokens) {
        narrator.note(&format!("creating {}'s OpenMRS 2.5 database: {}", facility.name, backend.location(facility.name)));
        let database = backend.create(facility.name).await?;
        let model = load_model(&database, &Profile::openmrs()).await.with_context(|| format!("reading {}'s schema", facility.name))?;
        let node = ChildNode::new(database.clone(), model, HttpParent::new(&base, &token));
        node.prepare().await.with_context(|| format!("installing change capture at {}", facility.name))?;
        sites.push(Arc::new(Site { facility, database, token, node: tokio::sync::Mutex::new(node), online: AtomicBool::new(true) }));
    }
    narrator.note("first sync: each facility receives the concepts, locations and clinicians made at the parent...");
    let started = Instant::now();
    // The first round is the long one (each side offers the other its whole snapshot of core
    // metadata): the facilities take it side by side.
    parent.publish().await?;
    let mut first_rounds = Vec::new();
    for site in &sites {
        let site = site.clone();
        first_rounds
            .push(tokio::spawn(async move { site.node.lock().await.round().await.with_context(|| format!("first sync of {}", site.name())).map(|_| ()) }));
    }
    for round in first_rounds {
        round.await.context("a first sync stopped")??;
    }
    if !settle(&parent, &sites).await? {
        bail!("the first sync did not settle in {SETTLE_PASSES_MAX} passes");
    }
    narrator.note(&format!("first sync done in {:.1} s", started.elapsed().as_secs_f64()));
    Ok(Setup { parent, sites, server_tasks })
}

/// `http://ADDR`, with a wildcard listen address shown as loopback (a browser cannot open
/// `http://0.0.0.0:8086`).
fn base_url(addr: SocketAddr) -> String {
    let mut shown = addr;
    if addr.ip().is_unspecified() {
        shown.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{shown}")
}

/// A facility's rounds, every `interval` after `offset`, while it is online, until `stop`.
/// A round under way when `stop` comes is finished, never cut.
async fn round_loop(site: Arc<Site>, interval: Duration, offset: Duration, narrator: Arc<Narrator>, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + offset + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        if !site.is_online() {
            continue;
        }
        let node = site.node.lock().await;
        match node.round().await {
            Ok(report) => {
                if let Some(line) = describe_round(&report) {
                    narrator.say(site.name(), &line);
                }
            }
            Err(e) => narrator.say(site.name(), &format!("sync failed: {e} ({})", if e.is_retryable() { "tried again next round" } else { "see the message" })),
        }
    }
}

/// Rounds of every online facility, with the parent publishing between them, until a pass
/// moves nothing (true) or [`SETTLE_PASSES_MAX`] passes went by (false).
async fn settle(parent: &Parent, sites: &[Arc<Site>]) -> anyhow::Result<bool> {
    for _ in 0..SETTLE_PASSES_MAX {
        let mut moved = parent.publish().await? > 0;
        for site in sites.iter().filter(|s| s.is_online()) {
            let node = site.node.lock().await;
            let report = node.round().await.with_context(|| format!("sync of {}", site.name()))?;
            moved |= report.moved();
            moved |= parent.publish().await? > 0;
        }
        if !moved {
            return Ok(true);
        }
    }
    Ok(false)
}

async fn count_patients(database: &Database) -> Option<i64> {
    let mut session = database.session().await.ok()?;
    let rows = session.query("SELECT COUNT(*) AS n FROM patient WHERE voided = 0", &[]).await.ok()?;
    rows.first().and_then(|r| r.i64("n"))
}

async fn count_at_the_end(summary: &mut Summary, parent: &Parent, sites: &[Arc<Site>]) {
    summary.nodes[0].patients = count_patients(&parent.app.database).await;
    for (i, site) in sites.iter().enumerate() {
        summary.nodes[i + 1].patients = count_patients(&site.database).await;
    }
    if let Ok(mut session) = parent.app.database.session().await {
        summary.conflicts_at_parent = feedsync_node::exchange::list_conflicts(&mut session, true, 100_000).await.ok().map(|c| c.len());
    }
}
