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

/// The map, and each replica's part in it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartitionMapView {
    pub partitions: u32,
    /// The replica set, as the replicas publishing route by it (the most
    /// common one when they differ).
    pub replicas: Vec<String>,
    /// Per partition: the index in `claims` of the replica that claims it,
    /// or [`UNCLAIMED`], or [`CONFLICT`].
    pub owners: Vec<i32>,
    pub claims: Vec<ClaimView>,
    pub unclaimed: u32,
    pub conflicts: u32,
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
    /// Not heard from lately: its claim is old news, and its partitions
    /// are answered UNAVAILABLE until it is back.
    pub gone: bool,
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
            gone: *gone,
        });
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
}
