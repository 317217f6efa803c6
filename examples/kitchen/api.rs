//! The OpenAI wire types the kitchen reads or writes, serde-derived.
//!
//! A chat request is read only as far as the kitchen needs it (the model, the messages for the
//! token estimate and the mock's seed, `stream`, `stream_options`, `max_tokens` or
//! `max_completion_tokens`, `n`); every other field is skipped, and the body's bytes are kept
//! whole, for a proxied upstream. It is read through `serde_path_to_error`, so a 400 names the
//! field that is wrong (`messages[1].content`), in serde's words.

use std::borrow::Cow;
use std::marker::PhantomData;
use std::num::NonZeroU32;

use bytes::Bytes;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor, value::MapAccessDeserializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::ApiError;

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
        Ok(Self {
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
        })
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
        let words: usize = self.texts().map(|t| t.split_whitespace().count()).sum();
        u32::try_from(words).unwrap_or(u32::MAX)
    }
}

/// The 400 for a body serde could not read: the path of the field, in serde's words.
fn invalid(error: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
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

/// Token counts of an answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub(crate) struct Usage {
    pub(crate) prompt_tokens: u32,
    pub(crate) completion_tokens: u32,
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

/// What the kitchen reads of a chunk someone else wrote: each choice's content and finish
/// reason, the usage, an error. Strings are borrowed from the chunk when they have no escapes.
#[derive(Debug, Deserialize)]
pub(crate) struct ChunkView<'a> {
    #[serde(borrow, default)]
    pub(crate) choices: Vec<ChoiceView<'a>>,
    pub(crate) usage: Option<Usage>,
    #[serde(borrow, default)]
    pub(crate) error: Option<&'a RawValue>,
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
    pub(crate) data: &'a [Model<'a>],
}

/// One model of [`ModelList`].
#[derive(Debug, Serialize)]
pub(crate) struct Model<'a> {
    pub(crate) id: &'a str,
    pub(crate) object: &'static str,
    pub(crate) created: u64,
    pub(crate) owned_by: &'a str,
}
