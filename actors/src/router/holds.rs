//! Order holds. When a transaction of an account is refused for overload,
//! the account is held: its later transactions are refused as well until
//! the refused one is sent again (a retry), so retries cannot reorder an
//! account; the retrying client must resend in the original order, which
//! txgen does. A hold nobody comes back for expires after `order_hold_ms`.
//!
//! Shared by the router (which refuses whole parts when a shard's mailbox is
//! full) and the shard (which refuses single transactions when an account's
//! mailbox is full, and admits or refuses every transaction it handles).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
};

/// The holds of one shard's accounts.
#[derive(Debug, Default)]
pub(crate) struct Holds {
    map: Mutex<HashMap<Box<str>, Hold>>,
    /// Lets the hot path skip the lock while nothing is held.
    len: AtomicUsize,
}

#[derive(Debug)]
struct Hold {
    /// The first refused transaction: the one that must come back first.
    transaction_id: Box<str>,
    until_ms: u64,
}

impl Holds {
    /// Holds `account` for `transaction_id` unless it is already held.
    pub(crate) fn hold(&self, account: &str, transaction_id: &str, until_ms: u64) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(account.into()).or_insert_with(|| Hold {
            transaction_id: transaction_id.into(),
            until_ms,
        });
        self.len.store(map.len(), Ordering::Release);
    }

    /// Whether `transaction_id` of `account` may be screened now: yes when
    /// the account is not held, when the hold expired, or when this is the
    /// transaction it waits for (which lifts it).
    pub(crate) fn admit(&self, account: &str, transaction_id: &str, now_ms: u64) -> bool {
        if self.len.load(Ordering::Acquire) == 0 {
            return true;
        }
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let admit = match map.get(account) {
            None => return true,
            Some(h) => h.until_ms <= now_ms || &*h.transaction_id == transaction_id,
        };
        if admit {
            map.remove(account);
            self.len.store(map.len(), Ordering::Release);
        }
        admit
    }

    /// Drops the holds that expired.
    pub(crate) fn expire(&self, now_ms: u64) {
        if self.len.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, h| h.until_ms > now_ms);
        self.len.store(map.len(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_account_admits_only_the_refused_transaction_until_expiry() {
        let holds = Holds::default();
        assert!(holds.admit("a", "t1", 0));
        holds.hold("a", "t1", 100);
        holds.hold("a", "t2", 100); // the first refusal is what it waits for
        assert!(!holds.admit("a", "t2", 10));
        assert!(holds.admit("b", "x", 10), "other accounts are not held");
        assert!(holds.admit("a", "t1", 20), "the retry lifts the hold");
        assert!(holds.admit("a", "t2", 20));

        holds.hold("a", "t3", 100);
        assert!(!holds.admit("a", "t4", 99));
        assert!(holds.admit("a", "t4", 100), "an unclaimed hold expires");

        holds.hold("c", "t5", 50);
        holds.expire(50);
        assert!(holds.admit("c", "t6", 0));
    }
}
