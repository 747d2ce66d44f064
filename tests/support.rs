//! What the cross-crate suites share beyond `feedsync_sim`: finding the binaries they run.

use std::path::PathBuf;

/// The path of a workspace binary (`feed-subscriber`, `feed-publisher`, `feedsync-demo`) in the
/// target folder this test was built into. Cargo gives `CARGO_BIN_EXE_*` only to a binary's own
/// package, and these suites belong to none, so `scripts/test` builds every target first.
pub fn binary(name: &str) -> PathBuf {
    let test_exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/<name>
    let profile_dir = test_exe.parent().and_then(|deps| deps.parent()).expect("tests run from target/<profile>/deps");
    let path = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --all-targets` first (scripts/test does)",
        path.display()
    );
    path
}
