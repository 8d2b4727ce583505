//! Order holds. When a transaction of an account is refused for overload,
//! the account is held: its later transactions are refused as well until
//! the refused one is sent again (a retry), so retries cannot reorder an
//! account; the retrying client must resend in the original order, which
//! txgen does. A hold nobody comes back for expires after `order_hold_ms`.
//!
//! "Later" is decided by the part's stamp: the router numbers every part
//! it hands to a shard. Parts stamped before the refusal were already
//! accepted and are older, so they pass; when an older transaction is
//! refused after a newer one (an older part overflowing an account's
//! mailbox), the hold moves to the older one, which must come back first.
//!
//! A hold nobody claims expires after `order_hold_ms`, but not in a way that
//! lets a newer transaction overtake: if it refused others meanwhile, it
//! passes to the oldest of them (which the client must now send first), and
//! only a hold that refused nothing is dropped.
//!
//! Shared by the router (which refuses whole parts when a shard's mailbox is
//! full) and the shard (which refuses single transactions when an account's
//! mailbox is full, and admits or refuses every transaction it handles).

use std::{
    collections::HashMap,
    sync::atomic::{AtomicUsize, Ordering},
};

use parking_lot::Mutex;

/// The holds of one shard's accounts.
#[derive(Debug, Default)]
pub(crate) struct Holds {
    map: Mutex<HashMap<Box<str>, Hold>>,
    /// Lets the hot path skip the lock while nothing is held.
    len: AtomicUsize,
}

#[derive(Debug)]
struct Hold {
    /// The oldest refused transaction: the one that must come back first.
    transaction_id: Box<str>,
    /// The stamp of the part it was refused in.
    stamp: u64,
    until_ms: u64,
    /// The oldest transaction this hold refused (and its stamp): the hold
    /// passes to it on expiry.
    next: Option<(Box<str>, u64)>,
}

impl Holds {
    /// Holds `account` for `transaction_id`, refused in the part stamped
    /// `stamp`, unless an older refusal already holds it.
    pub(crate) fn hold(&self, account: &str, transaction_id: &str, stamp: u64, until_ms: u64) {
        let mut map = self.map.lock();
        let hold = Hold {
            transaction_id: transaction_id.into(),
            stamp,
            until_ms,
            next: None,
        };
        match map.get_mut(account) {
            Some(existing) if existing.stamp <= stamp => {}
            Some(existing) => *existing = hold,
            None => {
                map.insert(account.into(), hold);
            }
        }
        self.len.store(map.len(), Ordering::Release);
    }

    /// Whether `transaction_id` of `account`, in the part stamped `stamp`,
    /// may be screened now: yes when the account is not held, when the part
    /// is older than the refusal, or when this is the transaction the hold
    /// waits for (which lifts it). An expired hold passes on (see above);
    /// a new hold lasts `hold_ms`.
    pub(crate) fn admit(
        &self,
        account: &str,
        transaction_id: &str,
        stamp: u64,
        now_ms: u64,
        hold_ms: u64,
    ) -> bool {
        if self.len.load(Ordering::Acquire) == 0 {
            return true;
        }
        let mut map = self.map.lock();
        let Some(h) = map.get_mut(account) else {
            return true;
        };
        if h.until_ms <= now_ms && !h.pass_on(now_ms + hold_ms) {
            map.remove(account);
            self.len.store(map.len(), Ordering::Release);
            return true;
        }
        if stamp < h.stamp {
            return true;
        }
        if &*h.transaction_id == transaction_id {
            map.remove(account);
            self.len.store(map.len(), Ordering::Release);
            return true;
        }
        if h.next.is_none() {
            h.next = Some((transaction_id.into(), stamp));
        }
        false
    }

    /// Passes expired holds on, and drops those that refused nothing.
    pub(crate) fn expire(&self, now_ms: u64, hold_ms: u64) {
        if self.len.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut map = self.map.lock();
        map.retain(|_, h| h.until_ms > now_ms || h.pass_on(now_ms + hold_ms));
        self.len.store(map.len(), Ordering::Release);
    }
}

impl Hold {
    /// Hands the hold to the oldest transaction it refused; false when it
    /// refused none.
    fn pass_on(&mut self, until_ms: u64) -> bool {
        match self.next.take() {
            Some((transaction_id, stamp)) => {
                self.transaction_id = transaction_id;
                self.stamp = stamp;
                self.until_ms = until_ms;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_account_admits_only_the_refused_transaction() {
        let holds = Holds::default();
        assert!(holds.admit("a", "t1", 1, 0, 100));
        holds.hold("a", "t1", 5, 100);
        holds.hold("a", "t2", 6, 100); // the oldest refusal is what it waits for
        assert!(!holds.admit("a", "t2", 7, 10, 100));
        assert!(holds.admit("a", "t0", 4, 10, 100), "older parts pass");
        assert!(
            holds.admit("b", "x", 7, 10, 100),
            "other accounts are not held"
        );
        assert!(
            holds.admit("a", "t1", 8, 20, 100),
            "the retry lifts the hold"
        );
        assert!(holds.admit("a", "t2", 8, 20, 100));
    }

    #[test]
    fn an_expired_hold_passes_to_what_it_refused_or_ends() {
        let holds = Holds::default();
        holds.hold("a", "lost", 1, 100);
        // Refused while held: "o" then "r".
        assert!(!holds.admit("a", "o", 2, 50, 100));
        assert!(!holds.admit("a", "r", 3, 60, 100));
        // "lost" never comes back. After expiry "r" must still not overtake
        // "o": the hold passed to "o".
        assert!(!holds.admit("a", "r", 4, 100, 100));
        assert!(holds.admit("a", "o", 5, 110, 100));
        assert!(holds.admit("a", "r", 6, 110, 100));
        // A hold that refused nothing just ends.
        holds.hold("c", "t5", 11, 50);
        holds.expire(50, 100);
        assert!(holds.admit("c", "t6", 12, 0, 100));
        // The sweep passes holds on too.
        holds.hold("d", "gone", 20, 50);
        assert!(!holds.admit("d", "next", 21, 10, 100));
        holds.expire(50, 100);
        assert!(!holds.admit("d", "later", 22, 60, 100));
        assert!(holds.admit("d", "next", 23, 60, 100));
    }

    #[test]
    fn an_older_refusal_takes_the_hold_over() {
        let holds = Holds::default();
        holds.hold("a", "newer", 6, 100);
        holds.hold("a", "older", 5, 100);
        assert!(
            !holds.admit("a", "newer", 7, 0, 100),
            "the older one goes first"
        );
        assert!(holds.admit("a", "older", 7, 0, 100));
        assert!(holds.admit("a", "newer", 7, 0, 100));
    }
}
