//! The line cook as a gateway: an OpenAI-compatible upstream through a pooled hyper-util client,
//! over `http://` or `https://` (rustls, the system's roots and `--upstream-ca-file`).
//!
//! - **Requests** go as the client sent them ([`outgoing_body`]: the model of an alias and, on
//!   a stream, `stream_options.include_usage` are all that change), with the request's id
//!   (`x-request-id`) and what is left of its deadline (`x-request-timeout-ms`, which a kitchen
//!   upstream reads in turn).
//! - **Streamed answers** are decoded by brigade-sse and each event's data forwarded as the
//!   upstream wrote it, so tool-call deltas, finish reasons, logprobs, refusals and
//!   `system_fingerprint` pass untouched. A chunk is parsed only when a byte search finds a
//!   usage object or an error in it. The stream ends at `[DONE]`; one that ends without it,
//!   breaks, or falls silent for `--upstream-idle-timeout-ms` is a failure.
//! - **Whole answers** are forwarded whole: status, body, content type; their usage is read.
//! - **Errors**: an error status becomes [`CookError::Answered`], with the upstream's body and
//!   `Retry-After`; admission decides what it means (`admission.rs`).
//! - **Timeouts**: connecting (`--upstream-connect-timeout-ms`); an attempt's first chunk
//!   (`--upstream-first-chunk-timeout-ms`, connection, TLS, head and first event together); the
//!   silence between chunks (`--upstream-idle-timeout-ms`).
//! - **A client that leaves** drops the answer, and with it the upstream's body: hyper then
//!   closes that connection (a body not read to its end is never reused), and the upstream
//!   stops generating.
//!
//! Connections speak HTTP/1.1 only, one request at a time: closing one is how a cancel reaches
//! the upstream.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use brigade_breaker::CircuitBreaker;
use brigade_retry::RetryAfter;
use brigade_sse::EventStream;
use bytes::Bytes;
use futures::Stream;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use http::{Method, Request, Response, Uri};
use http_body_util::{BodyDataStream, BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::value::RawValue;
use tokio::time::{Instant, Sleep, sleep_until, timeout, timeout_at};

use crate::api::{Endpoint, Head};
use crate::config::Config;
use crate::cook::{Call, Chunks, CookError, Cooked, ErrorAnswer, ModelAlias, Whole};
use crate::error::{ApiError, chain};
use crate::ids::REQUEST_ID;
use crate::passthrough::{UpstreamModels, outgoing_body, read_chunk, whole_usage};
use crate::routes::Body;
use crate::upstream_spec::UpstreamSpec;

/// The header of the time a request has left, in milliseconds (the kitchen reads it too).
pub(crate) const REQUEST_TIMEOUT: HeaderName = HeaderName::from_static("x-request-timeout-ms");

/// How long a model list stays cached.
const MODELS_TTL: Duration = Duration::from_secs(10);

/// The largest error answer passed on from an upstream (a longer one is dropped: its status
/// says enough).
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// A pooled client to one upstream.
#[derive(Debug)]
pub(crate) struct Upstream {
    /// Its id in the pool and in `/metrics`.
    pub(crate) id: String,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// The upstream's root, without a trailing `/` or `/v1`.
    base: String,
    /// `Bearer` and the key, marked sensitive (its `Debug` does not show it).
    key: Option<HeaderValue>,
    /// Its model aliases: its own, or the kitchen's.
    pub(crate) aliases: Vec<ModelAlias>,
    /// Its circuit breaker, shared with its endpoint in the pool.
    #[cfg_attr(not(test), allow(dead_code, reason = "read by the kitchen's tests"))]
    pub(crate) breaker: CircuitBreaker,
    first_chunk: Duration,
    idle: Duration,
    /// The last model list and when it was fetched.
    models: Mutex<Option<(Instant, Bytes)>>,
}

impl Upstream {
    pub(crate) fn new(
        spec: &UpstreamSpec,
        config: &Config,
        breaker: CircuitBreaker,
    ) -> Result<Self, String> {
        let url = spec.endpoint.url();
        let base = url.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base).to_owned();
        let uri: Uri = format!("{base}{}", Endpoint::Chat.path())
            .parse()
            .map_err(|e| format!("--upstream: {e}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("--upstream: the URL must start with http:// or https://".to_owned()),
        };
        let key = spec
            .key
            .as_ref()
            .or(config.upstream_key.as_ref())
            .map(|key| {
                let mut value = HeaderValue::try_from(format!("Bearer {}", key.expose()))
                    .map_err(|_| "--upstream-key: not a valid header value".to_owned())?;
                value.set_sensitive(true);
                Ok::<_, String>(value)
            })
            .transpose()?;
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_millis(
            config.upstream_connect_timeout_ms,
        )));
        let tls = tls_config(https, config.upstream_ca_file.as_deref())?;
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(1024)
            .build(connector);
        let aliases = if spec.aliases.is_empty() {
            config.model_aliases.clone()
        } else {
            spec.aliases.clone()
        };
        Ok(Self {
            id: spec.endpoint.id().to_owned(),
            client,
            base,
            key,
            aliases,
            breaker,
            first_chunk: Duration::from_millis(config.upstream_first_chunk_timeout_ms),
            idle: Duration::from_millis(config.upstream_idle_timeout_ms),
            models: Mutex::new(None),
        })
    }

    /// The upstream's root, for the log.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// The model to ask this upstream for, when `asked` is one of its aliases.
    pub(crate) fn alias(&self, asked: &str) -> Option<&str> {
        self.aliases
            .iter()
            .find(|alias| alias.name == asked)
            .map(|alias| alias.upstream.as_str())
    }

    /// Sends a streamed request and forwards the upstream's chunks. The attempt has
    /// `--upstream-first-chunk-timeout-ms` to reach its first chunk.
    pub(crate) async fn stream(
        &self,
        head: &Head<'_>,
        alias: Option<&str>,
        call: &Call,
    ) -> Result<Chunks, CookError> {
        let first_by = Instant::now() + self.first_chunk;
        let sent = timeout_at(first_by, self.send(head, alias, call));
        let response = sent.await.map_err(|_| self.no_first_chunk())??;
        let is_sse = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
        if !is_sse {
            return Err(CookError::failed(
                "the upstream answered a stream request with something else than text/event-stream",
            ));
        }
        let frames = Watched {
            frames: BodyDataStream::new(response.into_body()),
            fed: false,
        };
        Ok(Box::pin(Forwarded {
            events: EventStream::new(frames),
            timer: Box::pin(sleep_until(first_by)),
            first_chunk: self.first_chunk,
            idle: self.idle,
            started: false,
            over: false,
        }))
    }

    /// Sends a whole request and forwards the upstream's answer; its head is bounded only by
    /// the request's deadline, its body by the idle timeout.
    pub(crate) async fn whole(
        &self,
        head: &Head<'_>,
        alias: Option<&str>,
        call: &Call,
    ) -> Result<Whole, CookError> {
        let response = self.send(head, alias, call).await?;
        let (parts, body) = response.into_parts();
        let json = timeout(self.idle, body.collect())
            .await
            .map_err(|_| {
                CookError::TimedOut("the upstream's answer stalled after its head".into())
            })?
            .map_err(|e| CookError::failed(format!("the upstream's answer broke: {e}")))?
            .to_bytes();
        let usage = whole_usage(&json);
        Ok(Whole {
            status: parts.status,
            content_type: parts.headers.get(CONTENT_TYPE).cloned(),
            json,
            usage,
        })
    }

    /// `GET /v1/models` of the upstream, cached for [`MODELS_TTL`], written by `list` (which
    /// adds the aliases); an upstream's error answer as it came.
    pub(crate) async fn models(
        &self,
        list: impl FnOnce(&[&RawValue]) -> Response<Body>,
    ) -> Result<Response<Body>, ApiError> {
        let cached = self
            .models
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|(at, _)| at.elapsed() < MODELS_TTL)
            .map(|(_, json)| json.clone());
        let json = match cached {
            Some(json) => json,
            None => {
                let json = timeout(self.first_chunk, self.fetch_models())
                    .await
                    .map_err(|_| ApiError::upstream_timeout("the upstream's model list timed out"))?
                    .map_err(|error| error.into_api_error(1))?;
                *self.models.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some((Instant::now(), json.clone()));
                json
            }
        };
        let models: UpstreamModels<'_> = serde_json::from_slice(&json).map_err(|e| {
            ApiError::bad_gateway(format!("the upstream's model list is not one: {e}"))
        })?;
        Ok(list(&models.data))
    }

    async fn fetch_models(&self) -> Result<Bytes, CookError> {
        let mut request = Request::get(self.uri("/v1/models")?);
        if let Some(key) = &self.key {
            request = request.header(AUTHORIZATION, key.clone());
        }
        let request = request
            .body(Full::default())
            .map_err(|e| CookError::failed(format!("could not write the request: {e}")))?;
        let response = self.call(request).await?;
        response
            .into_body()
            .collect()
            .await
            .map(|body| body.to_bytes())
            .map_err(|e| CookError::failed(format!("the upstream's model list broke: {e}")))
    }

    /// Sends one attempt: the body edited where it must be, the key, the request's id and
    /// remaining deadline.
    async fn send(
        &self,
        head: &Head<'_>,
        alias: Option<&str>,
        call: &Call,
    ) -> Result<Response<Incoming>, CookError> {
        let ask_usage = head.stream && !head.include_usage;
        let body = outgoing_body(head.body, alias, ask_usage)
            .map_err(|e| CookError::failed(format!("could not write the upstream request: {e}")))?;
        let accept = if head.stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.uri(head.endpoint.path())?)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(ACCEPT, HeaderValue::from_static(accept))
            .header(REQUEST_ID, call.id.header().clone());
        if let Some(key) = &self.key {
            request = request.header(AUTHORIZATION, key.clone());
        }
        if let Some(deadline) = call.deadline {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .as_millis();
            request = request.header(REQUEST_TIMEOUT, left.max(1).to_string());
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| CookError::failed(format!("could not write the upstream request: {e}")))?;
        self.call(request).await
    }

    /// Sends a request; a status other than a success is the upstream's error answer.
    async fn call(&self, request: Request<Full<Bytes>>) -> Result<Response<Incoming>, CookError> {
        let response = self.client.request(request).await.map_err(|e| {
            CookError::failed(format!("the upstream is unreachable: {}", chain(&e)))
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let (parts, body) = response.into_parts();
        let retry_after = parts.headers.get(RETRY_AFTER).and_then(|value| {
            let wait = RetryAfter::parse(value)?.delay();
            Some((value.clone(), wait))
        });
        // The body of an error answer comes at once; one that does not is cut at the idle
        // timeout, and a long one at the limit (the status says enough).
        let body = timeout(self.idle, Limited::new(body, ERROR_BODY_LIMIT).collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|body| body.to_bytes())
            .unwrap_or_default();
        Err(CookError::Answered(Box::new(ErrorAnswer {
            status: parts.status,
            content_type: parts.headers.get(CONTENT_TYPE).cloned(),
            cooldown: brigade_balance::headers::cooldown(&parts.headers),
            retry_after,
            body,
        })))
    }

    fn uri(&self, path: &str) -> Result<Uri, CookError> {
        format!("{}{path}", self.base)
            .parse()
            .map_err(|e| CookError::failed(format!("invalid upstream URL: {e}")))
    }

    fn no_first_chunk(&self) -> CookError {
        CookError::TimedOut(
            format!("no first chunk within {} ms", self.first_chunk.as_millis()).into(),
        )
    }
}

/// The TLS settings of the client: for an `https://` upstream, the system's root certificates
/// and those of `ca_file`; none for `http://` (the connector still wants a configuration).
fn tls_config(https: bool, ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    if https {
        let native = rustls_native_certs::load_native_certs();
        for error in &native.errors {
            tracing::warn!(%error, "a system root certificate could not be read");
        }
        let (added, _ignored) = roots.add_parsable_certificates(native.certs);
        if let Some(path) = ca_file {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| format!("--upstream-ca-file {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "--upstream-ca-file {}: no certificate in it",
                    path.display()
                ));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("--upstream-ca-file {}: {e}", path.display()))?;
            }
        }
        if roots.is_empty() {
            return Err(
                "--upstream: https:// needs root certificates: none found on the system; \
                 give --upstream-ca-file"
                    .to_owned(),
            );
        }
        tracing::debug!(system = added, "root certificates loaded");
    }
    #[allow(
        deprecated,
        reason = "ring keeps the build light (aws-lc-rs builds a C library); it lacks only the \
                  post-quantum key exchange, which the handshake then does without"
    )]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// An upstream's streamed answer, forwarded event by event; a timer bounds the wait for the
/// first chunk (an event: the commit point), then each silence (no bytes at all: a comment an
/// upstream sends to keep the stream alive counts).
struct Forwarded {
    events: EventStream<Watched>,
    timer: Pin<Box<Sleep>>,
    first_chunk: Duration,
    idle: Duration,
    /// A chunk came: the timer is the idle timeout's.
    started: bool,
    /// After the end or an error.
    over: bool,
}

impl Stream for Forwarded {
    type Item = Result<Cooked, CookError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.over {
            return Poll::Ready(None);
        }
        let event = match Pin::new(&mut this.events).poll_next(cx) {
            Poll::Ready(event) => event,
            Poll::Pending => {
                if this.started && std::mem::take(&mut this.events.get_mut().fed) {
                    this.timer.as_mut().reset(Instant::now() + this.idle);
                }
                ready!(this.timer.as_mut().poll(cx));
                this.over = true;
                let message = if this.started {
                    format!("no chunk for {} ms", this.idle.as_millis())
                } else {
                    format!("no first chunk within {} ms", this.first_chunk.as_millis())
                };
                return Poll::Ready(Some(Err(CookError::TimedOut(message.into()))));
            }
        };
        let item = match event {
            Some(Ok(event)) if event.data() == "[DONE]" => {
                this.over = true;
                Ok(Cooked::Done)
            }
            Some(Ok(event)) => {
                this.started = true;
                this.events.get_mut().fed = false;
                this.timer.as_mut().reset(Instant::now() + this.idle);
                read_chunk(event.into_data_bytes())
            }
            Some(Err(error)) => Err(CookError::failed(format!(
                "the upstream's stream broke: {error}"
            ))),
            // Cut off before `[DONE]`: the pass window tells the client.
            None => {
                this.over = true;
                return Poll::Ready(None);
            }
        };
        this.over |= item.is_err();
        Poll::Ready(Some(item))
    }
}

/// A body's data frames, noting when bytes come.
struct Watched {
    frames: BodyDataStream<Incoming>,
    /// Bytes came since the flag was last cleared.
    fed: bool,
}

impl Stream for Watched {
    type Item = Result<Bytes, hyper::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let frame = ready!(Pin::new(&mut self.frames).poll_next(cx));
        self.fed |= matches!(frame, Some(Ok(_)));
        Poll::Ready(frame)
    }
}
