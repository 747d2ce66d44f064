//! The command line as an operator meets it: `check` explains every table, errors say what to
//! do and exit non-zero, and the README's first command (`demo`) comes up and serves.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use feedsync_shared::testing::{Source, TestDatabase, unique_name};

const PUBLISHER: &str = env!("CARGO_BIN_EXE_feed-publisher");

#[test]
fn check_reports_published_and_unpublished_tables_with_reasons() {
    let Some(test) = TestDatabase::create(Source::Sqlite25) else { return };
    let out = Command::new(PUBLISHER).args(["check", "--db", &test.url]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("published tables (119)"), "{text}");
    assert!(text.contains("patient ") && text.contains("same as its person row (via patient_id)"));
    assert!(text.contains("user_role") && text.contains("join of user_id -> users + role -> role"));
    assert!(text.contains("liquibasechangelog") && text.contains("excluded by the profile"));
    assert!(text.contains("capture is not installed"));
}

#[test]
fn errors_are_one_line_with_a_hint_and_exit_non_zero() {
    let out = Command::new(PUBLISHER).args(["serve"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --db URL"));
    let out = Command::new(PUBLISHER).args(["install", "--db", "postgres://x/y"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mysql://user:password@host:3306/database"));
    let out = Command::new(PUBLISHER).args(["serve", "--db", "mysql://root:secret@127.0.0.1:1/none"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("secret"), "passwords are never printed: {err}");
    let out = Command::new(PUBLISHER).args(["frobnicate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn demo_comes_up_and_serves_the_simulated_clinic() {
    let dir = std::env::temp_dir().join(unique_name("feedsync_demo"));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(PUBLISHER)
        .args(["demo", "--patients", "3", "--listen", &format!("127.0.0.1:{port}"), "--dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            write!(stream, "GET /ws/atomfeed/patient/recent HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
            let mut text = String::new();
            stream.read_to_string(&mut text).unwrap();
            if text.contains("<entry>") {
                break text;
            }
        }
        assert!(Instant::now() < deadline, "demo did not serve patients in time");
        std::thread::sleep(Duration::from_millis(100));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(body.matches("<entry>").count(), 3, "three registered patients");
}
