//! The check of the `decode` fuzz target, shared by the target (`fuzz_targets/decode.rs`, run
//! by cargo-fuzz on nightly) and the corpus replay on stable (`tests/fuzz_corpus.rs`): the
//! decoder never panics, reads the same events however the bytes are chunked, and every event
//! it reads is well formed.
//!
//! An input's raw bytes are read by `arbitrary` exactly as libfuzzer-sys reads them: the
//! maximum event size (2 bytes, little-endian), 8 chunk lengths, then the stream itself, byte
//! for byte. So a seed for the corpus is easy to write by hand: `[size lo, size hi, 8 lengths,
//! stream...]`.

use arbitrary::Arbitrary;
use brigade_sse::{DecodedEvent, Decoder};

#[derive(Arbitrary, Debug)]
pub(crate) struct Input<'a> {
    /// A small maximum event size exercises the oversized-event path (0 counts as 1).
    max_event_size: u16,
    /// Chunk lengths, cycled; a zero is an empty chunk.
    chunking: [u8; 8],
    /// The stream, last so that it is the rest of the input as it is.
    bytes: &'a [u8],
}

#[derive(Debug, PartialEq)]
struct Outcome {
    events: Vec<Result<DecodedEvent, usize>>,
    discarded: bool,
    last_event_id: Option<String>,
    retry: Option<std::time::Duration>,
}

fn decode<'a>(chunks: impl IntoIterator<Item = &'a [u8]>, max: usize) -> Outcome {
    let mut decoder = Decoder::with_max_event_size(max);
    let mut events = Vec::new();
    for chunk in chunks {
        decoder.feed(chunk);
        loop {
            match decoder.next_event() {
                Ok(Some(event)) => {
                    check_event(&event);
                    events.push(Ok(event));
                }
                Ok(None) => break,
                Err(err) => events.push(Err(err.limit())),
            }
        }
    }
    Outcome {
        discarded: decoder.finish(),
        last_event_id: decoder.last_event_id().map(str::to_owned),
        retry: decoder.retry(),
        events,
    }
}

/// What every decoded event satisfies whatever the input.
fn check_event(event: &DecodedEvent) {
    // An id is never empty (an empty `id:` resets it) and never holds NUL (such an id is
    // ignored) or a line end.
    assert!(
        event
            .id()
            .is_none_or(|id| !id.is_empty() && !id.contains(['\0', '\r', '\n'])),
        "{event:?}"
    );
    assert!(!event.event_type().contains(['\r', '\n']), "{event:?}");
    assert!(!event.data().contains('\r'), "{event:?}");
    assert_eq!(event.data_bytes(), event.data().as_bytes());
}

/// Decodes the input whole and in the input's chunks, and checks both agree.
pub(crate) fn check(input: &Input<'_>) {
    let max = usize::from(input.max_event_size).max(1);
    let whole = decode([input.bytes], max);

    let mut chunks = Vec::new();
    let mut rest = input.bytes;
    let mut lengths = input.chunking.iter().copied().cycle();
    let only_empty = input.chunking.iter().all(|&n| n == 0);
    while !rest.is_empty() {
        let len = usize::from(lengths.next().unwrap_or(1)).min(rest.len());
        let (chunk, tail) = rest.split_at(len);
        chunks.push(chunk);
        rest = tail;
        if only_empty {
            // Only empty chunks: avoid looping forever, feed the rest at once.
            chunks.push(rest);
            break;
        }
    }
    assert_eq!(decode(chunks, max), whole, "chunking changed the events");
}
