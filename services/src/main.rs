//! The `txmesh` binary: parses the command line, loads the configuration,
//! installs tracing, runs the chosen command and turns its outcome into an
//! exit code.
#![forbid(unsafe_code)]

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use txmesh::{config::TxmeshConfig, shutdown, txgen, up};

#[derive(Parser)]
#[command(
    name = "txmesh",
    version,
    about = "Real-time transaction screening over mutual TLS, without a service mesh"
)]
struct Cli {
    /// Configuration file (default: ./txmesh.toml when present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Set any configuration key, e.g. --set actors.rules.velocity_max=5.
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    set: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start dashboard, ingress and txgen in one process with generated certificates.
    Up(UpArgs),
    /// Run the ingress alone.
    Ingress,
    /// Run the dashboard alone.
    Dashboard,
    /// Run the load generator against an ingress.
    Txgen(TxgenArgs),
    /// Certificate authority and identities.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Probe every listener of a running system: only mTLS from the right identities gets in.
    Audit(AuditArgs),
    /// grpc.health.v1 check over mTLS (for Kubernetes exec probes); exit 0 when SERVING.
    Health(HealthArgs),
    /// Chaos experiments.
    #[command(subcommand)]
    Chaos(ChaosCommand),
}

#[derive(Subcommand)]
enum ChaosCommand {
    /// Run an experiment (chaos/experiments/NAME.toml): the steady-state hypothesis is checked
    /// before, during and after its method; writes a JSON journal; exit 0 only if it held.
    Run(ChaosRunArgs),
}

#[derive(Args)]
struct ChaosRunArgs {
    /// The experiment file.
    file: PathBuf,
    /// `up`: start a whole system (with wire proxies) for the run and stop it afterwards.
    /// Default: the configured, running system.
    #[arg(long, value_enum)]
    target: Option<ChaosTarget>,
    /// Where to write the journal (default: STATE_DIR/chaos/NAME-MILLIS.json).
    #[arg(long)]
    journal: Option<PathBuf>,
    /// Seed for the load and the wire jitter (default: the file's, else random; always journaled).
    #[arg(long)]
    seed: Option<u64>,
    /// Print the journal on stdout instead of the summary.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ChaosTarget {
    Up,
}

#[derive(Args)]
struct HealthArgs {
    /// The gRPC listener to ask, HOST:PORT.
    #[arg(long)]
    target: std::net::SocketAddr,
    /// The workload serving it (its SPIFFE ID is checked): ingress or dashboard.
    #[arg(long)]
    server: String,
    /// The identity to connect as (default: the server's own, as a pod probing itself).
    #[arg(long)]
    identity: Option<String>,
    /// The gRPC service to ask about (default: the server as a whole).
    #[arg(long, default_value = "")]
    service: String,
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
}

impl Command {
    /// The command's name, for the trace service name.
    fn name(&self) -> &'static str {
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
        }
    }
}

#[derive(Args)]
struct AuditArgs {
    /// A listener to audit, NAME=HOST:PORT (NAME: ingress, dashboard-grpc, dashboard-https).
    /// Default: the `up` system of the state directory, else the configured addresses.
    #[arg(long = "target", value_name = "NAME=ADDR")]
    targets: Vec<String>,
    /// The CA key, for the forged certificates that need it (default: the state directory's, if present).
    #[arg(long)]
    ca_key: Option<PathBuf>,
    /// The CA certificate that goes with --ca-key (default: STATE_DIR/ca/tls.crt).
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// Do not use any CA key (those checks are SKIPPED).
    #[arg(long)]
    no_ca_key: bool,
    /// Processes whose every listening socket must be audited (default: the `up` process).
    #[arg(long)]
    pid: Vec<u32>,
    /// Fail a server certificate with less than this left.
    #[arg(long, default_value_t = 8.0)]
    renewal_window_hours: f64,
    /// Machine-readable report.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct LoadArgs {
    /// Transactions per second, or `max`.
    #[arg(long)]
    rate: Option<String>,
    /// Stop after this long: `30`, `30s`, `2m`, `1h` (a bare number is
    /// seconds; whole seconds only).
    #[arg(long, value_parser = txmesh::config::parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many transactions.
    #[arg(long)]
    count: Option<u64>,
    /// Distinct accounts.
    #[arg(long)]
    accounts: Option<u64>,
    /// Print the final report as `json` (one object on stdout) or `text`.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    report: ReportFormat,
}

#[derive(Args)]
struct UpArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Move every default port by this much.
    #[arg(long, default_value_t = 0)]
    port_offset: u16,
    /// State directory (certificates, dashboard totals).
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

#[derive(Args)]
struct TxgenArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// The ingress address.
    #[arg(long)]
    target: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ReportFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create the CA (if missing) and an SVID per component in DIR/NAME/{tls.crt,tls.key,ca.crt}.
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue (or reissue) one identity from the CA.
    Issue {
        #[arg(long)]
        identity: String,
        /// Lifetime in hours (default 24).
        #[arg(long)]
        ttl_hours: Option<u64>,
        /// Extra DNS names or IP addresses, comma separated.
        #[arg(long, value_delimiter = ',')]
        dns: Vec<String>,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// New keys and certificates for every identity; running services reload them.
    Rotate {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Staged CA rotation: add (bundle trusts old+new), reissue (leaves from the new CA), retire (old CA removed).
    RotateCa {
        /// One step, or all three with --pause-secs between them.
        #[arg(long, value_enum, default_value_t = CaStepArg::All)]
        step: CaStepArg,
        /// Pause between steps with --step all (default: 3 reload intervals).
        #[arg(long)]
        pause_secs: Option<u64>,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Table of every certificate: identity, serial, not-after, days left, key type, issuer.
    Inspect {
        #[arg(long)]
        json: bool,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Write the operator's PKCS#12 file (DIR/operator.p12) for a browser.
    ExportP12 {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum CaStepArg {
    Add,
    Reissue,
    Retire,
    All,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the merged configuration as TOML-like JSON.
    Print,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    txmesh_certs::install_crypto_provider();
    // The OpenTelemetry environment conventions: an endpoint turns OTLP
    // export on; the sampler argument is the share of traces kept.
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let service =
        env("OTEL_SERVICE_NAME").unwrap_or_else(|| format!("txmesh-{}", cli.command.name()));
    let ratio = env("OTEL_TRACES_SAMPLER_ARG")
        .and_then(|r| r.parse::<f64>().ok())
        .map_or(0.001, |r| r.clamp(0.0, 1.0));
    let telemetry = match txmesh::telemetry::init(
        &service,
        env("OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
        ratio,
        env("RUST_LOG").as_deref(),
        match cli.command {
            Command::Ingress | Command::Dashboard => txmesh::telemetry::LogTarget::Stdout,
            _ => txmesh::telemetry::LogTarget::Stderr,
        },
    ) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("txmesh: {e}");
            return ExitCode::from(2);
        }
    };
    txmesh::telemetry::install_panic_hook();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("txmesh: {e:#}");
            ExitCode::from(2)
        }
    };
    telemetry.flush();
    code
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut overrides = Vec::new();
    for kv in &cli.set {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--set {kv}: expected KEY=VALUE"))?;
        overrides.push((k.to_owned(), v.to_owned()));
    }
    match cli.command {
        Command::Up(args) => {
            load_overrides(&args.load, &mut overrides)?;
            if let Some(dir) = &args.state_dir {
                overrides.push(("state_dir".into(), dir.display().to_string()));
            }
            let mut config = TxmeshConfig::load(cli.config.as_deref(), &overrides)?;
            config.offset_ports(args.port_offset);
            let json = args.load.report == ReportFormat::Json;
            let report_dir = config.state_dir.clone();
            let options = up::UpOptions {
                report_json: json,
                summary_every: Duration::from_secs(5),
            };
            let report = txmesh::runtime::block_on(2, up::run(config, options))??;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.txgen.summary());
                println!(
                    "this run: ingress answered {} verdicts, dashboard applied {}, publisher drained: {}",
                    report.ingress_verdicts, report.dashboard_this_run, report.publisher_drained
                );
                println!(
                    "dashboard totals (kept across runs in {}): {} verdicts",
                    report_dir.display(),
                    report.dashboard.verdicts
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Txgen(args) => {
            load_overrides(&args.load, &mut overrides)?;
            if let Some(target) = &args.target {
                overrides.push(("txgen.target".into(), target.clone()));
            }
            let config = TxmeshConfig::load(cli.config.as_deref(), &overrides)?;
            let (trigger, stop) = shutdown::channel();
            let progress = Arc::new(txgen::TxgenProgress::default());
            let report = txmesh::runtime::block_on(2, async move {
                let ctrl_c = tokio::spawn(async move {
                    let _ = tokio::signal::ctrl_c().await;
                    trigger.fire();
                });
                let report = txgen::run(&config, stop, progress).await;
                ctrl_c.abort();
                report
            })??;
            if args.load.report == ReportFormat::Json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.summary());
            }
            Ok(if report.complete() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Ingress => {
            let config = TxmeshConfig::load(cli.config.as_deref(), &overrides)?;
            let grace = Duration::from_secs(config.shutdown_grace_secs);
            let drained = txmesh::runtime::block_on(2, async move {
                let handle = txmesh::ingress::start(&config).await?;
                shutdown::termination().await;
                tracing::info!("shutting down: draining streams and the publisher");
                let drained = handle.stop(grace).await;
                anyhow::Ok(drained)
            })??;
            if drained {
                tracing::info!("drained");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("txmesh: the publisher did not drain within {grace:?}");
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Dashboard => {
            let config = TxmeshConfig::load(cli.config.as_deref(), &overrides)?;
            txmesh::runtime::block_on(2, async move {
                let handle = txmesh::dashboard::start(&config).await?;
                shutdown::termination().await;
                handle.stop().await;
                anyhow::Ok(())
            })??;
            Ok(ExitCode::SUCCESS)
        }
        Command::Certs(CertsCommand::Init { dir }) => {
            let mut config = TxmeshConfig::load(cli.config.as_deref(), &overrides)?;
            config.state_dir = dir;
            up::ensure_certs(&config)?;
            println!(
                "certificates in {} (operator.p12 password: {})",
                config.state_dir.display(),
                txmesh_certs::P12_PASSWORD
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Health(args) => {
            let config = TxmeshConfig::load(cli.config.as_deref(), &overrides)?;
            let identity = args.identity.clone().unwrap_or_else(|| args.server.clone());
            let status = txmesh::runtime::block_on(1, async move {
                txmesh::health::check(
                    &config,
                    args.target,
                    &identity,
                    &args.server,
                    &args.service,
                    Duration::from_millis(args.timeout_ms),
                )
                .await
            })?;
            match status {
                Ok(s) => {
                    println!("{}", s.as_str_name());
                    Ok(
                        if s == tonic_health::pb::health_check_response::ServingStatus::Serving {
                            ExitCode::SUCCESS
                        } else {
                            ExitCode::FAILURE
                        },
                    )
                }
                Err(e) => {
                    println!("UNREACHABLE: {e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Audit(args) => {
            let config = TxmeshConfig::load(cli.config.as_deref(), &overrides)?;
            audit(args, &config)
        }
        Command::Chaos(ChaosCommand::Run(args)) => {
            let config = TxmeshConfig::load(cli.config.as_deref(), &overrides)?;
            chaos_run(args, config)
        }
        Command::Certs(command) => {
            let mut config = TxmeshConfig::load(cli.config.as_deref(), &overrides)?;
            certs(command, &mut config)
        }
        Command::Config(ConfigCommand::Print) => {
            let config = TxmeshConfig::load(cli.config.as_deref(), &overrides)?;
            println!("{}", serde_json::to_string_pretty(&config)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn chaos_run(args: ChaosRunArgs, config: TxmeshConfig) -> anyhow::Result<ExitCode> {
    use txmesh::chaos_cmd::{self, ChaosRunOptions};
    let options = ChaosRunOptions {
        file: args.file,
        target_up: args.target == Some(ChaosTarget::Up),
        journal: args.journal,
        seed: args.seed,
    };
    let run = txmesh::runtime::block_on(2, async move { chaos_cmd::run(config, &options).await })??;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&run.journal)?);
    } else {
        print!("{}", run.journal.summary());
        println!("journal: {}", run.journal_path.display());
    }
    Ok(
        if run.journal.status == txmesh_chaos::experiment::RunStatus::Completed {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}

fn audit(args: AuditArgs, config: &TxmeshConfig) -> anyhow::Result<ExitCode> {
    use txmesh::audit::{self, AuditOptions, AuditTarget, ListenerFile, ListenerKind};
    let mut options = AuditOptions::for_config(config);
    options.renewal_window = Duration::from_secs_f64(args.renewal_window_hours.max(0.0) * 3600.0);
    if let Some(key) = &args.ca_key {
        let cert = args
            .ca_cert
            .clone()
            .unwrap_or_else(|| config.state_dir.join("ca").join("tls.crt"));
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        options.ca = Some((read(&cert)?, read(key)?));
    }
    if args.no_ca_key {
        options.ca = None;
    }
    let targets: Vec<AuditTarget> = if args.targets.is_empty() {
        let path = audit::listener_file(&config.state_dir);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let file: ListenerFile = serde_json::from_slice(&bytes)
                    .with_context(|| format!("reading {}", path.display()))?;
                if args.pid.is_empty() {
                    options.pids.push(file.pid);
                }
                file.listeners
            }
            Err(_) => audit::targets_from_config(config),
        }
    } else {
        let mut targets = Vec::new();
        for t in &args.targets {
            let (name, addr) = t
                .split_once('=')
                .with_context(|| format!("--target {t}: expected NAME=HOST:PORT"))?;
            targets.push(AuditTarget {
                name: name.to_owned(),
                addr: addr
                    .parse()
                    .with_context(|| format!("--target {t}: not HOST:PORT"))?,
                kind: ListenerKind::from_name(name)?,
            });
        }
        targets
    };
    options.pids.extend(&args.pid);
    let report = txmesh::runtime::block_on(2, async move { audit::run(&targets, &options).await })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn certs(command: CertsCommand, config: &mut TxmeshConfig) -> anyhow::Result<ExitCode> {
    use txmesh::certs_cmd;
    let mut at = |dir: Option<PathBuf>| {
        if let Some(dir) = dir {
            config.state_dir = dir;
        }
    };
    let out = match command {
        CertsCommand::Init { .. } => unreachable!("handled above"),
        CertsCommand::Issue {
            identity,
            ttl_hours,
            dns,
            dir,
        } => {
            at(dir);
            let ttl = ttl_hours.map(|h| Duration::from_secs(h * 3600));
            certs_cmd::issue(config, &identity, ttl, &dns)?
        }
        CertsCommand::Rotate { dir } => {
            at(dir);
            certs_cmd::rotate(config)?
        }
        CertsCommand::RotateCa {
            step,
            pause_secs,
            dir,
        } => {
            at(dir);
            use txmesh_certs::CaStep;
            let steps: &[CaStep] = match step {
                CaStepArg::Add => &[CaStep::Add],
                CaStepArg::Reissue => &[CaStep::Reissue],
                CaStepArg::Retire => &[CaStep::Retire],
                CaStepArg::All => &[CaStep::Add, CaStep::Reissue, CaStep::Retire],
            };
            let pause = pause_secs
                .map(Duration::from_secs)
                .unwrap_or(config.tls.reload_interval() * 3);
            let config = config.clone();
            txmesh::runtime::block_on(1, async move {
                certs_cmd::rotate_ca_steps(&config, steps, pause, |line| println!("{line}")).await
            })??;
            String::new()
        }
        CertsCommand::Inspect { json, dir } => {
            at(dir);
            certs_cmd::inspect_table(config, json)?
        }
        CertsCommand::ExportP12 { dir } => {
            at(dir);
            let layout = txmesh_certs::StateLayout::new(&config.state_dir);
            txmesh_certs::CertAuthority::load(&layout, &config.trust_domain)?
                .write_operator_p12(&layout)?;
            format!(
                "wrote {} (password {})",
                layout.operator_p12().display(),
                txmesh_certs::P12_PASSWORD
            )
        }
    };
    if !out.is_empty() {
        print!("{out}");
        if !out.ends_with('\n') {
            println!();
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn load_overrides(load: &LoadArgs, overrides: &mut Vec<(String, String)>) -> anyhow::Result<()> {
    if let Some(rate) = &load.rate {
        let rate = if rate == "max" {
            "0".to_owned()
        } else {
            rate.parse::<u64>()
                .with_context(|| format!("--rate {rate}: expected a number or `max`"))?
                .to_string()
        };
        overrides.push(("txgen.rate".into(), rate));
    }
    if let Some(d) = load.duration {
        if d.subsec_nanos() != 0 || d.is_zero() {
            anyhow::bail!("--duration {d:?}: the run lasts a whole number of seconds (at least 1)");
        }
        overrides.push(("txgen.duration_secs".into(), d.as_secs().to_string()));
    }
    if let Some(c) = load.count {
        overrides.push(("txgen.count".into(), c.to_string()));
    }
    if let Some(a) = load.accounts {
        overrides.push(("txgen.accounts".into(), a.to_string()));
    }
    Ok(())
}
