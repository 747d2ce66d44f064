//! The parent/child network protocol's wire types: what a child pushes, what a parent answers
//! and serves as a child's change page, the hello, status reports, operator commands, conflict
//! records and held items as they travel, and the protocol's limits. The logic that produces
//! and consumes them is `feedsync_node::exchange`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::resource::{Fields, Resource};

pub const NETWORK_PATH: &str = "/ws/feedsync/network";
/// Items per push or change page, and the most a parent accepts in one push.
pub const ITEMS_PER_MESSAGE_MAX: usize = 500;
/// Largest push body a parent accepts.
pub const PUSH_BODY_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Largest patient record a fetch returns, in rows.
pub const RECORD_ROWS_MAX: usize = 100_000;


/// Which side wins a conflict, chosen per category. Written `parent_wins` / `child_wins` in
/// configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    #[default]
    ParentWins,
    ChildWins,
}

impl Policy {
    pub const ALL: [Policy; 2] = [Policy::ParentWins, Policy::ChildWins];

    pub fn as_str(self) -> &'static str {
        match self {
            Policy::ParentWins => "parent_wins",
            Policy::ChildWins => "child_wins",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A conflict policy name that is not one of [`Policy::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown conflict policy `{given}`: expected one of parent_wins, child_wins")]
pub struct UnknownPolicy {
    pub given: String,
}

impl FromStr for Policy {
    type Err = UnknownPolicy;

    fn from_str(text: &str) -> Result<Policy, UnknownPolicy> {
        Policy::ALL
            .into_iter()
            .find(|policy| policy.as_str() == text)
            .ok_or_else(|| UnknownPolicy { given: text.into() })
    }
}


// ---- wire types ----

/// One entity's state as exchanged: present (`resource`) or deleted (no resource).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// The event number on the sending side (0 for rows of a fetched record).
    pub seq: i64,
    pub table: String,
    pub key: String,
    pub category: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<Resource>,
    /// Push only: the version this entity had when the two sides last agreed; absent when
    /// they never exchanged it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Base>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Base {
    /// `None`: the entity did not exist when the sides last agreed.
    pub columns: Option<Fields>,
}

/// What a parent tells a child about its registration and the network's rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub child: String,
    /// Categories this child may push; `*` for all.
    pub categories: Vec<String>,
    pub policy: PolicyConfig,
    pub last_seq: i64,
    /// Operator actions waiting for this child.
    #[serde(default)]
    pub commands: Vec<Command>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// Who wins when both sides changed the same field: `parent_wins` (the version that
    /// reached the parent first) or `child_wins`.
    pub conflict_policy: Policy,
    /// Per category, overriding `conflict_policy`.
    pub conflict_policy_by_category: BTreeMap<String, Policy>,
}

impl PolicyConfig {
    pub fn policy(&self, category: &str) -> Policy {
        self.conflict_policy_by_category.get(category).copied().unwrap_or(self.conflict_policy)
    }
}

/// Categories whose rows give or change access: accounts, roles, privileges and server
/// settings. A child writing them could make any user a "System Developer" everywhere, so `*`
/// does not cover them: a child writes them only when registered with the category named, or
/// with [`PRIVILEGED_GRANT`].
pub const PRIVILEGED_CATEGORIES: [&str; 8] = ["user", "user_role", "user_property", "role", "role_role", "role_privilege", "privilege", "global_property"];

/// In a child's categories, grants every one of [`PRIVILEGED_CATEGORIES`].
pub const PRIVILEGED_GRANT: &str = "privileged";

/// Whether a child registered with `categories` may write rows of `category`: `*` is every
/// category but the privileged ones, which need naming (or [`PRIVILEGED_GRANT`]).
pub fn category_allowed(categories: &[String], category: &str) -> bool {
    if PRIVILEGED_CATEGORIES.contains(&category) {
        categories.iter().any(|c| c == category || c == PRIVILEGED_GRANT)
    } else {
        categories.iter().any(|c| c == "*" || c == category)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushRequest {
    /// The last event number on the child this push covers (including events it leaves out).
    pub through_seq: i64,
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushStatus {
    /// Merged and applied; `result` is the parent's version now.
    Applied,
    /// Covered by an earlier push; `result` is the parent's version now.
    Already,
    /// Kept at the parent until it can apply (a reference not there yet, a refusal): `reason`.
    Held,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushResult {
    pub table: String,
    pub key: String,
    pub status: PushStatus,
    /// The parent's version after this push (absent: deleted there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Resource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushResponse {
    pub acked_through: i64,
    pub results: Vec<PushResult>,
}

/// What a child tells its parent at the end of each round, for the parent's status views
/// (`feed-publisher child list`, the dashboard): how far behind it is, what it holds and
/// why, and the conflicts found there.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChildReport {
    /// Own events the parent has not acknowledged yet.
    pub pending_push: i64,
    /// The last parent event applied here.
    pub pull_after: i64,
    /// Items from the parent held here until they can apply (at most 100), and how many in all.
    pub held: Vec<HeldItem>,
    pub held_total: i64,
    /// Open conflicts found here (at most 100), and how many in all.
    pub conflicts: Vec<Conflict>,
    pub open_conflicts: i64,
    /// The round that just ended.
    pub round: RoundSummary,
    /// Commands from the parent carried out since the last report, with what happened.
    pub done_commands: Vec<CommandResult>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoundSummary {
    pub pushed: i64,
    pub pulled: i64,
    pub held_at_parent: i64,
    pub conflicts: i64,
    pub duration_ms: i64,
    /// The round's error, when it ended with one.
    pub error: Option<String>,
}

/// An operator's action on a child, decided at the parent (from the dashboard) and carried out
/// by the child at its next round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub id: i64,
    pub action: CommandAction,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CommandAction {
    /// Try a held item again now.
    RetryHeld { held_id: i64 },
    /// Drop a held item; the reason is kept in the audit log at both ends.
    SkipHeld { held_id: i64, reason: String },
    /// Resolve a conflict found at the child.
    ResolveConflict { conflict_id: i64, take: String, fields: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    pub id: i64,
    pub ok: bool,
    pub message: String,
}

/// A page of the parent's changes for one child.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Changes {
    pub items: Vec<Item>,
    /// The last parent event this page covers (ask for `after=through` next).
    pub through: i64,
    /// More events follow.
    pub more: bool,
}

/// A patient's whole record, parents before children.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub patient_uuid: String,
    pub items: Vec<Item>,
}

// ---- local state ----

/// The local entity as a version, with its resource when present.
pub type ConflictFields = Fields;

/// A conflict record as `conflicts list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    pub id: i64,
    pub table: String,
    pub key: String,
    pub category: String,
    /// `parent` or `child`: which side this database is.
    pub site_side: String,
    pub peer: String,
    pub detected_at: String,
    pub winner: String,
    pub entity_conflict: bool,
    pub fields: Vec<String>,
    pub base: Option<Fields>,
    pub parent_version: Option<Fields>,
    pub child_version: Option<Fields>,
    pub result: Option<Fields>,
    pub status: String,
    pub resolution: Option<String>,
}

impl Conflict {
    /// This database's version in the conflict and the other side's.
    pub fn mine_theirs(&self) -> (&Option<Fields>, &Option<Fields>) {
        if self.site_side == "parent" { (&self.parent_version, &self.child_version) } else { (&self.child_version, &self.parent_version) }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldItem {
    pub id: i64,
    pub peer: String,
    pub item: Item,
    pub reason: String,
    pub attempts: i64,
    pub received_at: String,
}

/// Patients a child receives besides those it registered, wrote or fetched; set with
/// `feed-publisher child add` and kept in the child's registration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CatchmentRules {
    /// Location uuids: patients with an identifier, visit or encounter at one of them.
    pub locations: Vec<String>,
    /// Identifier prefixes (as Bahmni does): patients with an identifier starting with one.
    pub identifier_prefixes: Vec<String>,
    /// `person_address` column and value: patients with a non-voided address matching.
    pub address: BTreeMap<String, String>,
}

/// The `person_address` columns a rule may name.
pub const ADDRESS_COLUMNS: &[&str] = &[
    "address1", "address2", "address3", "address4", "address5", "address6", "city_village", "county_district", "state_province", "country", "postal_code",
];

impl CatchmentRules {
    pub fn is_empty(&self) -> bool {
        self.locations.is_empty() && self.identifier_prefixes.is_empty() && self.address.is_empty()
    }

    /// Parses `--address column=value` pairs.
    pub fn parse_address(pairs: &[String]) -> Result<BTreeMap<String, String>, String> {
        let mut address = BTreeMap::new();
        for pair in pairs {
            let (column, value) = pair.split_once('=').ok_or_else(|| format!("--address {pair:?}: expected COLUMN=VALUE, e.g. county_district=Gasabo"))?;
            if !ADDRESS_COLUMNS.contains(&column) {
                return Err(format!("--address {column}: not a person_address column a rule can use; use one of {}", ADDRESS_COLUMNS.join(", ")));
            }
            address.insert(column.to_owned(), value.to_owned());
        }
        Ok(address)
    }
}

/// A registered child as the parent knows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Child {
    pub name: String,
    pub categories: Vec<String>,
    pub all_patients: bool,
    pub rules: CatchmentRules,
    pub created_at: String,
    pub revoked_at: Option<String>,
    pub acked_seq: i64,
    pub last_contact: Option<String>,
    pub catchment_patients: i64,
    pub held_items: i64,
}

/// One of the two sides of an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Parent,
    Child,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Parent => Side::Child,
            Side::Child => Side::Parent,
        }
    }

    /// `parent` for the parent, `child` for the child.
    pub fn pick<T>(self, parent: T, child: T) -> T {
        match self {
            Side::Parent => parent,
            Side::Child => child,
        }
    }
}

// ---- patient search across the network ----

/// A patient search as a child asks it (by one identifier, or by name with what else it knows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PatientQuery {
    Identifier(String),
    Name {
        name: String,
        /// `YYYY-MM-DD`.
        birthdate: Option<String>,
        /// `M`, `F`, `O`, `U` (compared case-insensitively with `person.gender`).
        gender: Option<String>,
    },
}

/// One search result: enough to recognize the person, nothing clinical.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// `person.uuid` (a patient's uuid is its person's).
    pub uuid: String,
    /// The name that matched (name search) or the preferred name (identifier search).
    pub given_name: Option<String>,
    pub middle_name: Option<String>,
    pub family_name: Option<String>,
    pub gender: Option<String>,
    /// `YYYY-MM-DD`.
    pub birthdate: Option<String>,
    /// Non-voided identifiers, preferred first.
    pub identifiers: Vec<String>,
    /// 0..=1; 1.0 for an identifier match.
    pub score: f64,
    /// `"identifier"` or `"name"`.
    pub matched_by: String,
}

/// The answer to `GET /network/patients?q=`: the candidates, best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatientsFound {
    pub candidates: Vec<Candidate>,
}
