//! The OpenMRS profile: what the toolkit knows about OpenMRS tables beyond what a schema says
//! (categories, identities of tables without a uuid, core references, ids inside values). It is
//! data in `shared/core/profiles/openmrs.toml`, compiled in as the default and replaceable by a file.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The profile shipped with the toolkit.
pub const OPENMRS_PROFILE_TOML: &str = include_str!("../profiles/openmrs.toml");

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    #[serde(default)]
    pub categories: BTreeMap<String, String>,
    #[serde(default)]
    pub excluded: Excluded,
    #[serde(default)]
    pub identity: BTreeMap<String, IdentityRule>,
    #[serde(default)]
    pub user_columns: UserColumns,
    #[serde(default)]
    pub value_references: Vec<ValueReferenceRule>,
    #[serde(default)]
    pub class_tables: BTreeMap<String, String>,
    #[serde(default)]
    pub patient_data: PatientData,
    /// Columns never published, per table.
    #[serde(default)]
    pub omitted_columns: BTreeMap<String, Vec<String>>,
    /// Credential columns, per table: published only to readers trusted with credentials
    /// (`replica` tokens, children, this machine), never in a `feeds` answer.
    #[serde(default)]
    pub credential_columns: BTreeMap<String, Vec<String>>,
    /// `"table.column" = "referenced table"`.
    #[serde(default)]
    pub references: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Excluded {
    #[serde(default)]
    pub prefixes: Vec<String>,
    #[serde(default)]
    pub tables: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum IdentityRule {
    /// Subclass row sharing its key column with the referenced parent row.
    Parent(String),
    /// The identities of the joined rows (or text values), in this order.
    Join(Vec<String>),
    /// A text primary key that is the same on every server.
    TextKey(String),
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UserColumns {
    #[serde(default)]
    pub target: String,
    #[serde(default)]
    pub columns: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ValueReferenceRule {
    pub table: String,
    pub value_column: String,
    pub type_column: String,
    pub type_table: String,
    pub type_format_column: String,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PatientData {
    #[serde(default)]
    pub person_tables: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read profile {path}: {message}")]
    Read { path: String, message: String },
    #[error("profile {path} is not valid: {message}. Compare it with shared/core/profiles/openmrs.toml")]
    Invalid { path: String, message: String },
}

impl Profile {
    pub fn openmrs() -> Profile {
        Profile::parse(OPENMRS_PROFILE_TOML, "built-in openmrs profile").expect("the built-in profile parses")
    }

    pub fn parse(text: &str, path: &str) -> Result<Profile, ProfileError> {
        let profile: Profile =
            toml::from_str(text).map_err(|e| ProfileError::Invalid { path: path.into(), message: e.to_string() })?;
        for key in profile.references.keys() {
            if key.split_once('.').is_none() {
                return Err(ProfileError::Invalid {
                    path: path.into(),
                    message: format!("reference {key:?} must be written \"table.column\""),
                });
            }
        }
        Ok(profile)
    }

    pub fn load(path: &std::path::Path) -> Result<Profile, ProfileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ProfileError::Read { path: path.display().to_string(), message: e.to_string() })?;
        Profile::parse(&text, &path.display().to_string())
    }

    pub fn is_excluded(&self, table: &str) -> bool {
        self.excluded.tables.iter().any(|t| t.eq_ignore_ascii_case(table))
            || self.excluded.prefixes.iter().any(|p| table.to_ascii_lowercase().starts_with(&p.to_ascii_lowercase()))
    }

    /// The profile's reference target for `table.column`, if it names one.
    pub fn reference(&self, table: &str, column: &str) -> Option<&str> {
        if let Some(target) = self.references.get(&format!("{table}.{column}")) {
            return Some(target);
        }
        if self.user_columns.columns.iter().any(|c| c == column) && !self.user_columns.target.is_empty() {
            return Some(&self.user_columns.target);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_profile_parses() {
        let p = Profile::openmrs();
        assert_eq!(p.categories.get("obs").map(String::as_str), Some("observation"));
        assert_eq!(p.identity.get("patient"), Some(&IdentityRule::Parent("patient_id".into())));
        assert_eq!(p.reference("obs", "previous_version"), Some("obs"));
        assert_eq!(p.reference("concept_set", "concept_id"), Some("concept"));
        assert_eq!(p.reference("anything", "creator"), Some("users"));
        assert!(p.is_excluded("liquibasechangelog"));
        assert!(p.is_excluded("feedsync_event"));
        assert!(!p.is_excluded("obs"));
    }

    #[test]
    fn bad_profile_says_why() {
        let err = Profile::parse("[references]\n\"nodot\" = \"x\"\n", "p.toml").unwrap_err().to_string();
        assert!(err.contains("table.column"), "{err}");
        let err = Profile::parse("[identity]\nx = { nope = \"a\" }\n", "p.toml").unwrap_err().to_string();
        assert!(err.contains("p.toml"), "{err}");
    }
}
