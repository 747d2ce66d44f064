//! What both ends of a USB transfer do alike: the time stamp written into a file's header, the
//! one-line description of a header (`usb inspect` on both binaries), and writing a file so
//! that a pulled stick never holds half of one.

use std::io::Write;
use std::path::Path;

use feedsync_wire::bundle::{Direction, Header};

/// A bundle's creation time: now, UTC, RFC 3339 to the millisecond.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A bundle's header for `usb inspect`, one field a line. Reads no key: the header is shown as
/// the file carries it, and is authenticated only when the file is imported.
pub fn describe_header(header: &Header) -> String {
    let (what, range, next) = match header.direction {
        Direction::ToParent => {
            ("an export from the child", describe_range(header.from_seq, header.to_seq, "child events"), "import it at the parent: feed-publisher usb import")
        }
        Direction::ToChild => {
            ("a reply from the parent", describe_range(header.from_seq, header.to_seq, "parent events"), "import it at the child: feed-subscriber usb import")
        }
    };
    let mut text = format!("child:      {}\ndirection:  {} ({what})\nevents:     {range}\n", header.child, header.direction);
    if let Some(answers) = header.answers_to_seq {
        text += &format!("answers:    the child's export up to its event {answers}\n");
    }
    text += &format!(
        "created_at: {}\npayload:    {} bytes before compression, encrypted\nformat:     {}\nnext:       {next}",
        header.created_at, header.payload_bytes, header.format
    );
    text
}

/// Writes `bytes` to `path` through a temporary file in the same folder, synced, then renamed
/// over `path`: a stick pulled out mid-write leaves the old file or none, never half a file.
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file"))?;
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let temporary = folder.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let written = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written?;
    // Best effort: the rename itself reaches the disk (FAT sticks cannot sync a folder).
    if let Ok(dir) = std::fs::File::open(folder) {
        let _ = dir.sync_all();
    }
    Ok(())
}


pub fn describe_range(from_seq: i64, to_seq: i64, what: &str) -> String {
    if to_seq < from_seq { format!("no {what} after {}", from_seq - 1) } else { format!("{what} {from_seq} to {to_seq}") }
}
