//! Peer (b): `mysqldump --single-transaction <tables> | mysql` of the tables the feed
//! publishes, from A into a fresh empty database: the floor for a full re-source (a site
//! copied whole, no identities translated, nothing merged). The bench runs both clients
//! itself and pipes one into the other, counting the dump's bytes as they pass. Triggers are
//! left out (`--skip-triggers`): A's capture triggers would write to a journal the copy does
//! not have. Timed from starting the dump to the load's exit; the copy's row counts are then
//! checked against A's.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use feedsync_db::{Database, quote_ident};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use feedsync_bench::database;

/// Bytes moved from the dump to the load at a time.
const PIPE_CHUNK_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone)]
pub struct DumpSample {
    pub seconds: f64,
    pub rows: i64,
    pub tables: usize,
    pub dump_bytes: u64,
}

impl DumpSample {
    pub fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.seconds
    }
}

/// The server's address and credentials as client flags (`-h -P -u [-p]`).
fn client_flags() -> anyhow::Result<Vec<String>> {
    let url = url::Url::parse(&database::server_url()?)?;
    let mut flags = vec![
        format!("-h{}", url.host_str().unwrap_or("127.0.0.1")),
        format!("-P{}", url.port().unwrap_or(3306)),
        format!(
            "-u{}",
            if url.username().is_empty() { "root" } else { url.username() }
        ),
    ];
    if let Some(password) = url.password() {
        flags.push(format!("-p{password}"));
    }
    Ok(flags)
}

/// The first of `names` that runs (`mariadb-dump` is `mysqldump` on older systems).
async fn client(names: &[&'static str]) -> anyhow::Result<&'static str> {
    for name in names {
        if Command::new(name).arg("--version").output().await.is_ok_and(|o| o.status.success()) {
            return Ok(name);
        }
    }
    bail!("none of {names:?} is installed (the MariaDB client package has them)")
}

/// Copies `tables` of A into a fresh database with `mysqldump | mysql`, timed, and checks
/// that the copy holds as many rows as A.
pub async fn run(a: &Database, tables: &[String], deadline: Duration) -> anyhow::Result<DumpSample> {
    let c = database::empty().await?;
    let result = copy(a, &c.database, tables, deadline).await;
    database::discard(c).await;
    result
}

async fn copy(a: &Database, c: &Database, tables: &[String], deadline: Duration) -> anyhow::Result<DumpSample> {
    let flags = client_flags()?;
    let dump_client = client(&["mysqldump", "mariadb-dump"]).await?;
    let load_client = client(&["mysql", "mariadb"]).await?;
    let start = Instant::now();
    let mut dump = Command::new(dump_client)
        .args(&flags)
        .args(["--single-transaction", "--skip-triggers", a.schema_name()])
        .args(tables)
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {dump_client}"))?;
    let mut load = Command::new(load_client)
        .args(&flags)
        .arg(c.schema_name())
        .kill_on_drop(true)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {load_client}"))?;
    let mut from = dump.stdout.take().expect("piped stdout");
    let mut to = load.stdin.take().expect("piped stdin");
    let pipe = async {
        let mut buffer = vec![0u8; PIPE_CHUNK_BYTES];
        let mut bytes = 0u64;
        loop {
            let n = from.read(&mut buffer).await?;
            if n == 0 {
                break;
            }
            to.write_all(&buffer[..n]).await?;
            bytes += n as u64;
        }
        to.shutdown().await?;
        drop(to);
        let dumped = dump.wait_with_output().await?;
        let loaded = load.wait_with_output().await?;
        anyhow::Ok((bytes, dumped, loaded))
    };
    let (dump_bytes, dumped, loaded) = tokio::time::timeout(deadline, pipe)
        .await
        .map_err(|_| anyhow!("mysqldump | mysql did not finish within {deadline:?}"))??;
    let seconds = start.elapsed().as_secs_f64();
    ensure!(
        dumped.status.success(),
        "{dump_client} failed: {}",
        String::from_utf8_lossy(&dumped.stderr).trim()
    );
    ensure!(
        loaded.status.success(),
        "{load_client} failed: {}",
        String::from_utf8_lossy(&loaded.stderr).trim()
    );
    let (mut session_a, mut session_c) = (a.session().await?, c.session().await?);
    let mut rows = 0;
    for table in tables {
        let sql = format!("SELECT COUNT(*) AS n FROM {}", quote_ident(session_a.dialect(), table));
        let count = |rows: Vec<feedsync_db::Row>| rows.first().and_then(|r| r.i64("n")).unwrap_or(-1);
        let in_a = count(session_a.query(&sql, &[]).await?);
        let in_c = count(session_c.query(&sql, &[]).await?);
        ensure!(in_a == in_c, "the copy of {table} holds {in_c} rows, A holds {in_a}");
        rows += in_a;
    }
    Ok(DumpSample {
        seconds,
        rows,
        tables: tables.len(),
        dump_bytes,
    })
}
