//! The publisher's outbox: a bounded queue of verdicts shared between the
//! threads that produce verdicts and the publisher that drains them. When
//! full, new verdicts are shed and counted (the dashboard shows the gap);
//! nothing already queued is ever dropped.

use std::{collections::VecDeque, sync::Arc};

use parking_lot::Mutex;

use txmesh_proto::v1::Verdict;

/// A handle to the outbox; clones share it.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Mutex<Inner>>,
    capacity: usize,
}

struct Inner {
    queue: VecDeque<Verdict>,
    shed: u64,
    accepted: u64,
}

impl Outbox {
    /// An empty outbox holding at most `capacity` verdicts.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                queue: VecDeque::new(),
                shed: 0,
                accepted: 0,
            })),
            capacity,
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Inner> {
        // The queue stays consistent even if a holder panicked.
        self.inner.lock()
    }

    /// Queues `verdicts`; returns how many were shed for lack of room.
    pub fn push(&self, verdicts: impl IntoIterator<Item = Verdict>) -> u64 {
        let mut inner = self.lock();
        let mut shed = 0;
        for v in verdicts {
            if inner.queue.len() < self.capacity {
                inner.queue.push_back(v);
                inner.accepted += 1;
            } else {
                shed += 1;
            }
        }
        inner.shed += shed;
        shed
    }

    /// Takes up to `max` verdicts, oldest first.
    pub fn take(&self, max: usize) -> Vec<Verdict> {
        let mut inner = self.lock();
        let n = max.min(inner.queue.len());
        inner.queue.drain(..n).collect()
    }

    /// Verdicts waiting.
    pub fn depth(&self) -> usize {
        self.lock().queue.len()
    }

    /// Verdicts shed since start.
    pub fn shed_total(&self) -> u64 {
        self.lock().shed
    }

    /// Verdicts accepted since start.
    pub fn accepted_total(&self) -> u64 {
        self.lock().accepted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(id: &str) -> Verdict {
        Verdict {
            transaction_id: id.into(),
            ..Verdict::default()
        }
    }

    #[test]
    fn keeps_order_and_sheds_only_what_does_not_fit() {
        let outbox = Outbox::new(3);
        assert_eq!(outbox.push([v("a"), v("b")]), 0);
        assert_eq!(outbox.push([v("c"), v("d"), v("e")]), 2);
        assert_eq!(outbox.depth(), 3);
        assert_eq!(outbox.shed_total(), 2);
        let first: Vec<_> = outbox
            .take(2)
            .into_iter()
            .map(|v| v.transaction_id)
            .collect();
        assert_eq!(first, ["a", "b"]);
        assert_eq!(outbox.take(10).len(), 1);
        assert_eq!(outbox.depth(), 0);
    }
}
