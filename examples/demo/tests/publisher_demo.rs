//! `feedsync-publisher-demo`, the publisher alone over a simulated clinic, comes up and serves.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    let body = loop {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            write!(stream, "GET /ws/atomfeed/patient/recent HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
            let mut text = String::new();
            stream.read_to_string(&mut text).unwrap();
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
