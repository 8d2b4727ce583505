//! The partition map as the page gets it, assembled from what each replica
//! claims (the `ClusterStatus` it sends with its status): the owner of
//! every partition, and where the claims disagree, which is what an
//! operator must see first: a partition claimed by two replicas, one that
//! no publishing replica claims, replicas routing by different sets.

use std::collections::BTreeMap;

use serde::Serialize;
use txmesh_proto::v1::ClusterStatus;

/// `owners[p]` when no replica claims partition `p`.
pub const UNCLAIMED: i32 = -1;
/// `owners[p]` when two or more replicas claim partition `p`.
pub const CONFLICT: i32 = -2;
/// `owners[p]` when no replica serves partition `p` because it is being
/// handed over (its old owner still has it, or its new owner waits for it).
pub const MOVING: i32 = -3;

/// The map, and each replica's part in it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartitionMapView {
    pub partitions: u32,
    /// The replica set, as the replicas publishing route by it (the most
    /// common one when they differ).
    pub replicas: Vec<String>,
    /// Per partition: the index in `claims` of the replica that claims it,
    /// or [`UNCLAIMED`], [`CONFLICT`] or [`MOVING`].
    pub owners: Vec<i32>,
    pub claims: Vec<ClaimView>,
    pub unclaimed: u32,
    pub conflicts: u32,
    /// Partitions being handed over (served by nobody meanwhile).
    pub moving: u32,
    /// Handoffs in progress, from the old owners' side.
    pub handoffs: Vec<HandoffView>,
    /// Replicas publishing route by different replica sets.
    pub sets_differ: bool,
}

/// One replica: what it owns and what it forwarded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClaimView {
    pub replica: String,
    pub publisher: String,
    pub owned: u32,
    /// Its ownerships' epochs, lowest and highest.
    pub epoch_min: u64,
    pub epoch_max: u64,
    pub forwarded_sent: u64,
    pub forwarded_failed: u64,
    pub forwarded_received: u64,
    pub forwarded_refused: u64,
    /// Partitions on their way here, and from here to their new owners.
    pub incoming: u32,
    pub outgoing: u32,
    /// Handoffs completed since it started.
    pub handoffs_sent: u64,
    pub handoffs_received: u64,
    /// Not heard from lately: its claim is old news, and its partitions
    /// are answered UNAVAILABLE until it is back.
    pub gone: bool,
}

/// Partitions one replica is handing to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HandoffView {
    pub from: String,
    pub to: String,
    pub partitions: u32,
}

/// Partitions in `ranges`, cut at `partitions`.
fn count(ranges: &[txmesh_proto::v1::PartitionRange], partitions: u32) -> u32 {
    ranges
        .iter()
        .map(|r| {
            r.last
                .min(partitions.saturating_sub(1))
                .saturating_sub(r.first)
                + 1
        })
        .sum()
}

/// The map from each publisher's last `ClusterStatus` (publisher id, the
/// status, and whether the publisher is gone); `None` for a single ingress.
pub(crate) fn assemble<'a>(
    statuses: impl IntoIterator<Item = (&'a str, &'a ClusterStatus, bool)>,
) -> Option<PartitionMapView> {
    let mut statuses: Vec<_> = statuses.into_iter().collect();
    if statuses.is_empty() {
        return None;
    }
    // A restarted replica publishes under a new id: its live claim wins
    // over the one it left behind (two live claims under one name both
    // stand, and conflict).
    statuses.sort_by(|a, b| a.1.replica.cmp(&b.1.replica).then(a.2.cmp(&b.2)));
    statuses.dedup_by(|later, first| later.1.replica == first.1.replica && later.2);
    let mut sets: BTreeMap<(&[String], u32), usize> = BTreeMap::new();
    for (_, s, _) in &statuses {
        *sets.entry((&s.replicas, s.partitions)).or_default() += 1;
    }
    let sets_differ = sets.len() > 1;
    let ((replicas, partitions), _) = sets
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(k, n)| (*k, *n))?;
    let mut owners = vec![UNCLAIMED; partitions as usize];
    let mut claims = Vec::new();
    for (publisher, s, gone) in &statuses {
        let index = i32::try_from(claims.len()).unwrap_or(i32::MAX);
        let (mut owned, mut epoch_min, mut epoch_max) = (0u32, u64::MAX, 0u64);
        for r in &s.owned {
            epoch_min = epoch_min.min(r.epoch);
            epoch_max = epoch_max.max(r.epoch);
            for p in r.first..=r.last.min(partitions.saturating_sub(1)) {
                owned += 1;
                let slot = &mut owners[p as usize];
                *slot = if *slot == UNCLAIMED { index } else { CONFLICT };
            }
        }
        claims.push(ClaimView {
            replica: s.replica.clone(),
            publisher: (*publisher).to_owned(),
            owned,
            epoch_min: if owned == 0 { 0 } else { epoch_min },
            epoch_max,
            forwarded_sent: s.forwarded_sent,
            forwarded_failed: s.forwarded_failed,
            forwarded_received: s.forwarded_received,
            forwarded_refused: s.forwarded_refused,
            incoming: count(&s.incoming, partitions),
            outgoing: count(&s.outgoing, partitions),
            handoffs_sent: s.handoffs_sent,
            handoffs_received: s.handoffs_received,
            gone: *gone,
        });
    }
    let mut handoffs: Vec<HandoffView> = Vec::new();
    for (_, s, gone) in &statuses {
        if *gone {
            continue;
        }
        for r in s.incoming.iter().chain(&s.outgoing) {
            for p in r.first..=r.last.min(partitions.saturating_sub(1)) {
                let slot = &mut owners[p as usize];
                if *slot == UNCLAIMED {
                    *slot = MOVING;
                }
            }
        }
        for r in &s.outgoing {
            let to = s
                .replicas
                .get(r.owner as usize)
                .cloned()
                .unwrap_or_default();
            let n = count(std::slice::from_ref(r), partitions);
            match handoffs
                .iter_mut()
                .find(|h| h.from == s.replica && h.to == to)
            {
                Some(h) => h.partitions += n,
                None => handoffs.push(HandoffView {
                    from: s.replica.clone(),
                    to,
                    partitions: n,
                }),
            }
        }
    }
    let count = |v: i32| {
        let n = owners.iter().filter(|o| **o == v).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    };
    Some(PartitionMapView {
        partitions,
        replicas: replicas.to_vec(),
        unclaimed: count(UNCLAIMED),
        conflicts: count(CONFLICT),
        moving: count(MOVING),
        handoffs,
        owners,
        claims,
        sets_differ,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use txmesh_proto::v1::PartitionRange;

    fn status(replica: &str, ranges: &[(u32, u32)]) -> ClusterStatus {
        ClusterStatus {
            replica: replica.into(),
            replicas: vec!["a".into(), "b".into()],
            partitions: 8,
            owned: ranges
                .iter()
                .map(|(first, last)| PartitionRange {
                    first: *first,
                    last: *last,
                    owner: 0,
                    epoch: 1,
                })
                .collect(),
            ..ClusterStatus::default()
        }
    }

    #[test]
    fn claims_are_assembled_and_disagreements_counted() {
        let (a, b) = (status("a", &[(0, 3)]), status("b", &[(3, 5)]));
        let map =
            assemble([("/ingress/a-1", &a, false), ("/ingress/b-1", &b, false)]).expect("a map");
        assert_eq!(map.owners, [0, 0, 0, CONFLICT, 1, 1, UNCLAIMED, UNCLAIMED]);
        assert_eq!(
            (map.conflicts, map.unclaimed, map.sets_differ),
            (1, 2, false)
        );
        assert_eq!((map.claims[0].owned, map.claims[1].owned), (4, 3));
        // A replica restarted under a new publisher id: the live claim
        // stands, the gone one is not a conflict.
        let map = assemble([
            ("/ingress/a-1", &a, true),
            ("/ingress/a-2", &a, false),
            ("/ingress/b-1", &status("b", &[(4, 7)]), false),
        ])
        .expect("a map");
        assert_eq!(map.conflicts, 0);
        assert_eq!(map.claims.len(), 2);
        assert_eq!(map.claims[0].publisher, "/ingress/a-2");
        assert!(assemble([]).is_none());
    }

    #[test]
    fn a_handoff_in_progress_is_moving_not_unclaimed() {
        // a hands 4..5 to b: a still has them, b waits for them.
        let mut a = status("a", &[(0, 3)]);
        a.outgoing = vec![PartitionRange {
            first: 4,
            last: 5,
            owner: 1,
            epoch: 2,
        }];
        let mut b = status("b", &[(6, 7)]);
        b.incoming = vec![PartitionRange {
            first: 4,
            last: 5,
            owner: 1,
            epoch: 2,
        }];
        let map =
            assemble([("/ingress/a-1", &a, false), ("/ingress/b-1", &b, false)]).expect("a map");
        assert_eq!(map.owners, [0, 0, 0, 0, MOVING, MOVING, 1, 1]);
        assert_eq!((map.moving, map.unclaimed), (2, 0));
        assert_eq!(
            map.handoffs,
            vec![HandoffView {
                from: "a".into(),
                to: "b".into(),
                partitions: 2
            }]
        );
        assert_eq!((map.claims[0].outgoing, map.claims[1].incoming), (2, 2));
    }
}
