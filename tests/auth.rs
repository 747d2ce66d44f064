//! `[auth] required = true` (the default): feeds, resources and batch fetch answer only a token
//! that may read the category (or a category the operator made anonymous, or whoever the
//! dashboard admits); tokens expire, are revoked, and rotate with an overlap; a subscriber reads
//! a protected feed with its token. Requests here name the server `parent.example`, as one from
//! another machine does (this machine's own requests are the dashboard's, and may read).

use feed_subscriber::client::HttpClient;
use feed_subscriber::reader::FeedReader;
use feedsync_node::auth::{self, Scope};
use feedsync_sim::publisher::{Publisher, http};
use feedsync_sim::testdb::{Source, TestDatabase};
use feedsync_sim::workload::{self, WorkloadConfig};
use feedsync_wire::resource::BATCH_PATH;

async fn status(publisher: &Publisher, method: &str, path: &str, token: Option<&str>, body: Option<&[u8]>) -> u16 {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    headers.push(("host", "parent.example"));
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    http(publisher.addr, method, path, &headers, body).await.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_answer_only_tokens_that_may_read_them() {
    let Some(db) = TestDatabase::create(Source::Sqlite25) else { return };
    let publisher = Publisher::start(&db.database, |c| c.auth.anonymous_categories = vec!["location".into()]).await;
    assert!(publisher.app.config.auth.required, "on by default");
    let mut s = db.database.session().await.unwrap();
    workload::run(&mut s, &WorkloadConfig { seed: 3, ..WorkloadConfig::default() }).await.unwrap();
    publisher.publish().await;
    let patient = s.query("SELECT uuid FROM person WHERE person_id = (SELECT MAX(patient_id) FROM patient)", &[]).await.unwrap()[0].text("uuid").unwrap();
    let obs = s.query("SELECT uuid FROM obs ORDER BY obs_id DESC LIMIT 1", &[]).await.unwrap()[0].text("uuid").unwrap();
    let (patient_link, obs_link) = (format!("/ws/feedsync/resource/patient/{patient}"), format!("/ws/feedsync/resource/obs/{obs}"));

    let reader = auth::create_token(&mut s, "clinic-reports", &[Scope::Feeds], &["patient".into()], None).await.unwrap();
    let replica = auth::create_token(&mut s, "district-replica", &[Scope::Replica], &[], Some(86_400)).await.unwrap();
    let monitor = auth::create_token(&mut s, "monitor", &[Scope::Metrics], &[], None).await.unwrap();
    let p = &publisher;
    // No token, a wrong one, a token without a reading scope.
    for token in [None, Some("fst_nope"), Some(monitor.as_str())] {
        let expected = if token == Some(monitor.as_str()) { 403 } else { 401 };
        assert_eq!(status(p, "GET", "/ws/atomfeed/patient/recent", token, None).await, expected, "{token:?}");
        assert_eq!(status(p, "GET", &patient_link, token, None).await, expected, "{token:?}");
        assert_eq!(status(p, "GET", "/ws/atomfeed", token, None).await, 200, "the feed list: a category is anonymous");
    }
    // A token reads its categories only; `all` needs every category.
    assert_eq!(status(p, "GET", "/ws/atomfeed/patient/recent", Some(&reader), None).await, 200);
    assert_eq!(status(p, "GET", &patient_link, Some(&reader), None).await, 200);
    assert_eq!(status(p, "GET", &obs_link, Some(&reader), None).await, 403);
    assert_eq!(status(p, "GET", "/ws/atomfeed/observation/recent", Some(&reader), None).await, 403);
    assert_eq!(status(p, "GET", "/ws/atomfeed/all/recent", Some(&reader), None).await, 403);
    assert_eq!(status(p, "GET", "/ws/atomfeed/all/recent", Some(&replica), None).await, 200);
    let batch = format!("{{\"resources\": [\"{patient_link}\", \"{obs_link}\"]}}");
    assert_eq!(status(p, "POST", BATCH_PATH, Some(&reader), Some(batch.as_bytes())).await, 403, "one link outside its categories refuses the batch");
    assert_eq!(status(p, "POST", BATCH_PATH, Some(&replica), Some(batch.as_bytes())).await, 200);
    // The anonymous category, and health, need nothing.
    assert_eq!(status(p, "GET", "/ws/atomfeed/location/recent", None, None).await, 200);
    assert_eq!(status(p, "GET", "/ws/feedsync/health", None, None).await, 200);

    // A subscriber reads the protected feed with its token (sent to the feed's own server only).
    let feed = format!("http://{}/ws/atomfeed/all/recent", p.addr);
    let client = HttpClient::default().with_bearer(&replica).with_credentials_only_to(std::slice::from_ref(&feed));
    let batch = FeedReader::new(client, feed.clone()).read_after(None, 50).await.expect("the replica token reads the feed");
    assert!(!batch.entries.is_empty());
    // This machine's own requests are the dashboard's: they read without a token (the
    // dashboard shows the feeds), unless they come through a proxy.
    assert_eq!(http(p.addr, "GET", "/ws/atomfeed/all/recent", &[], None).await.status, 200);
    assert_eq!(http(p.addr, "GET", "/ws/atomfeed/all/recent", &[("x-forwarded-for", "41.186.0.9")], None).await.status, 401);
    drop(feed);

    // Rotation with an overlap, then without; revocation; expiry.
    let second = auth::rotate_token(&mut s, "clinic-reports", 3_600).await.unwrap();
    assert_eq!(status(p, "GET", "/ws/atomfeed/patient/recent", Some(&reader), None).await, 200, "the old value within the overlap");
    assert_eq!(status(p, "GET", "/ws/atomfeed/patient/recent", Some(&second), None).await, 200);
    let third = auth::rotate_token(&mut s, "clinic-reports", 0).await.unwrap();
    assert_eq!(status(p, "GET", "/ws/atomfeed/patient/recent", Some(&second), None).await, 401, "rotated without overlap");
    assert_eq!(status(p, "GET", "/ws/atomfeed/patient/recent", Some(&third), None).await, 200);
    auth::revoke_token(&mut s, "clinic-reports").await.unwrap();
    assert_eq!(status(p, "GET", "/ws/atomfeed/patient/recent", Some(&third), None).await, 401, "revoked");
    assert!(auth::rotate_token(&mut s, "clinic-reports", 0).await.is_err(), "a revoked token cannot rotate");
    s.execute("UPDATE feedsync_token SET expires_at = '2020-01-01 00:00:00.000' WHERE name = 'district-replica'", &[]).await.unwrap();
    assert_eq!(status(p, "GET", "/ws/atomfeed/all/recent", Some(&replica), None).await, 401, "expired");
    // Only hashes are kept.
    let stored: Vec<String> = s.query("SELECT token_hash FROM feedsync_token", &[]).await.unwrap().iter().filter_map(|r| r.text("token_hash")).collect();
    assert!(stored.iter().all(|h| h.len() == 64 && !h.starts_with("fst_")), "{stored:?}");
    let names: Vec<String> = auth::list_tokens(&mut s).await.unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["clinic-reports", "district-replica", "monitor"]);
}

/// An OpenMRS request as another machine sends it: HTTP Basic or a cookie.
async fn openmrs(publisher: &Publisher, method: &str, path: &str, user_password: Option<&str>, cookie: Option<&str>) -> feedsync_sim::publisher::HttpReply {
    let basic = user_password.map(|up| format!("Basic {}", feedsync_http::client::base64(up.as_bytes())));
    let cookie = cookie.map(|c| format!("JSESSIONID={c}"));
    let mut headers: Vec<(&str, &str)> = vec![("host", "parent.example")];
    headers.extend(basic.iter().map(|b| ("authorization", b.as_str())));
    headers.extend(cookie.iter().map(|c| ("cookie", c.as_str())));
    http(publisher.addr, method, path, &headers, None).await
}

/// OpenMRS's own form for a new password: lowercase hex SHA-512 of password + salt.
fn openmrs_hash(password: &str, salt: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha512::digest(format!("{password}{salt}").as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

async fn openmrs_users_log_in_as_they_do_at_openmrs(source: Source) {
    let Some(db) = TestDatabase::create(source) else { return };
    let publisher = Publisher::start(&db.database, |_| {}).await;
    publisher.publish().await;
    let p = &publisher;
    let feed = "/ws/atomfeed/patient/recent";
    // The reference dump's admin (System Developer), with its real password hash.
    assert_eq!(openmrs(p, "GET", feed, Some("admin:Admin123"), None).await.status, 200, "admin reads the feeds");
    let wrong = openmrs(p, "GET", feed, Some("admin:Admin124"), None).await;
    assert_eq!(wrong.status, 401);
    assert!(!wrong.text().contains("entry") && wrong.text().contains("not accepted"), "a wrong password reveals nothing: {}", wrong.text());
    assert_eq!(openmrs(p, "GET", feed, Some("nobody:Admin123"), None).await.status, 401, "an unknown user is refused the same way");

    // A clerk without the privilege, then with it through an inherited role.
    let mut s = db.database.session().await.unwrap();
    s.execute(
        "INSERT INTO users (system_id, username, password, salt, creator, date_created, person_id, retired, uuid) VALUES ('3-4', 'clerk', ?, 'pepper', 1, '2020-01-01 00:00:00', 1, 0, '0d5e5a3c-0000-4000-8000-00000000c1e7')",
        &[openmrs_hash("Clerk123", "pepper").into()],
    )
    .await
    .unwrap();
    let clerk_id = s.query("SELECT user_id FROM users WHERE username = 'clerk'", &[]).await.unwrap()[0].get("user_id").clone();
    for (role, uuid) in [("Data Clerk", "0d5e5a3c-0000-4000-8000-0000000000r1"), ("Feed Readers", "0d5e5a3c-0000-4000-8000-0000000000r2")] {
        s.execute("INSERT INTO role (role, description, uuid) VALUES (?, 'test', ?)", &[role.into(), uuid.into()]).await.unwrap();
    }
    s.execute("INSERT INTO user_role (user_id, role) VALUES (?, 'Data Clerk')", &[clerk_id]).await.unwrap();
    assert_eq!(openmrs(p, "GET", feed, Some("clerk:Clerk123"), None).await.status, 403, "right password, no privilege");
    assert_eq!(openmrs(p, "GET", feed, Some("3-4:Clerk123"), None).await.status, 403, "the system id logs in too");
    s.execute("INSERT INTO privilege (privilege, description, uuid) VALUES ('Get Feedsync Feeds', 'read the feeds', '0d5e5a3c-0000-4000-8000-0000000000p1')", &[]).await.unwrap();
    s.execute("INSERT INTO role_privilege (role, privilege) VALUES ('Feed Readers', 'Get Feedsync Feeds')", &[]).await.unwrap();
    s.execute("INSERT INTO role_role (parent_role, child_role) VALUES ('Feed Readers', 'Data Clerk')", &[]).await.unwrap();
    assert_eq!(openmrs(p, "GET", feed, Some("clerk:Clerk123"), None).await.status, 200, "the privilege through an inherited role");

    // The session route, as the atomfeed client logs in: Basic once, then the cookie.
    let login = openmrs(p, "GET", "/ws/rest/v1/session", Some("clerk:Clerk123"), None).await;
    assert_eq!(login.status, 200, "{}", login.text());
    assert_eq!(login.json()["authenticated"], true);
    let set_cookie = login.headers.get("set-cookie").cloned().unwrap_or_default();
    assert!(set_cookie.starts_with("JSESSIONID=") && set_cookie.contains("HttpOnly"), "{set_cookie}");
    let id = set_cookie["JSESSIONID=".len()..].split(';').next().unwrap().to_owned();
    assert_eq!(login.json()["sessionId"], id.as_str());
    assert_eq!(openmrs(p, "GET", feed, None, Some(&id)).await.status, 200, "the cookie reads the feeds");
    assert_eq!(openmrs(p, "GET", feed, None, Some("made-up")).await.status, 401, "a made-up cookie does not");
    assert_eq!(openmrs(p, "GET", "/ws/rest/v1/session", None, None).await.json()["authenticated"], false);
    assert_eq!(openmrs(p, "DELETE", "/ws/rest/v1/session", None, Some(&id)).await.status, 204);
    assert_eq!(openmrs(p, "GET", feed, None, Some(&id)).await.status, 401, "logged out");

    // Wrong passwords slow the user down, whoever sends them; then even the right one waits.
    for _ in 0..5 {
        assert_eq!(openmrs(p, "GET", feed, Some("clerk:guess"), None).await.status, 401);
    }
    assert_eq!(openmrs(p, "GET", feed, Some("clerk:Clerk123"), None).await.status, 429, "the user waits out the window");

    // Logins can be turned off.
    let off = Publisher::start(&db.database, |c| c.auth.openmrs_logins = false).await;
    assert_eq!(openmrs(&off, "GET", feed, Some("admin:Admin123"), None).await.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openmrs_users_log_in_as_they_do_at_openmrs_sqlite() {
    openmrs_users_log_in_as_they_do_at_openmrs(Source::Sqlite25).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openmrs_users_log_in_as_they_do_at_openmrs_mariadb() {
    openmrs_users_log_in_as_they_do_at_openmrs(Source::MySql25).await;
}

/// A user made centrally, as OpenMRS makes one: SHA-512 of password + salt.
async fn create_central_user(s: &mut feedsync_db::Session, username: &str, uuid: &str, password: &str) {
    s.execute(
        "INSERT INTO users (system_id, username, password, salt, secret_question, creator, date_created, person_id, retired, uuid) VALUES (?, ?, ?, 'nutmeg', 'first school?', 1, '2020-01-01 00:00:00', 1, 0, ?)",
        &[format!("{username}-1").into(), username.into(), openmrs_hash(password, "nutmeg").into(), uuid.into()],
    )
    .await
    .unwrap();
}

async fn credentials_go_to_replicas_only(source: Source) {
    let (Some(a), Some(b)) = (TestDatabase::create(source), TestDatabase::create(source)) else { return };
    let publisher = Publisher::start(&a.database, |_| {}).await;
    let mut s = a.database.session().await.unwrap();
    let uuid = "7c1a0000-0000-4000-8000-0000000c3e71";
    create_central_user(&mut s, "central", uuid, "Central123").await;
    publisher.publish().await;
    let feeds = auth::create_token(&mut s, "reports", &[Scope::Feeds], &[], None).await.unwrap();
    let replica = auth::create_token(&mut s, "district-copy", &[Scope::Replica], &[], None).await.unwrap();
    let link = format!("/ws/feedsync/resource/users/{uuid}");
    let read = |token: String| {
        let link = link.clone();
        let addr = publisher.addr;
        async move {
            let bearer = format!("Bearer {token}");
            http(addr, "GET", &link, &[("authorization", bearer.as_str()), ("host", "parent.example")], None).await.json()
        }
    };
    let feeds_again = feeds.clone();
    let plain = read(feeds).await;
    assert_eq!(plain["columns"]["username"], "central");
    for column in ["password", "salt", "secret_question", "secret_answer", "activation_key"] {
        assert!(plain["columns"].get(column).is_none(), "a feeds token never sees {column}: {plain}");
    }
    let full = read(replica.clone()).await;
    assert_eq!(full["columns"]["password"].as_str(), Some(openmrs_hash("Central123", "nutmeg").as_str()), "a replica token gets the credentials: {full}");
    assert_ne!(plain["hash"], full["hash"], "each answer's hash describes what it holds");

    // A replica following the feeds with its token: the user logs in there with the same password.
    let client = HttpClient::default().with_bearer(&replica);
    let subscriber = feed_subscriber::engine::Subscriber::new(b.database.clone(), feedsync_sim::network::model_of(&b.database).await, client, String::new());
    subscriber.sync_until_caught_up(&[format!("http://{}/ws/atomfeed/all/recent", publisher.addr)]).await.unwrap();
    let mut sb = b.database.session().await.unwrap();
    let at_replica = feedsync_node::openmrs_login::user(&mut sb, "central").await.unwrap().expect("the user arrived");
    assert!(feedsync_node::openmrs_login::password_matches(&at_replica.password, at_replica.salt.as_deref(), "Central123"), "logs in at the replica");
    let comparison = feedsync_sim::network::compare_dbs(&a.database, &b.database).await;
    assert_eq!(comparison.differences(), 0, "users rows equal, credentials included: {comparison}");

    // The same with a feeds token: the user arrives without credentials, and the comparison
    // sees it (the check above can fail).
    let Some(c) = TestDatabase::create(source) else { return };
    let client = HttpClient::default().with_bearer(&feeds_again);
    let subscriber = feed_subscriber::engine::Subscriber::new(c.database.clone(), feedsync_sim::network::model_of(&c.database).await, client, String::new());
    subscriber.sync_until_caught_up(&[format!("http://{}/ws/atomfeed/all/recent", publisher.addr)]).await.unwrap();
    let mut sc = c.database.session().await.unwrap();
    let at_c = feedsync_node::openmrs_login::user(&mut sc, "central").await.unwrap().expect("the user arrived");
    assert_eq!(at_c.password, "", "no credentials through a feeds token");
    let comparison = feedsync_sim::network::compare_dbs(&a.database, &c.database).await;
    assert_eq!(comparison.table("users").map(|t| t.differing), Some(1), "{comparison}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_go_to_replicas_only_sqlite() {
    credentials_go_to_replicas_only(Source::Sqlite25).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_go_to_replicas_only_mariadb() {
    credentials_go_to_replicas_only(Source::MySql25).await;
}
