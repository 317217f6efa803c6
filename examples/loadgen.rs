//! A load generator for OpenAI-compatible chat servers (the kitchen, `bare_stream`, any other).
//!
//! It keeps `--concurrency` chat requests open at once, each worker on its own HTTP/1.1
//! connection, for `--duration-secs` seconds or `--requests` requests, and reports requests per
//! second, time to first token (p50, p99, p99.9), tokens per second, the peak of open streams and the
//! errors by status. Every stream is checked: it must end with `data: [DONE]` and carry as many
//! content chunks as its usage chunk reports. With `--cpu-pid`, it also reports the CPU time
//! the given processes spent during the run, per token (per request with `--no-stream`), from
//! `/proc/PID/stat` (Linux).
//!
//! **Surge mode** (`--surge`): a 503 or a 429 is a refusal, not an error. Refusals are counted
//! with their latency (p50, p99) apart from the admitted streams, whose time to first token and
//! gaps between tokens (p50, p99) are reported alone. A refused client asks again at once on the
//! same connection (a new one if the server closed it), or, with `--honour-retry-after`, after
//! the answer's `Retry-After`. `--cpu-pid` then also reports each process's peak resident size
//! during the run (`VmRSS`, sampled every 100 ms):
//!
//! ```text
//! cargo run --release --example loadgen -- --url http://127.0.0.1:8080 --concurrency 2000 --surge --duration-secs 20
//! ```
//!
//! It drives any OpenAI-compatible server the same way: the kitchen, `bare_stream`, or the
//! kitchen in front of `bare_stream` (the gateway-overhead bench in `docs/benchmarks.md`):
//!
//! ```text
//! cargo run --release --example loadgen -- --url http://127.0.0.1:8080 --concurrency 1000 --duration-secs 20
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use brigade_sse::EventStream;
use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Opens concurrent chat requests against an OpenAI-compatible server and reports on them.
#[derive(Clone, Debug, Parser)]
#[command(name = "loadgen")]
struct Args {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Requests open at once (one connection each).
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// How long to run, in seconds (ignored with `--requests`).
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Stop after this many requests in all, instead of after a duration.
    #[arg(long)]
    requests: Option<u64>,
    /// `max_tokens` of each request.
    #[arg(long, default_value_t = 64)]
    max_tokens: u32,
    /// The model asked for.
    #[arg(long, default_value = "kitchen-mock")]
    model: String,
    /// A process whose CPU time to report, per token (repeatable): the server, the upstream.
    #[arg(long = "cpu-pid", value_name = "PID")]
    cpu_pids: Vec<u32>,
    /// Ask for a JSON answer instead of a stream.
    #[arg(long)]
    no_stream: bool,
    /// Bearer key.
    #[arg(long)]
    api_key: Option<String>,
    /// Spread the connections' start over this many milliseconds.
    #[arg(long, default_value_t = 1000)]
    ramp_ms: u64,
    /// Surge mode: 503 and 429 answers are refusals, reported apart; the client asks again.
    #[arg(long)]
    surge: bool,
    /// In surge mode, wait the refusal's `Retry-After` before asking again (else at once).
    #[arg(long, requires = "surge")]
    honour_retry_after: bool,
}

#[derive(Default)]
struct Shared {
    started: AtomicU64,
    open: AtomicUsize,
    peak: AtomicUsize,
}

#[derive(Default)]
struct WorkerReport {
    ok: u64,
    tokens: u64,
    ttft: Vec<Duration>,
    /// Time between consecutive tokens of a stream.
    gaps: Vec<Duration>,
    /// Surge mode: refusals' latency, and their count by status.
    refusal_latency: Vec<Duration>,
    refusals: BTreeMap<u16, u64>,
    /// Refusals that closed their connection.
    closed: u64,
    connections: u64,
    errors: BTreeMap<String, u64>,
}

impl WorkerReport {
    fn error(&mut self, what: impl Into<String>) {
        *self.errors.entry(what.into()).or_default() += 1;
    }
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(run(args));
}

async fn run(args: Args) {
    let uri: Uri = args.url.parse().expect("--url must be a URL");
    let authority = uri
        .authority()
        .expect("--url must have a host and port")
        .to_string();
    let shared = Arc::new(Shared::default());
    let cpu_before: Vec<Option<Duration>> =
        args.cpu_pids.iter().map(|&pid| cpu_time(pid)).collect();
    let peak_rss: Arc<Vec<AtomicU64>> =
        Arc::new(args.cpu_pids.iter().map(|_| AtomicU64::new(0)).collect());
    let sampler = tokio::spawn({
        let (pids, peak_rss) = (args.cpu_pids.clone(), Arc::clone(&peak_rss));
        async move {
            loop {
                for (pid, peak) in pids.iter().zip(peak_rss.iter()) {
                    if let Some(kib) = rss_kib(*pid) {
                        peak.fetch_max(kib, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let start = Instant::now();
    let until = start + Duration::from_secs(args.duration_secs);
    let body = Bytes::from(
        serde_json::json!({
            "model": args.model,
            "messages": [{ "role": "user", "content": "Tell me about the kitchen brigade." }],
            "max_tokens": args.max_tokens,
            "stream": !args.no_stream,
            "stream_options": if args.no_stream { serde_json::Value::Null } else { serde_json::json!({ "include_usage": true }) },
        })
        .to_string(),
    );
    let workers: Vec<_> = (0..args.concurrency)
        .map(|i| {
            let args = args.clone();
            let shared = Arc::clone(&shared);
            let authority = authority.clone();
            let body = body.clone();
            let delay = Duration::from_millis(args.ramp_ms) * u32::try_from(i).unwrap_or(0)
                / u32::try_from(args.concurrency.max(1)).unwrap_or(1);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                worker(args, shared, authority, body, until).await
            })
        })
        .collect();
    let mut total = WorkerReport::default();
    for worker in workers {
        let report = worker.await.expect("a worker panicked");
        total.ok += report.ok;
        total.tokens += report.tokens;
        total.ttft.extend(report.ttft);
        total.gaps.extend(report.gaps);
        total.refusal_latency.extend(report.refusal_latency);
        for (status, n) in report.refusals {
            *total.refusals.entry(status).or_default() += n;
        }
        total.closed += report.closed;
        total.connections += report.connections;
        for (what, n) in report.errors {
            *total.errors.entry(what).or_default() += n;
        }
    }
    sampler.abort();
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_after: Vec<Option<Duration>> = args.cpu_pids.iter().map(|&pid| cpu_time(pid)).collect();
    total.ttft.sort_unstable();
    total.gaps.sort_unstable();
    total.refusal_latency.sort_unstable();
    let ms = |sorted: &[Duration], p: f64| {
        if sorted.is_empty() {
            0.0
        } else {
            let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
            sorted[i].as_secs_f64() * 1000.0
        }
    };
    let errors: u64 = total.errors.values().sum();
    println!("url            {}", args.url);
    println!(
        "mode           {} x{} for {:.1} s",
        if args.no_stream { "json" } else { "stream" },
        args.concurrency,
        elapsed
    );
    println!("requests       {} ok, {} errors", total.ok, errors);
    println!("requests/s     {:.1}", total.ok as f64 / elapsed);
    println!(
        "{}   p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms",
        if args.no_stream {
            "latency    "
        } else {
            "ttft       "
        },
        ms(&total.ttft, 0.50),
        ms(&total.ttft, 0.99),
        ms(&total.ttft, 0.999)
    );
    if !args.no_stream {
        println!(
            "token gap      p50 {:.1} ms, p99 {:.1} ms",
            ms(&total.gaps, 0.50),
            ms(&total.gaps, 0.99)
        );
    }
    if args.surge {
        let refused: u64 = total.refusals.values().sum();
        let by_status: Vec<String> = total
            .refusals
            .iter()
            .map(|(status, n)| format!("{status}: {n}"))
            .collect();
        println!(
            "refusals       {refused} ({}), {:.0}/s, {} closed their connection",
            by_status.join(", "),
            refused as f64 / elapsed,
            total.closed
        );
        println!(
            "refusal time   p50 {:.2} ms, p99 {:.2} ms",
            ms(&total.refusal_latency, 0.50),
            ms(&total.refusal_latency, 0.99)
        );
        println!("connections    {} opened", total.connections);
    }
    println!("tokens/s       {:.0}", total.tokens as f64 / elapsed);
    println!("peak open      {}", shared.peak.load(Ordering::Relaxed));
    for ((pid, before), after) in args.cpu_pids.iter().zip(&cpu_before).zip(&cpu_after) {
        let (Some(before), Some(after)) = (before, after) else {
            println!("cpu pid {pid:<6} unreadable (/proc/{pid}/stat)");
            continue;
        };
        let spent = after.saturating_sub(*before);
        let (per, unit) = if args.no_stream {
            (total.ok, "request")
        } else {
            (total.tokens, "token")
        };
        println!(
            "cpu pid {pid:<6} {:.2} s, {:.1} us per {unit}",
            spent.as_secs_f64(),
            spent.as_secs_f64() * 1e6 / per.max(1) as f64
        );
    }
    for (pid, peak) in args.cpu_pids.iter().zip(peak_rss.iter()) {
        println!(
            "rss pid {pid:<6} peak {:.1} MiB",
            peak.load(Ordering::Relaxed) as f64 / 1024.0
        );
    }
    for (what, n) in &total.errors {
        println!("error          {what}: {n}");
    }
}

async fn worker(
    args: Args,
    shared: Arc<Shared>,
    authority: String,
    body: Bytes,
    until: Instant,
) -> WorkerReport {
    let mut report = WorkerReport::default();
    let mut sender = None;
    loop {
        if let Some(limit) = args.requests {
            if shared.started.fetch_add(1, Ordering::Relaxed) >= limit {
                break;
            }
        } else if Instant::now() >= until {
            break;
        }
        if sender.is_none() {
            match connect(&authority).await {
                Ok(s) => {
                    report.connections += 1;
                    sender = Some(s);
                }
                Err(e) => {
                    report.error(format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        let mut request = Request::post("/v1/chat/completions")
            .header("host", authority.as_str())
            .header("content-type", "application/json");
        if let Some(key) = &args.api_key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let request = request.body(Full::new(body.clone())).expect("a request");
        let sent = Instant::now();
        let open = shared.open.fetch_add(1, Ordering::Relaxed) + 1;
        shared.peak.fetch_max(open, Ordering::Relaxed);
        let outcome = one(s, request, sent, &args, &mut report.gaps).await;
        shared.open.fetch_sub(1, Ordering::Relaxed);
        match outcome {
            Ok(Answer::Served { tokens, ttft }) => {
                report.ok += 1;
                report.tokens += tokens;
                report.ttft.push(ttft);
            }
            Ok(Answer::Refused {
                status,
                closed,
                retry_after,
            }) => {
                report.refusal_latency.push(sent.elapsed());
                *report.refusals.entry(status).or_default() += 1;
                if closed {
                    report.closed += 1;
                    sender = None;
                }
                if let Some(wait) = retry_after.filter(|_| args.honour_retry_after) {
                    let resume = Instant::now() + wait;
                    tokio::time::sleep_until(resume.min(until).into()).await;
                }
            }
            Err(what) => {
                report.error(what);
                sender = None;
            }
        }
    }
    report
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(authority: &str) -> std::io::Result<Sender> {
    let stream = TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// How a request was answered.
enum Answer {
    /// Served: its tokens and its time to first token (or to the whole answer).
    Served { tokens: u64, ttft: Duration },
    /// Surge mode: refused with a 503 or a 429.
    Refused {
        status: u16,
        /// The server closed the connection with the refusal (`Connection: close`).
        closed: bool,
        retry_after: Option<Duration>,
    },
}

/// One request; a stream's gaps between tokens go to `gaps`.
async fn one(
    sender: &mut Sender,
    request: Request<Full<Bytes>>,
    sent: Instant,
    args: &Args,
    gaps: &mut Vec<Duration>,
) -> Result<Answer, String> {
    let no_stream = args.no_stream;
    sender
        .ready()
        .await
        .map_err(|e| format!("connection: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    if args.surge && matches!(status.as_u16(), 429 | 503) {
        let headers = response.headers();
        let closed = headers
            .get(http::header::CONNECTION)
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"close"));
        let retry_after = headers
            .get(http::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
            .map(Duration::from_secs);
        let _ = response.into_body().collect().await;
        return Ok(Answer::Refused {
            status: status.as_u16(),
            closed,
            retry_after,
        });
    }
    if !status.is_success() {
        let _ = response.into_body().collect().await;
        return Err(format!("status {}", status.as_u16()));
    }
    if no_stream {
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        let answer: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|_| "invalid JSON answer".to_owned())?;
        let tokens = answer["usage"]["completion_tokens"].as_u64().unwrap_or(0);
        return Ok(Answer::Served {
            tokens,
            ttft: sent.elapsed(),
        });
    }
    let mut events = EventStream::from_body(response.into_body());
    let mut ttft = None;
    let mut tokens = 0u64;
    let mut usage = None;
    let mut done = false;
    let mut last_token: Option<Instant> = None;
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| format!("stream broke: {e}"))?;
        // The body is read to its end, past `[DONE]`, as a client that keeps its connection
        // must: dropped before its last chunk, the connection cannot carry the next request.
        if done {
            return Err("an event after [DONE]".to_owned());
        }
        if event.data() == "[DONE]" {
            done = true;
            continue;
        }
        let chunk: serde_json::Value =
            serde_json::from_str(event.data()).map_err(|_| "invalid chunk".to_owned())?;
        if chunk.get("error").is_some() {
            return Err(format!(
                "stream error event: {}",
                chunk["error"]["code"].as_str().unwrap_or("?")
            ));
        }
        if let Some(n) = chunk["usage"]["completion_tokens"].as_u64() {
            usage = Some(n);
        }
        if chunk["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
        {
            tokens += 1;
            let now = Instant::now();
            if let Some(last) = last_token.replace(now) {
                gaps.push(now - last);
            }
            ttft.get_or_insert_with(|| now - sent);
        }
    }
    if !done {
        return Err("stream ended without [DONE]".to_owned());
    }
    if usage.is_some_and(|n| n != tokens) {
        return Err("token count differs from usage".to_owned());
    }
    Ok(Answer::Served {
        tokens,
        ttft: ttft.unwrap_or_else(|| sent.elapsed()),
    })
}

/// A process's resident size now, in KiB, from `/proc/PID/status` (Linux).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The CPU time (user and system) a process has used so far, from `/proc/PID/stat`, in clock
/// ticks of 10 ms (Linux's `USER_HZ`, 100 on every architecture it exports to user space).
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}
