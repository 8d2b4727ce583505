//! Where an account lives when several ingress replicas share the accounts.
//!
//! Accounts map to a fixed number of virtual partitions by a stable hash of
//! the account id (FNV-1a, 64 bits: the same in every build and on every
//! replica, unlike `std`'s hasher, which may change between Rust releases).
//! Partitions map to replicas by rendezvous (highest random weight)
//! hashing over the configured replica set: every replica computes the same
//! owner from the same list, and a change of the list moves only the
//! partitions it must (those of a removed replica, or those a new replica
//! now wins, about one in N+1).
//!
//! Ownership follows the configured set, not liveness: a replica that dies
//! keeps its partitions until the configuration changes. Every partition's
//! ownership has an epoch, raised whenever the partition moves; work is
//! stamped with the epoch its sender saw, and an owner refuses a stamp that
//! is not current, so a stale owner cannot screen an account that moved.

use std::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
};

/// A replica of the configured set, by its stable name (a StatefulSet
/// ordinal's pod name, `ingress-0`) and where its peers reach it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Replica {
    pub name: String,
    pub addr: String,
}

/// Why a partition map cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartitionError {
    #[error("partitions must be between 1 and {max}, not {got}")]
    Partitions { got: u32, max: u32 },
    #[error("the replica set is empty")]
    NoReplicas,
    #[error("replica {0:?} is listed twice")]
    Duplicate(String),
    #[error("at most {max} replicas, not {got}")]
    TooManyReplicas { got: usize, max: usize },
}

/// The name of the account hash, as the served map gives it.
pub const HASH_NAME: &str = "fnv1a64-splitmix64";

/// The most partitions a map may have.
pub const MAX_PARTITIONS: u32 = 1 << 16;
/// The most replicas a map may have.
pub const MAX_REPLICAS: usize = 1 << 10;

/// One partition's owner and the epoch of that ownership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership {
    /// Index into [`PartitionMap::replicas`].
    pub replica: usize,
    pub epoch: u64,
}

/// A partition that changed owner between two maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub partition: u32,
    pub from: String,
    pub to: String,
    /// The new ownership's epoch.
    pub epoch: u64,
}

/// Accounts → partitions → replicas, with an epoch per partition.
#[derive(Clone, PartialEq, Eq)]
pub struct PartitionMap {
    replicas: Vec<Replica>,
    owners: Vec<Ownership>,
}

impl fmt::Debug for PartitionMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartitionMap")
            .field("partitions", &self.owners.len())
            .field("replicas", &self.replicas)
            .finish_non_exhaustive()
    }
}

impl PartitionMap {
    /// The first map of a cluster: every ownership at epoch 1.
    ///
    /// # Errors
    /// A partition count out of range, or an empty, duplicated or oversized
    /// replica list.
    pub fn new(partitions: u32, replicas: Vec<Replica>) -> Result<Self, PartitionError> {
        if partitions == 0 || partitions > MAX_PARTITIONS {
            return Err(PartitionError::Partitions {
                got: partitions,
                max: MAX_PARTITIONS,
            });
        }
        check_replicas(&replicas)?;
        let owners = (0..partitions)
            .map(|p| Ownership {
                replica: rendezvous(p, &replicas),
                epoch: 1,
            })
            .collect();
        Ok(Self { replicas, owners })
    }

    /// The map of `replicas` with the given epochs, one per partition (a
    /// map as it was saved, or as a peer served it).
    ///
    /// # Errors
    /// As [`Self::new`]; or `epochs` not one per partition.
    pub fn restore(replicas: Vec<Replica>, epochs: &[u64]) -> Result<Self, PartitionError> {
        let partitions = u32::try_from(epochs.len()).unwrap_or(u32::MAX);
        let mut map = Self::new(partitions, replicas)?;
        for (o, e) in map.owners.iter_mut().zip(epochs) {
            o.epoch = (*e).max(1);
        }
        Ok(map)
    }

    /// Every partition's epoch, in order.
    pub fn epochs(&self) -> Vec<u64> {
        self.owners.iter().map(|o| o.epoch).collect()
    }

    /// The map after the replica set becomes `replicas`: partitions whose
    /// owner changes get the next epoch; the others keep theirs. Returns the
    /// moves, in partition order.
    ///
    /// # Errors
    /// As [`Self::new`] for the new replica list.
    pub fn with_replicas(
        &self,
        replicas: Vec<Replica>,
    ) -> Result<(Self, Vec<Move>), PartitionError> {
        check_replicas(&replicas)?;
        let mut moves = Vec::new();
        let owners = self
            .owners
            .iter()
            .zip(0u32..)
            .map(|(old, p)| {
                let replica = rendezvous(p, &replicas);
                let from = &self.replicas[old.replica].name;
                let to = &replicas[replica].name;
                if from == to {
                    Ownership {
                        replica,
                        epoch: old.epoch,
                    }
                } else {
                    let epoch = old.epoch + 1;
                    moves.push(Move {
                        partition: p,
                        from: from.clone(),
                        to: to.clone(),
                        epoch,
                    });
                    Ownership { replica, epoch }
                }
            })
            .collect();
        Ok((Self { replicas, owners }, moves))
    }

    /// The number of partitions.
    pub fn partitions(&self) -> u32 {
        u32::try_from(self.owners.len()).unwrap_or(u32::MAX)
    }

    /// The replica set, in configured order.
    pub fn replicas(&self) -> &[Replica] {
        &self.replicas
    }

    /// The partition of `account_id`.
    pub fn partition_of(&self, account_id: &str) -> u32 {
        partition_of(account_id, self.partitions())
    }

    /// Who owns `partition`, at which epoch.
    ///
    /// # Panics
    /// When `partition` is not below [`Self::partitions`].
    pub fn owner(&self, partition: u32) -> (&Replica, u64) {
        let o = self.owners[partition as usize];
        (&self.replicas[o.replica], o.epoch)
    }

    /// Who owns `account_id`'s partition: (partition, owner, epoch).
    pub fn locate(&self, account_id: &str) -> (u32, &Replica, u64) {
        let p = self.partition_of(account_id);
        let (r, e) = self.owner(p);
        (p, r, e)
    }

    /// [`Self::locate`] with the owner as an index into [`Self::replicas`].
    pub fn locate_index(&self, account_id: &str) -> (u32, usize, u64) {
        let p = self.partition_of(account_id);
        let o = self.owners[p as usize];
        (p, o.replica, o.epoch)
    }

    /// Whether work on `partition` stamped with `epoch` may be done by
    /// `replica` (its name): it owns the partition at exactly that epoch.
    /// Anything else is fenced.
    pub fn admits(&self, replica: &str, partition: u32, epoch: u64) -> bool {
        self.owners
            .get(partition as usize)
            .is_some_and(|o| o.epoch == epoch && self.replicas[o.replica].name == replica)
    }

    /// The map with `partition`'s epoch raised to `epoch` (never lowered):
    /// what a replica learns from the owner itself (a handoff it received,
    /// or a peer's answer naming itself the owner at a newer epoch).
    pub fn with_epoch(&self, partition: u32, epoch: u64) -> Self {
        let mut map = self.clone();
        if let Some(o) = map.owners.get_mut(partition as usize) {
            o.epoch = o.epoch.max(epoch);
        }
        map
    }

    /// The partitions `replica` (its name) owns, in order.
    pub fn owned_by(&self, replica: &str) -> Vec<u32> {
        self.owners
            .iter()
            .zip(0u32..)
            .filter(|(o, _)| self.replicas[o.replica].name == replica)
            .map(|(_, p)| p)
            .collect()
    }

    /// Runs of consecutive partitions with the same owner and epoch, for
    /// display: (first, last, owner's name, epoch).
    pub fn ranges(&self) -> Vec<(u32, u32, &str, u64)> {
        let mut out: Vec<(u32, u32, &str, u64)> = Vec::new();
        for (o, p) in self.owners.iter().zip(0u32..) {
            let name = self.replicas[o.replica].name.as_str();
            match out.last_mut() {
                Some(last) if last.2 == name && last.3 == o.epoch && last.1 + 1 == p => last.1 = p,
                _ => out.push((p, p, name, o.epoch)),
            }
        }
        out
    }
}

/// A set of partitions that many threads read without a lock and few
/// change: the partitions a replica serves right now.
pub struct PartitionFlags {
    bits: Box<[AtomicU64]>,
    len: u32,
}

impl PartitionFlags {
    /// `len` partitions, none set.
    pub fn new(len: u32) -> Self {
        Self {
            bits: (0..len.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            len,
        }
    }

    /// The number of partitions (set or not).
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether there are no partitions at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `partition` is in the set.
    pub fn contains(&self, partition: u32) -> bool {
        self.bits
            .get((partition / 64) as usize)
            .is_some_and(|w| w.load(Ordering::Acquire) & (1 << (partition % 64)) != 0)
    }

    /// Puts `partition` in the set (`true`) or takes it out.
    pub fn set(&self, partition: u32, on: bool) {
        if let Some(w) = self.bits.get((partition / 64) as usize) {
            let bit = 1 << (partition % 64);
            if on {
                w.fetch_or(bit, Ordering::AcqRel);
            } else {
                w.fetch_and(!bit, Ordering::AcqRel);
            }
        }
    }

    /// The partitions in the set, in order.
    pub fn members(&self) -> Vec<u32> {
        (0..self.len).filter(|p| self.contains(*p)).collect()
    }
}

impl fmt::Debug for PartitionFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartitionFlags")
            .field("len", &self.len)
            .field("set", &self.members().len())
            .finish()
    }
}

fn check_replicas(replicas: &[Replica]) -> Result<(), PartitionError> {
    if replicas.is_empty() {
        return Err(PartitionError::NoReplicas);
    }
    if replicas.len() > MAX_REPLICAS {
        return Err(PartitionError::TooManyReplicas {
            got: replicas.len(),
            max: MAX_REPLICAS,
        });
    }
    let mut names: Vec<&str> = replicas.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(PartitionError::Duplicate(w[0].to_owned()));
    }
    Ok(())
}

/// FNV-1a, 64 bits: a stable hash (see the module's documentation).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// SplitMix64's finalizer: spreads FNV's weak low bits over all 64.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A 32-bit tag of a replica's name (places told apart in memory, not on
/// the wire).
pub(crate) fn name_tag(name: &str) -> u32 {
    u32::try_from(mix(fnv1a(name.as_bytes())) >> 32).unwrap_or(0)
}

/// The partition of `account_id` among `partitions`.
pub fn partition_of(account_id: &str, partitions: u32) -> u32 {
    let h = mix(fnv1a(account_id.as_bytes()));
    u32::try_from(h % u64::from(partitions.max(1))).unwrap_or(0)
}

/// The replica (index) with the highest weight for `partition`; ties (never
/// seen in practice) go to the lower name, so every replica agrees.
fn rendezvous(partition: u32, replicas: &[Replica]) -> usize {
    let mut best = 0;
    let mut best_weight = 0;
    for (i, r) in replicas.iter().enumerate() {
        let w = mix(fnv1a(r.name.as_bytes()) ^ mix(u64::from(partition)));
        if i == 0 || w > best_weight || w == best_weight && r.name < replicas[best].name {
            best = i;
            best_weight = w;
        }
    }
    best
}

#[cfg(test)]
#[path = "partition/tests.rs"]
mod tests;
