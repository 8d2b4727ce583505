//! HistoryWindow: one account's recent transactions, bounded by count and by
//! age (event time: relative to the newest timestamp seen). A plain struct
//! with no actix in it, so rules and tests use it directly.

use std::{
    collections::VecDeque,
    hash::{BuildHasher, DefaultHasher, Hash, Hasher},
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
    /// A 16-bit hash of `transaction_id`, in the entry's own padding: the
    /// replay lookup compares it before it reads the id from the heap
    /// (a cache miss per entry, per screening).
    id_tag: u16,
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

/// How many entries a full buffer of `len` grows by: to the next of the
/// allocator's size classes, four per doubling (jemalloc's: for 64-byte
/// entries 1..8, then 10, 12, 14, 16, 20, 24 ... 64 entries), so a buffer
/// fills the class it is given. Not doubled: most accounts hold fewer
/// than `max_entries`, and a doubled buffer is up to half spare (a window
/// of 10 entries kept room for 16, in every one of hundreds of thousands
/// of accounts); not one at a time: each growth is a reallocation, and at
/// maximum rate one per screening was 4 % of the ingress's CPU.
fn class_step(len: usize) -> usize {
    match len.checked_ilog2() {
        Some(log) => 1 << log.saturating_sub(2),
        None => 1,
    }
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

    /// A window holding `entries` (oldest first, as [`Self::into_entries`]
    /// gave them), bounded by `config`.
    pub fn restore(config: &WindowConfig, entries: Box<[WindowEntry]>) -> Self {
        let mut window = Self::new(config);
        window.newest_ms = entries
            .iter()
            .map(|e| e.timestamp_unix_ms)
            .max()
            .unwrap_or(i64::MIN);
        window.entries = entries.into_vec().into();
        window.evict();
        window
    }

    /// The entries, oldest first, in the compact form a passivated account
    /// keeps (no spare capacity).
    pub fn into_entries(self) -> Box<[WindowEntry]> {
        Vec::from(self.entries).into_boxed_slice()
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
    /// Every screening asks, and the answer is nearly always no: an entry
    /// whose tag differs is passed over without reading its id.
    pub fn find(&self, transaction_id: &str) -> Option<&WindowEntry> {
        let tag = id_tag(transaction_id);
        self.entries
            .iter()
            .rev()
            .find(|e| e.id_tag == tag && *e.transaction_id == *transaction_id)
    }

    /// Records a screened transaction, then evicts what is too old or too
    /// many. Called only after the verdict is decided.
    /// Returns the transaction's fingerprint (the journal records it).
    pub fn record(&mut self, txn: &Transaction, verdict: &Verdict) -> u64 {
        let fingerprint = fingerprint(txn);
        self.learn(WindowEntry::of(txn, verdict, fingerprint));
        fingerprint
    }

    /// Adds an entry (screened now, or read back from the journal), then
    /// evicts what is too old or too many.
    pub fn learn(&mut self, entry: WindowEntry) {
        self.newest_ms = self.newest_ms.max(entry.timestamp_unix_ms);
        // Room is made before the push, so a full window never grows.
        while !self.entries.is_empty() && self.entries.len() >= self.max_entries {
            self.entries.pop_front();
        }
        if self.entries.len() == self.entries.capacity() {
            let room = self.max_entries.saturating_sub(self.entries.len());
            self.entries
                .reserve_exact(class_step(self.entries.len()).min(room).max(1));
        }
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
    pub(crate) fn from_verdict(verdict: &Verdict) -> Self {
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
pub(crate) fn code<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0u8; N];
    for (o, b) in out.iter_mut().zip(s.bytes()) {
        *o = b;
    }
    out
}

/// The tag of a transaction id (see [`WindowEntry`]); never persisted.
fn id_tag(transaction_id: &str) -> u16 {
    let hash = foldhash::fast::FixedState::default().hash_one(transaction_id);
    (hash >> 48) as u16
}

impl WindowEntry {
    /// An entry from its parts (as the journal recorded them).
    pub fn new(
        transaction_id: Box<str>,
        fingerprint: u64,
        amount_minor: i64,
        currency: [u8; 3],
        country: [u8; 2],
        timestamp_unix_ms: i64,
        verdict: StoredVerdict,
    ) -> Self {
        Self {
            id_tag: id_tag(&transaction_id),
            transaction_id,
            fingerprint,
            amount_minor,
            currency,
            country,
            timestamp_unix_ms,
            verdict,
        }
    }

    /// What the window keeps of `txn`, screened as `verdict`.
    pub fn of(txn: &Transaction, verdict: &Verdict, fingerprint: u64) -> Self {
        Self::new(
            txn.transaction_id.as_str().into(),
            fingerprint,
            txn.amount_minor,
            code::<3>(&txn.currency),
            code::<2>(&txn.country),
            txn.timestamp_unix_ms,
            StoredVerdict::from_verdict(verdict),
        )
    }

    /// The currency code as text.
    pub fn currency_str(&self) -> &str {
        std::str::from_utf8(&self.currency).unwrap_or("")
    }

    /// The country code as text.
    pub fn country_str(&self) -> &str {
        std::str::from_utf8(&self.country).unwrap_or("")
    }
}

#[cfg(test)]
#[path = "window/tests.rs"]
mod tests;
