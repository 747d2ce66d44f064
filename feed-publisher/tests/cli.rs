//! The command line as an operator meets it: `check` explains every table, errors say what to
//! do and exit non-zero.

use std::process::Command;

use feedsync_sim::testdb::{Source, TestDatabase};

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
    let out = Command::new(PUBLISHER).args(["serve"]).env_remove("FEEDSYNC_ADMIN_TOKEN").output().unwrap();
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
fn serve_refuses_a_guessable_admin_token() {
    // Checked before anything else, so no database is needed to see it.
    let out = Command::new(PUBLISHER).args(["serve"]).env("FEEDSYNC_ADMIN_TOKEN", "letmein").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("7 characters long; at least 32") && err.contains("openssl rand -hex 16"), "{err}");
    assert!(!err.contains("letmein"), "the token is never printed: {err}");
}

#[test]
fn tokens_are_created_listed_and_revoked_from_the_command_line() {
    let Some(test) = TestDatabase::create(Source::Sqlite25) else { return };
    let run = |args: &[&str]| Command::new(PUBLISHER).args(args).args(["--db", &test.url]).output().unwrap();
    let out = run(&["token", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("run `feed-publisher install"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(run(&["install"]).status.success());
    let out = run(&["token", "create", "--name", "district-replica", "--scope", "replica,metrics", "--expires", "90d"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let token = stdout.lines().last().unwrap();
    assert!(token.starts_with("fst_") && token.len() == 68, "the token is the last line: {stdout}");
    let out = run(&["token", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["name"], "district-replica");
    assert_eq!(list[0]["scopes"], serde_json::json!(["replica", "metrics"]));
    assert!(list[0]["expires_at"].is_string() && list[0]["revoked_at"].is_null(), "{list}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(token), "values are never listed");
    let out = run(&["token", "create", "--name", "x", "--scope", "root"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("feeds, replica, admin or metrics"));
    let out = run(&["token", "create", "--name", "y", "--scope", "feeds", "--expires", "soon"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("e.g. 90d"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(run(&["token", "revoke", "--name", "district-replica"]).status.success());
    let out = run(&["token", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(list[0]["revoked_at"].is_string(), "{list}");
}
