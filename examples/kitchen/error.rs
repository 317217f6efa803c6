//! The error contract of DESIGN.md: every error is JSON in OpenAI's shape,
//! `{"error":{"message":"...","type":"...","code":"..."}}`, with the headers its status needs;
//! except an upstream's own error answer, which the client gets as the upstream wrote it.

use std::time::Duration;

use bytes::Bytes;
use headers::{ContentType, Header, HeaderMapExt, RetryAfter};
use http::header::{ALLOW, CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::cook::ErrorAnswer;
use crate::routes::{Body, full};

/// An error answer: status, OpenAI error fields, extra headers.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
    pub(crate) kind: &'static str,
    pub(crate) code: &'static str,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    /// An upstream's error answer, sent as it came instead of the fields above (which say what
    /// it says, for a WebSocket's error message and the log).
    pub(crate) passed: Option<Bytes>,
}

/// `{"error":{...}}`: the body of an error answer, and the data of a final SSE error event.
#[derive(Debug, Serialize)]
pub(crate) struct ErrorBody<'a> {
    pub(crate) error: ErrorFields<'a>,
}

/// OpenAI's error fields.
#[derive(Debug, Serialize)]
pub(crate) struct ErrorFields<'a> {
    pub(crate) message: &'a str,
    #[serde(rename = "type")]
    pub(crate) kind: &'a str,
    pub(crate) code: &'a str,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            code,
            headers: Vec::new(),
            passed: None,
        }
    }

    /// An upstream's error answer, passed to the client as it is: its status, body, content
    /// type and `Retry-After`.
    pub(crate) fn upstream(answer: ErrorAnswer) -> Self {
        #[derive(Deserialize)]
        struct Said {
            error: SaidFields,
        }
        #[derive(Deserialize)]
        struct SaidFields {
            message: String,
        }
        let message = serde_json::from_slice::<Said>(&answer.body).map_or_else(
            |_| format!("the upstream answered {}", answer.status),
            |said| said.error.message,
        );
        let kind = if answer.status.is_client_error() {
            "invalid_request_error"
        } else {
            "server_error"
        };
        let mut error = Self::new(answer.status, kind, "upstream_error", message);
        let content_type = answer
            .content_type
            .unwrap_or(HeaderValue::from_static("application/json"));
        error = error.header(CONTENT_TYPE, content_type);
        if let Some((retry_after, _)) = answer.retry_after {
            error = error.header(RETRY_AFTER, retry_after);
        }
        error.passed = Some(answer.body);
        error
    }

    /// 400: the message names the field.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
            message,
        )
    }

    pub(crate) fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            "missing or unknown API key: send `Authorization: Bearer <key>`",
        )
        .header(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        )
    }

    pub(crate) fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            format!("no route for {path}"),
        )
    }

    pub(crate) fn method_not_allowed(allow: &'static str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            format!("method not allowed; allowed: {allow}"),
        )
        .header(ALLOW, HeaderValue::from_static(allow))
    }

    pub(crate) fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "body_too_large",
            format!("request body over {limit} bytes"),
        )
    }

    pub(crate) fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            "unsupported_media_type",
            "content-type must be application/json",
        )
    }

    /// 503 with `Retry-After`: overloaded, breaker open or shutting down.
    pub(crate) fn unavailable(
        code: &'static str,
        message: impl Into<String>,
        retry_after: Duration,
    ) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            code,
            message,
        )
        .retry_after(retry_after)
    }

    pub(crate) fn shutting_down(grace: Duration) -> Self {
        Self::unavailable("shutting_down", "the server is shutting down", grace)
    }

    pub(crate) fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "server_error",
            "upstream_error",
            message,
        )
    }

    /// 504: every attempt timed out before its first chunk.
    pub(crate) fn upstream_timeout(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "server_error",
            "upstream_timeout",
            message,
        )
    }

    pub(crate) fn deadline() -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "server_error",
            "deadline_exceeded",
            "the request's deadline passed before the first token",
        )
    }

    pub(crate) fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal_error",
            "internal error",
        )
    }

    #[must_use]
    pub(crate) fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Adds a typed header.
    #[must_use]
    fn typed<H: Header>(mut self, header: &H) -> Self {
        let mut values = Vec::with_capacity(1);
        header.encode(&mut values);
        self.headers
            .extend(values.into_iter().map(|value| (H::name().clone(), value)));
        self
    }

    /// `Retry-After` in whole seconds, rounded up (at least 1).
    #[must_use]
    pub(crate) fn retry_after(self, after: Duration) -> Self {
        let secs = Duration::from_secs(retry_after_secs(after));
        self.typed(&RetryAfter::delay(secs))
    }

    /// The `Retry-After` this answer carries, in seconds.
    pub(crate) fn retry_after_secs(&self) -> Option<u64> {
        let (_, value) = self.headers.iter().find(|(name, _)| *name == RETRY_AFTER)?;
        value.to_str().ok()?.parse().ok()
    }

    /// The error fields, for a JSON body or a message.
    pub(crate) fn fields(&self) -> ErrorFields<'_> {
        ErrorFields {
            message: &self.message,
            kind: self.kind,
            code: self.code,
        }
    }

    /// The JSON body alone, for a final SSE error event.
    pub(crate) fn json(&self) -> String {
        error_json(&self.message, self.kind, self.code)
    }

    pub(crate) fn into_response(self) -> Response<Body> {
        let body = match self.passed {
            Some(passed) => full(passed),
            None => full(self.json()),
        };
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.typed_insert(ContentType::json());
        for (name, value) in self.headers {
            if name == CONTENT_TYPE {
                headers.insert(name, value);
            } else {
                headers.append(name, value);
            }
        }
        response
    }
}

/// `{"error":{"message","type","code"}}`.
pub(crate) fn error_json(message: &str, kind: &str, code: &str) -> String {
    let body = ErrorBody {
        error: ErrorFields {
            message,
            kind,
            code,
        },
    };
    // Strings only: serializing cannot fail.
    serde_json::to_string(&body).unwrap_or_default()
}

/// Whole seconds, rounded up (brigade-limit's rule), at least 1.
pub(crate) fn retry_after_secs(after: Duration) -> u64 {
    brigade_limit::headers::retry_after_secs(after).max(1)
}

/// An error and its causes, `: `-separated, for a log line or a message: hyper-util's error
/// says only "client error (Connect)", its causes say which (refused, timed out, an unknown
/// certificate issuer...); sqlx's likewise.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
