//! Configuration of the screening pipeline. Plain serde structs with
//! compiled defaults; `validate` names the first bad key.

pub mod duration;
mod journal;

pub use journal::{JournalConfig, SyncPolicy};

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{currency, ActorError};

/// Everything txmesh-actors needs, nested into the ingress's config.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActorsConfig {
    pub shards: ShardsConfig,
    pub supervision: SupervisionConfig,
    pub window: WindowConfig,
    pub rules: RulesConfig,
    pub publisher: PublisherConfig,
    pub journal: JournalConfig,
}

/// How accounts are spread over arbiters.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShardsConfig {
    /// Number of shards, one arbiter (thread) each; 0 means one per core.
    pub count: usize,
    /// Mailbox capacity of a shard, in request batches.
    pub shard_mailbox: usize,
    /// Mailbox capacity of an account actor, in transactions.
    pub account_mailbox: usize,
    /// Retry delay suggested to callers when a mailbox is full.
    #[serde(deserialize_with = "duration::millis")]
    pub overload_retry_after_ms: u32,
    /// Largest request batch accepted; larger ones are answered with
    /// INVALID_REQUEST per transaction.
    pub max_batch: usize,
    /// An account actor idle this long hands its state back to its shard
    /// and stops; its next transaction starts it again with that state.
    #[serde(deserialize_with = "duration::secs")]
    pub passivate_after_secs: u64,
    /// How often each shard looks for idle accounts, milliseconds.
    #[serde(deserialize_with = "duration::millis")]
    pub passivation_sweep_ms: u64,
    /// After a transaction of an account is refused for overload, later
    /// transactions of that account are refused too until the refused one
    /// is retried (so retries cannot reorder an account), or until this
    /// many milliseconds pass without that retry.
    #[serde(deserialize_with = "duration::millis")]
    pub order_hold_ms: u64,
}

/// Restart intensity, quarantine and poison messages, per account.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisionConfig {
    /// At most this many restarts of one account within
    /// `restart_window_secs`; one more quarantines it.
    pub max_restarts: u32,
    #[serde(deserialize_with = "duration::secs")]
    pub restart_window_secs: u64,
    /// How long a quarantine lasts: the account's transactions are REJECTED
    /// with ACCOUNT_QUARANTINED meanwhile. It ends on its own.
    #[serde(deserialize_with = "duration::secs")]
    pub quarantine_secs: u64,
    /// A transaction that crashed the actor this many times is a poison
    /// message: answered with a POISON error and recorded for operators.
    pub poison_attempts: u32,
}

/// Bounds of each account's history window.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WindowConfig {
    /// Most transactions kept per account.
    pub max_entries: usize,
    /// Oldest transaction kept, relative to the newest one, in seconds.
    #[serde(deserialize_with = "duration::secs")]
    pub max_age_secs: u64,
}

/// Thresholds of every rule. Amounts are integer minor units.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RulesConfig {
    /// HIGH_AMOUNT fires at or above this amount, per currency code.
    pub high_amount: BTreeMap<String, i64>,
    /// HIGH_AMOUNT threshold for currencies missing from `high_amount`,
    /// expressed in major units and scaled by the currency's exponent.
    pub high_amount_default_major: i64,
    /// VELOCITY fires when more than this many transactions (this one
    /// included) fall within `velocity_window_secs`.
    pub velocity_max: usize,
    #[serde(deserialize_with = "duration::secs")]
    pub velocity_window_secs: u64,
    /// AMOUNT_ANOMALY needs at least this many earlier transactions in the
    /// same currency...
    pub anomaly_min_history: usize,
    /// ...and fires when the amount is at least this many percent of their
    /// mean (500 = five times the mean).
    pub anomaly_factor_percent: u32,
    /// A timestamp more than this far ahead of the ingress's clock is
    /// INVALID_TIMESTAMP.
    #[serde(deserialize_with = "duration::secs")]
    pub max_future_skew_secs: u64,
    /// NEW_COUNTRY fires for a country absent from the account's window,
    /// once the window holds at least this many transactions.
    pub new_country_min_history: usize,
    /// CURRENCY_SWITCH fires for a currency absent from the account's
    /// window, once the window holds at least this many transactions.
    pub currency_switch_min_history: usize,
    /// STRUCTURING fires when at least `structuring_min_count` transactions
    /// (this one included) within `structuring_window_secs`, in one currency,
    /// each fall in [`structuring_lower_percent`, 100) % of that currency's
    /// HIGH_AMOUNT threshold: amounts kept just under the reporting line.
    pub structuring_min_count: usize,
    #[serde(deserialize_with = "duration::secs")]
    pub structuring_window_secs: u64,
    pub structuring_lower_percent: u32,
    /// A verdict is FLAGGED when its risk score reaches this (and REJECTED
    /// only for invalid input, id conflicts and quarantine).
    pub flag_risk_score: u32,
    /// Risk points each reason adds (capped at 100).
    pub risk_weights: BTreeMap<String, u32>,
}

/// The dashboard publisher's batching, retries and breaker (its outbox is
/// the journal: see [`JournalConfig`]).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublisherConfig {
    /// Most verdicts per batch.
    pub max_batch: usize,
    /// Most batches sent and not yet acknowledged.
    pub max_in_flight: usize,
    /// How often the outbox is drained into batches, milliseconds: the
    /// longest a verdict waits before it leaves for the dashboard. Each
    /// tick wakes two ingress threads, and a tick that finds verdicts costs
    /// a batch and an ack in both processes, so it is kept well under the
    /// dashboard's push to browsers (500 ms) but not shorter than needed:
    /// at 1,000 tx/s, 5 ms cost 80 dashboard core-us per transaction, 50 ms
    /// cost 13.
    #[serde(deserialize_with = "duration::millis")]
    pub flush_interval_ms: u64,
    /// A batch not acknowledged within this time fails the stream.
    #[serde(deserialize_with = "duration::millis")]
    pub ack_timeout_ms: u64,
    /// Backoff between reconnect attempts ([`crate::backoff`]): caps from
    /// initial, times multiplier, up to max; `backoff_jitter` is the share
    /// of each cap that is random (1 = full jitter).
    #[serde(deserialize_with = "duration::millis")]
    pub backoff_initial_ms: u64,
    #[serde(deserialize_with = "duration::millis")]
    pub backoff_max_ms: u64,
    pub backoff_multiplier: f64,
    pub backoff_jitter: f64,
    /// Consecutive failures that open the breaker.
    pub breaker_failure_threshold: u32,
    /// How long the breaker stays open before a half-open probe.
    #[serde(deserialize_with = "duration::millis")]
    pub breaker_open_ms: u64,
    /// Longest open period (it doubles on every failed probe).
    #[serde(deserialize_with = "duration::millis")]
    pub breaker_open_max_ms: u64,
}

impl Default for ShardsConfig {
    fn default() -> Self {
        Self {
            count: 0,
            shard_mailbox: 1024,
            account_mailbox: 256,
            overload_retry_after_ms: 50,
            max_batch: 4096,
            passivate_after_secs: 300,
            passivation_sweep_ms: 1_000,
            order_hold_ms: 10_000,
        }
    }
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        Self {
            max_restarts: 3,
            restart_window_secs: 10,
            quarantine_secs: 30,
            poison_attempts: 3,
        }
    }
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            max_entries: 64,
            max_age_secs: 30 * 24 * 3600,
        }
    }
}

impl Default for RulesConfig {
    fn default() -> Self {
        let high_amount = [
            ("EUR", 1_000_000),
            ("USD", 1_000_000),
            ("GBP", 800_000),
            ("CHF", 1_000_000),
            ("JPY", 1_500_000),
        ]
        .into_iter()
        .map(|(c, a)| (c.to_owned(), a))
        .collect();
        let risk_weights = [
            ("HIGH_AMOUNT", 60),
            ("VELOCITY", 40),
            ("AMOUNT_ANOMALY", 35),
            ("NEW_COUNTRY", 20),
            ("STRUCTURING", 50),
            ("CURRENCY_SWITCH", 15),
        ]
        .into_iter()
        .map(|(r, w)| (r.to_owned(), w))
        .collect();
        Self {
            high_amount,
            high_amount_default_major: 10_000,
            velocity_max: 10,
            velocity_window_secs: 60,
            anomaly_min_history: 5,
            anomaly_factor_percent: 500,
            max_future_skew_secs: 300,
            new_country_min_history: 5,
            currency_switch_min_history: 5,
            structuring_min_count: 3,
            structuring_window_secs: 24 * 3600,
            structuring_lower_percent: 90,
            flag_risk_score: 1,
            risk_weights,
        }
    }
}

impl Default for PublisherConfig {
    fn default() -> Self {
        Self {
            max_batch: 2048,
            max_in_flight: 16,
            flush_interval_ms: 50,
            ack_timeout_ms: 5_000,
            backoff_initial_ms: 50,
            backoff_max_ms: 2_000,
            backoff_multiplier: 2.0,
            backoff_jitter: 0.5,
            breaker_failure_threshold: 3,
            breaker_open_ms: 500,
            breaker_open_max_ms: 5_000,
        }
    }
}

/// Every bad value found in one pass over a configuration, so that a user
/// fixes them all at once instead of one per start.
#[derive(Debug, Default)]
pub struct Problems {
    prefix: String,
    found: Vec<(String, String)>,
}

impl Problems {
    /// Records `key` (relative to the current section) as bad when `bad`.
    pub fn bad_if(&mut self, bad: bool, key: &str, reason: impl Into<String>) {
        if bad {
            self.found
                .push((format!("{}{key}", self.prefix), reason.into()));
        }
    }

    /// Records `key` as bad when `value` is zero.
    pub fn at_least_one(&mut self, key: &str, value: u64) {
        self.bad_if(value == 0, key, "must be at least 1");
    }

    /// Runs `check` with keys relative to `section` (`"actors."`).
    pub fn within(&mut self, section: &str, check: impl FnOnce(&mut Self)) {
        let outer = std::mem::take(&mut self.prefix);
        self.prefix = format!("{outer}{section}");
        check(self);
        self.prefix = outer;
    }

    /// The bad keys and why, in the order found.
    pub fn found(&self) -> &[(String, String)] {
        &self.found
    }

    /// `Ok` when nothing was found; otherwise one error naming every key.
    ///
    /// # Errors
    /// [`ActorError::Config`] listing every bad key and its reason.
    pub fn into_result(self) -> Result<(), ActorError> {
        let (key, reason) = match self.found.as_slice() {
            [] => return Ok(()),
            [(key, reason)] => (key.clone(), reason.clone()),
            many => (
                format!("{} keys", many.len()),
                many.iter()
                    .map(|(k, r)| format!("{k} {r}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
        };
        Err(ActorError::Config { key, reason })
    }
}

impl ActorsConfig {
    /// Checks every value; the error names the key (as `section.key`,
    /// relative to this config's place in the service config).
    ///
    /// # Errors
    /// [`ActorError::Config`] naming every bad value.
    pub fn validate(&self) -> Result<(), ActorError> {
        let mut problems = Problems::default();
        self.check(&mut problems);
        problems.into_result()
    }

    /// Records every bad value in `p`.
    pub fn check(&self, p: &mut Problems) {
        let (s, v) = (&self.shards, &self.supervision);
        for (key, value) in [
            ("shards.shard_mailbox", s.shard_mailbox as u64),
            ("shards.account_mailbox", s.account_mailbox as u64),
            ("shards.max_batch", s.max_batch as u64),
            ("shards.passivate_after_secs", s.passivate_after_secs),
            ("shards.passivation_sweep_ms", s.passivation_sweep_ms),
            ("supervision.restart_window_secs", v.restart_window_secs),
            ("supervision.quarantine_secs", v.quarantine_secs),
            ("supervision.poison_attempts", u64::from(v.poison_attempts)),
            ("window.max_entries", self.window.max_entries as u64),
            ("window.max_age_secs", self.window.max_age_secs),
        ] {
            p.at_least_one(key, value);
        }
        self.rules.check(p);
        self.publisher.check(p);
        self.journal.check(p);
    }

    /// The number of shards to start: `shards.count`, or one per core.
    pub fn shard_count(&self) -> usize {
        if self.shards.count > 0 {
            self.shards.count
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

impl RulesConfig {
    fn check(&self, p: &mut Problems) {
        for (code, amount) in &self.high_amount {
            p.bad_if(
                !currency::is_known(code),
                &format!("rules.high_amount.{code}"),
                "not an ISO 4217 currency code",
            );
            p.bad_if(
                *amount <= 0,
                &format!("rules.high_amount.{code}"),
                "must be positive",
            );
        }
        p.bad_if(
            self.high_amount_default_major <= 0,
            "rules.high_amount_default_major",
            "must be positive",
        );
        p.bad_if(
            self.velocity_max == 0,
            "rules.velocity_max",
            "must be at least 1",
        );
        p.bad_if(
            self.velocity_window_secs == 0,
            "rules.velocity_window_secs",
            "must be at least 1",
        );
        p.bad_if(
            self.anomaly_factor_percent <= 100,
            "rules.anomaly_factor_percent",
            "must be above 100",
        );
        p.bad_if(
            self.structuring_min_count < 2,
            "rules.structuring_min_count",
            "must be at least 2",
        );
        p.bad_if(
            self.structuring_window_secs == 0,
            "rules.structuring_window_secs",
            "must be at least 1",
        );
        p.bad_if(
            !(1..100).contains(&self.structuring_lower_percent),
            "rules.structuring_lower_percent",
            "must be between 1 and 99",
        );
        p.bad_if(
            !(1..=100).contains(&self.flag_risk_score),
            "rules.flag_risk_score",
            "must be between 1 and 100",
        );
        for reason in self.risk_weights.keys() {
            p.bad_if(
                txmesh_proto::v1::Reason::from_str_name(&format!("REASON_{reason}")).is_none(),
                &format!("rules.risk_weights.{reason}"),
                "unknown reason",
            );
        }
    }

    /// The HIGH_AMOUNT threshold of `currency`, in its minor units.
    pub fn high_amount_threshold(&self, currency: &str) -> i64 {
        if let Some(amount) = self.high_amount.get(currency) {
            return *amount;
        }
        let exponent = currency::minor_unit_exponent(currency).unwrap_or(2);
        self.high_amount_default_major
            .saturating_mul(10_i64.pow(u32::from(exponent)))
    }
}

impl PublisherConfig {
    /// The reconnect backoff policy these fields describe.
    pub fn backoff(&self) -> crate::backoff::BackoffConfig {
        crate::backoff::BackoffConfig {
            initial: Duration::from_millis(self.backoff_initial_ms),
            max: Duration::from_millis(self.backoff_max_ms),
            multiplier: self.backoff_multiplier,
            jitter: self.backoff_jitter,
        }
    }

    fn check(&self, p: &mut Problems) {
        if let Err(e) = self.backoff().validate() {
            use crate::backoff::BackoffError as E;
            let key = match e {
                E::ZeroInitial => "publisher.backoff_initial_ms",
                E::MaxBelowInitial { .. } => "publisher.backoff_max_ms",
                E::Multiplier(_) => "publisher.backoff_multiplier",
                E::Jitter(_) => "publisher.backoff_jitter",
            };
            p.bad_if(true, key, e.to_string());
        }
        let checks: [(&str, bool, &str); 7] = [
            (
                "publisher.max_batch",
                self.max_batch > 0,
                "must be at least 1",
            ),
            (
                "publisher.max_in_flight",
                self.max_in_flight > 0,
                "must be at least 1",
            ),
            (
                "publisher.flush_interval_ms",
                self.flush_interval_ms > 0,
                "must be at least 1",
            ),
            (
                "publisher.ack_timeout_ms",
                self.ack_timeout_ms > 0,
                "must be at least 1",
            ),
            (
                "publisher.backoff_multiplier",
                self.backoff_multiplier >= 1.0,
                "must be at least 1.0",
            ),
            (
                "publisher.backoff_jitter",
                (0.0..=1.0).contains(&self.backoff_jitter),
                "must be between 0 and 1",
            ),
            (
                "publisher.breaker_failure_threshold",
                self.breaker_failure_threshold > 0,
                "must be at least 1",
            ),
        ];
        for (key, ok, reason) in checks {
            p.bad_if(!ok, key, reason);
        }
        p.bad_if(
            self.backoff_max_ms < self.backoff_initial_ms,
            "publisher.backoff_max_ms",
            "must be at least backoff_initial_ms",
        );
        p.bad_if(
            self.breaker_open_max_ms < self.breaker_open_ms,
            "publisher.breaker_open_max_ms",
            "must be at least breaker_open_ms",
        );
    }

    /// `flush_interval_ms` as a duration.
    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        ActorsConfig::default()
            .validate()
            .expect("defaults validate");
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut config = ActorsConfig::default();
        config.rules.high_amount.insert("ZZZ".into(), 5);
        let err = config.validate().expect_err("unknown currency").to_string();
        assert!(err.contains("rules.high_amount.ZZZ"), "{err}");

        let mut config = ActorsConfig::default();
        config.publisher.backoff_jitter = 2.0;
        let err = config.validate().expect_err("bad jitter").to_string();
        assert!(err.contains("publisher.backoff_jitter"), "{err}");
    }

    #[test]
    fn default_threshold_scales_with_the_exponent() {
        let rules = RulesConfig::default();
        assert_eq!(rules.high_amount_threshold("EUR"), 1_000_000);
        assert_eq!(rules.high_amount_threshold("SEK"), 1_000_000);
        assert_eq!(rules.high_amount_threshold("KWD"), 10_000_000);
        assert_eq!(rules.high_amount_threshold("ISK"), 10_000);
    }
}
