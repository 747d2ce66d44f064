//! Peer (a): PouchDB replication of the same records, the closest "feed, fetch, apply" peer.
//!
//! The records are the resources B received during the end-to-end sync, exactly as they
//! crossed the wire (the proxy keeps the batch-fetch answers), one JSON document per entity
//! (`_id` = `table/key`, the newest version when an entity changed several times; deleted
//! entities as deleted documents). They are loaded into a source PouchDB (untimed setup), which
//! a Node process serves over loopback with express-pouchdb; a second Node process replicates
//! it into its own empty on-disk PouchDB through the same counting proxy the subscriber used.
//! The script is `bench/pouchdb/pouchdb-peer.js`; `npm ci` in `bench/pouchdb` installs it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use feedsync_wire::resource::BatchResponse;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use feedsync_bench::cpu;
use feedsync_bench::proxy::{Proxy, Tapped, Totals};

/// Longest the Node server may take to say which port it listens on.
const SERVE_START_TIMEOUT_MS: u64 = 30_000;
/// Longest loading the source may take.
const LOAD_TIMEOUT_MS: u64 = 3_600_000;
/// PouchDB's own default `batches_limit` (batches fetched ahead while writing).
pub const BATCHES_LIMIT: u32 = 10;
/// PouchDB's own default `batch_size` (changes per `_changes` request).
pub const BATCH_SIZE_DEFAULT: u32 = 100;
/// The source database's name on the server.
const SOURCE_DB: &str = "source";

/// Request kinds of CouchDB replication, for the counts.
pub fn classify(method: &str, target: &str) -> &'static str {
    let path = target.split('?').next().unwrap_or_default();
    if path.contains("/_changes") {
        "_changes"
    } else if path.contains("/_revs_diff") {
        "_revs_diff"
    } else if path.contains("/_bulk_get") {
        "_bulk_get"
    } else if path.contains("/_all_docs") {
        "_all_docs"
    } else if path.contains("/_local/") {
        "checkpoint (_local)"
    } else if path.contains("/_bulk_docs") {
        "_bulk_docs"
    } else if method == "GET" && path.trim_end_matches('/').matches('/').count() <= 1 {
        "database info"
    } else {
        "other"
    }
}

/// Where the Node project is, checked before anything is built.
pub fn peer_dir() -> anyhow::Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pouchdb");
    ensure!(
        dir.join("node_modules/pouchdb").exists() && dir.join("node_modules/express-pouchdb").exists(),
        "PouchDB is not installed in {}: run `npm ci` there (Node 20), or pass --skip-pouchdb",
        dir.display()
    );
    Ok(dir)
}

/// `node --version` and the installed PouchDB and express-pouchdb versions.
pub async fn versions(dir: &Path) -> anyhow::Result<String> {
    let node = Command::new("node")
        .arg("--version")
        .output()
        .await
        .context("running node (Node 20 is needed for the PouchDB peer)")?;
    let version = |package: &str| -> String {
        std::fs::read_to_string(dir.join("node_modules").join(package).join("package.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["version"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "?".into())
    };
    Ok(format!(
        "Node {}, PouchDB {}, express-pouchdb {}",
        String::from_utf8_lossy(&node.stdout).trim(),
        version("pouchdb"),
        version("express-pouchdb")
    ))
}

/// The documents: one per entity, the newest answer for each.
pub struct Documents {
    pub answers: Vec<Tapped>,
    /// By item position over all answers: whether it is its entity's newest.
    newest: Vec<bool>,
    pub live: usize,
    pub deleted: usize,
    /// Items in the answers (entities fetched more than once count each time).
    pub items: usize,
}

/// Reads the kept batch answers: which item is each entity's newest (a first pass; the
/// second pass, while loading, writes only those).
pub fn documents(answers: Vec<Tapped>) -> anyhow::Result<Documents> {
    let mut last: HashMap<String, (usize, bool)> = HashMap::new();
    let mut items = 0;
    for answer in &answers {
        for item in decode(answer)?.resources {
            let deleted = match (item.status, &item.resource, &item.tombstone) {
                (200, Some(_), _) => false,
                (410, _, Some(_)) => true,
                _ => bail!("batch answer item {} has status {}", item.link, item.status),
            };
            last.insert(item.link, (items, deleted));
            items += 1;
        }
    }
    let deleted = last.values().filter(|(_, d)| *d).count();
    let mut newest = vec![false; items];
    for (index, _) in last.values() {
        newest[*index] = true;
    }
    Ok(Documents {
        live: last.len() - deleted,
        deleted,
        items,
        newest,
        answers,
    })
}

fn decode(answer: &Tapped) -> anyhow::Result<BatchResponse> {
    ensure!(answer.status == 200, "a batch answer had status {}", answer.status);
    let body = if answer.gzip {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&answer.body[..]), &mut out)
            .context("a batch answer does not gunzip")?;
        out
    } else {
        answer.body.clone()
    };
    serde_json::from_slice(&body).context("a batch answer is not a batch response")
}

/// The source loaded and served.
pub struct Source {
    pub dir: PathBuf,
    pub docs: usize,
    pub deleted: usize,
    pub load_seconds: f64,
    pub port: u16,
    server: Child,
    peer: PathBuf,
}

impl Source {
    pub fn server_pid(&self) -> Option<u32> {
        self.server.id()
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        // The server is this bench's own child: end it by its handle, then remove its files.
        let _ = self.server.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn node(peer: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("node");
    command
        .arg(peer.join("pouchdb-peer.js"))
        .args(args)
        .current_dir(peer)
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Loads `documents` into a fresh source PouchDB and serves it.
pub async fn load_and_serve(peer: &Path, documents: &Documents) -> anyhow::Result<Source> {
    let dir = std::env::temp_dir().join(feedsync_sim::testdb::unique_name("feedsync_pouchdb"));
    std::fs::create_dir_all(&dir)?;
    let db = dir.join(SOURCE_DB);
    let mut loader = node(peer, &["load", db.to_str().context("temp path is not UTF-8")?])
        .stdin(Stdio::piped())
        .spawn()
        .context("starting node")?;
    let mut stdin = loader.stdin.take().expect("piped stdin");
    let start = Instant::now();
    let write = async {
        let mut index = 0;
        for answer in &documents.answers {
            for item in decode(answer)?.resources {
                let keep = documents.newest.get(index).copied().unwrap_or(false);
                index += 1;
                if !keep {
                    continue;
                }
                let doc = match (item.resource, item.tombstone) {
                    (Some(r), _) => {
                        let mut doc = serde_json::to_value(&r)?;
                        doc["_id"] = json!(format!("{}/{}", r.table, r.key));
                        doc
                    }
                    (None, Some(t)) => json!({ "_id": format!("{}/{}", t.table, t.key), "_deleted": true }),
                    (None, None) => unreachable!("checked in documents()"),
                };
                let mut line = serde_json::to_vec(&doc)?;
                line.push(b'\n');
                stdin.write_all(&line).await.context("writing docs to the PouchDB loader")?;
            }
        }
        stdin.shutdown().await?;
        drop(stdin);
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_millis(LOAD_TIMEOUT_MS), write)
        .await
        .map_err(|_| anyhow!("loading PouchDB took over {LOAD_TIMEOUT_MS} ms"))??;
    let output = tokio::time::timeout(
        Duration::from_millis(LOAD_TIMEOUT_MS),
        loader.wait_with_output(),
    )
    .await
    .map_err(|_| anyhow!("the PouchDB loader did not finish"))??;
    let load_seconds = start.elapsed().as_secs_f64();
    let report = last_json(&output.stdout, &output.stderr, output.status.success(), "load")?;
    let docs = report["docs"].as_u64().unwrap_or(0) as usize;
    ensure!(
        docs == documents.live + documents.deleted,
        "the loader wrote {docs} docs of {}",
        documents.live + documents.deleted
    );

    let mut server = node(peer, &["serve", dir.to_str().expect("checked above")])
        .spawn()
        .context("starting the PouchDB server")?;
    let stdout = server.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_millis(SERVE_START_TIMEOUT_MS), lines.next_line())
        .await
        .map_err(|_| anyhow!("the PouchDB server did not start within {SERVE_START_TIMEOUT_MS} ms"))??
        .context("the PouchDB server exited before listening")?;
    let port = serde_json::from_str::<serde_json::Value>(&first)?["port"]
        .as_u64()
        .context("the PouchDB server did not say its port")? as u16;
    Ok(Source {
        dir,
        docs,
        deleted: documents.deleted,
        load_seconds,
        port,
        server,
        peer: peer.to_owned(),
    })
}

/// One replication into a fresh target.
#[derive(Debug, Clone)]
pub struct ReplicationSample {
    /// PouchDB's own timing of `PouchDB.replicate` (no process start-up).
    pub seconds: f64,
    pub docs_written: u64,
    pub doc_count: u64,
    pub totals: Totals,
    pub target_cpu_seconds: f64,
    pub source_cpu_seconds: Option<f64>,
    pub bench_cpu_seconds: Option<f64>,
}

impl ReplicationSample {
    pub fn docs_per_second(&self) -> f64 {
        self.docs_written as f64 / self.seconds
    }
}

/// Replicates the source into an empty PouchDB in a second Node process, through the proxy.
pub async fn replicate(
    source: &Source,
    batch_size: u32,
    deadline: Duration,
) -> anyhow::Result<ReplicationSample> {
    let target = source.dir.join(feedsync_sim::testdb::unique_name("target"));
    let upstream = format!("127.0.0.1:{}", source.port).parse()?;
    let proxy = Proxy::start(upstream, classify, |_, _| false).await?;
    let url = format!("http://{}/{SOURCE_DB}", proxy.addr);
    let source_pid = source.server_pid();
    let source_before = source_pid.and_then(cpu::process_cpu_seconds);
    let bench_before = cpu::process_cpu_seconds(std::process::id());
    let child = node(
        &source.peer,
        &[
            "replicate",
            &url,
            target.to_str().context("temp path is not UTF-8")?,
            &batch_size.to_string(),
            &BATCHES_LIMIT.to_string(),
        ],
    )
    .spawn()
    .context("starting the PouchDB replicator")?;
    let output = tokio::time::timeout(deadline, child.wait_with_output())
        .await
        .map_err(|_| anyhow!("PouchDB replication did not finish within {deadline:?}"))??;
    let source_cpu = source_pid
        .and_then(cpu::process_cpu_seconds)
        .zip(source_before)
        .map(|(after, before)| after - before);
    let bench_cpu = cpu::process_cpu_seconds(std::process::id())
        .zip(bench_before)
        .map(|(after, before)| after - before);
    let totals = proxy.totals();
    drop(proxy);
    let _ = std::fs::remove_dir_all(&target);
    let report = last_json(&output.stdout, &output.stderr, output.status.success(), "replicate")?;
    if let Some(error) = &totals.framing_error {
        bail!("the counting proxy could not follow PouchDB's HTTP stream: {error}");
    }
    let docs_written = report["docs_written"].as_u64().unwrap_or(0);
    let doc_count = report["doc_count"].as_u64().unwrap_or(0);
    ensure!(
        report["ok"].as_bool() == Some(true)
            && report["doc_write_failures"].as_u64() == Some(0)
            && docs_written == source.docs as u64
            && doc_count == (source.docs - source.deleted) as u64,
        "PouchDB replication did not copy every doc ({} in the source, {} deleted): {report}",
        source.docs,
        source.deleted
    );
    Ok(ReplicationSample {
        seconds: report["seconds"].as_f64().unwrap_or(f64::NAN),
        docs_written,
        doc_count,
        totals,
        target_cpu_seconds: report["cpu_seconds"].as_f64().unwrap_or(f64::NAN),
        source_cpu_seconds: source_cpu,
        bench_cpu_seconds: bench_cpu,
    })
}

fn last_json(
    stdout: &[u8],
    stderr: &[u8],
    success: bool,
    what: &str,
) -> anyhow::Result<serde_json::Value> {
    let text = String::from_utf8_lossy(stdout);
    let last = text.lines().rev().find(|l| l.trim_start().starts_with('{'));
    match (success, last) {
        (true, Some(line)) => Ok(serde_json::from_str(line)?),
        _ => bail!(
            "pouchdb-peer.js {what} failed: {}",
            String::from_utf8_lossy(stderr).trim()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_requests_are_named_by_endpoint() {
        assert_eq!(classify("GET", "/source/_changes?style=all_docs&since=0&limit=100"), "_changes");
        assert_eq!(classify("POST", "/source/_revs_diff"), "_revs_diff");
        assert_eq!(classify("POST", "/source/_bulk_get?revs=true&latest=true"), "_bulk_get");
        assert_eq!(classify("GET", "/source/_local/abc"), "checkpoint (_local)");
        assert_eq!(classify("PUT", "/source/_local/abc"), "checkpoint (_local)");
        assert_eq!(classify("GET", "/source/"), "database info");
        assert_eq!(classify("GET", "/source"), "database info");
        assert_eq!(classify("GET", "/source/obs%2Fx"), "other");
    }
}
