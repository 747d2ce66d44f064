//! Sinks shipped with the subscriber, each a [`crate::sink::Sink`]: JSON lines to a file or
//! standard output, and an HTTP webhook. [`open_sink`] picks one from a command-line
//! description. A program embedding the subscriber writes its own the same way (see
//! `examples/embed_subscriber.rs`).

pub mod json_lines;
pub mod webhook;

pub use json_lines::JsonLinesSink;
pub use webhook::{WebhookLimits, WebhookSink};

use crate::sink::{Delivery, Sink, SinkError};

/// A sink chosen at run time. An enum rather than `Box<dyn Sink>`: `run_sink` is generic, and
/// a closed set of shipped sinks needs no boxing (the same reasoning as the database `Session`).
pub enum AnySink {
    JsonLines(JsonLinesSink),
    /// Boxed: it holds a connection pool, many times a file's size.
    Webhook(Box<WebhookSink>),
}

impl Sink for AnySink {
    async fn deliver(&mut self, batch: &[Delivery]) -> Result<(), SinkError> {
        match self {
            AnySink::JsonLines(sink) => sink.deliver(batch).await,
            AnySink::Webhook(sink) => sink.deliver(batch).await,
        }
    }
}

/// Opens the sink `spec` describes: `jsonl:PATH` (appended to), `jsonl:-` (standard output) or
/// `webhook:http://host/path` (with [`WebhookLimits::default`]).
pub fn open_sink(spec: &str) -> Result<AnySink, SinkError> {
    match spec.split_once(':') {
        Some(("jsonl", "-")) => Ok(AnySink::JsonLines(JsonLinesSink::stdout())),
        Some(("jsonl", path)) if !path.is_empty() => {
            JsonLinesSink::append_to(path).map(AnySink::JsonLines).map_err(|e| SinkError::permanent(format!("cannot open {path} to append JSON lines: {e}")))
        }
        Some(("webhook", url)) => WebhookSink::new(url, WebhookLimits::default()).map(|sink| AnySink::Webhook(Box::new(sink))),
        _ => Err(SinkError::permanent(format!("unknown sink {spec:?}: use jsonl:PATH, jsonl:- (standard output) or webhook:http://host/path"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinks_open_from_their_description() {
        assert!(matches!(open_sink("jsonl:-"), Ok(AnySink::JsonLines(_))));
        assert!(matches!(open_sink("webhook:http://127.0.0.1:9/hook"), Ok(AnySink::Webhook(_))));
        for bad in ["jsonl:", "webhook:https://h/", "webhook:not a url", "kafka:topic", "out.jsonl"] {
            let error = open_sink(bad).err().unwrap_or_else(|| panic!("{bad} opened"));
            assert!(!error.retryable, "{bad}: {error}");
        }
        let dir = std::env::temp_dir().join(format!("feedsync_open_sink_{}", std::process::id()));
        assert!(open_sink(&format!("jsonl:{}", dir.join("missing/out.jsonl").display())).is_err(), "a folder that does not exist");
        std::fs::create_dir_all(&dir).unwrap();
        assert!(matches!(open_sink(&format!("jsonl:{}", dir.join("out.jsonl").display())), Ok(AnySink::JsonLines(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
