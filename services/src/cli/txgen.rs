//! `txmesh txgen`: the load generator against a running ingress, and the
//! load flags it shares with `txmesh up`.

use std::{process::ExitCode, sync::Arc, time::Duration};
use tokio_util::sync::CancellationToken;

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use crate::{config::TxmeshConfig, runtime, txgen};

#[derive(Args)]
pub(super) struct LoadArgs {
    /// Transactions per second, or `max`.
    #[arg(long)]
    rate: Option<String>,
    /// Stop after this long: `30`, `30s`, `2m`, `1h` (a bare number is
    /// seconds; whole seconds only).
    #[arg(long, value_parser = crate::config::parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many transactions.
    #[arg(long)]
    count: Option<u64>,
    /// Distinct accounts.
    #[arg(long)]
    accounts: Option<u64>,
    /// Send each transaction straight to the replica that owns its
    /// account (from the partition map the target serves), instead of
    /// letting the target forward it.
    #[arg(long)]
    partition_aware: bool,
    /// Print the final report as `json` (one object on stdout) or `text`.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub(super) report: ReportFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum ReportFormat {
    Text,
    Json,
}

impl LoadArgs {
    /// The `txgen.*` keys these flags set.
    pub(super) fn overrides(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut keys = Vec::new();
        if let Some(rate) = &self.rate {
            let rate = if rate == "max" {
                "0".to_owned()
            } else {
                rate.parse::<u64>()
                    .with_context(|| format!("--rate {rate}: expected a number or `max`"))?
                    .to_string()
            };
            keys.push(("txgen.rate".into(), rate));
        }
        if let Some(d) = self.duration {
            if d.subsec_nanos() != 0 || d.is_zero() {
                anyhow::bail!(
                    "--duration {d:?}: the run lasts a whole number of seconds (at least 1)"
                );
            }
            keys.push(("txgen.duration_secs".into(), d.as_secs().to_string()));
        }
        if let Some(c) = self.count {
            keys.push(("txgen.count".into(), c.to_string()));
        }
        if let Some(a) = self.accounts {
            keys.push(("txgen.accounts".into(), a.to_string()));
        }
        if self.partition_aware {
            keys.push(("txgen.partition_aware".into(), "true".into()));
        }
        Ok(keys)
    }
}

#[derive(Args)]
pub struct TxgenArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// The ingress address.
    #[arg(long)]
    target: Option<String>,
}

impl TxgenArgs {
    pub(super) fn overrides(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut keys = self.load.overrides()?;
        if let Some(target) = &self.target {
            keys.push(("txgen.target".into(), target.clone()));
        }
        Ok(keys)
    }
}

/// Runs txgen until its duration or count, or Ctrl-C; exit 1 when the run
/// ended early (see the report).
pub(super) fn command(args: &TxgenArgs, config: TxmeshConfig) -> anyhow::Result<ExitCode> {
    let stop = CancellationToken::new();
    let trigger = stop.clone();
    let progress = Arc::new(txgen::TxgenProgress::default());
    let report = runtime::block_on(config.io_threads, async move {
        let ctrl_c = tokio::spawn(tracing::Instrument::instrument(
            async move {
                let _ = tokio::signal::ctrl_c().await;
                trigger.cancel();
            },
            tracing::info_span!("ctrl_c"),
        ));
        let report = txgen::run(&config, stop, progress).await;
        ctrl_c.abort();
        report
    })??;
    if args.load.report == ReportFormat::Json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.summary());
    }
    Ok(super::exit(report.complete()))
}
