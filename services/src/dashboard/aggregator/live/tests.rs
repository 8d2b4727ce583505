//! The live figures from a publisher's cumulative counters: baselines,
//! restarts, quantiles, and the bounded history.

use super::*;

const BOUNDS: [f64; 3] = [0.001, 0.002, 0.004];

#[test]
fn quantiles_interpolate_within_the_bucket_like_prometheus() {
    // 100 observations: 50 under 1 ms, 40 in 1–2 ms, 10 in 2–4 ms.
    let buckets = [50, 40, 10, 0];
    assert_eq!(quantile_ms(&BOUNDS, &buckets, 0.5), Some(1.0));
    assert_eq!(quantile_ms(&BOUNDS, &buckets, 0.7), Some(1.5));
    assert_eq!(quantile_ms(&BOUNDS, &buckets, 0.95), Some(3.0));
    assert_eq!(quantile_ms(&BOUNDS, &[0, 0, 0, 0], 0.5), None);
    // Above the highest bound: the bound.
    assert_eq!(quantile_ms(&BOUNDS, &[0, 0, 0, 5], 0.99), Some(4.0));
}

fn status(cumulative: [u64; 3], count: u64, answered: u64, transitions: u64) -> PublisherStatus {
    PublisherStatus {
        breaker_transitions_total: transitions,
        latency: Some(LatencyHistogram {
            bounds_seconds: BOUNDS.to_vec(),
            cumulative: cumulative.to_vec(),
            count,
            sum_seconds: 0.0,
        }),
        answers: Some(txmesh_proto::v1::AnswerTotals {
            answered,
            errors: 0,
        }),
        ..PublisherStatus::default()
    }
}

#[test]
fn a_publishers_cumulative_counters_become_what_happened_each_second() {
    let mut history = History::new(60, 100);
    let mut live = PublisherLive::default();
    // The first status is a baseline: a publisher's totals since it
    // started are not a spike in the dashboard's first second.
    live.observe(&status([10, 10, 10], 10, 10, 4), "CLOSED", 0, &mut history);
    history.roll(101);
    live.observe(
        &status([60, 100, 110], 110, 112, 6),
        "OPEN",
        1,
        &mut history,
    );
    history.roll(102);
    let c = history.columns_after(0);
    assert_eq!(c.t, vec![100, 101]);
    assert_eq!(c.transitions, vec![0, 2]);
    assert_eq!(c.p50_ms, vec![None, Some(1.0)]);
    assert_eq!(live.breaker_since_unix_ms, 1);
    // 102 answered in the 2 closed seconds of the window.
    assert_eq!(history.ingress_golden().tx_per_sec, 51.0);
    // A status without the extras changes nothing of them.
    let bare = PublisherStatus {
        breaker_transitions_total: 6,
        ..PublisherStatus::default()
    };
    live.observe(&bare, "OPEN", 1, &mut history);
    assert_eq!(history.current.answered, 0);
    // A restarted publisher counts from zero: its new counts are new.
    live.observe(&status([5, 5, 5], 5, 5, 1), "CLOSED", 2, &mut history);
    assert_eq!(history.current.answered, 5);
    assert_eq!(history.current.latency, vec![5, 0, 0, 0]);
}

#[test]
fn the_first_answers_are_a_baseline_even_after_statuses_without_them() {
    let mut history = History::new(60, 100);
    let mut live = PublisherLive::default();
    live.observe(&PublisherStatus::default(), "CLOSED", 0, &mut history);
    live.observe(
        &status([10, 10, 10], 10, 5_000, 0),
        "CLOSED",
        0,
        &mut history,
    );
    assert_eq!(
        history.current.answered, 0,
        "5,000 answered before: not this second's"
    );
    live.observe(
        &status([12, 12, 12], 12, 5_012, 0),
        "CLOSED",
        0,
        &mut history,
    );
    assert_eq!(history.current.answered, 12);
}

#[test]
fn empty_seconds_are_zero_points_and_the_history_is_bounded() {
    let mut history = History::new(60, 0);
    history.current.approved = 3;
    history.roll(1000);
    let c = history.columns_after(i64::MIN);
    assert_eq!(c.t.len(), 60);
    assert_eq!(c.t.last(), Some(&999));
    assert!(
        c.approved.iter().all(|&n| n == 0),
        "the old second fell out"
    );
}
