//! This ingress among its replicas: the partition map it routes by, where
//! its peers are reached, the map it serves to partition-aware clients,
//! and the forwarding counters. The links to peers are in [`super::forward`],
//! the service peers call in [`super::replica`].

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{atomic::AtomicU64, Arc, OnceLock},
};

use parking_lot::RwLock;
use txmesh_actors::partition::{PartitionMap, Replica};
use txmesh_proto::v1 as pb;

use crate::{config::ClusterConfig, error::ServiceError, net::HostPort};

/// The name a single ingress (no `[cluster]`) gives itself in the map it
/// serves.
const SINGLE: &str = "ingress";

/// What the ingress knows of the replica set.
pub struct ClusterView {
    /// This replica's name.
    pub me: String,
    /// The map the router routes by.
    pub map: Arc<RwLock<Arc<PartitionMap>>>,
    config: ClusterConfig,
    state_dir: PathBuf,
    /// This replica's own gRPC address, once bound.
    bound: OnceLock<SocketAddr>,
    pub stats: ForwardStats,
}

/// The replica set a replica's journal was written under.
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct SavedMap {
    partitions: u32,
    replicas: Vec<String>,
}

/// Forwarding, counted per transaction.
#[derive(Debug, Default)]
pub struct ForwardStats {
    /// Sent to the owner.
    pub sent: AtomicU64,
    /// Answered to the caller with an error without reaching the owner (or
    /// without its answer): unreachable, timed out, link full.
    pub failed: AtomicU64,
    /// Received from peers.
    pub received: AtomicU64,
    /// Received but refused: not the owner at the stamped epoch.
    pub refused: AtomicU64,
}

impl ClusterView {
    /// The view `config` describes: the configured replicas, or one
    /// replica owning every partition.
    ///
    /// # Errors
    /// When the replica set does not form a map (validation names it first).
    pub fn new(config: &ClusterConfig, state_dir: PathBuf) -> Result<Arc<Self>, ServiceError> {
        let (me, map) = if config.is_clustered() {
            (config.name.clone(), config.partition_map())
        } else {
            let me = Replica {
                name: SINGLE.to_owned(),
                addr: String::new(),
            };
            (
                SINGLE.to_owned(),
                PartitionMap::new(config.partitions, vec![me]),
            )
        };
        let map = map.map_err(|e| ServiceError::config("cluster.replicas", e.to_string()))?;
        Ok(Arc::new(Self {
            me,
            map: Arc::new(RwLock::new(Arc::new(map))),
            config: config.clone(),
            state_dir,
            bound: OnceLock::new(),
            stats: ForwardStats::default(),
        }))
    }

    /// Whether this ingress is one replica of several.
    pub fn is_clustered(&self) -> bool {
        self.config.is_clustered()
    }

    /// The cluster's settings.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Keeps the replica set this replica's journal was written under, in
    /// `state_dir/replicas/NAME/partition-map.json`, and refuses to start
    /// under another one: a changed set moves partitions, and moving them
    /// without handing their windows over would split their history.
    ///
    /// # Errors
    /// A different saved set (naming `cluster.replicas`), or a file that
    /// cannot be read or written.
    pub fn check_saved_map(&self) -> Result<(), ServiceError> {
        if !self.is_clustered() {
            return Ok(());
        }
        let file = self
            .state_dir
            .join("replicas")
            .join(&self.me)
            .join("partition-map.json");
        let map = self.map.read().clone();
        let now = SavedMap {
            partitions: map.partitions(),
            replicas: map.replicas().iter().map(|r| r.name.clone()).collect(),
        };
        let io =
            |e: std::io::Error| ServiceError::config("cluster", format!("{}: {e}", file.display()));
        match std::fs::read(&file) {
            Ok(bytes) => {
                let saved: SavedMap = serde_json::from_slice(&bytes).map_err(|e| {
                    ServiceError::config("cluster", format!("{}: {e}", file.display()))
                })?;
                if saved != now {
                    return Err(ServiceError::config(
                        "cluster.replicas",
                        format!(
                            "this replica's journal was written with replicas {:?} over {} \
                             partitions, not {:?} over {}: moving partitions between replicas \
                             needs a handoff of their windows, which this version does not do; \
                             restore the previous list (or start on a new state directory)",
                            saved.replicas, saved.partitions, now.replicas, now.partitions
                        ),
                    ));
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = file.parent() {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                let json = serde_json::to_vec_pretty(&now)
                    .map_err(|e| ServiceError::config("cluster", e.to_string()))?;
                std::fs::write(&file, json).map_err(io)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Records this replica's bound address and, for local runs, publishes
    /// it to its peers (written to a temporary file and renamed, so a peer
    /// never reads half an address).
    ///
    /// # Errors
    /// When the address file cannot be written.
    pub fn bound(&self, addr: SocketAddr) -> Result<(), ServiceError> {
        let _ = self.bound.set(addr);
        let Some(file) = self.config.address_file(&self.state_dir, &self.me) else {
            return Ok(());
        };
        let write = || -> std::io::Result<()> {
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = file.with_extension("addr.tmp");
            std::fs::write(&tmp, addr.to_string())?;
            std::fs::rename(&tmp, &file)
        };
        write().map_err(|e| {
            ServiceError::config("cluster.address_dir", format!("{}: {e}", file.display()))
        })
    }

    /// Where replica `name` is reached now (read again on every call: a
    /// restarted local replica publishes a new port).
    pub fn resolve(&self, name: &str) -> Option<HostPort> {
        let map = self.map.read().clone();
        let replica = map.replicas().iter().find(|r| r.name == name)?;
        if replica.name == self.me {
            if let Some(addr) = self.bound.get() {
                return Some((*addr).into());
            }
        }
        self.config.resolve(&self.state_dir, replica)
    }

    /// What the dashboard is told of this replica (see `ClusterStatus`).
    pub fn status(&self) -> pb::ClusterStatus {
        use std::sync::atomic::Ordering::Relaxed;
        let map = self.map.read().clone();
        let me = replica_index(&map, &self.me);
        let owned = wire_ranges(&map)
            .into_iter()
            .filter(|r| r.owner == me)
            .collect();
        pb::ClusterStatus {
            replica: self.me.clone(),
            replicas: map.replicas().iter().map(|r| r.name.clone()).collect(),
            partitions: map.partitions(),
            owned,
            forwarded_sent: self.stats.sent.load(Relaxed),
            forwarded_failed: self.stats.failed.load(Relaxed),
            forwarded_received: self.stats.received.load(Relaxed),
            forwarded_refused: self.stats.refused.load(Relaxed),
        }
    }

    /// The map as served to clients.
    pub fn served(&self) -> pb::PartitionMap {
        let map = self.map.read().clone();
        let replicas = map
            .replicas()
            .iter()
            .map(|r| pb::ReplicaInfo {
                name: r.name.clone(),
                addr: self
                    .resolve(&r.name)
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
            })
            .collect();
        pb::PartitionMap {
            partitions: map.partitions(),
            replicas,
            ranges: wire_ranges(&map),
            served_by: self.me.clone(),
            hash: txmesh_actors::partition::HASH_NAME.to_owned(),
        }
    }
}

/// Replica `name`'s index in the map's replica set.
fn replica_index(map: &PartitionMap, name: &str) -> u32 {
    map.replicas()
        .iter()
        .position(|r| r.name == name)
        .and_then(|i| u32::try_from(i).ok())
        .unwrap_or(0)
}

/// The map's ranges as the wire has them (owner by index).
fn wire_ranges(map: &PartitionMap) -> Vec<pb::PartitionRange> {
    map.ranges()
        .into_iter()
        .map(|(first, last, owner, epoch)| pb::PartitionRange {
            first,
            last,
            owner: replica_index(map, owner),
            epoch,
        })
        .collect()
}
