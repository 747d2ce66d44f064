//! The parent publisher in a process of its own, so the CPU time and memory read for it are
//! its own and not those of the hundreds of simulated children in the bench process (1,000
//! keep-alive client connections alone hold about 64 MB of read buffers there).
//!
//! The bench starts its own executable again with `--serve-parent URL`, which runs what
//! `feed-publisher serve` runs and nothing more: the same edge (`feedsync_cli::run_main`:
//! logging, a multi-threaded runtime), `App::new`, the sequencer loop and `server::serve`. The
//! code is the library this bench was built with, so no separately built `feed-publisher`
//! binary can be stale. The process prints `listening ADDR` once and serves until its standard
//! input closes, which also ends it if the bench dies without cleaning up.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail, ensure};
use feedsync_node::config::Config;
use feed_publisher::server::{self, App};
use feedsync_bench::cpu;
use feedsync_db::Database;
use feedsync_core::profile::Profile;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The flag that turns the bench executable into the parent process.
pub const SERVE_PARENT_FLAG: &str = "--serve-parent";
/// Longest the parent may take to load its model and start listening.
const START_TIMEOUT_MS: u64 = 60_000;
/// Longest the parent may take to stop after its standard input closes.
const STOP_TIMEOUT_MS: u64 = 10_000;
/// Log level of the parent process unless `RUST_LOG` says otherwise: warnings only, so its
/// standard error does not interleave with the bench's progress lines.
const PARENT_LOG_DEFAULT: &str = "warn";

/// The parent process, killed when dropped.
pub struct ParentProcess {
    child: tokio::process::Child,
    pub addr: SocketAddr,
    pub pid: u32,
}

/// Resident memory of a process, from /proc/<pid>/status.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// Resident now.
    pub rss_kib: u64,
    /// Highest resident since the process started.
    pub hwm_kib: u64,
    /// Threads now (runtime workers and the blocking pool that runs SQLite statements).
    pub threads: u64,
}

impl Memory {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({ "vm_rss_kib": self.rss_kib, "vm_hwm_kib": self.hwm_kib, "threads": self.threads })
    }
}

impl ParentProcess {
    /// Starts the parent on `database_url` (capture must be installed) and waits until it listens.
    pub async fn spawn(database_url: &str, sequencer_interval_ms: u64) -> anyhow::Result<ParentProcess> {
        let exe = std::env::current_exe().context("finding the bench's own executable")?;
        let mut child = tokio::process::Command::new(&exe)
            .arg(SERVE_PARENT_FLAG)
            .arg(database_url)
            .arg("--sequencer-interval-ms")
            .arg(sequencer_interval_ms.to_string())
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| PARENT_LOG_DEFAULT.into()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} {SERVE_PARENT_FLAG}", exe.display()))?;
        let pid = child.id().ok_or_else(|| anyhow!("the parent process exited at once"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let line = tokio::time::timeout(Duration::from_millis(START_TIMEOUT_MS), BufReader::new(stdout).lines().next_line())
            .await
            .map_err(|_| anyhow!("the parent process did not start listening within {START_TIMEOUT_MS} ms"))??
            .ok_or_else(|| anyhow!("the parent process exited before listening (see its error above)"))?;
        let addr =
            line.strip_prefix("listening ").and_then(|a| a.parse().ok()).ok_or_else(|| anyhow!("the parent process said {line:?}, not `listening ADDR`"))?;
        Ok(ParentProcess { child, addr, pid })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// CPU seconds (user and system) the parent has used so far.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu::process_cpu_seconds(self.pid)
    }

    pub fn memory(&self) -> Option<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let field = |name: &str| -> Option<u64> { status.lines().find_map(|l| l.strip_prefix(name))?.trim().trim_end_matches("kB").trim().parse().ok() };
        Some(Memory { rss_kib: field("VmRSS:")?, hwm_kib: field("VmHWM:")?, threads: field("Threads:")? })
    }

    /// Closes the parent's standard input and waits for it to stop (killed after a while).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        drop(self.child.stdin.take());
        match tokio::time::timeout(Duration::from_millis(STOP_TIMEOUT_MS), self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                ensure!(status.success(), "the parent process ended with {status}");
                Ok(())
            }
            Err(_) => {
                self.child.kill().await?;
                bail!("the parent process did not stop within {STOP_TIMEOUT_MS} ms of its input closing; killed")
            }
        }
    }
}

/// The parent process's whole life (`--serve-parent URL`): what `feed-publisher serve` does.
pub fn serve(database_url: String, sequencer_interval_ms: u64) -> std::process::ExitCode {
    feedsync_cli::run_main(async move {
        let database = Database::from_url(&database_url)?;
        let model = feedsync_node::load_model(&database, &Profile::openmrs()).await?;
        let mut config = Config { database_url, ..Config::default() };
        config.feed.sequencer_interval_ms = sequencer_interval_ms;
        config.validate()?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = Arc::new(App::new(database, model, config).await?);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let sequencer = tokio::spawn(server::run_sequencer(app.clone(), stopped.clone()));
        let http = tokio::spawn(server::serve(app, listener, stopped));
        println!("listening {addr}");
        // Serve until the bench closes our standard input (or dies).
        tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink())).await??;
        let _ = stop.send(true);
        let _ = sequencer.await;
        let _ = http.await;
        Ok(())
    });
    std::process::ExitCode::SUCCESS
}
