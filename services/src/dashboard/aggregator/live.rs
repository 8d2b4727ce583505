//! What the page shows live, kept in memory only (a restarted dashboard
//! starts them afresh): the per-second history behind the charts, the
//! golden figures (rate, error %, latency percentiles over the last
//! [`GOLDEN_WINDOW_SECS`] closed seconds), each publisher's breaker timing
//! and send rate, and the mesh each service reports.
//!
//! Seconds are closed by the wall clock: the second still filling is never
//! shown, so the last point of a chart does not dip.

use std::collections::VecDeque;

use serde::Serialize;
use txmesh_proto::v1::{LatencyHistogram, MeshStatus, PublisherStatus};

/// Closed seconds the golden figures cover.
pub(crate) const GOLDEN_WINDOW_SECS: usize = 10;

/// A publisher not heard from for this long (it sends a status at least
/// every second while its link is up) is shown as gone.
pub(crate) const GONE_AFTER_MS: i64 = 10_000;

/// What happened in one second, summed over publishers.
#[derive(Debug, Clone, Default)]
pub(crate) struct Second {
    pub(crate) t: i64,
    /// Verdicts applied, by status.
    pub(crate) approved: u64,
    pub(crate) flagged: u64,
    pub(crate) rejected: u64,
    /// Transactions the ingresses answered, and the errors among them.
    pub(crate) answered: u64,
    pub(crate) errors: u64,
    pub(crate) transitions: u64,
    pub(crate) shed: u64,
    pub(crate) gaps: u64,
    pub(crate) retries: u64,
    /// Screening latency observations, per bucket (not cumulative; the
    /// last one is above the highest bound).
    pub(crate) latency: Vec<u64>,
}

/// One closed second as the charts get it: its counts (its latency
/// buckets moved out, to the golden window) and its percentiles.
#[derive(Debug, Clone, Default)]
struct Point {
    second: Second,
    p50_ms: Option<f64>,
    p95_ms: Option<f64>,
    p99_ms: Option<f64>,
}

/// History points, one array per field (what uPlot takes), oldest first.
/// `null` latency: nothing was screened that second.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HistoryColumns {
    pub t: Vec<i64>,
    pub approved: Vec<u64>,
    pub flagged: Vec<u64>,
    pub rejected: Vec<u64>,
    pub errors: Vec<u64>,
    pub p50_ms: Vec<Option<f64>>,
    pub p95_ms: Vec<Option<f64>>,
    pub p99_ms: Vec<Option<f64>>,
    pub transitions: Vec<u64>,
    pub shed: Vec<u64>,
    pub gaps: Vec<u64>,
}

/// Golden figures of the ingresses (what they answered, how fast).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct IngressGolden {
    pub tx_per_sec: f64,
    /// `None` when nothing was answered in the window.
    pub error_pct: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub approved_per_sec: f64,
    pub flagged_per_sec: f64,
    pub rejected_per_sec: f64,
}

/// Golden figures of the ingress → dashboard link.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LinkGolden {
    /// Verdicts applied here per second.
    pub verdicts_per_sec: f64,
    /// Failed sends (retried) per second.
    pub retries_per_sec: f64,
    /// Verdicts journaled at the publishers, not yet acknowledged.
    pub backlog: u64,
    pub shed: u64,
    pub gaps: u64,
    pub duplicates: u64,
    /// Publishers whose breaker is not closed, and those seen lately.
    pub breakers_not_closed: usize,
    pub publishers_live: usize,
}

/// The golden tiles.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Golden {
    pub window_secs: usize,
    pub ingress: IngressGolden,
    pub link: LinkGolden,
}

/// The bounded per-second history and the golden window.
#[derive(Debug)]
pub(crate) struct History {
    points: VecDeque<Point>,
    /// Latency buckets of the last closed seconds (for the golden window).
    recent_latency: VecDeque<Vec<u64>>,
    capacity: usize,
    /// The second filling now.
    pub(crate) current: Second,
    /// Bucket bounds (seconds) of the latency histograms added so far.
    bounds: Vec<f64>,
}

impl History {
    pub(crate) fn new(capacity: usize, now_s: i64) -> Self {
        Self {
            points: VecDeque::new(),
            recent_latency: VecDeque::new(),
            capacity: capacity.max(1),
            current: Second {
                t: now_s,
                ..Second::default()
            },
            bounds: Vec::new(),
        }
    }

    /// Closes every second before `now_s` (seconds with nothing in them
    /// are points of zero).
    pub(crate) fn roll(&mut self, now_s: i64) {
        let cap = i64::try_from(self.capacity).unwrap_or(i64::MAX);
        if now_s - self.current.t > cap {
            self.current = Second {
                t: now_s - cap,
                ..Second::default()
            };
        }
        while self.current.t < now_s {
            let next = Second {
                t: self.current.t + 1,
                ..Second::default()
            };
            let mut closed = std::mem::replace(&mut self.current, next);
            let latency = std::mem::take(&mut closed.latency);
            let q = |q| quantile_ms(&self.bounds, &latency, q);
            self.points.push_back(Point {
                p50_ms: q(0.5),
                p95_ms: q(0.95),
                p99_ms: q(0.99),
                second: closed,
            });
            self.recent_latency.push_back(latency);
            while self.points.len() > self.capacity {
                self.points.pop_front();
            }
            while self.recent_latency.len() > GOLDEN_WINDOW_SECS {
                self.recent_latency.pop_front();
            }
        }
    }

    /// Adds latency observations (per bucket) to the current second.
    /// Histograms with other bounds than the first one seen are skipped
    /// (percentiles over mixed buckets would be wrong).
    pub(crate) fn add_latency(&mut self, bounds: &[f64], buckets: &[u64]) {
        if self.bounds.is_empty() {
            bounds.clone_into(&mut self.bounds);
        }
        if self.bounds != bounds || buckets.len() != bounds.len() + 1 {
            return;
        }
        let current = &mut self.current.latency;
        current.resize(buckets.len(), 0);
        for (c, b) in current.iter_mut().zip(buckets) {
            *c += b;
        }
    }

    /// The closed seconds after `after_t`, as columns.
    pub(crate) fn columns_after(&self, after_t: i64) -> HistoryColumns {
        let mut c = HistoryColumns::default();
        for p in self.points.iter().filter(|p| p.second.t > after_t) {
            let s = &p.second;
            c.t.push(s.t);
            c.approved.push(s.approved);
            c.flagged.push(s.flagged);
            c.rejected.push(s.rejected);
            c.errors.push(s.errors);
            c.p50_ms.push(p.p50_ms);
            c.p95_ms.push(p.p95_ms);
            c.p99_ms.push(p.p99_ms);
            c.transitions.push(s.transitions);
            c.shed.push(s.shed);
            c.gaps.push(s.gaps);
        }
        c
    }

    /// The last closed second.
    pub(crate) fn last_t(&self) -> i64 {
        self.points
            .back()
            .map_or(self.current.t - 1, |p| p.second.t)
    }

    /// The last closed seconds (fewer just after a start), and how many,
    /// as the divisor of a rate (at least 1).
    fn window(&self) -> (Vec<&Second>, f64) {
        let window: Vec<&Second> = self
            .points
            .iter()
            .rev()
            .take(GOLDEN_WINDOW_SECS)
            .map(|p| &p.second)
            .collect();
        #[allow(clippy::cast_precision_loss)]
        let secs = window.len().max(1) as f64;
        (window, secs)
    }

    /// Rates and percentiles over the last closed seconds (fewer just after
    /// a start).
    pub(crate) fn ingress_golden(&self) -> IngressGolden {
        let (window, secs) = self.window();
        let sum = |f: fn(&Second) -> u64| window.iter().map(|p| f(p)).sum::<u64>();
        #[allow(clippy::cast_precision_loss)]
        let per_sec = |n: u64| round(n as f64 / secs, 1);
        let answered = sum(|p| p.answered);
        let errors = sum(|p| p.errors);
        let mut merged: Vec<u64> = Vec::new();
        for b in &self.recent_latency {
            merged.resize(merged.len().max(b.len()), 0);
            for (m, v) in merged.iter_mut().zip(b) {
                *m += v;
            }
        }
        let q = |q| quantile_ms(&self.bounds, &merged, q);
        #[allow(clippy::cast_precision_loss)]
        IngressGolden {
            tx_per_sec: per_sec(answered),
            error_pct: (answered > 0).then(|| round(errors as f64 * 100.0 / answered as f64, 2)),
            p50_ms: q(0.5),
            p95_ms: q(0.95),
            p99_ms: q(0.99),
            approved_per_sec: per_sec(sum(|p| p.approved)),
            flagged_per_sec: per_sec(sum(|p| p.flagged)),
            rejected_per_sec: per_sec(sum(|p| p.rejected)),
        }
    }

    /// Verdicts applied and sends retried per second over the window.
    pub(crate) fn link_rates(&self) -> (f64, f64) {
        let (window, secs) = self.window();
        let verdicts: u64 = window
            .iter()
            .map(|p| p.approved + p.flagged + p.rejected)
            .sum();
        let retries: u64 = window.iter().map(|p| p.retries).sum();
        #[allow(clippy::cast_precision_loss)]
        (
            round(verdicts as f64 / secs, 1),
            round(retries as f64 / secs, 1),
        )
    }
}

/// The `q` quantile of `buckets` (per bucket, the last above the highest
/// bound) in milliseconds, interpolated within its bucket as Prometheus's
/// `histogram_quantile` does; `None` without observations.
pub(crate) fn quantile_ms(bounds: &[f64], buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 || bounds.is_empty() {
        return None;
    }
    #[allow(clippy::cast_precision_loss)]
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        #[allow(clippy::cast_precision_loss)]
        if (below + n) as f64 >= rank && n > 0 {
            let Some(&upper) = bounds.get(i) else {
                // Above the highest bound: that bound is all that is known.
                return Some(round(bounds[bounds.len() - 1] * 1000.0, 3));
            };
            let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
            let within = (rank - below as f64) / n as f64;
            return Some(round((lower + (upper - lower) * within) * 1000.0, 3));
        }
        below += n;
    }
    Some(round(bounds[bounds.len() - 1] * 1000.0, 3))
}

fn round(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

/// What the dashboard remembers of a publisher between its statuses.
#[derive(Debug, Default)]
pub(crate) struct PublisherLive {
    pub(crate) breaker: String,
    pub(crate) breaker_since_unix_ms: i64,
    prev: Option<Counters>,
    /// Answered and errors, as last sent (with every other status only).
    prev_answers: Option<(u64, u64)>,
    /// The last latency histogram, per bucket.
    prev_latency: Option<Vec<u64>>,
    /// Verdicts applied per second, last seconds.
    recent: VecDeque<(i64, u64)>,
    pub(crate) mesh: Option<MeshStatus>,
    /// Its place among the ingress replicas, as last sent.
    pub(crate) cluster: Option<txmesh_proto::v1::ClusterStatus>,
}

#[derive(Debug, Clone, Copy)]
struct Counters {
    transitions: u64,
    shed: u64,
    retries: u64,
}

/// `cur - prev`, or `cur` when the counter went back (the publisher
/// restarted and counts from zero).
fn increase(prev: u64, cur: u64) -> u64 {
    if cur >= prev {
        cur - prev
    } else {
        cur
    }
}

impl PublisherLive {
    /// Takes in `status`: what changed since the last one goes into
    /// `history`'s current second. The first status after a (dashboard)
    /// start is only a baseline.
    pub(crate) fn observe(
        &mut self,
        status: &PublisherStatus,
        breaker: &str,
        now_ms: i64,
        history: &mut History,
    ) {
        if self.breaker != breaker {
            breaker.clone_into(&mut self.breaker);
            self.breaker_since_unix_ms = now_ms;
        }
        let cur = Counters {
            transitions: status.breaker_transitions_total,
            shed: status.shed_total,
            retries: status.retries_total,
        };
        let s = &mut history.current;
        if let Some(prev) = self.prev {
            s.transitions += increase(prev.transitions, cur.transitions);
            s.shed += increase(prev.shed, cur.shed);
            s.retries += increase(prev.retries, cur.retries);
        }
        self.prev = Some(cur);
        // Sent with some statuses only: the first one is the baseline.
        if let Some(a) = &status.answers {
            if let Some((answered, errors)) = self.prev_answers {
                s.answered += increase(answered, a.answered);
                s.errors += increase(errors, a.errors);
            }
            self.prev_answers = Some((a.answered, a.errors));
        }
        if let Some(h) = &status.latency {
            self.observe_latency(h, history);
        }
        if let Some(mesh) = &status.mesh {
            self.mesh = Some(mesh.clone());
        }
        if let Some(cluster) = &status.cluster {
            self.cluster = Some(cluster.clone());
        }
    }

    fn observe_latency(&mut self, h: &LatencyHistogram, history: &mut History) {
        let cur = per_bucket(&h.cumulative, h.count);
        if let Some(prev) = &self.prev_latency {
            // Fewer observations than before: the ingress restarted.
            let restarted =
                prev.len() != cur.len() || cur.iter().sum::<u64>() < prev.iter().sum::<u64>();
            let delta: Vec<u64> = if restarted {
                cur.clone()
            } else {
                cur.iter()
                    .zip(prev)
                    .map(|(c, p)| c.saturating_sub(*p))
                    .collect()
            };
            history.add_latency(&h.bounds_seconds, &delta);
        }
        self.prev_latency = Some(cur);
    }

    /// Counts `n` verdicts applied in second `t`.
    pub(crate) fn note_verdicts(&mut self, t: i64, n: u64) {
        match self.recent.back_mut() {
            Some((s, c)) if *s == t => *c += n,
            _ => self.recent.push_back((t, n)),
        }
        while self.recent.len() > GOLDEN_WINDOW_SECS + 1 {
            self.recent.pop_front();
        }
    }

    /// Verdicts applied per second over the closed seconds of the window.
    pub(crate) fn verdicts_per_sec(&self, now_s: i64) -> f64 {
        let window = i64::try_from(GOLDEN_WINDOW_SECS).unwrap_or(i64::MAX);
        let n: u64 = self
            .recent
            .iter()
            .filter(|(t, _)| *t < now_s && *t >= now_s - window)
            .map(|(_, n)| n)
            .sum();
        #[allow(clippy::cast_precision_loss)]
        round(n as f64 / GOLDEN_WINDOW_SECS as f64, 1)
    }
}

/// A cumulative histogram as counts per bucket, the last one above the
/// highest bound.
fn per_bucket(cumulative: &[u64], count: u64) -> Vec<u64> {
    let mut below = 0;
    let mut buckets: Vec<u64> = cumulative
        .iter()
        .map(|&c| {
            let n = c.saturating_sub(below);
            below = c;
            n
        })
        .collect();
    buckets.push(count.saturating_sub(below));
    buckets
}

#[cfg(test)]
#[path = "live/tests.rs"]
mod tests;
