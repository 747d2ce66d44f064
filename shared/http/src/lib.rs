//! The one HTTP client of the toolkit (`client.rs`): keep-alive, gzip, size limits also on
//! decompressed bodies, timeouts, bounded redirects, retries for idempotent requests, basic or
//! bearer credentials sent to the origin asked only, and errors that say whether trying again
//! can help (`error.rs`); plus the batch fetch of a feed-publisher's resources over it
//! (`resources.rs`). The subscriber reads feeds and pushes to its parent with it, the sinks and
//! the publisher's alert webhook POST with it, and the tests and the simulation talk to the
//! servers they start with it ([`HttpClient::send_once`] shows them every status and header).
//!
//! TLS (`tls.rs`): what clients trust (system roots plus `--ca`), plain HTTP only to this
//! machine unless `--insecure-http`, PEM certificates and keys for the publisher's server.

pub mod client;
pub mod error;
pub mod resources;
pub mod tls;

pub use client::{ClientLimits, HttpClient, HttpResponse, Request, USER_AGENT};
pub use error::{ClientError, body_excerpt, error_chain, status_error, status_is_retryable};
pub use resources::{Fetched, batch_endpoint};
pub use tls::{ClientTls, TlsError};
