//! BatchReply: collects one result per transaction of a request batch and
//! hands the complete, ordered list to the caller's callback once.
//!
//! Each transaction travels with a [`ReplySlot`]. Completing a slot stores
//! its result; a slot dropped without being completed (a mailbox that closed,
//! an actor that died, a shutdown) answers its transaction with a retryable
//! error, so no transaction is ever left unanswered.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use parking_lot::Mutex;

use txmesh_proto::v1::{txn_result::Outcome, TxnResult, Verdict};

use crate::ActorError;

type OnDone = Box<dyn FnOnce(Vec<TxnResult>) + Send>;

/// The collector of one request batch.
pub struct BatchReply {
    inner: Arc<Inner>,
}

/// The right (and duty) to answer one transaction of a batch.
pub struct ReplySlot {
    inner: Arc<Inner>,
    index: usize,
    transaction_id: Option<String>,
}

struct Inner {
    results: Mutex<Vec<Option<TxnResult>>>,
    remaining: AtomicUsize,
    on_done: Mutex<Option<OnDone>>,
}

impl BatchReply {
    /// A collector for `len` transactions; `on_done` runs once, on the thread
    /// that completes the last slot, with results in request order.
    pub fn new(len: usize, on_done: impl FnOnce(Vec<TxnResult>) + Send + 'static) -> Self {
        Self {
            inner: Arc::new(Inner {
                results: Mutex::new((0..len).map(|_| None).collect()),
                remaining: AtomicUsize::new(len),
                on_done: Mutex::new(Some(Box::new(on_done))),
            }),
        }
    }

    /// The slot of transaction `index` (its `transaction_id` is used if the
    /// slot is dropped unanswered).
    pub fn slot(&self, index: usize, transaction_id: &str) -> ReplySlot {
        ReplySlot {
            inner: self.inner.clone(),
            index,
            transaction_id: Some(transaction_id.to_owned()),
        }
    }

    /// Runs the callback now if the batch was empty.
    pub fn finish_if_empty(&self) {
        if self.inner.remaining.load(Ordering::Acquire) == 0 {
            self.inner.finish();
        }
    }
}

impl ReplySlot {
    /// Answers with a verdict.
    pub fn verdict(self, verdict: Verdict) {
        self.complete(Outcome::Verdict(verdict));
    }

    /// Answers with a per-transaction error.
    pub fn error(self, error: &ActorError) {
        self.complete(Outcome::Error(error.to_txn_error()));
    }

    /// Answers with an outcome decided elsewhere (the replica that owns
    /// the account).
    pub fn answer(self, outcome: Outcome) {
        self.complete(outcome);
    }

    fn complete(mut self, outcome: Outcome) {
        let transaction_id = self.transaction_id.take().unwrap_or_default();
        self.inner.store(
            self.index,
            TxnResult {
                transaction_id,
                outcome: Some(outcome),
            },
        );
    }
}

impl Drop for ReplySlot {
    fn drop(&mut self) {
        if let Some(transaction_id) = self.transaction_id.take() {
            self.inner.store(
                self.index,
                TxnResult {
                    transaction_id,
                    outcome: Some(Outcome::Error(ActorError::Dropped.to_txn_error())),
                },
            );
        }
    }
}

impl Inner {
    fn store(&self, index: usize, result: TxnResult) {
        {
            // A poisoned lock only means another slot panicked mid-store;
            // the vector itself is still consistent.
            let mut results = self.results.lock();
            if let Some(cell) = results.get_mut(index) {
                *cell = Some(result);
            }
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.finish();
        }
    }

    fn finish(&self) {
        let on_done = self.on_done.lock().take();
        if let Some(on_done) = on_done {
            let results = std::mem::take(&mut *self.results.lock());
            on_done(results.into_iter().flatten().collect());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    #[test]
    fn completes_once_in_request_order_and_answers_dropped_slots() {
        let (tx, rx) = mpsc::channel();
        let batch = BatchReply::new(3, move |results| tx.send(results).expect("receiver alive"));
        let a = batch.slot(0, "a");
        let b = batch.slot(1, "b");
        let c = batch.slot(2, "c");
        c.verdict(Verdict {
            transaction_id: "c".into(),
            ..Verdict::default()
        });
        drop(b);
        assert!(rx.try_recv().is_err(), "not complete before the last slot");
        a.error(&ActorError::Overloaded {
            what: "account",
            retry_after_ms: 5,
        });
        let results = rx.try_recv().expect("complete");
        let ids: Vec<_> = results.iter().map(|r| r.transaction_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        match &results[1].outcome {
            Some(Outcome::Error(e)) => assert!(e.retryable),
            other => panic!("dropped slot must answer with an error, got {other:?}"),
        }
    }
}
