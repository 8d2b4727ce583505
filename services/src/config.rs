//! The one place configuration is read: compiled defaults < file (`--config`
//! or `txmesh.toml` if present) < environment `TXMESH__SECTION__KEY` <
//! command-line overrides. The result is validated; a bad value fails at
//! start with a message naming its key.

use std::{collections::HashMap, net::SocketAddr, path::PathBuf};

use serde::{Deserialize, Serialize};
use txmesh_actors::{config::Problems, ActorsConfig};
use txmesh_certs::{AuthzPolicy, Service};

use crate::{error::ServiceError, net::HostPort};

mod cluster;

pub use cluster::ClusterConfig;

/// The whole configuration of a txmesh process.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TxmeshConfig {
    /// SPIFFE trust domain every identity belongs to.
    pub trust_domain: String,
    /// State directory: certificates (`DIR/NAME/tls.*`) and the dashboard's
    /// saved totals.
    pub state_dir: PathBuf,
    pub ingress: IngressConfig,
    /// Several ingress replicas sharing the accounts (empty: one ingress).
    pub cluster: ClusterConfig,
    pub dashboard: DashboardConfig,
    pub txgen: TxgenConfig,
    /// Who may call what, by workload name or full SPIFFE ID.
    pub authz: AuthzConfig,
    /// Screening pipeline: shards, windows, rules, publisher.
    pub actors: ActorsConfig,
    /// Certificate reloading.
    pub tls: TlsConfig,
    /// Per-identity connection limit and keepalive, on every listener.
    pub connections: ConnectionsConfig,
    /// On SIGTERM or Ctrl-C, how long a service may take to drain (answer
    /// what it has, flush the publisher) before it exits anyway.
    #[serde(deserialize_with = "txmesh_actors::config::duration::secs")]
    pub shutdown_grace_secs: u64,
    /// Tokio worker threads of each process (connections, TLS, gRPC);
    /// shards, journal writers and the actix system have threads of their
    /// own. One by default: a second worker doubles the wakeups per
    /// request at low load and adds nothing at full load on two cores.
    pub io_threads: usize,
}

/// How each service watches its certificate files.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// How often `tls.crt`, `tls.key` and `ca.crt` are read again; valid new
    /// material is used by new connections at once.
    #[serde(deserialize_with = "txmesh_actors::config::duration::millis")]
    pub reload_interval_ms: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            reload_interval_ms: 1_000,
        }
    }
}

impl TlsConfig {
    /// `reload_interval_ms` as a duration.
    pub fn reload_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.reload_interval_ms)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngressConfig {
    /// gRPC listener (Ingress, health, reflection), mTLS only.
    pub listen: SocketAddr,
    /// HTTPS listener for `/metrics`, mTLS only.
    pub metrics_listen: SocketAddr,
    /// Where the dashboard's gRPC listener is: `IP:PORT` or `NAME:PORT`
    /// (a Kubernetes Service), resolved on every connection.
    pub dashboard_addr: HostPort,
    /// Identity directory under `state_dir` (cert-manager layout).
    pub identity: String,
    /// Request batches in flight per Screen stream.
    pub max_in_flight_batches: usize,
    /// The largest gRPC message the ingress reads, bytes (4 MiB holds a
    /// full batch of `actors.shards.max_batch` transactions with room to
    /// spare). A larger one ends its stream with RESOURCE_EXHAUSTED.
    pub max_message_bytes: usize,
    /// TLS handshakes that take longer are dropped, milliseconds.
    #[serde(deserialize_with = "txmesh_actors::config::duration::millis")]
    pub handshake_timeout_ms: u64,
    /// A Screen stream with no request for this long and nothing in flight
    /// is closed with UNAVAILABLE (the client opens a new one), ms.
    #[serde(deserialize_with = "txmesh_actors::config::duration::millis")]
    pub stream_idle_timeout_ms: u64,
    /// How transactions of the old reconciliation service's contract become
    /// txmesh transactions.
    pub legacy: LegacyConfig,
}

/// `ingress.legacy`: the old contract's transactions carry no account,
/// country or merchant; these say what txmesh screens them as.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LegacyConfig {
    /// Which account a transaction belongs to, from its caller.
    pub account: LegacyAccount,
    /// The country every such transaction is screened with (two upper-case
    /// letters; `ZZ`, ISO 3166's "unknown", by default).
    pub country: String,
    /// The merchant recorded with their alerts.
    pub merchant_id: String,
}

/// What a transaction of the old contract is screened under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LegacyAccount {
    /// One account per client (its SPIFFE ID): history rules see all of a
    /// client's transactions together.
    Caller,
    /// One account per client and currency.
    CallerCurrency,
}

impl Default for LegacyConfig {
    fn default() -> Self {
        Self {
            account: LegacyAccount::Caller,
            country: "ZZ".to_owned(),
            merchant_id: "legacy-reconciliation".to_owned(),
        }
    }
}

/// What every mTLS listener allows one client, and how it finds dead ones.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionsConfig {
    /// Open connections per client identity (SPIFFE ID) on each gRPC
    /// listener; one more is closed right after its handshake and counted
    /// in `txmesh_connections_refused_total{reason="identity_limit"}`.
    pub max_per_identity: usize,
    /// HTTP/2 PING sent on a connection silent this long, ms.
    #[serde(deserialize_with = "txmesh_actors::config::duration::millis")]
    pub keepalive_interval_ms: u64,
    /// A connection whose PING is not answered within this is closed, ms.
    #[serde(deserialize_with = "txmesh_actors::config::duration::millis")]
    pub keepalive_timeout_ms: u64,
    /// A gRPC connection with no stream open for this long is closed, ms.
    #[serde(deserialize_with = "txmesh_actors::config::duration::millis")]
    pub idle_timeout_ms: u64,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        Self {
            max_per_identity: 64,
            keepalive_interval_ms: 30_000,
            keepalive_timeout_ms: 10_000,
            idle_timeout_ms: 300_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardConfig {
    /// gRPC listener (Dashboard.Publish, health, reflection), mTLS only.
    pub grpc_listen: SocketAddr,
    /// HTTPS listener (page, WebSocket, JSON API), mTLS only.
    pub https_listen: SocketAddr,
    pub identity: String,
    /// How often browsers get an update, milliseconds.
    #[serde(deserialize_with = "txmesh_actors::config::duration::millis")]
    pub push_interval_ms: u64,
    /// Flagged and rejected transactions kept for the alert feed.
    pub recent_alerts: usize,
    /// Seconds of per-second history (rates, latency, breaker and gap
    /// markers) kept for the page's charts: bounds its longest range.
    #[serde(deserialize_with = "txmesh_actors::config::duration::secs")]
    pub history_secs: usize,
    /// Messages queued per browser before updates to it are dropped.
    pub session_queue: usize,
    /// Origins, besides the dashboard's own `https://HOST:PORT`, whose
    /// pages may open the WebSocket and call the API (a reverse proxy's
    /// `https://name`). A browser on any other page is refused.
    pub allowed_origins: Vec<String>,
    /// Totals saved here on shutdown and reloaded at start (relative to
    /// `state_dir`); empty disables.
    pub state_file: String,
    #[serde(deserialize_with = "txmesh_actors::config::duration::millis")]
    pub handshake_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TxgenConfig {
    /// The ingress to screen against: `IP:PORT` or `NAME:PORT`.
    pub target: HostPort,
    pub identity: String,
    /// Transactions per second; 0 means as fast as the ingress answers.
    pub rate: u64,
    /// Run time in seconds (0: until `count` or forever).
    #[serde(deserialize_with = "txmesh_actors::config::duration::secs")]
    pub duration_secs: u64,
    /// Stop after this many transactions (0: no limit).
    pub count: u64,
    /// Distinct accounts.
    pub accounts: u64,
    /// Transactions per request batch.
    pub batch_size: usize,
    /// Concurrent Screen streams (accounts are partitioned between them).
    pub streams: usize,
    /// Share of transactions that are injected patterns, 0..1.
    pub inject_ratio: f64,
    /// Batches in flight per stream when running at maximum rate.
    pub max_in_flight: usize,
    /// Random seed; the same seed replays the same traffic.
    pub seed: u64,
    /// How retryable per-transaction errors are retried.
    pub retry: RetryConfig,
    /// Fetch the partition map from `target` and send each account's
    /// transactions straight to the replica that owns it (each stream
    /// with a connection per replica), instead of through `target`; the
    /// map is fetched again when a replica says it went stale.
    pub partition_aware: bool,
}

/// Per-transaction retries (gRPC A6 style): full-jitter exponential backoff
/// above the server's suggested delay, one deadline for all attempts, and a
/// retry budget that bounds the extra load.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Backoff cap of the first retry, milliseconds; each retry multiplies
    /// it by `multiplier`, up to `max_backoff_ms`. The delay is the server's
    /// `retry_after_ms` plus a uniform draw in [0, cap].
    #[serde(deserialize_with = "txmesh_actors::config::duration::millis")]
    pub initial_backoff_ms: u64,
    #[serde(deserialize_with = "txmesh_actors::config::duration::millis")]
    pub max_backoff_ms: u64,
    pub multiplier: f64,
    /// A transaction not answered with a verdict this long after its first
    /// send is given up (counted, never silently dropped).
    #[serde(deserialize_with = "txmesh_actors::config::duration::millis")]
    pub deadline_ms: u64,
    /// Retries earn `budget_ratio` tokens per first send (0.2 = at most 20 %
    /// extra load) on top of `budget_reserve` tokens; a retry spends one.
    pub budget_ratio: f64,
    pub budget_reserve: u32,
    /// Tokens also come at this steady rate, per second (Finagle's
    /// `minRetriesPerSec`), so that retries never starve once first sends
    /// stop (at the end of a run) or slow down.
    pub budget_min_per_sec: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_backoff_ms: 20,
            max_backoff_ms: 1_000,
            multiplier: 2.0,
            deadline_ms: 30_000,
            budget_ratio: 0.2,
            budget_reserve: 100,
            budget_min_per_sec: 1_000.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthzConfig {
    pub screen: Vec<String>,
    pub publish: Vec<String>,
    pub dashboard_ui: Vec<String>,
    pub metrics: Vec<String>,
    /// Who may inject and clear faults (`Admin`), and who may list them.
    pub chaos_inject: Vec<String>,
    pub chaos_list: Vec<String>,
    /// Which replicas may forward work to this one (`Replica.Forward`).
    pub forward: Vec<String>,
    /// Clients of the old reconciliation service
    /// (`simetrik.ReconciliationService`).
    pub reconcile: Vec<String>,
}

impl Default for TxmeshConfig {
    fn default() -> Self {
        Self {
            trust_domain: txmesh_certs::DEFAULT_TRUST_DOMAIN.to_owned(),
            state_dir: PathBuf::from(".txmesh"),
            ingress: IngressConfig::default(),
            cluster: ClusterConfig::default(),
            dashboard: DashboardConfig::default(),
            txgen: TxgenConfig::default(),
            authz: AuthzConfig::default(),
            actors: ActorsConfig::default(),
            tls: TlsConfig::default(),
            connections: ConnectionsConfig::default(),
            shutdown_grace_secs: 10,
            io_threads: 1,
        }
    }
}

impl Default for IngressConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7443)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9443)),
            dashboard_addr: SocketAddr::from(([127, 0, 0, 1], 7444)).into(),
            identity: "ingress".to_owned(),
            max_in_flight_batches: 128,
            max_message_bytes: 4 << 20,
            handshake_timeout_ms: 5_000,
            stream_idle_timeout_ms: 300_000,
            legacy: LegacyConfig::default(),
        }
    }
}

impl Default for DashboardConfig {
    fn default() -> Self {
        Self {
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 7444)),
            https_listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            identity: "dashboard".to_owned(),
            push_interval_ms: 500,
            recent_alerts: 200,
            history_secs: 3600,
            session_queue: 16,
            allowed_origins: Vec::new(),
            state_file: "dashboard-state.json".to_owned(),
            handshake_timeout_ms: 5_000,
        }
    }
}

impl Default for TxgenConfig {
    fn default() -> Self {
        Self {
            target: SocketAddr::from(([127, 0, 0, 1], 7443)).into(),
            identity: "txgen".to_owned(),
            rate: 2_000,
            duration_secs: 0,
            count: 0,
            accounts: 10_000,
            batch_size: 256,
            streams: 2,
            inject_ratio: 0.02,
            max_in_flight: 32,
            seed: 42,
            retry: RetryConfig::default(),
            partition_aware: false,
        }
    }
}

impl Default for AuthzConfig {
    fn default() -> Self {
        let names = |n: &[&str]| n.iter().map(|s| (*s).to_owned()).collect();
        Self {
            screen: names(&["txgen"]),
            publish: names(&["ingress"]),
            dashboard_ui: names(&["operator"]),
            metrics: names(&["prometheus", "operator"]),
            chaos_inject: names(&["chaos"]),
            chaos_list: names(&["chaos", "operator"]),
            forward: names(&["ingress"]),
            reconcile: names(&["legacy-client"]),
        }
    }
}

impl RetryConfig {
    fn check(&self, p: &mut Problems) {
        p.bad_if(
            self.initial_backoff_ms == 0,
            "txgen.retry.initial_backoff_ms",
            "must be at least 1",
        );
        p.bad_if(
            self.max_backoff_ms < self.initial_backoff_ms,
            "txgen.retry.max_backoff_ms",
            "must be at least initial_backoff_ms",
        );
        p.bad_if(
            self.multiplier.is_nan() || self.multiplier < 1.0,
            "txgen.retry.multiplier",
            "must be at least 1.0",
        );
        p.bad_if(
            !(0.0..=10.0).contains(&self.budget_ratio),
            "txgen.retry.budget_ratio",
            "must be between 0 and 10",
        );
        p.bad_if(
            !(0.001..=1e6).contains(&self.budget_min_per_sec),
            "txgen.retry.budget_min_per_sec",
            "must be between 0.001 and 1000000",
        );
    }
}

pub use txmesh_actors::config::duration::parse_duration;

/// Where the configuration comes from, besides the compiled defaults. The
/// caller (`main`) gathers these; the loader reads nothing on its own, so a
/// test's configuration does not depend on the shell it runs in.
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    /// The configuration file.
    pub file: ConfigFile,
    /// The process environment; only `TXMESH__SECTION__KEY` variables are
    /// read (`TXMESH__TXGEN__RATE=500` sets `txgen.rate`).
    pub env: HashMap<String, String>,
    /// `("section.key", value)` pairs from the command line, last wins.
    pub overrides: Vec<(String, String)>,
}

/// Which configuration file to read.
#[derive(Debug, Clone, Default)]
pub enum ConfigFile {
    /// None.
    #[default]
    None,
    /// This file, if it exists (`./txmesh.toml`).
    IfPresent(PathBuf),
    /// This file, which must exist (`--config`).
    Required(PathBuf),
}

const ENV_PREFIX: &str = "TXMESH";

impl TxmeshConfig {
    /// Layers defaults < file < `TXMESH__` environment < overrides, then
    /// validates.
    ///
    /// # Errors
    /// [`ServiceError::Config`] naming the key or file at fault; every bad
    /// value found by validation is named at once.
    pub fn load(sources: &ConfigSources) -> Result<Self, ServiceError> {
        let defaults = config::Config::try_from(&Self::default())
            .map_err(|e| ServiceError::config("defaults", e.to_string()))?;
        let mut builder = config::Config::builder().add_source(defaults);
        match &sources.file {
            ConfigFile::None => {}
            ConfigFile::IfPresent(path) => {
                if path.exists() {
                    builder = builder.add_source(config::File::from(path.as_path()));
                }
            }
            ConfigFile::Required(path) => {
                if !path.exists() {
                    return Err(ServiceError::config(
                        "--config",
                        format!("{} does not exist", path.display()),
                    ));
                }
                builder = builder.add_source(config::File::from(path.as_path()));
            }
        }
        let env: config::Map<String, String> = sources
            .env
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        );
        for (key, value) in &sources.overrides {
            builder = builder
                .set_override(key.as_str(), value.as_str())
                .map_err(|e| ServiceError::config(key, e.to_string()))?;
        }
        let merged = builder
            .build()
            .map_err(|e| ServiceError::config("configuration", e.to_string()))?;
        let config: Self = merged
            .try_deserialize()
            .map_err(|e| ServiceError::config("configuration", e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values the types cannot.
    ///
    /// # Errors
    /// [`ServiceError::Config`] naming every bad key at once.
    pub fn validate(&self) -> Result<(), ServiceError> {
        let mut p = Problems::default();
        p.within("actors.", |p| self.actors.check(p));
        self.cluster.check(&mut p);
        for (service, key, names) in self.authz_lists() {
            if let Err(e) = AuthzPolicy::deny_all().allow(service, &self.trust_domain, names) {
                p.bad_if(true, key, e.to_string());
            }
        }
        let t = &self.txgen;
        p.bad_if(
            !(0.0..=1.0).contains(&t.inject_ratio),
            "txgen.inject_ratio",
            "must be between 0 and 1",
        );
        p.bad_if(
            t.batch_size == 0 || t.batch_size > self.actors.shards.max_batch,
            "txgen.batch_size",
            format!(
                "must be between 1 and actors.shards.max_batch ({})",
                self.actors.shards.max_batch
            ),
        );
        t.retry.check(&mut p);
        p.bad_if(
            self.ingress.max_message_bytes < 1024,
            "ingress.max_message_bytes",
            "must be at least 1024",
        );
        let (ing, dash, c) = (&self.ingress, &self.dashboard, &self.connections);
        p.bad_if(
            !(60..=86_400).contains(&dash.history_secs),
            "dashboard.history_secs",
            "must be between 60 (the shortest chart range) and 86400",
        );
        let country = &ing.legacy.country;
        p.bad_if(
            country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()),
            "ingress.legacy.country",
            "must be two upper-case letters (ISO 3166 alpha-2)",
        );
        p.bad_if(
            !(1..=256).contains(&self.io_threads),
            "io_threads",
            "must be between 1 and 256",
        );
        p.bad_if(
            !(1..=10_000).contains(&dash.recent_alerts),
            "dashboard.recent_alerts",
            "must be between 1 and 10000",
        );
        for (key, value) in [
            ("txgen.accounts", t.accounts),
            ("txgen.streams", t.streams as u64),
            ("txgen.max_in_flight", t.max_in_flight as u64),
            ("tls.reload_interval_ms", self.tls.reload_interval_ms),
            (
                "ingress.max_in_flight_batches",
                ing.max_in_flight_batches as u64,
            ),
            ("ingress.stream_idle_timeout_ms", ing.stream_idle_timeout_ms),
            ("dashboard.push_interval_ms", dash.push_interval_ms),
            ("dashboard.session_queue", dash.session_queue as u64),
            ("connections.max_per_identity", c.max_per_identity as u64),
            ("connections.keepalive_interval_ms", c.keepalive_interval_ms),
            ("connections.keepalive_timeout_ms", c.keepalive_timeout_ms),
            ("connections.idle_timeout_ms", c.idle_timeout_ms),
        ] {
            p.at_least_one(key, value);
        }
        p.into_result().map_err(|e| match e {
            txmesh_actors::ActorError::Config { key, reason } => ServiceError::config(key, reason),
            other => ServiceError::config("configuration", other.to_string()),
        })
    }

    /// The authorization policy built from `authz`.
    ///
    /// # Errors
    /// [`ServiceError::Config`] naming the list with a bad entry.
    pub fn policy(&self) -> Result<AuthzPolicy, ServiceError> {
        let mut policy = AuthzPolicy::deny_all();
        for (service, key, names) in self.authz_lists() {
            policy
                .allow(service, &self.trust_domain, names)
                .map_err(|e| ServiceError::config(key, e.to_string()))?;
        }
        Ok(policy)
    }

    /// Each `authz` list with the service it opens and its key.
    fn authz_lists(&self) -> [(Service, &'static str, &Vec<String>); 8] {
        [
            (Service::Screen, "authz.screen", &self.authz.screen),
            (Service::Publish, "authz.publish", &self.authz.publish),
            (
                Service::DashboardUi,
                "authz.dashboard_ui",
                &self.authz.dashboard_ui,
            ),
            (Service::Metrics, "authz.metrics", &self.authz.metrics),
            (
                Service::ChaosInject,
                "authz.chaos_inject",
                &self.authz.chaos_inject,
            ),
            (
                Service::ChaosList,
                "authz.chaos_list",
                &self.authz.chaos_list,
            ),
            (Service::Forward, "authz.forward", &self.authz.forward),
            (Service::Reconcile, "authz.reconcile", &self.authz.reconcile),
        ]
    }

    /// `state_dir/NAME`: one identity's certificate directory.
    pub fn identity_dir(&self, name: &str) -> PathBuf {
        self.state_dir.join(name)
    }

    /// Moves every default port by `offset` (for running several systems).
    pub fn offset_ports(&mut self, offset: u16) {
        for addr in [
            &mut self.ingress.listen,
            &mut self.ingress.metrics_listen,
            &mut self.dashboard.grpc_listen,
            &mut self.dashboard.https_listen,
        ] {
            addr.set_port(addr.port().saturating_add(offset));
        }
        for addr in [&mut self.ingress.dashboard_addr, &mut self.txgen.target] {
            addr.set_port(addr.port().saturating_add(offset));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(file: &std::path::Path) -> ConfigSources {
        ConfigSources {
            file: ConfigFile::Required(file.to_owned()),
            ..ConfigSources::default()
        }
    }

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("txmesh-config-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("txmesh.toml");
        std::fs::write(&file, text).expect("write config");
        file
    }

    #[test]
    fn layers_file_env_and_overrides() {
        let file = temp_file("layers", "[txgen]\nrate = 500\naccounts = 7\nstreams = 3\n");
        let mut layered = sources(&file);
        layered.env = HashMap::from([
            ("TXMESH__TXGEN__ACCOUNTS".to_owned(), "8".to_owned()),
            ("TXMESH__TXGEN__STREAMS".to_owned(), "5".to_owned()),
            (
                "TXMESH__ACTORS__PUBLISHER__FLUSH_INTERVAL_MS".to_owned(),
                "2s".to_owned(),
            ),
            ("OTHER__TXGEN__RATE".to_owned(), "1".to_owned()),
        ]);
        layered.overrides = vec![("txgen.accounts".into(), "9".into())];
        let config = TxmeshConfig::load(&layered).expect("valid config");
        assert_eq!(config.txgen.rate, 500, "file beats defaults");
        assert_eq!(config.txgen.streams, 5, "environment beats the file");
        assert_eq!(config.txgen.accounts, 9, "overrides beat the environment");
        assert_eq!(
            config.actors.publisher.flush_interval_ms, 2000,
            "a duration with a unit in a *_ms key"
        );
        std::fs::remove_dir_all(file.parent().expect("dir")).ok();
    }

    #[test]
    fn a_missing_config_file_is_named_and_an_absent_default_is_not_an_error() {
        let missing = std::env::temp_dir().join("txmesh-no-such-dir/txmesh.toml");
        let err = TxmeshConfig::load(&sources(&missing))
            .expect_err("missing --config")
            .to_string();
        assert!(err.contains("--config"), "{err}");
        let sources = ConfigSources {
            file: ConfigFile::IfPresent(missing),
            ..ConfigSources::default()
        };
        TxmeshConfig::load(&sources).expect("absent ./txmesh.toml is fine");
    }

    #[test]
    fn every_bad_key_is_named_at_once() {
        let file = temp_file(
            "bad",
            "io_threads = 0\n[txgen]\ninject_ratio = 3.0\naccounts = 0\n[actors.rules.high_amount]\nZZZ = 5\n\
             [dashboard]\nhistory_secs = 10\nrecent_alerts = 0\n",
        );
        let mut with_env = sources(&file);
        with_env.env = HashMap::from([(
            "TXMESH__CONNECTIONS__MAX_PER_IDENTITY".to_owned(),
            "0".to_owned(),
        )]);
        let err = TxmeshConfig::load(&with_env)
            .expect_err("bad values")
            .to_string();
        for key in [
            "txgen.inject_ratio",
            "txgen.accounts",
            "actors.rules.high_amount.ZZZ",
            "connections.max_per_identity",
            "dashboard.history_secs",
            "dashboard.recent_alerts",
            "io_threads",
        ] {
            assert!(err.contains(key), "{key} missing from: {err}");
        }

        std::fs::write(&file, "[txgen]\nrate = \"fast\"\n").expect("write config");
        let err = TxmeshConfig::load(&sources(&file))
            .expect_err("bad type")
            .to_string();
        assert!(err.contains("rate"), "{err}");

        std::fs::write(&file, "shutdown_grace_secs = \"1500ms\"\n").expect("write config");
        let err = TxmeshConfig::load(&sources(&file))
            .expect_err("not whole seconds")
            .to_string();
        assert!(err.contains("shutdown_grace_secs"), "{err}");
        std::fs::remove_dir_all(file.parent().expect("dir")).ok();
    }
}
