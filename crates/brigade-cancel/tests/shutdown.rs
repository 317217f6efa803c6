//! Graceful shutdown: drain, grace period, cancel with reason `Shutdown`, hard deadline.

use std::convert::Infallible;
use std::time::Duration;

use brigade_cancel::{CancelReason, InvalidConfig, Shutdown, ShutdownOutcome};
use bytes::Bytes;
use futures::StreamExt;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

fn shutdown(grace: u64, hard: u64) -> Shutdown {
    Shutdown::builder()
        .grace(Duration::from_secs(grace))
        .hard_deadline(Duration::from_secs(hard))
        .build()
        .unwrap()
}

#[test]
fn a_hard_deadline_before_the_grace_period_is_rejected() {
    let err = Shutdown::builder()
        .grace(Duration::from_secs(10))
        .hard_deadline(Duration::from_secs(5))
        .build()
        .unwrap_err();
    assert_eq!(err, InvalidConfig::HardDeadlineBeforeGrace);
    assert_eq!(
        err.to_string(),
        "shutdown hard deadline is shorter than its grace period"
    );
}

#[tokio::test(start_paused = true)]
async fn work_that_finishes_within_the_grace_period_is_not_cancelled() {
    let shutdown = shutdown(10, 15);
    let scope = shutdown.scope().child();
    let task = shutdown.spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        scope.is_cancelled()
    });
    assert!(!shutdown.is_draining());
    assert!(shutdown.trigger());
    assert!(!shutdown.trigger(), "a second trigger changes nothing");
    assert!(shutdown.is_draining());

    let report = shutdown.drained().await;
    assert_eq!(report.outcome(), ShutdownOutcome::Drained);
    assert_eq!(report.elapsed(), Duration::from_secs(3));
    assert_eq!(report.still_running(), 0);
    assert!(!task.await.unwrap(), "finished before any cancel");
    assert!(!shutdown.scope().is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn the_scope_is_cancelled_with_shutdown_when_the_grace_period_ends() {
    let shutdown = shutdown(10, 15);
    let scope = shutdown.scope().child();
    let task = shutdown.spawn(async move { scope.cancelled().await });
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    shutdown.trigger();
    let report = shutdown.drained().await;
    assert_eq!(report.outcome(), ShutdownOutcome::Cancelled);
    assert_eq!(report.elapsed(), Duration::from_secs(10));
    assert_eq!(Instant::now(), start + Duration::from_secs(11));
    assert_eq!(task.await.unwrap(), CancelReason::Shutdown);
}

#[tokio::test(start_paused = true)]
async fn drained_waits_for_the_trigger() {
    let shutdown = shutdown(1, 2);
    let waiting = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { shutdown.drained().await }
    });
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(!waiting.is_finished());
    shutdown.trigger();
    assert_eq!(waiting.await.unwrap().outcome(), ShutdownOutcome::Drained);
}

#[tokio::test(start_paused = true)]
async fn work_that_ignores_the_cancel_is_abandoned_at_the_hard_deadline() {
    let shutdown = shutdown(10, 15);
    shutdown.spawn(std::future::pending::<()>());
    shutdown.trigger();
    let report = shutdown.drained().await;
    assert_eq!(report.outcome(), ShutdownOutcome::TimedOut);
    assert_eq!(report.elapsed(), Duration::from_secs(15));
    assert_eq!(report.still_running(), 1);
}

/// Serves one HTTP/1.1 connection whose response is an endless token stream, as an SSE answer
/// is, and lets hyper drain it gracefully when the shutdown starts. `honour_cancel` says whether
/// the stream ends when the request's scope is cancelled.
async fn open_stream_shutdown(honour_cancel: bool) -> (brigade_cancel::ShutdownReport, Duration) {
    let shutdown = shutdown(10, 15);
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);

    let server_shutdown = shutdown.clone();
    shutdown.spawn(async move {
        let requests = server_shutdown.clone();
        let service = service_fn(move |_request| {
            let scope = requests.scope().child();
            async move {
                let tokens = futures::stream::unfold(0u32, |n| async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Some((
                        Ok::<_, Infallible>(Frame::data(Bytes::from(format!("t{n} ")))),
                        n + 1,
                    ))
                });
                let body = if honour_cancel {
                    StreamBody::new(tokens.take_until(scope.cancelled_owned()).boxed())
                } else {
                    StreamBody::new(tokens.boxed())
                };
                Ok::<_, Infallible>(hyper::Response::new(body))
            }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(server_io), service);
        tokio::pin!(connection);
        tokio::select! {
            _ = connection.as_mut() => return,
            () = server_shutdown.draining() => connection.as_mut().graceful_shutdown(),
        }
        // hyper's graceful shutdown waits for the open response: forever, unless it ends.
        let _ = connection.await;
    });

    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
        .await
        .unwrap();
    tokio::spawn(connection);
    let response = sender
        .send_request(
            http::Request::get("/stream")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    // The client keeps reading for as long as the server sends.
    let reader = tokio::spawn(async move {
        let mut body = response.into_body();
        let mut frames = 0usize;
        while let Some(Ok(_)) = body.frame().await {
            frames += 1;
        }
        frames
    });

    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = Instant::now();
    shutdown.trigger();
    let report = tokio::time::timeout(Duration::from_secs(60), shutdown.drained())
        .await
        .expect("shutdown ends by its hard deadline, open stream or not");
    let elapsed = start.elapsed();
    if honour_cancel {
        assert!(
            reader.await.unwrap() > 100,
            "the stream flowed during the grace period"
        );
    } else {
        reader.abort();
    }
    (report, elapsed)
}

#[tokio::test(start_paused = true)]
async fn an_open_stream_ends_when_the_grace_period_does() {
    let (report, elapsed) = open_stream_shutdown(true).await;
    assert_eq!(report.outcome(), ShutdownOutcome::Cancelled);
    assert!(elapsed >= Duration::from_secs(10));
    assert!(
        elapsed < Duration::from_secs(11),
        "ended right after the grace period: {elapsed:?}"
    );
    assert_eq!(report.still_running(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_open_stream_that_ignores_the_cancel_cannot_hold_shutdown_past_its_hard_deadline() {
    let (report, elapsed) = open_stream_shutdown(false).await;
    assert_eq!(report.outcome(), ShutdownOutcome::TimedOut);
    assert_eq!(elapsed, Duration::from_secs(15));
    assert_eq!(
        report.still_running(),
        1,
        "the connection task is still open"
    );
}

#[tokio::test(start_paused = true)]
async fn the_phases_run_when_nobody_waits_for_drained() {
    let shutdown = shutdown(10, 15);
    let scope = shutdown.scope().child();
    // A task that ignores the cancel, so only the hard deadline ends the shutdown.
    shutdown.spawn(std::future::pending::<()>());
    let start = Instant::now();
    shutdown.trigger();

    // Nobody calls `drained()`: the grace period still ends in a cancel.
    let reason = tokio::time::timeout(Duration::from_secs(60), scope.cancelled())
        .await
        .expect("the scope is cancelled at the end of the grace period");
    assert_eq!(reason, CancelReason::Shutdown);
    assert_eq!(Instant::now(), start + Duration::from_secs(10));

    // Past the hard deadline, `drained()` reports what happened then, at once.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let asked = Instant::now();
    let report = shutdown.drained().await;
    assert_eq!(Instant::now(), asked, "the shutdown had already ended");
    assert_eq!(report.outcome(), ShutdownOutcome::TimedOut);
    assert_eq!(report.elapsed(), Duration::from_secs(15));
    assert_eq!(report.still_running(), 1);
}

#[tokio::test(start_paused = true)]
async fn dropping_drained_after_the_trigger_still_cancels_the_scope() {
    let shutdown = shutdown(10, 15);
    let scope = shutdown.scope().child();
    shutdown.spawn({
        let scope = scope.clone();
        async move { scope.cancelled().await }
    });
    let start = Instant::now();
    shutdown.trigger();
    // Polled into the grace period, then dropped (a `select!` that took another branch).
    let waited = tokio::time::timeout(Duration::from_secs(1), shutdown.drained()).await;
    assert!(waited.is_err());

    let reason = tokio::time::timeout(Duration::from_secs(60), scope.cancelled())
        .await
        .expect("the scope is cancelled at the end of the grace period");
    assert_eq!(reason, CancelReason::Shutdown);
    assert_eq!(Instant::now(), start + Duration::from_secs(10));
    let report = shutdown.drained().await;
    assert_eq!(report.outcome(), ShutdownOutcome::Cancelled);
    assert_eq!(report.elapsed(), Duration::from_secs(10));
}

#[test]
fn a_trigger_outside_the_runtime_starts_the_phases_on_the_runtime_it_was_built_in() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let shutdown = runtime.block_on(async {
        let shutdown = shutdown(10, 15);
        shutdown.spawn(std::future::pending::<()>());
        shutdown
    });
    let scope = shutdown.scope().clone();
    // From a thread that is not the runtime's, as a signal-handler crate would; the last
    // handle goes with it.
    let trigger = std::thread::spawn(move || shutdown.trigger());
    assert!(trigger.join().unwrap());
    runtime.block_on(async {
        let reason = tokio::time::timeout(Duration::from_secs(60), scope.cancelled())
            .await
            .expect("the phases ran without anyone polling drained()");
        assert_eq!(reason, CancelReason::Shutdown);
    });
}

#[tokio::test(start_paused = true)]
async fn a_hard_deadline_of_duration_max_does_not_overflow() {
    let shutdown = Shutdown::builder()
        .grace(Duration::from_secs(10))
        .hard_deadline(Duration::MAX)
        .build()
        .unwrap();
    let scope = shutdown.scope().child();
    shutdown.spawn(async move { scope.cancelled().await });
    shutdown.trigger();
    let report = shutdown.drained().await;
    assert_eq!(report.outcome(), ShutdownOutcome::Cancelled);
    assert_eq!(report.elapsed(), Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn a_grace_period_of_duration_max_does_not_overflow() {
    // The default hard deadline (grace + 5 s) saturates too.
    let shutdown = Shutdown::new(Duration::MAX);
    let scope = shutdown.scope().child();
    shutdown.spawn(async move {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        scope.is_cancelled()
    });
    shutdown.trigger();
    let report = shutdown.drained().await;
    assert_eq!(report.outcome(), ShutdownOutcome::Drained);
    assert_eq!(report.elapsed(), Duration::from_secs(3600));
    assert!(!shutdown.scope().is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn work_that_never_ends_under_duration_max_is_given_up_at_the_far_future() {
    let shutdown = Shutdown::builder()
        .grace(Duration::MAX)
        .hard_deadline(Duration::MAX)
        .build()
        .unwrap();
    shutdown.spawn(std::future::pending::<()>());
    shutdown.trigger();
    let far = Duration::from_secs(86_400 * 365 * 30);
    let report = tokio::time::timeout(far + far, shutdown.drained())
        .await
        .expect("the hard deadline saturates at the far future");
    assert_eq!(report.outcome(), ShutdownOutcome::TimedOut);
    assert_eq!(report.elapsed(), far);
    assert_eq!(shutdown.scope().reason(), Some(CancelReason::Shutdown));
}
