//! The journal: the evidence of one run, written as JSON.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Phase;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// The hypothesis held before, during and after.
    Completed,
    /// A probe failed (before: the method did not run).
    Failed,
    /// A probe failed during the method and the run stopped there.
    Aborted,
}

/// One probe's verdict at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeRecord {
    pub phase: Phase,
    pub name: String,
    /// Seconds since the run started.
    pub at_secs: f64,
    /// The measured value (`None`: nothing to measure yet).
    pub value: Option<f64>,
    /// The tolerance, as written.
    pub tolerance: String,
    pub held: bool,
    /// Why a probe could not measure, or what it compared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One action and what came of it.
#[derive(Debug, Clone, Serialize)]
pub struct ActionRecord {
    pub action: String,
    pub started_secs: f64,
    pub ended_secs: f64,
    pub ok: bool,
    /// The fault id, the rotation done, or the error.
    pub outcome: String,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Journal {
    pub title: String,
    pub description: String,
    pub file: String,
    /// What the run was against (`up`: a system it started).
    pub target: String,
    pub status: RunStatus,
    /// Unix milliseconds.
    pub started_unix_ms: u64,
    pub ended_unix_ms: u64,
    pub duration_secs: f64,
    /// Seeds the load and the wire jitter: `seed = N` in the file (or
    /// `--seed N`) replays the run's inputs.
    pub seed: u64,
    /// The probes that failed, by name (empty when the hypothesis held).
    pub failed_probes: Vec<String>,
    pub probes: Vec<ProbeRecord>,
    pub method: Vec<ActionRecord>,
    pub rollbacks: Vec<ActionRecord>,
    /// What the system did meanwhile, as metric increases over the run:
    /// breaker transitions (by state), account restarts, quarantines,
    /// publisher retries, overload refusals, TLS handshake failures.
    pub observed: BTreeMap<String, f64>,
    /// The load's report, as txgen wrote it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load: Option<serde_json::Value>,
    /// What the runner could not do (e.g. a baseline scrape that failed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Journal {
    /// The human summary printed after a run.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(out, "experiment: {}", self.title);
        let _ = writeln!(
            out,
            "status:     {:?} in {:.1} s (seed {})",
            self.status, self.duration_secs, self.seed
        );
        for phase in [Phase::Before, Phase::During, Phase::After] {
            let records: Vec<&ProbeRecord> =
                self.probes.iter().filter(|p| p.phase == phase).collect();
            if records.is_empty() {
                continue;
            }
            let mut names: Vec<&str> = records.iter().map(|p| p.name.as_str()).collect();
            names.dedup();
            names.sort_unstable();
            names.dedup();
            let _ = writeln!(out, "{phase:?}:");
            for name in names {
                let of: Vec<&&ProbeRecord> = records.iter().filter(|p| p.name == name).collect();
                let failed = of.iter().filter(|p| !p.held).count();
                let last = of.iter().rev().find(|p| !p.held).or(of.last());
                if let Some(p) = last {
                    let value = p.value.map_or("n/a".to_owned(), |v| format!("{v:.4}"));
                    let _ = writeln!(
                        out,
                        "  {} {:<34} {} (tolerance {}){}{}",
                        if failed == 0 { "ok  " } else { "FAIL" },
                        name,
                        value,
                        p.tolerance,
                        if of.len() > 1 {
                            format!(", {} of {} checks failed", failed, of.len())
                        } else {
                            String::new()
                        },
                        p.detail
                            .as_deref()
                            .map_or(String::new(), |d| format!(" [{d}]"))
                    );
                }
            }
        }
        let _ = writeln!(out, "method:");
        for a in self.method.iter().chain(&self.rollbacks) {
            let _ = writeln!(
                out,
                "  {} {:>6.1}s {} -> {}",
                if a.ok { "ok  " } else { "FAIL" },
                a.started_secs,
                a.action,
                a.outcome
            );
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        if !self.observed.is_empty() {
            let _ = writeln!(out, "observed:");
            for (k, v) in &self.observed {
                let _ = writeln!(out, "  {k:<40} {v}");
            }
        }
        out
    }
}
