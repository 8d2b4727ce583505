//! The command line. [`Cli`] is what clap parses; [`run`] loads the
//! configuration once (file < `TXMESH__` environment < `--set` and the
//! command's own flags) and hands it to the command. Each command lives in
//! its own module, with its arguments and what it prints.

pub mod audit;
pub mod certs;
pub mod chaos;
mod config;
pub mod health;
pub mod journal;
mod serve;
mod txgen;
pub mod up;

use std::{collections::HashMap, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::{
    config::{ConfigFile, ConfigSources, TxmeshConfig},
    telemetry::LogTarget,
};

#[derive(Parser)]
#[command(
    name = "txmesh",
    version,
    about = "Real-time transaction screening over mutual TLS, without a service mesh"
)]
pub struct Cli {
    /// Configuration file (default: ./txmesh.toml when present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Set any configuration key, e.g. --set actors.rules.velocity_max=5.
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    set: Vec<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Start dashboard, ingress and txgen in one process with generated certificates.
    Up(up::UpArgs),
    /// Run the ingress alone.
    Ingress,
    /// Run the dashboard alone.
    Dashboard,
    /// Run the load generator against an ingress.
    Txgen(txgen::TxgenArgs),
    /// Certificate authority and identities.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Configuration.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Probe every listener of a running system: only mTLS from the right identities gets in.
    Audit(audit::AuditArgs),
    /// grpc.health.v1 check over mTLS (for Kubernetes exec probes); exit 0 when SERVING.
    Health(health::HealthArgs),
    /// Chaos experiments.
    #[command(subcommand)]
    Chaos(chaos::ChaosCommand),
    /// The durable journal under the state directory: inspect it, verify its checksums.
    #[command(subcommand)]
    Journal(journal::JournalCommand),
}

impl Command {
    /// The command's name (the trace service is `txmesh-NAME`).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Up(_) => "up",
            Command::Ingress => "ingress",
            Command::Dashboard => "dashboard",
            Command::Txgen(_) => "txgen",
            Command::Certs(_) => "certs",
            Command::Config(_) => "config",
            Command::Audit(_) => "audit",
            Command::Health(_) => "health",
            Command::Chaos(_) => "chaos",
            Command::Journal(_) => "journal",
        }
    }

    /// Where its logs go: the services log to stdout (what a container
    /// runtime collects); commands whose stdout is their result, to stderr.
    pub fn logs_to(&self) -> LogTarget {
        match self {
            Command::Ingress | Command::Dashboard => LogTarget::Stdout,
            _ => LogTarget::Stderr,
        }
    }

    /// The configuration keys its flags set.
    fn overrides(&self) -> anyhow::Result<Vec<(String, String)>> {
        match self {
            Command::Up(args) => args.overrides(),
            Command::Txgen(args) => args.overrides(),
            Command::Certs(command) => Ok(command.overrides()),
            _ => Ok(Vec::new()),
        }
    }
}

/// Runs `cli`'s command with the process environment `env`.
///
/// # Errors
/// When the configuration is bad or the command cannot run; a command that
/// ran and found a failure returns exit code 1 instead.
pub fn run(cli: Cli, env: HashMap<String, String>) -> anyhow::Result<ExitCode> {
    let mut overrides = Vec::new();
    for kv in &cli.set {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--set {kv}: expected KEY=VALUE"))?;
        overrides.push((k.to_owned(), v.to_owned()));
    }
    overrides.extend(cli.command.overrides()?);
    let sources = ConfigSources {
        file: cli.config.map_or_else(
            || ConfigFile::IfPresent(PathBuf::from("txmesh.toml")),
            ConfigFile::Required,
        ),
        env,
        overrides,
    };
    let config = TxmeshConfig::load(&sources)?;
    match cli.command {
        Command::Up(args) => up::command(args, config),
        Command::Ingress => serve::ingress(config),
        Command::Dashboard => serve::dashboard(config),
        Command::Txgen(args) => txgen::command(&args, config),
        Command::Certs(command) => certs::command(command, &config),
        Command::Config(command) => config::command(&command, &config),
        Command::Audit(args) => audit::command(&args, &config),
        Command::Health(args) => health::command(args, config),
        Command::Chaos(command) => chaos::command(command, config),
        Command::Journal(command) => journal::command(&command, &config),
    }
}

/// Exit code 0 when `ok`, else 1.
fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
