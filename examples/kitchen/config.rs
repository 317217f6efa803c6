//! Every setting of the kitchen, as command-line flags (`--help` lists them).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

/// An OpenAI-compatible chat server that composes every Brigade crate.
///
/// By default the line cook is a built-in mock model; `--upstream URL` proxies to a real
/// OpenAI-compatible server instead.
#[derive(Clone, Debug, Parser)]
#[command(name = "kitchen", version)]
pub(crate) struct Config {
    /// Address to listen on (HTTP/1.1 and h2c).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub(crate) addr: SocketAddr,

    /// Time a client has to send a request's head, in milliseconds, from 1 to 3,600,000: a new
    /// connection's first request (HTTP/1.1 or h2c), and each later request head on HTTP/1.1
    /// (so an idle keep-alive connection is closed after it too). A connection that has not
    /// sent it by then is closed.
    #[arg(long, default_value_t = 10_000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub(crate) header_read_timeout_ms: u64,

    /// Time a client has to send a request's whole body once its head is read, in
    /// milliseconds, from 1 to 3,600,000; a body still arriving then is answered 408 and its
    /// connection closed, so a client that trickles its body cannot hold a task forever.
    #[arg(long, default_value_t = 10_000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub(crate) body_read_timeout_ms: u64,

    /// Most connections open at once, from 1. At the cap the server stops accepting until a
    /// connection closes: new ones wait in the kernel's listen backlog. The default is the
    /// 4,096 streams of `--max-streams` and half as many again, for queued requests, probes,
    /// metrics, WebSockets and idle keep-alive connections. Each connection holds a file
    /// descriptor: the process's limit (`ulimit -n`) should be above the cap.
    #[arg(long, default_value_t = 6144, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_connections: u32,

    /// Proxy to this OpenAI-compatible server instead of the mock: its root or its `/v1` base,
    /// over `http://` or `https://` (e.g. `http://127.0.0.1:8000`, `https://api.openai.com/v1`).
    /// Requests go to it as the client sent them; its answers come back as it wrote them.
    ///
    /// Repeatable: the upstreams form a pool, each attempt picks one (by latency and load),
    /// and an attempt that fails before its first token goes to another. Options follow the
    /// URL, comma-separated: `id=NAME` (in `/metrics`; default the URL's host:port),
    /// `weight=W` (its share of its tier's picks; 1), `tier=T` (0 first: a higher tier answers
    /// only while every lower one is out; 0), `concurrency=N|adaptive` (at most N calls at
    /// once, or a limit found from its latency and drops; none), `key-env=VAR` (its bearer key,
    /// from that environment variable; default `--upstream-key`), `alias=NAME:MODEL`
    /// (repeatable; default `--model-alias`). E.g.
    /// `--upstream 'http://10.0.0.1:8000,weight=2,concurrency=adaptive'
    /// --upstream 'https://api.example.com/v1,tier=1,key-env=PROVIDER_KEY,alias=fast:gpt-4o-mini'`.
    #[arg(long = "upstream", value_name = "URL[,OPTION=VALUE]...",
          value_parser = crate::upstream_spec::UpstreamSpec::parse)]
    pub(crate) upstreams: Vec<crate::upstream_spec::UpstreamSpec>,

    /// A PEM file of CA certificates that an `https://` upstream's certificate may chain to,
    /// trusted beside the system's roots (a private CA).
    #[arg(long, value_name = "PEM")]
    pub(crate) upstream_ca_file: Option<std::path::PathBuf>,

    /// `NAME=UPSTREAM_MODEL`: a model clients may ask for as NAME, sent to the line cook as
    /// UPSTREAM_MODEL, and listed by `/v1/models` (repeatable).
    #[arg(long = "model-alias", value_name = "NAME=UPSTREAM_MODEL",
          value_parser = crate::cook::ModelAlias::parse)]
    pub(crate) model_aliases: Vec<crate::cook::ModelAlias>,

    /// Upstream: time to open a connection (TCP), in milliseconds, from 1 to 3,600,000.
    #[arg(long, default_value_t = 5_000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub(crate) upstream_connect_timeout_ms: u64,

    /// Upstream: time an attempt has for the first chunk of a streamed answer (connection, TLS,
    /// head and first event), in milliseconds, from 1 to 86,400,000. A stalled attempt is cut
    /// and retried, within the request's deadline. Raise it for models that think long before
    /// their first token. A whole (non-streamed) answer comes when it is done, so only the
    /// deadline bounds it.
    #[arg(long, default_value_t = 60_000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub(crate) upstream_first_chunk_timeout_ms: u64,

    /// Upstream: longest silence of a streamed answer after its first chunk (no bytes at all: an
    /// upstream's keep-alive comment breaks it), and the longest wait for a whole answer's body
    /// after its head, in milliseconds, from 1 to 86,400,000. After it a stream ends with an
    /// error event.
    #[arg(long, default_value_t = 60_000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub(crate) upstream_idle_timeout_ms: u64,

    /// Bearer key sent to the upstream. The command line is visible to every user of the
    /// machine (`ps`): prefer `KITCHEN_UPSTREAM_KEY`, read when this flag is not given.
    #[arg(
        long,
        value_name = "KEY",
        env = "KITCHEN_UPSTREAM_KEY",
        hide_env_values = true
    )]
    pub(crate) upstream_key: Option<crate::upstream_spec::Secret>,

    /// An accepted API key (repeatable, or comma-separated). The command line is visible to
    /// every user of the machine (`ps`): prefer `KITCHEN_API_KEYS`, read when this flag is not
    /// given, or `--api-keys-file`. With no key from any source, no key is required and the
    /// limits are per client IP.
    #[arg(long = "api-key", value_name = "KEY", env = "KITCHEN_API_KEYS", hide_env_values = true,
          value_delimiter = ',', value_parser = crate::auth::ApiKey::parse)]
    pub(crate) api_keys: Vec<crate::auth::ApiKey>,

    /// A file of accepted API keys, one per line (`#` starts a comment), read at start; they
    /// are accepted with those of `--api-key` or `KITCHEN_API_KEYS`.
    #[arg(long, value_name = "PATH", value_parser = crate::auth::KeyFile::read)]
    pub(crate) api_keys_file: Option<crate::auth::KeyFile>,

    /// Requests per minute per key (0: unlimited).
    #[arg(long, default_value_t = 600)]
    pub(crate) requests_per_min: u32,

    /// Tokens per minute per key, reserved from `max_tokens` and settled with the real count
    /// (0: unlimited).
    #[arg(long, default_value_t = 200_000)]
    pub(crate) tokens_per_min: u32,

    /// Streams generating at once (the bulkhead).
    #[arg(long, default_value_t = 4096)]
    pub(crate) max_streams: usize,

    /// Requests that may wait for a stream slot; beyond it, 503.
    #[arg(long, default_value_t = 256)]
    pub(crate) queue_size: usize,

    /// Most requests one client (its API key, or its address without keys) may have waiting
    /// for a stream slot; beyond it, 503 at once, so one client's flood cannot fill the queue
    /// (0: no bound but `--queue-size`).
    #[arg(long, default_value_t = 32)]
    pub(crate) queue_per_key: usize,

    /// Connection-level shedding: once refusals (429 and 503) come faster than this many a
    /// second (a burst of as many allowed), each further refusal closes its connection
    /// (`Connection: close`), so a client that asks again at once pays a new connection
    /// instead of the server's time; 0 closes on every refusal. A refusal made before its body
    /// was read always closes (the connection cannot carry another request).
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub(crate) shed_refusals_per_sec: u32,

    /// How long a request may wait for a stream slot, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub(crate) queue_timeout_ms: u64,

    /// `max_tokens` assumed for the token-limit reservation when a request gives none.
    #[arg(long, default_value_t = 256)]
    pub(crate) default_max_tokens: u32,

    /// Mock: time to first token, in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub(crate) ttft_ms: u64,

    /// Mock: time between tokens, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub(crate) token_ms: u64,

    /// Mock: tokens per answer (capped by `max_tokens`).
    #[arg(long, default_value_t = 64)]
    pub(crate) tokens: u32,

    /// Mock: share of attempts that fail before the first token, in [0, 1].
    #[arg(long, default_value_t = 0.0)]
    pub(crate) fail_rate: f64,

    /// Mock: share of answers that fail after the first token, in [0, 1].
    #[arg(long, default_value_t = 0.0)]
    pub(crate) mid_stream_fail_rate: f64,

    /// Mock: share of attempts that stall before the first token until cancelled, in [0, 1].
    #[arg(long, default_value_t = 0.0)]
    pub(crate) stall_rate: f64,

    /// Seed of the fault injection and of the retry jitter.
    #[arg(long, default_value_t = 7)]
    pub(crate) seed: u64,

    /// Mock: panic in the line cook when the prompt ends with this text (to check that a
    /// panic yields a 500 and leaks nothing).
    #[arg(long, hide = true)]
    pub(crate) panic_prompt: Option<String>,

    /// Attempts per request before the first token, the first included.
    #[arg(long, default_value_t = 3)]
    pub(crate) max_attempts: u32,

    /// First backoff between attempts, in milliseconds (exponential, jittered).
    #[arg(long, default_value_t = 50)]
    pub(crate) retry_backoff_ms: u64,

    /// Hedge a chat attempt that has no first chunk (or whole answer) after this many
    /// milliseconds: another request goes to another upstream, the first to answer wins and
    /// the other is cancelled. Hedges draw on the retry budget. Off by default.
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub(crate) hedge_after_ms: Option<u64>,

    /// Requests of one attempt in flight at once, the first included, with `--hedge-after-ms`.
    #[arg(long, default_value_t = 2, value_name = "N",
          value_parser = clap::value_parser!(u32).range(2..=16))]
    pub(crate) hedge_max: u32,

    /// Breaker: calls in its window (the mock's breaker, and each upstream's).
    #[arg(long, default_value_t = 100)]
    pub(crate) breaker_window: u32,

    /// Breaker: calls in the window before it may trip.
    #[arg(long, default_value_t = 20)]
    pub(crate) breaker_min_calls: u32,

    /// Breaker: failure rate that trips it, in percent.
    #[arg(long, default_value_t = 50.0)]
    pub(crate) breaker_failure_rate: f64,

    /// Breaker: how long it stays open, in seconds.
    #[arg(long, default_value_t = 30)]
    pub(crate) breaker_open_secs: u64,

    /// Breaker: successful probes that close it.
    #[arg(long, default_value_t = 3)]
    pub(crate) breaker_probes: u32,

    /// Grace period for open streams on shutdown, in seconds.
    #[arg(long, default_value_t = 30)]
    pub(crate) grace_secs: u64,

    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub(crate) body_limit: usize,

    /// Deadline of a request, in seconds (a request may ask for less with
    /// `x-request-timeout-ms`); 0: none unless the request asks. What is left of it goes to an
    /// upstream in `x-request-timeout-ms` with each attempt, so kitchens chain.
    #[arg(long, default_value_t = 300)]
    pub(crate) deadline_secs: u64,

    /// Keep-alive comment after this many idle seconds on a stream.
    #[arg(long, default_value_t = 15)]
    pub(crate) keep_alive_secs: u64,

    /// WebSocket: seconds between the server's pings, from 1 to 86,400. A connection that has
    /// sent nothing (no pong either) by the next ping is closed, and so is one whose write takes
    /// longer.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub(crate) ws_ping_secs: u64,

    /// Keep the per-key rate limits in Redis, shared by every replica (needs the `redis`
    /// feature), e.g. `redis://127.0.0.1:6379/`.
    #[arg(long, value_name = "URL")]
    pub(crate) redis: Option<String>,

    /// What limits while Redis is down: `local` (this process, with the quotas divided by
    /// `--redis-replicas`), `open` (admit everything) or `closed` (refuse with 503).
    #[arg(long, value_enum, default_value_t = RedisFallback::Local)]
    pub(crate) redis_fallback: RedisFallback,

    /// Replicas sharing the Redis limits: a local fallback gives each 1/N of the quotas.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) redis_replicas: u32,

    /// Timeout of each Redis round trip, in milliseconds. A call Redis does not answer in time
    /// is answered by the fallback (three in a row switch to it); a call that waits longer
    /// for its turn is refused with 503 (overloaded).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) redis_timeout_ms: u64,

    #[command(flatten, next_help_heading = "Prep shelf (background jobs)")]
    pub(crate) jobs: crate::jobs::JobsConfig,

    #[command(flatten, next_help_heading = "Fan-out sources")]
    pub(crate) fanout: crate::fanout::FanoutConfig,
}

impl Config {
    /// The time a client has to send a request's head.
    pub(crate) fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    pub(crate) fn grace(&self) -> Duration {
        Duration::from_secs(self.grace_secs)
    }

    /// The WebSocket ping interval, which is also the longest one write may take.
    pub(crate) fn ws_ping(&self) -> Duration {
        Duration::from_secs(self.ws_ping_secs)
    }

    pub(crate) fn deadline(&self) -> Option<Duration> {
        (self.deadline_secs > 0).then(|| Duration::from_secs(self.deadline_secs))
    }
}

/// What limits while Redis is down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum RedisFallback {
    /// This process limits alone, with the quotas divided by the replica count.
    Local,
    /// Admit everything (fail open).
    Open,
    /// Refuse everything with 503 (fail closed).
    Closed,
}
