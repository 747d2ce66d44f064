//! What can go wrong with one request, and the one decision on whether trying again can help
//! ([`ClientError::is_retryable`], [`status_is_retryable`]). Every message names the URL and
//! says what to do.

use crate::client::HttpResponse;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url:?} is not a URL this client can fetch: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot connect to {url}: {message}. Check that the server runs and is reachable from here; retrying later may help")]
    Connect { url: String, message: String },
    #[error(
        "no complete answer from {url} within {timeout_ms} ms: the server or the link is slow or stuck. \
         Retrying later may help; on a slow link raise request_timeout_ms"
    )]
    Timeout { url: String, timeout_ms: u64 },
    #[error("cannot connect securely to {url}: {message}")]
    Tls { url: String, message: String },
    #[error("the connection to {url} failed during the exchange: {message}. Retrying later may help")]
    Transport { url: String, message: String },
    #[error("{url} answered {status}: {message}")]
    Status { url: String, status: u16, message: String },
    #[error(
        "the answer from {url} is over the limit of {limit_bytes} bytes{}. \
         If the server is right to send that much, raise response_bytes_max",
        if *.decompressed { " once decompressed" } else { "" }
    )]
    TooLarge { url: String, limit_bytes: usize, decompressed: bool },
    #[error(
        "{url} redirected more than {redirects_max} times (the last to {location}): a redirect loop? \
         Fix the server's configuration, or configure the URL the redirects end at"
    )]
    TooManyRedirects { url: String, redirects_max: u32, location: String },
    #[error("{url} answered a redirect that cannot be followed: {reason}")]
    BadRedirect { url: String, reason: String },
    #[error("the answer from {url} cannot be decoded: {message}")]
    Decode { url: String, message: String },
    #[error("the request to {url} cannot be built: {message}")]
    Request { url: String, message: String },
}

impl ClientError {
    /// The one retry decision: true when the same request may succeed later unchanged.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Connect { .. } | ClientError::Timeout { .. } | ClientError::Transport { .. } => true,
            ClientError::Status { status, .. } => status_is_retryable(*status),
            ClientError::BadUrl { .. }
            | ClientError::Tls { .. }
            | ClientError::TooLarge { .. }
            | ClientError::TooManyRedirects { .. }
            | ClientError::BadRedirect { .. }
            | ClientError::Decode { .. }
            | ClientError::Request { .. } => false,
        }
    }

    /// The HTTP status, when the server answered with an error status.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// 5xx: the server failed (503 is a publisher whose database is away). 408 and 429: the
/// server asks to be asked again later. Every other 4xx will be refused again.
pub fn status_is_retryable(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

/// A [`ClientError::Status`] whose message carries the server's own explanation: the JSON
/// `{"error", "hint"}` feed-publisher sends, or the start of any other body.
pub fn status_error(response: &HttpResponse) -> ClientError {
    let status = response.status.as_u16();
    let explained = serde_json::from_slice::<serde_json::Value>(&response.body).ok().and_then(|json| {
        let error = json.get("error")?.as_str()?.to_owned();
        Some(match json.get("hint").and_then(|hint| hint.as_str()) {
            Some(hint) if !hint.is_empty() => format!("{error} (server's hint: {hint})"),
            _ => error,
        })
    });
    let said = explained.unwrap_or_else(|| body_excerpt(&response.body));
    let advice = match status {
        401 | 403 => "check the credentials configured for this server",
        _ if status_is_retryable(status) => "retrying later may help",
        300..=399 => "a redirect that was not followed; configure the URL it points to",
        _ => "the server refuses this request; retrying will not help",
    };
    let reason = response.status.canonical_reason().unwrap_or("");
    let message = if said.is_empty() { format!("{reason}; {advice}") } else { format!("{reason}: {said}; {advice}") };
    ClientError::Status { url: response.url.clone(), status, message }
}

/// Characters of a body shown in an error: enough to recognise an HTML error page or a proxy's
/// message, not so much that one log line becomes a page.
pub const BODY_EXCERPT_CHARS_MAX: usize = 200;

/// The start of a body on one line, for an error message.
pub fn body_excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() > BODY_EXCERPT_CHARS_MAX {
        format!("{}...", text.chars().take(BODY_EXCERPT_CHARS_MAX).collect::<String>())
    } else {
        text
    }
}

/// hyper's top-level message is generic ("client error (Connect)"); the cause (refused,
/// reset, ...) is in the chain.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::Bytes;
    use hyper::StatusCode;
    use hyper::header::HeaderMap;

    #[test]
    fn retryable_is_decided_by_the_kind_of_failure() {
        let url = || "http://h/x".to_string();
        assert!(ClientError::Connect { url: url(), message: "refused".into() }.is_retryable());
        assert!(ClientError::Timeout { url: url(), timeout_ms: 1 }.is_retryable());
        assert!(ClientError::Transport { url: url(), message: "reset".into() }.is_retryable());
        for status in [500, 502, 503, 504, 408, 429] {
            assert!(ClientError::Status { url: url(), status, message: String::new() }.is_retryable(), "{status}");
        }
        for status in [400, 401, 403, 404, 405, 410, 413] {
            assert!(!ClientError::Status { url: url(), status, message: String::new() }.is_retryable(), "{status}");
        }
        assert!(!ClientError::TooLarge { url: url(), limit_bytes: 1, decompressed: true }.is_retryable());
        assert!(!ClientError::TooManyRedirects { url: url(), redirects_max: 5, location: url() }.is_retryable());
        assert!(!ClientError::BadUrl { url: url(), reason: String::new() }.is_retryable());
    }

    pub(crate) fn response(status: u16, body: &str) -> HttpResponse {
        HttpResponse {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_owned()),
            url: "http://h/x".into(),
            decoded_from: None,
        }
    }

    #[test]
    fn status_errors_carry_the_servers_explanation_and_advice() {
        let e = status_error(&response(503, r#"{"error":"database unreachable","hint":"retry later","status":503}"#));
        let text = e.to_string();
        assert!(text.contains("503") && text.contains("database unreachable") && text.contains("retry later"), "{text}");
        assert!(e.is_retryable());
        let e = status_error(&response(404, "<html><body>Not here</body></html>"));
        assert!(e.to_string().contains("Not here") && e.to_string().contains("will not help"), "{e}");
        let long = "x".repeat(10_000);
        assert!(status_error(&response(500, &long)).to_string().len() < 600);
    }
}
