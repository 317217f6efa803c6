//! Model checks of an endpoint's counters: concurrent picks and drops leave nothing in flight,
//! and concurrent latency samples leave an estimate one of them wrote.

use std::time::Duration;

use loom::sync::Arc;
use loom::thread;

use super::endpoint::State;
use crate::loom::Ordering;

const DECAY: f64 = 10e9;

#[test]
fn loom_concurrent_picks_and_drops_leave_nothing_in_flight() {
    loom::model(|| {
        let state = Arc::new(State::new(Duration::from_secs(1), 1));
        let threads: Vec<_> = (0..2)
            .map(|i| {
                let state = Arc::clone(&state);
                thread::spawn(move || {
                    // A pick: counted in flight; its drop: counted out.
                    state.in_flight.fetch_add(1, Ordering::Relaxed);
                    state.picks.fetch_add(1, Ordering::Relaxed);
                    let seen = state.latency_ns(2, DECAY);
                    assert!(seen > 0.0);
                    state.sample(Duration::from_millis(10 * (i + 1)), 2, DECAY);
                    state.in_flight.fetch_sub(1, Ordering::Relaxed);
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(state.in_flight.load(Ordering::Relaxed), 0);
        assert_eq!(state.picks.load(Ordering::Relaxed), 2);
        // The first sample replaced the default; the second, at the same instant, kept the
        // higher (a peak) or left it: 20 ms either way.
        assert_eq!(state.latency_ns(2, DECAY), 20e6);
    });
}
