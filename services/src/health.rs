//! Readiness over `grpc.health.v1` (asked by `txmesh health`, the mTLS
//! probe Kubernetes exec probes run: [`crate::cli::health`]).
//!
//! A service reports SERVING (overall, `""`, and under its own gRPC
//! service name) only once it is ready, and NOT_SERVING from the moment
//! its shutdown starts.

use tonic_health::server::HealthReporter;

/// The readiness of one gRPC server: the overall status and its service.
#[derive(Clone)]
pub struct Readiness {
    reporter: HealthReporter,
    /// The server's gRPC services, reported together.
    services: Vec<&'static str>,
}

impl Readiness {
    /// Starts NOT_SERVING (the reporter itself starts the overall status
    /// as SERVING, which would be a lie before the service is ready).
    pub async fn new(reporter: HealthReporter, service: &'static str) -> Self {
        let this = Self {
            reporter,
            services: vec![service],
        };
        this.set(tonic_health::ServingStatus::NotServing).await;
        this
    }

    /// Reports `service` too (another gRPC service of the same server).
    pub async fn also(&mut self, service: &'static str) {
        self.services.push(service);
        self.reporter
            .set_service_status(service, tonic_health::ServingStatus::NotServing)
            .await;
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
        for service in &self.services {
            self.reporter.set_service_status(*service, status).await;
        }
    }
}
