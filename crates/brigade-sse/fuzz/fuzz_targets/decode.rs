//! Fuzz target: the decoder never panics, reads the same events however the bytes are chunked,
//! and every event it reads is well formed. The check itself is `../decode_check.rs`, which
//! `tests/fuzz_corpus.rs` also runs on stable over the committed corpus.
//!
//! Fuzzing needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly toolchain; from
//! `crates/brigade-sse`:
//!
//! ```text
//! cargo +nightly fuzz run decode -- -max_total_time=120
//! cargo +nightly fuzz cmin decode      # minimize fuzz/corpus/decode before committing it
//! ```
//!
//! With only a stable toolchain, `RUSTC_BOOTSTRAP=1 cargo fuzz run decode` lets it take the
//! nightly flags. A crash leaves its input in `fuzz/artifacts/decode/`: add it to the corpus
//! (and fix the bug, with a test named for the behaviour). CI runs no fuzzer; it replays the
//! corpus with `cargo test -p brigade-sse --test fuzz_corpus`.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../decode_check.rs"]
mod decode_check;

fuzz_target!(|input: decode_check::Input<'_>| decode_check::check(&input));
