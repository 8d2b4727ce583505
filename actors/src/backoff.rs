//! The one backoff every retry loop in txmesh uses: the publisher's
//! reconnects to the dashboard, txgen's per-transaction retries and its
//! stream reconnects. The `backoff` crate (named in the design, and
//! unmaintained upstream: this module is the one place that touches it)
//! supplies the exponential sequence of caps, `initial * multiplier^n` up
//! to `max`; the delay drawn under each cap is ours, so that every loop has
//! the same, tested, bounded jitter:
//!
//! `delay = cap * (1 - jitter) + uniform(0, cap * jitter)`
//!
//! `jitter = 1` is full jitter (gRPC A6, AWS): spreads a herd of clients
//! over the whole interval. A delay never exceeds `max`.

use std::time::Duration;

use backoff::backoff::Backoff as _;
use rand::RngExt as _;

/// A backoff policy. Validated by [`Backoff::new`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffConfig {
    /// The first cap.
    pub initial: Duration,
    /// The largest cap (and so the largest delay).
    pub max: Duration,
    /// Each cap is the previous times this (at least 1).
    pub multiplier: f64,
    /// The share of each cap that is random, 0 (none) to 1 (full jitter).
    pub jitter: f64,
}

/// Why a [`BackoffConfig`] is refused; names the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackoffError {
    #[error("initial must be more than zero")]
    ZeroInitial,
    #[error("max ({max:?}) must be at least initial ({initial:?})")]
    MaxBelowInitial { initial: Duration, max: Duration },
    #[error("multiplier must be a finite number of at least 1, not {0}")]
    Multiplier(f64),
    #[error("jitter must be between 0 and 1, not {0}")]
    Jitter(f64),
}

/// The state of one retry loop: which attempt comes next.
#[derive(Debug)]
pub struct Backoff {
    config: BackoffConfig,
    caps: backoff::ExponentialBackoff,
}

impl BackoffConfig {
    /// Full jitter from `initial`, doubling, up to `max`.
    pub fn full_jitter(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            multiplier: 2.0,
            jitter: 1.0,
        }
    }

    /// Checks the fields.
    ///
    /// # Errors
    /// The first field out of range.
    pub fn validate(&self) -> Result<(), BackoffError> {
        if self.initial.is_zero() {
            return Err(BackoffError::ZeroInitial);
        }
        if self.max < self.initial {
            return Err(BackoffError::MaxBelowInitial {
                initial: self.initial,
                max: self.max,
            });
        }
        if !self.multiplier.is_finite() || self.multiplier < 1.0 {
            return Err(BackoffError::Multiplier(self.multiplier));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(BackoffError::Jitter(self.jitter));
        }
        Ok(())
    }

    /// The cap of attempt `n` (from 0): `initial * multiplier^n`, at most
    /// `max`.
    pub fn cap(&self, attempt: u32) -> Duration {
        let exp = self
            .multiplier
            .powi(i32::try_from(attempt).unwrap_or(i32::MAX));
        let secs = (self.initial.as_secs_f64() * exp).min(self.max.as_secs_f64());
        Duration::from_secs_f64(secs)
    }

    /// A delay under `cap`, with this policy's jitter.
    pub fn jittered(&self, cap: Duration, rng: &mut impl rand::Rng) -> Duration {
        let random = cap.mul_f64(self.jitter * rng.random_range(0.0..=1.0));
        cap.mul_f64(1.0 - self.jitter) + random
    }
}

impl Backoff {
    /// A fresh loop under `config`.
    ///
    /// # Errors
    /// When `config` does not validate.
    pub fn new(config: BackoffConfig) -> Result<Self, BackoffError> {
        config.validate()?;
        let caps = backoff::ExponentialBackoffBuilder::new()
            .with_initial_interval(config.initial)
            .with_max_interval(config.max)
            .with_multiplier(config.multiplier)
            // The crate's own jitter is not used: ours is drawn below.
            .with_randomization_factor(0.0)
            .with_max_elapsed_time(None)
            .build();
        Ok(Self { config, caps })
    }

    /// The delay before the next attempt; each call moves one attempt on.
    pub fn next_delay(&mut self, rng: &mut impl rand::Rng) -> Duration {
        let cap = self
            .caps
            .next_backoff()
            .unwrap_or(self.config.max)
            .min(self.config.max);
        self.config.jittered(cap, rng)
    }

    /// Back to the first attempt (after a success).
    pub fn reset(&mut self) {
        self.caps.reset();
    }

    /// The policy.
    pub fn config(&self) -> &BackoffConfig {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand::{rngs::SmallRng, SeedableRng};

    use super::*;

    fn config() -> impl Strategy<Value = BackoffConfig> {
        (1u64..5_000, 0u64..60_000, 1.0f64..4.0, 0.0f64..=1.0).prop_map(
            |(initial, extra, multiplier, jitter)| BackoffConfig {
                initial: Duration::from_millis(initial),
                max: Duration::from_millis(initial + extra),
                multiplier,
                jitter,
            },
        )
    }

    proptest! {
        /// Every delay lies in [cap * (1 - jitter), cap] for its attempt's
        /// cap, and never above max, whatever the policy and the draws.
        #[test]
        fn delays_stay_under_their_cap_and_max(config in config(), seed: u64, attempts in 1usize..40) {
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut backoff = Backoff::new(config).expect("valid");
            for n in 0..attempts {
                let delay = backoff.next_delay(&mut rng);
                let cap = config.cap(u32::try_from(n).expect("small"));
                // The crate computes caps in whole nanoseconds: allow 1 us.
                let slack = Duration::from_micros(1);
                prop_assert!(delay <= config.max + slack, "{delay:?} over max {:?}", config.max);
                prop_assert!(delay <= cap + slack, "{delay:?} over cap {cap:?} at {n}");
                prop_assert!(delay + slack >= cap.mul_f64(1.0 - config.jitter));
            }
        }

        /// The caps grow monotonically, never pass max, and reach it.
        #[test]
        fn caps_grow_to_max(config in config()) {
            let mut last = Duration::ZERO;
            for n in 0..200 {
                let cap = config.cap(n);
                prop_assert!(cap >= last);
                last = cap;
            }
            prop_assert!(last <= config.max);
            let reach = config.initial.as_secs_f64() * config.multiplier.powi(199);
            prop_assert!(reach < config.max.as_secs_f64() || last == config.max);
        }
    }

    #[test]
    fn bad_policies_are_refused_by_field() {
        let ok = BackoffConfig::full_jitter(Duration::from_millis(10), Duration::from_secs(1));
        assert!(Backoff::new(ok).is_ok());
        let bad = |c: BackoffConfig| Backoff::new(c).expect_err("refused");
        assert_eq!(
            bad(BackoffConfig {
                initial: Duration::ZERO,
                ..ok
            }),
            BackoffError::ZeroInitial
        );
        assert!(matches!(
            bad(BackoffConfig {
                max: Duration::from_millis(1),
                ..ok
            }),
            BackoffError::MaxBelowInitial { .. }
        ));
        assert!(matches!(
            bad(BackoffConfig {
                multiplier: f64::NAN,
                ..ok
            }),
            BackoffError::Multiplier(_)
        ));
        assert!(matches!(
            bad(BackoffConfig { jitter: 1.5, ..ok }),
            BackoffError::Jitter(_)
        ));
    }

    #[test]
    fn reset_starts_over() {
        let config = BackoffConfig {
            jitter: 0.0,
            ..BackoffConfig::full_jitter(Duration::from_millis(10), Duration::from_secs(1))
        };
        let mut rng = SmallRng::seed_from_u64(1);
        let mut backoff = Backoff::new(config).expect("valid");
        let first = backoff.next_delay(&mut rng);
        let second = backoff.next_delay(&mut rng);
        assert_eq!(first, Duration::from_millis(10));
        assert_eq!(second, Duration::from_millis(20));
        backoff.reset();
        assert_eq!(backoff.next_delay(&mut rng), first);
    }
}
