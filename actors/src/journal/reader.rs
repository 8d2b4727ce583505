//! Reading a shard's journal back for the publisher: the outbox is the
//! journal beyond the dashboard's acknowledged position. Recent records
//! come from the in-memory tail; older ones from the segment files.
//! Batches are contiguous runs of LSNs; what no longer exists before a
//! batch (given up past `journal.max_bytes`, or cut as damage) is reported
//! as skipped, so the dashboard can show the gap.

use std::{fs::File, os::unix::fs::FileExt, path::Path};

use txmesh_proto::v1::Verdict;

use super::{
    format::{self, LogKind, VerdictRecord, HEADER_LEN},
    log,
    writer::ShardJournal,
};

/// Bytes read from a segment at a time when catching up from disk.
const DISK_CHUNK: usize = 2 << 20;

/// A contiguous run of records, as the dashboard receives them.
#[derive(Debug, Default)]
pub struct ReadBatch {
    pub first: u64,
    pub last: u64,
    pub verdicts: Vec<Verdict>,
    /// LSNs before `first` that no longer exist (given up or damaged).
    pub skipped: u64,
}

/// Where the last read from disk stopped, so catching up reads each
/// segment once.
#[derive(Debug, Default)]
pub struct DiskCursor {
    file: Option<(u64, File)>,
    offset: u64,
    /// The LSN expected at `offset`.
    lsn: u64,
    /// Read buffer, kept between reads while catching up.
    buf: Vec<u8>,
}

impl ShardJournal {
    /// Up to `max` verdicts from `from` on, written and contiguous; `None`
    /// when nothing past `from` is written yet.
    pub fn read(&self, from: u64, max: usize, cursor: &mut DiskCursor) -> Option<ReadBatch> {
        let committed = self.committed();
        if from > committed || max == 0 {
            return None;
        }
        let tail_first = self.shared.tail.lock().first();
        if from < tail_first {
            if let Some(dir) = &self.shared.dir {
                if let Some(batch) = read_disk(dir, from, tail_first - 1, max, cursor) {
                    return Some(batch);
                }
            }
            // Not in memory and not on disk: given up.
            let mut batch = self.read_tail(tail_first, max)?;
            batch.skipped += tail_first - from;
            return Some(batch);
        }
        self.read_tail(from, max)
    }

    fn read_tail(&self, from: u64, max: usize) -> Option<ReadBatch> {
        let chunks = self.shared.tail.lock().from(from, max);
        let mut run = Run::new(from, max);
        for chunk in chunks {
            if !run.take(&chunk.bytes) {
                break;
            }
        }
        run.finish()
    }
}

/// Collects a contiguous run of records.
struct Run {
    expect: u64,
    max: usize,
    batch: ReadBatch,
}

impl Run {
    fn new(from: u64, max: usize) -> Self {
        Self {
            expect: from,
            max,
            batch: ReadBatch::default(),
        }
    }

    /// Takes records from framed `bytes`; false once the run is complete
    /// (full, or broken by a missing LSN). Returns the bytes consumed too.
    fn take(&mut self, bytes: &[u8]) -> bool {
        self.take_counted(bytes).0
    }

    fn take_counted(&mut self, bytes: &[u8]) -> (bool, usize) {
        let mut open = true;
        let mut used = 0;
        format::scan(bytes, |found| {
            if !open || found.lsn < self.expect {
                if open {
                    used = found.end;
                }
                return;
            }
            let started = !self.batch.verdicts.is_empty();
            if found.lsn != self.expect && started {
                open = false;
                return;
            }
            if !started {
                self.batch.skipped = found.lsn - self.expect;
                self.batch.first = found.lsn;
            }
            if let Some(record) = VerdictRecord::decode(found.payload) {
                self.batch.verdicts.push(record.to_verdict());
            }
            self.batch.last = found.lsn;
            self.expect = found.lsn + 1;
            used = found.end;
            if self.batch.verdicts.len() >= self.max {
                open = false;
            }
        });
        (open, used)
    }

    fn finish(self) -> Option<ReadBatch> {
        (self.batch.last >= self.batch.first && self.batch.last > 0).then_some(self.batch)
    }
}

/// Reads up to `max` records in `from..=upto` from the segment files.
fn read_disk(
    dir: &Path,
    from: u64,
    upto: u64,
    max: usize,
    cursor: &mut DiskCursor,
) -> Option<ReadBatch> {
    if cursor.lsn != from || cursor.file.is_none() {
        position(dir, from, cursor)?;
    }
    let mut run = Run::new(
        from,
        max.min(usize::try_from(upto + 1 - from).unwrap_or(max)),
    );
    // The buffer lives in the cursor: catching up reads many batches.
    let mut buf = std::mem::take(&mut cursor.buf);
    buf.resize(DISK_CHUNK, 0);
    let read = feed(dir, upto, cursor, &mut run, &mut buf);
    cursor.buf = buf;
    read?;
    run.finish()
}

/// Feeds `run` from the cursor's segment (and the next ones) until it is
/// complete, past `upto`, or at the end of what is written.
fn feed(
    dir: &Path,
    upto: u64,
    cursor: &mut DiskCursor,
    run: &mut Run,
    buf: &mut [u8],
) -> Option<()> {
    loop {
        let (base, file) = cursor.file.as_ref()?;
        let base = *base;
        let n = file.read_at(buf, cursor.offset).ok()?;
        let (open, used) = run.take_counted(&buf[..n]);
        cursor.offset += used as u64;
        cursor.lsn = run.expect;
        if !open || run.expect > upto {
            return Some(());
        }
        if n == buf.len() && used > 0 {
            // A record continues past this chunk.
            continue;
        }
        if used < n || !next_segment(dir, base, cursor) {
            // An incomplete record (being written, or damage), or the end.
            return Some(());
        }
    }
}

/// Opens the segment holding `from` (or the first after it).
fn position(dir: &Path, from: u64, cursor: &mut DiskCursor) -> Option<()> {
    let segments = log::list(dir).ok()?;
    let index = segments
        .partition_point(|s| s.base_lsn <= from)
        .saturating_sub(1);
    let segment = segments.get(index)?;
    let file = File::open(&segment.path).ok()?;
    let mut header = [0u8; HEADER_LEN];
    file.read_exact_at(&mut header, 0).ok()?;
    format::read_header(&header, LogKind::Verdicts).ok()?;
    cursor.file = Some((segment.base_lsn, file));
    cursor.offset = HEADER_LEN as u64;
    cursor.lsn = from;
    Some(())
}

fn next_segment(dir: &Path, base: u64, cursor: &mut DiskCursor) -> bool {
    let Ok(segments) = log::list(dir) else {
        return false;
    };
    let Some(next) = segments.iter().find(|s| s.base_lsn > base) else {
        return false;
    };
    let lsn = cursor.lsn;
    position(dir, next.base_lsn, cursor).is_some() && {
        cursor.lsn = lsn;
        true
    }
}
