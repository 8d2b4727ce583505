//! Prometheus metrics of one service, served as text at `/metrics` on its
//! mTLS HTTPS listener (allowed: prometheus, operator). Names are
//! `txmesh_*` in base units; every labelled series exists from the start
//! (at zero), and no label ever carries an account or transaction id.
//!
//! This module owns what every service has: the security metrics
//! (authorization decisions, refused handshakes by reason, certificate
//! expiry), build info and the registry. Each service registers its own
//! families beside its code (`ingress/metrics.rs`, `dashboard/metrics.rs`),
//! sampled at scrape time from the counters its components keep; nothing
//! here imports a service.

mod sampled;

use prometheus::{
    core::Collector, proto::MetricType, Encoder, GaugeVec, IntCounterVec, Opts, Registry,
    TextEncoder,
};
use txmesh_certs::{CertStore, Decision, Service, SpiffeId};

use sampled::Sampled;
pub(crate) use sampled::Samples;

/// At most this many (service, client identity) pairs are remembered for
/// the mesh view; a flood of foreign identities cannot grow it further.
const MAX_PEERS: usize = 64;

/// What the mesh view remembers of one client identity of one service.
#[derive(Debug, Default, Clone, Copy)]
struct PeerCounts {
    allowed: u64,
    denied: u64,
    last_seen_unix_ms: i64,
    cert_not_after_unix: i64,
}

/// This service's place in the mesh (see [`Metrics::mesh`]).
#[derive(Debug, Default)]
struct MeshBook {
    spiffe_id: String,
    cert_not_after_unix: i64,
    peers: std::collections::BTreeMap<(&'static str, String), PeerCounts>,
    denials: std::collections::BTreeMap<(&'static str, &'static str), u64>,
}

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
    connections_refused: IntCounterVec,
    mesh: std::sync::Mutex<MeshBook>,
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
            Service::Forward,
            Service::Reconcile,
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
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "txmesh_connections_refused_total",
                "Verified mTLS connections closed at once, by listener and reason (identity_limit: the client identity already holds connections.max_per_identity).",
            ),
            &["listener", "reason"],
        )
        .expect("valid metric");
        for listener in listeners {
            connections_refused.with_label_values(&[listener, "identity_limit"]);
        }
        registry
            .register(Box::new(connections_refused.clone()))
            .expect("registered once");
        Self {
            registry,
            authz,
            handshake_failures,
            cert_expiry,
            cert_reloads,
            connections_refused,
            mesh: std::sync::Mutex::default(),
        }
    }

    /// Counts an authorization decision about `peer` and the notAfter of
    /// its certificate (`None`: the caller presented no usable identity),
    /// for `/metrics` and the mesh view.
    pub fn authz(
        &self,
        service: Service,
        decision: Decision,
        peer: Option<(&SpiffeId, Option<i64>)>,
    ) {
        self.authz
            .with_label_values(&[service.name(), decision_label(decision)])
            .inc();
        let mut book = self
            .mesh
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if decision == Decision::Deny {
            let reason = if peer.is_some() {
                "not_allowed"
            } else {
                "no_identity"
            };
            *book.denials.entry((service.name(), reason)).or_default() += 1;
        }
        let Some((peer, not_after)) = peer else {
            return;
        };
        let key = (service.name(), peer.to_string());
        if book.peers.len() >= MAX_PEERS && !book.peers.contains_key(&key) {
            return;
        }
        let row = book.peers.entry(key).or_default();
        match decision {
            Decision::Allow => row.allowed += 1,
            Decision::Deny => row.denied += 1,
        }
        row.last_seen_unix_ms = txmesh_actors::clock::system_unix_ms();
        if let Some(not_after) = not_after {
            row.cert_not_after_unix = not_after;
        }
    }

    /// This service's view of the mesh: its identity and certificate
    /// expiry, every client identity that called it (per service), the
    /// handshakes its listeners refused and the calls it denied, by reason.
    pub fn mesh(&self) -> txmesh_proto::v1::MeshStatus {
        use txmesh_proto::v1::{AuthzDenials, HandshakeFailures, MeshPeer, MeshStatus};
        let book = self
            .mesh
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut handshake_failures = Vec::new();
        for family in self.handshake_failures.collect() {
            for m in family.get_metric() {
                let label = |name: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_owned())
                        .unwrap_or_default()
                };
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let count = m.get_counter().get_value() as u64;
                if count > 0 {
                    handshake_failures.push(HandshakeFailures {
                        listener: label("listener"),
                        reason: label("reason"),
                        count,
                    });
                }
            }
        }
        MeshStatus {
            spiffe_id: book.spiffe_id.clone(),
            cert_not_after_unix: book.cert_not_after_unix,
            peers: book
                .peers
                .iter()
                .map(|((service, id), c)| MeshPeer {
                    service: (*service).to_owned(),
                    spiffe_id: id.clone(),
                    allowed: c.allowed,
                    denied: c.denied,
                    last_seen_unix_ms: c.last_seen_unix_ms,
                    cert_not_after_unix: c.cert_not_after_unix,
                })
                .collect(),
            handshake_failures,
            denials: book
                .denials
                .iter()
                .map(|((service, reason), count)| AuthzDenials {
                    service: (*service).to_owned(),
                    reason: (*reason).to_owned(),
                    count: *count,
                })
                .collect(),
        }
    }

    /// Counts a verified connection closed at once on `listener`.
    pub fn connection_refused(&self, listener: &str, reason: &str) {
        self.connections_refused
            .with_label_values(&[listener, reason])
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
        let mut book = self
            .mesh
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        book.spiffe_id = id.to_string();
        book.cert_not_after_unix = store.not_after_unix();
    }

    /// Registers a service's own collector (a histogram, say).
    ///
    /// # Panics
    /// When the same metric is registered twice (a defect in the caller).
    pub(crate) fn register(&self, collector: Box<dyn Collector>) {
        self.registry.register(collector).expect("registered once");
    }

    /// Registers a collector whose samples are read at scrape time.
    ///
    /// # Panics
    /// When `name` is registered twice or is not a valid metric name (a
    /// defect in the caller's constants).
    pub(crate) fn sampled(
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
        m.authz(Service::Screen, Decision::Deny, None);
        m.handshake_failed("ingress-grpc", HandshakeFailure::BadCertificate);
        let text = m.render();
        assert!(
            text.contains("txmesh_authz_decisions_total{decision=\"deny\",service=\"screen\"} 1")
        );
        assert!(text.contains("reason=\"bad_certificate\"} 1"));
    }
}
