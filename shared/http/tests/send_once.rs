//! `HttpClient::send_once` against a hand-written server on a loopback port: the request goes
//! out as the caller built it, and the answer comes back as the server sent it (no redirect
//! followed, every status an answer, a kept-short body cut rather than refused).

use std::io::Write;

use feedsync_http::{ClientError, ClientLimits, HttpClient, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Serves `answers` in turn, one connection each, and reports each request's head.
async fn server(answers: Vec<Vec<u8>>) -> (String, mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (heads, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        for answer in answers {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let mut raw = Vec::new();
            let mut buffer = [0u8; 4096];
            while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buffer).await.unwrap();
                if n == 0 {
                    break;
                }
                raw.extend_from_slice(&buffer[..n]);
            }
            let _ = heads.send(String::from_utf8_lossy(&raw).to_ascii_lowercase());
            let _ = stream.write_all(&answer).await;
        }
    });
    (base, received)
}

fn answer(head: &str, body: &[u8]) -> Vec<u8> {
    let mut bytes = format!("HTTP/1.1 {head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test]
async fn the_request_goes_as_built_and_every_status_is_an_answer() {
    let redirect = answer("308 Permanent Redirect\r\nLocation: /elsewhere", b"");
    let refused = answer("404 Not Found\r\nContent-Type: application/json", br#"{"error":"no such page"}"#);
    let (base, mut heads) = server(vec![redirect, refused]).await;
    let client = HttpClient::new(ClientLimits::default()).with_bearer("secret");

    let request = Request::new("GET", &format!("{base}/dashboard")).header("host", "evil.example").header("x-forwarded-for", "203.0.113.9");
    let response = client.send_once(request).await.unwrap();
    assert_eq!((response.status.as_u16(), response.headers["location"].to_str().unwrap()), (308, "/elsewhere"), "not followed");
    let head = heads.recv().await.unwrap();
    assert!(head.starts_with("get /dashboard http/1.1\r\n"), "{head}");
    assert!(head.contains("host: evil.example\r\n") && head.contains("x-forwarded-for: 203.0.113.9\r\n"), "{head}");
    assert!(head.contains("authorization: bearer secret\r\n") && head.contains("user-agent: feedsync\r\n"), "{head}");
    assert!(!head.contains("accept-encoding"), "asked for only when given: {head}");

    let request = Request::new("POST", &format!("{base}/push")).header("content-type", "text/plain").body(&b"hello"[..]);
    let response = client.send_once(request).await.unwrap();
    assert_eq!(response.status.as_u16(), 404);
    assert_eq!(&response.body[..], br#"{"error":"no such page"}"#);
    let head = heads.recv().await.unwrap();
    assert!(head.contains("content-type: text/plain\r\n") && !head.contains("application/json"), "the caller's header wins: {head}");
    assert!(head.contains("content-length: 5\r\n"), "{head}");
}

#[tokio::test]
async fn gzip_is_decoded_and_said_and_short_answers_are_cut() {
    let zipped = gzip(b"<feed>entries</feed>");
    let mut compressed = format!("HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", zipped.len()).into_bytes();
    compressed.extend_from_slice(&zipped);
    let long = answer("500 Internal Server Error", &vec![b'x'; 100_000]);
    let (base, _heads) = server(vec![compressed, long.clone(), long]).await;
    let client = HttpClient::new(ClientLimits { response_bytes_max: 50_000, ..ClientLimits::default() });

    let response = client.send_once(Request::new("GET", &format!("{base}/page")).header("accept-encoding", "gzip")).await.unwrap();
    assert_eq!(&response.body[..], b"<feed>entries</feed>");
    assert_eq!(response.decoded_from.as_deref(), Some("gzip"));
    assert!(!response.headers.contains_key("content-encoding"), "the headers describe the bytes the caller has");

    let response = client.send_once(Request::new("POST", &format!("{base}/hook")).body(&b"{}"[..]).keep_answer_bytes(16)).await.unwrap();
    assert_eq!((response.status.as_u16(), response.body.len()), (500, 16), "cut, not refused");
    let refused = client.send_once(Request::new("POST", &format!("{base}/hook")).body(&b"{}"[..])).await.unwrap_err();
    assert!(matches!(refused, ClientError::TooLarge { limit_bytes: 50_000, .. }), "{refused}");
}

#[tokio::test]
async fn bad_requests_say_so_before_anything_is_sent() {
    let client = HttpClient::default();
    let error = client.send_once(Request::new("GET", "http://127.0.0.1:9/x").header("bad name", "v")).await.unwrap_err();
    assert!(matches!(&error, ClientError::Request { message, .. } if message.contains("bad name")), "{error}");
    assert!(!error.is_retryable());
    let error = client.send_once(Request::new("GET", "http://example.org/")).await.unwrap_err();
    assert!(matches!(&error, ClientError::BadUrl { reason, .. } if reason.contains("--insecure-http")), "plain http to another machine: {error}");
    let error = client.send_once(Request::new("GET", "ftp://127.0.0.1/")).await.unwrap_err();
    assert!(matches!(error, ClientError::BadUrl { .. }), "{error}");
}

#[tokio::test]
async fn credentials_go_only_to_the_origins_named() {
    // Two servers: the feed's own, and another host a feed's link could name.
    let (feed, mut feed_heads) = server(vec![answer("200 OK", b"{}")]).await;
    let (elsewhere, mut elsewhere_heads) = server(vec![answer("200 OK", b"{}")]).await;
    let client = HttpClient::new(ClientLimits::default()).with_basic_auth("admin:Admin123").with_credentials_only_to(&[format!("{feed}/ws/atomfeed/all/recent")]);
    client.get(&format!("{feed}/ws/feedsync/resource/patient/x")).await.unwrap();
    client.get(&format!("{elsewhere}/ws/rest/v1/patient/x")).await.unwrap();
    let (to_feed, to_elsewhere) = (feed_heads.recv().await.unwrap(), elsewhere_heads.recv().await.unwrap());
    assert!(to_feed.contains("authorization: basic "), "{to_feed}");
    assert!(!to_elsewhere.contains("authorization"), "credentials leaked to another host: {to_elsewhere}");
}
