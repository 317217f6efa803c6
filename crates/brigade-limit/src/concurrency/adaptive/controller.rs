//! The adaptive limit's estimator: samples gathered into windows, the short-term and
//! no-load latencies, the probes that re-measure the no-load latency, and the policy's
//! update. Pure: time comes in as arguments, so it is tested without a clock.
//!
//! # Invariants
//!
//! - `min <= applied <= max`, and `applied` is the limit the permits were last set to.
//! - `epoch` is odd exactly while a probe runs. A probe's window holds only calls granted
//!   in the probe's epoch (granted under the probe's lower limit); outside a probe, latency
//!   samples of calls granted during a probe are left out, and drops always count.
//! - `no_load` only falls between probes (a lower smoothed latency replaces it); a probe's
//!   measure replaces it, higher or lower.

use std::time::Duration;

use tokio::time::Instant;

use super::policy::{AdaptivePolicy, Signal};

/// What a finished call showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Sample {
    Latency(Duration),
    Dropped,
}

/// The changes a sample made, for the caller to apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Update {
    pub(super) limit: Option<usize>,
    pub(super) epoch: Option<u32>,
}

/// Windows in a row at the minimum limit, with the latency over tolerance, after which the
/// no-load latency is measured again at once: it may be out of date (the upstream is
/// slower now), and the limit cannot go lower anyway.
const STUCK_WINDOWS: u32 = 5;

#[derive(Debug)]
pub(super) struct Controller {
    policy: AdaptivePolicy,
    min: usize,
    max: usize,
    window_samples: u32,
    probe_interval: Duration,
    /// The limit, unrounded.
    limit: f64,
    /// The limit the permits are set to: `limit` rounded down, or the probe's.
    applied: usize,
    window: Window,
    /// The smoothed latency of the recent windows.
    short: Option<Duration>,
    /// The latency without load.
    no_load: Option<Duration>,
    /// The no-load latency the last probe measured (or the first window's latency).
    measured: Option<Duration>,
    epoch: u32,
    /// While a probe runs, the limit to return to.
    probe_saved: Option<f64>,
    next_probe: Option<Instant>,
    stuck: u32,
    rng: u64,
}

#[derive(Clone, Copy, Debug)]
struct Window {
    started: Option<Instant>,
    samples: u32,
    successes: u32,
    latency_nanos: u64,
    drops: u32,
    max_in_flight: usize,
}

impl Window {
    const EMPTY: Self = Self {
        started: None,
        samples: 0,
        successes: 0,
        latency_nanos: 0,
        drops: 0,
        max_in_flight: 0,
    };

    fn mean(&self) -> Option<Duration> {
        (self.successes > 0)
            .then(|| Duration::from_nanos(self.latency_nanos / u64::from(self.successes)))
    }
}

/// The settings the controller needs from the builder.
#[derive(Clone, Copy, Debug)]
pub(super) struct Settings {
    pub(super) policy: AdaptivePolicy,
    pub(super) min: usize,
    pub(super) initial: usize,
    pub(super) max: usize,
    pub(super) window_samples: u32,
    pub(super) probe_interval: Duration,
    pub(super) seed: u64,
}

impl Controller {
    pub(super) fn new(settings: Settings) -> Self {
        Self {
            policy: settings.policy,
            min: settings.min,
            max: settings.max,
            window_samples: settings.window_samples,
            probe_interval: settings.probe_interval,
            limit: settings.initial as f64,
            applied: settings.initial,
            window: Window::EMPTY,
            short: None,
            no_load: None,
            measured: None,
            epoch: 0,
            probe_saved: None,
            next_probe: None,
            stuck: 0,
            rng: settings.seed,
        }
    }

    pub(super) const fn latency(&self) -> Option<Duration> {
        self.short
    }

    pub(super) const fn no_load(&self) -> Option<Duration> {
        self.no_load
    }

    /// Records the sample of a call granted in `epoch`, seen with `in_flight` calls held.
    pub(super) fn record(
        &mut self,
        sample: Sample,
        epoch: u32,
        in_flight: usize,
        now: Instant,
    ) -> Update {
        let probing = self.probe_saved.is_some();
        let counts = if probing {
            epoch == self.epoch
        } else {
            // A probe's fast samples would flatter the window after it.
            sample == Sample::Dropped || epoch.is_multiple_of(2)
        };
        if !counts {
            return Update::default();
        }
        let window = &mut self.window;
        let started = *window.started.get_or_insert(now);
        window.samples = window.samples.saturating_add(1);
        window.max_in_flight = window.max_in_flight.max(in_flight);
        match sample {
            Sample::Latency(latency) => {
                window.successes = window.successes.saturating_add(1);
                let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
                window.latency_nanos = window.latency_nanos.saturating_add(nanos);
            }
            Sample::Dropped => window.drops = window.drops.saturating_add(1),
        }
        // A window closes with enough samples, and lasts at least one (smoothed) latency
        // from the end of the previous one, so that a change of the limit shows in the
        // window after it.
        let long_enough = self
            .short
            .is_none_or(|short| now.saturating_duration_since(started) >= short);
        if window.samples < self.window_samples || !long_enough {
            return Update::default();
        }
        // The next window starts where this one ends.
        let next = Window {
            started: Some(now),
            ..Window::EMPTY
        };
        let closed = std::mem::replace(&mut self.window, next);
        let before = (self.applied, self.epoch);
        if probing {
            self.end_probe(&closed, now);
        } else {
            self.update(&closed, now);
        }
        Update {
            limit: (self.applied != before.0).then_some(self.applied),
            epoch: (self.epoch != before.1).then_some(self.epoch),
        }
    }

    fn update(&mut self, window: &Window, now: Instant) {
        let mean = window.mean();
        // Much faster than the no-load latency last measured: the upstream got faster, and
        // the load hides how much (the lowest window shows the latency at this load).
        let faster = mean
            .zip(self.measured)
            .is_some_and(|(mean, measured)| mean.mul_f64(self.policy.tolerance()) < measured);
        if let Some(mean) = mean {
            self.measured.get_or_insert(mean);
            let weight = self.policy.latency_smoothing();
            let short = self.short.map_or(mean, |short| {
                short
                    .mul_f64(1.0 - weight)
                    .saturating_add(mean.mul_f64(weight))
            });
            self.short = Some(short);
            self.no_load = Some(self.no_load.map_or(short, |no_load| no_load.min(short)));
        }
        let ratio = match (mean.and(self.short), self.no_load) {
            (Some(short), Some(no_load)) if !no_load.is_zero() => {
                Some(short.as_secs_f64() / no_load.as_secs_f64())
            }
            (Some(_), _) => Some(1.0),
            _ => None,
        };
        let signal = Signal {
            ratio,
            dropped: window.drops > 0,
            app_limited: window.max_in_flight * 2 < self.applied,
        };
        self.limit = self
            .policy
            .next(self.limit, signal)
            .clamp(self.min as f64, self.max as f64);
        self.applied = self.rounded(self.limit);

        let slow = ratio.is_some_and(|r| r > self.policy.tolerance());
        self.stuck = if self.applied == self.min && slow {
            self.stuck + 1
        } else {
            0
        };
        let next_probe = *self
            .next_probe
            .get_or_insert_with(|| later(now, jittered(self.probe_interval, &mut self.rng)));
        if faster || self.stuck >= STUCK_WINDOWS || now >= next_probe {
            self.start_probe();
        }
    }

    /// Halves the limit, for one window of calls granted under it.
    fn start_probe(&mut self) {
        self.probe_saved = Some(self.limit);
        self.applied = (self.applied / 2).max(self.min);
        self.epoch = self.epoch.wrapping_add(1);
        self.stuck = 0;
    }

    fn end_probe(&mut self, window: &Window, now: Instant) {
        if let Some(mean) = window.mean() {
            self.no_load = Some(mean);
            self.measured = Some(mean);
            self.short.get_or_insert(mean);
        }
        self.limit = self.probe_saved.take().unwrap_or(self.limit);
        self.applied = self.rounded(self.limit);
        self.epoch = self.epoch.wrapping_add(1);
        self.next_probe = Some(later(now, jittered(self.probe_interval, &mut self.rng)));
    }

    fn rounded(&self, limit: f64) -> usize {
        // `limit` is held between `min` and `max`, so the cast is exact up to rounding.
        (limit.floor() as usize).clamp(self.min, self.max)
    }
}

/// `now + after`, or about thirty years from now if that is later (a probe interval of
/// `Duration::MAX` never probes, and never overflows).
fn later(now: Instant, after: Duration) -> Instant {
    const THIRTY_YEARS: Duration = Duration::from_secs(30 * 365 * 24 * 3_600);
    now + after.min(THIRTY_YEARS)
}

/// `interval`, up to a quarter longer, so that replicas do not probe in step.
fn jittered(interval: Duration, rng: &mut u64) -> Duration {
    *rng = rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *rng;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let unit = (z >> 11) as f64 / (1u64 << 53) as f64;
    interval.saturating_add(interval.mul_f64(0.25 * unit))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::{Controller, Sample, Settings, Update};
    use crate::concurrency::adaptive::policy::{AdaptivePolicy, Aimd, Gradient};

    fn controller(policy: AdaptivePolicy) -> Controller {
        Controller::new(Settings {
            policy,
            min: 1,
            initial: 20,
            max: 100,
            window_samples: 4,
            probe_interval: Duration::from_secs(60),
            seed: 7,
        })
    }

    const MS: Duration = Duration::from_millis(1);

    /// Feeds `windows` windows of `latency` samples with `in_flight` calls; returns the
    /// time after them.
    fn feed(c: &mut Controller, mut now: Instant, windows: u32, sample: Sample) -> Instant {
        for _ in 0..windows * 4 {
            now += 30 * MS;
            let epoch = c.epoch;
            let in_flight = c.applied;
            c.record(sample, epoch, in_flight, now);
        }
        now
    }

    #[test]
    fn steady_drops_lower_the_limit_to_its_minimum() {
        for policy in [Aimd::new().into(), AdaptivePolicy::from(Gradient::new())] {
            let mut c = controller(policy);
            feed(&mut c, Instant::now(), 200, Sample::Dropped);
            assert_eq!(c.applied, 1, "{policy:?}");
            assert_eq!(c.no_load, None, "a drop is never a latency");
        }
    }

    #[test]
    fn a_fast_calm_upstream_raises_the_limit_to_its_maximum() {
        for policy in [Aimd::new().into(), AdaptivePolicy::from(Gradient::new())] {
            let mut c = controller(policy);
            feed(&mut c, Instant::now(), 300, Sample::Latency(100 * MS));
            assert_eq!(c.limit as usize, 100, "{policy:?}");
        }
    }

    #[test]
    fn an_idle_limit_is_not_raised() {
        let mut c = controller(Aimd::new().into());
        let mut now = Instant::now();
        for _ in 0..400 {
            now += 30 * MS;
            c.record(Sample::Latency(100 * MS), 0, 2, now);
        }
        assert_eq!(c.applied, 20);
    }

    /// Samples of calls granted in the current epoch, 30 ms apart, until a window closes
    /// (it lasts at least the smoothed latency): its update.
    fn window(c: &mut Controller, now: &mut Instant, sample: Sample) -> Update {
        for _ in 0..1_000 {
            *now += 30 * MS;
            let (epoch, in_flight) = (c.epoch, c.applied);
            let update = c.record(sample, epoch, in_flight, *now);
            if c.window.samples == 0 {
                return update;
            }
        }
        panic!("no window closed");
    }

    #[test]
    fn samples_of_calls_granted_before_a_probe_are_left_out_of_it() {
        let mut c = controller(Gradient::new().into());
        let mut now = Instant::now();
        window(&mut c, &mut now, Sample::Latency(100 * MS));
        assert!(c.next_probe.is_some());
        // The probe is due: the window that closes next starts it.
        now += Duration::from_secs(80);
        let update = window(&mut c, &mut now, Sample::Latency(100 * MS));
        assert_eq!(update.epoch, Some(1), "probing");
        let probe_limit = c.applied;
        assert_eq!(update.limit, Some(probe_limit));
        assert!(probe_limit <= 11, "{probe_limit}");
        // Slow samples of calls granted before the probe change nothing.
        for _ in 0..20 {
            let update = c.record(Sample::Latency(900 * MS), 0, 20, now + MS);
            assert_eq!(update, Update::default());
        }
        // The probe's own calls measure the no-load latency, and end it.
        let update = window(&mut c, &mut now, Sample::Latency(50 * MS));
        assert_eq!(update.epoch, Some(2));
        assert_eq!(c.no_load, Some(50 * MS));
        assert!(c.applied > probe_limit);
        // After it, the fast samples of the probe's late calls are left out too.
        let update = c.record(Sample::Latency(MS), 1, 20, now + MS);
        assert_eq!(update, Update::default());
        assert_eq!(c.window.samples, 0);
    }

    #[test]
    fn the_no_load_latency_falls_with_the_first_faster_window() {
        let mut c = controller(Gradient::new().into());
        let mut now = Instant::now();
        window(&mut c, &mut now, Sample::Latency(300 * MS));
        assert_eq!(c.no_load, Some(300 * MS));
        // Faster, but within the tolerance of the last measure: taken at once, no probe.
        window(&mut c, &mut now, Sample::Latency(250 * MS));
        assert_eq!(c.no_load, Some(250 * MS));
        assert_eq!(c.epoch, 0);
    }

    #[test]
    fn a_window_much_faster_than_the_last_measure_probes_at_once() {
        let mut c = controller(Gradient::new().into());
        let mut now = Instant::now();
        window(&mut c, &mut now, Sample::Latency(300 * MS));
        // Under a third of it (beyond the tolerance of 1.5): the upstream got faster, and
        // how much is measured at half the limit.
        let update = window(&mut c, &mut now, Sample::Latency(150 * MS));
        assert_eq!(update.epoch, Some(1));
        window(&mut c, &mut now, Sample::Latency(90 * MS));
        assert_eq!(c.no_load, Some(90 * MS));
        assert_eq!(c.epoch, 2);
    }

    #[test]
    fn a_limit_stuck_at_its_minimum_measures_the_no_load_latency_again() {
        let mut c = controller(Aimd::new().into());
        let now = feed(&mut c, Instant::now(), 3, Sample::Latency(100 * MS));
        // The upstream is three times slower from now on: the limit falls to 1, stays
        // there for a few windows, and a probe learns the new latency.
        let now = feed(&mut c, now, 150, Sample::Latency(300 * MS));
        assert_eq!(c.no_load, Some(300 * MS));
        feed(&mut c, now, 60, Sample::Latency(300 * MS));
        assert!(c.applied >= 10, "growing again: {}", c.applied);
    }
}
