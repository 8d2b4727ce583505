//! txmesh-certs: who is who on the mesh.
//!
//! Owns the certificate authority and the SPIFFE X.509-SVIDs of every
//! component (issued with rcgen into the cert-manager Secret layout
//! `DIR/NAME/{tls.crt,tls.key,ca.crt}`), the rustls server and client configs
//! every listener and client uses (TLS 1.3 only, client certificate required,
//! no resumption), the SVID checks done on every peer certificate, and the
//! deny-by-default authorization policy keyed by SPIFFE ID.
//!
//! Called by `services` (listeners, clients, `txmesh certs`) and by tests.
#![forbid(unsafe_code)]

mod authz;
mod error;
mod forge;
mod identity;
mod issue;
mod reload;
mod rotate;
mod tls;

pub use authz::{AuthzPolicy, Decision, Service};
pub use error::CertError;
pub use forge::Forgery;
pub use identity::{
    check_svid, not_after_unix, peer_spiffe_id, SpiffeId, SvidUsage, DEFAULT_TRUST_DOMAIN,
};
pub use issue::{
    CertAuthority, IssueOptions, StateLayout, COMPONENT_IDENTITIES, DEFAULT_TTL, P12_PASSWORD,
};
pub use reload::{CertStore, Reload};
pub use rotate::{identities, inspect, rotate_ca, rotate_leaves, CaStep, CertInfo};
pub use tls::{
    client_config, install_crypto_provider, server_config, server_config_with, RejectHook,
    TlsMaterial, ALPN_H2,
};
