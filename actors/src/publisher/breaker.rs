//! A circuit breaker as a pure state machine (time passed in): CLOSED until
//! `threshold` consecutive failures, then OPEN for a wait that doubles on
//! every failed probe (up to a cap), then HALF_OPEN admitting one probe whose
//! success closes it and whose failure opens it again.

use std::time::{Duration, Instant};

/// The three breaker states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// The breaker guarding the dashboard.
#[derive(Debug, Clone)]
pub struct Breaker {
    state: BreakerState,
    consecutive_failures: u32,
    threshold: u32,
    base_open: Duration,
    max_open: Duration,
    open_for: Duration,
    opened_at: Option<Instant>,
    probe_in_flight: bool,
    transitions: u64,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(threshold: u32, base_open: Duration, max_open: Duration) -> Self {
        Self {
            state: BreakerState::Closed,
            consecutive_failures: 0,
            threshold: threshold.max(1),
            base_open,
            max_open: max_open.max(base_open),
            open_for: base_open,
            opened_at: None,
            probe_in_flight: false,
            transitions: 0,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// State changes so far.
    pub fn transitions(&self) -> u64 {
        self.transitions
    }

    /// Whether a call may go ahead now. Moving from OPEN to HALF_OPEN happens
    /// here, and the call it admits is the probe.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed => true,
            BreakerState::Open => {
                let ready = self
                    .opened_at
                    .is_none_or(|at| now.saturating_duration_since(at) >= self.open_for);
                if ready {
                    self.set(BreakerState::HalfOpen);
                    self.probe_in_flight = true;
                }
                ready
            }
            BreakerState::HalfOpen => {
                let admit = !self.probe_in_flight;
                self.probe_in_flight = true;
                admit
            }
        }
    }

    /// A call succeeded.
    pub fn on_success(&mut self) {
        self.consecutive_failures = 0;
        self.probe_in_flight = false;
        if self.state != BreakerState::Closed {
            self.open_for = self.base_open;
            self.opened_at = None;
            self.set(BreakerState::Closed);
        }
    }

    /// A call failed (or timed out).
    pub fn on_failure(&mut self, now: Instant) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.probe_in_flight = false;
        match self.state {
            BreakerState::Closed if self.consecutive_failures >= self.threshold => self.open(now),
            BreakerState::HalfOpen => {
                self.open_for = (self.open_for * 2).min(self.max_open);
                self.open(now);
            }
            _ => {}
        }
    }

    /// The longest it stays open (`publisher.breaker_open_max_ms`).
    pub fn longest_open(&self) -> Duration {
        self.max_open
    }

    /// How long until an OPEN breaker admits a probe (zero otherwise).
    pub fn remaining_open(&self, now: Instant) -> Duration {
        match (self.state, self.opened_at) {
            (BreakerState::Open, Some(at)) => self
                .open_for
                .saturating_sub(now.saturating_duration_since(at)),
            _ => Duration::ZERO,
        }
    }

    fn open(&mut self, now: Instant) {
        self.opened_at = Some(now);
        self.set(BreakerState::Open);
    }

    fn set(&mut self, state: BreakerState) {
        if self.state != state {
            self.state = state;
            self.transitions += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn opens_after_threshold_then_probes_and_closes() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, 100 * MS, 1000 * MS);
        for _ in 0..2 {
            assert!(b.allow(t0));
            b.on_failure(t0);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.on_failure(t0);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow(t0 + 99 * MS));
        assert!(b.allow(t0 + 100 * MS), "probe admitted after the wait");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(!b.allow(t0 + 100 * MS), "only one probe at a time");
        b.on_success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.transitions(), 3);
    }

    #[test]
    fn failed_probe_reopens_with_a_longer_wait_up_to_the_cap() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, 100 * MS, 300 * MS);
        b.on_failure(t0);
        assert!(b.allow(t0 + 100 * MS));
        b.on_failure(t0 + 100 * MS);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow(t0 + 299 * MS), "wait doubled to 200 ms");
        assert!(b.allow(t0 + 300 * MS));
        b.on_failure(t0 + 300 * MS);
        assert_eq!(
            b.remaining_open(t0 + 300 * MS),
            300 * MS,
            "capped at 300 ms"
        );
    }
}
