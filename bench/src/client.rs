//! A minimal keep-alive HTTP/1.1 client and a load driver for the in-process publisher.
//!
//! Why not hyper's client: the bench needs the exact bytes on the wire (head and body, request
//! and response) and nothing between it and the socket that could pool, retry or decompress.
//! The publisher always answers with `Content-Length` (its bodies are built whole), so a
//! client that reads the head and then exactly that many bytes is enough; anything else is
//! reported as an error rather than guessed at.
//!
//! Everything is bounded: head and body sizes, time per request, requests per run, and a
//! deadline per run. Only loopback addresses are accepted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head accepted; the publisher's heads are a few hundred bytes.
const HEAD_BYTES_MAX: usize = 64 * 1024;
/// Largest response body accepted; an archived page of 500 entries is a few hundred KB and a
/// batch of 200 resources about the same.
const BODY_BYTES_MAX: usize = 64 << 20;
/// Longest one request may take before the run is abandoned as broken.
const REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// One answer, with what it cost on the wire.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Status line and headers, including the blank line.
    pub head_bytes: usize,
    /// The body as sent (still gzip-compressed if `gzip`).
    pub body: Vec<u8>,
    pub gzip: bool,
}

impl Response {
    /// The body decompressed if it was sent gzip-encoded.
    pub fn decoded_body(&self) -> anyhow::Result<Vec<u8>> {
        if !self.gzip {
            return Ok(self.body.clone());
        }
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&self.body[..]), &mut out)
            .context("gzip body does not decode")?;
        Ok(out)
    }
}

/// One keep-alive connection; requests on it are sent one after another (no pipelining).
pub struct Connection {
    stream: TcpStream,
    /// Bytes read past the end of the previous response (none expected without pipelining).
    buffer: Vec<u8>,
}

impl Connection {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Connection> {
        ensure!(
            addr.ip().is_loopback(),
            "the bench only talks to loopback addresses, not {addr}"
        );
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        // Requests are small and sent whole; Nagle would only add latency to each one.
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            buffer: Vec::with_capacity(READ_CHUNK_BYTES),
        })
    }

    /// Sends one complete request (head and body) and reads the whole answer.
    pub async fn send(&mut self, request: &[u8]) -> anyhow::Result<Response> {
        tokio::time::timeout(
            Duration::from_millis(REQUEST_TIMEOUT_MS),
            self.send_unbounded(request),
        )
        .await
        .map_err(|_| anyhow!("no answer within {REQUEST_TIMEOUT_MS} ms"))?
    }

    async fn send_unbounded(&mut self, request: &[u8]) -> anyhow::Result<Response> {
        self.stream
            .write_all(request)
            .await
            .context("sending the request")?;
        let head_end = loop {
            if let Some(i) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            ensure!(
                self.buffer.len() <= HEAD_BYTES_MAX,
                "response head is over {HEAD_BYTES_MAX} bytes"
            );
            self.fill().await?;
        };
        let head =
            std::str::from_utf8(&self.buffer[..head_end]).context("response head is not UTF-8")?;
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("no status line in {head:?}"))?;
        let mut content_length = None;
        let mut gzip = false;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => {
                    content_length = Some(value.parse::<usize>().context("bad Content-Length")?)
                }
                "content-encoding" => gzip = value.eq_ignore_ascii_case("gzip"),
                "transfer-encoding" => {
                    bail!("chunked answers are not expected from the publisher ({value})")
                }
                _ => {}
            }
        }
        let length =
            content_length.ok_or_else(|| anyhow!("answer has no Content-Length: {head:?}"))?;
        ensure!(
            length <= BODY_BYTES_MAX,
            "answer body of {length} bytes is over {BODY_BYTES_MAX}"
        );
        while self.buffer.len() < head_end + length {
            self.fill().await?;
        }
        let body = self.buffer[head_end..head_end + length].to_vec();
        self.buffer.drain(..head_end + length);
        Ok(Response {
            status,
            head_bytes: head_end,
            body,
            gzip,
        })
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let start = self.buffer.len();
        self.buffer.resize(start + READ_CHUNK_BYTES, 0);
        let n = self
            .stream
            .read(&mut self.buffer[start..])
            .await
            .context("reading the answer")?;
        self.buffer.truncate(start + n);
        ensure!(n > 0, "the server closed the connection mid-answer");
        Ok(())
    }
}

/// The bytes of one request. `Host` is the loopback address the server listens on.
pub fn request(
    method: &str,
    path: &str,
    addr: SocketAddr,
    gzip: bool,
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: publisher-bench\r\n");
    if gzip {
        head.push_str("Accept-Encoding: gzip\r\n");
    }
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    bytes
}

/// What one load run did.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    pub requests: usize,
    pub seconds: f64,
    pub request_bytes: u64,
    /// Heads and bodies of the answers.
    pub response_bytes: u64,
    pub response_body_bytes: u64,
    /// Answers with a status other than 200.
    pub not_ok: usize,
    /// Answers that came gzip-encoded.
    pub gzip_responses: usize,
    /// The run stopped at its deadline before sending every request.
    pub deadline_hit: bool,
}

impl LoadResult {
    pub fn requests_per_second(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
    pub fn response_bytes_per_request(&self) -> f64 {
        self.response_bytes as f64 / self.requests as f64
    }
}

/// Sends `total` requests over `connections` keep-alive connections, each connection taking
/// the next request number as soon as its previous answer is in; request `i` is
/// `requests[i % requests.len()]`. Stops early at `deadline`. Connections are opened before
/// the clock starts, so the figure is steady-state keep-alive throughput.
pub async fn drive(
    addr: SocketAddr,
    connections: usize,
    requests: Arc<Vec<Vec<u8>>>,
    total: usize,
    deadline: Duration,
) -> anyhow::Result<LoadResult> {
    ensure!(!requests.is_empty() && connections >= 1, "nothing to send");
    let mut opened = Vec::with_capacity(connections);
    for _ in 0..connections {
        opened.push(Connection::connect(addr).await?);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let stop_at = start + deadline;
    let mut tasks = Vec::with_capacity(connections);
    for mut connection in opened {
        let (next, requests) = (next.clone(), requests.clone());
        tasks.push(tokio::spawn(async move {
            let mut result = LoadResult::default();
            loop {
                if Instant::now() >= stop_at {
                    result.deadline_hit = true;
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let request = &requests[i % requests.len()];
                let response = connection.send(request).await?;
                result.requests += 1;
                result.request_bytes += request.len() as u64;
                result.response_bytes += (response.head_bytes + response.body.len()) as u64;
                result.response_body_bytes += response.body.len() as u64;
                result.not_ok += usize::from(response.status != 200);
                result.gzip_responses += usize::from(response.gzip);
            }
            anyhow::Ok(result)
        }));
    }
    let mut sum = LoadResult::default();
    for task in tasks {
        let r = task.await.context("load task panicked")??;
        sum.requests += r.requests;
        sum.request_bytes += r.request_bytes;
        sum.response_bytes += r.response_bytes;
        sum.response_body_bytes += r.response_body_bytes;
        sum.not_ok += r.not_ok;
        sum.gzip_responses += r.gzip_responses;
        sum.deadline_hit |= r.deadline_hit;
    }
    sum.seconds = start.elapsed().as_secs_f64();
    ensure!(
        sum.requests > 0,
        "no request completed before the deadline of {deadline:?}"
    );
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_length_and_encoding() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let bytes = request("POST", "/x", addr, true, Some(b"{}"));
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("POST /x HTTP/1.1\r\nHost: 127.0.0.1:9\r\n"));
        assert!(text.contains("Accept-Encoding: gzip\r\n"));
        assert!(text.ends_with("Content-Length: 2\r\n\r\n{}"));
    }

    #[tokio::test]
    async fn refuses_addresses_off_this_machine() {
        let addr: SocketAddr = "192.0.2.1:80".parse().unwrap();
        assert!(Connection::connect(addr).await.is_err());
    }
}
