//! The passivated windows' store against a plain map.

use std::collections::HashMap;

use proptest::prelude::*;
use txmesh_proto::v1::{Transaction, Verdict, VerdictStatus};

use super::*;
use crate::{config::WindowConfig, window::HistoryWindow};

/// Entries of `n` transactions of `account`, distinct per `seed`.
fn entries(account: &str, n: usize, seed: u64) -> Entries {
    let config = WindowConfig::default();
    let seed = (seed % 1_000_000) as i64;
    let mut w = HistoryWindow::new();
    for i in 0..n {
        let txn = Transaction {
            transaction_id: format!("{account}-{seed}-{i}"),
            account_id: account.into(),
            amount_minor: 1_000 + seed % 977 + i as i64,
            currency: "EUR".into(),
            timestamp_unix_ms: 1_700_000_000_000 + (seed * 10 + i as i64) * 1_000,
            merchant_id: "m".into(),
            country: "DE".into(),
            channel: 1,
        };
        let verdict = Verdict {
            status: VerdictStatus::Approved as i32,
            ..Verdict::default()
        };
        w.record(&config, &txn, &verdict);
    }
    w.into_entries()
}

fn account(i: u32) -> String {
    format!("acct-5f3a9c21d4e8b071-{i:08}")
}

/// A store of `accounts` accounts with `per` entries each, and the map
/// that holds the same.
fn filled(accounts: u32, per: usize) -> (PassiveWindows, HashMap<String, Entries>) {
    let mut store = PassiveWindows::new();
    let mut model = HashMap::new();
    for i in 0..accounts {
        let (k, e) = (account(i), entries(&account(i), per, u64::from(i)));
        store.insert(&k, &e);
        model.insert(k, e);
    }
    (store, model)
}

/// Every account of `model` is found with its entries, and no other.
fn holds_exactly(store: &PassiveWindows, model: &HashMap<String, Entries>) {
    assert_eq!(store.len(), model.len());
    for (k, e) in model {
        assert_eq!(store.get(k).as_ref(), Some(e), "{k}");
    }
    let listed: HashMap<String, Entries> = store.iter().map(|(k, e)| (k.to_owned(), e)).collect();
    assert_eq!(&listed, model);
}

#[test]
fn holds_replaces_and_gives_back_each_accounts_entries() {
    let mut store = PassiveWindows::new();
    assert!(store.insert("a", &entries("a", 3, 1)));
    assert!(store.insert("b", &entries("b", 0, 1)));
    assert!(
        !store.insert("a", &entries("a", 5, 2)),
        "a replaces, not adds"
    );
    assert_eq!(store.len(), 2);
    assert_eq!(store.get("a"), Some(entries("a", 5, 2)));
    assert_eq!(store.get("b").map(|e| e.len()), Some(0));
    assert!(store.get("c").is_none());
    assert_eq!(store.remove("a"), Some(entries("a", 5, 2)));
    assert!(store.remove("a").is_none());
    assert_eq!(store.len(), 1);
    store.retain(|k| k != "b");
    assert!(store.is_empty());
    store.compact();
    assert_eq!(store.held_bytes(), 0, "an empty store holds nothing");
}

#[test]
fn compaction_gives_back_the_dead_space_of_reactivated_accounts() {
    let (mut store, mut model) = filled(20_000, 5);
    let full = store.held_bytes();
    // Four in five come back to life: their records are dead space.
    for i in (0..20_000).filter(|i| i % 5 != 0) {
        store.remove(&account(i));
        model.remove(&account(i));
    }
    assert_eq!(store.held_bytes(), full, "nothing is given back by itself");
    for _ in 0..10 {
        store.compact();
    }
    let compacted = store.held_bytes();
    assert!(
        compacted < full * 2 / 5,
        "{compacted} of {full} bytes held after compaction"
    );
    holds_exactly(&store, &model);
}

#[test]
fn a_frozen_view_keeps_its_windows_while_the_store_changes() {
    let (mut store, model) = filled(5_000, 4);
    let frozen = store.freeze().in_memory_order();
    for i in 0..5_000 {
        store.remove(&account(i));
        if i % 2 == 0 {
            store.insert(&account(i), &entries(&account(i), 1, 99));
        }
    }
    store.compact();
    assert_eq!(frozen.len(), 5_000);
    let seen: HashMap<String, Entries> = frozen
        .iter()
        .map(|(k, e)| (k.to_owned(), e.collect()))
        .collect();
    assert_eq!(seen, model);
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u32, usize, u64),
    Remove(u32),
    Retain(u32),
    Compact,
    Freeze,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..400u32, 0..11usize, any::<u64>()).prop_map(|(a, n, s)| Op::Insert(a, n, s)),
        4 => (0..400u32).prop_map(Op::Remove),
        1 => (2..9u32).prop_map(Op::Retain),
        1 => Just(Op::Compact),
        1 => Just(Op::Freeze),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the order of passivations, reactivations, handoffs,
    /// compactions and snapshots, the store holds what a map would, and a
    /// frozen view what the store held when it was taken.
    #[test]
    fn holds_what_a_map_holds(ops in proptest::collection::vec(op(), 1..600)) {
        let mut store = PassiveWindows::new();
        let mut model: HashMap<String, Entries> = HashMap::new();
        let mut frozen = Vec::new();
        for op in ops {
            match op {
                Op::Insert(a, n, s) => {
                    let e = entries(&account(a), n, s);
                    prop_assert_eq!(store.insert(&account(a), &e), model.insert(account(a), e).is_none());
                }
                Op::Remove(a) => prop_assert_eq!(store.remove(&account(a)), model.remove(&account(a))),
                Op::Retain(m) => {
                    let keep = |k: &str| !k.ends_with(&m.to_string());
                    store.retain(keep);
                    model.retain(|k, _| keep(k));
                }
                Op::Compact => store.compact(),
                Op::Freeze => frozen.push((store.freeze(), model.clone())),
            }
        }
        holds_exactly(&store, &model);
        for (view, then) in frozen {
            let seen: HashMap<String, Entries> =
                view.iter().map(|(k, e)| (k.to_owned(), e.collect())).collect();
            prop_assert_eq!(seen, then);
        }
    }
}
