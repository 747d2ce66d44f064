//! The subscriber's loop for applying to an OpenMRS database: read entries after the marker,
//! fetch their resources in batches, apply them by identity, and move the marker, all of a
//! batch in one transaction. A change that cannot apply yet (a reference not here, a refused
//! statement, a resource the publisher could not give) is queued with its reason; only later
//! changes to that same entity wait behind it, everything else goes on. Queued changes are
//! retried as their references arrive, failed ones with backoff.

use std::collections::{BTreeMap, HashMap};

use feedsync_node::apply::{self, Applied, ApplyError, Change};
use feedsync_node::capture;
use feedsync_db::{Database, DbError, Session};
use feedsync_core::model::Model;
use feedsync_wire::resource::parse_resource_link;

use crate::client::{Fetched, HttpClient};
use crate::openmrs_notify::Notifier;
use crate::reader::{EntryContent, FeedEntry, FeedReader, Marker};
use crate::state::{self, NewChange, Status};

/// Entries read and applied per transaction.
pub const BATCH_ENTRIES_MAX: usize = 500;
/// Passes over the queue per round; each pass applies what the previous one unblocked.
const QUEUE_PASSES_MAX: usize = 50;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("cannot read feed {feed}: {message}")]
    Feed { feed: String, message: String, retryable: bool },
    #[error("target database: {0}")]
    Database(#[from] DbError),
    #[error(
        "feed {feed} entry {entry} has no feedsync resource link: applying to a database needs a feed from feed-publisher \
         (OpenMRS atomfeed feeds, whose links point at OpenMRS REST, can go to the JSON-lines or webhook sinks)"
    )]
    NotAFeedsyncFeed { feed: String, entry: String },
}

impl SyncError {
    pub fn is_retryable(&self) -> bool {
        match self {
            SyncError::Feed { retryable, .. } => *retryable,
            SyncError::Database(e) => e.is_retryable(),
            SyncError::NotAFeedsyncFeed { .. } => false,
        }
    }

    /// A feed that cannot be read (a malformed or hostile page, a marker lost from its page):
    /// only that feed waits for a person; the others, and the service, go on.
    pub fn stops_only_its_feed(&self) -> bool {
        matches!(self, SyncError::Feed { .. })
    }
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Progress {
    pub entries_read: usize,
    pub applied: usize,
    pub queued: usize,
    pub unblocked: usize,
    pub caught_up: bool,
}

pub struct Subscriber {
    pub database: Database,
    pub model: Model,
    pub client: HttpClient,
    /// The publisher's path prefix, if links carry one (e.g. `/openmrs`).
    pub path_prefix: String,
    /// Warnings already logged, as (table, text).
    pub warned: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
    /// Told of every row written, after each commit, so OpenMRS's cache and search index
    /// see it (see `openmrs_notify`).
    pub notifier: Option<Notifier>,
}

/// Distinct warnings remembered for logging once; past this, they are no longer logged.
const WARNINGS_REMEMBERED_MAX: usize = 10_000;

impl Subscriber {
    pub fn new(database: Database, model: Model, client: HttpClient, path_prefix: String) -> Subscriber {
        Subscriber { database, model, client, path_prefix, warned: Default::default(), notifier: None }
    }

    pub fn with_notifier(mut self, notifier: Notifier) -> Subscriber {
        self.notifier = Some(notifier);
        self
    }
}

impl Subscriber {
    /// Reads and applies one batch of a feed; `caught_up` when the newest page was reached.
    pub async fn sync_batch(&self, feed_url: &str) -> Result<Progress, SyncError> {
        let mut session = self.database.session().await?;
        state::prepare(&mut session).await?;
        let marker = state::feed_state(&mut session, feed_url).await?.and_then(|s| match (s.marker_entry_id, s.marker_page_url) {
            (Some(entry_id), Some(page_url)) => Some(Marker { entry_id, page_url }),
            _ => None,
        });
        let reader = FeedReader::new(self.client.clone(), feed_url);
        let batch = match reader.read_after(marker.as_ref(), BATCH_ENTRIES_MAX).await {
            Ok(batch) => batch,
            Err(e) => {
                let message = e.to_string();
                state::set_feed_error(&mut session, feed_url, &message).await?;
                return Err(SyncError::Feed { feed: feed_url.into(), retryable: e.is_retryable(), message });
            }
        };
        let mut progress = Progress { entries_read: batch.entries.len(), caught_up: batch.caught_up, ..Progress::default() };
        if batch.entries.is_empty() {
            return Ok(progress);
        }
        let links: Vec<String> = batch
            .entries
            .iter()
            .map(|e| resource_link(e).ok_or_else(|| SyncError::NotAFeedsyncFeed { feed: feed_url.into(), entry: e.id.clone() }))
            .collect::<Result<_, _>>()?;
        let mut unique: Vec<String> = links.clone();
        unique.sort();
        unique.dedup();
        let fetched: HashMap<String, Fetched> = unique.iter().cloned().zip(self.client.fetch_resources(&unique).await).collect();
        // A publisher that is down or overloaded is a reason to try the batch later, not to
        // queue every change in it as failed.
        if let Some((link, reason)) = fetched.iter().find_map(|(l, f)| match f {
            Fetched::Failed { reason, retryable: true, .. } => Some((l, reason)),
            _ => None,
        }) {
            let message = format!("fetching {link}: {reason}");
            state::set_feed_error(&mut session, feed_url, &message).await?;
            return Err(SyncError::Feed { feed: feed_url.into(), message, retryable: true });
        }

        let mut written: Vec<Written> = Vec::new();
        session.begin().await?;
        let outcome = async {
            capture::set_origin(&mut session, &state::origin(&state::feed_id(feed_url))).await?;
            for (entry, link) in batch.entries.iter().zip(&links) {
                match self.apply_entry(&mut session, feed_url, entry, link, &fetched[link], &mut written).await? {
                    true => progress.applied += 1,
                    false => progress.queued += 1,
                }
            }
            let last = batch.entries.last().expect("non-empty batch");
            state::set_marker(&mut session, feed_url, &last.id, &last.page_url, batch.entries.len() as i64).await?;
            capture::clear_origin(&mut session).await?;
            Ok::<(), SyncError>(())
        }
        .await;
        match outcome {
            Ok(()) => session.commit().await?,
            Err(e) => {
                let _ = session.rollback().await;
                return Err(e);
            }
        }
        self.notify(&written);
        progress.unblocked = self.drain_queue(&mut session).await?;
        Ok(progress)
    }

    /// Applies one entry or queues it; `true` when applied. Only database unavailability
    /// escapes as an error (the whole batch is then retried).
    /// Rows it wrote are added to `written`.
    async fn apply_entry(
        &self,
        session: &mut Session,
        feed_url: &str,
        entry: &FeedEntry,
        link: &str,
        fetched: &Fetched,
        written: &mut Vec<Written>,
    ) -> Result<bool, SyncError> {
        let (table, key) = parse_resource_link(link, &self.path_prefix)
            .or_else(|| parse_resource_link(link, ""))
            .unwrap_or_else(|| ("?".into(), link.to_owned()));
        let queue = |status: Status, reason: String, waits_for: Vec<String>| (status, reason, waits_for);
        let decision = if let Some(first) = state::entity_blocked(session, &table, &key).await? {
            Some(queue(Status::Waiting, format!("behind queued change #{first} to the same {table}"), Vec::new()))
        } else {
            match self.apply_fetched(session, fetched).await? {
                Attempt::Applied(row) => {
                    written.extend(row);
                    None
                }
                Attempt::Waiting(missing) => Some(queue(Status::Waiting, waiting_reason(&missing), missing)),
                Attempt::Failed(reason) => Some(queue(Status::Failed, reason, Vec::new())),
            }
        };
        let Some((status, reason, waits_for)) = decision else { return Ok(true) };
        tracing::info!(%table, %key, entry = %entry.id, status = status.as_str(), %reason, "change queued");
        state::enqueue(session, &NewChange { feed_url, entry_id: &entry.id, table: &table, key: &key, link, status, reason: &reason, waits_for: &waits_for })
            .await?;
        Ok(false)
    }

    /// Applies a fetched resource inside a savepoint, so a refused statement undoes only itself.
    async fn apply_fetched(&self, session: &mut Session, fetched: &Fetched) -> Result<Attempt, SyncError> {
        session.execute_script("SAVEPOINT feedsync_change").await?;
        let result = match fetched {
            Fetched::Resource(r) => apply::apply_resource(session, &self.model, r).await,
            Fetched::Deleted(t) => apply::apply_tombstone(session, &self.model, t).await,
            Fetched::Failed { reason, .. } => {
                session.execute_script("RELEASE SAVEPOINT feedsync_change").await?;
                return Ok(Attempt::Failed(reason.clone()));
            }
        };
        match result {
            Ok(Applied::Waiting { missing }) => {
                session.execute_script("ROLLBACK TO SAVEPOINT feedsync_change").await?;
                session.execute_script("RELEASE SAVEPOINT feedsync_change").await?;
                Ok(Attempt::Waiting(missing.iter().map(|(t, k)| format!("{t}/{k}")).collect()))
            }
            Ok(Applied::Done { change, warnings }) => {
                session.execute_script("RELEASE SAVEPOINT feedsync_change").await?;
                self.warn_once(fetched, &warnings);
                Ok(Attempt::Applied(written_row(fetched, &change)))
            }
            Err(e) if e.is_retryable() => Err(SyncError::Database(DbError::Unavailable { target: self.database.display_name(), message: e.to_string() })),
            Err(e) => {
                session.execute_script("ROLLBACK TO SAVEPOINT feedsync_change").await?;
                session.execute_script("RELEASE SAVEPOINT feedsync_change").await?;
                Ok(Attempt::Failed(describe(&e)))
            }
        }
    }

    /// Retries queued changes whose entity is first in line and that are due, until a pass
    /// applies nothing. Returns how many were applied.
    pub async fn drain_queue(&self, session: &mut Session) -> Result<usize, SyncError> {
        let mut applied_total = 0;
        for _ in 0..QUEUE_PASSES_MAX {
            let now = state::now(session).await?;
            let mut applied = 0;
            let mut after = 0;
            let mut seen: std::collections::HashSet<(String, String)> = std::collections::HashSet::new();
            loop {
                let page = state::pending(session, after).await?;
                let Some(last) = page.last() else { break };
                after = last.change_id;
                // First change per entity is the head; the rest wait behind it.
                let mut heads: BTreeMap<(String, String), (state::QueuedChange, i64)> = BTreeMap::new();
                for change in page {
                    let entity = (change.table_name.clone(), change.entity_key.clone());
                    if seen.contains(&entity) && !heads.contains_key(&entity) {
                        continue; // its head was on an earlier page
                    }
                    let through = change.change_id;
                    heads.entry(entity).and_modify(|(_, t)| *t = through).or_insert((change, through));
                }
                seen.extend(heads.keys().cloned());
                for ((table, key), (head, through)) in heads {
                    if !state::is_due(&head, &now) || !self.references_present(session, &head.waits_for).await? {
                        continue;
                    }
                    let fetched = self.client.fetch_resources(std::slice::from_ref(&head.link)).await.into_iter().next().expect("one answer per link");
                    session.begin().await?;
                    capture::set_origin(session, &state::origin(&head.feed_url_id)).await?;
                    let attempt = match self.apply_fetched(session, &fetched).await {
                        Ok(a) => a,
                        Err(e) => {
                            let _ = session.rollback().await;
                            return Err(e);
                        }
                    };
                    let mut written = Vec::new();
                    match attempt {
                        Attempt::Applied(row) => {
                            written.extend(row);
                            state::resolve_entity(session, &table, &key, through).await?;
                            applied += 1;
                        }
                        Attempt::Waiting(missing) => {
                            state::record_attempt(session, head.change_id, Status::Waiting, &waiting_reason(&missing), &missing, head.attempts).await?;
                        }
                        Attempt::Failed(reason) => {
                            state::record_attempt(session, head.change_id, Status::Failed, &reason, &[], head.attempts + 1).await?;
                        }
                    }
                    capture::clear_origin(session).await?;
                    session.commit().await?;
                    self.notify(&written);
                }
            }
            applied_total += applied;
            if applied == 0 {
                break;
            }
        }
        Ok(applied_total)
    }

    /// Logs what the target could not hold (a column an older OpenMRS lacks...), once per
    /// table and kind, so a long catch-up does not repeat the same line a million times.
    fn warn_once(&self, fetched: &Fetched, warnings: &[apply::ApplyWarning]) {
        let Fetched::Resource(resource) = fetched else { return };
        let mut seen = self.warned.lock().expect("warned lock");
        for warning in warnings {
            let text = warning.to_string();
            if seen.len() < WARNINGS_REMEMBERED_MAX && seen.insert((resource.table.clone(), text.clone())) {
                tracing::warn!(table = %resource.table, key = %resource.key, warning = %text, "applied with a warning (logged once per table)");
            }
        }
    }

    /// Tells OpenMRS, when a notifier is set, about rows a transaction wrote. Called after the
    /// commit, so OpenMRS never reloads a row that could still roll back; never waits.
    fn notify(&self, written: &[Written]) {
        let Some(notifier) = &self.notifier else { return };
        for (table, key, deleted) in written {
            if *deleted {
                notifier.deleted(table, key);
            } else {
                notifier.touched(table, key);
            }
        }
    }

    /// Whether every `table/key` a change waits for exists here now (so a retry can succeed).
    async fn references_present(&self, session: &mut Session, waits_for: &[String]) -> Result<bool, SyncError> {
        for reference in waits_for {
            let Some((table, key)) = reference.split_once('/') else { continue };
            if feedsync_node::lookup::find_primary_key(session, &self.model, table, key).await?.is_none() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Follows every feed until each is caught up and the queue makes no more progress. A feed
    /// that fails (unreachable, or a page that cannot be read) stops only itself: the others
    /// go on, and the first failure is returned after them.
    pub async fn sync_until_caught_up(&self, feeds: &[String]) -> Result<Progress, SyncError> {
        let mut total = Progress::default();
        let mut failed: Option<SyncError> = None;
        // An Atom feed does not say how many entries follow a marker: the count has no total.
        let progress = feedsync_node::progress::Progress::new("catch-up", "entries", None);
        for feed in feeds {
            loop {
                let p = match self.sync_batch(feed).await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!(feed = %feed, error = %e, "this feed stopped; the others go on");
                        failed.get_or_insert(e);
                        break;
                    }
                };
                total.entries_read += p.entries_read;
                total.applied += p.applied;
                total.queued += p.queued;
                total.unblocked += p.unblocked;
                progress.update(
                    total.entries_read as u64,
                    format!("{} applied, {} queued · {feed}", feedsync_node::progress::thousands((total.applied + total.unblocked) as u64), total.queued),
                );
                if p.caught_up || p.entries_read == 0 {
                    break;
                }
                // The progress line says the same on a terminal.
                if !progress.is_visible() {
                    tracing::info!(feed = %feed, read = total.entries_read, applied = total.applied, queued = total.queued, "catching up");
                }
            }
        }
        drop(progress);
        let mut session = self.database.session().await?;
        total.unblocked += self.drain_queue(&mut session).await?;
        if let Some(e) = failed {
            return Err(e);
        }
        total.caught_up = true;
        Ok(total)
    }
}

/// A row a change wrote, for the OpenMRS notifier: table, identity key, deleted.
type Written = (String, String, bool);

/// The row a change wrote, if it wrote one (unchanged and skipped rows need no notice).
fn written_row(fetched: &Fetched, change: &Change) -> Option<Written> {
    match (fetched, change) {
        (Fetched::Resource(r), Change::Inserted | Change::Updated { .. }) => Some((r.table.clone(), r.key.clone(), false)),
        (Fetched::Deleted(t), Change::Deleted) => Some((t.table.clone(), t.key.clone(), true)),
        _ => None,
    }
}

enum Attempt {
    Applied(Option<Written>),
    Waiting(Vec<String>),
    Failed(String),
}

fn waiting_reason(missing: &[String]) -> String {
    format!("waiting for {} not here yet: {}", if missing.len() == 1 { "a referenced row" } else { "referenced rows" }, missing.join(", "))
}

fn describe(e: &ApplyError) -> String {
    e.to_string()
}

fn resource_link(entry: &FeedEntry) -> Option<String> {
    match &entry.content {
        EntryContent::Links { resource, .. } => resource.clone(),
        EntryContent::Url(_) => None,
    }
}
