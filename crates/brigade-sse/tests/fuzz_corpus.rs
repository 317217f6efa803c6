//! The `decode` fuzz target's corpus, replayed on stable: every input of
//! `fuzz/corpus/decode/` goes through the target's own check (`fuzz/decode_check.rs`), read
//! from its raw bytes exactly as libfuzzer-sys reads it. The corpus is what `cargo fuzz cmin`
//! kept of a fuzzing run, plus hand-written seeds for the WHATWG edge cases (`whatwg-*`); the
//! crate's README says how to grow it.

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};

#[path = "../fuzz/decode_check.rs"]
mod decode_check;

use decode_check::Input;

/// The input libfuzzer-sys hands the target for `data`, or `None` where it skips `data` (too
/// short, or not readable as an `Input`): `fuzz_target!`'s own steps.
fn input_from_fuzzer(data: &[u8]) -> Option<Input<'_>> {
    if data.len() < <Input<'_> as Arbitrary<'_>>::size_hint(0).0 {
        return None;
    }
    Input::arbitrary_take_rest(Unstructured::new(data)).ok()
}

#[test]
fn every_corpus_input_passes_the_fuzz_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode");
    let entries = fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("the corpus {} is missing: {err}", dir.display()));
    let mut replayed = 0;
    let mut seeds = 0;
    let mut failed = Vec::new();
    for entry in entries {
        let path = entry.unwrap().path();
        let data = fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        seeds += usize::from(name.starts_with("whatwg-"));
        let Some(input) = input_from_fuzzer(&data) else {
            continue;
        };
        replayed += 1;
        if catch_unwind(AssertUnwindSafe(|| decode_check::check(&input))).is_err() {
            failed.push(name);
        }
    }
    assert!(failed.is_empty(), "the fuzz check failed on {failed:?}");
    // A corpus that is missing, emptied or unreadable as inputs would pass vacuously.
    assert!(replayed >= 100, "only {replayed} inputs replayed");
    assert!(seeds >= 10, "only {seeds} hand-written seeds");
}

#[test]
fn seeds_are_read_as_their_layout_says() {
    // `[max event size, little-endian][8 chunk lengths][the stream]`.
    let data = b"\x08\x00\x04\x00\x00\x00\x00\x00\x00\x00data: 0123456789\n\n";
    let input = input_from_fuzzer(data).unwrap();
    let debug = format!("{input:?}");
    assert!(debug.contains("max_event_size: 8"), "{debug}");
    assert!(
        debug.contains("chunking: [4, 0, 0, 0, 0, 0, 0, 0]"),
        "{debug}"
    );
    assert!(debug.contains("bytes: [100, 97, 116, 97"), "{debug}");
    // Shorter than the fixed part: skipped, as the fuzzer skips it.
    assert!(input_from_fuzzer(b"\x08\x00\x04").is_none());
}
