//! The ingress: the `Ingress` gRPC service over mTLS, the shard router and
//! the dashboard publisher, in one process.
//!
//! Start order: certificates, shards, publisher, then the listener (so no
//! call arrives before it can be screened). Stop order: listener (no new
//! streams), shards, then the publisher keeps flushing until its outbox is
//! drained or the grace period ends.

mod metrics;
mod publish_client;
mod service;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use actix::Actor;
use txmesh_actors::{
    publisher::PublisherStats, DashboardPublisher, Outbox, PublisherStatusView, RouterOptions,
    ScreeningStats, ShardRouter,
};
use txmesh_certs::{CertStore, SpiffeId};
use txmesh_proto::v1::ingress_server::IngressServer;

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
    outbox: Outbox,
    publisher: Arc<PublisherStats>,
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
    };
    let base = Foundation::new(config, spec, options.chaos.clone()).await?;
    options.chaos = Some(base.chaos.clone());
    let router = ShardRouter::start_with(&config.actors, options);
    let outbox = Outbox::new(config.actors.publisher.outbox_capacity);

    let dashboard_id = SpiffeId::for_workload(&config.trust_domain, "dashboard")?;
    let transport = publish_client::GrpcPublishTransport::new(
        config.ingress.dashboard_addr,
        &base.certs,
        &dashboard_id,
    )?;
    let publisher_id = format!(
        "{}-{:08x}",
        base.certs.spiffe_id().path(),
        rand::random::<u32>()
    );
    let publisher = DashboardPublisher::new(
        publisher_id,
        config.actors.publisher.clone(),
        outbox.clone(),
        Arc::new(transport),
    )
    .with_screening(router.stats().clone())
    .with_chaos(base.chaos.clone());
    let publisher_stats = publisher.stats();
    publisher.start();

    let counters = Arc::new(IngressCounters::new(self::metrics::screening_latency(
        &base.metrics,
    )));
    self::metrics::register(
        &base.metrics,
        &counters,
        router.stats(),
        &publisher_stats,
        &outbox,
    );
    let service = IngressService::new(
        router.clone(),
        outbox.clone(),
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
    .with_chaos(base.chaos.clone());
    let ingress =
        IngressServer::new(service).max_decoding_message_size(config.ingress.max_message_bytes);
    // The HTTPS listener serves /metrics only.
    let server = base.serve(|r| r.add_service(ingress), |_| {}).await?;
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
        outbox,
        publisher: publisher_stats,
    })
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

    /// The publisher's state.
    pub fn publisher(&self) -> PublisherStatusView {
        self.publisher.view(&self.outbox)
    }

    /// Waits until every verdict handed to the publisher is acknowledged by
    /// the dashboard, or `within` passes. Returns whether it drained.
    pub async fn wait_drained(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        self.publisher.wait_drained(&self.outbox, deadline).await
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
        let drained = self.publisher.wait_drained(&self.outbox, deadline).await;
        self.router.stop();
        drained
    }
}
