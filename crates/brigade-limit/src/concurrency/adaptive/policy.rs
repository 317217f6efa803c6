//! The two control laws: how a window's latency and drops move the limit.

use crate::InvalidConfig;

/// How an [`AdaptiveLimit`](super::AdaptiveLimit) moves its limit after each window of
/// samples: [`Gradient`] (the default) or [`Aimd`].
///
/// # Examples
///
/// ```
/// use brigade_limit::{AdaptiveLimit, Aimd, Gradient};
///
/// let gradient = AdaptiveLimit::builder()
///     .policy(Gradient::new().tolerance(1.3).smoothing(0.3))
///     .build()
///     .unwrap();
/// let aimd = AdaptiveLimit::builder()
///     .policy(Aimd::new().backoff(0.8))
///     .build()
///     .unwrap();
/// # let _ = (gradient, aimd);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum AdaptivePolicy {
    /// Additive increase, multiplicative decrease.
    Aimd(Aimd),
    /// The limit scaled by the ratio of no-load to current latency.
    Gradient(Gradient),
}

impl Default for AdaptivePolicy {
    fn default() -> Self {
        Self::Gradient(Gradient::new())
    }
}

impl From<Aimd> for AdaptivePolicy {
    fn from(aimd: Aimd) -> Self {
        Self::Aimd(aimd)
    }
}

impl From<Gradient> for AdaptivePolicy {
    fn from(gradient: Gradient) -> Self {
        Self::Gradient(gradient)
    }
}

/// Additive increase, multiplicative decrease: TCP's congestion control, on calls.
///
/// After each window of samples, the limit is multiplied by [`backoff`](Self::backoff) if
/// the window saw a drop or its latency (smoothed) was over [`tolerance`](Self::tolerance)
/// times the no-load latency; otherwise it grows by [`increase`](Self::increase), if the
/// calls in flight reached at least half the limit (a limit nobody uses is not raised).
///
/// # Examples
///
/// ```
/// use brigade_limit::Aimd;
///
/// let aimd = Aimd::new().tolerance(1.5).backoff(0.9).increase(1).smoothing(0.5);
/// assert_eq!(aimd, Aimd::default());
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Aimd {
    pub(super) tolerance: f64,
    pub(super) backoff: f64,
    pub(super) increase: usize,
    pub(super) smoothing: f64,
}

impl Default for Aimd {
    fn default() -> Self {
        Self::new()
    }
}

impl Aimd {
    /// The defaults: tolerance 1.5, backoff 0.9, increase 1, smoothing 0.5.
    pub const fn new() -> Self {
        Self {
            tolerance: 1.5,
            backoff: 0.9,
            increase: 1,
            smoothing: 0.5,
        }
    }

    /// A window whose latency is more than `tolerance` times the no-load latency counts as
    /// congested, like a drop. From 1 (excluded) to 2 (included). Default: 1.5.
    #[must_use]
    pub const fn tolerance(mut self, tolerance: f64) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// The factor a congested window multiplies the limit by. From 0.5 (included) to 1
    /// (excluded). Default: 0.9.
    #[must_use]
    pub const fn backoff(mut self, backoff: f64) -> Self {
        self.backoff = backoff;
        self
    }

    /// The calls a window without congestion adds to the limit. At least 1. Default: 1.
    #[must_use]
    pub const fn increase(mut self, increase: usize) -> Self {
        self.increase = increase;
        self
    }

    /// The weight of a new window's latency in the smoothed latency compared with the
    /// tolerance (1 compares each window alone). Above 0, at most 1. Default: 0.5.
    #[must_use]
    pub const fn smoothing(mut self, smoothing: f64) -> Self {
        self.smoothing = smoothing;
        self
    }
}

/// The limit scaled by how far the latency has risen over the no-load latency, in the spirit
/// of Netflix's Gradient2 and Envoy's adaptive concurrency filter.
///
/// After each window of samples, with `gradient = tolerance × no_load / latency` kept
/// between 0.5 and 1:
///
/// ```text
/// target = limit × gradient + (queue × √limit if gradient is 1 and the limit is in use)
/// limit  = limit × (1 - smoothing) + target × smoothing
/// ```
///
/// A window with a drop takes a gradient of 0.5 and no queue allowance. The queue
/// allowance is what lets the limit grow: only while the latency is within tolerance of
/// the no-load latency, so it cannot push the limit up under overload.
///
/// # Examples
///
/// ```
/// use brigade_limit::Gradient;
///
/// let gradient = Gradient::new().tolerance(1.5).smoothing(0.2).queue(1.0);
/// assert_eq!(gradient, Gradient::default());
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gradient {
    pub(super) tolerance: f64,
    pub(super) smoothing: f64,
    pub(super) queue: f64,
}

impl Default for Gradient {
    fn default() -> Self {
        Self::new()
    }
}

impl Gradient {
    /// The defaults: tolerance 1.5, smoothing 0.2, queue 1.
    pub const fn new() -> Self {
        Self {
            tolerance: 1.5,
            smoothing: 0.2,
            queue: 1.0,
        }
    }

    /// The latency, as a multiple of the no-load latency, up to which the limit is not
    /// lowered. From 1 (excluded) to 2 (included). Default: 1.5.
    #[must_use]
    pub const fn tolerance(mut self, tolerance: f64) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// The weight of a window's target in the new limit (1 takes the target as is). Above
    /// 0, at most 1. Default: 0.2.
    #[must_use]
    pub const fn smoothing(mut self, smoothing: f64) -> Self {
        self.smoothing = smoothing;
        self
    }

    /// The queue allowance, as a multiple of √limit: the calls the target may add over the
    /// limit while the latency is within tolerance. Above 0, at most 16. Default: 1 (Envoy's
    /// burst headroom).
    #[must_use]
    pub const fn queue(mut self, queue: f64) -> Self {
        self.queue = queue;
        self
    }
}

/// What a closed window tells the policy.
#[derive(Clone, Copy, Debug)]
pub(super) struct Signal {
    /// The smoothed latency over the no-load latency, if the window had a success.
    pub(super) ratio: Option<f64>,
    /// The window saw a drop.
    pub(super) dropped: bool,
    /// The calls in flight never reached half the limit.
    pub(super) app_limited: bool,
}

/// The most a gradient lowers the limit in one window (before smoothing).
const MIN_GRADIENT: f64 = 0.5;

impl AdaptivePolicy {
    pub(super) fn validate(&self) -> Result<(), InvalidConfig> {
        let out = |setting, range| Err(InvalidConfig::OutOfRange { setting, range });
        let (tolerance, smoothing) = match self {
            Self::Aimd(a) => (a.tolerance, a.smoothing),
            Self::Gradient(g) => (g.tolerance, g.smoothing),
        };
        if !(tolerance > 1.0 && tolerance <= 2.0) {
            return out("tolerance", "(1, 2]");
        }
        if !(smoothing > 0.0 && smoothing <= 1.0) {
            return out("smoothing", "(0, 1]");
        }
        match self {
            Self::Aimd(a) if !(a.backoff >= 0.5 && a.backoff < 1.0) => out("backoff", "[0.5, 1)"),
            Self::Aimd(a) if a.increase == 0 => out("increase", "at least 1"),
            Self::Gradient(g) if !(g.queue > 0.0 && g.queue <= 16.0) => out("queue", "(0, 16]"),
            _ => Ok(()),
        }
    }

    pub(super) const fn tolerance(&self) -> f64 {
        match self {
            Self::Aimd(a) => a.tolerance,
            Self::Gradient(g) => g.tolerance,
        }
    }

    /// The weight of a new window in the smoothed latency.
    pub(super) const fn latency_smoothing(&self) -> f64 {
        match self {
            Self::Aimd(a) => a.smoothing,
            // The gradient smooths its limit instead.
            Self::Gradient(_) => 1.0,
        }
    }

    /// The limit after a window, before it is held between the minimum and the maximum.
    pub(super) fn next(&self, limit: f64, signal: Signal) -> f64 {
        match self {
            Self::Aimd(a) => {
                let congested = signal.dropped || signal.ratio.is_some_and(|r| r > a.tolerance);
                if congested {
                    limit * a.backoff
                } else if signal.ratio.is_some() && !signal.app_limited {
                    limit + a.increase as f64
                } else {
                    limit
                }
            }
            Self::Gradient(g) => {
                let target = if signal.dropped {
                    limit * MIN_GRADIENT
                } else if let Some(ratio) = signal.ratio {
                    let gradient = (g.tolerance / ratio).clamp(MIN_GRADIENT, 1.0);
                    let queue = if gradient >= 1.0 && !signal.app_limited {
                        g.queue * limit.sqrt()
                    } else {
                        0.0
                    };
                    limit.mul_add(gradient, queue)
                } else {
                    limit
                };
                limit.mul_add(1.0 - g.smoothing, target * g.smoothing)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{AdaptivePolicy, Aimd, Gradient, Signal};
    use crate::InvalidConfig;

    const CALM: Signal = Signal {
        ratio: Some(1.0),
        dropped: false,
        app_limited: false,
    };

    #[test]
    fn aimd_adds_when_calm_and_multiplies_when_congested() {
        let aimd = AdaptivePolicy::from(Aimd::new());
        assert_eq!(aimd.next(10.0, CALM), 11.0);
        let slow = Signal {
            ratio: Some(1.6),
            ..CALM
        };
        assert_eq!(aimd.next(10.0, slow), 9.0);
        let dropped = Signal {
            dropped: true,
            ..CALM
        };
        assert_eq!(aimd.next(10.0, dropped), 9.0);
        let idle = Signal {
            app_limited: true,
            ..CALM
        };
        assert_eq!(aimd.next(10.0, idle), 10.0);
    }

    #[test]
    fn a_drop_lowers_the_gradient_limit_however_fast_the_samples() {
        let gradient = AdaptivePolicy::from(Gradient::new());
        let dropped = Signal {
            ratio: Some(0.5),
            dropped: true,
            app_limited: false,
        };
        assert!((gradient.next(100.0, dropped) - 90.0).abs() < 1e-9);
    }

    #[test]
    fn the_gradient_queue_allowance_applies_only_within_tolerance() {
        let gradient = AdaptivePolicy::from(Gradient::new());
        // Within tolerance: grows by smoothing × √limit.
        assert!((gradient.next(100.0, CALM) - 102.0).abs() < 1e-9);
        // Just over it: the gradient is below 1 and nothing is added.
        let over = Signal {
            ratio: Some(1.6),
            ..CALM
        };
        assert!(gradient.next(100.0, over) < 100.0);
        // However long the modest overload lasts, the limit only falls.
        let mut limit = 100.0;
        for _ in 0..1_000 {
            limit = gradient.next(limit, over);
        }
        assert!(limit < 2.0);
    }

    #[test]
    fn settings_out_of_range_are_named() {
        let err = |p: AdaptivePolicy| match p.validate() {
            Err(InvalidConfig::OutOfRange { setting, .. }) => setting,
            other => panic!("{other:?}"),
        };
        assert_eq!(err(Aimd::new().backoff(1.0).into()), "backoff");
        assert_eq!(err(Aimd::new().increase(0).into()), "increase");
        assert_eq!(err(Aimd::new().tolerance(1.0).into()), "tolerance");
        assert_eq!(err(Gradient::new().smoothing(0.0).into()), "smoothing");
        assert_eq!(err(Gradient::new().queue(f64::NAN).into()), "queue");
        assert_eq!(err(Gradient::new().tolerance(2.5).into()), "tolerance");
        assert!(AdaptivePolicy::default().validate().is_ok());
    }
}
