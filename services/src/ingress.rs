//! The ingress: the `Ingress` gRPC service over mTLS, the shard router and
//! the dashboard publisher, in one process.
//!
//! Start order: certificates, the listeners (health NOT_SERVING, every
//! transaction answered with a retryable UNAVAILABLE), the journal
//! recovered into account windows, shards, publisher, then SERVING (so
//! nothing is screened before its account's history is back). Stop order:
//! listener (no new streams), then the publisher keeps sending until the
//! dashboard has acknowledged everything journaled or the grace period
//! ends and stops (saving its acknowledged positions), then the shards and
//! the journal's writers, whose lock is let go last.

mod cluster;
mod forward;
mod handoff;
mod journal_metrics;
pub mod legacy;
mod metrics;
mod publish_client;
mod replica;
mod service;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use actix::Actor;
use txmesh_actors::{
    journal::{JournalHistograms, Journals, Recovered},
    publisher::PublisherStats,
    DashboardPublisher, PublisherStatusView, RouterOptions, ScreeningStats, ShardRouter,
};
use txmesh_certs::{CertStore, SpiffeId};
use txmesh_proto::{
    simetrik::reconciliation_service_server::ReconciliationServiceServer,
    v1::{ingress_server::IngressServer, replica_server::ReplicaServer},
};

/// The old reconciliation service's gRPC service, served beside Ingress.
pub const LEGACY_SERVICE: &str = "simetrik.ReconciliationService";

pub use cluster::{holds_history, read_members, ClusterView, ForwardStats};
pub use service::{IngressCounters, IngressService, InputFault, ScreenLimits, CODES};

use crate::{
    config::TxmeshConfig,
    error::ServiceError,
    health::Readiness,
    net::HandshakeStats,
    server::{Foundation, MeshServer, ServerSpec},
};

/// A running ingress.
pub struct IngressHandle {
    /// The faults injected over Admin.
    pub chaos: Arc<txmesh_chaos::Registry>,
    /// What `grpc.health.v1` reports.
    pub readiness: Readiness,
    pub local_addr: SocketAddr,
    /// The HTTPS listener serving `/metrics` (mTLS).
    pub metrics_addr: SocketAddr,
    /// The live certificates (reloaded from disk).
    pub certs: CertStore,
    pub counters: Arc<IngressCounters>,
    pub handshakes: Arc<HandshakeStats>,
    server: MeshServer,
    router: ShardRouter,
    journals: Journals,
    publisher: Arc<PublisherStats>,
    publisher_addr: actix::Addr<DashboardPublisher>,
    recovery: txmesh_actors::journal::RecoveryReport,
    view: Arc<ClusterView>,
}

/// Starts the ingress described by `config`. Must run inside an actix
/// `System` (shards and the publisher are actors).
///
/// # Errors
/// When certificates cannot be loaded, the config is invalid or the port
/// cannot be bound.
pub async fn start(config: &TxmeshConfig) -> Result<IngressHandle, ServiceError> {
    start_with(config, RouterOptions::default()).await
}

/// [`start`] with the router's clock and evaluation hook chosen by the
/// caller (tests inject evaluation failures this way).
///
/// # Errors
/// As [`start`].
pub async fn start_with(
    config: &TxmeshConfig,
    mut options: RouterOptions,
) -> Result<IngressHandle, ServiceError> {
    let spec = ServerSpec {
        grpc_name: "ingress-grpc",
        https_name: "ingress-https",
        grpc_service: "txmesh.v1.Ingress",
        identity: config.ingress.identity.clone(),
        grpc_listen: config.ingress.listen,
        https_listen: config.ingress.metrics_listen,
        handshake_timeout: Duration::from_millis(config.ingress.handshake_timeout_ms),
        ready_on_listen: false,
    };
    let mut base = Foundation::new(config, spec, options.chaos.clone()).await?;
    base.readiness.also(LEGACY_SERVICE).await;
    options.chaos = Some(base.chaos.clone());
    let counters = Arc::new(IngressCounters::new(self::metrics::screening_latency(
        &base.metrics,
    )));
    let view = ClusterView::new(&config.cluster, config.state_dir.clone())?;
    let ingress_id = SpiffeId::for_workload(&config.trust_domain, "ingress")?;
    view.settle(&base.certs, &ingress_id).await?;
    let routing = Arc::new(std::sync::OnceLock::new());
    let replica = view.is_clustered().then(|| {
        ReplicaServer::new(replica::ReplicaService::new(
            routing.clone(),
            base.policy.clone(),
            base.metrics.clone(),
            view.clone(),
            config.ingress.max_in_flight_batches,
            base.shutdown.clone(),
        ))
        .max_decoding_message_size(config.ingress.max_message_bytes)
    });
    if view.is_clustered() {
        let remote = forward::GrpcRemote::new(
            view.clone(),
            base.certs.clone(),
            ingress_id.clone(),
            config.actors.shards.max_batch,
            base.shutdown.clone(),
        );
        options.cluster = Some(txmesh_actors::router::Cluster {
            me: view.me.clone(),
            map: view.map.clone(),
            serving: view.serving.clone(),
            remote: Arc::new(remote),
        });
    }
    let service = IngressService::new(
        routing.clone(),
        base.policy.clone(),
        base.metrics.clone(),
        counters.clone(),
        ScreenLimits {
            max_in_flight: config.ingress.max_in_flight_batches,
            max_message_bytes: config.ingress.max_message_bytes,
            max_batch: config.actors.shards.max_batch,
            idle_timeout: Duration::from_millis(config.ingress.stream_idle_timeout_ms),
        },
        base.shutdown.clone(),
    )
    .with_chaos(base.chaos.clone())
    .with_cluster(view.clone());
    let legacy = ReconciliationServiceServer::new(legacy::LegacyService::new(
        service.clone(),
        config.ingress.legacy.clone(),
    ))
    .max_decoding_message_size(config.ingress.max_message_bytes);
    let ingress =
        IngressServer::new(service).max_decoding_message_size(config.ingress.max_message_bytes);
    let (metrics, certs, shutdown) = (
        base.metrics.clone(),
        base.certs.clone(),
        base.shutdown.clone(),
    );
    // Listening before the journal is recovered: probes see NOT_SERVING
    // (and callers a retryable UNAVAILABLE) until it is. The HTTPS listener
    // serves /metrics only.
    let server = base
        .serve(
            |r| {
                let r = r.add_service(ingress).add_service(legacy);
                match replica {
                    Some(replica) => r.add_service(replica),
                    None => r,
                }
            },
            |_| {},
        )
        .await?;
    if let Err(e) = view.bound(server.grpc_addr) {
        server
            .stop(tokio::time::Instant::now() + Duration::from_secs(1))
            .await;
        return Err(e);
    }

    let status_source: txmesh_actors::publisher::StatusSource = {
        let (counters, metrics, view) = (counters.clone(), metrics.clone(), view.clone());
        Arc::new(move |status| {
            counters.fill_status(status);
            status.mesh = Some(metrics.mesh());
            if view.is_clustered() {
                status.cluster = Some(view.status());
            }
        })
    };
    let held = view.is_clustered().then(|| view.held());
    let pipeline =
        match start_pipeline(config, options, &certs, &server.chaos, status_source, held).await {
            Ok(pipeline) => pipeline,
            Err(e) => {
                // Nothing may listen for a service that cannot screen.
                server
                    .stop(tokio::time::Instant::now() + Duration::from_secs(1))
                    .await;
                return Err(e);
            }
        };
    let Pipeline {
        router,
        journals,
        publisher: publisher_stats,
        publisher_addr,
        histograms,
        recovery,
    } = pipeline;
    self::metrics::register_forwarding(&metrics, &view);
    self::metrics::register(
        &metrics,
        &counters,
        router.stats(),
        &publisher_stats,
        &journals,
        &histograms,
        &recovery,
    );
    let _ = routing.set(router.clone());
    if view.is_clustered() {
        tokio::spawn(handoff::watch_members(view.clone(), shutdown.clone()));
        tokio::spawn(handoff::run(handoff::HandoffLinks {
            view: view.clone(),
            router: router.clone(),
            store: certs.clone(),
            ingress: ingress_id,
            shutdown: shutdown.clone(),
        }));
    }
    if !shutdown.is_cancelled() {
        server.readiness.serving().await;
    }
    watch_journal(&journals, server.readiness.clone(), shutdown);
    Ok(IngressHandle {
        chaos: server.chaos.clone(),
        readiness: server.readiness.clone(),
        local_addr: server.grpc_addr,
        metrics_addr: server.https_addr,
        certs: server.certs.clone(),
        counters,
        handshakes: server.grpc_handshakes.clone(),
        server,
        router,
        journals,
        publisher: publisher_stats,
        publisher_addr,
        recovery,
        view,
    })
}

/// What screens and publishes: the recovered journal, the shards on it and
/// the publisher reading it.
struct Pipeline {
    router: ShardRouter,
    journals: Journals,
    publisher: Arc<PublisherStats>,
    publisher_addr: actix::Addr<DashboardPublisher>,
    histograms: JournalHistograms,
    recovery: txmesh_actors::journal::RecoveryReport,
}

/// Recovers the journal, starts the shards on its windows, then the
/// publisher (same id as before the restart, resuming from the dashboard's
/// acknowledged positions).
async fn start_pipeline(
    config: &TxmeshConfig,
    options: RouterOptions,
    certs: &CertStore,
    chaos: &Arc<txmesh_chaos::Registry>,
    status_source: txmesh_actors::publisher::StatusSource,
    held: Option<Arc<txmesh_actors::partition::PartitionFlags>>,
) -> Result<Pipeline, ServiceError> {
    let histograms = JournalHistograms::default();
    let (journals, mut recovered) = open_journal(config, histograms.clone()).await?;
    if let Some(held) = held {
        // A replica's journal may still have records of accounts it has
        // handed over: only the partitions it holds come back.
        let count = held.len();
        let mut dropped = 0usize;
        for windows in &mut recovered.windows {
            let before = windows.len();
            windows.retain(|account, _| {
                held.contains(txmesh_actors::partition::partition_of(account, count))
            });
            dropped += before - windows.len();
        }
        if dropped > 0 {
            tracing::info!(
                dropped,
                "recovered accounts of partitions handed over are not kept"
            );
        }
    }
    let recovery = recovered.report;
    let router =
        ShardRouter::start_recovered(&config.actors, options, journals.clone(), recovered.windows);
    let dashboard_id = SpiffeId::for_workload(&config.trust_domain, "dashboard")?;
    let transport = publish_client::GrpcPublishTransport::new(
        config.ingress.dashboard_addr.clone(),
        certs,
        &dashboard_id,
    )?;
    let spiffe_path = certs.spiffe_id().path().to_owned();
    // A replica's publisher is named after it, so the dashboard tells the
    // replicas apart.
    let replica = if config.cluster.is_clustered() {
        format!("/{}", config.cluster.name)
    } else {
        String::new()
    };
    let publisher_id = journals
        .publisher_id(|| format!("{spiffe_path}{replica}-{:08x}", rand::random::<u32>()))?;
    let publisher = DashboardPublisher::new(
        publisher_id,
        config.actors.publisher.clone(),
        journals.clone(),
        Arc::new(transport),
    )
    .with_screening(router.stats().clone())
    .with_status_source(status_source)
    .with_chaos(chaos.clone());
    let stats = publisher.stats();
    let publisher_addr = publisher.start();
    Ok(Pipeline {
        router,
        journals,
        publisher: stats,
        publisher_addr,
        histograms,
        recovery,
    })
}

/// Reports NOT_SERVING while a shard's journal cannot write (new work is
/// refused meanwhile) and SERVING again once it can, until shutdown.
fn watch_journal(journals: &Journals, readiness: Readiness, shutdown: CancellationToken) {
    let mut changes = journals.health_changes();
    let journals = journals.clone();
    let task = async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
            }
            if shutdown.is_cancelled() {
                return;
            }
            if journals.is_healthy() {
                readiness.serving().await;
            } else {
                readiness.not_serving().await;
            }
        }
    };
    tokio::spawn(tracing::Instrument::instrument(
        task,
        tracing::info_span!("ingress.journal_health"),
    ));
}

/// `state_dir/journal`, or `state_dir/replicas/NAME/journal` for a
/// replica (replicas of one local run share a state directory).
pub fn journal_dir(config: &TxmeshConfig) -> std::path::PathBuf {
    if config.cluster.is_clustered() {
        config
            .state_dir
            .join("replicas")
            .join(&config.cluster.name)
            .join("journal")
    } else {
        config.state_dir.join("journal")
    }
}

/// Opens the journal under [`journal_dir`] (or in memory when
/// `actors.journal.enabled` is false) and replays it into windows, off the
/// async threads. Logs what recovery read and dropped.
async fn open_journal(
    config: &TxmeshConfig,
    histograms: JournalHistograms,
) -> Result<(Journals, Recovered), ServiceError> {
    let dir = config.actors.journal.enabled.then(|| journal_dir(config));
    let journal = config.actors.journal.clone();
    let window = config.actors.window.clone();
    let shards = config.actors.shard_count();
    let (journals, recovered) = tokio::task::spawn_blocking(move || {
        Journals::open(dir.as_deref(), &journal, &window, shards, &histograms)
    })
    .await
    .map_err(|e| ServiceError::config("actors.journal", e.to_string()))??;
    let report = &recovered.report;
    for (path, offset, bytes, why) in &report.dropped {
        tracing::error!(path = %path.display(), offset, bytes, why, "journal damage cut away at recovery: the records before it are kept");
    }
    tracing::info!(
        durable = journals.is_durable(),
        records = report.records,
        accounts = report.accounts,
        took_ms = report.took.as_millis() as u64,
        "journal recovered"
    );
    Ok((journals, recovered))
}

impl IngressHandle {
    /// Open gRPC connections per client identity.
    pub fn connections(&self) -> &crate::net::IdentityLimit {
        &self.server.connections
    }

    /// Open gRPC connections, idle or not.
    pub fn open_connections(&self) -> usize {
        self.server.idle.live()
    }

    /// Per-shard supervision, passivation and overload counters.
    pub fn screening(&self) -> &ScreeningStats {
        self.router.stats()
    }

    /// This replica's place among the replicas (what the dashboard is told),
    /// when it is one of several.
    pub fn cluster_status(&self) -> Option<txmesh_proto::v1::ClusterStatus> {
        self.view.is_clustered().then(|| self.view.status())
    }

    /// What the journal's recovery read and cut away at start.
    pub fn recovery(&self) -> &txmesh_actors::journal::RecoveryReport {
        &self.recovery
    }

    /// Whether every shard's journal can write.
    pub fn journal_healthy(&self) -> bool {
        self.journals.is_healthy()
    }

    /// Verdicts written to the journal since it was created (every shard).
    pub fn journaled(&self) -> u64 {
        self.journals.shards().iter().map(|s| s.committed()).sum()
    }

    /// The publisher's state.
    pub fn publisher(&self) -> PublisherStatusView {
        self.publisher.view(&self.journals)
    }

    /// Waits until every verdict handed to the publisher is acknowledged by
    /// the dashboard, or `within` passes. Returns whether it drained.
    pub async fn wait_drained(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        self.publisher.wait_drained(&self.journals, deadline).await
    }

    /// Stops within `grace` in all: probes see NOT_SERVING, no new
    /// streams, open streams are told to drain and answered, the shards
    /// stop, and the publisher delivers what it holds, all by one
    /// deadline. Returns whether the publisher drained.
    pub async fn stop(self, grace: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + grace;
        if !self.server.stop(deadline).await {
            tracing::warn!(?grace, "Screen streams still open at the shutdown deadline");
        }
        let drained = self.publisher.wait_drained(&self.journals, deadline).await;
        // The publisher first (it saves its acknowledged positions), then
        // the shards and the journal, whose lock is let go last.
        let _ = self
            .publisher_addr
            .send(txmesh_actors::publisher::StopPublisher)
            .await;
        self.router.stop();
        drained
    }
}
