//! What a shard's journal counts, read by `/metrics` and `journal inspect`.

use std::time::Duration;

use crate::stats::Counter;

/// Latency histograms shared by every shard's journal of a process.
#[derive(Clone)]
pub struct JournalHistograms {
    /// Time to write one group of records (and sync it, with `always`).
    pub append_seconds: prometheus::Histogram,
    /// Time of one fdatasync.
    pub sync_seconds: prometheus::Histogram,
}

impl Default for JournalHistograms {
    fn default() -> Self {
        let buckets = vec![
            0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01,
            0.025, 0.05, 0.1, 0.25, 1.0,
        ];
        let histogram = |name: &str, help: &str| {
            prometheus::Histogram::with_opts(
                prometheus::HistogramOpts::new(name, help).buckets(buckets.clone()),
            )
            .expect("static histogram options are valid")
        };
        Self {
            append_seconds: histogram(
                "txmesh_journal_append_seconds",
                "Time to write one group of journal records (with its sync when journal.sync = always).",
            ),
            sync_seconds: histogram(
                "txmesh_journal_sync_seconds",
                "Time of one journal fdatasync.",
            ),
        }
    }
}

/// The counters of one shard's journal.
#[derive(Default)]
pub struct JournalStats {
    pub histograms: JournalHistograms,
    pub records: Counter,
    pub groups: Counter,
    pub bytes: Counter,
    pub write_errors: Counter,
    pub disk_bytes: Counter,
    pub segments: Counter,
    pub removed_bytes: Counter,
    /// Records covered by the newest snapshot (everything at or below it).
    pub snapshot_lsn: Counter,
    /// Unacknowledged verdicts given up (journal.max_bytes, or the memory
    /// tail with the journal disabled): a gap on the dashboard.
    pub given_up: Counter,
}

impl JournalStats {
    pub(super) fn observe_append(&self, took: Duration, bytes: usize, records: usize) {
        self.histograms.append_seconds.observe(took.as_secs_f64());
        self.groups.inc();
        self.bytes.add(bytes as u64);
        self.records.add(records as u64);
    }

    pub(super) fn observe_sync(&self, took: Duration) {
        self.histograms.sync_seconds.observe(took.as_secs_f64());
    }

    pub(super) fn set_disk(&self, bytes: u64, segments: usize, removed: u64) {
        self.disk_bytes.set(bytes);
        self.segments.set(segments as u64);
        self.removed_bytes.add(removed);
    }
}
