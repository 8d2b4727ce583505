//! The integration tests: one binary (linking the whole stack once), one
//! module per area, sharing the fixtures of [`support`]. Every test talks
//! to real servers over real mTLS on 127.0.0.1 with ports chosen by the OS.
//!
//! Tests run in parallel, except that a test measuring latency or loading
//! the whole machine (the chaos experiments) holds it alone: see
//! [`support::machine_alone`].
#![allow(unreachable_pub)]

mod support;

mod admin;
mod audit;
mod browser;
mod chaos;
mod crash;
mod deploy;
mod end_to_end;
mod expiry;
mod health;
mod journal_cli;
mod journal_faults;
mod legacy;
mod limits;
mod metrics;
mod outage;
mod overload;
mod replicas;
mod rotation;
mod screen_input;
mod security;
mod security_metrics;
mod sigterm;
mod supervision;
mod traces;
mod web_origin;
