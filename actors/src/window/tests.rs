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

/// A window and the bounds it is kept within.
struct Bounded {
    w: HistoryWindow,
    config: WindowConfig,
}

impl Bounded {
    fn new(max_entries: usize, max_age_secs: u64) -> Self {
        Self {
            w: HistoryWindow::new(),
            config: WindowConfig {
                max_entries,
                max_age_secs,
            },
        }
    }

    fn record(&mut self, id: &str, ts: i64) {
        self.w.record(&self.config, &txn(id, ts, 10), &approved());
    }

    fn ids(&self) -> Vec<String> {
        self.w
            .entries()
            .map(|e| e.transaction_id.to_owned())
            .collect()
    }
}

/// A window bounded by `max_entries` (and an hour).
fn counted(max_entries: usize) -> Bounded {
    Bounded::new(max_entries, 3600)
}

#[test]
fn evicts_by_count_keeping_the_newest() {
    let mut b = counted(3);
    for i in 0..5 {
        b.record(&format!("t{i}"), 1_000 + i);
    }
    assert_eq!(b.ids(), ["t2", "t3", "t4"]);
}

#[test]
fn an_entry_is_48_bytes_and_a_window_56() {
    // Ten entries fill a 512-byte allocation; the window is what the
    // account actor's task allocation has room for.
    assert_eq!(std::mem::size_of::<Slot>(), 48);
    assert!(std::mem::size_of::<HistoryWindow>() <= 56);
}

#[test]
fn a_window_grows_by_the_allocators_size_classes_and_a_full_one_never_grows() {
    let grown = |max_entries: usize, ids: usize| {
        let mut b = counted(max_entries);
        let mut seen = Vec::new();
        for i in 0..ids {
            let before = (b.w.slots.capacity(), b.w.ids.len());
            b.record(&format!("id-{i:08}"), 1_000 + i as i64);
            let after = (b.w.slots.capacity(), b.w.ids.len());
            if after != before {
                seen.push(after);
            }
        }
        (b, seen)
    };
    // Slots of 48 bytes: 48, 96, 160 (3), 192, 256 (5), 320 (6), 384 (8),
    // 448 (9), 512 (10), 640 (13) ... Ids of 11 bytes: 16, 32 ... 128, 160.
    let (_, seen) = grown(64, 20);
    let slots: Vec<usize> = seen.iter().map(|s| s.0).collect();
    let mut distinct = slots.clone();
    distinct.dedup();
    assert_eq!(distinct, [1, 2, 3, 4, 5, 6, 8, 9, 10, 13, 16, 18, 21]);
    let ids: Vec<usize> = seen.iter().map(|s| s.1).collect();
    assert!(ids.windows(2).all(|w| w[0] <= w[1]));
    assert!(ids.iter().all(|&n| size_class(n) == n), "{ids:?}");

    let (b, _) = grown(10, 9);
    assert_eq!(b.w.slots.capacity(), 9, "9 entries fill the 448-byte class");
    // Full: the slots never grow again, and the ids' buffer reclaims the
    // evicted ids instead of growing.
    let (b, seen) = grown(10, 1_000);
    assert_eq!((b.w.len(), b.w.slots.capacity()), (10, 10));
    assert_eq!(b.w.ids.len(), 112, "10 ids of 11 bytes in their size class");
    assert!(seen.len() < 20, "{seen:?}");
    assert_eq!(b.ids().first().map(String::as_str), Some("id-00000990"));
}

#[test]
fn evicts_by_age_relative_to_the_newest() {
    let mut b = Bounded::new(100, 10);
    b.record("old", 0);
    b.record("mid", 5_000);
    assert_eq!(b.w.len(), 2);
    b.record("new", 12_000);
    assert_eq!(b.ids(), ["mid", "new"]);
    assert!(b.w.find("old").is_none());
    assert!(b.w.find("mid").is_some());
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
    /// Whatever is recorded (ids of any length up to 128 bytes), the
    /// window is a suffix of the records (both evictions take from the
    /// front), in arrival order, no longer than `max_entries`, with its
    /// oldest entry within `max_age` of the newest timestamp seen, every
    /// id findable; and passivation's compact form round-trips.
    #[test]
    fn stays_a_bounded_ordered_suffix_within_its_age(
        max_entries in 1usize..20,
        max_age_secs in 1u64..100,
        steps in proptest::collection::vec((-50_000i64..200_000, 0usize..120), 0..200),
    ) {
        let mut b = Bounded::new(max_entries, max_age_secs);
        let mut ts = 1_000_000_000i64;
        let mut newest = i64::MIN;
        let mut recorded = Vec::new();
        for (i, (step, pad)) in steps.iter().enumerate() {
            ts += step;
            newest = newest.max(ts);
            let id = format!("t{i}-{}", "x".repeat(*pad));
            b.record(&id, ts);
            recorded.push(id);

            prop_assert!(b.w.len() <= max_entries);
            let ids = b.ids();
            prop_assert!(recorded.ends_with(&ids), "not a suffix: {ids:?}");
            for id in &ids {
                prop_assert_eq!(b.w.find(id).map(|e| e.transaction_id), Some(id.as_str()));
            }
            if let Some(front) = b.w.entries().next() {
                let max_age_ms = i64::try_from(max_age_secs * 1000).unwrap_or(i64::MAX);
                prop_assert!(front.fields.timestamp_unix_ms >= newest - max_age_ms);
            }
        }
        let entries: Vec<WindowEntry> = b.w.entries().map(Entry::to_owned).collect();
        let copied = b.w.to_entries();
        let restored = HistoryWindow::restore(&b.config, &b.w.into_entries());
        prop_assert_eq!(restored.entries().map(Entry::to_owned).collect::<Vec<_>>(), entries.clone());
        prop_assert_eq!(restored.to_entries(), copied);
        let rebuilt: Entries = entries.into_iter().collect();
        prop_assert_eq!(rebuilt, restored.into_entries());
    }

    /// With every timestamp equal, only the count bounds the window.
    #[test]
    fn evicts_by_count_exactly(max_entries in 1usize..30, n in 0usize..100) {
        let mut b = Bounded::new(max_entries, 10);
        for i in 0..n {
            b.record(&format!("t{i}"), 5_000);
        }
        prop_assert_eq!(b.w.len(), n.min(max_entries));
    }
}

#[test]
fn a_passivated_window_keeps_only_the_live_ids_in_one_allocation() {
    let mut b = counted(4);
    for i in 0..40 {
        b.record(
            &format!("id-{i:0>w$}", w = if i < 30 { 40 } else { 2 }),
            1_000 + i,
        );
    }
    // The buffer grew for four 43-byte ids; four of 5 bytes are live.
    assert!(b.w.ids.len() >= 160, "{}", b.w.ids.len());
    let entries = b.w.into_entries();
    // Per entry: 1 + 5 (id), 2 + 8 (tag, fingerprint), 1 (amount), 1
    // (time after the previous: +1 ms; the first, 1,036, takes 2), 1 + 1
    // (reasons, processing time), 2 (risk, status), 5 (codes): 27.
    assert_eq!(entries.bytes.len(), 4 * 27 + 1);
    let ids: Vec<&str> = entries.iter().map(|e| e.transaction_id).collect();
    assert_eq!(ids, ["id-36", "id-37", "id-38", "id-39"]);
    let restored = HistoryWindow::restore(&b.config, &entries);
    assert_eq!(restored.slots.capacity(), 4);
    assert_eq!(restored.ids.len(), 32, "the ids' size class");
}

proptest! {
    /// Whatever the fields (extremes included), the passivated form gives
    /// back exactly the entries put in, in order.
    #[test]
    fn the_passivated_form_round_trips_any_entry(
        fields in proptest::collection::vec(
            (any::<u64>(), any::<i64>(), any::<i64>(), any::<u32>(), any::<u32>(), any::<u8>(), 0usize..=128),
            0..12,
        ),
    ) {
        let entries: Vec<WindowEntry> = fields
            .iter()
            .enumerate()
            .map(|(i, &(fingerprint, amount, ts, reasons, us, risk, id_len))| {
                let id: String = format!("{i}{}", "é".repeat(id_len / 2)).chars().take(id_len.max(1)).collect();
                WindowEntry::new(
                    id.into(),
                    fingerprint,
                    amount,
                    *b"JPY",
                    *b"NL",
                    ts,
                    StoredVerdict::new(VerdictStatus::Flagged, reasons, risk, us),
                )
            })
            .collect();
        let passivated: Entries = entries.clone().into_iter().collect();
        let back: Vec<WindowEntry> = passivated.iter().map(Entry::to_owned).collect();
        prop_assert_eq!(back, entries);
    }
}

#[test]
fn an_id_too_long_for_a_window_is_not_learned() {
    let config = WindowConfig::default();
    let mut w = HistoryWindow::new();
    let entry = |id: String| WindowEntry::of(&txn(&id, 1_000, 10), &approved(), 0);
    w.learn(&config, entry("x".repeat(MAX_ID_BYTES + 1)));
    assert!(w.is_empty());
    w.learn(&config, entry("x".repeat(MAX_ID_BYTES)));
    assert_eq!(w.len(), 1);
}

#[test]
fn the_replay_lookup_finds_only_the_exact_id() {
    let config = WindowConfig::default();
    let mut w = HistoryWindow::new();
    for i in 0..50 {
        w.record(
            &config,
            &txn(&format!("r1-s0-{i:010}"), 1_000 + i, 10),
            &approved(),
        );
    }
    for i in 0..50 {
        let id = format!("r1-s0-{i:010}");
        assert_eq!(w.find(&id).map(|e| e.transaction_id), Some(id.as_str()));
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
        screened.fields.verdict,
    );
    assert_eq!(restored.fields.id_tag, screened.fields.id_tag);
}
