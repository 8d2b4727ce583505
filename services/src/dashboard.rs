//! The dashboard: `Dashboard.Publish` over mTLS gRPC feeding the
//! Aggregator, and an mTLS HTTPS listener for operators' browsers.
//!
//! Start order: aggregator (with saved state), broadcaster, gRPC listener,
//! HTTPS listener. Stop order: listeners, then the aggregator, which saves
//! its totals and watermarks as it stops.

mod aggregator;
pub mod broadcaster;
mod metrics;
mod publish;
mod web;

use std::{
    net::SocketAddr,
    sync::{atomic::AtomicU64, Arc},
    time::Duration,
};

use actix::{Actor, Addr};
use txmesh_certs::CertStore;
use txmesh_proto::v1::dashboard_server::DashboardServer;

pub use aggregator::{
    live::{Golden, HistoryColumns, IngressGolden, LinkGolden},
    mesh::{CountBy, MeshPeerView, MeshView},
    partitions::{ClaimView, HandoffView, PartitionMapView, CONFLICT, MOVING, UNCLAIMED},
    Aggregator, Alert, GetSnapshot, IngestCounters, PublisherRecord, PublisherView, Snapshot,
    Totals,
};

use crate::{
    config::TxmeshConfig,
    error::ServiceError,
    net::HandshakeStats,
    server::{Foundation, MeshServer, ServerSpec},
};

/// A running dashboard.
pub struct DashboardHandle {
    /// What `grpc.health.v1` reports.
    pub readiness: crate::health::Readiness,
    pub grpc_addr: SocketAddr,
    pub https_addr: SocketAddr,
    pub grpc_handshakes: Arc<HandshakeStats>,
    /// The live certificates (reloaded from disk).
    pub certs: CertStore,
    /// The faults injected over Admin.
    pub chaos: Arc<txmesh_chaos::Registry>,
    server: MeshServer,
    aggregator: Addr<Aggregator>,
    broadcaster: Addr<broadcaster::Broadcaster>,
}

/// Starts the dashboard described by `config`. Must run on an actix
/// `System`'s own thread (the HTTP server is spawned there).
///
/// # Errors
/// When certificates, saved state or ports are not usable.
pub async fn start(config: &TxmeshConfig) -> Result<DashboardHandle, ServiceError> {
    let dash = &config.dashboard;
    let spec = ServerSpec {
        grpc_name: "dashboard-grpc",
        https_name: "dashboard-https",
        grpc_service: "txmesh.v1.Dashboard",
        identity: dash.identity.clone(),
        grpc_listen: dash.grpc_listen,
        https_listen: dash.https_listen,
        handshake_timeout: Duration::from_millis(dash.handshake_timeout_ms),
        ready_on_listen: true,
    };
    let base = Foundation::new(config, spec, None).await?;

    let broadcast_stats = Arc::new(broadcaster::BroadcastStats::default());
    let session_stats = broadcast_stats.clone();
    let broadcaster = broadcaster::Broadcaster::new(broadcast_stats.clone()).start();
    let ingest = Arc::new(aggregator::IngestCounters::default());
    let state = (!dash.state_file.is_empty()).then(|| {
        aggregator::DurableState::beside(
            &config.state_dir.join(&dash.state_file),
            config.actors.journal.clone(),
        )
    });
    let aggregator = Aggregator::new(
        state.as_ref(),
        broadcaster.clone(),
        broadcast_stats,
        Duration::from_millis(dash.push_interval_ms),
        dash.recent_alerts,
        dash.history_secs,
    )?
    .with_mesh(base.metrics.clone())
    .with_counters(ingest.clone())
    .start();
    let origin_refusals = Arc::new(AtomicU64::new(0));
    self::metrics::register(&base.metrics, &session_stats, &ingest, &origin_refusals);

    let service = publish::PublishService::new(
        aggregator.clone(),
        base.policy.clone(),
        base.metrics.clone(),
        base.chaos.clone(),
    );
    let publish = DashboardServer::new(service)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let state = web::WebState {
        aggregator: aggregator.clone(),
        broadcaster: broadcaster.clone(),
        policy: base.policy.clone(),
        metrics: base.metrics.clone(),
        session_queue: dash.session_queue,
        next_session: Arc::new(AtomicU64::new(1)),
        allowed_origins: dash.allowed_origins.clone().into(),
        origin_refusals,
    };
    let server = base
        .serve(
            |r| r.add_service(publish),
            move |cfg| web::routes(cfg, &state),
        )
        .await?;
    Ok(DashboardHandle {
        readiness: server.readiness.clone(),
        grpc_addr: server.grpc_addr,
        https_addr: server.https_addr,
        grpc_handshakes: server.grpc_handshakes.clone(),
        certs: server.certs.clone(),
        chaos: server.chaos.clone(),
        server,
        aggregator,
        broadcaster,
    })
}

impl DashboardHandle {
    /// The current snapshot.
    ///
    /// # Errors
    /// When the aggregator has stopped.
    pub async fn snapshot(&self) -> Result<Snapshot, ServiceError> {
        self.aggregator
            .send(GetSnapshot)
            .await
            .map_err(|_| ServiceError::Stopped("dashboard's aggregator"))
    }

    /// Stops both listeners, then saves the totals.
    pub async fn stop(self) {
        // Probes see NOT_SERVING before anything else stops; browsers are
        // told the dashboard is going away before their connections close.
        self.readiness.not_serving().await;
        let _ = self.broadcaster.send(broadcaster::CloseAll).await;
        // Open Publish streams hold the gRPC server; give them a moment.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        self.server.stop(deadline).await;
        if let Ok(Err(e)) = self.aggregator.send(aggregator::Persist).await {
            tracing::error!(error = %e, "dashboard state not saved");
        }
        self.aggregator.do_send(StopAggregator);
    }
}

/// Stops the aggregator (and its push ticks).
struct StopAggregator;

impl actix::Message for StopAggregator {
    type Result = ();
}

impl actix::Handler<StopAggregator> for Aggregator {
    type Result = ();

    fn handle(&mut self, _msg: StopAggregator, ctx: &mut Self::Context) {
        actix::ActorContext::stop(ctx);
    }
}
