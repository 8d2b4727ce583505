//! HistoryWindow: one account's recent transactions, bounded by count and by
//! age (event time: relative to the newest timestamp seen). A plain struct
//! with no actix in it, so rules and tests use it directly.

use std::{
    collections::VecDeque,
    hash::{BuildHasher, DefaultHasher, Hash, Hasher},
    sync::Arc,
};

use prost::encoding::encode_varint;
use txmesh_proto::v1::{Transaction, Verdict, VerdictStatus};

use crate::config::WindowConfig;

pub mod passive;

/// What the window remembers of one screened transaction: enough for the
/// rules and for answering a replay with the original verdict. The owned
/// form, as the journal reads and writes it; a window keeps the same
/// fields in a [`Slot`] and the id in its id buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowEntry {
    pub transaction_id: Box<str>,
    pub fields: Slot,
}

/// An entry's fields other than its id, and where its id is in the
/// buffer of the window (or of the [`Entries`]) holding it: 48 bytes, so
/// ten of them fill a 512-byte allocation (with the id in an allocation
/// of its own the entry was 64 bytes and each id one more allocation).
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    /// Hash of the transaction's content: a replay must match it, otherwise
    /// the id is in conflict.
    pub fingerprint: u64,
    pub amount_minor: i64,
    pub timestamp_unix_ms: i64,
    pub verdict: StoredVerdict,
    pub currency: [u8; 3],
    pub country: [u8; 2],
    /// A 16-bit hash of the id: the replay lookup compares it before it
    /// reads the id.
    id_tag: u16,
    /// The id's place in its buffer: `id_at..id_at + id_len`.
    id_at: u32,
    id_len: u8,
}

/// Two slots are equal when their fields are; where their ids are kept
/// is not part of it.
impl PartialEq for Slot {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
            && self.amount_minor == other.amount_minor
            && self.timestamp_unix_ms == other.timestamp_unix_ms
            && self.verdict == other.verdict
            && self.currency == other.currency
            && self.country == other.country
            && self.id_tag == other.id_tag
    }
}

impl Eq for Slot {}

/// The longest id a window keeps (a slot holds its length in a byte);
/// validation refuses longer ones before anything is screened.
pub const MAX_ID_BYTES: usize = u8::MAX as usize;

/// One entry of a window: its id (borrowed) and its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    pub transaction_id: &'a str,
    pub fields: Slot,
}

impl Entry<'_> {
    /// The entry in its owned form.
    pub fn to_owned(self) -> WindowEntry {
        WindowEntry {
            transaction_id: self.transaction_id.into(),
            fields: Slot {
                id_at: 0,
                ..self.fields
            },
        }
    }
}

/// The verdict as first decided, compact (12 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredVerdict {
    /// Bit i set when reason i (its proto number, below 32) fired.
    pub reasons: u32,
    pub processing_time_us: u32,
    pub risk_score: u8,
    /// The `VerdictStatus` number (they are all below 256).
    status: u8,
}

/// The smallest of the allocator's size classes that holds `bytes`
/// (jemalloc's: 8, 16, then steps of 16 up to 128, then four per
/// doubling: 160, 192, 224, 256, 320 ...). A window's buffers are grown to
/// a whole class, so none pays for room it cannot use.
fn size_class(bytes: usize) -> usize {
    match bytes {
        0..=8 => 8,
        9..=128 => bytes.next_multiple_of(16),
        _ => {
            let step = 1usize << ((bytes - 1).ilog2() - 2);
            bytes.next_multiple_of(step)
        }
    }
}

/// How many slots a buffer that must hold `needed` is given: as many as
/// fill the size class of `needed` slots, at most `max`. Not doubled: most
/// accounts hold fewer than `max_entries`, and a doubled buffer is up to
/// half spare (a window of 10 entries kept room for 16, in every one of
/// hundreds of thousands of accounts); not one at a time: each growth is
/// a reallocation, and at maximum rate one per screening was 4 % of the
/// ingress's CPU.
fn slots_for(needed: usize, max: usize) -> usize {
    let slot = std::mem::size_of::<Slot>();
    (size_class(needed * slot) / slot).clamp(needed, max.max(needed))
}

/// The bounded history of one account, oldest first (in arrival order):
/// the slots in a ring, the ids one after another in one buffer (the
/// front slot's id first; evicted ids are reclaimed when the buffer is
/// next full). The bounds are the shard's [`WindowConfig`], passed in:
/// this is 56 bytes, what the account actor's task allocation has room
/// for.
#[derive(Debug, Clone)]
pub struct HistoryWindow {
    slots: VecDeque<Slot>,
    ids: Box<[u8]>,
    newest_ms: i64,
}

/// A window's entries as a passivated account keeps them: encoded in one
/// shared allocation, about 50 bytes an entry with a 26-byte id (as a
/// slot and its id in a buffer they were 74, in three allocations). A
/// snapshot or a handoff holds a clone (the same bytes); restoring an
/// account decodes them into a window of its own.
///
/// Each entry: id length (1 byte) and id, id tag (2), fingerprint (8),
/// then as LEB128 varints the amount (zigzag), the timestamp's difference
/// from the previous entry's (zigzag), the reasons and the processing
/// time; then risk score, status, currency (3) and country (2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entries {
    bytes: Arc<[u8]>,
}

fn id_in<'a>(ids: &'a [u8], slot: &Slot) -> &'a [u8] {
    let at = slot.id_at as usize;
    ids.get(at..at + usize::from(slot.id_len))
        .unwrap_or_default()
}

fn entry_in<'a>(ids: &'a [u8], slot: &Slot) -> Entry<'a> {
    Entry {
        // Ids are copied in from `str`s whole, so they are UTF-8.
        transaction_id: std::str::from_utf8(id_in(ids, slot)).unwrap_or_default(),
        fields: *slot,
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Reads what [`Entries`] holds, entry by entry.
struct Decoder<'a> {
    rest: &'a [u8],
    previous_ms: i64,
}

impl<'a> Decoder<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (taken, rest) = self.rest.split_at_checked(n)?;
        self.rest = rest;
        Some(taken)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn varint(&mut self) -> Option<u64> {
        prost::encoding::decode_varint(&mut self.rest).ok()
    }

    fn entry(&mut self) -> Option<Entry<'a>> {
        let id_len = self.byte()?;
        let id = self.take(usize::from(id_len))?;
        let id_tag = u16::from_le_bytes(self.take(2)?.try_into().ok()?);
        let fingerprint = u64::from_le_bytes(self.take(8)?.try_into().ok()?);
        let amount_minor = unzigzag(self.varint()?);
        let timestamp_unix_ms = self.previous_ms.wrapping_add(unzigzag(self.varint()?));
        self.previous_ms = timestamp_unix_ms;
        let reasons = u32::try_from(self.varint()?).ok()?;
        let processing_time_us = u32::try_from(self.varint()?).ok()?;
        let risk_score = self.byte()?;
        let status = self.byte()?;
        let codes = self.take(5)?;
        Some(Entry {
            // Ids are written from `str`s whole, so they are UTF-8.
            transaction_id: std::str::from_utf8(id).unwrap_or_default(),
            fields: Slot {
                fingerprint,
                amount_minor,
                timestamp_unix_ms,
                verdict: StoredVerdict {
                    reasons,
                    processing_time_us,
                    risk_score,
                    status,
                },
                currency: [codes[0], codes[1], codes[2]],
                country: [codes[3], codes[4]],
                id_tag,
                id_at: 0,
                id_len,
            },
        })
    }
}

/// Appends entries in the form [`Entries`] holds.
#[derive(Default)]
struct Encoder {
    out: Vec<u8>,
    previous_ms: i64,
}

impl Encoder {
    /// Appends one entry; one whose id is longer than [`MAX_ID_BYTES`] is
    /// left out, as a window leaves it out (see [`HistoryWindow::learn`]).
    fn put(&mut self, id: &str, f: &Slot) {
        let Ok(id_len) = u8::try_from(id.len()) else {
            return;
        };
        let out = &mut self.out;
        out.push(id_len);
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(&f.id_tag.to_le_bytes());
        out.extend_from_slice(&f.fingerprint.to_le_bytes());
        encode_varint(zigzag(f.amount_minor), out);
        encode_varint(
            zigzag(f.timestamp_unix_ms.wrapping_sub(self.previous_ms)),
            out,
        );
        self.previous_ms = f.timestamp_unix_ms;
        encode_varint(u64::from(f.verdict.reasons), out);
        encode_varint(u64::from(f.verdict.processing_time_us), out);
        out.push(f.verdict.risk_score);
        out.push(f.verdict.status);
        out.extend_from_slice(&f.currency);
        out.extend_from_slice(&f.country);
    }

    fn finish(self) -> Entries {
        Entries {
            bytes: Arc::from(self.out),
        }
    }
}

/// The entries encoded in `bytes` (as [`Entries`] holds them), oldest
/// first; decoding stops at the first malformed one.
fn decode(bytes: &[u8]) -> impl Iterator<Item = Entry<'_>> {
    let mut decoder = Decoder {
        rest: bytes,
        previous_ms: 0,
    };
    std::iter::from_fn(move || decoder.entry())
}

impl Entries {
    /// The entries, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = Entry<'_>> {
        decode(&self.bytes)
    }

    /// The entries as encoded (what [`passive::PassiveWindows`] stores).
    fn encoded(&self) -> &[u8] {
        &self.bytes
    }

    /// Entries of their own holding a copy of `encoded`.
    fn from_encoded(encoded: &[u8]) -> Self {
        Self {
            bytes: Arc::from(encoded),
        }
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl FromIterator<WindowEntry> for Entries {
    fn from_iter<I: IntoIterator<Item = WindowEntry>>(entries: I) -> Self {
        let mut encoder = Encoder::default();
        for e in entries {
            encoder.put(&e.transaction_id, &e.fields);
        }
        encoder.finish()
    }
}

impl<'a> FromIterator<Entry<'a>> for Entries {
    fn from_iter<I: IntoIterator<Item = Entry<'a>>>(entries: I) -> Self {
        let mut encoder = Encoder::default();
        for e in entries {
            encoder.put(e.transaction_id, &e.fields);
        }
        encoder.finish()
    }
}

fn max_age_ms(config: &WindowConfig) -> i64 {
    i64::try_from(config.max_age_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

impl HistoryWindow {
    /// An empty window (allocating nothing).
    pub fn new() -> Self {
        Self {
            slots: VecDeque::new(),
            ids: Box::default(),
            newest_ms: i64::MIN,
        }
    }

    /// A window holding `entries` (oldest first, as [`Self::into_entries`]
    /// gave them), bounded by `config`.
    pub fn restore(config: &WindowConfig, entries: &Entries) -> Self {
        let (count, id_bytes) = entries
            .iter()
            .fold((0, 0), |(n, b), e| (n + 1, b + e.transaction_id.len()));
        let mut window = Self::new();
        if count > 0 {
            // Room for them all at once, in whole size classes.
            let count = count.min(config.max_entries.max(1));
            window
                .slots
                .reserve_exact(slots_for(count, config.max_entries));
            window.ids = vec![0; size_class(id_bytes)].into_boxed_slice();
        }
        for e in entries.iter() {
            window.push(config, e.transaction_id, e.fields);
        }
        window
    }

    /// The entries, oldest first, in the compact form a passivated account
    /// keeps.
    pub fn into_entries(self) -> Entries {
        self.to_entries()
    }

    /// The entries in the form [`Self::into_entries`] gives.
    pub fn to_entries(&self) -> Entries {
        self.entries().collect()
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> impl DoubleEndedIterator<Item = Entry<'_>> + ExactSizeIterator {
        self.slots.iter().map(|s| entry_in(&self.ids, s))
    }

    /// The entries' fields without their ids, oldest first (what the rules
    /// read).
    pub fn fields(&self) -> impl DoubleEndedIterator<Item = &Slot> + ExactSizeIterator {
        self.slots.iter()
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The entry screened under `transaction_id`, if still in the window.
    /// Every screening asks, and the answer is nearly always no: an entry
    /// whose tag differs is passed over without reading its id.
    pub fn find(&self, transaction_id: &str) -> Option<Entry<'_>> {
        let tag = id_tag(transaction_id);
        let id = transaction_id.as_bytes();
        self.slots
            .iter()
            .rev()
            .find(|s| s.id_tag == tag && id_in(&self.ids, s) == id)
            .map(|s| entry_in(&self.ids, s))
    }

    /// Records a screened transaction, then evicts what is too old or too
    /// many. Called only after the verdict is decided.
    /// Returns the transaction's fingerprint (the journal records it).
    pub fn record(&mut self, config: &WindowConfig, txn: &Transaction, verdict: &Verdict) -> u64 {
        let fingerprint = fingerprint(txn);
        let fields = Slot::of(txn, verdict, fingerprint);
        self.push(config, &txn.transaction_id, fields);
        fingerprint
    }

    /// Adds an entry (read back from the journal), then evicts what is too
    /// old or too many. An id longer than [`MAX_ID_BYTES`] is never
    /// screened (validation refuses it), so no window holds one: such an
    /// entry is not learned.
    pub fn learn(&mut self, config: &WindowConfig, entry: WindowEntry) {
        if entry.transaction_id.len() <= MAX_ID_BYTES {
            self.push(config, &entry.transaction_id, entry.fields);
        }
    }

    fn push(&mut self, config: &WindowConfig, id: &str, fields: Slot) {
        self.newest_ms = self.newest_ms.max(fields.timestamp_unix_ms);
        // Room is made before the push, so a full window never grows.
        while !self.slots.is_empty() && self.slots.len() >= config.max_entries {
            self.slots.pop_front();
        }
        if self.slots.len() == self.slots.capacity() {
            let room = slots_for(self.slots.len() + 1, config.max_entries);
            self.slots.reserve_exact(room - self.slots.len());
        }
        let at = self.make_room(id.len());
        self.ids[at..at + id.len()].copy_from_slice(id.as_bytes());
        self.slots.push_back(Slot {
            id_at: u32::try_from(at).unwrap_or(u32::MAX),
            id_len: u8::try_from(id.len()).unwrap_or(u8::MAX),
            ..fields
        });
        self.evict(config);
    }

    /// Where the window's ids are in its buffer: `start..end`.
    fn id_range(&self) -> (usize, usize) {
        match (self.slots.front(), self.slots.back()) {
            (Some(front), Some(back)) => (
                front.id_at as usize,
                back.id_at as usize + usize::from(back.id_len),
            ),
            _ => (0, 0),
        }
    }

    /// Where an id of `len` bytes goes: after the last one, once the ids
    /// evicted from the front are reclaimed (the live ones moved to the
    /// start) or, when that is not enough, in a buffer of the next size
    /// class.
    fn make_room(&mut self, len: usize) -> usize {
        let (start, end) = self.id_range();
        if end + len <= self.ids.len() {
            return end;
        }
        let live = end - start;
        if live + len <= self.ids.len() {
            self.ids.copy_within(start..end, 0);
        } else {
            let mut grown = vec![0u8; size_class(live + len)].into_boxed_slice();
            grown[..live].copy_from_slice(&self.ids[start..end]);
            self.ids = grown;
        }
        let base = u32::try_from(start).unwrap_or(0);
        for slot in &mut self.slots {
            slot.id_at -= base;
        }
        live
    }

    fn evict(&mut self, config: &WindowConfig) {
        while self.slots.len() > config.max_entries {
            self.slots.pop_front();
        }
        let cutoff = self.newest_ms.saturating_sub(max_age_ms(config));
        while self
            .slots
            .front()
            .is_some_and(|e| e.timestamp_unix_ms < cutoff)
        {
            self.slots.pop_front();
        }
    }
}

impl Default for HistoryWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl StoredVerdict {
    pub(crate) fn from_verdict(verdict: &Verdict) -> Self {
        let reasons = verdict
            .reasons
            .iter()
            .filter(|r| (0..32).contains(*r))
            .fold(0u32, |bits, r| bits | (1 << r));
        Self::new(
            verdict.status(),
            reasons,
            u8::try_from(verdict.risk_score.min(100)).unwrap_or(100),
            u32::try_from(verdict.processing_time_us).unwrap_or(u32::MAX),
        )
    }

    pub fn new(
        status: VerdictStatus,
        reasons: u32,
        risk_score: u8,
        processing_time_us: u32,
    ) -> Self {
        Self {
            reasons,
            processing_time_us,
            risk_score,
            status: u8::try_from(status as i32).unwrap_or_default(),
        }
    }

    pub fn status(&self) -> VerdictStatus {
        VerdictStatus::try_from(i32::from(self.status)).unwrap_or_default()
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
        let fields = Slot {
            fingerprint,
            amount_minor,
            timestamp_unix_ms,
            verdict,
            currency,
            country,
            id_tag: id_tag(&transaction_id),
            id_at: 0,
            id_len: u8::try_from(transaction_id.len()).unwrap_or(u8::MAX),
        };
        Self {
            transaction_id,
            fields,
        }
    }

    /// What the window keeps of `txn`, screened as `verdict`.
    pub fn of(txn: &Transaction, verdict: &Verdict, fingerprint: u64) -> Self {
        Self {
            transaction_id: txn.transaction_id.as_str().into(),
            fields: Slot::of(txn, verdict, fingerprint),
        }
    }
}

impl Slot {
    /// The fields of `txn`, screened as `verdict`, for an id the window
    /// places.
    fn of(txn: &Transaction, verdict: &Verdict, fingerprint: u64) -> Self {
        Self {
            fingerprint,
            amount_minor: txn.amount_minor,
            timestamp_unix_ms: txn.timestamp_unix_ms,
            verdict: StoredVerdict::from_verdict(verdict),
            currency: code::<3>(&txn.currency),
            country: code::<2>(&txn.country),
            id_tag: id_tag(&txn.transaction_id),
            id_at: 0,
            id_len: u8::try_from(txn.transaction_id.len()).unwrap_or(u8::MAX),
        }
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
