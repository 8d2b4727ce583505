//! Prometheus metrics of one service, served as text at `/metrics` on its
//! mTLS HTTPS listener (allowed: prometheus, operator). Names are
//! `txmesh_*` in base units; every labelled series exists from the start
//! (at zero), and no label ever carries an account or transaction id.
//!
//! This module holds the security metrics: authorization decisions,
//! refused handshakes by reason, and certificate expiry.

use prometheus::{Encoder, GaugeVec, IntCounterVec, Opts, Registry, TextEncoder};
use txmesh_certs::{CertStore, Decision, Service};

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
    pub fn observe_cert(&self, store: &CertStore) {
        let id = store.spiffe_id();
        self.cert_expiry
            .with_label_values(&[id.path().trim_start_matches('/')])
            .set(store.not_after_unix() as f64);
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
