//! A long-lived connection does not outlive the client certificate it was
//! verified with: the ingress closes an HTTP/2 connection, and the dashboard
//! a WebSocket session, at the certificate's notAfter.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crate::support::*;
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;
use txmesh_certs::{CertAuthority, CertStore, IssueOptions, StateLayout};

/// A copy of `name`'s identity valid for about three more seconds.
fn short_lived(config: &txmesh::config::TxmeshConfig, dir: &TempDir, name: &str) -> CertStore {
    let layout = StateLayout::new(&config.state_dir);
    let ca = CertAuthority::load(&layout, &config.trust_domain).expect("CA");
    let short = IssueOptions {
        ttl: Duration::from_secs(3),
        ..IssueOptions::default()
    };
    let (crt, key) = ca.issue(name, &short).expect("issue");
    let short_dir = dir.0.join(format!("{name}-short"));
    std::fs::create_dir_all(&short_dir).expect("dir");
    std::fs::write(short_dir.join("tls.crt"), crt).expect("write");
    std::fs::write(short_dir.join("tls.key"), key).expect("write");
    std::fs::write(short_dir.join("ca.crt"), ca.cert_pem()).expect("write");
    CertStore::open(&short_dir, &config.trust_domain).expect("valid for now")
}

/// Asserts that now is no earlier than half a second before `not_after`.
fn assert_not_before(not_after: i64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(
        now >= not_after as f64 - 0.5,
        "closed {:.1} s before the certificate's notAfter",
        not_after as f64 - now
    );
}

#[actix_rt::test]
async fn a_connection_ends_when_its_client_certificate_expires() {
    let dir = TempDir::new("expiry");
    let mut config = test_config(&dir.0);
    let (dash, ing, _machine) = start_system(&mut config).await;

    let store = short_lived(&config, &dir, "txgen");
    let not_after = store.not_after_unix();

    let tls = txmesh_certs::client_config(&store, &spiffe(&config, "ingress"), &[b"h2"])
        .expect("client config");
    let tcp = TcpStream::connect(ing.local_addr).await.expect("connect");
    let mut conn = TlsConnector::from(Arc::new(tls))
        .connect(ServerName::IpAddress(ing.local_addr.ip().into()), tcp)
        .await
        .expect("handshake while the certificate is valid");
    // HTTP/2 preface and an empty SETTINGS frame: the server answers with
    // its own SETTINGS and then waits for requests.
    conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("write");
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    let first = conn.read(&mut buf).await.expect("the server speaks HTTP/2");
    assert!(first > 0);
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection outlived its certificate");
    assert_not_before(not_after);
    println!(
        "closed {:.1} s after the first read, at notAfter",
        start.elapsed().as_secs_f64()
    );

    // The dashboard's WebSocket, as an operator whose certificate expires.
    let store = short_lived(&config, &dir, "operator");
    let not_after = store.not_after_unix();
    let tls = txmesh_certs::client_config(&store, &spiffe(&config, "dashboard"), &[b"http/1.1"])
        .expect("client config");
    let tcp = TcpStream::connect(dash.https_addr).await.expect("connect");
    let conn = TlsConnector::from(Arc::new(tls))
        .connect(ServerName::IpAddress(dash.https_addr.ip().into()), tcp)
        .await
        .expect("handshake while the certificate is valid");
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/ws", conn)
        .await
        .expect("WebSocket upgrade");
    let code = close_code(&mut ws, Duration::from_secs(15)).await;
    assert_eq!(
        code,
        Some(1008),
        "closed for policy at the certificate's expiry"
    );
    assert_not_before(not_after);
    ing.stop(Duration::from_secs(5)).await;
    dash.stop().await;
}
