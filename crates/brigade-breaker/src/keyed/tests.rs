//! The table's bounds: the work per new key, and the order of use.

use std::time::Duration;

use super::table::SCAN;
use super::*;
use crate::OpenDuration;

const SEC: Duration = Duration::from_secs(1);

fn keyed(max_keys: usize) -> KeyedCircuitBreaker<String> {
    let template = CircuitBreaker::builder()
        .minimum_calls(1)
        .open_duration(OpenDuration::fixed(30 * SEC));
    KeyedCircuitBreaker::new(template, max_keys, 10 * SEC).unwrap()
}

fn examined(keyed: &KeyedCircuitBreaker<String>) -> u64 {
    keyed.lock().table.examined
}

#[tokio::test(start_paused = true)]
async fn the_work_per_new_key_at_capacity_is_bounded() {
    let keyed = keyed(1_000);
    for i in 0..1_000 {
        keyed
            .get(&format!("open-{i}"))
            .try_acquire()
            .unwrap()
            .failure();
    }
    // Every breaker is open: each new key looks at SCAN of them, not at all 1 000.
    for i in 0..1_000 {
        let before = examined(&keyed);
        let _ = keyed.get(&format!("new-{i}"));
        assert_eq!(examined(&keyed) - before, SCAN as u64);
    }
    assert_eq!(keyed.len(), 1_000);

    // Once their open periods end, they may go, idle ones in batches: still at most SCAN.
    tokio::time::advance(30 * SEC).await;
    for i in 0..1_000 {
        let before = examined(&keyed);
        let _ = keyed.get(&format!("later-{i}"));
        assert!(examined(&keyed) - before <= SCAN as u64);
        assert!(keyed.metrics(&format!("later-{i}")).is_some());
    }
    assert!(keyed.len() <= 1_000);
}

#[tokio::test(start_paused = true)]
async fn idle_breakers_go_in_a_batch_bounded_by_the_scan() {
    let keyed = keyed(100);
    for i in 0..100 {
        let _ = keyed.get(&format!("old-{i}"));
    }
    tokio::time::advance(11 * SEC).await;
    let before = examined(&keyed);
    let _ = keyed.get("new");
    assert_eq!(examined(&keyed) - before, SCAN as u64);
    assert_eq!(
        keyed.len(),
        100 - SCAN + 1,
        "every idle breaker looked at went"
    );
}

#[tokio::test(start_paused = true)]
async fn breakers_that_must_stay_move_to_the_front() {
    let keyed = keyed(3);
    keyed.get("a").try_acquire().unwrap().failure(); // open
    let _ = keyed.get("b");
    let _ = keyed.get("c");
    assert_eq!(keyed.lock().table.order(), ["c", "b", "a"]);
    let _ = keyed.get("d");
    // a stayed and moved to the front; b, the least recently used that may go, went.
    assert_eq!(keyed.lock().table.order(), ["d", "a", "c"]);
    let _ = keyed.get("c");
    assert_eq!(keyed.lock().table.order(), ["c", "d", "a"]);
    assert!(keyed.remove("d"));
    assert_eq!(keyed.lock().table.order(), ["c", "a"]);
    assert!(keyed.remove("c") && keyed.remove("a"));
    assert!(keyed.lock().table.order().is_empty());
    let _ = keyed.get("e");
    assert_eq!(keyed.lock().table.order(), ["e"]);
}
