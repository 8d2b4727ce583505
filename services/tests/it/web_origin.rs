//! Cross-site WebSocket hijacking: the operator's browser holds a client
//! certificate, so a page on another origin must not be able to open the
//! live feed or read the API through it. Every response says so in its
//! headers (CSP, nosniff, no framing).

use std::time::Duration;

use crate::support::*;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue};

/// A WebSocket upgrade as the operator, with `origin` (if any): the
/// HTTP status the dashboard answered.
async fn upgrade(
    config: &txmesh::config::TxmeshConfig,
    addr: std::net::SocketAddr,
    origin: Option<&str>,
) -> u16 {
    let tls = https_as(config, "operator", addr)
        .await
        .expect("operator connects");
    let mut request = "wss://localhost/ws".into_client_request().expect("request");
    request.headers_mut().insert(
        "host",
        HeaderValue::from_str(&format!("localhost:{}", addr.port())).expect("host"),
    );
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", HeaderValue::from_str(origin).expect("origin"));
    }
    match tokio_tungstenite::client_async(request, tls).await {
        Ok((_ws, response)) => response.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("upgrade failed without an HTTP answer: {e}"),
    }
}

/// `GET path` as the operator with extra headers: the response head
/// (status line and headers), lowercased.
async fn get(
    config: &txmesh::config::TxmeshConfig,
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> String {
    let conn = https_as(config, "operator", addr)
        .await
        .expect("operator connects");
    let host = format!("localhost:{}", addr.port());
    let response = txmesh::net::http::get(conn, &host, path, headers)
        .await
        .expect("a response");
    let mut head = format!("http/1.1 {}\r\n", response.status.as_u16());
    for (name, value) in &response.headers {
        head.push_str(&format!(
            "{name}: {}\r\n",
            value.to_str().unwrap_or_default()
        ));
    }
    head.to_lowercase()
}

#[actix_rt::test]
async fn only_the_dashboards_own_origin_may_open_the_feed_and_every_page_carries_a_csp() {
    let dir = TempDir::new("origin");
    let mut config = test_config(&dir.0);
    let (dash, ing, _machine) = start_system(&mut config).await;
    let addr = dash.https_addr;
    let own = format!("https://localhost:{}", addr.port());

    assert_eq!(
        upgrade(&config, addr, Some("https://evil.example")).await,
        403
    );
    assert_eq!(
        upgrade(
            &config,
            addr,
            Some(&format!("http://localhost:{}", addr.port()))
        )
        .await,
        403,
        "the plaintext scheme is another origin"
    );
    assert_eq!(upgrade(&config, addr, Some(&own)).await, 101);
    assert_eq!(
        upgrade(&config, addr, None).await,
        101,
        "a client that is not a browser page sends no Origin"
    );

    let foreign = get(
        &config,
        addr,
        "/api/snapshot",
        &[("origin", "https://evil.example")],
    )
    .await;
    assert!(foreign.starts_with("http/1.1 403"), "{foreign}");
    let cross_site = get(
        &config,
        addr,
        "/api/snapshot",
        &[("sec-fetch-site", "cross-site")],
    )
    .await;
    assert!(cross_site.starts_with("http/1.1 403"), "{cross_site}");
    let same = get(&config, addr, "/api/snapshot", &[("origin", &own)]).await;
    assert!(same.starts_with("http/1.1 200"), "{same}");

    let (_, body) = scrape(&config, "operator", "dashboard", addr).await;
    assert_eq!(value(&body, "txmesh_dashboard_origin_refusals_total"), 4.0);

    for path in ["/", "/app.js", "/app.css"] {
        let head = get(&config, addr, path, &[]).await;
        assert!(head.starts_with("http/1.1 200"), "{path}: {head}");
        assert!(
            head.contains("x-content-type-options: nosniff"),
            "{path}: {head}"
        );
        let csp = head
            .lines()
            .find(|l| l.starts_with("content-security-policy:"))
            .unwrap_or_else(|| panic!("{path} has no CSP: {head}"));
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
    }

    ing.stop(Duration::from_secs(5)).await;
    dash.stop().await;
}
