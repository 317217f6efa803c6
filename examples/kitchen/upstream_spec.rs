//! `--upstream URL[,OPTION=VALUE]...`: one upstream of the pool and its options, parsed at
//! start with an error that names the bad part. The URL and the pool's options are
//! brigade-balance's [`EndpointSpec`]; `key-env` and `alias` are the kitchen's.
//!
//! | option | value | default |
//! | --- | --- | --- |
//! | `id` | the name in `/metrics` and the log | the URL's `host:port` |
//! | `weight` | its share of the picks in its tier, a number above zero | 1 |
//! | `tier` | 0 first; a higher tier answers only while every lower one is out | 0 |
//! | `concurrency` | `N` (at most N calls at once) or `adaptive` (found from latency and drops) | none |
//! | `key-env` | an environment variable holding its bearer key | `--upstream-key` |
//! | `alias` | `NAME:MODEL`, a model clients ask for as NAME, sent as MODEL (repeatable) | `--model-alias` |

use std::error::Error;
use std::fmt;

use brigade_balance::{EndpointSpec, InvalidEndpointSpec};

use crate::cook::ModelAlias;

/// One `--upstream` value: brigade-balance's endpoint grammar, and the kitchen's own options.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct UpstreamSpec {
    /// The URL, id, weight, tier and concurrency.
    pub(crate) endpoint: EndpointSpec,
    /// Its own key, from `key-env`; `None`: the kitchen's `--upstream-key`.
    pub(crate) key: Option<Secret>,
    /// Its own aliases; empty: the kitchen's `--model-alias`.
    pub(crate) aliases: Vec<ModelAlias>,
}

/// A secret from the command line or the environment: its `Debug` shows `***`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(secret: String) -> Self {
        Self(secret)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A bad `--upstream` value, or a bad set of them: the part at fault is named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum BadUpstream {
    /// Not brigade-balance's grammar: the URL, or one of the pool's options.
    Endpoint(InvalidEndpointSpec),
    /// An option the kitchen does not know.
    UnknownOption(String),
    /// `key-env` given twice.
    Repeated(String),
    /// A kitchen option's value is not what it takes.
    Value {
        part: String,
        expected: &'static str,
    },
    /// `key-env` names a variable that is not set (or not UTF-8).
    KeyEnv(String),
    /// Two upstreams share an id.
    DuplicateId(String),
}

impl fmt::Display for BadUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Endpoint(bad) => bad.fmt(f),
            Self::UnknownOption(name) => write!(
                f,
                "`{name}`: unknown option (id, weight, tier, concurrency, key-env, alias)"
            ),
            Self::Repeated(name) => write!(f, "`{name}` is given twice"),
            Self::Value { part, expected } => write!(f, "`{part}`: expected {expected}"),
            Self::KeyEnv(name) => write!(f, "`key-env={name}`: the variable is not set"),
            Self::DuplicateId(id) => write!(
                f,
                "two upstreams have the id `{id}`: give each its own with `id=NAME`"
            ),
        }
    }
}

impl Error for BadUpstream {}

impl UpstreamSpec {
    /// clap's value parser; reads `key-env`'s variable.
    pub(crate) fn parse(text: &str) -> Result<Self, BadUpstream> {
        Self::parse_with(text, |name| std::env::var(name).ok())
    }

    /// Parses `text`, reading variables through `env`.
    pub(crate) fn parse_with(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, BadUpstream> {
        let endpoint: EndpointSpec = text.parse().map_err(BadUpstream::Endpoint)?;
        let mut key = None;
        let mut aliases: Vec<ModelAlias> = Vec::new();
        for (name, value) in endpoint.options() {
            let bad = |expected| BadUpstream::Value {
                part: format!("{name}={value}"),
                expected,
            };
            match name {
                "key-env" if key.is_some() => return Err(BadUpstream::Repeated(name.to_owned())),
                "key-env" if value.is_empty() => {
                    return Err(bad("the name of an environment variable"));
                }
                "key-env" => {
                    let secret = env(value).ok_or_else(|| BadUpstream::KeyEnv(value.to_owned()))?;
                    key = Some(Secret(secret));
                }
                "alias" => {
                    let alias = value
                        .split_once(':')
                        .and_then(|(name, model)| {
                            ModelAlias::parse(&format!("{}={}", name.trim(), model.trim())).ok()
                        })
                        .ok_or_else(|| bad("NAME:MODEL, both non-empty"))?;
                    if aliases.iter().any(|a| a.name == alias.name) {
                        return Err(BadUpstream::Repeated(format!("alias={}", alias.name)));
                    }
                    aliases.push(alias);
                }
                _ => return Err(BadUpstream::UnknownOption(name.to_owned())),
            }
        }
        Ok(Self {
            endpoint,
            key,
            aliases,
        })
    }
}

/// Checks a set of upstreams: each id once.
pub(crate) fn check(specs: &[UpstreamSpec]) -> Result<(), BadUpstream> {
    for (i, spec) in specs.iter().enumerate() {
        let id = spec.endpoint.id();
        if specs[..i].iter().any(|other| other.endpoint.id() == id) {
            return Err(BadUpstream::DuplicateId(id.to_owned()));
        }
    }
    Ok(())
}
