//! The deployment as shipped: the Helm chart, its alerts and Grafana
//! dashboard, and the Argo CD manifests.
//! - Every metric an alert or a dashboard panel queries exists in the real
//!   `/metrics` of a running ingress and dashboard (a renamed metric would
//!   silently blank a panel or an alert).
//! - `helm/validate.py` renders the chart with every values set, lints it,
//!   validates every object against its schema, checks that bad values are
//!   refused, and runs `promtool check rules` / `promtool test rules`. Its
//!   tools (helm-python-sdk, kubernetes-validate, node with the
//!   @kubernetes-models packages, promtool) are required when
//!   TXMESH_REQUIRE_DEPLOY_VALIDATE=1, as in CI.

use std::{collections::BTreeSet, path::PathBuf, time::Duration};

use crate::support::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("services/ sits in the workspace")
        .to_owned()
}

/// `txmesh_*` names in a query text, histogram series mapped to their family.
fn queried_metrics(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("txmesh_") {
        let start = i + at;
        let boundary = start == 0
            || !(bytes[start - 1].is_ascii_alphanumeric()
                || bytes[start - 1] == b'_'
                || bytes[start - 1] == b'-');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            let name = &text[start..end];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|base| base.ends_with("_seconds"))
                .unwrap_or(name);
            out.insert(family.to_owned());
        }
        i = end.max(start + 1);
    }
    out
}

/// Family names declared in an exposition (`# TYPE name kind`).
fn exposed(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[actix_rt::test]
async fn alerts_and_dashboard_query_only_metrics_the_services_export() {
    let alerts =
        std::fs::read_to_string(repo().join("helm/txmesh/files/alerts.yaml")).expect("alerts");
    let grafana = std::fs::read_to_string(repo().join("helm/txmesh/files/grafana-dashboard.json"))
        .expect("dashboard json");
    let mut queried = queried_metrics(&alerts);
    queried.extend(queried_metrics(&grafana));
    assert!(
        queried.len() >= 30,
        "too few metrics found in the queries: {queried:?}"
    );

    let dir = TempDir::new("deploy-metrics");
    let mut config = test_config(&dir.0);
    config.txgen.rate = 0;
    config.txgen.count = 500;
    let (dash, ing, _machine) = start_system(&mut config).await;
    run_txgen(&config).await;
    assert!(ing.wait_drained(Duration::from_secs(10)).await);
    let (_, ingress) = scrape(&config, "operator", "ingress", ing.metrics_addr).await;
    let (_, dashboard) = scrape(&config, "operator", "dashboard", dash.https_addr).await;
    let mut available = exposed(&ingress);
    available.extend(exposed(&dashboard));

    let missing: Vec<_> = queried.difference(&available).collect();
    assert!(
        missing.is_empty(),
        "queried by helm/txmesh/files but exported by no service: {missing:?}"
    );
    ing.stop(Duration::from_secs(5)).await;
    dash.stop().await;
}

#[test]
fn queried_metrics_reads_families_from_promql() {
    let names = queried_metrics(
        r#"histogram_quantile(0.99, rate(txmesh_screening_latency_seconds_bucket[5m])) + txmesh_journal_healthy{x="txmesh_not_a_metric_in_label"} - my_txmesh_other"#,
    );
    assert!(names.contains("txmesh_screening_latency_seconds"));
    assert!(names.contains("txmesh_journal_healthy"));
    assert!(!names.contains("txmesh_other"));
}

#[test]
fn chart_renders_and_validates_offline() {
    let required = std::env::var("TXMESH_REQUIRE_DEPLOY_VALIDATE").is_ok_and(|v| v == "1");
    let script = repo().join("helm/validate.py");
    let rendered = TempDir::new("deploy-rendered");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .env("TXMESH_RENDERED_CONFIG_DIR", &rendered.0)
        .output()
        .expect("python3 runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.code() == Some(3) && !required {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: a deployment validation tool is missing \
             (TXMESH_REQUIRE_DEPLOY_VALIDATE=1 makes this a failure, as in CI):\n{text}"
        );
        return;
    }
    assert!(out.status.success(), "helm/validate.py failed:\n{text}");
    assert!(text.contains("invalid 0"), "{text}");
    // Every values set's txmesh.toml is a configuration txmesh accepts.
    let mut loaded = 0;
    let mut replicas = 0;
    for entry in std::fs::read_dir(&rendered.0).expect("rendered configs") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e != "toml") {
            continue;
        }
        let sources = txmesh::config::ConfigSources {
            file: txmesh::config::ConfigFile::Required(path.clone()),
            ..Default::default()
        };
        let config = txmesh::config::TxmeshConfig::load(&sources)
            .unwrap_or_else(|e| panic!("{}: txmesh refuses it: {e}", path.display()));
        assert!(
            config.ingress.dashboard_addr.socket_addr().is_none(),
            "a Service name"
        );
        loaded += 1;
        // A replica's container adds its cluster environment to the same
        // file: txmesh accepts it, and finds its peers by their pods' names.
        let Ok(env) = std::fs::read_to_string(path.with_extension("env")) else {
            continue;
        };
        let sources = txmesh::config::ConfigSources {
            env: env
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ..sources
        };
        let config = txmesh::config::TxmeshConfig::load(&sources)
            .unwrap_or_else(|e| panic!("{}: a replica refuses it: {e}", path.display()));
        let map = config.cluster.partition_map().expect("a partition map");
        // The set it routes by is the rendered members file: pods of the
        // StatefulSet (all of them, or fewer while shrinking).
        assert_eq!(config.cluster.members_file, "/etc/txmesh/members");
        let members = std::fs::read_to_string(path.with_extension("members")).expect("members");
        let members = txmesh::config::ClusterConfig::parse_members(&members)
            .unwrap_or_else(|e| panic!("{}: members: {e}", path.display()));
        assert!(members.len() >= 3, "{}: {members:?}", path.display());
        assert!(
            members
                .iter()
                .all(|m| map.replicas().iter().any(|r| r.name == m.name)),
            "{}: {members:?} are pods",
            path.display()
        );
        let peer = config
            .cluster
            .resolve(&config.state_dir, &map.replicas()[0])
            .expect("a peer address");
        assert_eq!(
            peer.to_string(),
            "txmesh-ingress-0.txmesh-ingress-headless.txmesh.svc.cluster.local:7443"
        );
        // The last pod's environment (validate.py writes it).
        let last = map.replicas().last().expect("pods").name.clone();
        assert_eq!(
            txmesh::ingress::journal_dir(&config),
            std::path::Path::new("/var/lib/txmesh/replicas")
                .join(&last)
                .join("journal"),
            "on the volume"
        );
        replicas += 1;
    }
    assert_eq!(replicas, 2, "the replicas values sets");
    assert!(loaded >= 8, "only {loaded} rendered configurations");
}
