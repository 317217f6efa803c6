//! brigade-sse against the peers it replaces: axum's `Sse` for encoding, `eventsource-stream`
//! for decoding.
//!
//! Every function handles the same 10,000 OpenAI-style chunk events
//! (`{"choices":[{"delta":{"content":"tok"}}]}`), so throughput is in events.
//!
//! - `sse_encode`: build the events and collect the response body with `http_body_util`.
//! - `sse_decode`: decode the encoded events fed as a stream of 64-byte chunks (`&[u8]` slices
//!   of one buffer, so neither decoder pays for reference counting of its input).
//! - `sse_decode_one_buffer`: decode them fed as one buffer.
//!
//! Run with `cargo bench -p brigade-sse --bench sse -- --warm-up-time 1 --measurement-time 3`.

use std::convert::Infallible;
use std::hint::black_box;

use axum::response::IntoResponse;
use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use http_body_util::BodyExt;

const EVENTS: usize = 10_000;
const DATA: &str = r#"{"choices":[{"delta":{"content":"tok"}}]}"#;
const CHUNK: usize = 64;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
}

fn encoded() -> Bytes {
    let mut buf = BytesMut::new();
    for _ in 0..EVENTS {
        brigade_sse::Event::default().data(DATA).encode(&mut buf);
    }
    buf.freeze()
}

fn sse_encode(c: &mut Criterion) {
    let rt = runtime();
    let expected = encoded().len();
    let mut group = c.benchmark_group("sse_encode");
    group.throughput(Throughput::Elements(EVENTS as u64));

    group.bench_function("brigade", |b| {
        b.to_async(&rt).iter(|| async {
            let events = futures::stream::iter(
                (0..EVENTS).map(|_| Ok::<_, Infallible>(brigade_sse::Event::default().data(DATA))),
            );
            let body = brigade_sse::SseBody::new(events)
                .into_response()
                .into_body();
            let bytes = body.collect().await.unwrap().to_bytes();
            assert_eq!(bytes.len(), expected);
            black_box(bytes)
        });
    });

    group.bench_function("axum", |b| {
        b.to_async(&rt).iter(|| async {
            let events =
                futures::stream::iter((0..EVENTS).map(|_| {
                    Ok::<_, Infallible>(axum::response::sse::Event::default().data(DATA))
                }));
            let body = axum::response::sse::Sse::new(events)
                .into_response()
                .into_body();
            let bytes = body.collect().await.unwrap().to_bytes();
            assert_eq!(bytes.len(), expected);
            black_box(bytes)
        });
    });
    group.finish();
}

fn decode_group(c: &mut Criterion, name: &str, chunk: usize) {
    let rt = runtime();
    let encoded = encoded();
    let input = &encoded[..];
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(EVENTS as u64));

    group.bench_function("brigade", |b| {
        b.to_async(&rt).iter(|| async {
            let chunks = futures::stream::iter(input.chunks(chunk).map(Ok::<_, Infallible>));
            let mut events = brigade_sse::EventStream::new(chunks);
            let mut count = 0;
            while let Some(event) = events.next().await {
                black_box(event.unwrap());
                count += 1;
            }
            assert_eq!(count, EVENTS);
        });
    });

    group.bench_function("eventsource_stream", |b| {
        b.to_async(&rt).iter(|| async {
            let chunks = futures::stream::iter(input.chunks(chunk).map(Ok::<_, Infallible>));
            let mut events = chunks.eventsource();
            let mut count = 0;
            while let Some(event) = events.next().await {
                black_box(event.unwrap());
                count += 1;
            }
            assert_eq!(count, EVENTS);
        });
    });
    group.finish();
}

fn sse_decode(c: &mut Criterion) {
    decode_group(c, "sse_decode", CHUNK);
}

fn sse_decode_one_buffer(c: &mut Criterion) {
    decode_group(c, "sse_decode_one_buffer", usize::MAX);
}

criterion_group!(benches, sse_encode, sse_decode, sse_decode_one_buffer);
criterion_main!(benches);
