//! The dashboard's HTTPS listener (actix-web over our rustls config, mTLS
//! only): the page at `/` (with `/app.js`, `/app.css`, the vendored uPlot
//! chart library at `/uplot.js` and `/uplot.css`, and `/favicon.svg`), `GET
//! /api/snapshot` (JSON) and the WebSocket at `/ws`, where each browser gets
//! one `WsSession` actor: a snapshot on connect, then every pushed update
//! (only what changed, numbered). A browser that sees a number missing
//! sends `resync` and gets a snapshot again. Everything is compiled into
//! the binary: the page sits behind mTLS and loads nothing from elsewhere.
//! Only the operator identity (or what `authz.dashboard_ui` names) gets past
//! the 403.
//!
//! The operator's browser holds a client certificate, so any page it visits
//! could try to ride it (cross-site WebSocket hijacking): the upgrade and
//! the API are accepted only from the dashboard's own origin (counted when
//! refused), and every response carries a Content-Security-Policy that
//! allows only this origin's script, style and connections and forbids
//! framing.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use actix::{
    fut::wrap_future, Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Handler, Message,
    StreamHandler,
};
use actix_web::{http::header, web, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use txmesh_certs::{AuthzPolicy, Service};

use super::{
    aggregator::{Aggregator, GetSnapshot},
    broadcaster::{Broadcaster, Register, Unregister},
};

/// A browser that sends nothing (not even a pong) for this long is dropped.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
const HEARTBEAT: Duration = Duration::from_secs(10);
/// A browser gets a snapshot again at most this often.
const RESYNC_EVERY: Duration = Duration::from_secs(1);

/// Shared by every request handler.
#[derive(Clone)]
pub(super) struct WebState {
    pub aggregator: Addr<Aggregator>,
    pub broadcaster: Addr<Broadcaster>,
    pub policy: Arc<AuthzPolicy>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub session_queue: usize,
    pub next_session: Arc<AtomicU64>,
    /// Origins accepted besides the dashboard's own (`dashboard.allowed_origins`).
    pub allowed_origins: Arc<[String]>,
    /// Requests refused for a foreign Origin.
    pub origin_refusals: Arc<AtomicU64>,
}

/// The dashboard's routes on its HTTPS listener (beside `/metrics`).
pub(super) fn routes(cfg: &mut actix_web::web::ServiceConfig, state: &WebState) {
    use actix_web::web::{get, Data};
    cfg.app_data(Data::new(state.clone()))
        .route("/", get().to(asset))
        .route("/app.js", get().to(asset))
        .route("/app.css", get().to(asset))
        .route("/uplot.js", get().to(asset))
        .route("/uplot.css", get().to(asset))
        .route("/favicon.svg", get().to(asset))
        .route("/api/snapshot", get().to(snapshot))
        .route("/ws", get().to(websocket));
}

/// The dashboard is stopping: close with 1001 (going away).
pub struct GoingAway;

impl Message for GoingAway {
    type Result = ();
}

impl Handler<GoingAway> for WsSession {
    type Result = ();

    fn handle(&mut self, _msg: GoingAway, ctx: &mut Self::Context) {
        ctx.close(Some(ws::CloseReason {
            code: ws::CloseCode::Away,
            description: Some("dashboard shutting down".into()),
        }));
        ctx.stop();
    }
}

/// One serialized update for a session.
pub struct Push(pub Arc<str>);

impl Message for Push {
    type Result = ();
}

/// One browser's WebSocket.
pub struct WsSession {
    id: u64,
    state: WebState,
    last_heard: Instant,
    /// The client certificate's notAfter, Unix seconds.
    cert_not_after: Option<i64>,
    /// The client's SPIFFE ID.
    spiffe_id: String,
    /// When the browser last asked for a snapshot again.
    last_resync: Option<Instant>,
}

/// `Err` carries the 403 to send back.
fn authorize(req: &HttpRequest, state: &WebState) -> Result<(), Box<HttpResponse>> {
    crate::https::authorize(req, &state.policy, &state.metrics, Service::DashboardUi).map(|_| ())
}

/// [`authorize`], and for what a page could make a browser send with the
/// operator's certificate (the WebSocket, the API), the same-origin check.
fn authorize_same_origin(req: &HttpRequest, state: &WebState) -> Result<(), Box<HttpResponse>> {
    authorize(req, state)?;
    match foreign_origin(req, &state.allowed_origins) {
        None => Ok(()),
        Some(origin) => {
            state.origin_refusals.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%origin, path = req.path(), "cross-origin request refused");
            Err(Box::new(HttpResponse::Forbidden().body(format!(
                "cross-origin request refused: {origin} is not this dashboard's origin \
                 (dashboard.allowed_origins)\n"
            ))))
        }
    }
}

/// The foreign origin a request came from, if it came from a page other
/// than the dashboard's own. Browsers send `Origin` on every WebSocket
/// upgrade and cross-origin fetch, and `Sec-Fetch-Site` on every request;
/// the origin must be `https://` plus the host the request was sent to, or
/// one of `allowed` (a reverse proxy's name). A request with neither header
/// was not made by a web page (a CLI, a monitoring probe) and is let
/// through: it carries no one else's certificate.
fn foreign_origin(req: &HttpRequest, allowed: &[String]) -> Option<String> {
    let headers = req.headers();
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("(not text)");
        let own = format!("https://{}", req.connection_info().host());
        let ok = origin.eq_ignore_ascii_case(&own) || allowed.iter().any(|a| a == origin);
        return (!ok).then(|| origin.to_owned());
    }
    let site = headers.get("sec-fetch-site")?.to_str().unwrap_or("");
    (!matches!(site, "same-origin" | "none")).then(|| format!("a {site} page"))
}

/// `GET /` and what the page loads.
pub(super) async fn asset(req: HttpRequest, state: web::Data<WebState>) -> HttpResponse {
    if let Err(denied) = authorize(&req, &state) {
        return *denied;
    }
    let (content_type, body) = match req.path() {
        "/app.js" => (
            "text/javascript; charset=utf-8",
            include_str!("assets/app.js"),
        ),
        "/app.css" => ("text/css; charset=utf-8", include_str!("assets/app.css")),
        "/uplot.js" => (
            "text/javascript; charset=utf-8",
            include_str!("assets/vendor/uplot/uPlot.iife.min.js"),
        ),
        "/uplot.css" => (
            "text/css; charset=utf-8",
            include_str!("assets/vendor/uplot/uPlot.min.css"),
        ),
        "/favicon.svg" => ("image/svg+xml", include_str!("assets/favicon.svg")),
        _ => (
            "text/html; charset=utf-8",
            include_str!("assets/index.html"),
        ),
    };
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, content_type))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(body)
}

/// `GET /api/snapshot`.
pub(super) async fn snapshot(req: HttpRequest, state: web::Data<WebState>) -> HttpResponse {
    if let Err(denied) = authorize_same_origin(&req, &state) {
        return *denied;
    }
    match state.aggregator.send(GetSnapshot).await {
        Ok(snapshot) => HttpResponse::Ok().json(snapshot),
        Err(_) => HttpResponse::ServiceUnavailable().body("aggregator unavailable\n"),
    }
}

/// `GET /ws`: upgrades to a WebSocket session.
pub(super) async fn websocket(
    req: HttpRequest,
    stream: web::Payload,
    state: web::Data<WebState>,
) -> Result<HttpResponse, actix_web::Error> {
    if let Err(denied) = authorize_same_origin(&req, &state) {
        return Ok(*denied);
    }
    let peer = req.conn_data::<crate::https::PeerIdentity>();
    let cert_not_after = peer.and_then(|p| p.1);
    let spiffe_id = peer
        .and_then(|p| p.0.as_ref())
        .map(ToString::to_string)
        .unwrap_or_default();
    let session = WsSession {
        id: state.next_session.fetch_add(1, Ordering::Relaxed),
        state: state.get_ref().clone(),
        last_heard: Instant::now(),
        cert_not_after,
        spiffe_id,
        last_resync: None,
    };
    ws::start(session, &req, stream)
}

impl Actor for WsSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.state.session_queue);
        // A session does not outlive the certificate it was verified with.
        let left = self
            .cert_not_after
            .map_or(Duration::ZERO, crate::net::until_unix);
        ctx.run_later(left, |_act, ctx| {
            ctx.close(Some(ws::CloseReason {
                code: ws::CloseCode::Policy,
                description: Some("client certificate expired".into()),
            }));
            ctx.stop();
        });
        self.state.broadcaster.do_send(Register {
            id: self.id,
            addr: ctx.address(),
        });
        // Who the page is connected as, then the snapshot, before any
        // pushed update.
        ctx.text(
            serde_json::json!({
                "type": "hello",
                "spiffe_id": self.spiffe_id,
                "cert_not_after_unix": self.cert_not_after,
            })
            .to_string(),
        );
        self.send_snapshot(ctx);
        ctx.run_interval(HEARTBEAT, |act, ctx| {
            if act.last_heard.elapsed() > CLIENT_TIMEOUT {
                ctx.stop();
            } else {
                ctx.ping(b"");
            }
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.state.broadcaster.do_send(Unregister(self.id));
    }
}

impl WsSession {
    /// Sends a snapshot before anything else queued for this session.
    fn send_snapshot(&self, ctx: &mut ws::WebsocketContext<Self>) {
        let snapshot = self.state.aggregator.send(GetSnapshot);
        ctx.wait(wrap_future::<_, Self>(snapshot).map(|result, _act, ctx| {
            match result.ok().and_then(|s| serde_json::to_string(&s).ok()) {
                Some(json) => ctx.text(json),
                None => ctx.stop(),
            }
        }));
    }
}

impl Handler<Push> for WsSession {
    type Result = ();

    fn handle(&mut self, msg: Push, ctx: &mut Self::Context) {
        ctx.text(&*msg.0);
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for WsSession {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        match msg {
            Ok(ws::Message::Ping(bytes)) => ctx.pong(&bytes),
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            // The browser missed an update (at most one snapshot a second:
            // a page cannot make the aggregator do nothing else).
            Ok(ws::Message::Text(text)) if text.trim() == "resync" => {
                if self
                    .last_resync
                    .is_none_or(|at| at.elapsed() >= RESYNC_EVERY)
                {
                    self.last_resync = Some(Instant::now());
                    self.send_snapshot(ctx);
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket protocol error");
                ctx.stop();
            }
        }
    }
}
