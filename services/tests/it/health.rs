//! Readiness over grpc.health.v1 and `txmesh health`, the mTLS probe:
//! SERVING once ready, NOT_SERVING from the start of shutdown, and a
//! non-zero exit when the listener is gone.

use std::{process::Command, time::Duration};

use crate::support::*;
use tonic_health::pb::health_check_response::ServingStatus;
use txmesh::cli::health::check;

const WAIT: Duration = Duration::from_secs(3);

fn probe(config: &txmesh::config::TxmeshConfig, target: std::net::SocketAddr) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_txmesh"))
        .args([
            "health",
            "--target",
            &target.to_string(),
            "--server",
            "ingress",
        ])
        .args([
            "--set",
            &format!("state_dir={}", config.state_dir.display()),
        ])
        .output()
        .expect("txmesh runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    )
}

#[actix_rt::test]
async fn health_reports_readiness_over_mtls_and_the_probe_exits_accordingly() {
    let dir = TempDir::new("health");
    let mut config = test_config(&dir.0);
    let (dash, ing, _machine) = start_system(&mut config).await;

    for (target, server, service) in [
        (ing.local_addr, "ingress", ""),
        (ing.local_addr, "ingress", "txmesh.v1.Ingress"),
        (ing.local_addr, "ingress", "simetrik.ReconciliationService"),
        (dash.grpc_addr, "dashboard", ""),
        (dash.grpc_addr, "dashboard", "txmesh.v1.Dashboard"),
    ] {
        // Any valid identity may ask; here the operator's.
        let status = check(&config, target, "operator", server, service, WAIT)
            .await
            .expect("answered");
        assert_eq!(status, ServingStatus::Serving, "{server} {service:?}");
    }
    assert!(
        check(
            &config,
            ing.local_addr,
            "operator",
            "ingress",
            "no.such.Service",
            WAIT
        )
        .await
        .is_err(),
        "an unknown service is an error, not SERVING"
    );
    // The pod's own probe: its own certificate, exit status 0.
    let addr = ing.local_addr;
    let probe_config = config.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || probe(&probe_config, addr))
        .await
        .expect("probe");
    assert!(ok, "SERVING exits 0: {out}");
    assert_eq!(out, "SERVING");

    // CancellationToken starts with NOT_SERVING.
    ing.readiness.not_serving().await;
    let status = check(&config, ing.local_addr, "ingress", "ingress", "", WAIT)
        .await
        .expect("still answering while draining");
    assert_eq!(status, ServingStatus::NotServing);
    let probe_config = config.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || probe(&probe_config, addr))
        .await
        .expect("probe");
    assert!(!ok, "NOT_SERVING exits non-zero: {out}");

    ing.stop(Duration::from_secs(5)).await;
    let probe_config = config.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || probe(&probe_config, addr))
        .await
        .expect("probe");
    assert!(!ok, "a stopped ingress fails the probe: {out}");
    assert!(out.starts_with("UNREACHABLE"), "{out}");
    dash.stop().await;
}
