//! Prometheus metrics of one service, served as text at `/metrics` on its
//! mTLS HTTPS listener (allowed: prometheus, operator). Names are
//! `txmesh_*` in base units; every labelled series exists from the start
//! (at zero), and no label ever carries an account or transaction id.
//!
//! Every service has the security metrics (authorization decisions, refused
//! handshakes by reason, certificate expiry) and build info; the ingress and
//! the dashboard add theirs with [`Metrics::register_ingress`] and
//! [`Metrics::register_dashboard`], sampled at scrape time from the
//! counters their components keep.

mod sampled;

use std::sync::{atomic::Ordering, Arc};

use prometheus::{
    proto::MetricType, Encoder, GaugeVec, Histogram, HistogramOpts, IntCounterVec, Opts, Registry,
    TextEncoder,
};
use txmesh_actors::{publisher::PublisherStats, Outbox, ScreeningStats};
use txmesh_certs::{CertStore, Decision, Service};
use txmesh_proto::v1::{Reason, TxnErrorCode};

use crate::{dashboard::broadcaster::BroadcastStats, ingress::IngressCounters};
use sampled::{Sampled, Samples};

/// Why a TLS handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    Timeout,
    NoCertificate,
    BadCertificate,
    /// TLS version or ALPN the listener does not speak.
    Protocol,
    /// The client aborted (for example, it did not trust the server).
    PeerAlert,
    Other,
}

/// The metrics of one service.
pub struct Metrics {
    registry: Registry,
    authz: IntCounterVec,
    handshake_failures: IntCounterVec,
    cert_expiry: GaugeVec,
    cert_reloads: IntCounterVec,
}

impl HandshakeFailure {
    const ALL: [HandshakeFailure; 6] = [
        HandshakeFailure::Timeout,
        HandshakeFailure::NoCertificate,
        HandshakeFailure::BadCertificate,
        HandshakeFailure::Protocol,
        HandshakeFailure::PeerAlert,
        HandshakeFailure::Other,
    ];

    fn label(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::NoCertificate => "no_certificate",
            HandshakeFailure::BadCertificate => "bad_certificate",
            HandshakeFailure::Protocol => "protocol",
            HandshakeFailure::PeerAlert => "peer_alert",
            HandshakeFailure::Other => "other",
        }
    }

    /// Classifies a failed `accept` by the rustls error inside it.
    pub fn of(error: &std::io::Error) -> Self {
        let Some(tls) = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return HandshakeFailure::Other;
        };
        match tls {
            rustls::Error::NoCertificatesPresented => HandshakeFailure::NoCertificate,
            rustls::Error::InvalidCertificate(_) => HandshakeFailure::BadCertificate,
            rustls::Error::PeerIncompatible(_) | rustls::Error::NoApplicationProtocol => {
                HandshakeFailure::Protocol
            }
            rustls::Error::AlertReceived(_) => HandshakeFailure::PeerAlert,
            _ => HandshakeFailure::Other,
        }
    }
}

fn decision_label(d: Decision) -> &'static str {
    match d {
        Decision::Allow => "allow",
        Decision::Deny => "deny",
    }
}

impl Metrics {
    /// The registry with every series of `listeners` created at zero.
    ///
    /// # Panics
    /// Never: the metric names and labels are constants known to be valid.
    pub fn new(listeners: &[&str]) -> Self {
        let registry = Registry::new();
        let authz = IntCounterVec::new(
            Opts::new(
                "txmesh_authz_decisions_total",
                "Authorization decisions by service and outcome.",
            ),
            &["service", "decision"],
        )
        .expect("valid metric");
        let handshake_failures = IntCounterVec::new(
            Opts::new(
                "txmesh_tls_handshake_failures_total",
                "Refused or abandoned TLS handshakes by listener and reason.",
            ),
            &["listener", "reason"],
        )
        .expect("valid metric");
        let cert_expiry = GaugeVec::new(
            Opts::new(
                "txmesh_cert_expiry_timestamp_seconds",
                "notAfter of the certificate each identity presents, Unix seconds.",
            ),
            &["identity"],
        )
        .expect("valid metric");
        let cert_reloads = IntCounterVec::new(
            Opts::new(
                "txmesh_cert_reloads_total",
                "Polls that found new certificate files, by result: swapped in, or refused (the last good material stays; counted on every poll until the files are fixed).",
            ),
            &["result"],
        )
        .expect("valid metric");
        for result in ["swapped", "refused"] {
            cert_reloads.with_label_values(&[result]);
        }
        registry
            .register(Box::new(cert_reloads.clone()))
            .expect("registered once");
        let build = prometheus::IntGaugeVec::new(
            Opts::new(
                "txmesh_build_info",
                "Build information; the value is always 1.",
            ),
            &["version"],
        )
        .expect("valid metric");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        registry.register(Box::new(build)).expect("registered once");
        for m in [&authz, &handshake_failures] {
            registry
                .register(Box::new(m.clone()))
                .expect("registered once");
        }
        registry
            .register(Box::new(cert_expiry.clone()))
            .expect("registered once");
        for service in [
            Service::Screen,
            Service::Publish,
            Service::DashboardUi,
            Service::Metrics,
            Service::ChaosInject,
            Service::ChaosList,
        ] {
            for decision in [Decision::Allow, Decision::Deny] {
                authz.with_label_values(&[service.name(), decision_label(decision)]);
            }
        }
        for listener in listeners {
            for reason in HandshakeFailure::ALL {
                handshake_failures.with_label_values(&[listener, reason.label()]);
            }
        }
        Self {
            registry,
            authz,
            handshake_failures,
            cert_expiry,
            cert_reloads,
        }
    }

    /// Counts an authorization decision.
    pub fn authz(&self, service: Service, decision: Decision) {
        self.authz
            .with_label_values(&[service.name(), decision_label(decision)])
            .inc();
    }

    /// Counts a refused handshake on `listener`.
    pub fn handshake_failed(&self, listener: &str, reason: HandshakeFailure) {
        self.handshake_failures
            .with_label_values(&[listener, reason.label()])
            .inc();
    }

    /// A hook for listeners whose TLS accept is not ours (actix-web's
    /// HTTPS): it counts refused client certificates on `listener`.
    pub fn reject_hook(
        self: &std::sync::Arc<Self>,
        listener: &'static str,
    ) -> txmesh_certs::RejectHook {
        let metrics = self.clone();
        std::sync::Arc::new(move |_e: &rustls::Error| {
            metrics.handshake_failed(listener, HandshakeFailure::BadCertificate);
        })
    }

    /// Records the expiry of the certificate `store` presents (call after
    /// every reload).
    /// A poll found new certificate files: swapped in, or refused.
    pub fn cert_reloaded(&self, swapped: bool) {
        let result = if swapped { "swapped" } else { "refused" };
        self.cert_reloads.with_label_values(&[result]).inc();
    }

    pub fn observe_cert(&self, store: &CertStore) {
        let id = store.spiffe_id();
        self.cert_expiry
            .with_label_values(&[id.path().trim_start_matches('/')])
            .set(store.not_after_unix() as f64);
    }

    /// The latency histogram the ingress observes (seconds; buckets from
    /// 100 µs to about 1 s).
    ///
    /// # Panics
    /// Never: the buckets and name are constants known to be valid.
    pub fn screening_latency(&self) -> Histogram {
        let buckets = prometheus::exponential_buckets(0.000_1, 2.5, 11).expect("valid buckets");
        let h = Histogram::with_opts(
            HistogramOpts::new(
                "txmesh_screening_latency_seconds",
                "Time from receipt at the ingress to the verdict.",
            )
            .buckets(buckets),
        )
        .expect("valid metric");
        self.registry
            .register(Box::new(h.clone()))
            .expect("registered once");
        h
    }

    fn sampled(
        &self,
        name: &str,
        help: &str,
        kind: MetricType,
        labels: &[&str],
        sample: impl Fn() -> Samples + Send + Sync + 'static,
    ) {
        let collector = Sampled::new(name, help, kind, labels, sample).expect("valid metric");
        self.registry
            .register(Box::new(collector))
            .expect("registered once");
    }

    /// The ingress's transactions, screening pipeline and publisher.
    pub fn register_ingress(
        &self,
        counters: &Arc<IngressCounters>,
        screening: &ScreeningStats,
        publisher: &Arc<PublisherStats>,
        outbox: &Outbox,
    ) {
        use MetricType::{COUNTER, GAUGE};
        let c = counters.clone();
        self.sampled(
            "txmesh_transactions_received_total",
            "Transactions received by the ingress.",
            COUNTER,
            &[],
            move || vec![(vec![], c.received.load(Ordering::Relaxed) as f64)],
        );
        let c = counters.clone();
        self.sampled(
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
        self.sampled(
            "txmesh_verdict_reasons_total",
            "Reasons in verdicts, by reason.",
            COUNTER,
            &["reason"],
            move || {
                (0..crate::ingress::CODES)
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
        self.sampled(
            "txmesh_transaction_errors_total",
            "Per-transaction errors, by code.",
            COUNTER,
            &["code"],
            move || {
                (0..crate::ingress::CODES)
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
        self.sampled(
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
        self.sampled(
            "txmesh_shards",
            "Shards (one actor per arbiter thread).",
            GAUGE,
            &[],
            move || vec![(vec![], s.shards.len() as f64)],
        );
        type Pick = fn(&txmesh_actors::stats::ShardStats) -> &txmesh_actors::stats::Counter;
        let per_shard: [(&str, &str, MetricType, Pick); 7] = [
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
                "Transactions refused RESOURCE_EXHAUSTED (mailbox full or order hold), per shard.",
                COUNTER,
                |s| &s.overloaded,
            ),
        ];
        for (name, help, kind, pick) in per_shard {
            let s = screening.clone();
            self.sampled(name, help, kind, &["shard"], move || {
                s.shards
                    .iter()
                    .enumerate()
                    .map(|(i, shard)| (vec![i.to_string()], pick(shard).get() as f64))
                    .collect()
            });
        }
        let (p, o) = (publisher.clone(), outbox.clone());
        self.sampled(
            "txmesh_publisher_outbox_depth",
            "Verdicts waiting in the publisher's outbox.",
            GAUGE,
            &[],
            move || vec![(vec![], p.view(&o).outbox_depth as f64)],
        );
        type PublisherPick = fn(&PublisherStats) -> &std::sync::atomic::AtomicU64;
        let publisher_counters: [(&str, &str, PublisherPick); 4] = [
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
            self.sampled(name, help, COUNTER, &[], move || {
                vec![(vec![], pick(&p).load(Ordering::Relaxed) as f64)]
            });
        }
        let o = outbox.clone();
        self.sampled(
            "txmesh_publisher_dropped_total",
            "Verdicts dropped before delivery, by reason.",
            COUNTER,
            &["reason"],
            move || vec![(vec!["outbox_full".to_owned()], o.shed_total() as f64)],
        );
        let (p, o) = (publisher.clone(), outbox.clone());
        self.sampled(
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

    /// The dashboard's browser sessions.
    pub fn register_dashboard(
        &self,
        broadcast: &Arc<BroadcastStats>,
        ingest: &Arc<crate::dashboard::IngestCounters>,
    ) {
        let i = ingest.clone();
        self.sampled(
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
        self.sampled(
            "txmesh_dashboard_duplicate_batches_total",
            "Publish batches dropped as duplicates (resent after a lost ack).",
            MetricType::COUNTER,
            &[],
            move || vec![(vec![], i.duplicate_batches.load(Ordering::Relaxed) as f64)],
        );
        let b = broadcast.clone();
        self.sampled(
            "txmesh_websocket_sessions",
            "Open browser WebSocket sessions.",
            MetricType::GAUGE,
            &[],
            move || vec![(vec![], b.get().0 as f64)],
        );
        let b = broadcast.clone();
        self.sampled(
            "txmesh_websocket_dropped_messages_total",
            "Updates dropped for slow browsers.",
            MetricType::COUNTER,
            &[],
            move || vec![(vec![], b.get().1 as f64)],
        );
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding our own registry into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_exists_at_zero_and_counts() {
        let m = Metrics::new(&["ingress-grpc"]);
        let text = m.render();
        assert!(
            text.contains("txmesh_authz_decisions_total{decision=\"deny\",service=\"screen\"} 0")
        );
        assert!(text.contains(
            "txmesh_tls_handshake_failures_total{listener=\"ingress-grpc\",reason=\"timeout\"} 0"
        ));
        m.authz(Service::Screen, Decision::Deny);
        m.handshake_failed("ingress-grpc", HandshakeFailure::BadCertificate);
        let text = m.render();
        assert!(
            text.contains("txmesh_authz_decisions_total{decision=\"deny\",service=\"screen\"} 1")
        );
        assert!(text.contains("reason=\"bad_certificate\"} 1"));
    }
}
