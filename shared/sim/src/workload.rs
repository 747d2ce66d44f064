//! A seeded workload that writes to an OpenMRS database the way OpenMRS itself writes, so
//! tests of the publisher see realistic changes: one transaction per user action, integer ids
//! from auto-increment, a fresh uuid in every uuid column, `creator` and `date_created` on
//! every row, soft deletes by voiding, obs edited by voiding and replacing, join rows
//! hard-deleted, and now and then a transaction that is rolled back.
//!
//! [`run`] returns a [`WorkloadLog`]: every committed write, in commit order. Tests use it as
//! the oracle of what the feed must show, so it holds exactly what was committed.
//!
//! The same code runs on the 1.9 and 2.x schemas, on MySQL/MariaDB and SQLite, because it
//! reads each table's columns first and writes only the columns a table has. The PRNG and the
//! clock are the workload's own, so the same seed on a freshly loaded database gives the same
//! writes, down to ids, uuids and dates.

use std::collections::HashMap;

use feedsync_core::rng::SplitMix64;
use feedsync_db::schema::Table;
use feedsync_db::{DbError, Dialect, Session, Value, quote_ident};

/// What the workload runs. [`Default`] is a run for tests: about 100 transactions, well
/// under a second on MariaDB.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// Same seed on the same freshly loaded database: same writes.
    pub seed: u64,
    pub patients: usize,
    pub visits_per_patient: usize,
    /// Obs rows per encounter. From 3 up, three of them are a vitals group: a parent obs and
    /// two members pointing at it through `obs_group_id`.
    pub obs_per_encounter: usize,
    /// Clinicians (user, person and provider) created before patients arrive. At least one is
    /// created whatever this says, because every encounter names a provider.
    pub providers: usize,
    /// Chance in percent that an action edits or voids earlier data instead of adding new.
    pub edit_percent: u32,
    /// Chance in percent that an action's transaction is rolled back instead of committed;
    /// capped at [`ROLLBACK_PERCENT_MAX`].
    pub rollback_percent: u32,
    /// Where the workload's clock starts (seconds since 1970, UTC). It advances a seeded few
    /// minutes per action, so the dates written are deterministic too.
    pub clock_start_unix_seconds: i64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            seed: 1,
            patients: 8,
            visits_per_patient: 2,
            obs_per_encounter: 5,
            providers: 2,
            edit_percent: 30,
            rollback_percent: 5,
            clock_start_unix_seconds: 1_704_096_000, // 2024-01-01 08:00:00 UTC
        }
    }
}

/// Largest share of rolled-back actions: at 100 no action would ever commit and the run
/// would not end.
pub const ROLLBACK_PERCENT_MAX: u32 = 50;
/// Longest pause between two user actions on the workload's clock.
const ACTION_GAP_SECONDS_MAX: u64 = 300;
/// Every row is created by `admin`, the one real user in the core dumps, as if it were logged
/// in; OpenMRS stamps `creator` with the logged-in user.
const ADMIN_USER_ID: i64 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Insert,
    Update,
    Delete,
}

/// One row written. `primary_key` names the row (several columns for join tables such as
/// `user_role`); `uuid` is the row's uuid, `None` for tables without one (`patient`,
/// `user_role`, `concept_numeric`).
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub table: String,
    pub op: Op,
    pub primary_key: Vec<(String, Value)>,
    pub uuid: Option<String>,
}

/// The user actions the workload performs, one transaction each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// A visit type, encounter type, encounter role or attribute type the dump lacks.
    CreateMetadata,
    /// A concept with its name, and its numeric, set-member or answer rows.
    CreateConcept,
    /// A clinician: person, name, user, role and provider.
    CreateUser,
    RegisterPatient,
    StartVisit,
    /// An encounter in an open visit, with its provider and obs.
    RecordEncounter,
    StopVisit,
    EditDemographics,
    /// Void an obs and insert its replacement pointing back through `previous_version`.
    EditObs,
    VoidIdentifier,
    VoidAttribute,
    /// Add or remove (hard delete) one `user_role` row.
    EditUserRoles,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::CreateMetadata => "create metadata",
            Action::CreateConcept => "create concept",
            Action::CreateUser => "create user",
            Action::RegisterPatient => "register patient",
            Action::StartVisit => "start visit",
            Action::RecordEncounter => "record encounter",
            Action::StopVisit => "stop visit",
            Action::EditDemographics => "edit demographics",
            Action::EditObs => "edit obs",
            Action::VoidIdentifier => "void identifier",
            Action::VoidAttribute => "void attribute",
            Action::EditUserRoles => "edit user roles",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CommittedTransaction {
    pub action: Action,
    pub writes: Vec<Write>,
}

/// Every committed transaction in commit order; rolled-back ones are only counted.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WorkloadLog {
    pub transactions: Vec<CommittedTransaction>,
    pub rolled_back_transactions: usize,
}

impl WorkloadLog {
    /// All committed writes in commit order.
    pub fn writes(&self) -> impl Iterator<Item = &Write> {
        self.transactions.iter().flat_map(|t| &t.writes)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("workload action {action:?} failed on table {table}: {source}")]
    Database {
        action: &'static str,
        table: &'static str,
        #[source]
        source: DbError,
    },
    #[error("workload action {action:?} failed at {statement}: {source}")]
    Transaction {
        action: &'static str,
        statement: &'static str,
        #[source]
        source: DbError,
    },
    #[error("table {table} is missing: load an OpenMRS schema (1.9 or later) into the database first")]
    MissingTable { table: &'static str },
    #[error(
        "table {table}: primary key {column} is neither given nor generated by the database \
         (on SQLite it must be declared INTEGER PRIMARY KEY)"
    )]
    KeyNotGenerated { table: &'static str, column: String },
    #[error("the database has no {what}; the workload takes it from the OpenMRS core metadata")]
    MissingMetadata { what: String },
    #[error(
        "workload action {action:?}: row {key} of table {table} is gone; \
         did something else write to the database during the run?"
    )]
    RowMissing { action: &'static str, table: &'static str, key: String },
}

/// Runs the workload on a database holding an OpenMRS schema with its core metadata, and
/// returns what it committed. The session must not be inside a transaction.
pub async fn run(session: &mut Session, config: &WorkloadConfig) -> Result<WorkloadLog, WorkloadError> {
    let mut workload = Workload {
        session,
        config: config.clone(),
        schema: HashMap::new(),
        rng: SplitMix64::new(config.seed),
        clock_unix_seconds: config.clock_start_unix_seconds,
        doing: "reading the schema",
        pending: Vec::new(),
        log: WorkloadLog::default(),
        meta: Metadata::default(),
        state: State::default(),
    };
    workload.read_schema().await?;
    workload.prepare_metadata().await?;
    for _ in 0..config.providers.max(1) {
        workload.transaction(Action::CreateUser, true, Step::Act(Action::CreateUser)).await?;
    }
    let rollback_percent = config.rollback_percent.min(ROLLBACK_PERCENT_MAX);
    loop {
        let main = workload.main_actions();
        if main.is_empty() {
            break;
        }
        let edits = workload.edit_actions();
        let action = if !edits.is_empty() && workload.rng.percent(u64::from(config.edit_percent)) {
            *workload.rng.pick(&edits)
        } else {
            *workload.rng.pick(&main)
        };
        let commit = !workload.rng.percent(u64::from(rollback_percent));
        workload.transaction(action, commit, Step::Act(action)).await?;
    }
    Ok(workload.log)
}

/// The tables the workload writes; their columns are read before the first write.
const WRITTEN_TABLES: [&str; 22] = [
    "concept", "concept_name", "concept_numeric", "concept_set", "concept_answer", "visit_type",
    "encounter_type", "encounter_role", "person_attribute_type", "person", "person_name",
    "person_address", "person_attribute", "patient", "patient_identifier", "users", "user_role",
    "provider", "visit", "encounter", "encounter_provider", "obs",
];

#[derive(Debug, Clone, Copy)]
enum Kind {
    Integer,
    Real,
    Text,
    Date,
    Time,
    DateTime,
}

impl Kind {
    fn of(declared_type: &str) -> Kind {
        let t = declared_type.to_ascii_lowercase();
        if t.contains("datetime") || t.contains("timestamp") {
            Kind::DateTime
        } else if t.contains("date") {
            Kind::Date
        } else if t.contains("time") {
            Kind::Time
        } else if t.contains("int") || t.contains("bit") || t.contains("bool") {
            Kind::Integer
        } else if ["double", "float", "real", "decimal", "numeric"].iter().any(|k| t.contains(k)) {
            Kind::Real
        } else {
            Kind::Text
        }
    }

    /// A value for a NOT NULL column without default that the workload knows nothing about
    /// (a column some schema version added): the zero of its type, or the clock for dates.
    fn filler(self, now: &str) -> Value {
        match self {
            Kind::Integer => Value::Int(0),
            Kind::Real => Value::Float(0.0),
            Kind::Text => Value::Text(String::new()),
            Kind::Date => Value::Text(now[..10].to_owned()),
            Kind::Time => Value::Text("00:00:00".to_owned()),
            Kind::DateTime => Value::Text(now.to_owned()),
        }
    }
}

/// Ids of the dump's metadata rows (or of rows created in their place) the actions refer to.
#[derive(Default)]
struct Metadata {
    location_id: i64,
    luhn_identifier_type: i64,
    /// A second identifier type, for the identifiers that get voided: the preferred one stays.
    spare_identifier_type: Option<i64>,
    text_attribute_type: Option<i64>,
    /// Its values are `location_id`s: an id hidden in a value, which a sync must translate.
    location_attribute_type: i64,
    encounter_role_id: i64,
    visit_type_id: i64,
    encounter_type_id: i64,
    /// Roles that may be granted and taken away (not the implicit Anonymous/Authenticated).
    roles: Vec<String>,
    weight_concept: i64,
    temperature_concept: i64,
    vitals_concept: i64,
    diagnosis_concept: i64,
    diagnosis_answers: Vec<i64>,
    note_concept: i64,
}

/// What the workload has committed so far, to choose later actions from. Cloned before an
/// action that will be rolled back, and restored after.
#[derive(Clone, Default)]
struct State {
    clinicians: Vec<Clinician>,
    user_roles: Vec<(i64, String)>,
    patients: Vec<Patient>,
    /// Obs that are not voided and not group parents: the ones a clinician may correct.
    leaf_obs: Vec<LeafObs>,
}

#[derive(Clone, Copy)]
struct Clinician {
    user_id: i64,
    provider_id: i64,
}

#[derive(Clone)]
struct Patient {
    person_id: i64,
    name_id: i64,
    address_id: i64,
    visits_left: usize,
    visit: Option<OpenVisit>,
    spare_identifiers: Vec<i64>,
    attributes: Vec<i64>,
}

#[derive(Clone, Copy)]
struct OpenVisit {
    visit_id: i64,
    encounter_recorded: bool,
}

#[derive(Clone, Copy)]
struct LeafObs {
    obs_id: i64,
    kind: ObsKind,
}

#[derive(Clone, Copy)]
enum ObsKind {
    Weight,
    Temperature,
    Diagnosis,
    Note,
}

fn can_start_visit(p: &Patient) -> bool {
    p.visit.is_none() && p.visits_left > 0
}
fn awaits_encounter(p: &Patient) -> bool {
    matches!(p.visit, Some(v) if !v.encounter_recorded)
}
fn visit_can_stop(p: &Patient) -> bool {
    matches!(p.visit, Some(v) if v.encounter_recorded)
}

struct Workload<'s> {
    session: &'s mut Session,
    config: WorkloadConfig,
    schema: HashMap<&'static str, Table>,
    rng: SplitMix64,
    clock_unix_seconds: i64,
    /// What is being done, for error messages.
    doing: &'static str,
    /// Writes of the open transaction; they join the log only when it commits.
    pending: Vec<Write>,
    log: WorkloadLog,
    meta: Metadata,
    state: State,
}

/// What one transaction does: a user action, or a piece of setup metadata.
enum Step<'a> {
    Act(Action),
    Insert { table: &'static str, values: &'a [(&'a str, Value)] },
    Concept(NewConcept<'a>),
}

#[derive(Clone, Copy)]
struct NewConcept<'a> {
    name: &'static str,
    datatype_id: i64,
    class_id: i64,
    /// Given for numeric concepts, which get a `concept_numeric` row.
    units: Option<&'static str>,
    members: &'a [i64],
    answers: &'a [i64],
}

fn db_error(action: &'static str, table: &'static str) -> impl FnOnce(DbError) -> WorkloadError {
    move |source| WorkloadError::Database { action, table, source }
}

fn missing(what: &str) -> WorkloadError {
    WorkloadError::MissingMetadata { what: what.to_owned() }
}

impl Workload<'_> {
    // ---- transactions and the one insert/update/delete path ----

    /// Runs `step` as one transaction: committed and logged, or rolled back, logging nothing
    /// and forgetting what the step added to the state. Returns the id the step created.
    async fn transaction(&mut self, action: Action, commit: bool, step: Step<'_>) -> Result<i64, WorkloadError> {
        let doing_before = std::mem::replace(&mut self.doing, action.name());
        self.clock_unix_seconds += 1 + self.rng.below(ACTION_GAP_SECONDS_MAX) as i64;
        let snapshot = (!commit).then(|| self.state.clone());
        let transaction_error =
            |statement| move |source| WorkloadError::Transaction { action: action.name(), statement, source };
        self.session.begin().await.map_err(transaction_error("begin"))?;
        let outcome = match step {
            Step::Act(action) => self.act(action).await.map(|()| 0),
            Step::Insert { table, values } => self.insert(table, values).await,
            Step::Concept(concept) => self.insert_concept(&concept).await,
        };
        let writes = std::mem::take(&mut self.pending);
        let Ok(value) = outcome else {
            // The action's own error says what went wrong; a failed rollback adds nothing.
            let _ = self.session.rollback().await;
            return outcome;
        };
        if commit {
            self.session.commit().await.map_err(transaction_error("commit"))?;
            self.log.transactions.push(CommittedTransaction { action, writes });
        } else {
            self.session.rollback().await.map_err(transaction_error("rollback"))?;
            self.state = snapshot.expect("snapshot taken for every rolled-back transaction");
            self.log.rolled_back_transactions += 1;
        }
        self.doing = doing_before;
        Ok(value)
    }

    fn table(&self, table: &'static str) -> Result<&Table, WorkloadError> {
        self.schema.get(table).ok_or(WorkloadError::MissingTable { table })
    }

    /// Inserts a row the way OpenMRS does: the given values for the columns the table has,
    /// plus a fresh uuid, `creator`, `date_created` and `voided`/`retired` where the table has
    /// them, plus a filler for any other NOT NULL column without default. Logs the write and
    /// returns the generated id (0 when the table's key is not generated).
    async fn insert(&mut self, table: &'static str, values: &[(&str, Value)]) -> Result<i64, WorkloadError> {
        let now = self.now();
        let schema = self.schema.get(table).ok_or(WorkloadError::MissingTable { table })?;
        let given = |column: &str| values.iter().find(|(name, _)| name.eq_ignore_ascii_case(column)).map(|(_, v)| v);
        for key in &schema.primary_key {
            if given(key).is_none() && schema.generated_key() != Some(key.as_str()) {
                return Err(WorkloadError::KeyNotGenerated { table, column: key.clone() });
            }
        }
        let mut columns = Vec::new();
        let mut params = Vec::new();
        for column in &schema.columns {
            let value = match (given(&column.name), column.name.as_str()) {
                (Some(value), _) => value.clone(),
                (None, _) if schema.generated_key() == Some(column.name.as_str()) => continue,
                (None, "uuid") => Value::Text(self.rng.uuid()),
                (None, "creator") => Value::Int(ADMIN_USER_ID),
                (None, "date_created") => Value::Text(now.clone()),
                (None, "voided" | "retired") => Value::Int(0),
                (None, _) if column.required_on_insert() => Kind::of(&column.data_type).filler(&now),
                (None, _) => continue,
            };
            columns.push(column.name.as_str());
            params.push(value);
        }
        let dialect = self.session.dialect();
        let sql = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            quote_ident(dialect, table),
            columns.iter().map(|c| quote_ident(dialect, c)).collect::<Vec<_>>().join(", "),
            vec!["?"; columns.len()].join(", ")
        );
        self.session.execute(&sql, &params).await.map_err(db_error(self.doing, table))?;
        let id = match schema.generated_key() {
            Some(_) => self.session.last_insert_id().await.map_err(db_error(self.doing, table))?,
            None => 0,
        };
        let value_of = |column: &str| {
            if schema.generated_key() == Some(column) {
                Value::Int(id)
            } else {
                columns.iter().position(|c| *c == column).map_or(Value::Null, |i| params[i].clone())
            }
        };
        let primary_key = schema.primary_key.iter().map(|k| (k.clone(), value_of(k))).collect();
        let uuid = value_of("uuid").to_text();
        self.pending.push(Write { table: table.to_owned(), op: Op::Insert, primary_key, uuid });
        Ok(id)
    }

    /// Updates one row, stamping `changed_by`/`date_changed` where the table has them (as
    /// OpenMRS's auditable interceptor does on every flush), and logs the write.
    async fn update(
        &mut self,
        table: &'static str,
        key: &[(&str, Value)],
        set: &[(&str, Value)],
    ) -> Result<(), WorkloadError> {
        let audit = [("changed_by", Value::Int(ADMIN_USER_ID)), ("date_changed", Value::Text(self.now()))];
        let schema = self.table(table)?;
        let assignments: Vec<(&str, Value)> =
            set.iter().chain(&audit).filter(|(column, _)| schema.has_column(column)).cloned().collect();
        if assignments.is_empty() {
            return Ok(());
        }
        let uuid = self.row_uuid(table, key).await?;
        let dialect = self.session.dialect();
        let set_clause =
            assignments.iter().map(|(c, _)| format!("{} = ?", quote_ident(dialect, c))).collect::<Vec<_>>().join(", ");
        let sql = format!("UPDATE {} SET {set_clause} WHERE {}", quote_ident(dialect, table), key_clause(dialect, key));
        let key_values = key.iter().map(|(_, v)| v.clone());
        let params: Vec<Value> = assignments.into_iter().map(|(_, v)| v).chain(key_values).collect();
        self.session.execute(&sql, &params).await.map_err(db_error(self.doing, table))?;
        self.log_write(table, Op::Update, key, uuid);
        Ok(())
    }

    /// Hard-deletes one row (join tables are not voided in OpenMRS) and logs the write.
    async fn delete(&mut self, table: &'static str, key: &[(&str, Value)]) -> Result<(), WorkloadError> {
        let uuid = self.row_uuid(table, key).await?;
        let dialect = self.session.dialect();
        let sql = format!("DELETE FROM {} WHERE {}", quote_ident(dialect, table), key_clause(dialect, key));
        let params: Vec<Value> = key.iter().map(|(_, v)| v.clone()).collect();
        self.session.execute(&sql, &params).await.map_err(db_error(self.doing, table))?;
        self.log_write(table, Op::Delete, key, uuid);
        Ok(())
    }

    /// Logs an update or delete, naming the row by its key in the schema's key order.
    fn log_write(&mut self, table: &'static str, op: Op, key: &[(&str, Value)], uuid: Option<String>) {
        let value_of = |column: &str| key.iter().find(|(c, _)| c.eq_ignore_ascii_case(column)).map(|(_, v)| v.clone());
        let key_columns = &self.schema[table].primary_key;
        let primary_key = key_columns.iter().map(|k| (k.clone(), value_of(k).unwrap_or(Value::Null))).collect();
        self.pending.push(Write { table: table.to_owned(), op, primary_key, uuid });
    }

    /// The uuid of the row an update or delete is about to touch, read first so the log names
    /// it, and so a row that is not there fails loudly instead of logging a write of nothing.
    async fn row_uuid(&mut self, table: &'static str, key: &[(&str, Value)]) -> Result<Option<String>, WorkloadError> {
        let has_uuid = self.table(table)?.has_column("uuid");
        let dialect = self.session.dialect();
        let sql = format!(
            "SELECT {} AS found FROM {} WHERE {}",
            if has_uuid { "uuid" } else { "1" },
            quote_ident(dialect, table),
            key_clause(dialect, key)
        );
        let params: Vec<Value> = key.iter().map(|(_, v)| v.clone()).collect();
        let rows = self.session.query(&sql, &params).await.map_err(db_error(self.doing, table))?;
        let Some(row) = rows.first() else {
            let key: Vec<String> = key.iter().map(|(c, v)| format!("{c}={}", v.to_text().unwrap_or_default())).collect();
            let key = key.join(",");
            return Err(WorkloadError::RowMissing { action: self.doing, table, key });
        };
        Ok(if has_uuid { row.text("found") } else { None })
    }

    async fn find_id(&mut self, table: &'static str, sql: &str, params: &[Value]) -> Result<Option<i64>, WorkloadError> {
        let rows = self.session.query(sql, params).await.map_err(db_error(self.doing, table))?;
        Ok(rows.first().and_then(|row| row.i64("id")))
    }

    /// The first row `sql` finds, or a new row made from `values` in its own transaction.
    async fn find_or_create(
        &mut self,
        table: &'static str,
        sql: &str,
        values: &[(&str, Value)],
    ) -> Result<i64, WorkloadError> {
        match self.find_id(table, sql, &[]).await? {
            Some(id) => Ok(id),
            None => self.transaction(Action::CreateMetadata, true, Step::Insert { table, values }).await,
        }
    }

    fn now(&self) -> String {
        format_unix_seconds(self.clock_unix_seconds)
    }

    // ---- setup ----

    /// Reads the written tables' columns and keys through the one schema reader
    /// (`feedsync_db::schema`), which says which key the database fills and which columns an
    /// insert must give.
    async fn read_schema(&mut self) -> Result<(), WorkloadError> {
        // MySQL names the schema to read; SQLite reads the one database the session has open.
        let schema_name = feedsync_db::schema::current_schema_name(self.session).await.map_err(db_error(self.doing, "(schema name)"))?;
        let mut schema = feedsync_db::schema::read_schema(self.session, &schema_name).await.map_err(db_error(self.doing, "(all written tables)"))?;
        for table in WRITTEN_TABLES {
            let name = schema.tables.keys().find(|name| name.eq_ignore_ascii_case(table)).cloned();
            let found = name.and_then(|name| schema.tables.remove(&name)).filter(|t| !t.columns.is_empty());
            self.schema.insert(table, found.ok_or(WorkloadError::MissingTable { table })?);
        }
        Ok(())
    }

    /// Finds the metadata rows the actions need in the dump, and creates what a core dump
    /// does not hold (visit and encounter types, the concepts obs are recorded against).
    async fn prepare_metadata(&mut self) -> Result<(), WorkloadError> {
        self.doing = "reading metadata";
        self.meta.location_id = self
            .find_id("location", "SELECT location_id AS id FROM location WHERE retired = 0 ORDER BY location_id", &[])
            .await?
            .ok_or_else(|| missing("location that is not retired"))?;
        // Prefer the type OpenMRS validates with Luhn mod 10, as the identifiers carry that check digit.
        let identifier_types = "SELECT patient_identifier_type_id AS id FROM patient_identifier_type \
             WHERE retired = 0 AND patient_identifier_type_id <> ? \
             ORDER BY CASE WHEN validator LIKE '%Luhn%' THEN 0 ELSE 1 END, patient_identifier_type_id";
        self.meta.luhn_identifier_type = self
            .find_id("patient_identifier_type", identifier_types, &[Value::Int(0)])
            .await?
            .ok_or_else(|| missing("patient identifier type"))?;
        self.meta.spare_identifier_type = self
            .find_id("patient_identifier_type", identifier_types, &[Value::Int(self.meta.luhn_identifier_type)])
            .await?;
        self.meta.text_attribute_type = self
            .find_id(
                "person_attribute_type",
                "SELECT person_attribute_type_id AS id FROM person_attribute_type \
                 WHERE retired = 0 AND format = 'java.lang.String' \
                 ORDER BY CASE WHEN name = 'Birthplace' THEN 0 ELSE 1 END, person_attribute_type_id",
                &[],
            )
            .await?;
        self.meta.location_attribute_type = self
            .find_or_create(
                "person_attribute_type",
                "SELECT person_attribute_type_id AS id FROM person_attribute_type \
                 WHERE retired = 0 AND format = 'org.openmrs.Location' ORDER BY person_attribute_type_id",
                &[
                    ("name", "Health Center".into()),
                    ("description", "Where the patient is usually seen".into()),
                    ("format", "org.openmrs.Location".into()),
                    ("searchable", Value::Int(0)),
                ],
            )
            .await?;
        self.meta.encounter_role_id = self
            .find_or_create(
                "encounter_role",
                "SELECT encounter_role_id AS id FROM encounter_role WHERE retired = 0 ORDER BY encounter_role_id",
                &[("name", "Clinician".into()), ("description", "The clinician who saw the patient".into())],
            )
            .await?;
        self.meta.visit_type_id = self
            .find_or_create(
                "visit_type",
                "SELECT visit_type_id AS id FROM visit_type WHERE retired = 0 ORDER BY visit_type_id",
                &[("name", "Facility Visit".into()), ("description", "Patient visits the facility".into())],
            )
            .await?;
        self.meta.encounter_type_id = self
            .find_or_create(
                "encounter_type",
                "SELECT encounter_type_id AS id FROM encounter_type WHERE retired = 0 ORDER BY encounter_type_id",
                &[("name", "Consultation".into()), ("description", "A clinician sees the patient".into())],
            )
            .await?;
        let roles = self
            .session
            .query("SELECT role FROM role WHERE role NOT IN ('Anonymous', 'Authenticated') ORDER BY role", &[])
            .await
            .map_err(db_error(self.doing, "role"))?;
        self.meta.roles = roles.iter().filter_map(|r| r.text("role")).collect();

        self.meta.weight_concept = self.concept("WEIGHT (KG)", "Numeric", "Finding", Some("kg"), &[], &[]).await?;
        self.meta.temperature_concept =
            self.concept("TEMPERATURE (C)", "Numeric", "Finding", Some("DEG C"), &[], &[]).await?;
        let members = [self.meta.weight_concept, self.meta.temperature_concept];
        self.meta.vitals_concept = self.concept("VITAL SIGNS", "N/A", "ConvSet", None, &members, &[]).await?;
        let mut answers = Vec::new();
        for name in ["MALARIA", "PNEUMONIA", "TUBERCULOSIS"] {
            answers.push(self.concept(name, "N/A", "Diagnosis", None, &[], &[]).await?);
        }
        self.meta.diagnosis_concept = self.concept("DIAGNOSIS", "Coded", "Question", None, &[], &answers).await?;
        self.meta.diagnosis_answers = answers;
        self.meta.note_concept = self.concept("CLINICAL NOTES", "Text", "Question", None, &[], &[]).await?;
        Ok(())
    }

    /// The concept with this English fully specified name, or a new one with its name, its
    /// numeric row (when `units` is given), set members and answers, in one transaction.
    async fn concept(
        &mut self,
        name: &'static str,
        datatype: &str,
        class: &str,
        units: Option<&'static str>,
        members: &[i64],
        answers: &[i64],
    ) -> Result<i64, WorkloadError> {
        let existing = "SELECT concept_id AS id FROM concept_name WHERE name = ? AND locale = 'en' \
             AND concept_name_type = 'FULLY_SPECIFIED' AND voided = 0 ORDER BY concept_id";
        if let Some(id) = self.find_id("concept_name", existing, &[name.into()]).await? {
            return Ok(id);
        }
        let datatype_id = self
            .find_id(
                "concept_datatype",
                "SELECT concept_datatype_id AS id FROM concept_datatype WHERE name = ?",
                &[datatype.into()],
            )
            .await?
            .ok_or_else(|| missing(&format!("concept datatype {datatype:?}")))?;
        let class_id = self
            .find_id("concept_class", "SELECT concept_class_id AS id FROM concept_class WHERE name = ?", &[class.into()])
            .await?
            .ok_or_else(|| missing(&format!("concept class {class:?}")))?;
        let concept = NewConcept { name, datatype_id, class_id, units, members, answers };
        self.transaction(Action::CreateConcept, true, Step::Concept(concept)).await
    }

    async fn insert_concept(&mut self, concept: &NewConcept<'_>) -> Result<i64, WorkloadError> {
        let NewConcept { name, datatype_id, class_id, units, members, answers } = *concept;
        let concept_id = self
            .insert(
                "concept",
                &[
                    ("datatype_id", datatype_id.into()),
                    ("class_id", class_id.into()),
                    ("is_set", Value::Int(i64::from(!members.is_empty()))),
                ],
            )
            .await?;
        self.insert(
            "concept_name",
            &[
                ("concept_id", concept_id.into()),
                ("name", name.into()),
                ("locale", "en".into()),
                ("locale_preferred", Value::Int(1)),
                ("concept_name_type", "FULLY_SPECIFIED".into()),
            ],
        )
        .await?;
        if let Some(units) = units {
            // 1.9 calls "allow decimals" `precise`; 2.x calls it `allow_decimal`.
            let numeric = [
                ("concept_id", concept_id.into()),
                ("units", units.into()),
                ("precise", Value::Int(1)),
                ("allow_decimal", Value::Int(1)),
            ];
            self.insert("concept_numeric", &numeric).await?;
        }
        for (position, member) in members.iter().enumerate() {
            let row = [
                ("concept_id", (*member).into()),
                ("concept_set", concept_id.into()),
                ("sort_weight", Value::Float(position as f64)),
            ];
            self.insert("concept_set", &row).await?;
        }
        for (position, answer) in answers.iter().enumerate() {
            let row = [
                ("concept_id", concept_id.into()),
                ("answer_concept", (*answer).into()),
                ("sort_weight", Value::Float(position as f64)),
            ];
            self.insert("concept_answer", &row).await?;
        }
        Ok(concept_id)
    }

    // ---- choosing actions ----

    /// Actions that move the scripted work forward; the run ends when none is left.
    fn main_actions(&self) -> Vec<Action> {
        let patients = &self.state.patients;
        let mut actions = Vec::new();
        if patients.len() < self.config.patients {
            actions.push(Action::RegisterPatient);
        }
        for (eligible, action) in [
            (can_start_visit as fn(&Patient) -> bool, Action::StartVisit),
            (awaits_encounter, Action::RecordEncounter),
            (visit_can_stop, Action::StopVisit),
        ] {
            if patients.iter().any(eligible) {
                actions.push(action);
            }
        }
        actions
    }

    /// Actions that change or void what earlier actions wrote.
    fn edit_actions(&self) -> Vec<Action> {
        let s = &self.state;
        [
            (!s.patients.is_empty(), Action::EditDemographics),
            (!s.leaf_obs.is_empty(), Action::EditObs),
            (s.patients.iter().any(|p| !p.spare_identifiers.is_empty()), Action::VoidIdentifier),
            (s.patients.iter().any(|p| !p.attributes.is_empty()), Action::VoidAttribute),
            (!s.clinicians.is_empty() && !self.meta.roles.is_empty(), Action::EditUserRoles),
        ]
        .into_iter()
        .filter_map(|(eligible, action)| eligible.then_some(action))
        .collect()
    }

    async fn act(&mut self, action: Action) -> Result<(), WorkloadError> {
        match action {
            Action::CreateUser => self.create_user().await,
            Action::RegisterPatient => self.register_patient().await,
            Action::StartVisit => self.start_visit().await,
            Action::RecordEncounter => self.record_encounter().await,
            Action::StopVisit => self.stop_visit().await,
            Action::EditDemographics => self.edit_demographics().await,
            Action::EditObs => self.edit_obs().await,
            Action::VoidIdentifier => self.void_identifier().await,
            Action::VoidAttribute => self.void_attribute().await,
            Action::EditUserRoles => self.edit_user_roles().await,
            Action::CreateMetadata | Action::CreateConcept => unreachable!("metadata is created once, during setup"),
        }
    }

    /// A random patient for which `eligible` holds; actions are chosen only when one exists.
    fn pick_patient(&mut self, eligible: fn(&Patient) -> bool) -> usize {
        let candidates: Vec<usize> =
            self.state.patients.iter().enumerate().filter(|(_, p)| eligible(p)).map(|(i, _)| i).collect();
        *self.rng.pick(&candidates)
    }

    // ---- the actions ----

    /// A person with a preferred name; users and patients both start this way.
    async fn insert_person(&mut self) -> Result<(i64, i64), WorkloadError> {
        let female = self.rng.percent(50);
        let given = *self.rng.pick(if female { &GIVEN_NAMES_FEMALE } else { &GIVEN_NAMES_MALE });
        let family = *self.rng.pick(&FAMILY_NAMES);
        let age_days = 365 + self.rng.below(80 * 365) as i64;
        let birthdate = format_unix_seconds(self.clock_unix_seconds - age_days * 86_400)[..10].to_owned();
        let person_id = self
            .insert(
                "person",
                &[
                    ("gender", if female { "F" } else { "M" }.into()),
                    ("birthdate", birthdate.into()),
                    ("birthdate_estimated", Value::Int(0)),
                    ("dead", Value::Int(0)),
                ],
            )
            .await?;
        let name_id = self
            .insert(
                "person_name",
                &[
                    ("person_id", person_id.into()),
                    ("preferred", Value::Int(1)),
                    ("given_name", given.into()),
                    ("family_name", family.into()),
                ],
            )
            .await?;
        Ok((person_id, name_id))
    }

    async fn create_user(&mut self) -> Result<(), WorkloadError> {
        let (person_id, _) = self.insert_person().await?;
        let number = 1_000 + self.rng.below(9_000);
        let system_id = format!("{number}-{}", luhn_check_digit(&number.to_string()));
        let (password, salt) = (self.rng.hex(128), self.rng.hex(128));
        let user_id = self
            .insert(
                "users",
                &[
                    ("system_id", system_id.into()),
                    ("username", format!("clinician{number}").into()),
                    ("password", password.into()),
                    ("salt", salt.into()),
                    ("person_id", person_id.into()),
                ],
            )
            .await?;
        // Clinicians get the Provider role when the dump defines it.
        let role = self.meta.roles.iter().find(|r| *r == "Provider").or(self.meta.roles.first()).cloned();
        if let Some(role) = role {
            self.insert("user_role", &[("user_id", user_id.into()), ("role", role.clone().into())]).await?;
            self.state.user_roles.push((user_id, role));
        }
        let identifier = format!("PRV-{number}");
        let provider = [("person_id", person_id.into()), ("identifier", identifier.into())];
        let provider_id = self.insert("provider", &provider).await?;
        self.state.clinicians.push(Clinician { user_id, provider_id });
        Ok(())
    }

    async fn register_patient(&mut self) -> Result<(), WorkloadError> {
        let (person_id, name_id) = self.insert_person().await?;
        let (city, province, country) = *self.rng.pick(&PLACES);
        let house = 1 + self.rng.below(400);
        let address_id = self
            .insert(
                "person_address",
                &[
                    ("person_id", person_id.into()),
                    ("preferred", Value::Int(1)),
                    ("address1", format!("House {house}").into()),
                    ("city_village", city.into()),
                    ("state_province", province.into()),
                    ("country", country.into()),
                ],
            )
            .await?;
        let mut attributes = Vec::new();
        let mut attribute_values = vec![(self.meta.location_attribute_type, self.meta.location_id.to_string())];
        if let Some(text_type) = self.meta.text_attribute_type {
            attribute_values.push((text_type, self.rng.pick(&PLACES).0.to_owned()));
        }
        for (type_id, value) in attribute_values {
            let row =
                [("person_id", person_id.into()), ("person_attribute_type_id", type_id.into()), ("value", value.into())];
            attributes.push(self.insert("person_attribute", &row).await?);
        }
        self.insert("patient", &[("patient_id", person_id.into())]).await?;
        let base = 100_000 + self.rng.below(900_000);
        let identifier = format!("{base}-{}", luhn_check_digit(&base.to_string()));
        self.insert_identifier(person_id, identifier, self.meta.luhn_identifier_type, true).await?;
        let mut spare_identifiers = Vec::new();
        if let Some(spare_type) = self.meta.spare_identifier_type {
            let old_number = format!("OLD-{}", self.rng.below(1_000_000));
            spare_identifiers.push(self.insert_identifier(person_id, old_number, spare_type, false).await?);
        }
        self.state.patients.push(Patient {
            person_id,
            name_id,
            address_id,
            visits_left: self.config.visits_per_patient,
            visit: None,
            spare_identifiers,
            attributes,
        });
        Ok(())
    }

    async fn insert_identifier(
        &mut self,
        patient_id: i64,
        identifier: String,
        type_id: i64,
        preferred: bool,
    ) -> Result<i64, WorkloadError> {
        let row = [
            ("patient_id", patient_id.into()),
            ("identifier", identifier.into()),
            ("identifier_type", type_id.into()),
            ("preferred", Value::Int(i64::from(preferred))),
            ("location_id", self.meta.location_id.into()),
        ];
        self.insert("patient_identifier", &row).await
    }

    async fn start_visit(&mut self) -> Result<(), WorkloadError> {
        let i = self.pick_patient(can_start_visit);
        let row = [
            ("patient_id", self.state.patients[i].person_id.into()),
            ("visit_type_id", self.meta.visit_type_id.into()),
            ("date_started", self.now().into()),
            ("location_id", self.meta.location_id.into()),
        ];
        let visit_id = self.insert("visit", &row).await?;
        let patient = &mut self.state.patients[i];
        patient.visits_left -= 1;
        patient.visit = Some(OpenVisit { visit_id, encounter_recorded: false });
        Ok(())
    }

    async fn record_encounter(&mut self) -> Result<(), WorkloadError> {
        let i = self.pick_patient(awaits_encounter);
        let person_id = self.state.patients[i].person_id;
        let visit_id = self.state.patients[i].visit.expect("patient awaits an encounter").visit_id;
        let row = [
            ("encounter_type", self.meta.encounter_type_id.into()),
            ("patient_id", person_id.into()),
            ("location_id", self.meta.location_id.into()),
            ("encounter_datetime", self.now().into()),
            ("visit_id", visit_id.into()),
        ];
        let encounter_id = self.insert("encounter", &row).await?;
        let clinician = *self.rng.pick(&self.state.clinicians);
        let row = [
            ("encounter_id", encounter_id.into()),
            ("provider_id", clinician.provider_id.into()),
            ("encounter_role_id", self.meta.encounter_role_id.into()),
        ];
        self.insert("encounter_provider", &row).await?;
        let mut obs_left = self.config.obs_per_encounter;
        if obs_left >= 3 {
            let vitals = self.meta.vitals_concept;
            let group_id = self.insert_obs(person_id, encounter_id, None, vitals, None).await?;
            for kind in [ObsKind::Weight, ObsKind::Temperature] {
                self.insert_leaf_obs(person_id, encounter_id, Some(group_id), kind).await?;
            }
            obs_left -= 3;
        }
        for _ in 0..obs_left {
            let kind = *self.rng.pick(&[ObsKind::Weight, ObsKind::Temperature, ObsKind::Diagnosis, ObsKind::Note]);
            self.insert_leaf_obs(person_id, encounter_id, None, kind).await?;
        }
        self.state.patients[i].visit = Some(OpenVisit { visit_id, encounter_recorded: true });
        Ok(())
    }

    async fn insert_leaf_obs(
        &mut self,
        person_id: i64,
        encounter_id: i64,
        group_id: Option<i64>,
        kind: ObsKind,
    ) -> Result<(), WorkloadError> {
        let value = self.obs_value(kind);
        let concept = self.concept_of(kind);
        let obs_id = self.insert_obs(person_id, encounter_id, group_id, concept, Some(value)).await?;
        self.state.leaf_obs.push(LeafObs { obs_id, kind });
        Ok(())
    }

    /// One obs row; `value` is `None` for a group parent, which holds its members instead.
    async fn insert_obs(
        &mut self,
        person_id: i64,
        encounter_id: i64,
        group_id: Option<i64>,
        concept_id: i64,
        value: Option<(&'static str, Value)>,
    ) -> Result<i64, WorkloadError> {
        let mut row = vec![
            ("person_id", person_id.into()),
            ("concept_id", concept_id.into()),
            ("encounter_id", encounter_id.into()),
            ("obs_datetime", self.now().into()),
            ("location_id", self.meta.location_id.into()),
            ("obs_group_id", group_id.map_or(Value::Null, Value::Int)),
            ("status", "FINAL".into()),
        ];
        row.extend(value);
        self.insert("obs", &row).await
    }

    fn concept_of(&self, kind: ObsKind) -> i64 {
        match kind {
            ObsKind::Weight => self.meta.weight_concept,
            ObsKind::Temperature => self.meta.temperature_concept,
            ObsKind::Diagnosis => self.meta.diagnosis_concept,
            ObsKind::Note => self.meta.note_concept,
        }
    }

    /// A plausible value for the kind of obs, as (value column, value).
    fn obs_value(&mut self, kind: ObsKind) -> (&'static str, Value) {
        match kind {
            // Tenths, as entered on a form: 3.0 to 120.0 kg, 35.0 to 41.0 degrees.
            ObsKind::Weight => ("value_numeric", Value::Float((30 + self.rng.below(1_171)) as f64 / 10.0)),
            ObsKind::Temperature => ("value_numeric", Value::Float((350 + self.rng.below(61)) as f64 / 10.0)),
            ObsKind::Diagnosis => ("value_coded", Value::Int(*self.rng.pick(&self.meta.diagnosis_answers))),
            ObsKind::Note => ("value_text", (*self.rng.pick(&NOTES)).into()),
        }
    }

    async fn stop_visit(&mut self) -> Result<(), WorkloadError> {
        let i = self.pick_patient(visit_can_stop);
        let visit_id = self.state.patients[i].visit.expect("patient has an open visit").visit_id;
        self.update("visit", &[("visit_id", visit_id.into())], &[("date_stopped", self.now().into())]).await?;
        self.state.patients[i].visit = None;
        Ok(())
    }

    async fn edit_demographics(&mut self) -> Result<(), WorkloadError> {
        let i = self.pick_patient(|_| true);
        let (name_id, address_id) = (self.state.patients[i].name_id, self.state.patients[i].address_id);
        // 0: the name, 1: the address, 2: both, as one form save.
        let what = self.rng.below(3);
        if what != 1 {
            let female = self.rng.percent(50);
            let given = *self.rng.pick(if female { &GIVEN_NAMES_FEMALE } else { &GIVEN_NAMES_MALE });
            let family = *self.rng.pick(&FAMILY_NAMES);
            let set = [("given_name", given.into()), ("family_name", family.into())];
            self.update("person_name", &[("person_name_id", name_id.into())], &set).await?;
        }
        if what != 0 {
            let (city, province, country) = *self.rng.pick(&PLACES);
            let house = 1 + self.rng.below(400);
            let set = [
                ("address1", format!("House {house}").into()),
                ("city_village", city.into()),
                ("state_province", province.into()),
                ("country", country.into()),
            ];
            self.update("person_address", &[("person_address_id", address_id.into())], &set).await?;
        }
        Ok(())
    }

    /// OpenMRS never edits an obs in place: it copies it with the new value, points the copy
    /// at the old one through `previous_version`, and voids the old one.
    async fn edit_obs(&mut self) -> Result<(), WorkloadError> {
        let k = self.rng.below(self.state.leaf_obs.len() as u64) as usize;
        let old = self.state.leaf_obs[k];
        let (value_column, value) = self.obs_value(old.kind);
        let rows = self
            .session
            .query("SELECT * FROM obs WHERE obs_id = ?", &[old.obs_id.into()])
            .await
            .map_err(db_error(self.doing, "obs"))?;
        let Some(row) = rows.into_iter().next() else {
            let key = format!("obs_id={}", old.obs_id);
            return Err(WorkloadError::RowMissing { action: self.doing, table: "obs", key });
        };
        const NOT_COPIED: [&str; 9] = [
            "obs_id", "uuid", "creator", "date_created", "voided", "voided_by", "date_voided", "void_reason",
            "previous_version",
        ];
        let mut copy: Vec<(&str, Value)> = row
            .columns
            .iter()
            .zip(row.values)
            .filter(|(column, _)| !NOT_COPIED.contains(&column.to_ascii_lowercase().as_str()) && **column != value_column)
            .map(|(column, value)| (column.as_str(), value))
            .collect();
        copy.push((value_column, value));
        copy.push(("previous_version", old.obs_id.into()));
        // Hibernate flushes inserts before updates, so the replacement is written first.
        let obs_id = self.insert("obs", &copy).await?;
        let void = self.void_values("edited");
        self.update("obs", &[("obs_id", old.obs_id.into())], &void).await?;
        self.state.leaf_obs[k] = LeafObs { obs_id, kind: old.kind };
        Ok(())
    }

    fn void_values(&self, reason: &str) -> [(&'static str, Value); 4] {
        [
            ("voided", Value::Int(1)),
            ("voided_by", Value::Int(ADMIN_USER_ID)),
            ("date_voided", self.now().into()),
            ("void_reason", reason.into()),
        ]
    }

    async fn void_identifier(&mut self) -> Result<(), WorkloadError> {
        let i = self.pick_patient(|p| !p.spare_identifiers.is_empty());
        let id = self.state.patients[i].spare_identifiers.pop().expect("patient has a spare identifier");
        let void = self.void_values("entered in error");
        self.update("patient_identifier", &[("patient_identifier_id", id.into())], &void).await
    }

    async fn void_attribute(&mut self) -> Result<(), WorkloadError> {
        let i = self.pick_patient(|p| !p.attributes.is_empty());
        let attributes = &self.state.patients[i].attributes;
        let k = self.rng.below(attributes.len() as u64) as usize;
        let id = self.state.patients[i].attributes.swap_remove(k);
        let void = self.void_values("no longer applies");
        self.update("person_attribute", &[("person_attribute_id", id.into())], &void).await
    }

    /// Saving a user whose roles changed: the join row is inserted or hard-deleted.
    async fn edit_user_roles(&mut self) -> Result<(), WorkloadError> {
        let user_id = self.rng.pick(&self.state.clinicians).user_id;
        let role = self.rng.pick(&self.meta.roles).clone();
        let key = [("user_id", user_id.into()), ("role", role.clone().into())];
        match self.state.user_roles.iter().position(|(u, r)| *u == user_id && *r == role) {
            Some(k) => {
                self.delete("user_role", &key).await?;
                self.state.user_roles.remove(k);
            }
            None => {
                self.insert("user_role", &key).await?;
                self.state.user_roles.push((user_id, role));
            }
        }
        Ok(())
    }
}

fn key_clause(dialect: Dialect, key: &[(&str, Value)]) -> String {
    key.iter().map(|(c, _)| format!("{} = ?", quote_ident(dialect, c))).collect::<Vec<_>>().join(" AND ")
}

fn format_unix_seconds(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0)
        .expect("workload clock within chrono's range")
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// The Luhn mod-10 check digit for a string of decimal digits, as OpenMRS's
/// `LuhnIdentifierValidator` appends it after a hyphen.
fn luhn_check_digit(digits: &str) -> u32 {
    let sum: u32 = digits
        .bytes()
        .rev()
        .map(|b| u32::from(b - b'0'))
        .enumerate()
        // Counting from the right, every other digit starting with the last is doubled,
        // because the check digit will stand to its right.
        .map(|(i, d)| if i % 2 == 0 { let d2 = d * 2; if d2 > 9 { d2 - 9 } else { d2 } } else { d })
        .sum();
    (10 - sum % 10) % 10
}

const GIVEN_NAMES_FEMALE: [&str; 10] =
    ["Aline", "Chimwemwe", "Grace", "Esperance", "Amina", "Tendai", "Mercy", "Joyce", "Fatima", "Marie"];
const GIVEN_NAMES_MALE: [&str; 10] =
    ["Jean", "Kondwani", "Emmanuel", "Thabo", "Joseph", "Samuel", "Innocent", "Moses", "Patrick", "Didier"];
const FAMILY_NAMES: [&str; 12] = [
    "Uwimana", "Banda", "Phiri", "Mukamana", "Mwale", "Niyonzima", "Okello", "Chirwa", "Habimana", "Nkurunziza",
    "Mutasa", "Ochieng",
];
const PLACES: [(&str, &str, &str); 7] = [
    ("Kigali", "Kigali City", "Rwanda"),
    ("Butare", "Southern Province", "Rwanda"),
    ("Lilongwe", "Central Region", "Malawi"),
    ("Blantyre", "Southern Region", "Malawi"),
    ("Maputo", "Maputo City", "Mozambique"),
    ("Gulu", "Northern Region", "Uganda"),
    ("Kisumu", "Kisumu County", "Kenya"),
];
const NOTES: [&str; 4] = [
    "Patient reports fever for three days.",
    "Cough, no shortness of breath.",
    "Follow up in two weeks.",
    "Adherence counselling given.",
];

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use super::*;
    use crate::testdb::{Source, TestDatabase};

    #[test]
    fn luhn_check_digits_match_known_values() {
        // 79927398713 is the textbook Luhn example; 100-8 is OpenMRS's own test identifier.
        assert_eq!(luhn_check_digit("7992739871"), 3);
        assert_eq!(luhn_check_digit("100"), 8);
        assert_eq!(luhn_check_digit("0"), 0);
    }

    #[test]
    fn uuids_are_version_4_and_follow_the_seed() {
        let (mut a, mut b) = (SplitMix64::new(7), SplitMix64::new(7));
        for _ in 0..100 {
            let uuid = a.uuid();
            assert_eq!(uuid, b.uuid());
            assert_eq!(uuid.len(), 36);
            assert_eq!(&uuid[14..15], "4", "{uuid}");
            assert!("89ab".contains(&uuid[19..20]), "{uuid}");
        }
        assert_ne!(SplitMix64::new(8).uuid(), SplitMix64::new(7).uuid());
    }

    #[test]
    fn run_is_send_so_tests_can_spawn_it() {
        fn assert_send<T: Send>(_: &T) {}
        let db = feedsync_db::Database::from_url("sqlite:///nonexistent/never-opened.sqlite").unwrap();
        // Builds the future without polling it: only its type matters.
        let future = async move {
            let mut session = db.session().await.unwrap();
            run(&mut session, &WorkloadConfig::default()).await
        };
        assert_send(&future);
    }

    #[tokio::test]
    async fn workload_matches_database_on_mariadb_openmrs_2_5() {
        check_workload(Source::MySql25).await;
    }

    #[tokio::test]
    async fn workload_matches_database_on_mariadb_openmrs_1_9_8() {
        check_workload(Source::MySql198).await;
    }

    #[tokio::test]
    async fn workload_matches_database_on_sqlite_openmrs_2_5() {
        check_workload(Source::Sqlite25).await;
    }

    #[tokio::test]
    async fn same_seed_gives_the_same_log() {
        let mut logs = Vec::new();
        for _ in 0..2 {
            let Some(db) = TestDatabase::create(Source::MySql198) else { return };
            let mut session = db.database.session().await.unwrap();
            logs.push(run(&mut session, &WorkloadConfig::default()).await.unwrap());
        }
        assert!(logs[0] == logs[1], "two runs with seed 1 on fresh databases wrote differently");
        let Some(db) = TestDatabase::create(Source::MySql198) else { return };
        let mut session = db.database.session().await.unwrap();
        let other = run(&mut session, &WorkloadConfig { seed: 2, ..WorkloadConfig::default() }).await.unwrap();
        let uuids = |log: &WorkloadLog| log.writes().filter_map(|w| w.uuid.clone()).collect::<HashSet<_>>();
        assert!(uuids(&logs[0]).is_disjoint(&uuids(&other)), "another seed must give other uuids");
    }

    /// Runs the default workload on a freshly loaded database and checks the log against the
    /// database, by queries that do not use the workload's code.
    async fn check_workload(source: Source) {
        let Some(db) = TestDatabase::create(source) else { return };
        let mut session = db.database.session().await.unwrap();
        let before = row_counts(&mut session).await;
        let started = std::time::Instant::now();
        let log = run(&mut session, &WorkloadConfig::default()).await.unwrap();
        eprintln!(
            "workload on {source:?}: {} transactions, {} writes, {} rolled back, in {:.2?}",
            log.transactions.len(),
            log.writes().count(),
            log.rolled_back_transactions,
            started.elapsed()
        );

        // The default run exercises every action, so the checks below are not vacuous.
        let actions: HashSet<Action> = log.transactions.iter().map(|t| t.action).collect();
        for action in [
            Action::CreateConcept, Action::CreateUser, Action::RegisterPatient, Action::StartVisit,
            Action::RecordEncounter, Action::StopVisit, Action::EditDemographics, Action::EditObs,
            Action::VoidIdentifier, Action::VoidAttribute, Action::EditUserRoles,
        ] {
            assert!(actions.contains(&action), "default run never did {action:?}");
        }
        assert!(log.rolled_back_transactions > 0, "default run rolled nothing back");
        assert!(log.writes().any(|w| w.op == Op::Delete), "default run deleted no join row");

        // Replaying the log gives which rows exist at the end and how many per table.
        let mut present: BTreeMap<(String, String), &Write> = BTreeMap::new();
        let mut deleted: BTreeMap<(String, String), &Write> = BTreeMap::new();
        let mut net: BTreeMap<String, i64> = BTreeMap::new();
        for write in log.writes() {
            let id = (write.table.clone(), format!("{:?}", write.primary_key));
            match write.op {
                Op::Insert => {
                    assert!(present.insert(id.clone(), write).is_none(), "{id:?} inserted twice");
                    deleted.remove(&id);
                    *net.entry(write.table.clone()).or_default() += 1;
                }
                Op::Update => {
                    assert!(present.contains_key(&id), "{id:?} updated but not (or no longer) inserted by the workload")
                }
                Op::Delete => {
                    assert!(present.remove(&id).is_some(), "{id:?} deleted but not inserted by the workload");
                    deleted.insert(id, write);
                    *net.entry(write.table.clone()).or_default() -= 1;
                }
            }
        }
        for write in present.values() {
            let found = find_row(&mut session, write).await;
            assert!(found.is_some(), "logged insert {write:?} is not in the database");
            if write.uuid.is_some() {
                assert_eq!(found.unwrap().text("uuid"), write.uuid, "uuid of {write:?}");
            }
        }
        for write in deleted.values() {
            assert!(find_row(&mut session, write).await.is_none(), "logged delete {write:?} is still in the database");
        }
        let after = row_counts(&mut session).await;
        for table in WRITTEN_TABLES {
            let expected = before[table] + net.get(table).copied().unwrap_or(0);
            let logged = net.get(table);
            assert_eq!(after[table], expected, "rows in {table}: before {}, logged net {logged:?}", before[table]);
        }

        // Updates made by voiding actions left their rows voided.
        for transaction in &log.transactions {
            if matches!(transaction.action, Action::EditObs | Action::VoidIdentifier | Action::VoidAttribute) {
                for write in transaction.writes.iter().filter(|w| w.op == Op::Update) {
                    let row = find_row(&mut session, write).await.unwrap();
                    assert_eq!(row.i64("voided"), Some(1), "{:?} should have voided {write:?}", transaction.action);
                }
            }
        }

        check_obs(&mut session).await;
        check_hidden_ids_and_check_digits(&mut session).await;
    }

    async fn row_counts(session: &mut Session) -> BTreeMap<&'static str, i64> {
        let mut counts = BTreeMap::new();
        for table in WRITTEN_TABLES {
            let sql = format!("SELECT COUNT(*) AS n FROM {}", quote_ident(session.dialect(), table));
            counts.insert(table, session.query(&sql, &[]).await.unwrap()[0].i64("n").unwrap());
        }
        counts
    }

    async fn find_row(session: &mut Session, write: &Write) -> Option<feedsync_db::Row> {
        let dialect = session.dialect();
        let condition: Vec<String> =
            write.primary_key.iter().map(|(c, _)| format!("{} = ?", quote_ident(dialect, c))).collect();
        let sql = format!("SELECT * FROM {} WHERE {}", quote_ident(dialect, &write.table), condition.join(" AND "));
        let params: Vec<Value> = write.primary_key.iter().map(|(_, v)| v.clone()).collect();
        session.query(&sql, &params).await.unwrap().into_iter().next()
    }

    async fn ids(session: &mut Session, sql: &str) -> Vec<i64> {
        session.query(sql, &[]).await.unwrap().iter().map(|r| r.i64("id").unwrap()).collect()
    }

    /// Edits form chains (each replacement points at a voided obs of the same person, concept
    /// and encounter; no obs is replaced twice; every voided obs was replaced) and groups hang
    /// together (members point at a valueless parent of the same encounter; parents have members).
    async fn check_obs(session: &mut Session) {
        let chains = ids(session, "SELECT n.obs_id AS id FROM obs n WHERE n.previous_version IS NOT NULL").await;
        assert!(!chains.is_empty(), "no obs was edited");
        let broken = ids(
            session,
            "SELECT n.obs_id AS id FROM obs n LEFT JOIN obs o ON o.obs_id = n.previous_version \
             WHERE n.previous_version IS NOT NULL AND (o.obs_id IS NULL OR o.voided <> 1 \
               OR o.person_id <> n.person_id OR o.concept_id <> n.concept_id OR o.encounter_id <> n.encounter_id \
               OR COALESCE(o.obs_group_id, 0) <> COALESCE(n.obs_group_id, 0))",
        )
        .await;
        assert!(broken.is_empty(), "obs whose previous_version is not a voided version of the same obs: {broken:?}");
        let forked = ids(
            session,
            "SELECT previous_version AS id FROM obs WHERE previous_version IS NOT NULL \
             GROUP BY previous_version HAVING COUNT(*) > 1",
        )
        .await;
        assert!(forked.is_empty(), "obs replaced twice: {forked:?}");
        let orphans = ids(
            session,
            "SELECT o.obs_id AS id FROM obs o WHERE o.voided = 1 \
             AND NOT EXISTS (SELECT 1 FROM obs n WHERE n.previous_version = o.obs_id)",
        )
        .await;
        assert!(orphans.is_empty(), "voided obs without a replacement: {orphans:?}");

        let members = ids(session, "SELECT obs_id AS id FROM obs WHERE obs_group_id IS NOT NULL").await;
        assert!(!members.is_empty(), "no obs group was recorded");
        let bad_members = ids(
            session,
            "SELECT m.obs_id AS id FROM obs m LEFT JOIN obs p ON p.obs_id = m.obs_group_id \
             WHERE m.obs_group_id IS NOT NULL AND (p.obs_id IS NULL OR p.person_id <> m.person_id \
               OR p.encounter_id <> m.encounter_id OR p.value_numeric IS NOT NULL OR p.value_coded IS NOT NULL \
               OR p.value_text IS NOT NULL)",
        )
        .await;
        assert!(bad_members.is_empty(), "group members whose parent is missing or not a group: {bad_members:?}");
        let empty_groups = ids(
            session,
            "SELECT p.obs_id AS id FROM obs p JOIN concept c ON c.concept_id = p.concept_id \
             WHERE c.is_set = 1 AND NOT EXISTS (SELECT 1 FROM obs m WHERE m.obs_group_id = p.obs_id AND m.voided = 0)",
        )
        .await;
        assert!(empty_groups.is_empty(), "obs groups without current members: {empty_groups:?}");
    }

    /// Location attributes hold existing location ids; Luhn-validated identifiers carry a
    /// correct check digit.
    async fn check_hidden_ids_and_check_digits(session: &mut Session) {
        // SQLite knows no SIGNED type but casts `AS SIGNED` to a number all the same.
        let rows = session
            .query(
                "SELECT a.value AS value, l.location_id AS location_id FROM person_attribute a \
                 JOIN person_attribute_type t ON t.person_attribute_type_id = a.person_attribute_type_id \
                 LEFT JOIN location l ON l.location_id = CAST(a.value AS SIGNED) \
                 WHERE t.format = 'org.openmrs.Location'",
                &[],
            )
            .await
            .unwrap();
        assert!(!rows.is_empty(), "no location-valued person attribute was written");
        for row in &rows {
            assert!(row.i64("location_id").is_some(), "attribute value {:?} is not a location id", row.text("value"));
        }
        let rows = session
            .query(
                "SELECT i.identifier AS identifier FROM patient_identifier i \
                 JOIN patient_identifier_type t ON t.patient_identifier_type_id = i.identifier_type \
                 WHERE t.validator LIKE '%Luhn%'",
                &[],
            )
            .await
            .unwrap();
        assert!(!rows.is_empty(), "no Luhn-checked identifier was written");
        for row in rows {
            let identifier = row.text("identifier").unwrap();
            let (base, check) = identifier.split_once('-').expect("base-check form");
            assert_eq!(check, luhn_check_digit(base).to_string(), "check digit of {identifier}");
        }
    }
}
