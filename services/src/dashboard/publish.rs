//! The `txmesh.v1.Dashboard` implementation: only the ingress identity may
//! publish. Each batch is applied by the Aggregator (which drops duplicate
//! sequence numbers) and acknowledged in order on the response stream.

use std::{pin::Pin, sync::Arc};

use actix::Addr;
use futures_util::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use txmesh_certs::{AuthzPolicy, Service};
use txmesh_proto::v1::{dashboard_server::Dashboard, Ack, VerdictBatch};

use super::aggregator::{Aggregator, Applied, ApplyBatch, ApplyStatus};
use crate::net::authorize;

/// Acks buffered toward a slow publisher before reading pauses.
const ACK_BUFFER: usize = 32;

pub(super) struct PublishService {
    aggregator: Addr<Aggregator>,
    policy: Arc<AuthzPolicy>,
    metrics: Arc<crate::metrics::Metrics>,
    chaos: Arc<txmesh_chaos::Registry>,
}

impl PublishService {
    pub(super) fn new(
        aggregator: Addr<Aggregator>,
        policy: Arc<AuthzPolicy>,
        metrics: Arc<crate::metrics::Metrics>,
        chaos: Arc<txmesh_chaos::Registry>,
    ) -> Self {
        Self {
            aggregator,
            policy,
            metrics,
            chaos,
        }
    }
}

/// The status an injected ingest refusal answers with, if one applies now.
fn injected_refusal(chaos: &txmesh_chaos::Registry) -> Option<Status> {
    match chaos.decide_now(txmesh_chaos::InjectionPoint::DashboardIngest, 0)? {
        txmesh_chaos::FaultKind::IngestRefusal { code } => Some(Status::new(
            tonic::Code::from_i32(code),
            "injected fault: ingest refused",
        )),
        _ => None,
    }
}

type AckStream = Pin<Box<dyn Stream<Item = Result<Ack, Status>> + Send>>;

#[tonic::async_trait]
impl Dashboard for PublishService {
    type PublishStream = AckStream;

    async fn publish(
        &self,
        request: Request<Streaming<VerdictBatch>>,
    ) -> Result<Response<Self::PublishStream>, Status> {
        let peer = authorize(&request, &self.policy, &self.metrics, Service::Publish)?;
        // An injected refusal refuses the stream at its first batch, not
        // at its opening: what that batch says of its publisher (its
        // breaker, opening on these refusals) is still shown.
        tracing::info!(%peer, "Publish stream opened");
        let mut inbound = request.into_inner();
        let aggregator = self.aggregator.clone();
        let chaos = self.chaos.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(ACK_BUFFER);
        let span = tracing::info_span!("dashboard.publish_stream", %peer);
        let stream = async move {
            loop {
                let batch = match inbound.message().await {
                    Ok(Some(batch)) => batch,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "Publish stream ended");
                        break;
                    }
                };
                if let Some(status) = injected_refusal(&chaos) {
                    // Refused unapplied: the publisher must resend it. What
                    // it says of itself (its breaker) is still shown.
                    aggregator.do_send(ApplyStatus(batch));
                    let _ = tx.send(Err(status)).await;
                    break;
                }
                let publisher_id = batch.publisher_id.clone();
                let (sequence, journal) = (batch.sequence, batch.journal);
                // Traced verdicts (sampled at txgen) end their trace here.
                let traced: Vec<tracing::Span> = batch
                    .verdicts
                    .iter()
                    .filter(|v| !v.traceparent.is_empty())
                    .map(|v| {
                        let span = tracing::info_span!(
                            "dashboard.apply_verdict",
                            sequence,
                            trace_id = tracing::field::Empty
                        );
                        crate::telemetry::continue_trace(&span, &v.traceparent);
                        span
                    })
                    .collect();
                // Acknowledged only once what the batch changed is durable.
                let ack = match aggregator.send(ApplyBatch(batch)).await {
                    // A status report is never acknowledged.
                    Ok(Ok(Applied::Status)) => continue,
                    Ok(Ok(applied)) => Ok(Ack {
                        publisher_id,
                        sequence,
                        duplicate: applied == Applied::Duplicate,
                        journal,
                    }),
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "batch not applied: its state could not be written; the publisher will send it again");
                        Err(Status::unavailable(format!(
                            "dashboard cannot record the batch: {e}"
                        )))
                    }
                    Err(_) => Err(Status::unavailable("dashboard is shutting down")),
                };
                drop(traced);
                let failed = ack.is_err();
                if tx.send(ack).await.is_err() || failed {
                    break;
                }
            }
        };
        tokio::spawn(tracing::Instrument::instrument(stream, span));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
