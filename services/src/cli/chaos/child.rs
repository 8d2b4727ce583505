//! A service of the `--target up` system run as a child process, so that a
//! `crash` action can kill it for real (SIGKILL: no shutdown, no flush) and
//! start it again on the same state directory and addresses, as a pod is
//! restarted on its volume behind its Service.
//!
//! The child gets the run's whole configuration as a file (and no
//! `TXMESH__` environment of its own, so nothing overrides the addresses
//! it must keep); its addresses are read from its own log line.

use std::{net::SocketAddr, path::PathBuf, process::Stdio, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::{config::TxmeshConfig, error::ServiceError};

/// How long a (re)started child may take to report SERVING.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// Which service the child runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildKind {
    Ingress,
    Dashboard,
}

/// A running child service.
pub struct ChildService {
    kind: ChildKind,
    config: TxmeshConfig,
    pub grpc_addr: SocketAddr,
    pub https_addr: SocketAddr,
    child: tokio::sync::Mutex<Child>,
}

impl ChildKind {
    fn command(self) -> &'static str {
        match self {
            ChildKind::Ingress => "ingress",
            ChildKind::Dashboard => "dashboard",
        }
    }

    /// Puts both listeners of this service in `config` at `grpc`, `https`.
    fn listen(self, config: &mut TxmeshConfig, grpc: SocketAddr, https: SocketAddr) {
        match self {
            ChildKind::Ingress => {
                config.ingress.listen = grpc;
                config.ingress.metrics_listen = https;
            }
            ChildKind::Dashboard => {
                config.dashboard.grpc_listen = grpc;
                config.dashboard.https_listen = https;
            }
        }
    }
}

impl ChildService {
    /// Starts `kind` with `config` on ports the OS picks; resolves once it
    /// is SERVING.
    ///
    /// # Errors
    /// When it cannot be started or does not become ready.
    pub async fn start(kind: ChildKind, config: &TxmeshConfig) -> Result<Self, ServiceError> {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut config = config.clone();
        kind.listen(&mut config, any, any);
        let (child, grpc_addr, https_addr) = spawn(kind, &config).await?;
        kind.listen(&mut config, grpc_addr, https_addr);
        let service = Self {
            kind,
            config,
            grpc_addr,
            https_addr,
            child: tokio::sync::Mutex::new(child),
        };
        service.wait_ready().await?;
        Ok(service)
    }

    /// Kills the process with SIGKILL, waits `restart_after`, starts it
    /// again on the same addresses and state, and waits until it serves.
    ///
    /// # Errors
    /// When it cannot be killed, started again, or does not become ready.
    pub async fn crash(&self, restart_after: Duration) -> Result<String, ServiceError> {
        let mut child = self.child.lock().await;
        let pid = child.id().unwrap_or(0);
        child.start_kill().map_err(|e| failed("kill", &e))?;
        let status = child.wait().await.map_err(|e| failed("wait", &e))?;
        tokio::time::sleep(restart_after).await;
        let started = std::time::Instant::now();
        let (fresh, _, _) = spawn(self.kind, &self.config).await?;
        *child = fresh;
        drop(child);
        self.wait_ready().await?;
        Ok(format!(
            "{} (pid {pid}) killed ({status}); serving again {:.1} s after its restart",
            self.kind.command(),
            started.elapsed().as_secs_f64()
        ))
    }

    /// SIGTERM (a graceful stop: drains, flushes), waited for up to `grace`.
    pub async fn stop(&self, grace: Duration) {
        let mut child = self.child.lock().await;
        if let Some(pid) = child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    async fn wait_ready(&self) -> Result<(), ServiceError> {
        let deadline = tokio::time::Instant::now() + READY_WITHIN;
        let server = self.kind.command();
        while tokio::time::Instant::now() < deadline {
            let status = crate::cli::health::check(
                &self.config,
                self.grpc_addr,
                "chaos",
                server,
                "",
                Duration::from_secs(1),
            )
            .await;
            if matches!(status, Ok(ServingStatus::Serving)) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(ServiceError::Failed {
            what: "restarting a crashed service",
            reason: format!(
                "{server} at {} not SERVING within {READY_WITHIN:?}",
                self.grpc_addr
            ),
        })
    }
}

fn failed(what: &str, e: &std::io::Error) -> ServiceError {
    ServiceError::Failed {
        what: "controlling a child service",
        reason: format!("{what}: {e}"),
    }
}

/// Writes `config` beside the state, starts `txmesh KIND --config FILE`
/// and reads the addresses it bound from its log.
async fn spawn(
    kind: ChildKind,
    config: &TxmeshConfig,
) -> Result<(Child, SocketAddr, SocketAddr), ServiceError> {
    let dir = config.state_dir.join("chaos");
    let file: PathBuf = dir.join(format!("{}.toml", kind.command()));
    let io = |path: &PathBuf| {
        let path = path.clone();
        move |source| ServiceError::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let text = toml::to_string(config)
        .map_err(|e| ServiceError::config("chaos child config", e.to_string()))?;
    std::fs::write(&file, text).map_err(io(&file))?;
    let exe = std::env::current_exe().map_err(|e| failed("find the txmesh binary", &e))?;
    let mut child = Command::new(exe)
        .arg("--config")
        .arg(&file)
        .arg(kind.command())
        .env_clear()
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| failed("start", &e))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| failed("read its log", &std::io::ErrorKind::BrokenPipe.into()))?;
    let (found, addrs) = tokio::sync::oneshot::channel();
    let span = tracing::info_span!("chaos.child_log", service = kind.command());
    // Reads the child's log to its end (so the child never blocks on a
    // full pipe), reporting the listening line once.
    let reader = async move {
        let mut found = Some(found);
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let Some(tx) = found.take() else { continue };
            let event: Option<serde_json::Value> = serde_json::from_str(&line).ok();
            let fields = event.as_ref().map(|e| &e["fields"]);
            let addr = |key: &str| fields.and_then(|f| f[key].as_str()?.parse::<SocketAddr>().ok());
            match (addr("grpc_addr"), addr("https_addr")) {
                (Some(g), Some(h)) => {
                    let _ = tx.send((g, h));
                }
                _ => found = Some(tx),
            }
        }
    };
    tokio::spawn(tracing::Instrument::instrument(reader, span));
    match tokio::time::timeout(READY_WITHIN, addrs).await {
        Ok(Ok((grpc, https))) => Ok((child, grpc, https)),
        _ => Err(ServiceError::Failed {
            what: "starting a child service",
            reason: format!("{} did not log its listening addresses", kind.command()),
        }),
    }
}
