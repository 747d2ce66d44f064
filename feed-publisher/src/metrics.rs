//! Prometheus metrics: `GET /metrics` on the publisher (what [`crate::status::Status`] knows,
//! plus HTTP request counters and durations kept in atomics in `App`), written in the text
//! format of `feedsync_core::exposition`.
//!
//! Access is the dashboard's: this machine only, unless `FEEDSYNC_ADMIN_TOKEN` is set, then
//! every scrape must carry it (`authorization: Bearer`, which Prometheus' scrape config
//! supports). The numbers name children, so they are not for everyone who can reach the feeds.
//!
//! Names are those of the status (`waiting_to_child`, `pending_push`, `held`, ...) with the
//! `feedsync_` prefix; counters end in `_total`, durations are in seconds.


use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};

pub use feedsync_core::exposition::{CONTENT_TYPE, Exposition, Kind, Sample, escape_label_value, find, format_value, parse_exposition};

use feedsync_wire::alerts::AlertKind;
use crate::server::{App, HttpError, PeerAddr, Reply};
use crate::status::Status;

pub const METRICS_PATH: &str = "/metrics";
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
    let class = if path.starts_with(&format!("{}/", feedsync_node::feed::ATOMFEED_PATH)) {
        "feed_page"
    } else if path == feedsync_node::feed::ATOMFEED_PATH {
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
    check_access(app, request)?;
    if request.method() != hyper::Method::GET && request.method() != hyper::Method::HEAD {
        return Err(HttpError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{} is not allowed here", request.method()), "use GET"));
    }
    let status = match app.database.session().await {
        Ok(mut session) => match crate::status::compute(&mut session, &app.config).await {
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

/// The dashboard's rule: this machine without a token; with `FEEDSYNC_ADMIN_TOKEN`, the token
/// (or a dashboard login's cookie).
pub(crate) fn check_access(app: &App, request: &Request<Incoming>) -> Result<(), HttpError> {
    let peer = request.extensions().get::<PeerAddr>().map(|p| p.0);
    let token_set = std::env::var(crate::dashboard::ADMIN_TOKEN_ENV).is_ok_and(|t| !t.trim().is_empty());
    crate::dashboard::dashboard_admits(app, peer, request.headers())
        .map(|_| ())
        .map_err(|refusal| HttpError::new(if token_set { StatusCode::UNAUTHORIZED } else { StatusCode::FORBIDDEN }, refusal.message, refusal.hint))
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
