//! Subscriber acceptance: a publisher on database A, the subscriber applying into database B,
//! both loaded from the same real dump; after an OpenMRS-style workload at A, B holds exactly
//! A's data compared by identity. Also: a poisoned change fails alone and recovers; the
//! subscriber killed at many points converges with no duplicates.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use feedsync_sim::publisher::Publisher;
use feed_subscriber::client::HttpClient;
use feed_subscriber::engine::Subscriber;
use feed_subscriber::state;
use feedsync_node::compare::{CompareOptions, Comparison, compare};
use feedsync_db::Database;
use feedsync_core::model::Model;
use feedsync_core::profile::Profile;
use feedsync_sim::testdb::{Source, TestDatabase};
use feedsync_sim::workload::{self, WorkloadConfig};

async fn model_of(database: &Database) -> Model {
    feedsync_node::load_model(database, &Profile::openmrs()).await.unwrap()
}

fn subscriber(database: &Database, model: Model) -> Subscriber {
    Subscriber::new(database.clone(), model, HttpClient::default(), String::new())
}

async fn compare_ab(a: &Database, b: &Database) -> Comparison {
    let (model_a, model_b) = (model_of(a).await, model_of(b).await);
    let mut sa = a.session().await.unwrap();
    let mut sb = b.session().await.unwrap();
    compare(&mut sa, &model_a, &mut sb, &model_b, &CompareOptions::default()).await.unwrap()
}

/// Makes B's auto-increment counters differ from A's, so local ids really need translating.
async fn diverge_local_ids(b: &Database) {
    let mut s = b.session().await.unwrap();
    for i in 0..3 {
        s.execute(
            "INSERT INTO location (name, creator, date_created, retired, uuid) VALUES (?, 1, '2020-01-01 00:00:00', 0, ?)",
            &[format!("Local outpost {i}").into(), format!("00000000-0000-4000-8000-00000000b00{i}").into()],
        )
        .await
        .unwrap();
        s.execute("DELETE FROM location WHERE uuid = ?", &[format!("00000000-0000-4000-8000-00000000b00{i}").into()]).await.unwrap();
    }
}

async fn a_to_b(source_a: Source, source_b: Source) -> Option<Comparison> {
    let test_a = TestDatabase::create(source_a)?;
    let test_b = TestDatabase::create(source_b)?;
    let publisher = Publisher::start(&test_a.database, |c| c.feed.page_size = 100).await;
    let mut sa = test_a.database.session().await.unwrap();
    workload::run(&mut sa, &WorkloadConfig { seed: 21, ..WorkloadConfig::default() }).await.unwrap();
    publisher.publish().await;
    diverge_local_ids(&test_b.database).await;

    let feed = format!("http://{}/ws/atomfeed/all/recent", publisher.addr);
    let sub = subscriber(&test_b.database, model_of(&test_b.database).await);
    let progress = sub.sync_until_caught_up(std::slice::from_ref(&feed)).await.expect("sync");
    assert!(progress.entries_read > 500, "{progress:?}");
    let mut sb = test_b.database.session().await.unwrap();
    let queued = state::all_changes(&mut sb, 100).await.unwrap();
    let comparison = compare_ab(&test_a.database, &test_b.database).await;

    // Applying again changes nothing: a second round reads nothing new, and a fresh marker-less
    // replay of the whole feed leaves the data as it was.
    let again = sub.sync_until_caught_up(std::slice::from_ref(&feed)).await.unwrap();
    assert_eq!((again.entries_read, again.applied), (0, 0));
    sb.execute("DELETE FROM feedsync_sub_feed", &[]).await.unwrap();
    let replay = sub.sync_until_caught_up(std::slice::from_ref(&feed)).await.unwrap();
    assert_eq!(replay.entries_read, progress.entries_read);
    let after_replay = compare_ab(&test_a.database, &test_b.database).await;
    assert_eq!(after_replay.differences(), comparison.differences(), "replaying the feed changes nothing");
    if source_a == source_b {
        assert!(queued.is_empty(), "nothing left queued: {queued:?}");
    }
    Some(comparison)
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_25_to_25_converges() {
    let Some(c) = a_to_b(Source::MySql25, Source::MySql25).await else { return };
    assert!(c.is_equal(), "{c}");
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_198_to_198_converges() {
    let Some(c) = a_to_b(Source::MySql198, Source::MySql198).await else { return };
    assert!(c.is_equal(), "{c}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_to_sqlite_converges() {
    let Some(c) = a_to_b(Source::Sqlite25, Source::Sqlite25).await else { return };
    assert!(c.is_equal(), "{c}");
}

/// Across versions the rows still arrive; columns 1.9.8 lacks are reported, not fatal.
#[tokio::test(flavor = "multi_thread")]
async fn mariadb_25_to_198_reports_differences_without_failing() {
    let Some(c) = a_to_b(Source::MySql25, Source::MySql198).await else { return };
    // B keeps its own 1.9.8 metadata (rows only in B); everything A has arrived unchanged.
    for t in &c.tables {
        assert_eq!((t.only_in_a, t.differing), (0, 0), "{}: every row of A arrived with equal values\n{c}", t.table);
    }
    for table in ["person", "patient", "encounter", "obs", "visit"] {
        assert!(c.table(table).unwrap().rows_a > 0, "{table} compared");
    }
    let obs = c.table("obs").unwrap();
    assert!(obs.columns_only_in_a.iter().any(|col| col == "status"), "obs.status is 2.x only: {:?}", obs.columns_only_in_a);
}

/// A location-like clash: an encounter type whose unique name B already holds under another
/// uuid. It fails alone with the database's reason; what depends on it waits; everything else
/// applies; after the clash is fixed, a retry applies it and its dependents.
#[tokio::test(flavor = "multi_thread")]
async fn a_poisoned_change_fails_alone_and_recovers() {
    let Some(test_a) = TestDatabase::create(Source::MySql25) else { return };
    let Some(test_b) = TestDatabase::create(Source::MySql25) else { return };
    let publisher = Publisher::start(&test_a.database, |_| {}).await;
    let mut sa = test_a.database.session().await.unwrap();
    workload::run(&mut sa, &WorkloadConfig { seed: 5, ..WorkloadConfig::default() }).await.unwrap();
    publisher.publish().await;
    let mut sb = test_b.database.session().await.unwrap();
    let clash = "00000000-0000-4000-8000-0000000c1a54";
    sb.execute(
        "INSERT INTO encounter_type (name, description, creator, date_created, retired, uuid) VALUES ('Consultation', 'local', 1, '2020-01-01 00:00:00', 0, ?)",
        &[clash.into()],
    )
    .await
    .unwrap();

    let feed = format!("http://{}/ws/atomfeed/all/recent", publisher.addr);
    let sub = subscriber(&test_b.database, model_of(&test_b.database).await);
    sub.sync_until_caught_up(std::slice::from_ref(&feed)).await.unwrap();
    let queued = state::all_changes(&mut sb, 1000).await.unwrap();
    let failed: Vec<_> = queued.iter().filter(|c| c.status == state::Status::Failed).collect();
    assert_eq!(failed.len(), 1, "only the clashing row fails: {queued:#?}");
    assert_eq!(failed[0].table_name, "encounter_type");
    assert!(failed[0].reason.as_deref().unwrap().contains("Consultation"), "the exact reason: {:?}", failed[0].reason);
    assert!(queued.iter().any(|c| c.table_name == "encounter" && c.waits_for.iter().any(|w| w.starts_with("encounter_type/"))));
    let c = compare_ab(&test_a.database, &test_b.database).await;
    for table in ["person", "patient", "visit", "person_name", "patient_identifier"] {
        let t = c.table(table).unwrap();
        assert_eq!(t.only_in_a, 0, "{table} applied although encounters wait:\n{c}");
    }
    assert!(c.table("encounter").unwrap().only_in_a > 0, "encounters wait for their type");

    // The operator's view: status names the failed change, its exact reason, and what waits.
    let status = Command::new(&*SUBSCRIBER).args(["status", "--json", "--db", &test_b.url]).output().unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let changes = json["changes"].as_array().unwrap();
    assert!(changes.iter().any(|c| c["status"] == "failed" && c["reason"].as_str().unwrap().contains("Consultation")), "{json}");
    assert!(changes.iter().any(|c| c["status"] == "waiting" && c["waits_for"].as_array().is_some_and(|w| !w.is_empty())));
    assert_eq!(json["feeds"][0]["feed"], feed.as_str());
    let text = Command::new(&*SUBSCRIBER).args(["status", "--db", &test_b.url]).output().unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("1 failed"), "{}", String::from_utf8_lossy(&text.stdout));
    let no_reason = Command::new(&*SUBSCRIBER).args(["skip", "--db", &test_b.url, "--change", "1", "--reason", " "]).output().unwrap();
    assert_eq!(no_reason.status.code(), Some(1), "skipping needs a reason");

    // The operator renames the local type; a retry applies the change and its dependents.
    sb.execute("UPDATE encounter_type SET name = 'Consultation (local)' WHERE uuid = ?", &[clash.into()]).await.unwrap();
    state::retry_now(&mut sb, None).await.unwrap();
    sub.sync_until_caught_up(std::slice::from_ref(&feed)).await.unwrap();
    assert!(state::all_changes(&mut sb, 10).await.unwrap().is_empty(), "queue drained");
    let c = compare_ab(&test_a.database, &test_b.database).await;
    let t = c.table("encounter_type").unwrap();
    assert_eq!((t.only_in_a, t.only_in_b, t.differing), (0, 1, 0), "only B's own local type differs:\n{c}");
    assert_eq!(c.differences(), 1, "{c}");
}

static SUBSCRIBER: std::sync::LazyLock<std::path::PathBuf> = std::sync::LazyLock::new(|| feedsync_tests::binary("feed-subscriber"));
const SUBSCRIBER_KILLS: usize = 50;

fn spawn(program: &std::path::Path, args: &[&str]) -> std::process::Child {
    Command::new(program).args(args).env("RUST_LOG", "warn").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
}

/// The subscriber process killed (SIGKILL) at 50 points while applying, and the publisher
/// process killed while serving every fifth round: after restarts B converges to A with no
/// duplicate rows.
#[tokio::test(flavor = "multi_thread")]
async fn subscriber_and_publisher_killed_at_many_points_converge() {
    let Some(test_a) = TestDatabase::create(Source::MySql25) else { return };
    let Some(test_b) = TestDatabase::create(Source::MySql25) else { return };
    let mut sa = test_a.database.session().await.unwrap();
    workload::run(&mut sa, &WorkloadConfig { seed: 33, patients: 20, ..WorkloadConfig::default() }).await.unwrap();
    let install = Command::new(feed_publisher_binary()).args(["install", "--db", &test_a.url]).output().unwrap();
    assert!(install.status.success(), "{}", String::from_utf8_lossy(&install.stderr));
    diverge_local_ids(&test_b.database).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let serve = ["serve", "--db", test_a.url.as_str(), "--listen", listen.as_str(), "--page-size", "50"];
    let mut publisher = spawn(feed_publisher_binary(), &serve);
    let feed = format!("http://{listen}/ws/atomfeed/all/recent");

    let mut delays = feedsync_core::rng::SplitMix64::new(0x5EED);
    let mut finished_early = 0;
    for kill in 0..SUBSCRIBER_KILLS {
        let mut child = spawn(&SUBSCRIBER, &["run", "--once", "--feed", &feed, "--db", &test_b.url]);
        let wait = Duration::from_millis(20 + delays.below(400));
        let started = Instant::now();
        while started.elapsed() < wait {
            if child.try_wait().unwrap().is_some() {
                finished_early += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = child.kill();
        child.wait().unwrap();
        if kill % 5 == 4 {
            let _ = publisher.kill();
            publisher.wait().unwrap();
            publisher = spawn(feed_publisher_binary(), &serve);
        }
    }
    // Let the publisher publish everything, then one clean run.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if tokio::net::TcpStream::connect(&listen).await.is_err() {
            assert!(Instant::now() < deadline, "publisher did not come back");
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let health = feedsync_sim::publisher::get(listen.parse().unwrap(), "/ws/feedsync/health").await;
        if health.status == 200 && health.json()["journal_backlog"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "publisher did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = Command::new(&*SUBSCRIBER).args(["run", "--once", "--feed", &feed, "--db", &test_b.url]).output().unwrap();
    let _ = publisher.kill();
    publisher.wait().unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let c = compare_ab(&test_a.database, &test_b.database).await;
    assert!(c.is_equal(), "after {SUBSCRIBER_KILLS} kills ({finished_early} runs finished before their kill):\n{c}");
    assert!(finished_early < SUBSCRIBER_KILLS / 2, "most kills landed while the subscriber was working");
}

fn feed_publisher_binary() -> &'static std::path::Path {
    static PATH: std::sync::LazyLock<std::path::PathBuf> = std::sync::LazyLock::new(|| feedsync_tests::binary("feed-publisher"));
    PATH.as_path()
}

/// Changes the subscriber applies are marked with their origin, and the target's own publisher
/// does not publish them: a child never echoes its parent's data back. Its local changes are
/// published as usual.
#[tokio::test(flavor = "multi_thread")]
async fn applied_changes_are_not_echoed_by_the_local_publisher() {
    let Some(test_a) = TestDatabase::create(Source::Sqlite25) else { return };
    let Some(test_b) = TestDatabase::create(Source::Sqlite25) else { return };
    let publisher_a = Publisher::start(&test_a.database, |_| {}).await;
    let publisher_b = Publisher::start(&test_b.database, |_| {}).await;
    publisher_a.publish().await;
    publisher_b.publish().await;
    let mut sa = test_a.database.session().await.unwrap();
    workload::run(&mut sa, &WorkloadConfig { seed: 9, patients: 3, ..WorkloadConfig::default() }).await.unwrap();
    let published_at_a = publisher_a.publish().await;
    assert!(published_at_a > 50);
    let feed = format!("http://{}/ws/atomfeed/all/recent", publisher_a.addr);
    let sub = subscriber(&test_b.database, model_of(&test_b.database).await);
    let progress = sub.sync_until_caught_up(std::slice::from_ref(&feed)).await.unwrap();
    assert_eq!((progress.applied, progress.queued), (progress.entries_read, 0));
    let mut sb = test_b.database.session().await.unwrap();
    let journaled = sb.query("SELECT COUNT(*) AS n, COUNT(origin) AS marked FROM feedsync_journal", &[]).await.unwrap();
    let (n, marked) = (journaled[0].i64("n").unwrap(), journaled[0].i64("marked").unwrap());
    assert!(n > 0 && n == marked, "every applied write is journaled with its origin ({marked} of {n})");
    let events_before = feedsync_sim::publisher::walk(&publisher_b, "all").await.entries.len();
    assert_eq!(publisher_b.publish().await as i64, n, "consumed");
    assert_eq!(feedsync_sim::publisher::walk(&publisher_b, "all").await.entries.len(), events_before, "nothing echoed");
    sb.execute("UPDATE location SET description = 'edited at B' WHERE location_id = 1", &[]).await.unwrap();
    publisher_b.publish().await;
    let after = feedsync_sim::publisher::walk(&publisher_b, "all").await;
    assert_eq!(after.entries.len(), events_before + 1, "a local change is published");
    assert_eq!(after.entries.last().unwrap().categories[0], "location");
}

/// Bad input at the engine level: a resource the publisher cannot give becomes a failed-event
/// record with the reason (everything else applies); an archived page that changed under the
/// marker stops the feed with a clear error instead of skipping.
#[tokio::test(flavor = "multi_thread")]
async fn missing_resources_are_recorded_and_changed_pages_stop_the_feed() {
    let Some(test_a) = TestDatabase::create(Source::Sqlite25) else { return };
    let Some(test_b) = TestDatabase::create(Source::Sqlite25) else { return };
    let publisher = Publisher::start(&test_a.database, |c| c.feed.page_size = 10).await;
    let mut sa = test_a.database.session().await.unwrap();
    // An entry naming an entity that does not exist: its resource answers 404.
    sa.execute("INSERT INTO feedsync_journal (table_name, action, entity_key) VALUES ('location', 'CREATED', 'no-such-location')", &[])
        .await
        .unwrap();
    sa.execute(
        "INSERT INTO location (name, creator, date_created, retired, uuid) VALUES ('After the gap', 1, '2024-01-01 00:00:00', 0, '00000000-0000-4000-8000-0000000000af')",
        &[],
    )
    .await
    .unwrap();
    publisher.publish().await;
    let feed = format!("http://{}/ws/atomfeed/all/recent", publisher.addr);
    let sub = subscriber(&test_b.database, model_of(&test_b.database).await);
    let progress = sub.sync_until_caught_up(std::slice::from_ref(&feed)).await.unwrap();
    assert_eq!(progress.queued, 1, "{progress:?}");
    let mut sb = test_b.database.session().await.unwrap();
    let queued = state::all_changes(&mut sb, 10).await.unwrap();
    assert_eq!(queued[0].status, state::Status::Failed);
    assert!(queued[0].reason.as_deref().unwrap().contains("no-such-location"), "{:?}", queued[0].reason);
    let after = sb.query("SELECT COUNT(*) AS n FROM location WHERE uuid = '00000000-0000-4000-8000-0000000000af'", &[]).await.unwrap();
    assert_eq!(after[0].i64("n"), Some(1), "the change after the bad one applied");

    // An archived page rewritten behind the subscriber's back: the marker's entry is gone.
    let marker = state::feed_state(&mut sb, &feed).await.unwrap().unwrap();
    let page: i64 = marker.marker_page_url.unwrap().rsplit('/').next().unwrap().parse().unwrap();
    sa.execute("UPDATE feedsync_event SET event_uuid = 'rewritten-' || event_seq WHERE all_page = ?", &[page.into()]).await.unwrap();
    for _ in 0..15 {
        sa.execute("UPDATE location SET description = 'more' WHERE location_id = 1", &[]).await.unwrap();
    }
    publisher.publish().await;
    let err = sub.sync_until_caught_up(std::slice::from_ref(&feed)).await.unwrap_err();
    assert!(!err.is_retryable());
    let message = err.to_string();
    assert!(message.contains(&marker.marker_entry_id.unwrap()), "names the entry: {message}");
    let state_after = state::feed_state(&mut sb, &feed).await.unwrap().unwrap();
    assert!(state_after.last_error.is_some(), "the error is kept for `status`");

    // The operator's way out: forget the marker and read the feed again; nothing is applied twice.
    let reset = Command::new(&*SUBSCRIBER).args(["reset", "--db", &test_b.url, "--feed", &feed]).output().unwrap();
    assert!(reset.status.success(), "{}", String::from_utf8_lossy(&reset.stderr));
    sub.sync_until_caught_up(std::slice::from_ref(&feed)).await.unwrap();
    let c = compare_ab(&test_a.database, &test_b.database).await;
    assert!(c.is_equal(), "{c}");
}
