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
use tonic::transport::Server;
use txmesh_certs::CertStore;

use crate::metrics::Metrics;
use txmesh_proto::v1::dashboard_server::DashboardServer;

pub use aggregator::{
    Aggregator, Alert, GetSnapshot, IngestCounters, PublisherRecord, Snapshot, Totals,
};

use crate::{
    config::TxmeshConfig,
    error::ServiceError,
    net::{mtls_incoming, HandshakeStats},
    shutdown::{self, Trigger},
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
    aggregator: Addr<Aggregator>,
    broadcaster: Addr<broadcaster::Broadcaster>,
    http: actix_web::dev::ServerHandle,
    trigger: Trigger,
    grpc: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

/// Starts the dashboard described by `config`. Must run on an actix
/// `System`'s own thread (the HTTP server is spawned there).
///
/// # Errors
/// When certificates, saved state or ports are not usable.
pub async fn start(config: &TxmeshConfig) -> Result<DashboardHandle, ServiceError> {
    let dash = &config.dashboard;
    let store = CertStore::open(&config.identity_dir(&dash.identity), &config.trust_domain)?;
    let policy = Arc::new(config.policy()?);

    let broadcast_stats = Arc::new(broadcaster::BroadcastStats::default());
    let session_stats = broadcast_stats.clone();
    let broadcaster = broadcaster::Broadcaster::new(broadcast_stats.clone()).start();
    let ingest = Arc::new(aggregator::IngestCounters::default());
    // Faults arrive over Admin; with none injected they cost one atomic load.
    let chaos = Arc::new(txmesh_chaos::Registry::new(Default::default()));
    let state_file = (!dash.state_file.is_empty()).then(|| config.state_dir.join(&dash.state_file));
    let aggregator = Aggregator::new(
        state_file,
        broadcaster.clone(),
        broadcast_stats,
        Duration::from_millis(dash.push_interval_ms),
        dash.recent_alerts,
        dash.throughput_window_secs,
    )?
    .with_counters(ingest.clone())
    .start();

    let (trigger, shutdown) = shutdown::channel();
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let readiness = crate::health::Readiness::new(health_reporter, "txmesh.v1.Dashboard").await;
    let tls = txmesh_certs::server_config(&store, &[txmesh_certs::ALPN_H2])?;
    let metrics = Arc::new(Metrics::new(&["dashboard-grpc", "dashboard-https"]));
    let origin_refusals = Arc::new(AtomicU64::new(0));
    self::metrics::register(&metrics, &session_stats, &ingest, &origin_refusals);
    // Stops with the listeners' shutdown signal.
    crate::net::watch_certs(
        store.clone(),
        config.tls.reload_interval(),
        shutdown.clone(),
        metrics.clone(),
    );
    let incoming = mtls_incoming(
        dash.grpc_listen,
        tls,
        Duration::from_millis(dash.handshake_timeout_ms),
        "dashboard-grpc",
        shutdown.clone(),
        metrics.clone(),
    )
    .await?;
    let grpc_addr = incoming.local_addr;
    let grpc_handshakes = incoming.stats.clone();
    let service = publish::PublishService::new(
        aggregator.clone(),
        policy.clone(),
        metrics.clone(),
        chaos.clone(),
    );
    let admin = crate::admin::AdminService::new(chaos.clone(), policy.clone(), metrics.clone());
    let grpc = tokio::spawn(
        Server::builder()
            .add_service(health_service)
            .add_service(crate::grpc::reflection_service()?)
            .add_service(
                DashboardServer::new(service)
                    .max_decoding_message_size(64 << 20)
                    .max_encoding_message_size(64 << 20),
            )
            .add_service(txmesh_proto::v1::admin_server::AdminServer::new(admin))
            .serve_with_incoming_shutdown(incoming.stream, async move { shutdown.wait().await }),
    );

    // actix-web adds http/1.1 (WebSocket) and h2 to the ALPN list itself.
    let https_tls = txmesh_certs::server_config_with(
        &store,
        &[],
        Some(metrics.reject_hook("dashboard-https")),
    )?;
    let listener =
        std::net::TcpListener::bind(dash.https_listen).map_err(|source| ServiceError::Bind {
            addr: dash.https_listen,
            source,
        })?;
    let https_addr = listener.local_addr().map_err(|source| ServiceError::Bind {
        addr: dash.https_listen,
        source,
    })?;
    let state = web::WebState {
        aggregator: aggregator.clone(),
        broadcaster: broadcaster.clone(),
        policy: policy.clone(),
        metrics: metrics.clone(),
        session_queue: dash.session_queue,
        next_session: Arc::new(AtomicU64::new(1)),
        allowed_origins: dash.allowed_origins.clone().into(),
        origin_refusals: origin_refusals.clone(),
    };
    let metrics_state = crate::https::MetricsState {
        policy,
        metrics: metrics.clone(),
    };
    let server = actix_web::HttpServer::new(move || {
        let headers = web::SECURITY_HEADERS
            .iter()
            .fold(actix_web::middleware::DefaultHeaders::new(), |h, kv| {
                h.add(*kv)
            });
        actix_web::App::new()
            .wrap(headers)
            .app_data(actix_web::web::Data::new(state.clone()))
            .route("/", actix_web::web::get().to(web::asset))
            .route("/app.js", actix_web::web::get().to(web::asset))
            .route("/app.css", actix_web::web::get().to(web::asset))
            .route("/api/snapshot", actix_web::web::get().to(web::snapshot))
            .route("/ws", actix_web::web::get().to(web::websocket))
            .app_data(actix_web::web::Data::new(metrics_state.clone()))
            .route("/metrics", actix_web::web::get().to(crate::https::metrics))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(2)
    .client_request_timeout(Duration::from_millis(dash.handshake_timeout_ms))
    // Set before the listener is added: it applies to listeners bound after.
    .tls_handshake_timeout(Duration::from_millis(dash.handshake_timeout_ms))
    .on_connect(crate::https::record_peer)
    .listen_rustls_0_23(listener, https_tls)
    .map_err(|source| ServiceError::Bind {
        addr: https_addr,
        source,
    })?
    .run();
    let http = server.handle();
    actix_rt::spawn(server);
    tracing::info!(%grpc_addr, %https_addr, identity = %store.spiffe_id(), "dashboard listening (mTLS)");
    readiness.serving().await;
    Ok(DashboardHandle {
        readiness,
        grpc_addr,
        https_addr,
        grpc_handshakes,
        certs: store,
        chaos,
        aggregator,
        broadcaster,
        http,
        trigger,
        grpc,
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
            .map_err(|_| ServiceError::config("dashboard", "aggregator stopped"))
    }

    /// Stops both listeners, then saves the totals.
    pub async fn stop(self) {
        // Probes see NOT_SERVING before anything else stops; browsers are
        // told the dashboard is going away before their connections close.
        self.readiness.not_serving().await;
        let _ = self.broadcaster.send(broadcaster::CloseAll).await;
        self.trigger.fire();
        self.http.stop(true).await;
        // Open Publish streams hold the gRPC server; give them a moment.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.grpc).await;
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
