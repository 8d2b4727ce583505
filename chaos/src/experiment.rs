//! Chaos experiments, as SREs write them (`chaos/experiments/*.toml`):
//! a title, a description, a steady-state hypothesis (probes with
//! tolerances), a method (load, faults, wire faults, certificate actions,
//! pauses) and rollbacks, after Chaos Toolkit's model. The runner checks
//! the hypothesis before, continuously during and after the method, aborts
//! and rolls back on a breach when asked to, and records everything in a
//! [`Journal`].
//!
//! This module owns the file format, the probe arithmetic and the runner's
//! sequence; the network (Admin calls, scrapes, txgen, proxies) is behind
//! the [`Driver`] trait, implemented by the `txmesh` binary.

mod journal;
mod metrics;
mod runner;

use std::{collections::BTreeMap, path::Path, time::Duration};

use serde::{Deserialize, Serialize};

pub use crate::error::DriverError;
pub use journal::{ActionRecord, Journal, ProbeRecord, RunStatus};
pub use metrics::{MetricsText, Sample};
pub use runner::{run, Driver, LoadOutcome};

use crate::{proxy::WireFault, ChaosError, FaultKind, FaultSpec};

/// One experiment file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    pub title: String,
    pub description: String,
    /// Seeds the load and the wire jitter; random when absent (and then
    /// written to the journal so the run can be replayed).
    #[serde(default)]
    pub seed: Option<u64>,
    /// Ingress replicas of the `--target up` system (1: a single ingress).
    /// With several, `ingress` in probes and faults is replica 0, the one
    /// the load is sent to; the others own their share of the accounts.
    #[serde(default = "one_replica")]
    pub replicas: u32,
    pub steady_state: Hypothesis,
    pub method: Vec<Action>,
    /// Run after the method, or at once on an abort. Faults end by their
    /// leases anyway; rollbacks end them sooner.
    #[serde(default)]
    pub rollbacks: Vec<Action>,
}

/// The steady-state hypothesis.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hypothesis {
    pub title: String,
    /// How often "during" probes run, milliseconds.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Stop the method and roll back at the first breach during it.
    #[serde(default)]
    pub abort_on_breach: bool,
    pub probes: Vec<Probe>,
}

/// The components an experiment talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    Ingress,
    Dashboard,
}

/// The links a wire fault can sit on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    /// txgen to the ingress (Screen streams).
    TxgenIngress,
    /// The ingress's publisher to the dashboard (Publish stream).
    IngressDashboard,
    /// Replica 0's forwarding link to replica 1 (Replica.Forward stream);
    /// needs `replicas` of 2 or more.
    ReplicaLink,
}

impl Link {
    /// The link's name, as experiment files spell it.
    pub fn name(self) -> &'static str {
        match self {
            Link::TxgenIngress => "txgen_ingress",
            Link::IngressDashboard => "ingress_dashboard",
            Link::ReplicaLink => "replica_link",
        }
    }
}

/// When a probe runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Before,
    During,
    After,
}

/// One probe: a named check with a tolerance.
#[derive(Debug, Clone, Deserialize)]
pub struct Probe {
    pub name: String,
    /// Default: before, during and after.
    #[serde(default = "all_phases")]
    pub when: Vec<Phase>,
    /// After the method, keep probing this long until the probe holds
    /// (recovery time); a probe that never holds fails.
    #[serde(default)]
    pub settle_secs: u64,
    #[serde(flatten)]
    pub check: Check,
}

/// Series of one metric family on one component, summed.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    pub target: Component,
    pub metric: String,
    /// Only series with these label values (`"!x"`: any value but x).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// What a probe measures and its tolerance.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Check {
    /// A metric's value (or its increase since the experiment started, with
    /// `increase`), within `min`..=`max`.
    Metric {
        target: Component,
        metric: String,
        #[serde(default)]
        labels: BTreeMap<String, String>,
        #[serde(default)]
        increase: bool,
        min: Option<f64>,
        max: Option<f64>,
    },
    /// increase(numerator) / increase(denominator) since the experiment
    /// started, at most `max` (no denominator yet: holds).
    Ratio {
        numerator: Selector,
        denominator: Selector,
        max: f64,
    },
    /// A quantile of a histogram over the interval since the probe last
    /// ran (the whole run after the method), in seconds, at most `max`.
    Quantile {
        target: Component,
        metric: String,
        #[serde(default)]
        labels: BTreeMap<String, String>,
        quantile: f64,
        max: f64,
    },
    /// Two metrics' increases over the run agree within `tolerance`, e.g.
    /// the dashboard's verdict total and the ingress's.
    Equal {
        left: Selector,
        right: Selector,
        #[serde(default)]
        tolerance: f64,
    },
    /// A figure of the load's report, at most `max` (after only).
    Load { field: LoadField, max: f64 },
    /// A metric's increase over the run minus the sum of figures of the
    /// load's report, within `min`..=`max` (after only), e.g. every verdict
    /// txgen was answered (and every original of an answer lost with a
    /// crashed process) is on the dashboard: `min = 0`.
    LoadDifference {
        left: Selector,
        load: Vec<LoadField>,
        min: Option<f64>,
        max: Option<f64>,
    },
    /// Faults still active on every component, at most `max` (a fault that
    /// outlives its experiment is a defect).
    ActiveFaults { max: usize },
}

/// The figures of a load's report a probe can check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadField {
    /// Transactions that got no final answer (lost).
    Unanswered,
    /// Final errors (including given up).
    Errors,
    /// Transactions screened twice when sent once.
    ScreenedTwice,
    /// Injected fraud patterns that went undetected.
    MissedPatterns,
    /// Clean transactions flagged.
    FalsePositives,
    /// p99 latency, milliseconds.
    P99Ms,
    /// Verdicts answered.
    Verdicts,
    /// Transactions resent after their stream broke and answered with
    /// their original (replayed) verdict: their first verdict was recorded
    /// but its answer was lost with the connection.
    RecoveredByReplay,
}

/// One step of a method or a rollback.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Starts txgen in the background: `rate` tx/s (0: as fast as
    /// possible) for `duration_secs`. The method waits for it to end
    /// before the "after" probes.
    Load {
        rate: u64,
        duration_secs: u64,
        #[serde(default)]
        accounts: Option<u64>,
    },
    /// Injects a fault over a component's Admin service, then (unless
    /// `background`) waits out its lease.
    Fault {
        target: Component,
        kind: String,
        #[serde(default = "one")]
        rate: f64,
        #[serde(default)]
        account_share: f64,
        duration_secs: f64,
        #[serde(default)]
        delay_ms: u64,
        /// For `ingest_refusal`: a gRPC status name, e.g. "UNAVAILABLE".
        #[serde(default)]
        code: Option<String>,
        /// Most events hit (0: no limit), e.g. actors killed.
        #[serde(default)]
        max_hits: u64,
        #[serde(default)]
        background: bool,
    },
    /// Puts a wire fault on a link's proxy, then (unless `background`)
    /// waits out its lease.
    Wire {
        link: Link,
        /// E.g. `{ kind = "latency", latency_ms = 200, jitter_ms = 50 }`.
        fault: WireFault,
        duration_secs: f64,
        #[serde(default)]
        background: bool,
    },
    /// Waits.
    Pause { secs: f64 },
    /// Rotates certificates on disk under load: every leaf, or the CA in
    /// its staged steps (needs the CA key).
    RotateCerts { scope: RotationScope },
    /// Writes an expired certificate into an identity's files; the
    /// component must keep presenting its last good one.
    InstallExpiredCert { identity: String },
    /// Clears faults on a component (all components when absent) and on
    /// every wire proxy.
    ClearFaults {
        #[serde(default)]
        target: Option<Component>,
    },
    /// Kills the component's process with SIGKILL (no shutdown, no flush)
    /// and starts it again on the same state directory and addresses after
    /// `restart_after_secs`; waits until it is SERVING again.
    Crash {
        target: Component,
        #[serde(default)]
        restart_after_secs: f64,
    },
}

/// What `rotate_certs` rotates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RotationScope {
    Leaves,
    Ca,
}

fn default_interval_ms() -> u64 {
    500
}

fn all_phases() -> Vec<Phase> {
    vec![Phase::Before, Phase::During, Phase::After]
}

fn one() -> f64 {
    1.0
}

fn one_replica() -> u32 {
    1
}

/// Most replicas an experiment's system may have.
pub const MAX_REPLICAS: u32 = 8;

impl Experiment {
    /// Reads and validates an experiment file.
    ///
    /// # Errors
    /// When the file cannot be read, is not valid TOML for an experiment
    /// (the message names the key), or a value is out of range.
    pub fn load(path: &Path) -> Result<Self, ChaosError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ChaosError::Experiment {
            file: file.clone(),
            key: "-".into(),
            message: e.to_string(),
        })?;
        Self::parse(&file, &text)
    }

    /// Parses and validates an experiment; `file` names it in errors.
    ///
    /// # Errors
    /// As [`Self::load`].
    pub fn parse(file: &str, text: &str) -> Result<Self, ChaosError> {
        let experiment: Experiment = toml::from_str(text).map_err(|e| ChaosError::Experiment {
            file: file.to_owned(),
            key: e
                .span()
                .map(|s| locate(text, s.start))
                .unwrap_or_else(|| "-".into()),
            message: e.message().to_owned(),
        })?;
        experiment.validate(file)?;
        Ok(experiment)
    }

    fn validate(&self, file: &str) -> Result<(), ChaosError> {
        let bad = |key: String, message: String| ChaosError::Experiment {
            file: file.to_owned(),
            key,
            message,
        };
        if self.steady_state.probes.is_empty() {
            return Err(bad(
                "steady_state.probes".into(),
                "a hypothesis needs at least one probe".into(),
            ));
        }
        for (i, probe) in self.steady_state.probes.iter().enumerate() {
            let key = format!("steady_state.probes[{i}] ({})", probe.name);
            if let Check::Quantile { quantile, .. } = probe.check {
                if !(0.0..=1.0).contains(&quantile) {
                    return Err(bad(key, format!("quantile {quantile} is not within 0..=1")));
                }
            }
            if matches!(probe.check, Check::Load { .. }) && probe.when != [Phase::After] {
                return Err(bad(key, "load probes run after the method only".into()));
            }
        }
        if !(1..=MAX_REPLICAS).contains(&self.replicas) {
            return Err(bad(
                "replicas".into(),
                format!("must be between 1 and {MAX_REPLICAS}"),
            ));
        }
        for (section, actions) in [("method", &self.method), ("rollbacks", &self.rollbacks)] {
            for (i, action) in actions.iter().enumerate() {
                if let Action::Wire {
                    link: Link::ReplicaLink,
                    ..
                } = action
                {
                    if self.replicas < 2 {
                        return Err(bad(
                            format!("{section}[{i}].link"),
                            "replica_link needs replicas = 2 or more".into(),
                        ));
                    }
                }
                action
                    .fault_spec()
                    .map_err(|e| bad(format!("{section}[{i}]"), e.to_string()))?;
            }
        }
        Ok(())
    }
}

impl Action {
    /// The fault an action injects over Admin, if it is a fault action.
    ///
    /// # Errors
    /// An unknown kind, a bad code or a malformed spec.
    pub fn fault_spec(&self) -> Result<Option<FaultSpec>, ChaosError> {
        let Action::Fault {
            kind,
            rate,
            account_share,
            duration_secs,
            delay_ms,
            code,
            max_hits,
            ..
        } = self
        else {
            return Ok(None);
        };
        let code = match code {
            Some(name) => crate::status_code(name)?,
            None => 0,
        };
        let kind = FaultKind::from_parts(kind, *delay_ms, code)?;
        if !(0.0..=1.0).contains(rate) {
            return Err(ChaosError::BadRate(*rate));
        }
        if !duration_secs.is_finite() || *duration_secs <= 0.0 {
            return Err(ChaosError::NoLease);
        }
        Ok(Some(FaultSpec {
            kind,
            rate: *rate,
            account_share: *account_share,
            duration: Duration::from_secs_f64(*duration_secs),
            max_hits: *max_hits,
        }))
    }

    /// A short name for the journal.
    pub fn label(&self) -> String {
        match self {
            Action::Load {
                rate,
                duration_secs,
                ..
            } => {
                format!("load {rate} tx/s for {duration_secs} s")
            }
            Action::Fault {
                target,
                kind,
                duration_secs,
                ..
            } => format!("fault {kind} on {target:?} for {duration_secs} s"),
            Action::Wire {
                link,
                fault,
                duration_secs,
                ..
            } => format!("wire {fault:?} on {link:?} for {duration_secs} s"),
            Action::Pause { secs } => format!("pause {secs} s"),
            Action::RotateCerts { scope } => format!("rotate certificates ({scope:?})"),
            Action::InstallExpiredCert { identity } => {
                format!("install an expired certificate for {identity}")
            }
            Action::ClearFaults { target } => match target {
                Some(t) => format!("clear faults on {t:?}"),
                None => "clear every fault".into(),
            },
            Action::Crash {
                target,
                restart_after_secs,
            } => format!("kill -9 {target:?}, restart after {restart_after_secs} s"),
        }
    }

    /// The component this action kills, if it is a crash.
    pub fn crashes(&self) -> Option<Component> {
        match self {
            Action::Crash { target, .. } => Some(*target),
            _ => None,
        }
    }
}

/// "line L" of a byte offset, for error messages.
fn locate(text: &str, offset: usize) -> String {
    let line = text[..offset.min(text.len())].matches('\n').count() + 1;
    format!("line {line}")
}

#[cfg(test)]
#[path = "experiment/tests.rs"]
mod tests;
