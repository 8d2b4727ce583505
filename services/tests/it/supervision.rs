//! Account actors that crash in a share of their evaluations: supervision
//! restarts them with their history, txgen retries the failed transactions,
//! and every transaction is answered exactly once, over real mTLS.

use std::{sync::Arc, time::Duration};

use crate::support::*;
use txmesh_actors::{account::EvaluationHook, RouterOptions};
use txmesh_proto::v1::Transaction;

#[actix_rt::test]
async fn injected_panics_leave_every_transaction_answered_exactly_once() {
    // Keep the injected panics out of the test output; others still print.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let injected = info
            .payload()
            .downcast_ref::<&str>()
            .is_some_and(|m| *m == "injected evaluation failure");
        if !injected {
            default_hook(info);
        }
    }));
    let dir = TempDir::new("supervision");
    let mut config = test_config(&dir.0);
    config.txgen.rate = 0;
    config.txgen.count = 6_000;
    config.txgen.max_in_flight = 8;
    // This run is about restarts and retries: an account that crashes four
    // times within 10 s would be quarantined (its transactions REJECTED,
    // which the actor tests cover), so allow more restarts here.
    config.actors.supervision.max_restarts = 100;
    // One evaluation in 50 panics, whatever the transaction: a retry
    // usually succeeds, so this exercises restarts rather than poison.
    let hook: EvaluationHook = Arc::new(|_txn: &Transaction| {
        if rand::random::<f64>() < 0.02 {
            panic!("injected evaluation failure");
        }
    });
    let options = RouterOptions {
        hook: Some(hook),
        ..RouterOptions::default()
    };
    let (dash, ing, _machine) = start_system_with(&mut config, options).await;

    let report = run_txgen(&config).await;
    println!("{}", report.summary());
    let screening = ing.screening().clone();
    let restarts = screening.total(|s| &s.restarts);
    assert!(restarts > 0, "panics were injected and supervised");
    assert_eq!(report.unanswered, 0, "{}", report.summary());
    assert_eq!(report.answered, report.sent);
    assert!(
        report.retries > 0,
        "the crashed transactions were retried: {}",
        report.summary()
    );
    assert_eq!(report.screened_twice, 0, "{}", report.summary());
    // A transaction that crashed on every allowed attempt ends as POISON,
    // an explicit answer; nothing else may be left as an error.
    let poison = report.by_error.get("POISON").copied().unwrap_or(0);
    assert_eq!(report.errors, poison, "{}", report.summary());
    assert_eq!(screening.total(|s| &s.poison), poison);
    for (name, c) in &report.injected {
        assert_eq!(c.detected, c.sent, "{name} detected despite the crashes");
    }

    assert!(ing.wait_drained(Duration::from_secs(20)).await);
    let snapshot = dash.snapshot().await.expect("snapshot");
    assert_eq!(snapshot.totals.verdicts, ing.counters.verdicts());
    assert_eq!(ing.counters.verdicts(), report.answered - report.errors);
    // The dashboard shows the restarts per shard.
    let shown: u64 = snapshot
        .publishers
        .values()
        .flat_map(|p| p.shards.iter())
        .map(|s| s.restarts_total)
        .sum();
    assert!(shown > 0, "restarts reach the dashboard");
    ing.stop(Duration::from_secs(5)).await;
    dash.stop().await;
}
