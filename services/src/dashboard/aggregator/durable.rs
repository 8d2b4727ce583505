//! The dashboard's durable state: a snapshot file (totals, per-reason
//! counts, each publisher's applied positions) plus a log of every batch
//! applied since, in the journal's segment format (the same machinery as
//! the ingress's verdict journal). A batch is acknowledged only after its
//! record is written, so a dashboard killed at any moment restarts with
//! exactly what it acknowledged: the snapshot, then the log's records
//! after the snapshot's position.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use txmesh_actors::{
    config::{JournalConfig, SyncPolicy},
    journal::{
        format::{self, LogKind},
        log::Log,
    },
};

use crate::error::ServiceError;

use super::{PublisherRecord, Totals};

/// How often the snapshot is rewritten (and the log before it removed).
const SNAPSHOT_EVERY: Duration = Duration::from_secs(10);

/// What one applied batch changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Delta {
    pub(super) publisher: String,
    pub(super) journal: u32,
    /// The publisher's journal position applied up to.
    pub(super) sequence: u64,
    /// Positions missing before this batch (given up by the publisher).
    pub(super) gap: u64,
    pub(super) verdicts: u64,
    pub(super) approved: u64,
    pub(super) flagged: u64,
    pub(super) rejected: u64,
    pub(super) replayed: u64,
    /// Verdicts for clients of the old reconciliation service.
    #[serde(default)]
    pub(super) legacy: u64,
    pub(super) by_reason: Vec<(String, u64)>,
}

/// The snapshot file.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Saved {
    pub(super) totals: Totals,
    pub(super) publishers: BTreeMap<String, PublisherRecord>,
    /// The applied-batch log position the snapshot includes.
    #[serde(default)]
    pub(super) log_position: u64,
}

/// The snapshot file and the log after it.
pub(super) struct Durable {
    snapshot: PathBuf,
    log: Log,
    sync: SyncPolicy,
    sync_interval: Duration,
    last_sync: Instant,
    unsynced: bool,
    last_snapshot: Instant,
    frame: Vec<u8>,
}

impl Durable {
    /// Loads the snapshot at `snapshot` and replays the log in `log_dir`
    /// after it into `state` (with `apply`).
    pub(super) fn open(
        snapshot: &Path,
        log_dir: &Path,
        config: &JournalConfig,
        apply: impl Fn(&mut Saved, &Delta),
    ) -> Result<(Self, Saved), ServiceError> {
        let mut saved = match std::fs::read(snapshot) {
            Ok(bytes) => serde_json::from_slice::<Saved>(&bytes).map_err(|e| {
                ServiceError::config(
                    "dashboard.state_file",
                    format!("{}: {e}", snapshot.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(source) => {
                return Err(ServiceError::Io {
                    path: snapshot.to_owned(),
                    source,
                })
            }
        };
        let after = saved.log_position;
        let mut bad = 0u64;
        let (log, recovery) = Log::open(
            log_dir,
            LogKind::Applied,
            config.segment_bytes,
            |lsn, payload| {
                if lsn <= after {
                    return;
                }
                match serde_json::from_slice::<Delta>(payload) {
                    Ok(delta) => {
                        apply(&mut saved, &delta);
                        saved.log_position = lsn;
                    }
                    Err(_) => bad += 1,
                }
            },
        )?;
        for (path, offset, bytes, why) in &recovery.dropped {
            tracing::error!(path = %path.display(), offset, bytes, why, "dashboard log damage cut away: batches after it will be sent again by their publishers");
        }
        if bad > 0 {
            tracing::warn!(
                records = bad,
                "dashboard log records of an unknown shape skipped"
            );
        }
        saved.log_position = saved.log_position.max(log.next_lsn().saturating_sub(1));
        let durable = Self {
            snapshot: snapshot.to_owned(),
            log,
            sync: config.sync,
            sync_interval: Duration::from_millis(config.sync_interval_ms),
            last_sync: Instant::now(),
            unsynced: false,
            last_snapshot: Instant::now(),
            frame: Vec::new(),
        };
        Ok((durable, saved))
    }

    /// Writes `delta` (synced when the policy says so); only then may its
    /// batch be acknowledged.
    pub(super) fn append(&mut self, delta: &Delta) -> Result<u64, ServiceError> {
        let lsn = self.log.next_lsn();
        self.frame.clear();
        format::frame(&mut self.frame, lsn, |out| {
            // A plain struct of numbers and strings always serializes.
            let _ = serde_json::to_writer(out, delta);
        });
        self.log.append(lsn, &self.frame, lsn + 1)?;
        let due = self.last_sync.elapsed() >= self.sync_interval;
        if self.sync == SyncPolicy::Always || self.sync == SyncPolicy::Interval && due {
            self.sync()?;
        } else {
            self.unsynced = true;
        }
        Ok(lsn)
    }

    fn sync(&mut self) -> Result<(), ServiceError> {
        self.log.sync()?;
        self.unsynced = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Syncs when the interval policy's time has come; answers whether a
    /// periodic snapshot is due.
    pub(super) fn tick(&mut self) -> Result<bool, ServiceError> {
        if self.unsynced
            && self.sync == SyncPolicy::Interval
            && self.last_sync.elapsed() >= self.sync_interval
        {
            self.sync()?;
        }
        Ok(self.last_snapshot.elapsed() >= SNAPSHOT_EVERY)
    }

    /// Writes `saved` as the snapshot, then removes the log it covers.
    pub(super) fn snapshot(&mut self, saved: &Saved) -> Result<(), ServiceError> {
        if self.unsynced && self.sync != SyncPolicy::Never {
            self.sync()?;
        }
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| ServiceError::Io { path, source }
        };
        let tmp = self.snapshot.with_extension("tmp");
        let bytes = serde_json::to_vec_pretty(saved).map_err(|e| io(&tmp)(e.into()))?;
        std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
        if self.sync != SyncPolicy::Never {
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_data())
                .map_err(io(&tmp))?;
        }
        std::fs::rename(&tmp, &self.snapshot).map_err(io(&self.snapshot))?;
        self.log.remove_before(saved.log_position + 1);
        self.last_snapshot = Instant::now();
        Ok(())
    }
}
