//! The entity model: which tables are published, under which category, what each row's global
//! identity is, which columns reference which tables, and which row a change belongs to (patient,
//! location). Built by a pure function from the live schema and the profile; every decision
//! about identity lives here, and the SQL expressions that compute identities are generated
//! here so triggers, snapshots, resources and lookups agree by construction.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::sql::{Dialect, quote_ident};
use crate::profile::{IdentityRule, Profile};
use crate::schema::{Column, Schema};

/// Identity parts of a join row are joined by this character in its key. Uuids never contain
/// it; the text keys OpenMRS uses (role, privilege and property names) do not either.
pub const JOIN_KEY_SEPARATOR: char = '+';

/// Longest identity key the toolkit stores (join keys of two uuids are 73 characters; text keys
/// are at most 255 in OpenMRS).
pub const ENTITY_KEY_LENGTH_MAX: usize = 512;

/// How long a reference chain from a row to its patient may be (obs -> encounter -> patient).
const PATIENT_PATH_HOPS_MAX: usize = 3;

#[derive(Debug, Clone, PartialEq)]
pub enum Identity {
    /// The row's own uuid column.
    Uuid { column: String },
    /// A subclass row: `column` is both its key and a reference to the parent row.
    Parent { column: String, parent_table: String },
    /// The identities (or text values) of the columns it joins, in order.
    Join { parts: Vec<JoinPart> },
    /// A text primary key.
    TextKey { column: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct JoinPart {
    pub column: String,
    /// The referenced table when the column is a reference; `None` for a text value.
    pub target_table: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    pub column: String,
    pub target_table: String,
    pub target_column: String,
    /// Declared by a foreign key in the database (false: known from the profile only).
    pub declared: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ValueReference {
    pub value_column: String,
    pub type_column: String,
    pub type_table: String,
    pub type_format_column: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    pub table: String,
    pub category: String,
    pub identity: Identity,
    pub primary_key: Vec<String>,
    /// Published columns: the table's columns less those the profile omits.
    pub columns: Vec<Column>,
    pub references: Vec<Reference>,
    pub value_reference: Option<ValueReference>,
    /// References to follow from this row to the patient it belongs to (empty: none).
    pub patient_path: Vec<Reference>,
    /// The row is itself the person/patient whose uuid tags it.
    pub is_patient_root: bool,
    pub location_column: Option<String>,
    /// Columns (among `columns`) holding credentials: left out of a resource for a reader not
    /// trusted with them ([`Entity::without_credentials`]).
    pub credential_columns: Vec<String>,
}

impl Entity {
    pub fn reference(&self, column: &str) -> Option<&Reference> {
        self.references.iter().find(|r| r.column == column)
    }
    pub fn has_column(&self, name: &str) -> bool {
        self.columns.iter().any(|c| c.name == name)
    }
    /// `columns` less the credential columns, for a reader not trusted with credentials.
    /// Pure; the hash is the caller's to recompute.
    pub fn without_credentials(&self, columns: &mut std::collections::BTreeMap<String, serde_json::Value>) -> bool {
        let before = columns.len();
        columns.retain(|name, _| !self.credential_columns.iter().any(|c| c == name));
        columns.len() != before
    }
    /// The table's own integer surrogate key, which never leaves the server.
    pub fn local_id_column(&self) -> Option<&str> {
        match self.primary_key.as_slice() {
            [only] if self.reference(only).is_none()
                && self.columns.iter().any(|c| &c.name == only && c.is_integer()) =>
            {
                Some(only)
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Model {
    pub entities: BTreeMap<String, Entity>,
    /// Tables that exist but are not published, with the reason.
    pub not_published: BTreeMap<String, String>,
    /// Java class names (person attribute formats) to the table holding that class.
    pub class_tables: BTreeMap<String, String>,
    /// Publishable tables with referenced tables before referencing ones.
    pub snapshot_order: Vec<String>,
}

/// Builds the model. Pure: the same schema and profile always give the same model.
pub fn build(schema: &Schema, profile: &Profile) -> Model {
    let mut model = Model { class_tables: profile.class_tables.clone(), ..Model::default() };
    let mut candidates: BTreeMap<String, (Identity, Vec<Reference>)> = BTreeMap::new();
    for (name, table) in &schema.tables {
        if profile.is_excluded(name) {
            model.not_published.insert(name.clone(), "excluded by the profile".into());
            continue;
        }
        let references = references_of(schema, profile, name);
        match identity_of(table, profile, &references) {
            Ok(identity) => {
                candidates.insert(name.clone(), (identity, references));
            }
            Err(reason) => {
                model.not_published.insert(name.clone(), reason);
            }
        }
    }
    // A parent or join identity is only as good as the identities it is made of: drop rows
    // whose identity depends on an unpublishable table, until nothing changes.
    loop {
        let broken: Vec<(String, String)> = candidates
            .iter()
            .filter_map(|(name, (identity, _))| {
                identity_dependencies(identity)
                    .into_iter()
                    .find(|dep| !candidates.contains_key(dep))
                    .map(|dep| (name.clone(), format!("its identity is made from table {dep}, which is not published")))
            })
            .collect();
        if broken.is_empty() {
            break;
        }
        for (name, reason) in broken {
            candidates.remove(&name);
            model.not_published.insert(name, reason);
        }
    }
    for (name, (identity, references)) in candidates.iter() {
        let table = &schema.tables[name];
        let references: Vec<Reference> =
            references.iter().filter(|r| candidates.contains_key(&r.target_table)).cloned().collect();
        let value_reference = profile
            .value_references
            .iter()
            .find(|v| &v.table == name && table.has_column(&v.value_column) && candidates.contains_key(&v.type_table))
            .map(|v| ValueReference {
                value_column: v.value_column.clone(),
                type_column: v.type_column.clone(),
                type_table: v.type_table.clone(),
                type_format_column: v.type_format_column.clone(),
            });
        let location_column = if name == "location" {
            None
        } else {
            references.iter().find(|r| r.target_table == "location").map(|r| r.column.clone())
        };
        model.entities.insert(
            name.clone(),
            Entity {
                table: name.clone(),
                category: profile.categories.get(name).cloned().unwrap_or_else(|| name.clone()),
                identity: identity.clone(),
                primary_key: table.primary_key.clone(),
                columns: table
                    .columns
                    .iter()
                    .filter(|c| !profile.omitted_columns.get(name).is_some_and(|o| o.contains(&c.name)))
                    .cloned()
                    .collect(),
                references,
                value_reference,
                patient_path: Vec::new(),
                is_patient_root: name == "person" || name == "patient",
                location_column,
                credential_columns: profile
                    .credential_columns
                    .get(name)
                    .map(|listed| listed.iter().filter(|c| table.has_column(c)).cloned().collect())
                    .unwrap_or_default(),
            },
        );
    }
    let paths: BTreeMap<String, Vec<Reference>> = model
        .entities
        .keys()
        .map(|name| (name.clone(), patient_path(&model.entities, profile, name)))
        .collect();
    for (name, path) in paths {
        model.entities.get_mut(&name).expect("entity").patient_path = path;
    }
    model.snapshot_order = snapshot_order(&model.entities, profile);
    model
}

fn references_of(schema: &Schema, profile: &Profile, name: &str) -> Vec<Reference> {
    let table = &schema.tables[name];
    let mut references = Vec::new();
    for column in &table.columns {
        if let Some(fk) = table.foreign_keys.iter().find(|fk| fk.column == column.name) {
            references.push(Reference {
                column: column.name.clone(),
                target_table: fk.referenced_table.clone(),
                target_column: fk.referenced_column.clone(),
                declared: true,
            });
        } else if let Some(target) = profile.reference(name, &column.name)
            && let Some(target_table) = schema.tables.get(target)
            && let [target_column] = target_table.primary_key.as_slice()
        {
            references.push(Reference {
                column: column.name.clone(),
                target_table: target.to_owned(),
                target_column: target_column.clone(),
                declared: false,
            });
        }
    }
    references
}

fn identity_of(
    table: &crate::schema::Table,
    profile: &Profile,
    references: &[Reference],
) -> Result<Identity, String> {
    let reference = |column: &str| references.iter().find(|r| r.column == column);
    if let Some(rule) = profile.identity.get(&table.name) {
        return match rule {
            IdentityRule::Parent(column) => match reference(column) {
                Some(r) => Ok(Identity::Parent { column: column.clone(), parent_table: r.target_table.clone() }),
                None => Err(format!("profile says identity is parent via {column}, but that column is not a reference here")),
            },
            IdentityRule::Join(columns) => {
                let mut parts = Vec::new();
                for column in columns {
                    if !table.has_column(column) {
                        return Err(format!("profile joins on column {column}, which this table lacks"));
                    }
                    parts.push(JoinPart { column: column.clone(), target_table: reference(column).map(|r| r.target_table.clone()) });
                }
                Ok(Identity::Join { parts })
            }
            IdentityRule::TextKey(column) => {
                if table.has_column(column) {
                    Ok(Identity::TextKey { column: column.clone() })
                } else {
                    Err(format!("profile names text key {column}, which this table lacks"))
                }
            }
        };
    }
    if table.has_column("uuid") {
        return Ok(Identity::Uuid { column: "uuid".into() });
    }
    match table.primary_key.as_slice() {
        [only] => {
            if let Some(r) = reference(only) {
                return Ok(Identity::Parent { column: only.clone(), parent_table: r.target_table.clone() });
            }
            let column = table.column(only).expect("pk column exists");
            if column.is_integer() {
                Err(format!("no uuid column and its key {only} is a local integer id"))
            } else {
                Ok(Identity::TextKey { column: only.clone() })
            }
        }
        [] => {
            // A keyless table joining two or more rows (e.g. concept_name_tag_map in some
            // versions) is identified by what it joins.
            let parts: Vec<JoinPart> = references
                .iter()
                .filter(|r| !profile.user_columns.columns.contains(&r.column))
                .map(|r| JoinPart { column: r.column.clone(), target_table: Some(r.target_table.clone()) })
                .collect();
            if parts.len() >= 2 {
                Ok(Identity::Join { parts })
            } else {
                Err("no uuid column and no primary key".into())
            }
        }
        columns => {
            let parts: Vec<JoinPart> = columns
                .iter()
                .map(|c| JoinPart { column: c.clone(), target_table: reference(c).map(|r| r.target_table.clone()) })
                .collect();
            let text_parts_ok = parts.iter().all(|p| {
                p.target_table.is_some() || !table.column(&p.column).is_some_and(|c| c.is_integer())
            });
            if text_parts_ok {
                Ok(Identity::Join { parts })
            } else {
                Err("no uuid column and its composite key holds a local integer id that is not a reference".into())
            }
        }
    }
}

fn identity_dependencies(identity: &Identity) -> Vec<String> {
    match identity {
        Identity::Uuid { .. } | Identity::TextKey { .. } => Vec::new(),
        Identity::Parent { parent_table, .. } => vec![parent_table.clone()],
        Identity::Join { parts } => parts.iter().filter_map(|p| p.target_table.clone()).collect(),
    }
}

/// Shortest chain of references from `table` to the patient it belongs to. A reference to
/// `patient` always counts; a reference to `person` counts only from tables the profile lists
/// as person data (a provider's or user's person is not a patient).
fn patient_path(entities: &BTreeMap<String, Entity>, profile: &Profile, table: &str) -> Vec<Reference> {
    if table == "person" || table == "patient" {
        return Vec::new();
    }
    let person_tables = &profile.patient_data.person_tables;
    let mut queue: VecDeque<(String, Vec<Reference>)> = VecDeque::from([(table.to_owned(), Vec::new())]);
    let mut seen = BTreeSet::from([table.to_owned()]);
    while let Some((current, path)) = queue.pop_front() {
        if path.len() >= PATIENT_PATH_HOPS_MAX {
            continue;
        }
        let Some(entity) = entities.get(&current) else { continue };
        for r in &entity.references {
            if profile.user_columns.columns.contains(&r.column) {
                continue;
            }
            let mut next = path.clone();
            next.push(r.clone());
            if r.target_table == "patient" || (r.target_table == "person" && person_tables.contains(&current)) {
                return next;
            }
            if r.target_table != "person" && r.target_table != current && seen.insert(r.target_table.clone()) {
                queue.push_back((r.target_table.clone(), next));
            }
        }
    }
    Vec::new()
}

/// Referenced tables first. Self references and references to users through creator-style
/// columns are left out (they form cycles: users -> person -> users); remaining cycles are
/// broken deterministically at the table with the fewest unmet dependencies.
fn snapshot_order(entities: &BTreeMap<String, Entity>, profile: &Profile) -> Vec<String> {
    let mut depends_on: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (name, entity) in entities {
        let deps = depends_on.entry(name).or_default();
        for r in &entity.references {
            if r.target_table != *name && !profile.user_columns.columns.contains(&r.column) {
                deps.insert(&r.target_table);
            }
        }
    }
    let mut order = Vec::new();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    while done.len() < depends_on.len() {
        let ready: Vec<&str> = depends_on
            .iter()
            .filter(|(n, deps)| !done.contains(*n) && deps.iter().all(|d| done.contains(d)))
            .map(|(n, _)| *n)
            .collect();
        let next = if ready.is_empty() {
            depends_on
                .iter()
                .filter(|(n, _)| !done.contains(*n))
                .min_by_key(|(n, deps)| (deps.iter().filter(|d| !done.contains(*d)).count(), **n))
                .map(|(n, _)| vec![*n])
                .expect("something is left")
        } else {
            ready
        };
        for n in next {
            done.insert(n);
            order.push(n.to_owned());
        }
    }
    order
}

/// Where the key columns of a row come from when generating SQL.
#[derive(Debug, Clone)]
pub enum RowSource<'a> {
    /// A row alias whose columns can be read directly: `NEW`, `OLD`, or a table alias.
    Alias(&'a str),
    /// SQL expressions for the primary key columns, in key order.
    PrimaryKey(Vec<String>),
}

impl Model {
    pub fn entity(&self, table: &str) -> Option<&Entity> {
        self.entities.get(table)
    }

    /// SQL expression computing the identity key of a row of `table`. Pure text generation:
    /// used in triggers (`NEW`/`OLD`), in the snapshot (`t`), and for reference lookups.
    pub fn key_sql(&self, dialect: Dialect, table: &str, source: &RowSource) -> Option<String> {
        let entity = self.entities.get(table)?;
        let column_sql = |column: &str| column_sql(dialect, entity, source, column);
        Some(match &entity.identity {
            Identity::Uuid { column } => column_sql(column),
            Identity::TextKey { column } => column_sql(column),
            Identity::Parent { column, parent_table } => {
                self.key_sql(dialect, parent_table, &RowSource::PrimaryKey(vec![column_sql(column)]))?
            }
            Identity::Join { parts } => {
                let mut pieces = Vec::new();
                for part in parts {
                    let value = column_sql(&part.column);
                    pieces.push(match &part.target_table {
                        Some(target) => self.reference_key_sql(dialect, entity, &part.column, target, value)?,
                        None => value,
                    });
                }
                crate::sql::concat_separated(dialect, &pieces, JOIN_KEY_SEPARATOR)
            }
        })
    }

    /// SQL for the identity key of the row that `column` (whose value is `value_sql`) of
    /// `entity` references in `target`.
    fn reference_key_sql(&self, dialect: Dialect, entity: &Entity, column: &str, target: &str, value_sql: String) -> Option<String> {
        let target_entity = self.entities.get(target)?;
        let target_column = entity.reference(column).map(|r| r.target_column.clone())?;
        if target_entity.primary_key.len() == 1 && target_entity.primary_key[0] == target_column {
            self.key_sql(dialect, target, &RowSource::PrimaryKey(vec![value_sql]))
        } else {
            let inner = self.key_sql(dialect, target, &RowSource::Alias("fs_ref"))?;
            Some(format!(
                "(SELECT {inner} FROM {} fs_ref WHERE fs_ref.{} = {value_sql})",
                quote_ident(dialect, target),
                quote_ident(dialect, &target_column)
            ))
        }
    }

    /// SQL for the uuid of the patient a row belongs to, or `None` if it belongs to none.
    pub fn patient_sql(&self, dialect: Dialect, table: &str, source: &RowSource) -> Option<String> {
        let entity = self.entities.get(table)?;
        if entity.is_patient_root {
            return self.key_sql(dialect, table, source);
        }
        let (first, rest) = entity.patient_path.split_first()?;
        let mut value = column_sql(dialect, entity, source, &first.column);
        let mut current = first;
        for hop in rest {
            value = format!(
                "(SELECT {} FROM {} WHERE {} = {value})",
                quote_ident(dialect, &hop.column),
                quote_ident(dialect, &current.target_table),
                quote_ident(dialect, &current.target_column)
            );
            current = hop;
        }
        let owner = self.entities.get(&current.target_table)?;
        if owner.primary_key.len() == 1 && owner.primary_key[0] == current.target_column {
            self.key_sql(dialect, &current.target_table, &RowSource::PrimaryKey(vec![value]))
        } else {
            None
        }
    }

    /// SQL for the uuid of the location a row names, or `None`.
    pub fn location_sql(&self, dialect: Dialect, table: &str, source: &RowSource) -> Option<String> {
        let entity = self.entities.get(table)?;
        let column = entity.location_column.as_ref()?;
        let value = column_sql(dialect, entity, source, column);
        self.reference_key_sql(dialect, entity, column, "location", value)
    }
}

fn column_sql(dialect: Dialect, entity: &Entity, source: &RowSource, column: &str) -> String {
    match source {
        RowSource::Alias(alias) => format!("{alias}.{}", quote_ident(dialect, column)),
        RowSource::PrimaryKey(values) => {
            if let Some(i) = entity.primary_key.iter().position(|c| c == column) {
                return values[i].clone();
            }
            let condition: Vec<String> = entity
                .primary_key
                .iter()
                .zip(values)
                .map(|(c, v)| format!("{} = {v}", quote_ident(dialect, c)))
                .collect();
            format!(
                "(SELECT {} FROM {} WHERE {})",
                quote_ident(dialect, column),
                quote_ident(dialect, &entity.table),
                condition.join(" AND ")
            )
        }
    }
}

/// Splits a join key into its parts; the last part takes the remainder so a text value may
/// contain the separator at the end of the key.
pub fn split_join_key(key: &str, parts: usize) -> Option<Vec<&str>> {
    let pieces: Vec<&str> = key.splitn(parts, JOIN_KEY_SEPARATOR).collect();
    (pieces.len() == parts && pieces.iter().all(|p| !p.is_empty())).then_some(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{ForeignKey, Table};

    fn col(name: &str, ty: &str) -> Column {
        Column { name: name.into(), data_type: ty.into(), nullable: true, ..Column::default() }
    }

    fn table(name: &str, cols: &[(&str, &str)], pk: &[&str], fks: &[(&str, &str, &str)]) -> Table {
        Table {
            name: name.into(),
            columns: cols.iter().map(|(n, t)| col(n, t)).collect(),
            primary_key: pk.iter().map(|s| s.to_string()).collect(),
            foreign_keys: fks
                .iter()
                .map(|(c, t, tc)| ForeignKey { column: c.to_string(), referenced_table: t.to_string(), referenced_column: tc.to_string() })
                .collect(),
        }
    }

    /// A small OpenMRS-shaped schema with no declared constraints at all, as a database that
    /// lost them in a dump and restore: everything must come from the profile.
    fn bare_schema() -> Schema {
        let mut s = Schema::default();
        for t in [
            table("users", &[("user_id", "int"), ("person_id", "int"), ("creator", "int"), ("uuid", "char")], &["user_id"], &[]),
            table("person", &[("person_id", "int"), ("creator", "int"), ("uuid", "char")], &["person_id"], &[]),
            table("patient", &[("patient_id", "int"), ("creator", "int")], &["patient_id"], &[]),
            table("location", &[("location_id", "int"), ("parent_location", "int"), ("uuid", "char")], &["location_id"], &[]),
            table("encounter", &[("encounter_id", "int"), ("patient_id", "int"), ("location_id", "int"), ("uuid", "char")], &["encounter_id"], &[]),
            table("encounter_provider", &[("encounter_provider_id", "int"), ("encounter_id", "int"), ("uuid", "char")], &["encounter_provider_id"], &[]),
            table("obs", &[("obs_id", "int"), ("person_id", "int"), ("encounter_id", "int"), ("obs_group_id", "int"), ("location_id", "int"), ("uuid", "char")], &["obs_id"], &[]),
            table("role", &[("role", "varchar"), ("uuid", "char")], &["role"], &[]),
            table("user_role", &[("user_id", "int"), ("role", "varchar")], &["role", "user_id"], &[]),
            table("liquibasechangelog", &[("ID", "varchar")], &["ID"], &[]),
            table("mystery", &[("mystery_id", "int"), ("x", "int")], &["mystery_id"], &[]),
            table("module_thing", &[("id", "int"), ("uuid", "char"), ("patient", "int")], &["id"], &[("patient", "patient", "patient_id")]),
        ] {
            s.tables.insert(t.name.clone(), t);
        }
        s
    }

    #[test]
    fn identities_from_profile_and_schema() {
        let m = build(&bare_schema(), &Profile::openmrs());
        assert_eq!(m.entities["obs"].identity, Identity::Uuid { column: "uuid".into() });
        assert_eq!(m.entities["patient"].identity, Identity::Parent { column: "patient_id".into(), parent_table: "person".into() });
        assert_eq!(m.entities["role"].identity, Identity::TextKey { column: "role".into() });
        assert!(matches!(&m.entities["user_role"].identity, Identity::Join { parts } if parts.len() == 2));
        assert_eq!(m.entities["obs"].category, "observation");
        let mut with_password = bare_schema();
        with_password.tables.get_mut("users").unwrap().columns.push(col("password", "varchar"));
        let m2 = build(&with_password, &Profile::openmrs());
        let users = &m2.entities["users"];
        assert!(users.has_column("password"), "credentials travel to readers trusted with them");
        assert_eq!(users.credential_columns, ["password"], "only the credential columns the table has");
        let mut columns: std::collections::BTreeMap<String, serde_json::Value> =
            [("password", "x"), ("username", "u")].iter().map(|(k, v)| (k.to_string(), serde_json::json!(v))).collect();
        assert!(users.without_credentials(&mut columns));
        assert_eq!(columns.keys().collect::<Vec<_>>(), ["username"], "and leave every other reader's resource");
        assert!(!m.entities["person"].without_credentials(&mut columns), "other tables have none");
        assert!(m.not_published["liquibasechangelog"].contains("excluded"));
        assert!(m.not_published["mystery"].contains("local integer id"), "{:?}", m.not_published);
        // Module table: identity from its uuid, references from its declared key.
        assert_eq!(m.entities["module_thing"].reference("patient").unwrap().target_table, "patient");
        assert!(m.entities["module_thing"].reference("patient").unwrap().declared);
    }

    #[test]
    fn undeclared_core_references_come_from_the_profile() {
        let m = build(&bare_schema(), &Profile::openmrs());
        let obs = &m.entities["obs"];
        assert_eq!(obs.reference("person_id").unwrap().target_table, "person");
        assert_eq!(obs.reference("obs_group_id").unwrap().target_table, "obs");
        assert!(!obs.reference("encounter_id").unwrap().declared);
        assert_eq!(m.entities["person"].reference("creator").unwrap().target_table, "users");
        assert_eq!(obs.local_id_column(), Some("obs_id"));
        assert_eq!(m.entities["patient"].local_id_column(), None);
    }

    #[test]
    fn patient_paths_and_location() {
        let m = build(&bare_schema(), &Profile::openmrs());
        assert_eq!(m.entities["obs"].patient_path.len(), 1);
        let ep: Vec<&str> = m.entities["encounter_provider"].patient_path.iter().map(|r| r.column.as_str()).collect();
        assert_eq!(ep, ["encounter_id", "patient_id"]);
        assert!(m.entities["users"].patient_path.is_empty(), "a user's person is not a patient");
        assert!(m.entities["location"].patient_path.is_empty());
        assert_eq!(m.entities["encounter"].location_column.as_deref(), Some("location_id"));
        assert_eq!(m.entities["location"].location_column, None);
    }

    #[test]
    fn snapshot_order_puts_referenced_tables_first() {
        let m = build(&bare_schema(), &Profile::openmrs());
        let pos = |t: &str| m.snapshot_order.iter().position(|x| x == t).unwrap();
        assert!(pos("person") < pos("users"));
        assert!(pos("person") < pos("patient"));
        assert!(pos("patient") < pos("encounter"));
        assert!(pos("encounter") < pos("obs"));
        assert!(pos("role") < pos("user_role"));
        assert_eq!(m.snapshot_order.len(), m.entities.len());
    }

    #[test]
    fn key_sql_generation() {
        let m = build(&bare_schema(), &Profile::openmrs());
        let d = Dialect::MySql;
        assert_eq!(m.key_sql(d, "obs", &RowSource::Alias("NEW")).unwrap(), "NEW.`uuid`");
        assert_eq!(
            m.key_sql(d, "patient", &RowSource::Alias("NEW")).unwrap(),
            "(SELECT `uuid` FROM `person` WHERE `person_id` = NEW.`patient_id`)"
        );
        assert_eq!(
            m.key_sql(d, "user_role", &RowSource::Alias("OLD")).unwrap(),
            "CONCAT((SELECT `uuid` FROM `users` WHERE `user_id` = OLD.`user_id`), '+', OLD.`role`)"
        );
        assert_eq!(
            m.key_sql(Dialect::Sqlite, "user_role", &RowSource::Alias("t")).unwrap(),
            "((SELECT \"uuid\" FROM \"users\" WHERE \"user_id\" = t.\"user_id\")) || '+' || (t.\"role\")"
        );
        assert_eq!(
            m.patient_sql(d, "encounter_provider", &RowSource::Alias("NEW")).unwrap(),
            "(SELECT `uuid` FROM `person` WHERE `person_id` = (SELECT `patient_id` FROM `encounter` WHERE `encounter_id` = NEW.`encounter_id`))"
        );
        assert_eq!(m.patient_sql(d, "person", &RowSource::Alias("NEW")).unwrap(), "NEW.`uuid`");
        assert_eq!(m.patient_sql(d, "location", &RowSource::Alias("NEW")), None);
        assert_eq!(
            m.location_sql(d, "obs", &RowSource::Alias("NEW")).unwrap(),
            "(SELECT `uuid` FROM `location` WHERE `location_id` = NEW.`location_id`)"
        );
    }

    #[test]
    fn join_keys_split() {
        assert_eq!(split_join_key("a+b", 2), Some(vec!["a", "b"]));
        assert_eq!(split_join_key("a+b+c", 2), Some(vec!["a", "b+c"]));
        assert_eq!(split_join_key("a", 2), None);
        assert_eq!(split_join_key("+b", 2), None);
    }
}
