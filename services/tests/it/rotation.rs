//! Certificates rotate under load without restarts: while txgen runs, every
//! leaf is rotated and then the CA is rotated in its three steps. No
//! transaction fails, the running services pick up each step from disk,
//! new connections see the new certificates, and once the old CA is retired
//! a certificate it issued is refused.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use crate::support::*;
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use tokio::{io::AsyncWriteExt, net::TcpStream};
use tokio_rustls::TlsConnector;
use txmesh::config::TxmeshConfig;
use txmesh_certs::{rotate_ca, rotate_leaves, CaStep, CertStore, IssueOptions, StateLayout};

/// The certificate `server` presents to a new connection from `client`.
async fn presented(
    config: &TxmeshConfig,
    client: &CertStore,
    server: &str,
    addr: SocketAddr,
) -> Vec<u8> {
    let tls = txmesh_certs::client_config(client, &spiffe(config, server), &[b"h2"])
        .expect("client config");
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let conn = TlsConnector::from(Arc::new(tls))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .expect("handshake");
    conn.get_ref()
        .1
        .peer_certificates()
        .expect("server certificate")[0]
        .to_vec()
}

fn on_disk(config: &TxmeshConfig, name: &str) -> Vec<u8> {
    CertificateDer::pem_file_iter(config.identity_dir(name).join("tls.crt"))
        .expect("readable")
        .next()
        .expect("one certificate")
        .expect("parses")
        .to_vec()
}

/// Waits until both services have swapped in material `n` times.
async fn reloaded(stores: &[&CertStore], n: u64) {
    for _ in 0..200 {
        if stores.iter().all(|s| s.reloads() >= n) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "services did not reload: {:?}",
        stores.iter().map(|s| s.reloads()).collect::<Vec<_>>()
    );
}

#[actix_rt::test]
async fn leaves_and_the_ca_rotate_under_load_without_failures_or_restarts() {
    let dir = TempDir::new("rotation");
    let mut config = test_config(&dir.0);
    config.tls.reload_interval_ms = 50;
    config.txgen.rate = 1_500;
    config.txgen.duration_secs = 6;
    let (dash, ing, _machine) = start_system(&mut config).await;
    let layout = StateLayout::new(&config.state_dir);
    let td = config.trust_domain.clone();
    let read = |path: std::path::PathBuf| std::fs::read(path).expect("readable");
    let old_txgen = [
        read(config.identity_dir("txgen").join("tls.crt")),
        read(config.identity_dir("txgen").join("tls.key")),
        read(config.identity_dir("txgen").join("ca.crt")),
    ];
    let first_ingress = on_disk(&config, "ingress");

    let (load, progress) = spawn_txgen_watched(&config);
    answered_at_least(&progress, 1_000).await;
    let stores = [&ing.certs, &dash.certs];
    let options = IssueOptions::default();

    rotate_leaves(&layout, &td, &options).expect("rotate leaves");
    reloaded(&stores, 1).await;
    let client = material(&config, "txgen");
    assert_eq!(
        presented(&config, &client, "ingress", ing.local_addr).await,
        on_disk(&config, "ingress"),
        "new connections get the rotated leaf"
    );
    assert_ne!(on_disk(&config, "ingress"), first_ingress);

    for (n, step) in [CaStep::Add, CaStep::Reissue, CaStep::Retire]
        .into_iter()
        .enumerate()
    {
        rotate_ca(&layout, &td, step, &options).expect("CA step");
        reloaded(&stores, 2 + n as u64).await;
    }

    let report = load.await.expect("txgen task").expect("txgen runs");
    println!("{}", report.summary());
    assert_eq!(report.answered, report.sent, "{}", report.summary());
    assert_eq!(
        report.errors,
        0,
        "no transaction failed: {}",
        report.summary()
    );
    assert!(report.sent > 5_000);

    // The same running services now present leaves of the new CA.
    let client = material(&config, "txgen");
    assert_eq!(
        presented(&config, &client, "ingress", ing.local_addr).await,
        on_disk(&config, "ingress")
    );
    assert_eq!(
        presented(&config, &client, "dashboard", dash.grpc_addr).await,
        on_disk(&config, "dashboard")
    );
    assert_eq!(ing.certs.failures() + dash.certs.failures(), 0);

    // A leaf of the retired CA is refused by the running ingress. The client
    // trusts both CAs, so any refusal is the server's.
    let old_dir = dir.0.join("old-txgen");
    std::fs::create_dir_all(&old_dir).expect("dir");
    let [crt, key, old_ca] = &old_txgen;
    let mut bundle = old_ca.clone();
    bundle.extend(read(config.identity_dir("txgen").join("ca.crt")));
    for (name, bytes) in [("tls.crt", crt), ("tls.key", key), ("ca.crt", &bundle)] {
        std::fs::write(old_dir.join(name), bytes).expect("write");
    }
    let old_client = CertStore::open(&old_dir, &config.trust_domain).expect("old identity");
    assert_eq!(
        presented(&config, &old_client, "ingress", ing.local_addr).await,
        on_disk(&config, "ingress"),
        "the old client accepts the new server"
    );
    let tls = txmesh_certs::client_config(&old_client, &spiffe(&config, "ingress"), &[b"h2"])
        .expect("client config");
    let tcp = TcpStream::connect(ing.local_addr).await.expect("connect");
    let refused = match TlsConnector::from(Arc::new(tls))
        .connect(ServerName::IpAddress(ing.local_addr.ip().into()), tcp)
        .await
    {
        Err(_) => true,
        Ok(mut conn) => {
            let _ = conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
            read_some(&mut conn, Duration::from_secs(2))
                .await
                .is_empty()
        }
    };
    assert!(refused, "a certificate of the retired CA must be refused");

    assert!(ing.wait_drained(Duration::from_secs(10)).await);
    assert_eq!(
        dash.snapshot().await.expect("snapshot").totals.verdicts,
        ing.counters.verdicts()
    );
    ing.stop(Duration::from_secs(5)).await;
    dash.stop().await;
}
