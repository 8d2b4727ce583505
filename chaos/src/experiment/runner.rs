//! The runner: baseline, hypothesis before, method with the hypothesis
//! probed continuously beside it (abort on breach when asked), rollbacks,
//! hypothesis after (each probe polled until it holds or its settle time
//! runs out), then what the system did meanwhile. Everything lands in the
//! journal; nothing here touches the network.

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use super::{
    metrics::quantile, Action, ActionRecord, Check, Component, Experiment, Journal, Link,
    LoadField, MetricsText, Phase, Probe, ProbeRecord, RotationScope, RunStatus, Selector,
};
use crate::{proxy::WireFault, DriverError, FaultSpec};

/// What the runner needs from the system under test.
// Used with generics in one process: the futures' Send bounds never matter.
#[allow(async_fn_in_trait)]
pub trait Driver {
    /// What the run is against, for the journal.
    fn target(&self) -> String;
    /// The component's `/metrics`.
    async fn scrape(&self, target: Component) -> Result<MetricsText, DriverError>;
    /// Injects over the component's Admin service; returns the fault id.
    async fn inject(&self, target: Component, spec: &FaultSpec) -> Result<u64, DriverError>;
    /// Puts a fault on a link's wire proxy; returns the fault id.
    async fn wire(&self, link: Link, fault: WireFault, lease: Duration)
        -> Result<u64, DriverError>;
    /// Clears faults on a component (every component when `None`) and on
    /// every wire proxy; returns how many were still active.
    async fn clear(&self, target: Option<Component>) -> Result<usize, DriverError>;
    /// Faults active on every component and proxy.
    async fn active_faults(&self) -> Result<usize, DriverError>;
    /// Starts txgen in the background.
    async fn start_load(
        &self,
        rate: u64,
        duration_secs: u64,
        accounts: Option<u64>,
        seed: u64,
    ) -> Result<(), DriverError>;
    /// Asks a running load to stop early (an abort).
    fn stop_load(&self);
    /// Waits for the load to end; `None` when none was started.
    async fn wait_load(&self) -> Result<Option<LoadOutcome>, DriverError>;
    async fn rotate_certs(&self, scope: RotationScope) -> Result<String, DriverError>;
    /// Kills the component's process (SIGKILL) and starts it again on the
    /// same state after `restart_after`; resolves once it serves again.
    async fn crash(
        &self,
        target: Component,
        restart_after: Duration,
    ) -> Result<String, DriverError>;
    async fn install_expired_cert(&self, identity: &str) -> Result<String, DriverError>;
    /// What the driver itself saw (e.g. wire proxy counters), for the
    /// journal's `observed`.
    fn observations(&self) -> BTreeMap<String, f64> {
        BTreeMap::new()
    }
}

/// A finished load: the figures probes check and the whole report.
#[derive(Debug, Clone)]
pub struct LoadOutcome {
    pub figures: BTreeMap<LoadField, f64>,
    pub report: serde_json::Value,
}

impl LoadOutcome {
    fn figure(&self, field: LoadField) -> Option<f64> {
        self.figures.get(&field).copied()
    }
}

/// Series whose increase over the run the journal records.
const OBSERVED: [(Component, &str); 13] = [
    (
        Component::Ingress,
        "txmesh_publisher_breaker_transitions_total",
    ),
    (Component::Ingress, "txmesh_publisher_retries_total"),
    (Component::Ingress, "txmesh_publisher_dropped_total"),
    (Component::Ingress, "txmesh_account_restarts_total"),
    (Component::Ingress, "txmesh_account_quarantines_total"),
    (Component::Ingress, "txmesh_poison_messages_total"),
    (Component::Ingress, "txmesh_mailbox_full_rejections_total"),
    (Component::Ingress, "txmesh_tls_handshake_failures_total"),
    (Component::Ingress, "txmesh_cert_reloads_total"),
    (Component::Ingress, "txmesh_forwarded_transactions_total"),
    (Component::Dashboard, "txmesh_tls_handshake_failures_total"),
    (
        Component::Dashboard,
        "txmesh_dashboard_duplicate_batches_total",
    ),
    (Component::Dashboard, "txmesh_cert_reloads_total"),
];

/// Runs `experiment` (read from `file`) against `driver` with `seed`.
pub async fn run<D: Driver>(experiment: &Experiment, file: &str, driver: &D, seed: u64) -> Journal {
    let started = Instant::now();
    let started_unix_ms = unix_ms();
    let mut probes = Probes {
        driver,
        started,
        baseline: BTreeMap::new(),
        last_buckets: HashMap::new(),
        records: Vec::new(),
    };
    let mut notes = Vec::new();
    for target in [Component::Ingress, Component::Dashboard] {
        match driver.scrape(target).await {
            Ok(m) => {
                probes.baseline.insert(target, m);
            }
            Err(e) => notes.push(format!("no baseline of {target:?}: {e}")),
        }
    }
    let hypothesis = &experiment.steady_state;
    let mut status = RunStatus::Completed;
    let method_log = RefCell::new(Vec::new());
    let mut load = None;
    if probes
        .round(hypothesis.probes.iter(), Phase::Before, None)
        .await
    {
        let method = run_actions(&experiment.method, driver, started, seed, &method_log);
        let during = async {
            let every = Duration::from_millis(hypothesis.interval_ms.max(50));
            loop {
                tokio::time::sleep(every).await;
                let held = probes
                    .round(hypothesis.probes.iter(), Phase::During, None)
                    .await;
                if !held && hypothesis.abort_on_breach {
                    return;
                }
            }
        };
        tokio::select! {
            () = method => {}
            () = during => {
                status = RunStatus::Aborted;
                driver.stop_load();
            }
        }
        load = match driver.wait_load().await {
            Ok(outcome) => outcome,
            Err(e) => {
                method_log.borrow_mut().push(ActionRecord {
                    action: "load".into(),
                    started_secs: secs(started),
                    ended_secs: secs(started),
                    ok: false,
                    outcome: e.to_string(),
                });
                None
            }
        };
    } else {
        status = RunStatus::Failed;
    }
    let rollback_log = RefCell::new(Vec::new());
    run_actions(&experiment.rollbacks, driver, started, seed, &rollback_log).await;
    if status == RunStatus::Completed {
        for probe in hypothesis
            .probes
            .iter()
            .filter(|p| p.when.contains(&Phase::After))
        {
            let deadline = Instant::now() + Duration::from_secs(probe.settle_secs);
            loop {
                let last = Instant::now() >= deadline;
                let held = probes
                    .round_one(probe, Phase::After, load.as_ref(), last)
                    .await;
                if held || last {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(hypothesis.interval_ms.max(50))).await;
            }
        }
    }
    let method = method_log.into_inner();
    let failed_probes = probes.failed_names();
    if status == RunStatus::Completed && (!failed_probes.is_empty() || method.iter().any(|a| !a.ok))
    {
        status = RunStatus::Failed;
    }
    let mut observed = probes.observed().await;
    observed.extend(driver.observations());
    Journal {
        title: experiment.title.clone(),
        description: experiment.description.clone(),
        file: file.to_owned(),
        target: driver.target(),
        status,
        started_unix_ms,
        ended_unix_ms: unix_ms(),
        duration_secs: secs(started),
        seed,
        failed_probes,
        probes: probes.records,
        method,
        rollbacks: rollback_log.into_inner(),
        observed,
        load: load.map(|l| l.report),
        notes,
    }
}

async fn run_actions<D: Driver>(
    actions: &[Action],
    driver: &D,
    started: Instant,
    seed: u64,
    log: &RefCell<Vec<ActionRecord>>,
) {
    for action in actions {
        let at = secs(started);
        let (ok, outcome, wait) = match execute(action, driver, seed).await {
            Ok((outcome, wait)) => (true, outcome, wait),
            Err(e) => (false, e.to_string(), Duration::ZERO),
        };
        log.borrow_mut().push(ActionRecord {
            action: action.label(),
            started_secs: at,
            ended_secs: secs(started),
            ok,
            outcome,
        });
        tokio::time::sleep(wait).await;
    }
}

/// Carries out one action; returns its outcome and how long to wait
/// before the next one (a fault's lease, a pause).
async fn execute<D: Driver>(
    action: &Action,
    driver: &D,
    seed: u64,
) -> Result<(String, Duration), DriverError> {
    let lease = |secs: f64, background: bool| {
        if background {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(secs.max(0.0))
        }
    };
    match action {
        Action::Load {
            rate,
            duration_secs,
            accounts,
        } => {
            driver
                .start_load(*rate, *duration_secs, *accounts, seed)
                .await?;
            Ok(("started".into(), Duration::ZERO))
        }
        Action::Fault {
            target,
            duration_secs,
            background,
            ..
        } => {
            let spec = action
                .fault_spec()
                .map_err(|e| DriverError::Unsupported(e.to_string()))?
                .ok_or_else(|| DriverError::Unsupported("not a fault".into()))?;
            let id = driver.inject(*target, &spec).await?;
            Ok((format!("fault {id}"), lease(*duration_secs, *background)))
        }
        Action::Wire {
            link,
            fault,
            duration_secs,
            background,
        } => {
            let id = driver
                .wire(
                    *link,
                    *fault,
                    Duration::from_secs_f64(duration_secs.max(0.0)),
                )
                .await?;
            Ok((
                format!("wire fault {id}"),
                lease(*duration_secs, *background),
            ))
        }
        Action::Pause { secs } => Ok(("waited".into(), Duration::from_secs_f64(secs.max(0.0)))),
        Action::RotateCerts { scope } => Ok((driver.rotate_certs(*scope).await?, Duration::ZERO)),
        Action::InstallExpiredCert { identity } => {
            Ok((driver.install_expired_cert(identity).await?, Duration::ZERO))
        }
        Action::ClearFaults { target } => {
            let n = driver.clear(*target).await?;
            Ok((format!("{n} still active were cleared"), Duration::ZERO))
        }
        Action::Crash {
            target,
            restart_after_secs,
        } => {
            let after = Duration::from_secs_f64(restart_after_secs.max(0.0));
            Ok((driver.crash(*target, after).await?, Duration::ZERO))
        }
    }
}

struct Probes<'d, D> {
    driver: &'d D,
    started: Instant,
    baseline: BTreeMap<Component, MetricsText>,
    /// Histogram buckets at each quantile probe's previous run.
    last_buckets: HashMap<String, Vec<(f64, f64)>>,
    records: Vec<ProbeRecord>,
}

impl<D: Driver> Probes<'_, D> {
    /// Runs the probes of `phase`; false if any failed.
    async fn round(
        &mut self,
        probes: impl Iterator<Item = &Probe>,
        phase: Phase,
        load: Option<&LoadOutcome>,
    ) -> bool {
        let mut held = true;
        for probe in probes.filter(|p| p.when.contains(&phase)) {
            held &= self.round_one(probe, phase, load, true).await;
        }
        held
    }

    /// Runs one probe and records it (a failure only when `keep_failure`,
    /// so polling until a probe settles records only its last failure).
    async fn round_one(
        &mut self,
        probe: &Probe,
        phase: Phase,
        load: Option<&LoadOutcome>,
        keep_failure: bool,
    ) -> bool {
        let (value, tolerance, held, detail) = self.measure(probe, phase, load).await;
        if held || keep_failure {
            self.records.push(ProbeRecord {
                phase,
                name: probe.name.clone(),
                at_secs: secs(self.started),
                value,
                tolerance,
                held,
                detail,
            });
        }
        held
    }

    fn failed_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .records
            .iter()
            .filter(|r| !r.held)
            .map(|r| r.name.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    async fn value(&self, s: &Selector, increase: bool) -> Result<f64, DriverError> {
        let now = self.driver.scrape(s.target).await?;
        let v = now
            .sum(&s.metric, &s.labels)
            .ok_or_else(|| DriverError::NoSeries {
                metric: s.metric.clone(),
                component: format!("{:?}", s.target),
            })?;
        let base = if increase {
            self.baseline
                .get(&s.target)
                .and_then(|b| b.sum(&s.metric, &s.labels))
                .unwrap_or(0.0)
        } else {
            0.0
        };
        Ok(v - base)
    }

    /// (value, tolerance, held, detail)
    async fn measure(
        &mut self,
        probe: &Probe,
        phase: Phase,
        load: Option<&LoadOutcome>,
    ) -> (Option<f64>, String, bool, Option<String>) {
        let within = |v: f64, min: Option<f64>, max: Option<f64>| {
            min.is_none_or(|m| v >= m) && max.is_none_or(|m| v <= m)
        };
        match &probe.check {
            Check::Metric {
                target,
                metric,
                labels,
                increase,
                min,
                max,
            } => {
                let s = Selector {
                    target: *target,
                    metric: metric.clone(),
                    labels: labels.clone(),
                };
                let tolerance = bounds(*min, *max);
                match self.value(&s, *increase).await {
                    Ok(v) => (Some(v), tolerance, within(v, *min, *max), None),
                    Err(e) => (None, tolerance, false, Some(e.to_string())),
                }
            }
            Check::Ratio {
                numerator,
                denominator,
                max,
            } => {
                let tolerance = format!("<= {max}");
                let n = self.value(numerator, true).await;
                let d = self.value(denominator, true).await;
                match (n, d) {
                    (Ok(_), Ok(d)) if d <= 0.0 => {
                        (None, tolerance, true, Some("no traffic yet".into()))
                    }
                    (Ok(n), Ok(d)) => {
                        let r = n / d;
                        (Some(r), tolerance, r <= *max, Some(format!("{n} / {d}")))
                    }
                    (Err(e), _) | (_, Err(e)) => (None, tolerance, false, Some(e.to_string())),
                }
            }
            Check::Quantile {
                target,
                metric,
                labels,
                quantile: q,
                max,
            } => {
                let tolerance = format!("p{} <= {max} s", q * 100.0);
                let now = match self.driver.scrape(*target).await {
                    Ok(m) => m.buckets(metric, labels),
                    Err(e) => return (None, tolerance, false, Some(e.to_string())),
                };
                if now.is_empty() {
                    let detail = format!("no histogram {metric} on {target:?}");
                    return (None, tolerance, false, Some(detail));
                }
                let since = match phase {
                    Phase::During => self.last_buckets.get(&probe.name).cloned(),
                    _ => None,
                }
                .or_else(|| self.baseline.get(target).map(|b| b.buckets(metric, labels)))
                .unwrap_or_default();
                self.last_buckets.insert(probe.name.clone(), now.clone());
                match quantile(&since, &now, *q) {
                    Some(v) => (Some(v), tolerance, v <= *max, None),
                    None => (None, tolerance, true, Some("no observations".into())),
                }
            }
            Check::Equal {
                left,
                right,
                tolerance,
            } => {
                // Over the run: a component that kept totals from before
                // (the dashboard reloads its state) still compares.
                let tol = format!("|left - right| <= {tolerance}");
                match (self.value(left, true).await, self.value(right, true).await) {
                    (Ok(l), Ok(r)) => (
                        Some(l - r),
                        tol,
                        (l - r).abs() <= *tolerance,
                        Some(format!("{l} vs {r}")),
                    ),
                    (Err(e), _) | (_, Err(e)) => (None, tol, false, Some(e.to_string())),
                }
            }
            Check::LoadDifference {
                left,
                load: fields,
                min,
                max,
            } => {
                let tol = bounds(*min, *max);
                let right: Option<f64> =
                    fields.iter().map(|f| load.and_then(|l| l.figure(*f))).sum();
                match (self.value(left, true).await, right) {
                    (Ok(l), Some(r)) => (
                        Some(l - r),
                        tol,
                        within(l - r, *min, *max),
                        Some(format!("{l} - {r}")),
                    ),
                    (Err(e), _) => (None, tol, false, Some(e.to_string())),
                    (_, None) => (None, tol, false, Some("no load ran".into())),
                }
            }
            Check::Load { field, max } => {
                let tolerance = format!("<= {max}");
                match load.and_then(|l| l.figure(*field)) {
                    Some(v) => (Some(v), tolerance, v <= *max, None),
                    None => (None, tolerance, false, Some("no load ran".into())),
                }
            }
            Check::ActiveFaults { max } => {
                let tolerance = format!("<= {max}");
                match self.driver.active_faults().await {
                    Ok(n) => (Some(n as f64), tolerance, n <= *max, None),
                    Err(e) => (None, tolerance, false, Some(e.to_string())),
                }
            }
        }
    }

    /// Increases over the run of the [`OBSERVED`] series, by label set.
    async fn observed(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        let mut now = BTreeMap::new();
        for target in [Component::Ingress, Component::Dashboard] {
            if let Ok(m) = self.driver.scrape(target).await {
                now.insert(target, m);
            }
        }
        for (target, name) in OBSERVED {
            let Some(m) = now.get(&target) else { continue };
            for s in m.samples.iter().filter(|s| s.name == name) {
                let base = self
                    .baseline
                    .get(&target)
                    .and_then(|b| b.sum(name, &s.labels))
                    .unwrap_or(0.0);
                let delta = s.value - base;
                if delta == 0.0 {
                    continue;
                }
                let labels: Vec<String> =
                    s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let key = if labels.is_empty() {
                    format!("{target:?}.{name}")
                } else {
                    format!("{target:?}.{name}{{{}}}", labels.join(","))
                };
                out.insert(key.to_lowercase(), delta);
            }
        }
        out
    }
}

fn secs(since: Instant) -> f64 {
    (since.elapsed().as_secs_f64() * 1000.0).round() / 1000.0
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The tolerance of a `min`..=`max` check, for the journal.
fn bounds(min: Option<f64>, max: Option<f64>) -> String {
    match (min, max) {
        (Some(lo), Some(hi)) => format!("in [{lo}, {hi}]"),
        (Some(lo), None) => format!(">= {lo}"),
        (None, Some(hi)) => format!("<= {hi}"),
        (None, None) => "any value".to_owned(),
    }
}
