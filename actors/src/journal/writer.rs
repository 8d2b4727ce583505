//! One shard's journal: its account actors append records here, and a
//! writer thread commits them in groups (one `write` for everything that
//! arrived while the previous group was being written, and one sync when
//! the policy asks), then answers their callers. A verdict is answered only
//! after its record is written.
//!
//! A write that fails (a full disk, an unwritable directory) leaves its
//! group unanswered and is retried until it succeeds; meanwhile the
//! journal reports itself unhealthy and the router refuses new work with a
//! retryable UNAVAILABLE.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use parking_lot::{Condvar, Mutex};
use txmesh_proto::v1::{Transaction, Verdict};

use crate::{config::SyncPolicy, reply::ReplySlot};

use super::{
    format::{self, encode_answer},
    log::{Log, SyncTarget},
    stats::JournalStats,
    tail::Tail,
};

/// How long a failed write waits before it is tried again.
const RETRY_FAILED_WRITE: Duration = Duration::from_millis(200);

/// A handle to one shard's journal. Cheap to clone.
#[derive(Clone)]
pub struct ShardJournal {
    pub(super) shared: Arc<Shared>,
}

pub(super) struct Shared {
    pub(super) index: usize,
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Highest LSN written (everything up to it can be read back).
    pub(super) committed: AtomicU64,
    /// Highest LSN the dashboard acknowledged.
    pub(super) acked: AtomicU64,
    /// Highest LSN the publisher has read (what is past it and no longer
    /// kept is given up).
    pub(super) read: AtomicU64,
    healthy: AtomicBool,
    pub(super) tail: Mutex<Tail>,
    pub(super) stats: JournalStats,
    /// `None` when the journal is disabled (memory only).
    pub(super) dir: Option<std::path::PathBuf>,
    /// Bumped whenever this journal turns healthy or unhealthy.
    health: Arc<tokio::sync::watch::Sender<u64>>,
    /// A snapshot is being taken.
    pub(super) snapshotting: AtomicBool,
    /// The thread writing the latest snapshot, joined at close (the journal
    /// lets its directory go only once no snapshot is being written in it).
    pub(super) snapshot_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The writer thread, joined at close.
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    replies: Vec<(ReplySlot, Verdict)>,
    first_lsn: u64,
    next_lsn: u64,
    stop: bool,
}

/// What the writer thread needs besides the shared state.
pub(super) struct WriterSetup {
    pub(super) log: Option<Log>,
    pub(super) sync: SyncPolicy,
    pub(super) sync_interval: Duration,
    pub(super) max_bytes: u64,
}

impl ShardJournal {
    /// A journal continuing after `next_lsn - 1`, with its writer thread.
    pub(super) fn start(
        index: usize,
        next_lsn: u64,
        acked: u64,
        tail_bytes: u64,
        histograms: super::JournalHistograms,
        health: Arc<tokio::sync::watch::Sender<u64>>,
        setup: WriterSetup,
    ) -> Self {
        let dir = setup.log.as_ref().map(|l| l.dir().to_owned());
        let shared = Arc::new(Shared {
            index,
            pending: Mutex::new(Pending {
                next_lsn,
                first_lsn: next_lsn,
                ..Pending::default()
            }),
            wake: Condvar::new(),
            committed: AtomicU64::new(next_lsn - 1),
            acked: AtomicU64::new(acked.min(next_lsn - 1)),
            read: AtomicU64::new(acked.min(next_lsn - 1)),
            healthy: AtomicBool::new(true),
            tail: Mutex::new(Tail::new(tail_bytes, next_lsn)),
            stats: JournalStats {
                histograms,
                ..JournalStats::default()
            },
            dir,
            health,
            snapshotting: AtomicBool::new(false),
            snapshot_thread: Mutex::new(None),
            thread: Mutex::new(None),
        });
        let thread = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("journal-{index}"))
            .spawn(move || {
                let span = tracing::info_span!("journal.writer", shard = index);
                let _entered = span.enter();
                Writer::new(thread, setup).run();
            });
        match spawned {
            Ok(handle) => *shared.thread.lock() = Some(handle),
            Err(e) => {
                // Without its writer nothing is ever answered: say so
                // loudly; every pending slot is answered as dropped when the
                // journal goes.
                tracing::error!(shard = index, error = %e, "journal writer thread not started");
                shared.healthy.store(false, Ordering::Relaxed);
            }
        }
        Self { shared }
    }

    /// Appends the record of `verdict` (answered for `txn`; `learned` is
    /// the fingerprint the window learned it under, when it did) and
    /// answers `slot` once it is written.
    pub fn commit(
        &self,
        txn: &Transaction,
        verdict: Verdict,
        learned: Option<u64>,
        slot: ReplySlot,
    ) {
        let wake = {
            let mut p = self.shared.pending.lock();
            let lsn = p.next_lsn;
            p.next_lsn += 1;
            if p.replies.is_empty() {
                p.first_lsn = lsn;
            }
            format::frame(&mut p.buf, lsn, |out| {
                encode_answer(out, txn, &verdict, learned)
            });
            p.replies.push((slot, verdict));
            p.replies.len() == 1
        };
        if wake {
            self.shared.wake.notify_one();
        }
    }

    /// The highest LSN handed to the writer (written or not yet).
    pub fn appended(&self) -> u64 {
        self.shared.pending.lock().next_lsn - 1
    }

    /// False while writes fail: new work must be refused.
    pub fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed)
    }

    /// The highest LSN written.
    pub fn committed(&self) -> u64 {
        self.shared.committed.load(Ordering::Acquire)
    }

    /// The highest LSN the dashboard acknowledged.
    pub fn acked(&self) -> u64 {
        self.shared.acked.load(Ordering::Relaxed)
    }

    /// Records the dashboard's acknowledgement up to `lsn`.
    pub fn ack(&self, lsn: u64) {
        self.shared.acked.fetch_max(lsn, Ordering::Relaxed);
        self.shared.tail.lock().release(lsn);
    }

    /// The next position for the publisher to read (it starts after the
    /// acknowledged position and moves with [`Self::mark_read`]).
    pub fn next_to_read(&self) -> u64 {
        self.shared.read.load(Ordering::Relaxed) + 1
    }

    /// Records that the publisher has read (and holds) up to `lsn`.
    pub fn mark_read(&self, lsn: u64) {
        self.shared.read.fetch_max(lsn, Ordering::Relaxed);
    }

    /// Which shard this journal belongs to.
    pub fn index(&self) -> usize {
        self.shared.index
    }

    /// The journal's counters.
    pub fn stats(&self) -> &JournalStats {
        &self.shared.stats
    }

    /// Writes what is pending, then stops the writer thread and waits
    /// for it.
    pub fn close(&self) {
        self.shared.pending.lock().stop = true;
        self.shared.wake.notify_one();
        let threads = [
            self.shared.thread.lock().take(),
            self.shared.snapshot_thread.lock().take(),
        ];
        for thread in threads.into_iter().flatten() {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

impl Shared {
    /// Counts the records in `first..=last` the publisher has not read as
    /// given up (they are no longer kept anywhere).
    fn give_up(&self, first: u64, last: u64) {
        let read = self.read.load(Ordering::Relaxed);
        let from = first.max(read + 1);
        if last >= from {
            self.stats.given_up.add(last - from + 1);
        }
    }
}

/// The writer thread's state.
struct Writer {
    shared: Arc<Shared>,
    setup: WriterSetup,
    last_sync: Instant,
    unsynced: bool,
    /// A group whose write failed, retried before anything newer.
    failed: Option<Group>,
    /// With `sync = "interval"`: the thread that syncs, so that no write
    /// waits for a sync (`None`: the writer syncs itself).
    syncer: Option<Syncer>,
    /// The segment the syncer was last given.
    sync_base: Option<u64>,
}

struct Group {
    buf: Vec<u8>,
    replies: Vec<(ReplySlot, Verdict)>,
    first_lsn: u64,
    next_lsn: u64,
}

impl Writer {
    fn new(shared: Arc<Shared>, setup: WriterSetup) -> Self {
        let syncer = (setup.sync == SyncPolicy::Interval && setup.log.is_some())
            .then(|| Syncer::start(shared.clone(), setup.sync_interval))
            .flatten();
        Self {
            shared,
            setup,
            last_sync: Instant::now(),
            unsynced: false,
            failed: None,
            syncer,
            sync_base: None,
        }
    }

    fn run(mut self) {
        loop {
            let (group, stop) = self.next_group();
            if let Some(group) = group {
                self.write(group);
            }
            self.sync_if_due(false);
            if stop {
                // Dropping the syncer stops its thread once its sync in
                // progress is done; the writer syncs last.
                self.syncer = None;
            }
            if stop && self.failed.is_none() {
                self.sync_if_due(true);
                return;
            }
            if stop {
                // Stopping with a write that keeps failing: its callers are
                // answered (as dropped, retryable) when the group goes.
                tracing::error!(
                    shard = self.shared.index,
                    "journal stopped with an unwritten group"
                );
                return;
            }
        }
    }

    /// Waits for records (or a due sync, or a retry), then takes them.
    fn next_group(&mut self) -> (Option<Group>, bool) {
        let mut p = self.shared.pending.lock();
        loop {
            if self.failed.is_some() {
                self.shared.wake.wait_for(&mut p, RETRY_FAILED_WRITE);
                let mut group = self.failed.take();
                if let Some(g) = &mut group {
                    if !p.replies.is_empty() {
                        g.buf.append(&mut p.buf);
                        g.replies.append(&mut p.replies);
                        g.next_lsn = p.next_lsn;
                    }
                }
                return (group, p.stop);
            }
            if !p.replies.is_empty() || p.stop {
                // The next group starts with room for one like this (grown
                // frame by frame, it would reallocate at every doubling).
                let (bytes, replies) = (p.buf.len(), p.replies.len());
                let group = (!p.replies.is_empty()).then(|| Group {
                    buf: std::mem::replace(&mut p.buf, Vec::with_capacity(bytes)),
                    replies: std::mem::replace(&mut p.replies, Vec::with_capacity(replies)),
                    first_lsn: p.first_lsn,
                    next_lsn: p.next_lsn,
                });
                return (group, p.stop);
            }
            match self.sync_due_in() {
                Some(wait) if wait.is_zero() => return (None, false),
                Some(wait) => {
                    self.shared.wake.wait_for(&mut p, wait);
                }
                None => self.shared.wake.wait(&mut p),
            }
        }
    }

    /// How long until an interval sync is due (when one is pending and
    /// the writer syncs itself).
    fn sync_due_in(&self) -> Option<Duration> {
        let mine = self.syncer.is_none() && self.setup.sync == SyncPolicy::Interval;
        (self.unsynced && mine).then(|| {
            self.setup
                .sync_interval
                .saturating_sub(self.last_sync.elapsed())
        })
    }

    fn write(&mut self, group: Group) {
        let started = Instant::now();
        let written = match &mut self.setup.log {
            None => Ok(()),
            Some(log) => log
                .append(group.first_lsn, &group.buf, group.next_lsn)
                .and_then(|()| match self.setup.sync {
                    SyncPolicy::Always => log.sync(),
                    _ => Ok(()),
                }),
        };
        let stats = &self.shared.stats;
        match written {
            Ok(()) => {
                stats.observe_append(started.elapsed(), group.buf.len(), group.replies.len());
                // Without a disk there is nothing to sync (and a pending
                // sync would keep waking the writer).
                self.unsynced = self.setup.log.is_some() && self.setup.sync != SyncPolicy::Always;
                self.hand_to_syncer();
                if !self.shared.healthy.swap(true, Ordering::Relaxed) {
                    tracing::warn!(shard = self.shared.index, "journal writable again");
                    self.shared.health.send_modify(|n| *n += 1);
                }
                let buf: Arc<[u8]> = group.buf.into();
                let last = group.next_lsn - 1;
                let evicted = self.shared.tail.lock().push(group.first_lsn, last, buf);
                if self.setup.log.is_none() {
                    // Without a disk, what leaves the memory is gone.
                    for (first, last) in evicted {
                        self.shared.give_up(first, last);
                    }
                }
                self.shared.committed.store(last, Ordering::Release);
                for (slot, verdict) in group.replies {
                    slot.verdict(verdict);
                }
                self.enforce_max_bytes();
            }
            Err(e) => {
                stats.write_errors.inc();
                if self.shared.healthy.swap(false, Ordering::Relaxed) {
                    tracing::error!(shard = self.shared.index, error = %e, "journal write failed: refusing new work until it can write again");
                    self.shared.health.send_modify(|n| *n += 1);
                }
                self.failed = Some(group);
            }
        }
    }

    /// Tells the syncer there is something to sync (and, after a new
    /// segment was started, which file).
    fn hand_to_syncer(&mut self) {
        let (Some(syncer), Some(log)) = (&self.syncer, &mut self.setup.log) else {
            return;
        };
        let base = log.active_base();
        if base != self.sync_base {
            match log.sync_target() {
                Ok(Some(target)) => syncer.retarget(target),
                Ok(None) => {}
                Err(e) => {
                    // The writer syncs once more when it stops; until
                    // then the previous segment's file is synced.
                    self.shared.stats.write_errors.inc();
                    tracing::error!(shard = self.shared.index, error = %e, "journal sync target");
                }
            }
            self.sync_base = base;
        }
        syncer.written();
    }

    fn sync_if_due(&mut self, now: bool) {
        let due = self.sync_due_in().is_some_and(|w| w.is_zero());
        if !(self.unsynced && (due || now)) {
            return;
        }
        let Some(log) = &mut self.setup.log else {
            return;
        };
        let started = Instant::now();
        match log.sync() {
            Ok(()) => {
                self.shared.stats.observe_sync(started.elapsed());
                self.unsynced = false;
                self.last_sync = Instant::now();
            }
            Err(e) => {
                self.shared.stats.write_errors.inc();
                tracing::error!(shard = self.shared.index, error = %e, "journal sync failed");
                self.last_sync = Instant::now();
            }
        }
    }

    /// Removes the oldest segments the dashboard has, and past
    /// `max_bytes` the oldest it has not (counted as given up).
    fn enforce_max_bytes(&mut self) {
        let Some(log) = &mut self.setup.log else {
            return;
        };
        let acked = self.shared.acked.load(Ordering::Relaxed);
        // Records in the newest snapshot and acknowledged by the dashboard
        // are needed by no one.
        let keep_from = (self.shared.stats.snapshot_lsn.get() + 1).min(acked + 1);
        let mut removed = log.remove_before(keep_from);
        while log.disk_bytes() > self.setup.max_bytes && log.segments().len() > 2 {
            let (first, next_base) = (log.segments()[0].base_lsn, log.segments()[1].base_lsn);
            if next_base > self.shared.stats.snapshot_lsn.get() + 1 {
                // Windows not yet in a snapshot: removing would forget them.
                break;
            }
            let dropped = log.remove_before(next_base);
            if dropped == 0 {
                break;
            }
            self.shared.give_up(first, next_base - 1);
            removed += dropped;
        }
        self.shared
            .stats
            .set_disk(log.disk_bytes(), log.segments().len(), removed);
    }
}

/// Syncs a journal every `sync_interval` on its own thread when something
/// was written since the last sync (`sync = "interval"`): a sync takes
/// milliseconds, and a writer that syncs itself answers nothing meanwhile.
struct Syncer {
    state: Arc<SyncState>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct SyncState {
    target: Mutex<Option<SyncTarget>>,
    dirty: AtomicBool,
    stop: Mutex<bool>,
    wake: Condvar,
}

impl Syncer {
    /// `None` when the thread cannot be started (the writer syncs).
    fn start(shared: Arc<Shared>, every: Duration) -> Option<Self> {
        let state = Arc::new(SyncState {
            target: Mutex::new(None),
            dirty: AtomicBool::new(false),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        let mine = state.clone();
        let index = shared.index;
        let spawned = std::thread::Builder::new()
            .name(format!("journal-sync-{index}"))
            .spawn(move || sync_every(&mine, &shared, every));
        match spawned {
            Ok(thread) => Some(Self {
                state,
                thread: Some(thread),
            }),
            Err(e) => {
                tracing::warn!(shard = index, error = %e, "journal sync thread not started: the writer syncs");
                None
            }
        }
    }

    fn retarget(&self, target: SyncTarget) {
        *self.state.target.lock() = Some(target);
    }

    fn written(&self) {
        self.state.dirty.store(true, Ordering::Release);
    }
}

/// Stops the thread once its sync in progress is done.
impl Drop for Syncer {
    fn drop(&mut self) {
        *self.state.stop.lock() = true;
        self.state.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn sync_every(state: &SyncState, shared: &Shared, every: Duration) {
    loop {
        {
            let mut stop = state.stop.lock();
            if !*stop {
                state.wake.wait_for(&mut stop, every);
            }
            if *stop {
                return;
            }
        }
        if !state.dirty.swap(false, Ordering::AcqRel) {
            continue;
        }
        let mut target = state.target.lock();
        let Some(target) = target.as_mut() else {
            continue;
        };
        let started = Instant::now();
        match target.sync() {
            Ok(()) => shared.stats.observe_sync(started.elapsed()),
            Err(e) => {
                shared.stats.write_errors.inc();
                tracing::error!(shard = shared.index, error = %e, "journal sync failed");
            }
        }
    }
}
