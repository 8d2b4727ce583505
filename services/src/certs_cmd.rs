//! `txmesh certs ...`: the CA and identities of a state directory, for the
//! people who run txmesh. Thin over `txmesh_certs`; prints what it did.

use std::{net::IpAddr, time::Duration};

use txmesh_certs::{
    inspect, rotate_ca, rotate_leaves, CaStep, CertAuthority, CertInfo, IssueOptions, StateLayout,
};

use crate::{config::TxmeshConfig, error::ServiceError};

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
