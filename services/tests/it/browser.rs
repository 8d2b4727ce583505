//! The operator's page in a real browser: Debian's `chromium`, driven by
//! `playwright-core` (npm, pinned in `services/tests/browser`), presenting
//! the operator certificate, against a dashboard and ingress started here.
//! `services/tests/browser/dashboard.mjs` checks the page; when a check
//! needs something done to the system (a transaction screened, the
//! dashboard stopped and started, an ingest outage) it asks on its stdout
//! (`ASK <what>`) and this side answers on its stdin once it is done.
//! Screenshots are left in `target/browser-screenshots/`.
//!
//! Without chromium or the npm packages the test says what is missing and
//! passes, unless `TXMESH_REQUIRE_BROWSER=1` (as in CI) makes that a
//! failure.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::support::*;
use txmesh_proto::v1::{ingress_client::IngressClient, ScreenRequest, Transaction};

const CHROMIUM: &str = "/usr/bin/chromium";

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// What is missing to run the browser, if anything.
fn missing() -> Option<String> {
    if !Path::new(CHROMIUM).exists() {
        return Some(format!("{CHROMIUM} (apt-get install chromium)"));
    }
    if !browser_dir().join("node_modules/playwright-core").exists() {
        return Some("playwright-core (npm ci --prefix services/tests/browser)".into());
    }
    None
}

/// The copy of uPlot compiled into the dashboard is the npm package's.
#[test]
fn the_vendored_chart_library_is_the_published_one() {
    let dist = browser_dir().join("node_modules/uplot");
    if !dist.exists() {
        assert!(
            !required(),
            "uplot not installed: npm ci --prefix services/tests/browser"
        );
        return;
    }
    let vendored = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/dashboard/assets/vendor/uplot");
    for (ours, theirs) in [
        ("uPlot.iife.min.js", "dist/uPlot.iife.min.js"),
        ("uPlot.min.css", "dist/uPlot.min.css"),
        ("LICENSE", "LICENSE"),
    ] {
        let a = std::fs::read(vendored.join(ours)).expect("vendored file");
        let b = std::fs::read(dist.join(theirs)).expect("npm file");
        assert!(a == b, "{ours} differs from uplot's {theirs}");
    }
}

fn required() -> bool {
    std::env::var("TXMESH_REQUIRE_BROWSER").is_ok_and(|v| v == "1")
}

/// txgen at 100 tx/s for `secs`, in the background.
fn spawn_load(
    config: &txmesh::config::TxmeshConfig,
    secs: u64,
) -> tokio::task::JoinHandle<txmesh::txgen::TxgenReport> {
    let mut run = config.clone();
    run.txgen.rate = 100;
    run.txgen.duration_secs = secs;
    tokio::spawn(async move { run_txgen(&run).await })
}

/// A flagged, high-amount transaction whose id and merchant are markup.
fn hostile(tag: &str) -> Transaction {
    Transaction {
        merchant_id: "<b onmouseover=alert(1)>shop</b><script>window.__pwned=3</script>".into(),
        ..txn(
            &format!("<img src=x onerror=window.__pwned=1>{tag}<script>window.__pwned=2</script>"),
            &format!("acct-browser-{tag}"),
            123_456_789,
        )
    }
}

#[actix_rt::test]
async fn the_operator_page_in_chromium() {
    if let Some(what) = missing() {
        assert!(!required(), "the browser test needs {what}");
        eprintln!("SKIPPED the browser test: it needs {what} (TXMESH_REQUIRE_BROWSER=1 makes this a failure)");
        return;
    }
    let dir = TempDir::new("browser");
    let mut config = test_config(&dir.0);
    // The shipped push interval, as an operator gets it.
    config.dashboard.push_interval_ms = txmesh::config::TxmeshConfig::default()
        .dashboard
        .push_interval_ms;
    let (dash, ing, _machine) = start_system(&mut config).await;
    // The dashboard comes back on the same addresses (the page reconnects
    // to its own origin; the publisher to its configured address).
    config.dashboard.grpc_listen = dash.grpc_addr;
    config.dashboard.https_listen = dash.https_addr;
    let mut dash = Some(dash);

    // Some traffic first, so the charts and tiles have something to show.
    config.txgen.rate = 200;
    config.txgen.duration_secs = 4;
    let report = run_txgen(&config).await;
    assert_eq!(report.unanswered, 0);

    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/browser-screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot directory");
    let identity = |name: &str| config.identity_dir(name);
    let settings = serde_json::json!({
        "url": format!("https://localhost:{}/", dash.as_ref().expect("running").https_addr.port()),
        "chromium": CHROMIUM,
        "operator": { "cert": identity("operator").join("tls.crt"), "key": identity("operator").join("tls.key") },
        "other": { "cert": identity("txgen").join("tls.crt"), "key": identity("txgen").join("tls.key") },
        "trust_domain": config.trust_domain,
        "screenshots": shots,
    });
    let mut node = Command::new("node")
        .arg(browser_dir().join("dashboard.mjs"))
        .arg(settings.to_string())
        .current_dir(browser_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs");
    let mut to_node = node.stdin.take().expect("stdin");
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stdout = node.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });

    let channel = channel_as(&config, "txgen", "ingress", ing.local_addr);
    let mut client = IngressClient::new(channel);
    let mut load: Option<tokio::task::JoinHandle<_>> = None;
    let mut passed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    while let Some(line) = tokio::time::timeout_at(deadline.into(), lines.recv())
        .await
        .expect("the browser checks finish in time")
    {
        println!("browser: {line}");
        let Some(ask) = line.strip_prefix("ASK ") else {
            if let Some(check) = line.strip_prefix("PASS ") {
                passed.push(check.split(' ').next().unwrap_or("").to_owned());
            }
            continue;
        };
        let mut parts = ask.splitn(2, ' ');
        let answer = match (parts.next().unwrap_or(""), parts.next().unwrap_or("")) {
            ("screen", tag) => {
                let txn = hostile(tag);
                let request = ScreenRequest {
                    transactions: vec![txn.clone()],
                    request_id: 1,
                    ..ScreenRequest::default()
                };
                let mut responses = client
                    .screen(tokio_stream::iter([request]))
                    .await
                    .expect("Screen opens")
                    .into_inner();
                let response = responses
                    .message()
                    .await
                    .expect("answered")
                    .expect("a response");
                assert_eq!(response.results.len(), 1);
                serde_json::json!({ "transaction_id": txn.transaction_id, "merchant": txn.merchant_id })
                    .to_string()
            }
            ("stop_dashboard", _) => {
                dash.take().expect("running").stop().await;
                "stopped".into()
            }
            ("start_dashboard", _) => {
                dash = Some(
                    txmesh::dashboard::start(&config)
                        .await
                        .expect("dashboard starts again"),
                );
                "started".into()
            }
            ("load", _) => {
                load = Some(spawn_load(&config, 12));
                tokio::time::sleep(Duration::from_secs(2)).await;
                "loading".into()
            }
            ("scrape", _) => {
                // What Prometheus does (as the operator: this test's state
                // has no prometheus identity; authz.metrics allows both).
                let dashboard_https = dash.as_ref().expect("running").https_addr;
                for (addr, server) in [
                    (ing.metrics_addr, "ingress"),
                    (dashboard_https, "dashboard"),
                ] {
                    let (status, _) = scrape(&config, "operator", server, addr).await;
                    assert!(status.starts_with("200"), "{status}");
                }
                "scraped".into()
            }
            ("outage", _) => {
                if let Some(earlier) = load.take() {
                    assert_eq!(earlier.await.expect("joined").unanswered, 0);
                }
                // Load through an ingest outage: the publisher's breaker
                // opens on the refusals and closes once they end.
                load = Some(spawn_load(&config, 14));
                tokio::time::sleep(Duration::from_secs(1)).await;
                let spec = txmesh_chaos::FaultSpec {
                    kind: txmesh_chaos::FaultKind::IngestRefusal {
                        code: tonic::Code::Unavailable as i32,
                    },
                    rate: 1.0,
                    account_share: 1.0,
                    duration: Duration::from_secs(6),
                    max_hits: 0,
                };
                dash.as_ref()
                    .expect("running")
                    .chaos
                    .inject(spec, Instant::now())
                    .expect("fault injected");
                "refusing".into()
            }
            ("load_done", _) => {
                let report = load.take().expect("load started").await.expect("joined");
                assert_eq!(report.unanswered, 0, "nothing lost through the outage");
                format!("{}", report.answered)
            }
            (other, _) => panic!("the browser asked for {other:?}"),
        };
        writeln!(to_node, "{answer}").expect("answered the browser");
        to_node.flush().expect("flushed");
    }
    let status = node.wait().expect("node exits");
    assert!(
        status.success(),
        "the browser checks failed (see the lines above); passed: {passed:?}"
    );
    for check in [
        "live",
        "equal_to_snapshot",
        "charts_drawn",
        "feed_shows_text",
        "filter",
        "pause",
        "mesh",
        "no_overflow",
        "stale",
        "reconnects",
        "breaker_open_then_closed",
        "console_clean",
        "refused_without_cert",
        "refused_other_identity",
        "refused_cross_origin",
        "refusals_shown",
    ] {
        assert!(
            passed.iter().any(|p| p == check),
            "check {check} did not run: {passed:?}"
        );
    }
    ing.stop(Duration::from_secs(5)).await;
    if let Some(dash) = dash {
        dash.stop().await;
    }
}
