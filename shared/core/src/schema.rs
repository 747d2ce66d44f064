//! The schema as a database reports it: tables, columns, primary keys and declared foreign keys.
//! Plain data; `crate::schema::read_schema` is the only code that asks a database for it.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schema {
    pub tables: BTreeMap<String, Table>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    pub name: String,
    pub columns: Vec<Column>,
    /// Primary key columns in key order; empty when the table has none.
    pub primary_key: Vec<String>,
    pub foreign_keys: Vec<ForeignKey>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Column {
    pub name: String,
    /// Lower-case base type without length, e.g. `int`, `varchar`, `datetime`.
    pub data_type: String,
    pub nullable: bool,
    /// Declared with a default, so an insert may leave it out.
    pub has_default: bool,
    /// Filled by the database on insert: MySQL `AUTO_INCREMENT`, SQLite's rowid alias (a sole
    /// `INTEGER PRIMARY KEY`).
    pub generated: bool,
}

/// A single-column declared foreign key (OpenMRS declares no composite ones).
#[derive(Debug, Clone, PartialEq)]
pub struct ForeignKey {
    pub column: String,
    pub referenced_table: String,
    pub referenced_column: String,
}

impl Table {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name.eq_ignore_ascii_case(name))
    }
    pub fn has_column(&self, name: &str) -> bool {
        self.column(name).is_some()
    }
    /// The primary-key column the database fills on insert, if any.
    pub fn generated_key(&self) -> Option<&str> {
        self.columns.iter().find(|c| c.generated && self.primary_key.iter().any(|k| k.eq_ignore_ascii_case(&c.name))).map(|c| c.name.as_str())
    }
}

impl Column {
    /// An insert must give it a value: NOT NULL, no default, not filled by the database.
    pub fn required_on_insert(&self) -> bool {
        !self.nullable && !self.has_default && !self.generated
    }
    pub fn is_integer(&self) -> bool {
        matches!(self.data_type.as_str(), "int" | "integer" | "bigint" | "smallint" | "mediumint" | "tinyint")
    }
}

/// Normalizes a declared type (`int(11)`, `VARCHAR(255)`, `bigint unsigned`) to its base name.
pub fn base_type(declared: &str) -> String {
    let lower = declared.trim().to_ascii_lowercase();
    let end = lower.find(|c: char| c == '(' || c == ' ').unwrap_or(lower.len());
    lower[..end].to_owned()
}

