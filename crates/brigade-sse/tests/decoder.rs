//! The decoder's WHATWG rules, each pinned by name.

use std::time::{Duration, Instant};

use brigade_sse::{DecodedEvent, Decoder, EventTooLarge};

/// Decodes `input` fed at once, then with every byte a chunk, and checks both agree.
fn decode(input: &[u8]) -> Vec<DecodedEvent> {
    let whole = decode_chunks(&[input]);
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(decode_chunks(&bytes), whole, "byte-at-a-time differs");
    whole
}

fn decode_chunks(chunks: &[&[u8]]) -> Vec<DecodedEvent> {
    let mut decoder = Decoder::new();
    let mut events = Vec::new();
    for chunk in chunks {
        decoder.feed(chunk);
        while let Some(event) = decoder.next_event().unwrap() {
            events.push(event);
        }
    }
    decoder.finish();
    events
}

fn data(events: &[DecodedEvent]) -> Vec<&str> {
    events.iter().map(DecodedEvent::data).collect()
}

#[test]
fn leading_bom_is_stripped() {
    let events = decode(b"\xEF\xBB\xBFdata: x\n\n");
    assert_eq!(data(&events), ["x"]);
}

#[test]
fn bom_split_across_chunks_is_stripped() {
    let events = decode_chunks(&[b"\xEF", b"\xBB", b"\xBFdata: x\n\n"]);
    assert_eq!(data(&events), ["x"]);
}

#[test]
fn only_one_leading_bom_is_stripped() {
    // The second BOM is part of the field name, so the line is an unknown field.
    let events = decode(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: x\n\ndata: y\n\n");
    assert_eq!(data(&events), ["y"]);
}

#[test]
fn bom_after_the_start_is_not_stripped() {
    let events = decode(b"data: a\n\n\xEF\xBB\xBFdata: x\n\ndata: y\n\n");
    assert_eq!(data(&events), ["a", "y"]);
}

#[test]
fn lf_cr_and_crlf_all_end_lines() {
    let events = decode(b"data: a\n\ndata: b\r\rdata: c\r\n\r\n");
    assert_eq!(data(&events), ["a", "b", "c"]);
}

#[test]
fn mixed_line_ends_join_data_with_lf() {
    let events = decode(b"data: a\rdata: b\r\ndata: c\ndata: d\n\n");
    assert_eq!(data(&events), ["a\nb\nc\nd"]);
}

#[test]
fn lone_cr_dispatches_without_waiting_for_the_next_byte() {
    let mut decoder = Decoder::new();
    decoder.feed(b"data: x\r\r");
    assert_eq!(decoder.next_event().unwrap().unwrap().data(), "x");
}

#[test]
fn lf_after_cr_in_the_next_chunk_is_not_an_empty_line() {
    let mut decoder = Decoder::new();
    decoder.feed(b"data: a\r");
    assert!(decoder.next_event().unwrap().is_none());
    // If this LF were a line of its own, it would dispatch "a" now.
    decoder.feed(b"\ndata: b\n\n");
    assert_eq!(decoder.next_event().unwrap().unwrap().data(), "a\nb");
}

#[test]
fn crlf_split_after_the_blank_line_cr_dispatches_once() {
    let events = decode_chunks(&[b"data: a\r\n\r", b"\ndata: b\r\n\r\n"]);
    assert_eq!(data(&events), ["a", "b"]);
}

#[test]
fn comment_lines_are_ignored() {
    let events = decode(b": hello\ndata: a\n:another\n\n:\n\n");
    assert_eq!(data(&events), ["a"]);
}

#[test]
fn field_without_colon_has_an_empty_value() {
    // `data` alone appends an empty line; the event has data "".
    let events = decode(b"data\n\n");
    assert_eq!(data(&events), [""]);
    let events = decode(b"data\ndata\ndata: x\n\n");
    assert_eq!(data(&events), ["\n\nx"]);
}

#[test]
fn exactly_one_leading_space_is_stripped() {
    let events = decode(b"data:  two\n\ndata:none\n\ndata: \n\n");
    assert_eq!(data(&events), [" two", "none", ""]);
}

#[test]
fn tab_after_colon_is_kept() {
    let events = decode(b"data:\tx\n\n");
    assert_eq!(data(&events), ["\tx"]);
}

#[test]
fn unknown_fields_are_ignored() {
    let events = decode(b"foo: bar\ndata: a\nDATA: b\nData: c\n\n");
    assert_eq!(data(&events), ["a"]);
}

#[test]
fn field_names_are_matched_exactly_with_colon_in_value() {
    let events = decode(b"data: a: b\n\n");
    assert_eq!(data(&events), ["a: b"]);
}

#[test]
fn id_containing_nul_is_ignored() {
    let events = decode(b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n");
    assert_eq!(events[0].id(), Some("1"));
    assert_eq!(events[1].id(), Some("1"));
}

#[test]
fn id_is_kept_across_events() {
    let events = decode(b"id: 7\ndata: a\n\ndata: b\n\n");
    assert_eq!(events[0].id(), Some("7"));
    assert_eq!(events[1].id(), Some("7"));
}

#[test]
fn empty_id_resets_the_last_event_id() {
    let events = decode(b"id: 7\ndata: a\n\nid\ndata: b\n\nid:\ndata: c\n\n");
    assert_eq!(events[0].id(), Some("7"));
    assert_eq!(events[1].id(), None);
    assert_eq!(events[2].id(), None);
}

#[test]
fn id_is_committed_at_the_blank_line_even_without_data() {
    let mut decoder = Decoder::new();
    decoder.feed(b"id: 9\n");
    assert!(decoder.next_event().unwrap().is_none());
    assert_eq!(
        decoder.last_event_id(),
        None,
        "not committed before the blank line"
    );
    decoder.feed(b"\n");
    assert!(decoder.next_event().unwrap().is_none());
    assert_eq!(decoder.last_event_id(), Some("9"));
    decoder.feed(b"data: x\n\n");
    assert_eq!(decoder.next_event().unwrap().unwrap().id(), Some("9"));
}

#[test]
fn id_of_an_unterminated_event_is_not_committed() {
    let mut decoder = Decoder::new();
    decoder.feed(b"id: 1\ndata: a\n\nid: 2\ndata: b\n");
    assert!(decoder.next_event().unwrap().is_some());
    assert!(decoder.next_event().unwrap().is_none());
    assert!(decoder.finish());
    assert_eq!(decoder.last_event_id(), Some("1"));
}

#[test]
fn retry_accepts_only_ascii_digits() {
    let mut decoder = Decoder::new();
    decoder.feed(b"retry: 1500\n\n");
    assert!(
        decoder.next_event().unwrap().is_none(),
        "retry alone dispatches nothing"
    );
    assert_eq!(decoder.retry(), Some(Duration::from_millis(1500)));
    for bad in [
        &b"retry: 15s\n"[..],
        b"retry: -1\n",
        b"retry:  20\n",
        b"retry: 1.5\n",
        b"retry\n",
        b"retry: \xD9\xA1\n",
    ] {
        decoder.feed(bad);
        decoder.feed(b"\n");
        assert!(decoder.next_event().unwrap().is_none());
        assert_eq!(
            decoder.retry(),
            Some(Duration::from_millis(1500)),
            "{bad:?}"
        );
    }
}

#[test]
fn retry_of_an_event_is_reported_with_it() {
    let events = decode(b"retry: 20\ndata: a\n\ndata: b\n\n");
    assert_eq!(events[0].retry(), Some(Duration::from_millis(20)));
    assert_eq!(events[1].retry(), None);
}

#[test]
fn event_type_is_reset_after_dispatch_and_defaults_to_message() {
    let events = decode(b"event: delta\ndata: a\n\ndata: b\n\nevent:\ndata: c\n\n");
    assert_eq!(events[0].event_type(), "delta");
    assert_eq!(events[1].event_type(), "message");
    assert_eq!(events[2].event_type(), "message");
}

#[test]
fn event_type_is_reset_by_a_blank_line_without_data() {
    let events = decode(b"event: lost\n\ndata: a\n\n");
    assert_eq!(events[0].event_type(), "message");
}

#[test]
fn last_trailing_lf_is_removed_from_data() {
    let events = decode(b"data: a\ndata:\n\n");
    assert_eq!(data(&events), ["a\n"]);
}

#[test]
fn event_without_data_is_not_dispatched() {
    let events = decode(b"event: x\nid: 1\n\n: only a comment\n\n\n\n");
    assert!(events.is_empty());
}

#[test]
fn empty_data_line_is_dispatched() {
    let events = decode(b"data:\n\n");
    assert_eq!(data(&events), [""]);
}

#[test]
fn unterminated_event_at_end_of_stream_is_discarded() {
    let mut decoder = Decoder::new();
    decoder.feed(b"data: a\n\ndata: b\n");
    assert_eq!(decoder.next_event().unwrap().unwrap().data(), "a");
    assert!(decoder.next_event().unwrap().is_none());
    assert!(decoder.finish(), "finish reports the discarded event");
    decoder.feed(b"\n");
    assert!(
        decoder.next_event().unwrap().is_none(),
        "the discarded data is gone"
    );
}

#[test]
fn unterminated_last_line_is_discarded() {
    let mut decoder = Decoder::new();
    decoder.feed(b"data: a\n\nretry: 10");
    assert!(decoder.next_event().unwrap().is_some());
    assert!(decoder.next_event().unwrap().is_none());
    assert!(decoder.finish());
    assert_eq!(decoder.retry(), None);
}

#[test]
fn clean_end_of_stream_discards_nothing() {
    let mut decoder = Decoder::new();
    decoder.feed(b"data: a\n\n");
    assert!(decoder.next_event().unwrap().is_some());
    assert!(!decoder.finish());
}

#[test]
fn finish_allows_a_bom_again_and_keeps_the_last_event_id() {
    let mut decoder = Decoder::new();
    decoder.feed(b"id: 3\ndata: a\n\n");
    assert!(decoder.next_event().unwrap().is_some());
    decoder.finish();
    decoder.feed(b"\xEF\xBB\xBFdata: b\n\n");
    let event = decoder.next_event().unwrap().unwrap();
    assert_eq!((event.data(), event.id()), ("b", Some("3")));
}

#[test]
fn invalid_utf8_is_replaced() {
    let events = decode(b"data: a\xFFb\xE2\x82\n\n");
    assert_eq!(data(&events), ["a\u{FFFD}b\u{FFFD}"]);
}

#[test]
fn utf8_sequence_split_across_chunks_decodes_whole() {
    let text = "é€😀";
    let input = format!("data: {text}\n\n");
    let bytes = input.as_bytes();
    for split in 0..bytes.len() {
        let events = decode_chunks(&[&bytes[..split], &bytes[split..]]);
        assert_eq!(data(&events), [text], "split at {split}");
    }
}

#[test]
fn nul_in_data_is_kept() {
    let events = decode(b"data: a\0b\n\n");
    assert_eq!(data(&events), ["a\0b"]);
}

#[test]
fn set_last_event_id_seeds_the_events_id() {
    let mut decoder = Decoder::new();
    decoder.set_last_event_id(Some("41"));
    decoder.feed(b"data: x\n\n");
    assert_eq!(decoder.next_event().unwrap().unwrap().id(), Some("41"));
}

#[test]
fn event_over_the_maximum_size_is_an_error_and_is_skipped() {
    let mut decoder = Decoder::with_max_event_size(10);
    decoder.feed(b"data: 0123456789\ndata: more\n\ndata: ok\n\n");
    let err: EventTooLarge = decoder.next_event().unwrap_err();
    assert_eq!(err.limit(), 10);
    assert_eq!(
        err.to_string(),
        "event exceeds the maximum size of 10 bytes"
    );
    assert_eq!(decoder.next_event().unwrap().unwrap().data(), "ok");
    assert!(decoder.next_event().unwrap().is_none());
}

#[test]
fn leading_bom_does_not_count_toward_the_maximum_event_size() {
    let input = b"\xEF\xBB\xBFdata: 12\n\n"; // the line is 8 bytes without its BOM
    for chunk in 1..=input.len() {
        let mut decoder = Decoder::with_max_event_size(8);
        let mut datas = Vec::new();
        for piece in input.chunks(chunk) {
            decoder.feed(piece);
            while let Some(event) = decoder.next_event().expect("within the limit") {
                datas.push(event.data().to_owned());
            }
        }
        assert_eq!(datas, ["12"], "chunk size {chunk}");
    }
}

#[test]
fn maximum_size_counts_data_across_lines() {
    let mut decoder = Decoder::with_max_event_size(12);
    decoder.feed(b"data: 1234\ndata: 5678\n\n"); // 5 + 5 held, then a 10-byte line
    assert!(decoder.next_event().is_err());
    decoder.feed(b"data: 12\ndata: 34\n\n");
    assert_eq!(decoder.next_event().unwrap().unwrap().data(), "12\n34");
}

#[test]
fn oversized_line_fed_in_pieces_keeps_memory_bounded() {
    let mut decoder = Decoder::with_max_event_size(1024);
    let mut errors = 0;
    for _ in 0..10_000 {
        decoder.feed(&[b'x'; 100]);
        if decoder.next_event().is_err() {
            errors += 1;
        }
        // The bytes held are checked in the decoder's unit tests; here: what it reports.
        let debug = format!("{decoder:?}");
        let buffered: usize = debug
            .split("buffered: ")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .expect("Debug shows the buffered bytes");
        assert!(buffered <= 1024, "{debug}");
    }
    assert_eq!(errors, 1, "one error for the one oversized event");
    decoder.feed(b"\n\ndata: after\n\n");
    assert_eq!(decoder.next_event().unwrap().unwrap().data(), "after");
}

#[test]
fn oversized_error_is_the_same_for_every_chunking() {
    let input = b"data: a\n\ndata: 0123456789abcdef\n\ndata: b\n\n";
    let run = |chunk: usize| {
        let mut decoder = Decoder::with_max_event_size(8);
        let mut out = Vec::new();
        for piece in input.chunks(chunk) {
            decoder.feed(piece);
            loop {
                match decoder.next_event() {
                    Ok(Some(event)) => out.push(Ok(event.data().to_owned())),
                    Ok(None) => break,
                    Err(err) => out.push(Err(err.limit())),
                }
            }
        }
        out
    };
    let whole = run(input.len());
    assert_eq!(whole, [Ok("a".to_owned()), Err(8), Ok("b".to_owned())]);
    for chunk in 1..input.len() {
        assert_eq!(run(chunk), whole, "chunk size {chunk}");
    }
}

#[test]
fn sixteen_mib_line_fed_one_byte_at_a_time_is_linear() {
    // Quadratic rescanning would take hours here; linear takes well under a second in release
    // and a few seconds in debug. Timing is not asserted (it would be flaky); the work is.
    const SIZE: usize = 16 * 1024 * 1024;
    let mut decoder = Decoder::with_max_event_size(SIZE + 16);
    let started = Instant::now();
    decoder.feed(b"data: ");
    for _ in 0..SIZE {
        decoder.feed(b"y");
        assert!(decoder.next_event().unwrap().is_none());
    }
    decoder.feed(b"\n\n");
    let event = decoder.next_event().unwrap().unwrap();
    assert_eq!(event.data().len(), SIZE);
    eprintln!("16 MiB byte by byte: {:?}", started.elapsed());
}

#[test]
fn id_of_an_oversized_event_is_not_committed() {
    let mut decoder = Decoder::with_max_event_size(16);
    decoder.feed(b"id: 1\ndata: a\n\nid: 2\ndata: far too long for the limit\nid: 3\n\n");
    assert_eq!(decoder.next_event().unwrap().unwrap().id(), Some("1"));
    assert!(decoder.next_event().is_err());
    assert!(decoder.next_event().unwrap().is_none());
    assert_eq!(decoder.last_event_id(), Some("1"));
    decoder.feed(b"data: b\n\n");
    assert_eq!(decoder.next_event().unwrap().unwrap().id(), Some("1"));
}

#[test]
fn one_line_data_is_a_slice_of_the_input_buffer() {
    let mut decoder = Decoder::new();
    decoder.feed(b"data: a\n\ndata: b\n\n");
    let first = decoder.next_event().unwrap().unwrap();
    let second = decoder.next_event().unwrap().unwrap();
    assert_eq!(first.data_bytes(), &b"a"[..]);
    assert_eq!(second.data_bytes(), &b"b"[..]);
    // Nine bytes apart, as in the input: both point into the buffer the chunk was copied to.
    let distance = second.data_bytes().as_ptr() as usize - first.data_bytes().as_ptr() as usize;
    assert_eq!(distance, b"data: a\n\n".len());
}

#[test]
fn data_bytes_match_data_for_every_kind_of_event() {
    let events =
        decode(b"event: e\ndata: one\n\ndata: two\ndata: lines\n\ndata: \xFF\n\ndata:\n\n");
    let datas: Vec<&[u8]> = events.iter().map(|e| &e.data_bytes()[..]).collect();
    assert_eq!(
        datas,
        [&b"one"[..], b"two\nlines", "\u{FFFD}".as_bytes(), b""]
    );
    for event in &events {
        assert_eq!(event.data_bytes(), event.data().as_bytes());
        assert_eq!(event.clone().into_data_bytes(), event.data().as_bytes());
    }
    assert_eq!(events[0].event_type(), "e");
}

#[test]
fn events_held_across_feeds_keep_their_data() {
    // Some events are kept while the decoder reads on (the buffer they share must not be
    // overwritten), others dropped at once (the buffer can be reused in place).
    let mut input = Vec::new();
    for i in 0..20_000 {
        input.extend_from_slice(format!("event: e{i}\ndata: {i:06}\n\n").as_bytes());
    }
    for chunk_len in [7, 64, 8 * 1024 + 3] {
        let mut decoder = Decoder::new();
        let mut kept = Vec::new();
        let mut seen = 0;
        for chunk in input.chunks(chunk_len) {
            decoder.feed(chunk);
            while let Some(event) = decoder.next_event().unwrap() {
                assert_eq!(event.data(), format!("{seen:06}"));
                if seen % 3 == 0 {
                    kept.push((seen, event));
                }
                seen += 1;
            }
        }
        assert_eq!(seen, 20_000);
        for (i, event) in &kept {
            assert_eq!(event.data(), format!("{i:06}"), "chunks of {chunk_len}");
            assert_eq!(event.event_type(), format!("e{i}"), "chunks of {chunk_len}");
        }
    }
}
