//! The one error type of the services crate.

use std::path::PathBuf;

/// Why a service could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("bad configuration at {key}: {reason}")]
    Config { key: String, reason: String },
    #[error("certificates")]
    Certs(#[from] txmesh_certs::CertError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to {target}: {reason}")]
    Connect { target: String, reason: String },
    #[error("gRPC transport")]
    Transport(#[from] tonic::transport::Error),
    #[error("gRPC call failed: {0}")]
    Status(#[from] tonic::Status),
    #[error("{what} failed: {reason}")]
    Failed { what: &'static str, reason: String },
    #[error("the {0} has stopped")]
    Stopped(&'static str),
    #[error("journal")]
    Journal(#[from] txmesh_actors::JournalError),
    #[error("I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ServiceError {
    pub(crate) fn config(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config {
            key: key.into(),
            reason: reason.into(),
        }
    }
}
