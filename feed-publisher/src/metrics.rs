//! Prometheus metrics: `GET /metrics` on the publisher (what [`crate::status::Status`] knows,
//! plus HTTP request counters and durations kept in atomics in `App`), and the text format
//! both services write ([`Exposition`]) and tests read back ([`parse_exposition`]).
//!
//! Access is the dashboard's: this machine only, unless `FEEDSYNC_ADMIN_TOKEN` is set, then
//! every scrape must carry it (`authorization: Bearer`, which Prometheus' scrape config
//! supports). The numbers name children, so they are not for everyone who can reach the feeds.
//!
//! Names are those of the status (`waiting_to_child`, `pending_push`, `held`, ...) with the
//! `feedsync_` prefix; counters end in `_total`, durations are in seconds.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};

use crate::alerts::AlertKind;
use crate::server::{App, HttpError, PeerAddr, Reply};
use crate::status::Status;

pub const METRICS_PATH: &str = "/metrics";
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

// ---- HTTP counters ----

/// What a request was for, as the `route` label says it.
pub const ROUTE_CLASSES: [&str; 10] = ["feed_page", "feed_list", "resource", "batch", "network", "dashboard", "health", "status", "metrics", "other"];
/// Status codes counted by number; any other by its class (`5xx`...).
const STATUS_CODES: [u16; 22] = [200, 201, 204, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404, 405, 409, 410, 413, 415, 429, 500, 502, 503];
const STATUS_LABELS: usize = STATUS_CODES.len() + 5;
/// Request duration histogram bounds, in seconds.
pub const DURATION_BUCKETS_S: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The route class of a request path (with or without the configured prefix). Pure.
pub fn route_class(path: &str, prefix: &str) -> usize {
    let path = path.strip_prefix(prefix).filter(|p| p.starts_with('/')).unwrap_or(path);
    let class = if path.starts_with(&format!("{}/", crate::feed::ATOMFEED_PATH)) {
        "feed_page"
    } else if path == crate::feed::ATOMFEED_PATH {
        "feed_list"
    } else if path.starts_with(&format!("{}/", feedsync_wire::resource::RESOURCE_PATH)) {
        "resource"
    } else if path == feedsync_wire::resource::BATCH_PATH {
        "batch"
    } else if path.starts_with(feedsync_wire::network::NETWORK_PATH) {
        "network"
    } else if crate::dashboard::handles(path) {
        "dashboard"
    } else if path == crate::server::HEALTH_PATH {
        "health"
    } else if path == crate::status::STATUS_PATH {
        "status"
    } else if path == METRICS_PATH {
        "metrics"
    } else {
        "other"
    };
    ROUTE_CLASSES.iter().position(|c| *c == class).expect("a known class")
}

fn status_index(status: u16) -> usize {
    STATUS_CODES.iter().position(|c| *c == status).unwrap_or_else(|| STATUS_CODES.len() + (status / 100).clamp(1, 5) as usize - 1)
}

fn status_label(index: usize) -> String {
    STATUS_CODES.get(index).map_or_else(|| format!("{}xx", index - STATUS_CODES.len() + 1), |c| c.to_string())
}

/// Requests answered since start, by route class and status, and their durations. Atomics:
/// counting costs a few uncontended adds per request.
pub struct HttpMetrics {
    requests: [[AtomicU64; STATUS_LABELS]; ROUTE_CLASSES.len()],
    /// Per route class: one counter per bucket (not cumulative; summed when written).
    buckets: [[AtomicU64; DURATION_BUCKETS_S.len() + 1]; ROUTE_CLASSES.len()],
    duration_us: [AtomicU64; ROUTE_CLASSES.len()],
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            buckets: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            duration_us: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl HttpMetrics {
    pub fn record(&self, route: usize, status: u16, elapsed: Duration) {
        let route = route.min(ROUTE_CLASSES.len() - 1);
        self.requests[route][status_index(status)].fetch_add(1, Ordering::Relaxed);
        let seconds = elapsed.as_secs_f64();
        let bucket = DURATION_BUCKETS_S.iter().position(|b| seconds <= *b).unwrap_or(DURATION_BUCKETS_S.len());
        self.buckets[route][bucket].fetch_add(1, Ordering::Relaxed);
        self.duration_us[route].fetch_add(elapsed.as_micros().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// Requests answered for a route class with a status (tests and the status page).
    pub fn requests(&self, route: &str, status: u16) -> u64 {
        let Some(r) = ROUTE_CLASSES.iter().position(|c| *c == route) else { return 0 };
        self.requests[r][status_index(status)].load(Ordering::Relaxed)
    }

    pub fn write(&self, out: &mut Exposition) {
        out.family("feedsync_http_requests_total", Kind::Counter, "HTTP requests answered since the server started, by route class and status.");
        for (r, route) in ROUTE_CLASSES.iter().enumerate() {
            for s in 0..STATUS_LABELS {
                let n = self.requests[r][s].load(Ordering::Relaxed);
                if n > 0 {
                    out.sample("feedsync_http_requests_total", &[("route", route), ("status", &status_label(s))], n as f64);
                }
            }
        }
        let name = "feedsync_http_request_duration_seconds";
        out.family(name, Kind::Histogram, "Time from a request's arrival to its answer (waiting for a slot included), by route class.");
        for (r, route) in ROUTE_CLASSES.iter().enumerate() {
            let counts: Vec<u64> = self.buckets[r].iter().map(|b| b.load(Ordering::Relaxed)).collect();
            let total: u64 = counts.iter().sum();
            if total == 0 {
                continue;
            }
            let mut cumulative = 0;
            for (i, bound) in DURATION_BUCKETS_S.iter().enumerate() {
                cumulative += counts[i];
                out.sample(&format!("{name}_bucket"), &[("route", route), ("le", &format_value(*bound))], cumulative as f64);
            }
            out.sample(&format!("{name}_bucket"), &[("route", route), ("le", "+Inf")], total as f64);
            out.sample(&format!("{name}_sum"), &[("route", route)], self.duration_us[r].load(Ordering::Relaxed) as f64 / 1e6);
            out.sample(&format!("{name}_count"), &[("route", route)], total as f64);
        }
    }
}

// ---- the route ----

/// Renders every metric: the status's numbers (when the database answers) and the HTTP
/// counters (always). A failing database shows as `feedsync_database_up 0`, not as a failed
/// scrape, so the alert on it can fire.
pub fn render(status: Option<&Status>, http: &HttpMetrics) -> String {
    let mut out = Exposition::new();
    out.single("feedsync_database_up", Kind::Gauge, "1 when the database answered this scrape, else 0.", status.is_some() as u8 as f64);
    if let Some(s) = status {
        write_status(&mut out, s);
    }
    http.write(&mut out);
    out.finish()
}

fn write_status(out: &mut Exposition, s: &Status) {
    out.single("feedsync_journal_backlog", Kind::Gauge, "Changes captured but not yet published (rows in feedsync_journal).", s.journal_backlog as f64);
    if let Some(age) = s.oldest_journal_age_s {
        out.single("feedsync_journal_oldest_age_seconds", Kind::Gauge, "Age of the oldest change waiting to be published.", age as f64);
    }
    out.single("feedsync_last_event_seq", Kind::Gauge, "Number of the newest published event.", s.last_event_seq as f64);
    if let Some(age) = s.last_event_age_s {
        out.single("feedsync_last_event_age_seconds", Kind::Gauge, "Seconds since the newest published event's change.", age as f64);
    }
    out.single("feedsync_events_published_total", Kind::Counter, "Events published since install (event numbers have no gaps).", s.last_event_seq as f64);
    out.family(
        "feedsync_category_events_published_total",
        Kind::Counter,
        "Events published per category feed (from the page table: exact unless feed.page_size changed after pages were archived).",
    );
    for c in &s.categories {
        out.sample("feedsync_category_events_published_total", &[("category", &c.category)], c.events as f64);
    }
    out.single("feedsync_held", Kind::Gauge, "Changes held at this server until they can apply (from children and from its own parent).", s.held as f64);
    out.single("feedsync_open_conflicts", Kind::Gauge, "Open conflict records at this server.", s.open_conflicts as f64);
    let active = s.children.iter().filter(|c| !c.revoked).count();
    out.family("feedsync_children", Kind::Gauge, "Registered children, by state.");
    out.sample("feedsync_children", &[("state", "active")], active as f64);
    out.sample("feedsync_children", &[("state", "revoked")], (s.children.len() - active) as f64);
    let children: Vec<_> = s.children.iter().filter(|c| !c.revoked).collect();
    let per_child = |out: &mut Exposition, name: &str, help: &str, value: &dyn Fn(&crate::status::ChildStatus) -> Option<i64>| {
        out.family(name, Kind::Gauge, help);
        for c in &children {
            if let Some(v) = value(c) {
                out.sample(name, &[("child", &c.name)], v as f64);
            }
        }
    };
    per_child(out, "feedsync_child_last_contact_age_seconds", "Seconds since an active child was last heard from (no sample: never).", &|c| {
        c.last_contact_age_s
    });
    per_child(out, "feedsync_child_waiting_to_child", "The parent's changes an active child has not received yet.", &|c| Some(c.waiting_to_child));
    per_child(
        out,
        "feedsync_child_pending_push",
        "An active child's own changes the parent has not accepted, as of its last report (no sample: no report).",
        &|c| c.pending_push,
    );
    per_child(out, "feedsync_child_catchment_patients", "Patients in an active child's catchment.", &|c| Some(c.catchment_patients));
    out.family("feedsync_child_held", Kind::Gauge, "Changes held for an active child, at the parent or at the child (as of its last report).");
    for c in &children {
        out.sample("feedsync_child_held", &[("child", &c.name), ("side", "parent")], c.held_at_parent as f64);
        if let Some(n) = c.held_at_child {
            out.sample("feedsync_child_held", &[("child", &c.name), ("side", "child")], n as f64);
        }
    }
    out.family(
        "feedsync_child_open_conflicts",
        Kind::Gauge,
        "Open conflicts with an active child, found at the parent or at the child (as of its last report).",
    );
    for c in &children {
        out.sample("feedsync_child_open_conflicts", &[("child", &c.name), ("side", "parent")], c.conflicts_at_parent as f64);
        if let Some(n) = c.conflicts_at_child {
            out.sample("feedsync_child_open_conflicts", &[("child", &c.name), ("side", "child")], n as f64);
        }
    }
    per_child(out, "feedsync_child_last_round_failed", "1 when an active child's last round ended with an error (no sample: no report).", &|c| {
        c.reported_at.as_ref().map(|_| c.last_round_error.is_some() as i64)
    });
    out.family("feedsync_alerts_firing", Kind::Gauge, "Alerts firing now, by kind (see [alerts] in the config).");
    for kind in AlertKind::ALL {
        let n = s.alerts.iter().filter(|a| a.kind == kind).count();
        out.sample("feedsync_alerts_firing", &[("kind", kind.as_str())], n as f64);
    }
}

/// `GET /metrics`.
pub(crate) async fn route(app: &App, request: &Request<Incoming>) -> Result<Reply, HttpError> {
    check_access(request)?;
    if request.method() != hyper::Method::GET && request.method() != hyper::Method::HEAD {
        return Err(HttpError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{} is not allowed here", request.method()), "use GET"));
    }
    let status = match app.database.session().await {
        Ok(mut session) => match Status::compute(&mut session, &app.config).await {
            Ok(status) => Some(status),
            Err(e) => {
                tracing::warn!(error = %e, "metrics: the database did not answer; reporting feedsync_database_up 0");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "metrics: the database is unreachable; reporting feedsync_database_up 0");
            None
        }
    };
    let body = render(status.as_ref(), &app.http_metrics);
    Ok(Reply::new(StatusCode::OK, CONTENT_TYPE, Bytes::from(body)).no_etag())
}

/// The dashboard's rule: this machine without a token; with `FEEDSYNC_ADMIN_TOKEN`, the token.
pub(crate) fn check_access(request: &Request<Incoming>) -> Result<(), HttpError> {
    let peer = request.extensions().get::<PeerAddr>().map(|p| p.0);
    let token = std::env::var(crate::dashboard::ADMIN_TOKEN_ENV).ok();
    crate::dashboard::check_access(peer, request.headers(), token.as_deref().filter(|t| !t.trim().is_empty()))
        .map(|_| ())
        .map_err(|refusal| HttpError::new(if token.is_some() { StatusCode::UNAUTHORIZED } else { StatusCode::FORBIDDEN }, refusal.message, refusal.hint))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_text_parses_back() {
        let mut out = Exposition::new();
        out.single("feedsync_a", Kind::Gauge, "A gauge.\nTwo lines \\ and a backslash.", 3.0);
        out.family("feedsync_b_total", Kind::Counter, "Labelled.");
        out.sample("feedsync_b_total", &[("child", "north \"hc\"\\x\ny")], 1.5);
        out.sample("feedsync_b_total", &[("child", "south")], f64::NAN);
        let http = HttpMetrics::default();
        http.record(route_class("/ws/atomfeed/patient/recent", ""), 200, Duration::from_millis(3));
        http.record(route_class("/openmrs/ws/atomfeed/patient/3", "/openmrs"), 200, Duration::from_millis(70));
        http.record(route_class("/ws/feedsync/network/push", ""), 401, Duration::from_secs(100));
        http.record(route_class("/nope", ""), 418, Duration::from_millis(1));
        http.write(&mut out);
        let text = out.finish();
        let samples = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(find(&samples, "feedsync_a", &[]), Some(3.0));
        assert_eq!(find(&samples, "feedsync_b_total", &[("child", "north \"hc\"\\x\ny")]), Some(1.5));
        assert!(find(&samples, "feedsync_b_total", &[("child", "south")]).unwrap().is_nan());
        assert_eq!(find(&samples, "feedsync_http_requests_total", &[("route", "feed_page"), ("status", "200")]), Some(2.0));
        assert_eq!(find(&samples, "feedsync_http_requests_total", &[("route", "network"), ("status", "401")]), Some(1.0));
        assert_eq!(find(&samples, "feedsync_http_requests_total", &[("route", "other"), ("status", "4xx")]), Some(1.0));
        assert_eq!(find(&samples, "feedsync_http_request_duration_seconds_bucket", &[("route", "feed_page"), ("le", "0.005")]), Some(1.0));
        assert_eq!(find(&samples, "feedsync_http_request_duration_seconds_bucket", &[("route", "feed_page"), ("le", "0.1")]), Some(2.0));
        assert_eq!(find(&samples, "feedsync_http_request_duration_seconds_bucket", &[("route", "network"), ("le", "30")]), Some(0.0));
        assert_eq!(find(&samples, "feedsync_http_request_duration_seconds_count", &[("route", "network")]), Some(1.0));
        assert_eq!(find(&samples, "feedsync_http_request_duration_seconds_sum", &[("route", "network")]), Some(100.0));
        assert_eq!(http.requests("feed_page", 200), 2);
    }

    #[test]
    fn the_parser_refuses_what_the_format_forbids() {
        let bad = [
            ("a 1\n", "before its family"),
            ("# TYPE a gauge\na{x=\"1\"} \n", "no value"),
            ("# TYPE a gauge\na{x=1} 1\n", "not quoted"),
            ("# TYPE a gauge\na{x=\"1\",x=\"2\"} 1\n", "repeated"),
            ("# TYPE a gauge\na{1x=\"1\"} 1\n", "invalid label name"),
            ("# TYPE a gauge\na one\n", "not a number"),
            ("# TYPE a gauge\n# TYPE a counter\n", "second TYPE"),
            ("# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na 2\n", "outside its family"),
            ("# TYPE a gauge\na 1\n# HELP a late\n", "HELP after samples"),
            ("# TYPE a gauge\na{x=\"\\q\"} 1\n", "bad escape"),
            ("# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n", "cumulative"),
            ("# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_count 1\n", "+Inf"),
            ("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 1\n", "differs"),
            ("# TYPE a gauge\na 1 2 3\n", "extra fields"),
        ];
        for (text, expected) in bad {
            let e = parse_exposition(text).unwrap_err();
            assert!(e.contains(expected), "{text:?}: {e}");
        }
        let good = "# some comment\n# HELP a x\n# TYPE a gauge\na{x=\"1\",} 1 1700000000000\n\n# TYPE h histogram\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.2\nh_count 1\n";
        assert_eq!(parse_exposition(good).unwrap().len(), 5);
    }

    #[test]
    fn route_classes_and_status_labels() {
        assert_eq!(ROUTE_CLASSES[route_class("/ws/atomfeed", "")], "feed_list");
        assert_eq!(ROUTE_CLASSES[route_class("/ws/feedsync/resource/obs/x", "")], "resource");
        assert_eq!(ROUTE_CLASSES[route_class("/ws/feedsync/resources", "")], "batch");
        assert_eq!(ROUTE_CLASSES[route_class("/dashboard/", "")], "dashboard");
        assert_eq!(ROUTE_CLASSES[route_class("/ws/feedsync/admin/overview", "")], "dashboard");
        assert_eq!(ROUTE_CLASSES[route_class("/ws/feedsync/health", "")], "health");
        assert_eq!(ROUTE_CLASSES[route_class("/ws/feedsync/status", "")], "status");
        assert_eq!(ROUTE_CLASSES[route_class("/openmrs/metrics", "/openmrs")], "metrics");
        assert_eq!(status_label(status_index(503)), "503");
        assert_eq!(status_label(status_index(599)), "5xx");
        assert_eq!(status_label(status_index(102)), "1xx");
    }
}
