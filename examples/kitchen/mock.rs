//! The line cook: a mock model. Deterministic tokens for a given prompt, a time to first token
//! and a time per token on tokio's clock, and seeded fault injection (failures before the first
//! token, failures mid-stream, stalls).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::Stream;
use tokio::time::{Instant, Sleep, sleep_until};

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
    /// The request's `messages`, as received (their JSON text).
    pub(crate) messages: Box<serde_json::value::RawValue>,
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
        Words::new(prompt, n).collect()
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
        let words = Words::new(&order.prompt, n);
        let stall = self.fault(&self.faults.stall);
        let fail = self.fault(&self.faults.fail);
        // A mid-stream failure comes after the first token, at a drawn position.
        let fail_at = (n > 1 && self.fault(&self.faults.mid_stream))
            .then(|| 1 + (self.draw() * f64::from(n - 1)) as u32);
        Box::pin(Cooking {
            words,
            next: 0,
            ttft: self.ttft,
            interval: self.token_interval,
            stall,
            fail,
            fail_at,
            timer: None,
            armed: false,
            over: false,
        })
    }
}

/// The words of an answer, drawn one at a time from the prompt's hash.
#[derive(Debug)]
struct Words {
    state: u64,
    left: u32,
    first: bool,
}

impl Words {
    fn new(prompt: &str, n: u32) -> Self {
        Self {
            state: fnv1a(prompt.as_bytes()),
            left: n,
            first: true,
        }
    }
}

impl Iterator for Words {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        self.left = self.left.checked_sub(1)?;
        let word = WORDS[(splitmix(&mut self.state) % WORDS.len() as u64) as usize];
        let first = std::mem::replace(&mut self.first, false);
        Some(Token::Borrowed(if first { &word[1..] } else { word }))
    }
}

/// The token stream of one attempt: before each token (and before the end) a pause, the time
/// to first token then the time per token, on one timer reset each time; then the faults drawn
/// for the attempt. No allocation per token, and no timer at all when the pauses are zero.
struct Cooking {
    words: Words,
    /// The index of the next token.
    next: u32,
    ttft: Duration,
    interval: Duration,
    stall: bool,
    fail: bool,
    fail_at: Option<u32>,
    /// Made on the first pause that is not zero, then reset for each.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether the timer is set for the pause before `next`.
    armed: bool,
    /// After an error or the last word.
    over: bool,
}

impl Stream for Cooking {
    type Item = Result<Token, CookError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.over {
            return Poll::Ready(None);
        }
        let pause = if this.next == 0 {
            this.ttft
        } else {
            this.interval
        };
        if !pause.is_zero() {
            if !this.armed {
                let wake = Instant::now() + pause;
                match &mut this.timer {
                    Some(timer) => timer.as_mut().reset(wake),
                    None => this.timer = Some(Box::pin(sleep_until(wake))),
                }
                this.armed = true;
            }
            if let Some(timer) = &mut this.timer {
                ready!(timer.as_mut().poll(cx));
            }
        }
        this.armed = false;
        if this.next == 0 {
            if this.stall {
                // Stalled for good: never woken; the caller's deadline or cancel drops it.
                this.armed = true;
                return Poll::Pending;
            }
            if this.fail {
                this.over = true;
                return Poll::Ready(Some(Err(CookError::retryable(
                    "injected failure before the first token",
                ))));
            }
        }
        if this.fail_at == Some(this.next) {
            this.over = true;
            return Poll::Ready(Some(Err(CookError::retryable(
                "injected failure mid-stream",
            ))));
        }
        match this.words.next() {
            Some(word) => {
                this.next += 1;
                Poll::Ready(Some(Ok(word)))
            }
            None => {
                this.over = true;
                Poll::Ready(None)
            }
        }
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
