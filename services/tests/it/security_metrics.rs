//! The security metrics: authorization decisions, refused handshakes by
//! reason and certificate expiry, served as Prometheus text on each
//! service's mTLS HTTPS listener, to prometheus and operator only.

use std::time::Duration;

use crate::support::*;
use tokio::io::AsyncWriteExt;

#[actix_rt::test]
async fn security_metrics_count_decisions_refusals_and_expiry() {
    let dir = TempDir::new("secmetrics");
    let mut config = test_config(&dir.0);
    let (dash, ing, _machine) = start_system(&mut config).await;

    let (status, body) = scrape(&config, "operator", "ingress", ing.metrics_addr).await;
    assert!(status.contains("200"), "{status}");
    let deny = "txmesh_authz_decisions_total{decision=\"deny\",service=\"screen\"}";
    assert_eq!(value(&body, deny), 0.0, "created at zero");
    let expiry = value(
        &body,
        "txmesh_cert_expiry_timestamp_seconds{identity=\"ingress\"}",
    );
    assert_eq!(expiry as i64, ing.certs.not_after_unix());

    // txgen may not read metrics: 403, counted.
    let (status, _) = scrape(&config, "txgen", "ingress", ing.metrics_addr).await;
    assert!(status.contains("403"), "{status}");

    // A TLS client with no certificate is refused at the gRPC listener.
    let tls = no_client_cert_config(&config, b"h2");
    let tcp = tokio::net::TcpStream::connect(ing.local_addr)
        .await
        .expect("connect");
    if let Ok(mut conn) = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(
            rustls::pki_types::ServerName::IpAddress(ing.local_addr.ip().into()),
            tcp,
        )
        .await
    {
        let _ = conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        let _ = read_some(&mut conn, Duration::from_secs(2)).await;
    }
    // A valid identity that may not call Screen: PERMISSION_DENIED, counted.
    let channel = txmesh::net::mtls_channel(
        ing.local_addr,
        &material(&config, "dashboard"),
        &spiffe(&config, "ingress"),
    )
    .expect("channel");
    let denied = txmesh_proto::v1::ingress_client::IngressClient::new(channel)
        .screen(tokio_stream::empty())
        .await;
    assert_eq!(
        denied.err().map(|s| s.code()),
        Some(tonic::Code::PermissionDenied)
    );

    let (_, body) = scrape(&config, "operator", "ingress", ing.metrics_addr).await;
    assert_eq!(value(&body, deny), 1.0);
    assert_eq!(
        value(
            &body,
            "txmesh_authz_decisions_total{decision=\"deny\",service=\"metrics\"}"
        ),
        1.0
    );
    assert!(
        value(&body, "txmesh_tls_handshake_failures_total{listener=\"ingress-grpc\",reason=\"no_certificate\"}") >= 1.0,
        "{body}"
    );

    // The dashboard serves its own; refusals on its HTTPS listener (whose
    // TLS accept is actix-web's) are counted through the verifier: the
    // audit's forged certificates are all refused and counted.
    let mut options = txmesh::cli::audit::AuditOptions::for_config(&config);
    options.handshake_timeout = Duration::from_secs(5);
    let https = txmesh::cli::audit::AuditTarget {
        name: "dashboard-https".into(),
        addr: dash.https_addr,
        kind: txmesh::cli::audit::ListenerKind::DashboardHttps,
    };
    let report = txmesh::cli::audit::run(&[https], &options).await;
    assert_eq!(report.failed, 0, "{}", report.table());
    let (status, body) = scrape(&config, "operator", "dashboard", dash.https_addr).await;
    assert!(status.contains("200"), "{status}");
    assert!(body.contains("txmesh_cert_expiry_timestamp_seconds{identity=\"dashboard\"}"));
    let refused = "txmesh_tls_handshake_failures_total{listener=\"dashboard-https\",reason=\"bad_certificate\"}";
    assert!(value(&body, refused) >= 8.0, "{body}");

    ing.stop(Duration::from_secs(5)).await;
    dash.stop().await;
}
