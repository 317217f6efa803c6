//! `--upstream URL[,OPTION=VALUE]...`: one upstream of the pool and its options, parsed at
//! start with an error that names the bad part.
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

use crate::cook::ModelAlias;

/// One `--upstream` value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct UpstreamSpec {
    pub(crate) url: String,
    pub(crate) id: String,
    pub(crate) weight: f64,
    pub(crate) tier: u32,
    pub(crate) concurrency: Concurrency,
    /// Its own key, from `key-env`; `None`: the kitchen's `--upstream-key`.
    pub(crate) key: Option<Secret>,
    /// Its own aliases; empty: the kitchen's `--model-alias`.
    pub(crate) aliases: Vec<ModelAlias>,
}

/// How many calls an upstream takes at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Concurrency {
    /// As many as come.
    Unlimited,
    /// At most this many (a bulkhead that refuses: the pick goes elsewhere).
    Fixed(usize),
    /// A limit found from the upstream's latency and drops (brigade-limit's `AdaptiveLimit`).
    Adaptive,
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
    /// The URL is not an `http://` or `https://` URL with a host.
    Url(String),
    /// A part after the URL is not `OPTION=VALUE`.
    NotAnOption(String),
    /// An option the kitchen does not know.
    UnknownOption(String),
    /// An option given twice in one value (only `alias` repeats).
    Repeated(String),
    /// An option's value is not what it takes.
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
            Self::Url(url) => write!(
                f,
                "`{url}`: the URL must start with http:// or https:// and name a host"
            ),
            Self::NotAnOption(part) => write!(f, "`{part}`: expected OPTION=VALUE"),
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
        let mut parts = text.split(',');
        let url = parts.next().unwrap_or_default().trim();
        let authority = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .map(|rest| rest.split('/').next().unwrap_or_default())
            .filter(|authority| !authority.is_empty())
            .ok_or_else(|| BadUpstream::Url(url.to_owned()))?;
        let mut spec = Self {
            url: url.to_owned(),
            id: authority.to_owned(),
            weight: 1.0,
            tier: 0,
            concurrency: Concurrency::Unlimited,
            key: None,
            aliases: Vec::new(),
        };
        let mut given: Vec<&str> = Vec::new();
        for part in parts.map(str::trim) {
            let Some((name, value)) = part.split_once('=') else {
                return Err(BadUpstream::NotAnOption(part.to_owned()));
            };
            let (name, value) = (name.trim(), value.trim());
            if name != "alias" && given.contains(&name) {
                return Err(BadUpstream::Repeated(name.to_owned()));
            }
            given.push(name);
            let bad = |expected| BadUpstream::Value {
                part: part.to_owned(),
                expected,
            };
            match name {
                "id" if !value.is_empty() => spec.id = value.to_owned(),
                "id" => return Err(bad("a name")),
                "weight" => {
                    spec.weight = value
                        .parse()
                        .ok()
                        .filter(|w: &f64| w.is_finite() && *w > 0.0)
                        .ok_or_else(|| bad("a number above zero"))?;
                }
                "tier" => spec.tier = value.parse().map_err(|_| bad("0, 1, 2..."))?,
                "concurrency" => {
                    spec.concurrency = match value {
                        "adaptive" => Concurrency::Adaptive,
                        n => n
                            .parse()
                            .ok()
                            .filter(|n| *n > 0)
                            .map(Concurrency::Fixed)
                            .ok_or_else(|| bad("a number above zero, or `adaptive`"))?,
                    };
                }
                "key-env" if !value.is_empty() => {
                    let key = env(value).ok_or_else(|| BadUpstream::KeyEnv(value.to_owned()))?;
                    spec.key = Some(Secret(key));
                }
                "key-env" => return Err(bad("the name of an environment variable")),
                "alias" => {
                    let alias = value
                        .split_once(':')
                        .and_then(|(name, model)| {
                            ModelAlias::parse(&format!("{}={}", name.trim(), model.trim())).ok()
                        })
                        .ok_or_else(|| bad("NAME:MODEL, both non-empty"))?;
                    if spec.aliases.iter().any(|a| a.name == alias.name) {
                        return Err(BadUpstream::Repeated(format!("alias={}", alias.name)));
                    }
                    spec.aliases.push(alias);
                }
                _ => return Err(BadUpstream::UnknownOption(name.to_owned())),
            }
        }
        Ok(spec)
    }
}

/// Checks a set of upstreams: each id once.
pub(crate) fn check(specs: &[UpstreamSpec]) -> Result<(), BadUpstream> {
    for (i, spec) in specs.iter().enumerate() {
        if specs[..i].iter().any(|other| other.id == spec.id) {
            return Err(BadUpstream::DuplicateId(spec.id.clone()));
        }
    }
    Ok(())
}
