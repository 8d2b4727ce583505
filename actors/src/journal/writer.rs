//! One shard's journal: its account actors append records here, and they
//! are written in groups (one `write` for everything that arrived since
//! the previous group, and one sync when the policy asks), then their
//! callers are answered. A verdict is answered only after its record is
//! written.
//!
//! Who writes a group: the shard's own thread, each time it runs out of
//! work ([`ShardJournal::flush`], called as its runtime parks), so at low
//! load a verdict costs no hop to another thread; the journal's writer
//! thread, for groups that grow big while the shard stays busy, for a
//! journal whose owner does not flush, for retries and for the stop.
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

/// With an owner that flushes as it goes idle, the writer thread is woken
/// once this many records wait: a shard busy for long stretches (maximum
/// rate) then still gets its answers out in groups, written beside it.
pub(super) const OWNER_GROUP: usize = 128;

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
    /// The writing side, taken by whichever thread writes the next group
    /// (`None` once the writer thread has stopped). Lock order: `core`,
    /// then `pending`.
    core: Mutex<Option<Writer>>,
    /// The owning shard writes pending records as it goes idle
    /// ([`ShardJournal::flush_when_idle`]): the writer thread is woken
    /// only for big groups.
    owner_flushes: AtomicBool,
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
            core: Mutex::new(None),
            owner_flushes: AtomicBool::new(false),
        });
        *shared.core.lock() = Some(Writer::new(&shared, setup));
        let thread = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("journal-{index}"))
            .spawn(move || {
                let span = tracing::info_span!("journal.writer", shard = index);
                let _entered = span.enter();
                run_writer(&thread);
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
            let wake_at = if self.shared.owner_flushes.load(Ordering::Relaxed) {
                OWNER_GROUP
            } else {
                1
            };
            p.replies.len() == wake_at
        };
        if wake {
            self.shared.wake.notify_one();
        }
    }

    /// From now on the caller's thread (the shard that commits to this
    /// journal) calls [`Self::flush`] each time it runs out of work; the
    /// writer thread is no longer woken for every group. Not with `sync =
    /// "always"`: a group's fdatasync takes milliseconds, and on the
    /// writer thread the shard goes on deciding the next group meanwhile.
    pub fn flush_when_idle(&self) {
        let syncs_each_group = self
            .shared
            .core
            .lock()
            .as_ref()
            .is_some_and(|w| w.setup.sync == SyncPolicy::Always);
        if !syncs_each_group {
            self.shared.owner_flushes.store(true, Ordering::Relaxed);
        }
    }

    /// Writes the pending records on the calling thread and answers them,
    /// unless the writer thread is writing (it takes them next), a failed
    /// write waits to be retried, or the journal is stopping.
    pub fn flush(&self) {
        let Some(mut core) = self.shared.core.try_lock() else {
            return;
        };
        if let Some(writer) = core.as_mut() {
            writer.write_pending(&self.shared);
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

/// The writing side of a journal: its log and what writing it needs.
/// Whoever holds it (the writer thread, or the owning shard's thread as
/// it goes idle) writes the next group, so groups reach the log in LSN
/// order.
struct Writer {
    setup: WriterSetup,
    last_sync: Instant,
    unsynced: bool,
    /// A group whose write failed, retried (by the writer thread) before
    /// anything newer.
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

/// Takes what is pending as a group, if anything is.
fn take_group(p: &mut Pending) -> Option<Group> {
    if p.replies.is_empty() {
        return None;
    }
    // The next group starts with room for one like this (grown frame by
    // frame, it would reallocate at every doubling).
    let (bytes, replies) = (p.buf.len(), p.replies.len());
    Some(Group {
        buf: std::mem::replace(&mut p.buf, Vec::with_capacity(bytes)),
        replies: std::mem::replace(&mut p.replies, Vec::with_capacity(replies)),
        first_lsn: p.first_lsn,
        next_lsn: p.next_lsn,
    })
}

/// What the writer thread waits for before it looks at the pending
/// records again.
enum Wait {
    /// Records, or the stop.
    Work,
    /// Records, the stop, or this long (an interval sync falls due).
    AtMost(Duration),
    /// This long whatever comes (a failed write is retried), unless woken.
    Retry,
}

/// The writer thread: writes what the owning shard does not write
/// itself (big groups, a journal without an owner that flushes), retries
/// failed writes, syncs when it must, and writes what is left at the stop.
fn run_writer(shared: &Shared) {
    loop {
        let wait = match shared.core.lock().as_ref() {
            Some(writer) => writer.wait(),
            None => return,
        };
        shared.wait_for(wait);
        let mut core = shared.core.lock();
        let Some(writer) = core.as_mut() else {
            return;
        };
        let (group, stop) = writer.next_group(shared);
        if let Some(group) = group {
            writer.write(shared, group);
        }
        writer.sync_if_due(shared, false);
        if !stop {
            continue;
        }
        // Dropping the syncer stops its thread once its sync in progress
        // is done; the writer syncs last.
        writer.syncer = None;
        if writer.failed.is_none() {
            writer.sync_if_due(shared, true);
        } else {
            // Stopping with a write that keeps failing: its callers are
            // answered (as dropped, retryable) when the group goes.
            tracing::error!(
                shard = shared.index,
                "journal stopped with an unwritten group"
            );
        }
        // Nothing is written after the stop: the log closes here.
        *core = None;
        return;
    }
}

impl Shared {
    /// Blocks the writer thread until `wait` is over.
    fn wait_for(&self, wait: Wait) {
        let mut p = self.pending.lock();
        let idle = p.replies.is_empty() && !p.stop;
        match wait {
            Wait::Retry => {
                self.wake.wait_for(&mut p, RETRY_FAILED_WRITE);
            }
            Wait::AtMost(d) if idle && !d.is_zero() => {
                self.wake.wait_for(&mut p, d);
            }
            Wait::Work if idle => self.wake.wait(&mut p),
            Wait::AtMost(_) | Wait::Work => {}
        }
    }
}

impl Writer {
    fn new(shared: &Arc<Shared>, setup: WriterSetup) -> Self {
        let syncer = (setup.sync == SyncPolicy::Interval && setup.log.is_some())
            .then(|| Syncer::start(shared.clone(), setup.sync_interval))
            .flatten();
        Self {
            setup,
            last_sync: Instant::now(),
            unsynced: false,
            failed: None,
            syncer,
            sync_base: None,
        }
    }

    /// What the writer thread waits for next.
    fn wait(&self) -> Wait {
        if self.failed.is_some() {
            return Wait::Retry;
        }
        match self.sync_due_in() {
            Some(d) => Wait::AtMost(d),
            None => Wait::Work,
        }
    }

    /// Takes the pending records (behind a failed group, which goes
    /// first); also says whether the journal is stopping.
    fn next_group(&mut self, shared: &Shared) -> (Option<Group>, bool) {
        let mut p = shared.pending.lock();
        let stop = p.stop;
        let Some(mut group) = self.failed.take() else {
            return (take_group(&mut p), stop);
        };
        if !p.replies.is_empty() {
            group.buf.append(&mut p.buf);
            group.replies.append(&mut p.replies);
            group.next_lsn = p.next_lsn;
        }
        (Some(group), stop)
    }

    /// Writes the pending records on the calling thread (the owning
    /// shard's, going idle), unless a failed write waits to be retried or
    /// the journal is stopping; the writer thread is woken only when it
    /// has something to do about it (a failure to retry, a sync to time).
    fn write_pending(&mut self, shared: &Shared) {
        if self.failed.is_some() {
            return;
        }
        let group = {
            let mut p = shared.pending.lock();
            if p.stop {
                return;
            }
            take_group(&mut p)
        };
        let Some(group) = group else {
            return;
        };
        self.write(shared, group);
        if self.failed.is_some() || self.sync_due_in().is_some() {
            shared.wake.notify_one();
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

    fn write(&mut self, shared: &Shared, group: Group) {
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
        let stats = &shared.stats;
        match written {
            Ok(()) => {
                stats.observe_append(started.elapsed(), group.buf.len(), group.replies.len());
                // Without a disk there is nothing to sync (and a pending
                // sync would keep waking the writer).
                self.unsynced = self.setup.log.is_some() && self.setup.sync != SyncPolicy::Always;
                self.hand_to_syncer(shared);
                if !shared.healthy.swap(true, Ordering::Relaxed) {
                    tracing::warn!(shard = shared.index, "journal writable again");
                    shared.health.send_modify(|n| *n += 1);
                }
                let buf: Arc<[u8]> = group.buf.into();
                let last = group.next_lsn - 1;
                let evicted = shared.tail.lock().push(group.first_lsn, last, buf);
                if self.setup.log.is_none() {
                    // Without a disk, what leaves the memory is gone.
                    for (first, last) in evicted {
                        shared.give_up(first, last);
                    }
                }
                shared.committed.store(last, Ordering::Release);
                for (slot, verdict) in group.replies {
                    slot.verdict(verdict);
                }
                self.enforce_max_bytes(shared);
            }
            Err(e) => {
                stats.write_errors.inc();
                if shared.healthy.swap(false, Ordering::Relaxed) {
                    tracing::error!(shard = shared.index, error = %e, "journal write failed: refusing new work until it can write again");
                    shared.health.send_modify(|n| *n += 1);
                }
                self.failed = Some(group);
            }
        }
    }

    /// Tells the syncer there is something to sync (and, after a new
    /// segment was started, which file).
    fn hand_to_syncer(&mut self, shared: &Shared) {
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
                    shared.stats.write_errors.inc();
                    tracing::error!(shard = shared.index, error = %e, "journal sync target");
                }
            }
            self.sync_base = base;
        }
        syncer.written();
    }

    fn sync_if_due(&mut self, shared: &Shared, now: bool) {
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
                shared.stats.observe_sync(started.elapsed());
                self.unsynced = false;
                self.last_sync = Instant::now();
            }
            Err(e) => {
                shared.stats.write_errors.inc();
                tracing::error!(shard = shared.index, error = %e, "journal sync failed");
                self.last_sync = Instant::now();
            }
        }
    }

    /// Removes the oldest segments the dashboard has, and past
    /// `max_bytes` the oldest it has not (counted as given up).
    fn enforce_max_bytes(&mut self, shared: &Shared) {
        let Some(log) = &mut self.setup.log else {
            return;
        };
        let acked = shared.acked.load(Ordering::Relaxed);
        // Records in the newest snapshot and acknowledged by the dashboard
        // are needed by no one.
        let keep_from = (shared.stats.snapshot_lsn.get() + 1).min(acked + 1);
        let mut removed = log.remove_before(keep_from);
        while log.disk_bytes() > self.setup.max_bytes && log.segments().len() > 2 {
            let (first, next_base) = (log.segments()[0].base_lsn, log.segments()[1].base_lsn);
            if next_base > shared.stats.snapshot_lsn.get() + 1 {
                // Windows not yet in a snapshot: removing would forget them.
                break;
            }
            let dropped = log.remove_before(next_base);
            if dropped == 0 {
                break;
            }
            shared.give_up(first, next_base - 1);
            removed += dropped;
        }
        shared
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
