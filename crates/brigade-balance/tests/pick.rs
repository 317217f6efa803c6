//! The pick: power of two choices prefers the faster and the less loaded endpoint, and weights
//! hold at rest.

use std::collections::HashMap;
use std::time::Duration;

use brigade_balance::{EndpointConfig, Pool};
use tokio::time::advance;

/// Latency of each endpoint, by id.
fn latency(id: &str) -> Duration {
    match id {
        "fast" => Duration::from_millis(10),
        _ => Duration::from_millis(100),
    }
}

#[tokio::test(start_paused = true)]
async fn p2c_sends_most_picks_to_the_endpoint_ten_times_faster() {
    let pool = Pool::builder()
        .endpoint("fast", (), EndpointConfig::new())
        .endpoint("slow", (), EndpointConfig::new())
        .seed(1)
        .build()
        .unwrap();
    // Each endpoint shows its latency once: until then both stand at the default estimate
    // (1 s), and the one sampled first would look faster whatever it is.
    for id in ["fast", "slow"] {
        let other = if id == "fast" { "slow" } else { "fast" };
        let mut pick = pool.pick_excluding(&[other]).unwrap();
        advance(latency(id)).await;
        pick.first_byte();
        pick.success();
    }
    let mut fast = 0;
    for _ in 0..1_000 {
        let mut pick = pool.pick().unwrap();
        advance(latency(pick.id())).await;
        pick.first_byte();
        if pick.id() == "fast" {
            fast += 1;
        }
        pick.success();
    }
    // The slow endpoint is tried again only once its estimate has decayed below the fast one's.
    assert!(fast >= 900, "fast got {fast} of 1000 picks");
    let snapshot = pool.snapshot();
    assert_eq!(snapshot[0].latency, Duration::from_millis(10));
}

#[tokio::test(start_paused = true)]
async fn p2c_sends_most_picks_to_the_less_loaded_endpoint() {
    let pool = Pool::builder()
        .endpoint("a", (), EndpointConfig::new())
        .endpoint("b", (), EndpointConfig::new())
        .seed(2)
        .build()
        .unwrap();
    // Equal latency (both at the default estimate), and eight calls in flight on `a`.
    let mut busy = Vec::new();
    while busy.len() < 8 {
        let pick = pool.pick_excluding(&["b"]).unwrap();
        busy.push(pick);
    }
    let mut b = 0;
    for _ in 0..1_000 {
        let pick = pool.pick().unwrap();
        if pick.id() == "b" {
            b += 1;
        }
    }
    assert_eq!(
        b, 1_000,
        "an idle endpoint beats one with 8 in flight at equal latency"
    );
    drop(busy);
    assert!(pool.snapshot().iter().all(|e| e.in_flight == 0));
}

#[tokio::test(start_paused = true)]
async fn weights_one_two_four_get_their_share_of_picks_at_rest() {
    let pool = Pool::builder()
        .endpoint("w1", (), EndpointConfig::new().weight(1.0))
        .endpoint("w2", (), EndpointConfig::new().weight(2.0))
        .endpoint("w4", (), EndpointConfig::new().weight(4.0))
        .seed(3)
        .build()
        .unwrap();
    let mut counts: HashMap<String, u32> = HashMap::new();
    const PICKS: u32 = 10_000;
    for _ in 0..PICKS {
        let pick = pool.pick().unwrap();
        *counts.entry(pick.id().to_owned()).or_default() += 1;
    }
    // A share of p over n independent picks has a standard deviation of sqrt(p(1-p)/n): at
    // most 0.5 points for n = 10,000; ±2 points is four deviations, and far tighter than the
    // ±5 the design allows.
    for (id, weight) in [("w1", 1.0), ("w2", 2.0), ("w4", 4.0)] {
        let share = f64::from(counts[id]) / f64::from(PICKS);
        let expected = weight / 7.0;
        assert!(
            (share - expected).abs() < 0.02,
            "{id}: {share:.3} of the picks, expected {expected:.3}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn under_load_in_flight_follows_the_weights() {
    let pool = Pool::builder()
        .endpoint("w1", (), EndpointConfig::new().weight(1.0))
        .endpoint("w3", (), EndpointConfig::new().weight(3.0))
        .seed(4)
        .build()
        .unwrap();
    // 40 calls held at once: the load term divides in-flight by the weight.
    let held: Vec<_> = (0..40).map(|_| pool.pick().unwrap()).collect();
    let w3 = held.iter().filter(|p| p.id() == "w3").count();
    assert!((28..=32).contains(&w3), "w3 holds {w3} of 40");
}

#[tokio::test(start_paused = true)]
async fn same_seed_same_picks() {
    let picks = |seed| {
        let pool = Pool::builder()
            .endpoint("a", (), EndpointConfig::new())
            .endpoint("b", (), EndpointConfig::new())
            .endpoint("c", (), EndpointConfig::new())
            .seed(seed)
            .build()
            .unwrap();
        (0..50)
            .map(|_| pool.pick().unwrap().id().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(picks(9), picks(9));
    assert_ne!(picks(9), picks(10));
}

#[tokio::test(start_paused = true)]
async fn a_call_dropped_before_its_first_byte_raises_a_lower_estimate() {
    let pool = Pool::builder()
        .endpoint("a", (), EndpointConfig::new())
        .seed(1)
        .build()
        .unwrap();
    let mut pick = pool.pick().unwrap();
    advance(Duration::from_millis(20)).await;
    pick.first_byte();
    pick.success();
    assert_eq!(pool.snapshot()[0].latency, Duration::from_millis(20));

    // A call given up after 5 ms (the client left) says only "at least 5 ms": no change.
    let pick = pool.pick().unwrap();
    advance(Duration::from_millis(5)).await;
    drop(pick);
    let estimate = pool.snapshot()[0].latency;
    assert!(estimate <= Duration::from_millis(20), "{estimate:?}");
    assert!(estimate >= Duration::from_millis(19), "{estimate:?}");

    // A call given up after 200 ms without a first byte (a hedge won elsewhere): at least
    // 200 ms, above the estimate, which becomes 200 ms.
    let pick = pool.pick().unwrap();
    advance(Duration::from_millis(200)).await;
    drop(pick);
    assert_eq!(pool.snapshot()[0].latency, Duration::from_millis(200));

    // A reported outcome, or `Outcome::Ignored`, is not a lower bound.
    let pick = pool.pick().unwrap();
    advance(Duration::from_millis(900)).await;
    pick.record(brigade_balance::Outcome::Ignored);
    assert!(pool.snapshot()[0].latency <= Duration::from_millis(200));
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_whose_slow_calls_are_hedged_away_loses_its_picks() {
    // `slow` answers in 20 ms, except one call in five that would take 400 ms and is given up
    // (hedged elsewhere) after 60 ms; `fast` always answers in 20 ms. Without the lower bound
    // both would look equally fast, and share the picks.
    let pool = Pool::builder()
        .endpoint("fast", (), EndpointConfig::new())
        .endpoint("slow", (), EndpointConfig::new())
        .seed(3)
        .build()
        .unwrap();
    // Each shows its 20 ms once (until then both stand at the default estimate).
    for (id, other) in [("fast", "slow"), ("slow", "fast")] {
        let mut pick = pool.pick_excluding(&[other]).unwrap();
        assert_eq!(pick.id(), id);
        advance(Duration::from_millis(20)).await;
        pick.first_byte();
        pick.success();
    }
    let (mut slow_picks, mut n_slow) = (0, 0_u32);
    for _ in 0..2_000 {
        let mut pick = pool.pick().unwrap();
        if pick.id() == "slow" {
            slow_picks += 1;
            n_slow += 1;
            if n_slow % 5 == 0 {
                advance(Duration::from_millis(60)).await;
                drop(pick);
                continue;
            }
        }
        advance(Duration::from_millis(20)).await;
        pick.first_byte();
        pick.success();
    }
    // Without the lower bound, slow got 1,111 of the 2,000.
    assert!(slow_picks < 400, "slow got {slow_picks} of 2000 picks");
}
