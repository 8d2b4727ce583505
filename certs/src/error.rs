//! The one error type of txmesh-certs.

use std::path::PathBuf;

/// What can go wrong while issuing, loading or checking certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read or write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("certificate generation failed")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration rejected")]
    Tls(#[from] rustls::Error),
    #[error("certificate is not a valid X.509-SVID: {0}")]
    NotSvid(String),
    #[error("invalid SPIFFE ID {id:?}: {reason}")]
    BadSpiffeId { id: String, reason: String },
    #[error("PKCS#12 export failed: {0}")]
    Pkcs12(String),
}

impl CertError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
