//! A clinic simulator for the demo network and for tests that want facility data that looks
//! like the field's: patients registered with names from Rwanda, Malawi, Mozambique and Kenya,
//! identifiers carrying the facility's prefix, visits, vital signs and lab results as obs
//! against real-looking concepts (CIEL names and uuids), name corrections, address changes,
//! obs corrected the OpenMRS way (the old one voided, the new one pointing back through
//! `previous_version`) and obs voided as entered in error. Each action is one transaction, as
//! an OpenMRS form save is.
//!
//! Two halves:
//! - [`create_metadata`] runs once at the central server: the concepts, the visit and
//!   encounter types, the identifier type, and per facility a location and two clinicians.
//!   Their uuids are fixed (derived from their names), so every database agrees on them, a
//!   facility finds them by uuid once synced, and running it twice creates nothing new.
//! - [`Clinic`] is one facility's front desk and consultation rooms, writing to that
//!   facility's database one action at a time ([`Clinic::step`]) and saying in plain words
//!   what it did. Its choices come from a seeded PRNG: the same seed on the same fresh
//!   database gives the same patients, uuids, identifiers and values. Dates are the wall
//!   clock, so a live feed looks live.
//!
//! How it differs from `workload.rs`: the workload is the oracle of publisher tests (it logs
//! every committed write, runs to completion, rolls transactions back on purpose); the clinic
//! runs for as long as a demonstration lasts and keeps only a bounded working set in memory.

use std::collections::{BTreeSet, HashMap, VecDeque};

use sha2::{Digest, Sha256};

use feedsync_core::rng::{SplitMix64, uuid_text};
use feedsync_db::{Database, DbError, Session, Value, quote_ident};

/// Given and family names as the registration clerks of a country write them.
#[derive(Debug)]
pub struct Country {
    pub name: &'static str,
    pub given_female: &'static [&'static str],
    pub given_male: &'static [&'static str],
    pub family: &'static [&'static str],
}

pub static RWANDA: Country = Country {
    name: "Rwanda",
    given_female: &["Aline", "Claudine", "Esperance", "Jeanne", "Diane", "Josiane", "Divine", "Clementine", "Vestine", "Immaculée"],
    given_male: &["Emmanuel", "Eric", "Olivier", "Patrick", "Innocent", "Théoneste", "Didier", "Fabrice", "Celestin", "Jean"],
    family: &[
        "Uwimana",
        "Mukamana",
        "Habimana",
        "Niyonzima",
        "Nkurunziza",
        "Uwase",
        "Mugisha",
        "Niyonsaba",
        "Hakizimana",
        "Ingabire",
        "Nsengimana",
        "Mukeshimana",
        "Iradukunda",
        "Tuyishime",
        "Ndayisaba",
        "Uwineza",
    ],
};

pub static MALAWI: Country = Country {
    name: "Malawi",
    given_female: &["Chikondi", "Mphatso", "Tiyamike", "Chisomo", "Madalitso", "Tadala", "Takondwa", "Thokozani", "Esther", "Grace"],
    given_male: &["Kondwani", "Chimwemwe", "Limbani", "Yamikani", "Dalitso", "Blessings", "Mayeso", "Chifundo", "Wongani", "Pemphero"],
    family: &["Banda", "Phiri", "Mwale", "Chirwa", "Tembo", "Mbewe", "Nkhoma", "Kamanga", "Gondwe", "Msiska", "Chisale", "Kachingwe", "Mvula", "Kumwenda"],
};

pub static MOZAMBIQUE: Country = Country {
    name: "Mozambique",
    given_female: &["Ana", "Maria", "Fátima", "Celeste", "Graça", "Lurdes", "Esperança", "Joana", "Albertina", "Rosa"],
    given_male: &["João", "António", "Manuel", "Armando", "Tomás", "Ernesto", "Carlos", "Alberto", "Zacarias", "Fernando"],
    family: &[
        "Nhantumbo",
        "Cossa",
        "Machava",
        "Tembe",
        "Mondlane",
        "Sitoe",
        "Macuácua",
        "Muianga",
        "Chissano",
        "Guambe",
        "Langa",
        "Mabunda",
        "Zandamela",
        "Matsinhe",
    ],
};

pub static KENYA: Country = Country {
    name: "Kenya",
    given_female: &["Akinyi", "Wanjiku", "Faith", "Mercy", "Nyambura", "Atieno", "Chebet", "Wairimu", "Naliaka", "Esther"],
    given_male: &["Brian", "Kevin", "Dennis", "Kiplagat", "Onyango", "Peter", "Samuel", "Joseph", "Kimani", "Barasa"],
    family: &["Otieno", "Wanjiru", "Mwangi", "Achieng", "Kamau", "Odhiambo", "Njoroge", "Kiprono", "Ochieng", "Mutua", "Njeri", "Omondi", "Wafula", "Kariuki"],
};

/// A health facility: its name in the network, its location row, and where its patients live.
#[derive(Debug)]
pub struct Facility {
    /// The child's name in the network (letters, digits and `-`).
    pub name: &'static str,
    /// The `location` row the facility's visits, encounters, obs and identifiers point at.
    pub location_name: &'static str,
    pub country: &'static Country,
    /// Identifiers issued here are `PREFIX-NNNNNN`.
    pub identifier_prefix: &'static str,
    pub city: &'static str,
    pub district: &'static str,
    pub province: &'static str,
    /// Where patients live (`person_address.city_village`).
    pub neighbourhoods: &'static [&'static str],
}

/// Facilities in the order a demo network takes them: one per country first.
pub static FACILITIES: [Facility; 12] = [
    Facility {
        name: "kigali-hc",
        location_name: "Kimironko Health Centre",
        country: &RWANDA,
        identifier_prefix: "KGL",
        city: "Kigali",
        district: "Gasabo",
        province: "Kigali City",
        neighbourhoods: &["Kimironko", "Remera", "Kacyiru", "Kibagabaga", "Nyarutarama"],
    },
    Facility {
        name: "zomba-dh",
        location_name: "Zomba District Hospital",
        country: &MALAWI,
        identifier_prefix: "ZMB",
        city: "Zomba",
        district: "Zomba",
        province: "Southern Region",
        neighbourhoods: &["Chinamwali", "Mpunga", "Sadzi", "Chikamveka", "Matawale"],
    },
    Facility {
        name: "beira-cs",
        location_name: "Centro de Saúde da Munhava",
        country: &MOZAMBIQUE,
        identifier_prefix: "BRA",
        city: "Beira",
        district: "Beira",
        province: "Sofala",
        neighbourhoods: &["Munhava", "Manga", "Macurungo", "Esturro", "Chaimite"],
    },
    Facility {
        name: "kisumu-hc",
        location_name: "Nyalenda Health Centre",
        country: &KENYA,
        identifier_prefix: "KSM",
        city: "Kisumu",
        district: "Kisumu Central",
        province: "Kisumu County",
        neighbourhoods: &["Nyalenda", "Manyatta", "Kondele", "Obunga", "Mamboleo"],
    },
    Facility {
        name: "rubavu-hc",
        location_name: "Gisenyi Health Centre",
        country: &RWANDA,
        identifier_prefix: "RBV",
        city: "Gisenyi",
        district: "Rubavu",
        province: "Western Province",
        neighbourhoods: &["Gisenyi", "Nyamyumba", "Rugerero", "Kanama"],
    },
    Facility {
        name: "lilongwe-hc",
        location_name: "Area 25 Health Centre",
        country: &MALAWI,
        identifier_prefix: "LLW",
        city: "Lilongwe",
        district: "Lilongwe",
        province: "Central Region",
        neighbourhoods: &["Area 25", "Area 23", "Kawale", "Chinsapo"],
    },
    Facility {
        name: "nampula-cs",
        location_name: "Centro de Saúde de Namicopo",
        country: &MOZAMBIQUE,
        identifier_prefix: "NPL",
        city: "Nampula",
        district: "Nampula",
        province: "Nampula",
        neighbourhoods: &["Namicopo", "Muatala", "Napipine", "Muhala"],
    },
    Facility {
        name: "nakuru-hc",
        location_name: "Bondeni Health Centre",
        country: &KENYA,
        identifier_prefix: "NKR",
        city: "Nakuru",
        district: "Nakuru East",
        province: "Nakuru County",
        neighbourhoods: &["Bondeni", "Lanet", "Kaptembwo", "Shabab"],
    },
    Facility {
        name: "huye-dh",
        location_name: "Kabutare District Hospital",
        country: &RWANDA,
        identifier_prefix: "HYE",
        city: "Butare",
        district: "Huye",
        province: "Southern Province",
        neighbourhoods: &["Ngoma", "Tumba", "Matyazo", "Mbazi"],
    },
    Facility {
        name: "mzuzu-hc",
        location_name: "Zolozolo Health Centre",
        country: &MALAWI,
        identifier_prefix: "MZZ",
        city: "Mzuzu",
        district: "Mzimba",
        province: "Northern Region",
        neighbourhoods: &["Zolozolo", "Chibavi", "Katoto", "Luwinga"],
    },
    Facility {
        name: "maputo-cs",
        location_name: "Centro de Saúde do Alto Maé",
        country: &MOZAMBIQUE,
        identifier_prefix: "MPT",
        city: "Maputo",
        district: "KaMpfumo",
        province: "Maputo Cidade",
        neighbourhoods: &["Alto Maé", "Malhangalene", "Polana Caniço", "Chamanculo"],
    },
    Facility {
        name: "mombasa-hc",
        location_name: "Likoni Health Centre",
        country: &KENYA,
        identifier_prefix: "MSA",
        city: "Mombasa",
        district: "Likoni",
        province: "Mombasa County",
        neighbourhoods: &["Likoni", "Shika Adabu", "Timbwani", "Mtongwe"],
    },
];

/// The facility with this network name.
pub fn facility(name: &str) -> Option<&'static Facility> {
    FACILITIES.iter().find(|f| f.name == name)
}

/// Clinicians created per facility (persons with a provider row; metadata, so every facility
/// receives them).
pub const CLINICIANS_PER_FACILITY: usize = 2;
/// Patients a clinic keeps in its working set; the oldest (without an open visit) leave it
/// first. Their rows stay in the database; only new actions stop choosing them.
pub const PATIENTS_REMEMBERED_MAX: usize = 5_000;
/// Obs a clinic remembers as candidates for corrections and voids; the oldest leave first.
pub const OBS_REMEMBERED_MAX: usize = 500;
/// Share of registrations in percent where the clerk slips on the given name, so a name
/// correction follows later.
const NAME_SLIP_PERCENT: u32 = 20;
/// Patients a clinic registers before it starts correcting names, addresses and obs.
const EDITS_AFTER_PATIENTS: usize = 5;
/// `creator`, `changed_by` and `voided_by` of every row: `admin`, the one user of the core
/// metadata, as if it were logged in.
const ADMIN_USER_ID: i64 = 1;

/// The things a clinic does, one transaction each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClinicAction {
    Register,
    StartVisit,
    VitalSigns,
    LabResults,
    EndVisit,
    CorrectName,
    ChangeAddress,
    CorrectObs,
    VoidObs,
    /// A name edited by a scene ([`Clinic::set_middle_name`]).
    EditName,
}

/// What one action did: which patient, and a line for a person watching.
#[derive(Debug, Clone, PartialEq)]
pub struct Happened {
    pub action: ClinicAction,
    pub patient_uuid: Option<String>,
    pub text: String,
}

/// A patient as the clinic knows them; `uuid` is the person's (and patient's) uuid.
#[derive(Debug, Clone, PartialEq)]
pub struct PatientInfo {
    pub uuid: String,
    pub given_name: String,
    pub middle_name: Option<String>,
    pub family_name: String,
    /// `F` or `M`.
    pub gender: String,
    /// `YYYY-MM-DD`.
    pub birthdate: String,
    pub identifier: String,
    /// Registered by this clinic (not brought from another facility).
    pub registered_here: bool,
}

impl PatientInfo {
    pub fn full_name(&self) -> String {
        match &self.middle_name {
            Some(middle) => format!("{} {middle} {}", self.given_name, self.family_name),
            None => format!("{} {}", self.given_name, self.family_name),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClinicError {
    #[error("{doing}: {source}")]
    Database {
        doing: &'static str,
        #[source]
        source: DbError,
    },
    #[error("table {0} is missing: load an OpenMRS 2.x schema into the database first")]
    MissingTable(&'static str),
    #[error("{0} is not in the database: load an OpenMRS 2.x schema with its core metadata first")]
    MissingCoreMetadata(String),
    #[error(
        "{0} is not in this database yet: the clinic's concepts, locations and clinicians are created at the central server \
         (`clinic::create_metadata`) and reach a facility with its first sync"
    )]
    MetadataNotSynced(String),
    #[error("patient {0} is not in this facility's database")]
    UnknownPatient(String),
}

impl ClinicError {
    /// Trying again later may help (the database was unreachable or busy).
    pub fn is_retryable(&self) -> bool {
        matches!(self, ClinicError::Database { source, .. } if source.is_retryable())
    }
}

fn db(doing: &'static str) -> impl FnOnce(DbError) -> ClinicError {
    move |source| ClinicError::Database { doing, source }
}

// ---- the concept dictionary ----

/// What a concept measures; each has one concept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Measure {
    Weight,
    Height,
    Temperature,
    Systolic,
    Diastolic,
    Pulse,
    Hemoglobin,
    Cd4Count,
    ViralLoad,
    Glucose,
    MalariaSmear,
}

struct ConceptDef {
    name: &'static str,
    /// The CIEL dictionary's number: OpenMRS sites that load CIEL have this concept under the
    /// uuid `<number>AAAA...` (36 characters), so the demo's uuids are the real ones.
    ciel: u32,
    datatype: &'static str,
    class: &'static str,
    units: Option<&'static str>,
    /// How it reads in a line for a person watching.
    label: &'static str,
}

const POSITIVE: ConceptDef = ConceptDef { name: "POSITIVE", ciel: 703, datatype: "N/A", class: "Misc", units: None, label: "positive" };
const NEGATIVE: ConceptDef = ConceptDef { name: "NEGATIVE", ciel: 664, datatype: "N/A", class: "Misc", units: None, label: "negative" };

impl Measure {
    const ALL: [Measure; 11] = [
        Measure::Weight,
        Measure::Height,
        Measure::Temperature,
        Measure::Systolic,
        Measure::Diastolic,
        Measure::Pulse,
        Measure::Hemoglobin,
        Measure::Cd4Count,
        Measure::ViralLoad,
        Measure::Glucose,
        Measure::MalariaSmear,
    ];

    fn concept(self) -> ConceptDef {
        let numeric = |name, ciel, class, units, label| ConceptDef { name, ciel, datatype: "Numeric", class, units: Some(units), label };
        match self {
            Measure::Weight => numeric("WEIGHT (KG)", 5089, "Finding", "kg", "weight"),
            Measure::Height => numeric("HEIGHT (CM)", 5090, "Finding", "cm", "height"),
            Measure::Temperature => numeric("TEMPERATURE (C)", 5088, "Finding", "DEG C", "temperature"),
            Measure::Systolic => numeric("SYSTOLIC BLOOD PRESSURE", 5085, "Finding", "mmHg", "systolic blood pressure"),
            Measure::Diastolic => numeric("DIASTOLIC BLOOD PRESSURE", 5086, "Finding", "mmHg", "diastolic blood pressure"),
            Measure::Pulse => numeric("PULSE", 5087, "Finding", "beats/min", "pulse"),
            Measure::Hemoglobin => numeric("HEMOGLOBIN", 21, "Test", "g/dL", "hemoglobin"),
            Measure::Cd4Count => numeric("CD4 COUNT", 5497, "Test", "cells/µL", "CD4 count"),
            Measure::ViralLoad => numeric("HIV VIRAL LOAD", 856, "Test", "copies/mL", "HIV viral load"),
            Measure::Glucose => numeric("SERUM GLUCOSE", 887, "Test", "mg/dL", "serum glucose"),
            Measure::MalariaSmear => ConceptDef { name: "MALARIA SMEAR", ciel: 32, datatype: "Coded", class: "Test", units: None, label: "malaria smear" },
        }
    }

    /// Numbers entered with one decimal; the others are whole.
    fn has_decimals(self) -> bool {
        matches!(self, Measure::Weight | Measure::Temperature | Measure::Hemoglobin)
    }
}

/// The uuid CIEL gives concept `number`: the digits, then `A` up to 36 characters.
fn ciel_uuid(number: u32) -> String {
    let digits = number.to_string();
    format!("{digits}{}", "A".repeat(36 - digits.len()))
}

/// A fixed uuid for a metadata row the demo creates, so every database and every run agree.
fn metadata_uuid(kind: &str, name: &str) -> String {
    let digest = Sha256::digest(format!("feedsync-clinic/{kind}/{name}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid_text(bytes)
}

/// The 36-character form of 16 bytes made a version-4 uuid.
const VISIT_TYPE: &str = "Facility Visit";
const VITALS_ENCOUNTER: &str = "Vitals";
const LAB_ENCOUNTER: &str = "Lab Results";
const CLINICIAN_ROLE: &str = "Clinician";
const IDENTIFIER_TYPE: &str = "Facility Number";

fn clinician_uuid(facility: &Facility, index: usize) -> String {
    metadata_uuid("person", &format!("{}/clinician/{index}", facility.name))
}

fn location_uuid(facility: &Facility) -> String {
    metadata_uuid("location", facility.name)
}

// ---- writing rows the way OpenMRS does ----

/// The columns of each table, lower-case, read once through `schema.rs`.
struct Tables(HashMap<String, BTreeSet<String>>);

impl Tables {
    async fn read(session: &mut Session, schema_name: &str) -> Result<Tables, ClinicError> {
        let schema = feedsync_db::schema::read_schema(session, schema_name).await.map_err(db("reading the schema"))?;
        let tables = schema
            .tables
            .into_iter()
            .map(|(name, t)| (name.to_ascii_lowercase(), t.columns.into_iter().map(|c| c.name.to_ascii_lowercase()).collect()))
            .collect();
        Ok(Tables(tables))
    }

    fn columns(&self, table: &'static str) -> Result<&BTreeSet<String>, ClinicError> {
        self.0.get(table).ok_or(ClinicError::MissingTable(table))
    }
}

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string()
}

/// Inserts a row with the given values for the columns the table has, plus `uuid` (the one
/// given, or a fresh one from `rng`), `creator`, `date_created` and `voided`/`retired` where
/// the table has them and they are not given. Returns the generated id.
async fn insert(
    session: &mut Session,
    tables: &Tables,
    rng: &mut SplitMix64,
    table: &'static str,
    values: &[(&str, Value)],
    uuid: Option<&str>,
) -> Result<i64, ClinicError> {
    let columns = tables.columns(table)?;
    let mut names: Vec<&str> = Vec::new();
    let mut params: Vec<Value> = Vec::new();
    for (name, value) in values {
        if columns.contains(*name) {
            names.push(*name);
            params.push(value.clone());
        }
    }
    let automatic = [
        ("uuid", Value::Text(uuid.map_or_else(|| rng.uuid(), str::to_owned))),
        ("creator", Value::Int(ADMIN_USER_ID)),
        ("date_created", Value::Text(now())),
        ("voided", Value::Int(0)),
        ("retired", Value::Int(0)),
    ];
    for (name, value) in automatic {
        if columns.contains(name) && !names.contains(&name) {
            names.push(name);
            params.push(value);
        }
    }
    let dialect = session.dialect();
    let sql = format!(
        "INSERT INTO {} ({}) VALUES ({})",
        quote_ident(dialect, table),
        names.iter().map(|c| quote_ident(dialect, c)).collect::<Vec<_>>().join(", "),
        vec!["?"; names.len()].join(", ")
    );
    session.execute(&sql, &params).await.map_err(db(table_doing(table)))?;
    session.last_insert_id().await.map_err(db(table_doing(table)))
}

/// Updates one row by its integer key, stamping `changed_by` and `date_changed` where the
/// table has them (OpenMRS does on every save).
async fn update(session: &mut Session, tables: &Tables, table: &'static str, key: (&str, i64), set: &[(&str, Value)]) -> Result<(), ClinicError> {
    let columns = tables.columns(table)?;
    let audit = [("changed_by", Value::Int(ADMIN_USER_ID)), ("date_changed", Value::Text(now()))];
    let assignments: Vec<&(&str, Value)> = set.iter().chain(audit.iter()).filter(|(c, _)| columns.contains(*c)).collect();
    let dialect = session.dialect();
    let sql = format!(
        "UPDATE {} SET {} WHERE {} = ?",
        quote_ident(dialect, table),
        assignments.iter().map(|(c, _)| format!("{} = ?", quote_ident(dialect, c))).collect::<Vec<_>>().join(", "),
        quote_ident(dialect, key.0)
    );
    let params: Vec<Value> = assignments.iter().map(|(_, v)| v.clone()).chain(std::iter::once(Value::Int(key.1))).collect();
    session.execute(&sql, &params).await.map_err(db(table_doing(table)))?;
    Ok(())
}

/// For error messages: what was being written.
fn table_doing(table: &'static str) -> &'static str {
    match table {
        "person" | "person_name" | "person_address" | "patient" | "patient_identifier" => "writing a patient's demographics",
        "visit" => "writing a visit",
        "encounter" | "encounter_provider" => "writing an encounter",
        "obs" => "writing an obs",
        _ => "writing metadata",
    }
}

async fn id_by_uuid(session: &mut Session, table: &'static str, id_column: &str, uuid: &str) -> Result<Option<i64>, ClinicError> {
    let dialect = session.dialect();
    let sql = format!("SELECT {} AS id FROM {} WHERE uuid = ?", quote_ident(dialect, id_column), quote_ident(dialect, table));
    let rows = session.query(&sql, &[uuid.into()]).await.map_err(db("looking up metadata"))?;
    Ok(rows.first().and_then(|r| r.i64("id")))
}

async fn id_by_name(session: &mut Session, table: &'static str, id_column: &str, name: &str) -> Result<i64, ClinicError> {
    let dialect = session.dialect();
    let sql = format!("SELECT {} AS id FROM {} WHERE name = ?", quote_ident(dialect, id_column), quote_ident(dialect, table));
    let rows = session.query(&sql, &[name.into()]).await.map_err(db("looking up core metadata"))?;
    rows.first().and_then(|r| r.i64("id")).ok_or_else(|| ClinicError::MissingCoreMetadata(format!("{table} {name:?}")))
}

// ---- metadata, created once at the central server ----

/// What [`create_metadata`] added (zero everywhere when it ran before).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataReport {
    pub concepts: usize,
    pub locations: usize,
    pub clinicians: usize,
    pub types: usize,
}

/// Creates, in one transaction, the metadata every clinic needs: the concepts of vital signs
/// and lab results (with their numeric rows and answers), the visit type, the encounter types
/// `Vitals` and `Lab Results`, the encounter role `Clinician`, the identifier type `Facility
/// Number`, and per facility its location and [`CLINICIANS_PER_FACILITY`] clinicians. Rows
/// already there (by uuid) are left alone. Run it at the central server, whose sync takes
/// them to every facility.
pub async fn create_metadata(database: &Database, facilities: &[&Facility]) -> Result<MetadataReport, ClinicError> {
    let mut session = database.session().await.map_err(db("connecting"))?;
    let tables = Tables::read(&mut session, database.schema_name()).await?;
    session.begin().await.map_err(db("starting a transaction"))?;
    let outcome = write_metadata(&mut session, &tables, facilities).await;
    finish(&mut session, outcome).await
}

/// Commits after `outcome` succeeded, rolls back otherwise.
async fn finish<T>(session: &mut Session, outcome: Result<T, ClinicError>) -> Result<T, ClinicError> {
    match outcome {
        Ok(value) => {
            session.commit().await.map_err(db("committing"))?;
            Ok(value)
        }
        Err(e) => {
            // The action's own error says what went wrong; a failed rollback adds nothing.
            let _ = session.rollback().await;
            Err(e)
        }
    }
}

async fn write_metadata(session: &mut Session, tables: &Tables, facilities: &[&Facility]) -> Result<MetadataReport, ClinicError> {
    let mut report = MetadataReport::default();
    // Uuids are given for every row, so this PRNG is never drawn from.
    let mut rng = SplitMix64::new(0);
    let mut concept_ids: HashMap<&'static str, i64> = HashMap::new();
    let mut concepts: Vec<(ConceptDef, Vec<&'static str>)> = vec![(POSITIVE, vec![]), (NEGATIVE, vec![])];
    for measure in Measure::ALL {
        let answers = if measure == Measure::MalariaSmear { vec![POSITIVE.name, NEGATIVE.name] } else { vec![] };
        concepts.push((measure.concept(), answers));
    }
    for (concept, answers) in concepts {
        let uuid = ciel_uuid(concept.ciel);
        if let Some(id) = id_by_uuid(session, "concept", "concept_id", &uuid).await? {
            concept_ids.insert(concept.name, id);
            continue;
        }
        let datatype = id_by_name(session, "concept_datatype", "concept_datatype_id", concept.datatype).await?;
        let class = id_by_name(session, "concept_class", "concept_class_id", concept.class).await?;
        let row = [
            ("datatype_id", Value::Int(datatype)),
            ("class_id", Value::Int(class)),
            ("is_set", Value::Int(0)),
            ("short_name", "".into()),
            ("description", "".into()),
        ];
        let id = insert(session, tables, &mut rng, "concept", &row, Some(&uuid)).await?;
        let name = [
            ("concept_id", Value::Int(id)),
            ("name", concept.name.into()),
            ("locale", "en".into()),
            ("locale_preferred", Value::Int(1)),
            ("concept_name_type", "FULLY_SPECIFIED".into()),
        ];
        insert(session, tables, &mut rng, "concept_name", &name, Some(&metadata_uuid("concept_name", concept.name))).await?;
        if let Some(units) = concept.units {
            let numeric = [("concept_id", Value::Int(id)), ("units", units.into()), ("precise", Value::Int(1)), ("allow_decimal", Value::Int(1))];
            insert(session, tables, &mut rng, "concept_numeric", &numeric, None).await?;
        }
        for (position, answer) in answers.iter().enumerate() {
            let answer_id = concept_ids[answer];
            let row = [("concept_id", Value::Int(id)), ("answer_concept", Value::Int(answer_id)), ("sort_weight", Value::Float(position as f64))];
            insert(session, tables, &mut rng, "concept_answer", &row, Some(&metadata_uuid("concept_answer", &format!("{}/{answer}", concept.name)))).await?;
        }
        concept_ids.insert(concept.name, id);
        report.concepts += 1;
    }

    let types: [(&'static str, &'static str, &str, &str); 5] = [
        ("visit_type", "visit_type_id", VISIT_TYPE, "A patient comes to the facility and leaves the same day"),
        ("encounter_type", "encounter_type_id", VITALS_ENCOUNTER, "Vital signs taken at triage"),
        ("encounter_type", "encounter_type_id", LAB_ENCOUNTER, "Results from the facility's laboratory"),
        ("encounter_role", "encounter_role_id", CLINICIAN_ROLE, "The clinician who saw the patient"),
        ("patient_identifier_type", "patient_identifier_type_id", IDENTIFIER_TYPE, "Number given by the facility that registered the patient: PREFIX-NNNNNN"),
    ];
    for (table, id_column, name, description) in types {
        let uuid = metadata_uuid(table, name);
        if id_by_uuid(session, table, id_column, &uuid).await?.is_none() {
            let mut row = vec![("name", Value::from(name)), ("description", description.into())];
            if table == "patient_identifier_type" {
                row.extend([("format", Value::from("[A-Z]{3}-[0-9]{6}")), ("check_digit", Value::Int(0)), ("required", Value::Int(0))]);
            }
            insert(session, tables, &mut rng, table, &row, Some(&uuid)).await?;
            report.types += 1;
        }
    }

    for facility in facilities {
        let uuid = location_uuid(facility);
        if id_by_uuid(session, "location", "location_id", &uuid).await?.is_none() {
            let row = [
                ("name", Value::from(facility.location_name)),
                ("description", format!("{} ({}, {})", facility.location_name, facility.city, facility.country.name).into()),
                ("city_village", facility.city.into()),
                ("county_district", facility.district.into()),
                ("state_province", facility.province.into()),
                ("country", facility.country.name.into()),
            ];
            insert(session, tables, &mut rng, "location", &row, Some(&uuid)).await?;
            report.locations += 1;
        }
        // The clinicians' names follow from the facility's name, the same in every run.
        let mut names = SplitMix64::new(u64::from_be_bytes(Sha256::digest(facility.name.as_bytes())[..8].try_into().expect("8 bytes")));
        for index in 1..=CLINICIANS_PER_FACILITY {
            let person_uuid = clinician_uuid(facility, index);
            let female = names.percent(50);
            let given = *names.pick(if female { facility.country.given_female } else { facility.country.given_male });
            let family = *names.pick(facility.country.family);
            if id_by_uuid(session, "person", "person_id", &person_uuid).await?.is_some() {
                continue;
            }
            let person = [("gender", Value::from(if female { "F" } else { "M" })), ("birthdate_estimated", Value::Int(0)), ("dead", Value::Int(0))];
            let person_id = insert(session, tables, &mut rng, "person", &person, Some(&person_uuid)).await?;
            let name = [("person_id", Value::Int(person_id)), ("preferred", Value::Int(1)), ("given_name", given.into()), ("family_name", family.into())];
            insert(session, tables, &mut rng, "person_name", &name, Some(&metadata_uuid("person_name", &person_uuid))).await?;
            let provider = [
                ("person_id", Value::Int(person_id)),
                ("identifier", format!("{}-CL{index}", facility.identifier_prefix).into()),
                ("name", format!("{given} {family}").into()),
            ];
            insert(session, tables, &mut rng, "provider", &provider, Some(&metadata_uuid("provider", &person_uuid))).await?;
            report.clinicians += 1;
        }
    }
    Ok(report)
}

// ---- one facility ----

/// The local ids of the metadata a clinic writes against.
struct Ids {
    location: i64,
    identifier_type: i64,
    visit_type: i64,
    vitals_encounter: i64,
    lab_encounter: i64,
    clinician_role: i64,
    providers: Vec<i64>,
    concepts: HashMap<Measure, i64>,
    positive: i64,
    negative: i64,
}

struct Patient {
    info: PatientInfo,
    person_id: i64,
    name_id: i64,
    address_id: Option<i64>,
    /// The given name as it should have been written, when the clerk slipped.
    correct_given_name: Option<String>,
    visit: Option<OpenVisit>,
    /// Now seen at another facility: chosen by no action here, still known to scenes.
    moved_away: bool,
}

#[derive(Clone, Copy)]
struct OpenVisit {
    visit_id: i64,
    vitals_taken: bool,
    labs_done: bool,
}

/// An obs the clinic may later correct or void.
struct RecordedObs {
    obs_id: i64,
    measure: Measure,
    person_id: i64,
    encounter_id: i64,
    obs_datetime: String,
    value: f64,
    patient_name: String,
}

/// One facility's clinic, writing to its own database.
pub struct Clinic {
    facility: &'static Facility,
    session: Session,
    tables: Tables,
    rng: SplitMix64,
    ids: Ids,
    patients: Vec<Patient>,
    obs: VecDeque<RecordedObs>,
    next_identifier: u64,
}

impl Clinic {
    /// Opens the clinic of `facility` on its database, which must hold the metadata of
    /// [`create_metadata`] (made at the central server and synced here). `seed` decides every
    /// choice; a database that already holds persons gives the PRNG another start, so a
    /// second run on it never repeats a uuid.
    pub async fn open(database: &Database, facility: &'static Facility, seed: u64) -> Result<Clinic, ClinicError> {
        let mut session = database.session().await.map_err(db("connecting"))?;
        let tables = Tables::read(&mut session, database.schema_name()).await?;
        let ids = Self::find_metadata(&mut session, facility).await?;
        let count = |rows: Vec<feedsync_db::Row>| rows.first().and_then(|r| r.i64("n")).unwrap_or(0);
        let persons = count(session.query("SELECT COUNT(*) AS n FROM person", &[]).await.map_err(db("counting persons"))?);
        let issued = count(
            session
                .query("SELECT COUNT(*) AS n FROM patient_identifier WHERE identifier LIKE ?", &[format!("{}-%", facility.identifier_prefix).into()])
                .await
                .map_err(db("counting identifiers"))?,
        );
        let facility_hash = u64::from_be_bytes(Sha256::digest(facility.name.as_bytes())[..8].try_into().expect("8 bytes"));
        let rng = SplitMix64::new(seed ^ facility_hash ^ (persons as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        Ok(Clinic { facility, session, tables, rng, ids, patients: Vec::new(), obs: VecDeque::new(), next_identifier: issued as u64 + 1 })
    }

    async fn find_metadata(session: &mut Session, facility: &Facility) -> Result<Ids, ClinicError> {
        async fn need(session: &mut Session, table: &'static str, id_column: &str, uuid: &str, what: String) -> Result<i64, ClinicError> {
            id_by_uuid(session, table, id_column, uuid).await?.ok_or(ClinicError::MetadataNotSynced(what))
        }
        let mut concepts = HashMap::new();
        for measure in Measure::ALL {
            let concept = measure.concept();
            concepts.insert(measure, need(session, "concept", "concept_id", &ciel_uuid(concept.ciel), format!("concept {}", concept.name)).await?);
        }
        let mut providers = Vec::new();
        for index in 1..=CLINICIANS_PER_FACILITY {
            let uuid = metadata_uuid("provider", &clinician_uuid(facility, index));
            providers.push(need(session, "provider", "provider_id", &uuid, format!("clinician {index} of {}", facility.name)).await?);
        }
        Ok(Ids {
            location: need(session, "location", "location_id", &location_uuid(facility), format!("location {}", facility.location_name)).await?,
            identifier_type: need(
                session,
                "patient_identifier_type",
                "patient_identifier_type_id",
                &metadata_uuid("patient_identifier_type", IDENTIFIER_TYPE),
                format!("identifier type {IDENTIFIER_TYPE}"),
            )
            .await?,
            visit_type: need(session, "visit_type", "visit_type_id", &metadata_uuid("visit_type", VISIT_TYPE), format!("visit type {VISIT_TYPE}")).await?,
            vitals_encounter: need(
                session,
                "encounter_type",
                "encounter_type_id",
                &metadata_uuid("encounter_type", VITALS_ENCOUNTER),
                format!("encounter type {VITALS_ENCOUNTER}"),
            )
            .await?,
            lab_encounter: need(
                session,
                "encounter_type",
                "encounter_type_id",
                &metadata_uuid("encounter_type", LAB_ENCOUNTER),
                format!("encounter type {LAB_ENCOUNTER}"),
            )
            .await?,
            clinician_role: need(
                session,
                "encounter_role",
                "encounter_role_id",
                &metadata_uuid("encounter_role", CLINICIAN_ROLE),
                format!("encounter role {CLINICIAN_ROLE}"),
            )
            .await?,
            providers,
            concepts,
            positive: need(session, "concept", "concept_id", &ciel_uuid(POSITIVE.ciel), "concept POSITIVE".into()).await?,
            negative: need(session, "concept", "concept_id", &ciel_uuid(NEGATIVE.ciel), "concept NEGATIVE".into()).await?,
        })
    }

    pub fn facility(&self) -> &'static Facility {
        self.facility
    }

    /// The patients in the working set, registered here first, in registration order.
    pub fn patients(&self) -> impl Iterator<Item = &PatientInfo> {
        self.patients.iter().map(|p| &p.info)
    }

    pub fn patient(&self, uuid: &str) -> Option<&PatientInfo> {
        self.patients.iter().find(|p| p.info.uuid == uuid).map(|p| &p.info)
    }

    /// One action chosen by the PRNG among those possible now: register, start a visit, take
    /// vital signs, record lab results, end a visit, correct a name, change an address,
    /// correct an obs or void one.
    pub async fn step(&mut self) -> Result<Happened, ClinicError> {
        let has = |f: &dyn Fn(&Patient) -> bool| self.patients.iter().filter(|p| !p.moved_away).any(f);
        // Corrections come once a few patients are in: a clinic's first minutes are arrivals.
        let settled = self.patients.len() >= EDITS_AFTER_PATIENTS;
        let choices: Vec<(ClinicAction, u64)> = [
            (ClinicAction::Register, 3, true),
            (ClinicAction::StartVisit, 3, has(&|p| p.visit.is_none())),
            (ClinicAction::VitalSigns, 4, has(&|p| p.visit.is_some_and(|v| !v.vitals_taken))),
            (ClinicAction::LabResults, 2, has(&|p| p.visit.is_some_and(|v| v.vitals_taken && !v.labs_done))),
            (ClinicAction::EndVisit, 2, has(&|p| p.visit.is_some_and(|v| v.vitals_taken))),
            (ClinicAction::CorrectName, 1, settled && has(&|p| p.correct_given_name.is_some())),
            (ClinicAction::ChangeAddress, 1, settled && has(&|p| p.address_id.is_some())),
            (ClinicAction::CorrectObs, 1, settled && !self.obs.is_empty()),
            (ClinicAction::VoidObs, 1, settled && !self.obs.is_empty()),
        ]
        .into_iter()
        .filter(|(_, _, possible)| *possible)
        .map(|(action, weight, _)| (action, weight))
        .collect();
        let total: u64 = choices.iter().map(|(_, w)| w).sum();
        let mut draw = self.rng.below(total);
        let action = choices
            .iter()
            .find(|(_, w)| {
                if draw < *w {
                    true
                } else {
                    draw -= w;
                    false
                }
            })
            .map_or(ClinicAction::Register, |(a, _)| *a);
        match action {
            ClinicAction::Register => self.register().await,
            ClinicAction::StartVisit => {
                let i = self.pick_patient(|p| p.visit.is_none());
                self.start_visit(i).await
            }
            ClinicAction::VitalSigns => {
                let i = self.pick_patient(|p| p.visit.is_some_and(|v| !v.vitals_taken));
                self.vital_signs(i).await
            }
            ClinicAction::LabResults => {
                let i = self.pick_patient(|p| p.visit.is_some_and(|v| v.vitals_taken && !v.labs_done));
                self.lab_results(i).await
            }
            ClinicAction::EndVisit => {
                let i = self.pick_patient(|p| p.visit.is_some_and(|v| v.vitals_taken));
                self.end_visit(i).await
            }
            ClinicAction::CorrectName => {
                let i = self.pick_patient(|p| p.correct_given_name.is_some());
                self.correct_name(i).await
            }
            ClinicAction::ChangeAddress => {
                let i = self.pick_patient(|p| p.address_id.is_some());
                self.change_address(i).await
            }
            ClinicAction::CorrectObs => self.correct_obs().await,
            ClinicAction::VoidObs => self.void_obs().await,
            ClinicAction::EditName => unreachable!("names are edited only by scenes"),
        }
    }

    fn pick_patient(&mut self, eligible: impl Fn(&Patient) -> bool) -> usize {
        let candidates: Vec<usize> = self.patients.iter().enumerate().filter(|(_, p)| !p.moved_away && eligible(p)).map(|(i, _)| i).collect();
        *self.rng.pick(&candidates)
    }

    fn index_of(&self, uuid: &str) -> Result<usize, ClinicError> {
        self.patients.iter().position(|p| p.info.uuid == uuid).ok_or_else(|| ClinicError::UnknownPatient(uuid.to_owned()))
    }

    async fn begin(&mut self) -> Result<(), ClinicError> {
        self.session.begin().await.map_err(db("starting a transaction"))
    }

    async fn insert(&mut self, table: &'static str, values: &[(&str, Value)]) -> Result<i64, ClinicError> {
        insert(&mut self.session, &self.tables, &mut self.rng, table, values, None).await
    }

    async fn update(&mut self, table: &'static str, key: (&str, i64), set: &[(&str, Value)]) -> Result<(), ClinicError> {
        update(&mut self.session, &self.tables, table, key, set).await
    }

    fn remember_patient(&mut self, patient: Patient) {
        if self.patients.len() >= PATIENTS_REMEMBERED_MAX
            && let Some(oldest) = self.patients.iter().position(|p| p.visit.is_none())
        {
            self.patients.remove(oldest);
        }
        self.patients.push(patient);
    }

    fn remember_obs(&mut self, obs: RecordedObs) {
        if self.obs.len() >= OBS_REMEMBERED_MAX {
            self.obs.pop_front();
        }
        self.obs.push_back(obs);
    }

    /// Registers a new patient: person, name, address, patient, identifier `PREFIX-NNNNNN`.
    pub async fn register(&mut self) -> Result<Happened, ClinicError> {
        let country = self.facility.country;
        let female = self.rng.percent(52);
        let given = *self.rng.pick(if female { country.given_female } else { country.given_male });
        let family = *self.rng.pick(country.family);
        let slip = self.rng.percent(u64::from(NAME_SLIP_PERCENT)).then(|| double_a_letter(given, &mut self.rng));
        let written_given = slip.clone().unwrap_or_else(|| given.to_owned());
        // About one patient in six is a child; adults up to 80.
        let age_years = if self.rng.percent(16) { 1 + self.rng.below(14) } else { 15 + self.rng.below(66) };
        let age_days = (age_years * 365 + self.rng.below(365)) as i64;
        let birthdate = (chrono::Utc::now().date_naive() - chrono::Duration::days(age_days)).format("%Y-%m-%d").to_string();
        let neighbourhood = *self.rng.pick(self.facility.neighbourhoods);
        let plot = 1 + self.rng.below(900);
        let identifier = format!("{}-{:06}", self.facility.identifier_prefix, self.next_identifier);
        let uuid = self.rng.uuid();
        let gender = if female { "F" } else { "M" };
        self.begin().await?;
        let written = async {
            let person =
                [("gender", Value::from(gender)), ("birthdate", birthdate.clone().into()), ("birthdate_estimated", Value::Int(0)), ("dead", Value::Int(0))];
            let person_id = insert(&mut self.session, &self.tables, &mut self.rng, "person", &person, Some(&uuid)).await?;
            let name = [
                ("person_id", Value::Int(person_id)),
                ("preferred", Value::Int(1)),
                ("given_name", written_given.clone().into()),
                ("family_name", family.into()),
            ];
            let name_id = self.insert("person_name", &name).await?;
            let address = [
                ("person_id", Value::Int(person_id)),
                ("preferred", Value::Int(1)),
                ("address1", format!("Plot {plot}").into()),
                ("city_village", neighbourhood.into()),
                ("county_district", self.facility.district.into()),
                ("state_province", self.facility.province.into()),
                ("country", self.facility.country.name.into()),
            ];
            let address_id = self.insert("person_address", &address).await?;
            self.insert("patient", &[("patient_id", Value::Int(person_id))]).await?;
            let row = [
                ("patient_id", Value::Int(person_id)),
                ("identifier", identifier.clone().into()),
                ("identifier_type", Value::Int(self.ids.identifier_type)),
                ("preferred", Value::Int(1)),
                ("location_id", Value::Int(self.ids.location)),
            ];
            self.insert("patient_identifier", &row).await?;
            Ok((person_id, name_id, address_id))
        }
        .await;
        let (person_id, name_id, address_id) = finish(&mut self.session, written).await?;
        self.next_identifier += 1;
        let info = PatientInfo {
            uuid: uuid.clone(),
            given_name: written_given,
            middle_name: None,
            family_name: family.to_owned(),
            gender: gender.to_owned(),
            birthdate: birthdate.clone(),
            identifier: identifier.clone(),
            registered_here: true,
        };
        let text = format!("registered {} ({gender}, born {birthdate}, {neighbourhood}), {identifier}", info.full_name());
        self.remember_patient(Patient {
            info,
            person_id,
            name_id,
            address_id: Some(address_id),
            correct_given_name: slip.map(|_| given.to_owned()),
            visit: None,
            moved_away: false,
        });
        Ok(Happened { action: ClinicAction::Register, patient_uuid: Some(uuid), text })
    }

    async fn start_visit(&mut self, i: usize) -> Result<Happened, ClinicError> {
        let row = [
            ("patient_id", Value::Int(self.patients[i].person_id)),
            ("visit_type_id", Value::Int(self.ids.visit_type)),
            ("date_started", now().into()),
            ("location_id", Value::Int(self.ids.location)),
        ];
        self.begin().await?;
        let written = self.insert("visit", &row).await;
        let visit_id = finish(&mut self.session, written).await?;
        let patient = &mut self.patients[i];
        patient.visit = Some(OpenVisit { visit_id, vitals_taken: false, labs_done: false });
        Ok(Happened {
            action: ClinicAction::StartVisit,
            patient_uuid: Some(patient.info.uuid.clone()),
            text: format!("{} arrives: visit started", patient.info.full_name()),
        })
    }

    /// Starts a visit for this patient unless one is open (a scene's patient who just arrived).
    pub async fn start_visit_for(&mut self, uuid: &str) -> Result<Option<Happened>, ClinicError> {
        let i = self.index_of(uuid)?;
        if self.patients[i].visit.is_some() {
            return Ok(None);
        }
        self.start_visit(i).await.map(Some)
    }

    /// Takes this patient's vital signs, starting a visit first when none is open.
    pub async fn vital_signs_for(&mut self, uuid: &str) -> Result<Happened, ClinicError> {
        self.start_visit_for(uuid).await?;
        let i = self.index_of(uuid)?;
        self.vital_signs(i).await
    }

    /// An encounter in the open visit with its clinician and the obs given; returns the
    /// encounter id and the obs written.
    async fn write_encounter(&mut self, i: usize, encounter_type: i64, values: &[(Measure, f64)]) -> Result<(i64, Vec<RecordedObs>), ClinicError> {
        let person_id = self.patients[i].person_id;
        let visit_id = self.patients[i].visit.expect("an open visit").visit_id;
        let when = now();
        let encounter = [
            ("encounter_type", Value::Int(encounter_type)),
            ("patient_id", Value::Int(person_id)),
            ("location_id", Value::Int(self.ids.location)),
            ("encounter_datetime", when.clone().into()),
            ("visit_id", Value::Int(visit_id)),
        ];
        let encounter_id = self.insert("encounter", &encounter).await?;
        let provider = *self.rng.pick(&self.ids.providers);
        let role =
            [("encounter_id", Value::Int(encounter_id)), ("provider_id", Value::Int(provider)), ("encounter_role_id", Value::Int(self.ids.clinician_role))];
        self.insert("encounter_provider", &role).await?;
        let mut recorded = Vec::new();
        for (measure, value) in values {
            let obs_id = self.insert_obs(person_id, encounter_id, &when, *measure, *value, None).await?;
            recorded.push(RecordedObs {
                obs_id,
                measure: *measure,
                person_id,
                encounter_id,
                obs_datetime: when.clone(),
                value: *value,
                patient_name: self.patients[i].info.full_name(),
            });
        }
        Ok((encounter_id, recorded))
    }

    async fn insert_obs(
        &mut self,
        person_id: i64,
        encounter_id: i64,
        when: &str,
        measure: Measure,
        value: f64,
        previous: Option<i64>,
    ) -> Result<i64, ClinicError> {
        let value = match measure {
            Measure::MalariaSmear => ("value_coded", Value::Int(if value > 0.0 { self.ids.positive } else { self.ids.negative })),
            _ => ("value_numeric", Value::Float(value)),
        };
        let row = [
            ("person_id", Value::Int(person_id)),
            ("concept_id", Value::Int(self.ids.concepts[&measure])),
            ("encounter_id", Value::Int(encounter_id)),
            ("obs_datetime", when.into()),
            ("location_id", Value::Int(self.ids.location)),
            ("status", "FINAL".into()),
            ("previous_version", previous.map_or(Value::Null, Value::Int)),
            value,
        ];
        self.insert("obs", &row).await
    }

    async fn vital_signs(&mut self, i: usize) -> Result<Happened, ClinicError> {
        let values = self.plausible_vitals(i);
        self.begin().await?;
        let written = self.write_encounter(i, self.ids.vitals_encounter, &values).await;
        let (_, recorded) = finish(&mut self.session, written).await?;
        recorded.into_iter().for_each(|obs| self.remember_obs(obs));
        let patient = &mut self.patients[i];
        if let Some(visit) = &mut patient.visit {
            visit.vitals_taken = true;
        }
        let shown: Vec<String> = values.iter().map(|(m, v)| format_value(*m, *v)).collect();
        Ok(Happened {
            action: ClinicAction::VitalSigns,
            patient_uuid: Some(patient.info.uuid.clone()),
            text: format!("vital signs of {}: {}", patient.info.full_name(), shown.join(", ")),
        })
    }

    /// Weight, height, temperature, blood pressure and pulse as a triage nurse measures them,
    /// for the patient's age and sex.
    fn plausible_vitals(&mut self, i: usize) -> Vec<(Measure, f64)> {
        let info = &self.patients[i].info;
        let age = age_years(&info.birthdate);
        let female = info.gender == "F";
        let tenths = |rng: &mut SplitMix64, low: u64, high: u64| (low + rng.below(high - low + 1)) as f64 / 10.0;
        let whole = |rng: &mut SplitMix64, low: u64, high: u64| (low + rng.below(high - low + 1)) as f64;
        let rng = &mut self.rng;
        let (weight, height) = if age < 15 {
            let base_weight = 8 + 3 * age;
            let base_height = 75 + 6 * age;
            (tenths(rng, base_weight * 10 - 15, base_weight * 10 + 25), whole(rng, base_height - 5, base_height + 5))
        } else if female {
            (tenths(rng, 460, 860), whole(rng, 148, 174))
        } else {
            (tenths(rng, 520, 950), whole(rng, 158, 188))
        };
        // One patient in eight comes with a fever.
        let temperature = if rng.percent(12) { tenths(rng, 378, 398) } else { tenths(rng, 360, 374) };
        let systolic = if age < 15 { whole(rng, 90, 115) } else { whole(rng, 100, 160) };
        // Diastolic follows systolic at about three fifths, give or take.
        let diastolic = (systolic * 0.62 + whole(rng, 0, 12) - 6.0).round().clamp(50.0, 105.0);
        let pulse = if age < 15 { whole(rng, 80, 120) } else { whole(rng, 58, 100) };
        vec![
            (Measure::Weight, weight),
            (Measure::Height, height),
            (Measure::Temperature, temperature),
            (Measure::Systolic, systolic),
            (Measure::Diastolic, diastolic),
            (Measure::Pulse, pulse),
        ]
    }

    async fn lab_results(&mut self, i: usize) -> Result<Happened, ClinicError> {
        let rng = &mut self.rng;
        let mut values = vec![(Measure::Hemoglobin, (70 + rng.below(95)) as f64 / 10.0), (Measure::MalariaSmear, if rng.percent(25) { 1.0 } else { 0.0 })];
        // Patients in HIV care get their CD4 count and viral load.
        if rng.percent(35) {
            values.push((Measure::Cd4Count, (80 + rng.below(1_100)) as f64));
            // Most patients on treatment are suppressed; the others range over four decades.
            let load = if rng.percent(65) { (20 + rng.below(30)) as f64 } else { 10f64.powf(2.0 + rng.below(35) as f64 / 10.0).round() };
            values.push((Measure::ViralLoad, load));
        }
        if rng.percent(20) {
            values.push((Measure::Glucose, (70 + rng.below(160)) as f64));
        }
        self.begin().await?;
        let written = self.write_encounter(i, self.ids.lab_encounter, &values).await;
        let (_, recorded) = finish(&mut self.session, written).await?;
        recorded.into_iter().filter(|o| o.measure != Measure::MalariaSmear).for_each(|obs| self.remember_obs(obs));
        let patient = &mut self.patients[i];
        if let Some(visit) = &mut patient.visit {
            visit.labs_done = true;
        }
        let shown: Vec<String> = values.iter().map(|(m, v)| format_value(*m, *v)).collect();
        Ok(Happened {
            action: ClinicAction::LabResults,
            patient_uuid: Some(patient.info.uuid.clone()),
            text: format!("lab results of {}: {}", patient.info.full_name(), shown.join(", ")),
        })
    }

    async fn end_visit(&mut self, i: usize) -> Result<Happened, ClinicError> {
        let visit_id = self.patients[i].visit.expect("an open visit").visit_id;
        self.begin().await?;
        let written = self.update("visit", ("visit_id", visit_id), &[("date_stopped", now().into())]).await;
        finish(&mut self.session, written).await?;
        let patient = &mut self.patients[i];
        patient.visit = None;
        Ok(Happened {
            action: ClinicAction::EndVisit,
            patient_uuid: Some(patient.info.uuid.clone()),
            text: format!("{} goes home: visit ended", patient.info.full_name()),
        })
    }

    /// The clerk fixes the given name they slipped on at registration.
    async fn correct_name(&mut self, i: usize) -> Result<Happened, ClinicError> {
        let correct = self.patients[i].correct_given_name.clone().expect("a name to correct");
        let name_id = self.patients[i].name_id;
        self.begin().await?;
        let written = self.update("person_name", ("person_name_id", name_id), &[("given_name", correct.clone().into())]).await;
        finish(&mut self.session, written).await?;
        let patient = &mut self.patients[i];
        let before = patient.info.full_name();
        patient.info.given_name = correct;
        patient.correct_given_name = None;
        Ok(Happened {
            action: ClinicAction::CorrectName,
            patient_uuid: Some(patient.info.uuid.clone()),
            text: format!("name corrected: {before} → {}", patient.info.full_name()),
        })
    }

    async fn change_address(&mut self, i: usize) -> Result<Happened, ClinicError> {
        let address_id = self.patients[i].address_id.expect("an address");
        let neighbourhood = *self.rng.pick(self.facility.neighbourhoods);
        let plot = 1 + self.rng.below(900);
        self.begin().await?;
        let set = [("address1", Value::from(format!("Plot {plot}"))), ("city_village", neighbourhood.into())];
        let written = self.update("person_address", ("person_address_id", address_id), &set).await;
        finish(&mut self.session, written).await?;
        let patient = &self.patients[i];
        Ok(Happened {
            action: ClinicAction::ChangeAddress,
            patient_uuid: Some(patient.info.uuid.clone()),
            text: format!("{} moved house: now Plot {plot}, {neighbourhood}", patient.info.full_name()),
        })
    }

    /// OpenMRS never edits an obs in place: the corrected value is a new obs pointing at the
    /// old one through `previous_version`, and the old one is voided.
    async fn correct_obs(&mut self) -> Result<Happened, ClinicError> {
        let k = self.rng.below(self.obs.len() as u64) as usize;
        let old = self.obs.remove(k).expect("k is below the length");
        // A slip of the pen: digits swapped or one digit off, as a clerk's correction.
        let step = if old.measure.has_decimals() { 0.1 * (1 + self.rng.below(9)) as f64 } else { (1 + self.rng.below(9)) as f64 };
        let value = if self.rng.percent(50) || old.value <= step { old.value + step } else { old.value - step };
        let value = (value * 10.0).round() / 10.0;
        self.begin().await?;
        let written = async {
            let obs_id = self.insert_obs(old.person_id, old.encounter_id, &old.obs_datetime, old.measure, value, Some(old.obs_id)).await?;
            let void = void_values("corrected");
            self.update("obs", ("obs_id", old.obs_id), &void).await?;
            Ok(obs_id)
        }
        .await;
        let obs_id = match finish(&mut self.session, written).await {
            Ok(id) => id,
            Err(e) => {
                self.obs.push_back(old);
                return Err(e);
            }
        };
        let text = format!(
            "{} of {} corrected: {} → {} (the old obs is voided, the new one points back to it)",
            old.measure.concept().label,
            old.patient_name,
            format_number(old.measure, old.value),
            format_amount(old.measure, value)
        );
        self.remember_obs(RecordedObs { obs_id, value, ..old });
        Ok(Happened { action: ClinicAction::CorrectObs, patient_uuid: None, text })
    }

    async fn void_obs(&mut self) -> Result<Happened, ClinicError> {
        let k = self.rng.below(self.obs.len() as u64) as usize;
        let old = self.obs.remove(k).expect("k is below the length");
        self.begin().await?;
        let written = self.update("obs", ("obs_id", old.obs_id), &void_values("entered in error")).await;
        if let Err(e) = finish(&mut self.session, written).await {
            self.obs.push_back(old);
            return Err(e);
        }
        Ok(Happened {
            action: ClinicAction::VoidObs,
            patient_uuid: None,
            text: format!("{} of {} voided: entered in error", format_value(old.measure, old.value), old.patient_name),
        })
    }

    /// The patient now goes to another facility: an open visit here ends (returned as what
    /// happened), and no later action here chooses them; scenes still reach them by uuid.
    pub async fn transfer_out(&mut self, uuid: &str) -> Result<Option<Happened>, ClinicError> {
        let i = self.index_of(uuid)?;
        let ended = match self.patients[i].visit {
            Some(_) => {
                let mut happened = self.end_visit(i).await?;
                happened.text = format!("{} (transferred out)", happened.text);
                Some(happened)
            }
            None => None,
        };
        self.patients[i].moved_away = true;
        Ok(ended)
    }

    /// A patient brought here from another facility (fetched through the parent) joins the
    /// working set, read from this database.
    pub async fn adopt(&mut self, uuid: &str) -> Result<PatientInfo, ClinicError> {
        if let Some(info) = self.patient(uuid) {
            return Ok(info.clone());
        }
        let rows = self
            .session
            .query(
                "SELECT pe.person_id AS person_id, pe.gender AS gender, pe.birthdate AS birthdate FROM person pe JOIN patient pt ON pt.patient_id = pe.person_id WHERE pe.uuid = ?",
                &[uuid.into()],
            )
            .await
            .map_err(db("reading a patient"))?;
        let Some(person) = rows.first() else { return Err(ClinicError::UnknownPatient(uuid.to_owned())) };
        let person_id = person.i64("person_id").unwrap_or_default();
        let (name_id, given, middle, family) = self.current_name(person_id).await?;
        let address_id = self
            .session
            .query(
                "SELECT person_address_id AS id FROM person_address WHERE person_id = ? AND voided = 0 ORDER BY preferred DESC, person_address_id",
                &[Value::Int(person_id)],
            )
            .await
            .map_err(db("reading a patient"))?
            .first()
            .and_then(|r| r.i64("id"));
        let identifier = self
            .session
            .query(
                "SELECT identifier FROM patient_identifier WHERE patient_id = ? AND voided = 0 ORDER BY preferred DESC, patient_identifier_id",
                &[Value::Int(person_id)],
            )
            .await
            .map_err(db("reading a patient"))?
            .first()
            .and_then(|r| r.text("identifier"))
            .unwrap_or_default();
        let info = PatientInfo {
            uuid: uuid.to_owned(),
            given_name: given,
            middle_name: middle,
            family_name: family,
            gender: person.text("gender").unwrap_or_default(),
            birthdate: person.text("birthdate").map(|d| d.chars().take(10).collect()).unwrap_or_default(),
            identifier,
            registered_here: false,
        };
        self.remember_patient(Patient { info: info.clone(), person_id, name_id, address_id, correct_given_name: None, visit: None, moved_away: false });
        Ok(info)
    }

    async fn current_name(&mut self, person_id: i64) -> Result<(i64, String, Option<String>, String), ClinicError> {
        let rows = self
            .session
            .query(
                "SELECT person_name_id AS id, given_name, middle_name, family_name FROM person_name WHERE person_id = ? AND voided = 0 ORDER BY preferred DESC, person_name_id",
                &[Value::Int(person_id)],
            )
            .await
            .map_err(db("reading a patient's name"))?;
        let Some(row) = rows.first() else { return Err(ClinicError::UnknownPatient(format!("person {person_id} (no name)"))) };
        Ok((
            row.i64("id").unwrap_or_default(),
            row.text("given_name").unwrap_or_default(),
            row.text("middle_name").filter(|m| !m.is_empty()),
            row.text("family_name").unwrap_or_default(),
        ))
    }

    /// Reads a patient's name again (sync may have changed it) and returns it.
    pub async fn refresh_name(&mut self, uuid: &str) -> Result<PatientInfo, ClinicError> {
        let i = self.index_of(uuid)?;
        let (name_id, given, middle, family) = self.current_name(self.patients[i].person_id).await?;
        let patient = &mut self.patients[i];
        patient.name_id = name_id;
        patient.info.given_name = given;
        patient.info.middle_name = middle;
        patient.info.family_name = family;
        Ok(patient.info.clone())
    }

    /// Writes a middle name on the patient's current name (a scene: two facilities editing the
    /// same record before either syncs).
    pub async fn set_middle_name(&mut self, uuid: &str, middle: &str) -> Result<Happened, ClinicError> {
        let i = self.index_of(uuid)?;
        let name_id = self.patients[i].name_id;
        self.begin().await?;
        let written = self.update("person_name", ("person_name_id", name_id), &[("middle_name", middle.into())]).await;
        finish(&mut self.session, written).await?;
        let patient = &mut self.patients[i];
        let before = patient.info.full_name();
        patient.info.middle_name = Some(middle.to_owned());
        Ok(Happened {
            action: ClinicAction::EditName,
            patient_uuid: Some(uuid.to_owned()),
            text: format!("name edited: {before} → {}", patient.info.full_name()),
        })
    }

    /// A given name of this facility's country for the patient's sex, chosen by the PRNG (a
    /// scene's middle name).
    pub fn pick_given_name(&mut self, gender: &str) -> &'static str {
        let country = self.facility.country;
        let names = if gender == "F" { country.given_female } else { country.given_male };
        names[self.rng.below(names.len() as u64) as usize]
    }
}

fn void_values(reason: &str) -> [(&'static str, Value); 4] {
    [("voided", Value::Int(1)), ("voided_by", Value::Int(ADMIN_USER_ID)), ("date_voided", Value::Text(now())), ("void_reason", reason.into())]
}

fn age_years(birthdate: &str) -> u64 {
    let Ok(born) = chrono::NaiveDate::parse_from_str(birthdate, "%Y-%m-%d") else { return 30 };
    ((chrono::Utc::now().date_naive() - born).num_days().max(0) / 365) as u64
}

fn format_number(measure: Measure, value: f64) -> String {
    if measure.has_decimals() { format!("{value:.1}") } else { format!("{value:.0}") }
}

/// `61.5 kg`, `negative`.
fn format_amount(measure: Measure, value: f64) -> String {
    match measure {
        Measure::MalariaSmear => (if value > 0.0 { POSITIVE.label } else { NEGATIVE.label }).to_owned(),
        // CIEL writes the unit `DEG C`; a person reads °C.
        _ => format!("{} {}", format_number(measure, value), measure.concept().units.unwrap_or_default().replace("DEG C", "°C")),
    }
}

/// `weight 61.5 kg`, `malaria smear negative`.
fn format_value(measure: Measure, value: f64) -> String {
    format!("{} {}", measure.concept().label, format_amount(measure, value))
}

/// A clerk's slip: one letter of the name doubled (`Mphatso` → `Mphatsso`).
fn double_a_letter(name: &str, rng: &mut SplitMix64) -> String {
    let chars: Vec<char> = name.chars().collect();
    // Not the first letter: a slip there would look like another name.
    let i = 1 + rng.below(chars.len().saturating_sub(1).max(1) as u64) as usize;
    let i = i.min(chars.len() - 1);
    chars[..=i].iter().chain(std::iter::once(&chars[i])).chain(&chars[i + 1..]).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::testdb::{Source, TestDatabase};

    #[test]
    fn ciel_uuids_have_the_dictionary_shape() {
        assert_eq!(ciel_uuid(5089), "5089AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
        assert_eq!(ciel_uuid(21).len(), 36);
        assert_eq!(metadata_uuid("location", "kigali-hc"), metadata_uuid("location", "kigali-hc"));
        assert_ne!(metadata_uuid("location", "kigali-hc"), metadata_uuid("location", "zomba-dh"));
        assert_eq!(&metadata_uuid("x", "y")[14..15], "4");
    }

    #[test]
    fn facilities_have_unique_names_prefixes_and_valid_child_names() {
        let names: HashSet<&str> = FACILITIES.iter().map(|f| f.name).collect();
        let prefixes: HashSet<&str> = FACILITIES.iter().map(|f| f.identifier_prefix).collect();
        assert_eq!(names.len(), FACILITIES.len());
        assert_eq!(prefixes.len(), FACILITIES.len());
        for f in &FACILITIES {
            assert!(feedsync_node::exchange::valid_child_name(f.name), "{}", f.name);
        }
        // One per country first, so a small demo shows the region.
        let countries: HashSet<&str> = FACILITIES[..4].iter().map(|f| f.country.name).collect();
        assert_eq!(countries.len(), 4);
    }

    #[test]
    fn a_slip_doubles_one_letter_after_the_first() {
        let mut rng = SplitMix64::new(3);
        for _ in 0..50 {
            let slipped = double_a_letter("Mphatso", &mut rng);
            assert_eq!(slipped.chars().count(), 8);
            assert!(slipped.starts_with('M'));
        }
        assert_eq!(double_a_letter("Fátima", &mut SplitMix64::new(1)).chars().count(), 7);
    }

    #[tokio::test]
    async fn clinic_on_sqlite() {
        check_clinic(Source::Sqlite25).await;
    }

    #[tokio::test]
    async fn clinic_on_mariadb() {
        check_clinic(Source::MySql25).await;
    }

    /// Metadata is created once (twice is a no-op); a clinic then does every kind of action
    /// and the database holds what it says; the same seed on a fresh database gives the same
    /// patients.
    async fn check_clinic(source: Source) {
        let Some(db) = TestDatabase::create(source) else { return };
        let facility = &FACILITIES[1];
        let report = create_metadata(&db.database, &[facility]).await.unwrap();
        assert_eq!(report, MetadataReport { concepts: 13, locations: 1, clinicians: 2, types: 5 });
        assert_eq!(create_metadata(&db.database, &[facility]).await.unwrap(), MetadataReport::default(), "a second run creates nothing");
        let mut clinic = Clinic::open(&db.database, facility, 11).await.unwrap();
        let mut done = HashSet::new();
        let mut lines = Vec::new();
        for _ in 0..300 {
            let happened = clinic.step().await.unwrap();
            done.insert(happened.action);
            lines.push(happened.text);
        }
        for action in [
            ClinicAction::Register,
            ClinicAction::StartVisit,
            ClinicAction::VitalSigns,
            ClinicAction::LabResults,
            ClinicAction::EndVisit,
            ClinicAction::CorrectName,
            ClinicAction::ChangeAddress,
            ClinicAction::CorrectObs,
            ClinicAction::VoidObs,
        ] {
            assert!(done.contains(&action), "300 steps never did {action:?}:\n{}", lines.join("\n"));
        }
        let registered: Vec<PatientInfo> = clinic.patients().cloned().collect();
        let mut session = db.database.session().await.unwrap();
        let one = async |session: &mut Session, sql: &str| session.query(sql, &[]).await.unwrap()[0].i64("n").unwrap();
        let identifiers = one(&mut session, "SELECT COUNT(*) AS n FROM patient_identifier WHERE identifier LIKE 'ZMB-%'").await;
        assert_eq!(identifiers as usize, registered.len());
        assert_eq!(registered[0].identifier, "ZMB-000001");
        let corrected =
            one(&mut session, "SELECT COUNT(*) AS n FROM obs n JOIN obs o ON o.obs_id = n.previous_version WHERE o.voided = 1 AND o.concept_id = n.concept_id")
                .await;
        assert!(corrected > 0);
        let entered_in_error = one(&mut session, "SELECT COUNT(*) AS n FROM obs WHERE voided = 1 AND void_reason = 'entered in error'").await;
        assert!(entered_in_error > 0);
        let coded = one(&mut session, "SELECT COUNT(*) AS n FROM obs o JOIN concept c ON c.concept_id = o.value_coded WHERE c.uuid IN ('703AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA', '664AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA')").await;
        assert!(coded > 0, "malaria smears are coded positive/negative");
        let at_location = one(
            &mut session,
            "SELECT COUNT(*) AS n FROM encounter e JOIN location l ON l.location_id = e.location_id WHERE l.name = 'Zomba District Hospital'",
        )
        .await;
        let encounters = one(&mut session, "SELECT COUNT(*) AS n FROM encounter").await;
        assert_eq!(at_location, encounters);
        // Names in the database are the ones the clinic reports (after corrections).
        for patient in &registered {
            let name = session
                .query(
                    "SELECT pn.given_name AS given FROM person_name pn JOIN person pe ON pe.person_id = pn.person_id WHERE pe.uuid = ?",
                    &[patient.uuid.as_str().into()],
                )
                .await
                .unwrap();
            assert_eq!(name[0].text("given").as_deref(), Some(patient.given_name.as_str()));
        }
        // A patient from elsewhere joins the working set and gets a visit here.
        let first = registered[0].uuid.clone();
        let adopted = {
            let mut other = Clinic::open(&db.database, facility, 12).await.unwrap();
            let info = other.adopt(&first).await.unwrap();
            other.vital_signs_for(&first).await.unwrap();
            info
        };
        assert!(!adopted.registered_here);
        assert_eq!(adopted.identifier, "ZMB-000001");
        // Once transferred out, no action here chooses the patient; scenes still reach them.
        clinic.transfer_out(&first).await.unwrap();
        for _ in 0..100 {
            let happened = clinic.step().await.unwrap();
            assert_ne!(happened.patient_uuid.as_deref(), Some(first.as_str()), "{}", happened.text);
        }
        clinic.set_middle_name(&first, "Chisomo").await.unwrap();
        drop(session);

        let Some(again) = TestDatabase::create(source) else { return };
        create_metadata(&again.database, &[facility]).await.unwrap();
        let mut twin = Clinic::open(&again.database, facility, 11).await.unwrap();
        for _ in 0..300 {
            twin.step().await.unwrap();
        }
        let twin_patients: Vec<(String, String)> = twin.patients().map(|p| (p.uuid.clone(), p.identifier.clone())).collect();
        let patients: Vec<(String, String)> = registered.iter().map(|p| (p.uuid.clone(), p.identifier.clone())).collect();
        assert_eq!(twin_patients, patients, "the same seed on a fresh database gives the same patients");
    }
}
