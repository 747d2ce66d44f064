//! SQL text that depends on the dialect, as pure functions: the toolkit writes SQL with `?`
//! placeholders and asks here for what differs (identifier quoting, the datetime text form,
//! upserts, concatenation, time arithmetic, the shape of a trigger). The statements on the
//! toolkit's own tables (their DDL, the origin marker) are in `feedsync_db::tables`.

/// SQL flavour, for the few statements whose text differs (DDL, triggers, upserts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    MySql,
    Sqlite,
}

/// The one datetime text form used everywhere (MySQL's own, without zone).
pub fn format_datetime(y: u16, mo: u8, d: u8, h: u8, mi: u8, s: u8, us: u32) -> String {
    if us == 0 {
        format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
    } else {
        format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}")
    }
}

/// Quotes an identifier for the dialect. Table and column names come from the schema the
/// database reported, never from a request.
pub fn quote_ident(dialect: Dialect, name: &str) -> String {
    match dialect {
        Dialect::MySql => format!("`{}`", name.replace('`', "``")),
        Dialect::Sqlite => format!("\"{}\"", name.replace('"', "\"\"")),
    }
}

/// The verb of an insert that skips rows whose key is already there.
pub fn insert_ignore(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::MySql => "INSERT IGNORE",
        Dialect::Sqlite => "INSERT OR IGNORE",
    }
}

/// The suffix of a `SELECT` that locks the rows it reads until the transaction ends. Empty on
/// SQLite, where the writing transaction already holds the whole database.
pub fn for_update(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::MySql => " FOR UPDATE",
        Dialect::Sqlite => "",
    }
}

/// The current time, UTC, in the datetime text form, as SQL. UTC on MySQL whatever the
/// session's time zone (the pool also sets `+00:00`), so stamps compare across sessions.
pub fn now_sql(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::MySql => "UTC_TIMESTAMP(3)",
        Dialect::Sqlite => "strftime('%Y-%m-%d %H:%M:%f', 'now')",
    }
}

/// The current time plus `ms` milliseconds, UTC, in the datetime text form, as SQL.
pub fn now_plus_ms_sql(dialect: Dialect, ms: i64) -> String {
    match dialect {
        Dialect::MySql => format!("UTC_TIMESTAMP(3) + INTERVAL {ms} * 1000 MICROSECOND"),
        Dialect::Sqlite => format!("strftime('%Y-%m-%d %H:%M:%f', 'now', '{:+.3} seconds')", ms as f64 / 1000.0),
    }
}

/// The tail of an `INSERT ... VALUES (...)` that turns it into an upsert: when a row with the
/// same `key` (the table's primary or a unique key) exists, its `update` columns take the
/// inserted values instead.
pub fn upsert_suffix(dialect: Dialect, key: &[&str], update: &[&str]) -> String {
    match dialect {
        Dialect::MySql => {
            let sets: Vec<String> = update.iter().map(|c| format!("{c} = VALUES({c})")).collect();
            format!(" ON DUPLICATE KEY UPDATE {}", sets.join(", "))
        }
        Dialect::Sqlite => {
            let sets: Vec<String> = update.iter().map(|c| format!("{c} = excluded.{c}")).collect();
            format!(" ON CONFLICT({}) DO UPDATE SET {}", key.join(", "), sets.join(", "))
        }
    }
}

/// SQL expressions concatenated as text with `separator` between them; NULL if any is NULL
/// on both backends.
pub fn concat_separated(dialect: Dialect, pieces: &[String], separator: char) -> String {
    let sep = format!("'{separator}'");
    match dialect {
        Dialect::MySql => {
            let mut args = Vec::new();
            for (i, p) in pieces.iter().enumerate() {
                if i > 0 {
                    args.push(sep.clone());
                }
                args.push(p.clone());
            }
            format!("CONCAT({})", args.join(", "))
        }
        Dialect::Sqlite => {
            let joined: Vec<String> = pieces.iter().map(|p| format!("({p})")).collect();
            joined.join(&format!(" || {sep} || "))
        }
    }
}

/// Column references joined with commas as text (a row's key as the journal keeps it).
/// MySQL's `CONCAT_WS` skips NULL columns, SQLite's `||` gives NULL: key columns are never
/// NULL, so both give the same text.
pub fn comma_joined(dialect: Dialect, columns: &[String]) -> String {
    match dialect {
        Dialect::MySql => format!("CONCAT_WS(',', {})", columns.join(", ")),
        Dialect::Sqlite => columns.join(" || ',' || "),
    }
}

/// A row trigger running `statement` after each `event` (`INSERT`, `UPDATE`, `DELETE`) on
/// `table` (already quoted). The text is fingerprinted at install, so it must not change.
pub fn create_trigger_sql(dialect: Dialect, name: &str, event: &str, table: &str, statement: &str) -> String {
    match dialect {
        Dialect::MySql => format!("CREATE TRIGGER `{name}` AFTER {event} ON {table} FOR EACH ROW {statement}"),
        Dialect::Sqlite => format!("CREATE TRIGGER \"{name}\" AFTER {event} ON {table} FOR EACH ROW BEGIN {statement}; END"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_dialect_gets_its_own_text() {
        assert_eq!(insert_ignore(Dialect::MySql), "INSERT IGNORE");
        assert_eq!(insert_ignore(Dialect::Sqlite), "INSERT OR IGNORE");
        assert_eq!(for_update(Dialect::MySql), " FOR UPDATE");
        assert_eq!(for_update(Dialect::Sqlite), "");
        assert_eq!(quote_ident(Dialect::MySql, "a`b"), "`a``b`");
        assert_eq!(quote_ident(Dialect::Sqlite, "a\"b"), "\"a\"\"b\"");
        assert_eq!(format_datetime(2026, 1, 2, 3, 4, 5, 0), "2026-01-02 03:04:05");
        assert_eq!(format_datetime(2026, 1, 2, 3, 4, 5, 7), "2026-01-02 03:04:05.000007");
    }

    #[test]
    fn upserts_concatenation_and_triggers() {
        assert_eq!(
            upsert_suffix(Dialect::MySql, &["a", "b"], &["c", "d"]),
            " ON DUPLICATE KEY UPDATE c = VALUES(c), d = VALUES(d)"
        );
        assert_eq!(upsert_suffix(Dialect::Sqlite, &["a", "b"], &["c", "d"]), " ON CONFLICT(a, b) DO UPDATE SET c = excluded.c, d = excluded.d");
        let pieces = ["x".to_owned(), "y".to_owned()];
        assert_eq!(concat_separated(Dialect::MySql, &pieces, '|'), "CONCAT(x, '|', y)");
        assert_eq!(concat_separated(Dialect::Sqlite, &pieces, '|'), "(x) || '|' || (y)");
        assert_eq!(comma_joined(Dialect::MySql, &pieces), "CONCAT_WS(',', x, y)");
        assert_eq!(comma_joined(Dialect::Sqlite, &pieces), "x || ',' || y");
        assert_eq!(create_trigger_sql(Dialect::MySql, "t_ai", "INSERT", "`t`", "S"), "CREATE TRIGGER `t_ai` AFTER INSERT ON `t` FOR EACH ROW S");
        assert_eq!(
            create_trigger_sql(Dialect::Sqlite, "t_ai", "INSERT", "\"t\"", "S"),
            "CREATE TRIGGER \"t_ai\" AFTER INSERT ON \"t\" FOR EACH ROW BEGIN S; END"
        );
        assert_eq!(now_plus_ms_sql(Dialect::MySql, 5000), "UTC_TIMESTAMP(3) + INTERVAL 5000 * 1000 MICROSECOND");
        assert_eq!(now_plus_ms_sql(Dialect::Sqlite, 5000), "strftime('%Y-%m-%d %H:%M:%f', 'now', '+5.000 seconds')");
        assert_eq!(now_plus_ms_sql(Dialect::Sqlite, -3_600_000), "strftime('%Y-%m-%d %H:%M:%f', 'now', '-3600.000 seconds')");
        assert_eq!(now_plus_ms_sql(Dialect::MySql, -1), "UTC_TIMESTAMP(3) + INTERVAL -1 * 1000 MICROSECOND");
    }
}
