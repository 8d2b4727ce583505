//! The links to the other replicas: one long-lived `Replica.Forward`
//! stream per peer over mTLS (identity `ingress` both ends), carrying the
//! work of accounts the peer owns in batches and bringing its results back.
//!
//! A link connects when it first has work, and keeps its stream while the
//! peer answers. Parts queued while it connects go first, in order, so one
//! caller's transactions of an account reach the owner in the order sent.
//! When the peer cannot be reached, or a request goes unanswered for
//! `cluster.forward_timeout_ms`, or the stream breaks, the work it holds is
//! answered with a retryable UNAVAILABLE naming the owner (a resend is
//! safe: the owner answers a transaction it already screened with its
//! original verdict), and for `cluster.unreachable_retry_after_ms` new work
//! for that peer is answered so at once, instead of piling up.

use std::{
    collections::{HashMap, VecDeque},
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use tokio::{
    sync::mpsc::{self, error::TrySendError},
    time::Instant,
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use txmesh_actors::{ActorError, RemotePart, RemoteScreen};
use txmesh_certs::{CertStore, SpiffeId};
use txmesh_proto::v1::{replica_client::ReplicaClient, ForwardRequest, ForwardedTxn};

use super::cluster::ClusterView;
use crate::net::mtls_channel;

/// The links of one replica to its peers.
pub(crate) struct GrpcRemote {
    ctx: Arc<LinkContext>,
    links: parking_lot::Mutex<HashMap<String, mpsc::Sender<RemotePart>>>,
    runtime: tokio::runtime::Handle,
}

/// What every link shares.
struct LinkContext {
    view: Arc<ClusterView>,
    store: CertStore,
    ingress: SpiffeId,
    /// Transactions per forwarded request (the receiver's batch limit).
    max_batch: usize,
    shutdown: CancellationToken,
}

impl GrpcRemote {
    /// Links dialled as `store`'s identity, accepting only peers whose
    /// SVID is `ingress`. Must be created on a tokio runtime (the links'
    /// tasks run on it).
    pub(crate) fn new(
        view: Arc<ClusterView>,
        store: CertStore,
        ingress: SpiffeId,
        max_batch: usize,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            ctx: Arc::new(LinkContext {
                view,
                store,
                ingress,
                max_batch,
                shutdown,
            }),
            links: parking_lot::Mutex::new(HashMap::new()),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// The queue of the link to `owner`, started on first use.
    fn link(&self, owner: &str) -> mpsc::Sender<RemotePart> {
        let mut links = self.links.lock();
        if let Some(tx) = links.get(owner) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(self.ctx.view.config().forward_queue);
        let span = tracing::info_span!("ingress.forward_link", peer = owner);
        self.runtime.spawn(tracing::Instrument::instrument(
            run_link(owner.to_owned(), rx, self.ctx.clone()),
            span,
        ));
        links.insert(owner.to_owned(), tx.clone());
        tx
    }
}

impl RemoteScreen for GrpcRemote {
    fn forward(&self, owner: &str, part: RemotePart) {
        let stats = &self.ctx.view.stats;
        match self.link(owner).try_send(part) {
            Ok(()) => {}
            Err(TrySendError::Full(part)) => {
                stats.failed.fetch_add(part.len() as u64, Ordering::Relaxed);
                part.fail(&ActorError::Overloaded {
                    what: "forward link",
                    retry_after_ms: 50,
                });
            }
            Err(TrySendError::Closed(part)) => {
                stats.failed.fetch_add(part.len() as u64, Ordering::Relaxed);
                part.fail(&ActorError::ShuttingDown);
            }
        }
    }
}

impl LinkContext {
    /// The answer for work that cannot reach `owner`; `sent` when it had
    /// been sent (the owner may have screened it, its answer lost).
    fn unreachable(&self, owner: &str, reason: impl Into<String>, sent: bool) -> ActorError {
        let retry = self.view.config().unreachable_retry_after_ms;
        ActorError::OwnerUnreachable {
            owner: owner.to_owned(),
            reason: reason.into(),
            retry_after_ms: u32::try_from(retry).unwrap_or(u32::MAX),
            sent,
        }
    }

    fn fail(&self, parts: impl IntoIterator<Item = RemotePart>, error: &ActorError) {
        for part in parts {
            self.view
                .stats
                .failed
                .fetch_add(part.len() as u64, Ordering::Relaxed);
            part.fail(error);
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.view.config().forward_timeout_ms)
    }
}

/// One peer's link: waits for work, connects, forwards until the stream
/// fails, then answers for the peer while it is unreachable.
async fn run_link(owner: String, mut rx: mpsc::Receiver<RemotePart>, ctx: Arc<LinkContext>) {
    loop {
        // An idle link holds no connection attempt open.
        let first = tokio::select! {
            part = rx.recv() => match part {
                Some(part) => part,
                None => return,
            },
            () = ctx.shutdown.cancelled() => return,
        };
        let why = match open(&ctx, &owner).await {
            Ok(stream) => match forward(&ctx, &owner, stream, first, &mut rx).await {
                Ended::Stopped => return,
                Ended::Failed(why) => why,
            },
            Err(why) => {
                ctx.fail([first], &ctx.unreachable(&owner, why.clone(), false));
                why
            }
        };
        tracing::warn!(peer = %owner, %why, "forward link down");
        // Fail fast while down: nothing waits on a peer known to be gone.
        let until =
            Instant::now() + Duration::from_millis(ctx.view.config().unreachable_retry_after_ms);
        let error = ctx.unreachable(&owner, why, false);
        loop {
            tokio::select! {
                part = rx.recv() => match part {
                    Some(part) => ctx.fail([part], &error),
                    None => return,
                },
                () = tokio::time::sleep_until(until) => break,
                () = ctx.shutdown.cancelled() => return,
            }
        }
    }
}

/// An open Forward stream: where requests go and where answers come from.
struct Stream {
    requests: mpsc::Sender<ForwardRequest>,
    answers: tonic::Streaming<txmesh_proto::v1::ForwardResponse>,
}

/// Why a forwarding session ended.
enum Ended {
    Stopped,
    Failed(String),
}

/// Opens a Forward stream to `owner`'s current address.
async fn open(ctx: &LinkContext, owner: &str) -> Result<Stream, String> {
    let addr = ctx
        .view
        .resolve(owner)
        .ok_or_else(|| "no address known for it".to_owned())?;
    let channel =
        mtls_channel(addr.clone(), &ctx.store, &ctx.ingress).map_err(|e| e.to_string())?;
    let mut client = ReplicaClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let in_flight = ctx.view.config().forward_in_flight;
    let (requests, rx) = mpsc::channel(in_flight);
    let call = client.forward(ReceiverStream::new(rx));
    let answers = match tokio::time::timeout(ctx.timeout(), call).await {
        Err(_) => return Err(format!("{addr}: no answer within {:?}", ctx.timeout())),
        Ok(Err(status)) => return Err(format!("{addr}: {}: {}", status.code(), status.message())),
        Ok(Ok(response)) => response.into_inner(),
    };
    tracing::info!(peer = owner, %addr, "forward link up");
    Ok(Stream { requests, answers })
}

/// Forwards `first` and whatever follows on `stream`, matching answers to
/// their parts, until the stream fails, a request times out, or shutdown.
async fn forward(
    ctx: &LinkContext,
    owner: &str,
    mut stream: Stream,
    first: RemotePart,
    rx: &mut mpsc::Receiver<RemotePart>,
) -> Ended {
    let max_in_flight = ctx.view.config().forward_in_flight;
    let mut in_flight: HashMap<u64, Vec<RemotePart>> = HashMap::new();
    // Deadlines in send order, so the first is the earliest.
    let mut deadlines: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut next_id: u64 = 0;
    let mut carry = Some(first);
    let ended = loop {
        while deadlines
            .front()
            .is_some_and(|(_, id)| !in_flight.contains_key(id))
        {
            deadlines.pop_front();
        }
        let deadline = deadlines.front().map(|(at, _)| *at);
        if carry.is_some() && in_flight.len() < max_in_flight {
            let Some(first) = carry.take() else {
                continue;
            };
            let (parts, leftover) = coalesce(first, rx, ctx.max_batch);
            carry = leftover;
            next_id += 1;
            let request = request(next_id, &ctx.view.me, &parts);
            let sent = request.transactions.len() as u64;
            if stream.requests.send(request).await.is_err() {
                ctx.fail(parts, &ctx.unreachable(owner, "stream closed", false));
                break Ended::Failed("stream closed".into());
            }
            ctx.view.stats.sent.fetch_add(sent, Ordering::Relaxed);
            in_flight.insert(next_id, parts);
            deadlines.push_back((Instant::now() + ctx.timeout(), next_id));
            continue;
        }
        tokio::select! {
            biased;
            answer = stream.answers.message() => match answer {
                Ok(Some(response)) => {
                    let Some(parts) = in_flight.remove(&response.request_id) else {
                        continue;
                    };
                    // Epochs are learned once the refusals hold their
                    // accounts: nothing routed by the newer epoch may
                    // overtake what was refused under the older one.
                    let learned = stale_epochs(owner, &parts, &response.results);
                    let mut results = response.results.into_iter();
                    for part in parts {
                        let n = part.len();
                        part.answer(results.by_ref().take(n));
                    }
                    for (partition, epoch) in learned {
                        ctx.view.learn_epoch(partition, owner, epoch);
                    }
                }
                Ok(None) => break Ended::Failed("the peer ended the stream".into()),
                Err(status) => break Ended::Failed(format!("{}: {}", status.code(), status.message())),
            },
            () = async { tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)).await }, if deadline.is_some() => {
                break Ended::Failed(format!("a forwarded request was not answered within {:?}", ctx.timeout()));
            }
            part = rx.recv(), if carry.is_none() && in_flight.len() < max_in_flight => match part {
                Some(part) => carry = Some(part),
                None => break Ended::Stopped,
            },
            () = ctx.shutdown.cancelled() => break Ended::Stopped,
        }
    };
    // What was in flight may have been screened there, its answer lost
    // with the link; what was not sent was not.
    let (sent, unsent) = match &ended {
        Ended::Stopped => (ActorError::ShuttingDown, ActorError::ShuttingDown),
        Ended::Failed(why) => (
            ctx.unreachable(owner, why.clone(), true),
            ctx.unreachable(owner, why.clone(), false),
        ),
    };
    ctx.fail(in_flight.into_values().flatten(), &sent);
    ctx.fail(carry, &unsent);
    ended
}

/// The (partition, epoch) pairs for which the owner refused items as
/// stamped with an epoch not its own, naming itself at a newer one: this
/// replica missed a change of the set, and takes the owner's epochs up (the
/// owner is the authority on its own).
fn stale_epochs(
    owner: &str,
    parts: &[RemotePart],
    results: &[txmesh_proto::v1::TxnResult],
) -> Vec<(u32, u64)> {
    use txmesh_proto::v1::{txn_result::Outcome, TxnErrorCode};
    let items = parts.iter().flat_map(|p| p.items.iter());
    let mut learned = Vec::new();
    for (item, result) in items.zip(results) {
        if let Some(Outcome::Error(e)) = &result.outcome {
            if e.code() == TxnErrorCode::WrongOwner
                && e.owner == owner
                && e.owner_epoch > item.epoch
            {
                learned.push((item.partition, e.owner_epoch));
            }
        }
    }
    learned
}

/// `first` and the parts queued behind it, up to `max_batch` transactions
/// (always at least `first`); a queued part too large to join is returned
/// to lead the next request, so the order stays as queued.
fn coalesce(
    first: RemotePart,
    rx: &mut mpsc::Receiver<RemotePart>,
    max_batch: usize,
) -> (Vec<RemotePart>, Option<RemotePart>) {
    let mut total = first.len();
    let mut parts = vec![first];
    while total < max_batch {
        match rx.try_recv() {
            Ok(part) if total + part.len() <= max_batch => {
                total += part.len();
                parts.push(part);
            }
            Ok(part) => return (parts, Some(part)),
            Err(_) => break,
        }
    }
    (parts, None)
}

fn request(request_id: u64, origin: &str, parts: &[RemotePart]) -> ForwardRequest {
    let transactions = parts
        .iter()
        .flat_map(|p| p.items.iter())
        .map(|item| ForwardedTxn {
            transaction: Some(item.txn.clone()),
            partition: item.partition,
            epoch: item.epoch,
        })
        .collect();
    let traceparent = parts
        .iter()
        .find_map(|p| p.trace.as_deref())
        .unwrap_or_default()
        .to_owned();
    ForwardRequest {
        request_id,
        transactions,
        traceparent,
        origin: origin.to_owned(),
    }
}
