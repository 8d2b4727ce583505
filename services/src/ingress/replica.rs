//! `txmesh.v1.Replica`: the service other replicas forward work to
//! (authz entry `forward`, identity `ingress`). Each request's transactions
//! are screened here if this replica owns their partitions at the stamped
//! epoch and answered WRONG_OWNER otherwise (see
//! `ShardRouter::screen_forwarded`); nothing is forwarded a second time.
//! Requests are handed to the router in the order read, so the order a
//! peer sent an account's transactions in is the order they are screened.
//! The same service takes handoffs of partitions from their old owners
//! (see [`super::handoff`]) and serves this replica's map to peers that
//! start without one.

use std::{
    pin::Pin,
    sync::{atomic::Ordering, Arc, OnceLock},
    time::Instant,
};

use futures_util::{Stream, StreamExt};
use tokio::sync::Semaphore;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use txmesh_actors::{ActorError, ShardRouter};
use txmesh_certs::{AuthzPolicy, Service};
use txmesh_proto::v1::{
    replica_server, txn_result::Outcome, ForwardRequest, ForwardResponse, HandoffAck, HandoffChunk,
    PartitionMap, PartitionMapRequest, TxnErrorCode, TxnResult,
};

use super::cluster::ClusterView;
use crate::{metrics::Metrics, net::authorize};

/// The Replica service of one ingress.
#[derive(Clone)]
pub(crate) struct ReplicaService {
    /// Set once the journal is recovered (until then: retryable UNAVAILABLE).
    router: Arc<OnceLock<ShardRouter>>,
    policy: Arc<AuthzPolicy>,
    metrics: Arc<Metrics>,
    view: Arc<ClusterView>,
    /// Requests per stream between "read" and "answered".
    max_in_flight: usize,
    shutdown: CancellationToken,
}

type Answers = Pin<Box<dyn Stream<Item = Result<ForwardResponse, Status>> + Send>>;

impl ReplicaService {
    pub(crate) fn new(
        router: Arc<OnceLock<ShardRouter>>,
        policy: Arc<AuthzPolicy>,
        metrics: Arc<Metrics>,
        view: Arc<ClusterView>,
        max_in_flight: usize,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            router,
            policy,
            metrics,
            view,
            max_in_flight,
            shutdown,
        }
    }

    /// Screens one forwarded request; `deliver` gets its response.
    fn dispatch(
        &self,
        request: ForwardRequest,
        deliver: impl FnOnce(ForwardResponse) + Send + 'static,
    ) {
        let stats = &self.view.stats;
        let request_id = request.request_id;
        stats
            .received
            .fetch_add(request.transactions.len() as u64, Ordering::Relaxed);
        let txns: Vec<_> = request
            .transactions
            .into_iter()
            // A forwarded entry without a transaction is screened as an
            // empty one (REJECTED), so results stay aligned.
            .map(|f| (f.transaction.unwrap_or_default(), f.epoch))
            .collect();
        let Some(router) = self.router.get() else {
            let results = txns
                .iter()
                .map(|(t, _)| TxnResult {
                    transaction_id: t.transaction_id.clone(),
                    outcome: Some(Outcome::Error(ActorError::Recovering.to_txn_error())),
                })
                .collect();
            deliver(ForwardResponse {
                request_id,
                results,
            });
            return;
        };
        let trace = Some(request.traceparent)
            .filter(|t| !t.is_empty())
            .map(Arc::from);
        let view = self.view.clone();
        router.screen_forwarded(txns, Instant::now(), trace, move |results| {
            let refused = results
                .iter()
                .filter(|r| {
                    matches!(&r.outcome, Some(Outcome::Error(e)) if e.code() == TxnErrorCode::WrongOwner)
                })
                .count();
            view.stats
                .refused
                .fetch_add(refused as u64, Ordering::Relaxed);
            deliver(ForwardResponse { request_id, results });
        });
    }
}

#[tonic::async_trait]
impl replica_server::Replica for ReplicaService {
    type ForwardStream = Answers;

    async fn handoff(
        &self,
        request: Request<Streaming<HandoffChunk>>,
    ) -> Result<Response<HandoffAck>, Status> {
        let peer = authorize(&request, &self.policy, &self.metrics, Service::Forward)?;
        let Some(router) = self.router.get() else {
            return Err(Status::unavailable(
                "this replica is recovering its journal: try the handoff again shortly",
            ));
        };
        tracing::info!(%peer, "Handoff opened");
        super::handoff::receive(&self.view, router, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_partition_map(
        &self,
        request: Request<PartitionMapRequest>,
    ) -> Result<Response<PartitionMap>, Status> {
        authorize(&request, &self.policy, &self.metrics, Service::Forward)?;
        Ok(Response::new(self.view.served()))
    }

    async fn forward(
        &self,
        request: Request<Streaming<ForwardRequest>>,
    ) -> Result<Response<Self::ForwardStream>, Status> {
        let peer = authorize(&request, &self.policy, &self.metrics, Service::Forward)?;
        tracing::info!(%peer, "Forward stream opened");
        let mut inbound = request.into_inner();
        let permits = Arc::new(Semaphore::new(self.max_in_flight));
        // A permit is released only when its response leaves the channel,
        // so `try_send` always finds room.
        let (tx, rx) = tokio::sync::mpsc::channel(self.max_in_flight);
        let this = self.clone();
        let task = async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                // On shutdown nothing more is read; what was read is
                // answered, then the stream ends and the peer answers its
                // callers for what it had not yet sent.
                let message = tokio::select! {
                    message = inbound.message() => message,
                    () = this.shutdown.cancelled() => break,
                };
                match message {
                    Ok(Some(request)) => {
                        let tx = tx.clone();
                        this.dispatch(request, move |response| {
                            let _ = tx.try_send((response, permit));
                        });
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::info!(%status, "Forward stream ended by the peer");
                        break;
                    }
                }
            }
        };
        tokio::spawn(tracing::Instrument::instrument(
            task,
            tracing::info_span!("ingress.forward_stream"),
        ));
        let out = ReceiverStream::new(rx).map(|(response, _permit)| Ok(response));
        Ok(Response::new(Box::pin(out)))
    }
}
