//! The journal's metric families: append and sync latency, bytes and
//! records written, disk use, segments, the unacknowledged backlog, write
//! errors, and what the last recovery read.

use prometheus::proto::MetricType;
use txmesh_actors::journal::{JournalHistograms, Journals, RecoveryReport, ShardJournal};

use crate::metrics::Metrics;

/// Registers the journal's families with `metrics`.
pub(super) fn register(
    metrics: &Metrics,
    journals: &Journals,
    histograms: &JournalHistograms,
    recovery: &RecoveryReport,
) {
    use MetricType::{COUNTER, GAUGE};
    metrics.register(Box::new(histograms.append_seconds.clone()));
    metrics.register(Box::new(histograms.sync_seconds.clone()));
    type Pick = fn(&ShardJournal) -> u64;
    let per_shard: [(&str, &str, MetricType, Pick); 9] = [
        ("txmesh_journal_records_total", "Records written to the journal, per shard.", COUNTER, |s| s.stats().records.get()),
        ("txmesh_journal_written_bytes_total", "Bytes written to the journal, per shard.", COUNTER, |s| s.stats().bytes.get()),
        ("txmesh_journal_write_errors_total", "Journal writes or syncs that failed (the shard refuses new work until a write succeeds).", COUNTER, |s| s.stats().write_errors.get()),
        ("txmesh_journal_disk_bytes", "Bytes of journal segments on disk, per shard.", GAUGE, |s| s.stats().disk_bytes.get()),
        ("txmesh_journal_segments", "Journal segment files, per shard.", GAUGE, |s| s.stats().segments.get()),
        ("txmesh_journal_removed_bytes_total", "Bytes of segments removed (compacted away or past actors.journal.max_bytes).", COUNTER, |s| s.stats().removed_bytes.get()),
        ("txmesh_journal_snapshot_position", "Journal position the newest window snapshot covers, per shard.", GAUGE, |s| s.stats().snapshot_lsn.get()),
        ("txmesh_journal_unacknowledged", "Verdicts journaled and not yet acknowledged by the dashboard, per shard.", GAUGE, |s| s.committed().saturating_sub(s.acked())),
        ("txmesh_journal_position", "The journal position of the last verdict written, per shard: positions continue across restarts, so its increase counts verdicts journaled whatever the process did meanwhile.", GAUGE, ShardJournal::committed),
    ];
    for (name, help, kind, pick) in per_shard {
        let j = journals.clone();
        metrics.sampled(name, help, kind, &["shard"], move || {
            j.shards()
                .iter()
                .map(|s| (vec![s.index().to_string()], pick(s) as f64))
                .collect()
        });
    }
    let j = journals.clone();
    metrics.sampled(
        "txmesh_journal_healthy",
        "1 while every shard's journal can write; 0 while writes fail (new work is refused UNAVAILABLE).",
        GAUGE,
        &[],
        move || vec![(vec![], f64::from(u8::from(j.is_healthy())))],
    );
    let (records, accounts, took) = (
        recovery.records as f64,
        recovery.accounts as f64,
        recovery.took.as_secs_f64(),
    );
    let dropped: u64 = recovery.dropped.iter().map(|d| d.2).sum();
    metrics.sampled(
        "txmesh_journal_recovery_seconds",
        "Time the last start spent rebuilding account windows from the journal.",
        GAUGE,
        &[],
        move || vec![(vec![], took)],
    );
    metrics.sampled(
        "txmesh_journal_recovered_records",
        "Journal records read at the last start.",
        GAUGE,
        &[],
        move || vec![(vec![], records)],
    );
    metrics.sampled(
        "txmesh_journal_recovered_accounts",
        "Account windows rebuilt at the last start.",
        GAUGE,
        &[],
        move || vec![(vec![], accounts)],
    );
    metrics.sampled(
        "txmesh_journal_recovery_dropped_bytes",
        "Bytes of damaged or torn journal records cut away at the last start.",
        GAUGE,
        &[],
        move || vec![(vec![], dropped as f64)],
    );
}
