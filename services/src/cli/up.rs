//! `txmesh up`: the whole system in one process on 127.0.0.1 with its own
//! certificates, for a newcomer's first run. Creates (or reuses) the state
//! directory's CA and identities, starts the dashboard, then the ingress
//! (or `--replicas N` ingress replicas, each with its own listeners and
//! journal, txgen sending to the first), then txgen, prints a summary line
//! every few seconds, and on Ctrl-C (or at the end of `--duration`) stops
//! txgen, lets the publishers deliver what they hold, stops the ingresses
//! and then the dashboard.

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};
use tokio_util::sync::CancellationToken;

use clap::Args;

use serde::Serialize;
use txmesh_certs::{CertAuthority, IssueOptions, StateLayout, COMPONENT_IDENTITIES, P12_PASSWORD};

use crate::{
    config::TxmeshConfig,
    dashboard::{self, Totals},
    error::ServiceError,
    ingress,
    txgen::{self, TxgenProgress, TxgenReport},
};

#[derive(Args)]
pub struct UpArgs {
    #[command(flatten)]
    load: super::txgen::LoadArgs,
    /// Move every default port by this much.
    #[arg(long, default_value_t = 0)]
    port_offset: u16,
    /// State directory (certificates, dashboard totals).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Ingress replicas sharing the accounts (`ingress-0`..), each on its
    /// own ports (the first on the ingress ports, the next 10 higher...).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=32))]
    replicas: u16,
}

impl UpArgs {
    pub(super) fn overrides(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut keys = self.load.overrides()?;
        if let Some(dir) = &self.state_dir {
            keys.push(("state_dir".into(), dir.display().to_string()));
        }
        Ok(keys)
    }
}

/// `txmesh up`: runs the system and prints its report.
pub(super) fn command(args: UpArgs, mut config: TxmeshConfig) -> anyhow::Result<ExitCode> {
    config.offset_ports(args.port_offset);
    let json = args.load.report == super::txgen::ReportFormat::Json;
    let report_dir = config.state_dir.clone();
    let options = UpOptions {
        report_json: json,
        summary_every: Duration::from_secs(5),
        replicas: usize::from(args.replicas),
    };
    let report = crate::runtime::block_on(2, run(config, options))??;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.txgen.summary());
        println!(
            "this run: ingress answered {} verdicts, dashboard applied {}, publisher drained: {}",
            report.ingress_verdicts, report.dashboard_this_run, report.publisher_drained
        );
        println!(
            "dashboard totals (kept across runs in {}): {} verdicts",
            report_dir.display(),
            report.dashboard.verdicts
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// How `up` runs.
#[derive(Debug, Clone, Default)]
pub struct UpOptions {
    /// Print the final report as one JSON object on stdout.
    pub report_json: bool,
    /// Seconds between summary lines.
    pub summary_every: Duration,
    /// Ingress replicas (1: a single ingress, no cluster).
    pub replicas: usize,
}

/// The `up --report json` object: txgen's report plus the dashboard's own
/// totals and the ingress's publisher state.
#[derive(Debug, Serialize)]
pub struct UpReport {
    #[serde(flatten)]
    pub txgen: TxgenReport,
    /// The dashboard's totals, kept across runs in the state directory.
    pub dashboard: Totals,
    /// Verdicts the dashboard applied during this run (compare with
    /// `ingress_verdicts`).
    pub dashboard_this_run: u64,
    /// Verdicts the ingress (every replica) answered this run.
    pub ingress_verdicts: u64,
    pub publisher_drained: bool,
}

/// Creates or reuses the certificates of every component under
/// `config.state_dir`.
///
/// # Errors
/// When the directory or a certificate cannot be written or read.
pub fn ensure_certs(config: &TxmeshConfig) -> Result<(), ServiceError> {
    let layout = StateLayout::new(&config.state_dir);
    CertAuthority::ensure(
        &layout,
        &config.trust_domain,
        COMPONENT_IDENTITIES,
        &IssueOptions::default(),
    )?;
    Ok(())
}

/// Runs the whole system until Ctrl-C or the end of `txgen.duration_secs`.
///
/// # Errors
/// When a component fails to start.
pub async fn run(config: TxmeshConfig, options: UpOptions) -> Result<UpReport, ServiceError> {
    ensure_certs(&config)?;
    let say = |line: String| {
        if options.report_json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    let dashboard = dashboard::start(&config).await?;
    // The dashboard's totals persist across runs in the state directory:
    // this run's share is the increase from here.
    let dashboard_before = dashboard.snapshot().await?.totals.verdicts;
    let clustered = options.replicas > 1;
    let members = config.state_dir.join(MEMBERS_FILE);
    if clustered {
        let names: Vec<String> = (0..options.replicas)
            .map(|i| ingress_name(i, options.replicas))
            .collect();
        write_members(&members, &names)?;
    }
    let mut ingresses = Vec::with_capacity(options.replicas);
    for (i, replica) in replica_configs(&config, options.replicas)
        .into_iter()
        .enumerate()
    {
        let replica = with_members_file(replica, clustered);
        ingresses.push((
            ingress_name(i, options.replicas),
            ingress::start(&replica).await?,
        ));
    }
    // A replica of an earlier run that still holds history (the run
    // stopped while it was in the set) starts too, hands it back, and
    // leaves: nothing it screened is stranded on its journal.
    if clustered {
        let names: Vec<String> = ingresses.iter().map(|(n, _)| n.clone()).collect();
        for i in options.replicas..MAX_UP_REPLICAS {
            let name = format!("ingress-{i}");
            if !ingress::holds_history(&config.state_dir, &name) {
                continue;
            }
            let mut all = names.clone();
            all.push(name.clone());
            let replica = with_members_file(replica_config(&config, i, all), true);
            ingresses.push((name, ingress::start(&replica).await?));
        }
    }
    let mut config = config;
    config.txgen.target = ingresses[0].1.local_addr.into();
    let layout = StateLayout::new(&config.state_dir);
    let mut listeners = write_listeners(&config, &ingresses, &dashboard)?;
    say("txmesh is up (all listeners mTLS on 127.0.0.1):".to_string());
    for (name, ingress) in &ingresses {
        say(format!("  {name:<15} gRPC {}", ingress.local_addr));
        say(format!(
            "  {:<15} https://localhost:{}/metrics",
            "",
            ingress.metrics_addr.port()
        ));
    }
    if clustered {
        say(format!(
            "  txgen sends to ingress-0{}",
            if config.txgen.partition_aware {
                ", partition-aware: each account straight to its owner"
            } else {
                ", which forwards to each account's owner"
            }
        ));
        say(format!(
            "  the replica set is {}: add ingress-N or remove one to scale (partitions move with a handoff)",
            members.display()
        ));
    }
    say(format!("  dashboard gRPC  {}", dashboard.grpc_addr));
    say(format!(
        "  dashboard       https://localhost:{}/",
        dashboard.https_addr.port()
    ));
    say(format!(
        "  browser access: import {} (password \"{P12_PASSWORD}\") as your certificate,\n  \
         and trust {} as an authority (Chromium: Settings > Privacy and security > Security > Manage certificates)",
        layout.operator_p12().display(),
        layout.ca_dir().join("tls.crt").display()
    ));
    say("  `txmesh audit` (run here) probes every listener.".to_string());
    say("  Ctrl-C stops everything.".to_string());

    let stop = CancellationToken::new();
    let trigger = stop.clone();
    let progress = Arc::new(TxgenProgress::default());
    let mut txgen_task = {
        let config = config.clone();
        let progress = progress.clone();
        let task = async move { txgen::run(&config, stop, progress).await };
        tokio::spawn(tracing::Instrument::instrument(
            task,
            tracing::info_span!("txgen"),
        ))
    };
    let every = if options.summary_every.is_zero() {
        Duration::from_secs(5)
    } else {
        options.summary_every
    };
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    let mut membership = tokio::time::interval(Duration::from_millis(500));
    let mut scaling = Scaling::new();
    let mut last_answered = 0u64;
    let report = loop {
        tokio::select! {
            result = &mut txgen_task => break result,
            _ = tokio::signal::ctrl_c() => {
                say("stopping…".to_string());
                trigger.cancel();
                break (&mut txgen_task).await;
            }
            _ = membership.tick(), if clustered => {
                if scaling.follow(&config, &members, &mut ingresses, &say).await? {
                    listeners = write_listeners(&config, &ingresses, &dashboard)?;
                }
            }
            _ = ticker.tick() => {
                let answered = progress.answered.load(Ordering::Relaxed);
                let rate = (answered - last_answered) as f64 / every.as_secs_f64();
                last_answered = answered;
                let sum = |f: fn(&ingress::IngressCounters) -> &std::sync::atomic::AtomicU64| {
                    ingresses.iter().map(|(_, i)| f(&i.counters).load(Ordering::Relaxed)).sum::<u64>()
                };
                let publisher = ingresses[0].1.publisher();
                let outbox: u64 = ingresses.iter().map(|(_, i)| i.publisher().outbox_depth).sum();
                say(format!(
                    "{rate:>9.0} tx/s | approved {} flagged {} rejected {} errors {} | breaker {:?} outbox {}",
                    sum(|c| &c.approved),
                    sum(|c| &c.flagged),
                    sum(|c| &c.rejected),
                    sum(|c| &c.errors),
                    publisher.breaker,
                    outbox,
                ));
            }
        }
    };
    // The listeners are about to close: `txmesh audit` must not find them.
    let _ = std::fs::remove_file(&listeners);
    let txgen_report = match report {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => return Err(e),
        Err(e) => {
            return Err(ServiceError::config(
                "txgen",
                format!("txgen task failed: {e}"),
            ))
        }
    };
    let mut publisher_drained = scaling.drained;
    for (_, ingress) in &ingresses {
        publisher_drained &= ingress.wait_drained(Duration::from_secs(10)).await;
    }
    let totals = dashboard.snapshot().await?.totals;
    // Verdicts answered to callers (a forwarded one is counted by the
    // replica that answered its caller, not again by its owner), by the
    // replicas running and those that left.
    let ingress_verdicts = scaling.verdicts
        + ingresses
            .iter()
            .map(|(_, i)| i.counters.verdicts())
            .sum::<u64>();
    for (_, ingress) in ingresses {
        ingress.stop(Duration::from_secs(5)).await;
    }
    dashboard.stop().await;
    Ok(UpReport {
        txgen: txgen_report,
        dashboard_this_run: totals.verdicts.saturating_sub(dashboard_before),
        dashboard: totals,
        ingress_verdicts,
        publisher_drained,
    })
}

/// The most replicas `up` runs (as `--replicas` allows).
const MAX_UP_REPLICAS: usize = 32;

/// The replica set of `up --replicas N`, relative to the state directory.
const MEMBERS_FILE: &str = "cluster/members";

/// `config` reading the replica set from the members file (when clustered).
fn with_members_file(mut config: TxmeshConfig, clustered: bool) -> TxmeshConfig {
    if clustered {
        config.cluster.members_file = MEMBERS_FILE.to_owned();
    }
    config
}

/// Writes the members file (to a temporary name, then renamed: a replica
/// never reads half of it).
fn write_members(file: &std::path::Path, names: &[String]) -> Result<(), ServiceError> {
    let io = |e: std::io::Error| {
        ServiceError::config("cluster.members_file", format!("{}: {e}", file.display()))
    };
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = file.with_extension("tmp");
    let text = format!(
        "# The replica set of `txmesh up`: add ingress-N or remove one; partitions move\n\
         # with a handoff. A replica that leaves stops once it holds nothing.\n{}\n",
        names.join("\n")
    );
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, file).map_err(io)
}

/// Replicas joining and leaving as the members file says, the way a
/// StatefulSet controller would start and stop pods.
struct Scaling {
    /// The set last read (to act only on changes).
    seen: Vec<String>,
    /// Verdicts answered by replicas that left.
    verdicts: u64,
    /// Whether every replica that left had drained its publisher.
    drained: bool,
}

impl Scaling {
    fn new() -> Self {
        Self {
            seen: Vec::new(),
            verdicts: 0,
            drained: true,
        }
    }

    /// Starts the replicas the members file adds, and stops those it
    /// removed once they hold nothing (ingress-0, txgen's target, stays).
    /// Returns whether the running set changed.
    async fn follow(
        &mut self,
        config: &TxmeshConfig,
        members: &std::path::Path,
        ingresses: &mut Vec<(String, ingress::IngressHandle)>,
        say: &impl Fn(String),
    ) -> Result<bool, ServiceError> {
        let Ok(set) = crate::ingress::read_members(members) else {
            // The replicas report a bad file themselves, and keep their set.
            return Ok(false);
        };
        let names: Vec<String> = set.into_iter().map(|r| r.name).collect();
        if names != self.seen {
            say(format!("replica set: {}", names.join(", ")));
            self.seen = names.clone();
        }
        let mut changed = false;
        for name in &names {
            if ingresses.iter().any(|(n, _)| n == name) {
                continue;
            }
            let Some(i) = name
                .strip_prefix("ingress-")
                .and_then(|i| i.parse::<usize>().ok())
            else {
                say(format!("{name}: up starts replicas named ingress-N only"));
                continue;
            };
            // Every name it may be routed by: those running and those named.
            let mut all: Vec<String> = ingresses.iter().map(|(n, _)| n.clone()).collect();
            for n in &names {
                if !all.contains(n) {
                    all.push(n.clone());
                }
            }
            let replica = with_members_file(replica_config(config, i, all), true);
            let handle = ingress::start(&replica).await?;
            say(format!("{name} joined: gRPC {}", handle.local_addr));
            ingresses.push((name.clone(), handle));
            changed = true;
        }
        let mut i = 1;
        while i < ingresses.len() {
            let (name, handle) = &ingresses[i];
            let idle = handle
                .cluster_status()
                .is_some_and(|s| s.owned.is_empty() && s.outgoing.is_empty());
            if names.contains(name) || !idle {
                i += 1;
                continue;
            }
            let (name, handle) = ingresses.remove(i);
            self.drained &= handle.wait_drained(Duration::from_secs(10)).await;
            self.verdicts += handle.counters.verdicts();
            handle.stop(Duration::from_secs(5)).await;
            say(format!("{name} left: its partitions were handed over"));
            changed = true;
        }
        Ok(changed)
    }
}

/// Ingress `i` of `n`: `ingress` alone, else its replica name `ingress-i`.
fn ingress_name(i: usize, n: usize) -> String {
    if n > 1 {
        format!("ingress-{i}")
    } else {
        "ingress".to_owned()
    }
}

/// The config of each of `replicas` ingresses: `config` itself for one;
/// for several, replica `i` is `ingress-i` of the set, on the ingress ports
/// plus `10 * i`, publishing its address in the state directory.
pub fn replica_configs(config: &TxmeshConfig, replicas: usize) -> Vec<TxmeshConfig> {
    if replicas <= 1 {
        return vec![config.clone()];
    }
    let names: Vec<String> = (0..replicas).map(|i| ingress_name(i, replicas)).collect();
    (0..replicas)
        .map(|i| replica_config(config, i, names.clone()))
        .collect()
}

/// Replica `ingress-i` of the set `names`, on the ingress ports plus
/// `10 * i`, publishing its address in the state directory.
fn replica_config(config: &TxmeshConfig, i: usize, names: Vec<String>) -> TxmeshConfig {
    let mut c = config.clone();
    c.cluster.name = format!("ingress-{i}");
    c.cluster.replicas = names;
    c.cluster.address_dir = "cluster".to_owned();
    let step = u16::try_from(10 * i).unwrap_or(u16::MAX);
    for addr in [&mut c.ingress.listen, &mut c.ingress.metrics_listen] {
        // Port 0 stays 0: the OS chooses.
        if addr.port() != 0 {
            addr.set_port(addr.port().saturating_add(step));
        }
    }
    c
}

/// Records the listeners and this process's id in the state directory, for
/// `txmesh audit`; returns the file (removed when `up` stops).
fn write_listeners(
    config: &TxmeshConfig,
    ingresses: &[(String, ingress::IngressHandle)],
    dashboard: &dashboard::DashboardHandle,
) -> Result<std::path::PathBuf, ServiceError> {
    use crate::cli::audit::{AuditTarget, ListenerFile, ListenerKind};
    let mut listeners = Vec::new();
    let clustered = ingresses
        .first()
        .is_some_and(|(_, i)| i.cluster_status().is_some());
    for (name, ingress) in ingresses {
        listeners.push(AuditTarget {
            name: name.clone(),
            addr: ingress.local_addr,
            kind: ListenerKind::IngressGrpc,
        });
        if clustered {
            listeners.push(AuditTarget {
                name: format!("{name}-forward"),
                addr: ingress.local_addr,
                kind: ListenerKind::ReplicaGrpc,
            });
        }
        listeners.push(AuditTarget {
            name: format!("{name}-https"),
            addr: ingress.metrics_addr,
            kind: ListenerKind::IngressHttps,
        });
    }
    let file = ListenerFile {
        pid: std::process::id(),
        listeners: listeners
            .into_iter()
            .chain([
                AuditTarget {
                    name: "dashboard-grpc".into(),
                    addr: dashboard.grpc_addr,
                    kind: ListenerKind::DashboardGrpc,
                },
                AuditTarget {
                    name: "dashboard-https".into(),
                    addr: dashboard.https_addr,
                    kind: ListenerKind::DashboardHttps,
                },
            ])
            .collect(),
    };
    let path = crate::cli::audit::listener_file(&config.state_dir);
    let json = serde_json::to_vec_pretty(&file)
        .map_err(|e| ServiceError::config("listeners.json", e.to_string()))?;
    std::fs::write(&path, json)
        .map_err(|e| ServiceError::config("listeners.json", e.to_string()))?;
    Ok(path)
}
