//! The verdict journal: the durable record of every verdict the ingress
//! answers, one append-only log per shard under `state_dir/journal/`.
//!
//! ```text
//! journal/
//!   LOCK               held (flock) by the one process using the journal
//!   meta               format and shard count
//!   publisher          the publisher's stable id and acknowledged positions
//!   shard-K/NNN.seg    shard K's segments, named by their first LSN
//!   shard-K/snapshot-NNN.snap   its windows as of position NNN
//! ```
//!
//! Write path: an account actor decides a verdict, learns it into its
//! window, then [`ShardJournal::commit`]s the record; the shard's writer
//! thread writes records in groups and only then answers their callers.
//! Recovery ([`Journals::open`]) replays every shard's log into account
//! windows before the ingress serves. The publisher reads each log beyond
//! the dashboard's acknowledged position ([`ShardJournal::read`]): the
//! outbox is the journal.

pub mod format;
pub mod log;
mod reader;
pub mod snapshot;
mod stats;
mod tail;
mod writer;

use std::{
    collections::HashMap,
    fs::File,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

pub use reader::{DiskCursor, ReadBatch};
pub use stats::{JournalHistograms, JournalStats};
pub use writer::ShardJournal;

use crate::{
    config::{JournalConfig, WindowConfig},
    error::JournalError,
    window::HistoryWindow,
};
use format::{LogKind, VerdictRecord};
use writer::WriterSetup;

/// Every shard's journal of one ingress.
#[derive(Clone)]
pub struct Journals {
    shards: Arc<[ShardJournal]>,
    /// `None` with the journal disabled.
    dir: Option<PathBuf>,
    /// Held until [`Self::close`]: one user per journal.
    lock: Arc<parking_lot::Mutex<Option<File>>>,
    health: Arc<tokio::sync::watch::Sender<u64>>,
    /// The publisher's id, once asked for.
    publisher: Arc<std::sync::OnceLock<String>>,
}

/// Account windows rebuilt from the journal, per shard.
pub struct Recovered {
    pub windows: Vec<HashMap<Box<str>, HistoryWindow>>,
    pub report: RecoveryReport,
}

/// What recovery read and dropped.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    pub records: u64,
    pub accounts: u64,
    /// Damage cut away: (file, offset, bytes, why).
    pub dropped: Vec<(PathBuf, u64, u64, &'static str)>,
    pub took: Duration,
}

/// The publisher's persisted state.
#[derive(Debug, Default)]
struct PublisherFile {
    id: String,
    acked: Vec<u64>,
}

impl Journals {
    /// Opens (or creates) the journal of `shard_count` shards under `dir`
    /// (`None`: disabled, memory only) and replays it into windows;
    /// `locate` gives an account's shard.
    ///
    /// # Errors
    /// The journal is in use, was written for another shard count, holds
    /// a foreign or newer-format file, or cannot be read.
    pub fn open(
        dir: Option<&Path>,
        config: &JournalConfig,
        window: &WindowConfig,
        shard_count: usize,
        histograms: &JournalHistograms,
    ) -> Result<(Self, Recovered), JournalError> {
        let started = Instant::now();
        let health = Arc::new(tokio::sync::watch::Sender::new(0));
        let Some(dir) = dir else {
            let shards = (0..shard_count)
                .map(|i| start_shard(i, None, 1, 0, config, histograms, &health))
                .collect();
            let recovered = Recovered {
                windows: (0..shard_count).map(|_| HashMap::new()).collect(),
                report: RecoveryReport::default(),
            };
            return Ok((
                Self {
                    shards,
                    dir: None,
                    lock: Arc::default(),
                    health,
                    publisher: Arc::default(),
                },
                recovered,
            ));
        };
        let lock = lock(dir)?;
        check_meta(dir, shard_count)?;
        let acked = read_publisher(dir)?.acked;
        let opened = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..shard_count)
                .map(|i| {
                    let shard_dir = dir.join(format!("shard-{i}"));
                    scope.spawn(move || recover_shard(&shard_dir, config, window))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(Err(JournalError::Closed)))
                .collect::<Result<Vec<_>, _>>()
        })?;
        let mut report = RecoveryReport::default();
        let mut windows = Vec::with_capacity(shard_count);
        let mut shards = Vec::with_capacity(shard_count);
        for (i, (log, recovery, shard_windows)) in opened.into_iter().enumerate() {
            report.records += recovery.records;
            report.accounts += shard_windows.len() as u64;
            report.dropped.extend(recovery.dropped);
            let next = log.next_lsn();
            let acked = acked.get(i).copied().unwrap_or(0);
            let shard = start_shard(i, Some(log), next, acked, config, histograms, &health);
            shard.stats().snapshot_lsn.set(recovery.snapshot_lsn);
            shards.push(shard);
            windows.push(shard_windows);
        }
        report.took = started.elapsed();
        let journals = Self {
            shards: shards.into(),
            dir: Some(dir.to_owned()),
            lock: Arc::new(parking_lot::Mutex::new(Some(lock))),
            health,
            publisher: Arc::default(),
        };
        Ok((journals, Recovered { windows, report }))
    }

    /// Each shard's journal, by shard index.
    pub fn shards(&self) -> &[ShardJournal] {
        &self.shards
    }

    /// Whether every shard can write.
    pub fn is_healthy(&self) -> bool {
        self.shards.iter().all(ShardJournal::is_healthy)
    }

    /// Changes whenever a shard's journal turns healthy or unhealthy
    /// (then ask [`Self::is_healthy`]).
    pub fn health_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.health.subscribe()
    }

    /// Whether records are kept on disk.
    pub fn is_durable(&self) -> bool {
        self.dir.is_some()
    }

    /// Verdicts written and not yet acknowledged by the dashboard.
    pub fn backlog(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.committed().saturating_sub(s.acked()))
            .sum()
    }

    /// Verdicts given up before the publisher read them (past
    /// `journal.max_bytes`, or out of the memory tail without a disk).
    pub fn given_up(&self) -> u64 {
        self.shards.iter().map(|s| s.stats().given_up.get()).sum()
    }

    /// The publisher's id: the one persisted with the journal, or
    /// `fresh()` (persisted from now on).
    ///
    /// # Errors
    /// When the publisher file cannot be written.
    pub fn publisher_id(&self, fresh: impl FnOnce() -> String) -> Result<String, JournalError> {
        let Some(dir) = &self.dir else {
            return Ok(fresh());
        };
        let mut state = read_publisher(dir)?;
        if state.id.is_empty() {
            state.id = fresh();
            state.acked = self.shards.iter().map(ShardJournal::acked).collect();
            write_publisher(dir, &state)?;
        }
        let _ = self.publisher.set(state.id.clone());
        Ok(state.id)
    }

    /// Persists the acknowledged positions (with the publisher's id).
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn persist_acked(&self, id: &str) -> Result<(), JournalError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        if self.lock.lock().is_none() {
            // Closed: the journal may belong to someone else now.
            return Ok(());
        }
        let state = PublisherFile {
            id: id.to_owned(),
            acked: self.shards.iter().map(ShardJournal::acked).collect(),
        };
        write_publisher(dir, &state)
    }

    /// Writes what is pending and stops every writer thread; saves the
    /// acknowledged positions (a graceful stop resends nothing); lets go of
    /// the journal's lock.
    pub fn close(&self) {
        for shard in self.shards.iter() {
            shard.close();
        }
        if let Some(id) = self.publisher.get() {
            if let Err(e) = self.persist_acked(id) {
                tracing::warn!(error = %e, "acknowledged positions not saved at close");
            }
        }
        // Another process (or a restart in this one) may use it now.
        drop(self.lock.lock().take());
    }
}

fn start_shard(
    index: usize,
    log: Option<log::Log>,
    next_lsn: u64,
    acked: u64,
    config: &JournalConfig,
    histograms: &JournalHistograms,
    health: &Arc<tokio::sync::watch::Sender<u64>>,
) -> ShardJournal {
    ShardJournal::start(
        index,
        next_lsn,
        acked,
        config.tail_bytes,
        histograms.clone(),
        health.clone(),
        WriterSetup {
            log,
            sync: config.sync,
            sync_interval: Duration::from_millis(config.sync_interval_ms),
            max_bytes: config.max_bytes,
        },
    )
}

type ShardRecovery = (log::Log, log::Recovery, HashMap<Box<str>, HistoryWindow>);

/// Opens one shard's log, rebuilding its accounts' windows: the newest
/// snapshot, then the learned records after it (a transaction already in
/// its window is not learned twice).
fn recover_shard(
    dir: &Path,
    config: &JournalConfig,
    window: &WindowConfig,
) -> Result<ShardRecovery, JournalError> {
    let mut windows: HashMap<Box<str>, HistoryWindow> = HashMap::new();
    // (A shard seen for the first time has no directory yet: no snapshot;
    // the log creates it.)
    let covered = snapshot::load(dir, &mut windows, window);
    let mut undecodable = 0u64;
    let (log, mut recovery) = log::Log::open_after(
        dir,
        LogKind::Verdicts,
        config.segment_bytes,
        covered,
        |_, payload| {
            let Some(record) = VerdictRecord::decode(payload) else {
                undecodable += 1;
                return;
            };
            if !record.learned {
                return;
            }
            let account = windows.entry(record.account_id).or_default();
            if covered == 0 || account.find(&record.entry.transaction_id).is_none() {
                account.learn(window, record.entry);
            }
        },
    )?;
    if undecodable > 0 {
        tracing::warn!(dir = %dir.display(), undecodable, "journal records with a valid checksum but an unknown shape were skipped");
    }
    recovery.snapshot_lsn = covered;
    Ok((log, recovery, windows))
}

fn lock(dir: &Path) -> Result<File, JournalError> {
    std::fs::create_dir_all(dir).map_err(|source| JournalError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let path = dir.join("LOCK");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| JournalError::Io {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(JournalError::Locked { path }),
        Err(std::fs::TryLockError::Error(source)) => Err(JournalError::Io { path, source }),
    }
}

/// Checks (or writes) the journal's format and shard count.
fn check_meta(dir: &Path, shard_count: usize) -> Result<(), JournalError> {
    let path = dir.join("meta");
    let expected = format!("txmesh-journal {}\nshards {shard_count}\n", format::VERSION);
    match std::fs::read_to_string(&path) {
        Ok(found) if found == expected => Ok(()),
        Ok(found) => {
            let mut lines = found.lines();
            if lines.next() != Some(&format!("txmesh-journal {}", format::VERSION)) {
                return Err(JournalError::Foreign {
                    path,
                    fault: format!("not a txmesh journal of format version {}", format::VERSION),
                });
            }
            let shards = lines
                .next()
                .and_then(|l| l.strip_prefix("shards "))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            Err(JournalError::ShardCount {
                path,
                found: shards,
                configured: shard_count,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_atomically(&path, expected.as_bytes())
        }
        Err(source) => Err(JournalError::Io { path, source }),
    }
}

/// The publisher's id and acknowledged positions (per shard) persisted in
/// the journal at `dir` (empty when it never published).
///
/// # Errors
/// When the file exists but cannot be read.
pub fn publisher_positions(dir: &Path) -> Result<(String, Vec<u64>), JournalError> {
    let state = read_publisher(dir)?;
    Ok((state.id, state.acked))
}

fn read_publisher(dir: &Path) -> Result<PublisherFile, JournalError> {
    let path = dir.join("publisher");
    match std::fs::read(&path) {
        Ok(bytes) => parse_publisher(&bytes).ok_or_else(|| JournalError::Foreign {
            path,
            fault: "not a publisher state file".into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PublisherFile::default()),
        Err(source) => Err(JournalError::Io { path, source }),
    }
}

fn write_publisher(dir: &Path, state: &PublisherFile) -> Result<(), JournalError> {
    let acked: Vec<String> = state.acked.iter().map(u64::to_string).collect();
    let text = format!("id {}\nacked {}\n", state.id, acked.join(" "));
    write_atomically(&dir.join("publisher"), text.as_bytes())
}

/// Reads the publisher file (`id ...` and `acked ...` lines).
fn parse_publisher(bytes: &[u8]) -> Option<PublisherFile> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut state = PublisherFile::default();
    for line in text.lines() {
        if let Some(id) = line.strip_prefix("id ") {
            state.id = id.to_owned();
        } else if let Some(acked) = line.strip_prefix("acked") {
            state.acked = acked
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
        }
    }
    Some(state)
}

/// Writes `bytes` to `path` through a temporary file and a rename, synced.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), JournalError> {
    let tmp = path.with_extension("tmp");
    let io = |source| JournalError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::create(&tmp).map_err(io)?;
    std::io::Write::write_all(&mut &file, bytes).map_err(io)?;
    file.sync_data().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
#[path = "journal/tests.rs"]
mod tests;
