//! What passes through the kitchen to and from an upstream, and the little of it the kitchen
//! reads.
//!
//! - The request body goes as the client sent it ([`outgoing_body`]): only the model of an
//!   alias and, on a stream, `stream_options.include_usage` are set; every other member keeps
//!   its JSON text byte for byte (values are held as `RawValue`s, never parsed), unknown ones
//!   included, in their order.
//! - A streamed answer's chunks go back as the upstream wrote them ([`read_chunk`]); the kitchen
//!   parses only the few that a byte search says carry a usage object or an error.
//! - A whole answer goes back whole; its usage is read ([`whole_usage`]).
//! - A model list keeps each model as the upstream wrote it ([`UpstreamModels`]).

use std::borrow::Cow;
use std::fmt;
use std::sync::LazyLock;

use bytes::Bytes;
use memchr::memmem::Finder;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::api::Usage;
use crate::cook::{Chunk, CookError, Cooked};

/// The body that goes upstream: the client's, with `model` set to `model` when given (an
/// alias), and `stream_options.include_usage` set to `true` when `ask_usage` (the rest of
/// `stream_options` kept). Every other member's JSON text is kept as it came, in its place;
/// members the kitchen adds go last. When nothing is to change, the body itself, not a copy.
///
/// # Errors
///
/// serde_json's, for a body that is not a JSON object (a validated request always is).
pub(crate) fn outgoing_body(
    body: &Bytes,
    model: Option<&str>,
    ask_usage: bool,
) -> Result<Bytes, serde_json::Error> {
    if model.is_none() && !ask_usage {
        return Ok(body.clone());
    }
    let model = model.map(serde_json::value::to_raw_value).transpose()?;
    let Members(mut members) = serde_json::from_slice(body)?;
    if let Some(model) = &model {
        set(&mut members, "model", model);
    }
    let options;
    if ask_usage {
        let mut inner = match members.iter().find(|(key, _)| key == "stream_options") {
            Some((_, raw)) if raw.get() != "null" => {
                serde_json::from_str::<Members<'_>>(raw.get())?.0
            }
            _ => Vec::new(),
        };
        let yes = serde_json::value::to_raw_value(&true)?;
        set(&mut inner, "include_usage", &yes);
        options = serde_json::value::to_raw_value(&Members(inner))?;
        set(&mut members, "stream_options", &options);
    }
    serde_json::to_vec(&Members(members)).map(Bytes::from)
}

/// Sets every member named `key` to `value`, or adds one at the end.
fn set<'a>(
    members: &mut Vec<(Cow<'a, str>, &'a RawValue)>,
    key: &'static str,
    value: &'a RawValue,
) {
    let mut found = false;
    for (_, member) in members.iter_mut().filter(|(name, _)| name == key) {
        *member = value;
        found = true;
    }
    if !found {
        members.push((Cow::Borrowed(key), value));
    }
}

/// A JSON object's members in order, each value as its JSON text (borrowed from the input).
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some((Key(key), value)) = map.next_entry()? {
                    members.push((key, value));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Object)
    }
}

impl Serialize for Members<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(key, value)| (key, value)))
    }
}

/// A member's name, borrowed from the input unless it has escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Name;
        impl<'de> Visitor<'de> for Name {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, name: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(name)))
            }
            fn visit_str<E>(self, name: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(name.to_owned())))
            }
        }
        deserializer.deserialize_str(Name)
    }
}

/// A chunk as the upstream wrote it. Only a chunk in which a byte search finds a usage object or
/// an error object (`"usage":{`, `"error":{`) is parsed, for those: with `include_usage` an
/// upstream writes `"usage":null` into every other chunk, which the search passes over.
pub(crate) fn read_chunk(json: Bytes) -> Result<Cooked, CookError> {
    static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));
    static ERROR: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"error\""));
    let mut chunk = Chunk {
        json,
        usage: None,
        usage_only: false,
    };
    if has_object(&chunk.json, &USAGE) || has_object(&chunk.json, &ERROR) {
        let carried: Carried<'_> = serde_json::from_slice(&chunk.json).map_err(|e| {
            CookError::failed(format!("the upstream sent a chunk that is not JSON: {e}"))
        })?;
        if let Some(error) = carried.error {
            return Err(CookError::failed(format!(
                "the upstream sent an error mid-stream: {error}"
            )));
        }
        chunk.usage = carried.usage;
        chunk.usage_only =
            carried.usage.is_some() && carried.choices.is_none_or(|choices| choices.is_empty());
    }
    Ok(Cooked::Chunk(chunk))
}

/// Whether `json` has the member name `name` (quoted) followed by `:` and `{`, whitespace
/// allowed. Loose on purpose (it may match a nested member): a match is only a reason to parse.
fn has_object(json: &[u8], name: &Finder<'_>) -> bool {
    name.find_iter(json).any(|at| {
        let rest = json[at + name.needle().len()..].trim_ascii_start();
        rest.first() == Some(&b':') && rest[1..].trim_ascii_start().first() == Some(&b'{')
    })
}

/// What the kitchen reads of an upstream's chunk that a cheap search says may carry a usage
/// object or an error: those, and whether it has choices (a usage chunk has none).
#[derive(Debug, Deserialize)]
struct Carried<'a> {
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    choices: Option<Vec<IgnoredAny>>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

/// The usage of an upstream's whole answer, if it is JSON and has one.
pub(crate) fn whole_usage(json: &[u8]) -> Option<Usage> {
    #[derive(Deserialize)]
    struct Answer {
        #[serde(default)]
        usage: Option<Usage>,
    }
    serde_json::from_slice::<Answer>(json).ok()?.usage
}

/// The models of an upstream's `GET /v1/models`, each as its JSON text.
#[derive(Debug, Deserialize)]
pub(crate) struct UpstreamModels<'a> {
    #[serde(borrow)]
    pub(crate) data: Vec<&'a RawValue>,
}
