//! The error types of txmesh-chaos: what a fault or an experiment was
//! refused for, and why a driver could not do an experiment's step.

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

/// Why the driver (or the runner reading what it returned) could not do a
/// step. The run goes on; the journal records the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    /// A component could not be reached, or did not answer in time.
    #[error("{component}: unreachable: {reason}")]
    Unreachable { component: String, reason: String },
    /// A component answered with a refusal or an error status.
    #[error("{component} refused: {reason}")]
    Refused { component: String, reason: String },
    /// The experiment asks for what this target cannot do.
    #[error("not possible against this target: {0}")]
    Unsupported(String),
    /// Something the run itself manages failed: the load, certificates,
    /// files.
    #[error("{what} failed: {reason}")]
    Run { what: &'static str, reason: String },
    /// A probe's metric is not exposed.
    #[error("no series {metric} on {component}")]
    NoSeries { metric: String, component: String },
}
