//! A small hyper server streaming server-sent events with ids, keep-alive and replay.
//!
//! ```text
//! cargo run --example sse_stream
//! curl -N http://127.0.0.1:3000/events          # tokens, ids, keep-alive comments
//! curl -N -H 'Last-Event-ID: <id>' http://127.0.0.1:3000/events
//! ```
//!
//! Ids look like `3f2a9c01d4e7-3`: the replay buffer's epoch, then a sequence number. Reconnect
//! with an id the first `curl` printed, and the stream resumes right after that event. With an
//! id whose event has aged out of the buffer you get `event: reset` / `data: aged-out`; with an
//! id from before a restart of the server (another epoch) or any other id, `data: unknown-id`:
//! a new process never mistakes an old process's `…-3` for its own event 3.
//!
//! A producer task writes a burst of five tokens a second apart, then pauses twelve seconds, so
//! the 5-second keep-alive comments show between bursts. Every event goes through a `Replay` of
//! the last 16 events (at most 16 KiB of them) and a broadcast channel to the connected clients,
//! which share each event (an `Arc`). A client reconnecting
//! with `Last-Event-ID` gets what it missed, then the live events; one that missed more than the
//! buffer holds gets an `event: reset` and starts afresh. Set `PORT` to listen elsewhere.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use brigade_sse::{Event, KeepAlive, Replay, ReplayMiss, SseBody};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::broadcast;

type Body = UnsyncBoxBody<Bytes, Infallible>;

#[derive(Clone)]
struct State {
    replay: Replay,
    live: broadcast::Sender<(u64, Arc<Event>)>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = TcpListener::bind(addr).await?;
    println!("listening on http://{addr}/events");

    let state = State {
        replay: Replay::builder()
            .max_events(16)
            .max_bytes(16 * 1024)
            .build()?,
        live: broadcast::channel(64).0,
    };
    tokio::spawn(produce(state.clone()));

    loop {
        let (stream, _) = listener.accept().await?;
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, &request)) }
            });
            if let Err(err) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("connection error: {err}");
            }
        });
    }
}

/// The line cook: bursts of tokens with pauses between them.
async fn produce(state: State) {
    let mut n = 0u64;
    loop {
        for _ in 0..5 {
            n += 1;
            let data = format!(r#"{{"choices":[{{"delta":{{"content":"token {n}"}}}}]}}"#);
            let sent = state.replay.push(Event::default().data(data));
            // No client connected is fine: the replay buffer still has the event.
            let _ = state.live.send(sent);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        tokio::time::sleep(Duration::from_secs(12)).await;
    }
}

fn handle(state: &State, request: &Request<hyper::body::Incoming>) -> Response<Body> {
    if request.uri().path() != "/events" {
        let mut response = Response::new(Full::new(Bytes::from("try /events\n")).boxed_unsync());
        *response.status_mut() = StatusCode::NOT_FOUND;
        return response;
    }
    // Subscribe before reading the replay buffer, so no event falls between the two.
    let live = state.live.subscribe();
    let last_event_id = request
        .headers()
        .get("last-event-id")
        .and_then(|value| value.to_str().ok());

    // `after`: live events with sequence numbers up to this one were already sent (or are
    // not wanted), so they are skipped.
    let (replayed, after) = match last_event_id.map(|id| state.replay.events_after(id)) {
        None => (Vec::new(), state.replay.last_seq().unwrap_or(0)),
        Some(Ok(missed)) => {
            let after = match missed.last() {
                Some((seq, _)) => *seq,
                // Up to date: skip live events up to the one the client saw.
                None => last_event_id
                    .and_then(|id| state.replay.seq_of(id))
                    .unwrap_or(0),
            };
            (missed.into_iter().map(|(_, event)| event).collect(), after)
        }
        Some(Err(miss)) => {
            let reason = match miss {
                ReplayMiss::AgedOut { .. } => "aged-out",
                _ => "unknown-id",
            };
            let reset = Event::default()
                .event("reset")
                .expect("a valid event type")
                .data(reason);
            (vec![Arc::new(reset)], state.replay.last_seq().unwrap_or(0))
        }
    };

    let events = futures::stream::iter(replayed).chain(live_after(live, after));
    let body = SseBody::new(events.map(Ok::<_, Infallible>)).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(5))
            .text("keep-alive"),
    );
    body.into_response().map(BodyExt::boxed_unsync)
}

/// Live events with sequence numbers above `after`. A client too slow for the channel is disconnected: it
/// reconnects with its `Last-Event-ID` and catches up from the replay buffer.
fn live_after(
    live: broadcast::Receiver<(u64, Arc<Event>)>,
    after: u64,
) -> impl Stream<Item = Arc<Event>> {
    futures::stream::unfold(live, move |mut live| async move {
        loop {
            match live.recv().await {
                Ok((seq, _)) if seq <= after => {}
                Ok((_, event)) => return Some((event, live)),
                Err(
                    broadcast::error::RecvError::Lagged(_) | broadcast::error::RecvError::Closed,
                ) => {
                    return None;
                }
            }
        }
    })
}
