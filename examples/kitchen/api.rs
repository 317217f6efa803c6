//! The OpenAI wire types the kitchen reads or writes, serde-derived.
//!
//! A request is read only as far as the kitchen needs it (for chat: the model, the messages for
//! the token estimate and the mock's seed, `stream`, `stream_options`, `max_tokens` or
//! `max_completion_tokens`, `n`; for completions and embeddings: the model, the size of the
//! prompt or input, and the same options); every other field is skipped, and the body's bytes
//! are kept whole, for a proxied upstream. It is read through `serde_path_to_error`, so a 400
//! names the field that is wrong (`messages[1].content`), in serde's words.
//!
//! What goes upstream is that body, edited only where the kitchen must (`passthrough.rs`): the
//! model of an alias, and `stream_options.include_usage` on a stream.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::num::NonZeroU32;

use bytes::Bytes;
use serde::de::{
    Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor, value::MapAccessDeserializer,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::ApiError;

/// Where a request goes: the OpenAI endpoints the kitchen answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Chat,
    Completions,
    Embeddings,
}

impl Endpoint {
    /// The endpoint's path, on the kitchen and on an upstream.
    pub(crate) fn path(self) -> &'static str {
        match self {
            Self::Chat => "/v1/chat/completions",
            Self::Completions => "/v1/completions",
            Self::Embeddings => "/v1/embeddings",
        }
    }
}

/// A validated request, whatever its endpoint: what admission sizes, the pass window streams
/// and an upstream is sent.
pub(crate) trait Order: fmt::Debug + Send + Sync + 'static {
    /// What the kitchen reads of it.
    fn head(&self) -> Head<'_>;

    /// The request as a chat request, for the mock (which answers chat only).
    fn chat(&self) -> Option<&ChatRequest> {
        None
    }
}

/// What the kitchen reads of a request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Head<'a> {
    pub(crate) endpoint: Endpoint,
    pub(crate) model: &'a str,
    pub(crate) stream: bool,
    /// `stream_options.include_usage`: whether the client wants the usage chunk.
    pub(crate) include_usage: bool,
    /// The prompt's (or input's) size in tokens, roughly.
    pub(crate) prompt_tokens: u32,
    /// `max_completion_tokens` or `max_tokens`, when the client set one.
    pub(crate) max_tokens: Option<u32>,
    /// Completions generated (`n`, or `best_of` when larger); 0 for embeddings.
    pub(crate) choices: u32,
    /// The body, byte for byte.
    pub(crate) body: &'a Bytes,
}

/// A validated chat request: what the kitchen reads of it, and the body as it came.
#[derive(Debug)]
pub(crate) struct ChatRequest {
    pub(crate) model: String,
    pub(crate) messages: Vec<Message>,
    pub(crate) stream: bool,
    /// `stream_options.include_usage`: whether the client wants the usage chunk.
    pub(crate) include_usage: bool,
    /// `max_completion_tokens`, or else `max_tokens`; `None` when the client set neither
    /// (nothing is invented into a request).
    pub(crate) max_tokens: Option<NonZeroU32>,
    /// Choices asked for (`n`, 1 when absent).
    pub(crate) n: NonZeroU32,
    /// The request body, byte for byte.
    pub(crate) body: Bytes,
    /// The messages' words, counted once.
    prompt_tokens: u32,
}

impl Order for ChatRequest {
    fn head(&self) -> Head<'_> {
        Head {
            endpoint: Endpoint::Chat,
            model: &self.model,
            stream: self.stream,
            include_usage: self.include_usage,
            prompt_tokens: self.prompt_tokens,
            max_tokens: self.max_tokens.map(NonZeroU32::get),
            choices: self.n.get(),
            body: &self.body,
        }
    }

    fn chat(&self) -> Option<&ChatRequest> {
        Some(self)
    }
}

/// One message of a chat request.
#[derive(Debug, Deserialize)]
pub(crate) struct Message {
    pub(crate) role: Role,
    pub(crate) content: Option<Content>,
    /// Present (and not `null`): an assistant message that calls tools needs no content.
    tool_calls: Option<IgnoredAny>,
    /// The deprecated form of `tool_calls`.
    function_call: Option<IgnoredAny>,
}

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
}

/// A message's content: text, or parts (of which the kitchen reads the text ones).
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "expected a string or an array of content parts")]
pub(crate) enum Content {
    Text(String),
    Parts(Vec<ObjectOnly<Part>>),
}

impl Content {
    /// The text, or the text of each text part.
    fn texts(&self) -> impl Iterator<Item = &str> {
        let (text, parts) = match self {
            Self::Text(text) => (Some(text.as_str()), &[][..]),
            Self::Parts(parts) => (None, &parts[..]),
        };
        text.into_iter()
            .chain(parts.iter().filter_map(|part| part.0.text.as_deref()))
    }
}

/// A content part: `{"type":"text","text":"..."}`, or another kind, whose text is absent.
#[derive(Debug, Deserialize)]
pub(crate) struct Part {
    text: Option<String>,
}

/// The fields of a request body the kitchen reads; serde skips the rest.
#[derive(Deserialize)]
struct Fields {
    model: String,
    messages: Vec<ObjectOnly<Message>>,
    stream: Option<bool>,
    stream_options: Option<ObjectOnly<StreamOptions>>,
    max_tokens: Option<NonZeroU32>,
    max_completion_tokens: Option<NonZeroU32>,
    n: Option<NonZeroU32>,
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

impl ChatRequest {
    /// Reads and validates a chat request.
    ///
    /// # Errors
    ///
    /// A 400 whose message names the field: malformed JSON, a body that is not an object, a
    /// missing or mistyped field, an empty `model` or `messages`, a role OpenAI does not know,
    /// `max_tokens` 0, a message without content (except an assistant message with
    /// `tool_calls`).
    pub(crate) fn parse(body: Bytes) -> Result<Self, ApiError> {
        let mut json = serde_json::Deserializer::from_slice(&body);
        let ObjectOnly(fields): ObjectOnly<Fields> =
            serde_path_to_error::deserialize(&mut json).map_err(invalid)?;
        json.end()
            .map_err(|e| ApiError::invalid(format!("malformed JSON: {e}")))?;
        if fields.model.is_empty() {
            return Err(ApiError::invalid("`model` must not be empty"));
        }
        if fields.messages.is_empty() {
            return Err(ApiError::invalid("`messages` must not be empty"));
        }
        let messages: Vec<Message> = fields.messages.into_iter().map(|m| m.0).collect();
        for (i, message) in messages.iter().enumerate() {
            let calls_tools = message.tool_calls.is_some() || message.function_call.is_some();
            if message.content.is_none() && !(message.role == Role::Assistant && calls_tools) {
                return Err(ApiError::invalid(format!(
                    "missing required parameter: `messages[{i}].content`"
                )));
            }
        }
        let mut request = Self {
            model: fields.model,
            messages,
            stream: fields.stream.unwrap_or(false),
            include_usage: fields
                .stream_options
                .and_then(|options| options.0.include_usage)
                .unwrap_or(false),
            max_tokens: fields.max_completion_tokens.or(fields.max_tokens),
            n: fields.n.unwrap_or(NonZeroU32::MIN),
            body,
            prompt_tokens: 0,
        };
        let words: usize = request.texts().map(|t| t.split_whitespace().count()).sum();
        request.prompt_tokens = u32::try_from(words).unwrap_or(u32::MAX);
        Ok(request)
    }

    /// The text of every message (strings and text parts), in order.
    pub(crate) fn texts(&self) -> impl Iterator<Item = &str> {
        self.messages
            .iter()
            .filter_map(|message| message.content.as_ref())
            .flat_map(Content::texts)
    }

    /// Every message's text, joined by line breaks (the mock's seed).
    pub(crate) fn prompt(&self) -> String {
        let mut prompt = String::new();
        for text in self.texts() {
            if !prompt.is_empty() {
                prompt.push('\n');
            }
            prompt.push_str(text);
        }
        prompt
    }

    /// The prompt's size in tokens, roughly: its whitespace-separated words.
    pub(crate) fn prompt_tokens(&self) -> u32 {
        self.prompt_tokens
    }
}

/// A validated completions or embeddings request, which the kitchen passes to an upstream:
/// what it reads of it, and the body as it came.
#[derive(Debug)]
pub(crate) struct ProxyRequest {
    pub(crate) endpoint: Endpoint,
    pub(crate) model: String,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
    pub(crate) max_tokens: Option<NonZeroU32>,
    /// Completions generated: `n`, or `best_of` when larger; 0 for embeddings.
    pub(crate) choices: u32,
    /// The words and token ids of `prompt` (completions) or `input` (embeddings).
    pub(crate) prompt_tokens: u32,
    pub(crate) body: Bytes,
}

/// The fields of a completions or embeddings body the kitchen reads; serde skips the rest.
#[derive(Deserialize)]
struct ProxyFields {
    model: String,
    stream: Option<bool>,
    stream_options: Option<ObjectOnly<StreamOptions>>,
    max_tokens: Option<NonZeroU32>,
    n: Option<NonZeroU32>,
    best_of: Option<NonZeroU32>,
    prompt: Option<TokenCount>,
    input: Option<TokenCount>,
}

impl ProxyRequest {
    /// Reads a completions or embeddings request: only what the kitchen needs (the upstream
    /// judges the rest).
    ///
    /// # Errors
    ///
    /// A 400 whose message names the field: malformed JSON, a body that is not an object, a
    /// missing or empty `model`, a mistyped option the kitchen reads.
    pub(crate) fn parse(endpoint: Endpoint, body: Bytes) -> Result<Self, ApiError> {
        let mut json = serde_json::Deserializer::from_slice(&body);
        let ObjectOnly(fields): ObjectOnly<ProxyFields> =
            serde_path_to_error::deserialize(&mut json).map_err(invalid)?;
        json.end()
            .map_err(|e| ApiError::invalid(format!("malformed JSON: {e}")))?;
        if fields.model.is_empty() {
            return Err(ApiError::invalid("`model` must not be empty"));
        }
        let choices = match endpoint {
            Endpoint::Embeddings => 0,
            _ => fields.n.max(fields.best_of).map_or(1, NonZeroU32::get),
        };
        let text = fields.prompt.or(fields.input).unwrap_or_default();
        Ok(Self {
            endpoint,
            model: fields.model,
            stream: fields.stream.unwrap_or(false),
            include_usage: fields
                .stream_options
                .and_then(|options| options.0.include_usage)
                .unwrap_or(false),
            max_tokens: fields.max_tokens,
            choices,
            prompt_tokens: text.0,
            body,
        })
    }
}

impl Order for ProxyRequest {
    fn head(&self) -> Head<'_> {
        Head {
            endpoint: self.endpoint,
            model: &self.model,
            stream: self.stream,
            include_usage: self.include_usage,
            prompt_tokens: self.prompt_tokens,
            max_tokens: self.max_tokens.map(NonZeroU32::get),
            choices: self.choices,
            body: &self.body,
        }
    }
}

/// The size of a prompt or an input, roughly, whatever its shape: a string counts its words, a
/// number (a token id) one, an array the sum of its items, anything else nothing.
#[derive(Debug, Default)]
struct TokenCount(u32);

impl<'de> Deserialize<'de> for TokenCount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Count;
        impl<'de> Visitor<'de> for Count {
            type Value = TokenCount;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("text, token ids, or arrays of them")
            }
            fn visit_str<E>(self, text: &str) -> Result<TokenCount, E> {
                let words = text.split_whitespace().count();
                Ok(TokenCount(u32::try_from(words).unwrap_or(u32::MAX)))
            }
            fn visit_u64<E>(self, _: u64) -> Result<TokenCount, E> {
                Ok(TokenCount(1))
            }
            fn visit_i64<E>(self, _: i64) -> Result<TokenCount, E> {
                Ok(TokenCount(1))
            }
            fn visit_f64<E>(self, _: f64) -> Result<TokenCount, E> {
                Ok(TokenCount(1))
            }
            fn visit_bool<E>(self, _: bool) -> Result<TokenCount, E> {
                Ok(TokenCount(0))
            }
            fn visit_unit<E>(self) -> Result<TokenCount, E> {
                Ok(TokenCount(0))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<TokenCount, A::Error> {
                let mut total = 0_u32;
                while let Some(TokenCount(n)) = items.next_element()? {
                    total = total.saturating_add(n);
                }
                Ok(TokenCount(total))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TokenCount, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(TokenCount(0))
            }
        }
        deserializer.deserialize_any(Count)
    }
}

/// The 400 for a body serde could not read: the path of the field, in serde's words.
pub(crate) fn invalid(error: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = error.path().to_string();
    let error = error.into_inner();
    if !error.is_data() {
        ApiError::invalid(format!("malformed JSON: {error}"))
    } else if path == "." {
        ApiError::invalid(format!("invalid request body: {error}"))
    } else {
        ApiError::invalid(format!("invalid `{path}`: {error}"))
    }
}

/// A struct read from a JSON object only (serde's derive also reads a struct from an array,
/// which would take `["user", "hi"]` for a message).
#[derive(Debug)]
pub(crate) struct ObjectOnly<T>(pub(crate) T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Object<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Object<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(Object(PhantomData))
            .map(ObjectOnly)
    }
}

/// Token counts of an answer (an upstream's may have more fields: they are skipped; an
/// embeddings answer has no `completion_tokens`: 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub(crate) struct Usage {
    #[serde(default)]
    pub(crate) prompt_tokens: u32,
    #[serde(default)]
    pub(crate) completion_tokens: u32,
    #[serde(default)]
    pub(crate) total_tokens: u32,
}

impl Usage {
    pub(crate) fn new(prompt_tokens: u32, completion_tokens: u32) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
        }
    }

    /// The tokens to settle a reservation with: the total, or the sum of its parts if an
    /// upstream left the total out.
    pub(crate) fn settled(&self) -> u32 {
        self.total_tokens
            .max(self.prompt_tokens.saturating_add(self.completion_tokens))
    }
}

/// Why an answer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FinishReason {
    Stop,
    Length,
}

/// One event of a streamed answer (`object: "chat.completion.chunk"`).
#[derive(Debug, Serialize)]
pub(crate) struct ChatCompletionChunk<'a> {
    pub(crate) id: &'a str,
    pub(crate) object: &'static str,
    pub(crate) created: u64,
    pub(crate) model: &'a str,
    pub(crate) choices: &'a [ChunkChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) usage: Option<Usage>,
}

impl ChatCompletionChunk<'_> {
    pub(crate) const OBJECT: &'static str = "chat.completion.chunk";
}

/// A choice of a chunk: what it adds to the answer.
#[derive(Debug, Serialize)]
pub(crate) struct ChunkChoice<'a> {
    pub(crate) index: u32,
    pub(crate) delta: Delta<'a>,
    pub(crate) finish_reason: Option<FinishReason>,
}

/// What a chunk adds: the role (first chunk), some content, or nothing (the finish chunk).
#[derive(Debug, Default, Serialize)]
pub(crate) struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) role: Option<Role>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) content: Option<&'a str>,
}

/// A whole answer (`object: "chat.completion"`).
#[derive(Debug, Serialize)]
pub(crate) struct ChatCompletion<'a> {
    pub(crate) id: &'a str,
    pub(crate) object: &'static str,
    pub(crate) created: u64,
    pub(crate) model: &'a str,
    pub(crate) choices: &'a [Choice<'a>],
    pub(crate) usage: Usage,
}

impl ChatCompletion<'_> {
    pub(crate) const OBJECT: &'static str = "chat.completion";
}

/// A choice of a whole answer.
#[derive(Debug, Serialize)]
pub(crate) struct Choice<'a> {
    pub(crate) index: u32,
    pub(crate) message: AnswerMessage<'a>,
    pub(crate) finish_reason: FinishReason,
}

/// The assistant's message in a whole answer.
#[derive(Debug, Serialize)]
pub(crate) struct AnswerMessage<'a> {
    pub(crate) role: Role,
    pub(crate) content: &'a str,
}

/// What the WebSocket chat reads of a chunk: each choice's content and finish reason. Strings
/// are borrowed from the chunk when they have no escapes.
#[derive(Debug, Deserialize)]
pub(crate) struct ChunkView<'a> {
    #[serde(borrow, default)]
    pub(crate) choices: Vec<ChoiceView<'a>>,
}

/// A choice of a [`ChunkView`].
#[derive(Debug, Deserialize)]
pub(crate) struct ChoiceView<'a> {
    #[serde(borrow, default)]
    pub(crate) delta: DeltaView<'a>,
    #[serde(borrow, default)]
    pub(crate) finish_reason: Option<Cow<'a, str>>,
}

/// The delta of a [`ChoiceView`].
#[derive(Debug, Default, Deserialize)]
pub(crate) struct DeltaView<'a> {
    #[serde(borrow, default)]
    pub(crate) content: Option<Cow<'a, str>>,
}

/// `GET /v1/models`.
#[derive(Debug, Serialize)]
pub(crate) struct ModelList<'a> {
    pub(crate) object: &'static str,
    pub(crate) data: Vec<ListedModel<'a>>,
}

/// A model of [`ModelList`]: an upstream's, as it wrote it, or one the kitchen names.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum ListedModel<'a> {
    Upstream(&'a RawValue),
    Named(Model<'a>),
}

/// One model of [`ModelList`].
#[derive(Debug, Serialize)]
pub(crate) struct Model<'a> {
    pub(crate) id: &'a str,
    pub(crate) object: &'static str,
    pub(crate) created: u64,
    pub(crate) owned_by: &'a str,
}
