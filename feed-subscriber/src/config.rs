//! The subscriber's configuration: a TOML file whose every key has a documented default
//! (`examples/feed-subscriber.toml` shows them all), overridden by command-line flags.

use std::path::Path;

use serde::Deserialize;

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
}

impl Default for Config {
    fn default() -> Self {
        Config { feeds: Vec::new(), database_url: String::new(), poll_interval_ms: 5_000, path_prefix: String::new() }
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
        Ok(())
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
    }
}
