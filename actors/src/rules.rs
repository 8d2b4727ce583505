//! The screening rules: a pure function of (window, transaction, rule
//! config, now). The window is read, never written, here: the account actor
//! records the transaction only after the verdict is decided.
//!
//! | reason | fires when | default |
//! |---|---|---|
//! | INVALID_* | empty/over-long ids, amount <= 0, unknown ISO 4217 currency, timestamp <= 0 or too far ahead, country not two upper-case letters | REJECTED |
//! | ID_CONFLICT | a transaction_id already screened for the account arrives with different content | REJECTED |
//! | HIGH_AMOUNT | amount >= the currency's threshold | EUR/USD/CHF 10,000.00, GBP 8,000.00, JPY 1,500,000 |
//! | VELOCITY | more than `velocity_max` transactions (this one included) within `velocity_window_secs` | 10 in 60 s |
//! | AMOUNT_ANOMALY | at least `anomaly_min_history` earlier transactions in the currency and amount >= `anomaly_factor_percent` of their mean | 5, 500 % |
//! | NEW_COUNTRY | a country absent from the window, once it holds `new_country_min_history` transactions | 5 |
//! | STRUCTURING | `structuring_min_count` transactions (this one included) within `structuring_window_secs`, one currency, each in [`structuring_lower_percent`, 100) % of the HIGH_AMOUNT threshold | 3 in 24 h, 90 % |
//! | CURRENCY_SWITCH | a currency absent from the window, once it holds `currency_switch_min_history` transactions | 5 |
//!
//! The risk score is the sum of the fired reasons' `risk_weights`, capped at
//! 100; a score of at least `flag_risk_score` makes the verdict FLAGGED.

use txmesh_proto::v1::{Reason, Transaction, Verdict, VerdictStatus};

use crate::{
    config::RulesConfig,
    currency,
    window::{code, HistoryWindow},
};

/// Longest accepted transaction or account id.
const MAX_ID_LEN: usize = 128;
// A window keeps every id screening lets through.
const _: () = assert!(MAX_ID_LEN <= crate::window::MAX_ID_BYTES);

/// The outcome of screening one transaction against its account's window.
#[derive(Debug, Clone, PartialEq)]
pub enum Evaluation {
    /// A transaction seen for the first time: record it, then answer.
    Fresh(Verdict),
    /// A replay of an already screened transaction: answer with the
    /// original verdict (replayed = true) and record nothing.
    Replay(Verdict),
    /// Rejected before it could enter the history (invalid, id conflict).
    Rejected(Verdict),
}

/// Screens `txn` given the account's history. `now_unix_ms` is the ingress's
/// clock, used only to refuse timestamps from the future.
pub fn evaluate(
    window: &HistoryWindow,
    txn: &Transaction,
    rules: &RulesConfig,
    now_unix_ms: i64,
) -> Evaluation {
    let invalid = validate(txn, rules, now_unix_ms);
    if !invalid.is_empty() {
        return Evaluation::Rejected(verdict(txn, VerdictStatus::Rejected, invalid, 100));
    }
    if let Some(previous) = window.find(&txn.transaction_id) {
        if previous.fields.fingerprint == crate::window::fingerprint(txn) {
            let stored = previous.fields.verdict;
            let mut original = verdict(
                txn,
                stored.status(),
                stored.reason_codes(),
                u32::from(stored.risk_score),
            );
            original.replayed = true;
            original.processing_time_us = u64::from(stored.processing_time_us);
            return Evaluation::Replay(original);
        }
        return Evaluation::Rejected(verdict(
            txn,
            VerdictStatus::Rejected,
            vec![Reason::IdConflict as i32],
            100,
        ));
    }

    let mut reasons = Vec::new();
    if txn.amount_minor >= rules.high_amount_threshold(&txn.currency) {
        reasons.push(Reason::HighAmount);
    }
    if velocity_exceeded(window, txn, rules) {
        reasons.push(Reason::Velocity);
    }
    // Valid input (checked above): the codes compare as fixed arrays.
    let country = code::<2>(&txn.country);
    let ccy = code::<3>(&txn.currency);
    if amount_anomalous(window, txn, ccy, rules) {
        reasons.push(Reason::AmountAnomaly);
    }
    if window.len() >= rules.new_country_min_history
        && !window.fields().any(|e| e.country == country)
    {
        reasons.push(Reason::NewCountry);
    }
    if structuring(window, txn, ccy, rules) {
        reasons.push(Reason::Structuring);
    }
    if window.len() >= rules.currency_switch_min_history
        && !window.fields().any(|e| e.currency == ccy)
    {
        reasons.push(Reason::CurrencySwitch);
    }
    let risk = reasons
        .iter()
        .map(|r| risk_weight(rules, *r))
        .sum::<u32>()
        .min(100);
    let status = if risk >= rules.flag_risk_score {
        VerdictStatus::Flagged
    } else {
        VerdictStatus::Approved
    };
    Evaluation::Fresh(verdict(
        txn,
        status,
        reasons.into_iter().map(|r| r as i32).collect(),
        risk,
    ))
}

fn validate(txn: &Transaction, rules: &RulesConfig, now_unix_ms: i64) -> Vec<i32> {
    let mut reasons = Vec::new();
    let bad_id = |id: &str| id.is_empty() || id.len() > MAX_ID_LEN;
    if bad_id(&txn.transaction_id) {
        reasons.push(Reason::InvalidTransactionId as i32);
    }
    if bad_id(&txn.account_id) {
        reasons.push(Reason::InvalidAccountId as i32);
    }
    if txn.amount_minor <= 0 {
        reasons.push(Reason::InvalidAmount as i32);
    }
    if !currency::is_known(&txn.currency) {
        reasons.push(Reason::InvalidCurrency as i32);
    }
    let skew_ms =
        i64::try_from(rules.max_future_skew_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    if txn.timestamp_unix_ms <= 0 || txn.timestamp_unix_ms > now_unix_ms.saturating_add(skew_ms) {
        reasons.push(Reason::InvalidTimestamp as i32);
    }
    if txn.country.len() != 2 || !txn.country.bytes().all(|b| b.is_ascii_uppercase()) {
        reasons.push(Reason::InvalidCountry as i32);
    }
    reasons
}

fn velocity_exceeded(window: &HistoryWindow, txn: &Transaction, rules: &RulesConfig) -> bool {
    let span_ms =
        i64::try_from(rules.velocity_window_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let since = txn.timestamp_unix_ms.saturating_sub(span_ms);
    let recent = window
        .fields()
        .filter(|e| e.timestamp_unix_ms > since && e.timestamp_unix_ms <= txn.timestamp_unix_ms)
        .count();
    recent + 1 > rules.velocity_max
}

fn amount_anomalous(
    window: &HistoryWindow,
    txn: &Transaction,
    ccy: [u8; 3],
    rules: &RulesConfig,
) -> bool {
    let (count, sum) = window
        .fields()
        .filter(|e| e.currency == ccy)
        .fold((0i128, 0i128), |(n, s), e| {
            (n + 1, s + i128::from(e.amount_minor))
        });
    if count == 0 || usize::try_from(count).unwrap_or(usize::MAX) < rules.anomaly_min_history {
        return false;
    }
    // amount >= factor% * sum / count, in integers.
    i128::from(txn.amount_minor) * 100 * count >= sum * i128::from(rules.anomaly_factor_percent)
}

/// Whether `amount` sits in the structuring band of its currency: at or
/// above `structuring_lower_percent` of the HIGH_AMOUNT threshold, below it.
fn in_structuring_band(amount: i64, threshold: i64, rules: &RulesConfig) -> bool {
    amount < threshold
        && i128::from(amount) * 100
            >= i128::from(threshold) * i128::from(rules.structuring_lower_percent)
}

fn structuring(
    window: &HistoryWindow,
    txn: &Transaction,
    ccy: [u8; 3],
    rules: &RulesConfig,
) -> bool {
    let threshold = rules.high_amount_threshold(&txn.currency);
    if !in_structuring_band(txn.amount_minor, threshold, rules) {
        return false;
    }
    let span_ms =
        i64::try_from(rules.structuring_window_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let since = txn.timestamp_unix_ms.saturating_sub(span_ms);
    let earlier = window
        .fields()
        .filter(|e| {
            e.timestamp_unix_ms > since
                && e.timestamp_unix_ms <= txn.timestamp_unix_ms
                && e.currency == ccy
                && in_structuring_band(e.amount_minor, threshold, rules)
        })
        .count();
    earlier + 1 >= rules.structuring_min_count
}

fn risk_weight(rules: &RulesConfig, reason: Reason) -> u32 {
    let name = reason.as_str_name();
    let key = name.strip_prefix("REASON_").unwrap_or(name);
    rules.risk_weights.get(key).copied().unwrap_or(25)
}

/// A fresh (not replayed, not yet timed) verdict for `txn`.
pub(crate) fn verdict(
    txn: &Transaction,
    status: VerdictStatus,
    reasons: Vec<i32>,
    risk_score: u32,
) -> Verdict {
    Verdict {
        transaction_id: txn.transaction_id.clone(),
        account_id: txn.account_id.clone(),
        status: status as i32,
        reasons,
        risk_score,
        replayed: false,
        processing_time_us: 0,
        amount_minor: txn.amount_minor,
        currency: txn.currency.clone(),
        country: txn.country.clone(),
        traceparent: String::new(),
        // Only the journal's record of an alert carries it (to the
        // dashboard); the caller's answer does not repeat it.
        merchant_id: String::new(),
    }
}

#[cfg(test)]
#[path = "rules/tests.rs"]
mod tests;
