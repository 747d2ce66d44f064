//! The Prometheus text format (version 0.0.4), as both services write it ([`Exposition`]) and
//! tests read it back ([`parse_exposition`], [`find`]). Pure text in and out.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// The content type of the text format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

// ---- the text format ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Writes the text format: each family's `# HELP` and `# TYPE` once, then its samples, so a
/// family's lines are together as the format requires.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
    families: BTreeSet<String>,
    current: Option<String>,
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Starts a family. Each name once (a second start of the same name is a bug here).
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Exposition {
        assert!(valid_metric_name(name), "metric name {name:?}");
        assert!(self.families.insert(name.to_owned()), "family {name} written twice");
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {}", kind.as_str());
        self.current = Some(name.to_owned());
        self
    }

    /// A sample of the family just started (`name` may add `_bucket`, `_sum`, `_count`).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Exposition {
        let family = self.current.as_deref().expect("a family before its samples");
        assert!(name.starts_with(family), "sample {name} outside family {family}");
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"{}\"", escape_label_value(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", format_value(value));
        self
    }

    /// A family with one sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) -> &mut Exposition {
        self.family(name, kind, help).sample(name, &[], value)
    }

    pub fn finish(self) -> String {
        self.text
    }
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Backslash, double quote and line feed escaped, as the format requires.
pub fn escape_label_value(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

pub fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// One sample line, read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Reads the text format strictly: every sample line is `name{labels} value [timestamp]`, every
/// sample belongs to a family whose `# TYPE` came before it (and `# HELP`, when given, too), a
/// family's lines are together, names and labels are valid and not repeated, and histogram
/// buckets are cumulative up to `+Inf`, which equals `_count`. Used by the tests of both
/// services; an error names the line.
pub fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helped: BTreeSet<String> = BTreeSet::new();
    let mut finished: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut samples = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let number = number + 1;
        let err = |what: String| Err(format!("line {number}: {what}: {line:?}"));
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            let keyword = words.next().unwrap_or_default();
            if keyword != "HELP" && keyword != "TYPE" {
                continue;
            }
            let name = words.next().unwrap_or_default().to_owned();
            if !valid_metric_name(&name) {
                return err(format!("{keyword} of an invalid name"));
            }
            let switching = current.as_deref() != Some(name.as_str());
            if switching {
                if finished.contains(&name) {
                    return err(format!("family {name} continues after another family"));
                }
                if let Some(previous) = current.replace(name.clone()) {
                    finished.insert(previous);
                }
            }
            if keyword == "HELP" {
                if !helped.insert(name.clone()) {
                    return err("a second HELP".into());
                }
                if samples.iter().any(|s: &Sample| family_of(&s.name, &types).as_deref() == Some(name.as_str())) {
                    return err("HELP after samples".into());
                }
            } else {
                let kind = words.next().unwrap_or_default().trim().to_owned();
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind.as_str()) {
                    return err(format!("unknown type {kind:?}"));
                }
                if types.insert(name.clone(), kind).is_some() {
                    return err("a second TYPE".into());
                }
                if samples.iter().any(|s: &Sample| s.name == name || s.name.starts_with(&format!("{name}_"))) {
                    return err("TYPE after samples".into());
                }
            }
            continue;
        }
        let sample = parse_sample(line).map_err(|e| format!("line {number}: {e}: {line:?}"))?;
        let Some(family) = family_of(&sample.name, &types) else {
            return err(format!("sample {} before its family's TYPE", sample.name));
        };
        if current.as_deref() != Some(family.as_str()) {
            return err(format!("sample of {family} outside its family's lines"));
        }
        samples.push(sample);
    }
    check_histograms(&samples, &types)?;
    Ok(samples)
}

/// The declared family a sample name belongs to.
fn family_of(name: &str, types: &BTreeMap<String, String>) -> Option<String> {
    if types.contains_key(name) {
        return Some(name.to_owned());
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && types.get(base).is_some_and(|t| t == "histogram" || t == "summary")
        {
            return Some(base.to_owned());
        }
    }
    None
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !valid_metric_name(name) {
        return Err(format!("invalid metric name {name:?}"));
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let end;
        loop {
            // Skip a separating comma (a trailing one before `}` is allowed by the format).
            while let Some((_, c)) = chars.peek().copied() {
                if c == ',' || c == ' ' {
                    chars.next();
                } else {
                    break;
                }
            }
            let Some((start, c)) = chars.next() else { return Err("unterminated labels".into()) };
            if c == '}' {
                end = start + 1;
                break;
            }
            let mut label_end = start;
            let mut found_eq = false;
            for (i, c) in chars.by_ref() {
                if c == '=' {
                    label_end = i;
                    found_eq = true;
                    break;
                }
            }
            if !found_eq {
                return Err("a label without '='".into());
            }
            let label = &inner[start..label_end];
            if !valid_label_name(label) {
                return Err(format!("invalid label name {label:?}"));
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {label} value not quoted"));
            }
            let mut value = String::new();
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => match chars.next().map(|(_, c)| c) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => return Err(format!("bad escape \\{other:?} in label {label}")),
                    },
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return Err(format!("label {label} value not closed"));
            }
            if labels.insert(label.to_owned(), value).is_some() {
                return Err(format!("label {label} repeated"));
            }
        }
        rest = &inner[end..];
    }
    let mut fields = rest.split_whitespace();
    let value_text = fields.next().ok_or("no value")?;
    if !rest.starts_with(' ') {
        return Err("no space before the value".into());
    }
    let value = match value_text {
        "NaN" => f64::NAN,
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse::<f64>().map_err(|_| format!("value {v:?} is not a number"))?,
    };
    if let Some(timestamp) = fields.next() {
        timestamp.parse::<i64>().map_err(|_| format!("timestamp {timestamp:?} is not an integer"))?;
    }
    if fields.next().is_some() {
        return Err("extra fields after the value".into());
    }
    Ok(Sample { name: name.to_owned(), labels, value })
}

fn check_histograms(samples: &[Sample], types: &BTreeMap<String, String>) -> Result<(), String> {
    for (family, _) in types.iter().filter(|(_, t)| *t == "histogram") {
        // Series are told apart by their labels other than `le`; each has (bound, count) buckets.
        type Labels = Vec<(String, String)>;
        let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        let mut counts: BTreeMap<Labels, f64> = BTreeMap::new();
        for s in samples {
            let others: Vec<(String, String)> = s.labels.iter().filter(|(k, _)| *k != "le").map(|(k, v)| (k.clone(), v.clone())).collect();
            if s.name == format!("{family}_bucket") {
                let le = s.labels.get("le").ok_or_else(|| format!("{family}_bucket without le"))?;
                let bound = if le == "+Inf" { f64::INFINITY } else { le.parse::<f64>().map_err(|_| format!("{family}: le {le:?}"))? };
                series.entry(others).or_default().push((bound, s.value));
            } else if s.name == format!("{family}_count") {
                counts.insert(others, s.value);
            }
        }
        for (labels, buckets) in &series {
            if buckets.windows(2).any(|w| w[1].0 <= w[0].0 || w[1].1 < w[0].1) {
                return Err(format!("{family}{labels:?}: buckets not in order or not cumulative"));
            }
            let last = buckets.last().expect("at least one bucket");
            if last.0 != f64::INFINITY {
                return Err(format!("{family}{labels:?}: no +Inf bucket"));
            }
            if counts.get(labels) != Some(&last.1) {
                return Err(format!("{family}{labels:?}: +Inf bucket {} differs from _count {:?}", last.1, counts.get(labels)));
            }
        }
    }
    Ok(())
}

/// The value of the sample with this name and exactly these labels.
pub fn find(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name && s.labels.len() == labels.len() && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.value)
}

