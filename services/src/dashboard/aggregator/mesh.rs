//! The mesh as the page gets it: each service's identity and certificate
//! expiry, its callers per service, and what it refused (from the
//! `MeshStatus` the ingress sends with its status, and the dashboard's own).

use serde::Serialize;
use txmesh_proto::v1::MeshStatus;

/// One service's place in the mesh, as the page gets it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MeshView {
    /// `dashboard` or `ingress`.
    pub component: &'static str,
    /// The publisher id of an ingress.
    pub publisher: Option<String>,
    pub spiffe_id: String,
    pub cert_not_after_unix: i64,
    pub peers: Vec<MeshPeerView>,
    pub handshake_failures: Vec<CountBy>,
    pub denials: Vec<CountBy>,
    pub gone: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MeshPeerView {
    pub service: String,
    pub spiffe_id: String,
    pub allowed: u64,
    pub denied: u64,
    pub last_seen_unix_ms: i64,
    pub cert_not_after_unix: i64,
}

/// A count by where (listener or service) and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CountBy {
    pub at: String,
    pub reason: String,
    pub count: u64,
}

impl MeshView {
    pub(crate) fn new(
        component: &'static str,
        publisher: Option<String>,
        m: &MeshStatus,
        gone: bool,
    ) -> Self {
        Self {
            component,
            publisher,
            spiffe_id: m.spiffe_id.clone(),
            cert_not_after_unix: m.cert_not_after_unix,
            peers: m
                .peers
                .iter()
                .map(|p| MeshPeerView {
                    service: p.service.clone(),
                    spiffe_id: p.spiffe_id.clone(),
                    allowed: p.allowed,
                    denied: p.denied,
                    last_seen_unix_ms: p.last_seen_unix_ms,
                    cert_not_after_unix: p.cert_not_after_unix,
                })
                .collect(),
            handshake_failures: m
                .handshake_failures
                .iter()
                .map(|h| CountBy {
                    at: h.listener.clone(),
                    reason: h.reason.clone(),
                    count: h.count,
                })
                .collect(),
            denials: m
                .denials
                .iter()
                .map(|d| CountBy {
                    at: d.service.clone(),
                    reason: d.reason.clone(),
                    count: d.count,
                })
                .collect(),
            gone,
        }
    }
}
