//! The line cook, as the rest of the kitchen sees it: the mock model (`mock.rs`) or an
//! OpenAI-compatible upstream (`upstream.rs`), behind one interface that speaks OpenAI.
//!
//! An attempt opens either a stream of chunks or a whole answer:
//!
//! - a [`Chunk`] is the JSON text of one `chat.completion.chunk`, as bytes, with what the kitchen
//!   reads from it (its content tokens for the metrics, its usage to settle the token limit);
//!   the stream ends with [`Cooked::Done`] (`data: [DONE]`), and a stream that ends without it
//!   was cut off;
//! - a [`Whole`] answer is the JSON body of a `chat.completion`, with its usage.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;

use crate::api::{ChatRequest, Usage};
use crate::config::Config;
use crate::mock::Mock;
use crate::upstream::Upstream;

/// The mock, or the upstream when one is configured.
#[derive(Debug)]
pub(crate) struct LineCook {
    pub(crate) mock: Mock,
    pub(crate) upstream: Option<Upstream>,
}

impl LineCook {
    pub(crate) fn new(config: &Config) -> Result<Self, String> {
        let upstream = config
            .upstream
            .as_deref()
            .map(|url| Upstream::new(url, config.upstream_key.clone()))
            .transpose()?;
        Ok(Self {
            mock: Mock::new(config),
            upstream,
        })
    }

    /// Starts a streamed answer.
    pub(crate) async fn stream(&self, request: &ChatRequest) -> Result<Chunks, CookError> {
        match &self.upstream {
            Some(upstream) => upstream.stream(request).await,
            None => Ok(self.mock.stream(request)),
        }
    }

    /// Makes a whole answer.
    pub(crate) async fn whole(&self, request: &ChatRequest) -> Result<Whole, CookError> {
        match &self.upstream {
            Some(upstream) => upstream.whole(request).await,
            None => self.mock.whole(request).await,
        }
    }
}

/// The chunks of a streamed answer, as they come; an `Err` ends the stream.
pub(crate) type Chunks = Pin<Box<dyn Stream<Item = Result<Cooked, CookError>> + Send>>;

/// One item of a streamed answer.
#[derive(Debug)]
pub(crate) enum Cooked {
    Chunk(Chunk),
    /// The end of the answer (`data: [DONE]`).
    Done,
}

/// One `chat.completion.chunk`.
#[derive(Debug)]
pub(crate) struct Chunk {
    /// Its JSON text.
    pub(crate) json: Bytes,
    /// Content tokens it carries, as far as the line cook can tell (the metrics count them).
    pub(crate) tokens: u32,
    /// Its `usage`, when it has one: the usage chunk that ends an answer (`choices: []`),
    /// which the client gets only if it asked (`stream_options.include_usage`).
    pub(crate) usage: Option<Usage>,
}

/// A whole answer: the JSON body of a `chat.completion`, and its usage if it has one.
#[derive(Debug)]
pub(crate) struct Whole {
    pub(crate) json: Bytes,
    pub(crate) usage: Option<Usage>,
}

/// A failure of the line cook (the mock or the upstream).
#[derive(Clone, Debug)]
pub(crate) struct CookError {
    pub(crate) message: String,
    /// Worth another attempt (a 5xx, a reset), as opposed to a 4xx.
    pub(crate) retryable: bool,
    /// The upstream's own `Retry-After`, if it gave one.
    pub(crate) retry_after: Option<Duration>,
}

impl CookError {
    pub(crate) fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
            retry_after: None,
        }
    }
}
