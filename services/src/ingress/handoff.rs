//! Moving partitions when the replica set changes (the handoff of Akka
//! Cluster Sharding, with Kafka's epochs as the fence). The set comes from
//! configuration or, while running, from the members file
//! ([`watch_members`]); the map moves on with it ([`ClusterView::apply_set`]).
//!
//! The old owner (here, [`run`]) stops serving a partition that leaves it
//! the moment the set changes: its work is refused retryably, holding each
//! account so that nothing overtakes. It exports the partition's windows
//! once its shards have screened what they had accepted and its journal
//! has written it, and sends them over `Replica.Handoff` (mTLS, identity
//! `ingress` both ends). The new owner ([`receive`]) imports them, snapshots
//! its shards, saves that it holds them, serves them at the new epoch, and
//! only then answers. The old owner then saves that it no longer holds them
//! and forgets them. At no instant do two replicas serve a partition: the
//! old one stopped before it exported, the new one starts after it has the
//! history. A failed or unanswered handoff keeps everything at the old
//! owner and is tried again with backoff; a repeated one after a lost
//! answer is acknowledged without importing twice.

use std::{sync::Arc, time::Duration};

use rand::SeedableRng;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use txmesh_actors::{
    backoff::{Backoff, BackoffConfig},
    journal::snapshot::{decode_windows, encode_windows, AccountWindow},
    partition::partition_of,
    ShardRouter,
};
use txmesh_certs::{CertStore, SpiffeId};
use txmesh_proto::v1::{replica_client::ReplicaClient, HandoffAck, HandoffChunk, HandoffPartition};

use super::cluster::{read_members, ClusterView};
use crate::net::mtls_channel;

/// Window bytes per handoff chunk (well under any message limit).
const CHUNK_BYTES: usize = 1 << 20;
/// A handoff not acknowledged within this is tried again.
const HANDOFF_TIMEOUT: Duration = Duration::from_secs(60);

/// How the old owner reaches the new one.
pub(crate) struct HandoffLinks {
    pub view: Arc<ClusterView>,
    pub router: ShardRouter,
    pub store: CertStore,
    pub ingress: SpiffeId,
    pub shutdown: CancellationToken,
}

/// Reads the members file every `cluster.members_poll_ms` and moves the
/// map on when the set in it changes. A file that is missing or invalid is
/// reported once per distinct problem and the last good set kept.
pub(crate) async fn watch_members(view: Arc<ClusterView>, shutdown: CancellationToken) {
    let Some(path) = view.config().members_path(view.state_dir()) else {
        return;
    };
    let every = Duration::from_millis(view.config().members_poll_ms);
    let mut reported = String::new();
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.cancelled() => return,
        }
        let set = match read_members(&path) {
            Ok(set) => set,
            Err(why) => {
                if why != reported {
                    tracing::error!(%why, "members file unusable: the last good replica set is kept");
                    reported = why;
                }
                continue;
            }
        };
        reported.clear();
        if let Err(why) = view.apply_set(set) {
            tracing::error!(%why, "members file: not a replica set; the last good one is kept");
        }
    }
}

/// Hands over whatever this replica holds and no longer owns, whenever the
/// set changes, until shutdown.
pub(crate) async fn run(links: HandoffLinks) {
    let mut backoff = Backoff::new(BackoffConfig::full_jitter(
        Duration::from_millis(100),
        Duration::from_secs(5),
    ))
    .expect("a valid backoff");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random());
    loop {
        let mut failed = false;
        for (to, parts) in links.view.outgoing() {
            let numbers: Vec<u32> = parts.iter().map(|(p, _)| *p).collect();
            links.view.sending(&numbers);
            let started = std::time::Instant::now();
            match hand_over(&links, &to, &parts).await {
                Ok(ack) => {
                    links.view.sent(&numbers, true);
                    let dropped = links.router.drop_partitions(&numbers).await;
                    links
                        .view
                        .stats
                        .handoffs_sent
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(
                        to = %to,
                        partitions = numbers.len(),
                        accounts = ack.accounts,
                        entries = ack.entries,
                        dropped,
                        took_ms = started.elapsed().as_millis() as u64,
                        "partitions handed over"
                    );
                }
                Err(why) => {
                    links.view.sent(&numbers, false);
                    links
                        .view
                        .stats
                        .handoffs_failed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(to = %to, partitions = numbers.len(), %why, "handoff not done; tried again");
                    failed = true;
                }
            }
        }
        let wait = if failed {
            backoff.next_delay(&mut rng)
        } else {
            backoff.reset();
            Duration::from_secs(3600)
        };
        tokio::select! {
            () = links.view.handoff_wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
            () = links.shutdown.cancelled() => return,
        }
    }
}

/// One handoff of `parts` (partition, new epoch) to `to`.
async fn hand_over(
    links: &HandoffLinks,
    to: &str,
    parts: &[(u32, u64)],
) -> Result<HandoffAck, String> {
    let addr = links
        .view
        .resolve(to)
        .ok_or_else(|| format!("no address known for {to}"))?;
    let numbers: Vec<u32> = parts.iter().map(|(p, _)| *p).collect();
    let windows = links
        .router
        .export(&numbers)
        .await
        .map_err(|e| e.to_string())?;
    let mut pieces = encode_windows(&windows, CHUNK_BYTES).into_iter();
    let first = HandoffChunk {
        origin: links.view.me.clone(),
        partitions: parts
            .iter()
            .map(|(partition, epoch)| HandoffPartition {
                partition: *partition,
                epoch: *epoch,
            })
            .collect(),
        windows: pieces.next().unwrap_or_default(),
    };
    let chunks: Vec<HandoffChunk> = std::iter::once(first)
        .chain(pieces.map(|windows| HandoffChunk {
            windows,
            ..HandoffChunk::default()
        }))
        .collect();
    let channel =
        mtls_channel(addr.clone(), &links.store, &links.ingress).map_err(|e| e.to_string())?;
    let mut client = ReplicaClient::new(channel)
        .max_encoding_message_size(4 * CHUNK_BYTES)
        .max_decoding_message_size(4 * CHUNK_BYTES);
    let call = client.handoff(tokio_stream::iter(chunks));
    match tokio::time::timeout(HANDOFF_TIMEOUT, call).await {
        Err(_) => Err(format!(
            "{to} ({addr}) did not answer within {HANDOFF_TIMEOUT:?}"
        )),
        Ok(Err(status)) => Err(format!(
            "{to} ({addr}): {}: {}",
            status.code(),
            status.message()
        )),
        Ok(Ok(ack)) => Ok(ack.into_inner()),
    }
}

/// The new owner's side: takes the handed-over history of the partitions
/// in `chunks` and serves them, or says why not.
pub(crate) async fn receive(
    view: &ClusterView,
    router: &ShardRouter,
    mut chunks: tonic::Streaming<HandoffChunk>,
) -> Result<HandoffAck, Status> {
    let mut origin = String::new();
    let mut parts: Vec<(u32, u64)> = Vec::new();
    let mut windows: Vec<AccountWindow> = Vec::new();
    let mut first = true;
    while let Some(chunk) = chunks.message().await? {
        if first {
            origin = chunk.origin;
            parts = chunk
                .partitions
                .iter()
                .map(|p| (p.partition, p.epoch))
                .collect();
            first = false;
        }
        decode_windows(&chunk.windows, &mut windows).map_err(Status::invalid_argument)?;
    }
    if parts.is_empty() {
        return Err(Status::invalid_argument("a handoff names no partition"));
    }
    if let Some((p, _)) = parts.iter().find(|(p, _)| !view.owns(*p)) {
        return Err(Status::failed_precondition(format!(
            "{} does not own partition {p} under its replica set {:?} (yet): try again once \
             it has the same set",
            view.me,
            view.map
                .read()
                .replicas()
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
        )));
    }
    // Already held: a repeated handoff whose answer was lost. Importing
    // again would put back an older window over newer screening.
    let new: Vec<(u32, u64)> = parts
        .iter()
        .copied()
        .filter(|(p, _)| !view.holds(*p))
        .collect();
    if new.is_empty() {
        tracing::info!(%origin, partitions = parts.len(), "handoff repeated: already held");
        return Ok(HandoffAck::default());
    }
    let count = view.map.read().partitions();
    let taken: std::collections::HashSet<u32> = new.iter().map(|(p, _)| *p).collect();
    windows.retain(|(account, _)| taken.contains(&partition_of(account, count)));
    let accounts = windows.len() as u64;
    let entries = windows.iter().map(|(_, e)| e.len() as u64).sum();
    router
        .import(windows)
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    view.received(&new);
    view.stats
        .handoffs_received
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(%origin, partitions = new.len(), accounts, entries, "partitions taken over");
    Ok(HandoffAck { accounts, entries })
}
