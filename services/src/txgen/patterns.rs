//! The traffic txgen sends: clean transactions that no rule should flag, and
//! labelled injected patterns, one per screening rule, each with what the
//! ingress must answer for it to count as detected.
//!
//! Clean traffic keeps every account quiet: its own currency and country, an
//! amount within 50-150 % of the account's baseline, and a simulated clock
//! that advances 5-30 minutes per transaction (starting 30 days back), so
//! neither VELOCITY nor AMOUNT_ANOMALY nor HIGH_AMOUNT can fire on it, nor
//! NEW_COUNTRY, CURRENCY_SWITCH or STRUCTURING (its amounts stay far below
//! the structuring band).

use std::collections::VecDeque;

use rand::{rngs::SmallRng, RngExt, SeedableRng};
use txmesh_actors::RulesConfig;
use txmesh_proto::v1::{
    txn_result::Outcome, Channel, Reason, Transaction, TxnResult, VerdictStatus,
};

/// An injected pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pattern {
    HighAmount,
    Velocity,
    AmountAnomaly,
    NewCountry,
    Structuring,
    CurrencySwitch,
    Replay,
    Invalid,
    IdConflict,
}

/// What a sent transaction is, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    /// Ordinary traffic: any FLAGGED or REJECTED verdict is a false positive.
    Clean,
    /// Part of a velocity burst before the one expected to fire.
    Filler,
    Injected(Pattern),
}

/// A transaction to send and what it is.
#[derive(Debug, Clone)]
pub struct Planned {
    pub txn: Transaction,
    pub label: Label,
}

const CURRENCIES: [&str; 3] = ["EUR", "USD", "GBP"];
const COUNTRIES: [&str; 6] = ["DE", "FR", "NL", "US", "GB", "ES"];
/// Countries and currencies no account calls home: injected cases only.
const FAR_COUNTRIES: [&str; 4] = ["BR", "SG", "ZA", "JP"];
const FAR_CURRENCIES: [&str; 4] = ["SEK", "CHF", "JPY", "NOK"];
const RECENT: usize = 1024;
const DAY_MS: i64 = 24 * 3600 * 1000;

/// Generates the traffic of one stream over its share of the accounts.
pub struct Generator {
    rng: SmallRng,
    /// Global account numbers owned by this stream.
    accounts: Vec<u64>,
    sims: Vec<AccountSim>,
    queue: VecDeque<Planned>,
    recent: VecDeque<Transaction>,
    rules: RulesConfig,
    inject_ratio: f64,
    stream: usize,
    /// This run's id (its start, Unix ms) in every transaction and account
    /// id: the ingress remembers accounts and ids across its restarts, and
    /// the report's detection figures assume accounts whose history is this
    /// run's alone (the same seed replays the same traffic under new ids).
    run: u64,
    next_id: u64,
}

#[derive(Debug, Clone, Copy)]
struct AccountSim {
    clock_ms: i64,
    /// Valid transactions recorded in the account's window.
    history: u32,
    /// An outlier amount is in its history (anomaly would be masked).
    tainted: bool,
    /// Bits of FAR_COUNTRIES ([0]) and FAR_CURRENCIES ([1]) already
    /// injected.
    unseen_used: [u8; 2],
}

impl Pattern {
    /// Every pattern, in report order.
    pub const ALL: [Pattern; 9] = [
        Pattern::HighAmount,
        Pattern::Velocity,
        Pattern::AmountAnomaly,
        Pattern::NewCountry,
        Pattern::Structuring,
        Pattern::CurrencySwitch,
        Pattern::Replay,
        Pattern::Invalid,
        Pattern::IdConflict,
    ];

    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::HighAmount => "high_amount",
            Pattern::Velocity => "velocity",
            Pattern::AmountAnomaly => "amount_anomaly",
            Pattern::NewCountry => "new_country",
            Pattern::Structuring => "structuring",
            Pattern::CurrencySwitch => "currency_switch",
            Pattern::Replay => "replay",
            Pattern::Invalid => "invalid",
            Pattern::IdConflict => "id_conflict",
        }
    }

    /// Whether `result` is the answer this pattern must get.
    pub fn detected_by(self, result: &TxnResult) -> bool {
        let Some(Outcome::Verdict(v)) = &result.outcome else {
            return false;
        };
        let has = |r: Reason| v.reasons.contains(&(r as i32));
        match self {
            Pattern::HighAmount => has(Reason::HighAmount),
            Pattern::Velocity => has(Reason::Velocity),
            Pattern::AmountAnomaly => has(Reason::AmountAnomaly),
            Pattern::NewCountry => has(Reason::NewCountry),
            Pattern::Structuring => has(Reason::Structuring),
            Pattern::CurrencySwitch => has(Reason::CurrencySwitch),
            Pattern::Replay => v.replayed,
            Pattern::Invalid => {
                v.status() == VerdictStatus::Rejected
                    && v.reasons.iter().any(|r| {
                        Reason::try_from(*r)
                            .is_ok_and(|r| r.as_str_name().starts_with("REASON_INVALID_"))
                    })
            }
            Pattern::IdConflict => has(Reason::IdConflict),
        }
    }
}

impl Generator {
    /// The generator of stream `stream` of `streams`, over accounts
    /// `0..accounts` (those with `account % streams == stream`).
    pub fn new(
        seed: u64,
        stream: usize,
        streams: usize,
        accounts: u64,
        rules: RulesConfig,
        inject_ratio: f64,
        now_ms: i64,
    ) -> Self {
        let mut rng =
            SmallRng::seed_from_u64(seed ^ (stream as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let owned: Vec<u64> = (0..accounts)
            .filter(|a| (*a % streams as u64) as usize == stream)
            .collect();
        let sims = owned
            .iter()
            .map(|_| AccountSim {
                clock_ms: now_ms - 30 * DAY_MS + rng.random_range(0..DAY_MS),
                history: 0,
                tainted: false,
                unseen_used: [0; 2],
            })
            .collect();
        Self {
            rng,
            accounts: owned,
            sims,
            queue: VecDeque::new(),
            recent: VecDeque::with_capacity(RECENT),
            rules,
            inject_ratio,
            stream,
            run: now_ms.unsigned_abs(),
            next_id: 0,
        }
    }

    /// The next transaction to send.
    pub fn next(&mut self, now_ms: i64) -> Planned {
        if let Some(p) = self.queue.pop_front() {
            return p;
        }
        if self.accounts.is_empty() {
            // More streams than accounts: this stream only sends invalid input.
            return self.invalid(now_ms);
        }
        if self.rng.random_bool(self.inject_ratio) {
            let pattern = Pattern::ALL[self.rng.random_range(0..Pattern::ALL.len())];
            self.inject(pattern, now_ms);
            if let Some(p) = self.queue.pop_front() {
                return p;
            }
        }
        let slot = self.rng.random_range(0..self.accounts.len());
        let txn = self.clean(slot, now_ms);
        Planned {
            txn,
            label: Label::Clean,
        }
    }

    fn inject(&mut self, pattern: Pattern, now_ms: i64) {
        match pattern {
            Pattern::HighAmount => {
                let slot = self.rng.random_range(0..self.accounts.len());
                let mut txn = self.clean(slot, now_ms);
                let threshold = self.rules.high_amount_threshold(&txn.currency);
                txn.amount_minor = threshold + self.rng.random_range(0..threshold.max(1));
                self.sims[slot].tainted = true;
                self.push(txn, Label::Injected(pattern));
            }
            Pattern::Velocity => {
                let slot = self.rng.random_range(0..self.accounts.len());
                let burst = self.rules.velocity_max + 1;
                let mut start = 0;
                for i in 0..burst {
                    let mut txn = self.clean(slot, now_ms);
                    if i == 0 {
                        start = txn.timestamp_unix_ms;
                    }
                    // One second apart: the whole burst sits inside the window.
                    txn.timestamp_unix_ms = start + i as i64 * 1000;
                    let label = if i + 1 == burst {
                        Label::Injected(pattern)
                    } else {
                        Label::Filler
                    };
                    self.push(txn, label);
                }
                // Let the burst leave the velocity window before clean traffic.
                let gap =
                    i64::try_from(self.rules.velocity_window_secs).unwrap_or(60) * 1000 + 60_000;
                self.sims[slot].clock_ms = (start + burst as i64 * 1000 + gap).min(now_ms);
            }
            Pattern::AmountAnomaly => {
                let need = u32::try_from(self.rules.anomaly_min_history).unwrap_or(u32::MAX);
                let pick = (0..16)
                    .map(|_| self.rng.random_range(0..self.accounts.len()))
                    .find(|s| self.sims[*s].history >= need && !self.sims[*s].tainted);
                if let Some(slot) = pick {
                    let mut txn = self.clean(slot, now_ms);
                    let factor = i64::from(self.rules.anomaly_factor_percent) * 2 / 100;
                    txn.amount_minor = baseline(self.accounts[slot]) * factor.max(2);
                    self.sims[slot].tainted = true;
                    self.push(txn, Label::Injected(pattern));
                }
            }
            Pattern::NewCountry | Pattern::CurrencySwitch => self.inject_unseen(pattern, now_ms),
            Pattern::Structuring => {
                let slot = self.rng.random_range(0..self.accounts.len());
                let n = self.rules.structuring_min_count;
                for i in 0..n {
                    // Clean steps of 5-30 minutes: the run fits in 24 h.
                    let mut txn = self.clean(slot, now_ms);
                    let threshold = self.rules.high_amount_threshold(&txn.currency);
                    let low = threshold * i64::from(self.rules.structuring_lower_percent) / 100 + 1;
                    txn.amount_minor = self.rng.random_range(low..threshold);
                    let label = if i + 1 == n {
                        Label::Injected(pattern)
                    } else {
                        Label::Filler
                    };
                    self.push(txn, label);
                }
                // Amounts this large are outliers in the account's history.
                self.sims[slot].tainted = true;
            }
            Pattern::Replay => {
                if let Some(txn) = self.pick_recent() {
                    self.queue.push_back(Planned {
                        txn,
                        label: Label::Injected(pattern),
                    });
                }
            }
            Pattern::Invalid => {
                let p = self.invalid(now_ms);
                self.queue.push_back(p);
            }
            Pattern::IdConflict => {
                if let Some(mut txn) = self.pick_recent() {
                    txn.amount_minor += 1;
                    self.queue.push_back(Planned {
                        txn,
                        label: Label::Injected(pattern),
                    });
                }
            }
        }
    }

    /// NEW_COUNTRY or CURRENCY_SWITCH: a seasoned account's transaction in
    /// a far country or currency it has not been sent before.
    fn inject_unseen(&mut self, pattern: Pattern, now_ms: i64) {
        let (need, choices, kind) = if pattern == Pattern::NewCountry {
            (self.rules.new_country_min_history, &FAR_COUNTRIES, 0)
        } else {
            (self.rules.currency_switch_min_history, &FAR_CURRENCIES, 1)
        };
        let Some(slot) = self.seasoned(need) else {
            return;
        };
        let Some(i) = self.unused(self.sims[slot].unseen_used[kind], choices.len()) else {
            return;
        };
        let mut txn = self.clean(slot, now_ms);
        let code = choices[i].to_owned();
        if kind == 0 {
            txn.country = code;
        } else {
            txn.currency = code;
        }
        self.sims[slot].unseen_used[kind] |= 1 << i;
        self.push(txn, Label::Injected(pattern));
    }

    /// A random index below `n` whose bit is not set in `used`: each
    /// account gets each far country or currency once, so the injected case
    /// is new to its window every time.
    fn unused(&mut self, used: u8, n: usize) -> Option<usize> {
        let free: Vec<usize> = (0..n).filter(|i| used & (1 << i) == 0).collect();
        (!free.is_empty()).then(|| free[self.rng.random_range(0..free.len())])
    }

    /// A random account with at least `need` transactions in its history.
    fn seasoned(&mut self, need: usize) -> Option<usize> {
        let need = u32::try_from(need).unwrap_or(u32::MAX);
        (0..16)
            .map(|_| self.rng.random_range(0..self.accounts.len()))
            .find(|s| self.sims[*s].history >= need)
    }

    fn push(&mut self, txn: Transaction, label: Label) {
        self.queue.push_back(Planned { txn, label });
    }

    /// Learns that `txn` was screened and entered its account's history:
    /// a candidate for replays and id conflicts. Only screened transactions
    /// qualify, so a "replay" never races its original to the ingress.
    pub fn screened(&mut self, txn: Transaction) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(txn);
    }

    fn pick_recent(&mut self) -> Option<Transaction> {
        if self.recent.is_empty() {
            return None;
        }
        let i = self.rng.random_range(0..self.recent.len());
        self.recent.get(i).cloned()
    }

    /// A clean transaction for the account in `slot`; advances its clock.
    fn clean(&mut self, slot: usize, now_ms: i64) -> Transaction {
        let account = self.accounts[slot];
        let step = self.rng.random_range(5 * 60_000..30 * 60_000);
        let sim = &mut self.sims[slot];
        sim.clock_ms = (sim.clock_ms + step).min(now_ms);
        sim.history += 1;
        let clock_ms = sim.clock_ms;
        let amount = baseline(account) * self.rng.random_range(50..=150) / 100;
        let txn = Transaction {
            transaction_id: self.new_id(),
            account_id: account_id(self.run, account),
            amount_minor: amount,
            currency: CURRENCIES[(account % 3) as usize].to_owned(),
            timestamp_unix_ms: clock_ms,
            merchant_id: format!("m-{:05}", self.rng.random_range(0..50_000)),
            country: COUNTRIES[(account % 6) as usize].to_owned(),
            channel: Channel::Ecommerce as i32 + (account % 3) as i32,
        };
        txn
    }

    fn invalid(&mut self, now_ms: i64) -> Planned {
        let mut txn = Transaction {
            transaction_id: self.new_id(),
            account_id: account_id(self.run, self.accounts.first().copied().unwrap_or(0)),
            amount_minor: 1_000,
            currency: "EUR".into(),
            timestamp_unix_ms: now_ms,
            merchant_id: "m-invalid".into(),
            country: "DE".into(),
            channel: Channel::Ecommerce as i32,
        };
        match self.rng.random_range(0..5) {
            0 => txn.amount_minor = 0,
            1 => txn.amount_minor = -500,
            2 => txn.currency = "ZZZ".into(),
            3 => txn.timestamp_unix_ms = now_ms + 7 * DAY_MS,
            _ => txn.country = "xx".into(),
        }
        Planned {
            txn,
            label: Label::Injected(Pattern::Invalid),
        }
    }

    fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!("r{:x}-s{}-{:010}", self.run, self.stream, self.next_id)
    }
}

/// The id of account number `account` in run `run`.
fn account_id(run: u64, account: u64) -> String {
    format!("acct-{run:x}-{account:08}")
}

/// An account's usual amount in minor units: 10.00 to 500.00.
fn baseline(account: u64) -> i64 {
    1_000 + i64::try_from(account.wrapping_mul(2_654_435_761) % 49_000).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_traffic_stays_under_every_threshold_and_injects_every_pattern() {
        let rules = RulesConfig::default();
        let now = 1_800_000_000_000;
        let mut g = Generator::new(7, 0, 1, 50, rules.clone(), 0.3, now);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..5_000 {
            let p = g.next(now);
            if p.label == Label::Clean {
                g.screened(p.txn.clone());
            }
            match p.label {
                Label::Clean => {
                    assert!(p.txn.amount_minor < rules.high_amount_threshold(&p.txn.currency));
                    assert!(p.txn.timestamp_unix_ms <= now);
                }
                Label::Injected(pattern) => {
                    seen.insert(pattern);
                }
                Label::Filler => {}
            }
        }
        assert_eq!(
            seen.len(),
            Pattern::ALL.len(),
            "every pattern injected: {seen:?}"
        );
    }
}
