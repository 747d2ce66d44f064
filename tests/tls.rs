//! TLS end to end with a private CA made by `tls init` (`feed_publisher::tls::init`): a
//! subscriber replicates a publisher over https, a child syncs with its parent over https, a
//! client that does not trust the CA or reaches a name the certificate does not list is refused
//! with a message naming the host and what to do, plain http cannot reach an https server, and
//! a renewed certificate is used without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use feed_publisher::tls::{ServerTls, init};
use feed_subscriber::engine::Subscriber;
use feed_subscriber::network::{ChildNode, HttpParent};
use feedsync_http::{ClientError, ClientLimits, ClientTls, HttpClient, Request};
use feedsync_node::parent as parent_network;
use feedsync_sim::network::{compare_dbs, model_of, one_text, run_workload, trusted_categories};
use feedsync_sim::publisher::{Publisher, http};
use feedsync_sim::testdb::{Source, TestDatabase};

/// A fresh folder with a CA and a certificate for `names`.
fn certificates(label: &str, names: &[&str]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("feedsync-tls-test-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let written = init(&dir, &names, 30).expect("tls init");
    assert!(written.new_ca);
    dir
}

fn trusting(dir: &Path) -> ClientTls {
    ClientTls::new(&[dir.join("ca.pem")], false).expect("the CA loads")
}

fn server_tls(dir: &Path) -> Arc<ServerTls> {
    ServerTls::load(&dir.join("server.pem"), &dir.join("server-key.pem")).expect("the certificate loads")
}

async fn health(client: &HttpClient, url: &str) -> Result<u16, ClientError> {
    client.send_once(Request::new("GET", &format!("{url}/ws/feedsync/health"))).await.map(|r| r.status.as_u16())
}

#[tokio::test]
async fn a_private_ca_secures_the_server_and_refuses_what_it_should() {
    let dir = certificates("refusals", &["127.0.0.1", "localhost"]);
    let db = TestDatabase::create(Source::Sqlite25).expect("sqlite");
    let tls = server_tls(&dir);
    let publisher = Publisher::start_with(&db.database, Some(tls.acceptor().unwrap()), |_| {}).await;
    let port = publisher.addr.port();
    let trusted = HttpClient::new(ClientLimits::default()).with_tls(trusting(&dir));

    assert_eq!(health(&trusted, &format!("https://127.0.0.1:{port}")).await.unwrap(), 200);
    assert_eq!(health(&trusted, &format!("https://localhost:{port}")).await.unwrap(), 200);

    // Not trusting the CA: refused, naming the host and the fix.
    let untrusting = HttpClient::new(ClientLimits::default()).with_tls(ClientTls::new(&[], false).unwrap());
    let refused = health(&untrusting, &format!("https://127.0.0.1:{port}")).await.unwrap_err();
    let message = refused.to_string();
    assert!(matches!(refused, ClientError::Tls { .. }), "{message}");
    assert!(message.contains("127.0.0.1") && message.contains("--ca") && message.contains("does not trust"), "{message}");
    assert!(!refused.is_retryable(), "trying again will not make the certificate trusted");

    // Plain http to the TLS port gets no answer.
    assert!(health(&trusted, &format!("http://127.0.0.1:{port}")).await.is_err());

    // A certificate for another name, signed by the same CA: swapped in without a restart,
    // and then refused for this address.
    let other = std::env::temp_dir().join(format!("feedsync-tls-test-other-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&other);
    std::fs::create_dir_all(&other).unwrap();
    for file in ["ca.pem", "ca-key.pem"] {
        std::fs::copy(dir.join(file), other.join(file)).unwrap();
    }
    let written = init(&other, &["parent.example".to_owned()], 30).unwrap();
    assert!(!written.new_ca, "the CA already in the folder signs");
    std::fs::copy(other.join("server.pem"), dir.join("server.pem")).unwrap();
    std::fs::copy(other.join("server-key.pem"), dir.join("server-key.pem")).unwrap();
    assert!(tls.reload_if_changed(true).unwrap(), "reloaded");
    let fresh = HttpClient::new(ClientLimits::default()).with_tls(trusting(&dir));
    let wrong_name = health(&fresh, &format!("https://127.0.0.1:{port}")).await.unwrap_err().to_string();
    assert!(wrong_name.contains("does not name this host"), "{wrong_name}");

    // A broken new file keeps the old certificate in use.
    std::fs::write(dir.join("server.pem"), "not a certificate").unwrap();
    assert!(tls.reload_if_changed(true).is_err());
    assert!(health(&fresh, &format!("https://127.0.0.1:{port}")).await.unwrap_err().to_string().contains("does not name this host"), "still the last good one");

    // A key that does not go with the certificate is refused at load.
    std::fs::copy(other.join("server.pem"), dir.join("server.pem")).unwrap();
    std::fs::copy(other.join("ca-key.pem"), dir.join("server-key.pem")).unwrap();
    let mismatch = ServerTls::load(&dir.join("server.pem"), &dir.join("server-key.pem")).unwrap_err().to_string();
    assert!(mismatch.contains("does not go with the certificate"), "{mismatch}");
    for d in [&dir, &other] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

async fn replicates_over_https(source: Source) {
    let dir = certificates(&format!("replica-{source:?}"), &["127.0.0.1"]);
    let (Some(a), Some(b)) = (TestDatabase::create(source), TestDatabase::create(source)) else { return };
    let publisher = Publisher::start_with(&a.database, Some(server_tls(&dir).acceptor().unwrap()), |c| c.feed.page_size = 100).await;
    run_workload(&a.database, 7, 6).await;
    publisher.publish().await;
    let client = HttpClient::default().with_tls(trusting(&dir));
    let subscriber = Subscriber::new(b.database.clone(), model_of(&b.database).await, client, String::new());
    let feed = format!("https://127.0.0.1:{}/ws/atomfeed/all/recent", publisher.addr.port());
    let progress = subscriber.sync_until_caught_up(std::slice::from_ref(&feed)).await.expect("sync over https");
    assert!(progress.applied > 50, "{progress:?}");
    let comparison = compare_dbs(&a.database, &b.database).await;
    assert_eq!(comparison.differences(), 0, "the replica equals its source: {comparison}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_subscriber_replicates_over_https_sqlite() {
    replicates_over_https(Source::Sqlite25).await;
}

#[tokio::test]
async fn a_subscriber_replicates_over_https_mariadb() {
    replicates_over_https(Source::MySql25).await;
}

#[tokio::test]
async fn a_child_syncs_with_its_parent_over_https() {
    let dir = certificates("network", &["localhost"]);
    let (Some(parent), Some(child_db)) = (TestDatabase::create(Source::Sqlite25), TestDatabase::create(Source::Sqlite25)) else { return };
    let publisher = Publisher::start_with(&parent.database, Some(server_tls(&dir).acceptor().unwrap()), |_| {}).await;
    let mut s = parent.database.session().await.unwrap();
    let token = parent_network::add_child(&mut s, "north", &trusted_categories(), false).await.unwrap();
    let mut link = HttpParent::new(&format!("https://localhost:{}", publisher.addr.port()), &token);
    link.client = link.client.with_tls(trusting(&dir));
    let child = ChildNode::new(child_db.database.clone(), model_of(&child_db.database).await, link);
    child.prepare().await.unwrap();
    run_workload(&child_db.database, 11, 2).await;
    // A user created at the parent, as OpenMRS makes one (SHA-512 of password + salt).
    let hash: String = {
        use sha2::Digest as _;
        sha2::Sha512::digest(b"Nurse123clove").iter().map(|b| format!("{b:02x}")).collect()
    };
    s.execute(
        "INSERT INTO users (system_id, username, password, salt, creator, date_created, person_id, retired, uuid) VALUES ('9-1', 'nurse', ?, 'clove', 1, '2020-01-01 00:00:00', 1, 0, '7c1a0000-0000-4000-8000-0000000c3e72')",
        &[hash.into()],
    )
    .await
    .unwrap();
    publisher.publish().await;
    let patient = one_text(&child_db.database, "SELECT uuid FROM patient p JOIN person x ON x.person_id = p.patient_id ORDER BY p.patient_id DESC LIMIT 1", &[]).await.unwrap();
    for _ in 0..5 {
        child.round().await.expect("a round over https");
        publisher.publish().await;
    }
    let at_parent = one_text(&parent.database, "SELECT x.uuid FROM person x WHERE x.uuid = ?", &[patient.clone().into()]).await;
    assert_eq!(at_parent.as_deref(), Some(patient.as_str()), "the child's new patient reached the parent over https");
    let mut sc = child_db.database.session().await.unwrap();
    let nurse = feedsync_node::openmrs_login::user(&mut sc, "nurse").await.unwrap().expect("the parent's user reached the child");
    assert!(feedsync_node::openmrs_login::password_matches(&nurse.password, nurse.salt.as_deref(), "Nurse123"), "and logs in there with the same password");

    // The same child without the CA cannot reach its parent, and says why.
    let mut untrusting = HttpParent::new(&format!("https://localhost:{}", publisher.addr.port()), &token);
    untrusting.client = untrusting.client.with_tls(ClientTls::new(&[], false).unwrap());
    let blind = ChildNode::new(child_db.database.clone(), model_of(&child_db.database).await, untrusting);
    let error = blind.round().await.unwrap_err().to_string();
    assert!(error.contains("--ca"), "{error}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn plain_http_allowed_to_the_network_shows_on_the_dashboard() {
    let db = TestDatabase::create(Source::Sqlite25).expect("sqlite");
    let kinds = |overview: serde_json::Value| -> Vec<String> {
        overview["parent"]["problems"].as_array().unwrap().iter().map(|p| p["kind"].as_str().unwrap().to_owned()).collect()
    };
    let insecure = Publisher::start(&db.database, |c| c.server.insecure_http = true).await;
    let overview = http(insecure.addr, "GET", "/ws/feedsync/admin/overview", &[], None).await;
    assert_eq!(overview.status, 200, "{}", overview.text());
    assert!(kinds(overview.json()).contains(&"insecure_http".to_owned()), "{}", overview.text());
    let plain_local = Publisher::start(&db.database, |_| {}).await;
    let overview = http(plain_local.addr, "GET", "/ws/feedsync/admin/overview", &[], None).await;
    assert!(!kinds(overview.json()).contains(&"insecure_http".to_owned()), "loopback-only plain http is not flagged: {}", overview.text());
}
