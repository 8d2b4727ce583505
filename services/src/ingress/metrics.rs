//! The ingress's own metric families: transactions by outcome, verdict
//! reasons, per-transaction errors, the screening latency histogram, the
//! shards' supervision counters and the publisher's state. Sampled at scrape
//! time from the counters the components keep.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use prometheus::{proto::MetricType, Histogram, HistogramOpts};
use txmesh_actors::{
    journal::{JournalHistograms, Journals, RecoveryReport},
    publisher::PublisherStats,
    ScreeningStats,
};
use txmesh_proto::v1::{Reason, TxnErrorCode};

use super::service::{IngressCounters, InputFault, CODES};
use crate::metrics::Metrics;

/// Screening latency bucket bounds, seconds: fine where the ingress
/// answers (under a few milliseconds), so the dashboard's p50/p95/p99
/// interpolate within narrow buckets, and up to 1 s for the tail.
const LATENCY_BOUNDS: [f64; 17] = [
    0.000_1, 0.000_25, 0.000_5, 0.000_75, 0.001, 0.001_5, 0.002, 0.003, 0.005, 0.007_5, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// The latency histogram the ingress observes (seconds; buckets from
/// 100 µs to 1 s).
///
/// # Panics
/// Never: the buckets and name are constants known to be valid.
pub(super) fn screening_latency(metrics: &Metrics) -> Histogram {
    let buckets = LATENCY_BOUNDS.to_vec();
    let h = Histogram::with_opts(
        HistogramOpts::new(
            "txmesh_screening_latency_seconds",
            "Time from receipt at the ingress to the verdict.",
        )
        .buckets(buckets),
    )
    .expect("valid metric");
    metrics.register(Box::new(h.clone()));
    h
}

/// Work forwarded to and from the other replicas, per transaction, the
/// handoffs between them, and this replica's partitions by state.
pub(super) fn register_forwarding(metrics: &Metrics, view: &Arc<super::ClusterView>) {
    outcome_counters(
        metrics,
        view,
        "txmesh_forwarded_transactions_total",
        "Transactions forwarded between ingress replicas: sent to their owner, failed (answered \
         with a retryable error without the owner's answer), received from a peer, refused \
         (received but not owned at the stamped epoch).",
        |s| {
            vec![
                ("sent", &s.sent),
                ("failed", &s.failed),
                ("received", &s.received),
                ("refused", &s.refused),
            ]
        },
    );
    outcome_counters(
        metrics,
        view,
        "txmesh_handoffs_total",
        "Partition handoffs between ingress replicas: sent (the new owner has the history), \
         received (taken over from the old owner), failed (an attempt to send that is tried \
         again).",
        |s| {
            vec![
                ("sent", &s.handoffs_sent),
                ("received", &s.handoffs_received),
                ("failed", &s.handoffs_failed),
            ]
        },
    );
    let v = view.clone();
    metrics.sampled(
        "txmesh_partitions",
        "Partitions of this replica by state: serving; incoming (owned under the current set, \
         waiting for its history); outgoing (history still here, owned by another replica).",
        MetricType::GAUGE,
        &["state"],
        move || {
            let status = v.status();
            let count = |ranges: &[txmesh_proto::v1::PartitionRange]| {
                ranges
                    .iter()
                    .map(|r| f64::from(r.last - r.first + 1))
                    .sum::<f64>()
            };
            vec![
                (vec!["serving".to_owned()], count(&status.owned)),
                (vec!["incoming".to_owned()], count(&status.incoming)),
                (vec!["outgoing".to_owned()], count(&status.outgoing)),
            ]
        },
    );
}

/// A counter family of `view`'s forwarding stats, one series per outcome.
fn outcome_counters(
    metrics: &Metrics,
    view: &Arc<super::ClusterView>,
    name: &str,
    help: &str,
    pick: fn(&super::ForwardStats) -> Vec<(&'static str, &AtomicU64)>,
) {
    let v = view.clone();
    metrics.sampled(name, help, MetricType::COUNTER, &["outcome"], move || {
        pick(&v.stats)
            .into_iter()
            .map(|(o, c)| (vec![o.to_owned()], c.load(Ordering::Relaxed) as f64))
            .collect()
    });
}

/// The ingress's transactions, screening pipeline and publisher.
pub(super) fn register(
    metrics: &Metrics,
    counters: &Arc<IngressCounters>,
    screening: &ScreeningStats,
    publisher: &Arc<PublisherStats>,
    journals: &Journals,
    histograms: &JournalHistograms,
    recovery: &RecoveryReport,
) {
    super::journal_metrics::register(metrics, journals, histograms, recovery);
    use MetricType::{COUNTER, GAUGE};
    let c = counters.clone();
    metrics.sampled(
        "txmesh_transactions_received_total",
        "Transactions received by the ingress.",
        COUNTER,
        &[],
        move || vec![(vec![], c.received.load(Ordering::Relaxed) as f64)],
    );
    let c = counters.clone();
    metrics.sampled(
        "txmesh_transactions_answered_total",
        "Transactions answered, by outcome.",
        COUNTER,
        &["status"],
        move || {
            [
                ("approved", &c.approved),
                ("flagged", &c.flagged),
                ("rejected", &c.rejected),
                ("error", &c.errors),
            ]
            .into_iter()
            .map(|(s, v)| (vec![s.to_owned()], v.load(Ordering::Relaxed) as f64))
            .collect()
        },
    );
    let c = counters.clone();
    metrics.sampled(
        "txmesh_verdict_reasons_total",
        "Reasons in verdicts, by reason.",
        COUNTER,
        &["reason"],
        move || {
            (0..CODES)
                .filter_map(|i| {
                    let reason = Reason::try_from(i32::try_from(i).ok()?).ok()?;
                    (reason != Reason::Unspecified).then(|| {
                        (
                            vec![crate::grpc::reason_name(reason as i32)],
                            c.reasons[i].load(Ordering::Relaxed) as f64,
                        )
                    })
                })
                .collect()
        },
    );
    let c = counters.clone();
    metrics.sampled(
        "txmesh_transaction_errors_total",
        "Per-transaction errors, by code.",
        COUNTER,
        &["code"],
        move || {
            (0..CODES)
                .filter_map(|i| {
                    let code = TxnErrorCode::try_from(i32::try_from(i).ok()?).ok()?;
                    (code != TxnErrorCode::Unspecified).then(|| {
                        let name = crate::grpc::error_code_name(code).to_lowercase();
                        (vec![name], c.error_codes[i].load(Ordering::Relaxed) as f64)
                    })
                })
                .collect()
        },
    );
    let c = counters.clone();
    metrics.sampled(
        "txmesh_screen_streams_refused_input_total",
        "Screen streams ended because a request could not be read, by fault: undecodable (INVALID_ARGUMENT) or too_large (RESOURCE_EXHAUSTED).",
        COUNTER,
        &["fault"],
        move || {
            InputFault::ALL
                .iter()
                .zip(&c.input_faults)
                .map(|(f, n)| (vec![f.label().to_owned()], n.load(Ordering::Relaxed) as f64))
                .collect()
        },
    );
    let c = counters.clone();
    metrics.sampled(
        "txmesh_screen_streams_idle_closed_total",
        "Screen streams closed with nothing read for ingress.stream_idle_timeout_ms and nothing in flight.",
        COUNTER,
        &[],
        move || vec![(vec![], c.idle_streams_closed.load(Ordering::Relaxed) as f64)],
    );
    let c = counters.clone();
    metrics.sampled(
        "txmesh_verdicts_in_flight",
        "Transactions received and not yet answered.",
        GAUGE,
        &[],
        move || {
            let answered = c.verdicts() + c.errors.load(Ordering::Relaxed);
            vec![(
                vec![],
                c.received.load(Ordering::Relaxed).saturating_sub(answered) as f64,
            )]
        },
    );
    let s = screening.clone();
    metrics.sampled(
        "txmesh_shards",
        "Shards (one actor per arbiter thread).",
        GAUGE,
        &[],
        move || vec![(vec![], s.shards.len() as f64)],
    );
    type Pick = fn(&txmesh_actors::stats::ShardStats) -> &txmesh_actors::stats::Counter;
    let per_shard: [(&str, &str, MetricType, Pick); 8] = [
        (
            "txmesh_active_accounts",
            "Live account actors, per shard.",
            GAUGE,
            |s| &s.active,
        ),
        (
            "txmesh_passivated_accounts",
            "Accounts held passivated, per shard.",
            GAUGE,
            |s| &s.passivated,
        ),
        (
            "txmesh_passivated_window_bytes",
            "Bytes the passivated accounts' windows take (chunks and index), per shard, as of the last passivation sweep.",
            GAUGE,
            |s| &s.passivated_bytes,
        ),
        (
            "txmesh_account_restarts_total",
            "Account actor restarts after a panic, per shard.",
            COUNTER,
            |s| &s.restarts,
        ),
        (
            "txmesh_account_quarantines_total",
            "Accounts quarantined past their restart intensity, per shard.",
            COUNTER,
            |s| &s.quarantines,
        ),
        (
            "txmesh_poison_messages_total",
            "Transactions that crashed their actor on every attempt, per shard.",
            COUNTER,
            |s| &s.poison,
        ),
        (
            "txmesh_passivations_total",
            "Idle accounts passivated, per shard.",
            COUNTER,
            |s| &s.passivations,
        ),
        (
            "txmesh_mailbox_full_rejections_total",
            "Transactions refused RESOURCE_EXHAUSTED because a mailbox was full, per shard (order holds answer HELD, counted in txmesh_transaction_errors_total{code=\"held\"}).",
            COUNTER,
            |s| &s.overloaded,
        ),
    ];
    for (name, help, kind, pick) in per_shard {
        let s = screening.clone();
        metrics.sampled(name, help, kind, &["shard"], move || {
            s.shards
                .iter()
                .enumerate()
                .map(|(i, shard)| (vec![i.to_string()], pick(shard).get() as f64))
                .collect()
        });
    }
    let (p, o) = (publisher.clone(), journals.clone());
    metrics.sampled(
        "txmesh_publisher_outbox_depth",
        "Verdicts journaled and not yet sent to the dashboard (the outbox is the journal).",
        GAUGE,
        &[],
        move || vec![(vec![], p.view(&o).outbox_depth as f64)],
    );
    let p = publisher.clone();
    metrics.sampled(
        "txmesh_publisher_refused",
        "1 while the dashboard refuses this publisher's identity (alert on it: verdicts wait in the outbox).",
        GAUGE,
        &[],
        move || vec![(vec![], f64::from(u8::from(p.refused.load(Ordering::Relaxed))))],
    );
    type PublisherPick = fn(&PublisherStats) -> &std::sync::atomic::AtomicU64;
    let publisher_counters: [(&str, &str, PublisherPick); 5] = [
        (
            "txmesh_publisher_refusals_total",
            "Connects and streams the dashboard refused for this identity (PERMISSION_DENIED or UNAUTHENTICATED: a configuration fault, retried only at the breaker's longest pause).",
            |p| &p.refusals,
        ),
        (
            "txmesh_publisher_batches_sent_total",
            "Batches sent to the dashboard.",
            |p| &p.batches_sent,
        ),
        (
            "txmesh_publisher_acks_total",
            "Batches acknowledged by the dashboard.",
            |p| &p.acks,
        ),
        (
            "txmesh_publisher_retries_total",
            "Publish stream failures followed by a retry.",
            |p| &p.retries,
        ),
        (
            "txmesh_publisher_breaker_transitions_total",
            "Breaker state changes.",
            |p| &p.breaker_transitions,
        ),
    ];
    for (name, help, pick) in publisher_counters {
        let p = publisher.clone();
        metrics.sampled(name, help, COUNTER, &[], move || {
            vec![(vec![], pick(&p).load(Ordering::Relaxed) as f64)]
        });
    }
    let j = journals.clone();
    metrics.sampled(
        "txmesh_publisher_dropped_total",
        "Verdicts given up before delivery, by reason (journal_full: past actors.journal.max_bytes, or out of the memory tail with the journal disabled).",
        COUNTER,
        &["reason"],
        move || vec![(vec!["journal_full".to_owned()], j.given_up() as f64)],
    );
    let (p, o) = (publisher.clone(), journals.clone());
    metrics.sampled(
        "txmesh_publisher_breaker_state",
        "1 for the breaker's current state, 0 for the others.",
        GAUGE,
        &["state"],
        move || {
            let now = p.view(&o).breaker;
            [
                ("closed", txmesh_actors::publisher::BreakerState::Closed),
                ("open", txmesh_actors::publisher::BreakerState::Open),
                (
                    "half_open",
                    txmesh_actors::publisher::BreakerState::HalfOpen,
                ),
            ]
            .into_iter()
            .map(|(name, state)| (vec![name.to_owned()], f64::from(u8::from(state == now))))
            .collect()
        },
    );
}
