//! The edge both bench binaries share: a runtime, the whole run under `--deadline-seconds`,
//! child processes given 5 s to go, and one error line plus a hint with exit code 1.

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

/// What to tell the operator when a run fails or overruns its deadline.
pub struct Hints {
    pub name: &'static str,
    pub on_error: &'static str,
    pub on_deadline: &'static str,
}

pub fn run_with_deadline(deadline_seconds: u64, hints: Hints, run: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    // The timer is made inside the runtime: tokio's timeout needs a running reactor.
    let outcome = runtime.block_on(async { tokio::time::timeout(Duration::from_secs(deadline_seconds), run).await });
    // Children (Node peers, dump clients) are killed on drop; give them no time to linger.
    runtime.shutdown_timeout(Duration::from_secs(5));
    match outcome {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("{}: {e:#}", hints.name);
            eprintln!("hint: {}", hints.on_error);
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("{}: the run took longer than --deadline-seconds {deadline_seconds}", hints.name);
            eprintln!("hint: {}", hints.on_deadline);
            ExitCode::FAILURE
        }
    }
}
