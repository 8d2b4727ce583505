//! Test fixtures: a txmesh system on 127.0.0.1 with OS-chosen ports and
//! certificates made by txmesh-certs in a fresh temporary directory, and
//! the lock that keeps latency-measuring tests alone on the machine.
#![allow(dead_code)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};
use tokio_util::sync::CancellationToken;

use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::{client::TlsStream, TlsConnector};
use txmesh::{cli::up, config::TxmeshConfig, dashboard, ingress, txgen};
use txmesh_certs::{CertStore, SpiffeId};
use txmesh_proto::v1::Transaction;

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "txmesh-test-{tag}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A config for `dir` with every listener on 127.0.0.1:0, and its
/// certificates created.
pub fn test_config(dir: &Path) -> TxmeshConfig {
    let mut config = TxmeshConfig {
        state_dir: dir.to_path_buf(),
        ..TxmeshConfig::default()
    };
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    config.ingress.listen = any;
    config.ingress.metrics_listen = any;
    config.dashboard.grpc_listen = any;
    config.dashboard.https_listen = any;
    config.dashboard.push_interval_ms = 100;
    config.actors.shards.count = 2;
    config.txgen.accounts = 300;
    config.txgen.streams = 2;
    config.txgen.batch_size = 64;
    config.txgen.inject_ratio = 0.1;
    up::ensure_certs(&config).expect("certificates");
    config
}

/// The machine: tests that start a system share it; a test whose
/// hypothesis includes latency (a chaos experiment) holds it alone, so that
/// another test's load does not fail it.
static MACHINE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A share of the machine, held for the life of a test's system.
pub type Machine = tokio::sync::RwLockReadGuard<'static, ()>;

/// Waits until no test holds the machine alone, and shares it.
pub async fn machine_shared() -> Machine {
    MACHINE.read().await
}

/// Waits until every other test has let go of the machine, and holds it
/// alone (the lock is fair: waiting here stops new tests from sharing).
pub async fn machine_alone() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    MACHINE.write().await
}

/// Dashboard then ingress, wired together; the machine is shared while the
/// guard lives.
pub async fn start_system(
    config: &mut TxmeshConfig,
) -> (dashboard::DashboardHandle, ingress::IngressHandle, Machine) {
    start_system_with(config, txmesh_actors::RouterOptions::default()).await
}

/// [`start_system`] with the ingress's router options (clock, hook).
pub async fn start_system_with(
    config: &mut TxmeshConfig,
    options: txmesh_actors::RouterOptions,
) -> (dashboard::DashboardHandle, ingress::IngressHandle, Machine) {
    let machine = machine_shared().await;
    let (dash, ing) = launch(config, options).await;
    (dash, ing, machine)
}

/// Dashboard then ingress, without taking a share of the machine (for a
/// test that already holds it alone).
pub async fn launch(
    config: &mut TxmeshConfig,
    options: txmesh_actors::RouterOptions,
) -> (dashboard::DashboardHandle, ingress::IngressHandle) {
    let dash = dashboard::start(config).await.expect("dashboard starts");
    config.ingress.dashboard_addr = dash.grpc_addr.into();
    let ing = ingress::start_with(config, options)
        .await
        .expect("ingress starts");
    config.txgen.target = ing.local_addr.into();
    (dash, ing)
}

/// Runs txgen to completion with the config's settings.
pub async fn run_txgen(config: &TxmeshConfig) -> txgen::TxgenReport {
    let stop = CancellationToken::new();
    txgen::run(config, stop, Arc::new(txgen::TxgenProgress::default()))
        .await
        .expect("txgen runs")
}

/// Runs txgen in the background, with its live counters, so a test can wait
/// for the run to be under way instead of sleeping.
pub fn spawn_txgen_watched(
    config: &TxmeshConfig,
) -> (
    tokio::task::JoinHandle<Result<txgen::TxgenReport, txmesh::ServiceError>>,
    Arc<txgen::TxgenProgress>,
) {
    let config = config.clone();
    let progress = Arc::new(txgen::TxgenProgress::default());
    let watched = Arc::clone(&progress);
    let task = tokio::spawn(async move {
        let stop = CancellationToken::new();
        txgen::run(&config, stop, watched).await
    });
    (task, progress)
}

/// Waits until `txgen` has been answered `n` times.
pub async fn answered_at_least(progress: &txgen::TxgenProgress, n: u64) {
    use std::sync::atomic::Ordering;
    until(
        &format!("txgen answered {n}"),
        Duration::from_secs(30),
        || progress.answered.load(Ordering::Relaxed) >= n,
    )
    .await;
}

/// Checks `done` every 20 ms until it holds; panics naming `what` after
/// `timeout`.
pub async fn until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs txgen in the background with the config's settings.
pub fn spawn_txgen(
    config: &TxmeshConfig,
) -> tokio::task::JoinHandle<Result<txgen::TxgenReport, txmesh::ServiceError>> {
    let config = config.clone();
    tokio::spawn(async move {
        let stop = CancellationToken::new();
        txgen::run(&config, stop, Arc::new(txgen::TxgenProgress::default())).await
    })
}

/// A gRPC channel over mTLS to `server` at `addr`, as `identity`.
pub fn channel_as(
    config: &TxmeshConfig,
    identity: &str,
    server: &str,
    addr: SocketAddr,
) -> tonic::transport::Channel {
    txmesh::net::mtls_channel(addr, &material(config, identity), &spiffe(config, server))
        .expect("channel")
}

pub fn material(config: &TxmeshConfig, name: &str) -> CertStore {
    CertStore::open(&config.identity_dir(name), &config.trust_domain).expect("identity loads")
}

pub fn spiffe(config: &TxmeshConfig, name: &str) -> SpiffeId {
    SpiffeId::for_workload(&config.trust_domain, name).expect("valid id")
}

/// An HTTPS (http/1.1) mTLS connection to the dashboard as `identity`.
pub async fn https_as(
    config: &TxmeshConfig,
    identity: &str,
    addr: SocketAddr,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tls = txmesh_certs::client_config(
        &material(config, identity),
        &spiffe(config, "dashboard"),
        &[b"http/1.1"],
    )
    .expect("client config");
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(Arc::new(tls))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
}

/// A TLS 1.3 client that trusts the CA but presents no certificate.
pub fn no_client_cert_config(config: &TxmeshConfig, alpn: &[u8]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(config.state_dir.join("ca").join("tls.crt")).expect("CA file");
    for cert in CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.expect("CA parses")).expect("CA added");
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("TLS 1.3")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls
}

/// Reads whatever the peer sends within `wait` (empty on EOF or reset).
pub async fn read_some<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, wait: Duration) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(wait, stream.read(&mut buf)).await {
        Ok(Ok(n)) => buf[..n].to_vec(),
        _ => Vec::new(),
    }
}

/// `GET path` on an open TLS stream: the status code, `None` when the
/// connection gives no complete response (refused, closed).
pub async fn http_get<S>(stream: S, path: &str) -> Option<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let exchange = txmesh::net::http::get(stream, "localhost", path, &[]);
    match tokio::time::timeout(Duration::from_secs(5), exchange).await {
        Ok(Ok(response)) => Some(response.status.as_u16()),
        _ => None,
    }
}

/// `GET /metrics` as `identity` from `server`: (status, body).
pub async fn scrape(
    config: &TxmeshConfig,
    identity: &str,
    server: &str,
    addr: SocketAddr,
) -> (String, String) {
    let tls = txmesh_certs::client_config(
        &material(config, identity),
        &spiffe(config, server),
        &[b"http/1.1"],
    )
    .expect("client config");
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let conn = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(
            rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
            tcp,
        )
        .await
        .expect("handshake");
    let response = txmesh::net::http::get(conn, "localhost", "/metrics", &[])
        .await
        .expect("a response");
    (response.status.to_string(), response.text())
}

pub fn value(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{body}"))
}

/// The close code a WebSocket ends with, reading (and dropping) messages
/// until then; `None` when it ends without a close frame or `within` passes.
pub async fn close_code<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    within: Duration,
) -> Option<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
    tokio::time::timeout(within, async {
        while let Some(Ok(msg)) = ws.next().await {
            if let tokio_tungstenite::tungstenite::Message::Close(frame) = msg {
                return frame.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

/// Starts `txmesh ingress` with `--set` pairs, its gRPC listener on
/// `listen` (port 0: the OS chooses), and returns it with the address it
/// bound, read from its own log line (never a port guessed beforehand).
pub fn spawn_ingress(
    sets: &[(&str, String)],
    listen: SocketAddr,
) -> (std::process::Child, SocketAddr) {
    let (child, grpc, _) = spawn_ingress_listening(sets, listen);
    (child, grpc)
}

/// [`spawn_ingress`], also returning its HTTPS (metrics) address.
pub fn spawn_ingress_listening(
    sets: &[(&str, String)],
    listen: SocketAddr,
) -> (std::process::Child, SocketAddr, SocketAddr) {
    let mut all = sets.to_vec();
    all.push(("ingress.listen", listen.to_string()));
    all.push(("ingress.metrics_listen", "127.0.0.1:0".to_owned()));
    spawn_listening("ingress", &all)
}

/// Starts `txmesh dashboard` likewise, its gRPC listener on `listen`.
pub fn spawn_dashboard(
    sets: &[(&str, String)],
    listen: SocketAddr,
) -> (std::process::Child, SocketAddr) {
    let mut all = sets.to_vec();
    all.push(("dashboard.grpc_listen", listen.to_string()));
    all.push(("dashboard.https_listen", "127.0.0.1:0".to_owned()));
    let (child, grpc, _) = spawn_listening("dashboard", &all);
    (child, grpc)
}

/// Starts `txmesh COMMAND` and returns it with its gRPC and HTTPS
/// addresses, read from its log.
fn spawn_listening(
    command: &str,
    sets: &[(&str, String)],
) -> (std::process::Child, SocketAddr, SocketAddr) {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_txmesh"));
    child.arg(command);
    for (key, value) in sets {
        child.args(["--set", &format!("{key}={value}")]);
    }
    let mut child = child
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("service starts");
    // Read on a thread of its own (the pipe blocks), and keep reading so
    // the child never blocks on a full pipe.
    let stdout = child.stdout.take().expect("stdout");
    let (found, addr) = std::sync::mpsc::channel();
    // TXMESH_IT_ECHO=1: the services' logs on the test's stderr.
    let echo = std::env::var_os("TXMESH_IT_ECHO").is_some();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if echo {
                eprintln!("{line}");
            }
            let event: Option<serde_json::Value> = serde_json::from_str(&line).ok();
            let addrs = event.and_then(|e| {
                let grpc: SocketAddr = e["fields"]["grpc_addr"].as_str()?.parse().ok()?;
                let https: SocketAddr = e["fields"]["https_addr"].as_str()?.parse().ok()?;
                Some((grpc, https))
            });
            if let Some(a) = addrs {
                let _ = found.send(a);
            }
        }
    });
    let (grpc, https) = addr
        .recv_timeout(Duration::from_secs(60))
        .expect("the service logs the address it listens on");
    (child, grpc, https)
}

/// Waits until the service `server` at `addr` reports SERVING.
pub async fn wait_serving(config: &TxmeshConfig, addr: SocketAddr, server: &str) {
    use tonic_health::pb::health_check_response::ServingStatus;
    for _ in 0..300 {
        let status =
            txmesh::cli::health::check(config, addr, "txgen", server, "", Duration::from_secs(1))
                .await;
        if matches!(status, Ok(ServingStatus::Serving)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{server} at {addr} did not become ready");
}

/// Sends `signal` (`-KILL`, `-TERM`) to `child` and waits for it to exit.
pub async fn signal(mut child: std::process::Child, signal: &str) -> std::process::ExitStatus {
    let sent = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "kill {signal}");
    tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("waited")
        .expect("exit status")
}

/// A valid EUR card transaction from a second ago (merchant `m-1`, DE).
pub fn txn(id: &str, account: &str, amount: i64) -> Transaction {
    Transaction {
        transaction_id: id.into(),
        account_id: account.into(),
        amount_minor: amount,
        currency: "EUR".into(),
        timestamp_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis() as i64
            - 1_000,
        merchant_id: "m-1".into(),
        country: "DE".into(),
        channel: 2,
    }
}
