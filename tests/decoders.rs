//! Property tests of everything the toolkit decodes from another machine: a feed page, a
//! resource, a batch answer, a push, a child's report and a sealed USB file. Each is mutated
//! thousands of times from a valid sample (bytes flipped, cut, inserted, repeated, nested) and
//! must come back as a value or an error, never a panic or a hang; a sealed USB file must be
//! refused after any change at all. Seeded (`feedsync_core::rng`), so a failure reruns as it
//! was; the long fuzzing runs belong in `fuzz/` (see issue 11), these keep the property in CI.

use feedsync_core::rng::SplitMix64;
use feedsync_wire::bundle::{self, Direction, Header};
use feedsync_wire::network::{ChildReport, PushRequest};
use feedsync_wire::resource::{BatchResponse, Resource};

/// Mutated inputs per decoder.
const CASES: usize = 3_000;

/// `sample` changed in one to four random ways.
fn mutate(rng: &mut SplitMix64, sample: &[u8]) -> Vec<u8> {
    let mut bytes = sample.to_vec();
    for _ in 0..1 + rng.below_usize(4) {
        let at = rng.below_usize(bytes.len() + 1);
        match rng.below(6) {
            0 if at < bytes.len() => bytes[at] ^= 1 << rng.below(8),
            1 => bytes.truncate(at),
            2 => bytes.insert(at.min(bytes.len()), *rng.pick(b"<>/\"{}[],:\\0&;x\xff\x00")),
            3 if at < bytes.len() => {
                let end = (at + 1 + rng.below_usize(40)).min(bytes.len());
                let piece = bytes[at..end].to_vec();
                bytes.splice(at..at, piece);
            }
            4 => {
                let depth = 1 + rng.below_usize(3_000);
                let (open, close) = if rng.percent(50) { ("<e:x>", "</e:x>") } else { ("[", "]") };
                let nest = format!("{}{}", open.repeat(depth), close.repeat(depth));
                bytes.splice(at.min(bytes.len())..at.min(bytes.len()), nest.into_bytes());
            }
            _ => bytes.extend_from_slice(&sample[..rng.below_usize(sample.len())]),
        }
    }
    bytes
}

fn page() -> Vec<u8> {
    std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/page-2.xml")).unwrap()
}

#[test]
fn feed_pages_never_panic_the_reader() {
    let sample = page();
    assert!(feed_subscriber::reader::parse_page("http://h/ws/atomfeed/patient/2", &sample).is_ok(), "the sample is a valid page");
    let mut rng = SplitMix64::new(0xfeed);
    let mut refused = 0;
    for _ in 0..CASES {
        let bytes = mutate(&mut rng, &sample);
        // Run on a small stack: a page that reached a recursive parser deep enough would crash.
        let result = std::thread::Builder::new().stack_size(512 << 10).spawn(move || feed_subscriber::reader::parse_page("http://h/ws/atomfeed/patient/2", &bytes).is_err()).unwrap().join();
        refused += usize::from(result.expect("the reader did not crash"));
    }
    assert!(refused > CASES / 10, "the mutations reach the error paths: {refused} refused");
}

#[test]
fn json_from_other_machines_never_panics() {
    let resource = br#"{"table":"person_name","category":"person_name","key":"6b2c","hash":"sha256:00","columns":{"given_name":"Mary","person_id":{"ref":{"table":"person","key":"5f1c"}},"voided":0}}"#.to_vec();
    let batch = br#"{"resources":[{"link":"/ws/feedsync/resource/person/5f1c","status":200,"resource":{"table":"person","category":"person","key":"5f1c","hash":"sha256:00","columns":{}}},{"link":"/x","status":404,"error":"gone"}]}"#.to_vec();
    let push = br#"{"through_seq":9,"items":[{"seq":9,"table":"person","key":"5f1c","category":"person","resource":{"table":"person","category":"person","key":"5f1c","hash":"sha256:00","columns":{"gender":"F"}},"base":{"columns":{"gender":"M"}}}]}"#.to_vec();
    let report = br#"{"pending_push":1,"pull_after":5,"held":[],"held_total":0,"conflicts":[],"open_conflicts":0,"round":{"pushed":1,"pulled":2,"held_at_parent":0,"conflicts":0,"duration_ms":5,"error":null},"done_commands":[]}"#.to_vec();
    assert!(serde_json::from_slice::<Resource>(&resource).is_ok());
    assert!(serde_json::from_slice::<BatchResponse>(&batch).is_ok());
    assert!(serde_json::from_slice::<PushRequest>(&push).is_ok());
    assert!(serde_json::from_slice::<ChildReport>(&report).is_ok());
    let mut rng = SplitMix64::new(0x150);
    for _ in 0..CASES {
        let _ = serde_json::from_slice::<Resource>(&mutate(&mut rng, &resource));
        let _ = serde_json::from_slice::<BatchResponse>(&mutate(&mut rng, &batch));
        let _ = serde_json::from_slice::<PushRequest>(&mutate(&mut rng, &push));
        let _ = serde_json::from_slice::<ChildReport>(&mutate(&mut rng, &report));
    }
}

#[test]
fn a_sealed_usb_file_changed_in_any_way_is_refused() {
    let key = "7".repeat(64);
    let header = Header::new("clinic-a", Direction::ToParent, 1, 40, None, "2026-12-08T00:00:00Z");
    let sealed = bundle::seal(&header, br#"{"pushes":[],"sequenced":3}"#, &key).unwrap();
    assert!(bundle::open(&sealed, &key, "clinic-a", Direction::ToParent).is_ok());
    let mut rng = SplitMix64::new(0x05b);
    for case in 0..CASES {
        let bytes = mutate(&mut rng, &sealed);
        let _ = bundle::read_header(&bytes);
        if bytes != sealed {
            assert!(bundle::open(&bytes, &key, "clinic-a", Direction::ToParent).is_err(), "case {case}: a changed file opened");
        }
    }
}

/// The key `fuzz/corpus/usb_bundle/sealed-to-parent.fsync` was sealed with (the fuzz target's).
const FUZZ_CORPUS_KEY: &str = "7777777777777777777777777777777777777777777777777777777777777777";

#[test]
fn the_fuzz_corpus_holds_valid_samples() {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let sealed = std::fs::read(corpus.join("usb_bundle/sealed-to-parent.fsync")).unwrap();
    assert!(bundle::open(&sealed, FUZZ_CORPUS_KEY, "clinic-a", Direction::ToParent).is_ok(), "the usb corpus file opens, so fuzzing starts past the seal");
    for page in ["page-1.xml", "page-2.xml", "recent.xml"] {
        let bytes = std::fs::read(corpus.join("feed_page").join(page)).unwrap();
        assert!(feed_subscriber::reader::parse_page("http://h/ws/atomfeed/patient/2", &bytes).is_ok(), "{page}");
    }
    for (file, which) in [("resource", 0u8), ("batch", 1), ("push", 2), ("report", 3)] {
        let bytes = std::fs::read(corpus.join(format!("wire_json/{file}.json"))).unwrap();
        assert_eq!(bytes[0], which, "{file}: the first byte picks the decoder");
        assert!(serde_json::from_slice::<serde_json::Value>(&bytes[1..]).is_ok(), "{file}");
    }
}
