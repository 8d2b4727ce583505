//! The map's promises: every replica computes the same owners; partitions
//! spread evenly; a change of the replica set moves only what it must and
//! raises only the moved partitions' epochs; stale epochs are fenced.

use proptest::prelude::*;

use super::*;

fn set(n: usize) -> Vec<Replica> {
    (0..n)
        .map(|i| Replica {
            name: format!("ingress-{i}"),
            addr: format!("ingress-{i}.ingress:7443"),
        })
        .collect()
}

fn counts(map: &PartitionMap) -> Vec<usize> {
    let mut c = vec![0; map.replicas().len()];
    for p in 0..map.partitions() {
        let (r, _) = map.owner(p);
        c[map.replicas().iter().position(|x| x == r).expect("listed")] += 1;
    }
    c
}

#[test]
fn the_hash_is_stable_across_builds_and_replicas() {
    // Fixed values: a change here moves every account of a running cluster.
    assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    let map = PartitionMap::new(1024, set(3)).expect("map");
    let again = PartitionMap::new(1024, set(3)).expect("map");
    assert_eq!(map, again);
    assert_eq!(
        map.partition_of("acct-0042"),
        partition_of("acct-0042", 1024)
    );
    // The configured order does not matter, only the names.
    let mut reversed = set(3);
    reversed.reverse();
    let other = PartitionMap::new(1024, reversed).expect("map");
    for p in 0..1024 {
        assert_eq!(map.owner(p).0.name, other.owner(p).0.name);
    }
}

#[test]
fn partitions_spread_evenly() {
    for n in [1, 2, 3, 4, 7] {
        let map = PartitionMap::new(1024, set(n)).expect("map");
        let even = 1024 / n;
        for c in counts(&map) {
            assert!(
                c.abs_diff(even) <= even / 4 + 8,
                "{n} replicas: {:?}",
                counts(&map)
            );
        }
    }
    let mut accounts = vec![0u32; 1024];
    for i in 0..100_000 {
        accounts[partition_of(&format!("acct-{i:08}"), 1024) as usize] += 1;
    }
    let (min, max) = (accounts.iter().min(), accounts.iter().max());
    assert!(
        min > Some(&50) && max < Some(&150),
        "{min:?}..{max:?} accounts per partition"
    );
}

#[test]
fn scaling_moves_only_what_it_must_and_raises_only_their_epochs() {
    let three = PartitionMap::new(1024, set(3)).expect("map");
    let (four, moves) = three.with_replicas(set(4)).expect("map");
    // Only to the new replica, about a quarter.
    assert!(moves.iter().all(|m| m.to == "ingress-3"), "{moves:?}");
    assert!((200..=320).contains(&moves.len()), "{} moved", moves.len());
    for p in 0..1024 {
        let moved = moves.iter().any(|m| m.partition == p);
        assert_eq!(four.owner(p).1, if moved { 2 } else { 1 });
    }
    // And back: exactly those partitions move home, at a third epoch.
    let (back, returned) = four.with_replicas(set(3)).expect("map");
    assert_eq!(returned.len(), moves.len());
    for (m, r) in moves.iter().zip(&returned) {
        assert_eq!(
            (r.partition, r.from.as_str(), r.to.as_str()),
            (m.partition, "ingress-3", m.from.as_str())
        );
        assert_eq!(r.epoch, 3);
    }
    for p in 0..1024 {
        assert_eq!(back.owner(p).0, three.owner(p).0);
    }
}

#[test]
fn a_stale_epoch_or_a_former_owner_is_fenced() {
    let three = PartitionMap::new(64, set(3)).expect("map");
    let (four, moves) = three.with_replicas(set(4)).expect("map");
    let m = moves.first().expect("something moved");
    assert!(three.admits(&m.from, m.partition, 1));
    assert!(!four.admits(&m.from, m.partition, 1), "the former owner");
    assert!(!four.admits(&m.to, m.partition, 1), "the old epoch");
    assert!(four.admits(&m.to, m.partition, m.epoch));
    assert!(!four.admits(&m.to, 64, m.epoch), "no such partition");
}

#[test]
fn bad_maps_are_refused_by_name() {
    assert_eq!(
        PartitionMap::new(0, set(1)).expect_err("refused"),
        PartitionError::Partitions {
            got: 0,
            max: MAX_PARTITIONS
        }
    );
    assert_eq!(
        PartitionMap::new(8, vec![]).expect_err("refused"),
        PartitionError::NoReplicas
    );
    let mut twice = set(2);
    twice[1].name = "ingress-0".into();
    assert_eq!(
        PartitionMap::new(8, twice).expect_err("refused"),
        PartitionError::Duplicate("ingress-0".into())
    );
}

#[test]
fn ranges_cover_every_partition_once() {
    let map = PartitionMap::new(1024, set(3)).expect("map");
    let ranges = map.ranges();
    assert_eq!(ranges.first().map(|r| r.0), Some(0));
    assert_eq!(ranges.last().map(|r| r.1), Some(1023));
    assert!(ranges.windows(2).all(|w| w[0].1 + 1 == w[1].0));
}

proptest! {
    /// Any change of the replica set moves a partition only when its old
    /// owner left or a newly added replica wins it.
    #[test]
    fn rendezvous_moves_are_minimal(before in prop::collection::btree_set(0u8..12, 1..8),
                                    after in prop::collection::btree_set(0u8..12, 1..8)) {
        let named = |s: &std::collections::BTreeSet<u8>| s.iter().map(|i| Replica {
            name: format!("ingress-{i}"), addr: String::new() }).collect::<Vec<_>>();
        let old = PartitionMap::new(256, named(&before)).expect("map");
        let (_, moves) = old.with_replicas(named(&after)).expect("map");
        for m in moves {
            let from: u8 = m.from.trim_start_matches("ingress-").parse().expect("n");
            let to: u8 = m.to.trim_start_matches("ingress-").parse().expect("n");
            prop_assert!(!after.contains(&from) || !before.contains(&to),
                "partition {} moved from {} (kept) to {} (not new)", m.partition, m.from, m.to);
        }
    }
}

#[test]
fn flags_hold_exactly_the_partitions_set() {
    let flags = PartitionFlags::new(130);
    for p in [0, 63, 64, 129] {
        flags.set(p, true);
    }
    flags.set(63, false);
    assert_eq!(flags.members(), vec![0, 64, 129]);
    assert!(!flags.contains(130), "beyond the set is never in it");
}

#[test]
fn an_epoch_learned_from_the_owner_only_rises() {
    let map = PartitionMap::new(16, set(2)).expect("map");
    let raised = map.with_epoch(3, 5);
    assert_eq!(raised.owner(3).1, 5);
    assert_eq!(raised.with_epoch(3, 2).owner(3).1, 5);
    assert_eq!(raised.owner(4), map.owner(4));
    let owned: usize = (0..2)
        .map(|i| map.owned_by(&format!("ingress-{i}")).len())
        .sum();
    assert_eq!(owned, 16);
}
