//! What a browser gets: the snapshot on connect, then an update per tick
//! with only what changed since the one before (numbered), built from the
//! aggregator's state and [`super::live`]'s figures.

use std::{collections::BTreeMap, time::Instant};

use serde::Serialize;

use super::{
    live::{self, Golden, HistoryColumns, LinkGolden},
    mesh::MeshView,
    partitions::{self, PartitionMapView},
    Aggregator, Alert, PublisherRecord, Totals, MAX_ALERTS_PER_UPDATE, MESH_EVERY,
};

/// A publisher as the page shows it: what is kept, and what is live.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PublisherView {
    #[serde(flatten)]
    pub record: PublisherRecord,
    /// When the breaker entered its state (as first seen here).
    pub breaker_since_unix_ms: i64,
    /// Verdicts applied from it per second, over the golden window.
    pub verdicts_per_sec: f64,
    /// Not heard from for [`live::GONE_AFTER_MS`]: its state is old news.
    pub gone: bool,
}

impl std::ops::Deref for PublisherView {
    type Target = PublisherRecord;

    fn deref(&self) -> &PublisherRecord {
        &self.record
    }
}

/// Everything a browser gets on connect, and `/api/snapshot`.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The update this snapshot includes: the next one to apply is
    /// `seq + 1`.
    pub seq: u64,
    pub now_unix_ms: i64,
    pub totals: Totals,
    pub golden: Golden,
    /// Closed seconds, oldest first (at most `dashboard.history_secs`).
    pub history: HistoryColumns,
    pub history_secs: usize,
    /// Most recent first.
    pub recent_alerts: Vec<Alert>,
    pub publishers: BTreeMap<String, PublisherView>,
    pub mesh: Vec<MeshView>,
    /// Owner per partition, when the ingress runs as several replicas.
    pub partition_map: Option<PartitionMapView>,
    pub sessions: usize,
    pub dropped_updates: u64,
}

/// What changed since the update before (`seq - 1`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Update {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub seq: u64,
    pub now_unix_ms: i64,
    pub totals: Totals,
    pub golden: Golden,
    /// Seconds closed since.
    pub history: HistoryColumns,
    /// New alerts, most recent first, and how many more there were.
    pub alerts: Vec<Alert>,
    pub alerts_omitted: usize,
    /// Publishers that changed (whole).
    pub publishers: BTreeMap<String, PublisherView>,
    /// The whole mesh, when it changed (at most every [`MESH_EVERY`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh: Option<Vec<MeshView>>,
    /// The whole partition map, when it changed (with the mesh).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition_map: Option<PartitionMapView>,
    pub sessions: usize,
    pub dropped_updates: u64,
}

/// What the last update covered.
#[derive(Debug, Default)]
pub(super) struct Sent {
    seq: u64,
    /// The last closed second sent.
    history_t: i64,
    alert_id: u64,
    publishers: BTreeMap<String, PublisherView>,
    golden: Golden,
    mesh: Vec<MeshView>,
    partition_map: Option<PartitionMapView>,
    mesh_at: Option<Instant>,
}

pub(super) fn now_s() -> i64 {
    txmesh_actors::clock::system_unix_ms().div_euclid(1000)
}

impl Aggregator {
    /// Everything, as of the last update sent.
    pub(super) fn snapshot(&self) -> Snapshot {
        let (sessions, dropped_updates) = self.broadcaster_stats();
        Snapshot {
            kind: "snapshot",
            seq: self.sent.seq,
            now_unix_ms: txmesh_actors::clock::system_unix_ms(),
            totals: self.totals.clone(),
            golden: self.sent.golden.clone(),
            history: self.history.columns_after(i64::MIN),
            history_secs: self.history_secs,
            recent_alerts: self.alerts.iter().cloned().collect(),
            publishers: self.publisher_views(),
            mesh: self.sent.mesh.clone(),
            partition_map: self.sent.partition_map.clone(),
            sessions,
            dropped_updates,
        }
    }

    fn publisher_views(&self) -> BTreeMap<String, PublisherView> {
        let now_ms = txmesh_actors::clock::system_unix_ms();
        let now_s = now_ms.div_euclid(1000);
        self.publishers
            .iter()
            .map(|(id, record)| {
                let live = self.live.get(id);
                let view = PublisherView {
                    record: record.clone(),
                    breaker_since_unix_ms: live.map_or(0, |l| l.breaker_since_unix_ms),
                    verdicts_per_sec: live.map_or(0.0, |l| l.verdicts_per_sec(now_s)),
                    gone: now_ms - record.last_seen_unix_ms > live::GONE_AFTER_MS,
                };
                (id.clone(), view)
            })
            .collect()
    }

    fn golden(&self, publishers: &BTreeMap<String, PublisherView>) -> Golden {
        let (verdicts_per_sec, retries_per_sec) = self.history.link_rates();
        let live = || publishers.values().filter(|p| !p.gone);
        Golden {
            window_secs: live::GOLDEN_WINDOW_SECS,
            ingress: self.history.ingress_golden(),
            link: LinkGolden {
                verdicts_per_sec,
                retries_per_sec,
                backlog: live().map(|p| p.outbox_depth).sum(),
                shed: publishers.values().map(|p| p.shed_total).sum(),
                gaps: publishers.values().map(|p| p.gap_verdicts).sum(),
                duplicates: publishers.values().map(|p| p.duplicates).sum(),
                breakers_not_closed: live().filter(|p| p.breaker != "CLOSED").count(),
                publishers_live: live().count(),
            },
        }
    }

    fn mesh(&self, publishers: &BTreeMap<String, PublisherView>) -> Vec<MeshView> {
        let mut mesh = Vec::new();
        if let Some(metrics) = &self.metrics {
            mesh.push(MeshView::new("dashboard", None, &metrics.mesh(), false));
        }
        for (id, live) in &self.live {
            if let Some(m) = &live.mesh {
                let gone = publishers.get(id).is_none_or(|p| p.gone);
                mesh.push(MeshView::new("ingress", Some(id.clone()), m, gone));
            }
        }
        mesh
    }

    fn partition_map(
        &self,
        publishers: &BTreeMap<String, PublisherView>,
    ) -> Option<PartitionMapView> {
        partitions::assemble(self.live.iter().filter_map(|(id, live)| {
            let gone = publishers.get(id).is_none_or(|p| p.gone);
            Some((id.as_str(), live.cluster.as_ref()?, gone))
        }))
    }

    /// The update for this tick: what changed since the last one.
    pub(super) fn update(&mut self) -> Update {
        let now_ms = txmesh_actors::clock::system_unix_ms();
        self.history.roll(now_ms.div_euclid(1000));
        let publishers = self.publisher_views();
        let golden = self.golden(&publishers);
        let sent = &mut self.sent;
        sent.seq += 1;
        let history = self.history.columns_after(sent.history_t);
        sent.history_t = self.history.last_t();
        let fresh: Vec<&Alert> = self
            .alerts
            .iter()
            .take_while(|a| a.id > sent.alert_id)
            .collect();
        sent.alert_id = self.alerts.front().map_or(sent.alert_id, |a| a.id);
        let alerts_omitted = fresh.len().saturating_sub(MAX_ALERTS_PER_UPDATE);
        let alerts = fresh
            .into_iter()
            .take(MAX_ALERTS_PER_UPDATE)
            .cloned()
            .collect();
        let changed = publishers
            .iter()
            .filter(|(id, p)| sent.publishers.get(*id) != Some(p))
            .map(|(id, p)| (id.clone(), p.clone()))
            .collect();
        sent.golden = golden.clone();
        let mesh_due = sent.mesh_at.is_none_or(|at| at.elapsed() >= MESH_EVERY);
        let (mesh, partition_map) = if mesh_due {
            let mesh = self.mesh(&publishers);
            let map = self.partition_map(&publishers);
            let sent = &mut self.sent;
            sent.mesh_at = Some(Instant::now());
            let mesh = (mesh != sent.mesh).then(|| {
                sent.mesh = mesh.clone();
                mesh
            });
            let map = (map != sent.partition_map).then(|| {
                sent.partition_map = map.clone();
                map
            });
            (mesh, map.flatten())
        } else {
            (None, None)
        };
        self.sent.publishers = publishers;
        let (sessions, dropped_updates) = self.broadcaster_stats();
        Update {
            kind: "update",
            seq: self.sent.seq,
            now_unix_ms: now_ms,
            totals: self.totals.clone(),
            golden,
            history,
            alerts,
            alerts_omitted,
            publishers: changed,
            mesh,
            partition_map,
            sessions,
            dropped_updates,
        }
    }
}
