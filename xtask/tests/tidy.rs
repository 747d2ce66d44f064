//! Tidy: the invariants ARCHITECTURE.md states about the layout, checked on the tree itself (as
//! rust-analyzer's `tidy` does), so a change that breaks one fails here instead of drifting.
//! Each check says what it found and what to do.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Source lines (before a file's `#[cfg(test)]` module) above which a file needs a reason
/// written in ARCHITECTURE.md.
const SOURCE_FILE_LINES_MAX: usize = 1_000;

/// The crates that run where patient data is: the two services and everything they link.
const SERVICES: [&str; 2] = ["feed-publisher", "feed-subscriber"];

/// Crates that exist for tests, benchmarks, the demos and chores: never in a service's tree.
const NOT_IN_SERVICES: [&str; 5] = ["feedsync-sim", "feedsync-demo", "feedsync-tests", "feedsync-bench", "xtask"];

/// Dependencies that do IO (sockets, files through a driver, a runtime, the clock's randomness):
/// none of them in `feedsync-core`.
const IO_CRATES: [&str; 10] = ["tokio", "mysql_async", "rusqlite", "hyper", "hyper-util", "http-body-util", "uuid", "chrono", "tracing", "feedsync-db"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is one folder below the workspace root").to_path_buf()
}

struct Package {
    dir: PathBuf,
    /// Normal (not dev, not build) dependencies, by package name.
    dependencies: BTreeSet<String>,
}

fn workspace() -> BTreeMap<String, Package> {
    let root = root();
    let manifest: toml::Table = std::fs::read_to_string(root.join("Cargo.toml")).unwrap().parse().unwrap();
    let members = manifest["workspace"]["members"].as_array().expect("workspace.members");
    let mut packages = BTreeMap::new();
    for member in members {
        let dir = root.join(member.as_str().unwrap());
        let text = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let table: toml::Table = text.parse().unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let name = table["package"]["name"].as_str().unwrap().to_string();
        let dependencies = table.get("dependencies").and_then(|d| d.as_table()).map(|d| d.keys().cloned().collect()).unwrap_or_default();
        packages.insert(name, Package { dir, dependencies });
    }
    packages
}

/// Every workspace package `name` links in a normal build, itself included.
fn closure(packages: &BTreeMap<String, Package>, name: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![name.to_string()];
    while let Some(next) = todo.pop() {
        if !seen.insert(next.clone()) {
            continue;
        }
        if let Some(package) = packages.get(&next) {
            todo.extend(package.dependencies.iter().filter(|d| packages.contains_key(*d)).cloned());
        }
    }
    seen
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name != "target" && name != "node_modules" && name != ".git" {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The library and binary sources of the toolkit's own crates (not tests, benches, chores).
fn toolkit_sources() -> Vec<(String, String)> {
    sources(&["shared", "feed-publisher/src", "feed-subscriber/src", "examples"])
}

/// The toolkit's sources and those of the chores beside it (benchmarks, xtask), outside tests.
fn all_sources() -> Vec<(String, String)> {
    sources(&["shared", "feed-publisher/src", "feed-subscriber/src", "examples", "bench/src", "xtask/src"])
}

fn sources(dirs: &[&str]) -> Vec<(String, String)> {
    let root = root();
    let mut files = Vec::new();
    for dir in dirs {
        rust_files(&root.join(dir), &mut files);
    }
    files
        .into_iter()
        .filter(|f| !f.components().any(|c| c.as_os_str() == "tests"))
        .map(|f| (f.strip_prefix(&root).unwrap().display().to_string(), std::fs::read_to_string(&f).unwrap()))
        .collect()
}

/// A file's code before its unit-test module.
fn non_test_part(text: &str) -> &str {
    text.find("#[cfg(test)]\nmod tests").map_or(text, |i| &text[..i])
}

fn architecture() -> String {
    std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap()
}

#[test]
fn no_service_links_test_support_or_the_demos() {
    let packages = workspace();
    for service in SERVICES {
        let linked = closure(&packages, service);
        let wrong: Vec<_> = NOT_IN_SERVICES.iter().filter(|c| linked.contains(**c)).collect();
        assert!(wrong.is_empty(), "{service} links {wrong:?}: move what it needs into shared/ (core, wire, db, node), or make it a dev-dependency");
    }
}

#[test]
fn the_subscriber_does_not_depend_on_the_publisher() {
    let packages = workspace();
    let linked = closure(&packages, "feed-subscriber");
    assert!(!linked.contains("feed-publisher"), "feed-subscriber links feed-publisher: what both need belongs in shared/");
}

#[test]
fn core_does_no_io() {
    let packages = workspace();
    let core = &packages["feedsync-core"];
    let io: Vec<_> = IO_CRATES.iter().filter(|c| core.dependencies.contains(**c)).collect();
    assert!(io.is_empty(), "feedsync-core depends on {io:?}: core decides, node does the IO; move the effect to shared/node");
    for linked in closure(&packages, "feedsync-core") {
        assert!(["feedsync-core", "feedsync-wire"].contains(&linked.as_str()), "feedsync-core links {linked}: only feedsync-wire is below it");
    }
    let wire = &packages["feedsync-wire"];
    let workspace_deps: Vec<_> = wire.dependencies.iter().filter(|d| packages.contains_key(*d)).collect();
    assert!(workspace_deps.is_empty(), "feedsync-wire depends on {workspace_deps:?}: it is the bottom of the tree");
}

#[test]
fn only_shared_db_names_the_drivers() {
    let packages = workspace();
    for (name, package) in &packages {
        for driver in ["mysql_async", "rusqlite"] {
            if package.dependencies.contains(driver) {
                assert!(
                    ["feedsync-db", "feedsync-sim"].contains(&name.as_str()),
                    "{name} ({}) depends on {driver}: only feedsync-db speaks to the drivers; use feedsync_db::Session",
                    package.dir.display()
                );
            }
        }
    }
    for (path, text) in toolkit_sources() {
        if path.starts_with("shared/db/") || path.starts_with("shared/sim/") {
            continue;
        }
        for driver in ["mysql_async::", "rusqlite::"] {
            assert!(!non_test_part(&text).contains(driver), "{path} names {driver}: only shared/db speaks to the drivers");
        }
    }
}

#[test]
fn every_source_file_says_what_it_is_for() {
    for (path, text) in all_sources() {
        assert!(text.starts_with("//!"), "{path} does not start with a `//!` comment saying what the module is for");
    }
}

#[test]
fn long_files_have_a_reason_in_architecture_md() {
    let architecture = architecture();
    for (path, text) in all_sources() {
        let lines = non_test_part(&text).lines().count();
        if lines > SOURCE_FILE_LINES_MAX {
            assert!(
                architecture.contains(&format!("`{path}`")),
                "{path} has {lines} lines of code (over {SOURCE_FILE_LINES_MAX}): split it, or say why it is one file in ARCHITECTURE.md (name it as `{path}`)"
            );
        }
    }
}

/// The backticked paths in the ARCHITECTURE.md list item that starts with `heading` (its first
/// line and the more deeply indented lines that continue it).
fn listed_paths(architecture: &str, heading: &str) -> BTreeSet<String> {
    let start = architecture.find(heading).unwrap_or_else(|| panic!("ARCHITECTURE.md has no list item starting {heading:?}"));
    let mut lines = architecture[start + heading.len()..].lines();
    let mut item = lines.next().unwrap_or_default().to_owned();
    for line in lines.take_while(|l| l.starts_with("    ")) {
        item.push_str(line);
    }
    item.split('`').skip(1).step_by(2).filter(|p| p.ends_with(".rs")).map(str::to_owned).collect()
}

/// Whether a `#[derive(...)]` in `code` names `Serialize` or `Deserialize`.
fn derives_serde(code: &str) -> bool {
    code.split("#[derive(").skip(1).any(|rest| {
        let list = &rest[..rest.find(")]").unwrap_or(rest.len())];
        list.split(',').any(|name| matches!(name.trim().rsplit("::").next(), Some("Serialize" | "Deserialize")))
    })
}

const SERDE_DEBT: &str = "- Serialized outside `shared/wire`, with the reason";

/// Whether `code` decides on a SQL dialect (names a `Dialect` variant).
fn matches_dialect(code: &str) -> bool {
    code.contains("Dialect::MySql") || code.contains("Dialect::Sqlite")
}

/// Where SQL text may differ by backend: the backends themselves and the pure fragments.
fn may_match_dialect(path: &str) -> bool {
    path.starts_with("shared/db/") || path == "shared/core/src/sql.rs"
}

/// Each backend's SQL lives in `shared/db` (the toolkit's tables, per backend in `mysql.rs`
/// and `sqlite.rs`) or in `shared/core/src/sql.rs` (pure fragments); everything else asks
/// there rather than deciding on the dialect itself.
#[test]
fn only_shared_db_and_core_sql_decide_on_the_dialect() {
    let wrong: Vec<String> = toolkit_sources()
        .into_iter()
        .filter(|(path, text)| matches_dialect(non_test_part(text)) && !may_match_dialect(path))
        .map(|(path, _)| path)
        .collect();
    assert!(
        wrong.is_empty(),
        "these files match on Dialect outside shared/db and shared/core/src/sql.rs: put the SQL that differs behind a function there\n  {}",
        wrong.join("\n  ")
    );
}

/// The one departure from the layout, serde outside `shared/wire`, is named file by file in
/// ARCHITECTURE.md (under Decisions, with the reason). A new file departing fails here, and so
/// does a named file that no longer departs (so the list stays true and only tightens).
#[test]
fn departures_from_the_layout_are_written_down() {
    let architecture = architecture();
    let serde_listed = listed_paths(&architecture, SERDE_DEBT);
    let mut serde_found = BTreeSet::new();
    for (path, text) in toolkit_sources() {
        if derives_serde(non_test_part(&text)) && !path.starts_with("shared/wire/") {
            serde_found.insert(path);
        }
    }
    let what = "derives serde outside shared/wire";
    let mut wrong = Vec::new();
    wrong.extend(serde_found.difference(&serde_listed).map(|path| format!("{path} {what}: move it into place, or name it in ARCHITECTURE.md's list with the reason")));
    wrong.extend(serde_listed.difference(&serde_found).map(|path| format!("{path} is listed as one that {what}, but no longer does: take it off the list")));
    assert!(wrong.is_empty(), "ARCHITECTURE.md's layout debts and the tree disagree:\n  {}", wrong.join("\n  "));
}

#[test]
fn the_tidy_checks_can_fail() {
    // The closure and the scans above are only worth something if they see the tree.
    let packages = workspace();
    assert!(closure(&packages, "feed-publisher").contains("feedsync-node"), "the dependency walk found nothing");
    assert!(toolkit_sources().len() > 40, "the source scan found too few files");
    assert!(all_sources().iter().any(|(path, _)| path == "xtask/src/mysql_dump.rs"), "the chores' scan missed xtask/src");
    assert_eq!(non_test_part("a\n#[cfg(test)]\nmod tests {}\n"), "a\n");
    assert!(derives_serde("#[derive(Debug, serde::Deserialize)]\nstruct A;") && !derives_serde("#[derive(Debug)]\nstruct Serialize;"));
    assert!(matches_dialect("match d {\n    Dialect::Sqlite => 1,\n}") && !matches_dialect("fn f(d: Dialect) {}"));
    assert!(may_match_dialect("shared/db/src/mysql.rs") && !may_match_dialect("shared/node/src/capture.rs"));
    let sample = "- Serialized outside `shared/wire`, with the reason (x): `a/b.rs`,\n    `c.rs`.\n  `e.rs` is not in it\n  - next `d.rs`";
    assert_eq!(listed_paths(sample, SERDE_DEBT), BTreeSet::from(["a/b.rs".to_owned(), "c.rs".to_owned()]));
}
