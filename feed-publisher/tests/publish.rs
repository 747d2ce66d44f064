//! Publisher acceptance on real OpenMRS schemas: an OpenMRS-style workload's every committed
//! change appears in the feeds in commit order per entity; every resource equals its row;
//! archived pages never change; feedparser accepts every page; overlapping transactions are
//! both published; bad input gets clear errors.

use std::collections::{BTreeMap, BTreeSet};

use feedsync_sim::publisher::{Publisher, check_resource, feedparser_check, http, walk};
use feedsync_wire::resource::{BatchResponse, resource_path};
use feedsync_sim::testdb::{Source, TestDatabase};
use feedsync_sim::workload::{self, WorkloadConfig};

const PAGE_SIZE: u32 = 40;

async fn workload_is_published(source: Source) {
    let Some(test) = TestDatabase::create(source) else { return };
    let publisher = Publisher::start(&test.database, |c| c.feed.page_size = PAGE_SIZE).await;
    let snapshot_events = publisher.publish().await;
    assert!(snapshot_events > 100, "the dump's metadata is snapshotted ({snapshot_events})");

    let mut session = test.database.session().await.unwrap();
    let config = WorkloadConfig { seed: 7, ..WorkloadConfig::default() };
    let log = workload::run(&mut session, &config).await.expect("workload");
    let writes: Vec<_> = log.writes().cloned().collect();
    let published = publisher.publish().await;
    assert_eq!(published, writes.len(), "one event per committed row write");

    let all = walk(&publisher, "all").await;
    assert_eq!(all.entries.len(), snapshot_events + writes.len());
    let ids: BTreeSet<&str> = all.entries.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), all.entries.len(), "entry ids are unique");
    for (n, bytes) in &all.pages {
        let entries = all.entries.iter().filter(|e| e.page == *n).count();
        assert!(entries as u32 <= PAGE_SIZE);
        if *n < all.open_page {
            assert_eq!(entries as u32, PAGE_SIZE, "archived page {n} is full");
        }
        assert!(!bytes.is_empty());
    }

    // Per entity, the feed holds the workload's writes in commit order.
    let workload_entries = &all.entries[snapshot_events..];
    feedsync_sim::publisher::assert_writes_published(workload_entries, &writes);

    // Category feeds hold exactly the all feed's entries of their category, in order.
    let categories: BTreeSet<String> = all.entries.iter().map(|e| e.categories[0].clone()).collect();
    for category in ["patient", "observation", "person_name", "encounter", "visit"] {
        assert!(categories.contains(category), "workload touched {category}");
    }
    for category in &categories {
        let feed = walk(&publisher, category).await;
        let expected: Vec<&str> = all.entries.iter().filter(|e| &e.categories[0] == category).map(|e| e.id.as_str()).collect();
        let got: Vec<&str> = feed.entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(got, expected, "category {category}");
    }

    // Patient data carries the patient's uuid as a filter tag.
    let obs = workload_entries.iter().find(|e| e.categories[0] == "observation").unwrap();
    assert!(obs.categories.iter().any(|c| c.starts_with("patient:")), "{:?}", obs.categories);

    // Every current entity's resource equals its row; deleted ones answer 410.
    let mut last_action: BTreeMap<(String, String), (&str, String)> = BTreeMap::new();
    for e in &all.entries {
        last_action.insert(e.identity(), (e.action(), e.resource_link()));
    }
    let links: Vec<String> = last_action.values().filter(|(a, _)| *a != "DELETED").map(|(_, l)| l.clone()).collect();
    let mut checked = 0;
    for chunk in links.chunks(300) {
        let body = serde_json::to_vec(&serde_json::json!({ "resources": chunk })).unwrap();
        let reply = http(publisher.addr, "POST", "/ws/feedsync/resources", &[("Accept-Encoding", "gzip")], Some(&body)).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let batch: BatchResponse = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(batch.resources.len(), chunk.len());
        for item in batch.resources {
            assert_eq!(item.status, 200, "{item:?}");
            let resource = serde_json::to_value(item.resource.unwrap()).unwrap();
            check_resource(&mut session, publisher.model(), &resource).await.unwrap();
            checked += 1;
        }
    }
    assert_eq!(checked, links.len());
    for (_, link) in last_action.values().filter(|(a, _)| *a == "DELETED") {
        let reply = publisher.get(link).await;
        assert_eq!(reply.status, 410, "{link}: {}", reply.text());
        assert_eq!(reply.json()["deleted"], true);
    }
    // A hard delete by plain SQL, whoever wrote it: its resource answers 410 with a tombstone.
    let gone = "00000000-0000-4000-8000-0000000000aa";
    session
        .execute("INSERT INTO location (name, creator, date_created, retired, uuid) VALUES ('Closed HC', 1, '2024-01-01 00:00:00', 0, ?)", &[gone.into()])
        .await
        .unwrap();
    session.execute("DELETE FROM location WHERE uuid = ?", &[gone.into()]).await.unwrap();
    assert_eq!(publisher.publish().await, 2);
    let reply = publisher.get(&resource_path("", "location", gone)).await;
    assert_eq!(reply.status, 410, "{}", reply.text());
    assert_eq!(reply.json()["key"], gone);

    feedparser_check(&all.pages);

    // More writes: archived pages stay byte-identical, with strong ETags.
    let more = workload::run(&mut session, &WorkloadConfig { seed: 8, patients: 3, ..WorkloadConfig::default() }).await.unwrap();
    assert_eq!(publisher.publish().await, more.writes().count());
    let after = walk(&publisher, "all").await;
    for (n, bytes) in all.pages.iter().filter(|(n, _)| **n < all.open_page) {
        assert_eq!(&after.pages[n], bytes, "archived page {n} changed");
        let reply = publisher.get(&format!("/ws/atomfeed/all/{n}")).await;
        let etag = reply.headers.get("etag").unwrap().clone();
        assert!(!etag.starts_with("W/"), "archived pages have strong ETags");
        assert!(reply.headers["cache-control"].contains("immutable"));
        let revalidated = http(publisher.addr, "GET", &format!("/ws/atomfeed/all/{n}"), &[("If-None-Match", &etag)], None).await;
        assert_eq!(revalidated.status, 304);
    }
    assert_eq!(&after.entries[..all.entries.len()], &all.entries[..], "published entries never move or change");
    let recent = publisher.get("/ws/atomfeed/all/recent").await;
    assert!(recent.headers["etag"].starts_with("W/"), "the open page can still grow");
}

#[tokio::test(flavor = "multi_thread")]
async fn workload_is_published_mariadb_25() {
    workload_is_published(Source::MySql25).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn workload_is_published_mariadb_198() {
    workload_is_published(Source::MySql198).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn workload_is_published_sqlite() {
    workload_is_published(Source::Sqlite25).await;
}

/// The data-gap case: the transaction that took the lower journal number commits after the
/// sequencer has already published a higher one. Both must be published.
#[tokio::test(flavor = "multi_thread")]
async fn late_commit_of_an_earlier_transaction_is_published() {
    let Some(test) = TestDatabase::create(Source::MySql25) else { return };
    let publisher = Publisher::start(&test.database, |_| {}).await;
    publisher.publish().await;
    let insert = "INSERT INTO location (name, creator, date_created, retired, uuid) VALUES (?, 1, '2026-01-01 00:00:00', 0, ?)";
    let mut early = test.database.session().await.unwrap();
    let mut late = test.database.session().await.unwrap();
    early.begin().await.unwrap();
    early.execute(insert, &["Early".into(), "00000000-0000-4000-8000-00000000e001".into()]).await.unwrap();
    late.begin().await.unwrap();
    late.execute(insert, &["Late".into(), "00000000-0000-4000-8000-00000000e002".into()]).await.unwrap();
    late.commit().await.unwrap();
    assert_eq!(publisher.publish().await, 1, "only the committed one is visible");
    early.commit().await.unwrap();
    assert_eq!(publisher.publish().await, 1, "the earlier-numbered one is published once it commits");
    let feed = walk(&publisher, "location").await;
    let keys: Vec<String> = feed.entries.iter().map(|e| e.identity().1).collect();
    let late_pos = keys.iter().position(|k| k.ends_with("e002")).expect("late published");
    let early_pos = keys.iter().position(|k| k.ends_with("e001")).expect("early published");
    assert!(late_pos < early_pos, "published in commit order");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_clear_errors() {
    let Some(test) = TestDatabase::create(Source::Sqlite25) else { return };
    let publisher = Publisher::start(&test.database, |c| c.limits.request_body_bytes_max = 4096).await;
    publisher.publish().await;
    let reply = publisher.get("/ws/atomfeed/no_such_thing/recent").await;
    assert_eq!(reply.status, 404);
    assert!(reply.json()["error"].as_str().unwrap().contains("unknown category"));
    let reply = publisher.get("/ws/atomfeed/location/99").await;
    assert_eq!(reply.status, 404);
    assert!(reply.json()["error"].as_str().unwrap().contains("no page 99"));
    assert_eq!(publisher.get("/ws/atomfeed/location/0").await.status, 404);
    assert_eq!(publisher.get("/ws/atomfeed/location/abc").await.status, 404);
    assert_eq!(publisher.get("/nothing/here").await.status, 404);
    let reply = http(publisher.addr, "POST", "/ws/feedsync/resources", &[], Some(b"{not json")).await;
    assert_eq!(reply.status, 400);
    assert!(reply.json()["error"].as_str().unwrap().contains("not valid JSON"));
    let reply = http(publisher.addr, "POST", "/ws/feedsync/resources", &[], Some(br#"{"resources": 5}"#)).await;
    assert_eq!(reply.status, 400);
    let big = vec![b' '; 10_000];
    let reply = http(publisher.addr, "POST", "/ws/feedsync/resources", &[], Some(&big)).await;
    assert_eq!(reply.status, 413);
    assert!(reply.json()["error"].as_str().unwrap().contains("4096"));
    let many: Vec<String> = (0..1001).map(|i| format!("/x/{i}")).collect();
    let body = serde_json::to_vec(&serde_json::json!({ "resources": many })).unwrap();
    let publisher_big = Publisher::start(&test.database, |_| {}).await;
    let reply = http(publisher_big.addr, "POST", "/ws/feedsync/resources", &[], Some(&body)).await;
    assert_eq!(reply.status, 413);
    assert!(reply.json()["error"].as_str().unwrap().contains("at most 1000"));
    let body = br#"{"resources": ["/not/a/link", "/ws/feedsync/resource/location/nope", "/ws/feedsync/resource/nope/x"]}"#;
    let reply = http(publisher.addr, "POST", "/ws/feedsync/resources", &[], Some(body)).await;
    assert_eq!(reply.status, 200);
    let statuses: Vec<u64> = reply.json()["resources"].as_array().unwrap().iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [400, 404, 404]);
    let reply = http(publisher.addr, "DELETE", "/ws/atomfeed/all/recent", &[], None).await;
    assert_eq!(reply.status, 405);
    // The optional path prefix: both forms answer.
    let prefixed = Publisher::start(&test.database, |c| c.server.path_prefix = "/openmrs".into()).await;
    let reply = prefixed.get("/openmrs/ws/atomfeed/all/recent").await;
    assert_eq!(reply.status, 200);
    assert!(reply.text().contains("/openmrs/ws/atomfeed/all/"));
    let link = resource_path("/openmrs", "location", "8d6c993e-c2cc-11de-8d13-0010c6dffd0f");
    assert_eq!(prefixed.get(&link).await.status, 200);
}
