//! Retry decisions for txgen, kept apart from the stream mechanics: which
//! errors are retried and when (full jitter above the server's pushback, one
//! deadline for all attempts), the token-bucket budget every resend must
//! pay for, and the per-account queues that resend refused transactions in
//! their original order. A retry that finds the budget empty waits in its
//! queue (a retry storm turns into waiting, not into load) until a token is
//! earned or its deadline passes.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use rand::Rng;
use txmesh_actors::backoff::BackoffConfig;
use txmesh_proto::v1::{Transaction, TxnError};

use super::patterns::Label;
use crate::config::RetryConfig;

/// Why a transaction was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    NotRetryable,
    Deadline,
    Budget,
}

/// What to do with a transaction answered by an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    RetryAfter(Duration),
    GiveUp(GiveUp),
}

/// Tokens for retries: earned by first sends and at a steady minimum rate,
/// spent by retries.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    tokens: f64,
    ratio: f64,
    cap: f64,
    min_per_sec: f64,
    refilled_at: Instant,
}

/// A transaction sent and not yet answered, or waiting to be sent again.
#[derive(Debug, Clone)]
pub struct InFlight {
    pub txn: Transaction,
    pub label: Label,
    /// When it was meant to go the first time: latency counts from here.
    pub intended: Instant,
    /// When it first went: the deadline counts from here.
    pub first_sent: Instant,
    /// Retries so far.
    pub attempt: u32,
    /// Order of first generation within the stream.
    pub seq: u64,
    /// The error of the last attempt, reported if it is given up.
    pub last_error: Option<TxnError>,
    /// It was due but waited for a budget token.
    pub starved: bool,
    /// It was in flight on a stream that failed: its answer may have been
    /// lost after it was screened. Resending it costs no budget token, and
    /// a replayed verdict for it is its own.
    pub lost: bool,
}

impl InFlight {
    /// Whether its last answer was a hold (kept behind its account's
    /// earlier, refused transaction) rather than a refusal for load.
    pub fn held(&self) -> bool {
        self.last_error
            .as_ref()
            .is_some_and(|e| e.code() == txmesh_proto::v1::TxnErrorCode::Held)
    }
}

/// Transactions waiting to be resent, per account, in original order.
#[derive(Debug, Default)]
pub struct RetryQueues {
    accounts: HashMap<String, VecDeque<(Instant, InFlight)>>,
    len: usize,
}

impl RetryConfig {
    /// The retry backoff: full jitter under caps growing from
    /// `initial_backoff_ms` by `multiplier` to `max_backoff_ms`.
    pub fn backoff(&self) -> BackoffConfig {
        BackoffConfig {
            initial: Duration::from_millis(self.initial_backoff_ms),
            max: Duration::from_millis(self.max_backoff_ms),
            multiplier: self.multiplier,
            jitter: 1.0,
        }
    }

    /// Decides the fate of a transaction answered with `error` after
    /// `attempt` retries, `since_first` after its first send.
    pub fn decide(
        &self,
        error: &TxnError,
        attempt: u32,
        since_first: Duration,
        rng: &mut impl Rng,
    ) -> Decision {
        if !error.retryable {
            return Decision::GiveUp(GiveUp::NotRetryable);
        }
        let backoff = self.backoff();
        let jitter = backoff.jittered(backoff.cap(attempt), rng);
        let delay = Duration::from_millis(u64::from(error.retry_after_ms)) + jitter;
        if since_first + delay > self.deadline() {
            return Decision::GiveUp(GiveUp::Deadline);
        }
        Decision::RetryAfter(delay)
    }

    /// One deadline for all attempts of a transaction.
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }
}

impl RetryBudget {
    pub fn new(config: &RetryConfig) -> Self {
        let reserve = f64::from(config.budget_reserve);
        Self {
            tokens: reserve,
            ratio: config.budget_ratio,
            // The bucket may grow by the ratio's share of a long run, but
            // never holds more than ten times its reserve at once.
            cap: reserve.max(1.0) * 10.0,
            min_per_sec: config.budget_min_per_sec,
            refilled_at: Instant::now(),
        }
    }

    /// `n` transactions went out for the first time.
    pub fn earn(&mut self, n: usize) {
        self.tokens = (self.tokens + self.ratio * n as f64).min(self.cap);
    }

    /// Adds the steady minimum's tokens for the time since the last refill.
    fn refill(&mut self, now: Instant) {
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.min_per_sec).min(self.cap);
        self.refilled_at = now;
    }

    /// When the next whole token is there (now, if one is).
    pub fn next_token(&self) -> Instant {
        let missing = (1.0 - self.tokens).max(0.0);
        self.refilled_at + Duration::from_secs_f64(missing / self.min_per_sec.max(1e-3))
    }

    fn try_spend(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl RetryQueues {
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether `account` has transactions waiting: a new one must queue
    /// behind them.
    pub fn holds(&self, account: &str) -> bool {
        !self.accounts.is_empty() && self.accounts.contains_key(account)
    }

    /// When the earliest account's oldest transaction becomes due. One that
    /// already waits for a budget token is due again when the budget's
    /// steady rate brings the next token (or a first send earns one).
    pub fn next_due(&self, budget: &RetryBudget) -> Option<Instant> {
        self.accounts
            .values()
            .filter_map(|q| q.front())
            .map(|(due, item)| {
                if item.starved {
                    (*due).max(budget.next_token())
                } else {
                    *due
                }
            })
            .min()
    }

    /// When the first waiting transaction passes `deadline` after its first
    /// send.
    pub fn next_expiry(&self, deadline: Duration) -> Option<Instant> {
        self.accounts
            .values()
            .flatten()
            .map(|(_, item)| item.first_sent + deadline)
            .min()
    }

    /// Queues `item` to go at `due`, in its account's original order.
    pub fn push(&mut self, due: Instant, item: InFlight) {
        let queue = self
            .accounts
            .entry(item.txn.account_id.clone())
            .or_default();
        let at = queue.partition_point(|(_, q)| q.seq < item.seq);
        queue.insert(at, (due, item));
        self.len += 1;
    }

    /// Up to `max` transactions to send now: for every account whose oldest
    /// waiting transaction is due, its queue in order (later ones ride along
    /// so the account keeps its order on the wire). Each resend spends a
    /// budget token; without one the account waits. A first send that had
    /// queued behind a retry earns like any first send.
    pub fn take_due(
        &mut self,
        now: Instant,
        max: usize,
        budget: &mut RetryBudget,
    ) -> Vec<InFlight> {
        let mut out = Vec::new();
        let mut emptied = Vec::new();
        for (account, queue) in &mut self.accounts {
            if out.len() >= max {
                break;
            }
            if queue.front().is_some_and(|(due, _)| *due <= now) {
                while out.len() < max {
                    let Some((_, item)) = queue.front_mut() else {
                        break;
                    };
                    if item.lost || item.held() {
                        // Not a retry of a refusal for load: its stream
                        // failed, or it was held behind this account's
                        // earlier transaction, which goes first.
                    } else if item.attempt == 0 {
                        budget.earn(1);
                    } else if !budget.try_spend(now) {
                        item.starved = true;
                        break;
                    }
                    if let Some((_, item)) = queue.pop_front() {
                        out.push(item);
                    }
                }
                if queue.is_empty() {
                    emptied.push(account.clone());
                }
            }
        }
        for account in emptied {
            self.accounts.remove(&account);
        }
        self.len -= out.len();
        out
    }

    /// Removes the transactions past their deadline (`deadline` after their
    /// first send), whatever their place: they are given up.
    pub fn take_expired(&mut self, now: Instant, deadline: Duration) -> Vec<InFlight> {
        let mut out = Vec::new();
        for queue in self.accounts.values_mut() {
            let mut i = 0;
            while i < queue.len() {
                if now.saturating_duration_since(queue[i].1.first_sent) >= deadline {
                    if let Some((_, item)) = queue.remove(i) {
                        out.push(item);
                    }
                } else {
                    i += 1;
                }
            }
        }
        self.accounts.retain(|_, q| !q.is_empty());
        self.len -= out.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use rand::{rngs::SmallRng, SeedableRng};
    use txmesh_proto::v1::TxnErrorCode;

    use super::*;

    fn error(retryable: bool, retry_after_ms: u32) -> TxnError {
        TxnError {
            code: TxnErrorCode::ResourceExhausted as i32,
            message: "full".into(),
            retryable,
            retry_after_ms,
            ..TxnError::default()
        }
    }

    #[test]
    fn delays_are_full_jitter_above_the_pushback_and_capped() {
        let config = RetryConfig::default();
        let mut rng = SmallRng::seed_from_u64(1);
        let mut seen = Vec::new();
        for attempt in 0..12 {
            for _ in 0..50 {
                match config.decide(&error(true, 50), attempt, Duration::ZERO, &mut rng) {
                    Decision::RetryAfter(d) => {
                        let cap = config.backoff().cap(attempt);
                        assert!(
                            d >= Duration::from_millis(50) && d <= Duration::from_millis(50) + cap
                        );
                        seen.push(d);
                    }
                    other => panic!("attempt {attempt}: {other:?}"),
                }
            }
        }
        assert_eq!(config.backoff().cap(0), Duration::from_millis(20));
        assert_eq!(config.backoff().cap(3), Duration::from_millis(160));
        assert_eq!(config.backoff().cap(11), Duration::from_millis(1_000));
        // Jitter spreads retries: not all at the floor.
        assert!(seen.iter().any(|d| *d > Duration::from_millis(60)));
    }

    #[test]
    fn gives_up_when_not_retryable_or_past_the_deadline() {
        let config = RetryConfig::default();
        let mut rng = SmallRng::seed_from_u64(2);
        let mut decide =
            |e: &TxnError, since: u64| config.decide(e, 0, Duration::from_millis(since), &mut rng);
        assert_eq!(
            decide(&error(false, 0), 0),
            Decision::GiveUp(GiveUp::NotRetryable)
        );
        assert_eq!(
            decide(&error(true, 50), 29_990),
            Decision::GiveUp(GiveUp::Deadline)
        );
        assert!(matches!(
            decide(&error(true, 0), 0),
            Decision::RetryAfter(_)
        ));
    }

    #[test]
    fn resends_wait_for_budget_tokens_earned_by_first_sends() {
        let config = RetryConfig {
            budget_reserve: 2,
            budget_ratio: 0.2,
            ..RetryConfig::default()
        };
        let mut budget = RetryBudget::new(&config);
        let mut q = RetryQueues::default();
        let t0 = Instant::now();
        for seq in 0..3 {
            q.push(t0, item("a", seq));
        }
        let sent: Vec<_> = q
            .take_due(t0, 10, &mut budget)
            .iter()
            .map(|i| i.seq)
            .collect();
        assert_eq!(sent, [0, 1], "two tokens in reserve");
        assert_eq!(q.len(), 1);
        // Five first sends earn one more resend at 20 %.
        budget.earn(5);
        let sent: Vec<_> = q
            .take_due(t0, 10, &mut budget)
            .iter()
            .map(|i| i.seq)
            .collect();
        assert_eq!(sent, [2]);
        // What waits past its deadline is given up.
        q.push(t0, item("b", 9));
        let later = Instant::now() + config.deadline();
        let expired = q.take_expired(later, config.deadline());
        assert_eq!(expired.len(), 1);
        assert!(q.is_empty());
    }

    fn item(account: &str, seq: u64) -> InFlight {
        let now = Instant::now();
        InFlight {
            txn: Transaction {
                transaction_id: format!("t{seq}"),
                account_id: account.into(),
                ..Transaction::default()
            },
            label: Label::Clean,
            intended: now,
            first_sent: now,
            attempt: 1,
            seq,
            last_error: None,
            starved: false,
            lost: false,
        }
    }

    #[test]
    fn queues_resend_each_account_in_original_order_once_its_oldest_is_due() {
        let mut q = RetryQueues::default();
        let t0 = Instant::now();
        let later = t0 + Duration::from_millis(100);
        // Errors can come back in any order; seq decides.
        q.push(t0, item("a", 3));
        q.push(later, item("a", 1));
        q.push(t0, item("b", 2));
        assert!(q.holds("a") && q.holds("b") && !q.holds("c"));
        let mut budget = RetryBudget::new(&RetryConfig::default());
        let now: Vec<_> = q
            .take_due(t0, 10, &mut budget)
            .iter()
            .map(|i| i.seq)
            .collect();
        assert_eq!(now, [2], "a waits for its oldest (seq 1), due later");
        let due: Vec<_> = q
            .take_due(later, 10, &mut budget)
            .iter()
            .map(|i| i.seq)
            .collect();
        assert_eq!(due, [1, 3]);
        assert!(q.is_empty());
    }
}
