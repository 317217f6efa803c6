//! The cancel bell, three ways: a slow job stopped by its deadline, a stream stopped because
//! its body was dropped (a client that left), and a graceful shutdown.
//!
//! Run: `cargo run --example cancel_bell`

use std::convert::Infallible;
use std::time::Duration;

use brigade_cancel::{CancelReason, CancelScope, DisconnectBody, Shutdown};
use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio::time::Instant;

/// A "model" that produces one token every 100 ms until its scope is cancelled.
async fn generate(scope: CancelScope, label: &'static str) -> (usize, CancelReason) {
    let mut tokens = 0;
    loop {
        match scope
            .run_until_cancelled(tokio::time::sleep(Duration::from_millis(100)))
            .await
        {
            Ok(()) => tokens += 1,
            Err(cancelled) => {
                println!(
                    "  [{label}] stopped after {tokens} tokens: {}",
                    cancelled.reason()
                );
                return (tokens, cancelled.into_reason());
            }
        }
    }
}

#[tokio::main]
async fn main() {
    println!("1. A slow job with a 450 ms deadline");
    let started = Instant::now();
    let job = CancelScope::with_timeout(Duration::from_millis(450));
    let (tokens, reason) = generate(job, "deadline").await;
    assert_eq!(reason, CancelReason::DeadlineExceeded);
    println!(
        "  {tokens} tokens in {:?}, then the deadline rang the bell\n",
        started.elapsed()
    );

    println!("2. A streamed answer whose client leaves after 3 frames");
    let request = CancelScope::new();
    let generation = tokio::spawn(generate(request.child(), "disconnect"));
    let frames = futures::stream::unfold(0u32, |n| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((
            Ok::<_, Infallible>(Frame::data(Bytes::from(format!("token {n}")))),
            n + 1,
        ))
    });
    let mut body = Box::pin(DisconnectBody::new(
        StreamBody::new(frames),
        request.clone(),
    ));
    for _ in 0..3 {
        let frame = body.frame().await.expect("endless").expect("infallible");
        println!("  client got {:?}", frame.into_data().expect("data frame"));
    }
    drop(body); // what hyper does when the client goes away
    let (_, reason) = generation.await.expect("generation task");
    assert_eq!(reason, CancelReason::ClientDisconnected);
    println!();

    println!(
        "3. Shutdown with a 300 ms grace period and two streams: a short one and an endless one"
    );
    let shutdown = Shutdown::builder()
        .grace(Duration::from_millis(300))
        .hard_deadline(Duration::from_secs(2))
        .build()
        .expect("valid shutdown config");
    let short = shutdown
        .scope()
        .child_with_timeout(Duration::from_millis(200));
    shutdown.spawn(generate(short, "short stream"));
    shutdown.spawn(generate(shutdown.scope().child(), "endless stream"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    println!("  SIGTERM (simulated: shutdown.trigger())");
    shutdown.trigger();
    let report = shutdown.drained().await;
    println!(
        "  shutdown {:?} after {:?}, {} task(s) left",
        report.outcome(),
        report.elapsed(),
        report.still_running()
    );
}
