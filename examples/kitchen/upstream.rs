//! The line cook as a proxy: an OpenAI-compatible upstream through a pooled hyper-util client.
//! A streamed answer's events are decoded with brigade-sse and forwarded as the upstream wrote
//! them; a whole answer is forwarded whole.

use std::time::Duration;

use brigade_sse::EventStream;
use bytes::Bytes;
use futures::StreamExt;
use http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::value::RawValue;

use crate::api::{ChatRequest, ChunkView, Usage};
use crate::cook::{Chunk, Chunks, CookError, Cooked, Whole};

/// A pooled client to one upstream.
#[derive(Debug)]
pub(crate) struct Upstream {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    key: Option<String>,
}

impl Upstream {
    pub(crate) fn new(base: &str, key: Option<String>) -> Result<Self, String> {
        let uri: Uri = format!("{}/v1/chat/completions", base.trim_end_matches('/'))
            .parse()
            .map_err(|e| format!("--upstream: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err("--upstream: only http:// upstreams are supported".to_owned());
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1024)
            .build(connector);
        Ok(Self { client, uri, key })
    }

    /// Sends the request streamed, asking for the usage chunk, and forwards the upstream's
    /// chunks; the stream ends with `[DONE]`, or it was cut off.
    pub(crate) async fn stream(&self, request: &ChatRequest) -> Result<Chunks, CookError> {
        let response = self.send(request, true).await?;
        let events = EventStream::from_body(response.into_body());
        let chunks = events
            .map(|event| match event {
                Err(e) => Err(CookError::retryable(format!("upstream stream broke: {e}"))),
                Ok(event) if event.data() == "[DONE]" => Ok(Cooked::Done),
                Ok(event) => {
                    let (tokens, usage) = read(event.data())?;
                    Ok(Cooked::Chunk(Chunk {
                        json: event.into_data_bytes(),
                        tokens,
                        usage,
                    }))
                }
            })
            // Nothing after the end, nor after an error.
            .scan(false, |over, item| {
                let item = (!*over).then(|| {
                    *over = matches!(item, Ok(Cooked::Done) | Err(_));
                    item
                });
                std::future::ready(item)
            });
        Ok(Box::pin(chunks))
    }

    /// Sends the request whole and forwards the upstream's answer.
    pub(crate) async fn whole(&self, request: &ChatRequest) -> Result<Whole, CookError> {
        #[derive(serde::Deserialize)]
        struct Answer {
            #[serde(default)]
            usage: Option<Usage>,
        }
        let response = self.send(request, false).await?;
        let json = response
            .into_body()
            .collect()
            .await
            .map_err(|e| CookError::retryable(format!("upstream answer broke: {e}")))?
            .to_bytes();
        let answer: Answer = serde_json::from_slice(&json)
            .map_err(|_| CookError::retryable("upstream sent invalid JSON"))?;
        Ok(Whole {
            json,
            usage: answer.usage,
        })
    }

    /// Sends the model, the messages as they came and the client's `max_tokens` if any.
    async fn send(
        &self,
        request: &ChatRequest,
        stream: bool,
    ) -> Result<Response<Incoming>, CookError> {
        #[derive(serde::Deserialize)]
        struct Messages<'a> {
            #[serde(borrow)]
            messages: &'a RawValue,
        }
        #[derive(serde::Serialize)]
        struct Upstream<'a> {
            model: &'a str,
            messages: &'a RawValue,
            #[serde(skip_serializing_if = "Option::is_none")]
            max_tokens: Option<u32>,
            stream: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            stream_options: Option<StreamOptions>,
        }
        #[derive(serde::Serialize)]
        struct StreamOptions {
            include_usage: bool,
        }
        let Messages { messages } = serde_json::from_slice(&request.body)
            .map_err(|e| CookError::retryable(format!("could not read the messages: {e}")))?;
        let body = serde_json::to_vec(&Upstream {
            model: &request.model,
            messages,
            max_tokens: request.max_tokens.map(|n| n.get()),
            stream,
            stream_options: stream.then_some(StreamOptions {
                include_usage: true,
            }),
        })
        .map_err(|e| CookError::retryable(format!("could not write the upstream request: {e}")))?;
        let mut upstream = Request::post(self.uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| {
                CookError::retryable(format!("could not write the upstream request: {e}"))
            })?;
        if let Some(key) = &self.key {
            let value = format!("Bearer {key}")
                .parse()
                .map_err(|_| CookError::retryable("invalid upstream key"))?;
            upstream.headers_mut().insert(AUTHORIZATION, value);
        }
        let response = self
            .client
            .request(upstream)
            .await
            .map_err(|e| CookError::retryable(format!("upstream unreachable: {e}")))?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_secs);
            return Err(CookError {
                message: format!("upstream answered {status}"),
                retryable: status.is_server_error() || status.as_u16() == 429,
                retry_after,
            });
        }
        Ok(response)
    }
}

/// What the kitchen reads of an upstream's chunk: a content token or none, and the usage.
fn read(chunk: &str) -> Result<(u32, Option<Usage>), CookError> {
    let view: ChunkView<'_> = serde_json::from_str(chunk)
        .map_err(|_| CookError::retryable("upstream sent invalid JSON"))?;
    if let Some(error) = view.error {
        return Err(CookError::retryable(format!("upstream error: {error}")));
    }
    let content = view.choices.iter().any(|choice| {
        choice
            .delta
            .content
            .as_deref()
            .is_some_and(|c| !c.is_empty())
    });
    Ok((u32::from(content), view.usage))
}
