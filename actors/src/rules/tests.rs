//! Table-driven tests of every rule, edges included.

use super::*;
use crate::config::WindowConfig;

const NOW: i64 = 1_700_000_000_000;

fn txn(id: &str, amount: i64, ts: i64) -> Transaction {
    Transaction {
        transaction_id: id.into(),
        account_id: "acc-1".into(),
        amount_minor: amount,
        currency: "EUR".into(),
        timestamp_unix_ms: ts,
        merchant_id: "m-1".into(),
        country: "DE".into(),
        channel: 1,
    }
}

fn window_with(history: &[Transaction]) -> HistoryWindow {
    let mut w = HistoryWindow::new(&WindowConfig::default());
    let rules = RulesConfig::default();
    for t in history {
        match evaluate(&w, t, &rules, NOW) {
            Evaluation::Fresh(v) => w.record(t, &v),
            other => panic!("history must be fresh, got {other:?}"),
        }
    }
    w
}

fn reasons_of(e: &Evaluation) -> (VerdictStatus, Vec<Reason>) {
    let v = match e {
        Evaluation::Fresh(v) | Evaluation::Replay(v) | Evaluation::Rejected(v) => v,
    };
    (
        v.status(),
        v.reasons
            .iter()
            .map(|r| Reason::try_from(*r).expect("known reason"))
            .collect(),
    )
}

#[test]
fn high_amount_fires_at_and_above_the_threshold() {
    let rules = RulesConfig::default();
    let empty = window_with(&[]);
    let cases = [
        (999_999, VerdictStatus::Approved, vec![]),
        (1_000_000, VerdictStatus::Flagged, vec![Reason::HighAmount]),
        (5_000_000, VerdictStatus::Flagged, vec![Reason::HighAmount]),
    ];
    for (amount, status, reasons) in cases {
        let got = reasons_of(&evaluate(&empty, &txn("t", amount, NOW), &rules, NOW));
        assert_eq!(got, (status, reasons), "amount {amount}");
    }
}

#[test]
fn velocity_fires_above_k_within_the_window_only() {
    let rules = RulesConfig::default();
    // 9 earlier transactions within 60 s: the 10th is allowed, the 11th is not.
    let nine: Vec<_> = (0..9)
        .map(|i| txn(&format!("v{i}"), 1_000, NOW - 50_000 + i * 1_000))
        .collect();
    let w = window_with(&nine);
    assert_eq!(
        reasons_of(&evaluate(&w, &txn("tenth", 1_000, NOW), &rules, NOW)).1,
        vec![]
    );
    let ten: Vec<_> = (0..10)
        .map(|i| txn(&format!("v{i}"), 1_000, NOW - 50_000 + i * 1_000))
        .collect();
    let w = window_with(&ten);
    assert_eq!(
        reasons_of(&evaluate(&w, &txn("eleventh", 1_000, NOW), &rules, NOW)).1,
        vec![Reason::Velocity]
    );
    // The same ten, but spread over more than 60 s before the new one.
    let spread: Vec<_> = (0..10)
        .map(|i| txn(&format!("s{i}"), 1_000, NOW - 600_000 + i * 1_000))
        .collect();
    let w = window_with(&spread);
    assert_eq!(
        reasons_of(&evaluate(&w, &txn("later", 1_000, NOW), &rules, NOW)).1,
        vec![]
    );
}

#[test]
fn anomaly_needs_minimum_history_and_fires_at_the_factor() {
    let rules = RulesConfig::default();
    let hist = |n: i64| -> Vec<Transaction> {
        (0..n)
            .map(|i| txn(&format!("h{i}"), 10_000, NOW - 3_600_000 * (n - i)))
            .collect()
    };
    // Four earlier transactions: not enough history yet.
    let w = window_with(&hist(4));
    assert_eq!(
        reasons_of(&evaluate(&w, &txn("big", 60_000, NOW), &rules, NOW)).1,
        vec![]
    );
    let w = window_with(&hist(5));
    // Exactly 5x the mean fires; just below does not.
    assert_eq!(
        reasons_of(&evaluate(&w, &txn("x5", 50_000, NOW), &rules, NOW)).1,
        vec![Reason::AmountAnomaly]
    );
    assert_eq!(
        reasons_of(&evaluate(&w, &txn("x49", 49_999, NOW), &rules, NOW)).1,
        vec![]
    );
}

#[test]
fn invalid_input_is_rejected_with_every_reason() {
    let rules = RulesConfig::default();
    let w = window_with(&[]);
    let mut bad = txn("", 0, NOW + 3_600_000);
    bad.account_id.clear();
    bad.currency = "ZZZ".into();
    bad.country = "de".into();
    let (status, reasons) = reasons_of(&evaluate(&w, &bad, &rules, NOW));
    assert_eq!(status, VerdictStatus::Rejected);
    assert_eq!(
        reasons,
        vec![
            Reason::InvalidTransactionId,
            Reason::InvalidAccountId,
            Reason::InvalidAmount,
            Reason::InvalidCurrency,
            Reason::InvalidTimestamp,
            Reason::InvalidCountry,
        ]
    );
    // A timestamp exactly at the allowed skew is fine.
    let edge = txn("edge", 100, NOW + 300_000);
    assert_eq!(
        reasons_of(&evaluate(&w, &edge, &rules, NOW)).0,
        VerdictStatus::Approved
    );
}

#[test]
fn replay_returns_the_original_and_conflict_is_rejected() {
    let rules = RulesConfig::default();
    let original = txn("dup", 2_000_000, NOW);
    let w = window_with(std::slice::from_ref(&original));
    match evaluate(&w, &original, &rules, NOW) {
        Evaluation::Replay(v) => {
            assert!(v.replayed);
            assert_eq!(v.status(), VerdictStatus::Flagged);
            assert_eq!(v.reasons, vec![Reason::HighAmount as i32]);
        }
        other => panic!("expected a replay, got {other:?}"),
    }
    let mut changed = original;
    changed.amount_minor += 1;
    let (status, reasons) = reasons_of(&evaluate(&w, &changed, &rules, NOW));
    assert_eq!(
        (status, reasons),
        (VerdictStatus::Rejected, vec![Reason::IdConflict])
    );
}
