//! The dashboard's own metric families: verdicts applied, duplicate
//! batches dropped, browser sessions and updates dropped for slow browsers.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use prometheus::proto::MetricType;

use super::{aggregator::IngestCounters, broadcaster::BroadcastStats};
use crate::metrics::Metrics;

/// The dashboard's browser sessions.
pub(super) fn register(
    metrics: &Metrics,
    broadcast: &Arc<BroadcastStats>,
    ingest: &Arc<IngestCounters>,
    origin_refusals: &Arc<AtomicU64>,
) {
    let r = origin_refusals.clone();
    metrics.sampled(
        "txmesh_dashboard_origin_refusals_total",
        "WebSocket upgrades and API requests refused because they came from another origin's page (cross-site WebSocket hijacking).",
        MetricType::COUNTER,
        &[],
        move || vec![(vec![], r.load(Ordering::Relaxed) as f64)],
    );
    let i = ingest.clone();
    metrics.sampled(
        "txmesh_dashboard_verdicts_total",
        "Verdicts applied to the dashboard's totals, by status.",
        MetricType::COUNTER,
        &["status"],
        move || {
            [
                ("approved", &i.approved),
                ("flagged", &i.flagged),
                ("rejected", &i.rejected),
            ]
            .into_iter()
            .map(|(s, v)| (vec![s.to_owned()], v.load(Ordering::Relaxed) as f64))
            .collect()
        },
    );
    let i = ingest.clone();
    metrics.sampled(
        "txmesh_dashboard_duplicate_batches_total",
        "Publish batches dropped as duplicates (resent after a lost ack).",
        MetricType::COUNTER,
        &[],
        move || vec![(vec![], i.duplicate_batches.load(Ordering::Relaxed) as f64)],
    );
    let i = ingest.clone();
    metrics.sampled(
        "txmesh_dashboard_gap_verdicts_total",
        "Verdicts that never arrived: publisher journal positions skipped between batches (given up by the publisher); the totals miss them.",
        MetricType::COUNTER,
        &[],
        move || vec![(vec![], i.gap_verdicts.load(Ordering::Relaxed) as f64)],
    );
    let b = broadcast.clone();
    metrics.sampled(
        "txmesh_websocket_sessions",
        "Open browser WebSocket sessions.",
        MetricType::GAUGE,
        &[],
        move || vec![(vec![], b.get().0 as f64)],
    );
    let b = broadcast.clone();
    metrics.sampled(
        "txmesh_websocket_dropped_messages_total",
        "Updates dropped for slow browsers.",
        MetricType::COUNTER,
        &[],
        move || vec![(vec![], b.get().1 as f64)],
    );
}
