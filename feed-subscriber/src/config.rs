//! The subscriber's configuration: a TOML file whose every key has a documented default
//! (`examples/feed-subscriber.toml` shows them all), overridden by command-line flags.

use std::path::Path;

use serde::Deserialize;

use feedsync_db::Database;

use crate::openmrs_notify::NotifierConfig;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Feeds to follow: feed-publisher URLs such as http://host:8086/ws/atomfeed/all/recent.
    pub feeds: Vec<String>,
    /// The database changes are applied to: mysql://... or sqlite://...
    pub database_url: String,
    /// How often feeds are polled once caught up, in milliseconds.
    pub poll_interval_ms: u64,
    /// Path prefix of the publisher's links (e.g. /openmrs), if it uses one.
    pub path_prefix: String,
    /// The OpenMRS running on the target database, told about applied rows so its cache and
    /// search index see them, e.g. http://127.0.0.1:8080/openmrs. Empty: not told.
    pub openmrs_url: String,
    /// OpenMRS user for those calls; its password comes from FEEDSYNC_OPENMRS_PASSWORD.
    pub openmrs_user: String,
    /// Distinct changed rows queued for OpenMRS before the busiest table becomes one
    /// whole-table call.
    pub notify_pending_rows_max: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            feeds: Vec::new(),
            database_url: String::new(),
            poll_interval_ms: 5_000,
            path_prefix: String::new(),
            openmrs_url: String::new(),
            openmrs_user: String::new(),
            notify_pending_rows_max: 10_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {message}")]
    Read { path: String, message: String },
    #[error("config file {path} is not valid: {message}. See examples/feed-subscriber.toml for every key and its default")]
    Parse { path: String, message: String },
    #[error("invalid setting {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read { path: path.display().to_string(), message: e.to_string() })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.display().to_string(), message: e.to_string() })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.database_url.is_empty() {
            return Err(ConfigError::Invalid { key: "database_url", message: "no database given: pass --db URL or set database_url".into() });
        }
        if self.feeds.is_empty() {
            return Err(ConfigError::Invalid { key: "feeds", message: "no feed given: pass --feed URL (repeatable) or set feeds = [...]".into() });
        }
        for feed in &self.feeds {
            if !(feed.starts_with("http://") || feed.starts_with("https://")) {
                return Err(ConfigError::Invalid { key: "feeds", message: format!("{feed:?} is not an http(s) URL") });
            }
        }
        if self.poll_interval_ms < 100 {
            return Err(ConfigError::Invalid { key: "poll_interval_ms", message: "must be at least 100".into() });
        }
        if !self.openmrs_url.is_empty() && !self.openmrs_url.starts_with("http://") {
            return Err(ConfigError::Invalid { key: "openmrs_url", message: format!("{:?} is not an http:// URL", self.openmrs_url) });
        }
        if self.openmrs_url.is_empty() && !self.openmrs_user.is_empty() {
            return Err(ConfigError::Invalid { key: "openmrs_user", message: "set openmrs_url too: the user is for that OpenMRS".into() });
        }
        if self.notify_pending_rows_max < 100 {
            return Err(ConfigError::Invalid { key: "notify_pending_rows_max", message: "must be at least 100".into() });
        }
        Ok(())
    }

    /// The OpenMRS notifier's settings, when `openmrs_url` is set; `password` is the
    /// `openmrs_user`'s.
    pub fn notifier_config(&self, database: &Database, password: Option<&str>) -> Option<NotifierConfig> {
        if self.openmrs_url.is_empty() {
            return None;
        }
        let user_password = (!self.openmrs_user.is_empty()).then(|| format!("{}:{}", self.openmrs_user, password.unwrap_or_default()));
        Some(NotifierConfig {
            user_password,
            database: Some(database.clone()),
            pending_rows_max: self.notify_pending_rows_max,
            ..NotifierConfig::new(&self.openmrs_url)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_shows_the_defaults() {
        let parsed: Config = toml::from_str(include_str!("../../examples/feed-subscriber.toml")).unwrap();
        let expected = Config { feeds: parsed.feeds.clone(), database_url: parsed.database_url.clone(), ..Config::default() };
        assert_eq!(parsed, expected);
        parsed.validate().unwrap();
    }

    #[test]
    fn validation_says_what_is_missing() {
        let c = Config::default();
        assert!(c.validate().unwrap_err().to_string().contains("--db"));
        let c = Config { database_url: "sqlite://x".into(), ..Config::default() };
        assert!(c.validate().unwrap_err().to_string().contains("--feed"));
        let c = Config { database_url: "sqlite://x".into(), feeds: vec!["ftp://x".into()], ..Config::default() };
        assert!(c.validate().is_err());
        let c = Config { database_url: "sqlite://x".into(), feeds: vec!["http://x".into()], openmrs_user: "admin".into(), ..Config::default() };
        assert!(c.validate().unwrap_err().to_string().contains("openmrs_url"));
    }
}
