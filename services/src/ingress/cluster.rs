//! This ingress among its replicas: the partition map it routes by, where
//! its peers are reached, the map it serves to partition-aware clients,
//! and the forwarding counters. The links to peers are in [`super::forward`],
//! the service peers call in [`super::replica`].

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::PathBuf,
    sync::{atomic::AtomicU64, Arc, OnceLock},
    time::Duration,
};

use parking_lot::{Mutex, RwLock};
use txmesh_actors::partition::{PartitionFlags, PartitionMap, Replica};
use txmesh_certs::{CertStore, SpiffeId};
use txmesh_proto::v1 as pb;

use crate::{config::ClusterConfig, error::ServiceError, net::HostPort};

/// The name a single ingress (no `[cluster]`) gives itself in the map it
/// serves.
const SINGLE: &str = "ingress";

/// How long a replica starting without a saved map waits for each peer's.
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(2);

/// What the ingress knows of the replica set.
pub struct ClusterView {
    /// This replica's name.
    pub me: String,
    /// The map the router routes by.
    pub map: Arc<RwLock<Arc<PartitionMap>>>,
    /// The partitions served now: owned under the current set, their
    /// history here, and not being handed over.
    pub serving: Arc<PartitionFlags>,
    /// The partitions whose history this replica's journal holds (what
    /// recovery keeps, and what is handed over when they move away).
    held: Arc<PartitionFlags>,
    /// Partitions whose handoff to their new owner is under way.
    sending: PartitionFlags,
    config: ClusterConfig,
    state_dir: PathBuf,
    /// This replica's own gRPC address, once bound.
    bound: OnceLock<SocketAddr>,
    pub stats: ForwardStats,
    /// Serialises changes of the map and the held set with their saving.
    changes: Mutex<()>,
    /// Woken when partitions may have to be handed over.
    pub handoff_wake: tokio::sync::Notify,
}

/// What a replica saves of the map, in
/// `state_dir/replicas/NAME/partition-map.json`: the set its map was
/// computed from, every partition's epoch, and the partitions whose
/// history its journal holds.
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct SavedMap {
    partitions: u32,
    replicas: Vec<String>,
    /// Runs `[first, last, epoch]`; absent (every epoch 1) in maps saved
    /// before handoffs existed.
    #[serde(default)]
    epochs: Vec<(u32, u32, u64)>,
    /// Runs `[first, last]`; absent before handoffs existed, meaning the
    /// partitions the saved set gives this replica.
    #[serde(default)]
    held: Option<Vec<(u32, u32)>>,
}

/// Forwarding and handoffs, counted.
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
    /// Handoffs completed: sent to a new owner, received from an old one.
    pub handoffs_sent: AtomicU64,
    pub handoffs_received: AtomicU64,
    /// Handoff attempts that failed (and are tried again).
    pub handoffs_failed: AtomicU64,
}

/// Consecutive partitions with the same value as runs `(first, last, value)`.
fn runs<T: PartialEq + Copy>(items: impl IntoIterator<Item = (u32, T)>) -> Vec<(u32, u32, T)> {
    let mut out: Vec<(u32, u32, T)> = Vec::new();
    for (p, value) in items {
        match out.last_mut() {
            Some(last) if last.1 + 1 == p && last.2 == value => last.1 = p,
            _ => out.push((p, p, value)),
        }
    }
    out
}

fn names(set: &[Replica]) -> Vec<&str> {
    set.iter().map(|r| r.name.as_str()).collect()
}

impl ClusterView {
    /// The view `config` describes: the configured replicas, or one
    /// replica owning every partition. The map is the configured set's
    /// first one until [`Self::settle`] reads the saved one.
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
        let n = map.partitions();
        let (serving, held) = (PartitionFlags::new(n), PartitionFlags::new(n));
        for p in map.owned_by(&me) {
            serving.set(p, true);
            held.set(p, true);
        }
        Ok(Arc::new(Self {
            me,
            map: Arc::new(RwLock::new(Arc::new(map))),
            serving: Arc::new(serving),
            held: Arc::new(held),
            sending: PartitionFlags::new(n),
            config: config.clone(),
            state_dir,
            bound: OnceLock::new(),
            stats: ForwardStats::default(),
            changes: Mutex::new(()),
            handoff_wake: tokio::sync::Notify::new(),
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

    /// Where relative paths of the settings start.
    pub fn state_dir(&self) -> &std::path::Path {
        &self.state_dir
    }

    /// The partitions whose history this replica holds (recovery keeps
    /// only their accounts).
    pub fn held(&self) -> Arc<PartitionFlags> {
        self.held.clone()
    }

    fn saved_file(&self) -> PathBuf {
        self.state_dir
            .join("replicas")
            .join(&self.me)
            .join("partition-map.json")
    }

    /// Takes up the map this replica saved (or, starting without one, the
    /// map a peer routes by, so the epochs agree with the cluster's), moved
    /// on to the replica set configured now; the partitions that move are
    /// handed over once the journal is recovered. A replica without a
    /// saved map holds only the partitions that never moved (epoch 1): the
    /// others' history is at their old owners, which hand it over.
    ///
    /// # Errors
    /// A saved map that cannot be read or does not form a map, or one that
    /// cannot be written.
    pub async fn settle(&self, store: &CertStore, ingress: &SpiffeId) -> Result<(), ServiceError> {
        if !self.is_clustered() {
            return Ok(());
        }
        let set = match self.config.members_path(&self.state_dir) {
            Some(path) => match read_members(&path) {
                Ok(set) => set,
                Err(why) => {
                    tracing::warn!(%why, "members file unreadable at start: the configured cluster.replicas is used");
                    self.config.replica_set()
                }
            },
            None => self.config.replica_set(),
        };
        let file = self.saved_file();
        let bad = |e: String| ServiceError::config("cluster", format!("{}: {e}", file.display()));
        // `None`: no saved map (a new replica).
        let (base, held): (PartitionMap, Option<HashSet<u32>>) = match std::fs::read(&file) {
            Ok(bytes) => {
                let saved: SavedMap =
                    serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
                let base = saved.map().map_err(bad)?;
                let held = match &saved.held {
                    Some(runs) => runs.iter().flat_map(|(a, b)| *a..=*b).collect(),
                    None => base.owned_by(&self.me).into_iter().collect(),
                };
                (base, Some(held))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let base = match self.peer_map(&set, store, ingress).await {
                    Some(map) => map,
                    None => PartitionMap::new(self.config.partitions, set.clone())
                        .map_err(|e| bad(e.to_string()))?,
                };
                (base, None)
            }
            Err(e) => return Err(bad(e.to_string())),
        };
        if base.partitions() != self.config.partitions {
            return Err(ServiceError::config(
                "cluster.partitions",
                format!(
                    "this replica's map has {} partitions, not {}: the partition count is fixed \
                     for the life of a cluster",
                    base.partitions(),
                    self.config.partitions
                ),
            ));
        }
        let (map, moves) = base
            .with_replicas(set)
            .map_err(|e| ServiceError::config("cluster.replicas", e.to_string()))?;
        let _guard = self.changes.lock();
        for p in 0..map.partitions() {
            let (owner, epoch) = map.owner(p);
            let holds = match &held {
                Some(held) => held.contains(&p),
                None => owner.name == self.me && epoch == 1,
            };
            self.held.set(p, holds);
        }
        *self.map.write() = Arc::new(map);
        self.refresh_serving();
        self.save()?;
        if !moves.is_empty() {
            tracing::info!(moves = moves.len(), "the replica set changed since this replica's map was saved: partitions move with a handoff");
        }
        Ok(())
    }

    /// The map a reachable peer routes by, if any answers.
    async fn peer_map(
        &self,
        set: &[Replica],
        store: &CertStore,
        ingress: &SpiffeId,
    ) -> Option<PartitionMap> {
        for peer in set.iter().filter(|r| r.name != self.me) {
            let Some(addr) = self.config.resolve(&self.state_dir, peer) else {
                continue;
            };
            let Ok(channel) = crate::net::mtls_channel(addr.clone(), store, ingress) else {
                continue;
            };
            let mut client = pb::replica_client::ReplicaClient::new(channel);
            let asked = client.get_partition_map(pb::PartitionMapRequest {});
            match tokio::time::timeout(BOOTSTRAP_TIMEOUT, asked).await {
                Ok(Ok(served)) => match from_wire(&served.into_inner()) {
                    Ok(map) => {
                        tracing::info!(peer = %peer.name, "no saved map: the cluster's epochs taken from a peer");
                        return Some(map);
                    }
                    Err(why) => tracing::warn!(peer = %peer.name, %why, "a peer's map is unusable"),
                },
                Ok(Err(status)) => {
                    tracing::info!(peer = %peer.name, %status, "no map from a peer");
                }
                Err(_) => tracing::info!(peer = %peer.name, "no map from a peer in time"),
            }
        }
        None
    }

    /// Saves the map and the held set (written to a temporary file, synced
    /// and renamed, so the file is whole or the previous one).
    fn save(&self) -> Result<(), ServiceError> {
        let file = self.saved_file();
        let map = self.map.read().clone();
        let saved = SavedMap {
            partitions: map.partitions(),
            replicas: names(map.replicas())
                .into_iter()
                .map(str::to_owned)
                .collect(),
            epochs: runs((0u32..).zip(map.epochs())),
            held: Some(
                runs(self.held.members().into_iter().map(|p| (p, ())))
                    .into_iter()
                    .map(|(first, last, ())| (first, last))
                    .collect(),
            ),
        };
        let io =
            |e: std::io::Error| ServiceError::config("cluster", format!("{}: {e}", file.display()));
        let json = serde_json::to_vec_pretty(&saved)
            .map_err(|e| ServiceError::config("cluster", e.to_string()))?;
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = file.with_extension("json.tmp");
        std::fs::write(&tmp, json).map_err(io)?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        std::fs::rename(&tmp, &file).map_err(io)
    }

    /// Saves, reporting a failure (the in-memory state goes on: what was
    /// not saved is recomputed from the last saved map on restart, and a
    /// handoff is then simply repeated).
    fn save_or_report(&self) {
        if let Err(e) = self.save() {
            tracing::error!(error = %e, "partition map not saved");
        }
    }

    /// Raises the served flags of what may be served and lowers the rest.
    fn refresh_serving(&self) {
        let map = self.map.read().clone();
        for p in 0..map.partitions() {
            let owned = map.owner(p).0.name == self.me;
            self.serving.set(
                p,
                owned && self.held.contains(p) && !self.sending.contains(p),
            );
        }
    }

    /// Moves the map on to replica set `set`: partitions that leave this
    /// replica stop being served at once (and are handed over), partitions
    /// that arrive are served once their history has. Returns whether
    /// anything changed.
    ///
    /// # Errors
    /// `set` does not form a map.
    pub fn apply_set(&self, set: Vec<Replica>) -> Result<bool, String> {
        let _guard = self.changes.lock();
        let current = self.map.read().clone();
        if current.replicas() == set.as_slice() {
            return Ok(false);
        }
        let (next, moves) = current.with_replicas(set).map_err(|e| e.to_string())?;
        // Leaving partitions stop being served before the map says so.
        for p in 0..next.partitions() {
            if next.owner(p).0.name != self.me {
                self.serving.set(p, false);
            }
        }
        tracing::info!(
            replicas = ?names(next.replicas()),
            moves = moves.len(),
            leaving = moves.iter().filter(|m| m.from == self.me).count(),
            arriving = moves.iter().filter(|m| m.to == self.me).count(),
            "replica set changed"
        );
        *self.map.write() = Arc::new(next);
        self.refresh_serving();
        self.save_or_report();
        self.handoff_wake.notify_one();
        Ok(true)
    }

    /// The partitions to hand over now, by new owner: held here, owned
    /// elsewhere, not already on their way. (partition, new epoch).
    pub fn outgoing(&self) -> Vec<(String, Vec<(u32, u64)>)> {
        let map = self.map.read().clone();
        let mut out: Vec<(String, Vec<(u32, u64)>)> = Vec::new();
        for p in self.held.members() {
            let (owner, epoch) = map.owner(p);
            if owner.name == self.me || self.sending.contains(p) {
                continue;
            }
            match out.iter_mut().find(|(o, _)| *o == owner.name) {
                Some((_, parts)) => parts.push((p, epoch)),
                None => out.push((owner.name.clone(), vec![(p, epoch)])),
            }
        }
        out
    }

    /// A handoff of `parts` starts.
    pub fn sending(&self, parts: &[u32]) {
        for p in parts {
            self.sending.set(*p, true);
        }
    }

    /// The handoff of `parts` ended: `done` when the new owner has their
    /// history (then this replica no longer holds it).
    pub fn sent(&self, parts: &[u32], done: bool) {
        let _guard = self.changes.lock();
        for p in parts {
            if done {
                self.held.set(*p, false);
            }
            self.sending.set(*p, false);
        }
        if done {
            self.save_or_report();
        }
        self.refresh_serving();
    }

    /// Whether `partition` is this replica's under the current set.
    pub fn owns(&self, partition: u32) -> bool {
        let map = self.map.read().clone();
        partition < map.partitions() && map.owner(partition).0.name == self.me
    }

    /// Whether this replica already holds `partition`'s history.
    pub fn holds(&self, partition: u32) -> bool {
        self.held.contains(partition)
    }

    /// This replica has the history of `parts` (partition, epoch) now,
    /// durably: it holds and serves them at those epochs.
    pub fn received(&self, parts: &[(u32, u64)]) {
        let _guard = self.changes.lock();
        let mut map = (**self.map.read()).clone();
        for (p, epoch) in parts {
            map = map.with_epoch(*p, *epoch);
            self.held.set(*p, true);
        }
        *self.map.write() = Arc::new(map);
        self.save_or_report();
        self.refresh_serving();
    }

    /// What a peer said of itself: it owns `partition` at `epoch`. Taken
    /// up when the map names the same owner at an older epoch (a replica
    /// that missed a change of the set learns the epochs from the owners).
    pub fn learn_epoch(&self, partition: u32, owner: &str, epoch: u64) {
        let current = self.map.read().clone();
        if partition >= current.partitions() {
            return;
        }
        let (known, known_epoch) = current.owner(partition);
        if known.name == owner && epoch > known_epoch {
            let _guard = self.changes.lock();
            let next = self.map.read().with_epoch(partition, epoch);
            *self.map.write() = Arc::new(next);
            tracing::info!(partition, owner, epoch, "epoch learned from its owner");
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
        // Runs of the partitions `keep` picks, each with its owner (this
        // replica, when `own`) and epoch.
        let ranges = |keep: &dyn Fn(u32, &str) -> bool, own: bool| {
            let picked = (0..map.partitions()).filter_map(|p| {
                let (owner, epoch) = map.owner(p);
                keep(p, &owner.name).then(|| {
                    let owner = if own {
                        me
                    } else {
                        replica_index(&map, &owner.name)
                    };
                    (p, (owner, epoch))
                })
            });
            runs(picked)
                .into_iter()
                .map(|(first, last, (owner, epoch))| pb::PartitionRange {
                    first,
                    last,
                    owner,
                    epoch,
                })
                .collect::<Vec<_>>()
        };
        let owned = ranges(&|p, _| self.serving.contains(p), true);
        let incoming = ranges(&|p, o| o == self.me && !self.held.contains(p), true);
        let outgoing = ranges(&|p, o| o != self.me && self.held.contains(p), false);
        let s = &self.stats;
        pb::ClusterStatus {
            replica: self.me.clone(),
            replicas: map.replicas().iter().map(|r| r.name.clone()).collect(),
            partitions: map.partitions(),
            owned,
            forwarded_sent: s.sent.load(Relaxed),
            forwarded_failed: s.failed.load(Relaxed),
            forwarded_received: s.received.load(Relaxed),
            forwarded_refused: s.refused.load(Relaxed),
            incoming,
            outgoing,
            handoffs_sent: s.handoffs_sent.load(Relaxed),
            handoffs_received: s.handoffs_received.load(Relaxed),
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

/// Replica `name`'s index in the map's replica set (the set's length for
/// a replica not in it: one being removed).
fn replica_index(map: &PartitionMap, name: &str) -> u32 {
    let i = map
        .replicas()
        .iter()
        .position(|r| r.name == name)
        .unwrap_or(map.replicas().len());
    u32::try_from(i).unwrap_or(u32::MAX)
}

impl SavedMap {
    /// The saved map (its replicas by name; addresses come from the set).
    fn map(&self) -> Result<PartitionMap, String> {
        let replicas = self
            .replicas
            .iter()
            .map(|name| Replica {
                name: name.clone(),
                addr: String::new(),
            })
            .collect();
        let mut epochs = vec![1; self.partitions as usize];
        for (first, last, epoch) in &self.epochs {
            for p in *first..=*last {
                if let Some(e) = epochs.get_mut(p as usize) {
                    *e = *epoch;
                }
            }
        }
        PartitionMap::restore(replicas, &epochs).map_err(|e| e.to_string())
    }
}

/// A map as a peer serves it, checked against our own rendezvous.
fn from_wire(served: &pb::PartitionMap) -> Result<PartitionMap, String> {
    let replicas: Vec<Replica> = served
        .replicas
        .iter()
        .map(|r| Replica {
            name: r.name.clone(),
            addr: String::new(),
        })
        .collect();
    let mut epochs = vec![0u64; served.partitions as usize];
    let mut owners = vec![u32::MAX; served.partitions as usize];
    for r in &served.ranges {
        for p in r.first..=r.last.min(served.partitions.saturating_sub(1)) {
            epochs[p as usize] = r.epoch;
            owners[p as usize] = r.owner;
        }
    }
    if epochs.contains(&0) {
        return Err("its ranges do not cover every partition".to_owned());
    }
    let map = PartitionMap::restore(replicas, &epochs).map_err(|e| e.to_string())?;
    let agrees = (0..map.partitions())
        .all(|p| replica_index(&map, &map.owner(p).0.name) == owners[p as usize]);
    if !agrees {
        return Err("its owners are not the ones this version computes".to_owned());
    }
    Ok(map)
}

/// Whether replica `name`'s saved map (under `state_dir`) says its journal
/// holds the history of some partitions: a replica that must run to hand
/// them over, even if the set no longer names it.
pub fn holds_history(state_dir: &std::path::Path, name: &str) -> bool {
    let file = state_dir
        .join("replicas")
        .join(name)
        .join("partition-map.json");
    std::fs::read(file)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<SavedMap>(&bytes).ok())
        .is_some_and(|saved| saved.held.is_some_and(|runs| !runs.is_empty()))
}

/// The replica set in a members file.
///
/// # Errors
/// The file cannot be read or does not hold a valid set (the message names
/// the file).
pub fn read_members(path: &std::path::Path) -> Result<Vec<Replica>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    ClusterConfig::parse_members(&text).map_err(|e| format!("{}: {e}", path.display()))
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
