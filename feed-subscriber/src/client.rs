//! The subscriber's HTTP client is the toolkit's one client, `feedsync-http` (pooled
//! keep-alive, gzip, size limits, timeouts, redirects, retries, batch resource fetch);
//! re-exported here so `feed_subscriber::client::HttpClient` keeps working for embedders.

pub use feedsync_http::{ClientError, ClientLimits, Fetched, HttpClient, HttpResponse, Request, batch_endpoint};

/// Sent with every request the subscriber makes, so a publisher's log shows who is reading.
pub const USER_AGENT: &str = "feedsync feed-subscriber";

/// The subscriber's client: `feedsync-http`'s, naming the subscriber in `User-Agent`.
pub fn subscriber_client(limits: ClientLimits) -> HttpClient {
    HttpClient::new(limits).with_user_agent(USER_AGENT)
}
