//! Where txgen's transactions go. Without `--partition-aware`, everything
//! goes to the target: one route. Partition-aware, each transaction goes
//! to the replica that owns its account's partition by the map the target
//! served; the map is shared by every stream and refreshed (from the
//! replica that said so, then the others) when a replica answers that it
//! owns some of a request's transactions no longer (`not_owned`), or when
//! a replica's stream ends (it may have left the set).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use txmesh_certs::{CertStore, SpiffeId};
use txmesh_proto::v1::{ingress_client::IngressClient, PartitionMapRequest};

use crate::{config::TxmeshConfig, error::ServiceError, net::mtls_channel, net::HostPort};

/// One replica a route may lead to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Replica {
    pub(super) name: String,
    pub(super) addr: HostPort,
}

/// The partition `account` is in, of `partitions` (1 when not
/// partition-aware: no hashing).
pub(super) fn partition(account: &str, partitions: u32) -> u32 {
    if partitions == 1 {
        0
    } else {
        txmesh_actors::partition::partition_of(account, partitions)
    }
}

/// Which replica each partition's transactions go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RouteMap {
    pub(super) replicas: Vec<Replica>,
    /// Per partition (one when not partition-aware), an index into
    /// `replicas`.
    owner: Vec<u16>,
}

impl RouteMap {
    /// How many partitions accounts are spread over.
    pub(super) fn partitions(&self) -> u32 {
        u32::try_from(self.owner.len()).unwrap_or(u32::MAX)
    }

    /// The index in `replicas` of the replica that owns `partition`.
    pub(super) fn owner_index(&self, partition: u32) -> usize {
        usize::from(self.owner[partition as usize])
    }

    /// Whether both give every partition to the same replica name.
    fn same_owners(&self, other: &Self) -> bool {
        self.owner.len() == other.owner.len()
            && (0..self.partitions()).all(|p| {
                self.replicas[self.owner_index(p)].name == other.replicas[other.owner_index(p)].name
            })
    }

    /// The map `served` (by `asked`), checked against the hash this txgen
    /// partitions with.
    fn from_served(
        served: txmesh_proto::v1::PartitionMap,
        asked: &HostPort,
    ) -> Result<Self, String> {
        if served.hash != txmesh_actors::partition::HASH_NAME {
            return Err(format!(
                "the partition map uses hash {:?}; this txgen knows {:?}",
                served.hash,
                txmesh_actors::partition::HASH_NAME
            ));
        }
        let mut replicas = Vec::with_capacity(served.replicas.len());
        for r in &served.replicas {
            let addr = r.addr.parse().map_err(|_| {
                format!(
                    "{asked}: replica {} has no usable address ({:?})",
                    r.name, r.addr
                )
            })?;
            replicas.push(Replica {
                name: r.name.clone(),
                addr,
            });
        }
        let mut owner = vec![u16::MAX; served.partitions as usize];
        for range in &served.ranges {
            let index = u16::try_from(range.owner)
                .ok()
                .filter(|o| usize::from(*o) < replicas.len());
            for p in range.first..=range.last {
                match (owner.get_mut(p as usize), index) {
                    (Some(slot), Some(index)) => *slot = index,
                    _ => return Err(format!("{asked}: partition range {range:?} out of the map")),
                }
            }
        }
        if served.partitions == 0 || owner.contains(&u16::MAX) {
            return Err(format!(
                "{asked}: the partition map leaves partitions unowned"
            ));
        }
        Ok(Self { replicas, owner })
    }
}

/// The map every stream routes by, shared, with what it takes to reach a
/// replica named in it.
pub(super) struct Directory {
    store: CertStore,
    ingress_id: SpiffeId,
    aware: bool,
    map: tokio::sync::watch::Sender<Arc<RouteMap>>,
    channels: Mutex<HashMap<HostPort, tonic::transport::Channel>>,
    refresh: Mutex<Refresh>,
    refreshes: AtomicU64,
}

/// Whether a refresh is running, and when the last one started.
#[derive(Default)]
struct Refresh {
    running: bool,
    last: Option<Instant>,
}

/// Asked at most this often for a new map (many answers say the same).
const REFRESH_EVERY: Duration = Duration::from_millis(100);

impl Directory {
    /// Everything to `target` over `channel`.
    pub(super) fn single(
        config: &TxmeshConfig,
        store: CertStore,
        ingress_id: SpiffeId,
        channel: tonic::transport::Channel,
    ) -> Arc<Self> {
        let target = config.txgen.target.clone();
        let map = RouteMap {
            replicas: vec![Replica {
                name: target.to_string(),
                addr: target.clone(),
            }],
            owner: vec![0],
        };
        Self::new(store, ingress_id, false, map, target, channel)
    }

    fn new(
        store: CertStore,
        ingress_id: SpiffeId,
        aware: bool,
        map: RouteMap,
        target: HostPort,
        channel: tonic::transport::Channel,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            ingress_id,
            aware,
            map: tokio::sync::watch::Sender::new(Arc::new(map)),
            channels: Mutex::new(HashMap::from([(target, channel)])),
            refresh: Mutex::new(Refresh::default()),
            refreshes: AtomicU64::new(0),
        })
    }

    /// Partition-aware: the map the target serves. Every replica in it is
    /// asked for its own before the run's clock starts (which connects to
    /// each), and one routing by another map is an error naming it.
    pub(super) async fn discover(
        config: &TxmeshConfig,
        store: CertStore,
        ingress_id: SpiffeId,
        channel: tonic::transport::Channel,
    ) -> Result<Arc<Self>, ServiceError> {
        let target = config.txgen.target.clone();
        let unreachable = |reason: String| ServiceError::Connect {
            target: target.to_string(),
            reason,
        };
        let map = fetch(&channel, &target).await.map_err(unreachable)?;
        let directory = Self::new(
            store,
            ingress_id,
            true,
            map.clone(),
            target.clone(),
            channel,
        );
        for replica in &map.replicas {
            let channel = directory.channel(&replica.addr)?;
            let theirs = fetch(&channel, &replica.addr)
                .await
                .map_err(|e| unreachable(format!("{}: {e}", replica.name)))?;
            if !theirs.same_owners(&map) {
                return Err(unreachable(format!(
                    "{} at {} routes by another partition map than {target} (a handoff in \
                     progress, or replicas configured with different sets); retry",
                    replica.name, replica.addr
                )));
            }
            tracing::info!(replica = %replica.name, addr = %replica.addr, "partition-aware: sends to this replica");
        }
        Ok(directory)
    }

    /// The map now, and its changes.
    pub(super) fn subscribe(&self) -> tokio::sync::watch::Receiver<Arc<RouteMap>> {
        self.map.subscribe()
    }

    /// A channel to `addr` (one per replica, shared by every stream).
    pub(super) fn channel(
        &self,
        addr: &HostPort,
    ) -> Result<tonic::transport::Channel, ServiceError> {
        let mut channels = self.channels.lock();
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let channel = mtls_channel(addr.clone(), &self.store, &self.ingress_id)?;
        channels.insert(addr.clone(), channel.clone());
        Ok(channel)
    }

    /// How many times the map was refreshed and found changed.
    pub(super) fn refreshes(&self) -> u64 {
        self.refreshes.load(Ordering::Relaxed)
    }

    /// `from` said the map is stale (or its stream ended): fetch it again,
    /// from `from` first, then from the other replicas, at most once per
    /// [`REFRESH_EVERY`], in the background.
    pub(super) fn stale(self: &Arc<Self>, from: &HostPort) {
        if !self.aware {
            return;
        }
        {
            let mut refresh = self.refresh.lock();
            if refresh.running || refresh.last.is_some_and(|at| at.elapsed() < REFRESH_EVERY) {
                return;
            }
            *refresh = Refresh {
                running: true,
                last: Some(Instant::now()),
            };
        }
        let directory = self.clone();
        let from = from.clone();
        tokio::spawn(async move {
            directory.fetch_again(&from).await;
            directory.refresh.lock().running = false;
        });
    }

    async fn fetch_again(&self, from: &HostPort) {
        let current = self.map.borrow().clone();
        let mut ask = vec![from.clone()];
        ask.extend(
            current
                .replicas
                .iter()
                .map(|r| r.addr.clone())
                .filter(|a| a != from),
        );
        for addr in ask {
            let Ok(channel) = self.channel(&addr) else {
                continue;
            };
            match fetch(&channel, &addr).await {
                Ok(map) if map.partitions() == current.partitions() => {
                    if map != *current {
                        self.refreshes.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(asked = %addr, replicas = map.replicas.len(), "partition map refreshed");
                        self.map.send_replace(Arc::new(map));
                    }
                    return;
                }
                Ok(_) => {
                    tracing::warn!(asked = %addr, "a partition map with another partition count: ignored")
                }
                Err(e) => tracing::debug!(asked = %addr, error = %e, "partition map not fetched"),
            }
        }
    }
}

/// The map the ingress at `addr` serves.
async fn fetch(channel: &tonic::transport::Channel, addr: &HostPort) -> Result<RouteMap, String> {
    let served = IngressClient::new(channel.clone())
        .get_partition_map(PartitionMapRequest {})
        .await
        .map_err(|s| format!("{addr}: partition map: {}: {}", s.code(), s.message()))?
        .into_inner();
    RouteMap::from_served(served, addr)
}
