//! Two API keys against a requests-and-tokens limit: one within its quota, one over it, and
//! the header fields each gets.
//!
//! `cargo run --example rate_limit`

use std::num::NonZeroU32;

use brigade_limit::headers::RateLimitHeaders;
use brigade_limit::{AcquireError, Limit, Quota, RateLimiter};
use http::HeaderMap;

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n).expect("a quota is not zero"))
}

fn print(who: &str, status: u16, headers: &HeaderMap) {
    println!("{who}: {status}");
    for (name, value) in headers {
        println!("  {name}: {}", value.to_str().unwrap_or("?"));
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Per API key: 3 requests and 1,000 tokens per minute, checked together.
    let limiter: RateLimiter<&str> = RateLimiter::builder()
        .limit(Limit::per_request("requests", per_minute(3)))
        .limit(Limit::new("tokens", per_minute(1_000)))
        .build()?;
    let headers = RateLimitHeaders::new().openai(true);

    // "key-calm" sends one chat request: it reserves prompt + max_tokens, then settles with
    // the tokens the stream really used.
    let reservation = limiter.try_reserve(&"key-calm", 400)?;
    let mut fields = HeaderMap::new();
    headers.admitted(reservation.admitted(), &mut fields);
    print("key-calm, request 1", 200, &fields);
    reservation.settle(120);

    // "key-busy" sends four large requests in a row: the last ones are over quota.
    for n in 1..=4 {
        let mut fields = HeaderMap::new();
        match limiter.try_reserve(&"key-busy", 300) {
            Ok(reservation) => {
                headers.admitted(reservation.admitted(), &mut fields);
                print(&format!("key-busy, request {n}"), 200, &fields);
                reservation.settle(300);
            }
            Err(AcquireError::Rejected(rejected)) => {
                headers.rejected(&rejected, &mut fields);
                print(&format!("key-busy, request {n}"), 429, &fields);
                println!(
                    "  (limited by {:?}, retry after {:?})",
                    rejected.limit().name(),
                    rejected.retry_after()
                );
            }
            Err(other) => return Err(other.into()),
        }
    }
    Ok(())
}
