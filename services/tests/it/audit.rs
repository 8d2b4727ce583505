//! `txmesh audit` against a correctly configured system passes every check;
//! against deliberately weakened listeners (a plaintext port, a TLS port
//! whose client certificate is optional) it fails, naming the check.

use std::{sync::Arc, time::Duration};

use crate::support::*;
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use txmesh::cli::audit::{self, AuditOptions, AuditTarget, ListenerKind, Outcome};

fn targets(
    ing: &txmesh::ingress::IngressHandle,
    dash: &txmesh::dashboard::DashboardHandle,
) -> Vec<AuditTarget> {
    vec![
        AuditTarget {
            name: "ingress".into(),
            addr: ing.local_addr,
            kind: ListenerKind::IngressGrpc,
        },
        AuditTarget {
            name: "ingress-https".into(),
            addr: ing.metrics_addr,
            kind: ListenerKind::IngressHttps,
        },
        AuditTarget {
            name: "dashboard-grpc".into(),
            addr: dash.grpc_addr,
            kind: ListenerKind::DashboardGrpc,
        },
        AuditTarget {
            name: "dashboard-https".into(),
            addr: dash.https_addr,
            kind: ListenerKind::DashboardHttps,
        },
    ]
}

#[actix_rt::test]
async fn a_correct_system_passes_and_weakened_listeners_fail_by_name() {
    let dir = TempDir::new("audit");
    let mut config = test_config(&dir.0);
    config.ingress.handshake_timeout_ms = 1_000;
    config.dashboard.handshake_timeout_ms = 1_000;
    // The check of this process's listening ports needs no other test's
    // servers in it: this test holds the machine alone.
    let _alone = machine_alone().await;
    let (dash, ing) = launch(&mut config, txmesh_actors::RouterOptions::default()).await;
    let mut options = AuditOptions::for_config(&config);
    options.pids = vec![std::process::id()];

    let report = audit::run(&targets(&ing, &dash), &options).await;
    println!("{}", report.table());
    assert_eq!(report.failed, 0, "{}", report.table());
    assert_eq!(
        report.skipped,
        0,
        "the CA key is at hand: {}",
        report.table()
    );
    assert!(report.passed >= 4 * 20, "{}", report.table());

    // Without the CA key, the forgeries that need it are skipped, not failed.
    let mut no_key = options.clone();
    no_key.ca = None;
    no_key.pids.clear();
    let report = audit::run(&targets(&ing, &dash)[..1], &no_key).await;
    assert_eq!(report.failed, 0, "{}", report.table());
    assert_eq!(report.skipped, 8, "{}", report.table());
    assert_eq!(
        audit::run(&targets(&ing, &dash)[3..], &no_key)
            .await
            .outcomes("page_security_headers")[0]
            .outcome,
        Outcome::Pass
    );
    // Where no page is served with its headers (the ingress's listener
    // serves /metrics only), the page check fails.
    let no_page = AuditTarget {
        name: "dashboard-https".into(),
        addr: ing.metrics_addr,
        kind: ListenerKind::DashboardHttps,
    };
    let report = audit::run(&[no_page], &no_key).await;
    let page = report.outcomes("page_security_headers");
    assert_eq!(page[0].outcome, Outcome::Fail, "{}", report.table());
    assert!(page[0].evidence.contains("/: 404"), "{}", page[0].evidence);

    // Weakened listener 1: a plaintext port that answers HTTP.
    let plain = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let plain_addr = plain.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = plain.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    // Weakened listener 2: TLS 1.3 with the ingress's certificate, but the
    // client certificate is optional and the server answers anyone.
    let read = |name: &str| std::fs::read(config.identity_dir("ingress").join(name)).expect("file");
    let chain: Vec<_> = CertificateDer::pem_slice_iter(&read("tls.crt"))
        .collect::<Result<_, _>>()
        .expect("chain");
    let key = PrivateKeyDer::from_pem_slice(&read("tls.key")).expect("key");
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&read("ca.crt")) {
        roots.add(ca.expect("ca")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .expect("verifier");
    let mut weak = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("server config");
    weak.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(weak));
    let weak_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let weak_addr = weak_listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = weak_listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut buf = [0u8; 1024];
                    let _ = tls.read(&mut buf).await;
                    let _ = tls.write_all(b"served without a client certificate").await;
                }
            });
        }
    });

    let weak_targets = vec![
        AuditTarget {
            name: "ingress".into(),
            addr: plain_addr,
            kind: ListenerKind::IngressGrpc,
        },
        AuditTarget {
            name: "ingress".into(),
            addr: weak_addr,
            kind: ListenerKind::IngressGrpc,
        },
    ];
    let mut weak_options = options.clone();
    weak_options.pids.clear();
    weak_options.handshake_timeout = Duration::from_secs(1);
    let report = audit::run(&weak_targets, &weak_options).await;
    println!("{}", report.table());
    let failed = |check: &str, addr: std::net::SocketAddr| {
        report
            .outcomes(check)
            .iter()
            .any(|r| r.outcome == Outcome::Fail && r.listener.ends_with(&addr.to_string()))
    };
    assert!(
        failed("plaintext_http_get", plain_addr),
        "{}",
        report.table()
    );
    assert!(failed("plaintext_tcp", plain_addr));
    assert!(
        failed("tls_without_client_cert", weak_addr),
        "{}",
        report.table()
    );
    assert!(
        failed("idle_handshake_closed", weak_addr),
        "no handshake timeout there"
    );

    // The real system's process now also listens on the two weak ports.
    let report = audit::run(&targets(&ing, &dash), &options).await;
    let extra = report.outcomes("no_unexpected_listeners");
    assert_eq!(extra.len(), 1);
    assert_eq!(extra[0].outcome, Outcome::Fail, "{}", report.table());
    assert!(extra[0].evidence.contains(&plain_addr.port().to_string()));

    ing.stop(Duration::from_secs(5)).await;
    dash.stop().await;
}
