//! The door for the clients of the reconciliation service txmesh replaces:
//! `simetrik.ReconciliationService/ReconcileAndDetect` on the ingress's
//! mTLS listener, deny by default (`authz.reconcile`, by default the
//! `legacy-client` identity). Each transaction of the old contract becomes
//! a txmesh transaction ([`to_native`]), is screened like any other (the
//! same router, journal, publisher and dashboard), and is answered in the
//! old shape ([`answer`]): one response per transaction, echoing it, in the
//! order sent. The README's "Clients of the old reconciliation service"
//! has the mapping as a table.
//!
//! A stream is served one transaction at a time, as the old server did (its
//! clients send one every few seconds): the answer to one goes out before
//! the next is read, so order needs nothing more. A transaction refused for
//! a retryable reason (overload, a replica restarting) is screened again
//! after the delay the router asks, for up to [`RETRY_FOR`]; the old
//! contract has no way to say "try again", so past that the stream ends
//! with UNAVAILABLE naming the transaction rather than dropping it.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_stream::{wrappers::ReceiverStream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use txmesh_certs::{Service, SpiffeId};
use txmesh_proto::{
    simetrik::{
        self, reconciliation_response::Result as Answer,
        reconciliation_service_server::ReconciliationService, FraudAlert, FraudReason, MatchResult,
        MatchStatus, ReconciliationResponse,
    },
    v1::{txn_result::Outcome, Reason, Transaction, VerdictStatus},
};

use super::service::IngressService;
use crate::config::{LegacyAccount, LegacyConfig};

/// What the accounts of the old contract's clients are named with (then the
/// client's SPIFFE ID): how the dashboard tells their verdicts apart.
pub const ACCOUNT_PREFIX: &str = "legacy:";

/// How long a transaction refused retryably is tried again before its
/// stream ends with UNAVAILABLE.
pub const RETRY_FOR: Duration = Duration::from_secs(30);

/// `simetrik.ReconciliationService` over the ingress's screening (its
/// authorization, router and shutdown).
pub struct LegacyService {
    screen: IngressService,
    config: LegacyConfig,
}

impl LegacyService {
    pub fn new(screen: IngressService, config: LegacyConfig) -> Self {
        Self { screen, config }
    }
}

type Responses = ReceiverStream<Result<ReconciliationResponse, Status>>;

#[tonic::async_trait]
impl ReconciliationService for LegacyService {
    type ReconcileAndDetectStream = Responses;

    async fn reconcile_and_detect(
        &self,
        request: Request<Streaming<simetrik::Transaction>>,
    ) -> Result<Response<Responses>, Status> {
        let caller = self.screen.authorize(&request, Service::Reconcile)?;
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let (screen, config) = (self.screen.clone(), self.config.clone());
        let shutdown = screen.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let old = tokio::select! {
                    next = incoming.next() => match next {
                        None => return,
                        Some(Ok(old)) => old,
                        Some(Err(status)) => {
                            let why = format!("a transaction could not be read: {}", status.message());
                            let _ = tx.send(Err(Status::new(status.code(), why))).await;
                            return;
                        }
                    },
                    () = shutdown.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("the ingress is shutting down"))).await;
                        return;
                    }
                };
                let native = to_native(&old, &caller, &config);
                let response = match screen_until_decided(&screen, native).await {
                    Ok(outcome) => answer(old, &outcome),
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                if tx.send(Ok(response)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Screens `txn`, again after each retryable refusal (for up to
/// [`RETRY_FOR`]); the outcome is a verdict or a final error.
async fn screen_until_decided(
    screen: &IngressService,
    txn: Transaction,
) -> Result<Outcome, Status> {
    let until = Instant::now() + RETRY_FOR;
    loop {
        let (tx, rx) = oneshot::channel();
        screen.dispatch(vec![txn.clone()], "", move |mut results| {
            let _ = tx.send(results.pop().and_then(|r| r.outcome));
        });
        let outcome =
            rx.await.ok().flatten().ok_or_else(|| {
                Status::internal(format!("{} was not answered", txn.transaction_id))
            })?;
        match &outcome {
            Outcome::Error(e) if e.retryable => {
                if Instant::now() >= until {
                    return Err(Status::unavailable(format!(
                        "{} could not be screened within {RETRY_FOR:?}: {} ({})",
                        txn.transaction_id,
                        crate::grpc::error_code_name(e.code()),
                        e.message
                    )));
                }
                let delay = Duration::from_millis(u64::from(e.retry_after_ms.max(1)));
                tokio::time::sleep(delay).await;
            }
            _ => return Ok(outcome),
        }
    }
}

/// Why an amount of the old contract has no txmesh equivalent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmountProblem {
    NotANumber,
    Infinite,
    Negative,
    UnknownCurrency,
    /// More decimals than the currency's minor unit has.
    TooManyDecimals,
    /// Beyond an int64 of minor units.
    TooLarge,
}

/// `amount` (major units, as the old contract's double) in integer minor
/// units of `currency`, exactly: from the shortest decimal that reads back
/// as the same double (12.34, not 12.339999...), never rounded.
///
/// # Errors
/// The [`AmountProblem`].
pub fn minor_units(amount: f64, currency: &str) -> Result<i64, AmountProblem> {
    let exponent = txmesh_actors::currency::minor_unit_exponent(currency)
        .ok_or(AmountProblem::UnknownCurrency)?;
    if amount.is_nan() {
        return Err(AmountProblem::NotANumber);
    }
    if amount.is_infinite() {
        return Err(AmountProblem::Infinite);
    }
    if amount < 0.0 {
        return Err(AmountProblem::Negative);
    }
    // Display prints a finite double as its shortest round-trip decimal,
    // without an exponent.
    let text = amount.to_string();
    let (whole, fraction) = text.split_once('.').unwrap_or((&text, ""));
    let exponent = usize::from(exponent);
    if fraction.len() > exponent {
        return Err(AmountProblem::TooManyDecimals);
    }
    let digits = format!("{whole}{fraction:0<exponent$}");
    let value: i128 = digits.parse().map_err(|_| AmountProblem::TooLarge)?;
    i64::try_from(value).map_err(|_| AmountProblem::TooLarge)
}

/// The txmesh transaction for `old`, sent by `caller`. An amount with no
/// txmesh equivalent is screened as 0, which txmesh rejects
/// (INVALID_AMOUNT): the transaction is answered and counted like any
/// rejected one, never rounded into a different amount.
pub fn to_native(
    old: &simetrik::Transaction,
    caller: &SpiffeId,
    config: &LegacyConfig,
) -> Transaction {
    let account_id = match config.account {
        LegacyAccount::Caller => format!("{ACCOUNT_PREFIX}{caller}"),
        LegacyAccount::CallerCurrency => format!("{ACCOUNT_PREFIX}{caller}#{}", old.currency),
    };
    let timestamp_unix_ms = old.timestamp.as_ref().map_or(0, |t| {
        t.seconds
            .saturating_mul(1000)
            .saturating_add(i64::from(t.nanos) / 1_000_000)
    });
    Transaction {
        transaction_id: old.transaction_id.clone(),
        account_id,
        amount_minor: minor_units(old.amount, &old.currency).unwrap_or(0),
        currency: old.currency.clone(),
        timestamp_unix_ms,
        merchant_id: config.merchant_id.clone(),
        country: config.country.clone(),
        channel: 0,
    }
}

/// The old contract's answer to `old`, screened as `outcome`.
pub fn answer(old: simetrik::Transaction, outcome: &Outcome) -> ReconciliationResponse {
    let fraud = |reason: FraudReason, old| {
        Answer::Fraud(FraudAlert {
            transaction: Some(old),
            reason: reason as i32,
        })
    };
    let matched = |status: MatchStatus, old| {
        Answer::Match(MatchResult {
            transaction: Some(old),
            status: status as i32,
        })
    };
    let result = match outcome {
        Outcome::Verdict(v) => {
            let has = |r: Reason| v.reasons.contains(&(r as i32));
            if v.replayed || has(Reason::IdConflict) {
                fraud(FraudReason::Duplicate, old)
            } else {
                match v.status() {
                    VerdictStatus::Approved => matched(MatchStatus::Matched, old),
                    VerdictStatus::Flagged if has(Reason::HighAmount) => {
                        fraud(FraudReason::HighAmount, old)
                    }
                    VerdictStatus::Flagged => fraud(FraudReason::None, old),
                    VerdictStatus::Rejected | VerdictStatus::Unspecified => {
                        matched(MatchStatus::Unknown, old)
                    }
                }
            }
        }
        Outcome::Error(_) => matched(MatchStatus::Unknown, old),
    };
    ReconciliationResponse {
        result: Some(result),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_convert_exactly_or_are_refused() {
        assert_eq!(minor_units(12.5, "USD"), Ok(1250));
        assert_eq!(minor_units(12.34, "EUR"), Ok(1234));
        assert_eq!(minor_units(0.1, "GBP"), Ok(10));
        assert_eq!(minor_units(1500.0, "JPY"), Ok(1500));
        assert_eq!(minor_units(10000.01, "COP"), Ok(1_000_001));
        assert_eq!(minor_units(1.234, "BHD"), Ok(1234), "three decimals");
        assert_eq!(
            minor_units(12.345, "USD"),
            Err(AmountProblem::TooManyDecimals)
        );
        assert_eq!(minor_units(1.5, "JPY"), Err(AmountProblem::TooManyDecimals));
        assert_eq!(minor_units(f64::NAN, "USD"), Err(AmountProblem::NotANumber));
        assert_eq!(
            minor_units(f64::INFINITY, "USD"),
            Err(AmountProblem::Infinite)
        );
        assert_eq!(minor_units(-1.0, "USD"), Err(AmountProblem::Negative));
        assert_eq!(minor_units(1.0, "XYZ"), Err(AmountProblem::UnknownCurrency));
        assert_eq!(minor_units(1e17, "USD"), Err(AmountProblem::TooLarge));
        assert_eq!(minor_units(1e300, "USD"), Err(AmountProblem::TooLarge));
        assert_eq!(minor_units(9.0e16, "USD"), Ok(9_000_000_000_000_000_000));
    }
}
