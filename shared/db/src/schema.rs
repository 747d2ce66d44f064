//! The schema as the live database reports it: tables, columns, primary keys and declared
//! foreign keys, read from `information_schema` on MySQL/MariaDB and from pragmas on SQLite.
//! This is the only place that asks a database about its structure (also: which of the
//! toolkit's own tables and triggers exist, and the name of the schema a session is in).

use std::collections::BTreeMap;

use crate::{DbResult, Dialect, Session};

pub use feedsync_core::schema::{Column, ForeignKey, Schema, Table, base_type};

/// Reads the schema of the database the session is connected to.
pub async fn read_schema(session: &mut Session, schema_name: &str) -> DbResult<Schema> {
    match session.dialect() {
        Dialect::MySql => read_mysql(session, schema_name).await,
        Dialect::Sqlite => read_sqlite(session).await,
    }
}

/// The name of the schema (MySQL database) the session is in, as [`read_schema`] wants it;
/// empty on SQLite, which reads the one database the session has open.
pub async fn current_schema_name(session: &mut Session) -> DbResult<String> {
    match session.dialect() {
        Dialect::MySql => {
            let rows = session.query("SELECT DATABASE() AS name", &[]).await?;
            Ok(rows.first().and_then(|r| r.text("name")).unwrap_or_default())
        }
        Dialect::Sqlite => Ok(String::new()),
    }
}

/// The kinds of object the toolkit adds to a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Table,
    Trigger,
}

/// Every object of a kind in the session's database whose name carries the toolkit's
/// reserved prefix (`feedsync_`).
pub async fn list_prefixed(session: &mut Session, kind: ObjectKind) -> DbResult<Vec<String>> {
    let sql = match (session.dialect(), kind) {
        (Dialect::MySql, ObjectKind::Table) => mysql_prefixed("TABLE_NAME", "information_schema.TABLES WHERE TABLE_SCHEMA"),
        (Dialect::MySql, ObjectKind::Trigger) => mysql_prefixed("TRIGGER_NAME", "information_schema.TRIGGERS WHERE TRIGGER_SCHEMA"),
        (Dialect::Sqlite, ObjectKind::Table) => sqlite_prefixed("table"),
        (Dialect::Sqlite, ObjectKind::Trigger) => sqlite_prefixed("trigger"),
    };
    Ok(session.query(&sql, &[]).await?.iter().filter_map(|r| r.text("name")).collect())
}

fn mysql_prefixed(column: &str, from: &str) -> String {
    // `_` is a LIKE wildcard: escaped, so `feedsyncX...` is not taken for ours.
    format!("SELECT {column} AS name FROM {from} = DATABASE() AND {column} LIKE 'feedsync\\_%'")
}

fn sqlite_prefixed(kind: &str) -> String {
    format!("SELECT name FROM sqlite_master WHERE type = '{kind}' AND name LIKE 'feedsync\\_%' ESCAPE '\\'")
}

async fn read_mysql(session: &mut Session, schema_name: &str) -> DbResult<Schema> {
    let mut schema = Schema::default();
    let rows = session
        .query(
            "SELECT c.TABLE_NAME AS table_name, c.COLUMN_NAME AS column_name, c.DATA_TYPE AS data_type, \
             c.IS_NULLABLE AS is_nullable, c.COLUMN_DEFAULT IS NOT NULL AS has_default, \
             c.EXTRA LIKE '%auto_increment%' AS generated \
             FROM information_schema.COLUMNS c JOIN information_schema.TABLES t \
               ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME \
             WHERE c.TABLE_SCHEMA = ? AND t.TABLE_TYPE = 'BASE TABLE' \
             ORDER BY c.TABLE_NAME, c.ORDINAL_POSITION",
            &[schema_name.into()],
        )
        .await?;
    for row in rows {
        let table = row.text("table_name").unwrap_or_default();
        let entry = schema.tables.entry(table.clone()).or_insert_with(|| Table { name: table, ..Table::default() });
        entry.columns.push(Column {
            name: row.text("column_name").unwrap_or_default(),
            data_type: base_type(&row.text("data_type").unwrap_or_default()),
            nullable: row.text("is_nullable").as_deref() == Some("YES"),
            has_default: row.i64("has_default").unwrap_or(0) != 0,
            generated: row.i64("generated").unwrap_or(0) != 0,
        });
    }
    let keys = session
        .query(
            "SELECT TABLE_NAME AS table_name, COLUMN_NAME AS column_name, CONSTRAINT_NAME AS constraint_name, \
             REFERENCED_TABLE_NAME AS referenced_table, REFERENCED_COLUMN_NAME AS referenced_column \
             FROM information_schema.KEY_COLUMN_USAGE \
             WHERE TABLE_SCHEMA = ? AND (CONSTRAINT_NAME = 'PRIMARY' OR REFERENCED_TABLE_NAME IS NOT NULL) \
             ORDER BY TABLE_NAME, CONSTRAINT_NAME, ORDINAL_POSITION",
            &[schema_name.into()],
        )
        .await?;
    for row in keys {
        let Some(table) = schema.tables.get_mut(&row.text("table_name").unwrap_or_default()) else { continue };
        let column = row.text("column_name").unwrap_or_default();
        match row.text("referenced_table") {
            None => table.primary_key.push(column),
            Some(referenced_table) => table.foreign_keys.push(ForeignKey {
                column,
                referenced_table,
                referenced_column: row.text("referenced_column").unwrap_or_default(),
            }),
        }
    }
    Ok(schema)
}

async fn read_sqlite(session: &mut Session) -> DbResult<Schema> {
    let mut schema = Schema::default();
    let names = session
        .query("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name", &[])
        .await?;
    for name_row in names {
        let name = name_row.text("name").unwrap_or_default();
        let mut table = Table { name: name.clone(), ..Table::default() };
        let mut pk: Vec<(i64, String)> = Vec::new();
        let mut declared_key_type = String::new();
        for row in session.query("SELECT name, type, \"notnull\", pk, dflt_value IS NOT NULL AS has_default FROM pragma_table_info(?)", &[name.clone().into()]).await? {
            let column = row.text("name").unwrap_or_default();
            let key_position = row.i64("pk").unwrap_or(0);
            if key_position > 0 {
                pk.push((key_position, column.clone()));
                declared_key_type = row.text("type").unwrap_or_default();
            }
            table.columns.push(Column {
                name: column,
                data_type: base_type(&row.text("type").unwrap_or_default()),
                nullable: row.i64("notnull") == Some(0) && key_position == 0,
                has_default: row.i64("has_default").unwrap_or(0) != 0,
                generated: false,
            });
        }
        pk.sort();
        table.primary_key = pk.into_iter().map(|(_, c)| c).collect();
        // A sole key column declared exactly `INTEGER` is the rowid: SQLite fills it.
        if let [key] = table.primary_key.as_slice()
            && declared_key_type.trim().eq_ignore_ascii_case("integer")
        {
            table.columns.iter_mut().filter(|c| c.name == *key).for_each(|c| c.generated = true);
        }
        for row in session.query("SELECT \"table\", \"from\", \"to\" FROM pragma_foreign_key_list(?)", &[name.clone().into()]).await? {
            let referenced_table = row.text("table").unwrap_or_default();
            table.foreign_keys.push(ForeignKey {
                column: row.text("from").unwrap_or_default(),
                // A missing "to" means the referenced table's primary key; resolved below.
                referenced_column: row.text("to").unwrap_or_default(),
                referenced_table,
            });
        }
        schema.tables.insert(name, table);
    }
    let primary_keys: BTreeMap<String, Vec<String>> =
        schema.tables.iter().map(|(n, t)| (n.clone(), t.primary_key.clone())).collect();
    for table in schema.tables.values_mut() {
        for fk in &mut table.foreign_keys {
            if fk.referenced_column.is_empty()
                && let Some(pk) = primary_keys.get(&fk.referenced_table).and_then(|k| k.first())
            {
                fk.referenced_column = pk.clone();
            }
        }
    }
    Ok(schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_types() {
        assert_eq!(base_type("int(11)"), "int");
        assert_eq!(base_type("VARCHAR(255)"), "varchar");
        assert_eq!(base_type("bigint unsigned"), "bigint");
        assert_eq!(base_type("datetime"), "datetime");
        assert_eq!(base_type(""), "");
    }
}
