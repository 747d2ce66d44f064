//! A sink POSTing each batch to an HTTP endpoint as a JSON array of [`Delivery`] items, for
//! systems that would rather be called than poll (a lab system, a warehouse loader, an HIE
//! mediator).
//!
//! Delivery is at-least-once, so the receiver must be able to recognise a repeat: every item
//! carries `idempotency_key` (its entry id, stable forever), and every request carries an
//! `Idempotency-Key` header (SHA-256 of the entry ids it holds, so a retried request has the
//! same key as the first attempt). A 2xx answer means the receiver has the request; 408, 429,
//! 5xx and a lost connection are retried with capped backoff (the request may or may not have
//! been taken: the keys make repeating it safe); any other status is a refusal that retrying
//! will not change, and stops the run naming the first entry of the request. A batch whose JSON
//! is over `body_bytes_max` goes in several requests, each with its own key.
//!
//! Each POST is one [`HttpClient::send_once`] of the toolkit's client (its own retries and
//! redirects are not used: this sink keeps its own retry policy, and a POST must not turn
//! into a GET, so the configured URL must be the final one).

use std::ops::Range;

use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use sha2::{Digest, Sha256};

use feedsync_wire::hex;

use crate::client::{ClientError, ClientLimits, HttpClient, Request, subscriber_client};
use crate::sink::{Delivery, RetryPolicy, Sink, SinkError};

/// Named limits; [`Default`] suits a receiver on the same network.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookLimits {
    /// Largest request body; a batch over it is split. Receivers commonly refuse more than
    /// 1 MiB.
    pub body_bytes_max: usize,
    /// Longest one POST may take, answer included.
    pub request_timeout_ms: u64,
    /// Retries of one request after 408, 429, 5xx or a lost connection. The run retries the
    /// whole batch again on top of this (see `SinkLimits::retry`).
    pub retry: RetryPolicy,
}

impl Default for WebhookLimits {
    fn default() -> Self {
        WebhookLimits {
            body_bytes_max: 1 << 20,
            request_timeout_ms: 30_000,
            retry: RetryPolicy { retries_max: 4, retry_delay_ms_first: 500, retry_delay_ms_max: 10_000 },
        }
    }
}

/// Bytes of a receiver's answer kept for an error message; the rest is not read.
const ANSWER_BYTES_MAX: usize = 16 << 10;
/// Characters of the answer quoted in an error.
const ANSWER_EXCERPT_CHARS_MAX: usize = 200;

/// The header naming a request for the receiver's deduplication.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// See the module documentation.
pub struct WebhookSink {
    url: String,
    client: HttpClient,
    /// Sent with every request, e.g. an `Authorization` token.
    headers: HeaderMap,
    limits: WebhookLimits,
    requests_accepted: u64,
}

impl std::fmt::Debug for WebhookSink {
    // By hand: the extra headers may hold a token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSink").field("url", &self.url).field("limits", &self.limits).field("extra_headers", &self.headers.len()).finish()
    }
}

/// One item of a request: the delivery plus its own idempotency key.
#[derive(Serialize)]
struct Item<'a> {
    idempotency_key: &'a str,
    #[serde(flatten)]
    delivery: &'a Delivery,
}

impl WebhookSink {
    /// `url` must be http:// (https through a local TLS proxy, as for feeds).
    pub fn new(url: &str, limits: WebhookLimits) -> Result<WebhookSink, SinkError> {
        let parsed = url::Url::parse(url).map_err(|e| SinkError::permanent(format!("webhook URL {url:?} does not parse: {e}")))?;
        if parsed.scheme() != "http" {
            return Err(SinkError::permanent(format!("webhook URL {url:?}: only http:// is supported; put a TLS-terminating proxy on this machine for https")));
        }
        let client = subscriber_client(ClientLimits { request_timeout_ms: limits.request_timeout_ms, ..ClientLimits::default() });
        Ok(WebhookSink { url: parsed.to_string(), client, headers: HeaderMap::new(), limits, requests_accepted: 0 })
    }

    /// Adds a header sent with every request (e.g. `Authorization: Bearer ...`); its value
    /// never appears in logs.
    pub fn with_header(mut self, name: &str, value: &str) -> Result<WebhookSink, SinkError> {
        let name = HeaderName::try_from(name).map_err(|e| SinkError::permanent(format!("header name {name:?}: {e}")))?;
        let mut value = HeaderValue::try_from(value).map_err(|e| SinkError::permanent(format!("header {name} has an invalid value: {e}")))?;
        value.set_sensitive(true);
        self.headers.insert(name, value);
        Ok(self)
    }

    /// Requests the receiver answered 2xx.
    pub fn requests_accepted(&self) -> u64 {
        self.requests_accepted
    }

    /// One POST; `Ok` on 2xx.
    async fn post(&self, body: Bytes, idempotency_key: &str) -> Result<(), SinkError> {
        let request = Request::new("POST", &self.url)
            .header("content-type", "application/json")
            .header(IDEMPOTENCY_KEY_HEADER, idempotency_key)
            .headers(&self.headers)
            .body(body)
            // Only for the message: a receiver's long answer is cut, never an error itself.
            .keep_answer_bytes(ANSWER_BYTES_MAX);
        let response = self.client.send_once(request).await.map_err(|e| self.send_error(e))?;
        match answer_error(&self.url, response.status.as_u16(), &response.body) {
            None => Ok(()),
            Some(error) => Err(error),
        }
    }

    /// What kept an answer from arriving, in this sink's terms.
    fn send_error(&self, error: ClientError) -> SinkError {
        match error {
            ClientError::Timeout { timeout_ms, .. } => SinkError::retryable(format!("POST {} got no answer within {timeout_ms} ms", self.url)),
            ClientError::Connect { message, .. } | ClientError::Transport { message, .. } => {
                SinkError::retryable(format!("POST {} failed: {message}", self.url))
            }
            ClientError::Request { message, .. } => SinkError::permanent(format!("the request to {} cannot be built: {message}", self.url)),
            other if other.is_retryable() => SinkError::retryable(other.to_string()),
            other => SinkError::permanent(other.to_string()),
        }
    }
}

impl Sink for WebhookSink {
    async fn deliver(&mut self, batch: &[Delivery]) -> Result<(), SinkError> {
        let mut items = Vec::with_capacity(batch.len());
        for delivery in batch {
            let item = Item { idempotency_key: &delivery.entry_id, delivery };
            items.push(
                serde_json::to_vec(&item)
                    .map_err(|e| SinkError::permanent(format!("entry {} cannot be written as JSON: {e}", delivery.entry_id)).at_entry(&delivery.entry_id))?,
            );
        }
        let chunks = split_batch(&items, self.limits.body_bytes_max).map_err(|too_large| {
            let entry_id = &batch[too_large].entry_id;
            SinkError::permanent(format!(
                "entry {entry_id} alone is {} bytes of JSON, over the webhook's body_bytes_max of {}; raise it if the receiver accepts that much",
                items[too_large].len(),
                self.limits.body_bytes_max
            ))
            .at_entry(entry_id)
        })?;
        for chunk in chunks {
            let body = json_array(&items[chunk.clone()]);
            let key = batch_idempotency_key(batch[chunk.clone()].iter().map(|d| d.entry_id.as_str()));
            let first_entry = &batch[chunk.start].entry_id;
            let mut backoff = self.limits.retry.backoff();
            loop {
                match self.post(body.clone(), &key).await {
                    Ok(()) => break,
                    Err(error) if error.retryable && backoff.wait().await => {
                        tracing::warn!(url = %self.url, %error, retry = backoff.retries_done(), "webhook request failed; retrying");
                    }
                    Err(error) => return Err(error.at_entry(first_entry)),
                }
            }
            self.requests_accepted += 1;
        }
        Ok(())
    }
}

/// Pure: the receiver's answer as an error, or `None` for 2xx.
pub fn answer_error(url: &str, status: u16, answer: &[u8]) -> Option<SinkError> {
    let text = String::from_utf8_lossy(answer);
    let said: String = text.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(ANSWER_EXCERPT_CHARS_MAX).collect();
    let message = |advice: &str| format!("{url} answered {status}: {said:?}; {advice}");
    match status {
        200..=299 => None,
        _ if feedsync_http::status_is_retryable(status) => Some(SinkError::retryable(message("retrying later may help"))),
        300..=399 => Some(SinkError::permanent(message("a POST is not redirected; configure the URL it points to"))),
        401 | 403 => Some(SinkError::permanent(message("check the credentials configured for the webhook"))),
        _ => Some(SinkError::permanent(message("the receiver refuses this request; retrying will not help"))),
    }
}

/// Pure: splits serialized items into requests whose JSON array (`[a,b]`) is at most
/// `body_bytes_max` bytes, in order. `Err(index)` names an item too large on its own.
pub fn split_batch(items: &[Vec<u8>], body_bytes_max: usize) -> Result<Vec<Range<usize>>, usize> {
    let mut chunks = Vec::new();
    let mut start = 0;
    // "[" and "]", plus a comma before every item but the first.
    let mut size = 2;
    for (index, item) in items.iter().enumerate() {
        if item.len() + 2 > body_bytes_max {
            return Err(index);
        }
        let added = item.len() + usize::from(index > start);
        if size + added > body_bytes_max {
            chunks.push(start..index);
            start = index;
            size = 2 + item.len();
        } else {
            size += added;
        }
    }
    if start < items.len() {
        chunks.push(start..items.len());
    }
    Ok(chunks)
}

fn json_array(items: &[Vec<u8>]) -> Bytes {
    let mut body = Vec::with_capacity(items.iter().map(|item| item.len() + 1).sum::<usize>() + 2);
    body.push(b'[');
    for (index, item) in items.iter().enumerate() {
        if index > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item);
    }
    body.push(b']');
    Bytes::from(body)
}

/// Pure: the `Idempotency-Key` of a request holding these entries: SHA-256 of the ids, one per
/// line, in hex. The same entries give the same key on every attempt and every run.
pub fn batch_idempotency_key<'a>(entry_ids: impl Iterator<Item = &'a str>) -> String {
    let mut hasher = Sha256::new();
    for (index, id) in entry_ids.enumerate() {
        if index > 0 {
            hasher.update(b"\n");
        }
        hasher.update(id.as_bytes());
    }
    hex(&hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(sizes: &[usize]) -> Vec<Vec<u8>> {
        sizes.iter().map(|&n| vec![b'x'; n]).collect()
    }

    #[test]
    // `vec![0..2]` is meant: one request holding items 0 and 1.
    #[allow(clippy::single_range_in_vec_init)]
    fn batches_split_at_the_body_limit_in_order() {
        // [aaaa,bbbb] is 11 bytes.
        assert_eq!(split_batch(&items(&[4, 4]), 11), Ok(vec![0..2]));
        assert_eq!(split_batch(&items(&[4, 4]), 10), Ok(vec![0..1, 1..2]));
        assert_eq!(split_batch(&items(&[4, 4, 4, 1]), 11), Ok(vec![0..2, 2..4]));
        assert_eq!(split_batch(&items(&[4, 9, 4]), 11), Ok(vec![0..1, 1..2, 2..3]));
        assert_eq!(split_batch(&items(&[4, 10, 4]), 11), Err(1), "an item over the limit alone");
        assert_eq!(split_batch(&[], 11), Ok(vec![]));
        for limit in 3..40 {
            let sizes = [1, 5, 2, 7, 1, 1, 3];
            let all = items(&sizes);
            let chunks = split_batch(&all, limit.max(9)).unwrap();
            let covered: Vec<usize> = chunks.iter().flat_map(|c| c.clone()).collect();
            assert_eq!(covered, (0..sizes.len()).collect::<Vec<_>>());
            for chunk in chunks {
                assert!(json_array(&all[chunk]).len() <= limit.max(9));
            }
        }
    }

    #[test]
    fn keys_are_stable_and_depend_on_every_id() {
        let key = batch_idempotency_key(["a", "b"].into_iter());
        assert_eq!(key, batch_idempotency_key(["a", "b"].into_iter()));
        assert_ne!(key, batch_idempotency_key(["ab"].into_iter()), "ids are separated");
        assert_ne!(key, batch_idempotency_key(["b", "a"].into_iter()));
        assert_eq!(key.len(), 64);
    }

    #[test]
    fn answers_are_classified_once() {
        assert_eq!(answer_error("u", 204, b""), None);
        for status in [408, 429, 500, 503] {
            assert!(answer_error("u", status, b"").unwrap().retryable, "{status}");
        }
        for status in [301, 400, 401, 404, 413, 422] {
            assert!(!answer_error("u", status, b"").unwrap().retryable, "{status}");
        }
        let error = answer_error("http://h/hook", 400, b"{\"error\": \"missing field patient\"}").unwrap();
        assert!(error.message.contains("400") && error.message.contains("missing field patient"), "{error}");
        assert!(answer_error("u", 500, &vec![b'y'; 100_000]).unwrap().message.len() < 400);
    }

    #[test]
    fn items_carry_their_entry_id_as_key() {
        let delivery = Delivery {
            entry_id: "tag:1".into(),
            feed_url: "f".into(),
            updated: chrono::DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z").unwrap(),
            action: None,
            categories: vec![],
            body: crate::sink::DeliveryBody::Failed { link: None, reason: "r".into() },
        };
        let json: serde_json::Value = serde_json::to_value(Item { idempotency_key: &delivery.entry_id, delivery: &delivery }).unwrap();
        assert_eq!(json["idempotency_key"], "tag:1");
        assert_eq!(json["entry_id"], "tag:1");
        assert_eq!(json["failed"]["reason"], "r");
    }
}
