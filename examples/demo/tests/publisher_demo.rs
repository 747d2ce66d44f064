//! `feedsync-publisher-demo`, the publisher alone over a simulated clinic, comes up and serves.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use feedsync_sim::publisher::try_http;
use feedsync_sim::testdb::unique_name;

const PUBLISHER_DEMO: &str = env!("CARGO_BIN_EXE_feedsync-publisher-demo");

#[test]
fn demo_comes_up_and_serves_the_simulated_clinic() {
    let dir = std::env::temp_dir().join(unique_name("feedsync_demo"));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(PUBLISHER_DEMO)
        .args(["--patients", "3", "--listen", &format!("127.0.0.1:{port}"), "--dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let body = loop {
        // Err while the demo is not listening yet.
        if let Ok(reply) = runtime.block_on(try_http(addr, "GET", "/ws/atomfeed/patient/recent", &[], None)) {
            let text = reply.text();
            if text.contains("<entry>") {
                break text;
            }
        }
        assert!(Instant::now() < deadline, "demo did not serve patients in time");
        std::thread::sleep(Duration::from_millis(100));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(body.matches("<entry>").count(), 3, "three registered patients");
}
