//! The line cook: a mock model. Deterministic tokens for a given prompt, a time to first token
//! and a time per token on tokio's clock, and seeded fault injection (failures before the first
//! token, failures mid-stream, stalls).
//!
//! It speaks OpenAI, as an upstream asked for `stream_options.include_usage` does: a streamed
//! answer is a role chunk (sent with the first token, once the time to first token has passed),
//! one chunk per token, a finish chunk (`finish_reason` `stop`, or `length` when `max_tokens`
//! cut the answer), a usage chunk (`choices: []`), then the end; a whole answer is one
//! `chat.completion`. Each answer's id is `chatcmpl-` and 128 random bits. Chunks are
//! serialized with serde into one buffer per answer, which the pass window shares until it
//! encodes them: no allocation per token.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use tokio::time::{Instant, Sleep, sleep_until};

use crate::api::{
    AnswerMessage, ChatCompletion, ChatCompletionChunk, ChatRequest, Choice, ChunkChoice, Delta,
    FinishReason, Role, Usage,
};
use crate::config::Config;
use crate::cook::{Chunk, Chunks, CookError, Cooked, Whole};
use crate::ids::random_bits;

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
    /// A prompt that makes the mock panic (`--panic-prompt`).
    panic_prompt: Option<String>,
}

/// The vocabulary, each word with the space that goes before it (the first token drops it).
const WORDS: [&str; 32] = [
    " the", " kitchen", " serves", " tokens", " while", " the", " line", " cook", " keeps",
    " time", " and", " every", " order", " ends", " with", " done", " a", " stream", " of",
    " small", " words", " flows", " through", " the", " pass", " window", " to", " a", " patient",
    " client", " tonight", " again",
];

impl Mock {
    /// The model the mock is, in `/v1/models`.
    pub(crate) const MODEL: &'static str = "kitchen-mock";

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
            panic_prompt: config.panic_prompt.clone(),
        }
    }

    /// The answer to `prompt`: the same tokens every time.
    pub(crate) fn answer(prompt: &str, n: u32) -> Vec<&'static str> {
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

    /// A streamed answer to `request`, in the name of `model`.
    pub(crate) fn stream(&self, request: &ChatRequest, model: &str) -> Chunks {
        let (cooking, order) = self.cook(request, model);
        Box::pin(Serving {
            cooking,
            writer: ChunkWriter {
                buf: BytesMut::new(),
                order,
            },
            phase: Phase::Role,
            held: None,
            completion_tokens: 0,
        })
    }

    /// A whole answer to `request`, in the name of `model`, after the time the stream would
    /// take.
    pub(crate) async fn whole(
        &self,
        request: &ChatRequest,
        model: &str,
    ) -> Result<Whole, CookError> {
        let (mut cooking, order) = self.cook(request, model);
        let mut content = String::new();
        let mut completion_tokens = 0;
        while let Some(word) = cooking.next().await {
            content.push_str(word?);
            completion_tokens += 1;
        }
        let usage = Usage::new(order.prompt_tokens, completion_tokens);
        let answer = ChatCompletion {
            id: &order.id,
            object: ChatCompletion::OBJECT,
            created: order.created,
            model: &order.model,
            choices: &[Choice {
                index: 0,
                message: AnswerMessage {
                    role: Role::Assistant,
                    content: &content,
                },
                finish_reason: order.finish_reason(completion_tokens),
            }],
            usage,
        };
        let json = serde_json::to_vec(&answer)
            .map_err(|e| CookError::failed(format!("could not write the answer: {e}")))?;
        Ok(Whole {
            status: http::StatusCode::OK,
            content_type: None,
            json: Bytes::from(json),
            usage: Some(usage),
        })
    }

    /// Starts an attempt: its tokens, paced, with faults drawn for it.
    fn cook(&self, request: &ChatRequest, model: &str) -> (Cooking, Order) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        let prompt = request.prompt();
        // A bug in the line cook, on demand, with every permit of the request taken: the catch
        // in `App::handle` turns it into a 500, and unwinding hands every permit back.
        if let Some(trigger) = &self.panic_prompt
            && prompt.ends_with(trigger.as_str())
        {
            panic!("the line cook dropped the pan (panic prompt)");
        }
        let max_tokens = request.max_tokens.map(|n| n.get());
        let n = self.tokens.min(max_tokens.unwrap_or(u32::MAX));
        let stall = self.fault(&self.faults.stall);
        let fail = self.fault(&self.faults.fail);
        // A mid-stream failure comes after the first token, at a drawn position.
        let fail_at = (n > 1 && self.fault(&self.faults.mid_stream))
            .then(|| 1 + (self.draw() * f64::from(n - 1)) as u32);
        let cooking = Cooking {
            words: Words::new(&prompt, n),
            next: 0,
            ttft: self.ttft,
            interval: self.token_interval,
            stall,
            fail,
            fail_at,
            timer: None,
            armed: false,
            over: false,
        };
        let order = Order {
            id: format!("chatcmpl-{:032x}", random_bits()),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model: model.to_owned(),
            prompt_tokens: request.prompt_tokens(),
            max_tokens,
        };
        (cooking, order)
    }
}

/// What every chunk of an answer repeats, and what decides its end.
#[derive(Debug)]
struct Order {
    id: String,
    created: u64,
    model: String,
    prompt_tokens: u32,
    max_tokens: Option<u32>,
}

impl Order {
    /// `length` when `max_tokens` cut the answer, else `stop`.
    fn finish_reason(&self, completion_tokens: u32) -> FinishReason {
        match self.max_tokens {
            Some(max) if completion_tokens >= max => FinishReason::Length,
            _ => FinishReason::Stop,
        }
    }
}

/// Where a streamed answer stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// The role chunk goes out with the first token (or the end, for an empty answer).
    Role,
    Content,
    Usage,
    Done,
    Over,
}

/// What the role chunk holds back.
#[derive(Clone, Copy, Debug)]
enum Held {
    Word(&'static str),
    End,
}

/// The chunks of a streamed answer, from its tokens.
struct Serving {
    cooking: Cooking,
    writer: ChunkWriter,
    phase: Phase,
    /// The first token, or the end, held back while the role chunk goes out.
    held: Option<Held>,
    completion_tokens: u32,
}

impl Stream for Serving {
    type Item = Result<Cooked, CookError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let chunk = match this.phase {
            Phase::Role | Phase::Content => {
                let next = match this.held.take() {
                    Some(held) => held,
                    None => match ready!(this.cooking.poll_next_unpin(cx)) {
                        Some(Ok(word)) => Held::Word(word),
                        Some(Err(error)) => {
                            this.phase = Phase::Over;
                            return Poll::Ready(Some(Err(error)));
                        }
                        None => Held::End,
                    },
                };
                if this.phase == Phase::Role {
                    this.phase = Phase::Content;
                    this.held = Some(next);
                    let role = Delta {
                        role: Some(Role::Assistant),
                        content: Some(""),
                    };
                    this.writer.choice(role, None)
                } else if let Held::Word(word) = next {
                    this.completion_tokens += 1;
                    let content = Delta {
                        role: None,
                        content: Some(word),
                    };
                    this.writer.choice(content, None)
                } else {
                    this.phase = Phase::Usage;
                    let reason = this.writer.order.finish_reason(this.completion_tokens);
                    this.writer.choice(Delta::default(), Some(reason))
                }
            }
            Phase::Usage => {
                this.phase = Phase::Done;
                let usage = Usage::new(this.writer.order.prompt_tokens, this.completion_tokens);
                this.writer.usage(usage)
            }
            Phase::Done => {
                this.phase = Phase::Over;
                return Poll::Ready(Some(Ok(Cooked::Done)));
            }
            Phase::Over => return Poll::Ready(None),
        };
        Poll::Ready(Some(chunk.map(Cooked::Chunk)))
    }
}

/// Writes an answer's chunks with serde, each into the free end of one buffer and split off
/// it: the buffer is allocated once, and reused whole once the chunks split off it are
/// dropped (the pass window encodes each as it comes).
struct ChunkWriter {
    buf: BytesMut,
    order: Order,
}

impl ChunkWriter {
    /// Room for a chunk of a long word, so that writing one does not grow the buffer.
    const ROOM: usize = 512;

    /// A chunk with one choice.
    fn choice(
        &mut self,
        delta: Delta<'_>,
        finish_reason: Option<FinishReason>,
    ) -> Result<Chunk, CookError> {
        let choices = [ChunkChoice {
            index: 0,
            delta,
            finish_reason,
        }];
        self.write(&choices, None)
    }

    /// The usage chunk: no choice.
    fn usage(&mut self, usage: Usage) -> Result<Chunk, CookError> {
        self.write(&[], Some(usage))
    }

    fn write(
        &mut self,
        choices: &[ChunkChoice<'_>],
        usage: Option<Usage>,
    ) -> Result<Chunk, CookError> {
        let chunk = ChatCompletionChunk {
            id: &self.order.id,
            object: ChatCompletionChunk::OBJECT,
            created: self.order.created,
            model: &self.order.model,
            choices,
            usage,
        };
        self.buf.reserve(Self::ROOM);
        serde_json::to_writer((&mut self.buf).writer(), &chunk)
            .map_err(|e| CookError::failed(format!("could not write a chunk: {e}")))?;
        Ok(Chunk {
            json: self.buf.split().freeze(),
            usage,
            usage_only: choices.is_empty(),
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
    type Item = &'static str;

    fn next(&mut self) -> Option<&'static str> {
        self.left = self.left.checked_sub(1)?;
        let word = WORDS[(splitmix(&mut self.state) % WORDS.len() as u64) as usize];
        let first = std::mem::replace(&mut self.first, false);
        Some(if first { &word[1..] } else { word })
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
    type Item = Result<&'static str, CookError>;

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
                return Poll::Ready(Some(Err(CookError::failed(
                    "injected failure before the first token",
                ))));
            }
        }
        if this.fail_at == Some(this.next) {
            this.over = true;
            return Poll::Ready(Some(Err(CookError::failed("injected failure mid-stream"))));
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
