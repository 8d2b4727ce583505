//! The dashboard goes away in the middle of a run and comes back: the
//! publisher's breaker opens and closes again, and afterwards the
//! dashboard's totals equal the ingress's, nothing lost or counted twice.

use std::time::Duration;

use crate::support::*;
use txmesh::dashboard;
use txmesh_actors::publisher::BreakerState;

#[actix_rt::test]
async fn dashboard_outage_opens_the_breaker_and_loses_nothing() {
    let dir = TempDir::new("outage");
    let mut config = test_config(&dir.0);
    config.txgen.rate = 1_500;
    config.txgen.duration_secs = 8;
    let (dash, ing, _machine) = start_system(&mut config).await;

    let (load, progress) = spawn_txgen_watched(&config);
    answered_at_least(&progress, 1_500).await;
    let grpc_addr = dash.grpc_addr;
    dash.stop().await;

    until(
        "the breaker opens while the dashboard is down",
        Duration::from_secs(5),
        || ing.publisher().breaker == BreakerState::Open,
    )
    .await;
    until(
        "verdicts wait in the outbox",
        Duration::from_secs(5),
        || ing.publisher().outbox_depth > 1_000,
    )
    .await;

    // The dashboard comes back on the same address with its saved state.
    config.dashboard.grpc_listen = grpc_addr;
    let dash = dashboard::start(&config).await.expect("dashboard restarts");

    let report = load.await.expect("txgen task").expect("txgen runs");
    assert_eq!(report.answered, report.sent);
    assert_eq!(report.errors, 0);
    assert!(
        ing.wait_drained(Duration::from_secs(30)).await,
        "outbox drained: {:?}",
        ing.publisher()
    );
    let publisher = ing.publisher();
    assert_eq!(
        publisher.breaker,
        BreakerState::Closed,
        "breaker closed again"
    );
    assert!(
        publisher.breaker_transitions >= 3,
        "closed -> open -> half-open -> closed: {publisher:?}"
    );
    assert_eq!(publisher.shed_total, 0);

    let totals = dash.snapshot().await.expect("snapshot").totals;
    assert_eq!(ing.counters.verdicts(), report.answered);
    assert_eq!(
        totals.verdicts, report.answered,
        "nothing lost, nothing counted twice"
    );

    ing.stop(Duration::from_secs(5)).await;
    dash.stop().await;
}

#[actix_rt::test]
async fn a_dashboard_that_refuses_the_publisher_is_reported_not_retried_as_an_outage() {
    let dir = TempDir::new("refused");
    let mut config = test_config(&dir.0);
    // The dashboard admits some other identity, not the ingress.
    config.authz.publish = vec!["operator".into()];
    config.actors.publisher.breaker_open_max_ms = 60_000;
    config.txgen.count = 500;
    config.txgen.rate = 0;
    let (dash, ing, _machine) = start_system(&mut config).await;
    let report = run_txgen(&config).await;
    assert_eq!(report.answered, report.sent, "screening goes on");
    until(
        "the publisher reports the refusal",
        Duration::from_secs(10),
        || ing.publisher().refused,
    )
    .await;
    // A refusal waits the breaker's longest pause, not the backoff's
    // fast retries: one attempt, not dozens.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let publisher = ing.publisher();
    assert_eq!(publisher.refusals_total, 1, "{publisher:?}");
    assert_eq!(
        publisher.outbox_depth + publisher.unacked,
        report.answered,
        "every verdict waits to be delivered: {publisher:?}"
    );
    let (_, body) = scrape(&config, "operator", "ingress", ing.metrics_addr).await;
    assert_eq!(value(&body, "txmesh_publisher_refused"), 1.0);
    assert_eq!(value(&body, "txmesh_publisher_refusals_total"), 1.0);
    ing.stop(Duration::from_millis(500)).await;
    dash.stop().await;
}
