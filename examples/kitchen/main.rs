//! The kitchen: an OpenAI-compatible hyper server that composes every Brigade crate, on a mock
//! model or as a gateway to an OpenAI-compatible upstream (`--upstream URL`, `http://` or
//! `https://`).
//!
//! `cargo run --release --example kitchen -- --help` lists every flag. Then:
//!
//! ```text
//! curl -N localhost:8080/v1/chat/completions -H 'content-type: application/json' \
//!   -d '{"model":"kitchen-mock","messages":[{"role":"user","content":"hi"}],"stream":true}'
//! ```
//!
//! As a gateway, here to `bare_stream` (`cargo run --release --example bare_stream`):
//!
//! ```text
//! cargo run --release --example kitchen -- --upstream http://127.0.0.1:8081
//! ```
//!
//! `docs/architecture.md` follows one request through the files.

mod admission;
mod api;
mod auth;
mod chat;
mod config;
mod cook;
mod error;
mod fanout;
mod generation;
mod ids;
mod jobs;
mod limits;
mod metrics;
mod mock;
mod passthrough;
mod pool;
mod routes;
mod server;
mod upstream;
mod upstream_spec;
mod ws;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let config = config::Config::parse();
    // One log line per request, in tracing-subscriber's default format without colours,
    // formatted on the request's task and written by a writer thread, so a request never waits
    // on a write(2) (stdout writes each line on its own: a 64 KiB buffer in front, to write
    // lines that pile up at once, changed nothing measurable under the surge benchmark). The
    // guard flushes what is left at exit.
    let (writer, _flush_on_exit) = tracing_appender::non_blocking(std::io::stdout());
    tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(false)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "could not start the runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let running = match server::start(config).await {
            Ok(running) => running,
            Err(error) => {
                tracing::error!(%error, "could not start the kitchen");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(addr = %running.addr, line_cook = running.app.line_cook(), "kitchen open");
        let shutdown = running.app.shutdown.clone();
        shutdown.listen_for_signals();
        let report = shutdown.drained().await;
        running.app.jobs.closed().await;
        tracing::info!(
            outcome = ?report.outcome(),
            elapsed = ?report.elapsed(),
            still_running = report.still_running(),
            "kitchen closed"
        );
        ExitCode::SUCCESS
    })
}
