use std::fmt;

use tower_layer::Layer;

use super::RetryService;
use crate::{Backoff, Retry, RetryOnError};

/// Wraps services in a [`RetryService`] that retries through a [`Retry`] policy.
///
/// Every service the layer builds shares the policy, and so its budget.
#[derive(Clone)]
pub struct RetryLayer<S = Backoff, C = RetryOnError> {
    policy: Retry<S>,
    classify: C,
}

impl<S> RetryLayer<S> {
    /// A layer that retries every error ([`RetryOnError`]).
    pub const fn new(policy: Retry<S>) -> Self {
        Self {
            policy,
            classify: RetryOnError,
        }
    }
}

impl<S, C> RetryLayer<S, C> {
    /// Replaces the classifier: which outcomes to retry, stop on or treat as throttled.
    pub fn classify<C2>(self, classify: C2) -> RetryLayer<S, C2> {
        RetryLayer {
            policy: self.policy,
            classify,
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for RetryLayer<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<Svc, S, C: Clone> Layer<Svc> for RetryLayer<S, C> {
    type Service = RetryService<Svc, S, C>;

    fn layer(&self, inner: Svc) -> Self::Service {
        RetryService::new(inner, self.policy.clone(), self.classify.clone())
    }
}
