//! One endpoint as text, `URL[,id=…,weight=…,tier=…,concurrency=N|adaptive]`, for a command
//! line or a configuration file.
//!
//! The grammar: the URL first, then `,`-separated `NAME=VALUE` options, blanks around each
//! part, name and value ignored. The options this crate knows each appear once; any other is
//! kept, in order, for the caller to read ([`EndpointSpec::options`]), so an application adds
//! options of its own (a key, a model alias) without a grammar of its own.

use std::error::Error as StdError;
use std::fmt;
use std::num::NonZeroUsize;
use std::str::FromStr;

use brigade_limit::AdaptiveLimit;

use crate::{EndpointConfig, InvalidConfig};

/// How many calls an endpoint takes at once (`concurrency=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Concurrency {
    /// As many as come (no `concurrency=`).
    Unlimited,
    /// At most this many (`concurrency=N`): the pick skips the endpoint while it has this
    /// many calls in flight.
    Fixed(NonZeroUsize),
    /// A limit found from the endpoint's latency and drops (`concurrency=adaptive`): an
    /// [`AdaptiveLimit`] with its defaults.
    Adaptive,
}

/// One endpoint as text: `URL[,id=ID][,weight=W][,tier=T][,concurrency=N|adaptive]`, and
/// options of the caller's own.
///
/// | option | value | default |
/// | --- | --- | --- |
/// | `id` | the endpoint's id in the pool (non-empty) | the URL's `host[:port]` |
/// | `weight` | its share of the picks in its tier: finite, above zero | 1 |
/// | `tier` | its priority tier, 0 first (see [`EndpointConfig::tier`]) | 0 |
/// | `concurrency` | `N` (at most N calls at once, N ≥ 1) or `adaptive` ([`Concurrency`]) | unlimited |
/// | any other `NAME=VALUE` | kept in order for the caller ([`options`](Self::options)) | |
///
/// The URL is an `http://` or `https://` URL with a host. Blanks around each `,`-separated
/// part, and around an option's name and value, are ignored. [`config`](Self::config) turns
/// the spec into the pool's [`EndpointConfig`]; its `Display` writes it back as text that
/// parses to the same spec.
///
/// # Examples
///
/// ```
/// use brigade_balance::{Concurrency, EndpointSpec, Pool};
///
/// let spec: EndpointSpec = "https://api.example.com/v1, tier=1, concurrency=8, key-env=API_KEY"
///     .parse()?;
/// assert_eq!(spec.id(), "api.example.com"); // the URL's host, without an `id=`
/// assert_eq!((spec.tier(), spec.weight()), (1, 1.0));
/// assert!(matches!(spec.concurrency(), Concurrency::Fixed(n) if n.get() == 8));
/// // Options of the caller's own, in order.
/// assert_eq!(spec.options().collect::<Vec<_>>(), [("key-env", "API_KEY")]);
///
/// let pool = Pool::builder()
///     .endpoint(spec.id(), spec.url().to_owned(), spec.config()?)
///     .build()?;
/// assert_eq!(pool.pick()?.tier(), 1);
///
/// let error = "http://10.0.0.1:8000,weight=0".parse::<EndpointSpec>().unwrap_err();
/// assert_eq!(error.to_string(), "`weight=0`: expected a number above zero");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointSpec {
    url: String,
    id: String,
    weight: f64,
    tier: u32,
    concurrency: Concurrency,
    options: Vec<(String, String)>,
}

impl EndpointSpec {
    /// The URL, as given (without the blanks around it).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The endpoint's id: `id=`, or the URL's `host[:port]`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its weight (`weight=`, default 1): finite and above zero.
    pub const fn weight(&self) -> f64 {
        self.weight
    }

    /// Its priority tier (`tier=`, default 0).
    pub const fn tier(&self) -> u32 {
        self.tier
    }

    /// How many calls it takes at once (`concurrency=`, default unlimited).
    pub const fn concurrency(&self) -> Concurrency {
        self.concurrency
    }

    /// The options this crate does not know, as `(name, value)` in the order given, for the
    /// caller to read (a name may repeat).
    pub fn options(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.options
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
    }

    /// The pool's settings of this endpoint: its weight and tier, and for `concurrency=` an
    /// [`AdaptiveLimit`]: one held at N for `N`, one with its defaults for `adaptive`. Set its
    /// [breaker](EndpointConfig::breaker) on the result, if it has one of its own.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig::Limit`] if N is beyond what a limit can hold (tokio's semaphore's
    /// maximum, `usize::MAX >> 3`).
    pub fn config(&self) -> Result<EndpointConfig, InvalidConfig> {
        let config = EndpointConfig::new().weight(self.weight).tier(self.tier);
        let limit = match self.concurrency {
            Concurrency::Unlimited => return Ok(config),
            Concurrency::Adaptive => AdaptiveLimit::builder(),
            Concurrency::Fixed(n) => AdaptiveLimit::builder()
                .min_limit(n.get())
                .initial_limit(n.get())
                .max_limit(n.get()),
        };
        let limit = limit.build().map_err(InvalidConfig::Limit)?;
        Ok(config.adaptive_limit(limit))
    }
}

impl FromStr for EndpointSpec {
    type Err = InvalidEndpointSpec;

    fn from_str(text: &str) -> Result<Self, InvalidEndpointSpec> {
        let mut parts = text.split(',');
        let url = parts.next().unwrap_or_default().trim();
        let id = host_port(url).ok_or_else(|| InvalidEndpointSpec::Url(url.to_owned()))?;
        let mut spec = Self {
            url: url.to_owned(),
            id: id.to_owned(),
            weight: 1.0,
            tier: 0,
            concurrency: Concurrency::Unlimited,
            options: Vec::new(),
        };
        // The options of this crate given so far, as bits in the order of `KNOWN`.
        const KNOWN: [&str; 4] = ["id", "weight", "tier", "concurrency"];
        let mut given = 0_u8;
        for part in parts.map(str::trim) {
            let (name, value) = part
                .split_once('=')
                .map(|(name, value)| (name.trim(), value.trim()))
                .filter(|(name, _)| !name.is_empty())
                .ok_or_else(|| InvalidEndpointSpec::NotAnOption(part.to_owned()))?;
            let Some(bit) = KNOWN.iter().position(|known| *known == name) else {
                spec.options.push((name.to_owned(), value.to_owned()));
                continue;
            };
            if given & (1 << bit) != 0 {
                return Err(InvalidEndpointSpec::Repeated(name.to_owned()));
            }
            given |= 1 << bit;
            let bad = |expected| InvalidEndpointSpec::Value {
                part: part.to_owned(),
                expected,
            };
            match name {
                "id" if value.is_empty() => return Err(bad("a name")),
                "id" => value.clone_into(&mut spec.id),
                "weight" => {
                    spec.weight = value
                        .parse()
                        .ok()
                        .filter(|w: &f64| w.is_finite() && *w > 0.0)
                        .ok_or_else(|| bad("a number above zero"))?;
                }
                "tier" => spec.tier = value.parse().map_err(|_| bad("0, 1, 2..."))?,
                _ => {
                    spec.concurrency = match value {
                        "adaptive" => Concurrency::Adaptive,
                        n => n
                            .parse()
                            .map(Concurrency::Fixed)
                            .map_err(|_| bad("a number above zero, or `adaptive`"))?,
                    };
                }
            }
        }
        Ok(spec)
    }
}

/// The `host[:port]` of an `http://` or `https://` URL, if it has a host.
fn host_port(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    // Without the user information: it is no name for the endpoint, and may hold a secret.
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = match host_port.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => host,
        _ => host_port,
    };
    (!host.is_empty() && !host.contains(char::is_whitespace)).then_some(host_port)
}

/// Writes the spec as text that parses back to it: the URL, then each option that is not its
/// default, then the caller's options in order.
impl fmt::Display for EndpointSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)?;
        if host_port(&self.url) != Some(self.id.as_str()) {
            write!(f, ",id={}", self.id)?;
        }
        if self.weight != 1.0 {
            write!(f, ",weight={}", self.weight)?;
        }
        if self.tier != 0 {
            write!(f, ",tier={}", self.tier)?;
        }
        match self.concurrency {
            Concurrency::Unlimited => {}
            Concurrency::Fixed(n) => write!(f, ",concurrency={n}")?,
            Concurrency::Adaptive => f.write_str(",concurrency=adaptive")?,
        }
        for (name, value) in &self.options {
            write!(f, ",{name}={value}")?;
        }
        Ok(())
    }
}

/// Text that is not an [`EndpointSpec`]: the part at fault is named.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidEndpointSpec {
    /// The URL is not an `http://` or `https://` URL with a host.
    Url(String),
    /// A part after the URL is not `NAME=VALUE` with a name.
    NotAnOption(String),
    /// An option of this crate is given twice (its name).
    Repeated(String),
    /// An option's value is not what it takes.
    Value {
        /// The part, `NAME=VALUE`.
        part: String,
        /// What the option takes.
        expected: &'static str,
    },
}

impl fmt::Display for InvalidEndpointSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Url(url) => write!(
                f,
                "`{url}`: the URL must start with http:// or https:// and name a host"
            ),
            Self::NotAnOption(part) => write!(f, "`{part}`: expected OPTION=VALUE"),
            Self::Repeated(name) => write!(f, "`{name}` is given twice"),
            Self::Value { part, expected } => write!(f, "`{part}`: expected {expected}"),
        }
    }
}

impl StdError for InvalidEndpointSpec {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_the_urls_host_and_port() {
        for (url, id) in [
            ("http://10.0.0.1:8000", "10.0.0.1:8000"),
            ("https://api.example.com/v1", "api.example.com"),
            ("http://user:secret@gpu-1:8000/v1", "gpu-1:8000"),
            ("http://[::1]:8000/v1", "[::1]:8000"),
            ("http://[::1]", "[::1]"),
            ("http://host?query", "host"),
        ] {
            let spec: EndpointSpec = url.parse().unwrap();
            assert_eq!((spec.url(), spec.id()), (url, id));
        }
    }

    #[test]
    fn a_url_without_a_host_is_refused() {
        for url in [
            "",
            "10.0.0.1:8000",
            "ftp://10.0.0.1",
            "http://",
            "https:///v1",
            "http://:8000",
            "http://user@",
            "http://a b",
        ] {
            assert_eq!(
                url.parse::<EndpointSpec>(),
                Err(InvalidEndpointSpec::Url(url.trim().to_owned())),
                "{url:?}"
            );
        }
    }
}
