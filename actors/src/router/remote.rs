//! Accounts owned by another ingress replica. The router hands their
//! transactions to a [`RemoteScreen`] (the network lives in `services`) as
//! [`RemotePart`]s: one per request batch and owner, each transaction
//! stamped with the partition and ownership epoch this replica saw, so the
//! owner can refuse work that was routed by a stale map (fencing).
//!
//! Order: a part that cannot be delivered (the owner is unreachable, the
//! link is full), or whose items the owner refused retryably, holds its
//! accounts as a shard holds accounts whose mailbox was full (see
//! [`super::holds`]): a later transaction of the same account is refused
//! until the refused one is sent again, so a retry never overtakes nor is
//! overtaken. The holds are those of the account's local shard, numbered
//! by the router's one counter: whether an account's work was refused
//! here or by its owner, and whether the account lives here or elsewhere
//! when its next transaction comes (it may have moved in between), one
//! hold decides.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use parking_lot::RwLock;
use txmesh_proto::v1::{txn_result::Outcome, Transaction, TxnResult};

use super::holds::Holds;
use crate::{
    clock::SharedClock,
    partition::{PartitionFlags, PartitionMap},
    ActorError, ReplySlot,
};

/// Where work for accounts of other replicas goes. Implemented over mTLS in
/// `services`; every item of every part must be answered (a dropped part
/// answers its items with a retryable error by itself).
pub trait RemoteScreen: Send + Sync + 'static {
    /// Hands `part` to `owner` (a replica name of the current map).
    fn forward(&self, owner: &str, part: RemotePart);
}

/// This replica's place in a cluster of ingress replicas.
#[derive(Clone)]
pub struct Cluster {
    /// This replica's name in the map.
    pub me: String,
    /// The current partition map; replaced whole when the replica set
    /// changes.
    pub map: Arc<RwLock<Arc<PartitionMap>>>,
    /// The partitions this replica serves now: those it owns and holds the
    /// history of (not those on their way to or from it; see
    /// [`super::handoff`]).
    pub serving: Arc<PartitionFlags>,
    pub remote: Arc<dyn RemoteScreen>,
}

/// One transaction for another replica.
pub struct RemoteItem {
    pub txn: Transaction,
    pub partition: u32,
    pub epoch: u64,
    slot: ReplySlot,
    /// The account's local shard (whose holds keep its order).
    shard: usize,
}

/// The transactions of one request batch that one other replica owns.
pub struct RemotePart {
    pub items: Vec<RemoteItem>,
    /// W3C trace context of the request, when traced.
    pub trace: Option<Arc<str>>,
    holds: Arc<RemoteHolds>,
    stamp: u64,
}

/// A transaction on its way to another replica, before its part is
/// numbered: (transaction, its slot, partition, epoch, local shard).
pub(super) type Outbound = (Transaction, ReplySlot, u32, u64, usize);

/// The order holds of accounts whose forwarding failed: the shards' own.
pub(super) struct RemoteHolds {
    shards: Arc<[Arc<Holds>]>,
    stamps: Arc<AtomicU64>,
    clock: SharedClock,
    hold_ms: u64,
}

impl RemoteHolds {
    pub(super) fn new(
        shards: Arc<[Arc<Holds>]>,
        stamps: Arc<AtomicU64>,
        clock: SharedClock,
        hold_ms: u64,
    ) -> Self {
        Self {
            shards,
            stamps,
            clock,
            hold_ms,
        }
    }

    /// Numbers a new part; its items are admitted (or refused, when their
    /// account is held) into `admitted`.
    pub(super) fn admit(
        self: &Arc<Self>,
        items: Vec<Outbound>,
        trace: Option<Arc<str>>,
        retry_after_ms: u32,
    ) -> RemotePart {
        let stamp = self.stamps.fetch_add(1, Ordering::Relaxed);
        let now = self.clock.now_ms();
        let mut admitted = Vec::with_capacity(items.len());
        for (txn, slot, partition, epoch, shard) in items {
            if self.shards[shard].admit(
                &txn.account_id,
                &txn.transaction_id,
                stamp,
                now,
                self.hold_ms,
            ) {
                admitted.push(RemoteItem {
                    txn,
                    partition,
                    epoch,
                    slot,
                    shard,
                });
            } else {
                slot.error(&ActorError::Held { retry_after_ms });
            }
        }
        RemotePart {
            items: admitted,
            trace,
            holds: self.clone(),
            stamp,
        }
    }
}

impl RemoteHolds {
    /// Holds `item`'s account for it, refused in the part stamped `stamp`.
    fn hold(&self, item: &RemoteItem, stamp: u64, now_ms: u64) {
        self.shards[item.shard].hold(
            &item.txn.account_id,
            &item.txn.transaction_id,
            stamp,
            now_ms + self.hold_ms,
        );
    }
}

impl RemotePart {
    /// Answers the items with the owner's results, in item order; an item
    /// without a result gets a retryable error. An item the owner refused
    /// retryably (a partition on the move, a stale epoch, overload), or
    /// did not answer, holds its account here, so the account's next
    /// transaction cannot reach the owner before it.
    pub fn answer(self, results: impl IntoIterator<Item = TxnResult>) {
        let h = &self.holds;
        let now = h.clock.now_ms();
        let mut results = results.into_iter();
        for item in self.items {
            match results.next() {
                Some(TxnResult {
                    outcome: Some(outcome),
                    ..
                }) => {
                    if matches!(&outcome, Outcome::Error(e) if e.retryable) {
                        h.hold(&item, self.stamp, now);
                    }
                    item.slot.answer(outcome);
                }
                _ => {
                    h.hold(&item, self.stamp, now);
                    item.slot.error(&ActorError::Dropped);
                }
            }
        }
    }

    /// Answers every item with `error` and, when it is retryable, holds
    /// their accounts until each comes back (see the module's doc).
    pub fn fail(self, error: &ActorError) {
        let h = &self.holds;
        let now = h.clock.now_ms();
        for item in self.items {
            if error.is_retryable() {
                h.hold(&item, self.stamp, now);
            }
            item.slot.error(error);
        }
    }

    /// Transactions in the part.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the part holds no transaction (all were held back).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}
