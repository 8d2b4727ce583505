//! SIGTERM to the ingress in the middle of a txgen run (a rolling
//! restart): the ingress tells each stream it is draining, answers
//! everything already sent, flushes its publisher to the dashboard and
//! exits 0; txgen stops sending on that stream, gets every answer, opens a
//! stream to the ingress that takes its place and runs to its duration;
//! the dashboard's totals equal what txgen was answered.

use std::{process::Command, time::Duration};

use crate::support::*;

#[actix_rt::test]
async fn sigterm_drains_the_ingress_and_txgen_reconnects_to_its_successor_losing_nothing() {
    let dir = TempDir::new("sigterm");
    let mut config = test_config(&dir.0);
    let _machine = machine_shared().await;
    let dash = txmesh::dashboard::start(&config).await.expect("dashboard");
    let sets = [
        ("state_dir", config.state_dir.display().to_string()),
        ("ingress.dashboard_addr", dash.grpc_addr.to_string()),
        ("actors.shards.count", "2".to_owned()),
    ];
    let (mut child, grpc) = spawn_ingress(&sets, "127.0.0.1:0".parse().expect("addr"));
    wait_serving(&config, grpc, "ingress").await;

    config.txgen.target = grpc.into();
    config.txgen.rate = 2_000;
    config.txgen.duration_secs = 8;
    let (load, progress) = spawn_txgen_watched(&config);
    // A rolling restart: SIGTERM once the run is under way, then a new
    // ingress on the same address at once.
    answered_at_least(&progress, 3_000).await;
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
    // The successor takes the same address, as a restarted pod keeps its
    // Service.
    let (mut restarted, _) = spawn_ingress(&sets, grpc);

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
