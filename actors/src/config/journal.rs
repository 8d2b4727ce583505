//! `actors.journal`: where and how verdicts are made durable.

use serde::{Deserialize, Serialize};

use super::{duration, Problems};

/// When the journal asks the disk to persist what it wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncPolicy {
    /// fdatasync before each group of verdicts is answered: survives a
    /// power cut or kernel crash.
    Always,
    /// Written to the OS before answering (survives a killed process),
    /// fdatasync every `sync_interval_ms` (a power cut loses at most that).
    Interval,
    /// Written to the OS before answering; the OS decides when to persist.
    Never,
}

/// The verdict journal (and, through it, the publisher's outbox).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct JournalConfig {
    /// When false, verdicts are kept in memory only (up to `tail_bytes`)
    /// and a restart forgets windows and unsent verdicts.
    pub enabled: bool,
    pub sync: SyncPolicy,
    /// With `sync = "interval"`, how often the journal is synced.
    #[serde(deserialize_with = "duration::millis")]
    pub sync_interval_ms: u64,
    /// A segment file is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// Most bytes kept for verdicts the dashboard has not acknowledged;
    /// beyond it the oldest are given up (counted, shown as a gap).
    pub max_bytes: u64,
    /// Recently written verdicts kept in memory for the publisher, bytes
    /// (it reads older ones back from disk). With the journal disabled
    /// this is the whole outbox.
    pub tail_bytes: u64,
    /// How often each shard writes a snapshot of its windows, so that
    /// recovery reads the snapshot and only the records after it, and
    /// older segments can be removed once the dashboard has them.
    #[serde(deserialize_with = "duration::secs")]
    pub snapshot_interval_secs: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            sync: SyncPolicy::Interval,
            sync_interval_ms: 100,
            segment_bytes: 64 << 20,
            max_bytes: 8 << 30,
            tail_bytes: 64 << 20,
            snapshot_interval_secs: 60,
        }
    }
}

impl JournalConfig {
    pub(super) fn check(&self, p: &mut Problems) {
        p.within("journal.", |p| {
            p.at_least_one("sync_interval_ms", self.sync_interval_ms);
            p.at_least_one("snapshot_interval_secs", self.snapshot_interval_secs);
            p.bad_if(
                self.segment_bytes < 4096,
                "segment_bytes",
                "must be at least 4096",
            );
            p.bad_if(
                self.tail_bytes < 65_536,
                "tail_bytes",
                "must be at least 65536",
            );
            p.bad_if(
                self.max_bytes < self.segment_bytes.saturating_mul(2),
                "max_bytes",
                "must be at least two segments (2 x segment_bytes)",
            );
        });
    }
}
