//! Test support shared by every crate's tests and benchmarks: a freshly created database per
//! test, loaded from a real OpenMRS dump (MariaDB) or from the shipped SQLite schema, dropped
//! when the test ends. When MariaDB or a dump is missing, a test is skipped with a message,
//! except under `CI=true`, where it fails: CI must never pass by skipping.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use feedsync_db::Database;

/// MariaDB server the database suites use; override with `FEEDSYNC_TEST_MYSQL`.
pub const DEFAULT_TEST_MYSQL: &str = "mysql://root@127.0.0.1:3306";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `openmrs-2.5-fhir2.sql` from `../shared/openmrs`, into MariaDB.
    MySql25,
    /// `openmrs-1.9.8.sql` from `../shared/openmrs`, into MariaDB.
    MySql198,
    /// The shipped `shared/sim/schema/openmrs-2.5.sqlite.sql`, into a temporary SQLite file.
    Sqlite25,
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skips (or, in CI, fails) a test that cannot run here.
pub fn skip_or_fail(why: &str) {
    if in_ci() {
        panic!("CI=true and a database suite cannot run: {why}");
    }
    eprintln!("skipped: {why}");
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("shared/sim is two folders below the workspace root")
}

/// Where the real OpenMRS dumps are: `../shared/openmrs` beside the repository, or
/// `FEEDSYNC_OPENMRS_DUMPS`.
pub fn dumps_dir() -> PathBuf {
    std::env::var_os("FEEDSYNC_OPENMRS_DUMPS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared/openmrs"))
}

pub fn sqlite_schema_path() -> PathBuf {
    workspace_root().join("shared/sim/schema/openmrs-2.5.sqlite.sql")
}

fn mysql_server() -> String {
    std::env::var("FEEDSYNC_TEST_MYSQL").unwrap_or_else(|_| DEFAULT_TEST_MYSQL.into())
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique name: process id, a counter and the clock, so parallel test binaries never meet.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{prefix}_{}_{n}_{nanos:x}", std::process::id())
}

/// A database that exists for one test.
pub struct TestDatabase {
    pub url: String,
    pub database: Database,
    pub source: Source,
    mysql_name: Option<String>,
    temp_dir: Option<PathBuf>,
}

impl TestDatabase {
    /// Creates and loads a database, or returns `None` after [`skip_or_fail`].
    pub fn create(source: Source) -> Option<TestDatabase> {
        match source {
            Source::MySql25 | Source::MySql198 => {
                let file = dumps_dir().join(if source == Source::MySql25 { "openmrs-2.5-fhir2.sql" } else { "openmrs-1.9.8.sql" });
                if !file.exists() {
                    skip_or_fail(&format!("the OpenMRS dump {} is missing (tests read ../shared/openmrs beside the repository)", file.display()));
                    return None;
                }
                let name = unique_name("feedsync_test");
                if let Err(why) = mariadb(&format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4"), None, None) {
                    skip_or_fail(&format!("MariaDB at {} is not usable: {why}", mysql_server()));
                    return None;
                }
                let guard = TestDatabase {
                    url: format!("{}/{name}", mysql_server()),
                    database: Database::from_url(&format!("{}/{name}", mysql_server())).expect("test url"),
                    source,
                    mysql_name: Some(name.clone()),
                    temp_dir: None,
                };
                if let Err(why) = mariadb("", Some(&name), Some(&file)) {
                    panic!("loading {} into {name} failed: {why}", file.display());
                }
                Some(guard)
            }
            Source::Sqlite25 => {
                let schema = sqlite_schema_path();
                let text = std::fs::read_to_string(&schema)
                    .unwrap_or_else(|e| panic!("the shipped SQLite schema {} cannot be read: {e}", schema.display()));
                let dir = std::env::temp_dir().join(unique_name("feedsync_test"));
                std::fs::create_dir_all(&dir).expect("temp dir");
                let path = dir.join("openmrs.sqlite");
                let conn = rusqlite::Connection::open(&path).expect("sqlite file");
                conn.execute_batch(&text).expect("shipped SQLite schema loads");
                drop(conn);
                let url = format!("sqlite://{}", path.display());
                Some(TestDatabase {
                    database: Database::from_url(&url).expect("sqlite url"),
                    url,
                    source,
                    mysql_name: None,
                    temp_dir: Some(dir),
                })
            }
        }
    }

    /// Like [`TestDatabase::create`] but empty (no OpenMRS schema), for subscriber targets.
    pub fn empty_mysql() -> Option<TestDatabase> {
        let name = unique_name("feedsync_test");
        if let Err(why) = mariadb(&format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4"), None, None) {
            skip_or_fail(&format!("MariaDB at {} is not usable: {why}", mysql_server()));
            return None;
        }
        Some(TestDatabase {
            url: format!("{}/{name}", mysql_server()),
            database: Database::from_url(&format!("{}/{name}", mysql_server())).expect("test url"),
            source: Source::MySql25,
            mysql_name: Some(name),
            temp_dir: None,
        })
    }

    pub fn is_mysql(&self) -> bool {
        self.mysql_name.is_some()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some(name) = &self.mysql_name {
            let _ = mariadb(&format!("DROP DATABASE IF EXISTS `{name}`"), None, None);
        }
        if let Some(dir) = &self.temp_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Runs the `mariadb` client (`mysql` where that is the name) against the test server.
fn mariadb(sql: &str, database: Option<&str>, input: Option<&std::path::Path>) -> Result<(), String> {
    let server = url::Url::parse(&mysql_server()).map_err(|e| e.to_string())?;
    let mut last_error = String::new();
    for client in ["mariadb", "mysql"] {
        let mut cmd = Command::new(client);
        cmd.arg(format!("-h{}", server.host_str().unwrap_or("127.0.0.1")))
            .arg(format!("-P{}", server.port().unwrap_or(3306)))
            .arg(format!("-u{}", if server.username().is_empty() { "root" } else { server.username() }));
        if let Some(password) = server.password() {
            cmd.arg(format!("-p{password}"));
        }
        if let Some(db) = database {
            cmd.arg(db);
        }
        if !sql.is_empty() {
            cmd.arg("-e").arg(sql);
        }
        if let Some(file) = input {
            cmd.stdin(std::fs::File::open(file).map_err(|e| e.to_string())?);
        }
        match cmd.output() {
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
            Err(e) => last_error = format!("{client}: {e}"),
        }
    }
    Err(last_error)
}
