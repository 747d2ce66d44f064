//! MariaDB status counters read around a piece of work, so "statements per resource" and "rows
//! read by table scans per event" are counted, not estimated.
//!
//! Session counters (`SHOW SESSION STATUS`) are exact for one connection: other clients do
//! not touch them, so a bench that runs library calls on its own session gets their exact
//! cost. Global counters (`SHOW GLOBAL STATUS`) cover the whole server, for work done on
//! connections the bench does not hold (a pool inside a library); anyone else using the
//! server in the meantime counts too, and reports say so.
//!
//! The counters the publisher bench reads ([`COUNTERS`]): `Com_stmt_execute` (statements run),
//! `Com_stmt_prepare` (statements prepared: a high share means the client's statement cache
//! is missing), `Handler_read_key` (index lookups), `Handler_read_next` (rows read along an
//! index), `Handler_read_rnd_next` (rows read by table scans: should stay near zero for point
//! lookups), `Handler_write` (rows inserted, including the journal rows triggers add).

use std::collections::BTreeMap;

use feedsync_db::Session;

use crate::stats::{number, round};

/// The publisher bench's counters (see the module comment).
pub const COUNTERS: [&str; 6] = [
    "Com_stmt_execute",
    "Com_stmt_prepare",
    "Handler_read_key",
    "Handler_read_next",
    "Handler_read_rnd_next",
    "Handler_write",
];

/// Whose counters to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Session,
    Global,
}

/// A snapshot of status counters (or a difference of two).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters(pub BTreeMap<String, i64>);

impl Counters {
    /// Reads `names` in `scope` on `session`.
    pub async fn read(
        session: &mut Session,
        scope: Scope,
        names: &[&str],
    ) -> anyhow::Result<Counters> {
        let list = names
            .iter()
            .map(|c| format!("'{c}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let scope = match scope {
            Scope::Session => "SESSION",
            Scope::Global => "GLOBAL",
        };
        let rows = session
            .query(
                &format!("SHOW {scope} STATUS WHERE Variable_name IN ({list})"),
                &[],
            )
            .await?;
        Ok(Counters(
            rows.iter()
                .filter_map(|r| Some((r.text("Variable_name")?, r.text("Value")?.parse().ok()?)))
                .collect(),
        ))
    }

    pub fn minus(&self, other: &Counters) -> Counters {
        Counters(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v - other.0.get(k).copied().unwrap_or(0)))
                .collect(),
        )
    }

    /// Adds `other` into this sum, counter by counter.
    pub fn add(&mut self, other: &Counters) {
        for (k, v) in &other.0 {
            *self.0.entry(k.clone()).or_default() += v;
        }
    }

    pub fn get(&self, name: &str) -> i64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    /// Each counter divided by `per`, for "per event" or "per resource" figures.
    pub fn per(&self, per: f64) -> BTreeMap<String, f64> {
        self.0
            .iter()
            .map(|(k, v)| (k.clone(), *v as f64 / per))
            .collect()
    }
}

/// Reads counters on one session and takes out what reading them costs.
///
/// Reading is itself a statement (`Session::query` prepares and executes it; `SHOW STATUS`
/// scans a temporary table), so two back-to-back reads differ by the read's own cost. That
/// cost is measured once, after the statement is in the client's statement cache, and
/// subtracted from every delta.
pub struct CounterMeter {
    names: Vec<&'static str>,
    overhead: Counters,
}

impl CounterMeter {
    /// A meter of this session's [`COUNTERS`].
    pub async fn calibrate(session: &mut Session) -> anyhow::Result<CounterMeter> {
        CounterMeter::calibrate_names(session, &COUNTERS).await
    }

    /// A meter of this session's `names`.
    pub async fn calibrate_names(
        session: &mut Session,
        names: &[&'static str],
    ) -> anyhow::Result<CounterMeter> {
        // The first read prepares the statement; the next two show the steady cost.
        Counters::read(session, Scope::Session, names).await?;
        let a = Counters::read(session, Scope::Session, names).await?;
        let b = Counters::read(session, Scope::Session, names).await?;
        Ok(CounterMeter {
            names: names.to_vec(),
            overhead: b.minus(&a),
        })
    }

    pub async fn read(&self, session: &mut Session) -> anyhow::Result<Counters> {
        Counters::read(session, Scope::Session, &self.names).await
    }

    /// What ran between two reads, without the second read's own cost.
    pub fn since(&self, after: &Counters, before: &Counters) -> Counters {
        Counters(
            after
                .minus(before)
                .minus(&self.overhead)
                .0
                .into_iter()
                .map(|(k, v)| (k, v.max(0)))
                .collect(),
        )
    }
}

pub fn per_json(map: &BTreeMap<String, f64>) -> serde_json::Value {
    serde_json::Value::Object(
        map.iter()
            .map(|(k, v)| (k.clone(), serde_json::json!(round(*v, 3))))
            .collect(),
    )
}

pub fn per_text(map: &BTreeMap<String, f64>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k} {}", number(*v)))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_and_sums_go_counter_by_counter() {
        let a = Counters([("x".to_owned(), 10), ("y".to_owned(), 3)].into());
        let b = Counters([("x".to_owned(), 4)].into());
        let d = a.minus(&b);
        assert_eq!((d.get("x"), d.get("y"), d.get("z")), (6, 3, 0));
        let mut sum = Counters::default();
        sum.add(&d);
        sum.add(&d);
        assert_eq!(sum.per(2.0)["x"], 6.0);
    }
}
