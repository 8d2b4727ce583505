//! txmesh: the one binary's library. `main.rs` parses the command line and
//! calls into here; tests call the same entry points.
//!
//! - [`ingress`]: Ingress gRPC over mTLS, shard router, dashboard publisher.
//! - [`dashboard`]: Publish gRPC, aggregator, browser page and WebSocket.
//! - [`txgen`]: the load generator with labelled fraud patterns.
//! - [`up`]: everything in one process with its own certificates.
#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod certs_cmd;
pub mod chaos_cmd;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod grpc;
pub mod health;
pub mod https;
pub mod ingress;
pub mod metrics;
pub mod net;
pub mod runtime;
pub mod shutdown;
pub mod telemetry;
pub mod txgen;
pub mod up;

pub use config::TxmeshConfig;
pub use error::ServiceError;
