//! The line cook, as the rest of the kitchen sees it: the mock model (`mock.rs`) or
//! OpenAI-compatible upstreams (`upstream.rs`) in a pool (`pool.rs`), behind one interface that
//! speaks OpenAI. Admission picks the upstream of each attempt; the line cook runs it.
//!
//! An attempt opens either a stream of chunks or a whole answer:
//!
//! - a [`Chunk`] is the JSON text of one chunk (`chat.completion.chunk`, or a completions
//!   `text_completion` chunk), as bytes, with its usage when it carries one; the stream ends
//!   with [`Cooked::Done`] (`data: [DONE]`), and a stream that ends without it was cut off;
//! - a [`Whole`] answer is the JSON body of a `chat.completion` (or of a completions or
//!   embeddings answer), with its status, content type and usage.
//!
//! The mock answers chat only; completions and embeddings need an upstream.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use brigade_balance::Unavailable;
use brigade_retry::Hedge;

use bytes::Bytes;
use futures::Stream;
use http::header::HeaderValue;
use http::{Response, StatusCode};
use tokio::time::Instant;

use crate::api::{ListedModel, Model, ModelList, Order, Usage};
use crate::config::Config;
use crate::error::ApiError;
use crate::ids::RequestId;
use crate::mock::Mock;
use crate::pool::{UpstreamPick, Upstreams};
use crate::routes::{Body, json};
use crate::upstream::Upstream;

/// The mock, or the pool of upstreams when some are configured; the model aliases; the hedge
/// policy, if hedging is on.
#[derive(Debug)]
pub(crate) struct LineCook {
    pub(crate) mock: Mock,
    pub(crate) upstreams: Option<Upstreams>,
    aliases: Vec<ModelAlias>,
    /// `--hedge-after-ms`: another request when an attempt is slow to its first chunk.
    pub(crate) hedge: Option<Hedge>,
}

impl LineCook {
    pub(crate) fn new(config: &Config) -> Result<Self, String> {
        let aliases = config.model_aliases.clone();
        for (i, alias) in aliases.iter().enumerate() {
            if aliases[..i].iter().any(|other| other.name == alias.name) {
                return Err(format!(
                    "--model-alias: `{}` is given more than once",
                    alias.name
                ));
            }
        }
        let hedge = config
            .hedge_after_ms
            .map(|ms| {
                Hedge::builder()
                    .delay(Duration::from_millis(ms))
                    .max_in_flight(config.hedge_max)
                    .build()
                    .map_err(|e| format!("--hedge-after-ms: {e}"))
            })
            .transpose()?;
        Ok(Self {
            mock: Mock::new(config),
            upstreams: Upstreams::new(config)?,
            aliases,
            hedge,
        })
    }

    /// Picks an upstream not in `tried` (see [`Upstreams::pick`]); `None` for the mock.
    pub(crate) fn pick(&self, tried: &[&str]) -> Result<Option<UpstreamPick>, CookError> {
        self.upstreams
            .as_ref()
            .map(|upstreams| upstreams.pick(tried))
            .transpose()
    }

    /// The model to ask the mock for, when `asked` is an alias.
    pub(crate) fn alias(&self, asked: &str) -> Option<&str> {
        self.aliases
            .iter()
            .find(|alias| alias.name == asked)
            .map(|alias| alias.upstream.as_str())
    }

    /// Starts a streamed answer: from `upstream` (picked from the pool), or from the mock.
    pub(crate) async fn stream<R: Order>(
        &self,
        upstream: Option<&Upstream>,
        request: &R,
        call: &Call,
    ) -> Result<Chunks, CookError> {
        let head = request.head();
        match (upstream, request.chat()) {
            (Some(upstream), _) => {
                upstream
                    .stream(&head, upstream.alias(head.model), call)
                    .await
            }
            (None, Some(chat)) => {
                let alias = self.alias(head.model);
                Ok(self.mock.stream(chat, alias.unwrap_or(head.model)))
            }
            (None, None) => Err(CookError::no_mock()),
        }
    }

    /// Makes a whole answer: from `upstream` (picked from the pool), or from the mock.
    pub(crate) async fn whole<R: Order>(
        &self,
        upstream: Option<&Upstream>,
        request: &R,
        call: &Call,
    ) -> Result<Whole, CookError> {
        let head = request.head();
        match (upstream, request.chat()) {
            (Some(upstream), _) => {
                upstream
                    .whole(&head, upstream.alias(head.model), call)
                    .await
            }
            (None, Some(chat)) => {
                let alias = self.alias(head.model);
                self.mock.whole(chat, alias.unwrap_or(head.model)).await
            }
            (None, None) => Err(CookError::no_mock()),
        }
    }

    /// `GET /v1/models`: the list of an upstream picked from the pool (cached briefly), or the
    /// mock's model; and the aliases.
    pub(crate) async fn models(&self) -> Result<Response<Body>, ApiError> {
        let Some(upstreams) = &self.upstreams else {
            return Ok(self.list(&[]));
        };
        // The pick is held while the list is fetched, and dropped unreported: a model list
        // says nothing of the upstream's chat.
        let pick = upstreams
            .pick(&[])
            .map_err(|error| error.into_api_error(1))?;
        let upstream = Arc::clone(pick.endpoint());
        upstream.models(|models| self.list(models)).await
    }

    /// A model list: the upstream's models (each as it wrote it), or the mock's, and then the
    /// aliases.
    pub(crate) fn list(&self, upstream: &[&serde_json::value::RawValue]) -> Response<Body> {
        let ours = |id| {
            ListedModel::Named(Model {
                id,
                object: "model",
                created: 0,
                owned_by: "brigade",
            })
        };
        let mut data: Vec<ListedModel<'_>> = if self.upstreams.is_some() {
            upstream
                .iter()
                .map(|model| ListedModel::Upstream(model))
                .collect()
        } else {
            vec![ours(Mock::MODEL)]
        };
        // The kitchen's aliases, then each upstream's own.
        let mut names: Vec<&str> = self.aliases.iter().map(|a| a.name.as_str()).collect();
        let upstreams = self.upstreams.iter().flat_map(Upstreams::list);
        for alias in upstreams.flat_map(|upstream| &upstream.aliases) {
            if !names.contains(&alias.name.as_str()) {
                names.push(&alias.name);
            }
        }
        data.extend(names.into_iter().map(ours));
        let list = ModelList {
            object: "list",
            data,
        };
        json(StatusCode::OK, &list)
    }
}

/// `--model-alias NAME=UPSTREAM_MODEL`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ModelAlias {
    pub(crate) name: String,
    pub(crate) upstream: String,
}

impl ModelAlias {
    /// clap's value parser: both sides non-empty.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        match text.split_once('=') {
            Some((name, upstream)) if !name.trim().is_empty() && !upstream.trim().is_empty() => {
                Ok(Self {
                    name: name.trim().to_owned(),
                    upstream: upstream.trim().to_owned(),
                })
            }
            _ => Err("expected NAME=UPSTREAM_MODEL, both non-empty".to_owned()),
        }
    }
}

/// What every attempt of one request carries beside the request: its id and its deadline (an
/// upstream gets both, in `x-request-id` and `x-request-timeout-ms`).
#[derive(Clone, Debug)]
pub(crate) struct Call {
    pub(crate) id: RequestId,
    pub(crate) deadline: Option<Instant>,
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

/// One chunk of a streamed answer.
#[derive(Debug)]
pub(crate) struct Chunk {
    /// Its JSON text, as the line cook wrote it.
    pub(crate) json: Bytes,
    /// Its `usage`, when it has one.
    pub(crate) usage: Option<Usage>,
    /// Whether it carries the usage and nothing else (`choices: []`): the chunk the client
    /// gets only if it asked (`stream_options.include_usage`).
    pub(crate) usage_only: bool,
}

/// A whole answer: its status (a success), its JSON body and content type as the line cook
/// wrote them, and its usage if it has one.
#[derive(Debug)]
pub(crate) struct Whole {
    pub(crate) status: StatusCode,
    pub(crate) content_type: Option<HeaderValue>,
    pub(crate) json: Bytes,
    pub(crate) usage: Option<Usage>,
}

/// A failure of the line cook (the mock or the upstream).
#[derive(Debug)]
pub(crate) enum CookError {
    /// The upstream answered with an error status: its answer, which reaches the client as it
    /// is (a 4xx at once, a 5xx or 429 when no attempt is left).
    Answered(Box<ErrorAnswer>),
    /// No answer, or a broken one: unreachable, reset, cut off, malformed (or the mock's
    /// injected failure).
    Failed(Cow<'static, str>),
    /// No first chunk, or no next chunk, in time.
    TimedOut(Cow<'static, str>),
    /// No upstream of the pool can take the attempt: each is open, cooling down, saturated.
    Unavailable(Box<Unavailable>),
}

/// An upstream's error answer.
#[derive(Debug)]
pub(crate) struct ErrorAnswer {
    pub(crate) status: StatusCode,
    pub(crate) content_type: Option<HeaderValue>,
    /// Its `Retry-After`, as sent and as a wait.
    pub(crate) retry_after: Option<(HeaderValue, Duration)>,
    /// How long it asks not to be called (`Retry-After`, `x-ratelimit-reset-*`), if it says.
    pub(crate) cooldown: Option<Duration>,
    pub(crate) body: Bytes,
}

impl CookError {
    pub(crate) fn failed(message: impl Into<Cow<'static, str>>) -> Self {
        Self::Failed(message.into())
    }

    fn no_mock() -> Self {
        Self::failed("the mock answers chat only: completions and embeddings need --upstream")
    }

    /// Worth another attempt: a 5xx, a 429, no answer, a timeout; not a 4xx (the request's
    /// fault, which another attempt would meet again).
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            Self::Answered(answer) => {
                answer.status.is_server_error() || answer.status == StatusCode::TOO_MANY_REQUESTS
            }
            Self::Failed(_) | Self::TimedOut(_) => true,
            Self::Unavailable(_) => false,
        }
    }

    /// The upstream's `Retry-After`, as a wait.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Answered(answer) => answer.retry_after.as_ref().map(|(_, wait)| *wait),
            Self::Unavailable(unavailable) => Some(unavailable.retry_after()),
            Self::Failed(_) | Self::TimedOut(_) => None,
        }
    }

    /// What went wrong, in a few words.
    pub(crate) fn message(&self) -> Cow<'_, str> {
        match self {
            Self::Answered(answer) => {
                Cow::Owned(format!("the upstream answered {}", answer.status))
            }
            Self::Failed(message) | Self::TimedOut(message) => Cow::Borrowed(message),
            Self::Unavailable(unavailable) => Cow::Owned(unavailable.to_string()),
        }
    }

    /// The code of the error event that ends a stream with this failure.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::TimedOut(_) => "upstream_timeout",
            Self::Answered(_) | Self::Failed(_) => "upstream_error",
            Self::Unavailable(_) => "upstreams_unavailable",
        }
    }

    /// The answer to the client when this is the last attempt's failure: the upstream's own,
    /// or 504 for a timeout, 502 for the rest.
    pub(crate) fn into_api_error(self, attempts: u32) -> ApiError {
        match self {
            Self::Answered(answer) => ApiError::upstream(*answer),
            Self::TimedOut(message) => ApiError::upstream_timeout(format!(
                "the upstream timed out after {attempts} attempt(s): {message}"
            )),
            Self::Failed(message) => ApiError::bad_gateway(format!(
                "the line cook failed after {attempts} attempt(s): {message}"
            )),
            Self::Unavailable(unavailable) => ApiError::unavailable(
                "upstreams_unavailable",
                format!("every upstream is out ({unavailable})"),
                unavailable.retry_after(),
            ),
        }
    }
}
