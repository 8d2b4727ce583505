//! SIGTERM to the ingress in the middle of a txgen run (a rolling
//! restart): the ingress tells each stream it is draining, answers
//! everything already sent, flushes its publisher to the dashboard and
//! exits 0; txgen stops sending on that stream, gets every answer, opens a
//! stream to the ingress that takes its place and runs to its duration;
//! the dashboard's totals equal what txgen was answered.

#[path = "support/system.rs"]
mod support;

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use support::*;
use tonic_health::pb::health_check_response::ServingStatus;

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

#[actix_rt::test]
async fn sigterm_drains_the_ingress_and_txgen_reconnects_to_its_successor_losing_nothing() {
    let dir = TempDir::new("sigterm");
    let mut config = test_config(&dir.0);
    let dash = txmesh::dashboard::start(&config).await.expect("dashboard");
    let grpc = free_port();
    let metrics = free_port();
    let set = |k: &str, v: String| ["--set".to_owned(), format!("{k}={v}")];
    let state_dir = config.state_dir.display().to_string();
    let dashboard_addr = dash.grpc_addr.to_string();
    let start_ingress = || {
        Command::new(env!("CARGO_BIN_EXE_txmesh"))
            .arg("ingress")
            .args(set("state_dir", state_dir.clone()))
            .args(set("ingress.listen", grpc.to_string()))
            .args(set("ingress.metrics_listen", metrics.to_string()))
            .args(set("ingress.dashboard_addr", dashboard_addr.clone()))
            .args(set("actors.shards.count", "2".into()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ingress starts")
    };
    let mut child = start_ingress();
    let mut ready = false;
    for _ in 0..100 {
        let status = txmesh::health::check(
            &config,
            grpc,
            "txgen",
            "ingress",
            "",
            Duration::from_secs(1),
        )
        .await;
        if matches!(status, Ok(ServingStatus::Serving)) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "the ingress process became ready");

    config.txgen.target = grpc;
    config.txgen.rate = 2_000;
    config.txgen.duration_secs = 8;
    let load = spawn_txgen(&config);
    // A rolling restart: SIGTERM once the run is under way, then a new
    // ingress on the same address at once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("waited")
        .expect("exit status");
    assert!(exit.success(), "the ingress drained and exited 0: {exit:?}");
    let mut restarted = start_ingress();

    let report = tokio::time::timeout(Duration::from_secs(60), load)
        .await
        .expect("txgen finished its run")
        .expect("txgen task")
        .expect("txgen runs");
    println!("{}", report.summary());
    assert!(
        report.ended_early.is_none() && report.duration_s >= 8.0,
        "a rolling restart is not the end of a load run: {}",
        report.summary()
    );
    assert!(report.reconnects >= 1, "{}", report.summary());
    assert!(report.sent >= 14_000, "{}", report.summary());
    assert_eq!(report.unanswered, 0, "{}", report.summary());
    assert_eq!(report.answered, report.sent);
    assert_eq!(report.errors, 0, "{}", report.summary());
    let _ = Command::new("kill")
        .args(["-TERM", &restarted.id().to_string()])
        .status();
    let exit = tokio::task::spawn_blocking(move || restarted.wait())
        .await
        .expect("waited")
        .expect("exit status");
    assert!(exit.success(), "the second ingress drained too: {exit:?}");
    let totals = dash.snapshot().await.expect("snapshot").totals;
    assert_eq!(
        totals.verdicts, report.answered,
        "the publisher flushed every verdict before the ingress exited"
    );
    dash.stop().await;
}

#[actix_rt::test]
async fn stopping_the_dashboard_tells_browsers_it_is_going_away() {
    use futures_util::StreamExt;
    let dir = TempDir::new("goingaway");
    let config = test_config(&dir.0);
    let dash = txmesh::dashboard::start(&config).await.expect("dashboard");
    let tls = https_as(&config, "operator", dash.https_addr)
        .await
        .expect("operator connects");
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/ws", tls)
        .await
        .expect("WebSocket upgrade");
    let first = ws.next().await.expect("a message").expect("not an error");
    assert!(first.is_text(), "the snapshot comes first");
    let stopping = tokio::spawn(dash.stop());
    let code = close_code(&mut ws, Duration::from_secs(10)).await;
    assert_eq!(code, Some(1001), "going away, not a dropped connection");
    stopping.await.expect("dashboard stopped");
}
