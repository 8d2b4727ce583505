//! `txmesh chaos run FILE`: runs a chaos experiment and writes its journal.
//!
//! With `--target up` it first starts a whole system in this process, on
//! 127.0.0.1 with the state directory's certificates (as `txmesh up` does),
//! with a wire proxy on each link (txgen to ingress, ingress to dashboard)
//! so wire faults have somewhere to sit, and stops it afterwards. Without
//! it, the experiment runs against the configured addresses (no wire
//! proxies there: on a cluster that is Chaos Mesh's NetworkChaos).
//!
//! An experiment with `replicas = N` gets N ingress replicas (as `txmesh
//! up --replicas N`), the load on replica 0 and a third proxy on replica
//! 0's forwarding link to replica 1.
//!
//! The experiment's load is txgen, in process. Faults go through each
//! component's Admin service as the `chaos` identity; probes read
//! `/metrics` as the `operator` identity.

mod child;
mod driver;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use clap::{Args, Subcommand};

use txmesh_chaos::{
    experiment::{self, Component, Experiment, Journal},
    proxy::WireProxy,
};

pub use driver::{Endpoints, SystemDriver};

use super::up;
use crate::{config::TxmeshConfig, dashboard, error::ServiceError, ingress};
use child::{ChildKind, ChildService};

#[derive(Subcommand)]
pub enum ChaosCommand {
    /// Run an experiment (chaos/experiments/NAME.toml): the steady-state hypothesis is checked
    /// before, during and after its method; writes a JSON journal; exit 0 only if it held.
    Run(ChaosRunArgs),
}

#[derive(Args)]
pub struct ChaosRunArgs {
    /// The experiment file.
    file: PathBuf,
    /// `up`: start a whole system (with wire proxies) for the run and stop it afterwards.
    /// Default: the configured, running system.
    #[arg(long, value_enum)]
    target: Option<ChaosTarget>,
    /// Where to write the journal (default: STATE_DIR/chaos/NAME-MILLIS.json).
    #[arg(long)]
    journal: Option<PathBuf>,
    /// Seed for the load and the wire jitter (default: the file's, else random; always journaled).
    #[arg(long)]
    seed: Option<u64>,
    /// Print the journal on stdout instead of the summary.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ChaosTarget {
    Up,
}

/// `txmesh chaos run`: exit 0 only when the hypothesis held throughout.
pub(super) fn command(command: ChaosCommand, config: TxmeshConfig) -> anyhow::Result<ExitCode> {
    let ChaosCommand::Run(args) = command;
    let options = ChaosRunOptions {
        file: args.file,
        target_up: args.target == Some(ChaosTarget::Up),
        journal: args.journal,
        seed: args.seed,
    };
    let run = crate::runtime::block_on(2, async move { run(config, &options).await })??;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&run.journal)?);
    } else {
        print!("{}", run.journal.summary());
        println!("journal: {}", run.journal_path.display());
    }
    Ok(super::exit(
        run.journal.status == experiment::RunStatus::Completed,
    ))
}

/// What `txmesh chaos run` was asked.
#[derive(Debug, Clone)]
pub struct ChaosRunOptions {
    pub file: PathBuf,
    /// Start a system for the run (and stop it afterwards).
    pub target_up: bool,
    /// Where the journal goes (default: `<state_dir>/chaos/<name>-<ms>.json`).
    pub journal: Option<PathBuf>,
    /// Overrides the file's seed.
    pub seed: Option<u64>,
}

/// A finished run: its journal and where it was written.
#[derive(Debug)]
pub struct ChaosRun {
    pub journal: Journal,
    pub journal_path: PathBuf,
}

/// Longest lease a wire fault may have.
const MAX_WIRE_LEASE: Duration = Duration::from_secs(3600);

/// Runs the experiment of `options.file`.
///
/// # Errors
/// When the file is not a valid experiment, the system cannot be started
/// or reached, or the journal cannot be written. A hypothesis that did not
/// hold is not an error: it is the journal's status.
pub async fn run(
    config: TxmeshConfig,
    options: &ChaosRunOptions,
) -> Result<ChaosRun, ServiceError> {
    let file = options.file.display().to_string();
    let experiment = Experiment::load(&options.file)
        .map_err(|e| ServiceError::config("chaos run", e.to_string()))?;
    let seed = options
        .seed
        .or(experiment.seed)
        .unwrap_or_else(rand::random);
    let journal = if options.target_up {
        run_against_up(config.clone(), &experiment, &file, seed).await?
    } else {
        let endpoints = Endpoints::from_config(&config);
        let driver = SystemDriver::new(config.clone(), endpoints, "configured system".into())?;
        experiment::run(&experiment, &file, &driver, seed).await
    };
    let journal_path = match &options.journal {
        Some(path) => path.clone(),
        None => default_journal_path(&config, &options.file, journal.started_unix_ms),
    };
    write_journal(&journal, &journal_path)?;
    Ok(ChaosRun {
        journal,
        journal_path,
    })
}

/// A component of the `--target up` system: in this process, or a child
/// process when the experiment crashes it.
enum Running<H> {
    InProcess(H),
    Child(Arc<ChildService>),
}

impl<H> Running<H> {
    fn child(&self) -> Option<Arc<ChildService>> {
        match self {
            Running::Child(c) => Some(c.clone()),
            Running::InProcess(_) => None,
        }
    }
}

async fn run_against_up(
    mut config: TxmeshConfig,
    experiment: &Experiment,
    file: &str,
    seed: u64,
) -> Result<Journal, ServiceError> {
    up::ensure_certs(&config)?;
    // The system is the run's own: every listener on a port the OS picks
    // (the runner knows where they are), and certificates polled often
    // enough that a staged CA rotation finishes under the load.
    for addr in [
        &mut config.ingress.listen,
        &mut config.ingress.metrics_listen,
        &mut config.dashboard.grpc_listen,
        &mut config.dashboard.https_listen,
    ] {
        *addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    }
    config.tls.reload_interval_ms = config.tls.reload_interval_ms.min(500);
    // What the experiment kills runs as a child process.
    let crashed: Vec<Component> = experiment
        .method
        .iter()
        .chain(&experiment.rollbacks)
        .filter_map(experiment::Action::crashes)
        .collect();
    let dashboard = if crashed.contains(&Component::Dashboard) {
        Running::Child(Arc::new(
            ChildService::start(ChildKind::Dashboard, &config).await?,
        ))
    } else {
        Running::InProcess(dashboard::start(&config).await?)
    };
    let (dash_grpc, dash_https) = match &dashboard {
        Running::InProcess(d) => (d.grpc_addr, d.https_addr),
        Running::Child(c) => (c.grpc_addr, c.https_addr),
    };
    let localhost = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let proxy_error = |e: std::io::Error| ServiceError::Bind {
        addr: localhost,
        source: e,
    };
    let to_dashboard = WireProxy::start(localhost, dash_grpc, MAX_WIRE_LEASE)
        .await
        .map_err(proxy_error)?;
    config.ingress.dashboard_addr = to_dashboard.local_addr().into();
    // With replicas, replica 0 is "the ingress" (the load goes to it);
    // the others start first, so the proxy on replica 0's link to replica
    // 1 has its upstream, and replica 0 is given the proxy's address.
    let mut replicas = up::replica_configs(&config, experiment.replicas as usize);
    let first = replicas.remove(0);
    let mut peers = Vec::new();
    for peer in &replicas {
        match ingress::start(peer).await {
            Ok(handle) => peers.push(handle),
            Err(e) => {
                stop_peers(peers).await;
                stop_dashboard(dashboard).await;
                return Err(e);
            }
        }
    }
    let replica_link = match peers.first() {
        Some(peer) => Some(
            WireProxy::start(localhost, peer.local_addr, MAX_WIRE_LEASE)
                .await
                .map_err(proxy_error)?,
        ),
        None => None,
    };
    let mut config = first;
    if let Some(proxy) = &replica_link {
        let name = &mut config.cluster.replicas[1];
        *name = format!("{name}={}", proxy.local_addr());
    }
    let started = if crashed.contains(&Component::Ingress) {
        ChildService::start(ChildKind::Ingress, &config)
            .await
            .map(|c| Running::Child(Arc::new(c)))
    } else {
        ingress::start(&config).await.map(Running::InProcess)
    };
    let ingress = match started {
        Ok(ingress) => ingress,
        Err(e) => {
            stop_peers(peers).await;
            stop_dashboard(dashboard).await;
            return Err(e);
        }
    };
    let (ing_grpc, ing_https) = match &ingress {
        Running::InProcess(i) => (i.local_addr, i.metrics_addr),
        Running::Child(c) => (c.grpc_addr, c.https_addr),
    };
    let to_ingress = WireProxy::start(localhost, ing_grpc, MAX_WIRE_LEASE)
        .await
        .map_err(proxy_error)?;
    let endpoints = Endpoints {
        ingress_admin: ing_grpc,
        ingress_metrics: ing_https,
        dashboard_admin: dash_grpc,
        dashboard_metrics: dash_https,
        txgen_target: to_ingress.local_addr().into(),
    };
    let target = format!(
        "up: ingress {ing_grpc}{} (via proxy {}){}, dashboard {dash_grpc}{} (via proxy {})",
        if ingress.child().is_some() {
            " as a child process"
        } else {
            ""
        },
        to_ingress.local_addr(),
        match &replica_link {
            Some(proxy) => format!(
                " and {} more replicas (ingress-1 via proxy {})",
                peers.len(),
                proxy.local_addr()
            ),
            None => String::new(),
        },
        if dashboard.child().is_some() {
            " as a child process"
        } else {
            ""
        },
        to_dashboard.local_addr()
    );
    let journal = match SystemDriver::new(config, endpoints, target) {
        Ok(driver) => {
            let mut driver = driver
                .with_proxy(experiment::Link::TxgenIngress, to_ingress)
                .with_proxy(experiment::Link::IngressDashboard, to_dashboard);
            if let Some(proxy) = replica_link {
                driver = driver.with_proxy(experiment::Link::ReplicaLink, proxy);
            }
            if let Some(child) = ingress.child() {
                driver = driver.with_child(Component::Ingress, child);
            }
            if let Some(child) = dashboard.child() {
                driver = driver.with_child(Component::Dashboard, child);
            }
            Ok(experiment::run(experiment, file, &driver, seed).await)
        }
        Err(e) => Err(e),
    };
    // Shutdown order: the ingress drains its publisher into the dashboard
    // first, then the dashboard saves its totals.
    match ingress {
        Running::InProcess(i) => {
            i.stop(Duration::from_secs(5)).await;
        }
        Running::Child(c) => c.stop(Duration::from_secs(10)).await,
    }
    stop_peers(peers).await;
    stop_dashboard(dashboard).await;
    journal
}

async fn stop_peers(peers: Vec<ingress::IngressHandle>) {
    for peer in peers {
        peer.stop(Duration::from_secs(5)).await;
    }
}

async fn stop_dashboard(dashboard: Running<dashboard::DashboardHandle>) {
    match dashboard {
        Running::InProcess(d) => d.stop().await,
        Running::Child(c) => c.stop(Duration::from_secs(10)).await,
    }
}

fn default_journal_path(config: &TxmeshConfig, file: &Path, started_ms: u64) -> PathBuf {
    let stem = file
        .file_stem()
        .map_or_else(|| "experiment".into(), |s| s.to_string_lossy().into_owned());
    config
        .state_dir
        .join("chaos")
        .join(format!("{stem}-{started_ms}.json"))
}

fn write_journal(journal: &Journal, path: &Path) -> Result<(), ServiceError> {
    let io = |source| ServiceError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let json = serde_json::to_vec_pretty(journal)
        .map_err(|e| ServiceError::config("chaos journal", e.to_string()))?;
    std::fs::write(path, json).map_err(io)
}
