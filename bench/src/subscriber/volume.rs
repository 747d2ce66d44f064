//! Database A at volume, quickly and realistically.
//!
//! Generating a million obs through the row-by-row workload would take the better part of an
//! hour here (about 2,500 rows/s), so A is built in three steps, all **after** capture is
//! installed, so the publisher journals every row through its triggers as a real change:
//!
//! 1. the seeded OpenMRS-style workload registers a base of patients, row by row, with
//!    visits, encounters, obs groups, edits, voids and a few rolled-back transactions;
//! 2. set-based SQL copies those patients again and again (`INSERT ... SELECT`, one
//!    transaction per copy): person, patient, person_name, person_address,
//!    person_attribute, patient_identifier, visit, encounter, encounter_provider and obs,
//!    each row with a fresh `UUID()` and its references to copied rows moved to the copy;
//! 3. the sequencer publishes the whole journal (timed: events per second).
//!
//! Why after install and not before (when the install snapshot would publish the rows): the
//! feed then holds every table in the same mix from start to end (each copy's patients, then
//! their names, visits, encounters and obs, copy after copy), as a clinic's feed does, instead
//! of the snapshot's table-by-table order (all persons, then all names, ..., then a million
//! obs). So the subscriber's rate does not depend on where in the feed it is, the step
//! profile of the first few thousand entries is representative of the whole run, and two
//! sizes compare per resource. Only the dump's metadata comes from the install snapshot.
//!
//! Copies keep each base row's values (dates, concepts, voided flags, the clinician, the
//! location) and give it new ids: `id + copy * span`, where `span` is the table's largest id
//! plus one, so copies never collide with each other or with the base. Identifiers get a
//! `-<copy>` suffix so they stay distinct.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, ensure};
use feedsync_node::config::Config;
use feedsync_db::{Database, Session, Value, quote_ident};
use feedsync_core::model::Model;
use feedsync_db::schema::read_schema;
use feedsync_sim::workload::{self, WorkloadConfig};

use feedsync_bench::database::{self, Drain};

/// The tables copied, parents before children: the triggers of a copied row look up its
/// person and encounter, which must already be there.
pub const COPIED_TABLES: [&str; 10] = [
    "person",
    "patient",
    "person_name",
    "person_address",
    "person_attribute",
    "patient_identifier",
    "visit",
    "encounter",
    "encounter_provider",
    "obs",
];
/// Patients the row-by-row workload registers before copying (fewer if fewer are asked for).
pub const BASE_PATIENTS_DEFAULT: usize = 100;
/// Visits per base patient; obs per encounter follow from `--obs-per-patient` (one encounter
/// per visit in the workload).
const VISITS_PER_PATIENT: usize = 4;
/// Most copies of the base; with the flags' limits this is never reached.
const COPIES_MAX: usize = 10_000;

#[derive(Debug, Clone)]
pub struct VolumeConfig {
    pub seed: u64,
    pub patients: usize,
    pub obs_per_patient: usize,
    pub base_patients: usize,
}

impl VolumeConfig {
    /// The base workload's settings: obs per encounter so that a patient's visits hold about
    /// `obs_per_patient` obs (edits add a few replacements).
    pub fn workload(&self) -> WorkloadConfig {
        let visits = VISITS_PER_PATIENT.min(self.obs_per_patient.max(1));
        WorkloadConfig {
            seed: self.seed,
            patients: self.base_patients(),
            visits_per_patient: visits,
            obs_per_encounter: self.obs_per_patient.div_ceil(visits).max(1),
            ..WorkloadConfig::default()
        }
    }

    pub fn base_patients(&self) -> usize {
        self.base_patients.min(self.patients).max(1)
    }

    /// Copies of the base needed to reach `patients` (rounded up to whole copies).
    pub fn copies(&self) -> usize {
        self.patients.div_ceil(self.base_patients()) - 1
    }
}

/// What was built at A, and how fast.
#[derive(Debug, Clone)]
pub struct Volume {
    pub snapshot_rows: u64,
    pub base_patients: usize,
    pub copies: usize,
    /// Committed row writes of the base workload, and their rate (captured: triggers on).
    pub base_rows_written: usize,
    pub base_seconds: f64,
    /// Rows the copies inserted, and their rate (set-based, triggers journaling each row).
    pub copied_rows: u64,
    pub copy_seconds: f64,
    /// The sequencer publishing the whole journal.
    pub drain: Drain,
    /// Rows at A in the copied tables, and in every published table.
    pub rows_by_table: BTreeMap<String, i64>,
    pub published_rows: i64,
}

impl Volume {
    pub fn patients(&self) -> i64 {
        self.rows_by_table.get("patient").copied().unwrap_or(0)
    }
    pub fn obs(&self) -> i64 {
        self.rows_by_table.get("obs").copied().unwrap_or(0)
    }
}

/// Builds A: capture, base workload, copies, everything published.
pub async fn build(
    a: &Database,
    model: &Model,
    config: &VolumeConfig,
    publisher: &Config,
) -> anyhow::Result<Volume> {
    let copies = config.copies();
    ensure!(copies <= COPIES_MAX, "{copies} copies is over {COPIES_MAX}");
    let snapshot_rows = database::install(a, model).await?.snapshot_rows;
    let mut session = a.session().await?;
    let patients_before = single_i64(
        &mut session,
        "SELECT COALESCE(MAX(patient_id), 0) AS n FROM patient",
    )
    .await?;

    let workload = config.workload();
    eprintln!(
        "  base: workload with {} patients, {} visits each, {} obs per encounter...",
        workload.patients, workload.visits_per_patient, workload.obs_per_encounter
    );
    let start = Instant::now();
    let log = workload::run(&mut session, &workload)
        .await
        .context("base workload")?;
    let base_seconds = start.elapsed().as_secs_f64();
    let base_rows_written = log.writes().count();

    let rows = session
        .query(
            "SELECT MIN(patient_id) AS lo, MAX(patient_id) AS hi FROM patient WHERE patient_id > ?",
            &[Value::Int(patients_before)],
        )
        .await?;
    let (lo, hi) = rows
        .first()
        .and_then(|r| Some((r.i64("lo")?, r.i64("hi")?)))
        .context("the base workload registered no patient")?;
    let plan = CopyPlan::read(&mut session, a, model, lo, hi).await?;
    eprintln!("  copies: {copies} copies of {} patients...", config.base_patients());
    let start = Instant::now();
    let mut copied_rows = 0;
    for copy in 1..=copies {
        session.begin().await?;
        let result = async {
            let mut rows = 0;
            for statement in plan.statements(copy as i64) {
                rows += session
                    .execute(&statement, &[])
                    .await
                    .with_context(|| format!("copy {copy}: {statement}"))?;
            }
            anyhow::Ok(rows)
        }
        .await;
        match result {
            Ok(rows) => {
                session.commit().await?;
                copied_rows += rows;
            }
            Err(e) => {
                let _ = session.rollback().await;
                return Err(e);
            }
        }
        if copy % 10 == 0 || copy == copies {
            eprintln!(
                "    {copy}/{copies} copies, {copied_rows} rows, {:.0} s",
                start.elapsed().as_secs_f64()
            );
        }
    }
    let copy_seconds = start.elapsed().as_secs_f64();

    eprintln!("  publishing the journal...");
    let drain = database::drain(a, model, publisher).await?;
    let mut rows_by_table = BTreeMap::new();
    for table in COPIED_TABLES {
        if plan.tables.contains_key(table) {
            let sql = format!("SELECT COUNT(*) AS n FROM {}", quote_ident(session.dialect(), table));
            let n = single_i64(&mut session, &sql).await?;
            rows_by_table.insert(table.to_owned(), n);
        }
    }
    let published_rows = published_rows(&mut session, model).await?;
    Ok(Volume {
        snapshot_rows,
        base_patients: config.base_patients(),
        copies,
        base_rows_written,
        base_seconds,
        copied_rows,
        copy_seconds,
        drain,
        rows_by_table,
        published_rows,
    })
}

/// Rows in every table the model publishes (what a full copy of the same data moves).
pub async fn published_rows(session: &mut Session, model: &Model) -> anyhow::Result<i64> {
    let mut total = 0;
    for table in model.entities.keys() {
        let sql = format!("SELECT COUNT(*) AS n FROM {}", quote_ident(session.dialect(), table));
        total += single_i64(session, &sql).await?;
    }
    Ok(total)
}

async fn single_i64(session: &mut Session, sql: &str) -> anyhow::Result<i64> {
    Ok(session
        .query(sql, &[])
        .await?
        .first()
        .and_then(|r| r.i64("n"))
        .unwrap_or(0))
}

/// For each copied table: its columns, its own id column and the span of its ids.
struct CopyPlan {
    tables: BTreeMap<String, CopiedTable>,
    /// The base patients' ids.
    lo: i64,
    hi: i64,
}

struct CopiedTable {
    columns: Vec<String>,
    id_column: String,
    /// Largest id plus one: a copy moves ids by a multiple of it.
    span: i64,
    /// Columns referencing a copied table, with the table whose ids they hold.
    references: BTreeMap<String, String>,
}

impl CopyPlan {
    async fn read(
        session: &mut Session,
        a: &Database,
        model: &Model,
        lo: i64,
        hi: i64,
    ) -> anyhow::Result<CopyPlan> {
        let schema = read_schema(session, a.schema_name()).await?;
        let mut tables = BTreeMap::new();
        for table in COPIED_TABLES {
            let (Some(found), Some(entity)) = (schema.tables.get(table), model.entity(table)) else {
                continue;
            };
            let [id_column] = found.primary_key.as_slice() else {
                anyhow::bail!("{table} has no single-column primary key to copy by");
            };
            let span = single_i64(
                session,
                &format!("SELECT COALESCE(MAX({id_column}), 0) + 1 AS n FROM {table}"),
            )
            .await?;
            let mut references = BTreeMap::new();
            for reference in &entity.references {
                // patient shares person's ids (patient_id is its person's id).
                let target = if reference.target_table == "patient" {
                    "person"
                } else {
                    reference.target_table.as_str()
                };
                if COPIED_TABLES.contains(&target) {
                    references.insert(reference.column.clone(), target.to_owned());
                }
            }
            tables.insert(
                table.to_owned(),
                CopiedTable {
                    columns: found.columns.iter().map(|c| c.name.clone()).collect(),
                    id_column: id_column.clone(),
                    span,
                    references,
                },
            );
        }
        for needed in ["person", "patient", "obs"] {
            ensure!(
                tables.contains_key(needed),
                "table {needed} is missing or not published"
            );
        }
        Ok(CopyPlan { tables, lo, hi })
    }

    /// The `INSERT ... SELECT` statements of copy number `copy` (1, 2, ...), parents first.
    fn statements(&self, copy: i64) -> Vec<String> {
        let base = format!(
            "SELECT b.patient_id FROM patient b WHERE b.patient_id BETWEEN {} AND {}",
            self.lo, self.hi
        );
        let mut statements = Vec::new();
        for table in COPIED_TABLES {
            let Some(t) = self.tables.get(table) else { continue };
            let expressions: Vec<String> = t
                .columns
                .iter()
                .map(|column| {
                    let quoted = format!("t.`{column}`");
                    if let Some(target) = t.references.get(column) {
                        let span = self.tables.get(target).map_or(0, |x| x.span);
                        format!("{quoted} + {}", copy * span)
                    } else if *column == t.id_column {
                        format!("{quoted} + {}", copy * t.span)
                    } else if column == "uuid" {
                        "UUID()".to_owned()
                    } else if table == "patient_identifier" && column == "identifier" {
                        format!("CONCAT({quoted}, '-{copy}')")
                    } else {
                        quoted
                    }
                })
                .collect();
            let belongs = match table {
                "person" => format!("t.person_id IN ({base})"),
                "patient" => format!("t.patient_id BETWEEN {} AND {}", self.lo, self.hi),
                "person_name" | "person_address" | "person_attribute" | "obs" => {
                    format!("t.person_id IN ({base})")
                }
                "encounter_provider" => format!(
                    "t.encounter_id IN (SELECT e.encounter_id FROM encounter e WHERE e.patient_id IN ({base}))"
                ),
                _ => format!("t.patient_id IN ({base})"),
            };
            statements.push(format!(
                "INSERT INTO `{table}` ({}) SELECT {} FROM `{table}` t WHERE {belongs} ORDER BY t.`{}`",
                t.columns
                    .iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                expressions.join(", "),
                t.id_column
            ));
        }
        statements
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_up_to_whole_copies() {
        let c = |patients, base| VolumeConfig {
            seed: 1,
            patients,
            obs_per_patient: 100,
            base_patients: base,
        };
        assert_eq!(c(10_000, 100).copies(), 99);
        assert_eq!(c(150, 100).copies(), 1);
        assert_eq!(c(50, 100).copies(), 0);
        assert_eq!(c(50, 100).base_patients(), 50);
        let w = c(10_000, 100).workload();
        assert_eq!((w.visits_per_patient, w.obs_per_encounter), (4, 25));
        let w = VolumeConfig { obs_per_patient: 2, ..c(10, 10) }.workload();
        assert_eq!((w.visits_per_patient, w.obs_per_encounter), (2, 1));
    }
}
