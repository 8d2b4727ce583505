//! txmesh: the one binary's library. `main.rs` parses the command line and
//! calls [`cli::run`]; tests call the same entry points.
//!
//! Where a change goes:
//! - a rule, the account window, sharding, the publisher: the
//!   `txmesh-actors` crate; certificates and SPIFFE checks: `txmesh-certs`;
//!   experiments and faults: `txmesh-chaos`.
//! - a service's behaviour: its module here ([`ingress`], [`dashboard`],
//!   [`txgen`]); a command's flags or output: [`cli`].
//! - what every listener shares (mTLS, authz, health, metrics): [`net`],
//!   [`https`], [`health`], [`metrics`], [`admin`].
#![forbid(unsafe_code)]

// The services.
pub mod dashboard; // Publish gRPC, aggregator, browser page and WebSocket.
pub mod ingress; // Screen gRPC over mTLS, shard router, dashboard publisher.
pub mod txgen; // The load generator with labelled fraud patterns.

// What every service shares.
pub mod admin; // The Admin gRPC service: chaos fault injection, deny by default.
pub mod config; // The one configuration: layers, validation, authz policy.
pub mod error; // ServiceError, the error type of this crate.
pub mod grpc; // Reflection over txmesh's descriptors, wire enum names.
pub mod health; // grpc.health.v1 readiness of each gRPC server.
pub mod https; // actix-web over mTLS: peer identity, authz, /metrics.
pub mod metrics; // Prometheus families every service registers.
pub mod net; // mTLS listeners and channels, certificate expiry metrics.
pub mod runtime; // The actix system on a multi-threaded tokio runtime.
pub mod server; // One mTLS server assembly: certs, policy, health, both listeners.
pub mod shutdown; // The process's shutdown signal and SIGTERM/Ctrl-C.
pub mod telemetry; // Logs, OTLP traces, trace context across hops, panic hook.

// The command line.
pub mod cli; // Every `txmesh` command: its flags, what it runs and prints.

pub use config::TxmeshConfig;
pub use error::ServiceError;
