//! Scenario 2: one parent serving many children that poll every few seconds; what it costs the
//! parent process (CPU, memory) and what the children see (latency, bytes).
//!
//! Setup: the parent's clinic registers `catchment_patients` patients per child, each child's
//! catchment its own slice of them (as a facility's own patients), so every child does the same
//! work whatever their number. Simulated children are plain keep-alive HTTP clients
//! (`feedsync_bench::client::Connection`) that each run what `ChildNode::round` sends: `GET
//! hello`; every `push_every_rounds` rounds a `POST push` of one edited name of one of its
//! patients, built from the wire types as a child builds it (the version it last agreed with the
//! parent as the base); then `GET changes?after=N` until a page brings nothing, moving N. They
//! apply nothing. A few real `ChildNode`s on their own databases run alongside, to show the
//! real round under the same load. A writer commits at the parent meanwhile: metadata edits
//! (which every child receives) and edits of random patients (which only their child receives).
//!
//! The parent runs in its own process (`parent.rs`); it is restarted after setup so its memory
//! high-water mark covers only serving. Figures cover a window that starts once every child has
//! run a round.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, ensure};
use feed_subscriber::network::{ChildNode, HttpParent};
use feedsync_bench::client::{self, Connection};
use feedsync_bench::counters::{Counters, Scope};
use feedsync_bench::{cpu, database};
use feedsync_db::{Database, Value};
use feedsync_node::exchange;
use feedsync_wire::network::{Base, Changes, ITEMS_PER_MESSAGE_MAX, Item, NETWORK_PATH, PushRequest, PushResponse, PushStatus};
use feedsync_node::lookup::LookupCache;
use feedsync_wire::resource::content_hash;
use feedsync_sim::testdb::TestDatabase;
use tokio::sync::watch;

use crate::common::{self, Backend, Spread};
use crate::parent::{Memory, ParentProcess};
use crate::steps::{self, Step};

/// Change pages one simulated round asks for at most (a real round stops at 10,000).
const PAGES_PER_ROUND_MAX: usize = 100;
/// MariaDB status counters read around the window (server-wide: see the report).
const COUNTERS: [&str; 9] =
    ["Questions", "Com_select", "Com_update", "Com_insert", "Com_create_table", "Com_create_index", "Com_stmt_prepare", "Com_begin", "Handler_read_rnd_next"];
/// Mixed into the jitter of real children so it differs from the simulated ones'.
const REAL_CHILD_SALT: u64 = 0x7ea1;
/// Tables whose rows the writer edits as metadata (each has `description` and `uuid`).
const METADATA_TABLES: [&str; 3] = ["location", "encounter_type", "visit_type"];

#[derive(Debug, Clone)]
pub struct ChildrenConfig {
    pub backend: Backend,
    pub children: usize,
    pub poll_interval: Duration,
    pub jitter_percent: u32,
    pub measure: Duration,
    pub catchment_patients: usize,
    pub writes_per_second: f64,
    pub metadata_percent: u32,
    pub push_every_rounds: u64,
    pub real_children: usize,
    pub sequencer_interval_ms: u64,
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Hello,
    Changes,
    Push,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Hello, Kind::Changes, Kind::Push];
    pub fn name(self) -> &'static str {
        match self {
            Kind::Hello => "hello",
            Kind::Changes => "changes",
            Kind::Push => "push",
        }
    }
}

/// One request a simulated child sent.
#[derive(Debug, Clone, Copy)]
struct RequestSample {
    kind: Kind,
    at: Instant,
    ms: f32,
    sent_bytes: u32,
    received_bytes: u32,
    ok: bool,
    /// Items on a change page.
    items: u32,
}

/// One round of a child (simulated or real), counted in the window it ended in.
#[derive(Debug, Clone, Copy)]
struct RoundSample {
    ended: Instant,
    ms: f32,
    ok: bool,
}

#[derive(Debug, Default)]
struct Outcome {
    requests: Vec<RequestSample>,
    rounds: Vec<RoundSample>,
    pushes_applied: usize,
    last_error: Option<String>,
}

/// Per kind of request, over the window.
#[derive(Debug, Clone)]
pub struct KindFigures {
    pub kind: Kind,
    pub requests: usize,
    pub not_ok: usize,
    pub latency_ms: Spread,
    pub sent_bytes_mean: f64,
    pub received_bytes_mean: f64,
    /// Change pages: items per page.
    pub items_mean: f64,
}

pub struct ChildrenReport {
    pub config: ChildrenConfig,
    pub setup_seconds: f64,
    pub window_seconds: f64,
    pub by_kind: Vec<KindFigures>,
    pub rounds: usize,
    pub rounds_failed: usize,
    pub round_ms: Spread,
    /// Pushes the parent applied, over the whole run.
    pub pushes_applied: usize,
    pub last_error: Option<String>,
    pub real_rounds: usize,
    pub real_rounds_failed: usize,
    pub real_round_ms: Spread,
    pub real_last_error: Option<String>,
    pub writes: usize,
    pub parent_cores: Option<f64>,
    pub usage: cpu::Usage,
    pub memory_idle: Option<Memory>,
    pub memory_end: Option<Memory>,
    /// A caught-up poll's steps at the parent, replayed alone before it started.
    pub steps: Vec<Step>,
    pub counters: Option<Counters>,
    pub events_at_start: i64,
    pub load_before: String,
    pub load_after: String,
}

impl ChildrenReport {
    pub fn requests(&self) -> usize {
        self.by_kind.iter().map(|k| k.requests).sum()
    }
    pub fn requests_per_second(&self) -> f64 {
        self.requests() as f64 / self.window_seconds
    }
    pub fn kind(&self, kind: Kind) -> &KindFigures {
        self.by_kind.iter().find(|k| k.kind == kind).expect("every kind is reported")
    }
    /// Parent CPU milliseconds per request served.
    pub fn cpu_ms_per_request(&self) -> Option<f64> {
        Some(self.parent_cores? * 1000.0 / self.requests_per_second())
    }
    pub fn cores_per_child(&self) -> Option<f64> {
        Some(self.parent_cores? / self.config.children as f64)
    }
    /// Resident memory the parent grew by between idle and the window's end, per child.
    pub fn rss_kib_per_child(&self) -> Option<f64> {
        Some((self.memory_end?.rss_kib as f64 - self.memory_idle?.rss_kib as f64) / self.config.children as f64)
    }
    /// Heads and bodies both ways, per child and minute of the window.
    pub fn bytes_per_child_per_minute(&self) -> f64 {
        let total: f64 = self.by_kind.iter().map(|k| (k.sent_bytes_mean + k.received_bytes_mean) * k.requests as f64).sum();
        total / self.config.children as f64 / (self.window_seconds / 60.0)
    }
    pub fn offered_rounds_per_second(&self) -> f64 {
        self.config.children as f64 / self.config.poll_interval.as_secs_f64()
    }

    pub fn json(&self) -> serde_json::Value {
        use feedsync_bench::stats::round;
        let r = |x: Option<f64>, d| x.map(|x| round(x, d));
        let counters_per_request = self
            .counters
            .as_ref()
            .map(|c| c.0.iter().map(|(k, v)| (k.clone(), serde_json::json!(round(*v as f64 / self.requests() as f64, 2)))).collect::<serde_json::Map<_, _>>());
        serde_json::json!({
            "children": self.config.children,
            "real_children": self.config.real_children,
            "poll_interval_ms": self.config.poll_interval.as_millis() as u64,
            "jitter_percent": self.config.jitter_percent,
            "catchment_patients": self.config.catchment_patients,
            "writes_per_second": self.config.writes_per_second,
            "metadata_percent": self.config.metadata_percent,
            "push_every_rounds": self.config.push_every_rounds,
            "setup_seconds": round(self.setup_seconds, 1),
            "window_seconds": round(self.window_seconds, 1),
            "events_at_start": self.events_at_start,
            "requests_per_second": round(self.requests_per_second(), 1),
            "rounds_per_second_offered": round(self.offered_rounds_per_second(), 1),
            "rounds_per_second": round(self.rounds as f64 / self.window_seconds, 1),
            "rounds_failed": self.rounds_failed,
            "round_ms": self.round_ms.json(1),
            "by_kind": self.by_kind.iter().map(|k| (k.kind.name().to_owned(), serde_json::json!({
                "requests": k.requests,
                "not_ok": k.not_ok,
                "latency_ms": k.latency_ms.json(2),
                "request_bytes_mean": round(k.sent_bytes_mean, 0),
                "response_bytes_mean": round(k.received_bytes_mean, 0),
                "items_per_response_mean": round(k.items_mean, 2),
            }))).collect::<serde_json::Map<_, _>>(),
            "pushes_applied_whole_run": self.pushes_applied,
            "bytes_per_child_per_minute": round(self.bytes_per_child_per_minute(), 0),
            "last_error": self.last_error,
            "real_children_rounds": self.real_rounds,
            "real_children_rounds_failed": self.real_rounds_failed,
            "real_children_round_ms": self.real_round_ms.json(1),
            "real_children_last_error": self.real_last_error,
            "writer_commits": self.writes,
            "parent_process_cores": r(self.parent_cores, 3),
            "parent_cpu_ms_per_request": r(self.cpu_ms_per_request(), 3),
            "parent_cores_per_child": r(self.cores_per_child(), 6),
            "cpu": self.usage.json(),
            "parent_memory_idle": self.memory_idle.map(|m| m.json()),
            "parent_memory_end": self.memory_end.map(|m| m.json()),
            "parent_rss_kib_per_child": r(self.rss_kib_per_child(), 1),
            "poll_steps_replayed": self.steps.iter().map(Step::json).collect::<Vec<_>>(),
            "mariadb_server_wide_counters_per_request": counters_per_request,
            "load_average_before": self.load_before,
            "load_average_after": self.load_after,
        })
    }
}

/// A simulated child: its token, position, and the one name it edits.
struct SimChild {
    index: usize,
    token: String,
    after: i64,
    own_seq: i64,
    /// The name's item as the parent last sent or accepted it: the base of the next push.
    agreed: Item,
}

/// What every simulated child shares.
struct Shared {
    addr: SocketAddr,
    config: ChildrenConfig,
}

pub async fn run(config: &ChildrenConfig) -> anyhow::Result<ChildrenReport> {
    let started = Instant::now();
    let patients = (config.children + config.real_children) * config.catchment_patients;
    eprintln!("  parent: registering {patients} patients...");
    let site = common::parent_site(config.backend, patients, config.seed).await?;
    let mut reals: Vec<TestDatabase> = Vec::new();
    let result = async {
        let mut session = site.test.database.session().await?;
        let pool = common::patients_with_names(&mut session).await?;
        ensure!(pool.len() >= patients, "the parent holds {} patients, {patients} needed", pool.len());
        let pool = &pool[pool.len() - patients..];
        eprintln!("  registering {} simulated and {} real children...", config.children, config.real_children);
        let events_at_start = common::last_event(&mut session).await?;
        let mut sims = Vec::with_capacity(config.children);
        let mut cache = LookupCache::default();
        for index in 0..config.children {
            let name = format!("sim-{index:05}");
            let token = feedsync_node::parent::add_child(&mut session, &name, &feedsync_sim::network::trusted_categories(), false).await?;
            let slice = &pool[index * config.catchment_patients..(index + 1) * config.catchment_patients];
            for (patient, _) in slice {
                session
                    .execute(
                        &format!("INSERT INTO {} (child, patient_uuid, reason) VALUES (?, ?, 'fetched')", exchange::CATCHMENT_TABLE),
                        &[name.as_str().into(), patient.as_str().into()],
                    )
                    .await?;
            }
            let agreed = exchange::local_item(&mut session, &site.model, 0, "person_name", &slice[0].1, &mut cache).await?;
            ensure!(agreed.resource.is_some(), "name {} of patient {} not found at the parent", slice[0].1, slice[0].0);
            sims.push(SimChild { index, token, after: events_at_start, own_seq: 0, agreed });
        }
        let mut real_tokens = Vec::new();
        for r in 0..config.real_children {
            real_tokens.push(feedsync_node::parent::add_child(&mut session, &format!("real-{r:02}"), &feedsync_sim::network::trusted_categories(), false).await?);
        }
        let metadata = metadata_rows(&mut session).await?;
        drop(session);
        eprintln!("  replaying a caught-up poll's steps at the parent...");
        let steps = steps::replay(&site.test.database, &site.model, config.backend, "sim-00000").await?;

        // Real children catch up from nothing and fetch their patients through a first parent
        // process; the measured one starts fresh after.
        let mut real_nodes = Vec::new();
        if config.real_children > 0 {
            eprintln!("  real children catching up with the parent...");
            let setup_parent = ParentProcess::spawn(&site.test.url, config.sequencer_interval_ms).await?;
            for (r, token) in real_tokens.iter().enumerate() {
                reals.push(common::fresh(config.backend).await?);
                let node = common::real_child(&reals[r], &setup_parent.url(), token).await.with_context(|| format!("real child {r}"))?;
                let slice = &pool[(config.children + r) * config.catchment_patients..(config.children + r + 1) * config.catchment_patients];
                for (patient, _) in slice {
                    node.fetch_patient(patient, "benchmark").await?;
                }
                node.sync_until_idle(10).await?;
                real_nodes.push((node, slice[0].1.clone()));
            }
            setup_parent.stop().await?;
        }

        let parent = ParentProcess::spawn(&site.test.url, config.sequencer_interval_ms).await?;
        // Re-point the real children at the measured parent, keeping their databases.
        let real_nodes: Vec<(Arc<ChildNode<HttpParent>>, String)> = real_nodes
            .into_iter()
            .enumerate()
            .map(|(r, (node, name))| (Arc::new(ChildNode::new(node.database, node.model, HttpParent::new(&parent.url(), &real_tokens[r]))), name))
            .collect();
        let memory_idle = parent.memory();
        let setup_seconds = started.elapsed().as_secs_f64();
        eprintln!("  {} children polling every {} ms ± {}%...", config.children, config.poll_interval.as_millis(), config.jitter_percent);
        let (stop, stopped) = watch::channel(false);
        let shared = Arc::new(Shared { addr: parent.addr, config: config.clone() });
        let sim_tasks: Vec<_> = sims.into_iter().map(|sim| tokio::spawn(simulated_child(sim, shared.clone(), stopped.clone()))).collect();
        let real_tasks: Vec<_> =
            real_nodes.into_iter().enumerate().map(|(r, (node, name))| tokio::spawn(real_child_loop(node, name, r, config.clone(), stopped.clone()))).collect();
        let writer = tokio::spawn(write_loop(
            site.test.database.clone(),
            pool.iter().map(|(_, name)| name.clone()).collect(),
            metadata,
            config.clone(),
            stopped.clone(),
        ));

        // Every child has run a round once the longest first wait has passed.
        let warm_up = config.poll_interval.mul_f64(1.0 + f64::from(config.jitter_percent) / 100.0) + Duration::from_secs(1);
        tokio::time::sleep(warm_up).await;
        let mut counter_session = match config.backend {
            Backend::MariaDb => Some(site.test.database.session().await?),
            Backend::Sqlite => None,
        };
        let counters_before = match &mut counter_session {
            Some(s) => Some(Counters::read(s, Scope::Global, &COUNTERS).await?),
            None => None,
        };
        let load_before = common::load_average();
        let meter = cpu::Meter::start();
        let parent_cpu_before = parent.cpu_seconds();
        let window_start = Instant::now();
        tokio::time::sleep(config.measure).await;
        let window_end = Instant::now();
        let window_seconds = (window_end - window_start).as_secs_f64();
        let parent_cores = match (parent_cpu_before, parent.cpu_seconds()) {
            (Some(before), Some(after)) => Some((after - before) / window_seconds),
            _ => None,
        };
        let usage = meter.stop();
        let memory_end = parent.memory();
        let load_after = common::load_average();
        let counters = match &mut counter_session {
            Some(s) => Some(Counters::read(s, Scope::Global, &COUNTERS).await?.minus(counters_before.as_ref().expect("read before"))),
            None => None,
        };
        drop(counter_session);
        let _ = stop.send(true);

        let in_window = |at: Instant| at >= window_start && at < window_end;
        let mut requests: Vec<RequestSample> = Vec::new();
        let mut rounds: Vec<RoundSample> = Vec::new();
        let (mut pushes_applied, mut last_error) = (0, None);
        for task in sim_tasks {
            let outcome = task.await.context("a simulated child panicked")?;
            requests.extend(outcome.requests.into_iter().filter(|r| in_window(r.at)));
            rounds.extend(outcome.rounds.into_iter().filter(|r| in_window(r.ended)));
            pushes_applied += outcome.pushes_applied;
            last_error = outcome.last_error.or(last_error);
        }
        let mut real_rounds: Vec<RoundSample> = Vec::new();
        let mut real_last_error = None;
        for task in real_tasks {
            let outcome = task.await.context("a real child panicked")?;
            real_rounds.extend(outcome.rounds.into_iter().filter(|r| in_window(r.ended)));
            real_last_error = outcome.last_error.or(real_last_error);
        }
        let writes = writer.await.context("the writer panicked")??;
        parent.stop().await?;

        let by_kind = Kind::ALL.iter().map(|&kind| kind_figures(kind, &requests)).collect();
        let ok_ms = |rounds: &[RoundSample]| common::spread(&rounds.iter().filter(|r| r.ok).map(|r| f64::from(r.ms)).collect::<Vec<_>>());
        Ok(ChildrenReport {
            config: config.clone(),
            setup_seconds,
            window_seconds,
            by_kind,
            rounds: rounds.iter().filter(|r| r.ok).count(),
            rounds_failed: rounds.iter().filter(|r| !r.ok).count(),
            round_ms: ok_ms(&rounds),
            pushes_applied,
            last_error,
            real_rounds: real_rounds.iter().filter(|r| r.ok).count(),
            real_rounds_failed: real_rounds.iter().filter(|r| !r.ok).count(),
            real_round_ms: ok_ms(&real_rounds),
            real_last_error,
            writes,
            parent_cores,
            usage,
            memory_idle,
            memory_end,
            steps,
            counters,
            events_at_start,
            load_before,
            load_after,
        })
    }
    .await;
    for test in reals {
        database::discard(test).await;
    }
    database::discard(site.test).await;
    result
}

fn kind_figures(kind: Kind, requests: &[RequestSample]) -> KindFigures {
    let of_kind: Vec<&RequestSample> = requests.iter().filter(|r| r.kind == kind).collect();
    let n = of_kind.len().max(1) as f64;
    KindFigures {
        kind,
        requests: of_kind.len(),
        not_ok: of_kind.iter().filter(|r| !r.ok).count(),
        latency_ms: common::spread(&of_kind.iter().map(|r| f64::from(r.ms)).collect::<Vec<_>>()),
        sent_bytes_mean: of_kind.iter().map(|r| f64::from(r.sent_bytes)).sum::<f64>() / n,
        received_bytes_mean: of_kind.iter().map(|r| f64::from(r.received_bytes)).sum::<f64>() / n,
        items_mean: of_kind.iter().map(|r| f64::from(r.items)).sum::<f64>() / n,
    }
}

/// `(table, uuid)` of the metadata rows the writer edits.
async fn metadata_rows(session: &mut feedsync_db::Session) -> anyhow::Result<Vec<(&'static str, String)>> {
    let mut rows = Vec::new();
    for table in METADATA_TABLES {
        for r in session.query(&format!("SELECT uuid FROM {table} ORDER BY 1"), &[]).await? {
            rows.extend(r.text("uuid").map(|uuid| (table, uuid)));
        }
    }
    ensure!(!rows.is_empty(), "the parent has no {} rows to edit", METADATA_TABLES.join(", "));
    Ok(rows)
}

/// A simulated child's rounds until stopped; the first after a seeded wait within one interval.
async fn simulated_child(mut sim: SimChild, shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) -> Outcome {
    let config = &shared.config;
    let mut outcome = Outcome::default();
    let mut connection: Option<Connection> = None;
    let mut wait = config.poll_interval.mul_f64(common::unit(config.seed, &[sim.index as u64, u64::MAX]));
    for round in 0.. {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stopped.changed() => break,
        }
        let started = Instant::now();
        let result = sim.round(round, &shared, &mut connection, &mut outcome).await;
        if let Err(e) = &result {
            outcome.last_error = Some(format!("{}: {e:#}", sim.index));
            // A broken connection is replaced on the next round, as a real client's pool does.
            connection = None;
        }
        outcome.rounds.push(RoundSample { ended: Instant::now(), ms: started.elapsed().as_secs_f32() * 1000.0, ok: result.is_ok() });
        wait = common::jittered(config.poll_interval, config.jitter_percent, config.seed, &[sim.index as u64, round]);
    }
    outcome
}

impl SimChild {
    /// What `ChildNode::round` sends: hello, a push when it has a change, change pages.
    async fn round(&mut self, round: u64, shared: &Shared, connection: &mut Option<Connection>, outcome: &mut Outcome) -> anyhow::Result<()> {
        let path = |rest: &str| format!("{NETWORK_PATH}{rest}");
        self.send(shared, connection, outcome, Kind::Hello, client::request("GET", &path("/hello"), shared.addr, true, None)).await?;
        if (round + self.index as u64).is_multiple_of(shared.config.push_every_rounds) {
            let push = self.next_push();
            let body = serde_json::to_vec(&push)?;
            let response = self.send(shared, connection, outcome, Kind::Push, client::request("POST", &path("/push"), shared.addr, true, Some(&body))).await?;
            let reply: PushResponse = serde_json::from_slice(&response.decoded_body()?).context("push reply")?;
            if let Some(result) = reply.results.first().filter(|r| r.status == PushStatus::Applied) {
                self.agreed.resource = result.result.clone();
                outcome.pushes_applied += 1;
            }
        }
        for _ in 0..PAGES_PER_ROUND_MAX {
            let target = path(&format!("/changes?after={}&limit={ITEMS_PER_MESSAGE_MAX}", self.after));
            let response = self.send(shared, connection, outcome, Kind::Changes, client::request("GET", &target, shared.addr, true, None)).await?;
            let page: Changes = serde_json::from_slice(&response.decoded_body()?).context("changes page")?;
            if page.through <= self.after {
                break;
            }
            self.after = page.through;
            if let Some(sample) = outcome.requests.last_mut() {
                sample.items = page.items.len() as u32;
            }
            // The parent's newer version of the name becomes the base, as applying it would.
            if let Some(item) = page.items.iter().rev().find(|i| i.table == self.agreed.table && i.key == self.agreed.key) {
                self.agreed.resource = item.resource.clone();
            }
            if !page.more && page.items.is_empty() {
                break;
            }
        }
        Ok(())
    }

    /// One edited name, with the version last agreed with the parent as its base.
    fn next_push(&mut self) -> PushRequest {
        self.own_seq += 1;
        let base = Base { columns: self.agreed.resource.as_ref().map(|r| r.columns.clone()) };
        let resource = self.agreed.resource.clone().map(|mut r| {
            r.columns.insert("middle_name".into(), serde_json::json!(format!("s{}-{}", self.index, self.own_seq)));
            r.hash = content_hash(&r.columns);
            r
        });
        let item = Item { seq: self.own_seq, resource, base: Some(base), ..self.agreed.clone() };
        PushRequest { through_seq: self.own_seq, items: vec![item] }
    }

    /// Sends one request with the child's token on its keep-alive connection, and records it.
    async fn send(
        &self,
        shared: &Shared,
        connection: &mut Option<Connection>,
        outcome: &mut Outcome,
        kind: Kind,
        request: Vec<u8>,
    ) -> anyhow::Result<client::Response> {
        let request = with_bearer(request, &self.token);
        if connection.is_none() {
            *connection = Some(Connection::connect(shared.addr).await?);
        }
        let started = Instant::now();
        let response = connection.as_mut().expect("connected").send(&request).await?;
        outcome.requests.push(RequestSample {
            kind,
            at: started,
            ms: started.elapsed().as_secs_f32() * 1000.0,
            sent_bytes: request.len() as u32,
            received_bytes: (response.head_bytes + response.body.len()) as u32,
            ok: response.status == 200,
            items: 0,
        });
        ensure!(
            response.status == 200,
            "{} answered {}: {}",
            kind.name(),
            response.status,
            String::from_utf8_lossy(&response.decoded_body().unwrap_or_default())
        );
        Ok(response)
    }
}

/// The request with `Authorization: Bearer <token>` after its request line.
fn with_bearer(mut request: Vec<u8>, token: &str) -> Vec<u8> {
    let line_end = request.windows(2).position(|w| w == b"\r\n").map_or(request.len(), |i| i + 2);
    request.splice(line_end..line_end, format!("Authorization: Bearer {token}\r\n").into_bytes());
    request
}

/// A real child's rounds until stopped (`feed-subscriber run --parent`'s loop), editing its
/// patient's name before every `push_every_rounds`-th round so it has something to push.
async fn real_child_loop(node: Arc<ChildNode<HttpParent>>, name: String, r: usize, config: ChildrenConfig, mut stopped: watch::Receiver<bool>) -> Outcome {
    let mut outcome = Outcome::default();
    let mut wait = config.poll_interval.mul_f64(common::unit(config.seed, &[r as u64, REAL_CHILD_SALT]));
    for round in 0.. {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stopped.changed() => break,
        }
        let started = Instant::now();
        let result = async {
            if (round + r as u64).is_multiple_of(config.push_every_rounds) {
                let mut session = node.database.session().await?;
                session.execute("UPDATE person_name SET middle_name = ? WHERE uuid = ?", &[format!("r{r}-{round}").into(), name.as_str().into()]).await?;
            }
            node.round().await.map_err(|e| anyhow!(e))
        }
        .await;
        if let Err(e) = &result {
            outcome.last_error = Some(format!("real-{r:02}: {e:#}"));
        }
        outcome.rounds.push(RoundSample { ended: Instant::now(), ms: started.elapsed().as_secs_f32() * 1000.0, ok: result.is_ok() });
        wait = common::jittered(config.poll_interval, config.jitter_percent, config.seed, &[r as u64, round, REAL_CHILD_SALT]);
    }
    outcome
}

/// Commits at the parent, as OpenMRS users there would, `writes_per_second` until stopped:
/// `metadata_percent` of them edit a metadata row (every child receives it), the rest a random
/// patient's name (only that patient's child receives it). Returns the commits made.
async fn write_loop(
    database: Database,
    names: Vec<String>,
    metadata: Vec<(&'static str, String)>,
    config: ChildrenConfig,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<usize> {
    if config.writes_per_second <= 0.0 {
        return Ok(0);
    }
    let mut session = database.session().await?;
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / config.writes_per_second));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut writes = 0;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stopped.changed() => return Ok(writes),
        }
        let i = writes as u64;
        let pick = |n: usize, salt: u64| (common::unit(config.seed, &[i, salt]) * n as f64) as usize % n;
        let value: Value = format!("w{i}").into();
        if common::unit(config.seed, &[i, 1]) * 100.0 < f64::from(config.metadata_percent) {
            let (table, uuid) = &metadata[pick(metadata.len(), 2)];
            session.execute(&format!("UPDATE {table} SET description = ? WHERE uuid = ?"), &[value, uuid.as_str().into()]).await?;
        } else {
            let name = &names[pick(names.len(), 3)];
            session.execute("UPDATE person_name SET degree = ? WHERE uuid = ?", &[value, name.as_str().into()]).await?;
        }
        writes += 1;
    }
}

/// The summary table's rows for one or more runs, side by side.
pub fn print_table(reports: &[ChildrenReport]) {
    use feedsync_bench::stats::number;
    let show = |x: Option<f64>| x.map_or("n/a".to_owned(), number);
    let row = |label: &str, cells: Vec<String>| println!("   {label:<56} {}", cells.iter().map(|c| format!("{c:>24}")).collect::<String>());
    row("simulated children", reports.iter().map(|r| r.config.children.to_string()).collect());
    row(
        "window, s (load average before; after)",
        reports.iter().map(|r| format!("{:.0} ({}; {})", r.window_seconds, short_load(&r.load_before), short_load(&r.load_after))).collect(),
    );
    row(
        "rounds/s offered; done (failed)",
        reports
            .iter()
            .map(|r| format!("{}; {} ({})", number(r.offered_rounds_per_second()), number(r.rounds as f64 / r.window_seconds), r.rounds_failed))
            .collect(),
    );
    row("requests/s served (simulated children)", reports.iter().map(|r| number(r.requests_per_second())).collect());
    for kind in Kind::ALL {
        row(
            &format!("  {} requests/s; not 200", kind.name()),
            reports.iter().map(|r| format!("{}; {}", number(r.kind(kind).requests as f64 / r.window_seconds), r.kind(kind).not_ok)).collect(),
        );
    }
    row("parent process, CPU cores busy", reports.iter().map(|r| show(r.parent_cores)).collect());
    row("  CPU ms per request served", reports.iter().map(|r| show(r.cpu_ms_per_request())).collect());
    row("  CPU millicores per child", reports.iter().map(|r| show(r.cores_per_child().map(|c| c * 1000.0))).collect());
    row(
        "bench process (children, writer); mariadbd, cores",
        reports.iter().map(|r| format!("{}; {}", show(r.usage.bench_cores), show(r.usage.database_cores))).collect(),
    );
    row(
        "parent VmRSS idle -> end of window, MiB",
        reports.iter().map(|r| format!("{} -> {}", show(r.memory_idle.map(mib)), show(r.memory_end.map(mib)))).collect(),
    );
    row(
        "parent VmHWM, MiB; RSS growth per child, KiB",
        reports.iter().map(|r| format!("{}; {}", show(r.memory_end.map(|m| m.hwm_kib as f64 / 1024.0)), show(r.rss_kib_per_child()))).collect(),
    );
    row(
        "parent threads idle -> end of window",
        reports.iter().map(|r| format!("{} -> {}", r.memory_idle.map_or(0, |m| m.threads), r.memory_end.map_or(0, |m| m.threads))).collect(),
    );
    for kind in Kind::ALL {
        row(&format!("{} latency p50 / p99 / max, ms", kind.name()), reports.iter().map(|r| latency(&r.kind(kind).latency_ms)).collect());
    }
    row("simulated round latency p50 / p99 / max, ms", reports.iter().map(|r| latency(&r.round_ms)).collect());
    row(
        "bytes per changes poll: request, response",
        reports.iter().map(|r| format!("{:.0}, {:.0}", r.kind(Kind::Changes).sent_bytes_mean, r.kind(Kind::Changes).received_bytes_mean)).collect(),
    );
    row("bytes per child per minute, both ways", reports.iter().map(|r| number(r.bytes_per_child_per_minute())).collect());
    row(
        "changes polls per hello (per round); items per changes poll",
        reports
            .iter()
            .map(|r| {
                let changes = r.kind(Kind::Changes);
                format!("{}; {}", number(changes.requests as f64 / r.kind(Kind::Hello).requests.max(1) as f64), number(changes.items_mean))
            })
            .collect(),
    );
    row(
        "real children: rounds (failed), p50 / p99 ms",
        reports.iter().map(|r| format!("{} ({}), {}", r.real_rounds, r.real_rounds_failed, latency_short(&r.real_round_ms))).collect(),
    );
    row("writer commits at the parent (whole run)", reports.iter().map(|r| r.writes.to_string()).collect());
    if reports.iter().any(|r| r.counters.is_some()) {
        for name in COUNTERS {
            row(
                &format!("  {name} per request (server-wide)"),
                reports
                    .iter()
                    .map(|r| r.counters.as_ref().and_then(|c| c.0.get(name)).map_or("n/a".into(), |v| number(*v as f64 / r.requests() as f64)))
                    .collect(),
            );
        }
    }
    for r in reports {
        println!("   a caught-up poll's steps at the parent, replayed alone before the run ({} children registered):", r.config.children);
        for step in &r.steps {
            println!("     {:<44} {}", step.name, step.describe());
        }
    }
    for r in reports {
        if let Some(e) = &r.last_error {
            println!("   last error of a simulated child ({} children): {e}", r.config.children);
        }
        if let Some(e) = &r.real_last_error {
            println!("   last error of a real child ({} children): {e}", r.config.children);
        }
    }
}

fn mib(m: Memory) -> f64 {
    m.rss_kib as f64 / 1024.0
}

fn short_load(load: &str) -> &str {
    load.split_whitespace().next().unwrap_or("n/a")
}

fn latency(s: &Spread) -> String {
    use feedsync_bench::stats::number;
    format!("{} / {} / {}", number(s.p50), number(s.p99), number(s.max))
}

fn latency_short(s: &Spread) -> String {
    use feedsync_bench::stats::number;
    format!("{} / {}", number(s.p50), number(s.p99))
}

/// Ratios of a larger run to a smaller one: how the parent's cost grows per child.
pub fn scaling(small: &ChildrenReport, large: &ChildrenReport) -> BTreeMap<&'static str, Option<f64>> {
    let ratio = |a: Option<f64>, b: Option<f64>| Some(b? / a?);
    BTreeMap::from([
        ("children", Some(large.config.children as f64 / small.config.children as f64)),
        ("requests_per_second", Some(large.requests_per_second() / small.requests_per_second())),
        ("parent_cores", ratio(small.parent_cores, large.parent_cores)),
        ("parent_cores_per_child", ratio(small.cores_per_child(), large.cores_per_child())),
        ("parent_cpu_ms_per_request", ratio(small.cpu_ms_per_request(), large.cpu_ms_per_request())),
        ("parent_rss", ratio(small.memory_end.map(mib), large.memory_end.map(mib))),
        ("changes_latency_p50", Some(large.kind(Kind::Changes).latency_ms.p50 / small.kind(Kind::Changes).latency_ms.p50)),
        ("changes_latency_p99", Some(large.kind(Kind::Changes).latency_ms.p99 / small.kind(Kind::Changes).latency_ms.p99)),
    ])
}
