//! SQL text that depends on the dialect, as pure functions: the toolkit writes SQL with `?`
//! placeholders and asks here for what differs (identifier quoting, the datetime text form).

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
}
