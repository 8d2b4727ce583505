//! `txmesh audit`: active proof that every listener accepts only mutual TLS
//! from the identities it should. Each check connects to a listener the way
//! an attacker or a misconfigured client would and records PASS, FAIL or
//! SKIP with its evidence; any FAIL makes the exit status non-zero.
//!
//! Targets come from the `up` system's `listeners.json` in the state
//! directory, from the config's addresses, or from `--target NAME=ADDR`.
//! Certificates the server must refuse are forged here ([`Forgery`]); those
//! that need the real CA are skipped unless its key is available.

mod probe;

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::Context as _;
use clap::Args;
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use txmesh_certs::{check_svid, CertAuthority, Forgery, SpiffeId, SvidUsage};
use txmesh_proto::v1::{dashboard_client::DashboardClient, ingress_client::IngressClient};

use crate::{config::TxmeshConfig, error::ServiceError};
use probe::{ClientSpec, Identity, H2_PREFACE, HTTP_GET};

#[derive(Args)]
pub struct AuditArgs {
    /// A listener to audit, NAME=HOST:PORT (NAME: ingress, dashboard-grpc, dashboard-https).
    /// Default: the `up` system of the state directory, else the configured addresses.
    #[arg(long = "target", value_name = "NAME=ADDR")]
    targets: Vec<String>,
    /// The CA key, for the forged certificates that need it (default: the state directory's, if present).
    #[arg(long)]
    ca_key: Option<PathBuf>,
    /// The CA certificate that goes with --ca-key (default: STATE_DIR/ca/tls.crt).
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// Do not use any CA key (those checks are SKIPPED).
    #[arg(long)]
    no_ca_key: bool,
    /// Processes whose every listening socket must be audited (default: the `up` process).
    #[arg(long)]
    pid: Vec<u32>,
    /// Fail a server certificate with less than this left.
    #[arg(long, default_value_t = 8.0)]
    renewal_window_hours: f64,
    /// Machine-readable report.
    #[arg(long)]
    json: bool,
}

/// `txmesh audit`: exit 1 when any check failed.
pub(super) fn command(args: &AuditArgs, config: &TxmeshConfig) -> anyhow::Result<ExitCode> {
    let mut options = AuditOptions::for_config(config);
    options.renewal_window = Duration::from_secs_f64(args.renewal_window_hours.max(0.0) * 3600.0);
    if let Some(key) = &args.ca_key {
        let cert = args
            .ca_cert
            .clone()
            .unwrap_or_else(|| config.state_dir.join("ca").join("tls.crt"));
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        options.ca = Some((read(&cert)?, read(key)?));
    }
    if args.no_ca_key {
        options.ca = None;
    }
    let targets = if args.targets.is_empty() {
        let path = listener_file(&config.state_dir);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let file: ListenerFile = serde_json::from_slice(&bytes)
                    .with_context(|| format!("reading {}", path.display()))?;
                if args.pid.is_empty() {
                    options.pids.push(file.pid);
                }
                file.listeners
            }
            Err(_) => targets_from_config(config),
        }
    } else {
        args.targets
            .iter()
            .map(|t| parse_target(t))
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    options.pids.extend(&args.pid);
    let report = crate::runtime::block_on(2, async move { run(&targets, &options).await })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(super::exit(report.failed == 0))
}

/// `NAME=HOST:PORT`.
fn parse_target(text: &str) -> anyhow::Result<AuditTarget> {
    let (name, addr) = text
        .split_once('=')
        .with_context(|| format!("--target {text}: expected NAME=HOST:PORT"))?;
    // A name (a Kubernetes Service) is resolved once: every probe of the
    // target must reach the same listener.
    let host: crate::net::HostPort = addr
        .parse()
        .map_err(|e| anyhow::anyhow!("--target {text}: {e}"))?;
    Ok(AuditTarget {
        name: name.to_owned(),
        addr: host
            .resolve_now()
            .with_context(|| format!("--target {text}: cannot resolve {host}"))?,
        kind: ListenerKind::from_name(name)?,
    })
}

/// What kind of listener a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerKind {
    /// The ingress's gRPC listener (`Ingress.Screen`).
    IngressGrpc,
    /// The dashboard's gRPC listener (`Dashboard.Publish`).
    DashboardGrpc,
    /// The dashboard's HTTPS listener (page, WebSocket, API, metrics).
    DashboardHttps,
    /// The ingress's HTTPS listener (metrics).
    IngressHttps,
    /// A replica's gRPC listener as its peers use it (`Replica.Forward`).
    ReplicaGrpc,
}

/// One listener to audit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditTarget {
    pub name: String,
    pub addr: SocketAddr,
    pub kind: ListenerKind,
}

/// The listeners a running `txmesh up` wrote down, and its process id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListenerFile {
    pub pid: u32,
    pub listeners: Vec<AuditTarget>,
}

/// How to audit.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    pub state_dir: PathBuf,
    pub trust_domain: String,
    /// The CA (certificate and key) for the forgeries that need it.
    pub ca: Option<(String, String)>,
    /// The servers' handshake timeout: an idle connection must be closed
    /// within it (plus a second).
    pub handshake_timeout: Duration,
    /// A server certificate must have more than this left.
    pub renewal_window: Duration,
    /// Processes whose listening sockets must all be known targets.
    pub pids: Vec<u32>,
}

/// PASS, FAIL or SKIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Outcome {
    Pass,
    Fail,
    Skip,
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub check: String,
    pub listener: String,
    pub outcome: Outcome,
    pub evidence: String,
}

/// Everything the audit found.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub results: Vec<CheckResult>,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

impl ListenerKind {
    /// The workload the listener must present.
    fn server(self) -> &'static str {
        match self {
            Self::IngressGrpc | Self::IngressHttps | Self::ReplicaGrpc => "ingress",
            Self::DashboardGrpc | Self::DashboardHttps => "dashboard",
        }
    }

    /// A workload allowed by the default policy, and one that is not.
    fn allowed_and_denied(self) -> (&'static str, &'static str) {
        match self {
            Self::IngressGrpc => ("txgen", "dashboard"),
            Self::ReplicaGrpc => ("ingress", "txgen"),
            Self::DashboardGrpc => ("ingress", "txgen"),
            Self::DashboardHttps | Self::IngressHttps => ("operator", "txgen"),
        }
    }

    fn is_grpc(self) -> bool {
        matches!(
            self,
            Self::IngressGrpc | Self::DashboardGrpc | Self::ReplicaGrpc
        )
    }

    /// The HTTP path whose authorization the audit tries.
    fn http_path(self) -> &'static str {
        match self {
            Self::IngressHttps => "/metrics",
            _ => "/api/snapshot",
        }
    }

    /// Guesses the kind from a target name (`--target NAME=ADDR`).
    ///
    /// # Errors
    /// For names that are none of the three.
    pub fn from_name(name: &str) -> Result<Self, ServiceError> {
        match name {
            "ingress" | "ingress-grpc" => Ok(Self::IngressGrpc),
            "dashboard" | "dashboard-grpc" => Ok(Self::DashboardGrpc),
            "dashboard-https" | "https" => Ok(Self::DashboardHttps),
            "ingress-https" | "ingress-metrics" => Ok(Self::IngressHttps),
            "replica" | "ingress-forward" => Ok(Self::ReplicaGrpc),
            other => Err(ServiceError::config(
                "--target",
                format!(
                    "{other}: expected ingress, ingress-https, ingress-forward, dashboard-grpc \
                     or dashboard-https"
                ),
            )),
        }
    }
}

impl AuditOptions {
    /// Options for the system of `config`: its state directory and trust
    /// domain, and the CA key found there (if any).
    pub fn for_config(config: &TxmeshConfig) -> Self {
        let ca_dir = config.state_dir.join("ca");
        let ca = std::fs::read_to_string(ca_dir.join("tls.crt"))
            .ok()
            .zip(std::fs::read_to_string(ca_dir.join("tls.key")).ok());
        Self {
            state_dir: config.state_dir.clone(),
            trust_domain: config.trust_domain.clone(),
            ca,
            handshake_timeout: Duration::from_millis(config.ingress.handshake_timeout_ms),
            renewal_window: Duration::from_secs(8 * 3600),
            pids: Vec::new(),
        }
    }
}

/// The listeners of `config` (0.0.0.0 is probed on 127.0.0.1).
pub fn targets_from_config(config: &TxmeshConfig) -> Vec<AuditTarget> {
    let local = |mut a: SocketAddr| {
        if a.ip().is_unspecified() {
            a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        a
    };
    vec![
        AuditTarget {
            name: "ingress".into(),
            addr: local(config.ingress.listen),
            kind: ListenerKind::IngressGrpc,
        },
        AuditTarget {
            name: "ingress-https".into(),
            addr: local(config.ingress.metrics_listen),
            kind: ListenerKind::IngressHttps,
        },
        AuditTarget {
            name: "dashboard-grpc".into(),
            addr: local(config.dashboard.grpc_listen),
            kind: ListenerKind::DashboardGrpc,
        },
        AuditTarget {
            name: "dashboard-https".into(),
            addr: local(config.dashboard.https_listen),
            kind: ListenerKind::DashboardHttps,
        },
    ]
}

/// Where `up` records its listeners.
pub fn listener_file(state_dir: &Path) -> PathBuf {
    state_dir.join("listeners.json")
}

/// Audits every target; checks of different listeners run concurrently.
pub async fn run(targets: &[AuditTarget], options: &AuditOptions) -> AuditReport {
    let ca = options
        .ca
        .as_ref()
        .and_then(|(cert, key)| CertAuthority::from_pem(cert, key, &options.trust_domain).ok());
    let per_listener = join_all(
        targets
            .iter()
            .map(|t| audit_listener(t, options, ca.as_ref())),
    )
    .await;
    let mut results: Vec<CheckResult> = per_listener.into_iter().flatten().collect();
    results.extend(unexpected_listeners(targets, &options.pids));
    let count = |o: Outcome| results.iter().filter(|r| r.outcome == o).count();
    AuditReport {
        passed: count(Outcome::Pass),
        failed: count(Outcome::Fail),
        skipped: count(Outcome::Skip),
        results,
    }
}

fn result(
    check: &str,
    target: &AuditTarget,
    outcome: Outcome,
    evidence: impl Into<String>,
) -> CheckResult {
    CheckResult {
        check: check.to_owned(),
        listener: format!("{} {}", target.name, target.addr),
        outcome,
        evidence: evidence.into(),
    }
}

fn pass_if(ok: bool) -> Outcome {
    if ok {
        Outcome::Pass
    } else {
        Outcome::Fail
    }
}

/// TLS 1.3, `alpn`, no resumption, presenting `identity`.
fn plain_spec<'a>(identity: Option<&'a Identity>, alpn: &[Vec<u8>]) -> ClientSpec<'a> {
    ClientSpec {
        identity,
        tls12_only: false,
        alpn: alpn.to_vec(),
        resumption: false,
    }
}

/// An identity from the state directory (`DIR/NAME/tls.{crt,key}`).
fn identity_from_dir(options: &AuditOptions, name: &str) -> Option<Identity> {
    let dir = options.state_dir.join(name);
    Some(Identity {
        chain_pem: std::fs::read_to_string(dir.join("tls.crt")).ok()?,
        key_pem: std::fs::read_to_string(dir.join("tls.key")).ok()?,
    })
}

async fn audit_listener(
    target: &AuditTarget,
    options: &AuditOptions,
    ca: Option<&CertAuthority>,
) -> Vec<CheckResult> {
    let opener: &[u8] = if target.kind.is_grpc() {
        H2_PREFACE
    } else {
        HTTP_GET
    };
    let alpn: Vec<Vec<u8>> = if target.kind.is_grpc() {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    // Started first: it takes up to the handshake timeout.
    let idle = probe::idle_close(
        target.addr,
        options.handshake_timeout + Duration::from_secs(2),
    );
    let mut out = Vec::new();

    for (check, bytes) in [
        ("plaintext_tcp", b"hello txmesh\r\n".as_slice()),
        ("plaintext_http2_preface", H2_PREFACE),
        ("plaintext_http_get", HTTP_GET),
    ] {
        out.push(match probe::raw(target.addr, bytes).await {
            Ok((back, how)) => {
                let data = probe::is_application_data(&back);
                result(check, target, pass_if(!data), how)
            }
            Err(e) => result(
                check,
                target,
                Outcome::Fail,
                format!("listener unreachable: {e}"),
            ),
        });
    }

    let (refused, how) = probe::refused(target.addr, &plain_spec(None, &alpn), opener).await;
    out.push(result(
        "tls_without_client_cert",
        target,
        pass_if(refused),
        how,
    ));

    let server = target.kind.server();
    for forgery in Forgery::ALL {
        if forgery.needs_ca_key() && ca.is_none() {
            out.push(result(
                forgery.name(),
                target,
                Outcome::Skip,
                "needs the CA's key (--ca-key) to forge",
            ));
            continue;
        }
        let made = forgery.make(ca, &options.trust_domain, "txgen");
        let (cert, key) = match made {
            Ok(m) => m,
            Err(e) => {
                out.push(result(
                    forgery.name(),
                    target,
                    Outcome::Fail,
                    format!("could not forge: {e}"),
                ));
                continue;
            }
        };
        let identity = Identity {
            chain_pem: cert,
            key_pem: key,
        };
        let spec = plain_spec(Some(&identity), &alpn);
        let (refused, how) = probe::refused(target.addr, &spec, opener).await;
        out.push(result(forgery.name(), target, pass_if(refused), how));
    }

    out.extend(authz_checks(target, options, ca, &alpn).await);

    let (allowed, _) = target.kind.allowed_and_denied();
    let allowed_id = identity_from_dir(options, allowed);
    let tls12 = ClientSpec {
        identity: allowed_id.as_ref(),
        tls12_only: true,
        alpn: alpn.clone(),
        resumption: false,
    };
    let (refused, how) = probe::refused(target.addr, &tls12, opener).await;
    out.push(result("tls12_refused", target, pass_if(refused), how));

    let foreign_alpn = ClientSpec {
        identity: allowed_id.as_ref(),
        tls12_only: false,
        alpn: if target.kind.is_grpc() {
            vec![b"http/1.1".to_vec()]
        } else {
            vec![b"x-txmesh-audit".to_vec()]
        },
        resumption: false,
    };
    let (refused, how) = probe::refused(target.addr, &foreign_alpn, opener).await;
    out.push(result("alpn_enforced", target, pass_if(refused), how));

    out.push(resumption_check(target, allowed_id.as_ref(), &alpn).await);
    if target.kind == ListenerKind::DashboardHttps {
        out.push(page_headers_check(target, allowed_id.as_ref(), &alpn).await);
    }
    out.push(server_cert_check(target, options, allowed_id.as_ref(), server, &alpn).await);

    out.push(match idle.await {
        Ok(Some(after)) => {
            let limit = options.handshake_timeout + Duration::from_secs(1);
            result(
                "idle_handshake_closed",
                target,
                pass_if(after <= limit),
                format!(
                    "closed after {:.1} s (limit {:.1} s)",
                    after.as_secs_f64(),
                    limit.as_secs_f64()
                ),
            )
        }
        Ok(None) => result(
            "idle_handshake_closed",
            target,
            Outcome::Fail,
            "still open past the handshake timeout",
        ),
        Err(e) => result(
            "idle_handshake_closed",
            target,
            Outcome::Fail,
            e.to_string(),
        ),
    });
    out
}

/// A valid identity that is not allowed is refused at the application
/// layer; an allowed one gets through.
async fn authz_checks(
    target: &AuditTarget,
    options: &AuditOptions,
    ca: Option<&CertAuthority>,
    alpn: &[Vec<u8>],
) -> Vec<CheckResult> {
    let (allowed, denied_name) = target.kind.allowed_and_denied();
    // A fresh identity no policy names, when the CA can sign one; else a
    // component identity the listener must not accept.
    let denied = match ca {
        Some(ca) => ca
            .issue("audit-probe", &txmesh_certs::IssueOptions::default())
            .ok()
            .map(|(c, k)| {
                (
                    Identity {
                        chain_pem: c,
                        key_pem: k,
                    },
                    "audit-probe",
                )
            }),
        None => identity_from_dir(options, denied_name).map(|i| (i, denied_name)),
    };
    let allowed_identity = identity_from_dir(options, allowed).map(|i| (i, allowed));
    let mut out = Vec::new();
    for (check, who, expect) in [
        ("wrong_identity_denied", denied, false),
        ("allowed_identity_accepted", allowed_identity, true),
    ] {
        out.push(match who {
            Some((identity, name)) => {
                let (ok, evidence) = call(target, &identity, alpn).await;
                result(
                    check,
                    target,
                    pass_if(ok == Some(expect)),
                    format!("as {name}: {evidence}"),
                )
            }
            None => result(
                check,
                target,
                Outcome::Skip,
                "no identity to try in the state directory",
            ),
        });
    }
    out
}

/// Calls the listener's service as `identity`: `Some(true)` accepted,
/// `Some(false)` refused by authorization, `None` anything else.
async fn call(
    target: &AuditTarget,
    identity: &Identity,
    alpn: &[Vec<u8>],
) -> (Option<bool>, String) {
    let config = match client_as(identity, alpn) {
        Ok(c) => c,
        Err(e) => return (None, e),
    };
    if !target.kind.is_grpc() {
        let path = target.kind.http_path();
        return match https_get(target, config, path).await {
            Ok(r) if r.status == http::StatusCode::OK => {
                (Some(true), format!("{path}: {}", r.status))
            }
            Ok(r) if r.status == http::StatusCode::FORBIDDEN => {
                (Some(false), format!("{path}: {}", r.status))
            }
            Ok(r) => (None, format!("{path}: {}", r.status)),
            Err(e) => (None, e),
        };
    }
    let channel = match crate::net::channel_with(target.addr, config) {
        Ok(c) => c,
        Err(e) => return (None, e.to_string()),
    };
    let outcome = match target.kind {
        ListenerKind::IngressGrpc => IngressClient::new(channel)
            .screen(tokio_stream::empty())
            .await
            .map(|_| ()),
        ListenerKind::ReplicaGrpc => txmesh_proto::v1::replica_client::ReplicaClient::new(channel)
            .forward(tokio_stream::empty())
            .await
            .map(|_| ()),
        _ => DashboardClient::new(channel)
            .publish(tokio_stream::empty())
            .await
            .map(|_| ()),
    };
    match outcome {
        Ok(()) => (Some(true), "call accepted".into()),
        Err(s) if s.code() == tonic::Code::PermissionDenied => {
            (Some(false), format!("PERMISSION_DENIED: {}", s.message()))
        }
        Err(s) => (None, format!("{:?}: {}", s.code(), s.message())),
    }
}

/// A TLS 1.3 client config presenting `identity`, offering `alpn`.
fn client_as(
    identity: &Identity,
    alpn: &[Vec<u8>],
) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    probe::client_config(&ClientSpec {
        identity: Some(identity),
        tls12_only: false,
        alpn: alpn.to_vec(),
        resumption: false,
    })
    .map_err(|e| e.to_string())
}

/// `GET path` on a new connection to `target` with `config`.
async fn https_get(
    target: &AuditTarget,
    config: std::sync::Arc<rustls::ClientConfig>,
    path: &str,
) -> Result<crate::net::http::HttpResponse, String> {
    let conn = probe::tls_connect(target.addr, config)
        .await
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(
        probe::IO_WAIT,
        crate::net::http::get(conn, "audit", path, &[]),
    )
    .await
    .map_err(|_| "no answer".to_owned())?
    .map_err(|e| e.to_string())
}

/// The operator's page, and each asset it loads, carries the security
/// headers (the Content-Security-Policy that lets only this origin's script
/// run, `nosniff`, no framing, no referrer) and its own content type.
async fn page_headers_check(
    target: &AuditTarget,
    identity: Option<&Identity>,
    alpn: &[Vec<u8>],
) -> CheckResult {
    const CHECK: &str = "page_security_headers";
    let Some(identity) = identity else {
        return result(
            CHECK,
            target,
            Outcome::Skip,
            "no operator identity to load the page with",
        );
    };
    let config = match client_as(identity, alpn) {
        Ok(c) => c,
        Err(e) => return result(CHECK, target, Outcome::Fail, e),
    };
    let mut problems = Vec::new();
    for (path, content_type) in [
        ("/", "text/html"),
        ("/app.js", "text/javascript"),
        ("/uplot.js", "text/javascript"),
        ("/app.css", "text/css"),
    ] {
        let r = match https_get(target, config.clone(), path).await {
            Ok(r) if r.status == http::StatusCode::OK => r,
            Ok(r) => {
                problems.push(format!("{path}: {}", r.status));
                continue;
            }
            Err(e) => {
                problems.push(format!("{path}: {e}"));
                continue;
            }
        };
        let header = |name: &str| {
            r.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        for (name, want) in crate::https::SECURITY_HEADERS {
            if header(name) != want {
                problems.push(format!("{path}: {name} is {:?}", header(name)));
            }
        }
        if !header("content-type").starts_with(content_type) {
            problems.push(format!("{path}: content-type {:?}", header("content-type")));
        }
    }
    if problems.is_empty() {
        result(
            CHECK,
            target,
            Outcome::Pass,
            "/, /app.js, /uplot.js, /app.css: CSP (self only, no framing), nosniff, no-referrer, own content types",
        )
    } else {
        result(CHECK, target, Outcome::Fail, problems.join("; "))
    }
}

/// A second connection offering resumption must still run a full
/// handshake (every connection is verified again).
async fn resumption_check(
    target: &AuditTarget,
    identity: Option<&Identity>,
    alpn: &[Vec<u8>],
) -> CheckResult {
    let Some(identity) = identity else {
        return result(
            "resumption_not_offered",
            target,
            Outcome::Skip,
            "no allowed identity to connect with",
        );
    };
    let spec = ClientSpec {
        identity: Some(identity),
        tls12_only: false,
        alpn: alpn.to_vec(),
        resumption: true,
    };
    let config = match probe::client_config(&spec) {
        Ok(c) => c,
        Err(e) => {
            return result(
                "resumption_not_offered",
                target,
                Outcome::Fail,
                e.to_string(),
            )
        }
    };
    let mut kinds = Vec::new();
    for _ in 0..2 {
        match probe::tls_connect(target.addr, config.clone()).await {
            Ok(mut conn) => {
                // Reading lets any session ticket arrive before the next try.
                let _ = probe::exchange(
                    &mut conn,
                    if alpn[0] == b"h2" {
                        H2_PREFACE
                    } else {
                        HTTP_GET
                    },
                )
                .await;
                kinds.push(conn.get_ref().1.handshake_kind());
            }
            Err(e) => {
                return result(
                    "resumption_not_offered",
                    target,
                    Outcome::Fail,
                    e.to_string(),
                )
            }
        }
    }
    let resumed = kinds
        .iter()
        .any(|k| matches!(k, Some(rustls::HandshakeKind::Resumed)));
    result(
        "resumption_not_offered",
        target,
        pass_if(!resumed),
        format!("handshakes: {kinds:?}"),
    )
}

/// The server's own certificate is an SVID with the expected identity and
/// more than the renewal window left.
async fn server_cert_check(
    target: &AuditTarget,
    options: &AuditOptions,
    identity: Option<&Identity>,
    server: &str,
    alpn: &[Vec<u8>],
) -> CheckResult {
    const CHECK: &str = "server_certificate";
    let spec = ClientSpec {
        identity,
        tls12_only: false,
        alpn: alpn.to_vec(),
        resumption: false,
    };
    let conn = match probe::client_config(&spec) {
        Ok(c) => probe::tls_connect(target.addr, c).await,
        Err(e) => Err(e),
    };
    let conn = match conn {
        Ok(c) => c,
        Err(e) => return result(CHECK, target, Outcome::Fail, e.to_string()),
    };
    let Some(leaf) = conn
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned()
    else {
        return result(CHECK, target, Outcome::Fail, "no server certificate");
    };
    let expected = SpiffeId::for_workload(&options.trust_domain, server);
    let id = match check_svid(&leaf, &options.trust_domain, SvidUsage::Server) {
        Ok(id) => id,
        Err(e) => return result(CHECK, target, Outcome::Fail, e.to_string()),
    };
    if expected.as_ref().ok() != Some(&id) {
        return result(
            CHECK,
            target,
            Outcome::Fail,
            format!("presents {id}, expected {server}"),
        );
    }
    let left = txmesh_certs::not_after_unix(&leaf)
        .ok()
        .map(crate::net::until_unix)
        .filter(|d| !d.is_zero());
    match left {
        Some(left) => result(
            CHECK,
            target,
            pass_if(left > options.renewal_window),
            format!(
                "{id}, {:.1} h left (renewal window {:.1} h)",
                left.as_secs_f64() / 3600.0,
                options.renewal_window.as_secs_f64() / 3600.0
            ),
        ),
        None => result(CHECK, target, Outcome::Fail, format!("{id} has expired")),
    }
}

/// Every TCP socket the audited processes listen on must be a target.
fn unexpected_listeners(targets: &[AuditTarget], pids: &[u32]) -> Vec<CheckResult> {
    let known: BTreeSet<u16> = targets.iter().map(|t| t.addr.port()).collect();
    pids.iter()
        .map(|pid| {
            let listener = format!("pid {pid}");
            let check = |outcome, evidence: String| CheckResult {
                check: "no_unexpected_listeners".into(),
                listener: listener.clone(),
                outcome,
                evidence,
            };
            match listening_ports(*pid) {
                Ok(ports) => {
                    let extra: Vec<u16> = ports.difference(&known).copied().collect();
                    if extra.is_empty() {
                        check(
                            Outcome::Pass,
                            format!("listening on {ports:?}, all audited"),
                        )
                    } else {
                        check(
                            Outcome::Fail,
                            format!("unexpected listening ports {extra:?}"),
                        )
                    }
                }
                Err(e) => check(Outcome::Skip, e.to_string()),
            }
        })
        .collect()
}

/// The TCP ports `pid` listens on (Linux `/proc`).
fn listening_ports(pid: u32) -> Result<BTreeSet<u16>, ServiceError> {
    let fd_dir = PathBuf::from(format!("/proc/{pid}/fd"));
    let inodes: BTreeSet<String> = std::fs::read_dir(&fd_dir)
        .map_err(|source| ServiceError::Io {
            path: fd_dir.clone(),
            source,
        })?
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|link| {
            let s = link.to_string_lossy().into_owned();
            s.strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_owned)
        })
        .collect();
    let mut ports = BTreeSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local_address, state 0A = LISTEN, inode in column 9.
            if cols.len() > 9 && cols[3] == "0A" && inodes.contains(cols[9]) {
                if let Some(port) = cols[1]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                {
                    ports.insert(port);
                }
            }
        }
    }
    Ok(ports)
}

impl AuditReport {
    /// The readable table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<32} {:<32} {:<5} {}\n",
            "CHECK", "LISTENER", "", "EVIDENCE"
        );
        for r in &self.results {
            let outcome = match r.outcome {
                Outcome::Pass => "PASS",
                Outcome::Fail => "FAIL",
                Outcome::Skip => "SKIP",
            };
            let evidence: String = r.evidence.chars().take(120).collect();
            out += &format!(
                "{:<32} {:<32} {:<5} {}\n",
                r.check, r.listener, outcome, evidence
            );
        }
        out += &format!(
            "{} passed, {} failed, {} skipped\n",
            self.passed, self.failed, self.skipped
        );
        out
    }

    /// The results of one check, for tests and scripts.
    pub fn outcomes(&self, check: &str) -> Vec<&CheckResult> {
        self.results.iter().filter(|r| r.check == check).collect()
    }
}
