//! The `txmesh.v1.Ingress` implementation: authorizes the caller, then hands
//! each request batch to the shard router. Each completed batch goes back on
//! the caller's stream; its verdicts are already in the journal, which the
//! publisher reads.
//!
//! Backpressure: a stream may have `max_in_flight` batches between "read
//! from the client" and "written back"; past that the handler stops reading,
//! which HTTP/2 flow control turns into backpressure on the client.
//!
//! A stream never ends silently: a request that cannot be read (bytes that
//! do not decode as a `ScreenRequest`, or a message over the size limit)
//! ends the stream with INVALID_ARGUMENT or RESOURCE_EXHAUSTED saying why,
//! after every request read before it has been answered.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use futures_util::{Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};
use txmesh_actors::{ActorError, ShardRouter};
use txmesh_certs::{AuthzPolicy, Service};
use txmesh_proto::v1::{
    ingress_server::Ingress, txn_result::Outcome, PartitionMap, PartitionMapRequest, ScreenRequest,
    ScreenResponse, Transaction, TxnResult, VerdictStatus,
};

use crate::net::authorize;

/// Reason and error codes counted per code (proto numbers below this).
pub const CODES: usize = 32;

/// What the ingress answered, by outcome.
#[derive(Debug)]
pub struct IngressCounters {
    pub received: AtomicU64,
    pub approved: AtomicU64,
    pub flagged: AtomicU64,
    pub rejected: AtomicU64,
    pub errors: AtomicU64,
    /// Verdict reasons, by proto number.
    pub reasons: [AtomicU64; CODES],
    /// Per-transaction errors, by `TxnErrorCode` number.
    pub error_codes: [AtomicU64; CODES],
    /// Screen streams ended because a request could not be read, by
    /// [`InputFault`].
    pub input_faults: [AtomicU64; InputFault::ALL.len()],
    /// Screen streams closed for idling (`ingress.stream_idle_timeout_ms`).
    pub idle_streams_closed: AtomicU64,
    /// Time from receipt to verdict, seconds.
    latency: prometheus::Histogram,
}

impl IngressCounters {
    /// Counters observing screening latency into `latency`.
    pub fn new(latency: prometheus::Histogram) -> Self {
        Self {
            received: AtomicU64::new(0),
            approved: AtomicU64::new(0),
            flagged: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            reasons: std::array::from_fn(|_| AtomicU64::new(0)),
            error_codes: std::array::from_fn(|_| AtomicU64::new(0)),
            input_faults: std::array::from_fn(|_| AtomicU64::new(0)),
            idle_streams_closed: AtomicU64::new(0),
            latency,
        }
    }

    /// Verdicts answered (every status).
    pub fn verdicts(&self) -> u64 {
        self.approved.load(Ordering::Relaxed)
            + self.flagged.load(Ordering::Relaxed)
            + self.rejected.load(Ordering::Relaxed)
    }

    /// Adds what the dashboard shows of this ingress to a publisher
    /// status: the latency histogram and the answers (errors included).
    pub fn fill_status(&self, status: &mut txmesh_proto::v1::PublisherStatus) {
        use prometheus::core::Collector;
        let errors = self.errors.load(Ordering::Relaxed);
        status.answers = Some(txmesh_proto::v1::AnswerTotals {
            answered: self.verdicts() + errors,
            errors,
        });
        let Some(family) = self.latency.collect().into_iter().next() else {
            return;
        };
        let Some(h) = family.get_metric().first().map(|m| m.get_histogram()) else {
            return;
        };
        status.latency = Some(txmesh_proto::v1::LatencyHistogram {
            bounds_seconds: h.get_bucket().iter().map(|b| b.upper_bound()).collect(),
            cumulative: h
                .get_bucket()
                .iter()
                .map(|b| b.cumulative_count())
                .collect(),
            count: h.get_sample_count(),
            sum_seconds: h.get_sample_sum(),
        });
    }

    fn count(&self, results: &[TxnResult]) {
        let (mut a, mut f, mut r, mut e) = (0, 0, 0, 0);
        let latency = self.latency.local();
        let bump = |table: &[AtomicU64; CODES], code: i32| {
            if let Some(c) = usize::try_from(code).ok().and_then(|i| table.get(i)) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        };
        for result in results {
            match &result.outcome {
                Some(Outcome::Verdict(v)) => {
                    match v.status() {
                        VerdictStatus::Approved => a += 1,
                        VerdictStatus::Flagged => f += 1,
                        _ => r += 1,
                    }
                    for reason in &v.reasons {
                        bump(&self.reasons, *reason);
                    }
                    if !v.replayed {
                        latency.observe(v.processing_time_us as f64 / 1e6);
                    }
                }
                Some(Outcome::Error(err)) => {
                    e += 1;
                    bump(&self.error_codes, err.code);
                }
                None => e += 1,
            }
        }
        latency.flush();
        self.approved.fetch_add(a, Ordering::Relaxed);
        self.flagged.fetch_add(f, Ordering::Relaxed);
        self.rejected.fetch_add(r, Ordering::Relaxed);
        self.errors.fetch_add(e, Ordering::Relaxed);
    }
}

/// Why a Screen stream's next request could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFault {
    /// The bytes are not a `ScreenRequest` (a truncated length, an
    /// over-long varint, a wrong wire type, a frame cut short).
    Undecodable,
    /// The message is larger than `ingress.max_message_bytes`.
    TooLarge,
}

impl InputFault {
    /// Every fault, in counter order.
    pub const ALL: [InputFault; 2] = [InputFault::Undecodable, InputFault::TooLarge];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            InputFault::Undecodable => "undecodable",
            InputFault::TooLarge => "too_large",
        }
    }

    /// Classifies the error tonic's decoder returned for a stream. The
    /// decoder's own errors carry no source; an error from the transport
    /// below (the client reset the stream, the connection broke) carries
    /// the h2 or I/O error it came from, and there is no one left to tell.
    fn of(status: &Status) -> Option<Self> {
        if std::error::Error::source(status).is_some() {
            return None;
        }
        match status.code() {
            Code::OutOfRange | Code::ResourceExhausted => Some(InputFault::TooLarge),
            Code::Internal => Some(InputFault::Undecodable),
            _ => None,
        }
    }
}

/// The limits a Screen stream enforces.
#[derive(Debug, Clone, Copy)]
pub struct ScreenLimits {
    /// Batches between "read" and "written back" per stream.
    pub max_in_flight: usize,
    /// `ingress.max_message_bytes`, named in the error for a larger message.
    pub max_message_bytes: usize,
    /// `actors.shards.max_batch`, named in the same error.
    pub max_batch: usize,
    /// A stream with nothing read for this long and nothing in flight is
    /// closed (`ingress.stream_idle_timeout_ms`).
    pub idle_timeout: std::time::Duration,
}

/// Why a Screen stream's read loop stops reading.
enum Ended {
    /// The client's stream failed or could not be decoded.
    Read(Status),
    /// Nothing read for the idle timeout, nothing in flight.
    Idle,
}

impl ScreenLimits {
    /// The status that ends a stream whose request number `index` (from 1)
    /// could not be read.
    fn status(&self, fault: InputFault, index: u64, cause: &Status) -> Status {
        match fault {
            InputFault::Undecodable => Status::invalid_argument(format!(
                "request {index} on this stream is not a valid txmesh.v1.ScreenRequest ({}); \
                 every request before it was answered, nothing after it was read",
                cause.message()
            )),
            InputFault::TooLarge => Status::resource_exhausted(format!(
                "request {index} on this stream is larger than the ingress's message size limit \
                 of {} bytes (ingress.max_message_bytes; {}); send at most {} transactions \
                 (actors.shards.max_batch) per request, in smaller requests if they are large; \
                 every request before it was answered",
                self.max_message_bytes,
                cause.message(),
                self.max_batch
            )),
        }
    }
}

/// The gRPC service. Clones share the router and counters.
#[derive(Clone)]
pub struct IngressService {
    /// Set once the journal is recovered; until then every transaction is
    /// answered with a retryable UNAVAILABLE (health says NOT_SERVING).
    router: Arc<std::sync::OnceLock<ShardRouter>>,
    policy: Arc<AuthzPolicy>,
    metrics: Arc<crate::metrics::Metrics>,
    counters: Arc<IngressCounters>,
    limits: ScreenLimits,
    /// Fires when the ingress starts shutting down.
    pub(super) shutdown: CancellationToken,
    /// Consulted for every request read (injected stream resets).
    chaos: Option<Arc<txmesh_chaos::Registry>>,
    /// The partition map served to partition-aware clients.
    cluster: Option<Arc<super::ClusterView>>,
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ScreenResponse, Status>> + Send>>;

/// What the stream's writer gets: a response (with the permit it holds
/// until written), or the status that ends the stream.
type Outgoing = Result<(ScreenResponse, Option<OwnedSemaphorePermit>), Status>;

impl IngressService {
    pub fn new(
        router: Arc<std::sync::OnceLock<ShardRouter>>,
        policy: Arc<AuthzPolicy>,
        metrics: Arc<crate::metrics::Metrics>,
        counters: Arc<IngressCounters>,
        limits: ScreenLimits,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            router,
            policy,
            metrics,
            counters,
            limits,
            shutdown,
            chaos: None,
            cluster: None,
        }
    }

    /// Serves `view`'s partition map.
    #[must_use]
    pub fn with_cluster(mut self, view: Arc<super::ClusterView>) -> Self {
        self.cluster = Some(view);
        self
    }

    /// Consults `chaos` for every request read from a Screen stream.
    #[must_use]
    pub fn with_chaos(mut self, chaos: Arc<txmesh_chaos::Registry>) -> Self {
        self.chaos = Some(chaos);
        self
    }

    /// Whether an injected fault resets this stream now.
    fn reset_injected(&self) -> bool {
        self.chaos.as_ref().is_some_and(|c| {
            c.decide_now(txmesh_chaos::InjectionPoint::IngressStream, 0)
                == Some(txmesh_chaos::FaultKind::StreamReset)
        })
    }

    /// Ends a stream whose request `index` could not be read: once every
    /// request read before it has been answered (all permits are back, and
    /// the channel is first in, first out), the stream ends with the status
    /// that says why. Counted and logged.
    async fn end_unreadable(
        &self,
        fault: InputFault,
        index: u64,
        cause: &Status,
        permits: &Arc<Semaphore>,
        tx: &tokio::sync::mpsc::Sender<Outgoing>,
    ) {
        if let Some(c) = self.counters.input_faults.get(fault as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let status = self.limits.status(fault, index, cause);
        tracing::warn!(
            fault = fault.label(),
            message = status.message(),
            "Screen stream ended: a request could not be read"
        );
        let all = u32::try_from(self.limits.max_in_flight).unwrap_or(u32::MAX);
        // The permits are held until their responses leave the channel;
        // the semaphore is never closed, so this waits for them all.
        let _all = permits.acquire_many(all).await;
        let _ = tx.send(Err(status)).await;
    }

    /// The caller of `request`, when `service`'s allow-list has it.
    pub(super) fn authorize<T>(
        &self,
        request: &Request<T>,
        service: Service,
    ) -> Result<txmesh_certs::SpiffeId, Status> {
        authorize(request, &self.policy, &self.metrics, service)
    }

    /// Screens one batch; `deliver` gets the results once all are decided.
    /// Returns how many of them another replica owns.
    pub(super) fn dispatch(
        &self,
        txns: Vec<Transaction>,
        traceparent: &str,
        deliver: impl FnOnce(Vec<TxnResult>) + Send + 'static,
    ) -> usize {
        self.counters
            .received
            .fetch_add(txns.len() as u64, Ordering::Relaxed);
        let counters = self.counters.clone();
        // A traced request gets a span from receipt to its last verdict;
        // its context rides the actor messages onto every verdict.
        let span = tracing::info_span!(
            "ingress.screen",
            size = txns.len(),
            trace_id = tracing::field::Empty
        );
        crate::telemetry::continue_trace(&span, traceparent);
        let trace = Some(crate::telemetry::traceparent(&span))
            .filter(|t| !t.is_empty())
            .map(Arc::from);
        let Some(router) = self.router.get() else {
            let results = txns
                .iter()
                .map(|t| TxnResult {
                    transaction_id: t.transaction_id.clone(),
                    outcome: Some(Outcome::Error(ActorError::Recovering.to_txn_error())),
                })
                .collect::<Vec<_>>();
            counters.count(&results);
            deliver(results);
            return 0;
        };
        router.screen_traced(txns, Instant::now(), trace, move |results| {
            let _span = span;
            counters.count(&results);
            deliver(results);
        })
    }
}

/// A Screen response being assembled: its results and how many of its
/// transactions another replica owns, which may be known in either order;
/// it is sent once both are.
struct Joined {
    results: Option<Vec<TxnResult>>,
    not_owned: Option<u32>,
    permit: Option<OwnedSemaphorePermit>,
    request_id: u64,
    tx: tokio::sync::mpsc::Sender<Outgoing>,
}

impl Joined {
    fn results(&mut self, results: Vec<TxnResult>) {
        self.results = Some(results);
        self.send_when_complete();
    }

    fn not_owned(&mut self, routed: usize) {
        self.not_owned = Some(u32::try_from(routed).unwrap_or(u32::MAX));
        self.send_when_complete();
    }

    fn send_when_complete(&mut self) {
        let Some(not_owned) = self.not_owned else {
            return;
        };
        let Some(results) = self.results.take() else {
            return;
        };
        let response = ScreenResponse {
            results,
            request_id: self.request_id,
            draining: false,
            not_owned,
        };
        // Room is reserved: see the channel's capacity in `screen`.
        let _ = self.tx.try_send(Ok((response, self.permit.take())));
    }
}

#[tonic::async_trait]
impl Ingress for IngressService {
    type ScreenStream = ResponseStream;

    async fn screen(
        &self,
        request: Request<Streaming<ScreenRequest>>,
    ) -> Result<Response<Self::ScreenStream>, Status> {
        let peer = self.authorize(&request, Service::Screen)?;
        tracing::debug!(%peer, "Screen stream opened");
        let mut inbound = request.into_inner();
        // Channel capacity is the permits plus one for the draining notice,
        // and a permit is released only when its response leaves the
        // channel, so `try_send` cannot fail for lack of room.
        let max_in_flight = self.limits.max_in_flight;
        let idle_timeout = self.limits.idle_timeout;
        let permits = Arc::new(Semaphore::new(max_in_flight));
        let (tx, rx) = tokio::sync::mpsc::channel::<Outgoing>(max_in_flight + 1);
        let this = self.clone();
        let span = tracing::info_span!("ingress.screen_stream", %peer);
        let task = async move {
            let mut draining = false;
            // Requests read so far, for the error that names the bad one.
            let mut read: u64 = 0;
            loop {
                let next = async {
                    let permit = permits.clone().acquire_owned().await.ok()?;
                    // Idle: nothing read for `idle_timeout` and nothing in
                    // flight (this permit is the only one taken).
                    loop {
                        match tokio::time::timeout(idle_timeout, inbound.message()).await {
                            Ok(message) => break Some((permit, message.map_err(Ended::Read))),
                            Err(_) if permits.available_permits() + 1 >= max_in_flight => {
                                break Some((permit, Err(Ended::Idle)))
                            }
                            Err(_) => {}
                        }
                    }
                };
                // On shutdown the client is told to stop sending; what it
                // already sent is still read and answered until it closes
                // its side (or the grace period ends the connection).
                let (permit, message) = tokio::select! {
                    biased;
                    () = this.shutdown.cancelled(), if !draining => {
                        draining = true;
                        let notice = ScreenResponse {
                            draining: true,
                            ..ScreenResponse::default()
                        };
                        if tx.send(Ok((notice, None))).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    got = next => match got {
                        Some(got) => got,
                        None => break,
                    },
                };
                match message {
                    Ok(Some(_)) if this.reset_injected() => {
                        // The request read is dropped unanswered, with
                        // everything still in flight on this stream: the
                        // caller must reconnect and resend.
                        tracing::warn!(%peer, "injected fault: Screen stream reset");
                        let _ = tx
                            .send(Err(Status::unavailable("injected fault: stream reset")))
                            .await;
                        break;
                    }
                    Ok(Some(req)) => {
                        read += 1;
                        // The results may be complete before `dispatch`
                        // returns the count: the response goes once both
                        // are known.
                        let joined = Arc::new(parking_lot::Mutex::new(Joined {
                            results: None,
                            not_owned: None,
                            permit: Some(permit),
                            request_id: req.request_id,
                            tx: tx.clone(),
                        }));
                        let on_results = {
                            let joined = joined.clone();
                            move |results| joined.lock().results(results)
                        };
                        let routed = this.dispatch(req.transactions, &req.traceparent, on_results);
                        joined.lock().not_owned(routed);
                    }
                    Ok(None) => break,
                    Err(Ended::Idle) => {
                        this.counters
                            .idle_streams_closed
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::info!(%peer, ?idle_timeout, "Screen stream idle: closed");
                        let _ = tx
                            .send(Err(Status::unavailable(format!(
                                "no request for {idle_timeout:?} with nothing in flight: \
                                 idle stream closed (ingress.stream_idle_timeout_ms); \
                                 open a new stream to send more"
                            ))))
                            .await;
                        break;
                    }
                    Err(Ended::Read(status)) => {
                        match InputFault::of(&status) {
                            Some(fault) => {
                                drop(permit);
                                this.end_unreadable(fault, read + 1, &status, &permits, &tx)
                                    .await;
                            }
                            None => tracing::debug!(%status, "Screen stream ended by the client"),
                        }
                        break;
                    }
                }
            }
        };
        tokio::spawn(tracing::Instrument::instrument(task, span));
        let out = ReceiverStream::new(rx).map(|item| item.map(|(response, _permit)| response));
        Ok(Response::new(Box::pin(out)))
    }

    async fn screen_one(
        &self,
        request: Request<Transaction>,
    ) -> Result<Response<TxnResult>, Status> {
        self.authorize(&request, Service::Screen)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.dispatch(vec![request.into_inner()], "", move |mut results| {
            let _ = tx.send(results.pop());
        });
        match rx.await {
            Ok(Some(result)) => Ok(Response::new(result)),
            _ => Err(Status::internal("transaction was not answered")),
        }
    }

    async fn get_partition_map(
        &self,
        request: Request<PartitionMapRequest>,
    ) -> Result<Response<PartitionMap>, Status> {
        self.authorize(&request, Service::Screen)?;
        match &self.cluster {
            Some(view) => Ok(Response::new(view.served())),
            None => Err(Status::unavailable("the partition map is not known yet")),
        }
    }
}
