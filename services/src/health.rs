//! Readiness over `grpc.health.v1` and `txmesh health`, the mTLS probe
//! Kubernetes exec probes run (kubelet probes cannot present a client
//! certificate, and there is no plaintext health port).
//!
//! A service reports SERVING (overall, `""`, and under its own gRPC
//! service name) only once it is ready, and NOT_SERVING from the moment
//! its shutdown starts.

use std::{net::SocketAddr, time::Duration};

use tonic_health::{
    pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest},
    server::HealthReporter,
};
use txmesh_certs::{CertStore, SpiffeId};

use crate::{config::TxmeshConfig, error::ServiceError};

/// The readiness of one gRPC server: the overall status and its service.
#[derive(Clone)]
pub struct Readiness {
    reporter: HealthReporter,
    service: &'static str,
}

impl Readiness {
    /// Starts NOT_SERVING (the reporter itself starts the overall status
    /// as SERVING, which would be a lie before the service is ready).
    pub async fn new(reporter: HealthReporter, service: &'static str) -> Self {
        let this = Self { reporter, service };
        this.set(tonic_health::ServingStatus::NotServing).await;
        this
    }

    /// Ready: certificates loaded, workers started, listener bound.
    pub async fn serving(&self) {
        self.set(tonic_health::ServingStatus::Serving).await;
    }

    /// Shutting down.
    pub async fn not_serving(&self) {
        self.set(tonic_health::ServingStatus::NotServing).await;
    }

    async fn set(&self, status: tonic_health::ServingStatus) {
        self.reporter.set_service_status("", status).await;
        self.reporter.set_service_status(self.service, status).await;
    }
}

/// Asks `target` for the status of `service` (`""`: overall), over mTLS as
/// `identity`, expecting the server to be workload `server`.
///
/// # Errors
/// When the certificates cannot be loaded, or the call fails (connection
/// refused, handshake refused, timeout).
pub async fn check(
    config: &TxmeshConfig,
    target: SocketAddr,
    identity: &str,
    server: &str,
    service: &str,
    timeout: Duration,
) -> Result<ServingStatus, ServiceError> {
    let store = CertStore::open(&config.identity_dir(identity), &config.trust_domain)?;
    let expected = SpiffeId::for_workload(&config.trust_domain, server)?;
    let channel = crate::net::mtls_channel(target, &store, &expected)?;
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
