//! Telling a running OpenMRS that rows changed behind its back. The subscriber writes to
//! OpenMRS's database directly, so OpenMRS's Hibernate cache keeps serving the old person,
//! name or user, and its Lucene search index does not find a newly arrived patient by name or
//! identifier. OpenMRS's REST module has two endpoints for exactly this (openmrs-eip calls them
//! the same way): `POST {openmrs_url}/ws/rest/v1/cleardbcache` and
//! `POST {openmrs_url}/ws/rest/v1/searchindexupdate`, each with a body
//! `{"resource": ..., "subResource": ..., "uuid": ...}`; a null uuid means every row of that
//! kind.
//!
//! Which table needs which call (the same mapping openmrs-eip uses; [`NotifiedTable`]):
//!
//! | table | cleardbcache | searchindexupdate |
//! |---|---|---|
//! | person, patient | person | the person's names, identifiers and attributes, each by uuid |
//! | person_name | person/name | person/name |
//! | person_attribute | person/attribute | person/attribute |
//! | person_address | person/address | (not indexed) |
//! | patient_identifier | (not cached) | patient/identifier |
//! | users | user | (not indexed) |
//!
//! A patient's uuid is its person's. A person row is not itself indexed: its search entries
//! are those of its names, identifiers and attributes, which are looked up in the database
//! (when one is configured). A deleted row cannot be loaded by OpenMRS to be evicted or
//! reindexed, so a deletion notifies the whole kind (uuid null). Evictions are sent before
//! index updates, so reindexing never reads a stale cached object.
//!
//! Notifying never holds up applying: [`Notifier::touched`] only records the row in a queue
//! (a mutex held for a hash insert) and a background task makes the calls. The queue coalesces
//! by row, so a row changed 50 times is notified once. It is bounded by
//! `pending_rows_max` distinct rows; past that, the table with the most pending rows is
//! *widened* to one whole-table notification (uuid null), which covers every row of it. Nothing
//! is ever dropped, memory stays bounded, and a dead OpenMRS costs only coarser calls later
//! (counted in `rows_widened`, with a warning). Calls failing retryably are retried with capped
//! backoff; if OpenMRS stays away the batch goes back into the queue and is tried again after a
//! growing pause. A refused call (wrong credentials, unknown resource) is logged and counted in
//! `calls_failed`, never retried.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use feedsync_db::{Database, DbError};

use crate::client::{ClientLimits, HttpClient};
use crate::sink::RetryPolicy;

pub const CLEAR_CACHE_PATH: &str = "/ws/rest/v1/cleardbcache";
pub const SEARCH_INDEX_PATH: &str = "/ws/rest/v1/searchindexupdate";

/// The tables whose rows OpenMRS caches or indexes. Ordered so that evictions of a person sort
/// before those of its parts (no semantic need; stable logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NotifiedTable {
    Person,
    Patient,
    PersonName,
    PersonAttribute,
    PersonAddress,
    PatientIdentifier,
    Users,
}

/// Where a person's search entries live: what a person or patient change reindexes.
const PERSON_INDEXED_PARTS: [NotifiedTable; 3] = [NotifiedTable::PersonName, NotifiedTable::PatientIdentifier, NotifiedTable::PersonAttribute];

impl NotifiedTable {
    pub fn parse(table: &str) -> Option<NotifiedTable> {
        Some(match table {
            "person" => NotifiedTable::Person,
            "patient" => NotifiedTable::Patient,
            "person_name" => NotifiedTable::PersonName,
            "person_attribute" => NotifiedTable::PersonAttribute,
            "person_address" => NotifiedTable::PersonAddress,
            "patient_identifier" => NotifiedTable::PatientIdentifier,
            "users" => NotifiedTable::Users,
            _ => return None,
        })
    }

    /// The REST resource and sub-resource OpenMRS caches this table's rows under.
    pub fn cache_target(self) -> Option<(&'static str, Option<&'static str>)> {
        match self {
            NotifiedTable::Person | NotifiedTable::Patient => Some(("person", None)),
            NotifiedTable::PersonName => Some(("person", Some("name"))),
            NotifiedTable::PersonAttribute => Some(("person", Some("attribute"))),
            NotifiedTable::PersonAddress => Some(("person", Some("address"))),
            NotifiedTable::Users => Some(("user", None)),
            NotifiedTable::PatientIdentifier => None,
        }
    }

    /// The REST resource and sub-resource OpenMRS indexes this table's rows under; `None` for
    /// person and patient, whose entries are their parts'.
    pub fn index_target(self) -> Option<(&'static str, Option<&'static str>)> {
        match self {
            NotifiedTable::PersonName => Some(("person", Some("name"))),
            NotifiedTable::PersonAttribute => Some(("person", Some("attribute"))),
            NotifiedTable::PatientIdentifier => Some(("patient", Some("identifier"))),
            NotifiedTable::Person | NotifiedTable::Patient | NotifiedTable::PersonAddress | NotifiedTable::Users => None,
        }
    }
}

/// The body both endpoints take.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct OpenmrsPayload {
    pub resource: &'static str,
    #[serde(rename = "subResource")]
    pub sub_resource: Option<&'static str>,
    /// `None`: every row of the kind.
    pub uuid: Option<String>,
}

/// Cache eviction sorts first: it must precede reindexing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    ClearCache,
    SearchIndex,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ClearCache => CLEAR_CACHE_PATH,
            Endpoint::SearchIndex => SEARCH_INDEX_PATH,
        }
    }
}

/// A changed row to notify: `key` is its uuid (a patient's is its person's), `None` for every
/// row of the table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Touch {
    pub table: NotifiedTable,
    pub key: Option<String>,
}

/// The indexed parts of persons, by person uuid: (table, uuid) of each name, identifier and
/// attribute.
pub type PersonParts = HashMap<String, Vec<(NotifiedTable, String)>>;

/// Pure: the calls a batch of touches needs, deduplicated, evictions first. A keyed person or
/// patient reindexes the parts `parts` lists for it (none when no database is configured).
pub fn plan_calls(touches: &[Touch], parts: &PersonParts) -> BTreeSet<(Endpoint, OpenmrsPayload)> {
    let payload = |(resource, sub_resource): (&'static str, Option<&'static str>), uuid: Option<&str>| OpenmrsPayload {
        resource,
        sub_resource,
        uuid: uuid.map(str::to_owned),
    };
    let mut calls = BTreeSet::new();
    for touch in touches {
        let uuid = touch.key.as_deref();
        if let Some(target) = touch.table.cache_target() {
            calls.insert((Endpoint::ClearCache, payload(target, uuid)));
        }
        if let Some(target) = touch.table.index_target() {
            calls.insert((Endpoint::SearchIndex, payload(target, uuid)));
        }
        if matches!(touch.table, NotifiedTable::Person | NotifiedTable::Patient) {
            match uuid {
                Some(person) => {
                    for (part, part_uuid) in parts.get(person).into_iter().flatten() {
                        if let Some(target) = part.index_target() {
                            calls.insert((Endpoint::SearchIndex, payload(target, Some(part_uuid))));
                        }
                    }
                }
                None => {
                    for part in PERSON_INDEXED_PARTS {
                        calls.insert((Endpoint::SearchIndex, payload(part.index_target().expect("parts are indexed"), None)));
                    }
                }
            }
        }
    }
    calls
}

/// What recording one touch did to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pushed {
    Queued,
    /// Already queued, or covered by a whole-table touch.
    Coalesced,
    /// The queue was full: this many keyed rows of one table became one whole-table touch.
    Widened(usize),
}

/// The coalescing queue. Holds at most `rows_max` keyed touches plus one whole-table touch per
/// table.
#[derive(Debug, Default)]
struct Pending {
    order: VecDeque<Touch>,
    present: HashSet<Touch>,
    /// Keyed touches in `order`, kept so a push costs no scan.
    keyed: usize,
    /// Touches of the batch being notified (0: none taken); still pending until it is done.
    in_flight: usize,
}

impl Pending {
    fn push(&mut self, touch: Touch, rows_max: usize) -> Pushed {
        let whole = Touch { table: touch.table, key: None };
        if self.present.contains(&touch) || self.present.contains(&whole) {
            return Pushed::Coalesced;
        }
        if touch.key.is_none() {
            self.remove_keyed(touch.table);
            self.insert(touch);
            return Pushed::Queued;
        }
        if self.keyed < rows_max.max(1) {
            self.insert(touch);
            return Pushed::Queued;
        }
        // Full: widen the table with the most keyed rows (the new one included).
        let mut per_table: HashMap<NotifiedTable, usize> = HashMap::from([(touch.table, 1)]);
        for queued in self.order.iter().filter(|t| t.key.is_some()) {
            *per_table.entry(queued.table).or_default() += 1;
        }
        let (table, rows) = per_table.into_iter().max_by_key(|&(table, rows)| (rows, std::cmp::Reverse(table))).expect("at least the new touch");
        self.remove_keyed(table);
        self.insert(Touch { table, key: None });
        if table != touch.table {
            self.insert(touch);
        }
        Pushed::Widened(rows)
    }

    fn insert(&mut self, touch: Touch) {
        self.keyed += usize::from(touch.key.is_some());
        self.present.insert(touch.clone());
        self.order.push_back(touch);
    }

    fn remove_keyed(&mut self, table: NotifiedTable) {
        self.order.retain(|t| t.table != table || t.key.is_none());
        self.present.retain(|t| t.table != table || t.key.is_none());
        self.keyed = self.order.iter().filter(|t| t.key.is_some()).count();
    }

    fn take(&mut self, rows_max: usize) -> Vec<Touch> {
        let n = self.order.len().min(rows_max.max(1));
        let batch: Vec<Touch> = self.order.drain(..n).collect();
        for touch in &batch {
            self.present.remove(touch);
        }
        self.keyed -= batch.iter().filter(|t| t.key.is_some()).count();
        self.in_flight = batch.len();
        batch
    }
}

/// How the notifier reaches OpenMRS, and its limits.
#[derive(Clone)]
pub struct NotifierConfig {
    /// OpenMRS's base URL, e.g. `http://127.0.0.1:8080/openmrs` (the endpoints' paths follow).
    pub openmrs_url: String,
    /// `user:password` of an OpenMRS user allowed to manage the cache and search index.
    pub user_password: Option<String>,
    /// The OpenMRS database, to find a changed person's names, identifiers and attributes for
    /// the search index. Without it, person and patient changes only evict the cache.
    pub database: Option<Database>,
    /// Distinct rows queued before the busiest table is widened to one whole-table call.
    pub pending_rows_max: usize,
    /// Rows turned into calls at a time (the calls are deduplicated per batch).
    pub batch_rows_max: usize,
    /// Wait after the first touch before taking a batch, so the rows of one commit (a patient,
    /// its names, identifiers, attributes) share a batch and their common calls are made once.
    pub batch_gather_ms: u64,
    /// Longest one call may take.
    pub request_timeout_ms: u64,
    /// Retries of one call; also the pause between rounds while OpenMRS stays away.
    pub retry: RetryPolicy,
}

impl NotifierConfig {
    pub fn new(openmrs_url: impl Into<String>) -> NotifierConfig {
        NotifierConfig {
            openmrs_url: openmrs_url.into(),
            user_password: None,
            database: None,
            pending_rows_max: 10_000,
            batch_rows_max: 200,
            batch_gather_ms: 100,
            request_timeout_ms: 10_000,
            retry: RetryPolicy { retries_max: 3, retry_delay_ms_first: 500, retry_delay_ms_max: 30_000 },
        }
    }
}

impl std::fmt::Debug for NotifierConfig {
    // By hand so the password never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifierConfig")
            .field("openmrs_url", &self.openmrs_url)
            .field("basic_auth", &self.user_password.is_some())
            .field("database", &self.database)
            .field("pending_rows_max", &self.pending_rows_max)
            .field("batch_rows_max", &self.batch_rows_max)
            .field("batch_gather_ms", &self.batch_gather_ms)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("retry", &self.retry)
            .finish()
    }
}

/// Counters since the notifier started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotifierStats {
    /// Rows queued or being notified, and not notified yet.
    pub rows_pending: usize,
    /// Touches that found their row already queued.
    pub rows_coalesced: u64,
    /// Keyed rows folded into whole-table calls because the queue was full.
    pub rows_widened: u64,
    pub calls_sent: u64,
    pub calls_retried: u64,
    /// Calls OpenMRS refused (not retried; see the log for why).
    pub calls_failed: u64,
    /// Batches put back in the queue because OpenMRS stayed away.
    pub batches_requeued: u64,
}

#[derive(Default)]
struct Counters {
    rows_coalesced: AtomicU64,
    rows_widened: AtomicU64,
    calls_sent: AtomicU64,
    calls_retried: AtomicU64,
    calls_failed: AtomicU64,
    batches_requeued: AtomicU64,
}

struct Shared {
    pending: Mutex<Pending>,
    pending_rows_max: usize,
    wake: tokio::sync::Notify,
    stopping: AtomicBool,
    counters: Counters,
}

impl Shared {
    fn push(&self, touch: Touch) {
        let pushed = self.pending.lock().expect("notifier queue lock").push(touch, self.pending_rows_max);
        match pushed {
            Pushed::Queued => {}
            Pushed::Coalesced => {
                self.counters.rows_coalesced.fetch_add(1, Ordering::Relaxed);
            }
            Pushed::Widened(rows) => {
                self.counters.rows_widened.fetch_add(rows as u64, Ordering::Relaxed);
                tracing::warn!(rows, pending_rows_max = self.pending_rows_max, "OpenMRS notification queue full: one table's rows become a whole-table call");
            }
        }
        self.wake.notify_one();
    }

    fn is_idle(&self) -> bool {
        let pending = self.pending.lock().expect("notifier queue lock");
        pending.order.is_empty() && pending.in_flight == 0
    }

    fn stats(&self) -> NotifierStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let c = &self.counters;
        NotifierStats {
            rows_pending: {
                let pending = self.pending.lock().expect("notifier queue lock");
                pending.order.len() + pending.in_flight
            },
            rows_coalesced: load(&c.rows_coalesced),
            rows_widened: load(&c.rows_widened),
            calls_sent: load(&c.calls_sent),
            calls_retried: load(&c.calls_retried),
            calls_failed: load(&c.calls_failed),
            batches_requeued: load(&c.batches_requeued),
        }
    }
}

/// Records changed rows for notification; cheap to clone, safe to call from any task.
#[derive(Clone)]
pub struct Notifier {
    shared: Arc<Shared>,
}

/// Owns the background task; [`NotifierHandle::drain`] ends it.
pub struct NotifierHandle {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Notifier {
    /// Starts the background task on the current tokio runtime (panics outside one).
    pub fn new(config: NotifierConfig) -> (Notifier, NotifierHandle) {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            pending_rows_max: config.pending_rows_max.max(1),
            wake: tokio::sync::Notify::new(),
            stopping: AtomicBool::new(false),
            counters: Counters::default(),
        });
        let limits = ClientLimits { request_timeout_ms: config.request_timeout_ms, response_bytes_max: 1 << 20, ..ClientLimits::default() };
        let mut client = crate::client::subscriber_client(limits);
        if let Some(user_password) = &config.user_password {
            client = client.with_basic_auth(user_password).with_credentials_only_to(&[config.openmrs_url.as_str()]);
        }
        let task = tokio::spawn(work(shared.clone(), client, config));
        (Notifier { shared: shared.clone() }, NotifierHandle { shared, task })
    }

    /// A row of `table` with identity `key` was written (call after the commit). Tables
    /// OpenMRS neither caches nor indexes are ignored, so it may be called for every row.
    pub fn touched(&self, table: &str, key: &str) {
        if let Some(table) = NotifiedTable::parse(table) {
            self.shared.push(Touch { table, key: Some(key.to_owned()) });
        }
    }

    /// A row was deleted: OpenMRS can no longer load it, so its whole kind is notified.
    pub fn deleted(&self, table: &str, _key: &str) {
        if let Some(table) = NotifiedTable::parse(table) {
            self.shared.push(Touch { table, key: None });
        }
    }

    pub fn stats(&self) -> NotifierStats {
        self.shared.stats()
    }
}

/// How often [`NotifierHandle::drain`] looks whether the queue is empty.
const DRAIN_POLL_MS: u64 = 10;

impl NotifierHandle {
    /// Waits up to `timeout_ms` for everything queued to be notified, then stops the task.
    /// Rows still pending then (OpenMRS away) are reported in the stats and a warning: OpenMRS
    /// may serve them stale until its cache expires or it restarts.
    pub async fn drain(self, timeout_ms: u64) -> NotifierStats {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        while !self.shared.is_idle() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(DRAIN_POLL_MS)).await;
        }
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
        self.task.abort();
        let _ = self.task.await;
        let stats = self.shared.stats();
        if stats.rows_pending > 0 {
            tracing::warn!(
                rows = stats.rows_pending,
                "OpenMRS was not told about every changed row before stopping; its cache may show old data until it restarts"
            );
        }
        stats
    }
}

async fn work(shared: Arc<Shared>, client: HttpClient, config: NotifierConfig) {
    let base = config.openmrs_url.trim_end_matches('/').to_owned();
    let mut rounds_failed = 0;
    loop {
        if shared.is_idle() {
            if shared.stopping.load(Ordering::SeqCst) {
                return;
            }
            shared.wake.notified().await;
            if !shared.stopping.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(config.batch_gather_ms)).await;
            }
        }
        let batch = shared.pending.lock().expect("notifier queue lock").take(config.batch_rows_max);
        if batch.is_empty() {
            continue;
        }
        let result = notify_batch(&client, &config, &base, &shared.counters, &batch).await;
        {
            let mut pending = shared.pending.lock().expect("notifier queue lock");
            pending.in_flight = 0;
            if result.is_err() {
                // Calls already made are made again: evicting or reindexing twice is harmless.
                for touch in batch {
                    pending.push(touch, shared.pending_rows_max);
                }
            }
        }
        let Err(error) = result else {
            rounds_failed = 0;
            continue;
        };
        shared.counters.batches_requeued.fetch_add(1, Ordering::Relaxed);
        let delay_ms = config.retry.delay_ms(rounds_failed);
        rounds_failed += 1;
        tracing::warn!(%error, delay_ms, "cannot notify OpenMRS; the rows stay queued");
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
}

/// Makes the calls of one batch. `Err` when OpenMRS stays away (the batch is tried again).
async fn notify_batch(client: &HttpClient, config: &NotifierConfig, base: &str, counters: &Counters, batch: &[Touch]) -> Result<(), String> {
    let parts = match &config.database {
        Some(database) => person_parts(database, batch).await.map_err(|e| format!("cannot read changed persons' names, identifiers and attributes: {e}"))?,
        None => PersonParts::new(),
    };
    for (endpoint, payload) in plan_calls(batch, &parts) {
        let url = format!("{base}{}", endpoint.path());
        let mut backoff = config.retry.backoff();
        loop {
            match client.post_json(&url, &payload).await {
                Ok(_) => {
                    counters.calls_sent.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(error) if error.is_retryable() && backoff.wait().await => {
                    counters.calls_retried.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) if error.is_retryable() => return Err(error.to_string()),
                Err(error) => {
                    counters.calls_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%error, resource = payload.resource, sub_resource = ?payload.sub_resource, uuid = ?payload.uuid, "OpenMRS refused a cache or search index notification");
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Parts one person may have before the rest are ignored: far above any real person, it only
/// bounds a query against a corrupt database.
const PERSON_PARTS_MAX: usize = 1_000;

/// Looks up the indexed parts of the persons (and patients) touched by uuid.
async fn person_parts(database: &Database, batch: &[Touch]) -> Result<PersonParts, DbError> {
    let persons: BTreeSet<&str> =
        batch.iter().filter(|t| matches!(t.table, NotifiedTable::Person | NotifiedTable::Patient)).filter_map(|t| t.key.as_deref()).collect();
    let mut parts = PersonParts::new();
    if persons.is_empty() {
        return Ok(parts);
    }
    let mut session = database.session().await?;
    // A patient's identifiers hang off patient_id, which is its person_id.
    let sql = format!(
        "SELECT 'person_name' AS part, n.uuid FROM person_name n JOIN person p ON p.person_id = n.person_id WHERE p.uuid = ? \
         UNION ALL SELECT 'patient_identifier', i.uuid FROM patient_identifier i JOIN person p ON p.person_id = i.patient_id WHERE p.uuid = ? \
         UNION ALL SELECT 'person_attribute', a.uuid FROM person_attribute a JOIN person p ON p.person_id = a.person_id WHERE p.uuid = ? \
         LIMIT {PERSON_PARTS_MAX}"
    );
    for person in persons {
        let rows = session.query(&sql, &[person.into(), person.into(), person.into()]).await?;
        let found = rows.iter().filter_map(|row| Some((NotifiedTable::parse(&row.text("part")?)?, row.text("uuid")?))).collect();
        parts.insert(person.to_owned(), found);
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed(table: NotifiedTable, key: &str) -> Touch {
        Touch { table, key: Some(key.into()) }
    }

    fn bodies(calls: &BTreeSet<(Endpoint, OpenmrsPayload)>) -> Vec<String> {
        calls.iter().map(|(e, p)| format!("{:?} {}", e, serde_json::to_string(p).unwrap())).collect()
    }

    #[test]
    fn tables_map_to_openmrs_resources_as_openmrs_eip_does() {
        use NotifiedTable::*;
        let touches = [keyed(PersonName, "n1"), keyed(PatientIdentifier, "i1"), keyed(Users, "u1"), keyed(PersonAddress, "a1"), keyed(PersonAttribute, "t1")];
        assert_eq!(
            bodies(&plan_calls(&touches, &PersonParts::new())),
            [
                r#"ClearCache {"resource":"person","subResource":"address","uuid":"a1"}"#,
                r#"ClearCache {"resource":"person","subResource":"attribute","uuid":"t1"}"#,
                r#"ClearCache {"resource":"person","subResource":"name","uuid":"n1"}"#,
                r#"ClearCache {"resource":"user","subResource":null,"uuid":"u1"}"#,
                r#"SearchIndex {"resource":"patient","subResource":"identifier","uuid":"i1"}"#,
                r#"SearchIndex {"resource":"person","subResource":"attribute","uuid":"t1"}"#,
                r#"SearchIndex {"resource":"person","subResource":"name","uuid":"n1"}"#,
            ]
        );
        for table in ["obs", "encounter", "person_merge_log", ""] {
            assert_eq!(NotifiedTable::parse(table), None, "{table}");
        }
    }

    #[test]
    fn a_person_or_patient_reindexes_its_parts_and_dedupes() {
        use NotifiedTable::*;
        let parts = PersonParts::from([("p1".to_string(), vec![(PersonName, "n1".to_string()), (PatientIdentifier, "i1".to_string())])]);
        let touches = [keyed(Person, "p1"), keyed(Patient, "p1"), keyed(PersonName, "n1"), keyed(Patient, "p2")];
        assert_eq!(
            bodies(&plan_calls(&touches, &parts)),
            [
                r#"ClearCache {"resource":"person","subResource":null,"uuid":"p1"}"#,
                r#"ClearCache {"resource":"person","subResource":null,"uuid":"p2"}"#,
                r#"ClearCache {"resource":"person","subResource":"name","uuid":"n1"}"#,
                r#"SearchIndex {"resource":"patient","subResource":"identifier","uuid":"i1"}"#,
                r#"SearchIndex {"resource":"person","subResource":"name","uuid":"n1"}"#,
            ],
            "p2's parts are unknown: only its cache entry"
        );
        let whole = plan_calls(&[Touch { table: Patient, key: None }], &PersonParts::new());
        assert_eq!(whole.len(), 4, "{:?}", bodies(&whole));
        assert!(whole.iter().all(|(_, p)| p.uuid.is_none()));
    }

    #[test]
    fn the_queue_coalesces_rows_and_widens_the_busiest_table_when_full() {
        use NotifiedTable::*;
        let mut queue = Pending::default();
        assert_eq!(queue.push(keyed(PersonName, "a"), 4), Pushed::Queued);
        assert_eq!(queue.push(keyed(PersonName, "a"), 4), Pushed::Coalesced);
        queue.push(keyed(PersonName, "b"), 4);
        queue.push(keyed(Users, "u"), 4);
        queue.push(keyed(PersonName, "c"), 4);
        assert_eq!(queue.push(keyed(PersonName, "d"), 4), Pushed::Widened(4), "a, b, c and d");
        let tables: Vec<(NotifiedTable, Option<&str>)> = queue.order.iter().map(|t| (t.table, t.key.as_deref())).collect();
        assert_eq!(tables, [(Users, Some("u")), (PersonName, None)]);
        assert_eq!(queue.push(keyed(PersonName, "e"), 4), Pushed::Coalesced, "covered by the whole table");
        queue.push(Touch { table: Users, key: None }, 4);
        assert_eq!(queue.order.len(), 2, "a whole-table touch replaces that table's rows");

        let mut queue = Pending::default();
        for i in 0..10_000 {
            queue.push(keyed(if i % 3 == 0 { Users } else { PatientIdentifier }, &i.to_string()), 100);
            assert!(queue.order.len() <= 100 + 7 && queue.order.len() == queue.present.len());
            assert_eq!(queue.keyed, queue.order.iter().filter(|t| t.key.is_some()).count());
        }
        let batch = queue.take(1_000);
        assert!(queue.order.is_empty() && queue.present.is_empty() && queue.keyed == 0);
        assert!(batch.len() <= 107 && queue.in_flight == batch.len());
    }
}
