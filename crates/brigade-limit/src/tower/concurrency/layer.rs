use tower_layer::Layer;

use super::ConcurrencyLimit;

/// Applies [`ConcurrencyLimit`]: at most N requests in flight, counted until their response
/// bodies end.
///
/// # Examples
///
/// ```
/// use brigade_limit::tower::ConcurrencyLimitLayer;
///
/// let limit = brigade_limit::ConcurrencyLimit::builder().max_in_flight(32).build().unwrap();
/// let layer = ConcurrencyLimitLayer::new(limit);
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct ConcurrencyLimitLayer {
    limit: crate::ConcurrencyLimit,
}

impl ConcurrencyLimitLayer {
    /// Limits with `limit` (shared by every service the layer makes).
    pub fn new(limit: crate::ConcurrencyLimit) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit::new(inner, self.limit.clone())
    }
}
