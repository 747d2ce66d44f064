//! A sink writing one JSON line per entry (a [`Delivery`] serialized: entry id, feed, action,
//! categories, and the resource, tombstone, REST JSON or failure record) to a file or to
//! standard output. The simplest way to hand feed changes to any other program: `tail -f`, a
//! log shipper, a nightly import.
//!
//! A batch is written whole, flushed, and for files fsynced before [`Sink::deliver`] returns,
//! because the marker moves right after: a line that only sat in a buffer when the power went
//! would be lost for good. A failed write is cut back to where the batch started, so a retry
//! never leaves half a line behind; whole lines may repeat after a crash (at-least-once).

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use crate::sink::{Delivery, Sink, SinkError};

enum Target {
    Stdout,
    File { file: File, path: PathBuf },
}

impl Target {
    fn describe(&self) -> String {
        match self {
            Target::Stdout => "standard output".into(),
            Target::File { path, .. } => path.display().to_string(),
        }
    }

    /// Appends `bytes` and makes them durable; on failure a file is cut back to its length
    /// before, so it only ever holds whole lines.
    fn append_durably(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Target::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(bytes)?;
                out.flush()
            }
            Target::File { file, .. } => {
                let length_before = file.metadata()?.len();
                let written = file.write_all(bytes).and_then(|()| file.sync_data());
                if written.is_err() {
                    let _ = file.set_len(length_before);
                }
                written
            }
        }
    }
}

/// See the module documentation.
pub struct JsonLinesSink {
    /// `None` only while a write runs on the blocking pool (or after that task panicked).
    target: Option<Target>,
    lines_written: u64,
}

impl JsonLinesSink {
    pub fn stdout() -> JsonLinesSink {
        JsonLinesSink { target: Some(Target::Stdout), lines_written: 0 }
    }

    /// Appends to `path`, creating it if needed: a restarted run continues the same file.
    pub fn append_to(path: impl AsRef<Path>) -> std::io::Result<JsonLinesSink> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(JsonLinesSink { target: Some(Target::File { file, path }), lines_written: 0 })
    }

    /// Lines written by this sink since it was made.
    pub fn lines_written(&self) -> u64 {
        self.lines_written
    }
}

/// Whether the same write may succeed later: a full disk can be cleared, a closed pipe or a
/// file this user may not write cannot.
fn write_error(target: &str, error: &std::io::Error) -> SinkError {
    let message = format!("cannot write to {target}: {error}");
    match error.kind() {
        ErrorKind::BrokenPipe | ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => SinkError::permanent(message),
        _ => SinkError::retryable(message),
    }
}

impl Sink for JsonLinesSink {
    async fn deliver(&mut self, batch: &[Delivery]) -> Result<(), SinkError> {
        let mut bytes = Vec::with_capacity(batch.len() * 512);
        for delivery in batch {
            serde_json::to_writer(&mut bytes, delivery)
                .map_err(|e| SinkError::permanent(format!("entry {} cannot be written as JSON: {e}", delivery.entry_id)).at_entry(&delivery.entry_id))?;
            bytes.push(b'\n');
        }
        let mut target = self.target.take().ok_or_else(|| SinkError::permanent("the output was lost when an earlier write crashed; start a new sink"))?;
        // fsync can take long on a slow disk; it must not hold up the runtime's other tasks.
        let (target, written) = tokio::task::spawn_blocking(move || {
            let written = target.append_durably(&bytes);
            (target, written)
        })
        .await
        .map_err(|e| SinkError::permanent(format!("the write task crashed: {e}")))?;
        let described = target.describe();
        self.target = Some(target);
        written.map_err(|e| write_error(&described, &e))?;
        self.lines_written += batch.len() as u64;
        Ok(())
    }
}
