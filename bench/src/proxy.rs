//! A counting HTTP/1.1 proxy on loopback: it forwards bytes unchanged between a client and a
//! server and counts, per kind of request, the requests, the bytes on the wire each way (heads
//! and bodies, as sent, compressed or not) and the time from a request's head to the end of its
//! answer. Any client can stand behind it unchanged (the subscriber's hyper client, PouchDB's
//! fetch), so both sides of a comparison are counted by the same code.
//!
//! Messages are delimited by a pure framer ([`Framer`]: `Content-Length`, chunked, or until
//! the server closes), fed the bytes as they pass. It never changes a byte, so a framing
//! mistake can only show as a counting error, which is reported ([`Totals::framing_error`])
//! rather than guessed around. Answers to chosen requests can be kept whole ("tapped") so the
//! caller can reuse exactly what a client received.
//!
//! Bounded: heads (64 KiB), chunk-size lines, tapped bytes in total, and connections end when
//! either side closes or the proxy is dropped. Only loopback targets are accepted.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Largest message head accepted; heads here are a few hundred bytes.
pub const HEAD_BYTES_MAX: usize = 64 * 1024;
/// Longest chunk-size or trailer line accepted.
const LINE_BYTES_MAX: usize = 4 * 1024;
/// Bytes read from a socket at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Most answer bytes kept by taps over the proxy's life (compressed batch answers of a million
/// resources are about 150 MB); past it the proxy stops keeping and says so.
pub const TAPPED_BYTES_MAX: usize = 1 << 30;

// ---- pure: delimiting HTTP/1.1 messages in a byte stream ----

/// A message head as far as framing and counting need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Request: method; response: empty.
    pub method: String,
    /// Request: path and query; response: empty.
    pub target: String,
    /// Response: status; request: 0.
    pub status: u16,
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub gzip: bool,
    pub bytes: usize,
}

/// Parses a head (through the blank line). Pure.
pub fn parse_head(bytes: &[u8], is_request: bool) -> Result<Head, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "message head is not UTF-8".to_owned())?;
    let mut lines = text.split("\r\n");
    let start = lines.next().unwrap_or_default();
    let mut parts = start.split_whitespace();
    let (method, target, status) = if is_request {
        let method = parts.next().unwrap_or_default().to_owned();
        let target = parts.next().unwrap_or_default().to_owned();
        if method.is_empty() || target.is_empty() {
            return Err(format!("not a request line: {start:?}"));
        }
        (method, target, 0)
    } else {
        let status = parts
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| format!("not a status line: {start:?}"))?;
        (String::new(), String::new(), status)
    };
    let mut head = Head {
        method,
        target,
        status,
        content_length: None,
        chunked: false,
        gzip: false,
        bytes: bytes.len(),
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                head.content_length =
                    Some(value.parse().map_err(|_| format!("bad Content-Length {value:?}"))?)
            }
            "transfer-encoding" => head.chunked = value.to_ascii_lowercase().contains("chunked"),
            "content-encoding" => head.gzip = value.eq_ignore_ascii_case("gzip"),
            _ => {}
        }
    }
    Ok(head)
}

/// How a message's body is delimited, decided once its head is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    Length(u64),
    Chunked,
    /// Until the server closes the connection (a response with neither length nor chunking).
    UntilClose,
}

/// What the framer's caller decides about a message once its head is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub body: Body,
    /// Keep the body (de-chunked, still content-encoded) for the caller.
    pub keep: bool,
    /// An interim (1xx) answer: it does not complete the request.
    pub interim: bool,
}

/// The framing rule for a head: HEAD answers and 1xx/204/304 have no body (RFC 9112 6.3).
pub fn body_of(head: &Head, is_request: bool, request_method: Option<&str>) -> Body {
    if !is_request
        && (request_method == Some("HEAD") || head.status < 200 || matches!(head.status, 204 | 304))
    {
        return Body::None;
    }
    if head.chunked {
        Body::Chunked
    } else if let Some(n) = head.content_length {
        if n == 0 { Body::None } else { Body::Length(n) }
    } else if is_request {
        Body::None
    } else {
        Body::UntilClose
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Head(Head),
    /// A whole message passed: its bytes on the wire (head and body) and the kept body.
    Complete {
        bytes: u64,
        body: Option<Vec<u8>>,
        interim: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Head,
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after a chunk's data: bytes of it still expected.
    ChunkEnd(u8),
    Trailer,
    UntilClose,
}

/// Delimits the messages of one direction of one connection.
#[derive(Debug)]
pub struct Framer {
    is_request: bool,
    state: State,
    /// The head being read, or the current chunk-size/trailer line.
    line: Vec<u8>,
    bytes: u64,
    keep: bool,
    interim: bool,
    body: Vec<u8>,
}

impl Framer {
    pub fn new(is_request: bool) -> Framer {
        Framer {
            is_request,
            state: State::Head,
            line: Vec::new(),
            bytes: 0,
            keep: false,
            interim: false,
            body: Vec::new(),
        }
    }

    /// Feeds bytes as they pass; `decide` is asked once per head. Pure but for `decide`.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        decide: &mut dyn FnMut(&Head) -> Decision,
        events: &mut Vec<Event>,
    ) -> Result<(), String> {
        while !input.is_empty() {
            match self.state.clone() {
                State::Head => {
                    // A head ends at the first CRLFCRLF; look across the previous bytes too.
                    let take = match find_head_end(&self.line, input) {
                        Some(end) => end,
                        None => input.len(),
                    };
                    self.line.extend_from_slice(&input[..take]);
                    self.bytes += take as u64;
                    input = &input[take..];
                    if self.line.len() > HEAD_BYTES_MAX {
                        return Err(format!("message head over {HEAD_BYTES_MAX} bytes"));
                    }
                    if !self.line.ends_with(b"\r\n\r\n") {
                        continue;
                    }
                    let head = parse_head(&self.line, self.is_request)?;
                    self.line.clear();
                    let decision = decide(&head);
                    events.push(Event::Head(head));
                    self.keep = decision.keep;
                    self.interim = decision.interim;
                    self.body.clear();
                    self.state = match decision.body {
                        Body::None => {
                            self.complete(events);
                            State::Head
                        }
                        Body::Length(n) => State::Length(n),
                        Body::Chunked => State::ChunkSize,
                        Body::UntilClose => State::UntilClose,
                    };
                }
                State::Length(left) => {
                    let take = (left as usize).min(input.len());
                    self.body_bytes(&input[..take]);
                    input = &input[take..];
                    if left as usize == take {
                        self.complete(events);
                        self.state = State::Head;
                    } else {
                        self.state = State::Length(left - take as u64);
                    }
                }
                State::ChunkSize | State::Trailer => {
                    let (line_done, take) = match input.iter().position(|&b| b == b'\n') {
                        Some(i) => (true, i + 1),
                        None => (false, input.len()),
                    };
                    self.line.extend_from_slice(&input[..take]);
                    self.bytes += take as u64;
                    input = &input[take..];
                    if self.line.len() > LINE_BYTES_MAX {
                        return Err("chunk-size or trailer line too long".into());
                    }
                    if !line_done {
                        continue;
                    }
                    let line = String::from_utf8_lossy(&self.line).trim().to_owned();
                    self.line.clear();
                    if self.state == State::Trailer {
                        if line.is_empty() {
                            self.complete(events);
                            self.state = State::Head;
                        }
                        continue;
                    }
                    let size_text = line.split(';').next().unwrap_or_default().trim();
                    let size = u64::from_str_radix(size_text, 16)
                        .map_err(|_| format!("bad chunk size line {line:?}"))?;
                    self.state = if size == 0 {
                        State::Trailer
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkData(left) => {
                    let take = (left as usize).min(input.len());
                    self.body_bytes(&input[..take]);
                    input = &input[take..];
                    self.state = if left as usize == take {
                        State::ChunkEnd(2)
                    } else {
                        State::ChunkData(left - take as u64)
                    };
                }
                State::ChunkEnd(left) => {
                    let take = (left as usize).min(input.len());
                    self.bytes += take as u64;
                    input = &input[take..];
                    self.state = if left as usize == take {
                        State::ChunkSize
                    } else {
                        State::ChunkEnd(left - take as u8)
                    };
                }
                State::UntilClose => {
                    self.body_bytes(input);
                    input = &[];
                }
            }
        }
        Ok(())
    }

    /// The connection closed: a body delimited by the close is complete; anything else half
    /// read is an error.
    pub fn finish(&mut self, events: &mut Vec<Event>) -> Result<(), String> {
        match self.state {
            State::UntilClose => {
                self.complete(events);
                self.state = State::Head;
                Ok(())
            }
            State::Head if self.line.is_empty() => Ok(()),
            ref other => Err(format!("connection closed inside a message ({other:?})")),
        }
    }

    fn body_bytes(&mut self, bytes: &[u8]) {
        self.bytes += bytes.len() as u64;
        if self.keep {
            self.body.extend_from_slice(bytes);
        }
    }

    fn complete(&mut self, events: &mut Vec<Event>) {
        events.push(Event::Complete {
            bytes: std::mem::take(&mut self.bytes),
            body: self.keep.then(|| std::mem::take(&mut self.body)),
            interim: self.interim,
        });
        self.keep = false;
        self.interim = false;
    }
}

/// Where the head ends in `input` (exclusive), given the head bytes read so far.
fn find_head_end(so_far: &[u8], input: &[u8]) -> Option<usize> {
    // The terminator may straddle the two slices: check the last three bytes read before.
    let tail = &so_far[so_far.len().saturating_sub(3)..];
    let mut window: Vec<u8> = tail.to_vec();
    for (i, &b) in input.iter().enumerate() {
        window.push(b);
        if window.len() > 4 {
            window.remove(0);
        }
        if window == b"\r\n\r\n" {
            return Some(i + 1);
        }
    }
    None
}

// ---- the proxy ----

/// Counts for one kind of request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KindTotals {
    pub requests: u64,
    /// Heads and bodies as sent.
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// From the request's head to the end of its answer, summed.
    pub seconds: f64,
    /// Answers with a status of 400 or more.
    pub errors: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub connections: u64,
    /// Request kind (from the caller's classifier) to its counts.
    pub by_kind: BTreeMap<&'static str, KindTotals>,
    /// Every byte forwarded each way (equal to the sums by kind when framing went right).
    pub bytes_to_server: u64,
    pub bytes_to_client: u64,
    /// The first framing error, if any: counts by kind are then incomplete.
    pub framing_error: Option<String>,
    /// Taps stopped at [`TAPPED_BYTES_MAX`].
    pub tap_overflow: bool,
}

impl Totals {
    pub fn requests(&self) -> u64 {
        self.by_kind.values().map(|k| k.requests).sum()
    }
    pub fn http_seconds(&self) -> f64 {
        self.by_kind.values().map(|k| k.seconds).sum()
    }
    pub fn errors(&self) -> u64 {
        self.by_kind.values().map(|k| k.errors).sum()
    }
}

/// An answer kept whole for the caller.
#[derive(Debug, Clone)]
pub struct Tapped {
    pub status: u16,
    /// The body as sent, less chunking (still gzip-encoded if `gzip`).
    pub body: Vec<u8>,
    pub gzip: bool,
}

/// Names a request's kind from its method and target, for the counts.
pub type Classify = fn(&str, &str) -> &'static str;
/// Whether to keep the answer to a request (method, target).
pub type Tap = fn(&str, &str) -> bool;

struct Shared {
    target: SocketAddr,
    classify: Classify,
    tap: Tap,
    totals: Mutex<Totals>,
    tapped: Mutex<(Vec<Tapped>, usize)>,
}

pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: tokio::sync::watch::Sender<bool>,
}

/// A connection's requests whose answers have not completed, oldest first. A connection
/// answers in order; a read may hold several messages, so an answer's head is matched to its
/// request when the head is parsed (`answering`), before earlier answers are accounted.
#[derive(Default)]
struct Queues {
    /// Requests whose answer has not started.
    waiting: VecDeque<Pending>,
    /// Requests whose answer's head is parsed, its body not yet complete.
    answering: VecDeque<Pending>,
}

/// A request whose answer has not completed yet.
struct Pending {
    kind: &'static str,
    method: String,
    started: Instant,
    tap: bool,
    /// Known once the request's body has passed.
    request_bytes: Option<u64>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (any free port) and forwards every connection to `target`.
    pub async fn start(target: SocketAddr, classify: Classify, tap: Tap) -> anyhow::Result<Proxy> {
        ensure!(
            target.ip().is_loopback(),
            "the proxy only forwards to loopback addresses, not {target}"
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            classify,
            tap,
            totals: Mutex::new(Totals::default()),
            tapped: Mutex::new((Vec::new(), 0)),
        });
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let accept_shared = shared.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = stopped.changed() => break,
                };
                let Ok((client, _)) = accepted else { break };
                let shared = accept_shared.clone();
                let stopped = stopped.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(client, shared.clone(), stopped).await {
                        let mut totals = shared.totals.lock().expect("totals lock");
                        totals.framing_error.get_or_insert(format!("{e:#}"));
                    }
                });
            }
        });
        Ok(Proxy { addr, shared, stop })
    }

    /// The counts so far.
    pub fn totals(&self) -> Totals {
        self.shared.totals.lock().expect("totals lock").clone()
    }

    /// Starts the counts (and taps) again from zero.
    pub fn reset(&self) {
        *self.shared.totals.lock().expect("totals lock") = Totals::default();
        *self.shared.tapped.lock().expect("tap lock") = (Vec::new(), 0);
    }

    /// The answers kept so far, in the order they completed; the proxy forgets them.
    pub fn take_tapped(&self) -> Vec<Tapped> {
        std::mem::take(&mut self.shared.tapped.lock().expect("tap lock").0)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn connection(
    client: TcpStream,
    shared: Arc<Shared>,
    stopped: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let server = TcpStream::connect(shared.target)
        .await
        .with_context(|| format!("proxy connecting to {}", shared.target))?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    shared.totals.lock().expect("totals lock").connections += 1;
    let pending: Arc<Mutex<Queues>> = Arc::default();
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(
        client_read,
        server_write,
        true,
        shared.clone(),
        pending.clone(),
    );
    let down = pump(server_read, client_write, false, shared, pending);
    let mut stopped = stopped;
    tokio::select! {
        result = async { tokio::try_join!(up, down) } => { result?; }
        _ = stopped.changed() => {}
    }
    Ok(())
}

/// Forwards one direction until it closes, framing and counting as the bytes pass.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    is_request: bool,
    shared: Arc<Shared>,
    pending: Arc<Mutex<Queues>>,
) -> anyhow::Result<()> {
    let mut framer = Framer::new(is_request);
    let mut framing_ok = true;
    let mut buffer = vec![0u8; READ_CHUNK_BYTES];
    let mut events = Vec::new();
    loop {
        let n = from.read(&mut buffer).await.unwrap_or(0);
        if n == 0 {
            let _ = to.shutdown().await;
            if framing_ok && let Err(e) = framer.finish(&mut events) {
                record_framing_error(&shared, &e);
            }
            account(&shared, &pending, is_request, &mut events);
            return Ok(());
        }
        to.write_all(&buffer[..n]).await.context("proxy forwarding")?;
        {
            let mut totals = shared.totals.lock().expect("totals lock");
            if is_request {
                totals.bytes_to_server += n as u64;
            } else {
                totals.bytes_to_client += n as u64;
            }
        }
        if !framing_ok {
            continue;
        }
        let mut decide = |head: &Head| decide(&shared, &pending, is_request, head);
        if let Err(e) = framer.feed(&buffer[..n], &mut decide, &mut events) {
            record_framing_error(&shared, &e);
            framing_ok = false;
        }
        account(&shared, &pending, is_request, &mut events);
    }
}

fn record_framing_error(shared: &Shared, error: &str) {
    let mut totals = shared.totals.lock().expect("totals lock");
    totals.framing_error.get_or_insert_with(|| error.to_owned());
}

/// Frames a head: requests join the connection's queue; answers take their request's method.
fn decide(
    shared: &Shared,
    pending: &Mutex<Queues>,
    is_request: bool,
    head: &Head,
) -> Decision {
    let mut queues = pending.lock().expect("pending lock");
    if is_request {
        queues.waiting.push_back(Pending {
            kind: (shared.classify)(&head.method, &head.target),
            method: head.method.clone(),
            started: Instant::now(),
            tap: (shared.tap)(&head.method, &head.target),
            request_bytes: None,
        });
        return Decision {
            body: body_of(head, true, None),
            keep: false,
            interim: false,
        };
    }
    let interim = head.status < 200;
    let decision = {
        let request = queues.waiting.front();
        Decision {
            body: body_of(head, false, request.map(|r| r.method.as_str())),
            keep: request.is_some_and(|r| r.tap) && !interim,
            interim,
        }
    };
    // A final answer is this request's: it leaves the waiting line now, so the next head in
    // the same read is matched to the next request.
    if !interim && let Some(request) = queues.waiting.pop_front() {
        queues.answering.push_back(request);
    }
    decision
}

/// Adds completed messages to the counts.
fn account(
    shared: &Shared,
    pending: &Mutex<Queues>,
    is_request: bool,
    events: &mut Vec<Event>,
) {
    let mut status = 0;
    let mut gzip = false;
    for event in events.drain(..) {
        let (bytes, body, interim) = match event {
            Event::Head(head) => {
                status = head.status;
                gzip = head.gzip;
                continue;
            }
            Event::Complete {
                bytes,
                body,
                interim,
            } => (bytes, body, interim),
        };
        let mut queues = pending.lock().expect("pending lock");
        if is_request {
            // Requests complete in order: this is the oldest one still without its size (later
            // requests may already be queued, their heads parsed in the same read).
            let Queues { waiting, answering } = &mut *queues;
            if let Some(request) = answering
                .iter_mut()
                .chain(waiting.iter_mut())
                .find(|r| r.request_bytes.is_none())
            {
                request.request_bytes = Some(bytes);
            }
            continue;
        }
        let mut totals = shared.totals.lock().expect("totals lock");
        if interim {
            // A 1xx answer: its bytes count for the request it precedes.
            if let Some(request) = queues.waiting.front() {
                totals.by_kind.entry(request.kind).or_default().response_bytes += bytes;
            }
            continue;
        }
        let Some(request) = queues.answering.pop_front() else {
            totals
                .framing_error
                .get_or_insert_with(|| "an answer without a request".into());
            continue;
        };
        let kind = totals.by_kind.entry(request.kind).or_default();
        kind.requests += 1;
        kind.request_bytes += request.request_bytes.unwrap_or(0);
        kind.response_bytes += bytes;
        kind.seconds += request.started.elapsed().as_secs_f64();
        kind.errors += u64::from(status >= 400);
        drop(totals);
        if let Some(body) = body {
            let mut tapped = shared.tapped.lock().expect("tap lock");
            if tapped.1 + body.len() > TAPPED_BYTES_MAX {
                shared.totals.lock().expect("totals lock").tap_overflow = true;
                continue;
            }
            tapped.1 += body.len();
            tapped.0.push(Tapped { status, body, gzip });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_all(is_request: bool, stream: &[u8], split_every: usize, methods: &[&str]) -> Vec<Event> {
        let mut framer = Framer::new(is_request);
        let mut events = Vec::new();
        let mut answered = 0;
        let mut decide = |head: &Head| {
            let method = methods.get(answered).copied();
            if head.status >= 200 || is_request {
                answered += 1;
            }
            Decision {
                body: body_of(head, is_request, method),
                keep: true,
                interim: !is_request && head.status < 200,
            }
        };
        for piece in stream.chunks(split_every.max(1)) {
            framer.feed(piece, &mut decide, &mut events).unwrap();
        }
        framer.finish(&mut events).unwrap();
        events
    }

    fn completes(events: &[Event]) -> Vec<(u64, Option<Vec<u8>>)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Complete { bytes, body, .. } => Some((*bytes, body.clone())),
                Event::Head(_) => None,
            })
            .collect()
    }

    #[test]
    fn requests_with_and_without_bodies_however_the_bytes_arrive() {
        let get = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        let post = b"POST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello".to_vec();
        let chunked =
            b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"
                .to_vec();
        let stream = [get.clone(), post.clone(), chunked.clone()].concat();
        for split in [1, 2, 3, 7, 1000] {
            let events = frame_all(true, &stream, split, &[]);
            let done = completes(&events);
            assert_eq!(done.len(), 3, "split {split}");
            assert_eq!(done[0].0, get.len() as u64);
            assert_eq!(done[1], (post.len() as u64, Some(b"hello".to_vec())));
            assert_eq!(done[2], (chunked.len() as u64, Some(b"abcde".to_vec())));
            let heads: Vec<&Head> = events
                .iter()
                .filter_map(|e| if let Event::Head(h) = e { Some(h) } else { None })
                .collect();
            assert_eq!(heads[1].method, "POST");
            assert_eq!(heads[2].target, "/c");
        }
    }

    #[test]
    fn answers_follow_their_requests_framing() {
        let head_answer = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n".to_vec();
        let continue_answer = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
        let gzip = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\nzz".to_vec();
        let not_modified = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n".to_vec();
        let closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end".to_vec();
        let stream = [head_answer.clone(), continue_answer.clone(), gzip.clone(), not_modified.clone(), closing.clone()].concat();
        for split in [1, 5, 1000] {
            let events = frame_all(false, &stream, split, &["HEAD", "POST", "GET", "GET"]);
            let done = completes(&events);
            assert_eq!(done.len(), 5, "split {split}: {done:?}");
            assert_eq!(done[0].0, head_answer.len() as u64, "a HEAD answer has no body");
            assert_eq!(done[1].0, continue_answer.len() as u64);
            assert_eq!(done[2], (gzip.len() as u64, Some(b"zz".to_vec())));
            assert_eq!(done[3].0, not_modified.len() as u64, "304 has no body");
            assert_eq!(done[4], (closing.len() as u64, Some(b"until the end".to_vec())));
        }
    }

    #[test]
    fn broken_streams_are_errors_not_guesses() {
        let mut decide = |h: &Head| Decision { body: body_of(h, true, None), keep: false, interim: false };
        let mut events = Vec::new();
        let mut framer = Framer::new(true);
        assert!(framer.feed(b"POST /x HTTP/1.1\r\nContent-Length: nope\r\n\r\n", &mut decide, &mut events).is_err());
        let mut framer = Framer::new(true);
        framer.feed(b"POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc", &mut decide, &mut events).unwrap();
        assert!(framer.finish(&mut events).is_err(), "closed with 7 body bytes missing");
        let mut framer = Framer::new(true);
        assert!(framer.feed(&vec![b'a'; HEAD_BYTES_MAX + 10], &mut decide, &mut events).is_err());
        let mut framer = Framer::new(false);
        assert!(framer.feed(b"garbage\r\n\r\n", &mut decide, &mut events).is_err());
    }

    #[tokio::test]
    async fn counts_requests_bytes_and_keeps_tapped_answers() {
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = server.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = server.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buffer = [0u8; 1024];
            // Two requests, answered in order once both heads are in.
            while seen.windows(4).filter(|w| w == b"\r\n\r\n").count() < 2 {
                let n = socket.read(&mut buffer).await.unwrap();
                assert!(n > 0);
                seen.extend_from_slice(&buffer[..n]);
            }
            socket
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n")
                .await
                .unwrap();
        });
        let classify: Classify = |method, _| if method == "GET" { "get" } else { "post" };
        let tap: Tap = |method, _| method == "POST";
        let proxy = Proxy::start(target, classify, tap).await.unwrap();
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        let requests = b"GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyz";
        client.write_all(requests).await.unwrap();
        let mut answer = Vec::new();
        let mut buffer = [0u8; 1024];
        for _ in 0..100 {
            let n = client.read(&mut buffer).await.unwrap();
            answer.extend_from_slice(&buffer[..n]);
            if n == 0 || answer.ends_with(b"0\r\n\r\n") {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let totals = proxy.totals();
        assert_eq!(totals.framing_error, None);
        assert_eq!(totals.requests(), 2);
        assert_eq!(totals.bytes_to_server, requests.len() as u64);
        assert_eq!(totals.bytes_to_client, answer.len() as u64);
        let post = &totals.by_kind["post"];
        assert_eq!(post.request_bytes, b"POST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyz".len() as u64);
        assert_eq!(totals.by_kind["get"].response_bytes + post.response_bytes, answer.len() as u64);
        let tapped = proxy.take_tapped();
        assert_eq!(tapped.len(), 1);
        assert_eq!(tapped[0].body, b"body");
    }

    #[tokio::test]
    async fn refuses_targets_off_this_machine() {
        let target: SocketAddr = "192.0.2.1:80".parse().unwrap();
        assert!(Proxy::start(target, |_, _| "x", |_, _| false).await.is_err());
    }
}
