//! mTLS plumbing shared by every gRPC listener and client: a TCP accept loop
//! that completes rustls handshakes (with a timeout) before tonic sees the
//! connection, a tonic channel whose connector does our TLS, and the
//! per-request authorization check by the peer's SPIFFE ID.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio_util::sync::CancellationToken;

use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use txmesh_certs::{AuthzPolicy, CertStore, Decision, Reload, Service, SpiffeId};

use crate::{
    error::ServiceError,
    metrics::{HandshakeFailure, Metrics},
};

mod addr;
mod expiry;
pub mod http;
pub mod idle;

pub use addr::HostPort;
pub use expiry::{until_unix, Expiring, ExpiringTls};

/// Counters of one listener's handshakes.
#[derive(Debug, Default)]
pub struct HandshakeStats {
    pub accepted: AtomicU64,
    pub failed: AtomicU64,
    pub timed_out: AtomicU64,
}

/// Open connections per client identity on one listener, capped: a client
/// with a valid certificate must not hold unbounded connections.
#[derive(Debug)]
pub struct IdentityLimit {
    max: usize,
    open: parking_lot::Mutex<std::collections::HashMap<String, usize>>,
}

/// One counted connection; gives its place back when dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    limit: Arc<IdentityLimit>,
    identity: String,
}

impl IdentityLimit {
    /// At most `max` connections per identity.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: parking_lot::Mutex::default(),
        })
    }

    /// A place for one more connection of `identity`, unless it already
    /// holds `max`.
    pub fn admit(self: &Arc<Self>, identity: &str) -> Option<ConnectionSlot> {
        let mut open = self.open.lock();
        let n = open.entry(identity.to_owned()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ConnectionSlot {
            limit: self.clone(),
            identity: identity.to_owned(),
        })
    }

    /// Connections `identity` holds now.
    pub fn open(&self, identity: &str) -> usize {
        self.open.lock().get(identity).copied().unwrap_or(0)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.limit.open.lock();
        if let Some(n) = open.get_mut(&self.identity) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.identity);
            }
        }
    }
}

/// What a listener admits beyond a valid certificate: connections per
/// identity, and how long a connection may stay without a stream.
#[derive(Debug, Clone)]
pub struct Admission {
    pub limit: Arc<IdentityLimit>,
    pub idle: Arc<idle::IdleRegistry>,
}

/// A bound mTLS listener whose accepted, verified connections feed tonic's
/// `serve_with_incoming`.
pub struct MtlsIncoming {
    pub local_addr: SocketAddr,
    pub stream: ReceiverStream<Result<ExpiringTls, std::io::Error>>,
    pub stats: Arc<HandshakeStats>,
}

/// Binds `addr` and starts the accept loop; stops when `shutdown` fires. A
/// verified connection over `limit` for its identity is closed at once and
/// counted.
///
/// # Errors
/// [`ServiceError::Bind`] when the address cannot be bound.
pub async fn mtls_incoming(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    handshake_timeout: Duration,
    name: &'static str,
    admission: Admission,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
) -> Result<MtlsIncoming, ServiceError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServiceError::Bind { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| ServiceError::Bind { addr, source })?;
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let stats = Arc::new(HandshakeStats::default());
    // Handshakes finish in parallel; a slow or silent client never blocks
    // the accept loop. Room for a burst of new connections.
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let loop_stats = stats.clone();
    let span = tracing::info_span!("tls.accept_loop", listener = name, %local_addr);
    let accept_loop = async move {
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let stats = loop_stats.clone();
            let metrics = metrics.clone();
            let admission = admission.clone();
            let span = tracing::debug_span!("tls.accept", listener = name, %peer);
            let handshake = async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        stats.accepted.fetch_add(1, Ordering::Relaxed);
                        // The verifier accepted an SVID: it has an identity.
                        let identity = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|leaf| txmesh_certs::peer_spiffe_id(leaf).ok())
                            .map(|id| id.to_string())
                            .unwrap_or_default();
                        let Some(slot) = admission.limit.admit(&identity) else {
                            metrics.connection_refused(name, "identity_limit");
                            tracing::warn!(
                                listener = name, %peer, %identity, max = admission.limit.max,
                                "connection refused: this identity holds the most connections allowed (connections.max_per_identity)"
                            );
                            return;
                        };
                        let idle = admission.idle.watch(peer);
                        let _ = tx.send(Ok(ExpiringTls::accepted(tls, slot, idle))).await;
                    }
                    Ok(Err(e)) => {
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                        metrics.handshake_failed(name, HandshakeFailure::of(&e));
                        tracing::info!(listener = name, %peer, error = %e, "TLS handshake refused");
                    }
                    Err(_) => {
                        stats.timed_out.fetch_add(1, Ordering::Relaxed);
                        metrics.handshake_failed(name, HandshakeFailure::Timeout);
                        tracing::info!(listener = name, %peer, "TLS handshake timed out");
                    }
                }
            };
            tokio::spawn(tracing::Instrument::instrument(handshake, span));
        }
    };
    tokio::spawn(tracing::Instrument::instrument(accept_loop, span));
    Ok(MtlsIncoming {
        local_addr,
        stream: ReceiverStream::new(rx),
        stats,
    })
}

/// A tonic channel to `addr` over mTLS as `store`'s identity (read again on
/// every connection, so reloaded certificates are used at once), accepting
/// only a server whose SVID is `expected_server`. Connects lazily.
///
/// # Errors
/// When the TLS config cannot be built.
pub fn mtls_channel(
    addr: impl Into<HostPort>,
    store: &CertStore,
    expected_server: &SpiffeId,
) -> Result<Channel, ServiceError> {
    let tls = txmesh_certs::client_config(store, expected_server, &[txmesh_certs::ALPN_H2])?;
    channel_with(addr, Arc::new(tls))
}

/// A lazily connecting tonic channel to `addr` over TLS with `tls` (which
/// must offer ALPN h2). A DNS name is resolved on every connection.
///
/// # Errors
/// When the endpoint cannot be formed.
pub fn channel_with(
    addr: impl Into<HostPort>,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Channel, ServiceError> {
    let addr: HostPort = addr.into();
    let connector = TlsConnector::from(tls);
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| ServiceError::Connect {
            target: addr.to_string(),
            reason: e.to_string(),
        })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    Ok(
        endpoint.connect_with_connector_lazy(tower::service_fn(move |_uri| {
            let connector = connector.clone();
            let addr = addr.clone();
            async move {
                let tcp = addr.connect().await?;
                tcp.set_nodelay(true)?;
                // The verifier checks the SPIFFE ID, not this name.
                let name = addr.server_name();
                let tls = connector.connect(name, tcp).await?;
                // Ends no later than the server certificate it verified.
                let leaf = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .cloned();
                Ok::<_, std::io::Error>(TokioIo::new(Expiring::new(tls, leaf.as_ref())))
            }
        })),
    )
}

/// The SPIFFE ID of the peer that made `request`.
///
/// # Errors
/// `UNAUTHENTICATED` when the connection carries no usable certificate.
pub fn peer_id<T>(request: &tonic::Request<T>) -> Result<SpiffeId, tonic::Status> {
    let certs = request
        .peer_certs()
        .ok_or_else(|| tonic::Status::unauthenticated("no client certificate"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| tonic::Status::unauthenticated("no client certificate"))?;
    txmesh_certs::peer_spiffe_id(leaf).map_err(|e| tonic::Status::unauthenticated(e.to_string()))
}

/// Deny-by-default check of `request` against `service`'s allow-list.
///
/// # Errors
/// `UNAUTHENTICATED` without an identity, `PERMISSION_DENIED` for an
/// identity that is not allowed.
pub fn authorize<T>(
    request: &tonic::Request<T>,
    policy: &AuthzPolicy,
    metrics: &Metrics,
    service: Service,
) -> Result<SpiffeId, tonic::Status> {
    let peer = match peer_id(request) {
        Ok(peer) => peer,
        Err(status) => {
            metrics.authz(service, Decision::Deny, None);
            return Err(status);
        }
    };
    let decision = policy.decide(service, &peer);
    let not_after = request
        .peer_certs()
        .and_then(|certs| txmesh_certs::not_after_unix(certs.first()?).ok());
    metrics.authz(service, decision, Some((&peer, not_after)));
    match decision {
        Decision::Allow => Ok(peer),
        Decision::Deny => {
            tracing::warn!(service = service.name(), %peer, "permission denied");
            Err(tonic::Status::permission_denied(format!(
                "{peer} may not call {}",
                service.name()
            )))
        }
    }
}

/// Polls `store`'s files every `every` and swaps in valid new material (see
/// `txmesh_certs::CertStore`), until `shutdown`.
pub fn watch_certs(
    store: CertStore,
    every: Duration,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
) -> tokio::task::JoinHandle<()> {
    metrics.observe_cert(&store);
    let span = tracing::info_span!("certs.watch", identity = %store.spiffe_id());
    let watch = async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => break,
            }
            // Reading three small files; cheap enough for the runtime.
            match store.reload() {
                Reload::Swapped => {
                    metrics.cert_reloaded(true);
                    metrics.observe_cert(&store);
                }
                Reload::Rejected(e) => {
                    metrics.cert_reloaded(false);
                    tracing::debug!(error = %e, "certificate reload rejected");
                }
                Reload::Unchanged => {}
            }
        }
    };
    tokio::spawn(tracing::Instrument::instrument(watch, span))
}
