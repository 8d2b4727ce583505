//! One way to stand up a txmesh service: its certificates (watched and
//! reloaded), authorization policy, metrics, readiness, and its two mTLS
//! listeners. The gRPC listener serves health, reflection, Admin and the
//! service's own services; the HTTPS listener (actix-web) serves `/metrics`
//! and the service's own routes, with the security headers. The ingress and
//! the dashboard are each a few lines over this, and so is the next service.
//!
//! Use: [`Foundation::new`] (everything a service builds on before it
//! listens), build the service's own parts from it, then
//! [`Foundation::serve`]; stop with [`MeshServer::stop`].

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{service::Routes, transport::Server};
use txmesh_certs::{AuthzPolicy, CertStore};

use crate::{
    config::{ConnectionsConfig, TxmeshConfig},
    error::ServiceError,
    health::Readiness,
    metrics::Metrics,
    net::{
        idle::{IdleRegistry, TrackStreams},
        mtls_incoming, Admission, HandshakeStats, IdentityLimit,
    },
};

/// What differs between services' listeners.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// The gRPC listener's name in metrics and logs (`ingress-grpc`).
    pub grpc_name: &'static str,
    /// The HTTPS listener's name (`ingress-https`).
    pub https_name: &'static str,
    /// The service readiness is reported under (`txmesh.v1.Ingress`).
    pub grpc_service: &'static str,
    /// The identity directory under the state directory.
    pub identity: String,
    pub grpc_listen: SocketAddr,
    pub https_listen: SocketAddr,
    /// TLS handshakes (and HTTP requests) that take longer are dropped.
    pub handshake_timeout: Duration,
    /// Report SERVING as soon as both listeners are bound; when false the
    /// service reports it itself once it is ready (the ingress, after
    /// recovering its journal).
    pub ready_on_listen: bool,
}

/// Everything a service builds on, before it listens.
pub struct Foundation {
    pub spec: ServerSpec,
    /// The live certificates (reloaded from disk until shutdown).
    pub certs: CertStore,
    pub policy: Arc<AuthzPolicy>,
    pub metrics: Arc<Metrics>,
    /// Faults injected over Admin.
    pub chaos: Arc<txmesh_chaos::Registry>,
    /// Cancelled when the service starts to stop.
    pub shutdown: CancellationToken,
    pub readiness: Readiness,
    /// gRPC services every server has (health, so far).
    common: Routes,
    connections: ConnectionsConfig,
}

impl Foundation {
    /// Loads the identity, builds the policy and metrics, starts watching
    /// the certificate files. `chaos`: the fault registry to serve over
    /// Admin (a new one when `None`).
    ///
    /// # Errors
    /// When the certificates or the policy are not usable.
    pub async fn new(
        config: &TxmeshConfig,
        spec: ServerSpec,
        chaos: Option<Arc<txmesh_chaos::Registry>>,
    ) -> Result<Self, ServiceError> {
        let certs = CertStore::open(&config.identity_dir(&spec.identity), &config.trust_domain)?;
        let policy = Arc::new(config.policy()?);
        let metrics = Arc::new(Metrics::new(&[spec.grpc_name, spec.https_name]));
        // With no fault injected a registry costs one atomic load.
        let chaos =
            chaos.unwrap_or_else(|| Arc::new(txmesh_chaos::Registry::new(Default::default())));
        let shutdown = CancellationToken::new();
        let (reporter, health) = tonic_health::server::health_reporter();
        let readiness = Readiness::new(reporter, spec.grpc_service).await;
        crate::net::watch_certs(
            certs.clone(),
            config.tls.reload_interval(),
            shutdown.clone(),
            metrics.clone(),
        );
        Ok(Self {
            spec,
            certs,
            policy,
            metrics,
            chaos,
            shutdown,
            readiness,
            common: Routes::new(health),
            connections: config.connections.clone(),
        })
    }

    /// Binds both listeners and serves: gRPC with what `grpc` adds beside
    /// health, reflection and Admin; HTTPS with `https`'s routes beside `/metrics`.
    /// Readiness turns SERVING once both listen. Must run on an actix
    /// `System`'s thread (the HTTPS server is spawned there).
    ///
    /// # Errors
    /// When a port cannot be bound or the TLS config cannot be built.
    pub async fn serve<G, F>(mut self, grpc: G, https: F) -> Result<MeshServer, ServiceError>
    where
        G: FnOnce(Routes) -> Routes,
        F: Fn(&mut actix_web::web::ServiceConfig) + Clone + Send + 'static,
    {
        let spec = &self.spec;
        let admission = Admission {
            limit: IdentityLimit::new(self.connections.max_per_identity),
            idle: IdleRegistry::new(Duration::from_millis(self.connections.idle_timeout_ms)),
        };
        let incoming = mtls_incoming(
            spec.grpc_listen,
            txmesh_certs::server_config(&self.certs, &[txmesh_certs::ALPN_H2])?,
            spec.handshake_timeout,
            spec.grpc_name,
            admission.clone(),
            self.shutdown.clone(),
            self.metrics.clone(),
        )
        .await?;
        let grpc_addr = incoming.local_addr;
        let admin =
            txmesh_proto::v1::admin_server::AdminServer::new(crate::admin::AdminService::new(
                self.chaos.clone(),
                self.policy.clone(),
                self.metrics.clone(),
            ));
        let keepalive = &self.connections;
        let stop = self.shutdown.clone();
        let grpc_server = Server::builder()
            // A peer that stops answering PINGs is closed, not kept forever.
            .http2_keepalive_interval(Some(Duration::from_millis(keepalive.keepalive_interval_ms)))
            .http2_keepalive_timeout(Some(Duration::from_millis(keepalive.keepalive_timeout_ms)))
            .layer(TrackStreams::layer(admission.idle.clone()))
            .add_routes(grpc(
                std::mem::take(&mut self.common)
                    .add_service(crate::grpc::reflection_service()?)
                    .add_service(admin),
            ))
            .serve_with_incoming_shutdown(incoming.stream, async move { stop.cancelled().await });
        let span = tracing::info_span!("grpc.server", listener = spec.grpc_name);
        let grpc = tokio::spawn(tracing::Instrument::instrument(grpc_server, span));
        let (https_addr, https) = self.https_listener(https)?;
        tracing::info!(
            %grpc_addr, %https_addr, identity = %self.certs.spiffe_id(),
            "{} listening (mTLS)", spec.grpc_service
        );
        if spec.ready_on_listen {
            self.readiness.serving().await;
        }
        Ok(MeshServer {
            readiness: self.readiness,
            grpc_addr,
            https_addr,
            grpc_handshakes: incoming.stats,
            connections: admission.limit,
            idle: admission.idle,
            certs: self.certs,
            chaos: self.chaos,
            shutdown: self.shutdown,
            grpc,
            https,
        })
    }

    /// The actix-web HTTPS listener: `/metrics`, the service's routes, the
    /// security headers on every response.
    fn https_listener<F>(
        &self,
        routes: F,
    ) -> Result<(SocketAddr, actix_web::dev::ServerHandle), ServiceError>
    where
        F: Fn(&mut actix_web::web::ServiceConfig) + Clone + Send + 'static,
    {
        let addr = self.spec.https_listen;
        let bind_err = |source| ServiceError::Bind { addr, source };
        let listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
        let local = listener.local_addr().map_err(bind_err)?;
        // actix-web adds its own ALPN (h2, http/1.1 for WebSocket).
        let tls = txmesh_certs::server_config_with(
            &self.certs,
            &[],
            Some(self.metrics.reject_hook(self.spec.https_name)),
        )?;
        let timeout = self.spec.handshake_timeout;
        let metrics_state = crate::https::MetricsState {
            policy: self.policy.clone(),
            metrics: self.metrics.clone(),
            https_name: self.spec.https_name,
        };
        let limit = IdentityLimit::new(self.connections.max_per_identity);
        let server = actix_web::HttpServer::new(move || {
            let headers = crate::https::SECURITY_HEADERS
                .iter()
                .fold(actix_web::middleware::DefaultHeaders::new(), |h, kv| {
                    h.add(*kv)
                });
            actix_web::App::new()
                .wrap(actix_web::middleware::from_fn(crate::https::within_limit))
                .wrap(headers)
                .app_data(actix_web::web::Data::new(metrics_state.clone()))
                .route("/metrics", actix_web::web::get().to(crate::https::metrics))
                .configure(routes.clone())
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(2)
        .client_request_timeout(timeout)
        // Set before the listener is added: it applies to listeners bound after.
        .tls_handshake_timeout(timeout)
        .on_connect(crate::https::record_peer_within(limit))
        .listen_rustls_0_23(listener, tls)
        .map_err(bind_err)?
        .run();
        let handle = server.handle();
        let span = tracing::info_span!("https.server", listener = self.spec.https_name);
        actix_rt::spawn(tracing::Instrument::instrument(server, span));
        Ok((local, handle))
    }
}

/// A service's running listeners.
pub struct MeshServer {
    /// What `grpc.health.v1` reports.
    pub readiness: Readiness,
    pub grpc_addr: SocketAddr,
    pub https_addr: SocketAddr,
    pub grpc_handshakes: Arc<HandshakeStats>,
    /// Open gRPC connections per client identity.
    pub connections: Arc<IdentityLimit>,
    /// Open gRPC connections and their streams.
    pub idle: Arc<IdleRegistry>,
    /// The live certificates (reloaded from disk).
    pub certs: CertStore,
    /// The faults injected over Admin.
    pub chaos: Arc<txmesh_chaos::Registry>,
    shutdown: CancellationToken,
    grpc: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    https: actix_web::dev::ServerHandle,
}

impl MeshServer {
    /// Probes see NOT_SERVING first; then the shutdown token is cancelled
    /// (no new connections; streams are told to drain), the HTTPS listener
    /// stops, and open gRPC streams have until `deadline` to finish.
    /// Returns whether the gRPC server finished in time.
    pub async fn stop(self, deadline: Instant) -> bool {
        self.readiness.not_serving().await;
        self.shutdown.cancel();
        self.https.stop(true).await;
        tokio::time::timeout_at(deadline, self.grpc).await.is_ok()
    }
}
