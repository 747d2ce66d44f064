//! `cargo run -p xtask -- COMMAND`: chores for the people who work on the toolkit.
//!
//! - `sqlite-schema DUMP [OUT]`: converts a `mysqldump` of an OpenMRS database into the SQL
//!   SQLite runs (to stdout, or to OUT). The shipped `shared/sim/schema/openmrs-2.5.sqlite.sql`
//!   is this output for the OpenMRS 2.5 dump; `FEEDSYNC_REGENERATE=1 cargo test -p xtask
//!   mysql_dump` rewrites it with its header, and the same test without the variable keeps it
//!   in step.

mod mysql_dump;

use anyhow::{Context, bail};

fn main() {
    if let Err(error) = run(std::env::args().skip(1).collect()) {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

fn run(args: Vec<String>) -> anyhow::Result<()> {
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["sqlite-schema", dump, rest @ ..] if rest.len() <= 1 => {
            let text = std::fs::read_to_string(dump).with_context(|| format!("cannot read {dump}"))?;
            let options = mysql_dump::ConvertOptions {
                data_tables_excluded: mysql_dump::LIQUIBASE_TABLES.iter().map(|t| t.to_string()).collect(),
                header_lines: vec![format!("Source: {dump}")],
            };
            let sql = mysql_dump::convert_to_sqlite(&text, &options).map_err(|e| anyhow::anyhow!("{dump}: {e}"))?;
            match rest.first() {
                Some(out) => std::fs::write(out, sql).with_context(|| format!("cannot write {out}"))?,
                None => print!("{sql}"),
            }
            Ok(())
        }
        _ => bail!("usage: cargo run -p xtask -- sqlite-schema DUMP [OUT]"),
    }
}
