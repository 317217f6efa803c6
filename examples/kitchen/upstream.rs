//! The line cook as a proxy: an OpenAI-compatible upstream through a pooled hyper-util client,
//! its stream decoded with brigade-sse and handed on token by token (re-encoded by the kitchen).

use std::time::Duration;

use brigade_sse::EventStream;
use bytes::Bytes;
use futures::StreamExt;
use http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use http::{Request, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::mock::{CookError, Order, TokenStream};

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

    /// Sends the order (always streaming) and yields the upstream's tokens.
    pub(crate) async fn open(&self, order: &Order) -> Result<TokenStream, CookError> {
        // The messages go out as they came in, byte for byte.
        #[derive(serde::Serialize)]
        struct Upstream<'a> {
            model: &'a str,
            messages: &'a serde_json::value::RawValue,
            max_tokens: u32,
            stream: bool,
        }
        let body = serde_json::to_vec(&Upstream {
            model: &order.model,
            messages: &order.messages,
            max_tokens: order.max_tokens,
            stream: true,
        })
        .map_err(|e| CookError::retryable(format!("could not write the upstream request: {e}")))?;
        let mut request = Request::post(self.uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("a valid request");
        if let Some(key) = &self.key {
            let value = format!("Bearer {key}")
                .parse()
                .map_err(|_| CookError::retryable("invalid upstream key"))?;
            request.headers_mut().insert(AUTHORIZATION, value);
        }
        let response = self
            .client
            .request(request)
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
        let events = EventStream::from_body(response.into_body());
        let tokens = events
            .map(|event| match event {
                Err(e) => Some(Err(CookError::retryable(format!(
                    "upstream stream broke: {e}"
                )))),
                Ok(event) if event.data() == "[DONE]" => None,
                Ok(event) => {
                    let Ok(chunk) = serde_json::from_str::<serde_json::Value>(event.data()) else {
                        return Some(Err(CookError::retryable("upstream sent invalid JSON")));
                    };
                    if let Some(error) = chunk.get("error") {
                        return Some(Err(CookError::retryable(format!(
                            "upstream error: {error}"
                        ))));
                    }
                    let content = chunk
                        .pointer("/choices/0/delta/content")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or_default();
                    Some(Ok(crate::mock::Token::Owned(content.to_owned())))
                }
            })
            .take_while(|item| std::future::ready(item.is_some()))
            .filter_map(|item| {
                // Chunks without content (the role, the usage) carry no token.
                std::future::ready(match item {
                    Some(Ok(text)) if text.is_empty() => None,
                    other => other,
                })
            });
        Ok(Box::pin(tokens))
    }
}
