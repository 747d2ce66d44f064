//! `feedsync-demo` end to end, as a user runs it: the binary with a seed, a short duration and
//! a free port. While it runs, the parent's feeds (and the dashboard, once it exists) answer;
//! when it has stopped by itself, its databases show the network did what the story told:
//! the parent holds every facility's patients, each facility holds only its own plus the
//! patient it fetched, the two facilities' edits left a conflict record, the offline
//! facility's USB transfer was imported, and the seed decided who was registered.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use feedsync_sim::publisher::http;
use feedsync_sim::network::{assert_parent_holds, compare_dbs, one_text, patient_uuids};
use feedsync_sim::clinic::{self, Clinic, FACILITIES};
use feedsync_db::{Database, Value};
use feedsync_node::exchange;
use feedsync_sim::testdb::{Source, TestDatabase, skip_or_fail, unique_name};

static DEMO: std::sync::LazyLock<std::path::PathBuf> = std::sync::LazyLock::new(|| feedsync_tests::binary("feedsync-demo"));
/// Setup, 20 seconds of simulation and the last sync, on a busy machine in a debug build.
const RUN_SECONDS_MAX: u64 = 300;

/// The demo's standard output, line by line, read on a thread so the test can wait with a
/// deadline.
struct Running {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        // Without an admin token the dashboard answers this machine, as the test is.
        let mut child = Command::new(&*DEMO)
            .args(args)
            .env_remove("FEEDSYNC_ADMIN_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the demo binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Running { child, lines, seen: Vec::new() }
    }

    /// Lines until one satisfies `wanted` (returned), or a panic with everything seen.
    fn wait_for(&mut self, what: &str, wanted: impl Fn(&str) -> bool, deadline: Instant) -> String {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    println!("demo| {line}");
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!("no {what} within the deadline; the demo said:\n{}", self.seen.join("\n"));
                }
                Err(RecvTimeoutError::Disconnected) => panic!("the demo ended before {what}:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// Every remaining line, then the exit status.
    fn finish(&mut self, deadline: Instant) -> std::process::ExitStatus {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    println!("demo| {line}");
                    self.seen.push(line);
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!("the demo did not stop by itself; it said:\n{}", self.seen.join("\n"));
                }
            }
        }
        self.child.wait().expect("the demo's exit status")
    }

    fn said(&self, text: &str) -> bool {
        self.seen.iter().any(|l| l.contains(text))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn listening_address(line: &str) -> SocketAddr {
    line.strip_prefix("listening on http://").and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("not an address line: {line}"))
}

fn sqlite(dir: &Path, node: &str) -> Database {
    Database::from_url(&format!("sqlite://{}", dir.join(format!("{node}.sqlite")).display())).unwrap()
}

async fn texts(db: &Database, sql: &str, params: &[Value]) -> BTreeSet<String> {
    let mut session = db.session().await.unwrap();
    session.query(sql, params).await.unwrap().iter().filter_map(|r| r.values.first().and_then(|v| v.to_text())).collect()
}

async fn patients_with_prefix(db: &Database, prefix: &str) -> BTreeSet<String> {
    let sql = "SELECT pe.uuid FROM patient_identifier pi JOIN person pe ON pe.person_id = pi.patient_id WHERE pi.identifier LIKE ?";
    texts(db, sql, &[format!("{prefix}-%").into()]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_on_sqlite_tells_its_story_and_leaves_consistent_databases() {
    let dir: PathBuf = std::env::temp_dir().join(unique_name("feedsync_demo_test"));
    let seed = "5";
    let mut demo = Running::start(&[
        "--dir",
        dir.to_str().unwrap(),
        "--seed",
        seed,
        "--duration",
        "20",
        "--speed",
        "20",
        "--round-interval-ms",
        "1000",
        "--listen",
        "127.0.0.1:0",
    ]);
    let deadline = Instant::now() + Duration::from_secs(RUN_SECONDS_MAX);
    let addr = listening_address(&demo.wait_for("address line", |l| l.starts_with("listening on http://"), deadline));
    assert!(demo.said("feedsync demo: a parent and 3 children"));

    // While it runs, the parent serves its feeds; the clinics' patients appear in them.
    let all = http(addr, "GET", "/ws/atomfeed/all/recent", &[], None).await;
    assert_eq!(all.status, 200, "{}", all.text());
    assert!(all.text().contains("<feed"), "{}", all.text());
    demo.wait_for("the clinics opening", |l| l.starts_with("the clinics open"), deadline);
    let mut patient_feed_has_entries = false;
    for _ in 0..60 {
        let page = http(addr, "GET", "/ws/atomfeed/patient/recent", &[], None).await;
        if page.status == 200 && page.text().contains("<entry>") {
            patient_feed_has_entries = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(patient_feed_has_entries, "no patient reached the parent's patient feed within 30 seconds");
    // The dashboard: /dashboard sends the browser to /dashboard/, whose page calls the admin
    // API; its overview shows the three facilities.
    let dashboard = http(addr, "GET", "/dashboard", &[], None).await;
    assert_eq!(dashboard.status, 308, "{}", dashboard.text());
    assert_eq!(dashboard.headers.get("location").map(String::as_str), Some("/dashboard/"));
    let page = http(addr, "GET", "/dashboard/", &[], None).await;
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(page.text().to_lowercase().contains("<html"), "{}", page.text());
    let overview = http(addr, "GET", "/ws/feedsync/admin/overview", &[], None).await;
    assert_eq!(overview.status, 200, "{}", overview.text());
    for name in ["kigali-hc", "zomba-dh", "beira-cs"] {
        assert!(overview.text().contains(name), "the dashboard's overview lacks {name}: {}", overview.text());
    }

    let status = demo.finish(deadline);
    assert!(status.success(), "the demo exited with {status}");
    for scene in [
        "==> patient ",
        " moves to kigali-hc",
        "searches the parent for",
        "==> zomba-dh and kigali-hc both edit",
        "==> beira-cs goes offline",
        "==> beira-cs is still offline: a USB stick",
        "==> beira-cs is back online",
        "==> stopping",
        "every facility is in step with the parent",
        "stopped. The databases stay where they are:",
    ] {
        assert!(demo.said(scene), "the demo never said {scene:?}");
    }
    assert!(!demo.said("could not finish"), "a scene failed");
    assert!(!demo.said("could not save"), "a clinic action failed");

    let parent = sqlite(&dir, "parent");
    let sites = [("kigali-hc", "KGL"), ("zomba-dh", "ZMB"), ("beira-cs", "BRA")];
    let at_parent = patient_uuids(&parent).await;
    let mut registered_total = 0;
    for (name, prefix) in sites {
        let db = sqlite(&dir, name);
        // The parent holds every row of every facility, with equal values.
        assert_parent_holds(&compare_dbs(&db, &parent).await, name);
        let here = patient_uuids(&db).await;
        assert!(here.is_subset(&at_parent), "{name} holds patients the parent lacks");
        // Each facility holds its own registrations and the patients it fetched, nothing else.
        let own = patients_with_prefix(&parent, prefix).await;
        assert!(!own.is_empty(), "{name} registered nobody");
        registered_total += own.len();
        let fetched = texts(&parent, "SELECT patient_uuid FROM feedsync_audit WHERE actor = ? AND action = 'patient-fetch'", &[name.into()]).await;
        let expected: BTreeSet<String> = own.union(&fetched).cloned().collect();
        assert_eq!(here, expected, "{name}'s patients are its own registrations and what it fetched");
    }
    assert_eq!(at_parent.len(), registered_total, "the parent's patients are exactly the facilities' registrations");

    // The moving scene: kigali-hc fetched one zomba-dh patient, who is at both.
    let fetched = texts(&parent, "SELECT patient_uuid FROM feedsync_audit WHERE actor = 'kigali-hc' AND action = 'patient-fetch'", &[]).await;
    assert_eq!(fetched.len(), 1, "kigali-hc fetched one patient: {fetched:?}");
    let moved = fetched.into_iter().next().unwrap();
    assert!(patients_with_prefix(&parent, "ZMB").await.contains(&moved), "the moved patient was registered at zomba-dh");
    assert!(patient_uuids(&sqlite(&dir, "zomba-dh")).await.contains(&moved));
    let visits_at_kigali = "SELECT COUNT(*) FROM visit v JOIN person pe ON pe.person_id = v.patient_id JOIN location l ON l.location_id = v.location_id \
         WHERE pe.uuid = ? AND l.name = 'Kimironko Health Centre'";
    assert_ne!(one_text(&parent, visits_at_kigali, &[moved.as_str().into()]).await.as_deref(), Some("0"), "the moved patient was seen at kigali-hc");

    // The editing scene: a conflict at the parent on the moved patient's middle name, with
    // kigali-hc's value kept in it and zomba-dh's everywhere.
    let mut session = parent.session().await.unwrap();
    let conflicts = exchange::list_conflicts(&mut session, true, 1_000).await.unwrap();
    drop(session);
    let conflict =
        conflicts.iter().find(|c| c.peer == "kigali-hc" && c.table == "person_name").unwrap_or_else(|| panic!("no conflict from kigali-hc: {conflicts:#?}"));
    assert_eq!(conflict.fields, vec!["middle_name".to_string()]);
    let middle = "SELECT middle_name FROM person_name WHERE uuid = ?";
    let winner = one_text(&parent, middle, &[conflict.key.as_str().into()]).await;
    assert!(winner.is_some());
    assert_ne!(conflict.child_version.as_ref().unwrap()["middle_name"].as_str(), winner.as_deref(), "the losing value is the one kept in the record");
    for site in ["kigali-hc", "zomba-dh"] {
        assert_eq!(one_text(&sqlite(&dir, site), middle, &[conflict.key.as_str().into()]).await, winner, "{site} has the winning middle name");
    }

    // The USB scene: the parent imported beira-cs's export; the files are where the story said.
    let imports = one_text(&parent, "SELECT COUNT(*) FROM feedsync_audit WHERE actor = 'beira-cs' AND action = 'usb-import'", &[]).await;
    assert_eq!(imports.as_deref(), Some("1"));
    for file in ["beira-cs-export.fsync", "beira-cs-reply.fsync"] {
        assert!(dir.join("usb").join(file).is_file(), "{file} is missing");
    }
    assert!(dir.join("tokens.txt").is_file());

    // The seed decided the story: zomba-dh's first patient is the one a clinic with the same
    // seed registers first on a fresh database holding the same metadata.
    if let Some(fresh) = TestDatabase::create(Source::Sqlite25) {
        clinic::create_metadata(&fresh.database, &FACILITIES[..3].iter().collect::<Vec<_>>()).await.unwrap();
        let mut zomba = Clinic::open(&fresh.database, &FACILITIES[1], seed.parse().unwrap()).await.unwrap();
        let first = zomba.step().await.unwrap();
        let first_at_demo =
            texts(&parent, "SELECT pe.uuid FROM patient_identifier pi JOIN person pe ON pe.person_id = pi.patient_id WHERE pi.identifier = 'ZMB-000001'", &[])
                .await;
        assert_eq!(first_at_demo, BTreeSet::from([first.patient_uuid.unwrap()]), "the same seed registers the same first patient");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Ctrl-C (SIGINT) stops the demo cleanly: the last sync runs, the summary is printed, exit 0.
/// One facility: the scenes that need two say they are skipped, the others play.
#[cfg(unix)]
#[test]
fn ctrl_c_stops_cleanly_and_one_facility_works() {
    let dir = std::env::temp_dir().join(unique_name("feedsync_demo_ctrl_c"));
    let mut demo =
        Running::start(&["--dir", dir.to_str().unwrap(), "--children", "1", "--speed", "40", "--round-interval-ms", "500", "--listen", "127.0.0.1:0"]);
    let deadline = Instant::now() + Duration::from_secs(RUN_SECONDS_MAX);
    demo.wait_for("the USB scene", |l| l.contains("==> kigali-hc is back online"), deadline);
    let pid = demo.child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let status = demo.finish(deadline);
    assert!(status.success(), "after Ctrl-C the demo exited with {status}");
    for line in ["(skipped: a patient moving", "==> kigali-hc goes offline", "==> stopping", "stopped. The databases stay where they are:"] {
        assert!(demo.said(line), "the demo never said {line:?}");
    }
    assert!(demo.said(&format!("  kigali-hc    {}", dir.join("kigali-hc.sqlite").display())), "the summary names the database files");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn help_explains_every_option_and_the_scenes() {
    let out = Command::new(&*DEMO).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for option in ["--seed", "--children", "--speed", "--dir", "--listen", "--mysql", "--dump", "--duration", "--round-interval-ms"] {
        assert!(help.contains(option), "--help lacks {option}:\n{help}");
    }
    for words in ["moves to kigali-hc", "conflict", "offline", "USB", "Ctrl-C", "feedsync_demo_parent"] {
        assert!(help.contains(words), "--help never mentions {words:?}:\n{help}");
    }
}

#[test]
fn bad_options_say_what_to_do() {
    let run = |args: &[&str]| {
        let out = Command::new(&*DEMO).args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let dir = std::env::temp_dir().join(unique_name("feedsync_demo_bad"));
    let dir = dir.to_str().unwrap();
    let (code, err) = run(&["--children", "13", "--dir", dir]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("1 to 12"), "{err}");
    let (code, err) = run(&["--speed", "0", "--dir", dir]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--speed"), "{err}");
    let (code, err) = run(&["--dump", "x.sql"]);
    assert_eq!(code, Some(2), "--dump needs --mysql: {err}");
    // A MariaDB nobody listens at: one line saying so, and the way out.
    let dump = std::env::temp_dir().join(unique_name("feedsync_demo_dump"));
    std::fs::write(&dump, "-- empty").unwrap();
    let (code, err) = run(&["--mysql", "mysql://root@127.0.0.1:1", "--dump", dump.to_str().unwrap(), "--dir", dir]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not reachable") && err.contains("leave out --mysql"), "{err}");
    let (code, err) = run(&["--mysql", "mysql://root@127.0.0.1:3306/openmrs", "--dump", dump.to_str().unwrap(), "--dir", dir]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("without a database"), "{err}");
    let _ = std::fs::remove_file(&dump);
    let _ = std::fs::remove_dir_all(dir);
}

/// The same demo on MariaDB databases loaded from the real dump (skipped without MariaDB or
/// the dump, failed under CI=true). Uses the fixed database names `feedsync_demo_*`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_on_mariadb() {
    let server = std::env::var("FEEDSYNC_TEST_MYSQL").unwrap_or_else(|_| feedsync_sim::testdb::DEFAULT_TEST_MYSQL.into());
    let dump = feedsync_sim::testdb::dumps_dir().join("openmrs-2.5-fhir2.sql");
    if !dump.is_file() {
        skip_or_fail(&format!("the OpenMRS dump {} is missing", dump.display()));
        return;
    }
    let probe = Database::from_url(&format!("{server}/information_schema")).unwrap();
    if let Err(e) = probe.session().await {
        skip_or_fail(&format!("MariaDB at {server} is not usable: {e}"));
        return;
    }
    probe.close().await;
    let dir = std::env::temp_dir().join(unique_name("feedsync_demo_mariadb"));
    let mut demo = Running::start(&[
        "--dir",
        dir.to_str().unwrap(),
        "--children",
        "2",
        // A bound only: the test stops it (Ctrl-C) once the conflict scene has played.
        "--duration",
        "120",
        "--speed",
        "15",
        "--round-interval-ms",
        "1000",
        "--listen",
        "127.0.0.1:0",
        "--mysql",
        &server,
        "--dump",
        dump.to_str().unwrap(),
    ]);
    let deadline = Instant::now() + Duration::from_secs(RUN_SECONDS_MAX);
    let addr = listening_address(&demo.wait_for("address line", |l| l.starts_with("listening on http://"), deadline));
    assert_eq!(http(addr, "GET", "/ws/atomfeed/all/recent", &[], None).await.status, 200);
    // On a busy machine ten seconds may hold fewer actions than the scenes need: wait for the
    // conflict scene, then stop the demo as an operator would (Ctrl-C), if it is still running.
    #[cfg(unix)]
    {
        demo.wait_for("the conflict scene", |l| l.contains("both edit"), deadline);
        let _ = Command::new("kill").args(["-INT", &demo.child.id().to_string()]).status();
    }
    let status = demo.finish(deadline);
    assert!(status.success(), "the demo exited with {status}");
    // Writes are slower on MariaDB: the first two scenes are in the first seconds, and the
    // SQLite test plays the whole story.
    assert!(demo.said("moves to kigali-hc") && demo.said("both edit"), "scenes missing");
    assert!(demo.said("mariadb -h "), "the summary shows how to open the databases");
    let db = |node: &str| Database::from_url(&format!("{server}/feedsync_demo_{}", node.replace('-', "_"))).unwrap();
    let parent = db("parent");
    for name in ["kigali-hc", "zomba-dh"] {
        assert_parent_holds(&compare_dbs(&db(name), &parent).await, name);
    }
    let conflicts = {
        let mut session = parent.session().await.unwrap();
        exchange::list_conflicts(&mut session, true, 100).await.unwrap()
    };
    assert!(!conflicts.is_empty(), "the editing scene left no conflict record");
    drop(parent);
    // The demo keeps its databases for the user to look at; the test does not.
    let admin = Database::from_url(&format!("{server}/information_schema")).unwrap();
    let mut session = admin.session().await.unwrap();
    for node in ["parent", "kigali_hc", "zomba_dh"] {
        session.execute_script(&format!("DROP DATABASE IF EXISTS feedsync_demo_{node}")).await.unwrap();
    }
    drop(session);
    admin.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
