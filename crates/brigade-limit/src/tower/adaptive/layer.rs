use std::fmt;

use tower_layer::Layer;

use super::AdaptiveConcurrencyLimit;
use crate::concurrency::adaptive::HttpClassifier;

/// Applies [`AdaptiveConcurrencyLimit`]: at most the adaptive limit's requests in flight,
/// counted until their response bodies end, the limit moved by what the responses show.
///
/// # Examples
///
/// ```
/// use brigade_limit::AdaptiveLimit;
/// use brigade_limit::concurrency::adaptive::Outcome;
/// use brigade_limit::tower::AdaptiveConcurrencyLimitLayer;
///
/// let limit = AdaptiveLimit::builder().max_limit(64).build().unwrap();
/// // 429 and 503 are drops (the default); here a 500 is one too.
/// let layer = AdaptiveConcurrencyLimitLayer::new(limit).classify(
///     |result: &Result<http::Response<()>, std::io::Error>| match result {
///         Ok(r) if r.status().is_server_error() || r.status() == 429 => Outcome::Dropped,
///         Ok(_) => Outcome::Success,
///         Err(_) => Outcome::Dropped,
///     },
/// );
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct AdaptiveConcurrencyLimitLayer<C = HttpClassifier> {
    limit: crate::AdaptiveLimit,
    classify: C,
}

impl AdaptiveConcurrencyLimitLayer {
    /// Limits with `limit` (shared by every service the layer makes), classifying responses
    /// with [`HttpClassifier`].
    pub fn new(limit: crate::AdaptiveLimit) -> Self {
        Self {
            limit,
            classify: HttpClassifier,
        }
    }
}

impl<C> AdaptiveConcurrencyLimitLayer<C> {
    /// The same layer, classifying results with `classify` (a
    /// [`Classify`](crate::concurrency::adaptive::Classify), such as a closure over
    /// `&Result<Response, Error>`).
    pub fn classify<D>(self, classify: D) -> AdaptiveConcurrencyLimitLayer<D> {
        AdaptiveConcurrencyLimitLayer {
            limit: self.limit,
            classify,
        }
    }
}

impl<C> fmt::Debug for AdaptiveConcurrencyLimitLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveConcurrencyLimitLayer")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl<S, C: Clone> Layer<S> for AdaptiveConcurrencyLimitLayer<C> {
    type Service = AdaptiveConcurrencyLimit<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        AdaptiveConcurrencyLimit::new(inner, self.limit.clone()).classify(self.classify.clone())
    }
}
