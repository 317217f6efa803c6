//! API keys: where the kitchen reads them, how a request's key is checked, and what the rest of
//! the kitchen knows of a client.
//!
//! # Sources
//!
//! With no key configured, no key is required and a client is its IP address. Otherwise every
//! key from these sources is accepted, and nothing else:
//!
//! - `--api-key KEY` (repeatable, or comma-separated), or, when no `--api-key` is given, the
//!   environment variable `KITCHEN_API_KEYS` (comma-separated; clap reads it, and the command
//!   line wins over it). The command line is readable by every user of the machine (`ps`),
//!   the environment only by the process's owner: `--api-key` is for trials.
//! - `--api-keys-file PATH`: one key per line, surrounding whitespace trimmed, blank lines and
//!   lines starting with `#` skipped; read once, at start. A file without a key is refused
//!   (the kitchen would otherwise run open while its operator believes it locked).
//!
//! A key is non-empty printable ASCII without spaces or commas (a bearer token); anything else
//! fails at start.
//!
//! # Checking
//!
//! Only the SHA-256 digest of each key is kept once the flags are parsed. A request's bearer
//! key is hashed and its digest compared with the accepted ones, so the time a comparison takes
//! depends on digests only: it can tell how much of the digest of a guess matches the digest of
//! a key, never how much of the guess matches the key (and a digest is no use without a key
//! that hashes to it).
//!
//! # Identity
//!
//! A request is known to the rest of the kitchen by a [`ClientKey`]: `key:` and the first 128
//! bits of its key's digest in hex, or `ip:` and its address when no keys are configured. The
//! rate limits (in this process and in Redis, where it becomes part of a key name) and the jobs'
//! owners see only that, never the key, so Redis's `KEYS` or `MONITOR` shows no client's secret.
//! A digest of a short or guessable key can be found by hashing guesses: use long random keys
//! (`openssl rand -hex 32`).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use http::HeaderMap;
use http::header::AUTHORIZATION;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::routes::App;

/// An accepted API key: its SHA-256 digest, never the key.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ApiKey {
    digest: [u8; 32],
}

impl ApiKey {
    /// The key `text`, checked (non-empty printable ASCII without spaces or commas) and hashed;
    /// clap's value parser of `--api-key` and `KITCHEN_API_KEYS`.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("an API key must not be empty".to_owned());
        }
        if !text.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
            return Err(
                "an API key must be printable ASCII without spaces or commas (a bearer token)"
                    .to_owned(),
            );
        }
        Ok(Self::hash(text))
    }

    fn hash(text: &str) -> Self {
        Self {
            digest: Sha256::digest(text.as_bytes()).into(),
        }
    }

    /// `key:` and the first 128 bits of the digest, in hex.
    fn client(&self) -> ClientKey {
        let mut first = [0_u8; 16];
        first.copy_from_slice(&self.digest[..16]);
        ClientKey(format!("key:{:032x}", u128::from_be_bytes(first)))
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ApiKey").field(&self.client().0).finish()
    }
}

/// The keys of `--api-keys-file`, read at start.
#[derive(Clone, Debug)]
pub(crate) struct KeyFile {
    path: PathBuf,
    keys: Vec<ApiKey>,
}

impl KeyFile {
    /// Reads and parses the key file at `path`; clap's value parser of `--api-keys-file`.
    pub(crate) fn read(path: &str) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
        let keys = parse_key_lines(&text)?;
        Ok(Self {
            path: PathBuf::from(path),
            keys,
        })
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// How many keys it holds.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }
}

/// The keys of a key file's text: one per line, trimmed; blank lines and `#` comments skipped.
/// At least one key, and each a valid one (the error names its line).
pub(crate) fn parse_key_lines(text: &str) -> Result<Vec<ApiKey>, String> {
    let mut keys = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        keys.push(ApiKey::parse(line).map_err(|e| format!("line {}: {e}", number + 1))?);
    }
    if keys.is_empty() {
        return Err("it holds no key (one per line; `#` starts a comment)".to_owned());
    }
    Ok(keys)
}

/// Who a request is, for the rate limits and the jobs: `key:` and the first 128 bits of the
/// SHA-256 of its API key in hex, or `ip:` and its address when no keys are configured. Never
/// the key itself.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ClientKey(String);

impl ClientKey {
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn into_string(self) -> String {
        self.0
    }

    /// Whether the client showed an API key (else it is known by its address).
    pub(crate) fn is_api_key(&self) -> bool {
        self.0.starts_with("key:")
    }
}

/// The request's client: by its API key when keys are configured (401 without an accepted
/// one), else by its address.
pub(crate) fn authorize(
    app: &App,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<ClientKey, ApiError> {
    let config = &app.config;
    let file = config.api_keys_file.iter().flat_map(|file| &file.keys);
    let mut accepted = config.api_keys.iter().chain(file).peekable();
    if accepted.peek().is_none() {
        return Ok(ClientKey(format!("ip:{}", peer.ip())));
    }
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|v| ApiKey::hash(v.trim()))
        .ok_or_else(ApiError::unauthorized)?;
    if accepted.any(|key| *key == presented) {
        Ok(presented.client())
    } else {
        Err(ApiError::unauthorized())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_lines_skip_comments_and_blanks_and_trim() {
        let keys =
            parse_key_lines("# the kitchen's keys\n\n  alpha-1  \n#beta\r\ngamma_2\r\n   \n")
                .unwrap();
        assert_eq!(keys, [ApiKey::hash("alpha-1"), ApiKey::hash("gamma_2")]);
    }

    #[test]
    fn a_key_file_without_a_key_or_with_a_bad_one_is_refused() {
        for text in ["", "\n\n", "# only a comment\n"] {
            let error = parse_key_lines(text).unwrap_err();
            assert!(error.contains("no key"), "{text:?}: {error}");
        }
        let error = parse_key_lines("good\nbad key\n").unwrap_err();
        assert!(error.starts_with("line 2:"), "{error}");
        let error = parse_key_lines("a,b\n").unwrap_err();
        assert!(error.starts_with("line 1:"), "{error}");
    }

    #[test]
    fn a_client_key_is_128_bits_of_the_digest_never_the_key() {
        let key = ApiKey::parse("sk-kitchen-secret").unwrap();
        let client = key.client();
        // SHA-256("sk-kitchen-secret"), its first 16 bytes.
        let expected = Sha256::digest(b"sk-kitchen-secret");
        let hex: String = expected[..16].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(client.clone().into_string(), format!("key:{hex}"));
        assert!(client.is_api_key());
        assert!(!format!("{key:?}").contains("secret"));
        assert!(ApiKey::parse("").is_err());
        assert!(ApiKey::parse("with space").is_err());
    }
}
