//! The server: hyper 1.x through hyper-util's auto builder (HTTP/1.1 and h2c), every
//! connection a task of the brigade-cancel `Shutdown`, shut down gracefully.
//!
//! On shutdown the accept loop stops, every connection is told to finish
//! (`graceful_shutdown`), `/readyz` turns 503, open streams get the grace period, then the
//! shutdown scope is cancelled and each stream ends with a final SSE error event, so no open
//! stream holds the shutdown forever.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use brigade_cancel::Shutdown;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
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
    let builder = auto::Builder::new(TrackedExecutor(shutdown.clone()));
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
            let service = service_fn(move |request| {
                let app = Arc::clone(&app);
                async move { Ok::<_, Infallible>(app.handle(request, peer).await) }
            });
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, %peer, "connection ended with an error");
                    }
                    return;
                }
                () = shutdown_conn.draining() => {}
            }
            connection.as_mut().graceful_shutdown();
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
        });
    }
    tracing::info!("stopped accepting connections");
}
