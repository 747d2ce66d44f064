//! Following feeds into a [`Sink`] other than an OpenMRS database: a file of JSON lines, a
//! webhook, or a program's own code that embeds the subscriber. [`run_sink`] reads entries after
//! the marker, fetches what each names, hands the batch to the sink, and only once the sink has
//! it moves the marker (kept in a small state database through [`state::set_marker`]). A crash
//! or a cancelled run at any point therefore loses nothing: the batch in flight is delivered
//! again on resume (at-least-once; consumers deduplicate by `entry_id`).
//!
//! An entry names what changed in one of three ways, all handled here: feed-publisher's JSON
//! object of links with a `resource` link (fetched in batches, giving a [`Resource`] or a
//! [`Tombstone`]); the same object without one, as OpenMRS Sync 2.0 feeds write it, or Bahmni's
//! plain URL, both pointing at OpenMRS REST or FHIR (fetched one by one, with the client's
//! credentials, giving the JSON as OpenMRS serves it).
//!
//! What stops a run and what does not is decided once, in [`fetch_outcome`] and
//! [`SinkError::is_retryable`]: an entity that is gone or unreadable becomes a
//! [`DeliveryBody::Failed`] record the sink sees (one bad entry never blocks a feed, the
//! "blocked sync" operators suffer today); a server or sink that is away is retried with capped
//! backoff and then stops the run without moving the marker; refused credentials and a sink
//! that refuses an entry stop the run with an error naming the entry. Nothing is ever skipped
//! silently.
//!
//! The sinks shipped with the subscriber are here too: JSON lines to a file or standard output
//! (`json_lines`), an HTTP webhook (`webhook`), and [`open_sink`], which picks one from a
//! command-line description. A program embedding the subscriber writes its own the same way
//! (see `examples/embed_subscriber.rs`).

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

use feedsync_db::{Database, DbError, Session};
use feedsync_wire::resource::{Resource, Tombstone};

use crate::client::{ClientError, Fetched, HttpClient};
use crate::reader::{EntryContent, FeedEntry, FeedReader, Marker, ReadError};
use crate::state;

/// The action tags a category may carry (feed-publisher and OpenMRS Sync 2.0 put one after the
/// category; Bahmni's feeds carry none).
pub const ACTIONS: [&str; 7] = ["CREATED", "UPDATED", "VOIDED", "UNVOIDED", "RETIRED", "UNRETIRED", "DELETED"];

/// One feed entry with what it names, as a sink receives it. Serialized, it is one line of the
/// JSON-lines sink and one item of a webhook batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// Stable across re-reads, so it is the idempotency key downstream.
    pub entry_id: String,
    pub feed_url: String,
    #[serde(with = "rfc3339")]
    pub updated: DateTime<FixedOffset>,
    /// The first category term that is one of [`ACTIONS`], if any.
    pub action: Option<String>,
    /// Every category term in page order (category, action, filter tags).
    pub categories: Vec<String>,
    /// Flattened: the JSON has exactly one of `resource`, `tombstone`, `rest` or `failed`.
    #[serde(flatten)]
    pub body: DeliveryBody,
}

/// What an entry's link gave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryBody {
    /// feed-publisher's resource: the entity's current state, references as identities.
    Resource(Resource),
    /// feed-publisher's record of a deleted entity.
    Tombstone(Tombstone),
    /// OpenMRS REST or FHIR JSON, fetched from the entry's link as OpenMRS serves it.
    Rest { link: String, json: serde_json::Value },
    /// The entry names nothing that can be fetched now or ever (deleted without a tombstone,
    /// not JSON, no link at all). Delivered rather than skipped so the consumer sees the gap.
    Failed { link: Option<String>, reason: String },
}

/// Why a sink did not take a batch. The sink decides whether the same batch may succeed later
/// (a server away, a full disk) or never will (a refused item, a broken pipe).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    pub message: String,
    pub retryable: bool,
    /// The entry the sink refused, when it knows; the run's error names it.
    pub entry_id: Option<String>,
}

impl SinkError {
    pub fn retryable(message: impl Into<String>) -> SinkError {
        SinkError { message: message.into(), retryable: true, entry_id: None }
    }

    pub fn permanent(message: impl Into<String>) -> SinkError {
        SinkError { message: message.into(), retryable: false, entry_id: None }
    }

    pub fn at_entry(mut self, entry_id: impl Into<String>) -> SinkError {
        self.entry_id = Some(entry_id.into());
        self
    }

    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

/// Where deliveries go.
///
/// The method is written as `fn -> impl Future + Send` rather than `async fn` so that
/// [`run_sink`] over any sink can be spawned on a multi-threaded runtime (a plain `async fn`
/// in a public trait cannot promise `Send`). Implementations still write `async fn deliver`.
/// No `dyn` form: [`run_sink`] is generic over the sink, so nothing needs boxing; a program
/// that must choose a sink at run time wraps its choices in an enum (as `main` would).
pub trait Sink {
    /// Takes a batch, oldest entry first. `Ok` promises every delivery is durable at the sink,
    /// because the marker moves past the batch next. After an error some deliveries may have
    /// arrived; the batch is delivered again (at-least-once).
    fn deliver(&mut self, batch: &[Delivery]) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// Capped exponential backoff, shared by the run, the webhook and the OpenMRS notifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts after the first failure before giving up.
    pub retries_max: u32,
    /// Wait before the first retry; doubled for each further one.
    pub retry_delay_ms_first: u64,
    /// Longest wait between two attempts.
    pub retry_delay_ms_max: u64,
}

impl RetryPolicy {
    /// `min(first * 2^retry, max)` for the retry numbered from 0.
    pub fn delay_ms(&self, retry: u32) -> u64 {
        self.retry_delay_ms_first.saturating_mul(1u64 << retry.min(32)).min(self.retry_delay_ms_max)
    }

    pub fn backoff(&self) -> Backoff {
        Backoff { policy: *self, retries_done: 0 }
    }
}

/// The retries of one operation under a [`RetryPolicy`].
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: RetryPolicy,
    retries_done: u32,
}

impl Backoff {
    /// Waits before the next attempt and returns true, or returns false at once when the
    /// retries are spent.
    pub async fn wait(&mut self) -> bool {
        if self.retries_done >= self.policy.retries_max {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(self.policy.delay_ms(self.retries_done))).await;
        self.retries_done += 1;
        true
    }

    pub fn retries_done(&self) -> u32 {
        self.retries_done
    }
}

/// Named limits of a run; [`Default`] suits a slow link and a sink that may be away a while.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkLimits {
    /// Entries read, fetched and delivered per batch (and so per marker move). A crash
    /// delivers at most this many again.
    pub batch_entries_max: usize,
    /// Retries of a retryable fetch or delivery before the run stops with an error.
    pub retry: RetryPolicy,
    /// How often feeds are polled once caught up, when not run `once`.
    pub poll_interval_ms: u64,
}

impl Default for SinkLimits {
    fn default() -> Self {
        SinkLimits {
            batch_entries_max: 200,
            retry: RetryPolicy { retries_max: 5, retry_delay_ms_first: 1_000, retry_delay_ms_max: 60_000 },
            poll_interval_ms: 5_000,
        }
    }
}

/// Largest batch a run accepts, whatever the limits say: a batch is held in memory whole.
pub const BATCH_ENTRIES_MAX: usize = 10_000;

#[derive(Debug, Default, Clone, PartialEq)]
pub struct SinkProgress {
    pub entries_delivered: usize,
    /// Of those, how many were [`DeliveryBody::Failed`] records.
    pub failures_delivered: usize,
    pub batches_delivered: usize,
    /// Retries of fetches and deliveries that then succeeded or gave up.
    pub retries: usize,
    /// Every feed was read to its newest entry (only ever true for a `once` run).
    pub caught_up: bool,
}

impl SinkProgress {
    fn add(&mut self, other: &SinkProgress) {
        self.entries_delivered += other.entries_delivered;
        self.failures_delivered += other.failures_delivered;
        self.batches_delivered += other.batches_delivered;
        self.retries += other.retries;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SinkRunError {
    #[error("cannot read feed {feed_url}: {source}")]
    Feed {
        feed_url: String,
        #[source]
        source: ReadError,
    },
    #[error("state database (markers): {0}")]
    State(#[from] DbError),
    #[error(
        "feed {feed_url} entry {entry_id}: fetching {link} failed{}: {reason}. The marker stays before this batch, \
         so the next run fetches it again{}",
        if *.retries > 0 { format!(" {} times", retries + 1) } else { String::new() },
        if *.retryable { "" } else { "; fix the cause (credentials? the URL?) first" }
    )]
    Fetch { feed_url: String, entry_id: String, link: String, reason: String, retries: u32, retryable: bool },
    #[error(
        "the sink did not take feed {feed_url} entry {entry_id} (in a batch of {batch_entries} from {batch_first_entry_id}){}: {source}. \
         The marker stays before this batch: nothing is skipped, and the next run delivers the batch again{}",
        if *.retries > 0 { format!(", {} attempts", retries + 1) } else { String::new() },
        if source.retryable { "" } else { " once the sink (or this entry) is fixed" }
    )]
    Delivery {
        feed_url: String,
        entry_id: String,
        batch_first_entry_id: String,
        batch_entries: usize,
        retries: u32,
        #[source]
        source: SinkError,
    },
}

impl SinkRunError {
    /// True when running again later, unchanged, may get further.
    pub fn is_retryable(&self) -> bool {
        match self {
            SinkRunError::Feed { source, .. } => source.is_retryable(),
            SinkRunError::State(e) => e.is_retryable(),
            SinkRunError::Fetch { retryable, .. } => *retryable,
            SinkRunError::Delivery { source, .. } => source.retryable,
        }
    }

    /// The entry the run stopped at, when one entry is to blame.
    pub fn entry_id(&self) -> Option<&str> {
        match self {
            SinkRunError::Fetch { entry_id, .. } | SinkRunError::Delivery { entry_id, .. } => Some(entry_id),
            SinkRunError::Feed { .. } | SinkRunError::State(_) => None,
        }
    }
}

/// Follows `feeds` into `sink`. With `once`, returns when every feed is caught up; otherwise
/// polls forever and returns only on an error retrying cannot fix (retryable ones are logged,
/// recorded as the feed's `last_error`, and the feed is tried again after the poll interval).
/// The future may be dropped at any point: the marker only ever moves past delivered batches.
///
/// Markers are kept per feed URL, so every consumer needs a state database of its own: two
/// sinks (or a sink and the applying subscriber) sharing one would move one marker and split
/// the feed's entries between them.
pub async fn run_sink(
    client: &HttpClient,
    feeds: &[String],
    state_db: &Database,
    sink: &mut impl Sink,
    once: bool,
    limits: &SinkLimits,
) -> Result<SinkProgress, SinkRunError> {
    let mut session = state_db.session().await?;
    state::prepare(&mut session).await?;
    let mut total = SinkProgress::default();
    loop {
        for feed_url in feeds {
            let mut follower = FeedFollower { client, feed_url, session: &mut session, limits, progress: SinkProgress::default() };
            let result = follower.follow(sink).await;
            total.add(&follower.progress);
            if let Err(error) = result {
                // Best effort: the state database may be what failed.
                let _ = state::set_feed_error(&mut session, feed_url, &error.to_string()).await;
                if once || !error.is_retryable() {
                    return Err(error);
                }
                tracing::warn!(feed = %feed_url, %error, "feed not delivered this round; trying again after the poll interval");
            }
        }
        if once {
            total.caught_up = true;
            return Ok(total);
        }
        tokio::time::sleep(Duration::from_millis(limits.poll_interval_ms)).await;
    }
}

/// One feed's walk from its marker to its newest entry.
struct FeedFollower<'a> {
    client: &'a HttpClient,
    feed_url: &'a str,
    session: &'a mut Session,
    limits: &'a SinkLimits,
    progress: SinkProgress,
}

impl FeedFollower<'_> {
    async fn follow(&mut self, sink: &mut impl Sink) -> Result<(), SinkRunError> {
        let batch_entries_max = self.limits.batch_entries_max.clamp(1, BATCH_ENTRIES_MAX);
        let reader = FeedReader::new(self.client.clone(), self.feed_url);
        let mut marker = state::feed_state(self.session, self.feed_url).await?.and_then(|s| match (s.marker_entry_id, s.marker_page_url) {
            (Some(entry_id), Some(page_url)) => Some(Marker { entry_id, page_url }),
            _ => None,
        });
        loop {
            let batch = reader
                .read_after(marker.as_ref(), batch_entries_max)
                .await
                .map_err(|source| SinkRunError::Feed { feed_url: self.feed_url.to_owned(), source })?;
            let Some(next_marker) = batch.marker() else { return Ok(()) };
            let deliveries = self.fetch(&batch.entries).await?;
            self.deliver(sink, &deliveries).await?;
            // Only now: a crash before this line delivers the batch again, never skips it.
            state::set_marker(self.session, self.feed_url, &next_marker.entry_id, &next_marker.page_url, deliveries.len() as i64).await?;
            self.progress.entries_delivered += deliveries.len();
            self.progress.failures_delivered += deliveries.iter().filter(|d| matches!(d.body, DeliveryBody::Failed { .. })).count();
            self.progress.batches_delivered += 1;
            tracing::debug!(feed = %self.feed_url, entries = deliveries.len(), marker = %next_marker.entry_id, "batch delivered");
            marker = Some(next_marker);
            if batch.caught_up {
                return Ok(());
            }
        }
    }

    /// Fetches what the entries name, retrying the links that failed retryably.
    async fn fetch(&mut self, entries: &[FeedEntry]) -> Result<Vec<Delivery>, SinkRunError> {
        let sources: Vec<EntrySource> = entries.iter().map(|entry| entry_source(&entry.content)).collect();
        let mut answers: HashMap<String, FetchOutcome> = HashMap::new();
        let mut backoff = self.limits.retry.backoff();
        loop {
            let missing: Vec<&EntrySource> = sources
                .iter()
                .filter(|source| source.link().is_some_and(|link| answers.get(link).is_none_or(|answer| matches!(answer, FetchOutcome::Retry(_)))))
                .collect();
            fetch_into(self.client, &missing, &mut answers).await;
            // A failure that stops the run wins over one that may go away by retrying.
            let failure = |stop: bool| {
                entries.iter().zip(&sources).find_map(|(entry, source)| match (source.link().and_then(|link| answers.get(link)), stop) {
                    (Some(FetchOutcome::Stop(reason)), true) => Some((entry, source, reason.clone(), false)),
                    (Some(FetchOutcome::Retry(reason)), false) => Some((entry, source, reason.clone(), true)),
                    _ => None,
                })
            };
            let Some((entry, source, reason, retryable)) = failure(true).or_else(|| failure(false)) else { break };
            if retryable && backoff.wait().await {
                self.progress.retries += 1;
                tracing::warn!(feed = %self.feed_url, entry = %entry.id, %reason, "fetch failed; retrying");
                continue;
            }
            return Err(SinkRunError::Fetch {
                feed_url: self.feed_url.to_owned(),
                entry_id: entry.id.clone(),
                link: source.link().unwrap_or_default().to_owned(),
                reason,
                retries: backoff.retries_done(),
                retryable,
            });
        }
        Ok(entries
            .iter()
            .zip(sources)
            .map(|(entry, source)| {
                let body = match source {
                    EntrySource::Nothing(reason) => DeliveryBody::Failed { link: None, reason },
                    EntrySource::Feedsync(link) | EntrySource::Rest(link) => match answers.get(&link) {
                        Some(FetchOutcome::Body(body)) => body.clone(),
                        _ => unreachable!("every link is answered or the fetch stopped"),
                    },
                };
                delivery(self.feed_url, entry, body)
            })
            .collect())
    }

    async fn deliver(&mut self, sink: &mut impl Sink, deliveries: &[Delivery]) -> Result<(), SinkRunError> {
        let mut backoff = self.limits.retry.backoff();
        loop {
            let error = match sink.deliver(deliveries).await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            if error.retryable && backoff.wait().await {
                self.progress.retries += 1;
                tracing::warn!(feed = %self.feed_url, %error, "the sink did not take the batch; retrying");
                continue;
            }
            let first = deliveries.first().map(|d| d.entry_id.clone()).unwrap_or_default();
            return Err(SinkRunError::Delivery {
                feed_url: self.feed_url.to_owned(),
                entry_id: error.entry_id.clone().unwrap_or_else(|| first.clone()),
                batch_first_entry_id: first,
                batch_entries: deliveries.len(),
                retries: backoff.retries_done(),
                source: error,
            });
        }
    }
}

/// Where an entry's data comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum EntrySource {
    /// A feed-publisher resource link: batch-fetched.
    Feedsync(String),
    /// An OpenMRS REST or FHIR URL: fetched on its own, with credentials.
    Rest(String),
    /// No fetchable link; the reason goes into a failure record.
    Nothing(String),
}

impl EntrySource {
    fn link(&self) -> Option<&str> {
        match self {
            EntrySource::Feedsync(link) | EntrySource::Rest(link) => Some(link),
            EntrySource::Nothing(_) => None,
        }
    }
}

/// Pure: which link to follow. feed-publisher's own `resource` link first (one batch request
/// for many entries), then OpenMRS REST (what Bahmni consumers parse), then FHIR.
pub fn entry_source(content: &EntryContent) -> EntrySource {
    match content {
        EntryContent::Links { resource: Some(link), .. } => EntrySource::Feedsync(link.clone()),
        EntryContent::Links { rest: Some(link), .. } | EntryContent::Links { fhir: Some(link), .. } => EntrySource::Rest(link.clone()),
        EntryContent::Links { .. } => EntrySource::Nothing("the entry's JSON content has no resource, rest or fhir link".into()),
        EntryContent::Url(url) if url.starts_with("http://") || url.starts_with("https://") => EntrySource::Rest(url.clone()),
        EntryContent::Url(text) => {
            let excerpt: String = text.chars().take(80).collect();
            EntrySource::Nothing(format!("the entry's content is neither a JSON object of links nor a URL: {excerpt:?}"))
        }
    }
}

/// Pure: the first category term that is an action tag.
pub fn action_of(categories: &[String]) -> Option<String> {
    categories.iter().find(|term| ACTIONS.contains(&term.as_str())).cloned()
}

fn delivery(feed_url: &str, entry: &FeedEntry, body: DeliveryBody) -> Delivery {
    Delivery {
        entry_id: entry.id.clone(),
        feed_url: feed_url.to_owned(),
        updated: entry.updated,
        action: action_of(&entry.categories),
        categories: entry.categories.clone(),
        body,
    }
}

/// What fetching one link decided.
#[derive(Debug, Clone, PartialEq)]
pub enum FetchOutcome {
    /// Deliver this (possibly a failure record: the entity is gone or unreadable for good).
    Body(DeliveryBody),
    /// The server or link is away: try again, and stop the run if it stays away.
    Retry(String),
    /// Stop the run: retrying will not help and delivering a failure would hide a setup
    /// problem (refused credentials) behind failure records.
    Stop(String),
}

/// Pure: the one decision on what a fetch failure means for the run.
pub fn fetch_outcome(link: &str, error: &ClientError) -> FetchOutcome {
    match error.status() {
        Some(401 | 403) => FetchOutcome::Stop(format!("{error} (are the credentials for this server right?)")),
        _ if error.is_retryable() => FetchOutcome::Retry(error.to_string()),
        _ => FetchOutcome::Body(DeliveryBody::Failed { link: Some(link.to_owned()), reason: error.to_string() }),
    }
}

/// Fetches each distinct link of `sources` once, feed-publisher's in batches.
async fn fetch_into(client: &HttpClient, sources: &[&EntrySource], answers: &mut HashMap<String, FetchOutcome>) {
    let mut feedsync: Vec<String> = Vec::new();
    let mut rest: Vec<String> = Vec::new();
    for source in sources {
        let (list, link) = match source {
            EntrySource::Feedsync(link) => (&mut feedsync, link),
            EntrySource::Rest(link) => (&mut rest, link),
            EntrySource::Nothing(_) => continue,
        };
        if !list.contains(link) {
            list.push(link.clone());
        }
    }
    for (link, fetched) in feedsync.iter().zip(client.fetch_resources(&feedsync).await) {
        let outcome = match fetched {
            Fetched::Resource(resource) => FetchOutcome::Body(DeliveryBody::Resource(resource)),
            Fetched::Deleted(tombstone) => FetchOutcome::Body(DeliveryBody::Tombstone(tombstone)),
            Fetched::Failed { reason, retryable: true, .. } => FetchOutcome::Retry(reason),
            Fetched::Failed { link, reason, retryable: false } => FetchOutcome::Body(DeliveryBody::Failed { link: Some(link), reason }),
        };
        answers.insert(link.clone(), outcome);
    }
    for link in rest {
        let outcome = match client.get(&link).await {
            Ok(response) => match serde_json::from_slice::<serde_json::Value>(&response.body) {
                Ok(json) => FetchOutcome::Body(DeliveryBody::Rest { link: link.clone(), json }),
                Err(e) => {
                    let start: String = String::from_utf8_lossy(&response.body).chars().take(120).collect();
                    FetchOutcome::Body(DeliveryBody::Failed {
                        link: Some(link.clone()),
                        reason: format!("{} answered, but not with JSON ({e}): {start:?}", response.url),
                    })
                }
            },
            Err(error) => fetch_outcome(&link, &error),
        };
        answers.insert(link, outcome);
    }
}

/// `updated` as RFC 3339 text, the form Atom itself uses (chrono's serde feature is not on).
mod rfc3339 {
    use chrono::{DateTime, FixedOffset};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &DateTime<FixedOffset>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&value.to_rfc3339())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<FixedOffset>, D::Error> {
        let text = String::deserialize(deserializer)?;
        DateTime::parse_from_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}


// ---- the shipped sinks ----

pub mod json_lines;
pub mod webhook;

pub use json_lines::JsonLinesSink;
pub use webhook::{WebhookLimits, WebhookSink};

/// A sink chosen at run time. An enum rather than `Box<dyn Sink>`: `run_sink` is generic, and
/// a closed set of shipped sinks needs no boxing (the same reasoning as the database `Session`).
pub enum AnySink {
    JsonLines(JsonLinesSink),
    /// Boxed: it holds a connection pool, many times a file's size.
    Webhook(Box<WebhookSink>),
}

impl Sink for AnySink {
    async fn deliver(&mut self, batch: &[Delivery]) -> Result<(), SinkError> {
        match self {
            AnySink::JsonLines(sink) => sink.deliver(batch).await,
            AnySink::Webhook(sink) => sink.deliver(batch).await,
        }
    }
}

/// Opens the sink `spec` describes: `jsonl:PATH` (appended to), `jsonl:-` (standard output) or
/// `webhook:http://host/path` (with [`WebhookLimits::default`]).
pub fn open_sink(spec: &str) -> Result<AnySink, SinkError> {
    match spec.split_once(':') {
        Some(("jsonl", "-")) => Ok(AnySink::JsonLines(JsonLinesSink::stdout())),
        Some(("jsonl", path)) if !path.is_empty() => {
            JsonLinesSink::append_to(path).map(AnySink::JsonLines).map_err(|e| SinkError::permanent(format!("cannot open {path} to append JSON lines: {e}")))
        }
        Some(("webhook", url)) => WebhookSink::new(url, WebhookLimits::default()).map(|sink| AnySink::Webhook(Box::new(sink))),
        _ => Err(SinkError::permanent(format!("unknown sink {spec:?}: use jsonl:PATH, jsonl:- (standard output) or webhook:http://host/path"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_prefer_the_batchable_link_then_rest_then_fhir() {
        let links = |resource: Option<&str>, rest: Option<&str>, fhir: Option<&str>| EntryContent::Links {
            resource: resource.map(str::to_owned),
            rest: rest.map(str::to_owned),
            fhir: fhir.map(str::to_owned),
        };
        assert_eq!(entry_source(&links(Some("r"), Some("s"), Some("f"))), EntrySource::Feedsync("r".into()));
        assert_eq!(entry_source(&links(None, Some("s"), Some("f"))), EntrySource::Rest("s".into()));
        assert_eq!(entry_source(&links(None, None, Some("f"))), EntrySource::Rest("f".into()));
        assert!(matches!(entry_source(&links(None, None, None)), EntrySource::Nothing(reason) if reason.contains("no resource")));
        assert_eq!(
            entry_source(&EntryContent::Url("http://h/openmrs/ws/rest/v1/patient/x".into())),
            EntrySource::Rest("http://h/openmrs/ws/rest/v1/patient/x".into())
        );
        assert!(matches!(entry_source(&EntryContent::Url("{\"broken".into())), EntrySource::Nothing(reason) if reason.contains("broken")));
    }

    #[test]
    fn the_action_is_the_first_action_tag() {
        let terms = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(action_of(&terms(&["patient", "VOIDED", "location:x"])).as_deref(), Some("VOIDED"));
        assert_eq!(action_of(&terms(&["patient"])), None, "Bahmni's entries carry no action");
        assert_eq!(action_of(&terms(&["location:x", "DELETED"])).as_deref(), Some("DELETED"));
    }

    #[test]
    fn fetch_failures_are_delivered_retried_or_stop_the_run() {
        let status = |status| ClientError::Status { url: "http://h/x".into(), status, message: "m".into() };
        assert!(matches!(fetch_outcome("l", &status(404)), FetchOutcome::Body(DeliveryBody::Failed { link: Some(l), .. }) if l == "l"));
        assert!(matches!(fetch_outcome("l", &status(503)), FetchOutcome::Retry(_)));
        assert!(matches!(fetch_outcome("l", &status(401)), FetchOutcome::Stop(reason) if reason.contains("credentials")));
        assert!(matches!(fetch_outcome("l", &ClientError::Timeout { url: "u".into(), timeout_ms: 1 }), FetchOutcome::Retry(_)));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy { retries_max: 3, retry_delay_ms_first: 100, retry_delay_ms_max: 350 };
        assert_eq!((0..5).map(|r| policy.delay_ms(r)).collect::<Vec<_>>(), [100, 200, 350, 350, 350]);
        assert_eq!(policy.delay_ms(u32::MAX), 350, "no overflow");
    }

    #[test]
    fn deliveries_serialize_flat_and_read_back() {
        let delivery = Delivery {
            entry_id: "tag:atomfeed.ict4h.org:1".into(),
            feed_url: "http://h/ws/atomfeed/patient/recent".into(),
            updated: DateTime::parse_from_rfc3339("2024-01-01T08:01:00.500+02:00").unwrap(),
            action: Some("UPDATED".into()),
            categories: vec!["patient".into(), "UPDATED".into()],
            body: DeliveryBody::Rest { link: "http://h/r".into(), json: serde_json::json!({"uuid": "p"}) },
        };
        let json = serde_json::to_value(&delivery).unwrap();
        assert_eq!(json["rest"]["json"]["uuid"], "p");
        assert_eq!(json["updated"], "2024-01-01T08:01:00.500+02:00");
        assert!(json.get("body").is_none(), "flattened: {json}");
        assert_eq!(serde_json::from_value::<Delivery>(json).unwrap(), delivery);
        let failed = Delivery { body: DeliveryBody::Failed { link: None, reason: "r".into() }, ..delivery };
        assert_eq!(serde_json::from_str::<Delivery>(&serde_json::to_string(&failed).unwrap()).unwrap(), failed);
    }
}

#[cfg(test)]
mod shipped_tests {
    use super::*;

    #[test]
    fn sinks_open_from_their_description() {
        assert!(matches!(open_sink("jsonl:-"), Ok(AnySink::JsonLines(_))));
        assert!(matches!(open_sink("webhook:http://127.0.0.1:9/hook"), Ok(AnySink::Webhook(_))));
        for bad in ["jsonl:", "webhook:https://h/", "webhook:not a url", "kafka:topic", "out.jsonl"] {
            let error = open_sink(bad).err().unwrap_or_else(|| panic!("{bad} opened"));
            assert!(!error.retryable, "{bad}: {error}");
        }
        let dir = std::env::temp_dir().join(format!("feedsync_open_sink_{}", std::process::id()));
        assert!(open_sink(&format!("jsonl:{}", dir.join("missing/out.jsonl").display())).is_err(), "a folder that does not exist");
        std::fs::create_dir_all(&dir).unwrap();
        assert!(matches!(open_sink(&format!("jsonl:{}", dir.join("out.jsonl").display())), Ok(AnySink::JsonLines(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
