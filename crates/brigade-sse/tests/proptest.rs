//! Property tests: encode then decode is the identity; decoding does not depend on chunking.

use std::time::Duration;

use brigade_sse::{DecodedEvent, Decoder, Event};
use bytes::BytesMut;
use proptest::prelude::*;

/// Text with the characters that matter to an event stream mixed into arbitrary Unicode.
fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => any::<char>(),
            1 => Just('\r'),
            1 => Just('\n'),
            1 => Just('\0'),
            1 => Just(' '),
            1 => Just(':'),
            1 => Just('\u{FEFF}'),
        ],
        0..24,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

fn without(chars: &'static [char]) -> impl Strategy<Value = String> {
    text().prop_map(move |s| s.chars().filter(|c| !chars.contains(c)).collect())
}

#[derive(Clone, Debug)]
struct Spec {
    data: String,
    event: Option<String>,
    id: Option<String>,
    retry: Option<u64>,
    comment: Option<String>,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        text(),
        prop::option::of(without(&['\r', '\n'])),
        prop::option::of(without(&['\0', '\r', '\n'])),
        prop::option::of(any::<u64>()),
        prop::option::of(text()),
    )
        .prop_map(|(data, event, id, retry, comment)| Spec {
            data,
            event,
            id,
            retry,
            comment,
        })
}

fn build(spec: &Spec) -> Event {
    let mut event = Event::default().data(spec.data.clone());
    if let Some(ty) = &spec.event {
        event = event.event(ty.clone()).unwrap();
    }
    if let Some(id) = &spec.id {
        event = event.id(id.clone()).unwrap();
    }
    if let Some(retry) = spec.retry {
        event = event.retry(Duration::from_millis(retry));
    }
    if let Some(comment) = &spec.comment {
        event = event.comment(comment.clone());
    }
    event
}

/// What a reader gets for data: every CRLF and CR becomes LF, the stream's only line break.
fn normalize(data: &str) -> String {
    data.replace("\r\n", "\n").replace('\r', "\n")
}

#[derive(Clone, Debug, PartialEq)]
struct Outcome {
    events: Vec<Result<DecodedEvent, usize>>,
    discarded: bool,
    last_event_id: Option<String>,
    retry: Option<Duration>,
}

fn decode_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>, max: usize) -> Outcome {
    let mut decoder = Decoder::with_max_event_size(max);
    let mut events = Vec::new();
    for chunk in chunks {
        decoder.feed(chunk);
        loop {
            match decoder.next_event() {
                Ok(Some(event)) => events.push(Ok(event)),
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

/// An event as the reference reads it: type, data, last event id, retry.
type Expected = (String, String, Option<String>, Option<Duration>);

/// What the WHATWG specification says, written as plainly as it reads: decode the whole stream
/// (one leading BOM stripped, invalid UTF-8 replaced), split it into lines at CRLF, CR or LF,
/// interpret each line, and drop what follows the last line end. No chunking, no size limit.
fn reference(input: &[u8]) -> (Vec<Expected>, Option<String>) {
    let input = input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(input);
    let text = String::from_utf8_lossy(input);
    let mut lines = Vec::new();
    let mut rest = &text[..];
    while let Some(end) = rest.find(['\r', '\n']) {
        lines.push(&rest[..end]);
        let skip = if rest[end..].starts_with("\r\n") {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];
    }
    // `rest` is an unterminated line: discarded.
    let (mut data, mut event_type, mut id_buffer) = (String::new(), String::new(), String::new());
    let mut last_event_id = String::new();
    let mut retry = None;
    let mut events = Vec::new();
    for line in lines {
        if line.is_empty() {
            last_event_id = id_buffer.clone();
            let event_retry = retry.take();
            if data.is_empty() {
                event_type.clear();
                continue;
            }
            if data.ends_with('\n') {
                data.pop();
            }
            let ty = if event_type.is_empty() {
                "message".to_owned()
            } else {
                event_type.clone()
            };
            let id = (!last_event_id.is_empty()).then(|| last_event_id.clone());
            events.push((ty, std::mem::take(&mut data), id, event_retry));
            event_type.clear();
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (name, value) = match line.split_once(':') {
            Some((name, value)) => (name, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match name {
            "event" => event_type = value.to_owned(),
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            "id" if !value.contains('\0') => id_buffer = value.to_owned(),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                retry = Some(Duration::from_millis(value.parse().unwrap_or(u64::MAX)));
            }
            _ => {}
        }
    }
    let last = (!last_event_id.is_empty()).then_some(last_event_id);
    (events, last)
}

/// Bytes shaped like an event stream, with the tricky pieces over-represented.
fn stream_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"data".to_vec()),
        Just(b"data: ".to_vec()),
        Just(b"id".to_vec()),
        Just(b"id: 7".to_vec()),
        Just(b"id: 8".to_vec()),
        Just(b"event".to_vec()),
        Just(b"event: e".to_vec()),
        Just(b"retry: 12".to_vec()),
        Just(b"retry".to_vec()),
        Just(b":".to_vec()),
        Just(b" ".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\0".to_vec()),
        Just(b"\xEF\xBB\xBF".to_vec()),
        Just("é€😀".as_bytes().to_vec()),
        Just(b"\xF0\x9F".to_vec()),
        Just(b"\xFF".to_vec()),
        prop::collection::vec(any::<u8>(), 1..4),
    ];
    (any::<bool>(), prop::collection::vec(piece, 0..16)).prop_map(|(bom, pieces)| {
        // A BOM is only special at the very start: put one there half the time.
        let start: &[u8] = if bom { b"\xEF\xBB\xBF" } else { b"" };
        [start.to_vec(), pieces.concat()].concat()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn encode_then_decode_is_the_identity(specs in prop::collection::vec(spec(), 1..6)) {
        let mut buf = BytesMut::new();
        for spec in &specs {
            build(spec).encode(&mut buf);
        }
        let outcome = decode_chunks([&buf[..]], usize::MAX);
        prop_assert!(!outcome.discarded);
        prop_assert_eq!(outcome.events.len(), specs.len());
        let mut last_id: Option<String> = None;
        for (spec, decoded) in specs.iter().zip(&outcome.events) {
            let decoded = decoded.as_ref().unwrap();
            if let Some(id) = &spec.id {
                last_id = (!id.is_empty()).then(|| id.clone());
            }
            prop_assert_eq!(decoded.data(), normalize(&spec.data));
            let ty = spec.event.as_deref().filter(|ty| !ty.is_empty()).unwrap_or("message");
            prop_assert_eq!(decoded.event_type(), ty);
            prop_assert_eq!(decoded.id(), last_id.as_deref());
            prop_assert_eq!(decoded.retry(), spec.retry.map(Duration::from_millis));
        }
    }

    #[test]
    fn encoded_len_is_what_encode_writes(spec in spec(), with_data in any::<bool>()) {
        let mut event = build(&spec);
        if !with_data {
            // `build` always sets data: also an event with only a comment, or nothing at all.
            event = spec.comment.map_or_else(Event::default, |c| Event::default().comment(c));
        }
        let mut buf = BytesMut::new();
        event.encode(&mut buf);
        prop_assert_eq!(event.encoded_len(), buf.len());
    }

    #[test]
    fn decoder_agrees_with_a_plain_reading_of_the_specification(input in stream_bytes(), chunk in 1usize..8) {
        let (expected, expected_last_id) = reference(&input);
        let outcome = decode_chunks(input.chunks(chunk), usize::MAX);
        let got: Vec<_> = outcome
            .events
            .iter()
            .map(|event| {
                let event = event.as_ref().unwrap();
                (
                    event.event_type().to_owned(),
                    event.data().to_owned(),
                    event.id().map(str::to_owned),
                    event.retry(),
                )
            })
            .collect();
        prop_assert_eq!(got, expected);
        prop_assert_eq!(outcome.last_event_id, expected_last_id);
    }

    #[test]
    fn decoding_without_a_size_limit_is_the_same_for_every_two_split(input in stream_bytes()) {
        let whole = decode_chunks([&input[..]], usize::MAX);
        for i in 0..=input.len() {
            let (a, b) = input.split_at(i);
            prop_assert_eq!(decode_chunks([a, b], usize::MAX), whole.clone(), "split at {}", i);
        }
    }

    #[test]
    fn decoding_is_the_same_for_every_one_byte_chunking(input in stream_bytes(), max in 4usize..64) {
        let whole = decode_chunks([&input[..]], max);
        prop_assert_eq!(decode_chunks(input.chunks(1), max), whole);
    }

    #[test]
    fn decoding_is_the_same_for_every_two_split(input in stream_bytes(), max in 4usize..64) {
        let whole = decode_chunks([&input[..]], max);
        for i in 0..=input.len() {
            let (a, b) = input.split_at(i);
            prop_assert_eq!(decode_chunks([a, b], max), whole.clone(), "split at {}", i);
        }
    }

    #[test]
    fn decoding_is_the_same_for_every_three_split(input in stream_bytes(), max in 4usize..64) {
        let whole = decode_chunks([&input[..]], max);
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let chunks = [&input[..i], &input[i..j], &input[j..]];
                prop_assert_eq!(decode_chunks(chunks, max), whole.clone(), "splits at {}, {}", i, j);
            }
        }
    }

    #[test]
    fn decoder_never_panics_on_arbitrary_bytes(input in prop::collection::vec(any::<u8>(), 0..512), chunk in 1usize..32) {
        let outcome = decode_chunks(input.chunks(chunk), 128);
        for event in outcome.events.iter().flatten() {
            // Memory stays bounded: replacement characters at most triple the bytes held.
            prop_assert!(event.data().len() <= 3 * 128);
            prop_assert!(event.id().is_none_or(|id| !id.contains('\0')));
        }
    }
}
