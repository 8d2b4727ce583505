//! The `txmesh` binary: parses the command line, installs tracing, runs the
//! chosen command ([`txmesh::cli`]) and turns its outcome into an exit code:
//! 0 done, 1 the command ran and reports a failure, 2 it could not run.
#![forbid(unsafe_code)]

use std::{collections::HashMap, process::ExitCode};

use clap::Parser;
use txmesh::cli::Cli;

/// jemalloc rather than glibc's malloc: faster for the ingress's
/// allocate-here, free-there traffic, and its background threads give
/// freed pages back (glibc kept what a passivation burst freed).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The environment is read here, once, and handed down: the
    // configuration loader and telemetry read nothing on their own.
    let env: HashMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    txmesh_certs::install_crypto_provider();
    let telemetry =
        match txmesh::telemetry::init_from_env(&env, cli.command.name(), cli.command.logs_to()) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("txmesh: {e}");
                return ExitCode::from(2);
            }
        };
    txmesh::telemetry::install_panic_hook();
    let code = match txmesh::cli::run(cli, env) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("txmesh: {e:#}");
            ExitCode::from(2)
        }
    };
    telemetry.flush();
    code
}
