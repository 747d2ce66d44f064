//! The edge both binaries share: logging to stderr (`RUST_LOG`, default info), the runtime,
//! and the one-line error with exit code 1 that ARCHITECTURE.md promises.

use std::future::Future;

/// Runs a command's future; prints `error: ...` (with its causes) and exits 1 if it fails.
pub fn run_main(command: impl Future<Output = anyhow::Result<()>>) {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    if let Err(e) = runtime.block_on(command) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
