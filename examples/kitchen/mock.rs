//! The line cook: a mock model. Deterministic tokens for a given prompt, a time to first token
//! and a time per token on tokio's clock, and seeded fault injection (failures before the first
//! token, failures mid-stream, stalls).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::Stream;

use crate::config::Config;

/// A failure of the line cook (the mock or the upstream).
#[derive(Clone, Debug)]
pub(crate) struct CookError {
    pub(crate) message: String,
    /// Worth another attempt (a 5xx, a reset), as opposed to a 4xx.
    pub(crate) retryable: bool,
    /// The upstream's own `Retry-After`, if it gave one.
    pub(crate) retry_after: Option<Duration>,
}

impl CookError {
    pub(crate) fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
            retry_after: None,
        }
    }
}

/// Tokens as they come; an `Err` ends the stream.
pub(crate) type TokenStream = Pin<Box<dyn Stream<Item = Result<Token, CookError>> + Send>>;

/// One token's text: borrowed from the mock's vocabulary, or owned when decoded from an
/// upstream.
pub(crate) type Token = std::borrow::Cow<'static, str>;

/// What the line cook is asked to make.
#[derive(Clone, Debug)]
pub(crate) struct Order {
    pub(crate) model: String,
    /// The request's `messages`, as received.
    pub(crate) messages: serde_json::Value,
    /// Every message's text, joined (the mock's seed).
    pub(crate) prompt: String,
    pub(crate) max_tokens: u32,
}

/// Fault rates, changeable while the server runs (tests flip them to check recovery).
#[derive(Debug)]
pub(crate) struct Faults {
    fail: AtomicU64,
    mid_stream: AtomicU64,
    stall: AtomicU64,
}

impl Faults {
    fn new(fail: f64, mid_stream: f64, stall: f64) -> Self {
        Self {
            fail: AtomicU64::new(fail.to_bits()),
            mid_stream: AtomicU64::new(mid_stream.to_bits()),
            stall: AtomicU64::new(stall.to_bits()),
        }
    }

    #[allow(
        dead_code,
        reason = "the integration tests change the rates while the server runs"
    )]
    pub(crate) fn set(&self, fail: f64, mid_stream: f64, stall: f64) {
        self.fail.store(fail.to_bits(), Ordering::Relaxed);
        self.mid_stream
            .store(mid_stream.to_bits(), Ordering::Relaxed);
        self.stall.store(stall.to_bits(), Ordering::Relaxed);
    }

    fn get(rate: &AtomicU64) -> f64 {
        f64::from_bits(rate.load(Ordering::Relaxed))
    }
}

/// The mock model.
#[derive(Debug)]
pub(crate) struct Mock {
    ttft: Duration,
    token_interval: Duration,
    tokens: u32,
    pub(crate) faults: Faults,
    /// SplitMix64 state of the fault draws.
    rng: AtomicU64,
    /// Attempts started (first tries and retries).
    pub(crate) attempts: AtomicU64,
}

/// The vocabulary, each word with the space that goes before it (the first token drops it).
const WORDS: [&str; 32] = [
    " the", " kitchen", " serves", " tokens", " while", " the", " line", " cook", " keeps",
    " time", " and", " every", " order", " ends", " with", " done", " a", " stream", " of",
    " small", " words", " flows", " through", " the", " pass", " window", " to", " a", " patient",
    " client", " tonight", " again",
];

impl Mock {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            ttft: Duration::from_millis(config.ttft_ms),
            token_interval: Duration::from_millis(config.token_ms),
            tokens: config.tokens,
            faults: Faults::new(
                config.fail_rate,
                config.mid_stream_fail_rate,
                config.stall_rate,
            ),
            rng: AtomicU64::new(config.seed),
            attempts: AtomicU64::new(0),
        }
    }

    /// The answer to `prompt`: the same tokens every time.
    pub(crate) fn answer(prompt: &str, n: u32) -> Vec<Token> {
        let mut state = fnv1a(prompt.as_bytes());
        (0..n)
            .map(|i| {
                let word = WORDS[(splitmix(&mut state) % WORDS.len() as u64) as usize];
                Token::Borrowed(if i == 0 { &word[1..] } else { word })
            })
            .collect()
    }

    /// A uniform draw in [0, 1), from the seeded generator shared by all requests.
    fn draw(&self) -> f64 {
        let mut state = self
            .rng
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        (splitmix_mix(&mut state) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn fault(&self, rate: &AtomicU64) -> bool {
        let rate = Faults::get(rate);
        rate > 0.0 && self.draw() < rate
    }

    /// Starts cooking: the tokens of `order`, paced, with faults drawn for this attempt.
    pub(crate) fn open(&self, order: &Order) -> TokenStream {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        let n = self.tokens.min(order.max_tokens);
        let words = Self::answer(&order.prompt, n);
        let stall = self.fault(&self.faults.stall);
        let fail = self.fault(&self.faults.fail);
        // A mid-stream failure comes after the first token, at a drawn position.
        let fail_at = (n > 1 && self.fault(&self.faults.mid_stream))
            .then(|| 1 + (self.draw() * f64::from(n - 1)) as u32);
        let ttft = self.ttft;
        let interval = self.token_interval;
        Box::pin(futures::stream::unfold(
            (0u32, words.into_iter()),
            move |(i, mut words)| async move {
                if i == 0 {
                    pause(ttft).await;
                    if stall {
                        std::future::pending::<()>().await;
                    }
                    if fail {
                        return Some((
                            Err(CookError::retryable(
                                "injected failure before the first token",
                            )),
                            (u32::MAX, words),
                        ));
                    }
                } else if i == u32::MAX {
                    return None;
                } else {
                    pause(interval).await;
                }
                if fail_at == Some(i) {
                    return Some((
                        Err(CookError::retryable("injected failure mid-stream")),
                        (u32::MAX, words),
                    ));
                }
                let word = words.next()?;
                Some((Ok(word), (i + 1, words)))
            },
        ))
    }
}

/// Sleeps on tokio's clock; no timer at all for zero (a zero sleep still waits for the
/// timer's next tick, about a millisecond).
async fn pause(duration: Duration) {
    if !duration.is_zero() {
        tokio::time::sleep(duration).await;
    }
}

/// Rough prompt size for usage: whitespace-separated words.
pub(crate) fn count_tokens(text: &str) -> u32 {
    u32::try_from(text.split_whitespace().count()).unwrap_or(u32::MAX)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    splitmix_mix(state)
}

fn splitmix_mix(state: &mut u64) -> u64 {
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
