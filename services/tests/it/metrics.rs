//! Each service's `/metrics` after a run: the families operators and the
//! chaos probes read are there (labelled series from the start), the
//! values agree with what txgen saw, and the exposition passes `promtool
//! check metrics` (a real parser; required when TXMESH_REQUIRE_PROMTOOL is
//! set, as in CI).

use std::{io::Write, process::Stdio, time::Duration};

use crate::support::*;

fn promtool_check(name: &str, exposition: &str) {
    let spawned = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            assert!(
                std::env::var_os("TXMESH_REQUIRE_PROMTOOL").is_none(),
                "promtool is required here: {e}"
            );
            // Past the test harness's capture: a skip is seen in every run.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: promtool is not installed; the {name} exposition was not linted \
                 (TXMESH_REQUIRE_PROMTOOL=1 makes this a failure, as in CI)"
            );
            return;
        }
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool ran");
    assert!(
        out.status.success(),
        "promtool rejects the {name} exposition:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[actix_rt::test]
async fn metrics_cover_the_pipeline_and_pass_promtool() {
    let dir = TempDir::new("metrics");
    let mut config = test_config(&dir.0);
    config.txgen.rate = 0;
    config.txgen.count = 3_000;
    let (dash, ing, _machine) = start_system(&mut config).await;
    let report = run_txgen(&config).await;
    assert!(ing.wait_drained(Duration::from_secs(10)).await);

    let (status, body) = scrape(&config, "operator", "ingress", ing.metrics_addr).await;
    assert!(status.contains("200"), "{status}");
    assert_eq!(
        value(&body, "txmesh_transactions_received_total"),
        report.sent as f64
    );
    let answered: f64 = ["approved", "flagged", "rejected", "error"]
        .iter()
        .map(|s| {
            value(
                &body,
                &format!("txmesh_transactions_answered_total{{status=\"{s}\"}}"),
            )
        })
        .sum();
    assert_eq!(answered, report.answered as f64);
    assert_eq!(value(&body, "txmesh_verdicts_in_flight"), 0.0);
    assert_eq!(value(&body, "txmesh_shards"), 2.0);
    assert_eq!(
        value(&body, "txmesh_screening_latency_seconds_count"),
        (report.answered - report.by_error.values().sum::<u64>()) as f64
            - body_replays(&report) as f64
    );
    assert!(
        value(
            &body,
            "txmesh_verdict_reasons_total{reason=\"HIGH_AMOUNT\"}"
        ) > 0.0
    );
    assert_eq!(
        value(&body, "txmesh_transaction_errors_total{code=\"poison\"}"),
        0.0
    );
    assert_eq!(
        value(&body, "txmesh_account_restarts_total{shard=\"0\"}"),
        0.0
    );
    assert!(value(&body, "txmesh_active_accounts{shard=\"1\"}") > 0.0);
    assert_eq!(
        value(&body, "txmesh_publisher_breaker_state{state=\"closed\"}"),
        1.0
    );
    assert_eq!(
        value(&body, "txmesh_publisher_breaker_state{state=\"open\"}"),
        0.0
    );
    assert_eq!(value(&body, "txmesh_publisher_outbox_depth"), 0.0);
    assert!(value(&body, "txmesh_publisher_acks_total") > 0.0);
    assert_eq!(
        value(
            &body,
            "txmesh_publisher_dropped_total{reason=\"journal_full\"}"
        ),
        0.0
    );
    assert_eq!(value(&body, "txmesh_build_info{version=\"0.1.0\"}"), 1.0);
    assert!(body.contains("txmesh_screening_latency_seconds_bucket{le=\"0.0001\"}"));
    promtool_check("ingress", &body);

    let (status, body) = scrape(&config, "operator", "dashboard", dash.https_addr).await;
    assert!(status.contains("200"), "{status}");
    assert_eq!(value(&body, "txmesh_websocket_sessions"), 0.0);
    assert_eq!(value(&body, "txmesh_websocket_dropped_messages_total"), 0.0);
    promtool_check("dashboard", &body);

    ing.stop(Duration::from_secs(5)).await;
    dash.stop().await;
}

/// Replayed verdicts are answered but not timed (their time is the
/// original's).
fn body_replays(report: &txmesh::txgen::TxgenReport) -> u64 {
    report.injected.get("replay").map_or(0, |c| c.detected)
}
