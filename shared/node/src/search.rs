//! Patient search at a parent server, which holds every patient of the network: a facility
//! looks for a patient registered elsewhere, by identifier, or by name with birth date and
//! gender, and gets back minimal demographics of candidates (uuid, name, gender, birthdate,
//! identifiers, score), never the record itself. Bringing the chosen patient over is someone
//! else's job.
//!
//! # Method
//!
//! [`name_similarity`] compares two names part by part (a part is a word):
//!
//! 1. Normalize: lowercase, fold Latin diacritics (`João` → `joao`), drop apostrophes
//!    (`N'dour` → `ndour`) and combining marks, split on anything else that is not a letter
//!    or digit. At most [`NAME_PARTS_MAX`] parts of at most [`NAME_PART_CHARS_MAX`] letters.
//! 2. Each part also gets a *skeleton* that forgets the usual spelling slips of names from
//!    Rwanda, Malawi, Mozambique and Kenya: `y` reads as `i`, an `h` after the first letter is
//!    dropped (`Chikhondi` → `cikondi`, `Mwanghi` → `mwangi`, `Nhantumbo` → `nantumbo`), and
//!    doubled letters collapse (`Uwimanna` → `uwimana`).
//! 3. Two parts are compared by a weighted optimal-string-alignment distance (Damerau-
//!    Levenshtein without repeated edits of one substring): insertion, deletion and
//!    substitution cost 1, but a vowel for a vowel costs 0.5 (vowel slips) and swapping two
//!    neighbours costs 0.5 (typing slips). The part distance is `0.9 × skeleton distance +
//!    0.1 × spelling distance`, each divided by the longer length, so slips the skeleton
//!    forgives still cost a little and the exact spelling ranks first. The part similarity is
//!    `(1 − distance)²`: squared because names of one region share long endings (`-imana`,
//!    `-mana`), and a linear score let `Uwimana` and `Mukamana` (2.5 edits in 8) pass as the
//!    same name; one slip in eight letters still scores about 0.77.
//! 4. Word order: the parts of the shorter name are paired one-to-one with parts of the
//!    longer name, choosing the pairing that maximizes `Σ similarity × (letters of both
//!    parts)` (exact, by dynamic programming over subsets; at most 2⁶ subsets). The name
//!    similarity is that sum divided by the letters of all paired parts plus half the letters
//!    of the longer name's unpaired parts: a missing middle name is weak evidence against a
//!    match, a disagreeing one is full evidence.
//!
//! The result is symmetric (the two names are put in a canonical order first), in `0..=1`,
//! and exactly 1.0 when both names normalize to the same parts in any order. Names without a
//! letter score 0.
//!
//! [`find_patients`] searches non-voided patients of non-voided persons (a person who is not a
//! patient, such as a provider, is never a candidate):
//!
//! - by identifier: non-voided `patient_identifier` rows equal to the query once both are
//!   uppercased (ASCII) and stripped of `-` and spaces; score 1.0;
//! - by name: every non-voided `person_name` of such a patient is scored against the query
//!   with `given middle family`; a person's best name counts. Gender, when given, must equal
//!   (case-insensitively); birthdate, when given, must be within one year either side (persons
//!   without a birthdate are then excluded). Both filters run in SQL. Names scoring below
//!   [`NAME_SCORE_MIN`] are dropped; an exact birthdate then closes half the remaining gap to
//!   1 (`score + (1 − score) / 2`), so it ranks higher. Ties rank by birthdate distance, then
//!   by person id, so results are deterministic.
//!
//! The same SQL text runs on MySQL/MariaDB and SQLite (`UPPER`, `REPLACE`, `LIMIT` and
//! text-compared dates mean the same on both), so nothing here matches on the dialect.
//!
//! # Cost (rows per query)
//!
//! - Identifier: one statement in which the database compares the normalized form of every
//!   non-voided identifier (a scan of `patient_identifier`, since a normalized form cannot use
//!   the `identifier_name` index) and returns at most `limit` patient ids; then three small
//!   statements (persons, names, identifiers) for those ids. Rows sent: at most a few per
//!   candidate. A faster path, if ever needed, is an indexed generated column holding the
//!   normalized identifier.
//! - Name: `⌊M / NAME_CHUNK_ROWS⌋ + 1` statements for the names (keyset paging: the last
//!   chunk is short, possibly empty) and one for the candidates' identifiers, where `M` is the
//!   number of non-voided names of non-voided patients that pass the SQL filters (gender,
//!   birthdate window). The database walks `person_name` once in primary-key order, each
//!   chunk starting where the previous ended, and `M` rows cross the wire,
//!   [`NAME_CHUNK_ROWS`] at a time. Memory: one chunk, the best `limit` candidates, and the
//!   similarities of at most `PART_CACHE_ENTRIES_MAX` (50,000) distinct name parts. CPU: each
//!   distinct name part is aligned with each query part once per search (at most 64 × 64
//!   cells, in practice about 8 × 8); a row then costs a look-up per part and the pairing.
//!   Without a birthdate `M` is every name of every patient, so a name search is one pass over
//!   the names; a birthdate cuts `M` to the patients born in the two-year window (about 2.5%
//!   of a population born over 80 years, half that with a gender).
//!
//! Measured by `shared/tests/search.rs` (debug build, 2 cores, 19,804 live names of 20,001
//! patients, the test suites running side by side): a name search without birthdate 0.3 to
//! 0.6 s on SQLite and MariaDB, mostly scoring in the unoptimized build; with birthdate and
//! gender 254 rows in 8 to 25 ms; an identifier search 10 to 60 ms. [`find_patients_with_stats`] reports `M` and the statements run.

use std::cmp::Ordering;
use std::collections::HashMap;

use chrono::{Days, Months, NaiveDate};
pub use feedsync_wire::network::{Candidate, PatientQuery, PatientsFound};

use feedsync_db::{DbResult, Session, Value};

/// Most candidates one search returns: a person chooses among them on a screen.
pub const SEARCH_RESULTS_MAX: usize = 50;
/// `person_name` rows read per statement of a name search.
pub const NAME_CHUNK_ROWS: usize = 5_000;
/// Lowest name similarity a name candidate may have.
pub const NAME_SCORE_MIN: f64 = 0.75;
/// Parts of a name compared; later parts are ignored. Bounds the pairing to 2⁶ subsets.
pub const NAME_PARTS_MAX: usize = 6;
/// Letters of one name part compared; the rest is ignored. Bounds one comparison's cost.
pub const NAME_PART_CHARS_MAX: usize = 64;
/// How far either side of a given birthdate a candidate's birthdate may be.
pub const BIRTHDATE_WINDOW_MONTHS: u32 = 12;

/// Share of a part's distance taken from the skeletons; the rest from the exact spelling.
const SKELETON_SHARE: f64 = 0.9;
/// Weight of an unpaired part's letters, relative to a paired part's.
const UNPAIRED_PART_WEIGHT: f64 = 0.5;
/// Share of the gap to 1 an exact birthdate closes.
const EXACT_BIRTHDATE_GAP_SHARE: f64 = 0.5;
/// Edit costs in half edits: an insertion, deletion or substitution is a whole edit; a vowel
/// replaced by another vowel, or two neighbours swapped, half of one.
const EDIT_COST_HALVES: u32 = 2;
const VOWEL_SLIP_COST_HALVES: u32 = 1;
const TRANSPOSITION_COST_HALVES: u32 = 1;

const QUERY_HINT: &str = "search by one identifier (e.g. `100000-1`) or by name with an optional \
     birthdate YYYY-MM-DD and gender M/F/O/U (e.g. `Mary Uwimana 1990-04-12 F`)";

/// Parses CLI text: a single token containing a digit → Identifier; otherwise words are the
/// name, a YYYY-MM-DD token is the birthdate, a lone M/F/O/U token is the gender. Errors
/// (empty query, two dates...) are a String with a hint.
pub fn parse_query(text: &str) -> Result<PatientQuery, String> {
    let tokens: Vec<&str> = text.split_whitespace().collect();
    if tokens.is_empty() {
        return Err(format!("empty query: {QUERY_HINT}"));
    }
    if tokens.len() == 1 && has_digit(tokens[0]) && !looks_like_date(tokens[0]) {
        return Ok(PatientQuery::Identifier(tokens[0].to_owned()));
    }
    let mut words = Vec::new();
    let mut birthdate: Option<String> = None;
    let mut gender: Option<String> = None;
    for token in tokens {
        if looks_like_date(token) {
            let date = NaiveDate::parse_from_str(token, "%Y-%m-%d")
                .map_err(|_| format!("{token:?} is not a date: write the birthdate as YYYY-MM-DD, e.g. 1990-04-12"))?;
            if let Some(first) = &birthdate {
                return Err(format!("two birthdates ({first} and {token}): give at most one"));
            }
            birthdate = Some(date.format("%Y-%m-%d").to_string());
        } else if is_gender(token) {
            if let Some(first) = &gender {
                return Err(format!("two genders ({first} and {token}): give at most one of M, F, O, U"));
            }
            gender = Some(token.to_ascii_uppercase());
        } else if has_digit(token) {
            return Err(format!(
                "{token:?} has digits: an identifier is searched alone, and a birthdate is written YYYY-MM-DD"
            ));
        } else {
            words.push(token);
        }
    }
    if words.is_empty() {
        return Err(format!("no name: a birthdate or gender alone is not a search; {QUERY_HINT}"));
    }
    Ok(PatientQuery::Name { name: words.join(" "), birthdate, gender })
}

fn has_digit(token: &str) -> bool {
    token.chars().any(|c| c.is_ascii_digit())
}

/// `DDDD-DD-DD`, whether or not it is a real date (that is checked after).
fn looks_like_date(token: &str) -> bool {
    let bytes = token.as_bytes();
    bytes.len() == 10
        && bytes.iter().enumerate().all(|(i, b)| if i == 4 || i == 7 { *b == b'-' } else { b.is_ascii_digit() })
}

fn is_gender(token: &str) -> bool {
    matches!(token, "M" | "F" | "O" | "U" | "m" | "f" | "o" | "u")
}

/// What a search cost, for tests and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SearchStats {
    /// Statements sent to the database.
    pub statements: usize,
    /// `person_name` rows read and scored (`M` in the module doc).
    pub name_rows_scanned: u64,
    /// Chunks of at most [`NAME_CHUNK_ROWS`] those rows came in.
    pub name_chunks: usize,
}

// ---------------------------------------------------------------------------------------
// Name similarity (pure).

/// One normalized word of a name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct NamePart {
    letters: Vec<char>,
    skeleton: Vec<char>,
}

impl NamePart {
    fn new(letters: Vec<char>) -> NamePart {
        let skeleton = skeleton(&letters);
        NamePart { letters, skeleton }
    }
}

/// A name split and normalized once, to be compared with many others.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PreparedName {
    /// Sorted, so the order words were written in does not matter.
    parts: Vec<NamePart>,
}

impl PreparedName {
    fn new(text: &str) -> PreparedName {
        let mut parts: Vec<NamePart> = name_parts(text).into_iter().map(NamePart::new).collect();
        parts.sort();
        PreparedName { parts }
    }
}

/// Lowercased, folded letters of each word, at most [`NAME_PARTS_MAX`] words.
fn name_parts(text: &str) -> Vec<Vec<char>> {
    let mut parts = Vec::new();
    let mut current = Vec::new();
    for c in text.chars() {
        if parts.len() == NAME_PARTS_MAX {
            break;
        }
        // Apostrophes join (N'dour), combining marks belong to the letter before them.
        if matches!(c, '\'' | '`' | '\u{2018}' | '\u{2019}' | '\u{02BC}') || ('\u{0300}'..='\u{036F}').contains(&c) {
            continue;
        }
        if c.is_alphanumeric() {
            for lower in c.to_lowercase().filter(|l| l.is_alphanumeric()) {
                if current.len() < NAME_PART_CHARS_MAX {
                    current.push(fold_diacritic(lower));
                }
            }
        } else if !current.is_empty() {
            parts.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() && parts.len() < NAME_PARTS_MAX {
        parts.push(current);
    }
    parts
}

/// The Latin letters with diacritics that names of the region (and Portuguese, French) use.
fn fold_diacritic(c: char) -> char {
    match c {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' | 'ă' | 'ą' => 'a',
        'ç' | 'ć' | 'č' => 'c',
        'ď' => 'd',
        'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ė' | 'ę' | 'ě' => 'e',
        'ì' | 'í' | 'î' | 'ï' | 'ī' | 'į' | 'ı' => 'i',
        'ñ' | 'ń' | 'ň' => 'n',
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' | 'ő' => 'o',
        'ř' => 'r',
        'ś' | 'š' | 'ş' => 's',
        'ť' | 'ţ' => 't',
        'ù' | 'ú' | 'û' | 'ü' | 'ū' | 'ů' | 'ű' => 'u',
        'ý' | 'ÿ' => 'y',
        'ź' | 'ż' | 'ž' => 'z',
        other => other,
    }
}

/// `y` as `i`, no `h` after the first letter, no doubled letters.
fn skeleton(letters: &[char]) -> Vec<char> {
    let mut out: Vec<char> = Vec::with_capacity(letters.len());
    for (i, &c) in letters.iter().enumerate() {
        let c = if c == 'y' { 'i' } else { c };
        if c == 'h' && i > 0 {
            continue;
        }
        if out.last() == Some(&c) {
            continue;
        }
        out.push(c);
    }
    out
}

fn is_vowel(c: char) -> bool {
    matches!(c, 'a' | 'e' | 'i' | 'o' | 'u' | 'y')
}

/// Weighted optimal string alignment distance (see the module doc), in edits. Counted in
/// half edits as integers on the stack: exact, exactly symmetric, and no allocation, since it
/// runs for every pair of parts of every name scanned.
fn alignment_distance(a: &[char], b: &[char]) -> f64 {
    let (a, b) = (&a[..a.len().min(NAME_PART_CHARS_MAX)], &b[..b.len().min(NAME_PART_CHARS_MAX)]);
    let width = b.len() + 1;
    // Three rows: two back (for transpositions), one back, current.
    let mut two_back = [0u32; NAME_PART_CHARS_MAX + 1];
    let mut one_back = [0u32; NAME_PART_CHARS_MAX + 1];
    let mut current = [0u32; NAME_PART_CHARS_MAX + 1];
    for (j, cell) in one_back.iter_mut().enumerate().take(width) {
        *cell = j as u32 * EDIT_COST_HALVES;
    }
    for i in 1..=a.len() {
        current[0] = i as u32 * EDIT_COST_HALVES;
        for j in 1..width {
            let substitution = if a[i - 1] == b[j - 1] {
                0
            } else if is_vowel(a[i - 1]) && is_vowel(b[j - 1]) {
                VOWEL_SLIP_COST_HALVES
            } else {
                EDIT_COST_HALVES
            };
            let mut best = (one_back[j] + EDIT_COST_HALVES)
                .min(current[j - 1] + EDIT_COST_HALVES)
                .min(one_back[j - 1] + substitution);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && a[i - 1] != b[j - 1] {
                best = best.min(two_back[j - 2] + TRANSPOSITION_COST_HALVES);
            }
            current[j] = best;
        }
        std::mem::swap(&mut two_back, &mut one_back);
        std::mem::swap(&mut one_back, &mut current);
    }
    f64::from(one_back[b.len()]) / f64::from(EDIT_COST_HALVES)
}

/// Distance divided by the longer length, in 0..=1.
fn relative_distance(a: &[char], b: &[char]) -> f64 {
    let longer = a.len().max(b.len());
    if longer == 0 {
        return 0.0;
    }
    (alignment_distance(a, b) / longer as f64).clamp(0.0, 1.0)
}

fn part_similarity(a: &NamePart, b: &NamePart) -> f64 {
    if a.letters == b.letters {
        return 1.0;
    }
    let distance = SKELETON_SHARE * relative_distance(&a.skeleton, &b.skeleton)
        + (1.0 - SKELETON_SHARE) * relative_distance(&a.letters, &b.letters);
    let closeness = (1.0 - distance).clamp(0.0, 1.0);
    closeness * closeness
}

/// Similarity of two names in 0..=1, tolerant of doubled letters, h-insertions, vowel slips,
/// transpositions and word order ("Mary Uwimana" vs "Uwimanna Mary"). The method is in the
/// module doc: normalized parts, skeletons, weighted alignment distance per part, best
/// one-to-one pairing of parts weighted by their letters.
pub fn name_similarity(a: &str, b: &str) -> f64 {
    prepared_similarity(&PreparedName::new(a), &PreparedName::new(b))
}

fn prepared_similarity(a: &PreparedName, b: &PreparedName) -> f64 {
    if a.parts.is_empty() || b.parts.is_empty() {
        return 0.0;
    }
    if a.parts == b.parts {
        return 1.0;
    }
    // Canonical order: the same arithmetic in the same order whichever name came first.
    let (rows, columns) = if letters_first(&a.parts, b.parts.iter().map(|p| &p.letters)) { (a, b) } else { (b, a) };
    best_pairing(
        &weights(rows.parts.iter().map(|p| &p.letters)),
        &weights(columns.parts.iter().map(|p| &p.letters)),
        |i, j| part_similarity(&rows.parts[i], &columns.parts[j]),
    )
}

/// Whether `a` comes first in the canonical order of names: fewer parts first, then by letters.
fn letters_first<'a>(a: &'a [NamePart], b: impl ExactSizeIterator<Item = &'a Vec<char>>) -> bool {
    match a.len().cmp(&b.len()) {
        Ordering::Less => true,
        Ordering::Greater => false,
        Ordering::Equal => a.iter().map(|p| &p.letters).cmp(b) != Ordering::Greater,
    }
}

/// Parts' weights: their letters. A name has at most [`NAME_PARTS_MAX`] parts.
fn weights<'a>(parts: impl Iterator<Item = &'a Vec<char>>) -> Vec<f64> {
    parts.take(NAME_PARTS_MAX).map(|letters| letters.len() as f64).collect()
}

/// The best one-to-one pairing of every row part with a distinct column part (rows ≤ columns),
/// scored as in the module doc. `similarity(i, j)` is the similarity of row `i` and column `j`.
fn best_pairing(row_weights: &[f64], column_weights: &[f64], similarity: impl Fn(usize, usize) -> f64) -> f64 {
    let (rows, columns) = (row_weights.len(), column_weights.len());
    debug_assert!(rows <= columns && columns <= NAME_PARTS_MAX);
    let mut gains = [[0.0; NAME_PARTS_MAX]; NAME_PARTS_MAX];
    for (i, row_weight) in row_weights.iter().enumerate() {
        for (j, column_weight) in column_weights.iter().enumerate() {
            gains[i][j] = similarity(i, j) * (row_weight + column_weight);
        }
    }
    // best[mask]: the best gain pairing the first popcount(mask) rows with the columns in mask.
    let subsets = 1usize << columns;
    let mut best = [f64::NEG_INFINITY; 1 << NAME_PARTS_MAX];
    best[0] = 0.0;
    for mask in 0..subsets {
        let row = mask.count_ones() as usize;
        if row >= rows || best[mask] == f64::NEG_INFINITY {
            continue;
        }
        for (column, gain) in gains[row][..columns].iter().enumerate() {
            if mask & (1 << column) == 0 {
                let next = mask | (1 << column);
                best[next] = best[next].max(best[mask] + gain);
            }
        }
    }
    let rows_weight: f64 = row_weights.iter().sum();
    let mut similarity: f64 = 0.0;
    for (mask, gain) in best[..subsets].iter().enumerate() {
        if mask.count_ones() as usize != rows || *gain == f64::NEG_INFINITY {
            continue;
        }
        let (mut paired, mut unpaired) = (0.0, 0.0);
        for (column, weight) in column_weights.iter().enumerate() {
            if mask & (1 << column) != 0 {
                paired += weight;
            } else {
                unpaired += weight;
            }
        }
        similarity = similarity.max(gain / (rows_weight + paired + UNPAIRED_PART_WEIGHT * unpaired));
    }
    similarity.clamp(0.0, 1.0)
}

/// Distinct name parts whose similarities one search remembers (about 100 bytes each).
const PART_CACHE_ENTRIES_MAX: usize = 50_000;

/// Scores many names against one query, exactly as [`name_similarity`] would, remembering
/// each distinct part's similarities to the query's parts: a region has far fewer distinct
/// name parts than people, so most parts are aligned once per search, not once per row.
struct NameScorer {
    query: PreparedName,
    /// Candidate part letters → similarity to each query part.
    cache: HashMap<Vec<char>, [f64; NAME_PARTS_MAX]>,
}

impl NameScorer {
    fn new(query: PreparedName) -> NameScorer {
        NameScorer { query, cache: HashMap::new() }
    }

    fn score(&mut self, text: &str) -> f64 {
        let mut parts = name_parts(text);
        parts.sort();
        let query = &self.query.parts;
        if parts.is_empty() || query.is_empty() {
            return 0.0;
        }
        if parts.len() == query.len() && parts.iter().zip(query).all(|(c, q)| *c == q.letters) {
            return 1.0;
        }
        let mut similarities = [[0.0; NAME_PARTS_MAX]; NAME_PARTS_MAX];
        for (j, letters) in parts.iter().enumerate() {
            similarities[j] = match self.cache.get(letters) {
                Some(known) => *known,
                None => {
                    let part = NamePart::new(letters.clone());
                    let mut row = [0.0; NAME_PARTS_MAX];
                    for (i, query_part) in query.iter().enumerate() {
                        row[i] = part_similarity(query_part, &part);
                    }
                    if self.cache.len() < PART_CACHE_ENTRIES_MAX {
                        self.cache.insert(letters.clone(), row);
                    }
                    row
                }
            };
        }
        let query_weights = weights(query.iter().map(|p| &p.letters));
        let candidate_weights = weights(parts.iter());
        if letters_first(query, parts.iter()) {
            best_pairing(&query_weights, &candidate_weights, |i, j| similarities[j][i])
        } else {
            best_pairing(&candidate_weights, &query_weights, |i, j| similarities[i][j])
        }
    }
}

// ---------------------------------------------------------------------------------------
// Search (database).

/// Searches non-voided patients. Identifier: exact match on `patient_identifier.identifier`
/// (non-voided), case-insensitive, also ignoring '-' and spaces. Name: candidates from
/// `person_name` (non-voided) + `person` (gender, birthdate), scored by [`name_similarity`]
/// against given+middle+family; birthdate, when given, must be within 1 year (exact date ranks
/// higher), gender must match when given. Returns at most `limit` (capped at
/// [`SEARCH_RESULTS_MAX`]) best first, minimum score [`NAME_SCORE_MIN`] for name matches. A
/// birthdate that is not `YYYY-MM-DD` matches nobody (use [`parse_query`] to get an error).
pub async fn find_patients(session: &mut Session, query: &PatientQuery, limit: usize) -> DbResult<Vec<Candidate>> {
    Ok(find_patients_with_stats(session, query, limit).await?.0)
}

/// [`find_patients`], also reporting what the search cost.
pub async fn find_patients_with_stats(
    session: &mut Session,
    query: &PatientQuery,
    limit: usize,
) -> DbResult<(Vec<Candidate>, SearchStats)> {
    let mut stats = SearchStats::default();
    let limit = limit.min(SEARCH_RESULTS_MAX);
    if limit == 0 {
        return Ok((Vec::new(), stats));
    }
    let candidates = match query {
        PatientQuery::Identifier(identifier) => find_by_identifier(session, identifier, limit, &mut stats).await?,
        PatientQuery::Name { name, birthdate, gender } => {
            find_by_name(session, name, birthdate.as_deref(), gender.as_deref(), limit, &mut stats).await?
        }
    };
    debug_assert!(candidates.len() <= limit);
    debug_assert!(candidates.windows(2).all(|w| w[0].score >= w[1].score));
    Ok((candidates, stats))
}

/// Uppercased (ASCII, as SQLite's `UPPER`), without `-` and spaces: the SQL side does the same.
fn normalize_identifier(identifier: &str) -> String {
    identifier.chars().filter(|c| *c != '-' && *c != ' ').map(|c| c.to_ascii_uppercase()).collect()
}

/// The condition every candidate meets: a non-voided patient whose person is not voided.
const LIVE_PATIENT: &str = "pt.voided = 0 AND p.voided = 0";

async fn find_by_identifier(
    session: &mut Session,
    identifier: &str,
    limit: usize,
    stats: &mut SearchStats,
) -> DbResult<Vec<Candidate>> {
    let normalized = normalize_identifier(identifier);
    if normalized.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT DISTINCT pi.patient_id AS person_id FROM patient_identifier pi \
         JOIN patient pt ON pt.patient_id = pi.patient_id JOIN person p ON p.person_id = pi.patient_id \
         WHERE pi.voided = 0 AND {LIVE_PATIENT} \
         AND REPLACE(REPLACE(UPPER(pi.identifier), '-', ''), ' ', '') = ? \
         ORDER BY person_id LIMIT {limit}"
    );
    stats.statements += 1;
    let person_ids: Vec<i64> =
        session.query(&sql, &[normalized.into()]).await?.iter().filter_map(|r| r.i64("person_id")).collect();
    if person_ids.is_empty() {
        return Ok(Vec::new());
    }
    let placeholders = placeholders(person_ids.len());
    let ids: Vec<Value> = person_ids.iter().map(|id| Value::Int(*id)).collect();

    stats.statements += 1;
    let persons = session
        .query(
            &format!("SELECT person_id, uuid, gender, birthdate FROM person WHERE person_id IN ({placeholders})"),
            &ids,
        )
        .await?;
    let persons: HashMap<i64, _> = persons.into_iter().filter_map(|r| Some((r.i64("person_id")?, r))).collect();

    stats.statements += 1;
    let names = session
        .query(
            &format!(
                "SELECT person_id, given_name, middle_name, family_name FROM person_name \
                 WHERE voided = 0 AND person_id IN ({placeholders}) ORDER BY person_id, preferred DESC, person_name_id"
            ),
            &ids,
        )
        .await?;
    let mut preferred_names = HashMap::new();
    for row in names {
        if let Some(id) = row.i64("person_id") {
            preferred_names.entry(id).or_insert(row);
        }
    }
    let mut identifiers = identifiers_of(session, &person_ids, stats).await?;

    let mut candidates = Vec::with_capacity(person_ids.len());
    for id in person_ids {
        let Some(person) = persons.get(&id) else { continue };
        let name = preferred_names.get(&id);
        let name_text = |column: &str| name.and_then(|n| non_empty(n.text(column)));
        candidates.push(Candidate {
            uuid: person.text("uuid").unwrap_or_default(),
            given_name: name_text("given_name"),
            middle_name: name_text("middle_name"),
            family_name: name_text("family_name"),
            gender: non_empty(person.text("gender")),
            birthdate: date_text(person.text("birthdate")),
            identifiers: identifiers.remove(&id).unwrap_or_default(),
            score: 1.0,
            matched_by: "identifier".into(),
        });
    }
    Ok(candidates)
}

/// A scored name candidate, before its identifiers are read.
struct Ranked {
    score: f64,
    /// Days between the query's and the candidate's birthdates; `u64::MAX` when not compared.
    birthdate_days_off: u64,
    person_id: i64,
    candidate: Candidate,
}

/// Best first: higher score, then closer birthdate, then lower person id.
fn rank_order(a: &Ranked, b: &Ranked) -> Ordering {
    b.score
        .total_cmp(&a.score)
        .then(a.birthdate_days_off.cmp(&b.birthdate_days_off))
        .then(a.person_id.cmp(&b.person_id))
}

/// The best `limit` candidates seen so far, one per person. `limit` is at most
/// [`SEARCH_RESULTS_MAX`], so linear scans beat a heap that must also find persons.
struct TopCandidates {
    limit: usize,
    entries: Vec<Ranked>,
}

impl TopCandidates {
    fn offer(&mut self, ranked: Ranked) {
        if let Some(existing) = self.entries.iter_mut().find(|e| e.person_id == ranked.person_id) {
            if rank_order(&ranked, existing) == Ordering::Less {
                *existing = ranked;
            }
            return;
        }
        if self.entries.len() < self.limit {
            self.entries.push(ranked);
            return;
        }
        let worst = (0..self.entries.len())
            .max_by(|&i, &j| rank_order(&self.entries[i], &self.entries[j]))
            .expect("a full list is not empty");
        if rank_order(&ranked, &self.entries[worst]) == Ordering::Less {
            self.entries[worst] = ranked;
        }
    }

    fn into_sorted(mut self) -> Vec<Ranked> {
        self.entries.sort_by(rank_order);
        self.entries
    }
}

async fn find_by_name(
    session: &mut Session,
    name: &str,
    birthdate: Option<&str>,
    gender: Option<&str>,
    limit: usize,
    stats: &mut SearchStats,
) -> DbResult<Vec<Candidate>> {
    let query_name = PreparedName::new(name);
    if query_name.parts.is_empty() {
        return Ok(Vec::new());
    }
    let mut scorer = NameScorer::new(query_name);
    let mut filters = String::new();
    let mut filter_params = Vec::new();
    if let Some(gender) = gender.map(str::trim).filter(|g| !g.is_empty()) {
        filters.push_str(" AND UPPER(p.gender) = ?");
        filter_params.push(Value::Text(gender.to_uppercase()));
    }
    let birthdate = match birthdate {
        None => None,
        Some(text) => match NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d") {
            Ok(date) => Some(date),
            Err(_) => {
                tracing::warn!(birthdate = text, "patient search: birthdate is not YYYY-MM-DD; nothing matches");
                return Ok(Vec::new());
            }
        },
    };
    if let Some(date) = birthdate {
        let window = Months::new(BIRTHDATE_WINDOW_MONTHS);
        let (Some(earliest), Some(after_latest)) = (
            date.checked_sub_months(window),
            date.checked_add_months(window).and_then(|d| d.checked_add_days(Days::new(1))),
        ) else {
            return Ok(Vec::new());
        };
        // Half-open on the day after, so a datetime-shaped text ('YYYY-MM-DD 00:00:00') on the
        // last day still falls inside on SQLite, where dates compare as text.
        filters.push_str(" AND p.birthdate >= ? AND p.birthdate < ?");
        filter_params.push(Value::Text(earliest.format("%Y-%m-%d").to_string()));
        filter_params.push(Value::Text(after_latest.format("%Y-%m-%d").to_string()));
    }
    let sql = format!(
        "SELECT pn.person_name_id, pn.person_id, pn.given_name, pn.middle_name, pn.family_name, \
         p.uuid, p.gender, p.birthdate \
         FROM person_name pn JOIN person p ON p.person_id = pn.person_id JOIN patient pt ON pt.patient_id = pn.person_id \
         WHERE pn.voided = 0 AND {LIVE_PATIENT} AND pn.person_name_id > ?{filters} \
         ORDER BY pn.person_name_id LIMIT {NAME_CHUNK_ROWS}"
    );

    let mut top = TopCandidates { limit, entries: Vec::with_capacity(limit) };
    let mut after_name_id = i64::MIN;
    loop {
        let mut params = Vec::with_capacity(1 + filter_params.len());
        params.push(Value::Int(after_name_id));
        params.extend(filter_params.iter().cloned());
        stats.statements += 1;
        let rows = session.query(&sql, &params).await?;
        stats.name_chunks += 1;
        stats.name_rows_scanned += rows.len() as u64;
        for row in &rows {
            let (Some(person_id), Some(uuid)) = (row.i64("person_id"), row.text("uuid")) else { continue };
            let given_name = non_empty(row.text("given_name"));
            let middle_name = non_empty(row.text("middle_name"));
            let family_name = non_empty(row.text("family_name"));
            let full_name = [&given_name, &middle_name, &family_name]
                .into_iter()
                .flatten()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(" ");
            let similarity = scorer.score(&full_name);
            if similarity < NAME_SCORE_MIN {
                continue;
            }
            let candidate_birthdate = date_text(row.text("birthdate"));
            let birthdate_days_off = match (birthdate, candidate_birthdate.as_deref()) {
                (Some(wanted), Some(text)) => NaiveDate::parse_from_str(text, "%Y-%m-%d")
                    .map(|found| (found - wanted).num_days().unsigned_abs())
                    .unwrap_or(u64::MAX),
                _ => u64::MAX,
            };
            let score = if birthdate_days_off == 0 {
                similarity + (1.0 - similarity) * EXACT_BIRTHDATE_GAP_SHARE
            } else {
                similarity
            };
            top.offer(Ranked {
                score,
                birthdate_days_off,
                person_id,
                candidate: Candidate {
                    uuid,
                    given_name,
                    middle_name,
                    family_name,
                    gender: non_empty(row.text("gender")),
                    birthdate: candidate_birthdate,
                    identifiers: Vec::new(),
                    score,
                    matched_by: "name".into(),
                },
            });
        }
        if rows.len() < NAME_CHUNK_ROWS {
            break;
        }
        match rows.last().and_then(|r| r.i64("person_name_id")) {
            Some(last) => after_name_id = last,
            None => break,
        }
    }

    let ranked = top.into_sorted();
    let person_ids: Vec<i64> = ranked.iter().map(|r| r.person_id).collect();
    let mut identifiers = identifiers_of(session, &person_ids, stats).await?;
    Ok(ranked
        .into_iter()
        .map(|r| Candidate { identifiers: identifiers.remove(&r.person_id).unwrap_or_default(), ..r.candidate })
        .collect())
}

/// Non-voided identifiers of these patients, preferred first, then in creation order.
async fn identifiers_of(
    session: &mut Session,
    person_ids: &[i64],
    stats: &mut SearchStats,
) -> DbResult<HashMap<i64, Vec<String>>> {
    let mut identifiers: HashMap<i64, Vec<String>> = HashMap::new();
    if person_ids.is_empty() {
        return Ok(identifiers);
    }
    let sql = format!(
        "SELECT patient_id, identifier FROM patient_identifier WHERE voided = 0 AND patient_id IN ({}) \
         ORDER BY patient_id, preferred DESC, patient_identifier_id",
        placeholders(person_ids.len())
    );
    let ids: Vec<Value> = person_ids.iter().map(|id| Value::Int(*id)).collect();
    stats.statements += 1;
    for row in session.query(&sql, &ids).await? {
        if let (Some(id), Some(identifier)) = (row.i64("patient_id"), row.text("identifier")) {
            identifiers.entry(id).or_default().push(identifier);
        }
    }
    Ok(identifiers)
}

fn placeholders(count: usize) -> String {
    vec!["?"; count].join(", ")
}

fn non_empty(text: Option<String>) -> Option<String> {
    text.filter(|t| !t.trim().is_empty())
}

/// `YYYY-MM-DD` from a date or datetime text (MySQL dates arrive as `YYYY-MM-DD 00:00:00`).
fn date_text(text: Option<String>) -> Option<String> {
    let text = non_empty(text)?;
    Some(text.get(..10).unwrap_or(&text).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(name: &str, birthdate: Option<&str>, gender: Option<&str>) -> PatientQuery {
        PatientQuery::Name { name: name.into(), birthdate: birthdate.map(Into::into), gender: gender.map(Into::into) }
    }

    #[test]
    fn queries_parse() {
        assert_eq!(parse_query("100000-1"), Ok(PatientQuery::Identifier("100000-1".into())));
        assert_eq!(parse_query("  MW-2020-0042 "), Ok(PatientQuery::Identifier("MW-2020-0042".into())));
        assert_eq!(parse_query("Uwimana"), Ok(name("Uwimana", None, None)));
        assert_eq!(parse_query("Mary  Uwimana"), Ok(name("Mary Uwimana", None, None)));
        assert_eq!(parse_query("Mary Uwimana 1990-04-12 f"), Ok(name("Mary Uwimana", Some("1990-04-12"), Some("F"))));
        assert_eq!(parse_query("M 1990-04-12 Peter Mwangi"), Ok(name("Peter Mwangi", Some("1990-04-12"), Some("M"))));
        assert_eq!(parse_query("Jean-Paul N'dour"), Ok(name("Jean-Paul N'dour", None, None)));
    }

    #[test]
    fn bad_queries_say_what_to_do() {
        let cases = [
            ("", "empty query"),
            ("   ", "empty query"),
            ("Mary 1990-04-12 1991-01-01", "two birthdates"),
            ("Mary M F", "two genders"),
            ("Mary 1990-13-45", "not a date"),
            ("Mary 100000-1", "identifier is searched alone"),
            ("1990-04-12", "no name"),
            ("F", "no name"),
            ("1990-04-12 F", "no name"),
        ];
        for (text, expected) in cases {
            let error = parse_query(text).expect_err(text);
            assert!(error.contains(expected), "{text:?}: {error}");
        }
        assert!(parse_query("").unwrap_err().contains("YYYY-MM-DD"), "the hint shows the form");
    }

    #[test]
    fn regional_spelling_slips_score_high() {
        let same = [
            ("Uwimana", "Uwimanna", 0.95),
            ("Chikondi", "Chikhondi", 0.95),
            ("Mwangi", "Mwanghi", 0.95),
            ("Nhantumbo", "Nhatumbo", 0.75),
            ("Mukamana", "Mukamane", 0.85),
            ("Uwimana", "Uwiamna", 0.85),
            ("Nyirahabimana", "Nyiraabimana", 0.95),
            ("Mary Uwimana", "Uwimanna Mary", 0.95),
            ("Armando Nhatumbo", "Armando Nhantumbo", 0.85),
            ("Mary Uwimana", "Mary Uwimana Mukamana", 0.8),
            ("Uwimana", "Mary Uwimana", 0.8),
        ];
        for (a, b, at_least) in same {
            let s = name_similarity(a, b);
            assert!(s >= at_least && s < 1.0, "{a} / {b}: {s}");
        }
        for (a, b) in [("João Nhantumbo", "Joao NHANTUMBO"), ("Mary Uwimana", "uwimana, mary"), ("N'dour", "Ndour")] {
            assert_eq!(name_similarity(a, b), 1.0, "{a} / {b}");
        }
    }

    #[test]
    fn different_people_score_low() {
        let different = [
            ("Mary Uwimana", "Mary Mukamana"),
            ("Mary Uwimana", "Grace Mukamana"),
            ("Jean Habimana", "Jean Hakizimana"),
            ("Chikondi Banda", "Chimwemwe Banda"),
            ("Peter Mwangi", "Peter Otieno"),
            ("John Banda", "Mary Banda"),
            ("Uwimana", "Mukamana"),
        ];
        for (a, b) in different {
            let s = name_similarity(a, b);
            assert!(s < NAME_SCORE_MIN, "{a} / {b}: {s}");
        }
        assert_eq!(name_similarity("", "Mary"), 0.0);
        assert_eq!(name_similarity("-- ", "..."), 0.0, "no letters, nothing to compare");
    }

    #[test]
    fn exact_spelling_ranks_above_a_forgiven_slip() {
        let exact = name_similarity("Mary Uwimana", "Mary Uwimana");
        let slip = name_similarity("Mary Uwimana", "Mary Uwimanna");
        let worse = name_similarity("Mary Uwimana", "Mary Uwimamma");
        assert!(exact > slip && slip > worse, "{exact} {slip} {worse}");
    }

    /// Choices from the one seeded generator (`feedsync_core::rng`), as this test needs them.
    struct Rng(feedsync_core::rng::SplitMix64);
    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0.below_usize(n)
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            *self.0.pick(items)
        }
    }

    const SYLLABLES: &[&str] = &[
        "u", "wi", "ma", "na", "chi", "ko", "ndi", "mwa", "ngi", "nha", "tu", "mbo", "ka", "mu", "ha", "bi", "nyi",
        "ra", "ba", "nda", "phi", "ri", "jo", "ão", "é", "ze", "ssa", "kh", "y", "o", "a", "e",
    ];

    fn random_word(rng: &mut Rng) -> String {
        let syllables = 1 + rng.below(4);
        let mut word: String = (0..syllables).map(|_| rng.pick(SYLLABLES)).collect();
        if rng.below(3) == 0 {
            word = word.to_uppercase();
        } else if rng.below(2) == 0 {
            let mut chars = word.chars();
            word = chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default();
        }
        word
    }

    fn random_name(rng: &mut Rng) -> Vec<String> {
        (0..1 + rng.below(4)).map(|_| random_word(rng)).collect()
    }

    fn join(rng: &mut Rng, words: &[String]) -> String {
        let mut text = String::new();
        for (i, word) in words.iter().enumerate() {
            if i > 0 {
                text.push_str(rng.pick(&[" ", "  ", "-", ", ", " . "]));
            }
            text.push_str(word);
        }
        text
    }

    /// A slip the skeleton forgives: a doubled letter or an `h` after a consonant.
    fn forgiven_slip(rng: &mut Rng, word: &str) -> String {
        let chars: Vec<char> = word.chars().collect();
        let at = 1 + rng.below(chars.len() - 1);
        let mut out: Vec<char> = chars[..at].to_vec();
        if rng.below(2) == 0 || is_vowel(chars[at - 1].to_ascii_lowercase()) {
            out.push(chars[at - 1]);
        } else {
            out.push('h');
        }
        out.extend_from_slice(&chars[at..]);
        out.into_iter().collect()
    }

    #[test]
    fn generated_names_keep_the_properties() {
        let seed = 0x5EED_2026_u64;
        let mut rng = Rng(feedsync_core::rng::SplitMix64::new(seed));
        for case in 0..2_000 {
            let a_words = random_name(&mut rng);
            let b_words = random_name(&mut rng);
            let a = join(&mut rng, &a_words);
            let b = join(&mut rng, &b_words);
            let ab = name_similarity(&a, &b);
            let ba = name_similarity(&b, &a);
            assert_eq!(ab.to_bits(), ba.to_bits(), "seed {seed:#x} case {case}: symmetric: {a:?} / {b:?}: {ab} {ba}");
            assert!((0.0..=1.0).contains(&ab), "seed {seed:#x} case {case}: in 0..=1: {a:?} / {b:?}: {ab}");

            // The same name, written differently: other case, order and separators.
            let mut shuffled: Vec<String> = a_words.iter().map(|w| w.to_lowercase()).collect();
            let turn = rng.below(shuffled.len());
            shuffled.rotate_left(turn);
            let same = join(&mut rng, &shuffled);
            assert_eq!(name_similarity(&a, &a), 1.0, "seed {seed:#x} case {case}: {a:?} with itself");
            assert_eq!(name_similarity(&a, &same), 1.0, "seed {seed:#x} case {case}: {a:?} / {same:?}");

            // One forgiven slip in a word of four letters or more stays a strong match.
            if let Some(i) = a_words.iter().position(|w| w.chars().count() >= 4) {
                let mut slipped = a_words.clone();
                slipped[i] = forgiven_slip(&mut rng, &a_words[i]);
                let slipped = join(&mut rng, &slipped);
                let s = name_similarity(&a, &slipped);
                assert!(s >= 0.9, "seed {seed:#x} case {case}: {a:?} / {slipped:?}: {s}");
            }
        }
    }

    /// The search's cached scorer is `name_similarity`, bit for bit, on first sight of a part
    /// and from the cache.
    #[test]
    fn the_scorer_is_name_similarity() {
        let seed = 0xCAC4E_u64;
        let mut rng = Rng(feedsync_core::rng::SplitMix64::new(seed));
        for case in 0..200 {
            let query_words = random_name(&mut rng);
            let query = join(&mut rng, &query_words);
            let mut scorer = NameScorer::new(PreparedName::new(&query));
            let mut names = Vec::new();
            for _ in 0..20 {
                let words = random_name(&mut rng);
                names.push(join(&mut rng, &words));
            }
            for round in 0..2 {
                for name in names.iter().chain([&query]) {
                    let expected = name_similarity(&query, name);
                    let scored = scorer.score(name);
                    assert_eq!(
                        scored.to_bits(),
                        expected.to_bits(),
                        "seed {seed:#x} case {case} round {round}: {query:?} / {name:?}: {scored} {expected}"
                    );
                }
            }
        }
    }

    #[test]
    fn top_candidates_keep_the_best_per_person() {
        let ranked = |person_id: i64, score: f64| Ranked {
            score,
            birthdate_days_off: u64::MAX,
            person_id,
            candidate: Candidate {
                uuid: person_id.to_string(),
                given_name: None,
                middle_name: None,
                family_name: None,
                gender: None,
                birthdate: None,
                identifiers: Vec::new(),
                score,
                matched_by: "name".into(),
            },
        };
        let mut top = TopCandidates { limit: 2, entries: Vec::new() };
        for (id, score) in [(1, 0.8), (2, 0.9), (1, 0.95), (3, 0.85), (2, 0.76), (4, 0.8)] {
            top.offer(ranked(id, score));
        }
        let result: Vec<(i64, f64)> = top.into_sorted().iter().map(|r| (r.person_id, r.score)).collect();
        assert_eq!(result, [(1, 0.95), (2, 0.9)]);
    }

    #[test]
    fn identifiers_normalize_like_the_sql() {
        assert_eq!(normalize_identifier("mw-2020 0042"), "MW20200042");
        assert_eq!(normalize_identifier("--"), "");
        assert_eq!(date_text(Some("1990-04-12 00:00:00".into())).as_deref(), Some("1990-04-12"));
        assert_eq!(date_text(Some(String::new())), None);
    }
}
