//! The tower layer: rejects before the inner service is touched, records what it lets through.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use brigade_breaker::tower::future::ResponseFuture;
use brigade_breaker::tower::{self as breaker_tower, CircuitBreakerLayer};
use brigade_breaker::{CircuitBreaker, Outcome, Rejected, State};
use tower::{Layer, Service, ServiceExt, service_fn};

#[tokio::test(start_paused = true)]
async fn an_open_breaker_rejects_in_call_without_touching_the_inner_service() {
    let breaker = CircuitBreaker::builder()
        .minimum_calls(3)
        .open_duration(tower_secs(3))
        .build()
        .unwrap();
    let touched = Arc::new(AtomicUsize::new(0));
    let inner = {
        let touched = Arc::clone(&touched);
        service_fn(move |fail: bool| {
            touched.fetch_add(1, Ordering::SeqCst);
            async move {
                if fail {
                    Err("upstream 503")
                } else {
                    Ok("tokens")
                }
            }
        })
    };
    let mut service = CircuitBreakerLayer::new(breaker.clone()).layer(inner);
    assert_eq!(
        service.ready().await.unwrap().call(false).await.unwrap(),
        "tokens"
    );
    for _ in 0..2 {
        let error = service.ready().await.unwrap().call(true).await.unwrap_err();
        assert_eq!(error.to_string(), "upstream 503");
    }
    assert_eq!(breaker.state(), State::Open);
    let error = service
        .ready()
        .await
        .unwrap()
        .call(false)
        .await
        .unwrap_err();
    let rejected = error.downcast_ref::<Rejected>().expect("a rejection");
    assert_eq!(rejected.retry_after(), Duration::from_secs(3));
    assert_eq!(
        touched.load(Ordering::SeqCst),
        3,
        "the rejected call never reached the service"
    );
}

fn tower_secs(secs: u64) -> brigade_breaker::OpenDuration {
    brigade_breaker::OpenDuration::fixed(Duration::from_secs(secs))
}

#[tokio::test(start_paused = true)]
async fn a_classifier_can_ignore_client_errors() {
    let breaker = CircuitBreaker::builder().minimum_calls(1).build().unwrap();
    let layer =
        CircuitBreakerLayer::new(breaker.clone()).classify(|result: &Result<u16, Infallible>| {
            match result {
                Ok(status) if *status >= 500 => Outcome::FAILURE,
                Ok(status) if *status >= 400 => Outcome::Ignored,
                _ => Outcome::Success,
            }
        });
    let mut service = layer.layer(service_fn(|status: u16| async move { Ok(status) }));
    service.ready().await.unwrap().call(404).await.unwrap();
    assert_eq!(breaker.metrics().calls, 0);
    service.ready().await.unwrap().call(200).await.unwrap();
    service.ready().await.unwrap().call(503).await.unwrap();
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_response_future_records_nothing() {
    let breaker = CircuitBreaker::builder().minimum_calls(1).build().unwrap();
    let mut service = CircuitBreakerLayer::new(breaker.clone()).layer(service_fn(|()| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Err::<(), _>("late failure")
    }));
    let future = service.ready().await.unwrap().call(());
    assert!(
        tokio::time::timeout(Duration::from_secs(1), future)
            .await
            .is_err()
    );
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.metrics().calls, 0);
}

#[tokio::test(start_paused = true)]
async fn the_service_is_made_by_new_and_gives_its_inner_service_back() {
    let breaker = CircuitBreaker::builder().minimum_calls(1).build().unwrap();
    let inner = service_fn(|status: u16| async move { Ok::<_, Infallible>(status) });
    let mut service = breaker_tower::CircuitBreaker::new(inner, breaker.clone()).classify(
        |result: &Result<u16, Infallible>| match result {
            Ok(503) => Outcome::FAILURE,
            _ => Outcome::Success,
        },
    );
    let _: &_ = service.get_ref();
    let _: &mut _ = service.get_mut();
    let future: ResponseFuture<_, _> = service.ready().await.unwrap().call(503);
    assert_eq!(future.await.unwrap(), 503);
    assert_eq!(service.breaker().state(), State::Open);
    let mut inner = service.into_inner();
    assert_eq!(inner.ready().await.unwrap().call(200).await.unwrap(), 200);
}
