//! The README's quick start, as a newcomer follows it: a fresh `git clone` of this repository's
//! committed HEAD, the first command of README.md's first code block run in it, and the demo it
//! starts must come up with its dashboard answering. The command is read from the README, not
//! written here, so the test follows the README when its first command changes.
//!
//! The clone builds into this build's target directory (`CARGO_TARGET_DIR`), so only the
//! workspace's own crates are compiled again, not every dependency. Slow all the same (a
//! release build of the clone): runs under CI=true or FEEDSYNC_TEST_QUICKSTART=1, and says it
//! skipped otherwise. FEEDSYNC_QUICKSTART_REPO clones another repository (e.g. a scratch commit
//! of uncommitted work) instead of the one this test was built from.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use feedsync_http::ClientError;
use feedsync_sim::publisher::{HttpReply, try_http};
use feedsync_sim::testdb::in_ci;

/// The clone's first build: every workspace crate in release, on a busy machine.
const BUILD_SECONDS_MAX: u64 = 45 * 60;
/// From the command's start (already built, but cargo may wait for another build's lock on
/// the shared target directory) to the dashboard answering.
const START_SECONDS_MAX: u64 = 900;
/// From Ctrl-C to the process's exit (the network demo syncs what is left first).
const STOP_SECONDS_MAX: u64 = 120;
/// What the demo is asked to run for when it takes `--duration`: a bound in case the test
/// dies before it stops it.
const DEMO_DURATION_S: u64 = 600;

/// The first command of the first fenced code block, without its trailing `# comment`.
fn first_command(readme: &str) -> Option<String> {
    let mut lines = readme.lines().skip_while(|l| !l.trim_start().starts_with("```")).skip(1);
    lines.by_ref().take_while(|l| !l.trim_start().starts_with("```")).map(|l| strip_comment(l).trim().to_owned()).find(|l| !l.is_empty())
}

/// `cmd --x  # what it does` → `cmd --x` (a `#` after whitespace starts a shell comment).
fn strip_comment(line: &str) -> &str {
    if line.trim_start().starts_with('#') {
        return "";
    }
    line.find(" #").or_else(|| line.find("\t#")).map_or(line, |i| &line[..i])
}

/// The command with `args` given to the program it runs: after `--` for `cargo run`.
fn with_args(command: &str, args: &str) -> String {
    let has_separator = command.split_whitespace().any(|w| w == "--");
    if has_separator || !command.starts_with("cargo run") {
        format!("{command} {args}")
    } else {
        format!("{command} -- {args}")
    }
}

/// The first `http://HOST:PORT` in a line, with a non-zero port.
fn address_in(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("http://")? + "http://".len()..];
    let authority: String = rest.chars().take_while(|c| !c.is_whitespace() && *c != '/').collect();
    let authority = authority.replace("localhost", "127.0.0.1");
    authority.parse::<SocketAddr>().ok().filter(|a| a.port() != 0)
}

/// One HTTP/1.1 GET through the toolkit's client, on a runtime of its own (this test is
/// synchronous); `Err` while nothing answers yet.
fn get(addr: SocketAddr, path: &str) -> Result<HttpReply, ClientError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime for one request");
    runtime.block_on(try_http(addr, "GET", path, &[("accept", "*/*")], None))
}

/// GET following redirects on the same server, as a browser opening the address would: the
/// status, the path that answered and the body.
fn get_following(addr: SocketAddr, path: &str) -> Result<(u16, String, String), String> {
    let mut path = path.to_owned();
    for _ in 0..5 {
        let reply = get(addr, &path).map_err(|e| e.to_string())?;
        match reply.headers.get("location") {
            Some(next) if (300..400).contains(&reply.status) => path = next.clone(),
            _ => return Ok((reply.status, path, reply.text())),
        }
    }
    Err(format!("too many redirects from {path}"))
}

/// A command run with `sh -c "exec ..."` in the clone (so its pid is the program's own: `cargo
/// run` replaces itself with the program), both outputs read line by line on threads.
struct Running {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(command: &str, dir: &Path, target_dir: &Path) -> Running {
        let mut process = Command::new("sh");
        process.arg("-c").arg(format!("exec {command}")).current_dir(dir).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        // The clone is built as a newcomer would build it: none of this test's own cargo
        // variables, only the shared target directory.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy().into_owned();
            if (name.starts_with("CARGO_") && name != "CARGO_HOME") || name == "FEEDSYNC_ADMIN_TOKEN" {
                process.env_remove(&name);
            }
        }
        process.env("CARGO_TARGET_DIR", target_dir);
        let mut child = process.spawn().unwrap_or_else(|e| panic!("cannot run sh -c {command:?}: {e}"));
        let (sender, lines) = std::sync::mpsc::channel();
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        let sender_err = sender.clone();
        std::thread::spawn(move || BufReader::new(out).lines().map_while(Result::ok).try_for_each(|l| sender.send(l)));
        std::thread::spawn(move || BufReader::new(err).lines().map_while(Result::ok).try_for_each(|l| sender_err.send(l)));
        Running { child, lines, seen: Vec::new() }
    }

    /// Lines until `wanted` gives something, or a panic with everything seen.
    fn wait_for<T>(&mut self, what: &str, wanted: impl Fn(&str) -> Option<T>, deadline: Instant) -> T {
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    println!("quickstart| {line}");
                    let found = wanted(&line);
                    self.seen.push(line);
                    if let Some(found) = found {
                        return found;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!("no {what} in time; the command said:\n{}", self.seen.join("\n")),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait();
                    panic!("the command ended ({status:?}) before {what}; it said:\n{}", self.seen.join("\n"))
                }
            }
        }
    }

    /// Every remaining line until the process ends, then its exit status.
    fn finish(&mut self, deadline: Instant) -> std::process::ExitStatus {
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    println!("quickstart| {line}");
                    self.seen.push(line);
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!("the command did not stop in time; it said:\n{}", self.seen.join("\n"));
                }
            }
        }
        self.child.wait().expect("the command's exit status")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn git(args: &[&str]) {
    let status = Command::new("git").args(args).stdin(Stdio::null()).status().unwrap_or_else(|e| panic!("git {args:?}: {e}"));
    assert!(status.success(), "git {args:?} failed: {status}");
}

#[test]
fn readme_quick_start_from_a_fresh_clone_serves_the_dashboard() {
    if !in_ci() && std::env::var("FEEDSYNC_TEST_QUICKSTART").as_deref() != Ok("1") {
        eprintln!("skipped: the README quick start from a fresh clone (a release build) runs under CI=true or FEEDSYNC_TEST_QUICKSTART=1");
        return;
    }
    let repository = std::env::var_os("FEEDSYNC_QUICKSTART_REPO")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf());
    // This build's target directory (the test's own scratch folder is inside it).
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join("quickstart");
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("target/tmp is in the target directory").to_path_buf());
    let target_dir = std::path::absolute(target_dir).unwrap();
    // Always the same folder: the clone's crates keep the same build hashes from one run to
    // the next, so runs replace their artifacts in the shared target directory rather than
    // adding a set each time.
    let clone = scratch.join("feedsync");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    git(&["clone", "--quiet", "--no-hardlinks", repository.to_str().unwrap(), clone.to_str().unwrap()]);

    let readme = std::fs::read_to_string(clone.join("README.md")).expect("the clone has README.md");
    let command = first_command(&readme).expect("README.md starts with a code block holding a command");
    println!("the README's first command: {command}");
    // The README builds with --release; this test builds the same command in the dev profile
    // (the profiles differ only in optimisation), reusing the dependencies the test suite
    // already built, which saves CI a whole release build. FEEDSYNC_QUICKSTART_RELEASE=1 keeps
    // --release.
    let command = if std::env::var("FEEDSYNC_QUICKSTART_RELEASE").as_deref() == Ok("1") { command } else { command.replacen(" --release", "", 1) };

    // The program's options, from its --help (this also builds it: a build is not a start).
    let mut help = Running::start(&with_args(&command, "--help"), &clone, &target_dir);
    let status = help.finish(Instant::now() + Duration::from_secs(BUILD_SECONDS_MAX));
    assert!(status.success(), "{command} --help failed ({status}):\n{}", help.seen.join("\n"));
    let text = help.seen.join("\n");
    let takes = |option: &str| text.contains(option);
    let demo_dir = scratch.join("demo");
    let mut args = Vec::new();
    if takes("--listen") {
        args.push("--listen 127.0.0.1:0".to_owned());
    }
    if takes("--dir") {
        args.push(format!("--dir {}", demo_dir.display()));
    }
    if takes("--duration") {
        args.push(format!("--duration {DEMO_DURATION_S}"));
    }
    let full = with_args(&command, &args.join(" "));
    println!("running: {full}");

    let mut demo = Running::start(&full, &clone, &target_dir);
    let deadline = Instant::now() + Duration::from_secs(START_SECONDS_MAX);
    let addr = demo.wait_for("address it serves on (http://HOST:PORT)", address_in, deadline);
    let (status, path, page) = loop {
        match get_following(addr, "/dashboard") {
            Ok(answer) if answer.0 == 200 => break answer,
            other if Instant::now() > deadline => panic!("/dashboard at {addr} did not answer 200: {other:?}\n{}", demo.seen.join("\n")),
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    };
    assert_eq!((status, path.as_str()), (200, "/dashboard/"), "{page}");
    assert!(page.to_lowercase().contains("<html"), "{page}");
    // Up means working, not only listening: the parent's feed has entries, and every child the
    // dashboard lists (the network demo's facilities) has finished a round with it and
    // reported it.
    loop {
        let (feed, overview) = (get(addr, "/ws/atomfeed/all/recent").unwrap(), get(addr, "/ws/feedsync/admin/overview").unwrap());
        let (status, feed, overview_status, overview) = (feed.status, feed.text(), overview.status, overview.text());
        assert_eq!((status, overview_status), (200, 200), "the feed and the dashboard's overview answer:\n{feed}\n{overview}");
        let overview: serde_json::Value = serde_json::from_str(&overview).unwrap_or_else(|e| panic!("the overview is not JSON ({e}): {overview}"));
        let children = overview["children"].as_array().cloned().unwrap_or_default();
        if feed.contains("<entry>") && children.iter().all(|c| !c["reported_at"].is_null()) {
            println!("up: the feed has entries; children that reported a round: {}", children.len());
            break;
        }
        assert!(Instant::now() < deadline, "the demo did not come up: its feed has no entry, or a child has not reported a round\n{}", demo.seen.join("\n"));
        std::thread::sleep(Duration::from_secs(1));
    }

    // Ctrl-C, as the README says, stops it cleanly.
    let pid = demo.child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let status = demo.finish(Instant::now() + Duration::from_secs(STOP_SECONDS_MAX));
    assert!(status.success(), "after Ctrl-C the command exited with {status}:\n{}", demo.seen.join("\n"));
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn the_first_command_is_read_as_a_newcomer_reads_it() {
    let readme = "# title\n\n```sh\n\n# a comment line\ncargo run --release --bin feedsync-demo   # the demo\nscripts/test\n```\n";
    assert_eq!(first_command(readme).as_deref(), Some("cargo run --release --bin feedsync-demo"));
    assert_eq!(with_args("cargo run --release --bin feedsync-demo", "--help"), "cargo run --release --bin feedsync-demo -- --help");
    assert_eq!(with_args("cargo run --release -p feed-publisher -- demo", "--help"), "cargo run --release -p feed-publisher -- demo --help");
    assert_eq!(with_args("feedsync-demo", "--help"), "feedsync-demo --help");
    assert_eq!(address_in("listening on http://127.0.0.1:41234"), Some("127.0.0.1:41234".parse().unwrap()));
    assert_eq!(address_in("feeds:      http://127.0.0.1:8086/ws/atomfeed/all/recent (every change)"), Some("127.0.0.1:8086".parse().unwrap()));
    assert_eq!(address_in("listen on http://127.0.0.1:0"), None);
    assert_eq!(first_command("no code here"), None);
}
