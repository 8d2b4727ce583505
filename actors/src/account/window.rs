//! HistoryWindow: one account's recent transactions, bounded by count and by
//! age (event time: relative to the newest timestamp seen). A plain struct
//! with no actix in it, so rules and tests use it directly.

use std::{
    collections::VecDeque,
    hash::{DefaultHasher, Hash, Hasher},
};

use txmesh_proto::v1::{Transaction, Verdict, VerdictStatus};

use crate::config::WindowConfig;

/// What the window remembers of one screened transaction: enough for the
/// rules and for answering a replay with the original verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowEntry {
    pub transaction_id: Box<str>,
    /// Hash of the transaction's content: a replay must match it, otherwise
    /// the id is in conflict.
    pub fingerprint: u64,
    pub amount_minor: i64,
    pub currency: [u8; 3],
    pub country: [u8; 2],
    pub timestamp_unix_ms: i64,
    pub verdict: StoredVerdict,
}

/// The verdict as first decided, compact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredVerdict {
    pub status: VerdictStatus,
    /// Bit i set when reason i (its proto number, below 32) fired.
    pub reasons: u32,
    pub risk_score: u8,
    pub processing_time_us: u32,
}

/// The bounded history of one account, oldest first (in arrival order).
#[derive(Debug, Clone)]
pub struct HistoryWindow {
    entries: VecDeque<WindowEntry>,
    max_entries: usize,
    max_age_ms: i64,
    newest_ms: i64,
}

impl HistoryWindow {
    /// An empty window with the given bounds.
    pub fn new(config: &WindowConfig) -> Self {
        Self {
            entries: VecDeque::new(),
            max_entries: config.max_entries,
            max_age_ms: i64::try_from(config.max_age_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            newest_ms: i64::MIN,
        }
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> impl DoubleEndedIterator<Item = &WindowEntry> + ExactSizeIterator {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry screened under `transaction_id`, if still in the window.
    pub fn find(&self, transaction_id: &str) -> Option<&WindowEntry> {
        self.entries
            .iter()
            .rev()
            .find(|e| &*e.transaction_id == transaction_id)
    }

    /// Records a screened transaction, then evicts what is too old or too
    /// many. Called only after the verdict is decided.
    pub fn record(&mut self, txn: &Transaction, verdict: &Verdict) {
        let entry = WindowEntry {
            transaction_id: txn.transaction_id.as_str().into(),
            fingerprint: fingerprint(txn),
            amount_minor: txn.amount_minor,
            currency: code::<3>(&txn.currency),
            country: code::<2>(&txn.country),
            timestamp_unix_ms: txn.timestamp_unix_ms,
            verdict: StoredVerdict::from_verdict(verdict),
        };
        self.newest_ms = self.newest_ms.max(entry.timestamp_unix_ms);
        self.entries.push_back(entry);
        self.evict();
    }

    fn evict(&mut self) {
        while self.entries.len() > self.max_entries {
            self.entries.pop_front();
        }
        let cutoff = self.newest_ms.saturating_sub(self.max_age_ms);
        while self
            .entries
            .front()
            .is_some_and(|e| e.timestamp_unix_ms < cutoff)
        {
            self.entries.pop_front();
        }
    }
}

impl StoredVerdict {
    fn from_verdict(verdict: &Verdict) -> Self {
        let reasons = verdict
            .reasons
            .iter()
            .filter(|r| (0..32).contains(*r))
            .fold(0u32, |bits, r| bits | (1 << r));
        Self {
            status: verdict.status(),
            reasons,
            risk_score: u8::try_from(verdict.risk_score.min(100)).unwrap_or(100),
            processing_time_us: u32::try_from(verdict.processing_time_us).unwrap_or(u32::MAX),
        }
    }

    /// The reasons as proto enum numbers, in ascending order.
    pub fn reason_codes(&self) -> Vec<i32> {
        (0..32).filter(|i| self.reasons & (1 << i) != 0).collect()
    }
}

/// A content hash of everything but the id and account (which are the key).
pub fn fingerprint(txn: &Transaction) -> u64 {
    let mut h = DefaultHasher::new();
    txn.amount_minor.hash(&mut h);
    txn.currency.hash(&mut h);
    txn.timestamp_unix_ms.hash(&mut h);
    txn.merchant_id.hash(&mut h);
    txn.country.hash(&mut h);
    txn.channel.hash(&mut h);
    h.finish()
}

/// A fixed-size code; valid transactions always fit (validated before).
fn code<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0u8; N];
    for (o, b) in out.iter_mut().zip(s.bytes()) {
        *o = b;
    }
    out
}

impl WindowEntry {
    /// The currency code as text.
    pub fn currency_str(&self) -> &str {
        std::str::from_utf8(&self.currency).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(id: &str, ts: i64, amount: i64) -> Transaction {
        Transaction {
            transaction_id: id.into(),
            account_id: "acc".into(),
            amount_minor: amount,
            currency: "EUR".into(),
            timestamp_unix_ms: ts,
            merchant_id: "m".into(),
            country: "DE".into(),
            channel: 1,
        }
    }

    fn approved() -> Verdict {
        Verdict {
            status: VerdictStatus::Approved as i32,
            ..Verdict::default()
        }
    }

    #[test]
    fn evicts_by_count_keeping_the_newest() {
        let mut w = HistoryWindow::new(&WindowConfig {
            max_entries: 3,
            max_age_secs: 3600,
        });
        for i in 0..5 {
            w.record(&txn(&format!("t{i}"), 1_000 + i, 10), &approved());
        }
        let ids: Vec<_> = w.entries().map(|e| e.transaction_id.to_string()).collect();
        assert_eq!(ids, ["t2", "t3", "t4"]);
    }

    #[test]
    fn evicts_by_age_relative_to_the_newest() {
        let mut w = HistoryWindow::new(&WindowConfig {
            max_entries: 100,
            max_age_secs: 10,
        });
        w.record(&txn("old", 0, 10), &approved());
        w.record(&txn("mid", 5_000, 10), &approved());
        assert_eq!(w.len(), 2);
        w.record(&txn("new", 12_000, 10), &approved());
        let ids: Vec<_> = w.entries().map(|e| e.transaction_id.to_string()).collect();
        assert_eq!(ids, ["mid", "new"]);
        assert!(w.find("old").is_none());
        assert!(w.find("mid").is_some());
    }

    #[test]
    fn fingerprint_changes_with_content_only() {
        let a = txn("x", 1, 10);
        let mut b = a.clone();
        b.transaction_id = "y".into();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        b.amount_minor = 11;
        assert_ne!(fingerprint(&a), fingerprint(&b));
    }
}
