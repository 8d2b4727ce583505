//! The window's unit and property tests.

use proptest::prelude::*;

use super::*;

fn txn(id: &str, ts: i64, amount: i64) -> Transaction {
    Transaction {
        transaction_id: id.into(),
        account_id: "acc".into(),
        amount_minor: amount,
        currency: "EUR".into(),
        timestamp_unix_ms: ts,
        merchant_id: "m".into(),
        country: "DE".into(),
        channel: 1,
    }
}

fn approved() -> Verdict {
    Verdict {
        status: VerdictStatus::Approved as i32,
        ..Verdict::default()
    }
}

/// A window bounded by `max_entries` (and an hour).
fn counted(max_entries: usize) -> HistoryWindow {
    HistoryWindow::new(&WindowConfig {
        max_entries,
        max_age_secs: 3600,
    })
}

#[test]
fn evicts_by_count_keeping_the_newest() {
    let mut w = counted(3);
    for i in 0..5 {
        w.record(&txn(&format!("t{i}"), 1_000 + i, 10), &approved());
    }
    let ids: Vec<_> = w.entries().map(|e| e.transaction_id.to_string()).collect();
    assert_eq!(ids, ["t2", "t3", "t4"]);
}

#[test]
fn a_window_grows_by_the_allocators_size_classes_and_a_full_one_never_grows() {
    let capacities: Vec<usize> = {
        let mut w = counted(64);
        (0..64)
            .filter_map(|i| {
                let before = w.entries.capacity();
                w.record(&txn(&format!("c{i}"), 1_000 + i, 10), &approved());
                (w.entries.capacity() != before).then_some(w.entries.capacity())
            })
            .collect()
    };
    assert_eq!(
        capacities,
        [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64]
    );
    let mut w = counted(10);
    for i in 0..9 {
        w.record(&txn(&format!("t{i}"), 1_000 + i, 10), &approved());
    }
    assert_eq!(
        w.entries.capacity(),
        10,
        "the size class that fits 9 entries"
    );
    for i in 9..30 {
        w.record(&txn(&format!("t{i}"), 1_000 + i, 10), &approved());
    }
    assert_eq!((w.len(), w.entries.capacity()), (10, 10));
    assert_eq!(w.entries().next().map(|e| &*e.transaction_id), Some("t20"));
}

#[test]
fn evicts_by_age_relative_to_the_newest() {
    let mut w = HistoryWindow::new(&WindowConfig {
        max_entries: 100,
        max_age_secs: 10,
    });
    w.record(&txn("old", 0, 10), &approved());
    w.record(&txn("mid", 5_000, 10), &approved());
    assert_eq!(w.len(), 2);
    w.record(&txn("new", 12_000, 10), &approved());
    let ids: Vec<_> = w.entries().map(|e| e.transaction_id.to_string()).collect();
    assert_eq!(ids, ["mid", "new"]);
    assert!(w.find("old").is_none());
    assert!(w.find("mid").is_some());
}

#[test]
fn fingerprint_changes_with_content_only() {
    let a = txn("x", 1, 10);
    let mut b = a.clone();
    b.transaction_id = "y".into();
    assert_eq!(fingerprint(&a), fingerprint(&b));
    b.amount_minor = 11;
    assert_ne!(fingerprint(&a), fingerprint(&b));
}

proptest! {
    /// Whatever is recorded, the window is a suffix of the records (both
    /// evictions take from the front), in arrival order, no longer than
    /// `max_entries`, with its oldest entry within `max_age` of the newest
    /// timestamp seen; and passivation's compact form round-trips.
    #[test]
    fn stays_a_bounded_ordered_suffix_within_its_age(
        max_entries in 1usize..20,
        max_age_secs in 1u64..100,
        steps in proptest::collection::vec(-50_000i64..200_000, 0..200),
    ) {
        let config = WindowConfig { max_entries, max_age_secs };
        let mut w = HistoryWindow::new(&config);
        let mut ts = 1_000_000_000i64;
        let mut newest = i64::MIN;
        let mut recorded = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            ts += step;
            newest = newest.max(ts);
            let id = format!("t{i}");
            w.record(&txn(&id, ts, 10), &approved());
            recorded.push(id);

            prop_assert!(w.len() <= max_entries);
            let ids: Vec<String> = w.entries().map(|e| e.transaction_id.to_string()).collect();
            prop_assert!(recorded.ends_with(&ids), "not a suffix: {ids:?}");
            if let Some(front) = w.entries().next() {
                let max_age_ms = i64::try_from(max_age_secs * 1000).unwrap_or(i64::MAX);
                prop_assert!(front.timestamp_unix_ms >= newest - max_age_ms);
            }
        }
        let entries: Vec<WindowEntry> = w.entries().cloned().collect();
        let restored = HistoryWindow::restore(&config, w.into_entries());
        prop_assert_eq!(restored.entries().cloned().collect::<Vec<_>>(), entries);
    }

    /// With every timestamp equal, only the count bounds the window.
    #[test]
    fn evicts_by_count_exactly(max_entries in 1usize..30, n in 0usize..100) {
        let mut w = HistoryWindow::new(&WindowConfig { max_entries, max_age_secs: 10 });
        for i in 0..n {
            w.record(&txn(&format!("t{i}"), 5_000, 10), &approved());
        }
        prop_assert_eq!(w.len(), n.min(max_entries));
    }
}

#[test]
fn the_replay_lookup_finds_only_the_exact_id_and_the_tag_costs_no_room() {
    assert!(std::mem::size_of::<WindowEntry>() <= 64);
    let mut w = HistoryWindow::new(&WindowConfig::default());
    for i in 0..50 {
        w.record(&txn(&format!("r1-s0-{i:010}"), 1_000 + i, 10), &approved());
    }
    for i in 0..50 {
        let id = format!("r1-s0-{i:010}");
        assert_eq!(w.find(&id).map(|e| &*e.transaction_id), Some(id.as_str()));
    }
    assert!(w.find("r1-s0-0000000050").is_none());
    assert!(
        w.find("r1-s0-000000001").is_none(),
        "a prefix is not the id"
    );
    let screened = w.find("r1-s0-0000000007").expect("there");
    let restored = WindowEntry::new(
        "r1-s0-0000000007".into(),
        0,
        10,
        *b"EUR",
        *b"DE",
        0,
        screened.verdict,
    );
    assert_eq!(restored.id_tag, screened.id_tag);
}
