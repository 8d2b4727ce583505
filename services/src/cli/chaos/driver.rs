//! The experiment runner's hands on a real system: Admin calls as the
//! `chaos` identity, `/metrics` scrapes as `operator`, txgen as the load,
//! certificate actions on the state directory, and the wire proxies.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};
use tokio_util::sync::CancellationToken;

use parking_lot::Mutex;

use txmesh_certs::{CaStep, CertAuthority, CertStore, Forgery, SpiffeId, StateLayout};
use txmesh_chaos::{
    experiment::{
        Component, Driver, DriverError, Link, LoadField, LoadOutcome, MetricsText, RotationScope,
    },
    proxy::{WireFault, WireProxy},
    FaultSpec,
};
use txmesh_proto::v1::{
    admin_client::AdminClient, ClearFaultsRequest, InjectFaultRequest, ListFaultsRequest,
};

use crate::{
    config::TxmeshConfig,
    error::ServiceError,
    net::HostPort,
    txgen::{self, TxgenProgress, TxgenReport},
};

/// Where the runner reaches each component.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub ingress_admin: SocketAddr,
    pub ingress_metrics: SocketAddr,
    pub dashboard_admin: SocketAddr,
    pub dashboard_metrics: SocketAddr,
    pub txgen_target: HostPort,
}

impl Endpoints {
    /// The configured listeners (a wildcard address is reached on
    /// 127.0.0.1).
    pub fn from_config(config: &TxmeshConfig) -> Self {
        let reach = |mut addr: SocketAddr| {
            if addr.ip().is_unspecified() {
                addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
            }
            addr
        };
        Self {
            ingress_admin: reach(config.ingress.listen),
            ingress_metrics: reach(config.ingress.metrics_listen),
            dashboard_admin: reach(config.dashboard.grpc_listen),
            dashboard_metrics: reach(config.dashboard.https_listen),
            txgen_target: match config.txgen.target.socket_addr() {
                Some(addr) => reach(addr).into(),
                None => config.txgen.target.clone(),
            },
        }
    }
}

type LoadTask = tokio::task::JoinHandle<Result<TxgenReport, ServiceError>>;

/// A [`Driver`] over mTLS to a running system.
pub struct SystemDriver {
    config: TxmeshConfig,
    endpoints: Endpoints,
    target: String,
    chaos: CertStore,
    operator: CertStore,
    proxies: BTreeMap<Link, WireProxy>,
    load: Mutex<Option<(CancellationToken, LoadTask)>>,
    /// Components run as child processes, which `crash` may kill.
    children: BTreeMap<Component, Arc<super::child::ChildService>>,
    /// Stops the certificate watchers with the driver.
    _watching: tokio_util::sync::DropGuard,
}

impl SystemDriver {
    /// A driver for the system at `endpoints`, with the `chaos` and
    /// `operator` identities of `config.state_dir` (reloaded as they
    /// rotate).
    ///
    /// # Errors
    /// When either identity's certificates cannot be loaded.
    pub fn new(
        config: TxmeshConfig,
        endpoints: Endpoints,
        target: String,
    ) -> Result<Self, ServiceError> {
        let open = |name: &str| CertStore::open(&config.identity_dir(name), &config.trust_domain);
        let chaos = open("chaos")?;
        let operator = open("operator")?;
        let stop = CancellationToken::new();
        let trigger = stop.clone();
        let metrics = Arc::new(crate::metrics::Metrics::new(&[]));
        for store in [&chaos, &operator] {
            crate::net::watch_certs(
                store.clone(),
                config.tls.reload_interval(),
                stop.clone(),
                metrics.clone(),
            );
        }
        Ok(Self {
            config,
            endpoints,
            target,
            chaos,
            operator,
            proxies: BTreeMap::new(),
            load: Mutex::new(None),
            children: BTreeMap::new(),
            _watching: trigger.drop_guard(),
        })
    }

    /// `child` runs `component`: a `crash` action kills and restarts it.
    #[must_use]
    pub fn with_child(
        mut self,
        component: Component,
        child: Arc<super::child::ChildService>,
    ) -> Self {
        self.children.insert(component, child);
        self
    }

    /// Puts `proxy` on `link` for wire faults.
    #[must_use]
    pub fn with_proxy(mut self, link: Link, proxy: WireProxy) -> Self {
        self.proxies.insert(link, proxy);
        self
    }

    fn server_id(&self, name: &str) -> Result<SpiffeId, DriverError> {
        SpiffeId::for_workload(&self.config.trust_domain, name).map_err(certs_error)
    }

    fn admin(
        &self,
        target: Component,
    ) -> Result<AdminClient<tonic::transport::Channel>, DriverError> {
        let (addr, name) = match target {
            Component::Ingress => (self.endpoints.ingress_admin, "ingress"),
            Component::Dashboard => (self.endpoints.dashboard_admin, "dashboard"),
        };
        let channel = crate::net::mtls_channel(addr, &self.chaos, &self.server_id(name)?)
            .map_err(certs_error)?;
        Ok(AdminClient::new(channel))
    }

    /// `GET /metrics` over mTLS as the operator.
    async fn get_metrics(&self, addr: SocketAddr, server: &str) -> Result<String, DriverError> {
        let tls =
            txmesh_certs::client_config(&self.operator, &self.server_id(server)?, &[b"http/1.1"])
                .map_err(certs_error)?;
        let unreachable = |reason: String| DriverError::Unreachable {
            component: format!("{server} /metrics"),
            reason,
        };
        let exchange = async {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            let conn = tokio_rustls::TlsConnector::from(Arc::new(tls))
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(conn)
        };
        let conn = tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .map_err(|_| unreachable("no TLS connection within 5 s".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let response = tokio::time::timeout(
            Duration::from_secs(5),
            crate::net::http::get(conn, "txmesh", "/metrics", &[]),
        )
        .await
        .map_err(|_| unreachable("no answer within 5 s".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
        if response.status != http::StatusCode::OK {
            return Err(DriverError::Refused {
                component: format!("{server} /metrics"),
                reason: format!("answered {}", response.status),
            });
        }
        Ok(response.text())
    }
}

/// A gRPC error from a component's Admin service: unreachable when the
/// transport failed, refused when it answered.
fn status_error(target: Component, status: &tonic::Status) -> DriverError {
    let component = format!("{target:?} Admin");
    let reason = format!("{}: {}", status.code(), status.message());
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown => {
            DriverError::Unreachable { component, reason }
        }
        _ => DriverError::Refused { component, reason },
    }
}

fn certs_error(e: impl std::fmt::Display) -> DriverError {
    DriverError::Run {
        what: "certificates",
        reason: e.to_string(),
    }
}

/// The figures of a txgen report that probes check.
fn outcome(report: &TxgenReport) -> LoadOutcome {
    let missed: u64 = report
        .injected
        .values()
        .map(|c| c.sent.saturating_sub(c.detected))
        .sum();
    let figures = BTreeMap::from([
        (LoadField::Unanswered, report.unanswered as f64),
        (LoadField::Errors, report.errors as f64),
        (LoadField::ScreenedTwice, report.screened_twice as f64),
        (LoadField::MissedPatterns, missed as f64),
        (LoadField::FalsePositives, report.clean.flagged as f64),
        (LoadField::P99Ms, report.latency_ms.p99),
        (
            LoadField::Verdicts,
            report.answered.saturating_sub(report.errors) as f64,
        ),
        (
            LoadField::RecoveredByReplay,
            report.recovered_by_replay as f64,
        ),
    ]);
    LoadOutcome {
        figures,
        report: serde_json::to_value(report).unwrap_or_default(),
    }
}

impl Driver for SystemDriver {
    fn target(&self) -> String {
        self.target.clone()
    }

    async fn scrape(&self, target: Component) -> Result<MetricsText, DriverError> {
        let text = match target {
            Component::Ingress => {
                self.get_metrics(self.endpoints.ingress_metrics, "ingress")
                    .await?
            }
            Component::Dashboard => {
                self.get_metrics(self.endpoints.dashboard_metrics, "dashboard")
                    .await?
            }
        };
        Ok(MetricsText::parse(&text))
    }

    async fn inject(&self, target: Component, spec: &FaultSpec) -> Result<u64, DriverError> {
        let request = InjectFaultRequest {
            spec: Some(crate::admin::to_wire(spec)),
        };
        let response = self
            .admin(target)?
            .inject_fault(request)
            .await
            .map_err(|s| status_error(target, &s))?;
        Ok(response.into_inner().fault_id)
    }

    async fn wire(
        &self,
        link: Link,
        fault: WireFault,
        lease: Duration,
    ) -> Result<u64, DriverError> {
        let proxy = self.proxies.get(&link).ok_or_else(|| {
            DriverError::Unsupported(format!("no wire proxy on {link:?}: wire faults need --target up (on a cluster, Chaos Mesh NetworkChaos)"))
        })?;
        proxy
            .inject(fault, lease)
            .map(|id| id.0)
            .map_err(|e| DriverError::Refused {
                component: format!("wire proxy {link:?}"),
                reason: e.to_string(),
            })
    }

    async fn clear(&self, target: Option<Component>) -> Result<usize, DriverError> {
        let targets = match target {
            Some(t) => vec![t],
            None => vec![Component::Ingress, Component::Dashboard],
        };
        let mut cleared = 0;
        for t in targets {
            let response = self
                .admin(t)?
                .clear_faults(ClearFaultsRequest { fault_id: 0 })
                .await
                .map_err(|s| status_error(t, &s))?;
            cleared += response.into_inner().cleared as usize;
        }
        for proxy in self.proxies.values() {
            cleared += proxy.clear_all();
        }
        Ok(cleared)
    }

    async fn active_faults(&self) -> Result<usize, DriverError> {
        let mut active = 0;
        for t in [Component::Ingress, Component::Dashboard] {
            let response = self
                .admin(t)?
                .list_faults(ListFaultsRequest {})
                .await
                .map_err(|s| status_error(t, &s))?;
            active += response.into_inner().faults.len();
        }
        Ok(active
            + self
                .proxies
                .values()
                .map(|p| p.active().len())
                .sum::<usize>())
    }

    async fn start_load(
        &self,
        rate: u64,
        duration_secs: u64,
        accounts: Option<u64>,
        seed: u64,
    ) -> Result<(), DriverError> {
        let mut config = self.config.clone();
        let t = &mut config.txgen;
        t.target = self.endpoints.txgen_target.clone();
        t.rate = rate;
        t.duration_secs = duration_secs;
        t.count = 0;
        t.seed = seed;
        if let Some(accounts) = accounts {
            t.accounts = accounts;
        }
        let stop = CancellationToken::new();
        let trigger = stop.clone();
        let load =
            async move { txgen::run(&config, stop, Arc::new(TxgenProgress::default())).await };
        let task = tokio::spawn(tracing::Instrument::instrument(
            load,
            tracing::info_span!("chaos.load"),
        ));
        let mut load = self.load.lock();
        if load.is_some() {
            return Err(DriverError::Unsupported("a load is already running".into()));
        }
        *load = Some((trigger, task));
        Ok(())
    }

    fn stop_load(&self) {
        if let Some((trigger, _)) = &*self.load.lock() {
            trigger.cancel();
        }
    }

    async fn wait_load(&self) -> Result<Option<LoadOutcome>, DriverError> {
        let running = self.load.lock().take();
        let Some((_trigger, task)) = running else {
            return Ok(None);
        };
        match task.await {
            Ok(Ok(report)) => Ok(Some(outcome(&report))),
            Ok(Err(e)) => Err(DriverError::Run {
                what: "txgen",
                reason: e.to_string(),
            }),
            Err(e) => Err(DriverError::Run {
                what: "txgen task",
                reason: e.to_string(),
            }),
        }
    }

    async fn crash(
        &self,
        target: Component,
        restart_after: Duration,
    ) -> Result<String, DriverError> {
        let Some(child) = self.children.get(&target) else {
            return Err(DriverError::Unsupported(format!(
                "a crash of the {target:?} needs `--target up` (which then runs it as a child \
                 process) or, in a cluster, Chaos Mesh (chaos/k8s/ingress-crash.yaml)"
            )));
        };
        child
            .crash(restart_after)
            .await
            .map_err(|e| DriverError::Run {
                what: "crash",
                reason: e.to_string(),
            })
    }

    async fn rotate_certs(&self, scope: RotationScope) -> Result<String, DriverError> {
        match scope {
            RotationScope::Leaves => crate::cli::certs::rotate(&self.config).map_err(certs_error),
            RotationScope::Ca => {
                // Each step must reach every component before the next.
                let pause = self.config.tls.reload_interval() * 3;
                let mut lines = Vec::new();
                crate::cli::certs::rotate_ca_steps(
                    &self.config,
                    &[CaStep::Add, CaStep::Reissue, CaStep::Retire],
                    pause,
                    |line| lines.push(line),
                )
                .await
                .map_err(certs_error)?;
                tokio::time::sleep(pause).await;
                Ok(lines.join("; "))
            }
        }
    }

    fn observations(&self) -> BTreeMap<String, f64> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut out = BTreeMap::new();
        for (link, proxy) in &self.proxies {
            let link = link.name();
            let s = proxy.stats();
            for (name, value) in [
                ("connections", &s.connections),
                ("resets", &s.resets),
                ("bytes_forwarded", &s.bytes_forwarded),
                ("bytes_dropped", &s.bytes_dropped),
                ("delayed_chunks", &s.delayed_chunks),
            ] {
                out.insert(format!("wire.{link}.{name}"), value.load(Relaxed) as f64);
            }
        }
        out
    }

    async fn install_expired_cert(&self, identity: &str) -> Result<String, DriverError> {
        let layout = StateLayout::new(&self.config.state_dir);
        let ca = CertAuthority::load(&layout, &self.config.trust_domain).map_err(certs_error)?;
        let (cert, key) = Forgery::Expired
            .make(Some(&ca), &self.config.trust_domain, identity)
            .map_err(certs_error)?;
        let dir = layout.identity_dir(identity);
        // Key first, then certificate, each by rename: a reload between
        // the two sees a mismatch, which is refused like the expiry.
        for (name, pem) in [("tls.key", key), ("tls.crt", cert)] {
            let tmp = dir.join(format!(".{name}.chaos"));
            let io = |e: std::io::Error| DriverError::Run {
                what: "writing the certificate",
                reason: format!("{}: {e}", dir.display()),
            };
            std::fs::write(&tmp, pem).map_err(io)?;
            std::fs::rename(&tmp, dir.join(name)).map_err(io)?;
        }
        Ok(format!(
            "wrote an expired certificate for {identity}; it must keep presenting its last good one"
        ))
    }
}
