//! Where a poll's time goes at the parent: the steps `feed_publisher::network::route` (over `feedsync_node::parent`) runs for
//! `GET changes`, replayed one at a time on the bench's own connection to the parent's database
//! before the parent process starts, so nothing else runs in this process meanwhile:
//!
//! - opening a session and its first statement (`SELECT 1`); on SQLite a session is a new
//!   connection, which reads and parses the whole schema (OpenMRS's tables and indexes and the
//!   capture triggers) on its first statement; the route opens one per request;
//! - `SELECT 1` on a session already open, the floor under every statement;
//! - `network::prepare`: the network tables' `CREATE ... IF NOT EXISTS`, which the route runs
//!   on every request;
//! - `network::changes` for a simulated child that is caught up: the common poll, an empty page.
//!
//! Authentication (one `SELECT` of the child and one `UPDATE` of its `last_contact`, a write
//! per request) is not replayed: its function is private to the publisher. Each step reports
//! CPU milliseconds of this process per call (SQLite runs in-process; on MariaDB the work is
//! in mariadbd), wall milliseconds per call, and on MariaDB the session's status counters per
//! call (exact: no other client touches them).

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context;
use feedsync_node::parent as network;
use feedsync_bench::counters::{CounterMeter, per_text};
use feedsync_bench::cpu;
use feedsync_db::Database;
use feedsync_wire::network::ITEMS_PER_MESSAGE_MAX;
use feedsync_core::model::Model;

use crate::common::{self, Backend};

/// Calls per step: enough for /proc's 10 ms CPU ticks to resolve steps of a tenth of a ms.
const OPENS: usize = 50;
const CALLS: usize = 200;
/// Session counters read around each step on MariaDB. `Questions` counts every statement sent.
const STEP_COUNTERS: [&str; 8] =
    ["Questions", "Com_create_table", "Com_select", "Com_update", "Handler_read_key", "Handler_read_rnd_next", "Handler_write", "Handler_update"];

#[derive(Debug, Clone)]
pub struct Step {
    pub name: &'static str,
    pub calls: usize,
    pub cpu_ms: Option<f64>,
    pub wall_ms: f64,
    /// MariaDB only: status counters per call.
    pub counters: Option<BTreeMap<String, f64>>,
}

impl Step {
    pub fn json(&self) -> serde_json::Value {
        use feedsync_bench::stats::round;
        serde_json::json!({
            "step": self.name,
            "calls": self.calls,
            "bench_cpu_ms_per_call": self.cpu_ms.map(|x| round(x, 4)),
            "wall_ms_per_call": round(self.wall_ms, 4),
            "mariadb_session_counters_per_call": self.counters.as_ref().map(feedsync_bench::counters::per_json),
        })
    }

    pub fn describe(&self) -> String {
        use feedsync_bench::stats::number;
        // /proc counts CPU in 10 ms ticks: below one tick over all calls, only a bound is known.
        let resolution_ms = 10.0 / self.calls as f64;
        let cpu = self.cpu_ms.map_or("n/a".into(), |ms| if ms < resolution_ms { format!("< {}", number(resolution_ms)) } else { number(ms) });
        let counters = self.counters.as_ref().map(|c| format!("; {}", per_text(c))).unwrap_or_default();
        format!("{cpu} ms CPU here, {} ms wall{counters}", number(self.wall_ms))
    }
}

fn cpu_seconds() -> Option<f64> {
    cpu::process_cpu_seconds(std::process::id())
}

/// Replays the steps for the registered child `child_name`.
pub async fn replay(database: &Database, model: &Model, backend: Backend, child_name: &str) -> anyhow::Result<Vec<Step>> {
    let mut steps = Vec::new();

    let (cpu, wall) = (cpu_seconds(), Instant::now());
    for _ in 0..OPENS {
        database.session().await?.query("SELECT 1", &[]).await?;
    }
    steps.push(finish("open a session + SELECT 1", OPENS, cpu, wall, None));

    let mut session = database.session().await?;
    let meter = match backend {
        Backend::MariaDb => Some(CounterMeter::calibrate_names(&mut session, &STEP_COUNTERS).await?),
        Backend::Sqlite => None,
    };
    let (child, _) = network::child_by_name(&mut session, child_name).await?.with_context(|| format!("child {child_name} is not registered"))?;
    let after = common::last_event(&mut session).await?;
    for call in [Call::Select, Call::Prepare, Call::Changes] {
        let before = match &meter {
            Some(m) => Some(m.read(&mut session).await?),
            None => None,
        };
        let (cpu, wall) = (cpu_seconds(), Instant::now());
        for _ in 0..CALLS {
            match call {
                Call::Select => drop(session.query("SELECT 1", &[]).await?),
                Call::Prepare => network::prepare(&mut session).await?,
                Call::Changes => drop(network::changes(&mut session, model, &child, after, ITEMS_PER_MESSAGE_MAX).await.map_err(|e| anyhow::anyhow!("{e:?}"))?),
            }
        }
        let counters = match (&meter, before) {
            (Some(m), Some(before)) => Some(m.since(&m.read(&mut session).await?, &before).per(CALLS as f64)),
            _ => None,
        };
        steps.push(finish(call.name(), CALLS, cpu, wall, counters));
    }
    Ok(steps)
}

#[derive(Clone, Copy)]
enum Call {
    Select,
    Prepare,
    Changes,
}

impl Call {
    fn name(self) -> &'static str {
        match self {
            Call::Select => "SELECT 1 on an open session",
            Call::Prepare => "network::prepare (DDL, every request)",
            Call::Changes => "network::changes, caught up (empty page)",
        }
    }
}

fn finish(name: &'static str, calls: usize, cpu_before: Option<f64>, wall: Instant, counters: Option<BTreeMap<String, f64>>) -> Step {
    let per_call = |seconds: f64| seconds * 1000.0 / calls as f64;
    let cpu_ms = match (cpu_before, cpu_seconds()) {
        (Some(before), Some(after)) => Some(per_call(after - before)),
        _ => None,
    };
    Step { name, calls, cpu_ms, wall_ms: per_call(wall.elapsed().as_secs_f64()), counters }
}
