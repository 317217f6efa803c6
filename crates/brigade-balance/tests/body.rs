//! `PickBody` keeps the pick until the body ends; a body error is a failure.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use brigade_balance::{EndpointConfig, PickBody, Pool};
use brigade_breaker::{CircuitBreaker, State};
use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::{BodyExt, StreamBody};

fn pool() -> Pool<()> {
    let breaker = CircuitBreaker::builder().minimum_calls(1).build().unwrap();
    Pool::builder()
        .endpoint("a", (), EndpointConfig::new().breaker(breaker))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn pick_body_keeps_in_flight_until_the_last_frame_and_reports_success() {
    let pool = pool();
    let frames = futures::stream::iter(
        ["one", "two"].map(|s| Ok::<_, Infallible>(Frame::data(Bytes::from(s)))),
    );
    let mut body = PickBody::new(StreamBody::new(frames), pool.pick().unwrap());
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "one");
    assert_eq!(pool.snapshot()[0].in_flight, 1);
    assert!(body.pick().is_some());
    body.frame().await.unwrap().unwrap();
    assert!(body.frame().await.is_none());
    assert_eq!(pool.snapshot()[0].in_flight, 0);
    assert!(body.pick().is_none());
    let breaker = pool.snapshot()[0].breaker;
    assert_eq!(breaker, State::Closed);
}

/// A body that yields one frame, then fails.
struct Failing(bool);

impl Body for Failing {
    type Data = Bytes;
    type Error = &'static str;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, &'static str>>> {
        if self.0 {
            Poll::Ready(Some(Err("reset by upstream")))
        } else {
            self.0 = true;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"tok")))))
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_body_error_is_a_failure_for_the_breaker() {
    let pool = pool();
    let mut body = PickBody::new(Failing(false), pool.pick().unwrap());
    body.frame().await.unwrap().unwrap();
    assert_eq!(pool.snapshot()[0].in_flight, 1);
    assert_eq!(
        body.frame().await.unwrap().unwrap_err(),
        "reset by upstream"
    );
    assert_eq!(pool.snapshot()[0].in_flight, 0);
    // One call, one failure, minimum_calls(1): the breaker opens.
    assert_eq!(pool.snapshot()[0].breaker, State::Open);
}

#[tokio::test(start_paused = true)]
async fn a_body_dropped_early_reports_nothing() {
    let pool = pool();
    let body = PickBody::new(Failing(false), pool.pick().unwrap());
    drop(body);
    assert_eq!(pool.snapshot()[0].in_flight, 0);
    assert_eq!(pool.snapshot()[0].breaker, State::Closed);
    // And the latency estimate is still the default: nothing was sampled.
    assert_eq!(pool.snapshot()[0].latency, Duration::from_secs(1));
}
