//! The network's acceptance test on MariaDB with the real OpenMRS 2.5 schema: a parent and three
//! children, seeded workloads at every child running while sync rounds run at the same time,
//! then two children editing fields of the same patients while rounds go on. The oracle is
//! built from what the writers logged (every committed workload write; every field edit with the
//! value it replaced), not from what the network reports, and checks at the end that
//!
//! 1. the parent holds everything every child wrote;
//! 2. each child holds exactly its catchment (its own patients and the ones it fetched);
//! 3. every committed field edit is in the final data, was seen and replaced by a later edit,
//!    or is kept in a conflict record;
//! 4. no child holds a stale version of a row the parent has.
//!
//! Needs MariaDB and `../shared/openmrs` (skipped without them, failing under `CI=true`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use feedsync_sim::network::{Network, assert_parent_holds, compare_dbs, one_text, patient_uuids};
use feedsync_db::{Database, DbError, Session, Value};
use feedsync_node::exchange;
use feedsync_wire::network::Conflict;
use feedsync_sim::testdb::Source;
use feedsync_sim::workload::{self, Action, Op, WorkloadConfig, WorkloadLog};

const CHILDREN: [&str; 3] = ["north", "south", "east"];
/// Pause between two rounds of one child's round loop, so writers get a turn on 2 cores.
const ROUND_PAUSE_MS: u64 = 15;
/// North's patients fetched into south (the ones both edit).
const FETCHED_PATIENTS: usize = 2;
/// Field edits per edit driver, and the longest pause between two of them.
const EDITS_PER_SITE: usize = 50;
const EDIT_PAUSE_MS_MAX: u64 = 20;
/// Longest an edit transaction holds its row lock after writing (a form save writes several
/// rows before it commits); rounds that touch the row meanwhile wait for it.
const EDIT_HOLD_MS_MAX: u64 = 80;
/// Tries of one edit transaction that MariaDB refuses with a lock conflict.
const EDIT_TRIES_MAX: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parent_and_three_children_on_mariadb_with_concurrent_writers() {
    let started = Instant::now();
    let Some(net) = Network::start(Source::MySql25, &CHILDREN).await else { return };
    let net = Arc::new(net);
    eprintln!("network started in {:.1?}", started.elapsed());
    let mut base_patients: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for site in std::iter::once("parent").chain(CHILDREN) {
        base_patients.insert(site, patient_uuids(net.db(site)).await);
    }

    // Shared metadata (the clinic's encounter type, concepts, attribute types) is created once,
    // centrally, and reaches every child before the children's workloads look for it.
    let parent_log = run_workload(net.db("parent").clone(), 7, 1).await;
    net.settle().await;
    assert_eq!(one_text(net.db("east"), "SELECT COUNT(*) FROM encounter_type WHERE name = 'Consultation'", &[]).await.as_deref(), Some("1"));

    // Phase 1: every child registers and treats its own patients while every child's rounds
    // (and the parent's sequencer) run at the same time.
    let phase = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let loops = start_round_loops(&net, &stop);
    let writers: Vec<_> = [("north", 101, 3), ("south", 202, 3), ("east", 303, 2)]
        .into_iter()
        .map(|(site, seed, patients)| tokio::spawn(run_workload(net.db(site).clone(), seed, patients)))
        .collect();
    let mut logs: BTreeMap<&str, Vec<WorkloadLog>> = BTreeMap::new();
    for (site, writer) in CHILDREN.into_iter().zip(writers) {
        logs.entry(site).or_default().push(writer.await.expect("workload task"));
    }
    let phase1_rounds = stop_round_loops(loops, &stop).await;
    let settle_conflicts = net.settle().await;
    eprintln!("phase 1 (concurrent workloads) in {:.1?}: {phase1_rounds}; settle: {settle_conflicts} conflicts", phase.elapsed());

    // Phase 2: some of north's patients turn up at south, found by identifier and fetched.
    let north_own = registered_patients(&logs["north"]);
    let mut fetched: Vec<String> = Vec::new();
    for patient in &north_own {
        if fetched.len() == FETCHED_PATIENTS {
            break;
        }
        let identifier_sql = "SELECT pi.identifier FROM patient_identifier pi JOIN person pe ON pe.person_id = pi.patient_id \
                              WHERE pe.uuid = ? AND pi.voided = 0 ORDER BY pi.preferred DESC, pi.patient_identifier_id";
        let Some(identifier) = one_text(net.db("north"), identifier_sql, &[patient.as_str().into()]).await else { continue };
        let found = net.child("south").find_patients(&identifier, 10).await.unwrap();
        assert!(found.iter().any(|c| &c.uuid == patient), "south finds north's patient {patient} by identifier {identifier}: {found:?}");
        let (applied, held) = net.child("south").fetch_patient(patient, "transferred in").await.unwrap();
        assert!(applied > 3 && held == 0, "fetched {patient}: {applied} rows applied, {held} held");
        fetched.push(patient.clone());
    }
    assert_eq!(fetched.len(), FETCHED_PATIENTS, "north registered enough patients with an identifier: {north_own:?}");
    net.settle().await;

    // Phase 3: north and south edit the fetched patients' names, person rows and text
    // attributes (some fields at both, some at one only) while rounds run and every child's
    // workload goes on with new patients of its own.
    let targets = edit_targets(net.db("north"), &fetched).await;
    let mut edits: Vec<FieldEdit> = Vec::new();
    // One same-field edit at each site before any round: whichever reaches the parent second
    // conflicts, so the test cannot pass without a conflict to account for.
    let (name_table, name_uuid) = targets.iter().find(|t| t.0 == "person_name").cloned().expect("a name to edit");
    for site in ["north", "south"] {
        let mut session = net.db(site).session().await.unwrap();
        let after = format!("{site}-opening");
        let (before, _) = edit_field(&mut session, name_table, &name_uuid, "given_name", &after, 0).await;
        edits.push(FieldEdit { site, table: name_table, uuid: name_uuid.clone(), column: "given_name", before, after });
    }
    let phase = Instant::now();
    let loops = start_round_loops(&net, &stop);
    let drivers: Vec<_> =
        [("north", 11), ("south", 22)].into_iter().map(|(site, seed)| tokio::spawn(edit_driver(net.db(site).clone(), site, seed, targets.clone()))).collect();
    let writers: Vec<_> = [("north", 404, 1), ("south", 505, 1), ("east", 606, 1)]
        .into_iter()
        .map(|(site, seed, patients)| tokio::spawn(run_workload(net.db(site).clone(), seed, patients)))
        .collect();
    let mut lock_retries = 0;
    for driver in drivers {
        let (driven, retries) = driver.await.expect("edit driver task");
        edits.extend(driven);
        lock_retries += retries;
    }
    for (site, writer) in CHILDREN.into_iter().zip(writers) {
        logs.entry(site).or_default().push(writer.await.expect("workload task"));
    }
    let phase3_rounds = stop_round_loops(loops, &stop).await;
    let settle_conflicts = net.settle().await;
    eprintln!(
        "phase 3 (concurrent edits) in {:.1?}: {} field edits ({lock_retries} lock retries); {phase3_rounds}; settle: {settle_conflicts} conflicts",
        phase.elapsed(),
        edits.len()
    );

    // ---- oracle ----
    let oracle = Instant::now();
    for site in ["parent", "north", "south", "east"] {
        let mut s = net.db(site).session().await.unwrap();
        let held = exchange::held_items(&mut s, None, 100).await.unwrap();
        assert!(held.is_empty(), "held at {site}: {:#?}", held.iter().map(|h| (&h.peer, &h.item.table, &h.item.key, &h.reason)).collect::<Vec<_>>());
    }

    // 1. The parent holds everything: every row of every child, equal; every logged insert
    // still at its child is at the parent; every logged delete is gone there too.
    for site in CHILDREN {
        assert_parent_holds(&compare_dbs(net.db(site), net.db("parent")).await, site);
        let counts = check_log_at_parent(net.db(site), net.db("parent"), &logs[site]).await;
        eprintln!("{site}: {counts}");
    }

    // 2. Each child holds exactly its catchment.
    let own: BTreeMap<&str, BTreeSet<String>> = CHILDREN.into_iter().map(|site| (site, registered_patients(&logs[site]))).collect();
    let parent_own = registered_patients(std::slice::from_ref(&parent_log));
    let everyone: BTreeSet<String> = own.values().flatten().chain(&parent_own).cloned().collect();
    let at_parent: BTreeSet<String> = patient_uuids(net.db("parent")).await.difference(&base_patients["parent"]).cloned().collect();
    assert_eq!(at_parent, everyone, "the parent holds every patient registered anywhere");
    for site in CHILDREN {
        let mut expected = own[site].clone();
        if site == "south" {
            expected.extend(fetched.iter().cloned());
        }
        let held: BTreeSet<String> = patient_uuids(net.db(site)).await.difference(&base_patients[site]).cloned().collect();
        assert_eq!(held, expected, "{site} holds exactly its own patients{}", if site == "south" { " and the fetched ones" } else { "" });
        // Not even a person row of anyone else's patient (patient data hangs off person by
        // foreign keys, so none of their rows can be here either).
        let others: Vec<String> = everyone.difference(&expected).cloned().collect();
        let present = present_uuids(net.db(site), "person", &others).await;
        assert!(present.is_empty(), "{site} holds person rows of patients outside its catchment: {present:?}");
    }
    assert!(patient_uuids(net.db("east")).await.is_disjoint(&fetched.iter().cloned().collect()), "east holds none of the fetched patients");

    // 3. Every committed field edit is in the final data, was read and replaced by a later
    // edit, or is kept in a conflict record.
    let mut conflicts: Vec<(&str, Conflict)> = Vec::new();
    for site in ["parent", "north", "south", "east"] {
        let mut s = net.db(site).session().await.unwrap();
        conflicts.extend(exchange::list_conflicts(&mut s, true, 10_000).await.unwrap().into_iter().map(|c| (site, c)));
    }
    let (accounted, unaccounted) = account_for_edits(&net, &edits, &conflicts).await;
    eprintln!(
        "field edits: {} logged; {} final, {} replaced after being read, {} kept in a conflict record",
        edits.len(),
        accounted.get("final").unwrap_or(&0),
        accounted.get("replaced").unwrap_or(&0),
        accounted.get("conflict").unwrap_or(&0)
    );
    if !unaccounted.is_empty() {
        eprintln!("{}", unaccounted.join("\n"));
    }
    assert!(
        unaccounted.is_empty(),
        "{} committed field edits are neither in the final data, nor replaced after being read, nor in a conflict record (table above)",
        unaccounted.len() - 1
    );
    let edited: BTreeSet<(&str, &str)> = edits.iter().map(|e| (e.table, e.uuid.as_str())).collect();
    let on_edited = conflicts.iter().filter(|(_, c)| edited.contains(&(c.table.as_str(), c.key.as_str())) && !c.fields.is_empty()).count();
    eprintln!(
        "conflict records: {} ({} at the parent, {} at children), {on_edited} on edited rows",
        conflicts.len(),
        conflicts.iter().filter(|(site, _)| *site == "parent").count(),
        conflicts.iter().filter(|(site, _)| *site != "parent").count()
    );
    assert!(on_edited > 0, "the same-field edits at north and south produced no conflict record");

    // 4. No child holds a stale version: every row both have is equal.
    for site in CHILDREN {
        let comparison = compare_dbs(net.db("parent"), net.db(site)).await;
        for t in &comparison.tables {
            assert!(
                t.differing == 0 && t.only_in_b == 0,
                "parent vs {site}, table {}: {} differing, {} only at the child: {:?}",
                t.table,
                t.differing,
                t.only_in_b,
                t.examples
            );
        }
        let rows: u64 = comparison.tables.iter().map(|t| t.rows_b).sum();
        let parent_rows: u64 = comparison.tables.iter().map(|t| t.rows_a).sum();
        eprintln!("{site}: {rows} rows, all equal at the parent ({parent_rows} rows)");
    }
    eprintln!("oracle in {:.1?}; whole test in {:.1?}", oracle.elapsed(), started.elapsed());
}

// ---- writers ----

async fn run_workload(database: Database, seed: u64, patients: usize) -> WorkloadLog {
    let mut session = database.session().await.unwrap();
    let config = WorkloadConfig { seed, patients, visits_per_patient: 1, obs_per_encounter: 3, ..WorkloadConfig::default() };
    workload::run(&mut session, &config).await.unwrap_or_else(|e| panic!("workload seed {seed} at {}: {e}", database.display_name()))
}

/// The patients a workload registered (the person rows of its registrations).
fn registered_patients(logs: &[WorkloadLog]) -> BTreeSet<String> {
    logs.iter()
        .flat_map(|log| &log.transactions)
        .filter(|t| t.action == Action::RegisterPatient)
        .flat_map(|t| &t.writes)
        .filter(|w| w.table == "person" && w.op == Op::Insert)
        .filter_map(|w| w.uuid.clone())
        .collect()
}

/// One committed field edit: at `site`, `column` of the row `uuid` went from `before` (read
/// under the row lock in the same transaction) to `after` (unique across the test).
#[derive(Debug, Clone)]
struct FieldEdit {
    site: &'static str,
    table: &'static str,
    uuid: String,
    column: &'static str,
    before: Option<String>,
    after: String,
}

/// The columns a site edits: `given_name`, `cause_of_death_non_coded` and an attribute's
/// `value` at both (same-field conflicts), the others at one site only (merged silently).
fn edited_columns(table: &str, site: &str) -> &'static [&'static str] {
    match (table, site) {
        ("person_name", "north") => &["given_name", "middle_name"],
        ("person_name", _) => &["given_name", "family_name2"],
        ("person", "north") => &["cause_of_death_non_coded", "gender"],
        ("person", _) => &["cause_of_death_non_coded"],
        ("person_attribute", _) => &["value"],
        _ => unreachable!("no edits of {table}"),
    }
}

/// The rows the edit drivers edit: each fetched patient's person, current name and text
/// attributes (not the location attribute: its value is an id the profile translates).
async fn edit_targets(database: &Database, patients: &[String]) -> Vec<(&'static str, String)> {
    let mut session = database.session().await.unwrap();
    let mut targets = Vec::new();
    for patient in patients {
        targets.push(("person", patient.clone()));
        let names = "SELECT pn.uuid AS uuid FROM person_name pn JOIN person pe ON pe.person_id = pn.person_id WHERE pe.uuid = ? AND pn.voided = 0";
        let attributes = "SELECT a.uuid AS uuid FROM person_attribute a JOIN person pe ON pe.person_id = a.person_id \
                          JOIN person_attribute_type t ON t.person_attribute_type_id = a.person_attribute_type_id \
                          WHERE pe.uuid = ? AND t.format = 'java.lang.String'";
        for (table, sql) in [("person_name", names), ("person_attribute", attributes)] {
            for row in session.query(sql, &[patient.as_str().into()]).await.unwrap() {
                targets.push((table, row.text("uuid").unwrap()));
            }
        }
    }
    targets
}

/// Edits one field in its own transaction, reading the value it replaces under the row lock
/// and committing `hold_ms` after the write; retried when MariaDB refuses it for a lock
/// conflict. Returns the value replaced and the retries.
async fn edit_field(session: &mut Session, table: &str, uuid: &str, column: &str, after: &str, hold_ms: u64) -> (Option<String>, usize) {
    for attempt in 0..EDIT_TRIES_MAX {
        session.begin().await.unwrap();
        let outcome = async {
            let rows = session.query(&format!("SELECT {column} AS value FROM {table} WHERE uuid = ? FOR UPDATE"), &[uuid.into()]).await?;
            let before = rows.first().unwrap_or_else(|| panic!("{table} {uuid} is gone")).text("value");
            session
                .execute(&format!("UPDATE {table} SET {column} = ?, changed_by = 1, date_changed = NOW() WHERE uuid = ?"), &[after.into(), uuid.into()])
                .await?;
            tokio::time::sleep(Duration::from_millis(hold_ms)).await;
            Ok::<_, DbError>(before)
        }
        .await;
        match outcome {
            Ok(before) => {
                session.commit().await.unwrap();
                return (before, attempt);
            }
            Err(e) => {
                let _ = session.rollback().await;
                assert!(is_lock_conflict(&e), "editing {table}.{column} of {uuid}: {e}");
            }
        }
    }
    panic!("editing {table}.{column} of {uuid}: still refused for lock conflicts after {EDIT_TRIES_MAX} tries");
}

fn is_lock_conflict(e: &DbError) -> bool {
    let message = e.to_string();
    e.is_retryable() || message.contains("(MySQL error 1213)") || message.contains("(MySQL error 1205)")
}

/// A seeded driver: `EDITS_PER_SITE` edits of random fields of the targets, with random pauses.
async fn edit_driver(database: Database, site: &'static str, seed: u64, targets: Vec<(&'static str, String)>) -> (Vec<FieldEdit>, usize) {
    let mut rng = feedsync_core::rng::SplitMix64::new(seed);
    let mut session = database.session().await.unwrap();
    let mut edits = Vec::new();
    let mut retries = 0;
    for n in 0..EDITS_PER_SITE {
        let (table, uuid) = &targets[rng.below(targets.len() as u64) as usize];
        let columns = edited_columns(table, site);
        let column = columns[rng.below(columns.len() as u64) as usize];
        let after = format!("{site}-{n:03}");
        let hold_ms = rng.below(EDIT_HOLD_MS_MAX);
        let (before, tries) = edit_field(&mut session, table, uuid, column, &after, hold_ms).await;
        retries += tries;
        edits.push(FieldEdit { site, table, uuid: uuid.clone(), column, before, after });
        tokio::time::sleep(Duration::from_millis(rng.below(EDIT_PAUSE_MS_MAX))).await;
    }
    (edits, retries)
}

// ---- rounds ----

#[derive(Debug, Default)]
struct RoundStats {
    rounds: usize,
    pushed: usize,
    pulled: usize,
    conflicts: usize,
    /// Rounds and sequencer runs that failed with a retryable error, and were retried.
    retried: Vec<String>,
}

impl std::fmt::Display for RoundStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} rounds ({} pushed, {} pulled, {} conflicts), {} retried", self.rounds, self.pushed, self.pulled, self.conflicts, self.retried.len())
    }
}

/// One task per child, each running the parent's sequencer and that child's round in a loop
/// until `stop`, so pushes of different children meet at the parent too.
fn start_round_loops(net: &Arc<Network>, stop: &Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<RoundStats>> {
    stop.store(false, Ordering::SeqCst);
    CHILDREN.into_iter().map(|site| tokio::spawn(round_loop(net.clone(), site, stop.clone()))).collect()
}

async fn stop_round_loops(loops: Vec<tokio::task::JoinHandle<RoundStats>>, stop: &AtomicBool) -> RoundStats {
    stop.store(true, Ordering::SeqCst);
    let mut total = RoundStats::default();
    for l in loops {
        let s = l.await.expect("round loop task");
        total.rounds += s.rounds;
        total.pushed += s.pushed;
        total.pulled += s.pulled;
        total.conflicts += s.conflicts;
        total.retried.extend(s.retried);
    }
    for why in &total.retried {
        eprintln!("  retried: {why}");
    }
    total
}

async fn round_loop(net: Arc<Network>, site: &'static str, stop: Arc<AtomicBool>) -> RoundStats {
    let mut stats = RoundStats::default();
    loop {
        let last = stop.load(Ordering::SeqCst);
        let mut session = net.publisher.app.database.session().await.unwrap();
        match feedsync_node::sequencer::drain(&mut session, &net.publisher.app.model, &net.publisher.app.config, 1_000).await {
            Ok(_) => {}
            Err(e) if is_lock_conflict(&e) => stats.retried.push(format!("parent's sequencer: {e}")),
            Err(e) => panic!("parent's sequencer: {e}"),
        }
        drop(session);
        match net.child(site).round().await {
            Ok(r) => {
                stats.rounds += 1;
                stats.pushed += r.pushed;
                stats.pulled += r.pulled;
                stats.conflicts += r.conflicts;
            }
            Err(e) if e.is_retryable() => stats.retried.push(format!("round of {site}: {e}")),
            Err(e) => panic!("round of {site} failed with an error that is not retryable: {e}"),
        }
        if last {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(ROUND_PAUSE_MS)).await;
    }
}

// ---- oracle helpers ----

/// Of `uuids`, those with a row in `table`.
async fn present_uuids(database: &Database, table: &str, uuids: &[String]) -> BTreeSet<String> {
    let mut session = database.session().await.unwrap();
    let mut present = BTreeSet::new();
    for chunk in uuids.chunks(500) {
        let marks = vec!["?"; chunk.len()].join(", ");
        let params: Vec<Value> = chunk.iter().map(|u| Value::from(u.as_str())).collect();
        present
            .extend(session.query(&format!("SELECT uuid FROM {table} WHERE uuid IN ({marks})"), &params).await.unwrap().iter().filter_map(|r| r.text("uuid")));
    }
    present
}

/// Every insert a child logged whose row is still there is at the parent (by uuid); every
/// `user_role` the child deleted and did not add again is not at the parent (by user uuid and
/// role). Returns what was checked.
async fn check_log_at_parent(child: &Database, parent: &Database, logs: &[WorkloadLog]) -> String {
    let mut inserted: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut deleted_roles: BTreeSet<(i64, String)> = BTreeSet::new();
    let mut without_uuid = 0;
    for write in logs.iter().flat_map(|l| l.writes()) {
        match (write.op, &write.uuid, write.table.as_str()) {
            (Op::Insert, Some(uuid), table) => inserted.entry(table).or_default().push(uuid.clone()),
            (Op::Delete, None, "user_role") => {
                let key: BTreeMap<&str, &Value> = write.primary_key.iter().map(|(c, v)| (c.as_str(), v)).collect();
                deleted_roles.insert((key["user_id"].as_i64().unwrap(), key["role"].to_text().unwrap()));
            }
            (Op::Delete, _, table) => panic!("the oracle does not know how to check a delete of {table}"),
            (Op::Insert, None, _) => without_uuid += 1,
            (Op::Update, _, _) => {}
        }
    }
    let (mut checked, mut gone) = (0, 0);
    for (table, uuids) in &inserted {
        let at_child = present_uuids(child, table, uuids).await;
        let at_child: Vec<String> = at_child.into_iter().collect();
        let at_parent = present_uuids(parent, table, &at_child).await;
        let missing: Vec<&String> = at_child.iter().filter(|u| !at_parent.contains(*u)).collect();
        assert!(missing.is_empty(), "{table}: rows inserted at {} are not at the parent: {missing:?}", child.display_name());
        checked += at_child.len();
        gone += uuids.len() - at_child.len();
    }
    let mut deletes_checked = 0;
    let mut cs = child.session().await.unwrap();
    let mut ps = parent.session().await.unwrap();
    for (user_id, role) in &deleted_roles {
        let still = cs.query("SELECT 1 FROM user_role WHERE user_id = ? AND role = ?", &[Value::Int(*user_id), role.as_str().into()]).await.unwrap();
        if !still.is_empty() {
            continue; // added again later
        }
        let Some(user) = cs.query("SELECT uuid FROM users WHERE user_id = ?", &[Value::Int(*user_id)]).await.unwrap().first().and_then(|r| r.text("uuid"))
        else {
            continue;
        };
        let at_parent = ps
            .query(
                "SELECT 1 FROM user_role ur JOIN users u ON u.user_id = ur.user_id WHERE u.uuid = ? AND ur.role = ?",
                &[user.as_str().into(), role.as_str().into()],
            )
            .await
            .unwrap();
        assert!(at_parent.is_empty(), "user_role {user}+{role} was deleted at {} and is still at the parent", child.display_name());
        deletes_checked += 1;
    }
    let transactions: usize = logs.iter().map(|l| l.transactions.len()).sum();
    format!(
        "{transactions} committed workload transactions; {checked} inserted rows at the parent by uuid ({gone} gone at the child), \
         {deletes_checked} deletes absent at the parent, {without_uuid} inserts without uuid left to the comparison"
    )
}

/// Sorts every edit into `final` (its value is the parent's now), `replaced` (a later edit read
/// it as the value it replaced) or `conflict` (a conflict record somewhere keeps it). Returns the
/// counts and a table of the edits in none of them (header first).
async fn account_for_edits(net: &Network, edits: &[FieldEdit], conflicts: &[(&str, Conflict)]) -> (BTreeMap<&'static str, usize>, Vec<String>) {
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut unaccounted = Vec::new();
    for edit in edits {
        let value_sql = format!("SELECT {} FROM {} WHERE uuid = ?", edit.column, edit.table);
        let at_parent = one_text(net.db("parent"), &value_sql, &[edit.uuid.as_str().into()]).await;
        let same_field = |e: &&FieldEdit| e.table == edit.table && e.uuid == edit.uuid && e.column == edit.column;
        let wanted = serde_json::Value::String(edit.after.clone());
        let kept = |c: &Conflict| {
            c.table == edit.table
                && c.key == edit.uuid
                && [&c.parent_version, &c.child_version].into_iter().any(|v| v.as_ref().and_then(|f| f.get(edit.column)) == Some(&wanted))
        };
        let how = if at_parent.as_deref() == Some(edit.after.as_str()) {
            "final"
        } else if edits.iter().filter(same_field).any(|e| e.before.as_deref() == Some(edit.after.as_str())) {
            "replaced"
        } else if conflicts.iter().any(|(_, c)| kept(c)) {
            "conflict"
        } else {
            if unaccounted.is_empty() {
                unaccounted.push(format!(
                    "{:<6} {:<17} {:<38} {:<25} {:<12} {:<12} {:<12} {:<12} {:<12}",
                    "site", "table", "uuid", "column", "before", "after", "parent", "north", "south"
                ));
            }
            let north = one_text(net.db("north"), &value_sql, &[edit.uuid.as_str().into()]).await;
            let south = one_text(net.db("south"), &value_sql, &[edit.uuid.as_str().into()]).await;
            let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "NULL".into());
            unaccounted.push(format!(
                "{:<6} {:<17} {:<38} {:<25} {:<12} {:<12} {:<12} {:<12} {:<12}",
                edit.site,
                edit.table,
                edit.uuid,
                edit.column,
                show(&edit.before),
                edit.after,
                show(&at_parent),
                show(&north),
                show(&south)
            ));
            continue;
        };
        *counts.entry(how).or_default() += 1;
    }
    (counts, unaccounted)
}

/// A local write that commits while a version from the other side is being merged into the
/// same row is merged with it (or kept in a conflict record), never silently overwritten: the
/// receiving side reads the row it merges into under the row's lock. Deterministic: the local
/// write holds the row lock across the receiving transaction's read, at a child (pull) and at
/// the parent (push).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_write_committing_while_the_other_side_merges_is_not_lost() {
    let Some(net) = Network::start(Source::MySql25, &["north", "south"]).await else { return };
    run_workload(net.db("parent").clone(), 7, 1).await;
    net.settle().await;
    let log = run_workload(net.db("north").clone(), 101, 1).await;
    net.settle().await;
    let patient = registered_patients(std::slice::from_ref(&log)).into_iter().next().expect("north registered a patient");
    net.child("south").fetch_patient(&patient, "transferred in").await.unwrap();
    net.settle().await;
    let name_sql = "SELECT pn.uuid FROM person_name pn JOIN person pe ON pe.person_id = pn.person_id WHERE pe.uuid = ? AND pn.voided = 0";
    let name = one_text(net.db("north"), name_sql, &[patient.as_str().into()]).await.unwrap();
    let value_of =
        async |site: &str, column: &str| one_text(net.db(site), &format!("SELECT {column} FROM person_name WHERE uuid = ?"), &[name.as_str().into()]).await;

    // At a child: north's given name reached the parent; south writes its own in a transaction
    // still open while south's round pulls north's.
    let mut north = net.db("north").session().await.unwrap();
    edit_field(&mut north, "person_name", &name, "given_name", "north-1", 0).await;
    net.child("north").round().await.unwrap();
    let mut south = net.db("south").session().await.unwrap();
    south.begin().await.unwrap();
    south.execute("UPDATE person_name SET given_name = 'south-1' WHERE uuid = ?", &[name.as_str().into()]).await.unwrap();
    let (round, ()) = tokio::join!(
        async {
            net.publisher.publish().await;
            net.child("south").round().await
        },
        async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            south.commit().await.unwrap();
        }
    );
    round.unwrap();
    net.settle().await;

    // At the parent: a write at the parent itself, open while north's push of the same field
    // is merged there.
    edit_field(&mut north, "person_name", &name, "middle_name", "north-2", 0).await;
    let mut parent = net.db("parent").session().await.unwrap();
    parent.begin().await.unwrap();
    parent.execute("UPDATE person_name SET middle_name = 'parent-2' WHERE uuid = ?", &[name.as_str().into()]).await.unwrap();
    let (round, ()) = tokio::join!(net.child("north").round(), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        parent.commit().await.unwrap();
    });
    round.unwrap();
    net.settle().await;

    let mut conflicts: Vec<Conflict> = Vec::new();
    for site in ["parent", "north", "south"] {
        let mut s = net.db(site).session().await.unwrap();
        conflicts.extend(exchange::list_conflicts(&mut s, true, 100).await.unwrap());
    }
    let mut lost = Vec::new();
    for (column, values) in [("given_name", ["north-1", "south-1"]), ("middle_name", ["north-2", "parent-2"])] {
        let now = value_of("parent", column).await;
        for site in ["north", "south"] {
            assert_eq!(value_of(site, column).await, now, "{column} at {site} and at the parent");
        }
        for value in values {
            let kept = conflicts.iter().any(|c| {
                c.key == name
                    && [&c.parent_version, &c.child_version].into_iter().any(|v| v.as_ref().and_then(|f| f.get(column)) == Some(&serde_json::json!(value)))
            });
            if now.as_deref() != Some(value) && !kept {
                lost.push(format!("{column} = {value:?} (now {now:?})"));
            }
        }
    }
    assert!(lost.is_empty(), "overwritten without a conflict record: {lost:?}; conflict records: {conflicts:#?}");
}
