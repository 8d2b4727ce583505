//! Every listener speaks only mutual TLS with known identities: plaintext
//! gets no application bytes, TLS without a client certificate and
//! certificates from another CA are refused, and a valid certificate with
//! the wrong identity gets PERMISSION_DENIED (gRPC) or 403 (HTTPS).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use crate::support::*;
use rustls::pki_types::ServerName;
use tokio::{io::AsyncWriteExt, net::TcpStream};
use txmesh_proto::v1::{
    dashboard_client::DashboardClient, ingress_client::IngressClient, Transaction, VerdictBatch,
};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn no_app_data(bytes: &[u8]) -> bool {
    // Nothing, or a TLS alert record (content type 21): never HTTP or gRPC.
    bytes.is_empty() || bytes[0] == 0x15
}

fn sample() -> Transaction {
    Transaction {
        transaction_id: "sec-1".into(),
        account_id: "acc".into(),
        amount_minor: 100,
        currency: "EUR".into(),
        timestamp_unix_ms: 1_700_000_000_000,
        merchant_id: "m".into(),
        country: "DE".into(),
        channel: 1,
    }
}

#[actix_rt::test]
async fn every_listener_refuses_plaintext_missing_and_foreign_certificates() {
    let dir = TempDir::new("security");
    let mut config = test_config(&dir.0);
    let (dash, ing, _machine) = start_system(&mut config).await;
    let listeners: [(&str, SocketAddr, &[u8]); 3] = [
        ("ingress gRPC", ing.local_addr, b"h2"),
        ("dashboard gRPC", dash.grpc_addr, b"h2"),
        ("dashboard HTTPS", dash.https_addr, b"http/1.1"),
    ];
    for (name, addr, alpn) in listeners {
        for probe in [H2_PREFACE, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".as_slice()] {
            let mut tcp = TcpStream::connect(addr).await.expect("TCP connects");
            tcp.write_all(probe).await.expect("write");
            let got = read_some(&mut tcp, Duration::from_secs(3)).await;
            assert!(
                no_app_data(&got),
                "{name}: plaintext got {:?}",
                String::from_utf8_lossy(&got)
            );
        }

        // TLS 1.3 without a client certificate: the server refuses after
        // the client's Finished, so the refusal shows on the first read.
        let tls = no_client_cert_config(&config, alpn);
        let tcp = TcpStream::connect(addr).await.expect("TCP connects");
        let outcome = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await;
        if let Ok(stream) = outcome {
            let status = http_get(stream, "/").await;
            assert_eq!(status, None, "{name}: no certificate must get no response");
        }
    }

    // A certificate from another CA, same trust domain and names.
    let foreign_dir = TempDir::new("foreign");
    let mut foreign = test_config(&foreign_dir.0);
    foreign.trust_domain = config.trust_domain.clone();
    let channel = txmesh::net::mtls_channel(
        ing.local_addr,
        &material(&foreign, "txgen"),
        &spiffe(&config, "ingress"),
    )
    .expect("channel");
    let err = IngressClient::new(channel)
        .screen_one(sample())
        .await
        .expect_err("foreign CA refused");
    assert_ne!(
        err.code(),
        tonic::Code::PermissionDenied,
        "refused at the handshake, not by authz"
    );
    for identity in ["operator", "txgen"] {
        let refused = match https_as(&foreign, identity, dash.https_addr).await {
            Ok(stream) => http_get(stream, "/").await.is_none(),
            Err(_) => true,
        };
        assert!(
            refused,
            "foreign {identity} refused by the dashboard HTTPS listener"
        );
    }
    assert!(
        ing.handshakes
            .failed
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );

    ing.stop(Duration::from_secs(5)).await;
    dash.stop().await;
}

#[actix_rt::test]
async fn valid_certificates_with_the_wrong_identity_are_denied() {
    let dir = TempDir::new("authz");
    let mut config = test_config(&dir.0);
    let (dash, ing, _machine) = start_system(&mut config).await;

    // ingress calling Screen: PERMISSION_DENIED. txgen calling it: fine.
    let as_ingress = txmesh::net::mtls_channel(
        ing.local_addr,
        &material(&config, "ingress"),
        &spiffe(&config, "ingress"),
    )
    .expect("channel");
    let err = IngressClient::new(as_ingress)
        .screen_one(sample())
        .await
        .expect_err("denied");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let as_txgen = txmesh::net::mtls_channel(
        ing.local_addr,
        &material(&config, "txgen"),
        &spiffe(&config, "ingress"),
    )
    .expect("channel");
    IngressClient::new(as_txgen)
        .screen_one(sample())
        .await
        .expect("txgen may screen");

    // txgen calling Publish: PERMISSION_DENIED.
    let to_dashboard = txmesh::net::mtls_channel(
        dash.grpc_addr,
        &material(&config, "txgen"),
        &spiffe(&config, "dashboard"),
    )
    .expect("channel");
    let batches = tokio_stream::iter(vec![VerdictBatch {
        publisher_id: "intruder".into(),
        sequence: 1,
        ..Default::default()
    }]);
    let err = DashboardClient::new(to_dashboard)
        .publish(batches)
        .await
        .expect_err("denied");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    // ingress opening the WebSocket or the page: 403. operator: allowed.
    for path in ["/ws", "/", "/api/snapshot"] {
        let stream = https_as(&config, "ingress", dash.https_addr)
            .await
            .expect("TLS");
        assert_eq!(http_get(stream, path).await, Some(403), "ingress on {path}");
    }
    let stream = https_as(&config, "operator", dash.https_addr)
        .await
        .expect("TLS");
    assert_eq!(http_get(stream, "/").await, Some(200));
    let stream = https_as(&config, "operator", dash.https_addr)
        .await
        .expect("TLS");
    assert_eq!(http_get(stream, "/api/snapshot").await, Some(200));

    // A client that expects another server identity refuses to talk.
    let wrong_server = txmesh::net::mtls_channel(
        ing.local_addr,
        &material(&config, "txgen"),
        &spiffe(&config, "dashboard"),
    )
    .expect("channel");
    assert!(IngressClient::new(wrong_server)
        .screen_one(sample())
        .await
        .is_err());

    ing.stop(Duration::from_secs(5)).await;
    dash.stop().await;
}
