//! Converts the text `mysqldump` writes into SQL that SQLite runs, so the SQLite backend and
//! the tests start from the real OpenMRS schema (and its seed rows) without a MySQL server.
//! The shipped `shared/sim/schema/openmrs-2.5.sqlite.sql` is this module's output for the
//! OpenMRS 2.5 dump; a test keeps it in step.
//!
//! Pure: text in, text out, no IO. Only what `mysqldump` emits is understood (`CREATE TABLE`
//! as `SHOW CREATE TABLE` prints it, `INSERT ... VALUES`); anything else is either a
//! statement a dump uses to manage its own session (skipped) or an error naming the line.
//!
//! Declared column types are kept as MySQL wrote them wherever SQLite derives the right
//! affinity from them (`int(11)`, `varchar(50)`, `datetime`, `double`), because the toolkit
//! reads them back with `PRAGMA table_info` and should see what it would see on MySQL.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use sha2::{Digest, Sha256};

/// The Liquibase bookkeeping tables of OpenMRS. Their rows record MySQL migration history,
/// which means nothing to a SQLite database, so the shipped schema leaves their rows out.
pub const LIQUIBASE_TABLES: [&str; 2] = ["liquibasechangelog", "liquibasechangeloglock"];

/// What to convert besides the schema, and what to say about the source in the header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConvertOptions {
    /// Tables whose `CREATE TABLE` is converted but whose rows are left out. Naming a table
    /// the dump does not create is an error, so a typo cannot silently ship rows.
    pub data_tables_excluded: Vec<String>,
    /// Lines placed in the header comment, after the fixed first line: where the dump came
    /// from and how to regenerate the output. Each is written behind `-- `.
    pub header_lines: Vec<String>,
}

/// Why a dump could not be converted. Every variant names the dump line (1-based) of the
/// statement or token at fault, and the table when there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DumpError {
    #[error("line {line}: {what} is not closed before the end of the dump")]
    Unterminated { line: usize, what: &'static str },
    #[error("line {line}: unexpected character {found:?}")]
    UnexpectedCharacter { line: usize, found: char },
    #[error("line {line}: invalid literal `{literal}`: {reason}")]
    InvalidLiteral {
        line: usize,
        literal: String,
        reason: &'static str,
    },
    #[error(
        "line {line}: statement not supported by the SQLite conversion (only CREATE TABLE and \
         INSERT are converted; DROP, LOCK, SET and the like are skipped): `{statement_start}`"
    )]
    UnsupportedStatement {
        line: usize,
        statement_start: String,
    },
    #[error("line {line}: table `{table}`: expected {expected}, found {found}")]
    Syntax {
        line: usize,
        table: String,
        expected: &'static str,
        found: String,
    },
    #[error(
        "line {line}: table `{table}`, column `{column}`: MySQL type `{mysql_type}` has no \
         SQLite conversion"
    )]
    UnsupportedColumnType {
        line: usize,
        table: String,
        column: String,
        mysql_type: String,
    },
    #[error("line {line}: table `{table}`: {feature} is not supported by the SQLite conversion")]
    UnsupportedFeature {
        line: usize,
        table: String,
        feature: String,
    },
    #[error("line {line}: table `{table}` is created twice (SQLite table names ignore case)")]
    DuplicateTable { line: usize, table: String },
    #[error("line {line}: table `{table}` declares column `{column}` twice")]
    DuplicateColumn {
        line: usize,
        table: String,
        column: String,
    },
    #[error("line {line}: table `{table}`: `{column}` is not a column of table `{column_table}`")]
    UnknownColumn {
        line: usize,
        table: String,
        column: String,
        column_table: String,
    },
    #[error(
        "line {line}: table `{table}`: AUTO_INCREMENT column `{column}` is not the table's only \
         primary key column, and SQLite auto-increments only an INTEGER PRIMARY KEY"
    )]
    AutoIncrementNotSolePrimaryKey {
        line: usize,
        table: String,
        column: String,
    },
    #[error(
        "line {line}: table `{table}`: foreign key `{constraint}` references table \
         `{referenced_table}`, which the dump does not create"
    )]
    ForeignKeyToUnknownTable {
        line: usize,
        table: String,
        constraint: String,
        referenced_table: String,
    },
    #[error(
        "line {line}: table `{table}`: foreign key `{constraint}` references columns that are \
         neither the primary key nor a unique key of `{referenced_table}`; SQLite rejects every \
         write to such a table with \"foreign key mismatch\""
    )]
    ForeignKeyToNonUniqueColumns {
        line: usize,
        table: String,
        constraint: String,
        referenced_table: String,
    },
    #[error("line {line}: INSERT into `{table}`, which the dump has not created before this line")]
    InsertIntoUnknownTable { line: usize, table: String },
    #[error(
        "line {line}: table `{table}`: row {row_number} has {found} values, expected {expected}"
    )]
    RowWidthMismatch {
        line: usize,
        table: String,
        row_number: usize,
        found: usize,
        expected: usize,
    },
    #[error("line {line}: table `{table}`, column `{column}`: value cannot be stored: {reason}")]
    UnrepresentableValue {
        line: usize,
        table: String,
        column: String,
        reason: String,
    },
    #[error(
        "data_tables_excluded names table `{table}`, which the dump does not create (a typo \
         would ship its rows)"
    )]
    ExcludedTableNotInDump { table: String },
}

/// Converts `dump` (the output of `mysqldump`) into one SQLite script: a header comment, then
/// `BEGIN;`, the tables with their indexes, the rows of the tables `options` selects, the
/// auto-increment counters, and `COMMIT;`. The same input always gives the same bytes.
pub fn convert_to_sqlite(dump: &str, options: &ConvertOptions) -> Result<String, DumpError> {
    let parsed = parse_dump(dump)?;
    let mut data_excluded = vec![false; parsed.tables.len()];
    for excluded in &options.data_tables_excluded {
        let index =
            parsed
                .table_index(excluded)
                .ok_or_else(|| DumpError::ExcludedTableNotInDump {
                    table: excluded.clone(),
                })?;
        data_excluded[index] = true;
    }
    check_foreign_keys(&parsed.tables)?;
    let index_names = assign_index_names(&parsed.tables);
    Ok(render(dump, options, &parsed, &data_excluded, &index_names))
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

#[derive(Debug, Clone, PartialEq, Eq)]
enum TokenKind {
    /// A bare word: keyword or unquoted identifier, as written.
    Word(String),
    /// A `backquoted` identifier, unescaped.
    QuotedIdentifier(String),
    /// A '...' or "..." literal with MySQL's escapes resolved.
    String(String),
    /// A decimal number as written, without sign.
    Number(String),
    /// 0x... or X'...'.
    Hex(Vec<u8>),
    /// The binary digits of 0b... or b'...'.
    Bits(String),
    Punct(char),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    kind: TokenKind,
    line: usize,
}

impl Token {
    fn is_word(&self, keyword: &str) -> bool {
        matches!(&self.kind, TokenKind::Word(word) if word.eq_ignore_ascii_case(keyword))
    }

    fn is_punct(&self, punct: char) -> bool {
        self.kind == TokenKind::Punct(punct)
    }

    /// How an error message shows the token.
    fn describe(&self) -> String {
        match &self.kind {
            TokenKind::Word(word) => format!("`{word}`"),
            TokenKind::QuotedIdentifier(name) => format!("identifier `{name}`"),
            TokenKind::String(text) => {
                let shown: String = text.chars().take(40).collect();
                format!("string '{shown}'")
            }
            TokenKind::Number(number) => format!("number {number}"),
            TokenKind::Hex(bytes) => format!("hex literal of {} bytes", bytes.len()),
            TokenKind::Bits(bits) => format!("bit literal b'{bits}'"),
            TokenKind::Punct(punct) => format!("`{punct}`"),
        }
    }
}

struct Lexer<'a> {
    text: &'a str,
    /// Byte offset; always on a character boundary.
    position: usize,
    line: usize,
}

fn is_word_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'$' || byte >= 0x80
}

impl<'a> Lexer<'a> {
    fn new(text: &'a str) -> Self {
        Lexer {
            text,
            position: 0,
            line: 1,
        }
    }

    fn peek_byte(&self, ahead: usize) -> Option<u8> {
        self.text.as_bytes().get(self.position + ahead).copied()
    }

    fn advance_char(&mut self) -> Option<char> {
        let character = self.text[self.position..].chars().next()?;
        self.position += character.len_utf8();
        if character == '\n' {
            self.line += 1;
        }
        Some(character)
    }

    /// The tokens up to the next `;` outside literals and comments (the `;` dropped), or
    /// `None` at the end of the dump. An empty statement (a lone `;`) gives an empty vector.
    fn next_statement(&mut self) -> Result<Option<Vec<Token>>, DumpError> {
        let mut tokens = Vec::new();
        loop {
            match self.next_token()? {
                None if tokens.is_empty() => return Ok(None),
                None => return Ok(Some(tokens)),
                Some(token) if token.is_punct(';') => return Ok(Some(tokens)),
                Some(token) => tokens.push(token),
            }
        }
    }

    fn next_token(&mut self) -> Result<Option<Token>, DumpError> {
        self.skip_whitespace_and_comments()?;
        let line = self.line;
        let Some(byte) = self.peek_byte(0) else {
            return Ok(None);
        };
        let kind = match byte {
            b'\'' | b'"' => TokenKind::String(self.quoted(byte as char, "string literal", true)?),
            b'`' => TokenKind::QuotedIdentifier(self.quoted('`', "quoted identifier", false)?),
            b'0'..=b'9' => self.number_or_word()?,
            _ if is_word_byte(byte) => self.word_or_prefixed_literal()?,
            _ if byte.is_ascii_graphic() => {
                self.advance_char();
                TokenKind::Punct(byte as char)
            }
            _ => {
                return Err(DumpError::UnexpectedCharacter {
                    line,
                    found: self.text[self.position..].chars().next().unwrap_or('\0'),
                });
            }
        };
        Ok(Some(Token { kind, line }))
    }

    fn skip_whitespace_and_comments(&mut self) -> Result<(), DumpError> {
        loop {
            match (self.peek_byte(0), self.peek_byte(1)) {
                (Some(b' ' | b'\t' | b'\r' | b'\n' | 0x0b | 0x0c), _) => {
                    self.advance_char();
                }
                (Some(b'#'), _) => self.skip_to_end_of_line(),
                // MySQL reads `--` as a comment only when whitespace follows; `5--3` is
                // arithmetic.
                (Some(b'-'), Some(b'-'))
                    if matches!(self.peek_byte(2), None | Some(b' ' | b'\t' | b'\r' | b'\n')) =>
                {
                    self.skip_to_end_of_line()
                }
                // `/*!40101 SET ... */` conditional comments only tune the MySQL session
                // (charset, checks, DISABLE KEYS), so they are skipped like plain comments.
                (Some(b'/'), Some(b'*')) => {
                    let line = self.line;
                    self.advance_char();
                    self.advance_char();
                    loop {
                        match (self.peek_byte(0), self.peek_byte(1)) {
                            (Some(b'*'), Some(b'/')) => {
                                self.advance_char();
                                self.advance_char();
                                break;
                            }
                            (Some(_), _) => {
                                self.advance_char();
                            }
                            (None, _) => {
                                return Err(DumpError::Unterminated {
                                    line,
                                    what: "/* comment",
                                });
                            }
                        }
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    fn skip_to_end_of_line(&mut self) {
        while let Some(character) = self.advance_char() {
            if character == '\n' {
                return;
            }
        }
    }

    /// Reads a literal or identifier enclosed in `quote`, which may be doubled inside.
    /// `backslash_escapes` applies MySQL's string escapes (identifiers have none).
    fn quoted(
        &mut self,
        quote: char,
        what: &'static str,
        backslash_escapes: bool,
    ) -> Result<String, DumpError> {
        let line = self.line;
        self.advance_char();
        let mut value = String::new();
        loop {
            let Some(character) = self.advance_char() else {
                return Err(DumpError::Unterminated { line, what });
            };
            if character == quote {
                if self.peek_byte(0) == Some(quote as u8) {
                    self.advance_char();
                    value.push(quote);
                    continue;
                }
                return Ok(value);
            }
            if character == '\\' && backslash_escapes {
                let Some(escaped) = self.advance_char() else {
                    return Err(DumpError::Unterminated { line, what });
                };
                let resolved = match escaped {
                    '0' => '\0',
                    'b' => '\u{8}',
                    'n' => '\n',
                    'r' => '\r',
                    't' => '\t',
                    'Z' => '\u{1a}',
                    // MySQL keeps the backslash of `\%` and `\_` so LIKE patterns survive.
                    '%' | '_' => {
                        value.push('\\');
                        escaped
                    }
                    other => other,
                };
                value.push(resolved);
                continue;
            }
            value.push(character);
        }
    }

    fn scan_while(&mut self, accept: impl Fn(u8) -> bool) -> &'a str {
        let start = self.position;
        while self.peek_byte(0).is_some_and(&accept) {
            self.advance_char();
        }
        &self.text[start..self.position]
    }

    fn number_or_word(&mut self) -> Result<TokenKind, DumpError> {
        let start = self.position;
        let line = self.line;
        let prefixed = match (self.peek_byte(0), self.peek_byte(1)) {
            (Some(b'0'), Some(b'x')) => Some(16),
            (Some(b'0'), Some(b'b')) => Some(2),
            _ => None,
        };
        if let Some(radix) = prefixed {
            self.advance_char();
            self.advance_char();
            let digits = self.scan_while(|byte| (byte as char).is_digit(radix));
            if !digits.is_empty() && !self.peek_byte(0).is_some_and(is_word_byte) {
                return if radix == 16 {
                    // 0x literals of odd length are padded on the left, as MySQL does.
                    let padded = if digits.len() % 2 == 1 {
                        format!("0{digits}")
                    } else {
                        digits.to_string()
                    };
                    Ok(TokenKind::Hex(decode_hex(&padded, line)?))
                } else {
                    Ok(TokenKind::Bits(digits.to_string()))
                };
            }
            self.position = start;
            return Ok(self.word());
        }
        self.scan_while(|byte| byte.is_ascii_digit());
        if self.peek_byte(0) == Some(b'.') {
            self.advance_char();
            self.scan_while(|byte| byte.is_ascii_digit());
        }
        if matches!(self.peek_byte(0), Some(b'e' | b'E')) {
            let signed = matches!(self.peek_byte(1), Some(b'+' | b'-'));
            let digit_at = if signed { 2 } else { 1 };
            if self
                .peek_byte(digit_at)
                .is_some_and(|byte| byte.is_ascii_digit())
            {
                for _ in 0..digit_at {
                    self.advance_char();
                }
                self.scan_while(|byte| byte.is_ascii_digit());
            }
        }
        if self.peek_byte(0).is_some_and(is_word_byte) {
            // MySQL identifiers may start with digits (`1st_table`).
            self.position = start;
            return Ok(self.word());
        }
        Ok(TokenKind::Number(
            self.text[start..self.position].to_string(),
        ))
    }

    fn word(&mut self) -> TokenKind {
        TokenKind::Word(self.scan_while(is_word_byte).to_string())
    }

    fn word_or_prefixed_literal(&mut self) -> Result<TokenKind, DumpError> {
        let line = self.line;
        let word = self.scan_while(is_word_byte);
        if self.peek_byte(0) != Some(b'\'') {
            return Ok(TokenKind::Word(word.to_string()));
        }
        match word {
            "x" | "X" => {
                let digits = self.quoted('\'', "hex literal", false)?;
                if digits.len() % 2 == 1 {
                    return Err(DumpError::InvalidLiteral {
                        line,
                        literal: format!("X'{digits}'"),
                        reason: "odd number of hex digits",
                    });
                }
                Ok(TokenKind::Hex(decode_hex(&digits, line)?))
            }
            "b" | "B" => {
                let digits = self.quoted('\'', "bit literal", false)?;
                if !digits.bytes().all(|byte| byte == b'0' || byte == b'1') {
                    return Err(DumpError::InvalidLiteral {
                        line,
                        literal: format!("b'{digits}'"),
                        reason: "bit literals hold only 0 and 1",
                    });
                }
                Ok(TokenKind::Bits(digits))
            }
            // N'...' is a national-charset string: just a string here.
            "n" | "N" => Ok(TokenKind::String(self.quoted(
                '\'',
                "string literal",
                true,
            )?)),
            // `_binary'...'` and other charset introducers: the parser pairs the word with
            // the string that follows.
            _ => Ok(TokenKind::Word(word.to_string())),
        }
    }
}

fn decode_hex(digits: &str, line: usize) -> Result<Vec<u8>, DumpError> {
    let invalid = || DumpError::InvalidLiteral {
        line,
        literal: format!("X'{digits}'"),
        reason: "not a hex digit",
    };
    digits
        .as_bytes()
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).map_err(|_| invalid())?;
            u8::from_str_radix(text, 16).map_err(|_| invalid())
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Model of the dump

/// How values of a column are written as SQLite literals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueKind {
    /// Character types: strings stay text.
    Text,
    /// Binary types: strings become blobs, as MySQL stores their bytes.
    Blob,
    /// `bit(n)`: strings and bit literals become integers, as MySQL compares them.
    Bit,
    /// Numbers, dates and times: literals are copied, affinity does the rest.
    Other,
}

#[derive(Debug)]
/// A column as the dump declares it (a parse of MySQL DDL, not the live schema of `feedsync_core::schema`).
struct DumpColumn {
    name: String,
    /// The SQLite declared type. The auto-increment key ignores it: it must be declared
    /// `INTEGER` to become SQLite's rowid.
    declared_type: String,
    value_kind: ValueKind,
    not_null: bool,
    /// Rendered SQLite default expression.
    default: Option<String>,
    auto_increment: bool,
    /// Members of an `enum(...)`, enforced with a CHECK constraint.
    enum_members: Option<Vec<String>>,
}

#[derive(Debug)]
struct KeyPart {
    column: String,
    descending: bool,
}

#[derive(Debug)]
struct Key {
    /// The MySQL key name; the SQLite index name is decided later, across the whole dump.
    name: String,
    unique: bool,
    parts: Vec<KeyPart>,
}

#[derive(Debug)]
struct ForeignKey {
    constraint_name: Option<String>,
    columns: Vec<String>,
    referenced_table: String,
    referenced_columns: Vec<String>,
    on_delete: Option<String>,
    on_update: Option<String>,
    line: usize,
}

#[derive(Debug)]
/// A table as the dump declares it, with what SQLite needs to rebuild it.
struct DumpTable {
    name: String,
    line: usize,
    columns: Vec<DumpColumn>,
    primary_key: Vec<String>,
    keys: Vec<Key>,
    foreign_keys: Vec<ForeignKey>,
    /// The table option `AUTO_INCREMENT=n`: the next id MySQL would hand out.
    auto_increment_next: Option<u64>,
}

impl DumpTable {
    fn column_index(&self, name: &str) -> Option<usize> {
        self.columns
            .iter()
            .position(|column| column.name.eq_ignore_ascii_case(name))
    }

    /// The column that becomes `INTEGER PRIMARY KEY AUTOINCREMENT`, if any.
    fn rowid_column(&self) -> Option<usize> {
        self.columns.iter().position(|column| column.auto_increment)
    }
}

#[derive(Debug)]
struct InsertBatch {
    table: usize,
    /// `INSERT`, `INSERT OR IGNORE` or `INSERT OR REPLACE`.
    verb: &'static str,
    column_list: Option<Vec<String>>,
    /// Each row rendered as `(v1,v2,...)`.
    rows: Vec<String>,
}

#[derive(Debug, Default)]
struct ParsedDump {
    tables: Vec<DumpTable>,
    inserts: Vec<InsertBatch>,
}

impl ParsedDump {
    fn table_index(&self, name: &str) -> Option<usize> {
        self.tables
            .iter()
            .position(|table| table.name.eq_ignore_ascii_case(name))
    }
}

// ---------------------------------------------------------------------------------------------
// Parser

fn parse_dump(dump: &str) -> Result<ParsedDump, DumpError> {
    let mut lexer = Lexer::new(dump);
    let mut parsed = ParsedDump::default();
    while let Some(tokens) = lexer.next_statement()? {
        let Some(first) = tokens.first() else {
            continue;
        };
        let second_is = |keyword: &str| tokens.get(1).is_some_and(|token| token.is_word(keyword));
        if first.is_word("CREATE") && (second_is("TABLE") || second_is("TEMPORARY")) {
            let table = parse_create_table(&tokens)?;
            if parsed.table_index(&table.name).is_some() {
                return Err(DumpError::DuplicateTable {
                    line: table.line,
                    table: table.name,
                });
            }
            parsed.tables.push(table);
        } else if first.is_word("INSERT") || first.is_word("REPLACE") {
            let batch = parse_insert(&tokens, &parsed)?;
            parsed.inserts.push(batch);
        } else if is_skipped_statement(&tokens) {
            continue;
        } else {
            let statement_start: Vec<String> = tokens
                .iter()
                .take(6)
                .map(|token| match &token.kind {
                    TokenKind::Word(word) => word.clone(),
                    TokenKind::QuotedIdentifier(name) => format!("`{name}`"),
                    _ => token.describe(),
                })
                .collect();
            return Err(DumpError::UnsupportedStatement {
                line: first.line,
                statement_start: statement_start.join(" "),
            });
        }
    }
    Ok(parsed)
}

/// Statements a dump uses to manage the MySQL session or to clear the way for its own
/// CREATE TABLEs. The converted script starts from an empty database in one transaction, so
/// none of them has anything to do.
fn is_skipped_statement(tokens: &[Token]) -> bool {
    let first = &tokens[0];
    let second_is = |keyword: &str| tokens.get(1).is_some_and(|token| token.is_word(keyword));
    let keys_toggle = tokens.len() == 5
        && first.is_word("ALTER")
        && second_is("TABLE")
        && (tokens[3].is_word("DISABLE") || tokens[3].is_word("ENABLE"))
        && tokens[4].is_word("KEYS");
    ["DROP", "SET", "LOCK", "UNLOCK", "USE", "BEGIN", "COMMIT"]
        .iter()
        .any(|keyword| first.is_word(keyword))
        || (first.is_word("START") && second_is("TRANSACTION"))
        || (first.is_word("CREATE") && (second_is("DATABASE") || second_is("SCHEMA")))
        || keys_toggle
}

/// A position in one statement's tokens, with the context error messages need.
struct Cursor<'t> {
    tokens: &'t [Token],
    position: usize,
    table: String,
    /// Line to report when the tokens run out.
    end_line: usize,
}

impl<'t> Cursor<'t> {
    fn new(tokens: &'t [Token], table: &str, end_line: usize) -> Self {
        Cursor {
            tokens,
            position: 0,
            table: table.to_string(),
            end_line,
        }
    }

    fn peek(&self) -> Option<&'t Token> {
        self.tokens.get(self.position)
    }

    fn next(&mut self) -> Option<&'t Token> {
        let token = self.tokens.get(self.position)?;
        self.position += 1;
        Some(token)
    }

    fn at_end(&self) -> bool {
        self.position >= self.tokens.len()
    }

    fn line(&self) -> usize {
        self.peek().map_or(self.end_line, |token| token.line)
    }

    fn peek_word(&self, keyword: &str) -> bool {
        self.peek().is_some_and(|token| token.is_word(keyword))
    }

    fn peek_punct(&self, punct: char) -> bool {
        self.peek().is_some_and(|token| token.is_punct(punct))
    }

    fn eat_word(&mut self, keyword: &str) -> bool {
        let found = self.peek_word(keyword);
        if found {
            self.position += 1;
        }
        found
    }

    fn eat_punct(&mut self, punct: char) -> bool {
        let found = self.peek_punct(punct);
        if found {
            self.position += 1;
        }
        found
    }

    fn syntax_error(&self, expected: &'static str) -> DumpError {
        DumpError::Syntax {
            line: self.line(),
            table: self.table.clone(),
            expected,
            found: self
                .peek()
                .map_or_else(|| "end of statement".to_string(), Token::describe),
        }
    }

    fn expect_word(&mut self, keyword: &'static str) -> Result<(), DumpError> {
        if self.eat_word(keyword) {
            Ok(())
        } else {
            Err(self.syntax_error(keyword))
        }
    }

    fn expect_punct(&mut self, punct: char, expected: &'static str) -> Result<(), DumpError> {
        if self.eat_punct(punct) {
            Ok(())
        } else {
            Err(self.syntax_error(expected))
        }
    }

    fn expect_end(&self, expected: &'static str) -> Result<(), DumpError> {
        if self.at_end() {
            Ok(())
        } else {
            Err(self.syntax_error(expected))
        }
    }

    fn identifier(&mut self, expected: &'static str) -> Result<String, DumpError> {
        match self.peek().map(|token| &token.kind) {
            Some(TokenKind::QuotedIdentifier(name) | TokenKind::Word(name)) => {
                self.position += 1;
                Ok(name.clone())
            }
            _ => Err(self.syntax_error(expected)),
        }
    }

    /// A table name, dropping a `database.` qualifier: the converted script has one schema.
    fn table_name(&mut self) -> Result<String, DumpError> {
        let name = self.identifier("a table name")?;
        if self.eat_punct('.') {
            return self.identifier("a table name after `.`");
        }
        Ok(name)
    }

    /// `(a, b, ...)`.
    fn identifier_list(&mut self) -> Result<Vec<String>, DumpError> {
        self.expect_punct('(', "`(` before a column list")?;
        let mut names = vec![self.identifier("a column name")?];
        while self.eat_punct(',') {
            names.push(self.identifier("a column name")?);
        }
        self.expect_punct(')', "`)` after a column list")?;
        Ok(names)
    }

    fn unsupported(&self, feature: impl Into<String>) -> DumpError {
        DumpError::UnsupportedFeature {
            line: self.line(),
            table: self.table.clone(),
            feature: feature.into(),
        }
    }
}

fn parse_create_table(tokens: &[Token]) -> Result<DumpTable, DumpError> {
    let line = tokens[0].line;
    let end_line = tokens.last().map_or(line, |token| token.line);
    let mut cursor = Cursor::new(tokens, "", end_line);
    cursor.expect_word("CREATE")?;
    cursor.eat_word("TEMPORARY");
    cursor.expect_word("TABLE")?;
    if cursor.eat_word("IF") {
        cursor.expect_word("NOT")?;
        cursor.expect_word("EXISTS")?;
    }
    let name = cursor.table_name()?;
    cursor.table = name.clone();
    if cursor.peek_word("LIKE") {
        return Err(cursor.unsupported("CREATE TABLE ... LIKE"));
    }
    cursor.expect_punct('(', "`(` opening the column definitions")?;
    let definitions = split_definitions(&mut cursor)?;
    let mut table = DumpTable {
        name,
        line,
        columns: Vec::new(),
        primary_key: Vec::new(),
        keys: Vec::new(),
        foreign_keys: Vec::new(),
        auto_increment_next: None,
    };
    for definition in definitions {
        parse_definition(definition, &mut table, end_line)?;
    }
    parse_table_options(&mut cursor, &mut table)?;
    finish_table(&mut table)?;
    Ok(table)
}

/// Splits the tokens between the definition list's parentheses at top-level commas, and
/// leaves the cursor after the closing parenthesis.
fn split_definitions<'t>(cursor: &mut Cursor<'t>) -> Result<Vec<&'t [Token]>, DumpError> {
    let tokens = cursor.tokens;
    let mut definitions = Vec::new();
    let mut start = cursor.position;
    let mut depth = 0usize;
    loop {
        let Some(token) = cursor.next() else {
            return Err(cursor.syntax_error("`)` closing the column definitions"));
        };
        match &token.kind {
            TokenKind::Punct('(') => depth += 1,
            TokenKind::Punct(')') if depth > 0 => depth -= 1,
            TokenKind::Punct(')') => {
                definitions.push(&tokens[start..cursor.position - 1]);
                break;
            }
            TokenKind::Punct(',') if depth == 0 => {
                definitions.push(&tokens[start..cursor.position - 1]);
                start = cursor.position;
            }
            _ => {}
        }
    }
    if definitions.iter().any(|definition| definition.is_empty()) {
        return Err(cursor.syntax_error("a column or key definition between commas"));
    }
    Ok(definitions)
}

fn parse_definition(tokens: &[Token], table: &mut DumpTable, end_line: usize) -> Result<(), DumpError> {
    let mut cursor = Cursor::new(tokens, &table.name, end_line);
    let constraint_name = if cursor.eat_word("CONSTRAINT") {
        if cursor.peek_word("PRIMARY")
            || cursor.peek_word("UNIQUE")
            || cursor.peek_word("FOREIGN")
            || cursor.peek_word("CHECK")
        {
            None
        } else {
            Some(cursor.identifier("a constraint name")?)
        }
    } else {
        None
    };
    if cursor.eat_word("PRIMARY") {
        cursor.expect_word("KEY")?;
        skip_index_type(&mut cursor)?;
        let parts = key_parts(&mut cursor)?;
        skip_index_options(&mut cursor)?;
        cursor.expect_end("the end of the PRIMARY KEY definition")?;
        if !table.primary_key.is_empty() {
            return Err(cursor.unsupported("a second PRIMARY KEY"));
        }
        table.primary_key = parts.into_iter().map(|part| part.column).collect();
        return Ok(());
    }
    if cursor.peek_word("FOREIGN") {
        cursor.next();
        cursor.expect_word("KEY")?;
        // MySQL lets FOREIGN KEY carry an index name of its own; SQLite has no use for it.
        let index_name = if cursor.peek_punct('(') {
            None
        } else {
            Some(cursor.identifier("a foreign key name or `(`")?)
        };
        let line = cursor.line();
        let columns = cursor.identifier_list()?;
        cursor.expect_word("REFERENCES")?;
        let referenced_table = cursor.table_name()?;
        let referenced_columns = cursor.identifier_list()?;
        let mut foreign_key = ForeignKey {
            constraint_name: constraint_name.or(index_name),
            columns,
            referenced_table,
            referenced_columns,
            on_delete: None,
            on_update: None,
            line,
        };
        if cursor.eat_word("MATCH") {
            return Err(cursor.unsupported("FOREIGN KEY ... MATCH"));
        }
        while cursor.eat_word("ON") {
            let is_delete = if cursor.eat_word("DELETE") {
                true
            } else {
                cursor.expect_word("UPDATE")?;
                false
            };
            let action = referential_action(&mut cursor)?;
            if is_delete {
                foreign_key.on_delete = Some(action);
            } else {
                foreign_key.on_update = Some(action);
            }
        }
        cursor.expect_end("the end of the FOREIGN KEY definition")?;
        if foreign_key.columns.len() != foreign_key.referenced_columns.len() {
            return Err(cursor.unsupported(
                "a foreign key whose column count differs from the referenced column count",
            ));
        }
        table.foreign_keys.push(foreign_key);
        return Ok(());
    }
    if cursor.peek_word("CHECK") {
        // The expression is MySQL's; translating expressions is out of scope.
        return Err(cursor.unsupported("a CHECK constraint"));
    }
    if cursor.peek_word("SPATIAL") {
        return Err(cursor.unsupported("a SPATIAL index"));
    }
    let unique = cursor.eat_word("UNIQUE");
    // A FULLTEXT key becomes a plain index: SQLite has full-text search only in FTS virtual
    // tables, and the toolkit needs just the lookup path.
    let fulltext = !unique && cursor.eat_word("FULLTEXT");
    if unique || fulltext || cursor.peek_word("KEY") || cursor.peek_word("INDEX") {
        let _ = cursor.eat_word("KEY") || cursor.eat_word("INDEX");
        let name = if cursor.peek_punct('(') || cursor.peek_word("USING") {
            None
        } else {
            Some(cursor.identifier("a key name")?)
        };
        skip_index_type(&mut cursor)?;
        let parts = key_parts(&mut cursor)?;
        skip_index_options(&mut cursor)?;
        cursor.expect_end("the end of the key definition")?;
        // MySQL names an unnamed key after its first column.
        let name = name
            .or(constraint_name)
            .unwrap_or_else(|| parts[0].column.clone());
        table.keys.push(Key {
            name,
            unique,
            parts,
        });
        return Ok(());
    }
    if constraint_name.is_some() {
        return Err(cursor.syntax_error("PRIMARY KEY, UNIQUE or FOREIGN KEY after CONSTRAINT"));
    }
    parse_column(&mut cursor, table)
}

fn referential_action(cursor: &mut Cursor<'_>) -> Result<String, DumpError> {
    if cursor.eat_word("CASCADE") {
        Ok("CASCADE".to_string())
    } else if cursor.eat_word("RESTRICT") {
        Ok("RESTRICT".to_string())
    } else if cursor.eat_word("SET") {
        if cursor.eat_word("NULL") {
            Ok("SET NULL".to_string())
        } else {
            cursor.expect_word("DEFAULT")?;
            Ok("SET DEFAULT".to_string())
        }
    } else if cursor.eat_word("NO") {
        cursor.expect_word("ACTION")?;
        Ok("NO ACTION".to_string())
    } else {
        Err(cursor.syntax_error("CASCADE, RESTRICT, SET NULL, SET DEFAULT or NO ACTION"))
    }
}

/// `USING BTREE` / `USING HASH`: a storage detail SQLite does not have.
fn skip_index_type(cursor: &mut Cursor<'_>) -> Result<(), DumpError> {
    if cursor.eat_word("USING") {
        cursor.identifier("an index type")?;
    }
    Ok(())
}

/// Index options after the column list: none change what the index contains.
fn skip_index_options(cursor: &mut Cursor<'_>) -> Result<(), DumpError> {
    loop {
        if cursor.eat_word("USING") {
            cursor.identifier("an index type")?;
        } else if cursor.eat_word("COMMENT") {
            match cursor.next().map(|token| &token.kind) {
                Some(TokenKind::String(_)) => {}
                _ => return Err(cursor.syntax_error("a comment string")),
            }
        } else if cursor.eat_word("KEY_BLOCK_SIZE") {
            cursor.eat_punct('=');
            cursor.next();
        } else if cursor.eat_word("VISIBLE") || cursor.eat_word("INVISIBLE") {
        } else {
            return Ok(());
        }
    }
}

/// `(col, col(255) DESC, ...)`. Prefix lengths are dropped: SQLite indexes whole values.
fn key_parts(cursor: &mut Cursor<'_>) -> Result<Vec<KeyPart>, DumpError> {
    cursor.expect_punct('(', "`(` before the key's columns")?;
    let mut parts = Vec::new();
    loop {
        if cursor.peek_punct('(') {
            return Err(cursor.unsupported("a functional key part"));
        }
        let column = cursor.identifier("a key column")?;
        if cursor.eat_punct('(') {
            match cursor.next().map(|token| &token.kind) {
                Some(TokenKind::Number(_)) => {}
                _ => return Err(cursor.syntax_error("a prefix length")),
            }
            cursor.expect_punct(')', "`)` after a prefix length")?;
        }
        let descending = if cursor.eat_word("DESC") {
            true
        } else {
            cursor.eat_word("ASC");
            false
        };
        parts.push(KeyPart { column, descending });
        if !cursor.eat_punct(',') {
            break;
        }
    }
    cursor.expect_punct(')', "`)` after the key's columns")?;
    Ok(parts)
}

#[derive(Debug)]
enum TypeArgument {
    Number(String),
    Text(String),
}

fn parse_column(cursor: &mut Cursor<'_>, table: &mut DumpTable) -> Result<(), DumpError> {
    let line = cursor.line();
    let name = cursor.identifier("a column name or key definition")?;
    if table.column_index(&name).is_some() {
        return Err(DumpError::DuplicateColumn {
            line,
            table: table.name.clone(),
            column: name,
        });
    }
    let base = cursor.identifier("a column type")?.to_ascii_lowercase();
    // `double precision` is `double`; the other multi-word spellings never leave
    // SHOW CREATE TABLE, which is what mysqldump prints.
    if base == "double" {
        cursor.eat_word("PRECISION");
    }
    let mut arguments = Vec::new();
    if cursor.eat_punct('(') {
        loop {
            match cursor.next().map(|token| &token.kind) {
                Some(TokenKind::Number(number)) => {
                    arguments.push(TypeArgument::Number(number.clone()))
                }
                Some(TokenKind::String(text)) => arguments.push(TypeArgument::Text(text.clone())),
                _ => {
                    cursor.position = cursor.position.saturating_sub(1);
                    return Err(cursor.syntax_error("a type argument"));
                }
            }
            if !cursor.eat_punct(',') {
                break;
            }
        }
        cursor.expect_punct(')', "`)` after the type arguments")?;
    }
    let mysql_type = describe_mysql_type(&base, &arguments);
    let (declared_type, value_kind, enum_members) = sqlite_column_type(&base, &arguments)
        .ok_or_else(|| DumpError::UnsupportedColumnType {
            line,
            table: table.name.clone(),
            column: name.clone(),
            mysql_type,
        })?;
    let mut column = DumpColumn {
        name,
        declared_type,
        value_kind,
        not_null: false,
        default: None,
        auto_increment: false,
        enum_members,
    };
    while !cursor.at_end() {
        if cursor.eat_word("UNSIGNED") || cursor.eat_word("SIGNED") || cursor.eat_word("ZEROFILL") {
            // SQLite integers are all signed 64-bit and its type names take no modifiers
            // after the length; MySQL's range checks have no SQLite counterpart.
        } else if cursor.eat_word("BINARY") {
            // `varchar(n) BINARY` picks a binary collation, not a binary type.
        } else if cursor.eat_word("CHARACTER") {
            cursor.expect_word("SET")?;
            cursor.identifier("a character set name")?;
        } else if cursor.eat_word("CHARSET") || cursor.eat_word("COLLATE") {
            cursor.identifier("a character set or collation name")?;
        } else if cursor.eat_word("NOT") {
            cursor.expect_word("NULL")?;
            column.not_null = true;
        } else if cursor.eat_word("NULL") {
            column.not_null = false;
        } else if cursor.eat_word("DEFAULT") {
            column.default = Some(parse_default(cursor, &column)?);
        } else if cursor.eat_word("AUTO_INCREMENT") {
            column.auto_increment = true;
        } else if cursor.eat_word("ON") {
            // SQLite has no ON UPDATE for columns; emulating it would need a trigger the
            // toolkit does not expect, and every writer it has sets the column itself.
            cursor.expect_word("UPDATE")?;
            current_timestamp(cursor).ok_or_else(|| cursor.syntax_error("CURRENT_TIMESTAMP"))?;
        } else if cursor.eat_word("COMMENT") {
            match cursor.next().map(|token| &token.kind) {
                Some(TokenKind::String(_)) => {}
                _ => return Err(cursor.syntax_error("a comment string")),
            }
        } else if cursor.eat_word("PRIMARY") {
            cursor.expect_word("KEY")?;
            table.primary_key = vec![column.name.clone()];
        } else if cursor.peek_word("KEY") {
            // A bare KEY on a column means PRIMARY KEY in MySQL.
            cursor.next();
            table.primary_key = vec![column.name.clone()];
        } else if cursor.eat_word("UNIQUE") {
            cursor.eat_word("KEY");
            table.keys.push(Key {
                name: column.name.clone(),
                unique: true,
                parts: vec![KeyPart {
                    column: column.name.clone(),
                    descending: false,
                }],
            });
        } else if cursor.eat_word("COLUMN_FORMAT") || cursor.eat_word("STORAGE") {
            cursor.identifier("a column format or storage kind")?;
        } else if cursor.eat_word("VISIBLE") || cursor.eat_word("INVISIBLE") {
        } else if cursor.peek_word("GENERATED") || cursor.peek_word("AS") {
            return Err(cursor.unsupported(format!("generated column `{}`", column.name)));
        } else if cursor.peek_word("CHECK") || cursor.peek_word("REFERENCES") {
            return Err(cursor.unsupported(format!(
                "an inline CHECK or REFERENCES on column `{}`",
                column.name
            )));
        } else {
            return Err(cursor.syntax_error("a column attribute"));
        }
    }
    table.columns.push(column);
    Ok(())
}

/// `CURRENT_TIMESTAMP`, `CURRENT_TIMESTAMP(6)`, `NOW()` and the other spellings.
fn current_timestamp(cursor: &mut Cursor<'_>) -> Option<()> {
    let spellings = ["CURRENT_TIMESTAMP", "NOW", "LOCALTIME", "LOCALTIMESTAMP"];
    if !spellings.iter().any(|spelling| cursor.peek_word(spelling)) {
        return None;
    }
    cursor.next();
    if cursor.eat_punct('(') {
        if matches!(
            cursor.peek().map(|token| &token.kind),
            Some(TokenKind::Number(_))
        ) {
            cursor.next();
        }
        if !cursor.eat_punct(')') {
            return None;
        }
    }
    Some(())
}

fn parse_default(cursor: &mut Cursor<'_>, column: &DumpColumn) -> Result<String, DumpError> {
    if current_timestamp(cursor).is_some() {
        return Ok("CURRENT_TIMESTAMP".to_string());
    }
    if cursor.peek_punct('(') {
        return Err(cursor.unsupported(format!(
            "the expression default of column `{}`",
            column.name
        )));
    }
    let line = cursor.line();
    let literal = parse_literal(cursor)?;
    let rendered = render_literal(&literal, column.value_kind).map_err(|reason| {
        DumpError::UnrepresentableValue {
            line,
            table: cursor.table.clone(),
            column: column.name.clone(),
            reason,
        }
    })?;
    // SQLite accepts only a literal after DEFAULT; an expression needs parentheses.
    Ok(if rendered.starts_with("CAST") {
        format!("({rendered})")
    } else {
        rendered
    })
}

/// The column type as the dump spelled it, for error messages.
fn describe_mysql_type(base: &str, arguments: &[TypeArgument]) -> String {
    if arguments.is_empty() {
        return base.to_string();
    }
    let rendered: Vec<String> = arguments
        .iter()
        .map(|argument| match argument {
            TypeArgument::Number(number) => number.clone(),
            TypeArgument::Text(text) => quote_text(text),
        })
        .collect();
    format!("{base}({})", rendered.join(","))
}

/// The SQLite declared type for a MySQL type, how its values are written, and the members of
/// an enum; `None` when there is no faithful conversion.
///
/// SQLite derives affinity from substrings of the declared type ("INT" -> INTEGER,
/// "CHAR"/"TEXT" -> TEXT, "BLOB" -> BLOB, "DOUB"/"FLOA"/"REAL" -> REAL, else NUMERIC), so the
/// MySQL spelling already gives the right affinity and is kept; only spellings SQLite cannot
/// parse (`enum(...)`, `set(...)`) or that would pick a wrong affinity are replaced.
fn sqlite_column_type(
    base: &str,
    arguments: &[TypeArgument],
) -> Option<(String, ValueKind, Option<Vec<String>>)> {
    let numeric_arguments: Option<Vec<&str>> = arguments
        .iter()
        .map(|argument| match argument {
            TypeArgument::Number(number) => Some(number.as_str()),
            TypeArgument::Text(_) => None,
        })
        .collect();
    let with_arguments = |name: &str| -> Option<String> {
        let numbers = numeric_arguments.as_ref()?;
        Some(if numbers.is_empty() {
            name.to_string()
        } else {
            format!("{name}({})", numbers.join(","))
        })
    };
    let converted = match base {
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "double"
        | "float" | "real" | "decimal" | "numeric" | "date" | "datetime" | "time" | "timestamp"
        | "year" => (with_arguments(base)?, ValueKind::Other, None),
        "dec" | "fixed" => (with_arguments("decimal")?, ValueKind::Other, None),
        // MySQL writes BOOLEAN as tinyint(1) itself.
        "bool" | "boolean" if arguments.is_empty() => {
            ("tinyint(1)".to_string(), ValueKind::Other, None)
        }
        "char" | "varchar" | "nchar" | "nvarchar" | "tinytext" | "text" | "mediumtext"
        | "longtext" => (with_arguments(base)?, ValueKind::Text, None),
        // `binary(16)` gets NUMERIC affinity in SQLite, which leaves blobs untouched; every
        // value for these columns is written as a blob, so the MySQL name is kept.
        "tinyblob" | "blob" | "mediumblob" | "longblob" | "binary" | "varbinary" => {
            (with_arguments(base)?, ValueKind::Blob, None)
        }
        "bit" => (with_arguments(base)?, ValueKind::Bit, None),
        // SQLite cannot parse `enum('a','b')` as a type name; the members move to a CHECK.
        "enum" => {
            let members: Option<Vec<String>> = arguments
                .iter()
                .map(|argument| match argument {
                    TypeArgument::Text(text) => Some(text.clone()),
                    TypeArgument::Number(_) => None,
                })
                .collect();
            ("text".to_string(), ValueKind::Text, Some(members?))
        }
        // A set value is a comma-separated list of members; a CHECK for that would be
        // unreadable, and the toolkit treats it as text anyway.
        "set" => ("text".to_string(), ValueKind::Text, None),
        // NUMERIC affinity turns only number-like documents into numbers, which JSON reads
        // the same.
        "json" if arguments.is_empty() => ("json".to_string(), ValueKind::Text, None),
        _ => return None,
    };
    Some(converted)
}

fn parse_table_options(cursor: &mut Cursor<'_>, table: &mut DumpTable) -> Result<(), DumpError> {
    // Engine, charset, collation, comment, row format: storage details of MySQL. Only the
    // auto-increment counter carries meaning SQLite can keep.
    while let Some(token) = cursor.next() {
        if token.is_word("AUTO_INCREMENT") {
            cursor.eat_punct('=');
            match cursor.next().map(|token| &token.kind) {
                Some(TokenKind::Number(number)) => {
                    let next = number
                        .parse::<u64>()
                        .map_err(|_| cursor.syntax_error("an AUTO_INCREMENT counter"))?;
                    table.auto_increment_next = Some(next);
                }
                _ => return Err(cursor.syntax_error("an AUTO_INCREMENT counter")),
            }
        } else if token.is_word("SELECT") || token.is_word("AS") {
            return Err(cursor.unsupported("CREATE TABLE ... SELECT"));
        }
    }
    Ok(())
}

/// Checks what only the whole table shows, and applies MySQL's implicit rules.
fn finish_table(table: &mut DumpTable) -> Result<(), DumpError> {
    let unknown = |column: &str| DumpError::UnknownColumn {
        line: table.line,
        table: table.name.clone(),
        column: column.to_string(),
        column_table: table.name.clone(),
    };
    for column in &table.primary_key {
        if table.column_index(column).is_none() {
            return Err(unknown(column));
        }
    }
    for key in &table.keys {
        for part in &key.parts {
            if table.column_index(&part.column).is_none() {
                return Err(unknown(&part.column));
            }
        }
    }
    for foreign_key in &table.foreign_keys {
        for column in &foreign_key.columns {
            if table.column_index(column).is_none() {
                return Err(unknown(column));
            }
        }
    }
    // MySQL makes primary key columns NOT NULL whatever the definition says; SQLite would
    // accept NULLs in a non-integer primary key.
    for index in 0..table.columns.len() {
        let name = &table.columns[index].name;
        if table
            .primary_key
            .iter()
            .any(|column| column.eq_ignore_ascii_case(name))
        {
            table.columns[index].not_null = true;
        }
    }
    let auto_increment: Vec<usize> = (0..table.columns.len())
        .filter(|&index| table.columns[index].auto_increment)
        .collect();
    for &index in &auto_increment {
        let column = &table.columns[index];
        let sole_primary_key = table.primary_key.len() == 1
            && table.primary_key[0].eq_ignore_ascii_case(&column.name)
            && column.value_kind == ValueKind::Other
            && column.declared_type.contains("int")
            && auto_increment.len() == 1;
        if !sole_primary_key {
            return Err(DumpError::AutoIncrementNotSolePrimaryKey {
                line: table.line,
                table: table.name.clone(),
                column: column.name.clone(),
            });
        }
    }
    Ok(())
}

/// SQLite refuses every write to a child table whose foreign key points at a missing table
/// or at columns without a unique index ("foreign key mismatch"), so such a dump is
/// rejected here, where the message can name the constraint.
fn check_foreign_keys(tables: &[DumpTable]) -> Result<(), DumpError> {
    for table in tables {
        for foreign_key in &table.foreign_keys {
            let constraint = foreign_key
                .constraint_name
                .clone()
                .unwrap_or_else(|| foreign_key.columns.join(","));
            let Some(parent) = tables.iter().find(|candidate| {
                candidate
                    .name
                    .eq_ignore_ascii_case(&foreign_key.referenced_table)
            }) else {
                return Err(DumpError::ForeignKeyToUnknownTable {
                    line: foreign_key.line,
                    table: table.name.clone(),
                    constraint,
                    referenced_table: foreign_key.referenced_table.clone(),
                });
            };
            for column in &foreign_key.referenced_columns {
                if parent.column_index(column).is_none() {
                    return Err(DumpError::UnknownColumn {
                        line: foreign_key.line,
                        table: table.name.clone(),
                        column: column.clone(),
                        column_table: parent.name.clone(),
                    });
                }
            }
            let same_columns = |columns: &mut dyn Iterator<Item = &String>| {
                let mut columns: Vec<String> =
                    columns.map(|column| column.to_ascii_lowercase()).collect();
                let mut referenced: Vec<String> = foreign_key
                    .referenced_columns
                    .iter()
                    .map(|column| column.to_ascii_lowercase())
                    .collect();
                columns.sort();
                referenced.sort();
                columns == referenced
            };
            let is_unique = same_columns(&mut parent.primary_key.iter())
                || parent.keys.iter().any(|key| {
                    key.unique && same_columns(&mut key.parts.iter().map(|part| &part.column))
                });
            if !is_unique {
                return Err(DumpError::ForeignKeyToNonUniqueColumns {
                    line: foreign_key.line,
                    table: table.name.clone(),
                    constraint,
                    referenced_table: parent.name.clone(),
                });
            }
        }
    }
    Ok(())
}

fn parse_insert(tokens: &[Token], parsed: &ParsedDump) -> Result<InsertBatch, DumpError> {
    let line = tokens[0].line;
    let end_line = tokens.last().map_or(line, |token| token.line);
    let mut cursor = Cursor::new(tokens, "", end_line);
    let replace = cursor.eat_word("REPLACE");
    if !replace {
        cursor.expect_word("INSERT")?;
    }
    for priority in ["LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY"] {
        cursor.eat_word(priority);
    }
    let ignore = cursor.eat_word("IGNORE");
    cursor.eat_word("INTO");
    let name = cursor.table_name()?;
    cursor.table = name.clone();
    let table_index =
        parsed
            .table_index(&name)
            .ok_or_else(|| DumpError::InsertIntoUnknownTable {
                line,
                table: name.clone(),
            })?;
    let table = &parsed.tables[table_index];
    let (column_list, value_columns): (Option<Vec<String>>, Vec<usize>) =
        if cursor.peek_punct('(') {
            let names = cursor.identifier_list()?;
            let mut indexes = Vec::with_capacity(names.len());
            for column in &names {
                indexes.push(table.column_index(column).ok_or_else(|| {
                    DumpError::UnknownColumn {
                        line,
                        table: table.name.clone(),
                        column: column.clone(),
                        column_table: table.name.clone(),
                    }
                })?);
            }
            (Some(names), indexes)
        } else {
            (None, (0..table.columns.len()).collect())
        };
    if !(cursor.eat_word("VALUES") || cursor.eat_word("VALUE")) {
        return Err(cursor.syntax_error("VALUES"));
    }
    let mut rows = Vec::new();
    loop {
        let row_line = cursor.line();
        cursor.expect_punct('(', "`(` opening a row")?;
        let mut rendered = Vec::with_capacity(value_columns.len());
        if !cursor.peek_punct(')') {
            loop {
                let value_line = cursor.line();
                let literal = parse_literal(&mut cursor)?;
                let Some(&column_index) = value_columns.get(rendered.len()) else {
                    // Too many values: count the rest for the message, then report.
                    let mut found = rendered.len() + 1;
                    while cursor.eat_punct(',') {
                        parse_literal(&mut cursor)?;
                        found += 1;
                    }
                    return Err(DumpError::RowWidthMismatch {
                        line: row_line,
                        table: table.name.clone(),
                        row_number: rows.len() + 1,
                        found,
                        expected: value_columns.len(),
                    });
                };
                let column = &table.columns[column_index];
                let value = render_literal(&literal, column.value_kind).map_err(|reason| {
                    DumpError::UnrepresentableValue {
                        line: value_line,
                        table: table.name.clone(),
                        column: column.name.clone(),
                        reason,
                    }
                })?;
                rendered.push(value);
                if !cursor.eat_punct(',') {
                    break;
                }
            }
        }
        cursor.expect_punct(')', "`,` or `)` in a row")?;
        if rendered.len() != value_columns.len() {
            return Err(DumpError::RowWidthMismatch {
                line: row_line,
                table: table.name.clone(),
                row_number: rows.len() + 1,
                found: rendered.len(),
                expected: value_columns.len(),
            });
        }
        rows.push(format!("({})", rendered.join(",")));
        if !cursor.eat_punct(',') {
            break;
        }
    }
    if cursor.peek_word("ON") {
        return Err(cursor.unsupported("INSERT ... ON DUPLICATE KEY UPDATE"));
    }
    cursor.expect_end("`,` or the end of the INSERT")?;
    let verb = match (replace, ignore) {
        (true, _) => "INSERT OR REPLACE",
        (false, true) => "INSERT OR IGNORE",
        (false, false) => "INSERT",
    };
    Ok(InsertBatch {
        table: table_index,
        verb,
        column_list,
        rows,
    })
}

/// A MySQL literal, before it meets the column that decides its SQLite form.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Literal {
    Null,
    /// Decimal number with its sign, as written.
    Number(String),
    Text(String),
    /// Bytes from a hex literal or a `_binary` string.
    Bytes(Vec<u8>),
    /// Binary digits of a bit literal.
    Bits(String),
}

fn parse_literal(cursor: &mut Cursor<'_>) -> Result<Literal, DumpError> {
    let Some(token) = cursor.next() else {
        return Err(cursor.syntax_error("a value"));
    };
    let literal = match &token.kind {
        TokenKind::Word(word) if word.eq_ignore_ascii_case("NULL") => Literal::Null,
        TokenKind::Word(word) if word.eq_ignore_ascii_case("TRUE") => {
            Literal::Number("1".to_string())
        }
        TokenKind::Word(word) if word.eq_ignore_ascii_case("FALSE") => {
            Literal::Number("0".to_string())
        }
        // A charset introducer: `_binary` marks bytes, any other charset plain text.
        TokenKind::Word(word) if word.starts_with('_') => {
            let binary = word.eq_ignore_ascii_case("_binary");
            match cursor.next().map(|token| &token.kind) {
                Some(TokenKind::String(text)) if binary => Literal::Bytes(text.as_bytes().to_vec()),
                Some(TokenKind::String(text)) => Literal::Text(text.clone()),
                Some(TokenKind::Hex(bytes)) => Literal::Bytes(bytes.clone()),
                _ => {
                    cursor.position -= 1;
                    return Err(cursor.syntax_error("a string after a charset introducer"));
                }
            }
        }
        TokenKind::Punct(sign @ ('-' | '+')) => match cursor.next().map(|token| &token.kind) {
            Some(TokenKind::Number(number)) if *sign == '-' => {
                Literal::Number(format!("-{number}"))
            }
            Some(TokenKind::Number(number)) => Literal::Number(number.clone()),
            _ => {
                cursor.position -= 1;
                return Err(cursor.syntax_error("a number after a sign"));
            }
        },
        TokenKind::Number(number) => Literal::Number(number.clone()),
        TokenKind::String(text) => Literal::Text(text.clone()),
        TokenKind::Hex(bytes) => Literal::Bytes(bytes.clone()),
        TokenKind::Bits(bits) => Literal::Bits(bits.clone()),
        _ => {
            cursor.position -= 1;
            return Err(cursor.syntax_error("a value"));
        }
    };
    Ok(literal)
}

/// The SQLite literal for `literal` stored in a column of `kind`, or why it cannot be.
fn render_literal(literal: &Literal, kind: ValueKind) -> Result<String, String> {
    let rendered = match (literal, kind) {
        (Literal::Null, _) => "NULL".to_string(),
        (Literal::Number(number), _) => number.clone(),
        (Literal::Bits(bits), _) => bits_to_integer(bits)?,
        (Literal::Text(text), ValueKind::Bit) => bytes_to_integer(text.as_bytes())?,
        (Literal::Bytes(bytes), ValueKind::Bit) => bytes_to_integer(bytes)?,
        (Literal::Text(text), ValueKind::Blob) => blob_literal(text.as_bytes()),
        (Literal::Text(text), ValueKind::Text | ValueKind::Other) => quote_text(text),
        // Hex written for a character column is text in MySQL, as long as it is valid UTF-8.
        (Literal::Bytes(bytes), ValueKind::Text) => match std::str::from_utf8(bytes) {
            Ok(text) => quote_text(text),
            Err(_) => blob_literal(bytes),
        },
        (Literal::Bytes(bytes), ValueKind::Blob | ValueKind::Other) => blob_literal(bytes),
    };
    Ok(rendered)
}

fn bits_to_integer(bits: &str) -> Result<String, String> {
    let digits = bits.trim_start_matches('0');
    if digits.is_empty() {
        return Ok("0".to_string());
    }
    // 63 bits is the most a SQLite integer holds without going negative.
    if digits.len() > 63 {
        return Err(format!("b'{bits}' does not fit a 64-bit signed integer"));
    }
    let value = u64::from_str_radix(digits, 2).map_err(|error| error.to_string())?;
    Ok(value.to_string())
}

/// A `bit(n)` value MySQL dumped as a string holds the bits big-endian.
fn bytes_to_integer(bytes: &[u8]) -> Result<String, String> {
    let significant: Vec<u8> = bytes
        .iter()
        .copied()
        .skip_while(|&byte| byte == 0)
        .collect();
    if significant.len() > 8 || (significant.len() == 8 && significant[0] >= 0x80) {
        return Err(format!(
            "{} does not fit a 64-bit signed integer",
            blob_literal(bytes)
        ));
    }
    let value = significant
        .iter()
        .fold(0u64, |value, &byte| (value << 8) | u64::from(byte));
    Ok(value.to_string())
}

fn blob_literal(bytes: &[u8]) -> String {
    let mut literal = String::with_capacity(bytes.len() * 2 + 3);
    literal.push_str("X'");
    for byte in bytes {
        let _ = write!(literal, "{byte:02X}");
    }
    literal.push('\'');
    literal
}

/// A SQLite string literal. A NUL cannot appear inside one (SQLite's tokenizer stops at it),
/// so text holding NUL is spelled as a cast blob.
fn quote_text(text: &str) -> String {
    if text.contains('\0') {
        return format!("CAST({} AS TEXT)", blob_literal(text.as_bytes()));
    }
    format!("'{}'", text.replace('\'', "''"))
}

fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

// ---------------------------------------------------------------------------------------------
// Index names and rendering

/// SQLite index names share one namespace with tables across the database, while MySQL
/// scopes key names to their table (OpenMRS has many keys called `uuid` and `name`). A key
/// keeps its MySQL name when that is unique in the dump, so the SQLite schema reads like the
/// MySQL one; otherwise it becomes `<table>_<key>`, with `_2`, `_3`... if even that is taken.
/// Returns the names per table, in key order.
fn assign_index_names(tables: &[DumpTable]) -> Vec<Vec<String>> {
    let mut key_name_counts: HashMap<String, usize> = HashMap::new();
    for table in tables {
        for key in &table.keys {
            *key_name_counts
                .entry(key.name.to_ascii_lowercase())
                .or_default() += 1;
        }
    }
    let mut taken: HashSet<String> = tables
        .iter()
        .map(|table| table.name.to_ascii_lowercase())
        .collect();
    // Names kept as they are claim their place first, so a prefixed name never takes a name
    // the dump itself uses.
    for table in tables {
        for key in &table.keys {
            let lower = key.name.to_ascii_lowercase();
            if key_name_counts[&lower] == 1 && !lower.starts_with("sqlite_") {
                taken.insert(lower);
            }
        }
    }
    let mut names = Vec::with_capacity(tables.len());
    for table in tables {
        let mut table_names = Vec::with_capacity(table.keys.len());
        for key in &table.keys {
            let lower = key.name.to_ascii_lowercase();
            let keeps_name = key_name_counts[&lower] == 1
                && !lower.starts_with("sqlite_")
                && !tables
                    .iter()
                    .any(|other| other.name.eq_ignore_ascii_case(&key.name));
            if keeps_name {
                table_names.push(key.name.clone());
                continue;
            }
            let base = format!("{}_{}", table.name, key.name);
            let mut candidate = base.clone();
            let mut suffix = 2;
            while taken.contains(&candidate.to_ascii_lowercase()) {
                candidate = format!("{base}_{suffix}");
                suffix += 1;
            }
            taken.insert(candidate.to_ascii_lowercase());
            table_names.push(candidate);
        }
        names.push(table_names);
    }
    names
}

fn render(
    dump: &str,
    options: &ConvertOptions,
    parsed: &ParsedDump,
    data_excluded: &[bool],
    index_names: &[Vec<String>],
) -> String {
    let mut out = String::with_capacity(dump.len());
    let index_count: usize = index_names.iter().map(Vec::len).sum();
    let row_count: usize = parsed
        .inserts
        .iter()
        .filter(|batch| !data_excluded[batch.table])
        .map(|batch| batch.rows.len())
        .sum();
    let digest = Sha256::digest(dump.as_bytes());
    let digest_hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();

    out.push_str(
        "-- Generated by xtask/src/mysql_dump.rs (cargo run -p xtask -- sqlite-schema) from a mysqldump. Do not edit \
         by hand.\n",
    );
    for line in &options.header_lines {
        let _ = writeln!(out, "-- {line}");
    }
    let _ = writeln!(out, "-- Input: {} bytes, SHA-256 {digest_hex}.", dump.len());
    let _ = write!(
        out,
        "-- Output: {} tables, {index_count} indexes, {row_count} rows",
        parsed.tables.len()
    );
    let excluded: Vec<&str> = parsed
        .tables
        .iter()
        .zip(data_excluded)
        .filter(|(_, excluded)| **excluded)
        .map(|(table, _)| table.name.as_str())
        .collect();
    if excluded.is_empty() {
        out.push_str(".\n");
    } else {
        let _ = writeln!(out, " (rows of {} left out).", excluded.join(", "));
    }
    out.push_str("\nBEGIN;\n");
    out.push_str(
        "-- The rows refer to each other in cycles (users <-> person), so no insert order \
         satisfies\n-- immediate foreign key checks; with foreign_keys=ON they run at COMMIT.\n",
    );
    out.push_str("PRAGMA defer_foreign_keys = ON;\n");

    for (table, names) in parsed.tables.iter().zip(index_names) {
        out.push('\n');
        render_table(&mut out, table, names);
    }

    let mut wrote_data_heading = false;
    for batch in &parsed.inserts {
        if data_excluded[batch.table] || batch.rows.is_empty() {
            continue;
        }
        if !wrote_data_heading {
            out.push_str("\n-- Rows\n");
            wrote_data_heading = true;
        }
        let table = &parsed.tables[batch.table];
        let mut prefix = format!("{} INTO {}", batch.verb, quote_identifier(&table.name));
        if let Some(columns) = &batch.column_list {
            let quoted: Vec<String> = columns.iter().map(|name| quote_identifier(name)).collect();
            let _ = write!(prefix, " ({})", quoted.join(","));
        }
        // One statement per row keeps diffs of the generated file readable.
        for row in &batch.rows {
            let _ = writeln!(out, "{prefix} VALUES {row};");
        }
    }

    // MySQL's counter can be ahead of the largest id (rows deleted after insert); carrying it
    // keeps ids from being handed out twice across the two databases. InnoDB keeps the
    // counter above every id in the table, so this never lowers SQLite's.
    let mut wrote_sequence_heading = false;
    for (table, excluded) in parsed.tables.iter().zip(data_excluded) {
        let (Some(next), Some(_), false) =
            (table.auto_increment_next, table.rowid_column(), *excluded)
        else {
            continue;
        };
        if !wrote_sequence_heading {
            out.push_str("\n-- Auto-increment counters, from the tables' AUTO_INCREMENT=n\n");
            wrote_sequence_heading = true;
        }
        let name = quote_text(&table.name);
        let _ = writeln!(out, "DELETE FROM sqlite_sequence WHERE name = {name};");
        let _ = writeln!(
            out,
            "INSERT INTO sqlite_sequence (name, seq) VALUES ({name}, {});",
            next.saturating_sub(1)
        );
    }

    out.push_str("\nCOMMIT;\n");
    out
}

fn render_table(out: &mut String, table: &DumpTable, index_names: &[String]) {
    let rowid_column = table.rowid_column();
    let mut definitions = Vec::new();
    for (index, column) in table.columns.iter().enumerate() {
        let mut definition = format!("  {} ", quote_identifier(&column.name));
        if Some(index) == rowid_column {
            // Only the exact type name INTEGER makes the column SQLite's rowid, which is
            // what auto-increments.
            definition.push_str("INTEGER PRIMARY KEY AUTOINCREMENT");
        } else {
            definition.push_str(&column.declared_type);
        }
        if column.not_null {
            definition.push_str(" NOT NULL");
        }
        if let Some(default) = &column.default {
            let _ = write!(definition, " DEFAULT {default}");
        }
        if let Some(members) = &column.enum_members {
            let quoted: Vec<String> = members.iter().map(|member| quote_text(member)).collect();
            let _ = write!(
                definition,
                " CHECK ({} IN ({}))",
                quote_identifier(&column.name),
                quoted.join(",")
            );
        }
        definitions.push(definition);
    }
    if rowid_column.is_none() && !table.primary_key.is_empty() {
        definitions.push(format!(
            "  PRIMARY KEY ({})",
            quote_list(&table.primary_key)
        ));
    }
    for foreign_key in &table.foreign_keys {
        let mut definition = String::from("  ");
        if let Some(name) = &foreign_key.constraint_name {
            let _ = write!(definition, "CONSTRAINT {} ", quote_identifier(name));
        }
        let _ = write!(
            definition,
            "FOREIGN KEY ({}) REFERENCES {} ({})",
            quote_list(&foreign_key.columns),
            quote_identifier(&foreign_key.referenced_table),
            quote_list(&foreign_key.referenced_columns)
        );
        if let Some(action) = &foreign_key.on_delete {
            let _ = write!(definition, " ON DELETE {action}");
        }
        if let Some(action) = &foreign_key.on_update {
            let _ = write!(definition, " ON UPDATE {action}");
        }
        definitions.push(definition);
    }
    let _ = writeln!(
        out,
        "CREATE TABLE {} (\n{}\n);",
        quote_identifier(&table.name),
        definitions.join(",\n")
    );
    for (key, name) in table.keys.iter().zip(index_names) {
        let parts: Vec<String> = key
            .parts
            .iter()
            .map(|part| {
                let quoted = quote_identifier(&part.column);
                if part.descending {
                    format!("{quoted} DESC")
                } else {
                    quoted
                }
            })
            .collect();
        let _ = writeln!(
            out,
            "CREATE {}INDEX {} ON {} ({});",
            if key.unique { "UNIQUE " } else { "" },
            quote_identifier(name),
            quote_identifier(&table.name),
            parts.join(", ")
        );
    }
}

fn quote_list(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|name| quote_identifier(name)).collect();
    quoted.join(", ")
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use rusqlite::Connection;

    use super::*;

    fn tokens(text: &str) -> Vec<TokenKind> {
        let mut lexer = Lexer::new(text);
        let mut kinds = Vec::new();
        while let Some(token) = lexer.next_token().unwrap_or_else(|error| panic!("{error}")) {
            kinds.push(token.kind);
        }
        kinds
    }

    fn statements(text: &str) -> Vec<Vec<TokenKind>> {
        let mut lexer = Lexer::new(text);
        let mut statements = Vec::new();
        while let Some(tokens) = lexer
            .next_statement()
            .unwrap_or_else(|error| panic!("{error}"))
        {
            statements.push(tokens.into_iter().map(|token| token.kind).collect());
        }
        statements
    }

    fn string(text: &str) -> TokenKind {
        TokenKind::String(text.to_string())
    }

    fn word(text: &str) -> TokenKind {
        TokenKind::Word(text.to_string())
    }

    /// The converted script between the preamble and COMMIT: what the snapshot tests compare.
    fn body(dump: &str) -> String {
        let script = convert_to_sqlite(dump, &ConvertOptions::default())
            .unwrap_or_else(|error| panic!("{error}"));
        let preamble = "PRAGMA defer_foreign_keys = ON;\n";
        let start = script.find(preamble).expect("preamble") + preamble.len();
        let end = script.rfind("\nCOMMIT;\n").expect("COMMIT");
        script[start..end].trim().to_string()
    }

    fn convert_error(dump: &str) -> DumpError {
        match convert_to_sqlite(dump, &ConvertOptions::default()) {
            Ok(script) => panic!("expected an error, got:\n{script}"),
            Err(error) => error,
        }
    }

    /// Loads `script` with foreign keys enforced, as the toolkit's SQLite backend runs.
    fn load(script: &str) -> Connection {
        let connection = Connection::open_in_memory().expect("in-memory database");
        connection
            .execute_batch("PRAGMA foreign_keys = ON;")
            .expect("enable foreign keys");
        connection
            .execute_batch(script)
            .unwrap_or_else(|error| panic!("script does not load: {error}"));
        connection
    }

    fn query_strings(connection: &Connection, sql: &str) -> Vec<Vec<String>> {
        let mut statement = connection.prepare(sql).expect(sql);
        let column_count = statement.column_count();
        let rows = statement
            .query_map([], |row| {
                (0..column_count)
                    .map(|index| {
                        let value: rusqlite::types::Value = row.get(index)?;
                        Ok(match value {
                            rusqlite::types::Value::Null => "NULL".to_string(),
                            rusqlite::types::Value::Integer(number) => number.to_string(),
                            rusqlite::types::Value::Real(number) => number.to_string(),
                            rusqlite::types::Value::Text(text) => text,
                            rusqlite::types::Value::Blob(bytes) => blob_literal(&bytes),
                        })
                    })
                    .collect::<Result<Vec<String>, rusqlite::Error>>()
            })
            .expect(sql);
        rows.map(|row| row.expect(sql)).collect()
    }

    fn count(connection: &Connection, sql: &str) -> i64 {
        connection.query_row(sql, [], |row| row.get(0)).expect(sql)
    }

    // --- tokenizer -------------------------------------------------------------------------

    #[test]
    fn string_escapes_resolve_like_mysql() {
        assert_eq!(
            tokens(r#"'a\'b\"c\\d\ne\rf\tg\0h\Zi''j\%k\_l\qm'"#),
            vec![string("a'b\"c\\d\ne\rf\tg\0h\u{1a}i'j\\%k\\_lqm")]
        );
        assert_eq!(
            tokens(r#""say ""hi"" \'x\'""#),
            vec![string("say \"hi\" 'x'")]
        );
        assert_eq!(
            tokens("'caf\u{e9} \\\u{e9}'"),
            vec![string("caf\u{e9} \u{e9}")]
        );
        assert_eq!(
            tokens("`odd``name`"),
            vec![TokenKind::QuotedIdentifier("odd`name".into())]
        );
    }

    #[test]
    fn statements_split_only_outside_literals_and_comments() {
        let split = statements(
            "INSERT INTO `t` VALUES ('a;b'),('c),(d'),(\"e;\");\n\
             -- a comment; with a semicolon\n\
             # another; one\n\
             /* block; comment */ /*!40101 SET NAMES utf8 */;\n\
             SET x = 1;",
        );
        assert_eq!(split.len(), 3, "{split:?}");
        let strings: Vec<&TokenKind> = split[0]
            .iter()
            .filter(|kind| matches!(kind, TokenKind::String(_)))
            .collect();
        assert_eq!(
            strings,
            vec![&string("a;b"), &string("c),(d"), &string("e;")]
        );
        assert_eq!(
            split[1],
            Vec::<TokenKind>::new(),
            "a conditional comment is skipped"
        );
        assert_eq!(split[2][0], word("SET"));
    }

    #[test]
    fn literals_of_every_kind_tokenize() {
        assert_eq!(
            tokens("0x0aFF X'00ff' 0xABC b'101' 0b11 -1.5e3 42 3. _binary'ab' 12abc 0xZZ 5--3"),
            vec![
                TokenKind::Hex(vec![0x0a, 0xff]),
                TokenKind::Hex(vec![0x00, 0xff]),
                TokenKind::Hex(vec![0x0a, 0xbc]),
                TokenKind::Bits("101".into()),
                TokenKind::Bits("11".into()),
                TokenKind::Punct('-'),
                TokenKind::Number("1.5e3".into()),
                TokenKind::Number("42".into()),
                TokenKind::Number("3.".into()),
                word("_binary"),
                string("ab"),
                word("12abc"),
                word("0xZZ"),
                TokenKind::Number("5".into()),
                TokenKind::Punct('-'),
                TokenKind::Punct('-'),
                TokenKind::Number("3".into()),
            ]
        );
    }

    #[test]
    fn unterminated_literals_name_the_line_they_start_on() {
        let error = convert_error("SET a = 1;\n\nINSERT INTO `t` VALUES ('never closed);\n");
        assert_eq!(
            error,
            DumpError::Unterminated {
                line: 3,
                what: "string literal"
            }
        );
        assert!(
            error.to_string().starts_with("line 3: string literal"),
            "{error}"
        );
        assert_eq!(
            convert_error("/* open"),
            DumpError::Unterminated {
                line: 1,
                what: "/* comment"
            }
        );
        assert_eq!(
            convert_error("X'abc'"),
            DumpError::InvalidLiteral {
                line: 1,
                literal: "X'abc'".into(),
                reason: "odd number of hex digits"
            }
        );
    }

    // --- schema ----------------------------------------------------------------------------

    #[test]
    fn column_types_keep_their_mysql_names_where_sqlite_reads_them_alike() {
        let cases = [
            ("`a` int(11) NOT NULL", r#""a" int(11) NOT NULL"#),
            (
                "`a` bigint(20) unsigned DEFAULT NULL",
                r#""a" bigint(20) DEFAULT NULL"#,
            ),
            (
                "`a` tinyint(1) NOT NULL DEFAULT '0'",
                r#""a" tinyint(1) NOT NULL DEFAULT '0'"#,
            ),
            (
                "`a` smallint(6) NOT NULL DEFAULT '0'",
                r#""a" smallint(6) NOT NULL DEFAULT '0'"#,
            ),
            ("`a` double DEFAULT NULL", r#""a" double DEFAULT NULL"#),
            ("`a` double DEFAULT -1.5", r#""a" double DEFAULT -1.5"#),
            ("`a` float NOT NULL", r#""a" float NOT NULL"#),
            (
                "`a` decimal(10,2) DEFAULT '0.00'",
                r#""a" decimal(10,2) DEFAULT '0.00'"#,
            ),
            (
                "`a` varchar(255) CHARACTER SET utf8 COLLATE utf8_bin NOT NULL DEFAULT ''",
                r#""a" varchar(255) NOT NULL DEFAULT ''"#,
            ),
            ("`a` char(38) NOT NULL", r#""a" char(38) NOT NULL"#),
            ("`a` text", r#""a" text"#),
            ("`a` mediumtext NOT NULL", r#""a" mediumtext NOT NULL"#),
            ("`a` longtext", r#""a" longtext"#),
            ("`a` blob", r#""a" blob"#),
            ("`a` mediumblob", r#""a" mediumblob"#),
            ("`a` longblob NOT NULL", r#""a" longblob NOT NULL"#),
            (
                "`a` varbinary(16) DEFAULT NULL",
                r#""a" varbinary(16) DEFAULT NULL"#,
            ),
            (
                "`a` datetime NOT NULL DEFAULT '2005-01-01 00:00:00'",
                r#""a" datetime NOT NULL DEFAULT '2005-01-01 00:00:00'"#,
            ),
            (
                "`a` datetime(6) DEFAULT NULL",
                r#""a" datetime(6) DEFAULT NULL"#,
            ),
            ("`a` date DEFAULT NULL", r#""a" date DEFAULT NULL"#),
            ("`a` time DEFAULT NULL", r#""a" time DEFAULT NULL"#),
            (
                "`a` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP",
                r#""a" timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP"#,
            ),
            (
                "`a` bit(1) NOT NULL DEFAULT b'0'",
                r#""a" bit(1) NOT NULL DEFAULT 0"#,
            ),
            ("`a` bit(1) DEFAULT b'1'", r#""a" bit(1) DEFAULT 1"#),
            (
                "`a` enum('x','y''z') NOT NULL DEFAULT 'x'",
                r#""a" text NOT NULL DEFAULT 'x' CHECK ("a" IN ('x','y''z'))"#,
            ),
            ("`a` set('p','q') DEFAULT NULL", r#""a" text DEFAULT NULL"#),
            (
                "`a` int(11) DEFAULT NULL COMMENT 'why; not'",
                r#""a" int(11) DEFAULT NULL"#,
            ),
        ];
        for (mysql, sqlite) in cases {
            let dump =
                format!("CREATE TABLE `t` (\n  {mysql}\n) ENGINE=InnoDB DEFAULT CHARSET=utf8;");
            assert_eq!(
                body(&dump),
                format!("CREATE TABLE \"t\" (\n  {sqlite}\n);"),
                "for {mysql}"
            );
        }
    }

    #[test]
    fn a_type_without_conversion_is_named_with_its_table_and_column() {
        let error = convert_error("\nCREATE TABLE `places` (\n  `shape` geometry NOT NULL\n);");
        assert_eq!(
            error,
            DumpError::UnsupportedColumnType {
                line: 3,
                table: "places".into(),
                column: "shape".into(),
                mysql_type: "geometry".into()
            }
        );
    }

    #[test]
    fn keys_become_indexes_and_foreign_keys_stay_on_the_table() {
        let dump = "CREATE TABLE `person` (
  `person_id` int(11) NOT NULL AUTO_INCREMENT,
  `uuid` char(38) NOT NULL,
  PRIMARY KEY (`person_id`),
  UNIQUE KEY `person_uuid` (`uuid`)
) ENGINE=InnoDB AUTO_INCREMENT=5 DEFAULT CHARSET=utf8;
CREATE TABLE `person_name` (
  `person_name_id` int(11) NOT NULL AUTO_INCREMENT,
  `person_id` int(11) NOT NULL,
  `given_name` varchar(255) DEFAULT NULL,
  `family_name` varchar(255) DEFAULT NULL,
  PRIMARY KEY (`person_name_id`) USING BTREE,
  KEY `name_for_patient` (`person_id`),
  KEY `family_name` (`family_name`(50),`given_name` DESC),
  CONSTRAINT `name for person` FOREIGN KEY (`person_id`) REFERENCES `person` (`person_id`) ON DELETE CASCADE ON UPDATE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8;";
        assert_eq!(
            body(dump),
            r#"CREATE TABLE "person" (
  "person_id" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
  "uuid" char(38) NOT NULL
);
CREATE UNIQUE INDEX "person_uuid" ON "person" ("uuid");

CREATE TABLE "person_name" (
  "person_name_id" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
  "person_id" int(11) NOT NULL,
  "given_name" varchar(255) DEFAULT NULL,
  "family_name" varchar(255) DEFAULT NULL,
  CONSTRAINT "name for person" FOREIGN KEY ("person_id") REFERENCES "person" ("person_id") ON DELETE CASCADE ON UPDATE CASCADE
);
CREATE INDEX "name_for_patient" ON "person_name" ("person_id");
CREATE INDEX "family_name" ON "person_name" ("family_name", "given_name" DESC);

-- Auto-increment counters, from the tables' AUTO_INCREMENT=n
DELETE FROM sqlite_sequence WHERE name = 'person';
INSERT INTO sqlite_sequence (name, seq) VALUES ('person', 4);"#
        );
        let connection = load(&convert_to_sqlite(dump, &ConvertOptions::default()).unwrap());
        connection
            .execute("INSERT INTO person (uuid) VALUES ('u')", [])
            .unwrap();
        assert_eq!(
            count(&connection, "SELECT person_id FROM person"),
            5,
            "ids continue from MySQL's AUTO_INCREMENT counter"
        );
        let foreign_keys = query_strings(
            &connection,
            "SELECT \"table\", \"from\", \"to\", on_update, on_delete FROM pragma_foreign_key_list('person_name')",
        );
        assert_eq!(
            foreign_keys,
            vec![vec![
                "person",
                "person_id",
                "person_id",
                "CASCADE",
                "CASCADE"
            ]]
        );
    }

    #[test]
    fn composite_primary_keys_stay_table_level() {
        let dump =
            "CREATE TABLE `role` (`role` varchar(50) NOT NULL DEFAULT '', PRIMARY KEY (`role`));
CREATE TABLE `role_role` (
  `parent_role` varchar(50) NOT NULL DEFAULT '',
  `child_role` varchar(255) NOT NULL DEFAULT '',
  `ordinal` int(11) NOT NULL,
  PRIMARY KEY (`parent_role`,`child_role`),
  CONSTRAINT `parent_role` FOREIGN KEY (`parent_role`) REFERENCES `role` (`role`)
);
CREATE TABLE `patient` (
  `patient_id` int(11) NOT NULL,
  PRIMARY KEY (`patient_id`)
);";
        assert_eq!(
            body(dump),
            r#"CREATE TABLE "role" (
  "role" varchar(50) NOT NULL DEFAULT '',
  PRIMARY KEY ("role")
);

CREATE TABLE "role_role" (
  "parent_role" varchar(50) NOT NULL DEFAULT '',
  "child_role" varchar(255) NOT NULL DEFAULT '',
  "ordinal" int(11) NOT NULL,
  PRIMARY KEY ("parent_role", "child_role"),
  CONSTRAINT "parent_role" FOREIGN KEY ("parent_role") REFERENCES "role" ("role")
);

CREATE TABLE "patient" (
  "patient_id" int(11) NOT NULL,
  PRIMARY KEY ("patient_id")
);"#
        );
        let connection = load(&convert_to_sqlite(dump, &ConvertOptions::default()).unwrap());
        let primary_key = query_strings(
            &connection,
            "SELECT name, pk FROM pragma_table_info('role_role') WHERE pk > 0 ORDER BY pk",
        );
        assert_eq!(
            primary_key,
            vec![vec!["parent_role", "1"], vec!["child_role", "2"]]
        );
    }

    #[test]
    fn index_names_shared_across_tables_get_the_table_prefix() {
        let dump = "CREATE TABLE `a` (`uuid` char(38), `name` text, UNIQUE KEY `uuid` (`uuid`), KEY `only_here` (`name`));
CREATE TABLE `b` (`uuid` char(38), `a_uuid` char(38), UNIQUE KEY `uuid` (`uuid`), KEY `a_uuid` (`a_uuid`), KEY `a` (`uuid`));";
        let converted = body(dump);
        let indexes: Vec<&str> = converted
            .lines()
            .filter(|line| line.starts_with("CREATE") && line.contains("INDEX"))
            .collect();
        assert_eq!(
            indexes,
            vec![
                r#"CREATE UNIQUE INDEX "a_uuid_2" ON "a" ("uuid");"#,
                r#"CREATE INDEX "only_here" ON "a" ("name");"#,
                r#"CREATE UNIQUE INDEX "b_uuid" ON "b" ("uuid");"#,
                r#"CREATE INDEX "a_uuid" ON "b" ("a_uuid");"#,
                r#"CREATE INDEX "b_a" ON "b" ("uuid");"#,
            ],
            "`a_uuid` is b's own key name, so a's prefixed `uuid` steps aside; `a` is a table"
        );
        load(&convert_to_sqlite(dump, &ConvertOptions::default()).unwrap());
    }

    #[test]
    fn schema_errors_name_the_table_and_line() {
        assert_eq!(
            convert_error(
                "CREATE TABLE `t` (\n  `a` int NOT NULL AUTO_INCREMENT,\n  `b` int NOT NULL,\n  PRIMARY KEY (`a`,`b`)\n);"
            ),
            DumpError::AutoIncrementNotSolePrimaryKey {
                line: 1,
                table: "t".into(),
                column: "a".into()
            }
        );
        assert_eq!(
            convert_error(
                "CREATE TABLE `p` (`code` int);\nCREATE TABLE `c` (\n  `code` int,\n  CONSTRAINT `c_p` FOREIGN KEY (`code`) REFERENCES `p` (`code`)\n);"
            ),
            DumpError::ForeignKeyToNonUniqueColumns {
                line: 4,
                table: "c".into(),
                constraint: "c_p".into(),
                referenced_table: "p".into()
            }
        );
        assert_eq!(
            convert_error(
                "CREATE TABLE `c` (`x` int, CONSTRAINT `c_q` FOREIGN KEY (`x`) REFERENCES `q` (`x`));"
            ),
            DumpError::ForeignKeyToUnknownTable {
                line: 1,
                table: "c".into(),
                constraint: "c_q".into(),
                referenced_table: "q".into()
            }
        );
        assert_eq!(
            convert_error("CREATE TABLE `t` (`a` int, KEY `k` (`missing`));"),
            DumpError::UnknownColumn {
                line: 1,
                table: "t".into(),
                column: "missing".into(),
                column_table: "t".into()
            }
        );
        assert_eq!(
            convert_error("CREATE TABLE `t` (`a` int);\nCREATE TABLE `T` (`a` int);"),
            DumpError::DuplicateTable {
                line: 2,
                table: "T".into()
            }
        );
        let error =
            convert_error("CREATE TABLE `t` (\n  `a` int NOT NULL,\n  `b` int NOT BOGUS\n);");
        assert_eq!(
            error.to_string(),
            "line 3: table `t`: expected NULL, found `BOGUS`"
        );
        assert_eq!(
            convert_error("SET x = 1;\nDELIMITER ;;\n"),
            DumpError::UnsupportedStatement {
                line: 2,
                statement_start: "DELIMITER".into()
            }
        );
    }

    #[test]
    fn session_statements_of_a_dump_are_skipped() {
        let dump = "/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */;
DROP TABLE IF EXISTS `t`;
/*!40101 SET @saved_cs_client     = @@character_set_client */;
CREATE TABLE `t` (`a` int(11) NOT NULL);
LOCK TABLES `t` WRITE;
/*!40000 ALTER TABLE `t` DISABLE KEYS */;
ALTER TABLE `t` DISABLE KEYS;
INSERT INTO `t` VALUES (1);
UNLOCK TABLES;
SET TIME_ZONE=@OLD_TIME_ZONE;
USE `openmrs`;
";
        assert_eq!(
            body(dump),
            "CREATE TABLE \"t\" (\n  \"a\" int(11) NOT NULL\n);\n\n-- Rows\nINSERT INTO \"t\" VALUES (1);"
        );
    }

    // --- rows ------------------------------------------------------------------------------

    #[test]
    fn row_values_convert_to_sqlite_literals_and_read_back_unchanged() {
        let dump = r#"CREATE TABLE `v` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `text` text,
  `number` double DEFAULT NULL,
  `flag` bit(1) DEFAULT NULL,
  `data` blob,
  `voided` tinyint(1) NOT NULL DEFAULT '1',
  PRIMARY KEY (`id`)
);
INSERT INTO `v` VALUES (1,'it\'s; a ),( test\\ \"q\"\n\r\t','-1.5',b'1',0x00FF10,0),(2,'nul\0 and \Z','2',_binary '\0',_binary 'ab',1),(3,NULL,-3e2,0x01,"dq",1);
INSERT INTO `v` (`id`, `text`) VALUES (4,'x'),(5,0x41);
"#;
        let converted = body(dump);
        let rows = &converted[converted.find("INSERT").expect("rows")..];
        assert_eq!(
            rows,
            "INSERT INTO \"v\" VALUES (1,'it''s; a ),( test\\ \"q\"\n\r\t','-1.5',1,X'00FF10',0);\n\
             INSERT INTO \"v\" VALUES (2,CAST(X'6E756C0020616E64201A' AS TEXT),'2',0,X'6162',1);\n\
             INSERT INTO \"v\" VALUES (3,NULL,-3e2,1,X'6471',1);\n\
             INSERT INTO \"v\" (\"id\",\"text\") VALUES (4,'x');\n\
             INSERT INTO \"v\" (\"id\",\"text\") VALUES (5,'A');"
        );
        let connection = load(&convert_to_sqlite(dump, &ConvertOptions::default()).unwrap());
        let read = query_strings(
            &connection,
            "SELECT id, text, typeof(number), number, flag, data, typeof(voided), voided FROM v ORDER BY id",
        );
        assert_eq!(
            read,
            vec![
                vec![
                    "1",
                    "it's; a ),( test\\ \"q\"\n\r\t",
                    "real",
                    "-1.5",
                    "1",
                    "X'00FF10'",
                    "integer",
                    "0"
                ],
                vec![
                    "2",
                    "nul\0 and \u{1a}",
                    "real",
                    "2",
                    "0",
                    "X'6162'",
                    "integer",
                    "1"
                ],
                vec!["3", "NULL", "real", "-300", "1", "X'6471'", "integer", "1"],
                vec!["4", "x", "null", "NULL", "NULL", "NULL", "integer", "1"],
                vec!["5", "A", "null", "NULL", "NULL", "NULL", "integer", "1"],
            ],
            "a quoted '1' default on tinyint(1) is stored as an integer by affinity"
        );
    }

    #[test]
    fn row_errors_name_the_table_and_line() {
        let schema = "CREATE TABLE `t` (`a` int, `b` int);\n";
        assert_eq!(
            convert_error(&format!("{schema}INSERT INTO `t` VALUES (1,2),\n(3);")),
            DumpError::RowWidthMismatch {
                line: 3,
                table: "t".into(),
                row_number: 2,
                found: 1,
                expected: 2
            }
        );
        assert_eq!(
            convert_error(&format!("{schema}INSERT INTO `t` VALUES (1,2,3);")),
            DumpError::RowWidthMismatch {
                line: 2,
                table: "t".into(),
                row_number: 1,
                found: 3,
                expected: 2
            }
        );
        assert_eq!(
            convert_error("INSERT INTO `nowhere` VALUES (1);"),
            DumpError::InsertIntoUnknownTable {
                line: 1,
                table: "nowhere".into()
            }
        );
        let error = convert_error(&format!("{schema}INSERT INTO `t` VALUES (1,now());"));
        assert_eq!(
            error.to_string(),
            "line 2: table `t`: expected a value, found `now`"
        );
    }

    #[test]
    fn excluded_tables_keep_their_schema_but_not_their_rows() {
        let dump = "CREATE TABLE `kept` (`a` int);\nCREATE TABLE `liquibasechangelog` (`id` varchar(255));\n\
                    INSERT INTO `kept` VALUES (1);\nINSERT INTO `liquibasechangelog` VALUES ('x');";
        let options = ConvertOptions {
            data_tables_excluded: vec!["liquibasechangelog".into()],
            header_lines: vec!["From a test.".into()],
        };
        let script = convert_to_sqlite(dump, &options).unwrap();
        assert!(script.contains("CREATE TABLE \"liquibasechangelog\""));
        assert!(script.contains("INSERT INTO \"kept\" VALUES (1);"));
        assert!(!script.contains("VALUES ('x')"), "{script}");
        assert!(script.contains("\n-- From a test.\n"));
        assert!(script.contains("1 rows (rows of liquibasechangelog left out)."));
        assert_eq!(
            convert_to_sqlite(
                dump,
                &ConvertOptions {
                    data_tables_excluded: vec!["liquibasechangelgo".into()],
                    header_lines: Vec::new(),
                }
            ),
            Err(DumpError::ExcludedTableNotInDump {
                table: "liquibasechangelgo".into()
            })
        );
    }

    // --- the real OpenMRS dumps ------------------------------------------------------------

    /// Where the OpenMRS dumps live: beside the repository, never inside it.
    fn dump_path(file_name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/openmrs")
            .join(file_name)
    }

    /// The dump's text, or `None` (with a note on stderr) when it is absent outside CI.
    fn read_dump(file_name: &str) -> Option<String> {
        let path = dump_path(file_name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Some(text),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!(
                        "{} not found; CI must provide the OpenMRS dumps",
                        path.display()
                    );
                }
                eprintln!("skipped: {} not found", path.display());
                None
            }
            Err(error) => panic!("cannot read {}: {error}", path.display()),
        }
    }

    const SHIPPED_SCHEMA_PATH: &str = "../shared/sim/schema/openmrs-2.5.sqlite.sql";

    fn shipped_options() -> ConvertOptions {
        ConvertOptions {
            data_tables_excluded: LIQUIBASE_TABLES.iter().map(|name| name.to_string()).collect(),
            header_lines: vec![
                "Source: the OpenMRS 2.5 dump with the FHIR2 module (openmrs-2.5-fhir2.sql, from".into(),
                "mekomsolutions/openmrs-dbsync demo/openmrs.sql at c9313f4d), kept outside the repository."
                    .into(),
                "Regenerate: FEEDSYNC_REGENERATE=1 cargo test -p xtask mysql_dump".into(),
            ],
        }
    }

    /// `PRAGMA foreign_key_check` over the whole database, one line per violation.
    fn foreign_key_violations(connection: &Connection) -> Vec<String> {
        query_strings(connection, "PRAGMA foreign_key_check")
            .into_iter()
            .map(|row| {
                format!(
                    "{} rowid {} -> {} (constraint #{})",
                    row[0], row[1], row[2], row[3]
                )
            })
            .collect()
    }

    /// Loads `script` twice: without enforcement, to list every violating row in the failure
    /// message, then with enforcement, as the toolkit would.
    fn load_checking_foreign_keys(script: &str) -> Connection {
        let unchecked = Connection::open_in_memory().expect("in-memory database");
        unchecked
            .execute_batch(script)
            .unwrap_or_else(|error| panic!("script does not load: {error}"));
        let violations = foreign_key_violations(&unchecked);
        assert!(
            violations.is_empty(),
            "rows violate foreign keys:\n{}",
            violations.join("\n")
        );
        let connection = load(script);
        assert_eq!(foreign_key_violations(&connection), Vec::<String>::new());
        connection
    }

    fn user_table_count(connection: &Connection) -> i64 {
        count(
            connection,
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        )
    }

    /// Every table's row count equals `expected` (tables not listed are empty).
    fn assert_row_counts(connection: &Connection, expected: &[(&str, i64)]) {
        let tables = query_strings(
            connection,
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        );
        for table in tables {
            let name = &table[0];
            let want = expected
                .iter()
                .find(|(table, _)| table == name)
                .map_or(0, |(_, rows)| *rows);
            let have = count(
                connection,
                &format!("SELECT count(*) FROM {}", quote_identifier(name)),
            );
            assert_eq!(have, want, "rows in {name}");
        }
    }

    /// Row counts of the 2.5 dump, counted by loading it into MariaDB 10.11.
    const OPENMRS_2_5_ROWS: [(&str, i64); 27] = [
        ("care_setting", 2),
        ("concept", 2),
        ("concept_class", 16),
        ("concept_datatype", 12),
        ("concept_map_type", 70),
        ("concept_name", 20),
        ("concept_stop_word", 10),
        ("encounter_role", 1),
        ("fhir_observation_category_map", 3),
        ("field_type", 5),
        ("global_property", 200),
        ("hl7_source", 1),
        ("liquibasechangelog", 1186),
        ("liquibasechangeloglock", 1),
        ("location", 1),
        ("order_type", 2),
        ("patient_identifier_type", 2),
        ("person", 1),
        ("person_attribute_type", 7),
        ("person_name", 1),
        ("privilege", 213),
        ("relationship_type", 4),
        ("role", 4),
        ("role_privilege", 27),
        ("scheduler_task_config", 1),
        ("users", 2),
        ("user_role", 2),
    ];

    #[test]
    fn openmrs_2_5_dump_loads_into_sqlite() {
        let Some(dump) = read_dump("openmrs-2.5-fhir2.sql") else {
            return;
        };
        let script =
            convert_to_sqlite(&dump, &shipped_options()).unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(
            script,
            convert_to_sqlite(&dump, &shipped_options()).unwrap(),
            "conversion is deterministic"
        );
        let connection = load_checking_foreign_keys(&script);
        assert_eq!(user_table_count(&connection), 128);
        let shipped_rows: Vec<(&str, i64)> = OPENMRS_2_5_ROWS
            .iter()
            .copied()
            .filter(|(table, _)| !LIQUIBASE_TABLES.contains(table))
            .collect();
        assert_row_counts(&connection, &shipped_rows);
        assert_eq!(
            count(&connection, "SELECT count(*) FROM global_property"),
            200
        );
        assert_eq!(count(&connection, "SELECT count(*) FROM users"), 2);

        let obs_foreign_keys = query_strings(
            &connection,
            "SELECT \"table\", \"from\", \"to\" FROM pragma_foreign_key_list('obs')",
        );
        for expected in [
            ["person", "person_id", "person_id"],
            ["encounter", "encounter_id", "encounter_id"],
        ] {
            assert!(
                obs_foreign_keys.iter().any(|row| row == &expected),
                "obs lacks foreign key {expected:?}: {obs_foreign_keys:?}"
            );
        }
        let obs_types = query_strings(
            &connection,
            "SELECT name, type, \"notnull\" FROM pragma_table_info('obs') \
             WHERE name IN ('obs_id', 'person_id', 'value_numeric', 'uuid', 'voided', 'obs_datetime') ORDER BY cid",
        );
        assert_eq!(
            obs_types,
            vec![
                vec!["obs_id", "INTEGER", "1"],
                vec!["person_id", "int(11)", "1"],
                vec!["obs_datetime", "datetime", "1"],
                vec!["value_numeric", "double", "0"],
                vec!["voided", "tinyint(1)", "1"],
                vec!["uuid", "char(38)", "1"],
            ]
        );

        // This value holds \n, \\n and \" escapes; its digest comes from MariaDB's SHA2().
        let address_format: String = connection
            .query_row(
                "SELECT property_value FROM global_property WHERE property = 'layout.address.format'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(address_format.len(), 1098);
        let digest: String = Sha256::digest(address_format.as_bytes())
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        assert_eq!(
            digest,
            "fc478ab4396350222bbcb8a2d031620a797176b81854d0cf75d734d6e1500c12"
        );
    }

    #[test]
    fn openmrs_2_5_shipped_schema_is_up_to_date() {
        let Some(dump) = read_dump("openmrs-2.5-fhir2.sql") else {
            return;
        };
        let script =
            convert_to_sqlite(&dump, &shipped_options()).unwrap_or_else(|error| panic!("{error}"));
        let shipped_path = Path::new(env!("CARGO_MANIFEST_DIR")).join(SHIPPED_SCHEMA_PATH);
        if std::env::var("FEEDSYNC_REGENERATE").as_deref() == Ok("1") {
            std::fs::create_dir_all(shipped_path.parent().expect("schema directory"))
                .expect("create the schema directory");
            std::fs::write(&shipped_path, &script)
                .unwrap_or_else(|error| panic!("cannot write {}: {error}", shipped_path.display()));
            eprintln!("regenerated {}", shipped_path.display());
            return;
        }
        let shipped = std::fs::read_to_string(&shipped_path).unwrap_or_else(|error| {
            panic!(
                "cannot read {}: {error}; create it with FEEDSYNC_REGENERATE=1 cargo test -p xtask mysql_dump",
                shipped_path.display()
            )
        });
        if shipped != script {
            let first_difference = shipped
                .lines()
                .zip(script.lines())
                .position(|(old, new)| old != new)
                .unwrap_or_else(|| shipped.lines().count().min(script.lines().count()))
                + 1;
            panic!(
                "{} is out of date (first difference at line {first_difference}); regenerate it with \
                 FEEDSYNC_REGENERATE=1 cargo test -p xtask mysql_dump",
                shipped_path.display()
            );
        }
    }

    /// Row counts of the 1.9.8 dump, counted by loading it into MariaDB 10.11.
    const OPENMRS_1_9_8_ROWS: [(&str, i64); 29] = [
        ("active_list_type", 2),
        ("concept", 2),
        ("concept_class", 15),
        ("concept_datatype", 12),
        ("concept_map_type", 70),
        ("concept_name", 20),
        ("concept_stop_word", 10),
        ("concept_word", 20),
        ("encounter_role", 1),
        ("field_type", 5),
        ("global_property", 110),
        ("hl7_source", 1),
        ("liquibasechangelog", 896),
        ("liquibasechangeloglock", 1),
        ("location", 1),
        ("logic_token_registration", 17),
        ("order_type", 1),
        ("patient_identifier_type", 2),
        ("person", 1),
        ("person_attribute_type", 7),
        ("person_name", 1),
        ("privilege", 158),
        ("relationship_type", 4),
        ("role", 4),
        ("role_privilege", 13),
        ("scheduler_task_config", 3),
        ("users", 2),
        ("user_property", 2),
        ("user_role", 2),
    ];

    #[test]
    fn openmrs_1_9_8_dump_loads_into_sqlite() {
        let Some(dump) = read_dump("openmrs-1.9.8.sql") else {
            return;
        };
        let script = convert_to_sqlite(&dump, &ConvertOptions::default())
            .unwrap_or_else(|error| panic!("{error}"));
        let connection = load_checking_foreign_keys(&script);
        assert_eq!(user_table_count(&connection), 102);
        assert_row_counts(&connection, &OPENMRS_1_9_8_ROWS);
    }
}
