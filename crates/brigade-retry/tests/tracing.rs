//! One `tracing` event per retry, with the attempt, the wait and the cause.

use std::fmt::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brigade_retry::{Backoff, Retry};
use tracing::field::{Field, Visit};
use tracing::span;
use tracing::{Event, Metadata, Subscriber};

/// A subscriber that writes each event as `target level message field=value ...`.
struct Capture(Arc<Mutex<Vec<String>>>);

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }
    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn event(&self, event: &Event<'_>) {
        let meta = event.metadata();
        let mut fields = Fields(format!("{} {}", meta.target(), meta.level()));
        event.record(&mut fields);
        self.0.lock().unwrap().push(fields.0);
    }
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}

#[test]
fn each_retry_emits_one_event_with_attempt_wait_and_cause() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let subscriber = Capture(Arc::clone(&events));
    tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let policy = Retry::builder()
                .schedule(Backoff::constant(Duration::from_millis(100)))
                .max_attempts(3)
                .budget(None)
                .build()
                .unwrap();
            let _ = policy.run(async |_| Err::<(), _>("reset")).await;
        });
    });
    let events = events.lock().unwrap();
    assert_eq!(
        *events,
        [
            "brigade_retry DEBUG message=retrying attempt=1 wait=100ms cause=Failed elapsed=0ns",
            "brigade_retry DEBUG message=retrying attempt=2 wait=100ms cause=Failed elapsed=100ms",
        ]
    );
}
