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
//! - **Connection cap** (`--max-connections`, 6,144). Each connection's socket holds a permit
//!   of a semaphore (so a WebSocket holds its place until it ends, not until hyper hands the
//!   socket over); with none left the accept loop waits for one before it accepts again. It
//!   stops accepting rather than accepting and closing at once: waiting costs nothing per
//!   connection attempt, whereas accept-and-close spends an accept, a file descriptor and a
//!   close on each one, flat out under a flood. Connections that arrive meanwhile wait in the
//!   kernel's listen backlog and are served as soon as a connection ends, so a short burst
//!   over the cap is delayed, not refused; a client that cannot wait has its own connect
//!   timeout. The cap counts connections, not requests: h2c multiplexes streams on one.

use std::convert::Infallible;
use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use brigade_cancel::Shutdown;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
    if let Some(file) = &config.api_keys_file {
        tracing::info!(path = %file.path().display(), keys = file.len(), "API keys read");
    }
    let app = Arc::new(App::new(config).await.map_err(std::io::Error::other)?);
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
    // One permit per open connection, held by its socket (`Counted`).
    let max_connections = app.config.max_connections;
    let slots = Arc::new(Semaphore::new(
        usize::try_from(max_connections)
            .map_or(Semaphore::MAX_PERMITS, |n| n.min(Semaphore::MAX_PERMITS)),
    ));
    // Whether the loop has waited for a permit since one was last free: logged once a spell.
    let mut capped = false;
    loop {
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => {
                capped = false;
                slot
            }
            Err(_) => {
                if !capped {
                    capped = true;
                    tracing::warn!(
                        max_connections,
                        "connection cap reached; not accepting until a connection closes"
                    );
                }
                tokio::select! {
                    () = shutdown.draining() => break,
                    slot = Arc::clone(&slots).acquire_owned() => match slot {
                        Ok(slot) => slot,
                        // Never closed: the loop owns the semaphore.
                        Err(_) => break,
                    },
                }
            }
        };
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
        let stream = Counted {
            stream,
            _slot: slot,
        };
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

/// A connection's socket with its permit of the connection cap: the permit returns when the
/// socket is closed, which for a connection upgraded to a WebSocket is when the WebSocket ends
/// (the upgraded connection owns the socket), not when hyper hands it over.
#[derive(Debug)]
struct Counted {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
