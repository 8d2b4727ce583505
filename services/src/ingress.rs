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
use tonic::transport::Server;
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
    metrics::Metrics,
    net::{mtls_incoming, HandshakeStats},
    shutdown::{self, Trigger},
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
    metrics_server: actix_web::dev::ServerHandle,
    /// The live certificates (reloaded from disk).
    pub certs: CertStore,
    pub counters: Arc<IngressCounters>,
    pub handshakes: Arc<HandshakeStats>,
    router: ShardRouter,
    outbox: Outbox,
    publisher: Arc<PublisherStats>,
    trigger: Trigger,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
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
    // Faults arrive over Admin; with none injected they cost one atomic load.
    let chaos = options
        .chaos
        .get_or_insert_with(|| Arc::new(txmesh_chaos::Registry::new(Default::default())))
        .clone();
    let store = CertStore::open(
        &config.identity_dir(&config.ingress.identity),
        &config.trust_domain,
    )?;
    let policy = Arc::new(config.policy()?);
    let router = ShardRouter::start_with(&config.actors, options);
    let outbox = Outbox::new(config.actors.publisher.outbox_capacity);

    let dashboard_id = SpiffeId::for_workload(&config.trust_domain, "dashboard")?;
    let transport = publish_client::GrpcPublishTransport::new(
        config.ingress.dashboard_addr,
        &store,
        &dashboard_id,
    )?;
    let publisher_id = format!("{}-{:08x}", store.spiffe_id().path(), rand::random::<u32>());
    let publisher = DashboardPublisher::new(
        publisher_id,
        config.actors.publisher.clone(),
        outbox.clone(),
        Arc::new(transport),
    )
    .with_screening(router.stats().clone())
    .with_chaos(chaos.clone());
    let publisher_stats = publisher.stats();
    publisher.start();

    let metrics = Arc::new(Metrics::new(&["ingress-grpc", "ingress-https"]));
    let counters = Arc::new(IngressCounters::new(self::metrics::screening_latency(
        &metrics,
    )));
    self::metrics::register(
        &metrics,
        &counters,
        router.stats(),
        &publisher_stats,
        &outbox,
    );
    let (trigger, shutdown) = shutdown::channel();
    let service = IngressService::new(
        router.clone(),
        outbox.clone(),
        policy.clone(),
        metrics.clone(),
        counters.clone(),
        ScreenLimits {
            max_in_flight: config.ingress.max_in_flight_batches,
            max_message_bytes: config.ingress.max_message_bytes,
            max_batch: config.actors.shards.max_batch,
        },
        shutdown.clone(),
    )
    .with_chaos(chaos.clone());
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let readiness = Readiness::new(health_reporter, "txmesh.v1.Ingress").await;
    let reflection = crate::grpc::reflection_service()?;

    let tls = txmesh_certs::server_config(&store, &[txmesh_certs::ALPN_H2])?;
    // Stops with the listener's shutdown signal.
    crate::net::watch_certs(
        store.clone(),
        config.tls.reload_interval(),
        shutdown.clone(),
        metrics.clone(),
    );
    let incoming = mtls_incoming(
        config.ingress.listen,
        tls,
        Duration::from_millis(config.ingress.handshake_timeout_ms),
        "ingress-grpc",
        shutdown.clone(),
        metrics.clone(),
    )
    .await?;
    let local_addr = incoming.local_addr;
    let handshakes = incoming.stats.clone();
    let (metrics_addr, metrics_server) =
        metrics_listener(config, &store, policy.clone(), metrics.clone())?;
    let server = tokio::spawn(
        Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(
                IngressServer::new(service)
                    .max_decoding_message_size(config.ingress.max_message_bytes),
            )
            .add_service(txmesh_proto::v1::admin_server::AdminServer::new(
                crate::admin::AdminService::new(chaos.clone(), policy, metrics.clone()),
            ))
            .serve_with_incoming_shutdown(incoming.stream, async move { shutdown.wait().await }),
    );
    tracing::info!(%local_addr, %metrics_addr, identity = %store.spiffe_id(), "ingress listening (mTLS)");
    // Ready: certificates, shards, publisher and listeners are up.
    readiness.serving().await;
    Ok(IngressHandle {
        chaos,
        readiness,
        local_addr,
        metrics_addr,
        metrics_server,
        certs: store,
        counters,
        handshakes,
        router,
        outbox,
        publisher: publisher_stats,
        trigger,
        server,
    })
}

/// The ingress's HTTPS listener: `/metrics` only, mTLS, on the System
/// thread's actix-web server.
fn metrics_listener(
    config: &TxmeshConfig,
    store: &CertStore,
    policy: Arc<txmesh_certs::AuthzPolicy>,
    metrics: Arc<Metrics>,
) -> Result<(SocketAddr, actix_web::dev::ServerHandle), ServiceError> {
    let addr = config.ingress.metrics_listen;
    let bind_err = |source| ServiceError::Bind { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    // actix-web adds its own ALPN (h2, http/1.1).
    let tls =
        txmesh_certs::server_config_with(store, &[], Some(metrics.reject_hook("ingress-https")))?;
    let timeout = Duration::from_millis(config.ingress.handshake_timeout_ms);
    let state = crate::https::MetricsState { policy, metrics };
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(actix_web::web::Data::new(state.clone()))
            .route("/metrics", actix_web::web::get().to(crate::https::metrics))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .client_request_timeout(timeout)
    .tls_handshake_timeout(timeout)
    .on_connect(crate::https::record_peer)
    .listen_rustls_0_23(listener, tls)
    .map_err(bind_err)?
    .run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok((local, handle))
}

impl IngressHandle {
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
        while tokio::time::Instant::now() < deadline {
            if self.publisher().drained() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.publisher().drained()
    }

    /// Stops accepting, stops the shards, and gives the publisher up to
    /// `grace` to deliver what it holds. Returns whether it drained.
    pub async fn stop(self, grace: Duration) -> bool {
        // Probes see NOT_SERVING before anything else stops.
        self.readiness.not_serving().await;
        self.trigger.fire();
        self.metrics_server.stop(true).await;
        let _ = tokio::time::timeout(grace, self.server).await;
        let drained = {
            let deadline = tokio::time::Instant::now() + grace;
            loop {
                let view = self.publisher.view(&self.outbox);
                if view.drained() || tokio::time::Instant::now() >= deadline {
                    break view.drained();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        self.router.stop();
        drained
    }
}
