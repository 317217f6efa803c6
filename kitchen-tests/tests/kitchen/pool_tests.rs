//! The kitchen in front of a pool of upstreams (`--upstream` repeated): an attempt that fails
//! before its first token goes to another upstream, never one after it; throttles cool an
//! upstream down; tiers fall back and return; hedges race a slow upstream; `/metrics` has a
//! series per upstream; bad `--upstream` values fail at start.
//!
//! The pool's draws are seeded (`--seed 42`): an upstream given `weight=1000` is the one its
//! first pick chooses (it is drawn first, and costs the same as the other while neither has a
//! latency sample).

use super::scripted::{Answer, Scripted};
use super::upstream_tests::{short_stream, streamed_order};
use super::*;

/// A kitchen in front of `upstreams` (each `URL[,OPTION=VALUE]...`), with these flags.
async fn pool(upstreams: &[String], flags: &[&str]) -> Running {
    let mut all = Vec::new();
    for upstream in upstreams {
        all.extend(["--upstream", upstream.as_str()]);
    }
    all.extend_from_slice(flags);
    kitchen(&all).await
}

/// The content of a streamed answer's chunks.
fn content(body: &str) -> String {
    sse_data(body)
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// A URL on which nothing listens: every connection is refused.
async fn refused() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

#[tokio::test(start_paused = true)]
async fn a_500_before_the_first_token_goes_to_the_other_upstream() {
    let first = Scripted::start(vec![Answer::whole(500, &[], "down")]).await;
    let second = Scripted::start(vec![short_stream("from the second")]).await;
    let proxy = pool(&[format!("{},weight=1000", first.url()), second.url()], &[]).await;
    let response = post(proxy.addr, &streamed_order(), &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = text(response).await;
    assert_eq!(content(&body), "from the second");
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    assert_eq!((first.seen().len(), second.seen().len()), (1, 1));
    assert_eq!(upstream_breaker(&proxy, 0).metrics().failed_calls, 1);
    assert_eq!(metric(proxy.addr, "kitchen_retries_total").await, 1.0);
}

#[tokio::test(start_paused = true)]
async fn a_refused_connection_goes_to_the_other_upstream() {
    let second = Scripted::start(vec![short_stream("from the second")]).await;
    let proxy = pool(
        &[format!("{},weight=1000", refused().await), second.url()],
        &[],
    )
    .await;
    let response = post(proxy.addr, &streamed_order(), &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(content(&text(response).await), "from the second");
    assert_eq!(second.seen().len(), 1);
    assert_eq!(upstream_breaker(&proxy, 0).metrics().failed_calls, 1);
    assert_eq!(metric(proxy.addr, "kitchen_retries_total").await, 1.0);
}

#[tokio::test(start_paused = true)]
async fn a_first_chunk_timeout_goes_to_the_other_upstream() {
    let first = Scripted::start(vec![Answer::sse().stall()]).await;
    let second = Scripted::start(vec![short_stream("from the second")]).await;
    let proxy = pool(
        &[format!("{},weight=1000", first.url()), second.url()],
        &["--upstream-first-chunk-timeout-ms", "1000"],
    )
    .await;
    let start = tokio::time::Instant::now();
    let response = post(proxy.addr, &streamed_order(), &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(content(&text(response).await), "from the second");
    assert!(start.elapsed() >= Duration::from_secs(1));
    assert_eq!((first.seen().len(), second.seen().len()), (1, 1));
    // The stalled attempt's connection was closed.
    assert_eq!(first.hangups().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failure_after_the_first_token_is_never_retried() {
    let chunk = r#"{"id":"c","object":"chat.completion.chunk","created":0,"model":"m","choices":[{"index":0,"delta":{"content":"half"},"finish_reason":null}]}"#;
    let first = Scripted::start(vec![Answer::sse().event(chunk).cut()]).await;
    let second = Scripted::start(vec![short_stream("never")]).await;
    let proxy = pool(&[format!("{},weight=1000", first.url()), second.url()], &[]).await;
    let response = post(proxy.addr, &streamed_order(), &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    let events = sse_data(&text(response).await);
    assert_eq!(events[0], chunk);
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_error", "{events:?}");
    assert!(!events.iter().any(|e| e == "[DONE]"), "{events:?}");
    assert_eq!((first.seen().len(), second.seen().len()), (1, 0));
    assert_eq!(upstream_breaker(&proxy, 0).metrics().failed_calls, 1);
    assert_eq!(metric(proxy.addr, "kitchen_retries_total").await, 0.0);
}
