//! What a client with a valid certificate may hold: at most
//! `connections.max_per_identity` connections (one more is closed right
//! after its handshake, and counted), and a Screen stream that sends
//! nothing with nothing in flight is closed after
//! `ingress.stream_idle_timeout_ms` with a status that says so; a
//! connection with no stream for `connections.idle_timeout_ms` is closed,
//! one with a stream open is not.

use std::time::Duration;

use crate::support::*;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
use txmesh_proto::v1::{ingress_client::IngressClient, ScreenRequest};

async fn healthy(channel: tonic::transport::Channel) -> Result<(), tonic::Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(drop)
}

#[actix_rt::test]
async fn an_identity_holds_at_most_its_connection_limit() {
    let dir = TempDir::new("conn-limit");
    let mut config = test_config(&dir.0);
    config.connections.max_per_identity = 3;
    let (dash, ing, _machine) = start_system(&mut config).await;
    let addr = ing.local_addr;
    // Each channel is its own connection.
    let mut held = Vec::new();
    for _ in 0..3 {
        let channel = channel_as(&config, "txgen", "ingress", addr);
        healthy(channel.clone()).await.expect("within the limit");
        held.push(channel);
    }
    let txgen_id = spiffe(&config, "txgen").to_string();
    assert_eq!(ing.connections().open(&txgen_id), 3);

    let refused = healthy(channel_as(&config, "txgen", "ingress", addr)).await;
    assert!(refused.is_err(), "a fourth connection is refused");
    let (_, body) = scrape(&config, "operator", "ingress", ing.metrics_addr).await;
    assert_eq!(
        value(
            &body,
            "txmesh_connections_refused_total{listener=\"ingress-grpc\",reason=\"identity_limit\"}"
        ),
        1.0
    );
    // Another identity is not limited by txgen's connections.
    healthy(channel_as(&config, "operator", "ingress", addr))
        .await
        .expect("another identity connects");

    // A closed connection gives its place back.
    held.pop();
    until(
        "a closed connection is released",
        Duration::from_secs(5),
        || ing.connections().open(&txgen_id) == 2,
    )
    .await;
    healthy(channel_as(&config, "txgen", "ingress", addr))
        .await
        .expect("room again");

    ing.stop(Duration::from_secs(5)).await;
    dash.stop().await;
}

#[actix_rt::test]
async fn an_identity_holds_at_most_its_connection_limit_on_https_too() {
    let dir = TempDir::new("https-limit");
    let mut config = test_config(&dir.0);
    config.connections.max_per_identity = 2;
    let (dash, ing, _machine) = start_system(&mut config).await;
    let addr = dash.https_addr;
    // Two connections held open (a browser's tabs, say).
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(https_as(&config, "operator", addr).await.expect("TLS"));
    }
    let third = https_as(&config, "operator", addr).await.expect("TLS");
    assert_eq!(http_get(third, "/api/snapshot").await, Some(429));
    // Another identity is not limited by the operator's connections (it is
    // refused by authorization instead).
    let other = https_as(&config, "txgen", addr).await.expect("TLS");
    assert_eq!(http_get(other, "/api/snapshot").await, Some(403));
    // A closed connection gives its place back.
    held.pop();
    let mut admitted = None;
    for _ in 0..50 {
        let conn = https_as(&config, "operator", addr).await.expect("TLS");
        admitted = http_get(conn, "/api/snapshot").await;
        if admitted == Some(200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(admitted, Some(200), "room again after a connection closed");
    drop(held);
    let (_, body) = scrape(&config, "operator", "dashboard", addr).await;
    assert!(
        value(
            &body,
            "txmesh_connections_refused_total{listener=\"dashboard-https\",reason=\"identity_limit\"}"
        ) >= 1.0
    );
    ing.stop(Duration::from_secs(5)).await;
    dash.stop().await;
}

#[actix_rt::test]
async fn an_idle_screen_stream_is_closed_with_a_status_that_says_why() {
    let dir = TempDir::new("idle-stream");
    let mut config = test_config(&dir.0);
    config.ingress.stream_idle_timeout_ms = 300;
    let (dash, ing, _machine) = start_system(&mut config).await;
    let mut client = IngressClient::new(channel_as(&config, "txgen", "ingress", ing.local_addr));
    // Opened, then silent: the sender is held open and never sends.
    let (tx, rx) = tokio::sync::mpsc::channel::<ScreenRequest>(1);
    let mut responses = client
        .screen(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream opens")
        .into_inner();
    let ended = tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .expect("the idle stream is closed");
    let status = ended.expect_err("closed with an error status");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("ingress.stream_idle_timeout_ms"),
        "{status:?}"
    );
    drop(tx);
    let (_, body) = scrape(&config, "operator", "ingress", ing.metrics_addr).await;
    assert_eq!(value(&body, "txmesh_screen_streams_idle_closed_total"), 1.0);
    ing.stop(Duration::from_secs(5)).await;
    dash.stop().await;
}

#[actix_rt::test]
async fn a_connection_without_streams_is_closed_and_one_with_a_stream_is_not() {
    let dir = TempDir::new("idle-conn");
    let mut config = test_config(&dir.0);
    config.connections.idle_timeout_ms = 300;
    let (dash, ing, _machine) = start_system(&mut config).await;
    // Connections to the ingress before this test opens any.
    let baseline = ing.open_connections();
    let channel = channel_as(&config, "txgen", "ingress", ing.local_addr);
    healthy(channel.clone()).await.expect("health");
    until(
        "the idle connection is closed",
        Duration::from_secs(5),
        || ing.open_connections() == baseline,
    )
    .await;

    // A connection with a stream open outlives the idle timeout.
    let mut client = IngressClient::new(channel_as(&config, "txgen", "ingress", ing.local_addr));
    let (tx, rx) = tokio::sync::mpsc::channel::<ScreenRequest>(1);
    let mut responses = client
        .screen(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream opens")
        .into_inner();
    assert_eq!(ing.open_connections(), baseline + 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        ing.open_connections(),
        baseline + 1,
        "not idle: a stream is open"
    );
    tx.send(ScreenRequest {
        request_id: 1,
        ..ScreenRequest::default()
    })
    .await
    .expect("send");
    let answer = responses
        .message()
        .await
        .expect("answer")
        .expect("a response");
    assert_eq!(answer.request_id, 1);
    drop(tx);
    drop(responses);
    until(
        "closed once its stream ended",
        Duration::from_secs(5),
        || ing.open_connections() == baseline,
    )
    .await;
    assert_eq!(dash.snapshot().await.expect("snapshot").totals.verdicts, 0);
    ing.stop(Duration::from_secs(5)).await;
    dash.stop().await;
}
