//! Window snapshots: every account's window as of a journal position, so
//! that recovery reads the newest snapshot plus the records after it
//! (recovery time does not grow with history) and the segments before it
//! can be removed once the dashboard has them (disk stays bounded).
//!
//! A snapshot is a file `snapshot-<lsn>.snap` in the shard's directory, in
//! the segment format (kind [`LogKind::Snapshot`], base = the position it
//! covers), one learned verdict record per window entry. It is written to
//! a temporary name, synced and renamed, so a snapshot file is either
//! whole or absent; older ones are removed after.
//!
//! Consistency: the shard notes the journal's written position P before it
//! collects the windows. Every record at or below P was learned by its
//! window before it was written, so the collected windows hold everything
//! up to P (and perhaps some records after it, which recovery recognises by
//! their transaction ids and does not learn twice).

use std::{
    collections::HashMap,
    fs::File,
    io::Write,
    path::{Path, PathBuf},
};

use crate::{
    config::WindowConfig,
    error::JournalError,
    window::{passive::FrozenWindows, Entries, Entry, HistoryWindow, WindowEntry},
};

use super::{
    format::{self, LogKind, VerdictRecord, HEADER_LEN},
    writer::ShardJournal,
};

/// One account's window entries, in one shared allocation (what an active
/// account hands a snapshot or a handoff). Passivated accounts reach a
/// snapshot as their store's chunks ([`FrozenWindows`]), not copied.
pub type SharedEntries = Entries;

/// One account's window, as collected for a snapshot or a handoff.
pub type AccountWindow = (Box<str>, SharedEntries);

/// The windows a snapshot writes: the passivated accounts' as their store
/// held them (shared, not copied), and the active accounts' as collected.
pub struct SnapshotWindows {
    pub passive: FrozenWindows,
    pub active: Vec<AccountWindow>,
}

impl From<Vec<AccountWindow>> for SnapshotWindows {
    fn from(active: Vec<AccountWindow>) -> Self {
        Self {
            passive: FrozenWindows::default(),
            active,
        }
    }
}

impl SnapshotWindows {
    /// Accounts held.
    pub fn len(&self) -> usize {
        self.passive.len() + self.active.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ShardJournal {
    /// Whether this journal keeps snapshots (it is on disk and none is
    /// being written).
    pub fn wants_snapshot(&self) -> bool {
        self.shared.dir.is_some()
            && !self
                .shared
                .snapshotting
                .swap(true, std::sync::atomic::Ordering::AcqRel)
    }

    /// Writes `windows`, complete up to journal position `lsn`, as a
    /// snapshot on a thread of its own; the segments it covers become
    /// removable once it is in place.
    pub fn write_snapshot(&self, lsn: u64, windows: SnapshotWindows) {
        self.write_snapshot_then(lsn, windows, |_| {});
    }

    /// [`Self::write_snapshot`], telling `done` whether the snapshot is in
    /// place (what a handoff waits for before it acknowledges).
    pub fn write_snapshot_then(
        &self,
        lsn: u64,
        windows: SnapshotWindows,
        done: impl FnOnce(Result<(), String>) + Send + 'static,
    ) {
        let journal = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("snapshot-{}", self.index()))
            .spawn(move || {
                let span = tracing::info_span!("journal.snapshot", shard = journal.index(), lsn);
                let _entered = span.enter();
                done(journal.finish_snapshot(lsn, windows));
            });
        match spawned {
            // One snapshot at a time (`wants_snapshot`): the previous
            // thread, if any, has finished.
            Ok(handle) => *self.shared.snapshot_thread.lock() = Some(handle),
            Err(e) => {
                tracing::error!(error = %e, "snapshot thread not started");
                self.snapshot_abandoned();
            }
        }
    }

    /// A snapshot that could not be taken (a window could not be read).
    pub fn snapshot_abandoned(&self) {
        self.shared
            .snapshotting
            .store(false, std::sync::atomic::Ordering::Release);
    }

    fn finish_snapshot(&self, lsn: u64, windows: SnapshotWindows) -> Result<(), String> {
        let Some(dir) = &self.shared.dir else {
            return Ok(());
        };
        let started = std::time::Instant::now();
        let accounts = windows.len();
        let written = write(dir, lsn, windows);
        let result = written.as_ref().map(|_| ()).map_err(ToString::to_string);
        match written {
            Ok(bytes) => {
                self.shared.stats.snapshot_lsn.set(lsn);
                remove_older(dir, lsn);
                tracing::info!(
                    accounts,
                    bytes,
                    took_ms = started.elapsed().as_millis() as u64,
                    "window snapshot written"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "window snapshot not written (segments are kept)")
            }
        }
        self.snapshot_abandoned();
        result
    }
}

fn path_of(dir: &Path, lsn: u64) -> PathBuf {
    dir.join(format!("snapshot-{lsn:020}.snap"))
}

/// Bytes of encoded records gathered before each write to the file.
const WRITE_CHUNK: usize = 1 << 20;

/// Writes the snapshot file, encoding as it goes: the file is never held
/// in memory whole (for a million passivated accounts it is hundreds of
/// MiB), and each account's collected window is let go once written.
pub(super) fn write(dir: &Path, lsn: u64, windows: SnapshotWindows) -> Result<u64, JournalError> {
    let path = path_of(dir, lsn);
    let tmp = path.with_extension("tmp");
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| JournalError::Io { path, source }
    };
    let encoded = (|| -> Result<u64, JournalError> {
        let mut file = File::create(&tmp).map_err(io(&tmp))?;
        let mut out = Vec::with_capacity(WRITE_CHUNK + 4096);
        out.extend_from_slice(&format::header(LogKind::Snapshot, lsn));
        let mut written = 0u64;
        let mut n = 0u64;
        let mut put = |account: &str,
                       entries: &mut dyn Iterator<Item = Entry<'_>>|
         -> Result<(), JournalError> {
            for entry in entries {
                n += 1;
                format::frame(&mut out, n, |o| format::encode_entry(o, entry, account));
            }
            if out.len() >= WRITE_CHUNK {
                file.write_all(&out).map_err(io(&tmp))?;
                written += out.len() as u64;
                out.clear();
            }
            Ok(())
        };
        // Passivated first, as they were collected first.
        let SnapshotWindows { passive, active } = windows;
        let passive = passive.in_memory_order();
        for (account, mut entries) in passive.iter() {
            put(account, &mut entries)?;
        }
        drop(passive);
        for (account, entries) in active {
            put(&account, &mut entries.iter())?;
        }
        file.write_all(&out).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        Ok(written + out.len() as u64)
    })();
    let written = match encoded {
        Ok(written) => written,
        Err(e) => {
            // A part-written snapshot is never read (only `.snap` files
            // are), but it would take room at every failed attempt.
            std::fs::remove_file(&tmp).ok();
            return Err(e);
        }
    };
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    if let Ok(d) = File::open(dir) {
        d.sync_all().ok();
    }
    Ok(written)
}

/// `windows` in the snapshot's record format (what a handoff carries), cut
/// into pieces of about `max_bytes` at account boundaries.
pub fn encode_windows(windows: &[AccountWindow], max_bytes: usize) -> Vec<Vec<u8>> {
    let mut pieces = Vec::new();
    let mut out = Vec::new();
    let mut n = 0u64;
    for (account, entries) in windows {
        if !out.is_empty() && out.len() >= max_bytes {
            pieces.push(std::mem::take(&mut out));
        }
        for entry in entries.iter() {
            n += 1;
            format::frame(&mut out, n, |o| format::encode_entry(o, entry, account));
        }
    }
    if !out.is_empty() {
        pieces.push(out);
    }
    pieces
}

/// Reads what [`encode_windows`] wrote, appending to `windows` (an
/// account's entries in the order written).
///
/// # Errors
/// A record that is torn, damaged or not a window entry: nothing of a
/// piece that fails is kept.
pub fn decode_windows(bytes: &[u8], windows: &mut Vec<AccountWindow>) -> Result<(), String> {
    let mut accounts: Vec<(Box<str>, Vec<WindowEntry>)> = Vec::new();
    let mut bad = false;
    let (end, _) = format::scan(bytes, |found| match VerdictRecord::decode(found.payload) {
        Some(record) => match accounts.last_mut() {
            Some((account, entries)) if *account == record.account_id => {
                entries.push(record.entry);
            }
            _ => accounts.push((record.account_id, vec![record.entry])),
        },
        None => bad = true,
    });
    if end != format::ScanEnd::Clean || bad {
        return Err(format!("window records unreadable ({end:?})"));
    }
    windows.extend(
        accounts
            .into_iter()
            .map(|(a, e)| (a, e.into_iter().collect())),
    );
    Ok(())
}

/// The snapshots in `dir`, newest first: (position, path).
pub fn list(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let lsn = name
                .strip_prefix("snapshot-")?
                .strip_suffix(".snap")?
                .parse()
                .ok()?;
            Some((lsn, e.path()))
        })
        .collect();
    found.sort_by_key(|s| std::cmp::Reverse(s.0));
    found
}

fn remove_older(dir: &Path, lsn: u64) {
    for (older, path) in list(dir) {
        if older < lsn {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "old snapshot not removed");
            }
        }
    }
}

/// Loads the newest whole snapshot in `dir` into `windows`; returns the
/// position it covers (0 without one). A damaged snapshot is reported and
/// skipped for an older one.
pub(super) fn load(
    dir: &Path,
    windows: &mut HashMap<Box<str>, HistoryWindow>,
    config: &WindowConfig,
) -> u64 {
    for (lsn, path) in list(dir) {
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        if format::read_header(&bytes, LogKind::Snapshot) != Ok(lsn) {
            tracing::error!(path = %path.display(), "snapshot header unreadable: skipped");
            continue;
        }
        let mut loaded: HashMap<Box<str>, HistoryWindow> = HashMap::new();
        let (end, _) = format::scan(&bytes[HEADER_LEN..], |found| {
            if let Some(record) = VerdictRecord::decode(found.payload) {
                loaded
                    .entry(record.account_id)
                    .or_default()
                    .learn(config, record.entry);
            }
        });
        if end != format::ScanEnd::Clean {
            tracing::error!(path = %path.display(), ?end, "snapshot damaged: skipped for an older one");
            continue;
        }
        *windows = loaded;
        return lsn;
    }
    0
}
