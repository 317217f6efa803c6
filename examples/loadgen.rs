//! A load generator for OpenAI-compatible chat servers (the kitchen, `bare_stream`, any other).
//!
//! It keeps `--concurrency` chat requests open at once, each worker on its own HTTP/1.1
//! connection, for `--duration-secs` seconds or `--requests` requests, and reports requests per
//! second, time to first token (p50, p99), tokens per second, the peak of open streams and the
//! errors by status. Every stream is checked: it must end with `data: [DONE]` and carry as many
//! content chunks as its usage chunk reports. With `--cpu-pid`, it also reports the CPU time
//! the given processes spent during the run, per token (per request with `--no-stream`), from
//! `/proc/PID/stat` (Linux).
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
        for (what, n) in report.errors {
            *total.errors.entry(what).or_default() += n;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_after: Vec<Option<Duration>> = args.cpu_pids.iter().map(|&pid| cpu_time(pid)).collect();
    total.ttft.sort_unstable();
    let pct = |p: f64| {
        if total.ttft.is_empty() {
            Duration::ZERO
        } else {
            let i = ((total.ttft.len() as f64 * p).ceil() as usize).clamp(1, total.ttft.len()) - 1;
            total.ttft[i]
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
        "{}   p50 {:.1} ms, p99 {:.1} ms",
        if args.no_stream {
            "latency    "
        } else {
            "ttft       "
        },
        pct(0.50).as_secs_f64() * 1000.0,
        pct(0.99).as_secs_f64() * 1000.0
    );
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
                Ok(s) => sender = Some(s),
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
        let outcome = one(s, request, sent, args.no_stream).await;
        shared.open.fetch_sub(1, Ordering::Relaxed);
        match outcome {
            Ok((tokens, ttft)) => {
                report.ok += 1;
                report.tokens += tokens;
                report.ttft.push(ttft);
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

/// One request: its tokens and its time to first token (or to the whole answer).
async fn one(
    sender: &mut Sender,
    request: Request<Full<Bytes>>,
    sent: Instant,
    no_stream: bool,
) -> Result<(u64, Duration), String> {
    sender
        .ready()
        .await
        .map_err(|e| format!("connection: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status();
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
        return Ok((tokens, sent.elapsed()));
    }
    let mut events = EventStream::from_body(response.into_body());
    let mut ttft = None;
    let mut tokens = 0u64;
    let mut usage = None;
    let mut done = false;
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
            ttft.get_or_insert_with(|| sent.elapsed());
        }
    }
    if !done {
        return Err("stream ended without [DONE]".to_owned());
    }
    if usage.is_some_and(|n| n != tokens) {
        return Err("token count differs from usage".to_owned());
    }
    Ok((tokens, ttft.unwrap_or_else(|| sent.elapsed())))
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
