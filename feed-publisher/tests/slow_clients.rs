//! A server that stays up: hundreds of connections that send their headers or bodies slowly,
//! or never, do not stop `/ws/feedsync/health` (or anything else) from answering; a slow body
//! gets 408, slow headers get the connection closed, and one address cannot open more than its
//! share of connections.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use feed_publisher::server::HEALTH_PATH;
use feedsync_sim::publisher::{Publisher, http};
use feedsync_sim::testdb::{Source, TestDatabase};
use feedsync_wire::resource::BATCH_PATH;

/// Slow clients in the test, spread over five loopback addresses (60 each, under the cap).
const SLOW_CLIENTS: usize = 300;

async fn connect_from(source: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// What the server sends before closing, within `wait` (empty: closed without a word).
async fn answer_within(stream: &mut TcpStream, wait: Duration) -> Option<String> {
    let mut buffer = vec![0u8; 4096];
    match tokio::time::timeout(wait, stream.read(&mut buffer)).await {
        Ok(Ok(n)) => Some(String::from_utf8_lossy(&buffer[..n]).into_owned()),
        Ok(Err(_)) => Some(String::new()),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_do_not_stop_the_server() {
    let Some(db) = TestDatabase::create(Source::Sqlite25) else { return };
    let publisher = Publisher::start(&db.database, |c| {
        c.limits.header_read_timeout_ms = 2_000;
        c.limits.body_read_timeout_ms = 2_000;
    })
    .await;
    let addr = publisher.addr;
    // Half send part of their headers, half a batch request whose body never ends: before the
    // body was read ahead of the request slot, 64 of these held every slot.
    let mut slow = Vec::with_capacity(SLOW_CLIENTS);
    for i in 0..SLOW_CLIENTS {
        let source: IpAddr = format!("127.0.0.{}", 2 + i % 5).parse().unwrap();
        let mut stream = connect_from(source, addr).await;
        let text = if i % 2 == 0 {
            "GET /ws/atomfeed/patient/recent HTTP/1.1\r\nHost: x\r\n".to_owned()
        } else {
            format!("POST {BATCH_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{\"resources\": [")
        };
        stream.write_all(text.as_bytes()).await.unwrap();
        slow.push(stream);
    }
    // The server answers everyone else at once.
    let started = Instant::now();
    let health = tokio::time::timeout(Duration::from_secs(1), http(addr, "GET", HEALTH_PATH, &[], None)).await.expect("health answered within a second");
    assert_eq!(health.status, 200, "{}", health.text());
    assert!(started.elapsed() < Duration::from_secs(1));
    // The slow body gets 408 once its time is up; the slow headers get the connection closed.
    let body_answer = answer_within(&mut slow[1], Duration::from_secs(10)).await.expect("the slow body is answered");
    assert!(body_answer.starts_with("HTTP/1.1 408"), "{body_answer}");
    let header_answer = answer_within(&mut slow[0], Duration::from_secs(10)).await.expect("the slow headers are cut off");
    assert!(header_answer.is_empty() || header_answer.starts_with("HTTP/1.1 408"), "{header_answer}");
    drop(slow);

    // One address gets at most its share (64 by default): more are closed at once.
    let source: IpAddr = "127.0.0.9".parse().unwrap();
    let mut mine = Vec::new();
    for _ in 0..70 {
        mine.push(connect_from(source, addr).await);
    }
    let mut closed = 0;
    for stream in mine.iter_mut().skip(64) {
        if answer_within(stream, Duration::from_secs(5)).await == Some(String::new()) {
            closed += 1;
        }
    }
    assert_eq!(closed, 6, "the connections over the per-address cap were closed");
    let health = tokio::time::timeout(Duration::from_secs(1), http(addr, "GET", HEALTH_PATH, &[], None)).await.expect("health still answers");
    assert_eq!(health.status, 200);
}
