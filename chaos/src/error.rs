//! The one error type of txmesh-chaos.

use std::time::Duration;

/// Why a fault was not injected.
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
}
