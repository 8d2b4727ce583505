//! Supervision policy of one account, as a pure state machine: restart
//! intensity (at most `max_restarts` in `restart_window_secs`, as OTP
//! supervisors count it), quarantine past that for a cool-down that ends on
//! its own, and poison messages (a transaction that crashed the actor on
//! every one of `poison_attempts` tries is answered with an explicit error
//! and never evaluated again).
//!
//! actix's `Supervisor` restarts a stopped actor on the same value but has
//! no intensity; the [`AccountActor`](crate::AccountActor) consults this
//! after every crash. The state is created on the first crash only, so
//! healthy accounts pay one pointer for it.

use std::collections::VecDeque;

use crate::config::SupervisionConfig;

/// Transactions whose crash count is remembered at once, per account.
const CRASHES_KEPT: usize = 8;
/// Poison transaction ids remembered, per account.
const POISON_KEPT: usize = 16;

/// Crash history of one account.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SupervisionState {
    /// Times (clock ms) of the restarts inside the current window.
    restarts: VecDeque<u64>,
    quarantined_until: Option<u64>,
    /// Attempts per transaction that crashed and was not yet poison.
    crashes: VecDeque<(Box<str>, u32)>,
    poison: VecDeque<Box<str>>,
    /// After a retryable crash: the transaction whose retry must come
    /// first, and until when (clock ms) later ones wait for it.
    hold: Option<(Box<str>, u64)>,
}

/// What to do after a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashOutcome {
    /// How many times this transaction has now crashed the actor.
    pub attempts: u32,
    /// The transaction is poison: answer with an explicit, final error.
    pub poison: bool,
    /// This crash exceeded the restart intensity: the account is now
    /// quarantined.
    pub quarantined: bool,
}

impl SupervisionState {
    /// Whether the account is quarantined at `now_ms`; an expired
    /// quarantine is cleared here.
    pub fn quarantined(&mut self, now_ms: u64) -> bool {
        match self.quarantined_until {
            Some(until) if now_ms < until => true,
            Some(_) => {
                self.quarantined_until = None;
                false
            }
            None => false,
        }
    }

    /// Milliseconds of quarantine left at `now_ms`.
    pub fn quarantine_left_ms(&self, now_ms: u64) -> u64 {
        self.quarantined_until
            .map_or(0, |until| until.saturating_sub(now_ms))
    }

    /// Whether `transaction_id` is a known poison message.
    pub fn is_poison(&self, transaction_id: &str) -> bool {
        self.poison.iter().any(|p| &**p == transaction_id)
    }

    /// Records that evaluating `transaction_id` crashed the actor at
    /// `now_ms`, and decides what follows.
    pub fn on_crash(
        &mut self,
        transaction_id: &str,
        now_ms: u64,
        config: &SupervisionConfig,
    ) -> CrashOutcome {
        let attempts = match self
            .crashes
            .iter_mut()
            .find(|(id, _)| &**id == transaction_id)
        {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                if self.crashes.len() == CRASHES_KEPT {
                    self.crashes.pop_front();
                }
                self.crashes.push_back((transaction_id.into(), 1));
                1
            }
        };
        let poison = attempts >= config.poison_attempts;
        if poison {
            self.crashes.retain(|(id, _)| &**id != transaction_id);
            // Its answer is final: nothing waits for it any more.
            if self
                .hold
                .as_ref()
                .is_some_and(|(id, _)| &**id == transaction_id)
            {
                self.hold = None;
            }
            if self.poison.len() == POISON_KEPT {
                self.poison.pop_front();
            }
            self.poison.push_back(transaction_id.into());
        }

        let window_ms = config.restart_window_secs.saturating_mul(1000);
        while self
            .restarts
            .front()
            .is_some_and(|t| now_ms.saturating_sub(*t) >= window_ms)
        {
            self.restarts.pop_front();
        }
        self.restarts.push_back(now_ms);
        let quarantined = self.restarts.len() > config.max_restarts as usize;
        if quarantined {
            self.restarts.clear();
            self.quarantined_until = Some(now_ms.saturating_add(config.quarantine_secs * 1000));
        }
        CrashOutcome {
            attempts,
            poison,
            quarantined,
        }
    }

    /// Keeps the account's order across the retry of a crashed transaction:
    /// until `transaction_id` comes back (or `until_ms`), the account's
    /// other transactions are refused with a retryable error.
    pub fn hold_for_retry(&mut self, transaction_id: &str, until_ms: u64) {
        if self.hold.is_none() {
            self.hold = Some((transaction_id.into(), until_ms));
        }
    }

    /// Whether `transaction_id` may be screened now given the hold; the
    /// awaited transaction or an expired hold lifts it.
    pub fn admit(&mut self, transaction_id: &str, now_ms: u64) -> bool {
        match &self.hold {
            Some((id, until)) if &**id != transaction_id && now_ms < *until => false,
            Some(_) => {
                self.hold = None;
                true
            }
            None => true,
        }
    }

    /// A transaction was screened: its earlier crashes no longer matter.
    pub fn on_success(&mut self, transaction_id: &str) {
        if !self.crashes.is_empty() {
            self.crashes.retain(|(id, _)| &**id != transaction_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SupervisionConfig {
        SupervisionConfig {
            max_restarts: 3,
            restart_window_secs: 10,
            quarantine_secs: 30,
            poison_attempts: 3,
        }
    }

    #[test]
    fn more_than_n_restarts_within_t_quarantine_until_the_cool_down_ends() {
        let c = config();
        let mut s = SupervisionState::default();
        for (i, t) in [0, 1_000, 2_000].into_iter().enumerate() {
            let out = s.on_crash(&format!("t{i}"), t, &c);
            assert!(!out.quarantined, "restart {i} is within the intensity");
        }
        assert!(!s.quarantined(2_500));
        // The fourth within 10 s exceeds 3 in 10 s.
        assert!(s.on_crash("t3", 9_999, &c).quarantined);
        assert!(s.quarantined(9_999));
        assert_eq!(s.quarantine_left_ms(19_999), 20_000);
        assert!(s.quarantined(39_998));
        assert!(!s.quarantined(39_999), "the quarantine ends on its own");
        // And the count starts afresh.
        assert!(!s.on_crash("t4", 40_000, &c).quarantined);
    }

    #[test]
    fn restarts_spread_over_more_than_t_never_quarantine() {
        let c = config();
        let mut s = SupervisionState::default();
        for i in 0..20u64 {
            let out = s.on_crash(&format!("t{i}"), i * 3_400, &c);
            assert!(!out.quarantined, "crash {i}");
        }
    }

    #[test]
    fn a_transaction_crashing_every_attempt_becomes_poison() {
        let c = config();
        let mut s = SupervisionState::default();
        let a = s.on_crash("bad", 0, &c);
        assert_eq!((a.attempts, a.poison), (1, false));
        s.on_success("other");
        let b = s.on_crash("bad", 20_000, &c);
        assert_eq!((b.attempts, b.poison), (2, false));
        assert!(!s.is_poison("bad"));
        let p = s.on_crash("bad", 40_000, &c);
        assert_eq!((p.attempts, p.poison), (3, true));
        assert!(s.is_poison("bad"));
        // A success forgets the crash count of that transaction only.
        s.on_crash("flaky", 60_000, &c);
        s.on_success("flaky");
        assert_eq!(s.on_crash("flaky", 80_000, &c).attempts, 1);
    }

    #[test]
    fn a_crash_hold_admits_the_crashed_transaction_first() {
        let c = config();
        let mut s = SupervisionState::default();
        s.on_crash("a1", 0, &c);
        s.hold_for_retry("a1", 10_000);
        s.hold_for_retry("a2", 10_000);
        assert!(!s.admit("a2", 5), "a later transaction waits");
        assert!(s.admit("a1", 6), "the retry goes first");
        assert!(s.admit("a2", 7));
        s.hold_for_retry("a3", 10_000);
        assert!(s.admit("a4", 10_000), "an unclaimed hold expires");
        // A poison message releases the hold it set.
        s.hold_for_retry("p", 50_000);
        for t in [20_000, 21_000, 22_000] {
            s.on_crash("p", t, &c);
        }
        assert!(s.admit("other", 22_001));
    }
}
