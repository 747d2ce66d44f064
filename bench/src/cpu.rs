//! CPU time of this process (publisher, sequencer and client all run in it) and of the MariaDB
//! server, read from /proc, so each phase can say which side was busy: a phase where the
//! database used most of the CPU is bound by SQL, one where this process did is bound by
//! rendering, hashing or compression. Linux only; elsewhere the figures are absent.
//!
//! The MariaDB figure is server-wide: other users of the same server during the run count too.

use std::time::Instant;

/// Clock ticks per second of /proc's utime and stime; 100 on every Linux this runs on, and the
/// bench takes no libc dependency just to ask `sysconf`.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields are counted after its closing parenthesis.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / CLOCK_TICKS_PER_SECOND)
}

/// CPU seconds (user and system) another process of this machine has used so far, e.g. a
/// Node peer the bench started; `None` once it has exited or off Linux.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    cpu_seconds(&pid.to_string())
}

/// The process id of the MariaDB server, if one runs on this machine.
fn database_server_pid() -> Option<String> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if matches!(comm.trim(), "mariadbd" | "mysqld") {
            return Some(name);
        }
    }
    None
}

/// A starting point for measuring one phase.
pub struct Meter {
    started: Instant,
    bench: Option<f64>,
    database_pid: Option<String>,
    database: Option<f64>,
}

/// CPU used during a phase, in cores (CPU seconds per wall second).
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub bench_cores: Option<f64>,
    pub database_cores: Option<f64>,
}

impl Meter {
    pub fn start() -> Meter {
        let database_pid = database_server_pid();
        Meter {
            started: Instant::now(),
            bench: cpu_seconds("self"),
            database: database_pid.as_deref().and_then(cpu_seconds),
            database_pid,
        }
    }

    pub fn stop(&self) -> Usage {
        let wall = self.started.elapsed().as_secs_f64();
        let per_wall = |before: Option<f64>, after: Option<f64>| Some((after? - before?) / wall);
        Usage {
            bench_cores: per_wall(self.bench, cpu_seconds("self")),
            database_cores: per_wall(
                self.database,
                self.database_pid.as_deref().and_then(cpu_seconds),
            ),
        }
    }
}

impl Usage {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "bench_process_cores": self.bench_cores.map(|x| crate::stats::round(x, 2)),
            "mariadb_server_cores": self.database_cores.map(|x| crate::stats::round(x, 2)),
        })
    }

    pub fn describe(&self) -> String {
        let show = |x: Option<f64>| x.map_or("n/a".to_owned(), |x| format!("{x:.2}"));
        format!(
            "CPU cores busy: publisher+client {}, mariadbd {}",
            show(self.bench_cores),
            show(self.database_cores)
        )
    }
}
