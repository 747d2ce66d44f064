//! Two OpenMRS databases compared by identity, not by local ids: every row of every table both
//! publish is rendered as a resource (references as identities) on each side, and rows are
//! matched by identity key. The oracle of the subscriber's acceptance tests ("B holds exactly
//! A's data") and an operator's reconciliation report.
//!
//! Memory is bounded per table, not per database: tables are compared one at a time; side A's
//! rows are reduced to (key, 128-bit digest of the columns both sides have) and side B is
//! streamed past them page by page. A table with more than
//! [`CompareOptions::rows_in_memory_max`] rows is compared in passes over the first hex digits
//! of its keys (16 or 256 buckets, plus one for keys that do not start with hex digits), so a
//! pass holds about `rows / buckets` digests. Uuid keys spread evenly over the buckets; text
//! keys (roles, privileges, global properties) may all land in the last one, but such tables
//! are small. Only the first [`CompareOptions::differences_shown_max`] differences per table
//! are kept in full (A's row is read again for them); all are counted.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use sha2::{Digest, Sha256};

use crate::capture::PREFIX;
use feedsync_db::{DbResult, Session, Value, quote_ident};
use feedsync_core::model::{Entity, Identity, Model, RowSource};
use crate::lookup::{LookupCache, find_row, render};
use feedsync_wire::resource::Resource;

#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// Differences kept in full per table (all are counted).
    pub differences_shown_max: usize,
    /// Rows read per query.
    pub page_rows: usize,
    /// Rows of one table whose digests one pass holds (about 100 bytes each).
    pub rows_in_memory_max: usize,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions { differences_shown_max: 10, page_rows: 500, rows_in_memory_max: 200_000 }
    }
}

/// Largest number of hex digits key buckets are made of (256 buckets).
const BUCKET_DIGITS_MAX: u32 = 2;
/// Name of the computed identity key in the rows read; the prefix keeps it clear of OpenMRS's.
const KEY_ALIAS: &str = "feedsync_compare_key";

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Comparison {
    /// Tables both publish, in name order.
    pub tables: Vec<TableComparison>,
    pub tables_only_in_a: Vec<String>,
    pub tables_only_in_b: Vec<String>,
    /// Tables both publish but that cannot be matched row by row, with the reason.
    pub tables_skipped: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct TableComparison {
    pub table: String,
    pub rows_a: u64,
    pub rows_b: u64,
    pub only_in_a: u64,
    pub only_in_b: u64,
    /// Rows in both whose values differ in a column both sides have.
    pub differing: u64,
    /// Rows of A sharing their identity with an earlier row of A: B can hold only one of
    /// them. (B's extra copies show as rows only in B.)
    pub duplicate_keys_a: u64,
    /// Rows whose identity cannot be computed (a join row whose joined row is gone): they
    /// cannot be matched, so they are counted and not compared.
    pub without_identity_a: u64,
    pub without_identity_b: u64,
    /// Published columns only one side has (a schema difference, not a data difference).
    pub columns_only_in_a: Vec<String>,
    pub columns_only_in_b: Vec<String>,
    /// The first differences, by key.
    pub examples: Vec<Difference>,
    /// Passes over key buckets this table took (1 unless it was large).
    pub passes: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Difference {
    OnlyInA { key: String },
    OnlyInB { key: String },
    Values { key: String, columns: Vec<ColumnDifference> },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ColumnDifference {
    pub column: String,
    pub a: serde_json::Value,
    pub b: serde_json::Value,
}

impl TableComparison {
    pub fn differences(&self) -> u64 {
        self.only_in_a + self.only_in_b + self.differing + self.duplicate_keys_a
    }
}

impl Comparison {
    /// Every row of every table both publish is in both, with equal values in the columns both
    /// have. Columns and tables only one side has do not count: they are schema differences.
    pub fn is_equal(&self) -> bool {
        self.tables.iter().all(|t| t.differences() == 0)
    }

    pub fn differences(&self) -> u64 {
        self.tables.iter().map(TableComparison::differences).sum()
    }

    pub fn table(&self, name: &str) -> Option<&TableComparison> {
        self.tables.iter().find(|t| t.table == name)
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows = |side: fn(&TableComparison) -> u64| self.tables.iter().map(side).sum::<u64>();
        let differing_tables = self.tables.iter().filter(|t| t.differences() > 0).count();
        writeln!(
            f,
            "{} by identity: {} tables compared ({} rows in A, {} in B), {differing_tables} differ: \
             {} rows only in A, {} only in B, {} with different values",
            if self.is_equal() { "equal" } else { "different" },
            self.tables.len(),
            rows(|t| t.rows_a),
            rows(|t| t.rows_b),
            rows(|t| t.only_in_a),
            rows(|t| t.only_in_b),
            rows(|t| t.differing),
        )?;
        for t in &self.tables {
            let schema_only = !t.columns_only_in_a.is_empty() || !t.columns_only_in_b.is_empty();
            let unmatched = t.without_identity_a + t.without_identity_b > 0;
            if t.differences() == 0 && !schema_only && !unmatched {
                continue;
            }
            write!(f, "  {}: ", t.table)?;
            if t.differences() > 0 {
                write!(f, "{} only in A, {} only in B, {} differ", t.only_in_a, t.only_in_b, t.differing)?;
                if t.duplicate_keys_a > 0 {
                    write!(f, ", {} duplicate identities in A", t.duplicate_keys_a)?;
                }
            } else {
                write!(f, "rows equal")?;
            }
            writeln!(f, " ({} rows in A, {} in B)", t.rows_a, t.rows_b)?;
            if !t.columns_only_in_a.is_empty() {
                writeln!(f, "    columns only in A (not compared): {}", t.columns_only_in_a.join(", "))?;
            }
            if !t.columns_only_in_b.is_empty() {
                writeln!(f, "    columns only in B (not compared): {}", t.columns_only_in_b.join(", "))?;
            }
            if unmatched {
                writeln!(f, "    rows without identity: {} in A, {} in B", t.without_identity_a, t.without_identity_b)?;
            }
            for example in &t.examples {
                match example {
                    Difference::OnlyInA { key } => writeln!(f, "    only in A: {key}")?,
                    Difference::OnlyInB { key } => writeln!(f, "    only in B: {key}")?,
                    Difference::Values { key, columns } => {
                        let shown: Vec<String> = columns.iter().map(|c| format!("{} A={} B={}", c.column, c.a, c.b)).collect();
                        writeln!(f, "    differs {key}: {}", shown.join("; "))?;
                    }
                }
            }
            let hidden = t.differences().saturating_sub(t.examples.len() as u64);
            if hidden > 0 {
                writeln!(f, "    ... and {hidden} more")?;
            }
        }
        for (label, tables) in [("tables only in A", &self.tables_only_in_a), ("tables only in B", &self.tables_only_in_b)] {
            if !tables.is_empty() {
                writeln!(f, "  {label} (not compared): {}", tables.join(", "))?;
            }
        }
        for (table, reason) in &self.tables_skipped {
            writeln!(f, "  {table} not compared: {reason}")?;
        }
        Ok(())
    }
}

/// Compares every table both models publish (the toolkit's own tables aside).
pub async fn compare(
    a: &mut Session,
    model_a: &Model,
    b: &mut Session,
    model_b: &Model,
    options: &CompareOptions,
) -> DbResult<Comparison> {
    let mut comparison = Comparison::default();
    let ours = |table: &str| table.to_ascii_lowercase().starts_with(PREFIX);
    comparison.tables_only_in_b =
        model_b.entities.keys().filter(|t| !ours(t) && model_a.entity(t).is_none()).cloned().collect();
    for (table, entity_a) in model_a.entities.iter().filter(|(t, _)| !ours(t)) {
        let Some(entity_b) = model_b.entity(table) else {
            comparison.tables_only_in_a.push(table.clone());
            continue;
        };
        if !same_identity_kind(&entity_a.identity, &entity_b.identity) {
            let reason = format!(
                "identified differently (A: {}, B: {}), so keys cannot match",
                crate::capture::describe_identity(&entity_a.identity),
                crate::capture::describe_identity(&entity_b.identity)
            );
            comparison.tables_skipped.push((table.clone(), reason));
            continue;
        }
        comparison.tables.push(compare_table(a, model_a, b, model_b, table, options).await?);
    }
    Ok(comparison)
}

/// The published columns that carry data across servers (the local id never does).
fn data_columns(entity: &Entity) -> BTreeSet<String> {
    let local_id = entity.local_id_column();
    entity.columns.iter().filter(|c| Some(c.name.as_str()) != local_id).map(|c| c.name.clone()).collect()
}

async fn count_rows(session: &mut Session, table: &str) -> DbResult<u64> {
    let sql = format!("SELECT COUNT(*) AS n FROM {}", quote_ident(session.dialect(), table));
    Ok(session.query(&sql, &[]).await?.first().and_then(|r| r.i64("n")).unwrap_or(0).max(0) as u64)
}

async fn compare_table(
    a: &mut Session,
    model_a: &Model,
    b: &mut Session,
    model_b: &Model,
    table: &str,
    options: &CompareOptions,
) -> DbResult<TableComparison> {
    let (entity_a, entity_b) = (&model_a.entities[table], &model_b.entities[table]);
    let (columns_a, columns_b) = (data_columns(entity_a), data_columns(entity_b));
    let common: BTreeSet<String> = columns_a.intersection(&columns_b).cloned().collect();
    let mut result = TableComparison {
        table: table.to_owned(),
        rows_a: count_rows(a, table).await?,
        rows_b: count_rows(b, table).await?,
        columns_only_in_a: columns_a.difference(&columns_b).cloned().collect(),
        columns_only_in_b: columns_b.difference(&columns_a).cloned().collect(),
        ..TableComparison::default()
    };
    let buckets = key_buckets(bucket_digits(result.rows_a, options.rows_in_memory_max));
    result.passes = buckets.len();
    let (mut cache_a, mut cache_b) = (LookupCache::default(), LookupCache::default());
    for bucket in &buckets {
        let mut digests: HashMap<String, [u8; 16]> = HashMap::new();
        let mut pages = ResourcePages::new(model_a, table, options.page_rows).expect("table published in A").within(bucket);
        while let Some(page) = pages.next_page(a, &mut cache_a).await? {
            for resource in page {
                if digests.insert(resource.key.clone(), digest(&resource, &common)).is_some() {
                    result.duplicate_keys_a += 1;
                }
            }
        }
        result.without_identity_a += pages.rows_without_identity;
        let mut pages = ResourcePages::new(model_b, table, options.page_rows).expect("table published in B").within(bucket);
        while let Some(page) = pages.next_page(b, &mut cache_b).await? {
            for resource_b in page {
                match digests.remove(&resource_b.key) {
                    None => {
                        result.only_in_b += 1;
                        if result.examples.len() < options.differences_shown_max {
                            result.examples.push(Difference::OnlyInB { key: resource_b.key });
                        }
                    }
                    Some(seen) if seen == digest(&resource_b, &common) => {}
                    Some(_) => {
                        result.differing += 1;
                        if result.examples.len() < options.differences_shown_max {
                            let columns = match find_row(a, model_a, table, &resource_b.key).await? {
                                Some(row) => {
                                    let resource_a = render(a, model_a, entity_a, &resource_b.key, &row, &mut cache_a).await?;
                                    column_differences(&resource_a, &resource_b, &common)
                                }
                                // Deleted from A while comparing: say so rather than guess.
                                None => Vec::new(),
                            };
                            result.examples.push(Difference::Values { key: resource_b.key, columns });
                        }
                    }
                }
            }
        }
        result.without_identity_b += pages.rows_without_identity;
        let mut left: Vec<String> = digests.into_keys().collect();
        left.sort();
        result.only_in_a += left.len() as u64;
        for key in left {
            if result.examples.len() >= options.differences_shown_max {
                break;
            }
            result.examples.push(Difference::OnlyInA { key });
        }
    }
    result.examples.sort_by(|x, y| example_key(x).cmp(example_key(y)));
    Ok(result)
}

fn example_key(difference: &Difference) -> &str {
    match difference {
        Difference::OnlyInA { key } | Difference::OnlyInB { key } | Difference::Values { key, .. } => key,
    }
}

/// How many leading hex digits split a table of `rows` rows into passes of at most
/// `rows_in_memory_max` (0: one pass over everything).
pub fn bucket_digits(rows: u64, rows_in_memory_max: usize) -> u32 {
    let max = rows_in_memory_max.max(1) as u64;
    (0..=BUCKET_DIGITS_MAX).find(|d| rows.div_ceil(16u64.pow(*d)) <= max).unwrap_or(BUCKET_DIGITS_MAX)
}

/// One pass's selection of keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyBucket {
    All,
    /// Keys whose first digits, lower-cased, are these hex digits.
    Prefix(String),
    /// Keys whose first `digits` characters are not all hex digits (including shorter keys).
    Rest { digits: u32 },
}

/// The buckets that together hold every key exactly once.
pub fn key_buckets(digits: u32) -> Vec<KeyBucket> {
    if digits == 0 {
        return vec![KeyBucket::All];
    }
    let width = digits as usize;
    let mut buckets: Vec<KeyBucket> =
        (0..16u32.pow(digits)).map(|n| KeyBucket::Prefix(format!("{n:0width$x}"))).collect();
    buckets.push(KeyBucket::Rest { digits });
    buckets
}

const HEX_DIGITS_SQL: &str = "('0','1','2','3','4','5','6','7','8','9','a','b','c','d','e','f')";

/// The SQL condition selecting a bucket's rows, over the key expression `key`.
fn bucket_condition(bucket: &KeyBucket, key: &str) -> Option<String> {
    match bucket {
        KeyBucket::All => None,
        // Prefixes are hex digits generated above, never input, so they are inlined.
        KeyBucket::Prefix(prefix) => Some(format!("LOWER(SUBSTR({key}, 1, {})) = '{prefix}'", prefix.len())),
        KeyBucket::Rest { digits } => {
            let any_not_hex: Vec<String> =
                (1..=*digits).map(|i| format!("LOWER(SUBSTR({key}, {i}, 1)) NOT IN {HEX_DIGITS_SQL}")).collect();
            Some(format!("({key}) IS NOT NULL AND ({})", any_not_hex.join(" OR ")))
        }
    }
}

/// Normalizes a column's JSON for comparison: an integral float equals the integer (a double
/// column holding 2 is `2.0` on one driver and `2` on another).
fn normalize(json: &serde_json::Value) -> serde_json::Value {
    match json.as_f64() {
        Some(f) if json.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => serde_json::Value::from(f as i64),
        _ => json.clone(),
    }
}

/// A 128-bit digest of the columns in `common`, normalized: equal digests mean equal rows.
fn digest(resource: &Resource, common: &BTreeSet<String>) -> [u8; 16] {
    let normalized: std::collections::BTreeMap<&str, serde_json::Value> = common
        .iter()
        .map(|c| (c.as_str(), resource.columns.get(c).map_or(serde_json::Value::Null, normalize)))
        .collect();
    let hash = Sha256::digest(serde_json::to_vec(&normalized).expect("json values serialize"));
    hash[..16].try_into().expect("sha256 is 32 bytes")
}

/// The columns in `common` whose normalized values differ.
pub fn column_differences(a: &Resource, b: &Resource, common: &BTreeSet<String>) -> Vec<ColumnDifference> {
    common
        .iter()
        .filter_map(|column| {
            let value = |r: &Resource| r.columns.get(column).map_or(serde_json::Value::Null, normalize);
            let (a, b) = (value(a), value(b));
            (a != b).then(|| ColumnDifference { column: column.clone(), a, b })
        })
        .collect()
}

/// A table's rows as resources, one page per call, with identity keys computed by the model's
/// SQL. Pages follow the local primary key (keyset paging, so each page costs the same) or,
/// for tables without a one-column key, an offset. The caller holds one page at a time.
pub struct ResourcePages<'m> {
    model: &'m Model,
    entity: &'m Entity,
    bucket: KeyBucket,
    page_rows: usize,
    position: Position,
    /// Rows read so far whose identity could not be computed (not returned).
    pub rows_without_identity: u64,
}

enum Position {
    Start,
    After(Value),
    Offset(u64),
    Done,
}

impl<'m> ResourcePages<'m> {
    /// `None` when the model does not publish the table.
    pub fn new(model: &'m Model, table: &str, page_rows: usize) -> Option<ResourcePages<'m>> {
        let entity = model.entity(table)?;
        let position = Position::Start;
        Some(ResourcePages { model, entity, bucket: KeyBucket::All, page_rows: page_rows.max(1), position, rows_without_identity: 0 })
    }

    /// Only the rows whose keys fall in `bucket`.
    pub fn within(mut self, bucket: &KeyBucket) -> Self {
        self.bucket = bucket.clone();
        self
    }

    /// The next page, `None` when done. A page may be empty when none of its rows had an
    /// identity; later pages may still hold some.
    pub async fn next_page(&mut self, session: &mut Session, cache: &mut LookupCache) -> DbResult<Option<Vec<Resource>>> {
        let dialect = session.dialect();
        let table = &self.entity.table;
        let Some(key) = self.model.key_sql(dialect, table, &RowSource::Alias("t")) else { return Ok(None) };
        let single_key = match self.entity.primary_key.as_slice() {
            [only] => Some(format!("t.{}", quote_ident(dialect, only))),
            _ => None,
        };
        let mut conditions: Vec<String> = bucket_condition(&self.bucket, &key).into_iter().collect();
        let mut params = Vec::new();
        let offset = match &self.position {
            Position::Done => return Ok(None),
            Position::Start => 0,
            Position::After(last) => {
                conditions.push(format!("{} > ?", single_key.as_deref().expect("keyset paging needs a one-column key")));
                params.push(last.clone());
                0
            }
            Position::Offset(n) => *n,
        };
        let order = match (&single_key, self.entity.primary_key.is_empty()) {
            (Some(column), _) => column.clone(),
            (None, false) => self.entity.primary_key.iter().map(|c| format!("t.{}", quote_ident(dialect, c))).collect::<Vec<_>>().join(", "),
            (None, true) => KEY_ALIAS.to_owned(),
        };
        let filter = if conditions.is_empty() { String::new() } else { format!(" WHERE {}", conditions.join(" AND ")) };
        let sql = format!(
            "SELECT {key} AS {KEY_ALIAS}, t.* FROM {} t{filter} ORDER BY {order} LIMIT {} OFFSET {offset}",
            quote_ident(dialect, table),
            self.page_rows
        );
        let rows = session.query(&sql, &params).await?;
        self.position = match (rows.len() < self.page_rows, &single_key, rows.last()) {
            (true, _, _) | (_, _, None) => Position::Done,
            (false, Some(_), Some(last)) => Position::After(last.get(&self.entity.primary_key[0]).clone()),
            (false, None, Some(_)) => Position::Offset(offset + rows.len() as u64),
        };
        let mut resources = Vec::with_capacity(rows.len());
        for row in &rows {
            match row.text(KEY_ALIAS) {
                Some(key) => resources.push(render(session, self.model, self.entity, &key, row, cache).await?),
                None => self.rows_without_identity += 1,
            }
        }
        Ok(Some(resources))
    }
}

/// Whether two entities share an identity rule kind (what [`compare`] needs to match keys).
fn same_identity_kind(a: &Identity, b: &Identity) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use feedsync_wire::resource::{content_hash, reference_json};

    #[test]
    fn large_tables_get_enough_buckets() {
        assert_eq!(bucket_digits(0, 10), 0);
        assert_eq!(bucket_digits(10, 10), 0);
        assert_eq!(bucket_digits(11, 10), 1);
        assert_eq!(bucket_digits(160, 10), 1);
        assert_eq!(bucket_digits(161, 10), 2);
        assert_eq!(bucket_digits(u64::MAX, 10), BUCKET_DIGITS_MAX, "capped: a pass then holds more than the bound");
        assert_eq!(key_buckets(0), vec![KeyBucket::All]);
        assert_eq!(key_buckets(1).len(), 17);
        assert_eq!(key_buckets(2).len(), 257);
    }

    /// Every key, whatever its case or characters, lands in exactly one bucket: checked by
    /// running the generated conditions on SQLite over generated keys.
    #[test]
    fn buckets_partition_every_key() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE k (key TEXT)").unwrap();
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let alphabet: Vec<char> = "0123456789abcdefABCDEF-+ gzé".chars().collect();
        let mut keys = vec![String::new(), "a".into(), "A4F30A1B-5EB9-11DF-A648-37A07F9C90FB".into(), "System Developer".into()];
        for _ in 0..400 {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let length = (state >> 60) as usize;
            keys.push((0..length).map(|i| alphabet[((state >> (i * 4)) % alphabet.len() as u64) as usize]).collect());
        }
        for key in &keys {
            conn.execute("INSERT INTO k (key) VALUES (?)", [key]).unwrap();
        }
        for digits in 1..=BUCKET_DIGITS_MAX {
            let mut seen: BTreeMap<String, usize> = BTreeMap::new();
            for bucket in key_buckets(digits) {
                let condition = bucket_condition(&bucket, "key").unwrap();
                let mut statement = conn.prepare(&format!("SELECT key FROM k WHERE {condition}")).unwrap();
                let found: Vec<String> = statement.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
                for key in found {
                    *seen.entry(key).or_default() += 1;
                }
            }
            for key in &keys {
                assert_eq!(seen.get(key), Some(&keys.iter().filter(|k| *k == key).count()), "digits {digits}: key {key:?}");
            }
        }
    }

    fn resource(columns: &[(&str, serde_json::Value)]) -> Resource {
        let columns: BTreeMap<String, serde_json::Value> = columns.iter().map(|(c, v)| (c.to_string(), v.clone())).collect();
        Resource { table: "t".into(), category: "t".into(), key: "k".into(), hash: content_hash(&columns), columns }
    }

    #[test]
    fn digests_and_differences_look_only_at_common_columns() {
        let common: BTreeSet<String> = ["a", "r", "n"].iter().map(|c| c.to_string()).collect();
        let a = resource(&[("a", json!("x")), ("r", reference_json("users", Some("u1"))), ("n", json!(2.0)), ("only_a", json!(1))]);
        let b = resource(&[("a", json!("x")), ("r", reference_json("users", Some("u1"))), ("n", json!(2)), ("only_b", json!(2))]);
        assert_eq!(digest(&a, &common), digest(&b, &common), "2.0 and 2 are the same number");
        assert!(column_differences(&a, &b, &common).is_empty());
        let c = resource(&[("a", json!("x")), ("r", reference_json("users", Some("u2"))), ("n", json!(2.5))]);
        assert_ne!(digest(&a, &common), digest(&c, &common));
        let differences: Vec<String> = column_differences(&a, &c, &common).into_iter().map(|d| d.column).collect();
        assert_eq!(differences, ["n", "r"], "references are compared by identity");
        let missing = resource(&[("a", json!("x"))]);
        assert_eq!(column_differences(&missing, &resource(&[("a", json!("x")), ("n", json!(null))]), &common), Vec::new());
    }

    #[test]
    fn display_lists_differences_and_schema_notes() {
        let comparison = Comparison {
            tables: vec![
                TableComparison {
                    table: "person".into(),
                    rows_a: 3,
                    rows_b: 3,
                    only_in_a: 1,
                    only_in_b: 1,
                    differing: 2,
                    examples: vec![
                        Difference::OnlyInA { key: "p1".into() },
                        Difference::Values { key: "p2".into(), columns: vec![ColumnDifference { column: "gender".into(), a: json!("F"), b: json!("M") }] },
                    ],
                    ..TableComparison::default()
                },
                TableComparison { table: "location".into(), rows_a: 1, rows_b: 1, columns_only_in_a: vec!["address15".into()], ..TableComparison::default() },
                TableComparison { table: "obs".into(), rows_a: 5, rows_b: 5, ..TableComparison::default() },
            ],
            tables_only_in_a: vec!["fhir_task".into()],
            ..Comparison::default()
        };
        assert!(!comparison.is_equal());
        assert_eq!(comparison.differences(), 4);
        let text = comparison.to_string();
        assert!(text.starts_with("different by identity: 3 tables compared (9 rows in A, 9 in B), 1 differ"), "{text}");
        assert!(text.contains("  person: 1 only in A, 1 only in B, 2 differ"), "{text}");
        assert!(text.contains("    differs p2: gender A=\"F\" B=\"M\""), "{text}");
        assert!(text.contains("    ... and 2 more"), "{text}");
        assert!(text.contains("  location: rows equal (1 rows in A, 1 in B)\n    columns only in A (not compared): address15"), "{text}");
        assert!(!text.contains("obs"), "equal tables are not listed: {text}");
        assert!(text.contains("tables only in A (not compared): fhir_task"), "{text}");
    }
}
