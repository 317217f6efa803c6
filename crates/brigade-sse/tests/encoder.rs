//! The encoder's rules, each pinned by name.

use std::time::Duration;

use brigade_sse::{DecodedEvent, Decoder, Event, EventField};
use bytes::BytesMut;

fn encode(event: &Event) -> String {
    let mut buf = BytesMut::new();
    event.encode(&mut buf);
    String::from_utf8(buf.to_vec()).unwrap()
}

/// What a reader makes of the encoded event: the encoder's rules are about what arrives.
fn read_back(event: &Event) -> Vec<DecodedEvent> {
    let mut decoder = Decoder::new();
    decoder.feed(encode(event).as_bytes());
    let mut events = Vec::new();
    while let Some(event) = decoder.next_event().unwrap() {
        events.push(event);
    }
    assert!(
        !decoder.finish(),
        "the encoded event ends with its blank line"
    );
    events
}

fn read_data(event: &Event) -> Vec<String> {
    read_back(event)
        .into_iter()
        .map(|event| event.data().to_owned())
        .collect()
}

#[test]
fn lf_in_data_starts_a_new_data_line() {
    assert_eq!(
        encode(&Event::default().data("a\nb")),
        "data: a\ndata: b\n\n"
    );
    assert_eq!(read_data(&Event::default().data("a\nb")), ["a\nb"]);
}

#[test]
fn cr_in_data_starts_a_new_data_line() {
    // A bare CR let through would end the line for a reader: untrusted text could forge fields.
    assert_eq!(
        encode(&Event::default().data("a\revent: forged")),
        "data: a\ndata: event: forged\n\n"
    );
    let read = read_back(&Event::default().data("a\revent: forged"));
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].event_type(), "message", "no field was forged");
    assert_eq!(read[0].data(), "a\nevent: forged");
}

#[test]
fn crlf_in_data_is_one_line_break_not_two() {
    assert_eq!(
        encode(&Event::default().data("a\r\nb")),
        "data: a\ndata: b\n\n"
    );
    assert_eq!(read_data(&Event::default().data("a\r\nb")), ["a\nb"]);
}

#[test]
fn cr_cr_lf_in_data_is_two_line_breaks() {
    assert_eq!(
        encode(&Event::default().data("a\r\r\nb")),
        "data: a\ndata:\ndata: b\n\n"
    );
}

#[test]
fn empty_data_is_still_sent_as_an_empty_data_line() {
    assert_eq!(encode(&Event::default().data("")), "data:\n\n");
    assert_eq!(
        read_data(&Event::default().data("")),
        [""],
        "and dispatched"
    );
}

#[test]
fn trailing_newline_in_data_survives_as_an_empty_last_line() {
    assert_eq!(encode(&Event::default().data("a\n")), "data: a\ndata:\n\n");
    assert_eq!(read_data(&Event::default().data("a\n")), ["a\n"]);
    assert_eq!(read_data(&Event::default().data("a\r\n")), ["a\n"]);
    assert_eq!(read_data(&Event::default().data("a\r")), ["a\n"]);
}

#[test]
fn data_that_is_only_a_newline_is_two_empty_lines() {
    assert_eq!(encode(&Event::default().data("\n")), "data:\ndata:\n\n");
    assert_eq!(read_data(&Event::default().data("\n")), ["\n"]);
}

#[test]
fn leading_space_in_data_is_kept_behind_the_separator_space() {
    assert_eq!(encode(&Event::default().data(" x")), "data:  x\n\n");
    assert_eq!(read_data(&Event::default().data(" x\n  y")), [" x\n  y"]);
}

#[test]
fn nul_in_data_is_written_as_is() {
    assert_eq!(encode(&Event::default().data("a\0b")), "data: a\0b\n\n");
}

#[test]
fn retry_is_written_in_milliseconds() {
    assert_eq!(
        encode(&Event::default().retry(Duration::from_secs(3))),
        "retry: 3000\n\n"
    );
    assert_eq!(
        encode(&Event::default().retry(Duration::from_micros(2500))),
        "retry: 2\n\n"
    );
    let read = read_back(
        &Event::default()
            .retry(Duration::from_millis(1500))
            .data("x"),
    );
    assert_eq!(read[0].retry(), Some(Duration::from_millis(1500)));
}

#[test]
fn retry_saturates_instead_of_overflowing() {
    assert_eq!(
        encode(&Event::default().retry(Duration::MAX)),
        format!("retry: {}\n\n", u64::MAX)
    );
}

#[test]
fn id_with_lf_is_an_error_naming_the_field_and_char() {
    let err = Event::default().id("1\n2").unwrap_err();
    assert_eq!(err.field(), EventField::Id);
    assert_eq!(err.found(), '\n');
    assert_eq!(err.position(), 1);
}

#[test]
fn id_with_cr_is_an_error() {
    let err = Event::default().id("12\r").unwrap_err();
    assert_eq!(
        (err.field(), err.found(), err.position()),
        (EventField::Id, '\r', 2)
    );
}

#[test]
fn id_with_nul_is_an_error() {
    let err = Event::default().id("\0").unwrap_err();
    assert_eq!(
        (err.field(), err.found(), err.position()),
        (EventField::Id, '\0', 0)
    );
    assert_eq!(
        err.to_string(),
        "event id contains a nul character at byte 0"
    );
}

#[test]
fn id_error_is_a_value_not_a_panic_for_every_forbidden_character() {
    for (id, found, position) in [("a\0", '\0', 1), ("é\r", '\r', 2), ("\n", '\n', 0)] {
        let err = Event::default().id(id).unwrap_err();
        assert_eq!(
            (err.field(), err.found(), err.position()),
            (EventField::Id, found, position)
        );
    }
    // The error leaves nothing half-set: an event built without the bad id has no id.
    let event = Event::default().data("x");
    assert!(event.clone().id("bad\n").is_err());
    assert_eq!(read_back(&event)[0].id(), None);
}

#[test]
fn id_and_event_type_read_back_as_written() {
    let event = Event::default()
        .id("7 é")
        .unwrap()
        .event(" delta")
        .unwrap()
        .data("x");
    let read = read_back(&event);
    assert_eq!(
        (read[0].id(), read[0].event_type()),
        (Some("7 é"), " delta")
    );
}

#[test]
fn event_type_with_cr_or_lf_is_an_error() {
    let err = Event::default().event("a\rb").unwrap_err();
    assert_eq!((err.field(), err.found()), (EventField::Event, '\r'));
    let err = Event::default().event("ab\n").unwrap_err();
    assert_eq!(
        (err.field(), err.found(), err.position()),
        (EventField::Event, '\n', 2)
    );
    assert_eq!(err.to_string(), "event type contains a line feed at byte 2");
}

#[test]
fn event_type_may_contain_nul() {
    // Only the id has the NUL rule; an event type with NUL reads back as written.
    assert_eq!(
        encode(&Event::default().event("a\0").unwrap().data("x")),
        "event: a\0\ndata: x\n\n"
    );
}

#[test]
fn empty_id_is_written_so_it_resets_the_readers_id() {
    assert_eq!(
        encode(&Event::default().id("").unwrap().data("x")),
        "id:\ndata: x\n\n"
    );
}

#[test]
fn comment_with_line_breaks_becomes_several_comment_lines() {
    assert_eq!(
        encode(&Event::default().comment("a\nb\r\nc\rd")),
        ": a\n: b\n: c\n: d\n\n"
    );
    // Nothing of the comment leaks into an event, even text shaped like fields.
    let event = Event::default()
        .comment("x\ndata: forged\rid: 9")
        .data("real");
    let read = read_back(&event);
    assert_eq!(
        (read.len(), read[0].data(), read[0].id()),
        (1, "real", None)
    );
}

#[test]
fn empty_comment_is_a_bare_colon() {
    assert_eq!(encode(&Event::default().comment("")), ":\n\n");
}

#[test]
fn all_fields_are_written_in_a_fixed_order() {
    let event = Event::default()
        .data("d")
        .retry(Duration::from_millis(5))
        .id("i")
        .unwrap()
        .event("e")
        .unwrap()
        .comment("c");
    assert_eq!(
        encode(&event),
        ": c\nid: i\nevent: e\nretry: 5\ndata: d\n\n"
    );
}

#[test]
fn an_event_with_nothing_set_writes_nothing() {
    assert_eq!(encode(&Event::default()), "");
}

#[test]
fn encode_appends_to_what_the_buffer_holds() {
    let mut buf = BytesMut::from(&b"data: before\n\n"[..]);
    Event::default().data("after").encode(&mut buf);
    assert_eq!(&buf[..], b"data: before\n\ndata: after\n\n");
}

#[test]
fn encode_does_not_grow_a_buffer_with_room() {
    let mut buf = BytesMut::with_capacity(4096);
    let capacity = buf.capacity();
    let event = Event::default().data(r#"{"choices":[{"delta":{"content":"tok"}}]}"#);
    for _ in 0..50 {
        event.encode(&mut buf);
    }
    assert_eq!(buf.capacity(), capacity);
    assert_eq!(buf.len(), 50 * 49);
}

#[test]
fn setters_accept_owned_strings() {
    let event = Event::default()
        .data(String::from("owned"))
        .id(7.to_string())
        .unwrap();
    assert_eq!(encode(&event), "id: 7\ndata: owned\n\n");
}

#[cfg(feature = "serde")]
#[test]
fn json_data_is_one_line_even_with_newlines_in_strings() {
    let event = Event::default()
        .json_data(&serde_json::json!({"text": "a\nb\rc"}))
        .unwrap();
    assert_eq!(encode(&event), "data: {\"text\":\"a\\nb\\rc\"}\n\n");
}

#[cfg(feature = "serde")]
#[test]
fn json_data_that_cannot_serialize_is_an_error() {
    use std::collections::BTreeMap;
    let mut map = BTreeMap::new();
    map.insert(vec![1u8], 1);
    assert!(Event::default().json_data(&map).is_err());
}

#[cfg(feature = "serde")]
#[test]
fn json_data_of_a_struct_reads_back_as_the_same_value() {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Delta {
        content: String,
        index: u32,
    }
    // Line breaks of every kind, and the separators JSON leaves raw, stay inside one line.
    let delta = Delta {
        content: "one\ntwo\r\nthree\rfour\u{2028}five\u{2029}".to_owned(),
        index: 3,
    };
    let event = Event::default().json_data(&delta).unwrap();
    assert_eq!(encode(&event).matches("data:").count(), 1);
    let read = read_back(&event);
    assert_eq!(read.len(), 1);
    let back: Delta = serde_json::from_str(read[0].data()).unwrap();
    assert_eq!(back, delta);
}
