use std::fmt;

use tower_layer::Layer;

use super::Balance;
use crate::{HttpClassifier, Pool};

/// Builds a [`Balance`] over a [`Pool`] of services.
///
/// # Examples
///
/// ```
/// use std::convert::Infallible;
/// use brigade_balance::{EndpointConfig, HttpClassifier, Pool};
/// use brigade_balance::tower::BalanceLayer;
/// use http::{Request, Response};
/// use tower::{Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let upstream = tower::service_fn(|_: Request<()>| async {
///     Ok::<_, Infallible>(Response::new("tokens"))
/// });
/// let pool = Pool::builder().endpoint("a", upstream, EndpointConfig::new()).build().unwrap();
/// let balance = BalanceLayer::new().classify(HttpClassifier).layer(pool);
/// let response = balance.oneshot(Request::new(())).await.unwrap();
/// assert_eq!(response.status(), 200);
/// # }
/// ```
#[derive(Clone)]
pub struct BalanceLayer<C = HttpClassifier> {
    classify: C,
}

impl<C> fmt::Debug for BalanceLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BalanceLayer").finish_non_exhaustive()
    }
}

impl Default for BalanceLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl BalanceLayer {
    /// A layer with the [`HttpClassifier`].
    pub const fn new() -> Self {
        Self {
            classify: HttpClassifier,
        }
    }
}

impl<C> BalanceLayer<C> {
    /// Classifies responses with `classify` instead.
    pub fn classify<C2>(self, classify: C2) -> BalanceLayer<C2> {
        BalanceLayer { classify }
    }
}

impl<S, C: Clone> Layer<Pool<S>> for BalanceLayer<C> {
    type Service = Balance<S, C>;

    fn layer(&self, pool: Pool<S>) -> Self::Service {
        Balance::new(pool).classify(self.classify.clone())
    }
}
