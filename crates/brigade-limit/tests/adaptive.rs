//! The adaptive limit through its public API: refusals, the bounded queue, permits held by
//! the body, what a permit records (and what it does not), and configuration errors. Its
//! behaviour against a modelled upstream is `tests/adaptive_sim.rs`.

use std::time::Duration;

use brigade_limit::concurrency::adaptive::Outcome;
use brigade_limit::{AdaptiveLimit, Aimd, Gradient, InvalidConfig, OverloadReason, PermitBody};
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);

fn adaptive(initial: usize, queue: usize) -> AdaptiveLimit {
    AdaptiveLimit::builder()
        .initial_limit(initial)
        .max_queue(queue)
        .queue_timeout(Duration::from_secs(2))
        .window_samples(1)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_reached_limit_refuses_at_once_without_a_queue() {
    let limit = adaptive(2, 0);
    let _a = limit.try_acquire().unwrap();
    let _b = limit.acquire().await.unwrap();
    assert_eq!(limit.in_flight(), 2);
    let start = Instant::now();
    let refused = limit.acquire().await.unwrap_err();
    assert_eq!(refused.reason(), OverloadReason::QueueFull);
    assert_eq!(refused.retry_after(), Duration::from_secs(1));
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(
        limit.try_acquire().unwrap_err().reason(),
        OverloadReason::QueueFull
    );
}

#[tokio::test(start_paused = true)]
async fn a_queued_call_waits_for_a_permit_or_its_timeout() {
    let limit = adaptive(1, 1);
    let held = limit.acquire().await.unwrap();
    let start = Instant::now();
    let timed_out = limit.acquire().await.unwrap_err();
    assert_eq!(timed_out.reason(), OverloadReason::QueueTimeout);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(limit.queued(), 0);

    let waiter = tokio::spawn({
        let limit = limit.clone();
        async move { limit.acquire().await.map(drop) }
    });
    tokio::task::yield_now().await;
    assert_eq!(limit.queued(), 1);
    // The queue is full: the next caller is refused at once.
    assert_eq!(
        limit.acquire().await.unwrap_err().reason(),
        OverloadReason::QueueFull
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(held);
    waiter.await.unwrap().unwrap();
    assert_eq!((limit.in_flight(), limit.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_queued_call_leaves_the_queue_with_nothing_held() {
    let limit = adaptive(1, 1);
    let held = limit.acquire().await.unwrap();
    {
        let mut waiting = std::pin::pin!(limit.acquire());
        assert!(futures::FutureExt::now_or_never(waiting.as_mut()).is_none());
        assert_eq!(limit.queued(), 1);
    }
    assert_eq!(limit.queued(), 0);
    drop(held);
    assert_eq!(limit.in_flight(), 0);
    assert!(limit.try_acquire().is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_permit_dropped_without_an_outcome_records_nothing() {
    let limit = adaptive(10, 0);
    for _ in 0..100 {
        let permit = limit.try_acquire().unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await; // however long: a cancelled call
        drop(permit);
    }
    let mut ignored = limit.try_acquire().unwrap();
    ignored.record(Outcome::Ignored);
    assert!(ignored.is_recorded());
    drop(ignored);
    assert_eq!(limit.limit(), 10);
    assert_eq!(limit.latency(), None);
    assert_eq!(limit.no_load_latency(), None);
}

#[tokio::test(start_paused = true)]
async fn only_the_first_outcome_of_a_permit_counts() {
    let limit = adaptive(10, 0);
    let mut permit = limit.try_acquire().unwrap();
    tokio::time::sleep(100 * MS).await;
    permit.record(Outcome::Success);
    permit.record(Outcome::Dropped);
    permit.record(Outcome::Latency(Duration::from_secs(9)));
    drop(permit);
    assert_eq!(limit.latency(), Some(100 * MS));
    assert_eq!(limit.limit(), 10, "no drop was recorded");
}

#[tokio::test(start_paused = true)]
async fn the_sample_is_the_time_from_the_grant_not_from_the_queue() {
    let limit = adaptive(1, 1);
    let held = limit.acquire().await.unwrap();
    let waiter = tokio::spawn({
        let limit = limit.clone();
        async move {
            let mut permit = limit.acquire().await.unwrap();
            tokio::time::sleep(50 * MS).await; // the call
            permit.record(Outcome::Success);
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await; // queued for a second
    drop(held);
    waiter.await.unwrap();
    assert_eq!(limit.latency(), Some(50 * MS));
}

#[tokio::test(start_paused = true)]
async fn a_caller_chosen_latency_is_the_sample() {
    let limit = adaptive(10, 0);
    let mut permit = limit.try_acquire().unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await; // the whole stream
    permit.record(Outcome::Latency(20 * MS)); // say, the time per output token
    assert_eq!(limit.latency(), Some(20 * MS));
    assert_eq!(limit.no_load_latency(), Some(20 * MS));
}

#[tokio::test(start_paused = true)]
async fn drops_lower_the_limit_and_a_calm_upstream_raises_it() {
    let policies: [brigade_limit::AdaptivePolicy; 2] = [Aimd::new().into(), Gradient::new().into()];
    for policy in policies {
        let limit = AdaptiveLimit::builder()
            .policy(policy)
            .window_samples(1)
            .build()
            .unwrap();
        for _ in 0..10 {
            let mut permit = limit.try_acquire().unwrap();
            permit.record(Outcome::Dropped);
        }
        let lowered = limit.limit();
        assert!(lowered < 10, "{policy:?}: {lowered}");
        // Calm: answered at the no-load latency, the limit in use.
        for _ in 0..200 {
            let permits: Vec<_> = (0..limit.limit())
                .map(|_| limit.try_acquire().unwrap())
                .collect();
            tokio::time::sleep(100 * MS).await;
            for mut permit in permits {
                permit.record(Outcome::Success);
            }
        }
        assert!(limit.limit() > 20, "{policy:?}: {}", limit.limit());
    }
}

#[tokio::test(start_paused = true)]
async fn a_lower_limit_cuts_no_call_and_admits_again_once_below_it() {
    let limit = adaptive(4, 0);
    let mut permits: Vec<_> = (0..4).map(|_| limit.try_acquire().unwrap()).collect();
    permits[0].record(Outcome::Dropped);
    let lowered = limit.limit();
    assert!(lowered < 4, "{lowered}");
    assert_eq!(limit.in_flight(), 4, "the calls in flight go on");
    // None admitted until the calls in flight are below the new limit.
    let mut given_back = 0;
    while limit.in_flight() >= lowered {
        assert!(limit.try_acquire().is_err());
        permits.pop();
        given_back += 1;
    }
    assert_eq!(given_back, 4 - lowered + 1);
    let again = limit.try_acquire().unwrap();
    assert_eq!(limit.in_flight(), lowered);
    drop(again);
}

type Chunks =
    futures::channel::mpsc::UnboundedReceiver<Result<http_body::Frame<Bytes>, std::io::Error>>;

#[tokio::test(start_paused = true)]
async fn the_body_holds_an_adaptive_permit_until_the_stream_ends() {
    let limit = adaptive(1, 0);
    let (tx, rx) = futures::channel::mpsc::unbounded();
    let mut permit = limit.try_acquire().unwrap();
    permit.record(Outcome::Success); // at the first byte
    let mut body = PermitBody::new(StreamBody::<Chunks>::new(rx), permit);
    assert!(body.permit().unwrap().is_recorded());
    tx.unbounded_send(Ok(http_body::Frame::data(Bytes::from("a"))))
        .unwrap();
    body.frame().await.unwrap().unwrap();
    assert_eq!(limit.in_flight(), 1);
    assert!(limit.try_acquire().is_err());
    drop(tx);
    assert!(body.frame().await.is_none());
    assert!(!body.holds_permit());
    assert_eq!(limit.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn probes_that_never_come_do_not_overflow_the_clock() {
    let limit = AdaptiveLimit::builder()
        .probe_interval(Duration::MAX)
        .window_samples(1)
        .build()
        .unwrap();
    for _ in 0..100 {
        let mut permit = limit.try_acquire().unwrap();
        tokio::time::sleep(10 * MS).await;
        permit.record(Outcome::Success);
    }
    assert!(!limit.is_probing());
}

#[test]
fn bounds_out_of_order_are_rejected_when_built() {
    let limits = |min, initial, max| {
        AdaptiveLimit::builder()
            .min_limit(min)
            .initial_limit(initial)
            .max_limit(max)
            .build()
            .map(|_| ())
    };
    assert_eq!(
        limits(0, 1, 2),
        Err(InvalidConfig::InvalidLimits {
            min: 0,
            initial: 1,
            max: 2
        })
    );
    assert!(limits(3, 2, 4).is_err());
    assert!(limits(1, 5, 4).is_err());
    assert!(limits(1, 1, usize::MAX).is_err());
    assert_eq!(limits(2, 2, 2), Ok(()));
}

#[test]
fn settings_out_of_range_are_rejected_when_built() {
    let setting = |builder: brigade_limit::AdaptiveLimitBuilder| match builder.build() {
        Err(InvalidConfig::OutOfRange { setting, .. }) => setting,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        setting(AdaptiveLimit::builder().window_samples(0)),
        "window_samples"
    );
    assert_eq!(
        setting(AdaptiveLimit::builder().probe_interval(Duration::ZERO)),
        "probe_interval"
    );
    assert_eq!(
        setting(AdaptiveLimit::builder().policy(Aimd::new().backoff(0.3))),
        "backoff"
    );
    assert_eq!(
        setting(AdaptiveLimit::builder().policy(Gradient::new().smoothing(1.5))),
        "smoothing"
    );
    let err = AdaptiveLimit::builder()
        .policy(Gradient::new().tolerance(0.9))
        .build()
        .unwrap_err();
    assert_eq!(err.to_string(), "tolerance is out of its range (1, 2]");
}
