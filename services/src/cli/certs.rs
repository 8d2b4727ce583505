//! `txmesh certs ...`: the CA and identities of a state directory, for the
//! people who run txmesh. Thin over `txmesh_certs`; prints what it did.

pub mod secrets;

use std::{net::IpAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Subcommand, ValueEnum};

use txmesh_certs::{
    inspect, rotate_ca, rotate_leaves, CaStep, CertAuthority, CertInfo, IssueOptions, StateLayout,
};

use crate::{config::TxmeshConfig, error::ServiceError};

#[derive(Subcommand)]
pub enum CertsCommand {
    /// Create the CA (if missing) and an SVID per component in DIR/NAME/{tls.crt,tls.key,ca.crt}.
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue (or reissue) one identity from the CA.
    Issue {
        #[arg(long)]
        identity: String,
        /// Lifetime in hours (default 24).
        #[arg(long)]
        ttl_hours: Option<u64>,
        /// Extra DNS names or IP addresses, comma separated.
        #[arg(long, value_delimiter = ',')]
        dns: Vec<String>,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// New keys and certificates for every identity; running services reload them.
    Rotate {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Staged CA rotation: add (bundle trusts old+new), reissue (leaves from the new CA), retire (old CA removed).
    RotateCa {
        /// One step, or all three with --pause between them.
        #[arg(long, value_enum, default_value_t = CaStepArg::All)]
        step: CaStepArg,
        /// Pause between steps with --step all, e.g. `5s` (default: 3 reload intervals).
        #[arg(long, alias = "pause-secs", value_parser = crate::config::parse_duration)]
        pause: Option<Duration>,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Table of every certificate: identity, serial, not-after, days left, key type, issuer.
    Inspect {
        #[arg(long)]
        json: bool,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Write the operator's PKCS#12 file (DIR/operator.p12) for a browser.
    ExportP12 {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Print Kubernetes Secret manifests (tls.crt, tls.key, ca.crt) of every
    /// identity of a Helm release, issued now from the CA in DIR, for the
    /// chart's `certificates.mode: existingSecrets`.
    K8sSecrets {
        /// The release's full name (the Helm release name, or the chart's fullnameOverride).
        #[arg(long, default_value = "txmesh")]
        release: String,
        #[arg(long, default_value = "txmesh")]
        namespace: String,
        #[arg(long, default_value = "cluster.local")]
        cluster_domain: String,
        /// Lifetime in hours (default 24): nothing renews these; run again and apply before they expire.
        #[arg(long)]
        ttl_hours: Option<u64>,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum CaStepArg {
    Add,
    Reissue,
    Retire,
    All,
}

impl CertsCommand {
    /// `--dir` is the state directory.
    pub(super) fn overrides(&self) -> Vec<(String, String)> {
        let dir = match self {
            Self::Init { dir } => Some(dir),
            Self::Issue { dir, .. }
            | Self::Rotate { dir }
            | Self::RotateCa { dir, .. }
            | Self::Inspect { dir, .. }
            | Self::ExportP12 { dir }
            | Self::K8sSecrets { dir, .. } => dir.as_ref(),
        };
        dir.map(|d| ("state_dir".to_owned(), d.display().to_string()))
            .into_iter()
            .collect()
    }
}

/// Runs one `txmesh certs` command and prints what it did.
pub(super) fn command(command: CertsCommand, config: &TxmeshConfig) -> anyhow::Result<ExitCode> {
    let out = match command {
        CertsCommand::Init { .. } => {
            super::up::ensure_certs(config)?;
            format!(
                "certificates in {} (operator.p12 password: {})",
                config.state_dir.display(),
                txmesh_certs::P12_PASSWORD
            )
        }
        CertsCommand::Issue {
            identity,
            ttl_hours,
            dns,
            ..
        } => {
            let ttl = ttl_hours.map(|h| Duration::from_secs(h * 3600));
            issue(config, &identity, ttl, &dns)?
        }
        CertsCommand::Rotate { .. } => rotate(config)?,
        CertsCommand::RotateCa { step, pause, .. } => {
            let steps: &[CaStep] = match step {
                CaStepArg::Add => &[CaStep::Add],
                CaStepArg::Reissue => &[CaStep::Reissue],
                CaStepArg::Retire => &[CaStep::Retire],
                CaStepArg::All => &[CaStep::Add, CaStep::Reissue, CaStep::Retire],
            };
            let pause = pause.unwrap_or(config.tls.reload_interval() * 3);
            let config = config.clone();
            crate::runtime::block_on(1, async move {
                rotate_ca_steps(&config, steps, pause, |line| println!("{line}")).await
            })??;
            String::new()
        }
        CertsCommand::Inspect { json, .. } => inspect_table(config, json)?,
        CertsCommand::K8sSecrets {
            release,
            namespace,
            cluster_domain,
            ttl_hours,
            ..
        } => {
            let names = secrets::ReleaseNames {
                fullname: release,
                namespace,
                cluster_domain,
            };
            let ttl = ttl_hours.map_or(txmesh_certs::DEFAULT_TTL, |h| {
                Duration::from_secs(h.saturating_mul(3600))
            });
            secrets::manifests(config, &names, ttl)?
        }
        CertsCommand::ExportP12 { .. } => {
            let layout = StateLayout::new(&config.state_dir);
            CertAuthority::load(&layout, &config.trust_domain)?.write_operator_p12(&layout)?;
            format!(
                "wrote {} (password {})",
                layout.operator_p12().display(),
                txmesh_certs::P12_PASSWORD
            )
        }
    };
    if !out.is_empty() {
        print!("{out}");
        if !out.ends_with('\n') {
            println!();
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Issues (or reissues) one identity from the state directory's CA.
///
/// # Errors
/// When the CA is missing or issuing fails.
pub fn issue(
    config: &TxmeshConfig,
    name: &str,
    ttl: Option<Duration>,
    dns: &[String],
) -> Result<String, ServiceError> {
    let layout = StateLayout::new(&config.state_dir);
    let ca = CertAuthority::load(&layout, &config.trust_domain)?;
    let mut options = IssueOptions::default();
    if let Some(ttl) = ttl {
        options.ttl = ttl;
    }
    for name in dns {
        match name.parse::<IpAddr>() {
            Ok(ip) => options.ip_addrs.push(ip),
            Err(_) => options.dns_names.push(name.clone()),
        }
    }
    ca.write_identity(&layout, name, &options)?;
    Ok(format!(
        "issued spiffe://{}/{name} in {}",
        config.trust_domain,
        layout.identity_dir(name).display()
    ))
}

/// New keys and certificates for every identity.
///
/// # Errors
/// When the CA is missing or issuing fails.
pub fn rotate(config: &TxmeshConfig) -> Result<String, ServiceError> {
    let layout = StateLayout::new(&config.state_dir);
    let names = rotate_leaves(&layout, &config.trust_domain, &IssueOptions::default())?;
    Ok(format!("rotated {}", names.join(", ")))
}

/// One step of the staged CA rotation, or all three with `pause` between
/// them (long enough for every service to reload: see
/// `tls.reload_interval_ms`). `report` gets a line per step.
///
/// # Errors
/// When a step is out of order or fails.
pub async fn rotate_ca_steps(
    config: &TxmeshConfig,
    steps: &[CaStep],
    pause: Duration,
    mut report: impl FnMut(String),
) -> Result<(), ServiceError> {
    let layout = StateLayout::new(&config.state_dir);
    for (i, step) in steps.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(pause).await;
        }
        let done = rotate_ca(
            &layout,
            &config.trust_domain,
            *step,
            &IssueOptions::default(),
        )?;
        report(format!("{step:?}: {done}"));
    }
    Ok(())
}

/// The certificates of the state directory, as a table or JSON.
///
/// # Errors
/// When a certificate cannot be read.
pub fn inspect_table(config: &TxmeshConfig, json: bool) -> Result<String, ServiceError> {
    let infos = inspect(&StateLayout::new(&config.state_dir))?;
    if json {
        return serde_json::to_string_pretty(&infos)
            .map_err(|e| ServiceError::config("certs inspect", e.to_string()));
    }
    Ok(table(&infos))
}

fn table(infos: &[CertInfo]) -> String {
    let mut out = format!(
        "{:<12} {:<34} {:<22} {:>9} {:<12} {:<40} {}\n",
        "IDENTITY", "SERIAL", "NOT AFTER", "DAYS LEFT", "KEY", "ISSUER", "SPIFFE ID"
    );
    for i in infos {
        let serial: String = i.serial.chars().take(32).collect();
        out += &format!(
            "{:<12} {:<34} {:<22} {:>9.2} {:<12} {:<40} {}\n",
            i.identity,
            serial,
            i.not_after,
            i.days_left,
            i.key_type,
            i.issuer,
            i.spiffe_id.as_deref().unwrap_or("-")
        );
    }
    out
}
