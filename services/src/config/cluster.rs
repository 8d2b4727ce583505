//! `[cluster]`: several ingress replicas sharing the accounts. Accounts map
//! to `partitions` virtual partitions, partitions to the replicas listed in
//! `replicas` by rendezvous hashing (see `txmesh_actors::partition`).
//! Ownership follows this list, not liveness: a replica that is down keeps
//! its partitions, and its accounts are answered with a retryable
//! UNAVAILABLE until it is back.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use txmesh_actors::{
    config::Problems,
    partition::{PartitionMap, Replica, MAX_PARTITIONS, MAX_REPLICAS},
};

use crate::net::HostPort;

/// How this ingress finds its place among the replicas.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This replica's name in `replicas` (a StatefulSet pod's name,
    /// `ingress-0`). Empty: a single ingress that owns every account.
    pub name: String,
    /// The replica set, in order: `NAME`, or `NAME=HOST:PORT` to give its
    /// gRPC address. Every replica must be given the same list. From the
    /// environment or `--set`, one comma-separated string.
    #[serde(deserialize_with = "list_or_commas")]
    pub replicas: Vec<String>,
    /// Where the replica set comes from while running, instead of
    /// `replicas`: a file (relative to `state_dir`) with one entry per line
    /// (or comma-separated), `#` starting a comment, read every
    /// `members_poll_ms`. A change moves partitions with a handoff. A file
    /// that is missing or does not form a valid set is reported and the
    /// last good set kept. Empty: the set is `replicas`, fixed.
    pub members_file: String,
    #[serde(deserialize_with = "txmesh_actors::config::duration::millis")]
    pub members_poll_ms: u64,
    /// Virtual partitions the accounts are spread over. Fixed for the life
    /// of a cluster: changing it moves almost every account.
    pub partitions: u32,
    /// Where a replica listed by name alone is reached, `{name}` replaced
    /// by its name (Kubernetes: `{name}.txmesh-ingress-headless:7443`).
    pub peer_addr: String,
    /// Local runs: each replica writes its bound gRPC address to
    /// `DIR/NAME.addr` (relative to `state_dir`) and reads its peers'
    /// there on every connection, so ports may be chosen by the OS. Empty:
    /// not used.
    pub address_dir: String,
    /// A forwarded request not answered within this is answered to its
    /// caller with a retryable UNAVAILABLE and the link reconnects, ms.
    #[serde(deserialize_with = "txmesh_actors::config::duration::millis")]
    pub forward_timeout_ms: u64,
    /// Forwarded requests in flight per peer; past that, forwarded work
    /// waits in a queue of `forward_queue` parts, then is refused with a
    /// retryable RESOURCE_EXHAUSTED.
    pub forward_in_flight: usize,
    pub forward_queue: usize,
    /// The retry delay suggested for accounts of an unreachable replica, ms.
    #[serde(deserialize_with = "txmesh_actors::config::duration::millis")]
    pub unreachable_retry_after_ms: u64,
}

/// `NAME` or `NAME=HOST:PORT`.
fn parse_entry(entry: &str) -> Replica {
    match entry.split_once('=') {
        Some((name, addr)) => Replica {
            name: name.trim().to_owned(),
            addr: addr.trim().to_owned(),
        },
        None => Replica {
            name: entry.trim().to_owned(),
            addr: String::new(),
        },
    }
}

/// Every entry's name and address are well formed.
fn check_set(set: &[Replica], key: &str, p: &mut Problems) {
    for r in set {
        let bad_name = r.name.is_empty()
            || !r
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        p.bad_if(
            bad_name,
            key,
            format!("{:?}: a name is letters, digits, '-' and '.'", r.name),
        );
        p.bad_if(
            !r.addr.is_empty() && r.addr.parse::<HostPort>().is_err(),
            key,
            format!("{}: {:?} is not HOST:PORT", r.name, r.addr),
        );
    }
}

/// A list, or one string of comma-separated items (how an environment
/// variable or `--set` gives a list).
fn list_or_commas<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        List(Vec<String>),
        Commas(String),
    }
    Ok(match Given::deserialize(d)? {
        Given::List(items) => items,
        Given::Commas(s) => s
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            replicas: Vec::new(),
            members_file: String::new(),
            members_poll_ms: 500,
            partitions: 1024,
            peer_addr: "{name}:7443".to_owned(),
            address_dir: String::new(),
            forward_timeout_ms: 5_000,
            forward_in_flight: 256,
            forward_queue: 1024,
            unreachable_retry_after_ms: 1_000,
        }
    }
}

impl ClusterConfig {
    /// Whether this ingress is one replica of several.
    pub fn is_clustered(&self) -> bool {
        !self.name.is_empty()
    }

    /// The configured replica set, with the addresses given inline (others
    /// are found by [`Self::resolve`]).
    pub fn replica_set(&self) -> Vec<Replica> {
        self.replicas.iter().map(|e| parse_entry(e)).collect()
    }

    /// The members file, when the set comes from one.
    pub fn members_path(&self, state_dir: &Path) -> Option<PathBuf> {
        (!self.members_file.is_empty()).then(|| state_dir.join(&self.members_file))
    }

    /// The replica set a members file gives.
    ///
    /// # Errors
    /// An entry that is not `NAME` or `NAME=HOST:PORT`, a name listed twice,
    /// or no entry at all.
    pub fn parse_members(text: &str) -> Result<Vec<Replica>, String> {
        let set: Vec<Replica> = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or_default())
            .flat_map(|l| l.split(','))
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(parse_entry)
            .collect();
        let mut p = Problems::default();
        check_set(&set, "cluster.members_file", &mut p);
        if let Err(e) = PartitionMap::new(1, set.clone()) {
            p.bad_if(true, "cluster.members_file", e.to_string());
        }
        match p.into_result() {
            Ok(()) => Ok(set),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The first map: the configured set, every ownership at epoch 1.
    ///
    /// # Errors
    /// As `PartitionMap::new` (validation catches these first).
    pub fn partition_map(&self) -> Result<PartitionMap, txmesh_actors::partition::PartitionError> {
        PartitionMap::new(self.partitions, self.replica_set())
    }

    /// The address file of replica `name`, when addresses are published.
    pub fn address_file(&self, state_dir: &Path, name: &str) -> Option<PathBuf> {
        (!self.address_dir.is_empty()).then(|| {
            state_dir
                .join(&self.address_dir)
                .join(format!("{name}.addr"))
        })
    }

    /// Where `replica` is reached now: its inline address, else its
    /// published address file, else `peer_addr`.
    pub fn resolve(&self, state_dir: &Path, replica: &Replica) -> Option<HostPort> {
        if !replica.addr.is_empty() {
            return replica.addr.parse().ok();
        }
        if let Some(file) = self.address_file(state_dir, &replica.name) {
            return std::fs::read_to_string(file).ok()?.trim().parse().ok();
        }
        self.peer_addr.replace("{name}", &replica.name).parse().ok()
    }

    pub(super) fn check(&self, p: &mut Problems) {
        p.bad_if(
            self.partitions == 0 || self.partitions > MAX_PARTITIONS,
            "cluster.partitions",
            format!("must be between 1 and {MAX_PARTITIONS}"),
        );
        for (key, value) in [
            ("cluster.forward_timeout_ms", self.forward_timeout_ms),
            ("cluster.forward_in_flight", self.forward_in_flight as u64),
            ("cluster.forward_queue", self.forward_queue as u64),
        ] {
            p.at_least_one(key, value);
        }
        if !self.is_clustered() {
            p.bad_if(
                !self.replicas.is_empty(),
                "cluster.name",
                "must name this replica (one of cluster.replicas) when cluster.replicas is set",
            );
            return;
        }
        let set = self.replica_set();
        p.bad_if(
            set.is_empty() || set.len() > MAX_REPLICAS,
            "cluster.replicas",
            format!("must list between 1 and {MAX_REPLICAS} replicas, this one included"),
        );
        p.bad_if(
            !set.iter().any(|r| r.name == self.name),
            "cluster.name",
            format!("{:?} is not in cluster.replicas", self.name),
        );
        check_set(&set, "cluster.replicas", p);
        p.at_least_one("cluster.members_poll_ms", self.members_poll_ms);
        if let Err(e) = PartitionMap::new(self.partitions.max(1), set) {
            p.bad_if(true, "cluster.replicas", e.to_string());
        }
        p.bad_if(
            self.address_dir.is_empty()
                && self
                    .peer_addr
                    .replace("{name}", "x")
                    .parse::<HostPort>()
                    .is_err(),
            "cluster.peer_addr",
            "must be HOST:PORT, with {name} standing for a replica's name",
        );
        p.bad_if(
            self.unreachable_retry_after_ms > u64::from(u32::MAX),
            "cluster.unreachable_retry_after_ms",
            "is too large",
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{ConfigSources, TxmeshConfig};

    fn load(overrides: &[(&str, &str)]) -> Result<TxmeshConfig, String> {
        let sources = ConfigSources {
            overrides: overrides
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..ConfigSources::default()
        };
        TxmeshConfig::load(&sources).map_err(|e| e.to_string())
    }

    #[test]
    fn a_replica_set_from_one_string_and_its_addresses() {
        let config = load(&[
            ("cluster.name", "ingress-1"),
            (
                "cluster.replicas",
                "ingress-0, ingress-1=10.0.0.2:7443,ingress-2",
            ),
            ("cluster.peer_addr", "{name}.txmesh-ingress-headless:7443"),
        ])
        .expect("valid");
        let set = config.cluster.replica_set();
        assert_eq!(set.len(), 3);
        let dir = std::path::Path::new("/nonexistent");
        let addr = |i: usize| config.cluster.resolve(dir, &set[i]).map(|a| a.to_string());
        assert_eq!(addr(1).as_deref(), Some("10.0.0.2:7443"));
        assert_eq!(
            addr(2).as_deref(),
            Some("ingress-2.txmesh-ingress-headless:7443")
        );
    }

    #[test]
    fn a_bad_cluster_is_named_by_its_key() {
        for (sets, key) in [
            (vec![("cluster.replicas", "ingress-0")], "cluster.name"),
            (
                vec![
                    ("cluster.name", "ingress-9"),
                    ("cluster.replicas", "ingress-0"),
                ],
                "cluster.name",
            ),
            (
                vec![("cluster.name", "a"), ("cluster.replicas", "a,a")],
                "cluster.replicas",
            ),
            (
                vec![("cluster.name", "a"), ("cluster.replicas", "a=nowhere")],
                "cluster.replicas",
            ),
            (vec![("cluster.partitions", "0")], "cluster.partitions"),
        ] {
            let err = load(&sets).expect_err("invalid");
            assert!(err.contains(key), "{sets:?}: {err}");
        }
    }
}
