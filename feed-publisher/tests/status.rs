//! `feed-publisher status` as an operator meets it: JSON that parses into the same `Status` the
//! server serves, text with problems first and what to do, alert thresholds from `--config`,
//! a clear error before `install`; and `install` drawing no progress line when its standard
//! error is not a terminal.

use std::process::Command;

use feedsync_wire::alerts::AlertKind;
use feedsync_node::parent as network;
use feed_publisher::status::Status;
use feedsync_sim::testdb::{Source, TestDatabase, unique_name};

const PUBLISHER: &str = env!("CARGO_BIN_EXE_feed-publisher");

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(PUBLISHER).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_and_text_from_the_command_line() {
    let Some(test) = TestDatabase::create(Source::Sqlite25) else { return };
    let (ok, _, err) = run(&["status", "--db", &test.url]);
    assert!(!ok && err.contains("feed-publisher install"), "before install: {err}");

    let (ok, out, err) = run(&["install", "--db", &test.url]);
    assert!(ok, "{err}");
    assert!(out.contains("snapshot journaled"), "{out}");
    assert!(!err.contains('\r') && !err.contains("\x1b[2K"), "no progress line when stderr is not a terminal: {err:?}");

    let mut s = test.database.session().await.unwrap();
    network::add_child(&mut s, "north", &[], false).await.unwrap();
    let backlog: i64 = s.query("SELECT COUNT(*) AS n FROM feedsync_journal", &[]).await.unwrap()[0].i64("n").unwrap();
    drop(s);

    let (ok, out, err) = run(&["status", "--db", &test.url, "--json"]);
    assert!(ok, "{err}");
    let status: Status = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(status.journal_backlog, backlog, "the snapshot waits in the journal until serve publishes it");
    assert!(backlog > 0);
    assert_eq!(status.last_event_seq, 0);
    assert_eq!(status.children.len(), 1);
    let north = &status.children[0];
    assert_eq!((north.name.as_str(), north.last_contact.as_deref(), north.pending_push), ("north", None, None));
    assert!(status.alerts.is_empty(), "a child registered a moment ago is not silent yet: {:?}", status.alerts);

    // A config with a one-second silence threshold: the child registered and never heard from
    // becomes an alert, shown first in the text with what to do.
    std::thread::sleep(std::time::Duration::from_millis(2_100));
    let config = std::env::temp_dir().join(format!("{}.toml", unique_name("feedsync_status_config")));
    std::fs::write(&config, "[alerts]\nchild_silent_after_s = 1\n").unwrap();
    let config_arg = config.to_str().unwrap();
    let (ok, out, err) = run(&["status", "--db", &test.url, "--json", "--config", config_arg]);
    assert!(ok, "{err}");
    let status: Status = serde_json::from_str(&out).unwrap();
    assert_eq!(status.alerts.len(), 1, "{:?}", status.alerts);
    assert_eq!((status.alerts[0].kind, status.alerts[0].key.as_str()), (AlertKind::ChildSilent, "child_silent:north"));
    assert!(status.alerts[0].message.contains("never been heard from"), "{:?}", status.alerts[0]);
    let (ok, text, err) = run(&["status", "--db", &test.url, "--config", config_arg]);
    assert!(ok, "{err}");
    let problem = text.find("child north was registered").unwrap_or_else(|| panic!("{text}"));
    assert!(problem < text.find("this server:").unwrap(), "problems first: {text}");
    assert!(text.contains("what to do: give the facility its token"), "{text}");
    assert!(text.contains(&format!("journal: {backlog} changes waiting")), "{text}");
    assert!(text.contains("north") && text.contains("last contact never"), "{text}");
    let _ = std::fs::remove_file(&config);

    // A config that cannot work is refused with the key named.
    std::fs::write(&config, "[alerts]\nwebhook_url = \"https://hooks.example/x\"\n").unwrap();
    let (ok, _, err) = run(&["status", "--db", &test.url, "--config", config_arg]);
    assert!(!ok && err.contains("alerts.webhook_url") && err.contains("TLS proxy"), "{err}");
    let _ = std::fs::remove_file(&config);
}
