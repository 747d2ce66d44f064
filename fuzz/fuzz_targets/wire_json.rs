//! Every JSON body one machine decodes from another: a resource, a batch answer, a child's push
//! and a child's report. The first byte picks the decoder, so one corpus covers all four.
#![no_main]

use feedsync_wire::network::{ChildReport, PushRequest};
use feedsync_wire::resource::{BatchResponse, Resource};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    match which % 4 {
        0 => drop(serde_json::from_slice::<Resource>(body)),
        1 => drop(serde_json::from_slice::<BatchResponse>(body)),
        2 => drop(serde_json::from_slice::<PushRequest>(body)),
        _ => drop(serde_json::from_slice::<ChildReport>(body)),
    }
});
