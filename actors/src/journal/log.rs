//! A segmented append-only log in one directory, in the style of Kafka's
//! log segments: files named by the LSN of their first record, appended at
//! the end of the newest, rolled past a size, removed whole from the front.
//!
//! [`Log::open`] replays every valid record and cuts the log at the first
//! damage in each segment (a torn tail after a crash, or a flipped byte),
//! reporting what it dropped. A file that is not a segment of this kind
//! and version refuses the open, naming the file.

use std::{
    fs::{File, OpenOptions},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use crate::error::JournalError;

use super::format::{self, LogKind, ScanEnd, HEADER_LEN};

/// One segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    pub base_lsn: u64,
    pub path: PathBuf,
    pub bytes: u64,
}

/// What reading a segment found.
#[derive(Debug, Clone)]
pub struct SegmentReport {
    pub segment: SegmentInfo,
    pub records: u64,
    pub first_lsn: Option<u64>,
    pub last_lsn: Option<u64>,
    /// Where the valid records end.
    pub valid_bytes: u64,
    pub end: ScanEnd,
}

/// What [`Log::open`] did.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    pub records: u64,
    /// The position the snapshot loaded before the log covers (0: none).
    pub snapshot_lsn: u64,
    /// Segments cut at damage: (path, offset, bytes dropped, why).
    pub dropped: Vec<(PathBuf, u64, u64, &'static str)>,
}

/// An open log; one writer.
pub struct Log {
    dir: PathBuf,
    kind: LogKind,
    segment_bytes: u64,
    segments: Vec<SegmentInfo>,
    active: Option<File>,
    next_lsn: u64,
    /// A segment was created since the last sync (the directory needs one).
    created: bool,
}

/// The segment files in `dir`, oldest first.
///
/// # Errors
/// When the directory cannot be listed.
pub fn list(dir: &Path) -> Result<Vec<SegmentInfo>, JournalError> {
    let io = |source| JournalError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        let Some(base) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let bytes = entry.metadata().map_err(io)?.len();
        out.push(SegmentInfo {
            base_lsn: base,
            path,
            bytes,
        });
    }
    out.sort_by_key(|s| s.base_lsn);
    Ok(out)
}

/// Reads one segment, calling `each(lsn, payload)` for its valid records.
///
/// # Errors
/// When it cannot be read, or its header is not this kind's.
pub fn read_segment(
    segment: &SegmentInfo,
    kind: LogKind,
    mut each: impl FnMut(u64, &[u8]),
) -> Result<SegmentReport, JournalError> {
    let bytes = std::fs::read(&segment.path).map_err(|source| JournalError::Io {
        path: segment.path.clone(),
        source,
    })?;
    format::read_header(&bytes, kind).map_err(|fault| JournalError::Foreign {
        path: segment.path.clone(),
        fault: fault.to_string(),
    })?;
    let (mut records, mut first, mut last) = (0, None, None);
    let (end, valid) = format::scan(&bytes[HEADER_LEN..], |found| {
        records += 1;
        first.get_or_insert(found.lsn);
        last = Some(found.lsn);
        each(found.lsn, found.payload);
    });
    Ok(SegmentReport {
        segment: segment.clone(),
        records,
        first_lsn: first,
        last_lsn: last,
        valid_bytes: (HEADER_LEN + valid) as u64,
        end,
    })
}

impl Log {
    /// Opens the log in `dir` (created if missing), calling `each(lsn,
    /// payload)` for every valid record, oldest first. Damage is cut away
    /// and reported; the log then appends after the last valid record.
    ///
    /// # Errors
    /// I/O errors, and [`JournalError::Foreign`] for a file that is not a
    /// segment of this kind and version.
    pub fn open(
        dir: &Path,
        kind: LogKind,
        segment_bytes: u64,
        each: impl FnMut(u64, &[u8]),
    ) -> Result<(Self, Recovery), JournalError> {
        Self::open_after(dir, kind, segment_bytes, 0, each)
    }

    /// [`Self::open`] for a log whose records up to `covered` are already
    /// known (a snapshot holds them): segments wholly at or below it are
    /// kept but not read (`txmesh journal verify` still checks them), and
    /// `each` sees only the records after it.
    ///
    /// # Errors
    /// As [`Self::open`].
    pub fn open_after(
        dir: &Path,
        kind: LogKind,
        segment_bytes: u64,
        covered: u64,
        mut each: impl FnMut(u64, &[u8]),
    ) -> Result<(Self, Recovery), JournalError> {
        std::fs::create_dir_all(dir).map_err(|source| JournalError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let mut segments = list(dir)?;
        let mut recovery = Recovery::default();
        let mut next_lsn = segments.first().map_or(1, |s| s.base_lsn);
        let count = segments.len();
        let bases: Vec<u64> = segments.iter().map(|s| s.base_lsn).collect();
        for (i, segment) in segments.iter_mut().enumerate() {
            let is_last = i + 1 == count;
            if bases.get(i + 1).is_some_and(|next| *next <= covered + 1) {
                // Every record here is in the snapshot.
                next_lsn = bases[i + 1];
                continue;
            }
            if is_last && segment.bytes < HEADER_LEN as u64 && header_cut_short(segment)? {
                // Created, then killed before its header was written.
                rewrite_header(segment, kind)?;
                continue;
            }
            let report = read_segment(segment, kind, |lsn, payload| {
                if lsn > covered {
                    each(lsn, payload);
                }
            })?;
            recovery.records += report.records;
            if let Some(last) = report.last_lsn {
                next_lsn = last + 1;
            } else {
                next_lsn = next_lsn.max(segment.base_lsn);
            }
            if report.valid_bytes < segment.bytes {
                let why = match report.end {
                    ScanEnd::Torn { .. } => "torn tail (a write cut short)",
                    _ => "damaged record (checksum or length)",
                };
                recovery.dropped.push((
                    segment.path.clone(),
                    report.valid_bytes,
                    segment.bytes - report.valid_bytes,
                    why,
                ));
                truncate(segment, report.valid_bytes)?;
            }
        }
        let mut log = Self {
            dir: dir.to_owned(),
            kind,
            segment_bytes,
            segments,
            active: None,
            next_lsn,
            created: false,
        };
        if let Some(last) = log.segments.last() {
            log.active = Some(open_append(&last.path)?);
        }
        Ok((log, recovery))
    }

    /// The directory holding the segments.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The LSN the next record gets.
    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// The segments, oldest first.
    pub fn segments(&self) -> &[SegmentInfo] {
        &self.segments
    }

    /// Bytes on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Appends framed records `bytes` whose LSNs run from `first_lsn` to
    /// `next_lsn - 1`, rolling to a new segment first when the active one
    /// is full. On error nothing is counted as written: the same bytes may
    /// be appended again (they overwrite whatever part reached the file).
    ///
    /// # Errors
    /// The I/O error, with the file's path.
    pub fn append(
        &mut self,
        first_lsn: u64,
        bytes: &[u8],
        next_lsn: u64,
    ) -> Result<(), JournalError> {
        let full = self
            .segments
            .last()
            .is_none_or(|s| s.bytes >= self.segment_bytes);
        if full || self.active.is_none() {
            self.roll(first_lsn)?;
        }
        let (Some(file), Some(segment)) = (&self.active, self.segments.last_mut()) else {
            return Err(JournalError::Closed);
        };
        file.write_all_at(bytes, segment.bytes)
            .map_err(|source| JournalError::Io {
                path: segment.path.clone(),
                source,
            })?;
        segment.bytes += bytes.len() as u64;
        self.next_lsn = next_lsn;
        Ok(())
    }

    fn roll(&mut self, base_lsn: u64) -> Result<(), JournalError> {
        let path = self.dir.join(format!("{base_lsn:020}.seg"));
        let io = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        file.write_all_at(&format::header(self.kind, base_lsn), 0)
            .map_err(io)?;
        if let Some(old) = self.active.take() {
            // The finished segment is complete on disk before the next one
            // is used, whatever the sync policy.
            old.sync_data().ok();
        }
        self.segments.retain(|s| s.path != path);
        self.segments.push(SegmentInfo {
            base_lsn,
            path,
            bytes: HEADER_LEN as u64,
        });
        self.active = Some(file);
        self.created = true;
        Ok(())
    }

    /// Asks the disk to persist what was appended (and a new segment's
    /// directory entry).
    ///
    /// # Errors
    /// The I/O error, with the path.
    pub fn sync(&mut self) -> Result<(), JournalError> {
        match self.sync_target()? {
            Some(mut target) => target.sync(),
            None => Ok(()),
        }
    }

    /// What syncing the active segment takes, for another thread: its
    /// file (a second descriptor of it) and, once after a segment was
    /// created, the directory. `None` before the first segment.
    ///
    /// # Errors
    /// The descriptor could not be duplicated.
    pub fn sync_target(&mut self) -> Result<Option<SyncTarget>, JournalError> {
        let (Some(file), Some(segment)) = (&self.active, self.segments.last()) else {
            return Ok(None);
        };
        let path = segment.path.clone();
        let file = file.try_clone().map_err(|source| JournalError::Io {
            path: path.clone(),
            source,
        })?;
        let dir = std::mem::take(&mut self.created).then(|| self.dir.clone());
        Ok(Some(SyncTarget { file, path, dir }))
    }

    /// The active segment's first position (changes when a segment is
    /// started).
    pub fn active_base(&self) -> Option<u64> {
        self.segments.last().map(|s| s.base_lsn)
    }

    /// Removes whole segments whose records all come before `lsn` (never
    /// the active one). Returns the bytes removed.
    pub fn remove_before(&mut self, lsn: u64) -> u64 {
        let mut removed = 0;
        while self.segments.len() > 1 && self.segments[1].base_lsn <= lsn {
            let segment = self.segments.remove(0);
            match std::fs::remove_file(&segment.path) {
                Ok(()) => removed += segment.bytes,
                Err(e) => {
                    tracing::warn!(path = %segment.path.display(), error = %e, "journal segment not removed");
                    self.segments.insert(0, segment);
                    break;
                }
            }
        }
        removed
    }
}

/// The active segment of a [`Log`], to be synced from another thread.
#[derive(Debug)]
pub struct SyncTarget {
    file: File,
    path: PathBuf,
    /// The directory, while the segment's entry in it is not yet synced.
    dir: Option<PathBuf>,
}

impl SyncTarget {
    /// Persists what was written to the segment (and its directory entry,
    /// the first time).
    ///
    /// # Errors
    /// The I/O error, with the path.
    pub fn sync(&mut self) -> Result<(), JournalError> {
        self.file.sync_data().map_err(|source| JournalError::Io {
            path: self.path.clone(),
            source,
        })?;
        if let Some(dir) = self.dir.take() {
            if let Ok(dir) = File::open(dir) {
                dir.sync_all().ok();
            }
        }
        Ok(())
    }
}

fn open_append(path: &Path) -> Result<File, JournalError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| JournalError::Io {
            path: path.to_owned(),
            source,
        })
}

fn truncate(segment: &mut SegmentInfo, len: u64) -> Result<(), JournalError> {
    let file = open_append(&segment.path)?;
    file.set_len(len).map_err(|source| JournalError::Io {
        path: segment.path.clone(),
        source,
    })?;
    segment.bytes = len;
    Ok(())
}

/// Whether a file shorter than a header holds the start of one (and so
/// is a segment whose creation was cut short, not someone else's file).
fn header_cut_short(segment: &SegmentInfo) -> Result<bool, JournalError> {
    let bytes = std::fs::read(&segment.path).map_err(|source| JournalError::Io {
        path: segment.path.clone(),
        source,
    })?;
    let magic = &format::MAGIC[..bytes.len().min(format::MAGIC.len())];
    Ok(bytes.starts_with(magic))
}

fn rewrite_header(segment: &mut SegmentInfo, kind: LogKind) -> Result<(), JournalError> {
    let file = open_append(&segment.path)?;
    file.set_len(0)
        .and_then(|()| file.write_all_at(&format::header(kind, segment.base_lsn), 0))
        .map_err(|source| JournalError::Io {
            path: segment.path.clone(),
            source,
        })?;
    segment.bytes = HEADER_LEN as u64;
    Ok(())
}

#[cfg(test)]
#[path = "log/tests.rs"]
mod tests;
