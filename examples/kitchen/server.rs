//! The server: hyper 1.x through hyper-util's auto builder (HTTP/1.1 and h2c), every
//! connection a task of the brigade-cancel `Shutdown`, shut down gracefully.
//!
//! On shutdown the accept loop stops, every connection is told to finish
//! (`graceful_shutdown`), `/readyz` turns 503, open streams get the grace period, then the
//! shutdown scope is cancelled and each stream ends with a final SSE error event, so no open
//! stream holds the shutdown forever.
//!
//! A client that connects and dawdles holds a socket and a task, so the server bounds it:
//!
//! - **Header-read timeout** (`--header-read-timeout-ms`, 10 s). hyper enforces its HTTP/1.1
//!   `header_read_timeout` only when the builder has a timer (without one the setting is
//!   silently off), so the builder gets hyper-util's `TokioTimer`, which reads tokio's clock.
//!   hyper's timer covers each request head once the connection is known to be HTTP/1.1,
//!   including the wait for the next request on an idle keep-alive connection. It does not
//!   cover the first bytes, which hyper-util's auto builder reads to tell HTTP/1.1 from h2c
//!   (a client that sends nothing waits there forever), nor h2c: so each connection must
//!   also deliver its first request head within the same timeout, or it is closed.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use brigade_cancel::Shutdown;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::routes::App;

/// A server started by [`start`].
#[derive(Debug)]
pub(crate) struct Running {
    pub(crate) addr: SocketAddr,
    pub(crate) app: Arc<App>,
}

/// Spawns futures of hyper's HTTP/2 streams as tasks of the shutdown, so it joins them too.
#[derive(Clone, Debug)]
struct TrackedExecutor(Shutdown);

impl<F> hyper::rt::Executor<F> for TrackedExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        self.0.spawn(future);
    }
}

/// Binds `config.addr` (port 0 for an ephemeral port) and serves until the shutdown.
pub(crate) async fn start(config: Config) -> std::io::Result<Running> {
    let listener = TcpListener::bind(config.addr).await?;
    let addr = listener.local_addr()?;
    let app = Arc::new(App::new(config).map_err(std::io::Error::other)?);
    app.limits.connect().await;
    let shutdown = app.shutdown.clone();
    shutdown.spawn(accept(listener, Arc::clone(&app)));
    Ok(Running { addr, app })
}

async fn accept(listener: TcpListener, app: Arc<App>) {
    let shutdown = app.shutdown.clone();
    let header_read_timeout = app.config.header_read_timeout();
    let mut builder = auto::Builder::new(TrackedExecutor(shutdown.clone()));
    // hyper enforces the header-read timeout only with a timer: without one it is silently off.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.draining() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait a little, keep serving.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = Arc::clone(&app);
        let builder = builder.clone();
        let shutdown_conn = shutdown.clone();
        shutdown.spawn(async move {
            // Set when the first request head has been read.
            let first_request = Arc::new(AtomicBool::new(false));
            let seen = Arc::clone(&first_request);
            let service = service_fn(move |request| {
                seen.store(true, Ordering::Relaxed);
                let app = Arc::clone(&app);
                async move { Ok::<_, Infallible>(app.handle(request, peer).await) }
            });
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(connection);
            // hyper's timer starts once the connection is known to be HTTP/1.1; before that,
            // while hyper-util reads the first bytes to tell HTTP/1.1 from h2c (a client that
            // sends nothing, or part of the h2c preface), and on h2c, nothing bounds the wait.
            // So the first request head is due within the same timeout, whatever the protocol.
            let first_deadline = tokio::time::sleep(header_read_timeout);
            tokio::pin!(first_deadline);
            let mut awaiting_first = true;
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(error) = result {
                            tracing::debug!(%error, %peer, "connection ended with an error");
                        }
                        return;
                    }
                    () = first_deadline.as_mut(), if awaiting_first => {
                        if !first_request.load(Ordering::Relaxed) {
                            tracing::debug!(%peer, "no request head within the header-read timeout; closed");
                            return;
                        }
                        awaiting_first = false;
                    }
                    () = shutdown_conn.draining() => break,
                }
            }
            connection.as_mut().graceful_shutdown();
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
        });
    }
    tracing::info!("stopped accepting connections");
}
