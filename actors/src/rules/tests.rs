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
    let mut w = HistoryWindow::new();
    let rules = RulesConfig::default();
    for t in history {
        match evaluate(&w, t, &rules, NOW) {
            Evaluation::Fresh(v) => {
                w.record(&WindowConfig::default(), t, &v);
            }
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

fn with(mut t: Transaction, currency: &str, country: &str) -> Transaction {
    t.currency = currency.into();
    t.country = country.into();
    t
}

/// `n` quiet earlier transactions, an hour apart, in EUR from DE.
fn quiet_history(n: i64) -> Vec<Transaction> {
    (0..n)
        .map(|i| txn(&format!("h{i}"), 10_000, NOW - 3_600_000 * (n - i)))
        .collect()
}

#[test]
fn new_country_and_currency_switch_need_their_minimum_history() {
    let rules = RulesConfig::default();
    // (history length, currency, country, expected reasons)
    let cases = [
        (4, "EUR", "FR", vec![]),
        (5, "EUR", "FR", vec![Reason::NewCountry]),
        (5, "EUR", "DE", vec![]),
        (4, "USD", "DE", vec![]),
        (5, "USD", "DE", vec![Reason::CurrencySwitch]),
        (
            5,
            "USD",
            "FR",
            vec![Reason::NewCountry, Reason::CurrencySwitch],
        ),
    ];
    for (n, currency, country, expected) in cases {
        let w = window_with(&quiet_history(n));
        let t = with(txn("new", 10_000, NOW), currency, country);
        let (status, reasons) = reasons_of(&evaluate(&w, &t, &rules, NOW));
        assert_eq!(reasons, expected, "{n} earlier, {currency} from {country}");
        let flagged = if expected.is_empty() {
            VerdictStatus::Approved
        } else {
            VerdictStatus::Flagged
        };
        assert_eq!(status, flagged);
    }
    // A country seen anywhere in the window is not new.
    let mut history = quiet_history(5);
    history[0].country = "FR".into();
    let w = window_with(&history);
    let t = with(txn("back", 10_000, NOW), "EUR", "FR");
    assert_eq!(reasons_of(&evaluate(&w, &t, &rules, NOW)).1, vec![]);
}

#[test]
fn structuring_fires_for_repeated_amounts_just_under_the_threshold() {
    let rules = RulesConfig::default();
    // EUR threshold 1,000,000: the band is [900,000, 1,000,000).
    let hour = 3_600_000;
    let earlier = |amounts: &[(i64, i64)]| -> Vec<Transaction> {
        amounts
            .iter()
            .enumerate()
            .map(|(i, (amount, ago))| txn(&format!("e{i}"), *amount, NOW - ago))
            .collect()
    };
    // (earlier (amount, how long ago), this amount, fires)
    // Each earlier transaction is (amount, how long ago).
    type Earlier<'a> = &'a [(i64, i64)];
    let cases: [(Earlier<'_>, i64, bool); 7] = [
        (&[(950_000, 2 * hour), (900_000, hour)], 999_999, true),
        (&[(950_000, 2 * hour)], 950_000, false),
        (&[(950_000, 2 * hour), (899_999, hour)], 950_000, false),
        (&[(950_000, 2 * hour), (950_000, hour)], 899_999, false),
        (&[(950_000, 25 * hour), (950_000, hour)], 950_000, false),
        (&[(950_000, 24 * hour - 1), (950_000, hour)], 950_000, true),
        (&[(950_000, 2 * hour), (950_000, hour)], 1_000_000, false),
    ];
    for (history, amount, fires) in cases {
        let w = window_with(&earlier(history));
        let got = reasons_of(&evaluate(&w, &txn("now", amount, NOW), &rules, NOW)).1;
        assert_eq!(
            got.contains(&Reason::Structuring),
            fires,
            "{history:?} then {amount}: {got:?}"
        );
    }
    // Earlier amounts in another currency do not count.
    let mut history = earlier(&[(950_000, 2 * hour), (950_000, hour)]);
    history[0].currency = "USD".into();
    let w = window_with(&history);
    let got = reasons_of(&evaluate(&w, &txn("now", 950_000, NOW), &rules, NOW)).1;
    assert!(!got.contains(&Reason::Structuring), "{got:?}");
}

#[test]
fn the_risk_score_sums_the_weights_and_decides_the_status() {
    let mut rules = RulesConfig::default();
    let w = window_with(&quiet_history(5));
    let t = with(txn("x", 2_000_000, NOW), "USD", "FR");
    let v = match evaluate(&w, &t, &rules, NOW) {
        Evaluation::Fresh(v) => v,
        other => panic!("{other:?}"),
    };
    // HIGH_AMOUNT 60 + NEW_COUNTRY 20 + CURRENCY_SWITCH 15.
    assert_eq!(v.risk_score, 95);
    assert_eq!(v.status(), VerdictStatus::Flagged);

    // A weight below the flag score: the reason is reported, the
    // transaction is approved (observe-only rules).
    rules.flag_risk_score = 30;
    rules.risk_weights.insert("NEW_COUNTRY".into(), 10);
    let t = with(txn("y", 10_000, NOW), "EUR", "FR");
    let (status, reasons) = reasons_of(&evaluate(&w, &t, &rules, NOW));
    assert_eq!(
        (status, reasons),
        (VerdictStatus::Approved, vec![Reason::NewCountry])
    );
}
