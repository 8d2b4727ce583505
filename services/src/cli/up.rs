//! `txmesh up`: the whole system in one process on 127.0.0.1 with its own
//! certificates, for a newcomer's first run. Creates (or reuses) the state
//! directory's CA and identities, starts the dashboard, then the ingress,
//! then txgen, prints a summary line every few seconds, and on Ctrl-C (or
//! at the end of `--duration`) stops txgen, lets the publisher deliver what
//! it holds, stops the ingress and then the dashboard.

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
    let ingress = ingress::start(&config).await?;
    let layout = StateLayout::new(&config.state_dir);
    let listeners = write_listeners(&config, &ingress, &dashboard)?;
    say("txmesh is up (all listeners mTLS on 127.0.0.1):".to_string());
    say(format!("  ingress gRPC    {}", ingress.local_addr));
    say(format!(
        "  ingress metrics https://localhost:{}/metrics",
        ingress.metrics_addr.port()
    ));
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
    let mut last_answered = 0u64;
    let report = loop {
        tokio::select! {
            result = &mut txgen_task => break result,
            _ = tokio::signal::ctrl_c() => {
                say("stopping…".to_string());
                trigger.cancel();
                break (&mut txgen_task).await;
            }
            _ = ticker.tick() => {
                let answered = progress.answered.load(Ordering::Relaxed);
                let rate = (answered - last_answered) as f64 / every.as_secs_f64();
                last_answered = answered;
                let c = &ingress.counters;
                let publisher = ingress.publisher();
                say(format!(
                    "{rate:>9.0} tx/s | approved {} flagged {} rejected {} errors {} | breaker {:?} outbox {}",
                    c.approved.load(Ordering::Relaxed),
                    c.flagged.load(Ordering::Relaxed),
                    c.rejected.load(Ordering::Relaxed),
                    c.errors.load(Ordering::Relaxed),
                    publisher.breaker,
                    publisher.outbox_depth,
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
    let publisher_drained = ingress.wait_drained(Duration::from_secs(10)).await;
    let totals = dashboard.snapshot().await?.totals;
    let ingress_verdicts = ingress.counters.verdicts();
    ingress.stop(Duration::from_secs(5)).await;
    dashboard.stop().await;
    Ok(UpReport {
        txgen: txgen_report,
        dashboard_this_run: totals.verdicts.saturating_sub(dashboard_before),
        dashboard: totals,
        ingress_verdicts,
        publisher_drained,
    })
}

/// Records the listeners and this process's id in the state directory, for
/// `txmesh audit`; returns the file (removed when `up` stops).
fn write_listeners(
    config: &TxmeshConfig,
    ingress: &ingress::IngressHandle,
    dashboard: &dashboard::DashboardHandle,
) -> Result<std::path::PathBuf, ServiceError> {
    use crate::cli::audit::{AuditTarget, ListenerFile, ListenerKind};
    let file = ListenerFile {
        pid: std::process::id(),
        listeners: vec![
            AuditTarget {
                name: "ingress".into(),
                addr: ingress.local_addr,
                kind: ListenerKind::IngressGrpc,
            },
            AuditTarget {
                name: "ingress-https".into(),
                addr: ingress.metrics_addr,
                kind: ListenerKind::IngressHttps,
            },
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
        ],
    };
    let path = crate::cli::audit::listener_file(&config.state_dir);
    let json = serde_json::to_vec_pretty(&file)
        .map_err(|e| ServiceError::config("listeners.json", e.to_string()))?;
    std::fs::write(&path, json)
        .map_err(|e| ServiceError::config("listeners.json", e.to_string()))?;
    Ok(path)
}
