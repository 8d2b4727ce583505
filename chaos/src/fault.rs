//! The fault catalogue: what can go wrong, and where it is injected.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ChaosError;

/// A named place in the code that consults the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InjectionPoint {
    /// An account actor evaluating a transaction.
    AccountEvaluation,
    /// A shard handing a request's part to its account actors.
    ShardDelivery,
    /// The publisher sending a batch to the dashboard.
    PublisherSend,
    /// The dashboard receiving a batch from a publisher.
    DashboardIngest,
    /// The ingress reading a request from a caller's Screen stream.
    IngressStream,
}

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum FaultKind {
    /// The evaluation panics (supervision must restart the actor).
    PanicInEvaluation,
    /// The evaluation stalls this long (the shard's thread with it).
    DelayInEvaluation { delay_ms: u64 },
    /// The account actor is stopped after answering (its supervisor must
    /// restart it with its window).
    KillAccountActor,
    /// The shard actor and every account actor it runs are stopped (their
    /// supervisors must restart them; queued transactions must survive).
    KillShard,
    /// The publisher's send fails (retries and the breaker must cope).
    PublisherSendFailure,
    /// The publisher's send is delayed this long.
    PublisherDelay { delay_ms: u64 },
    /// The dashboard refuses Publish streams and batches with this gRPC
    /// status code.
    IngestRefusal { code: i32 },
    /// The ingress ends the caller's Screen stream with `UNAVAILABLE`
    /// (callers must reconnect and resend what went unanswered).
    StreamReset,
}

/// A fault as requested: what, how often, on how many accounts, how long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultSpec {
    pub kind: FaultKind,
    /// Share of eligible events hit, 0..=1.
    pub rate: f64,
    /// Share of accounts (or shards) eligible, a hash range from 0, 0..=1;
    /// ignored by faults not about accounts or shards.
    pub account_share: f64,
    /// The lease: the fault is gone after this, whatever happens to the
    /// controller.
    pub duration: Duration,
    /// Most events the fault hits (0: no limit), e.g. "kill 5 actors".
    #[serde(default)]
    pub max_hits: u64,
}

/// The gRPC status codes a refusal may use, by name (as in the gRPC spec).
const STATUS_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The number of a gRPC status code named as in the gRPC spec.
///
/// # Errors
/// When the name is not a gRPC status code other than `OK`.
pub fn status_code(name: &str) -> Result<i32, ChaosError> {
    STATUS_CODES
        .iter()
        .position(|c| c.eq_ignore_ascii_case(name))
        .filter(|&i| i > 0)
        .and_then(|i| i32::try_from(i).ok())
        .ok_or_else(|| ChaosError::BadStatus(name.to_owned()))
}

/// The name of a gRPC status code.
pub fn status_name(code: i32) -> &'static str {
    usize::try_from(code)
        .ok()
        .and_then(|i| STATUS_CODES.get(i))
        .copied()
        .unwrap_or("UNKNOWN")
}

impl FaultKind {
    /// Where this fault is injected.
    pub fn point(self) -> InjectionPoint {
        match self {
            FaultKind::PanicInEvaluation
            | FaultKind::DelayInEvaluation { .. }
            | FaultKind::KillAccountActor => InjectionPoint::AccountEvaluation,
            FaultKind::KillShard => InjectionPoint::ShardDelivery,
            FaultKind::PublisherSendFailure | FaultKind::PublisherDelay { .. } => {
                InjectionPoint::PublisherSend
            }
            FaultKind::IngestRefusal { .. } => InjectionPoint::DashboardIngest,
            FaultKind::StreamReset => InjectionPoint::IngressStream,
        }
    }

    /// Whether the blast radius is measured in accounts (or shards).
    pub fn hits_accounts(self) -> bool {
        matches!(
            self.point(),
            InjectionPoint::AccountEvaluation | InjectionPoint::ShardDelivery
        )
    }

    /// The kind's name, as the Admin service and experiment files spell it.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::PanicInEvaluation => "panic_in_evaluation",
            FaultKind::DelayInEvaluation { .. } => "delay_in_evaluation",
            FaultKind::KillAccountActor => "kill_account_actor",
            FaultKind::KillShard => "kill_shard",
            FaultKind::PublisherSendFailure => "publisher_send_failure",
            FaultKind::PublisherDelay { .. } => "publisher_delay",
            FaultKind::IngestRefusal { .. } => "ingest_refusal",
            FaultKind::StreamReset => "stream_reset",
        }
    }

    /// The delay of the delay kinds, else 0.
    pub fn delay_ms(self) -> u64 {
        match self {
            FaultKind::DelayInEvaluation { delay_ms } | FaultKind::PublisherDelay { delay_ms } => {
                delay_ms
            }
            _ => 0,
        }
    }

    /// The status code of a refusal, else 0.
    pub fn code(self) -> i32 {
        match self {
            FaultKind::IngestRefusal { code } => code,
            _ => 0,
        }
    }

    /// A kind from its name and parameters (the inverse of [`Self::name`],
    /// [`Self::delay_ms`] and [`Self::code`]).
    ///
    /// # Errors
    /// An unknown name, a delay kind without a delay, a refusal without a
    /// valid non-OK code.
    pub fn from_parts(name: &str, delay_ms: u64, code: i32) -> Result<Self, ChaosError> {
        let kind = match name {
            "panic_in_evaluation" => FaultKind::PanicInEvaluation,
            "delay_in_evaluation" => FaultKind::DelayInEvaluation { delay_ms },
            "kill_account_actor" => FaultKind::KillAccountActor,
            "kill_shard" => FaultKind::KillShard,
            "publisher_send_failure" => FaultKind::PublisherSendFailure,
            "publisher_delay" => FaultKind::PublisherDelay { delay_ms },
            "ingest_refusal" => FaultKind::IngestRefusal { code },
            "stream_reset" => FaultKind::StreamReset,
            other => return Err(ChaosError::UnknownKind(other.to_owned())),
        };
        if matches!(
            kind,
            FaultKind::DelayInEvaluation { .. } | FaultKind::PublisherDelay { .. }
        ) && delay_ms == 0
        {
            return Err(ChaosError::NoDelay(name.to_owned()));
        }
        if let FaultKind::IngestRefusal { code } = kind {
            if !(1..=16).contains(&code) {
                return Err(ChaosError::BadStatus(code.to_string()));
            }
        }
        Ok(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names() {
        let kinds = [
            FaultKind::PanicInEvaluation,
            FaultKind::DelayInEvaluation { delay_ms: 5 },
            FaultKind::KillAccountActor,
            FaultKind::KillShard,
            FaultKind::PublisherSendFailure,
            FaultKind::PublisherDelay { delay_ms: 9 },
            FaultKind::IngestRefusal { code: 14 },
            FaultKind::StreamReset,
        ];
        for kind in kinds {
            let back = FaultKind::from_parts(kind.name(), kind.delay_ms(), kind.code());
            assert_eq!(back, Ok(kind));
        }
        assert!(matches!(
            FaultKind::from_parts("meteor_strike", 0, 0),
            Err(ChaosError::UnknownKind(_))
        ));
        assert!(FaultKind::from_parts("publisher_delay", 0, 0).is_err());
        assert!(FaultKind::from_parts("ingest_refusal", 0, 0).is_err());
    }

    #[test]
    fn status_codes_are_named_as_in_the_grpc_spec() {
        assert_eq!(status_code("UNAVAILABLE"), Ok(14));
        assert_eq!(status_code("resource_exhausted"), Ok(8));
        assert_eq!(status_name(14), "UNAVAILABLE");
        assert!(status_code("OK").is_err());
        assert!(status_code("TEAPOT").is_err());
    }
}
