//! txgen: streams transactions to the ingress over mTLS at a fixed rate
//! (open loop: latency counts from each transaction's intended send time)
//! or as fast as the ingress answers (closed loop with a window of batches
//! in flight), with a share of labelled injected patterns, and reports what
//! came back.
//!
//! Accounts are partitioned between streams so that each account's
//! transactions travel on one stream, in order.

mod patterns;
mod report;
mod retry;
mod stream;

use stream::{run_stream, StreamPlan};

use std::{
    sync::{atomic::AtomicU64, Arc},
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;
use txmesh_certs::{CertStore, SpiffeId};
use txmesh_proto::v1::ingress_client::IngressClient;

pub use patterns::{Generator, Label, Pattern, Planned};
pub use report::{CleanCount, LatencyMs, PatternCount, Tally, TxgenReport};
pub use retry::{Decision, GiveUp, InFlight, RetryBudget, RetryQueues};

use crate::{config::TxmeshConfig, error::ServiceError, net::mtls_channel};

/// Live counters, for `up`'s summary line.
#[derive(Debug, Default)]
pub struct TxgenProgress {
    pub sent: AtomicU64,
    pub answered: AtomicU64,
}

/// Runs txgen as configured until its duration or count is reached, or
/// `stop` fires; then waits for outstanding answers and reports.
///
/// # Errors
/// When certificates cannot be loaded or a stream cannot be opened.
pub async fn run(
    config: &TxmeshConfig,
    stop: CancellationToken,
    progress: Arc<TxgenProgress>,
) -> Result<TxgenReport, ServiceError> {
    let t = &config.txgen;
    let store = CertStore::open(&config.identity_dir(&t.identity), &config.trust_domain)?;
    let ingress_id = SpiffeId::for_workload(&config.trust_domain, "ingress")?;
    let channel = mtls_channel(t.target.clone(), &store, &ingress_id)?;
    // txgen serves no metrics; its registry only backs the reload watcher.
    let metrics = Arc::new(crate::metrics::Metrics::new(&[]));
    let watcher = crate::net::watch_certs(
        store.clone(),
        config.tls.reload_interval(),
        stop.clone(),
        metrics,
    );
    let now_ms = txmesh_actors::clock::system_unix_ms();
    // Where each stream sends: the target, or (partition-aware) every
    // replica of the map it serves, with the accounts that replica owns.
    let routes = if t.partition_aware {
        partition_routes(config, &store, &ingress_id, &channel).await?
    } else {
        vec![(t.target.clone(), channel, None)]
    };
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(t.streams * routes.len());
    for (route, (target, channel, owner)) in routes.iter().enumerate() {
        for stream in 0..t.streams {
            let mut generator = Generator::new(
                t.seed,
                stream,
                t.streams,
                t.accounts,
                config.actors.rules.clone(),
                t.inject_ratio,
                now_ms,
            );
            if let Some(owner) = owner {
                generator.keep_accounts(|account| owner.owns(account));
            }
            let share = routes.len() as u64;
            let plan = StreamPlan {
                target: target.clone(),
                rate: (t.rate > 0)
                    .then(|| (t.rate as f64 / (t.streams as u64 * share) as f64).max(1e-3)),
                count: (t.count > 0).then(|| {
                    let n = t.count / share + u64::from((route as u64) < t.count % share);
                    n / t.streams as u64 + u64::from((stream as u64) < n % t.streams as u64)
                }),
                deadline: (t.duration_secs > 0)
                    .then(|| started + Duration::from_secs(t.duration_secs)),
                batch_size: t.batch_size,
                max_in_flight: t.max_in_flight,
                retry: t.retry.clone(),
                seed: t.seed ^ (stream as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d),
            };
            let client = IngressClient::new(channel.clone())
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20);
            let span = tracing::info_span!("txgen.stream", stream, %target);
            tasks.push(tokio::spawn(tracing::Instrument::instrument(
                run_stream(client, generator, plan, stop.clone(), progress.clone()),
                span,
            )));
        }
    }
    let mut total = Tally::new();
    let result = collect(tasks, &mut total).await;
    watcher.abort();
    result?;
    Ok(total.report((t.rate > 0).then_some(t.rate), started.elapsed()))
}

/// The accounts one replica owns, by the served partition map.
struct Owner {
    partitions: u32,
    /// (first, last) partition ranges this replica owns.
    ranges: Vec<(u32, u32)>,
}

impl Owner {
    fn owns(&self, account: &str) -> bool {
        let p = txmesh_actors::partition::partition_of(account, self.partitions);
        self.ranges
            .iter()
            .any(|(first, last)| (*first..=*last).contains(&p))
    }
}

/// One route per replica of the map `channel`'s ingress serves: its
/// address, a channel to it, and the accounts it owns.
async fn partition_routes(
    config: &TxmeshConfig,
    store: &CertStore,
    ingress_id: &SpiffeId,
    channel: &tonic::transport::Channel,
) -> Result<
    Vec<(
        crate::net::HostPort,
        tonic::transport::Channel,
        Option<Owner>,
    )>,
    ServiceError,
> {
    let target = &config.txgen.target;
    let unreachable = |reason: String| ServiceError::Connect {
        target: target.to_string(),
        reason,
    };
    let map = IngressClient::new(channel.clone())
        .get_partition_map(txmesh_proto::v1::PartitionMapRequest {})
        .await
        .map_err(|s| unreachable(format!("partition map: {}: {}", s.code(), s.message())))?
        .into_inner();
    if map.hash != txmesh_actors::partition::HASH_NAME {
        return Err(unreachable(format!(
            "the partition map uses hash {:?}; this txgen knows {:?}",
            map.hash,
            txmesh_actors::partition::HASH_NAME
        )));
    }
    let mut routes = Vec::with_capacity(map.replicas.len());
    for (i, replica) in map.replicas.iter().enumerate() {
        let addr: crate::net::HostPort = replica.addr.parse().map_err(|_| {
            unreachable(format!(
                "replica {} has no usable address ({:?})",
                replica.name, replica.addr
            ))
        })?;
        let ranges = map
            .ranges
            .iter()
            .filter(|r| r.owner as usize == i)
            .map(|r| (r.first, r.last))
            .collect();
        let owner = Owner {
            partitions: map.partitions,
            ranges,
        };
        // Asking each replica for its map connects to it before the run's
        // clock starts, and catches a replica routing by another map.
        let channel = mtls_channel(addr.clone(), store, ingress_id)?;
        let theirs = IngressClient::new(channel.clone())
            .get_partition_map(txmesh_proto::v1::PartitionMapRequest {})
            .await
            .map_err(|s| {
                unreachable(format!(
                    "{} at {addr}: partition map: {}: {}",
                    replica.name,
                    s.code(),
                    s.message()
                ))
            })?
            .into_inner();
        if (theirs.partitions, &theirs.ranges) != (map.partitions, &map.ranges) {
            return Err(unreachable(format!(
                "{} at {addr} routes by another partition map than {} (a handoff in progress, \
                 or replicas configured with different sets); retry",
                replica.name, map.served_by
            )));
        }
        tracing::info!(replica = %replica.name, %addr, "partition-aware: streams to this replica");
        routes.push((addr, channel, Some(owner)));
    }
    Ok(routes)
}

async fn collect(
    tasks: Vec<tokio::task::JoinHandle<Result<Tally, ServiceError>>>,
    total: &mut Tally,
) -> Result<(), ServiceError> {
    for task in tasks {
        match task.await {
            Ok(Ok(tally)) => total.merge(tally),
            Ok(Err(e)) => return Err(e),
            Err(e) => {
                return Err(ServiceError::Failed {
                    what: "a txgen stream task",
                    reason: e.to_string(),
                })
            }
        }
    }
    Ok(())
}
