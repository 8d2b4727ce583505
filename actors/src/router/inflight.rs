//! Per-account order at the replica a caller talks to, across a change of
//! owner. While some of a partition's transactions are on their way to one
//! place (a local shard, or the replica that owned it), none of its later
//! transactions may go to another: the earlier ones may still be refused
//! there (the partition was moving), and a later one screened at the new
//! owner would then overtake them. Such a transaction is refused
//! retryably, holding its account (see [`super::holds`]), until what went
//! to the old place is answered. In steady state a partition's work always
//! goes to one place and nothing is refused.
//!
//! One word per partition: the place's tag in the high half, the count of
//! transactions there and unanswered in the low half. A batch counts its
//! transactions in and, once answered, out ([`Batch`]).

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use parking_lot::Mutex;

/// Where every partition's unanswered work went.
pub(super) struct InFlight {
    slots: Box<[AtomicU64]>,
}

impl InFlight {
    pub(super) fn new(partitions: u32) -> Self {
        Self {
            slots: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Counts one transaction of `partition` going to `place`; false (and
    /// nothing counted) while some are unanswered at another place.
    fn enter(&self, partition: u32, place: u32) -> bool {
        let Some(slot) = self.slots.get(partition as usize) else {
            return true;
        };
        let mut cur = slot.load(Ordering::Acquire);
        loop {
            let (tag, count) = (cur >> 32, cur & 0xffff_ffff);
            if count != 0 && tag != u64::from(place) {
                return false;
            }
            let next = (u64::from(place) << 32) | (count + 1);
            match slot.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(seen) => cur = seen,
            }
        }
    }

    fn leave(&self, partition: u32) {
        if let Some(slot) = self.slots.get(partition as usize) {
            slot.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// One request batch's transactions in flight; counted out when the last
/// reference goes (the router's, at the end of routing, and the batch's
/// callback, once every transaction is answered).
pub(super) struct Batch {
    table: Arc<InFlight>,
    entered: Mutex<Vec<u32>>,
}

impl Batch {
    pub(super) fn new(table: Arc<InFlight>) -> Arc<Self> {
        Arc::new(Self {
            table,
            entered: Mutex::new(Vec::new()),
        })
    }

    /// [`InFlight::enter`], remembered for counting out.
    pub(super) fn enter(&self, partition: u32, place: u32) -> bool {
        let ok = self.table.enter(partition, place);
        if ok {
            self.entered.lock().push(partition);
        }
        ok
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        for p in self.entered.get_mut().drain(..) {
            self.table.leave(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_goes_to_one_place_at_a_time() {
        let table = Arc::new(InFlight::new(4));
        let first = Batch::new(table.clone());
        assert!(first.enter(1, 7));
        assert!(first.enter(1, 7), "the same place: no limit");
        let second = Batch::new(table.clone());
        assert!(!second.enter(1, 9), "another place waits");
        assert!(second.enter(2, 9), "other partitions are free");
        drop(first);
        assert!(second.enter(1, 9), "answered: the new place is free");
    }
}
