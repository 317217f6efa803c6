//! The decoder never panics, and reads the same events however the bytes are chunked.
//!
//! Run: `cargo +nightly fuzz run decode` from `crates/brigade-sse`.

#![no_main]

use arbitrary::Arbitrary;
use brigade_sse::{DecodedEvent, Decoder};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    bytes: Vec<u8>,
    /// Chunk lengths, cycled; a zero is an empty chunk.
    chunking: Vec<u8>,
    /// A small maximum event size exercises the oversized-event path.
    max_event_size: u16,
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
                    assert!(
                        event
                            .id()
                            .is_none_or(|id| !id.is_empty() && !id.contains('\0'))
                    );
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

fuzz_target!(|input: Input| {
    let max = usize::from(input.max_event_size).max(1);
    let whole = decode([&input.bytes[..]], max);

    let mut chunks = Vec::new();
    let mut rest = &input.bytes[..];
    let mut lengths = input.chunking.iter().copied().cycle();
    while !rest.is_empty() {
        let len = usize::from(lengths.next().unwrap_or(1)).min(rest.len());
        let (chunk, tail) = rest.split_at(len);
        chunks.push(chunk);
        rest = tail;
        if input.chunking.iter().all(|&n| n == 0) {
            // Only empty chunks: avoid looping forever, feed the rest at once.
            chunks.push(rest);
            break;
        }
    }
    assert_eq!(decode(chunks, max), whole, "chunking changed the events");
});
