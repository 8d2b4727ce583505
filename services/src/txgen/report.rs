//! What txgen measured: outcomes by status and reason, detection per
//! injected pattern, false positives on clean traffic, and latency in an
//! HdrHistogram (microseconds; measured from each transaction's intended
//! send time when the rate is fixed, so queueing is not hidden).

use std::{collections::BTreeMap, time::Duration};

use hdrhistogram::Histogram;
use serde::Serialize;
use txmesh_proto::v1::{txn_result::Outcome, TxnResult, VerdictStatus};

use super::{
    patterns::{Label, Pattern},
    retry::GiveUp,
};

/// Counts kept by one stream, merged at the end.
pub struct Tally {
    pub sent: u64,
    pub answered: u64,
    pub errors: u64,
    pub by_status: BTreeMap<String, u64>,
    pub by_reason: BTreeMap<String, u64>,
    pub by_error: BTreeMap<String, u64>,
    pub injected: BTreeMap<&'static str, PatternCount>,
    pub clean: CleanCount,
    pub latency_us: Histogram<u64>,
    pub retries: u64,
    pub gave_up: BTreeMap<&'static str, u64>,
    pub screened_twice: u64,
    pub reconnects: u64,
    pub recovered_by_replay: u64,
    /// Why a stream stopped before the run's duration or count, if one did.
    pub ended_early: Option<String>,
    /// Transactions sent (resends included) to each replica, by name.
    pub sent_to: BTreeMap<String, u64>,
}

/// Sent and detected cases of one pattern.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct PatternCount {
    pub sent: u64,
    pub detected: u64,
}

/// Clean transactions and how many were wrongly flagged or rejected.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct CleanCount {
    pub sent: u64,
    pub flagged: u64,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyMs {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// The `--report json` object.
#[derive(Debug, Clone, Serialize)]
pub struct TxgenReport {
    pub sent: u64,
    pub answered: u64,
    pub errors: u64,
    pub unanswered: u64,
    pub by_status: BTreeMap<String, u64>,
    pub by_reason: BTreeMap<String, u64>,
    pub by_error: BTreeMap<String, u64>,
    pub target_rate: Option<u64>,
    pub achieved_tps: f64,
    pub duration_s: f64,
    pub latency_ms: LatencyMs,
    pub injected: BTreeMap<&'static str, PatternCount>,
    pub clean: CleanCount,
    /// Resends of transactions answered with a retryable error.
    pub retries: u64,
    /// Transactions whose final answer stayed an error, by why retrying
    /// stopped (not_retryable, deadline, budget).
    pub gave_up: BTreeMap<&'static str, u64>,
    /// Verdicts marked `replayed` for transactions sent once (retries
    /// included): a transaction screened twice. Must be 0.
    pub screened_twice: u64,
    /// Screen streams that failed and were opened again.
    pub reconnects: u64,
    /// Transactions resent after their stream failed and answered with
    /// their original (replayed) verdict: screened once, answered twice.
    pub recovered_by_replay: u64,
    /// Why the run stopped before its duration or count (a stream could not
    /// be opened again within the retry deadline, say); `None` when it ran
    /// its course. A run that ended early exits non-zero.
    pub ended_early: Option<String>,
    /// Transactions sent (resends included) to each replica, by name (the
    /// target's address when not partition-aware).
    pub sent_to: BTreeMap<String, u64>,
    /// Partition-aware: how many times a replica's answer (or a stream
    /// ending) led to a partition map that had changed.
    pub map_refreshes: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Self::new()
    }
}

impl Tally {
    pub fn new() -> Self {
        Self {
            sent: 0,
            answered: 0,
            errors: 0,
            by_status: BTreeMap::new(),
            by_reason: BTreeMap::new(),
            by_error: BTreeMap::new(),
            injected: Pattern::ALL
                .iter()
                .map(|p| (p.name(), PatternCount::default()))
                .collect(),
            clean: CleanCount::default(),
            retries: 0,
            gave_up: BTreeMap::new(),
            screened_twice: 0,
            reconnects: 0,
            recovered_by_replay: 0,
            ended_early: None,
            sent_to: BTreeMap::new(),
            // 1 us .. 1 h at 3 significant digits; bounds are constants.
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .unwrap_or_else(|_| Histogram::new(3).expect("3 significant digits is valid")),
        }
    }

    pub fn sent(&mut self, label: Label) {
        self.sent += 1;
        match label {
            Label::Clean => self.clean.sent += 1,
            Label::Injected(p) => {
                if let Some(c) = self.injected.get_mut(p.name()) {
                    c.sent += 1;
                }
            }
            Label::Filler => {}
        }
    }

    /// A retryable error was answered and the transaction queued again.
    pub fn retried(&mut self) {
        self.retries += 1;
    }

    /// A transaction's error is final.
    pub fn gave_up(&mut self, why: GiveUp) {
        let key = match why {
            GiveUp::NotRetryable => "not_retryable",
            GiveUp::Deadline => "deadline",
            GiveUp::Budget => "budget",
        };
        *self.gave_up.entry(key).or_default() += 1;
    }

    /// A stream failed and was opened again.
    /// The stream stopped before the run was over, for `why`.
    pub fn ended_early(&mut self, why: String) {
        self.ended_early.get_or_insert(why);
    }

    /// `n` transactions went to `replica`.
    pub fn routed(&mut self, replica: &str, n: usize) {
        match self.sent_to.get_mut(replica) {
            Some(count) => *count += n as u64,
            None => {
                self.sent_to.insert(replica.to_owned(), n as u64);
            }
        }
    }

    pub fn reconnected(&mut self) {
        self.reconnects += 1;
    }

    /// The final answer of a transaction; `lost` when an earlier answer
    /// may have been lost with a failed stream (a replayed verdict is then
    /// that answer again, not a second screening).
    pub fn answered(&mut self, result: &TxnResult, label: Label, latency: Duration, lost: bool) {
        self.answered += 1;
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let _ = self.latency_us.record(us.min(3_600_000_000));
        match &result.outcome {
            Some(Outcome::Verdict(v)) => {
                if v.replayed && label != Label::Injected(Pattern::Replay) {
                    if lost {
                        self.recovered_by_replay += 1;
                    } else {
                        self.screened_twice += 1;
                    }
                }
                let status = v
                    .status()
                    .as_str_name()
                    .trim_start_matches("VERDICT_STATUS_")
                    .to_owned();
                *self.by_status.entry(status).or_default() += 1;
                for r in &v.reasons {
                    *self
                        .by_reason
                        .entry(crate::grpc::reason_name(*r))
                        .or_default() += 1;
                }
                match label {
                    Label::Clean if v.status() != VerdictStatus::Approved => {
                        self.clean.flagged += 1
                    }
                    Label::Injected(p) if p.detected_by(result) => {
                        if let Some(c) = self.injected.get_mut(p.name()) {
                            c.detected += 1;
                        }
                    }
                    _ => {}
                }
            }
            Some(Outcome::Error(e)) => {
                self.errors += 1;
                let code = crate::grpc::error_code_name(e.code()).to_owned();
                *self.by_error.entry(code).or_default() += 1;
            }
            None => self.errors += 1,
        }
    }

    pub fn merge(&mut self, other: Tally) {
        self.sent += other.sent;
        self.answered += other.answered;
        self.errors += other.errors;
        for (k, v) in other.by_status {
            *self.by_status.entry(k).or_default() += v;
        }
        for (k, v) in other.by_reason {
            *self.by_reason.entry(k).or_default() += v;
        }
        for (k, v) in other.by_error {
            *self.by_error.entry(k).or_default() += v;
        }
        for (k, v) in other.injected {
            let c = self.injected.entry(k).or_default();
            c.sent += v.sent;
            c.detected += v.detected;
        }
        self.clean.sent += other.clean.sent;
        self.clean.flagged += other.clean.flagged;
        self.retries += other.retries;
        self.screened_twice += other.screened_twice;
        self.reconnects += other.reconnects;
        self.recovered_by_replay += other.recovered_by_replay;
        if let Some(why) = other.ended_early {
            self.ended_early(why);
        }
        for (k, v) in other.sent_to {
            *self.sent_to.entry(k).or_default() += v;
        }
        for (k, v) in other.gave_up {
            *self.gave_up.entry(k).or_default() += v;
        }
        let _ = self.latency_us.add(&other.latency_us);
    }

    pub fn report(self, target_rate: Option<u64>, elapsed: Duration) -> TxgenReport {
        let ms = |q: f64| self.latency_us.value_at_quantile(q) as f64 / 1000.0;
        let secs = elapsed.as_secs_f64().max(1e-9);
        TxgenReport {
            latency_ms: LatencyMs {
                p50: ms(0.5),
                p90: ms(0.9),
                p99: ms(0.99),
                p999: ms(0.999),
                max: self.latency_us.max() as f64 / 1000.0,
            },
            sent: self.sent,
            answered: self.answered,
            errors: self.errors,
            unanswered: self.sent.saturating_sub(self.answered),
            by_status: self.by_status,
            by_reason: self.by_reason,
            by_error: self.by_error,
            target_rate,
            achieved_tps: self.answered as f64 / secs,
            duration_s: secs,
            injected: self.injected,
            clean: self.clean,
            retries: self.retries,
            gave_up: self.gave_up,
            screened_twice: self.screened_twice,
            reconnects: self.reconnects,
            recovered_by_replay: self.recovered_by_replay,
            ended_early: self.ended_early,
            sent_to: self.sent_to,
            map_refreshes: 0,
        }
    }
}

impl TxgenReport {
    /// Whether the run did all it was asked: every transaction answered and
    /// no stream stopped early.
    pub fn complete(&self) -> bool {
        self.unanswered == 0 && self.ended_early.is_none()
    }

    /// The readable summary printed without `--report json`.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        if let Some(why) = &self.ended_early {
            out += &format!("ENDED EARLY: {why}\n");
        }
        out += &format!(
            "sent {} answered {} errors {} unanswered {} in {:.1} s: {:.0} tx/s\n",
            self.sent,
            self.answered,
            self.errors,
            self.unanswered,
            self.duration_s,
            self.achieved_tps
        );
        out += &format!(
            "latency ms: p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}\n",
            self.latency_ms.p50,
            self.latency_ms.p90,
            self.latency_ms.p99,
            self.latency_ms.p999,
            self.latency_ms.max
        );
        out += &format!(
            "by status: {:?}\nby reason: {:?}\n",
            self.by_status, self.by_reason
        );
        if !self.by_error.is_empty() {
            out += &format!("errors by code: {:?}\n", self.by_error);
        }
        out += &format!(
            "retries {} gave up {:?} screened twice {}\n",
            self.retries, self.gave_up, self.screened_twice
        );
        if self.reconnects > 0 {
            out += &format!(
                "streams reopened {} (resent after a lost answer and answered by replay: {})\n",
                self.reconnects, self.recovered_by_replay
            );
        }
        if self.sent_to.len() > 1 || self.map_refreshes > 0 {
            out += &format!(
                "sent to {:?}, partition map refreshed {} times\n",
                self.sent_to, self.map_refreshes
            );
        }
        out += "injected patterns (detected / sent):\n";
        for (name, c) in &self.injected {
            out += &format!("  {name:<15} {:>8} / {:<8}\n", c.detected, c.sent);
        }
        out += &format!(
            "clean transactions flagged: {} of {}\n",
            self.clean.flagged, self.clean.sent
        );
        out
    }
}
