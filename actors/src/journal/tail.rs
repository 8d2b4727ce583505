//! The newest records of a shard's journal, in memory, as written (one
//! chunk per group): the publisher reads them from here without touching
//! the disk. Only what the dashboard has not acknowledged is kept, and at
//! most a bound of bytes of it; older records are read back from the
//! segments (or, with the journal disabled, are gone: a counted gap).

use std::{collections::VecDeque, sync::Arc};

/// One written group: records `first..=last`, framed.
#[derive(Clone)]
pub(super) struct Chunk {
    pub(super) first: u64,
    pub(super) last: u64,
    pub(super) bytes: Arc<[u8]>,
}

pub(super) struct Tail {
    chunks: VecDeque<Chunk>,
    bytes: u64,
    max_bytes: u64,
    /// The first LSN still held (or the next to come when empty).
    first: u64,
}

impl Tail {
    pub(super) fn new(max_bytes: u64, next_lsn: u64) -> Self {
        Self {
            chunks: VecDeque::new(),
            bytes: 0,
            max_bytes,
            first: next_lsn,
        }
    }

    /// Adds a written group; returns the LSN ranges evicted to stay
    /// within the bound.
    pub(super) fn push(&mut self, first: u64, last: u64, bytes: Arc<[u8]>) -> Vec<(u64, u64)> {
        self.bytes += bytes.len() as u64;
        self.chunks.push_back(Chunk { first, last, bytes });
        let mut evicted = Vec::new();
        while self.bytes > self.max_bytes && self.chunks.len() > 1 {
            if let Some(old) = self.chunks.pop_front() {
                self.bytes -= old.bytes.len() as u64;
                self.first = old.last + 1;
                evicted.push((old.first, old.last));
            }
        }
        if let Some(front) = self.chunks.front() {
            self.first = front.first;
        }
        evicted
    }

    /// Lets go of the chunks the dashboard has acknowledged (every record
    /// up to `acked`): nothing reads them again, and holding them would
    /// keep `max_bytes` of delivered verdicts in memory for good.
    pub(super) fn release(&mut self, acked: u64) {
        while self.chunks.front().is_some_and(|c| c.last <= acked) {
            if let Some(old) = self.chunks.pop_front() {
                self.bytes -= old.bytes.len() as u64;
                self.first = old.last + 1;
            }
        }
    }

    /// The first LSN held in memory.
    pub(super) fn first(&self) -> u64 {
        self.first
    }

    /// The chunks holding `from` and after, oldest first, enough for
    /// `max` records.
    pub(super) fn from(&self, from: u64, max: usize) -> Vec<Chunk> {
        let start = self.chunks.partition_point(|c| c.last < from);
        let mut held = 0;
        self.chunks
            .range(start..)
            .take_while(|c| {
                let more = held < max as u64;
                held += c.last + 1 - c.first.max(from);
                more
            })
            .cloned()
            .collect()
    }
}
