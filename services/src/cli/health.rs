//! `txmesh health`: the `grpc.health.v1` check over mTLS that Kubernetes
//! exec probes run (kubelet probes cannot present a client certificate, and
//! there is no plaintext health port).

use std::{process::ExitCode, time::Duration};

use clap::Args;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};
use txmesh_certs::{CertStore, SpiffeId};

use crate::{config::TxmeshConfig, error::ServiceError, net::HostPort};

#[derive(Args)]
pub struct HealthArgs {
    /// The gRPC listener to ask, HOST:PORT (an IP address or a DNS name).
    #[arg(long)]
    target: HostPort,
    /// The workload serving it (its SPIFFE ID is checked): ingress or dashboard.
    #[arg(long)]
    server: String,
    /// The identity to connect as (default: the server's own, as a pod probing itself).
    #[arg(long)]
    identity: Option<String>,
    /// The gRPC service to ask about (default: the server as a whole).
    #[arg(long, default_value = "")]
    service: String,
    /// How long to wait for the answer: `2s`, `500ms`.
    #[arg(long, value_parser = crate::config::parse_duration, default_value = "2s")]
    timeout: Duration,
}

/// Prints the status; exit 0 only when SERVING.
pub(super) fn command(args: HealthArgs, config: TxmeshConfig) -> anyhow::Result<ExitCode> {
    let identity = args.identity.clone().unwrap_or_else(|| args.server.clone());
    let status = crate::runtime::block_on(1, async move {
        check(
            &config,
            args.target,
            &identity,
            &args.server,
            &args.service,
            args.timeout,
        )
        .await
    })?;
    Ok(match status {
        Ok(s) => {
            println!("{}", s.as_str_name());
            super::exit(s == ServingStatus::Serving)
        }
        Err(e) => {
            println!("UNREACHABLE: {e}");
            ExitCode::FAILURE
        }
    })
}

/// Asks `target` for the status of `service` (`""`: overall), over mTLS as
/// `identity`, expecting the server to be workload `server`.
///
/// # Errors
/// When the certificates cannot be loaded, or the call fails (connection
/// refused, handshake refused, timeout).
pub async fn check(
    config: &TxmeshConfig,
    target: impl Into<HostPort>,
    identity: &str,
    server: &str,
    service: &str,
    timeout: Duration,
) -> Result<ServingStatus, ServiceError> {
    let store = CertStore::open(&config.identity_dir(identity), &config.trust_domain)?;
    let expected = SpiffeId::for_workload(&config.trust_domain, server)?;
    let target: HostPort = target.into();
    let channel = crate::net::mtls_channel(target.clone(), &store, &expected)?;
    let mut client = HealthClient::new(channel);
    let call = client.check(HealthCheckRequest {
        service: service.to_owned(),
    });
    let response = tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| ServiceError::Connect {
            target: target.to_string(),
            reason: format!("no answer within {timeout:?}"),
        })?
        .map_err(ServiceError::Status)?;
    Ok(response.into_inner().status())
}
