//! The publisher's configuration: a TOML file whose every key has a documented default
//! (`examples/feed-publisher.toml` shows them all), overridden by command-line flags.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `mysql://user:password@host:3306/openmrs` or `sqlite://path`.
    pub database_url: String,
    pub server: ServerConfig,
    pub feed: FeedConfig,
    pub limits: Limits,
    /// An OpenMRS profile file replacing the built-in one (`shared/core/profiles/openmrs.toml`).
    pub profile: Option<PathBuf>,
    /// Link templates per category: `rest` and `fhir`, with `{uuid}` and `{patient_uuid}`.
    pub links: BTreeMap<String, LinkTemplates>,
    /// Parent/child network: who wins when both sides changed the same field.
    pub network: feedsync_wire::network::PolicyConfig,
    /// Alert rules and where alerts go: `serve` checks them and calls the webhook; `status`,
    /// `/ws/feedsync/status`, `/metrics` and the dashboard show them (see `alerts.rs`).
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// Who may read the feeds, resources and batch fetch.
    #[serde(default)]
    pub auth: AuthConfig,
}

/// `[auth]`: whether the feeds need a token (`feed-publisher token create`), and the
/// categories anyone may read without one (a public metadata feed, say).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Feeds, resources and batch fetch answer only a token with the `feeds` or `replica`
    /// scope and the category (or whoever the dashboard admits). On by default.
    pub required: bool,
    /// Categories readable without a token even when `required` is on.
    pub anonymous_categories: Vec<String>,
    /// OpenMRS users of the published database read the feeds with their OpenMRS login (HTTP
    /// Basic, or the `JSESSIONID` of `GET /ws/rest/v1/session`), as atomfeed clients log in
    /// to OpenMRS itself.
    pub openmrs_logins: bool,
    /// The privilege (besides the `System Developer` role) that lets an OpenMRS user read
    /// the feeds; give it to a role in OpenMRS's admin pages.
    pub openmrs_privilege: String,
}

pub use feedsync_wire::alerts::AlertsConfig;

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            required: true,
            anonymous_categories: Vec::new(),
            openmrs_logins: true,
            openmrs_privilege: crate::openmrs_login::DEFAULT_PRIVILEGE.to_owned(),
        }
    }
}

/// Observations kept per child and queue (the bound on `queue_growing_observations`).
pub const QUEUE_OBSERVATIONS_MAX: usize = 100;
/// Most attempts per webhook message.
pub const WEBHOOK_ATTEMPTS_MAX_LIMIT: u32 = 20;
/// Longest alert check interval (a day).
pub const ALERT_CHECK_INTERVAL_S_MAX: u64 = 86_400;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    /// Prefix before `/ws/...`, e.g. `/openmrs`, so clients configured for an OpenMRS server's
    /// atomfeed URLs work unchanged.
    pub path_prefix: String,
    /// Scheme, host and port clients use to reach this server, for absolute feed links; when
    /// empty, taken from each request's Host header.
    pub public_url: String,
    /// PEM file of this server's certificate (then its chain): with `tls_key`, the server
    /// speaks only https. `feed-publisher tls init` writes one for a network without a PKI.
    pub tls_cert: Option<PathBuf>,
    /// PEM file of the certificate's private key.
    pub tls_key: Option<PathBuf>,
    /// Serve plain http on an address other machines reach (tokens and patient data in
    /// clear). Off: without a certificate the server listens on loopback only.
    pub insecure_http: bool,
}

impl ServerConfig {
    /// Whether the server speaks TLS.
    pub fn tls(&self) -> Option<(&Path, &Path)> {
        Some((self.tls_cert.as_deref()?, self.tls_key.as_deref()?))
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FeedConfig {
    /// Entries per page. Changing it affects only pages not yet started: a page's entries are
    /// fixed when they are published.
    pub page_size: u32,
    /// How often the journal is checked for new changes.
    pub sequencer_interval_ms: u64,
    /// Journal rows published in one transaction.
    pub sequencer_batch_rows_max: u32,
    /// Path of OpenMRS's web application on the same host, used in `rest`/`fhir` links.
    pub openmrs_base_path: String,
    /// Publish changes a subscriber applied to this database (false: only local changes, so
    /// nothing is echoed back to where it came from).
    pub publish_applied_changes: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body accepted (batch fetch).
    pub request_body_bytes_max: usize,
    /// Most resources one batch-fetch request may name.
    pub batch_resources_max: usize,
    /// Requests handled at once; more wait for a slot. A request with a body takes its slot
    /// only once the body has arrived, so slow senders cannot hold the slots.
    pub requests_in_flight_max: usize,
    /// Longest a client may take to send a request's headers (also the wait for the next
    /// request on a kept-alive connection); then the connection is closed.
    pub header_read_timeout_ms: u64,
    /// Longest a client may take to send a request's body; then it gets 408.
    pub body_read_timeout_ms: u64,
    /// Connections open at once; more are closed as they arrive.
    pub connections_max: usize,
    /// Connections open at once from one address; more from it are closed as they arrive.
    pub connections_per_address_max: usize,
    /// Patients one child may fetch from elsewhere (`patient fetch`) per hour; more get 429.
    pub patient_fetches_per_child_per_hour_max: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct LinkTemplates {
    pub rest: Option<String>,
    pub fhir: Option<String>,
}

pub const PAGE_SIZE_DEFAULT: u32 = 500;
pub const PAGE_SIZE_MAX: u32 = 10_000;
pub const SEQUENCER_BATCH_ROWS_MAX_LIMIT: u32 = 2_000;

impl Default for Config {
    fn default() -> Self {
        Config {
            database_url: String::new(),
            server: ServerConfig::default(),
            feed: FeedConfig::default(),
            limits: Limits::default(),
            profile: None,
            links: BTreeMap::new(),
            network: Default::default(),
            alerts: AlertsConfig::default(),
            auth: AuthConfig::default(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig { listen: "127.0.0.1:8086".into(), path_prefix: String::new(), public_url: String::new(), tls_cert: None, tls_key: None, insecure_http: false }
    }
}

impl Default for FeedConfig {
    fn default() -> Self {
        FeedConfig {
            page_size: PAGE_SIZE_DEFAULT,
            sequencer_interval_ms: 1_000,
            sequencer_batch_rows_max: 500,
            openmrs_base_path: "/openmrs".into(),
            publish_applied_changes: false,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_body_bytes_max: 1 << 20,
            batch_resources_max: 1_000,
            requests_in_flight_max: 64,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            connections_max: 1_024,
            connections_per_address_max: 64,
            patient_fetches_per_child_per_hour_max: 120,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {message}")]
    Read { path: String, message: String },
    #[error("config file {path} is not valid: {message}. See examples/feed-publisher.toml for every key and its default")]
    Parse { path: String, message: String },
    #[error("invalid setting {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read { path: path.display().to_string(), message: e.to_string() })?;
        Config::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.database_url.is_empty() {
            return Err(ConfigError::Invalid { key: "database_url", message: "no database given: pass --db URL or set database_url".into() });
        }
        if !(1..=PAGE_SIZE_MAX).contains(&self.feed.page_size) {
            return Err(ConfigError::Invalid { key: "feed.page_size", message: format!("must be 1..={PAGE_SIZE_MAX}, got {}", self.feed.page_size) });
        }
        if !(1..=SEQUENCER_BATCH_ROWS_MAX_LIMIT).contains(&self.feed.sequencer_batch_rows_max) {
            return Err(ConfigError::Invalid {
                key: "feed.sequencer_batch_rows_max",
                message: format!("must be 1..={SEQUENCER_BATCH_ROWS_MAX_LIMIT}"),
            });
        }
        if self.server.tls_cert.is_some() != self.server.tls_key.is_some() {
            return Err(ConfigError::Invalid { key: "server.tls_cert", message: "tls_cert and tls_key go together: set both (--tls-cert FILE --tls-key FILE) or neither".into() });
        }
        let prefix = &self.server.path_prefix;
        if !prefix.is_empty() && (!prefix.starts_with('/') || prefix.ends_with('/')) {
            return Err(ConfigError::Invalid { key: "server.path_prefix", message: format!("must start with / and not end with / (e.g. /openmrs), got {prefix:?}") });
        }
        let l = &self.limits;
        if [l.batch_resources_max, l.requests_in_flight_max, l.connections_max, l.connections_per_address_max].contains(&0) || l.header_read_timeout_ms == 0 || l.body_read_timeout_ms == 0 {
            return Err(ConfigError::Invalid { key: "limits", message: "limits must be at least 1".into() });
        }
        validate_alerts(&self.alerts)
    }

    /// The link templates for a category: the configured ones, else the built-in defaults for
    /// OpenMRS's REST and FHIR2 APIs.
    pub fn link_templates(&self, category: &str) -> LinkTemplates {
        if let Some(configured) = self.links.get(category) {
            return configured.clone();
        }
        let base = &self.feed.openmrs_base_path;
        let rest = |path: &str| Some(format!("{base}/ws/rest/v1/{path}"));
        let fhir = |kind: &str| Some(format!("{base}/ws/fhir2/R4/{kind}/{{uuid}}"));
        match category {
            "patient" => LinkTemplates { rest: rest("patient/{uuid}?v=full"), fhir: fhir("Patient") },
            "person" => LinkTemplates { rest: rest("person/{uuid}?v=full"), fhir: fhir("Person") },
            "person_name" => LinkTemplates { rest: rest("person/{patient_uuid}/name/{uuid}?v=full"), fhir: None },
            "person_address" => LinkTemplates { rest: rest("person/{patient_uuid}/address/{uuid}?v=full"), fhir: None },
            "person_attribute" => LinkTemplates { rest: rest("person/{patient_uuid}/attribute/{uuid}?v=full"), fhir: None },
            "patient_identifier" => LinkTemplates { rest: rest("patient/{patient_uuid}/identifier/{uuid}?v=full"), fhir: None },
            "visit" => LinkTemplates { rest: rest("visit/{uuid}?v=full"), fhir: fhir("Encounter") },
            "encounter" => LinkTemplates { rest: rest("encounter/{uuid}?v=full"), fhir: fhir("Encounter") },
            "observation" => LinkTemplates { rest: rest("obs/{uuid}?v=full"), fhir: fhir("Observation") },
            "location" => LinkTemplates { rest: rest("location/{uuid}?v=full"), fhir: fhir("Location") },
            "provider" => LinkTemplates { rest: rest("provider/{uuid}?v=full"), fhir: fhir("Practitioner") },
            "user" => LinkTemplates { rest: rest("user/{uuid}?v=full"), fhir: None },
            "concept" => LinkTemplates { rest: rest("concept/{uuid}?v=full"), fhir: None },
            "order" | "drug_order" | "test_order" => LinkTemplates { rest: rest("order/{uuid}?v=full"), fhir: None },
            "allergy" => LinkTemplates { rest: rest("patient/{patient_uuid}/allergy/{uuid}?v=full"), fhir: fhir("AllergyIntolerance") },
            "conditions" => LinkTemplates { rest: rest("condition/{uuid}?v=full"), fhir: fhir("Condition") },
            "relationship" => LinkTemplates { rest: rest("relationship/{uuid}?v=full"), fhir: fhir("RelatedPerson") },
            "patient_program" => LinkTemplates { rest: rest("programenrollment/{uuid}?v=full"), fhir: None },
            _ => LinkTemplates::default(),
        }
    }
}

/// Checks `[alerts]` values that parse but cannot work.
fn validate_alerts(alerts: &AlertsConfig) -> Result<(), ConfigError> {
    let invalid = |key: &'static str, message: String| Err(ConfigError::Invalid { key, message });
    if !(1..=ALERT_CHECK_INTERVAL_S_MAX).contains(&alerts.check_interval_s) {
        return invalid("alerts.check_interval_s", format!("must be 1..={ALERT_CHECK_INTERVAL_S_MAX} seconds, got {}", alerts.check_interval_s));
    }
    if alerts.child_silent_after_s == 0 {
        return invalid("alerts.child_silent_after_s", "must be at least 1 second".into());
    }
    if !(2..=QUEUE_OBSERVATIONS_MAX).contains(&alerts.queue_growing_observations) {
        return invalid("alerts.queue_growing_observations", format!("must be 2..={QUEUE_OBSERVATIONS_MAX}, got {}", alerts.queue_growing_observations));
    }
    if alerts.queue_growing_min_increase < 1 || alerts.failed_events_min < 1 || alerts.conflicts_open_min < 1 {
        return invalid("alerts", "queue_growing_min_increase, failed_events_min and conflicts_open_min must be at least 1".into());
    }
    if !alerts.webhook_url.is_empty() {
        let url = url::Url::parse(&alerts.webhook_url)
            .map_err(|e| ConfigError::Invalid { key: "alerts.webhook_url", message: format!("{:?} is not a URL: {e}", alerts.webhook_url) })?;
        if url.scheme() != "http" {
            return invalid(
                "alerts.webhook_url",
                format!("only http:// is supported, got {}://; put a TLS proxy (e.g. nginx) in front for https", url.scheme()),
            );
        }
    }
    if alerts.webhook_timeout_ms == 0 || !(1..=WEBHOOK_ATTEMPTS_MAX_LIMIT).contains(&alerts.webhook_attempts_max) {
        return invalid("alerts", format!("webhook_timeout_ms must be at least 1 and webhook_attempts_max 1..={WEBHOOK_ATTEMPTS_MAX_LIMIT}"));
    }
    Ok(())
}

/// Fills a link template; `None` when it names a value this entry does not have.
pub fn fill_template(template: &str, uuid: &str, patient_uuid: Option<&str>) -> Option<String> {
    let mut out = template.replace("{uuid}", uuid);
    if out.contains("{patient_uuid}") {
        out = out.replace("{patient_uuid}", patient_uuid?);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_once_a_database_is_named() {
        let mut c = Config::default();
        assert!(c.validate().unwrap_err().to_string().contains("--db"));
        c.database_url = "sqlite://x".into();
        c.validate().unwrap();
        assert_eq!(c.feed.page_size, PAGE_SIZE_DEFAULT);
    }

    #[test]
    fn parse_errors_name_the_file_and_key() {
        let err = Config::parse("[feed]\npage_sise = 3\n", "p.toml").unwrap_err().to_string();
        assert!(err.contains("p.toml") && err.contains("page_sise"), "{err}");
        let c = Config::parse("database_url = \"sqlite://a\"\n[feed]\npage_size = 0\n", "p.toml").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("feed.page_size"));
        let c = Config::parse("database_url = \"sqlite://a\"\n[server]\npath_prefix = \"openmrs/\"\n", "p.toml").unwrap();
        assert!(c.validate().is_err());
        let c = Config::parse("database_url = \"sqlite://a\"\n[alerts]\nwebhook_url = \"https://hooks.example/x\"\n", "p.toml").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("TLS proxy"));
        let c = Config::parse("database_url = \"sqlite://a\"\n[alerts]\nqueue_growing_observations = 1\n", "p.toml").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("alerts.queue_growing_observations"));
        let c = Config::parse("database_url = \"sqlite://a\"\n[alerts]\nwebhook_url = \"http://127.0.0.1:9/hook\"\ncheck_interval_s = 5\n", "p.toml").unwrap();
        c.validate().unwrap();
        assert_eq!(c.alerts.check_interval_s, 5);
        assert_eq!(c.alerts.child_silent_after_s, AlertsConfig::default().child_silent_after_s);
    }

    #[test]
    fn the_example_config_parses_and_matches_the_defaults() {
        let text = include_str!("../../../examples/feed-publisher.toml");
        let parsed = Config::parse(text, "examples/feed-publisher.toml").unwrap();
        let mut expected = Config { database_url: parsed.database_url.clone(), ..Config::default() };
        expected.links = parsed.links.clone();
        assert_eq!(parsed, expected, "examples/feed-publisher.toml must show the defaults");
    }

    #[test]
    fn link_templates() {
        let c = Config::default();
        let t = c.link_templates("patient");
        assert_eq!(fill_template(t.rest.as_deref().unwrap(), "u1", None).unwrap(), "/openmrs/ws/rest/v1/patient/u1?v=full");
        let t = c.link_templates("person_name");
        assert_eq!(fill_template(t.rest.as_deref().unwrap(), "n1", None), None);
        assert_eq!(fill_template(t.rest.as_deref().unwrap(), "n1", Some("p1")).unwrap(), "/openmrs/ws/rest/v1/person/p1/name/n1?v=full");
        assert_eq!(c.link_templates("mystery"), LinkTemplates::default());
    }
}
