//! Every type the toolkit serializes on the wire or on a USB stick, and nothing else: the
//! resources and batch fetch the publisher serves (`resource`), the parent/child protocol
//! (`network`), alerts and their config section (`alerts`), the publisher's status (`status`), and the sealed USB file format
//! (`bundle`). No IO, no database.

pub mod alerts;
pub mod bundle;
pub mod network;
pub mod resource;
pub mod status;
pub mod usb;

/// Lower-case hex of bytes: content hashes, token hashes, fingerprints.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
