//! An independent reader: `eventsource-stream` decodes what our encoder writes.
//!
//! Our output never contains a CR (line breaks in data become separate `data:` lines) and never
//! starts with a BOM, which keeps it within what `eventsource-stream` reads correctly.

use std::convert::Infallible;
use std::time::Duration;

use brigade_sse::Event;
use bytes::{Bytes, BytesMut};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use proptest::prelude::*;

fn read_with_eventsource_stream(bytes: Bytes) -> Vec<eventsource_stream::Event> {
    let stream = futures::stream::iter([Ok::<_, Infallible>(bytes)]).eventsource();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(stream.map(Result::unwrap).collect())
}

fn encode(events: &[Event]) -> Bytes {
    let mut buf = BytesMut::new();
    for event in events {
        event.encode(&mut buf);
    }
    buf.freeze()
}

#[test]
fn eventsource_stream_reads_every_field_we_write() {
    let events = [
        Event::default()
            .id("1")
            .unwrap()
            .event("delta")
            .unwrap()
            .retry(Duration::from_millis(2500))
            .comment("note")
            .data("line one\nline two"),
        Event::default().data(""),
        Event::default().data("trailing\n"),
        Event::default().data("crlf\r\nand cr\rend"),
        Event::default().data(" leading space"),
        Event::default().id("").unwrap().data("id reset"),
    ];
    let read = read_with_eventsource_stream(encode(&events));
    let summary: Vec<(&str, &str, &str, Option<Duration>)> = read
        .iter()
        .map(|e| (e.event.as_str(), e.data.as_str(), e.id.as_str(), e.retry))
        .collect();
    assert_eq!(
        summary,
        [
            (
                "delta",
                "line one\nline two",
                "1",
                Some(Duration::from_millis(2500))
            ),
            ("message", "", "1", None),
            ("message", "trailing\n", "1", None),
            ("message", "crlf\nand cr\nend", "1", None),
            ("message", " leading space", "1", None),
            ("message", "id reset", "", None),
        ]
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn eventsource_stream_reads_arbitrary_data_we_write(
        datas in prop::collection::vec(
            prop::collection::vec(
                prop_oneof![4 => any::<char>(), 1 => Just('\r'), 1 => Just('\n'), 1 => Just(':')],
                0..20,
            ),
            1..5,
        ),
    ) {
        let datas: Vec<String> = datas.into_iter().map(|chars| chars.into_iter().collect()).collect();
        let events: Vec<Event> = datas.iter().map(|d| Event::default().data(d.clone())).collect();
        let read = read_with_eventsource_stream(encode(&events));
        prop_assert_eq!(read.len(), datas.len());
        for (data, event) in datas.iter().zip(&read) {
            prop_assert_eq!(&event.data, &data.replace("\r\n", "\n").replace('\r', "\n"));
        }
    }
}
