//! Order holds. When a transaction of an account is refused for a
//! retryable reason (overload, a partition on the move, an owner out of
//! reach), the account is held: its later transactions are refused as well
//! until every refused one has been sent again (retried), oldest first,
//! so retries cannot reorder an account; the retrying client must resend
//! in the original order, which txgen does. A hold keeps every refusal it
//! has not seen come back, not only the first: a client learns of its
//! refusals one by one, and a transaction sent after the first came back
//! but before it heard of the second must not pass the second.
//!
//! "Later" is decided by the part's stamp: the router numbers every part
//! it hands on. Parts stamped before the oldest refusal were already
//! accepted and are older, so they pass; a refusal of an older
//! transaction after a newer one (an older part overflowing an account's
//! mailbox) takes its place in front, and must come back first.
//!
//! A refusal that came back and passed may be refused again further on
//! (its owner turned it away, its account's mailbox was full): it goes back
//! in at the place it had, in front of those kept since, not at the stamp
//! of the part it came back in, which is newer than theirs.
//!
//! The oldest refusal waits `order_hold_ms` for its retry. A hold nobody
//! comes back for passes, on expiry, to the next refusal it keeps (which
//! the client must now send first), and ends when it keeps none.
//!
//! Shared by the router (which refuses whole parts when a shard's mailbox is
//! full) and the shard (which refuses single transactions when an account's
//! mailbox is full, and admits or refuses every transaction it handles).

use std::{
    collections::{HashMap, VecDeque},
    sync::atomic::{AtomicUsize, Ordering},
};

use parking_lot::Mutex;

/// Refusals one hold keeps at most; past that a refusal is answered but not
/// kept (a client has rarely this many transactions of one account in
/// flight).
const MAX_KEPT: usize = 256;
/// Refusals a hold remembers after they came back and passed.
const MAX_PASSED: usize = 16;

/// The holds of one shard's accounts.
#[derive(Debug, Default)]
pub(crate) struct Holds {
    map: Mutex<HashMap<Box<str>, Hold>>,
    /// Lets the hot path skip the lock while nothing is held.
    len: AtomicUsize,
}

#[derive(Debug)]
struct Hold {
    /// The refused transactions not yet back, oldest (by stamp) first:
    /// (transaction id, stamp of the part it was refused in).
    refused: VecDeque<(Box<str>, u64)>,
    /// When the oldest stops being waited for.
    until_ms: u64,
    /// Refusals that came back and passed while others were still kept,
    /// with their stamps: their place if they are refused again.
    passed: VecDeque<(Box<str>, u64)>,
}

impl Hold {
    /// Keeps `transaction_id` (refused in the part stamped `stamp`) in
    /// stamp order, once; true when it went in front.
    fn keep(&mut self, transaction_id: &str, stamp: u64) -> bool {
        let stamp = match self.passed.iter().position(|(t, _)| &**t == transaction_id) {
            Some(i) => self.passed.remove(i).map_or(stamp, |(_, s)| s.min(stamp)),
            None => stamp,
        };
        if self.refused.len() >= MAX_KEPT
            || self.refused.iter().any(|(t, _)| &**t == transaction_id)
        {
            return false;
        }
        let at = self.refused.partition_point(|(_, s)| *s <= stamp);
        self.refused.insert(at, (transaction_id.into(), stamp));
        at == 0
    }

    /// Drops the oldest refusal if its wait is over; false when none is
    /// left (the hold ends).
    fn expire(&mut self, now_ms: u64, hold_ms: u64) -> bool {
        if self.until_ms <= now_ms {
            self.refused.pop_front();
            self.until_ms = now_ms + hold_ms;
        }
        !self.refused.is_empty()
    }
}

impl Holds {
    /// Holds `account` for `transaction_id`, refused in the part stamped
    /// `stamp`, behind any older refusal.
    pub(crate) fn hold(&self, account: &str, transaction_id: &str, stamp: u64, until_ms: u64) {
        let mut map = self.map.lock();
        let hold = map.entry(account.into()).or_insert_with(|| Hold {
            refused: VecDeque::new(),
            until_ms,
            passed: VecDeque::new(),
        });
        if hold.keep(transaction_id, stamp) {
            hold.until_ms = until_ms;
        }
        self.len.store(map.len(), Ordering::Release);
    }

    /// Whether `transaction_id` of `account`, in the part stamped `stamp`,
    /// may be screened now: yes when the account is not held, when the part
    /// is older than every refusal, or when this is the oldest refusal
    /// coming back (the next one is then waited for). Anything else is
    /// refused, and kept. An expired oldest refusal passes on (see above);
    /// a newly oldest one waits `hold_ms`.
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
        if !h.expire(now_ms, hold_ms) {
            map.remove(account);
            self.len.store(map.len(), Ordering::Release);
            return true;
        }
        let Some((oldest, oldest_stamp)) = h.refused.front() else {
            return true;
        };
        if stamp < *oldest_stamp {
            return true;
        }
        if &**oldest == transaction_id {
            let passed = h.refused.pop_front();
            h.until_ms = now_ms + hold_ms;
            if h.refused.is_empty() {
                map.remove(account);
                self.len.store(map.len(), Ordering::Release);
            } else if let Some(passed) = passed {
                if h.passed.len() >= MAX_PASSED {
                    h.passed.pop_front();
                }
                h.passed.push_back(passed);
            }
            return true;
        }
        h.keep(transaction_id, stamp);
        false
    }

    /// Passes expired holds on, and drops those that keep nothing.
    pub(crate) fn expire(&self, now_ms: u64, hold_ms: u64) {
        if self.len.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut map = self.map.lock();
        map.retain(|_, h| h.expire(now_ms, hold_ms));
        self.len.store(map.len(), Ordering::Release);
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
    fn every_refusal_comes_back_before_anything_newer_passes() {
        let holds = Holds::default();
        holds.hold("a", "t1", 1, 100);
        holds.hold("a", "t2", 2, 100);
        holds.hold("a", "t3", 3, 100);
        // t1 comes back alone (the client has not heard of t2's refusal
        // yet); t4, sent after, may not pass t2 or t3.
        assert!(holds.admit("a", "t1", 4, 10, 100));
        assert!(!holds.admit("a", "t4", 5, 10, 100));
        assert!(!holds.admit("a", "t3", 6, 10, 100), "t2 goes first");
        assert!(holds.admit("a", "t2", 7, 10, 100));
        assert!(holds.admit("a", "t3", 8, 10, 100));
        assert!(holds.admit("a", "t4", 9, 10, 100));
        assert!(holds.admit("a", "t5", 10, 10, 100), "nothing held any more");
    }

    #[test]
    fn a_refusal_refused_again_after_it_came_back_keeps_its_place() {
        let holds = Holds::default();
        holds.hold("a", "t1", 1, 100);
        holds.hold("a", "t2", 2, 100);
        // t1 comes back and passes, then is refused again further on (its
        // owner turned it away): it is still older than t2, kept since.
        assert!(holds.admit("a", "t1", 10, 10, 100));
        holds.hold("a", "t1", 10, 100);
        assert!(!holds.admit("a", "t2", 11, 10, 100), "t1 goes first");
        assert!(holds.admit("a", "t1", 12, 10, 100));
        assert!(holds.admit("a", "t2", 13, 10, 100));
        assert!(holds.admit("a", "t3", 14, 10, 100), "nothing held any more");
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
