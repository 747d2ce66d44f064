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


/// The current time, UTC, in the datetime text form, as SQL. UTC on MySQL whatever the
/// session's time zone (the pool also sets `+00:00`), so stamps compare across sessions.
pub fn now_sql(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::MySql => "UTC_TIMESTAMP(3)",
        Dialect::Sqlite => "strftime('%Y-%m-%d %H:%M:%f', 'now')",
    }
}
