//! The Prometheus text format, read just enough for probes: samples with
//! their labels, sums over a selector, and histogram quantiles from the
//! cumulative `_bucket` series (as `histogram_quantile` computes them).

use std::collections::BTreeMap;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// One scrape.
#[derive(Debug, Clone, Default)]
pub struct MetricsText {
    pub samples: Vec<Sample>,
}

impl MetricsText {
    /// Parses an exposition; lines it cannot read are skipped.
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(parse_line)
            .collect();
        Self { samples }
    }

    /// The sum of the series of `name` whose labels include `labels`;
    /// `None` when there is none.
    pub fn sum(&self, name: &str, labels: &BTreeMap<String, String>) -> Option<f64> {
        let mut found = false;
        let total = self
            .samples
            .iter()
            .filter(|s| s.name == name && matches(s, labels))
            .inspect(|_| found = true)
            .map(|s| s.value)
            .sum();
        found.then_some(total)
    }

    /// The cumulative bucket counts of histogram `name` (summed over the
    /// series matching `labels`), by upper bound.
    pub fn buckets(&self, name: &str, labels: &BTreeMap<String, String>) -> Vec<(f64, f64)> {
        let bucket = format!("{name}_bucket");
        let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for s in self
            .samples
            .iter()
            .filter(|s| s.name == bucket && matches(s, labels))
        {
            let Some(le) = s.labels.get("le").and_then(|v| parse_value(v)) else {
                continue;
            };
            by_le.entry(le.to_bits()).or_insert((le, 0.0)).1 += s.value;
        }
        let mut out: Vec<(f64, f64)> = by_le.into_values().collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }
}

/// The `q` quantile of the observations between two scrapes' buckets
/// (`later` minus `earlier`), interpolated within the bucket like
/// Prometheus's `histogram_quantile`; `None` without observations.
pub(super) fn quantile(earlier: &[(f64, f64)], later: &[(f64, f64)], q: f64) -> Option<f64> {
    let counts: Vec<(f64, f64)> = later
        .iter()
        .map(|&(le, c)| {
            let before = earlier.iter().find(|e| e.0 == le).map_or(0.0, |e| e.1);
            (le, (c - before).max(0.0))
        })
        .collect();
    let total = counts.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, c) in &counts {
        if c >= rank {
            if le.is_infinite() {
                // Past the last finite bound: the best estimate is that bound.
                return Some(lower.0);
            }
            let in_bucket = c - lower.1;
            let share = if in_bucket > 0.0 {
                (rank - lower.1) / in_bucket
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * share);
        }
        lower = (le, c);
    }
    Some(lower.0)
}

/// Whether `sample` has every label of `labels`; a value written `!x`
/// matches any value but x (PromQL's `!=`).
fn matches(sample: &Sample, labels: &BTreeMap<String, String>) -> bool {
    labels.iter().all(|(k, v)| match v.strip_prefix('!') {
        Some(not) => sample.labels.get(k).is_some_and(|got| got != not),
        None => sample.labels.get(k) == Some(v),
    })
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        other => other.parse().ok(),
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let (head, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}')?;
            (
                (&line[..open], Some(&line[open + 1..close])),
                &line[close + 1..],
            )
        }
        None => {
            let space = line.find(' ')?;
            ((&line[..space], None), &line[space..])
        }
    };
    let value = parse_value(rest.split_whitespace().next()?)?;
    let mut labels = BTreeMap::new();
    if let Some(body) = head.1 {
        for pair in split_labels(body) {
            let (k, v) = pair.split_once('=')?;
            let v = v.trim().trim_matches('"').replace("\\\"", "\"");
            labels.insert(k.trim().to_owned(), v);
        }
    }
    Some(Sample {
        name: head.0.trim().to_owned(),
        labels,
        value,
    })
}

/// Splits `a="x",b="y,z"` at the commas outside quotes.
fn split_labels(body: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in body.char_indices() {
        match c {
            '\\' if quoted => escaped = !escaped,
            '"' if !escaped => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&body[start..i]);
                start = i + 1;
            }
            _ => escaped = false,
        }
        if c != '\\' {
            escaped = false;
        }
    }
    if start < body.len() {
        parts.push(&body[start..]);
    }
    parts.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP x y
txmesh_transactions_answered_total{outcome="approved"} 90
txmesh_transactions_answered_total{outcome="error"} 10
txmesh_build_info{version="0.1.0",commit="a,b"} 1
txmesh_screening_latency_seconds_bucket{le="0.001"} 50
txmesh_screening_latency_seconds_bucket{le="0.01"} 90
txmesh_screening_latency_seconds_bucket{le="+Inf"} 100
plain 3.5
"#;

    #[test]
    fn sums_select_by_labels() {
        let m = MetricsText::parse(TEXT);
        let none = BTreeMap::new();
        assert_eq!(
            m.sum("txmesh_transactions_answered_total", &none),
            Some(100.0)
        );
        let errors = BTreeMap::from([("outcome".to_owned(), "error".to_owned())]);
        assert_eq!(
            m.sum("txmesh_transactions_answered_total", &errors),
            Some(10.0)
        );
        let verdicts = BTreeMap::from([("outcome".to_owned(), "!error".to_owned())]);
        assert_eq!(
            m.sum("txmesh_transactions_answered_total", &verdicts),
            Some(90.0)
        );
        assert_eq!(m.sum("plain", &none), Some(3.5));
        assert_eq!(m.sum("absent", &none), None);
        let commit = BTreeMap::from([("commit".to_owned(), "a,b".to_owned())]);
        assert_eq!(m.sum("txmesh_build_info", &commit), Some(1.0));
    }

    #[test]
    fn quantiles_interpolate_within_buckets_over_an_interval() {
        let m = MetricsText::parse(TEXT);
        let b = m.buckets("txmesh_screening_latency_seconds", &BTreeMap::new());
        assert_eq!(b.len(), 3);
        // Rank 50 of 100 is the top of the first bucket.
        assert_eq!(quantile(&[], &b, 0.5), Some(0.001));
        // Rank 70: 20 of the 40 in (0.001, 0.01].
        let q = quantile(&[], &b, 0.7).expect("observations");
        assert!((q - 0.0055).abs() < 1e-9, "{q}");
        // Past the last finite bound: that bound.
        assert_eq!(quantile(&[], &b, 0.99), Some(0.01));
        // Over an interval: only what was observed since.
        let earlier = vec![(0.001, 50.0), (0.01, 50.0), (f64::INFINITY, 50.0)];
        // 40 in (0.001, 0.01] and 10 above: rank 25 is 25/40 into the bucket.
        let q = quantile(&earlier, &b, 0.5).expect("observations");
        assert!((q - 0.006625).abs() < 1e-9, "{q}");
        assert_eq!(quantile(&b, &b, 0.5), None);
    }
}
