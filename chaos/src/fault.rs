//! The fault catalogue: what can go wrong, and where it is injected.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A named place in the code that consults the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InjectionPoint {
    /// An account actor evaluating a transaction.
    AccountEvaluation,
    /// The publisher sending a batch to the dashboard.
    PublisherSend,
}

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum FaultKind {
    /// The evaluation panics (supervision must restart the actor).
    PanicInEvaluation,
    /// The evaluation stalls this long (the shard's thread with it).
    DelayInEvaluation { delay_ms: u64 },
    /// The publisher's send fails (retries and the breaker must cope).
    PublisherSendFailure,
    /// The publisher's send is delayed this long.
    PublisherDelay { delay_ms: u64 },
}

/// A fault as requested: what, how often, on how many accounts, how long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultSpec {
    pub kind: FaultKind,
    /// Share of eligible events hit, 0..=1.
    pub rate: f64,
    /// Share of accounts eligible (a hash range from 0), 0..=1; ignored by
    /// faults not about accounts.
    pub account_share: f64,
    /// The lease: the fault is gone after this, whatever happens to the
    /// controller.
    pub duration: Duration,
}

impl FaultKind {
    /// Where this fault is injected.
    pub fn point(self) -> InjectionPoint {
        match self {
            FaultKind::PanicInEvaluation | FaultKind::DelayInEvaluation { .. } => {
                InjectionPoint::AccountEvaluation
            }
            FaultKind::PublisherSendFailure | FaultKind::PublisherDelay { .. } => {
                InjectionPoint::PublisherSend
            }
        }
    }

    /// Whether the blast radius is measured in accounts.
    pub fn hits_accounts(self) -> bool {
        self.point() == InjectionPoint::AccountEvaluation
    }
}
