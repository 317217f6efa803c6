use std::fmt;

use tower_layer::Layer;

use super::CircuitBreaker;
use crate::ErrorsAreFailures;

/// Puts a [`CircuitBreaker`](crate::CircuitBreaker) in front of a service; see the
/// [module docs](super).
///
/// Every service the layer makes shares the one breaker.
#[derive(Clone)]
pub struct CircuitBreakerLayer<C = ErrorsAreFailures> {
    breaker: crate::CircuitBreaker,
    classify: C,
}

impl<C> fmt::Debug for CircuitBreakerLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl CircuitBreakerLayer {
    /// A layer over `breaker`, with `Ok` a success and `Err` a failure.
    pub const fn new(breaker: crate::CircuitBreaker) -> Self {
        Self {
            breaker,
            classify: ErrorsAreFailures,
        }
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// The same layer, classifying results with `classify` (a
    /// [`Classify`](crate::Classify), such as a closure over `&Result<Response, Error>`).
    pub fn classify<D>(self, classify: D) -> CircuitBreakerLayer<D> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            classify,
        }
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::new(inner, self.breaker.clone()).classify(self.classify.clone())
    }
}
