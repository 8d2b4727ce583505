//! The one error type of txmesh-chaos.

use std::time::Duration;

/// Why a fault was not injected, or an experiment not accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChaosError {
    #[error("rate {0} is not within 0..=1")]
    BadRate(f64),
    #[error("a fault needs a lease: duration must be above zero")]
    NoLease,
    #[error("lease of {asked:?} exceeds the limit of {limit:?}")]
    LeaseTooLong { asked: Duration, limit: Duration },
    #[error("blast radius {asked} of the accounts exceeds the limit of {limit}")]
    BlastRadius { asked: f64, limit: f64 },
    #[error("account share {0} is not within 0..=1")]
    BadShare(f64),
    #[error("at most {0} faults may be active at once")]
    TooMany(usize),
    #[error("unknown fault kind {0:?}")]
    UnknownKind(String),
    #[error("fault kind {0:?} needs delay_ms above zero")]
    NoDelay(String),
    #[error("{0:?} is not a gRPC status code a refusal may use (e.g. UNAVAILABLE)")]
    BadStatus(String),
    #[error("experiment {file}: {key}: {message}")]
    Experiment {
        file: String,
        key: String,
        message: String,
    },
}
