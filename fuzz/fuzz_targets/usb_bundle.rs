//! The USB bundle reader: the header of any file, and opening it with a child's key. Only the
//! sealed corpus file itself may open; anything else must be refused without a panic.
#![no_main]

use feedsync_wire::bundle::{self, Direction};

/// The key the corpus file was sealed with (`fuzz/run.sh seed` writes it).
const KEY: &str = "7777777777777777777777777777777777777777777777777777777777777777";

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = bundle::read_header(data);
    let _ = bundle::open(data, KEY, "clinic-a", Direction::ToParent);
});
