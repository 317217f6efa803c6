//! Endpoints added and removed while picks run.

use std::sync::Arc;
use std::time::Duration;

use brigade_balance::{EndpointConfig, InvalidConfig, Pool};

#[tokio::test(start_paused = true)]
async fn a_removed_endpoints_outstanding_pick_finishes_and_no_new_pick_chooses_it() {
    let pool = Pool::builder()
        .endpoint("old", "http://old", EndpointConfig::new())
        .build()
        .unwrap();
    let mut outstanding = pool.pick().unwrap();
    pool.insert("new", "http://new", EndpointConfig::new())
        .unwrap();
    assert!(pool.remove("old"));
    assert!(!pool.remove("old"));
    assert_eq!(pool.len(), 1);
    for _ in 0..50 {
        assert_eq!(pool.pick().unwrap().id(), "new");
    }
    // The outstanding pick still reaches its endpoint and reports without a fuss.
    assert_eq!(*outstanding.endpoint(), "http://old");
    tokio::time::advance(Duration::from_millis(5)).await;
    assert_eq!(outstanding.first_byte(), Duration::from_millis(5));
    outstanding.success();
    assert_eq!(pool.snapshot().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn insert_replaces_an_endpoint_of_the_same_id_with_fresh_state() {
    let pool = Pool::builder()
        .endpoint("a", 1, EndpointConfig::new())
        .build()
        .unwrap();
    pool.pick().unwrap().throttled(Duration::from_secs(30));
    assert!(pool.pick().is_err());
    pool.insert("a", 2, EndpointConfig::new().tier(1)).unwrap();
    let pick = pool.pick().unwrap();
    assert_eq!((*pick.endpoint(), pick.tier()), (2, 1));
    assert_eq!(pool.len(), 1);
}

#[test]
fn invalid_configuration_is_refused_when_built_or_inserted() {
    for weight in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let built = Pool::builder()
            .endpoint("a", (), EndpointConfig::new().weight(weight))
            .build();
        assert!(matches!(built, Err(InvalidConfig::Weight(_))), "{weight}");
    }
    let pool = Pool::<()>::builder().build().unwrap();
    let inserted = pool.insert("a", (), EndpointConfig::new().weight(0.0));
    assert!(matches!(inserted, Err(InvalidConfig::Weight(_))));
    assert!(pool.is_empty());

    let twice = Pool::builder()
        .endpoint("a", (), EndpointConfig::new())
        .endpoint("a", (), EndpointConfig::new())
        .build();
    assert_eq!(twice.unwrap_err(), InvalidConfig::DuplicateId("a".into()));
    let decay = Pool::<()>::builder().decay(Duration::ZERO).build();
    assert_eq!(decay.unwrap_err(), InvalidConfig::ZeroDecay);
    let latency = Pool::<()>::builder()
        .default_latency(Duration::ZERO)
        .build();
    assert_eq!(latency.unwrap_err(), InvalidConfig::ZeroDefaultLatency);
    let breaker = Pool::<()>::builder()
        .breaker(brigade_breaker::CircuitBreaker::builder().minimum_calls(0))
        .build();
    assert!(matches!(breaker, Err(InvalidConfig::Breaker(_))));
}

#[test]
fn picks_on_threads_during_inserts_and_removes_leave_nothing_in_flight() {
    let pool = Pool::builder()
        .endpoint("stable", (), EndpointConfig::new())
        .seed(11)
        .build()
        .unwrap();
    let pool = Arc::new(pool);
    let pickers: Vec<_> = (0..2)
        .map(|_| {
            let pool = Arc::clone(&pool);
            std::thread::spawn(move || {
                let mut held = Vec::new();
                for i in 0..5_000 {
                    held.push(pool.pick().unwrap());
                    if i % 3 == 0 {
                        held.clear();
                    }
                }
            })
        })
        .collect();
    for i in 0..500 {
        let id = format!("churn-{}", i % 4);
        pool.insert(id.as_str(), (), EndpointConfig::new()).unwrap();
        if i % 2 == 1 {
            pool.remove(&id);
        }
    }
    for picker in pickers {
        picker.join().unwrap();
    }
    let snapshot = pool.snapshot();
    assert!(snapshot.iter().all(|e| e.in_flight == 0), "{snapshot:?}");
    assert!(snapshot.iter().any(|e| &*e.id == "stable"));
}
