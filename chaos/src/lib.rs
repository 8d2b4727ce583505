//! txmesh-chaos: the fault catalogue and the injection registry.
//!
//! Components ask the [`Registry`] at named injection points ("should this
//! evaluation panic?", "how long should it stall?"); an SRE's experiment
//! (through the `Admin` gRPC service) puts faults in. Learned from what
//! users of chaos tools complain about:
//!
//! - every fault has a **lease**: it expires by itself after its duration,
//!   even if the controller that injected it dies;
//! - the **blast radius** is bounded at injection time: a fault may hit at
//!   most a configured share of the accounts (a hash range);
//! - injection is **probabilistic** (a rate), like fault-injection
//!   libraries, so a steady-state hypothesis can still hold.
//!
//! The hot path costs one atomic load while no fault is active.
//!
//! Besides the registry: [`proxy`], a TCP proxy with leased wire faults
//! that sits between two components, and [`experiment`], the experiment
//! file format and runner behind `txmesh chaos run`.
#![forbid(unsafe_code)]

mod error;
pub mod experiment;
mod fault;
pub mod proxy;
mod registry;

pub use error::{ChaosError, DriverError};
pub use fault::{status_code, status_name, FaultKind, FaultSpec, InjectionPoint};
pub use registry::{shard_hash, ActiveFault, FaultId, Registry, RegistryLimits};
