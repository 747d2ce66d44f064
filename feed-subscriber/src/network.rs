//! A child's side of the network: `run --parent URL --token TOKEN`. Children have no fixed
//! address, so the child starts everything. A round:
//!
//! 1. sequences its own journal (the publisher's sequencer, in this database), so its local
//!    changes have gap-free event numbers;
//! 2. pushes its own changes (and those of its own children, when it is a district) after the
//!    last event the parent acknowledged, each with the version last exchanged (the base), and
//!    applies the parent's merged version of each from the reply;
//! 3. pulls the parent's changes for it after its marker and merges each into the local row;
//! 4. retries what it holds because references had not arrived.
//!
//! Every step commits its data, bases and marker in one transaction, so a crash anywhere
//! repeats at most the last message, which is harmless: pushes carry event numbers the parent
//! acknowledges, and applying a version twice changes nothing. Merging is
//! [`exchange::receive`], the same code the parent runs.

use std::collections::BTreeMap;

use feedsync_node::capture;
use feedsync_db::{Database, DbError, Session, Value};
use feedsync_node::exchange::{self, Attempt, ORIGIN_PARENT, PEER_PARENT, Receiver};
use feedsync_wire::network::{Base, Changes, ChildReport, Command, CommandAction, CommandResult, Hello, ITEMS_PER_MESSAGE_MAX, Item, NETWORK_PATH, PushRequest, PushResponse, PushStatus, Record, RoundSummary};
use feedsync_core::merge::Side;
use feedsync_core::model::Model;
use feedsync_node::lookup::LookupCache;
use feedsync_node::search::{Candidate, PatientsFound};

use crate::client::{ClientError, HttpClient};

/// State names in `feedsync_state`: the last own event the parent acknowledged, and the last
/// parent event applied here.
pub const PUSH_THROUGH: &str = "network.push_through";
pub const PULL_AFTER: &str = "network.pull_after";
/// Messages per direction in one round at most (a round ends earlier when caught up).
const MESSAGES_PER_ROUND_MAX: usize = 10_000;

/// Why talking to the parent failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct LinkError {
    pub message: String,
    /// Trying again later may help (the parent or the link is down).
    pub retryable: bool,
    /// The parent refused the token.
    pub unauthorized: bool,
}

impl From<ClientError> for LinkError {
    fn from(e: ClientError) -> Self {
        let unauthorized = e.status() == Some(401);
        let message = if unauthorized {
            format!("{e}. The parent does not accept this token: check --token, or ask the parent's operator (`feed-publisher child list`)")
        } else {
            e.to_string()
        };
        LinkError { retryable: e.is_retryable(), unauthorized, message }
    }
}

/// How a child reaches its parent: HTTP in production; tests put a faulty link in between.
#[allow(async_fn_in_trait)]
pub trait ParentLink {
    async fn hello(&self) -> Result<Hello, LinkError>;
    async fn changes(&self, after: i64, limit: usize) -> Result<Changes, LinkError>;
    async fn push(&self, push: &PushRequest) -> Result<PushResponse, LinkError>;
    async fn find_patients(&self, query: &str, limit: usize) -> Result<Vec<Candidate>, LinkError>;
    /// `reason` is kept in the parent's audit log (and required there).
    async fn fetch_patient(&self, uuid: &str, reason: &str) -> Result<Record, LinkError>;
    /// Tells the parent how this child is doing (best effort; a link without it ignores it).
    async fn report(&self, _report: &ChildReport) -> Result<(), LinkError> {
        Ok(())
    }
}

/// The parent over HTTP: `URL` is the parent publisher's base (with its path prefix, if any).
pub struct HttpParent {
    pub client: HttpClient,
    pub base: String,
}

impl HttpParent {
    pub fn new(parent_url: &str, token: &str) -> HttpParent {
        let limits = crate::client::ClientLimits { response_bytes_max: 256 << 20, ..Default::default() };
        HttpParent { client: crate::client::subscriber_client(limits).with_bearer(token), base: parent_url.trim_end_matches('/').to_owned() }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{NETWORK_PATH}{path}", self.base)
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, url: &str, body: &[u8]) -> Result<T, LinkError> {
        serde_json::from_slice(body).map_err(|e| LinkError {
            message: format!("{url} answered something that is not a feedsync network reply: {e}. Is --parent a feed-publisher's address?"),
            retryable: false,
            unauthorized: false,
        })
    }
}

impl ParentLink for HttpParent {
    async fn hello(&self) -> Result<Hello, LinkError> {
        let url = self.url("/hello");
        let response = self.client.get(&url).await?;
        self.decode(&url, &response.body)
    }

    async fn changes(&self, after: i64, limit: usize) -> Result<Changes, LinkError> {
        let url = self.url(&format!("/changes?after={after}&limit={limit}"));
        let response = self.client.get(&url).await?;
        self.decode(&url, &response.body)
    }

    async fn push(&self, push: &PushRequest) -> Result<PushResponse, LinkError> {
        let url = self.url("/push");
        // A lost answer is safe to ask again: the parent skips what it acknowledged.
        let response = match self.client.post_json_gzip(&url, push).await {
            Err(e) if e.is_retryable() => self.client.post_json_gzip(&url, push).await?,
            other => other?,
        };
        self.decode(&url, &response.body)
    }

    async fn find_patients(&self, query: &str, limit: usize) -> Result<Vec<Candidate>, LinkError> {
        let q: String = url::form_urlencoded::byte_serialize(query.as_bytes()).collect();
        let url = self.url(&format!("/patients?q={q}&limit={limit}"));
        let response = self.client.get(&url).await?;
        Ok(self.decode::<PatientsFound>(&url, &response.body)?.candidates)
    }

    async fn fetch_patient(&self, uuid: &str, reason: &str) -> Result<Record, LinkError> {
        let url = self.url(&format!("/patients/{uuid}/fetch"));
        let response = self.client.post_json(&url, &serde_json::json!({ "reason": reason })).await?;
        self.decode(&url, &response.body)
    }

    async fn report(&self, report: &ChildReport) -> Result<(), LinkError> {
        self.client.post_json_gzip(&self.url("/report"), report).await?;
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("parent: {0}")]
    Link(#[from] LinkError),
    #[error("this database: {0}")]
    Database(#[from] DbError),
    #[error("applying: {0}")]
    Apply(#[from] feedsync_node::apply::ApplyError),
    #[error("operator command: {0}")]
    Command(String),
}

impl ChildError {
    pub fn is_retryable(&self) -> bool {
        match self {
            ChildError::Link(e) => e.retryable,
            // A deadlock or lock wait timeout (MySQL 1213, 1205) undid the statement or the
            // transaction: nothing was half applied, so the round is simply run again.
            ChildError::Database(e) => e.is_retryable() || is_lock_conflict(e),
            ChildError::Apply(e) => e.is_retryable(),
            ChildError::Command(_) => false,
        }
    }
}

fn is_lock_conflict(e: &DbError) -> bool {
    matches!(e, DbError::Statement { message, .. } if feedsync_node::apply::classify_refusal(message) == feedsync_node::apply::Refusal::LockConflict)
}

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct RoundReport {
    /// Own events sequenced this round.
    pub sequenced: usize,
    /// Entities pushed, and how many of them the parent holds until they can apply.
    pub pushed: usize,
    pub held_at_parent: usize,
    /// Own changes not pushed because the registration does not allow their category.
    pub not_allowed: usize,
    /// Entities received from the parent, applied, and held here until they can apply.
    pub pulled: usize,
    pub held_here: usize,
    pub unheld: usize,
    /// Conflict records written here this round.
    pub conflicts: usize,
}

impl RoundReport {
    /// Whether the round moved anything (a `--once` run stops after a round that did not).
    pub fn moved(&self) -> bool {
        self.sequenced + self.pushed + self.pulled + self.unheld > 0
    }
}

pub struct ChildNode<L: ParentLink> {
    pub database: Database,
    pub model: Model,
    pub parent: L,
    pub sequencer_config: feedsync_node::config::Config,
}

impl<L: ParentLink> ChildNode<L> {
    pub fn new(database: Database, model: Model, parent: L) -> ChildNode<L> {
        ChildNode { database, model, parent, sequencer_config: feedsync_node::config::Config::default() }
    }

    /// Prepares this database (capture tables and triggers; the first time, a snapshot of
    /// existing rows, which the first push offers to the parent).
    pub async fn prepare(&self) -> Result<(), ChildError> {
        let mut session = self.database.session().await?;
        capture::install(&mut session, &self.model).await?;
        Ok(())
    }

    /// One round: sequence, push everything pending, pull everything pending, retry held.
    pub async fn round(&self) -> Result<RoundReport, ChildError> {
        let started = std::time::Instant::now();
        let hello = self.parent.hello().await?;
        let done_commands = self.carry_out(&hello.commands).await;
        let outcome = self.exchange(&hello).await;
        // Best effort: a report that does not arrive is sent again after the next round.
        let summary = RoundSummary {
            pushed: outcome.as_ref().map_or(0, |r| r.pushed as i64),
            pulled: outcome.as_ref().map_or(0, |r| r.pulled as i64),
            held_at_parent: outcome.as_ref().map_or(0, |r| r.held_at_parent as i64),
            conflicts: outcome.as_ref().map_or(0, |r| r.conflicts as i64),
            duration_ms: started.elapsed().as_millis() as i64,
            error: outcome.as_ref().err().map(|e| e.to_string()),
        };
        match self.status_report(summary, done_commands).await {
            Ok(report) => {
                if let Err(e) = self.parent.report(&report).await {
                    tracing::warn!(error = %e, "could not send this child's status to the parent; it goes with the next round");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not gather this child's status"),
        }
        outcome
    }

    /// Carries out operator commands from the parent; each is idempotent (a command repeated
    /// because its result was not reported yet finds its work already done).
    async fn carry_out(&self, commands: &[Command]) -> Vec<CommandResult> {
        let mut results = Vec::new();
        for command in commands {
            let outcome = async {
                let mut session = self.database.session().await?;
                match &command.action {
                    CommandAction::RetryHeld { held_id } => {
                        let due = exchange::held_items(&mut session, Some(PEER_PARENT), 100_000).await?.iter().any(|h| h.id == *held_id);
                        Ok::<String, ChildError>(if due { format!("held #{held_id} is retried in this round") } else { format!("held #{held_id} is no longer held") })
                    }
                    CommandAction::SkipHeld { held_id, reason } => {
                        let n = session
                            .execute(&format!("DELETE FROM {} WHERE inbox_id = ? AND peer = ?", exchange::INBOX_TABLE), &[Value::Int(*held_id), PEER_PARENT.into()])
                            .await?;
                        if n > 0 {
                            exchange::audit(&mut session, "parent operator", "skip-held", None, &format!("held #{held_id}: {reason}")).await?;
                        }
                        Ok(if n > 0 { format!("held #{held_id} skipped: {reason}") } else { format!("held #{held_id} was no longer held") })
                    }
                    CommandAction::ResolveConflict { conflict_id, take, fields } => {
                        let take = exchange::Take::parse(take, fields).map_err(|e| ChildError::Command(e))?;
                        match exchange::resolve_conflict(&mut session, &self.model, *conflict_id, &take).await {
                            Ok(_) => Ok(format!("conflict #{conflict_id} resolved ({})", command_take(&take))),
                            Err(exchange::ResolveError::AlreadyResolved(..)) => Ok(format!("conflict #{conflict_id} was already resolved")),
                            Err(e) => Err(ChildError::Command(e.to_string())),
                        }
                    }
                }
            }
            .await;
            let (ok, message) = match outcome {
                Ok(message) => (true, message),
                Err(e) => (false, e.to_string()),
            };
            tracing::info!(command = command.id, ok, %message, "operator command from the parent");
            results.push(CommandResult { id: command.id, ok, message });
        }
        results
    }

    /// This child's status for the parent.
    pub async fn status_report(&self, round: RoundSummary, done_commands: Vec<CommandResult>) -> Result<ChildReport, ChildError> {
        const LISTED_MAX: usize = 100;
        let mut session = self.database.session().await?;
        let pending_push = pending_push(&mut session).await?;
        let held = exchange::held_items(&mut session, Some(PEER_PARENT), 100_000).await?;
        let conflicts = exchange::list_conflicts(&mut session, false, 100_000).await?;
        Ok(ChildReport {
            pending_push,
            pull_after: state_i64(&mut session, PULL_AFTER).await?,
            held_total: held.len() as i64,
            held: held.into_iter().take(LISTED_MAX).collect(),
            open_conflicts: conflicts.len() as i64,
            conflicts: conflicts.into_iter().take(LISTED_MAX).collect(),
            round,
            done_commands,
        })
    }

    /// The round's data work: sequence, push everything pending, pull everything pending,
    /// retry held.
    async fn exchange(&self, hello: &Hello) -> Result<RoundReport, ChildError> {
        let hello = hello.clone();
        let mut session = self.database.session().await?;
        let mut report = RoundReport {
            sequenced: feedsync_node::sequencer::drain(&mut session, &self.model, &self.sequencer_config, MESSAGES_PER_ROUND_MAX).await?,
            ..RoundReport::default()
        };
        // On a terminal, a line says how far the round is (positions are read only for it).
        let progress = feedsync_node::progress::Progress::new("push to parent", "own events", None);
        let push_from = if progress.is_visible() { state_i64(&mut session, PUSH_THROUGH).await? } else { 0 };
        if progress.is_visible() {
            let last = session.query(&format!("SELECT COALESCE(MAX(event_seq), 0) AS n FROM {}", capture::EVENT_TABLE), &[]).await?;
            progress.set_total(Some(last.first().and_then(|r| r.i64("n")).unwrap_or_default().saturating_sub(push_from).max(0) as u64));
        }
        for _ in 0..MESSAGES_PER_ROUND_MAX {
            if !self.push_once(&mut session, &hello, &mut report).await? {
                break;
            }
            if progress.is_visible() {
                let at = state_i64(&mut session, PUSH_THROUGH).await?;
                progress.update((at - push_from).max(0) as u64, format!("{} entities pushed, {} held at the parent", report.pushed, report.held_at_parent));
            }
        }
        let pull_from = if progress.is_visible() { state_i64(&mut session, PULL_AFTER).await? } else { 0 };
        progress.stage("pull from parent", "parent events", Some(hello.last_seq.saturating_sub(pull_from).max(0) as u64));
        for _ in 0..MESSAGES_PER_ROUND_MAX {
            if !self.pull_once(&mut session, &hello, &mut report).await? {
                break;
            }
            if progress.is_visible() {
                let at = state_i64(&mut session, PULL_AFTER).await?;
                progress.update((at - pull_from).max(0) as u64, format!("{} entities received, {} held here", report.pulled, report.held_here));
            }
        }
        drop(progress);
        report.unheld += self.retry_held(&mut session, &hello).await?;
        Ok(report)
    }

    /// Rounds until one moves nothing (`--once`).
    pub async fn sync_until_idle(&self, rounds_max: usize) -> Result<RoundReport, ChildError> {
        let mut total = RoundReport::default();
        for _ in 0..rounds_max {
            let r = self.round().await?;
            let moved = r.moved();
            total.sequenced += r.sequenced;
            total.pushed += r.pushed;
            total.held_at_parent += r.held_at_parent;
            total.not_allowed += r.not_allowed;
            total.pulled += r.pulled;
            total.held_here = r.held_here;
            total.unheld += r.unheld;
            total.conflicts += r.conflicts;
            if !moved {
                break;
            }
        }
        Ok(total)
    }

    pub fn receiver<'a>(&'a self, hello: &'a Hello) -> Receiver<'a> {
        Receiver { model: &self.model, from: Side::Parent, peer: PEER_PARENT, policy: &hello.policy, catchment_of: None }
    }

    /// Pushes the next batch of own events; false when there was nothing to push.
    ///
    /// A push is kept in `feedsync_outbox` before it is sent. If its answer never arrives, the
    /// next round sends the same request again rather than a new one: the parent answers what
    /// it already applied with its version, merged here against what was sent, so an edit
    /// made here in between is kept (a rebuilt push would pair that edit with a version the
    /// parent has already moved past).
    async fn push_once(&self, session: &mut Session, hello: &Hello, report: &mut RoundReport) -> Result<bool, ChildError> {
        let position = state_i64(session, PUSH_THROUGH).await?;
        let push = match exchange::outbox(session).await? {
            Some(unanswered) if unanswered.through_seq > position => unanswered,
            _ => {
                let Some(push) = self.build_push(session, hello, report).await? else { return Ok(false) };
                if push.items.is_empty() {
                    set_state_i64(session, PUSH_THROUGH, push.through_seq).await?;
                    return Ok(true);
                }
                exchange::set_outbox(session, &push).await?;
                push
            }
        };
        let reply = self.parent.push(&push).await?;
        self.apply_push_reply(session, hello, &push, &reply, report).await?;
        Ok(true)
    }

    /// The next push: own events after the last one the parent acknowledged, each entity
    /// once with its current state and base. `None` when there is no event to push; a push
    /// with no items when every event was left out (it still moves the position).
    pub async fn build_push(&self, session: &mut Session, hello: &Hello, report: &mut RoundReport) -> Result<Option<PushRequest>, ChildError> {
        let through = state_i64(session, PUSH_THROUGH).await?;
        self.build_push_after(session, hello, through, report).await
    }

    /// [`ChildNode::build_push`] from own event `through` on instead of the acknowledged
    /// position: a USB export builds several pushes in a row without moving the position.
    pub async fn build_push_after(&self, session: &mut Session, hello: &Hello, through: i64, report: &mut RoundReport) -> Result<Option<PushRequest>, ChildError> {
        let events = session
            .query(
                &format!(
                    "SELECT event_seq, table_name, entity_key, category, origin FROM {} WHERE event_seq > ? ORDER BY event_seq LIMIT {ITEMS_PER_MESSAGE_MAX}",
                    capture::EVENT_TABLE
                ),
                &[Value::Int(through)],
            )
            .await?;
        let Some(last) = events.last().and_then(|e| e.i64("event_seq")) else { return Ok(None) };
        let mut cache = LookupCache::default();
        let mut items: Vec<Item> = Vec::new();
        let mut seen: std::collections::HashMap<(String, String), usize> = std::collections::HashMap::new();
        for event in &events {
            // Own changes and those of this node's own children go up; what came from the
            // parent does not go back.
            let origin = event.text("origin");
            if origin.as_deref().is_some_and(|o| !o.starts_with("child:")) {
                continue;
            }
            let (Some(table), Some(key)) = (event.text("table_name"), event.text("entity_key")) else { continue };
            let category = event.text("category").unwrap_or_default();
            if !feedsync_wire::network::category_allowed(&hello.categories, &category) {
                report.not_allowed += 1;
                continue;
            }
            let seq = event.i64("event_seq").unwrap_or_default();
            // Each entity once, at its latest event in the batch: its state is the current one.
            if let Some(&i) = seen.get(&(table.clone(), key.clone())) {
                let earlier: &mut Item = &mut items[i];
                earlier.seq = seq;
                continue;
            }
            seen.insert((table.clone(), key.clone()), items.len());
            let mut item = exchange::local_item(session, &self.model, seq, &table, &key, &mut cache).await?;
            item.base = exchange::load_base(session, &table, &key).await?;
            items.push(item);
        }
        Ok(Some(PushRequest { through_seq: last, items }))
    }

    /// Applies the parent's answer to a push, in one transaction: each entity's version at
    /// the parent merged with anything changed here since the push was built, the new bases,
    /// and the acknowledged position. An answer to a push older than the position (a
    /// duplicate, or a USB reply overtaken by online sync) changes nothing.
    pub async fn apply_push_reply(&self, session: &mut Session, hello: &Hello, push: &PushRequest, reply: &PushResponse, report: &mut RoundReport) -> Result<bool, ChildError> {
        if push.through_seq <= state_i64(session, PUSH_THROUGH).await? {
            return Ok(false);
        }
        let sent: BTreeMap<(String, String), &Item> = push.items.iter().map(|i| ((i.table.clone(), i.key.clone()), i)).collect();
        let receiver = self.receiver(hello);
        let mut cache = LookupCache::default();
        self.in_transaction(session, async |session: &mut Session| {
            for result in &reply.results {
                let Some(item) = sent.get(&(result.table.clone(), result.key.clone())) else { continue };
                report.pushed += 1;
                if result.status == PushStatus::Held {
                    report.held_at_parent += 1;
                    tracing::warn!(table = %result.table, key = %result.key, reason = result.reason.as_deref().unwrap_or(""), "the parent holds this change until it can apply");
                    continue;
                }
                // What was sent is what both sides now agree on, so it is the base.
                let incoming = Item { resource: result.result.clone(), base: None, ..(*item).clone() };
                let base = Base { columns: item.resource.as_ref().map(|r| r.columns.clone()) };
                if let Some(reason) = self.receive_one(session, &receiver, &incoming, Some(&base), report, &mut cache).await? {
                    exchange::hold(session, PEER_PARENT, &incoming, &reason).await?;
                    report.held_here += 1;
                }
            }
            let position = reply.acked_through.max(push.through_seq);
            set_state_i64(session, PUSH_THROUGH, position).await?;
            exchange::clear_outbox(session, position).await?;
            Ok(())
        })
        .await?;
        Ok(true)
    }

    /// Pulls and applies the next page of the parent's changes; false when there was none.
    async fn pull_once(&self, session: &mut Session, hello: &Hello, report: &mut RoundReport) -> Result<bool, ChildError> {
        let after = self.pull_position(session).await?;
        let page = self.parent.changes(after, ITEMS_PER_MESSAGE_MAX).await?;
        if page.through <= after {
            return Ok(false);
        }
        self.apply_changes(session, hello, after, &page, report).await?;
        Ok(page.more || !page.items.is_empty())
    }

    /// The last parent event this child has applied.
    pub async fn pull_position(&self, session: &mut Session) -> Result<i64, ChildError> {
        Ok(state_i64(session, PULL_AFTER).await?)
    }

    /// The last own event the parent acknowledged.
    pub async fn push_position(&self, session: &mut Session) -> Result<i64, ChildError> {
        Ok(state_i64(session, PUSH_THROUGH).await?)
    }

    /// Applies a page of the parent's changes that starts after `after`, with the new marker,
    /// in one transaction. A page that does not continue exactly where this child is (a
    /// duplicate, or a USB reply overtaken by online sync) changes nothing: applying older
    /// versions over newer ones would go back in time. Returns whether it applied.
    pub async fn apply_changes(&self, session: &mut Session, hello: &Hello, after: i64, page: &Changes, report: &mut RoundReport) -> Result<bool, ChildError> {
        let receiver = self.receiver(hello);
        let mut cache = LookupCache::default();
        let mut applied = false;
        self.in_transaction(session, async |session: &mut Session| {
            if state_i64(session, PULL_AFTER).await? != after || page.through <= after {
                return Ok(());
            }
            self.receive_all(session, &receiver, &page.items, report, &mut cache).await?;
            set_state_i64(session, PULL_AFTER, page.through).await?;
            applied = true;
            Ok(())
        })
        .await?;
        Ok(applied)
    }

    /// Applies items from the parent in order; those waiting for rows later in the same
    /// message get more passes; the rest are held with their reason.
    async fn receive_all(&self, session: &mut Session, receiver: &Receiver<'_>, items: &[Item], report: &mut RoundReport, cache: &mut LookupCache) -> Result<(), ChildError> {
        let mut pending: Vec<&Item> = items.iter().collect();
        let mut reasons: BTreeMap<usize, String> = BTreeMap::new();
        for pass in 0..exchange::PASSES_MAX {
            let mut still = Vec::new();
            reasons.clear();
            for item in &pending {
                if pass == 0 {
                    exchange::supersede_held(session, PEER_PARENT, &item.table, &item.key).await?;
                }
                let base = exchange::load_base(session, &item.table, &item.key).await?;
                match self.receive_one(session, receiver, item, base.as_ref(), report, cache).await? {
                    None => {}
                    Some(reason) => {
                        reasons.insert(still.len(), reason);
                        still.push(*item);
                    }
                }
            }
            let progressed = still.len() < pending.len();
            pending = still;
            if pending.is_empty() || !progressed {
                break;
            }
        }
        for (i, item) in pending.iter().enumerate() {
            let reason = reasons.get(&i).cloned().unwrap_or_default();
            tracing::info!(table = %item.table, key = %item.key, %reason, "change from the parent held until it can apply");
            exchange::hold(session, PEER_PARENT, item, &reason).await?;
            report.held_here += 1;
        }
        Ok(())
    }

    /// Merges one version from the parent into the local row; `Some(reason)` when it cannot
    /// apply yet. Stores the parent's version as the new base when it applied.
    async fn receive_one(
        &self,
        session: &mut Session,
        receiver: &Receiver<'_>,
        item: &Item,
        base: Option<&Base>,
        report: &mut RoundReport,
        cache: &mut LookupCache,
    ) -> Result<Option<String>, ChildError> {
        match exchange::attempt(session, receiver, item, base, cache).await? {
            Attempt::Done(exchange::Received::Done { conflict_id, .. }) => {
                exchange::store_base(session, &item.table, &item.key, item.resource.as_ref()).await?;
                report.pulled += 1;
                report.conflicts += conflict_id.is_some() as usize;
                Ok(None)
            }
            Attempt::Done(exchange::Received::Waiting { .. }) => unreachable!("attempt reports waiting as Attempt::Waiting"),
            Attempt::Waiting(reason) | Attempt::Refused(reason) => Ok(Some(reason)),
        }
    }

    async fn retry_held(&self, session: &mut Session, hello: &Hello) -> Result<usize, ChildError> {
        let receiver = self.receiver(hello);
        let mut cache = LookupCache::default();
        let mut applied = 0;
        self.in_transaction(session, async |session: &mut Session| {
            applied = exchange::retry_held(session, &receiver, PEER_PARENT, &mut cache, true).await?;
            Ok(())
        })
        .await?;
        Ok(applied)
    }

    /// Runs `body` in one transaction with the parent's origin on every write.
    async fn in_transaction(&self, session: &mut Session, body: impl AsyncFnOnce(&mut Session) -> Result<(), ChildError>) -> Result<(), ChildError> {
        // READ COMMITTED, as the parent's push: a merge reads the local row under its lock (the
        // newest commit), and apply must compare with that version, not with an older snapshot
        // REPEATABLE READ would give it.
        session.read_committed().await?;
        session.begin().await?;
        let outcome = async {
            capture::set_origin(session, ORIGIN_PARENT).await?;
            body(session).await?;
            capture::clear_origin(session).await?;
            Ok::<(), ChildError>(())
        }
        .await;
        match outcome {
            Ok(()) => {
                session.commit().await?;
                Ok(())
            }
            Err(e) => {
                let _ = session.rollback().await;
                Err(e)
            }
        }
    }

    /// Asks the parent for patients matching `query` (identifier, or name with birth date and
    /// gender).
    pub async fn find_patients(&self, query: &str, limit: usize) -> Result<Vec<Candidate>, ChildError> {
        Ok(self.parent.find_patients(query, limit).await?)
    }

    /// Adds a patient to this child's catchment at the parent and applies the whole record
    /// here; later changes then flow both ways. Returns the rows applied and held.
    pub async fn fetch_patient(&self, uuid: &str, reason: &str) -> Result<(usize, usize), ChildError> {
        let hello = self.parent.hello().await?;
        let record = self.parent.fetch_patient(uuid, reason).await?;
        let mut session = self.database.session().await?;
        let receiver = self.receiver(&hello);
        let mut report = RoundReport::default();
        let mut cache = LookupCache::default();
        self.in_transaction(&mut session, async |session: &mut Session| self.receive_all(session, &receiver, &record.items, &mut report, &mut cache).await).await?;
        Ok((report.pulled, report.held_here))
    }
}

fn command_take(take: &exchange::Take) -> &'static str {
    match take {
        exchange::Take::Mine => "took the child's version",
        exchange::Take::Theirs => "took the parent's version",
        exchange::Take::Fields(_) => "field by field",
    }
}

async fn state_i64(session: &mut Session, name: &str) -> Result<i64, DbError> {
    Ok(capture::state(session, name).await?.and_then(|v| v.parse().ok()).unwrap_or(0))
}

async fn set_state_i64(session: &mut Session, name: &str, value: i64) -> Result<(), DbError> {
    capture::set_state(session, name, &value.to_string()).await
}

/// This child's position in the exchange, for `status`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ExchangePosition {
    pub push_through: i64,
    pub pull_after: i64,
    pub last_event: i64,
    /// Own events (and its own children's) the parent has not acknowledged.
    pub pending_push: i64,
    pub held: Vec<feedsync_wire::network::HeldItem>,
    pub open_conflicts: usize,
    /// The newest open conflicts, at most [`STATUS_CONFLICTS_LISTED_MAX`].
    pub conflicts: Vec<feedsync_wire::network::Conflict>,
}

/// Open conflicts `exchange_position` lists (all are counted).
pub const STATUS_CONFLICTS_LISTED_MAX: usize = 100;

/// Whether this database has synced as a child (it has a push or pull position).
pub async fn is_child(session: &mut Session) -> Result<bool, DbError> {
    if !capture::list_tables(session).await?.iter().any(|t| t == capture::STATE_TABLE) {
        return Ok(false);
    }
    Ok(capture::state(session, PUSH_THROUGH).await?.is_some() || capture::state(session, PULL_AFTER).await?.is_some())
}

/// Own events (and those of this node's own children) the parent has not acknowledged yet.
pub async fn pending_push(session: &mut Session) -> Result<i64, DbError> {
    let push_through = state_i64(session, PUSH_THROUGH).await?;
    Ok(session
        .query(
            &format!("SELECT COUNT(*) AS n FROM {} WHERE event_seq > ? AND (origin IS NULL OR origin LIKE 'child:%')", capture::EVENT_TABLE),
            &[Value::Int(push_through)],
        )
        .await?
        .first()
        .and_then(|r| r.i64("n"))
        .unwrap_or_default())
}

pub async fn exchange_position(session: &mut Session) -> Result<ExchangePosition, DbError> {
    let last_event = session
        .query(&format!("SELECT COALESCE(MAX(event_seq), 0) AS n FROM {}", capture::EVENT_TABLE), &[])
        .await?
        .first()
        .and_then(|r| r.i64("n"))
        .unwrap_or_default();
    let open_conflicts = session
        .query(&format!("SELECT COUNT(*) AS n FROM {} WHERE status = 'open'", exchange::CONFLICT_TABLE), &[])
        .await?
        .first()
        .and_then(|r| r.i64("n"))
        .unwrap_or_default();
    Ok(ExchangePosition {
        push_through: state_i64(session, PUSH_THROUGH).await?,
        pull_after: state_i64(session, PULL_AFTER).await?,
        last_event,
        pending_push: pending_push(session).await?,
        held: exchange::held_items(session, Some(PEER_PARENT), 1_000).await?,
        open_conflicts: open_conflicts.max(0) as usize,
        conflicts: exchange::list_conflicts(session, false, STATUS_CONFLICTS_LISTED_MAX as i64).await?,
    })
}
