//! Where a shard keeps its passivated accounts' windows: one after another
//! in large chunks, each record the account id and its encoded [`Entries`],
//! found through an index of 8-byte handles.
//!
//! Why not one allocation per account: a million passivated accounts were
//! a million small allocations in the same size classes as the short-lived
//! ones of active accounts (the 512-byte actor tasks, 32-byte keys), so the
//! allocator's pages stayed part-used after the active ones were freed: in
//! a real ingress holding 991,749 accounts, 461 MB allocated took 657 MB of
//! pages. A map entry (key, shared entries, supervision) was 40 bytes more.
//!
//! A chunk is appended to until full, then sealed (immutable, shared): a
//! snapshot holds the sealed chunks and the handles of the live records
//! and reads them on its own thread while the shard goes on. A record
//! freed by a reactivation is dead space until [`PassiveWindows::compact`]
//! copies its chunk's live records into the open chunk and drops the
//! chunk, once under [`COMPACT_BELOW`] of it is live.

use std::{hash::BuildHasher, sync::Arc};

use hashbrown::HashTable;
use prost::encoding::{decode_varint, encode_varint};

use super::{decode, Entries, Entry};

/// Bytes of a chunk (a record longer than that gets a chunk of its own).
/// Small in tests, so that they cross many chunk boundaries.
const CHUNK_BYTES: usize = if cfg!(test) { 4 * 1024 } else { 256 * 1024 };

/// A sealed chunk is compacted once less than this share of it is live:
/// at most a quarter of a sealed chunk is dead space, and compaction
/// copies under 3 bytes for each byte it frees (so in total under 3 times
/// what was ever passivated).
const COMPACT_BELOW: f64 = 0.75;

/// Most bytes [`PassiveWindows::compact`] copies in one call (it runs on
/// the shard's thread, between transactions).
const COMPACT_BUDGET: usize = 2 * 1024 * 1024;

/// Where a record is: chunk number (high 32 bits) and offset.
type Handle = u64;

fn handle(chunk: usize, offset: usize) -> Handle {
    ((chunk as u64) << 32) | offset as u64
}

fn split(handle: Handle) -> (usize, usize) {
    ((handle >> 32) as usize, (handle & 0xffff_ffff) as usize)
}

enum Bytes {
    /// Being appended to (only ever the store's `open` chunk).
    Open(Vec<u8>),
    Sealed(Arc<[u8]>),
    /// Compacted away; its number is reused.
    Free,
}

struct Chunk {
    bytes: Bytes,
    /// Bytes of the records still indexed.
    live: usize,
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Open(v) => v,
            Bytes::Sealed(a) => a,
            Bytes::Free => &[],
        }
    }
}

/// One record, as read from its chunk.
struct Record<'a> {
    account: &'a str,
    entries: &'a [u8],
    /// The whole record's length.
    len: usize,
}

/// Reads the record at the start of `bytes`: the account id's length and
/// the id, then the entries' length and the entries.
fn record(bytes: &[u8]) -> Option<Record<'_>> {
    let mut rest = bytes;
    let id_len = usize::try_from(decode_varint(&mut rest).ok()?).ok()?;
    let (account, mut rest) = rest.split_at_checked(id_len)?;
    let entries_len = usize::try_from(decode_varint(&mut rest).ok()?).ok()?;
    let entries = rest.get(..entries_len)?;
    Some(Record {
        // Written from a `str` whole, so UTF-8.
        account: std::str::from_utf8(account).ok()?,
        entries,
        len: bytes.len() - rest.len() + entries_len,
    })
}

fn encode_record(out: &mut Vec<u8>, account: &str, entries: &[u8]) {
    encode_varint(account.len() as u64, out);
    out.extend_from_slice(account.as_bytes());
    encode_varint(entries.len() as u64, out);
    out.extend_from_slice(entries);
}

/// The passivated windows of one shard, by account id.
pub struct PassiveWindows {
    index: HashTable<Handle>,
    hasher: foldhash::fast::RandomState,
    chunks: Vec<Chunk>,
    /// Numbers of the `Free` chunks.
    free: Vec<usize>,
    /// The chunk being appended to, if any.
    open: Option<usize>,
}

impl Default for PassiveWindows {
    fn default() -> Self {
        Self::new()
    }
}

impl PassiveWindows {
    pub fn new() -> Self {
        Self {
            index: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            chunks: Vec::new(),
            free: Vec::new(),
            open: None,
        }
    }

    /// Accounts held.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Bytes the store holds (chunks and index): what its accounts cost.
    pub fn held_bytes(&self) -> usize {
        let chunks: usize = self
            .chunks
            .iter()
            .map(|c| match &c.bytes {
                Bytes::Open(v) => v.capacity(),
                Bytes::Sealed(a) => a.len(),
                Bytes::Free => 0,
            })
            .sum();
        chunks + self.index.allocation_size()
    }

    fn at(chunks: &[Chunk], handle: Handle) -> Option<Record<'_>> {
        let (chunk, offset) = split(handle);
        record(chunks.get(chunk)?.bytes().get(offset..)?)
    }

    fn find(&self, account: &str) -> Option<Handle> {
        let hash = self.hasher.hash_one(account);
        let chunks = &self.chunks;
        self.index
            .find(hash, |&h| {
                Self::at(chunks, h).is_some_and(|r| r.account == account)
            })
            .copied()
    }

    /// A copy of the account's entries, if it is held.
    pub fn get(&self, account: &str) -> Option<Entries> {
        let h = self.find(account)?;
        Self::at(&self.chunks, h).map(|r| Entries::from_encoded(r.entries))
    }

    /// Holds `entries` for `account`, in place of what it held before.
    /// Returns whether the account is new here.
    pub fn insert(&mut self, account: &str, entries: &Entries) -> bool {
        let replaced = self.remove(account).is_some();
        let mut encoded = Vec::new();
        encode_record(&mut encoded, account, entries.encoded());
        let at = self.append(&encoded);
        let hash = self.hasher.hash_one(account);
        let (chunks, hasher) = (&self.chunks, &self.hasher);
        self.index.insert_unique(hash, at, |&h| {
            hasher.hash_one(Self::at(chunks, h).map_or("", |r| r.account))
        });
        !replaced
    }

    /// Takes the account's entries out, if it is held.
    pub fn remove(&mut self, account: &str) -> Option<Entries> {
        let hash = self.hasher.hash_one(account);
        let chunks = &self.chunks;
        let found = self
            .index
            .find_entry(hash, |&h| {
                Self::at(chunks, h).is_some_and(|r| r.account == account)
            })
            .ok()?;
        let (h, _) = found.remove();
        let record = Self::at(&self.chunks, h)?;
        let (entries, len) = (Entries::from_encoded(record.entries), record.len);
        self.release(h, len);
        Some(entries)
    }

    /// Marks `len` bytes of the record at `h` dead.
    fn release(&mut self, h: Handle, len: usize) {
        let (chunk, _) = split(h);
        if let Some(c) = self.chunks.get_mut(chunk) {
            c.live = c.live.saturating_sub(len);
        }
    }

    /// Keeps the accounts for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let chunks = &mut self.chunks;
        self.index.retain(|h| {
            let Some(record) = Self::at(chunks, *h) else {
                return false;
            };
            if keep(record.account) {
                return true;
            }
            let len = record.len;
            let (chunk, _) = split(*h);
            if let Some(c) = chunks.get_mut(chunk) {
                c.live = c.live.saturating_sub(len);
            }
            false
        });
    }

    /// Every account and a copy of its entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Entries)> {
        self.matching(|_| true)
    }

    /// The accounts for which `keep` is true and a copy of their entries
    /// (what a handoff sends); the others are not copied.
    pub fn matching<'a>(
        &'a self,
        mut keep: impl FnMut(&str) -> bool + 'a,
    ) -> impl Iterator<Item = (&'a str, Entries)> + 'a {
        self.index
            .iter()
            .filter_map(|&h| Self::at(&self.chunks, h))
            .filter(move |r| keep(r.account))
            .map(|r| (r.account, Entries::from_encoded(r.entries)))
    }

    /// Appends an encoded record to the open chunk (opening one when it
    /// has no room), returning its handle.
    fn append(&mut self, record: &[u8]) -> Handle {
        let open = match self.open {
            Some(i) if matches!(&self.chunks[i].bytes, Bytes::Open(v) if v.capacity() - v.len() >= record.len()) => {
                i
            }
            _ => {
                self.seal();
                let bytes = Bytes::Open(Vec::with_capacity(CHUNK_BYTES.max(record.len())));
                let chunk = Chunk { bytes, live: 0 };
                let i = match self.free.pop() {
                    Some(i) => {
                        self.chunks[i] = chunk;
                        i
                    }
                    None => {
                        self.chunks.push(chunk);
                        self.chunks.len() - 1
                    }
                };
                self.open = Some(i);
                i
            }
        };
        let chunk = &mut self.chunks[open];
        let Bytes::Open(v) = &mut chunk.bytes else {
            unreachable!("the open chunk is always `Open`");
        };
        let at = v.len();
        v.extend_from_slice(record);
        chunk.live += record.len();
        handle(open, at)
    }

    /// Seals the open chunk, if any: its bytes become shared and
    /// immutable, and the next record opens a new chunk.
    fn seal(&mut self) {
        if let Some(i) = self.open.take() {
            let chunk = &mut self.chunks[i];
            if let Bytes::Open(v) = std::mem::replace(&mut chunk.bytes, Bytes::Free) {
                if chunk.live == 0 {
                    self.free.push(i);
                } else {
                    chunk.bytes = Bytes::Sealed(Arc::from(v));
                }
            }
        }
    }

    /// The windows as they are now, to be read elsewhere (a snapshot)
    /// while the store goes on: the sealed chunks, shared, and where the
    /// live records are in them.
    pub fn freeze(&mut self) -> FrozenWindows {
        self.seal();
        FrozenWindows {
            chunks: self
                .chunks
                .iter()
                .map(|c| match &c.bytes {
                    Bytes::Sealed(a) => Some(a.clone()),
                    _ => None,
                })
                .collect(),
            records: self.index.iter().copied().collect(),
        }
    }

    /// Gives back dead space: copies the live records of the chunks that
    /// are mostly dead into the open chunk and drops them (at most
    /// [`COMPACT_BUDGET`] bytes copied per call), frees chunks with
    /// nothing live (the open one too), and shrinks the index once it is
    /// mostly empty.
    pub fn compact(&mut self) {
        let mut budget = COMPACT_BUDGET;
        for i in 0..self.chunks.len() {
            let chunk = &self.chunks[i];
            let Bytes::Sealed(bytes) = &chunk.bytes else {
                continue;
            };
            let live = chunk.live;
            if live as f64 >= bytes.len() as f64 * COMPACT_BELOW {
                continue;
            }
            if live > budget {
                break;
            }
            budget -= live;
            let bytes = bytes.clone();
            self.chunks[i].bytes = Bytes::Free;
            self.chunks[i].live = 0;
            self.move_live(i, &bytes);
            self.free.push(i);
        }
        // An open chunk left with nothing live goes too (a shard whose
        // accounts all came back holds nothing).
        if let Some(i) = self.open.filter(|&i| self.chunks[i].live == 0) {
            self.chunks[i].bytes = Bytes::Free;
            self.free.push(i);
            self.open = None;
        }
        if self.index.len() * 4 < self.index.capacity() {
            let (chunks, hasher) = (&self.chunks, &self.hasher);
            // Room to double again before the next growth.
            self.index.shrink_to(self.index.len() * 2, |&h| {
                hasher.hash_one(Self::at(chunks, h).map_or("", |r| r.account))
            });
        }
    }

    /// Moves the records of chunk `from` (its `bytes`) still indexed to
    /// the open chunk.
    fn move_live(&mut self, from: usize, bytes: &[u8]) {
        let mut offset = 0;
        while let Some(r) = bytes.get(offset..).and_then(record) {
            let old = handle(from, offset);
            let hash = self.hasher.hash_one(r.account);
            if self.index.find(hash, |&h| h == old).is_some() {
                let new = self.append(&bytes[offset..offset + r.len]);
                if let Some(h) = self.index.find_mut(hash, |&h| h == old) {
                    *h = new;
                }
            }
            offset += r.len;
        }
    }
}

/// What [`PassiveWindows::freeze`] gives: the windows of a moment, read on
/// another thread without copying them.
#[derive(Default)]
pub struct FrozenWindows {
    chunks: Vec<Option<Arc<[u8]>>>,
    records: Vec<Handle>,
}

impl FrozenWindows {
    /// Accounts held.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The same windows, read in the order they are in memory (sorting
    /// is left to the thread that reads them, off the shard's).
    pub fn in_memory_order(mut self) -> Self {
        self.records.sort_unstable();
        self
    }

    /// Every account and its entries.
    pub fn iter(&self) -> impl Iterator<Item = (&str, impl Iterator<Item = Entry<'_>>)> {
        self.records.iter().filter_map(|&h| {
            let (chunk, offset) = split(h);
            let bytes = self.chunks.get(chunk)?.as_deref()?.get(offset..)?;
            record(bytes).map(|r| (r.account, decode(r.entries)))
        })
    }
}

#[cfg(test)]
#[path = "passive_tests.rs"]
mod tests;
