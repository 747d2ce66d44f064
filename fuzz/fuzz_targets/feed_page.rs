//! The subscriber's Atom page reader (its XML guard first, then the parser) on any bytes: a
//! value or an error, never a panic, a hang or a stack overflow.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = feed_subscriber::reader::parse_page("http://h/ws/atomfeed/patient/2", data);
});
