//! What every mTLS HTTPS listener (actix-web over our rustls config) shares:
//! the peer's SPIFFE ID recorded at connect time, the deny-by-default check
//! of a request against a service's allow-list (counted), and `/metrics`.

use std::{any::Any, sync::Arc};

use actix_web::{dev::Extensions, http::header, web, HttpRequest, HttpResponse};
use tokio::net::TcpStream;
use txmesh_certs::{AuthzPolicy, Decision, Service, SpiffeId};

use crate::metrics::Metrics;

/// The headers every response carries: only this origin's script, style
/// and connections (the WebSocket is same-origin), no framing, no type
/// sniffing, no referrer.
pub(crate) const SECURITY_HEADERS: [(&str, &str); 4] = [
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
];

/// The verified SPIFFE ID of an HTTPS connection and its certificate's
/// notAfter (Unix seconds), set at connect time.
#[derive(Debug, Clone)]
pub(crate) struct PeerIdentity(pub(crate) Option<SpiffeId>, pub(crate) Option<i64>);

/// What `/metrics` needs: the policy and the registry.
#[derive(Clone)]
pub(crate) struct MetricsState {
    pub(crate) policy: Arc<AuthzPolicy>,
    pub(crate) metrics: Arc<Metrics>,
    /// The listener's name in metrics.
    pub(crate) https_name: &'static str,
}

/// The connection's place under its identity's limit; `None` when the
/// identity already held the most connections allowed. Dropped (and the
/// place given back) with the connection.
pub(crate) struct HttpsSlot(Option<crate::net::ConnectionSlot>);

/// `on_connect` hook: records the peer's SPIFFE ID for the handlers and
/// takes its place under `limit`.
pub(crate) fn record_peer_within(
    limit: Arc<crate::net::IdentityLimit>,
) -> impl Fn(&dyn Any, &mut Extensions) + Send + Sync + 'static {
    move |conn, ext| {
        record_peer(conn, ext);
        let slot = ext
            .get::<PeerIdentity>()
            .and_then(|p| p.0.as_ref())
            .and_then(|id| limit.admit(id.as_str()));
        ext.insert(HttpsSlot(slot));
    }
}

/// Middleware: a request on a connection over its identity's limit is
/// answered 429 and the connection closed; counted.
pub(crate) async fn within_limit(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let admitted = req
        .conn_data::<HttpsSlot>()
        .is_some_and(|slot| slot.0.is_some());
    if admitted {
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    if let Some(state) = req.app_data::<web::Data<MetricsState>>() {
        state
            .metrics
            .connection_refused(state.https_name, "identity_limit");
    }
    tracing::warn!(
        path = req.path(),
        "HTTPS request refused: this identity holds the most connections allowed (connections.max_per_identity)"
    );
    let response = HttpResponse::TooManyRequests()
        .insert_header((header::CONNECTION, "close"))
        .body("too many connections for this identity (connections.max_per_identity)\n");
    Ok(req.into_response(response))
}

/// Records the peer's SPIFFE ID and certificate expiry for the handlers.
pub(crate) fn record_peer(conn: &dyn Any, ext: &mut Extensions) {
    let leaf = conn
        .downcast_ref::<actix_tls::accept::rustls_0_23::TlsStream<TcpStream>>()
        .and_then(|tls| tls.get_ref().1.peer_certificates()?.first().cloned());
    let id = leaf
        .as_ref()
        .and_then(|leaf| txmesh_certs::peer_spiffe_id(leaf).ok());
    let not_after = leaf
        .as_ref()
        .and_then(|leaf| txmesh_certs::not_after_unix(leaf).ok());
    ext.insert(PeerIdentity(id, not_after));
}

/// Checks the request's peer against `service`'s allow-list and counts the
/// decision. `Err` carries the 403 to send back (boxed: a response is
/// large).
pub(crate) fn authorize(
    req: &HttpRequest,
    policy: &AuthzPolicy,
    metrics: &Metrics,
    service: Service,
) -> Result<SpiffeId, Box<HttpResponse>> {
    let identity = req.conn_data::<PeerIdentity>();
    let not_after = identity.and_then(|p| p.1);
    let Some(id) = identity.and_then(|p| p.0.clone()) else {
        metrics.authz(service, Decision::Deny, None);
        return Err(Box::new(
            HttpResponse::Forbidden().body("no client identity\n"),
        ));
    };
    let decision = policy.decide(service, &id);
    metrics.authz(service, decision, Some((&id, not_after)));
    match decision {
        Decision::Allow => Ok(id),
        Decision::Deny => {
            tracing::warn!(peer = %id, path = req.path(), service = service.name(), "access denied");
            Err(Box::new(
                HttpResponse::Forbidden().body(format!("{id} may not use {}\n", service.name())),
            ))
        }
    }
}

/// `GET /metrics`: Prometheus text, for the `metrics` allow-list.
pub(crate) async fn metrics(req: HttpRequest, state: web::Data<MetricsState>) -> HttpResponse {
    if let Err(denied) = authorize(&req, &state.policy, &state.metrics, Service::Metrics) {
        return *denied;
    }
    HttpResponse::Ok()
        .insert_header((
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        ))
        .body(state.metrics.render())
}
