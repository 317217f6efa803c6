//! The parallel fetch sprint, as a command-line program: three slow mock sources (weather,
//! image, chat) called concurrently, each with its own timeout, merged into one JSON answer;
//! then the same calls made one after another, timed side by side.
//!
//! ```text
//! cargo run --example fanout
//! cargo run --example fanout -- --image-ms 900 --timeout-ms 500   # the image source times out
//! ```
//!
//! Each call runs in a brigade-cancel scope whose deadline is the source's timeout: a source
//! that passes it is cut off (reason `DeadlineExceeded`) and the answer is marked partial, not
//! failed. The kitchen's `GET /v1/fanout` does the same with a breaker and a retry per source.

use std::time::Duration;

use brigade_cancel::{CancelReason, CancelScope};
use clap::Parser;
use serde_json::{Value, json};
use tokio::time::Instant;

/// Calls three slow mock sources concurrently and sequentially, and compares the timings.
#[derive(Clone, Copy, Debug, Parser)]
#[command(name = "fanout")]
struct Args {
    /// Latency of the weather source, in milliseconds.
    #[arg(long, default_value_t = 120)]
    weather_ms: u64,
    /// Latency of the image source, in milliseconds.
    #[arg(long, default_value_t = 300)]
    image_ms: u64,
    /// Latency of the chat source, in milliseconds.
    #[arg(long, default_value_t = 200)]
    chat_ms: u64,
    /// Timeout of each source, in milliseconds.
    #[arg(long, default_value_t = 500)]
    timeout_ms: u64,
    /// Runs of each mode for the timing table (the best is shown).
    #[arg(long, default_value_t = 3)]
    runs: u32,
}

/// A mock source: its name and latency.
#[derive(Clone, Copy, Debug)]
struct Source {
    name: &'static str,
    latency: Duration,
}

/// What one call gave: its result (or why not) and how long it took.
#[derive(Debug)]
struct Called {
    name: &'static str,
    result: Result<Value, CancelReason>,
    latency: Duration,
}

impl Source {
    /// The source's answer, after its latency.
    async fn fetch(self) -> Value {
        tokio::time::sleep(self.latency).await;
        match self.name {
            "weather" => json!({ "city": "Lyon", "temp_c": 18, "sky": "light rain" }),
            "image" => json!({ "url": "https://images.example/kitchen/mise-en-place.png" }),
            _ => json!({ "text": "the kitchen serves tokens while the line cook keeps time" }),
        }
    }

    /// One call within `timeout`, in a child scope of `request`.
    async fn call(self, request: &CancelScope, timeout: Duration) -> Called {
        let start = Instant::now();
        let scope = request.child_with_timeout(timeout);
        let result = scope
            .run_until_cancelled(self.fetch())
            .await
            .map_err(brigade_cancel::Cancelled::into_reason);
        Called {
            name: self.name,
            result,
            latency: start.elapsed(),
        }
    }
}

/// Calls every source, concurrently or one after another; the results and the total time.
async fn fan_out(
    sources: [Source; 3],
    timeout: Duration,
    sequential: bool,
) -> (Vec<Called>, Duration) {
    let request = CancelScope::new();
    let start = Instant::now();
    let called = if sequential {
        let mut called = Vec::new();
        for source in sources {
            called.push(source.call(&request, timeout).await);
        }
        called
    } else {
        let [a, b, c] = sources;
        let (a, b, c) = tokio::join!(
            a.call(&request, timeout),
            b.call(&request, timeout),
            c.call(&request, timeout)
        );
        vec![a, b, c]
    };
    (called, start.elapsed())
}

fn ms(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 10_000.0).round() / 10.0
}

/// The merged answer, as the kitchen's `GET /v1/fanout` gives it.
fn merged(called: &[Called], total: Duration, timeout: Duration) -> Value {
    let mut sources = serde_json::Map::new();
    for call in called {
        let report = match &call.result {
            Ok(result) => {
                json!({ "status": "ok", "latency_ms": ms(call.latency), "result": result })
            }
            Err(CancelReason::DeadlineExceeded) => json!({
                "status": "timeout",
                "latency_ms": ms(call.latency),
                "error": format!("no answer within {} ms", timeout.as_millis()),
            }),
            Err(reason) => json!({ "status": "cancelled", "error": reason.as_str() }),
        };
        sources.insert(call.name.to_owned(), report);
    }
    json!({
        "partial": called.iter().any(|c| c.result.is_err()),
        "total_ms": ms(total),
        "sources": sources,
    })
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let sources = [
        Source {
            name: "weather",
            latency: Duration::from_millis(args.weather_ms),
        },
        Source {
            name: "image",
            latency: Duration::from_millis(args.image_ms),
        },
        Source {
            name: "chat",
            latency: Duration::from_millis(args.chat_ms),
        },
    ];
    let timeout = Duration::from_millis(args.timeout_ms.max(1));

    let (called, total) = fan_out(sources, timeout, false).await;
    println!(
        "Concurrent fan-out, {} ms timeout per source:",
        timeout.as_millis()
    );
    let answer = merged(&called, total, timeout);
    println!(
        "{}",
        serde_json::to_string_pretty(&answer).unwrap_or_else(|_| answer.to_string())
    );
    println!("total latency: {:.1} ms\n", ms(total));

    // Side by side: the best of a few runs of each mode.
    let mut best: [Option<(Vec<Called>, Duration)>; 2] = [None, None];
    for (slot, sequential) in best.iter_mut().zip([true, false]) {
        for _ in 0..args.runs.max(1) {
            let run = fan_out(sources, timeout, sequential).await;
            if slot.as_ref().is_none_or(|(_, t)| run.1 < *t) {
                *slot = Some(run);
            }
        }
    }
    let [
        Some((sequential, sequential_total)),
        Some((concurrent, concurrent_total)),
    ] = best
    else {
        return;
    };
    let runs = format!("best of {} run(s)", args.runs.max(1));
    println!("{runs:<19} {:>10} {:>20}", "sequential", "concurrent");
    for ((source, s), c) in sources.iter().zip(&sequential).zip(&concurrent) {
        let status = |call: &Called| {
            if call.result.is_ok() {
                ""
            } else {
                " (timeout)"
            }
        };
        println!(
            "{:<8} {:>5} ms {:>9.1} ms{:<10} {:>7.1} ms{}",
            source.name,
            source.latency.as_millis(),
            ms(s.latency),
            status(s),
            ms(c.latency),
            status(c),
        );
    }
    println!(
        "{:<17} {:>9.1} ms{:<10} {:>7.1} ms",
        "total",
        ms(sequential_total),
        "",
        ms(concurrent_total)
    );
    println!(
        "concurrent is {:.1}x faster: the slowest source, not the sum",
        sequential_total.as_secs_f64() / concurrent_total.as_secs_f64()
    );
}
