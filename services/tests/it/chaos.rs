//! Chaos experiments end to end: every shipped experiment holds against a
//! correct system started for it (`txmesh chaos run --target up`, the real
//! binary with the shipped defaults, over real mTLS on 127.0.0.1; one test
//! each, so one failure hides none of the others); a deliberately broken system fails
//! with the probe that caught it named in the journal; and a fault whose
//! controller is killed mid-experiment (no rollback runs) still ends by
//! its lease.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::support::*;
use txmesh::cli::chaos::{self, ChaosRunOptions};
use txmesh_chaos::experiment::RunStatus;
use txmesh_proto::v1::{admin_client::AdminClient, ListFaultsRequest};

fn experiment(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../chaos/experiments")
        .join(format!("{name}.toml"))
}

async fn run(config: txmesh::config::TxmeshConfig, name: &str, dir: &Path) -> chaos::ChaosRun {
    let options = ChaosRunOptions {
        file: experiment(name),
        target_up: true,
        journal: Some(dir.join(format!("{name}.json"))),
        seed: Some(7),
    };
    chaos::run(config, &options)
        .await
        .expect("the experiment runs")
}

/// `txmesh chaos run --target up FILE`, exactly as the README has an SRE
/// run it: the real binary, the shipped defaults (no txmesh.toml in its
/// working directory), its own state directory. Returns the journal it
/// wrote and the exit status.
async fn run_shipped(name: &str) -> (serde_json::Value, std::process::ExitStatus) {
    // Experiments hold latency hypotheses: nothing else runs beside them.
    let _alone = machine_alone().await;
    // A fresh state directory each: the CA rotation must not leak.
    let dir = TempDir::new(&format!("chaos-{name}"));
    let journal = dir.0.join(format!("{name}.json"));
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_txmesh"))
        .current_dir(&dir.0)
        .args(["chaos", "run", "--target", "up", "--seed", "7", "--journal"])
        .arg(&journal)
        .arg(experiment(name))
        .kill_on_drop(true)
        .output()
        .await
        .expect("txmesh runs");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&journal).unwrap_or_else(|e| {
            panic!(
                "{name}: no journal ({e}); stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        }))
        .expect("journal is JSON");
    (written, out.status)
}

/// Runs the shipped experiment `name` and checks that it held and that
/// its faults did something, through `effect` on the journal.
async fn shipped_experiment_holds(name: &str, effect: impl FnOnce(&serde_json::Value)) {
    let (journal, status) = run_shipped(name).await;
    assert_eq!(
        journal["status"], "completed",
        "{name}: failed probes {}, method {}",
        journal["failed_probes"], journal["method"]
    );
    assert!(status.success(), "{name}: exit status {status}");
    // The evidence names the seed that replays it.
    assert_eq!(journal["seed"], 7);
    effect(&journal);
}

fn observed(journal: &serde_json::Value, prefix: &str) -> f64 {
    journal["observed"]
        .as_object()
        .expect("observed")
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .filter_map(|(_, v)| v.as_f64())
        .sum()
}

#[actix_rt::test]
async fn shipped_dashboard_outage_holds() {
    shipped_experiment_holds("dashboard-outage", |j| {
        assert!(observed(j, "ingress.txmesh_publisher_breaker_transitions_total") >= 2.0)
    })
    .await;
}

#[actix_rt::test]
async fn shipped_actor_crash_storm_holds() {
    shipped_experiment_holds("actor-crash-storm", |j| {
        assert!(
            observed(j, "ingress.txmesh_account_restarts_total") >= 1.0,
            "{}",
            j["observed"]
        );
        assert!(
            j["load"]["retries"].as_u64() > Some(0),
            "panics were retried"
        );
    })
    .await;
}

#[actix_rt::test]
async fn shipped_slow_dashboard_link_holds() {
    shipped_experiment_holds("slow-dashboard-link", |j| {
        assert!(observed(j, "wire.ingress_dashboard.delayed_chunks") > 0.0)
    })
    .await;
}

#[actix_rt::test]
async fn shipped_ingress_stream_resets_holds() {
    shipped_experiment_holds("ingress-stream-resets", |j| {
        assert!(
            j["load"]["reconnects"].as_u64() > Some(0),
            "streams were reset"
        );
        assert!(observed(j, "wire.txgen_ingress.resets") > 0.0);
    })
    .await;
}

#[actix_rt::test]
async fn shipped_ingress_crash_holds() {
    shipped_experiment_holds("ingress-crash", |j| {
        let method = j["method"].to_string();
        assert!(method.contains("killed"), "{method}");
        assert!(
            j["load"]["reconnects"].as_u64() >= Some(1),
            "txgen saw the connection die: {}",
            j["load"]
        );
    })
    .await;
}

#[actix_rt::test]
async fn shipped_replica_partition_holds() {
    shipped_experiment_holds("replica-partition", |j| {
        assert!(observed(j, "wire.replica_link.bytes_dropped") > 0.0);
        assert!(
            observed(
                j,
                "ingress.txmesh_forwarded_transactions_total{outcome=failed}"
            ) > 0.0
        );
        assert!(
            j["load"]["retries"].as_u64() > Some(0),
            "forwards that failed were retried: {}",
            j["load"]
        );
    })
    .await;
}

#[actix_rt::test]
async fn shipped_cert_rotation_under_load_holds() {
    shipped_experiment_holds("cert-rotation-under-load", |j| {
        assert!(observed(j, "ingress.txmesh_cert_reloads_total{result=refused}") > 0.0);
        assert!(observed(j, "ingress.txmesh_cert_reloads_total{result=swapped}") >= 2.0);
    })
    .await;
}

#[actix_rt::test]
async fn a_broken_system_fails_with_the_probe_that_caught_it() {
    // Experiments hold latency hypotheses: nothing else runs beside them.
    let _alone = machine_alone().await;
    let dir = TempDir::new("chaos-broken");
    let mut config = test_config(&dir.0);
    // Broken on purpose: no journal and a memory tail too small to hold a
    // dashboard outage, so verdicts are given up instead of delivered late.
    config.actors.journal.enabled = false;
    config.actors.journal.tail_bytes = 65_536;
    let run = run(config, "dashboard-outage", &dir.0).await;
    let journal = &run.journal;
    println!("{}", journal.summary());
    assert_eq!(journal.status, RunStatus::Aborted, "{journal:?}");
    assert!(
        journal
            .failed_probes
            .contains(&"no_verdicts_shed".to_owned()),
        "{:?}",
        journal.failed_probes
    );
    let written = std::fs::read_to_string(&run.journal_path).expect("journal written");
    assert!(written.contains("\"aborted\"") && written.contains("no_verdicts_shed"));
    // The abort rolled back at once: the refusal was cleared, not left to
    // its lease.
    assert!(
        journal.rollbacks.iter().all(|a| a.ok),
        "{:?}",
        journal.rollbacks
    );
}

#[actix_rt::test]
async fn a_fault_whose_controller_is_killed_ends_by_its_lease() {
    let dir = TempDir::new("chaos-lease");
    let mut config = test_config(&dir.0);
    let (dash, ing, _machine) = start_system(&mut config).await;
    let file = dir.0.join("controller-dies.toml");
    std::fs::write(
        &file,
        r#"
title = "The controller dies mid-experiment"
description = "A fault with a 3 s lease, then a long pause the controller never finishes."
[steady_state]
title = "none left"
[[steady_state.probes]]
name = "no_fault_outlives_the_experiment"
when = ["after"]
type = "active_faults"
max = 0
[[method]]
type = "fault"
target = "ingress"
kind = "delay_in_evaluation"
delay_ms = 1
rate = 0.01
account_share = 0.1
duration_secs = 3
[[method]]
type = "pause"
secs = 120
[[rollbacks]]
type = "clear_faults"
"#,
    )
    .expect("experiment written");
    // The controller: `txmesh chaos run` against this system, in a task
    // that is aborted mid-experiment (no rollback runs, nothing clears).
    let controller = {
        let mut target = config.clone();
        target.ingress.listen = ing.local_addr;
        target.ingress.metrics_listen = ing.metrics_addr;
        target.dashboard.grpc_listen = dash.grpc_addr;
        target.dashboard.https_listen = dash.https_addr;
        let options = ChaosRunOptions {
            file: file.clone(),
            target_up: false,
            journal: Some(dir.0.join("controller-dies.json")),
            seed: None,
        };
        actix_rt::spawn(async move { chaos::run(target, &options).await })
    };
    let channel = txmesh::net::mtls_channel(
        ing.local_addr,
        &material(&config, "operator"),
        &spiffe(&config, "ingress"),
    )
    .expect("channel");
    let mut admin = AdminClient::new(channel);
    let mut list = async || {
        tokio::time::timeout(
            Duration::from_secs(5),
            admin.list_faults(ListFaultsRequest {}),
        )
        .await
        .expect("the ingress answers")
        .expect("the operator may list")
        .into_inner()
        .faults
    };
    let waited = Instant::now();
    while list().await.is_empty() {
        assert!(waited.elapsed() < Duration::from_secs(30), "never injected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let injected = Instant::now();
    controller.abort();
    assert!(controller.await.is_err_and(|e| e.is_cancelled()));
    assert_eq!(list().await.len(), 1, "nobody cleared it");
    while !list().await.is_empty() {
        assert!(
            injected.elapsed() < Duration::from_secs(30),
            "the fault outlived its lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its lease was 3 s; what ended it was the lease, not anyone.
    assert!(injected.elapsed() >= Duration::from_millis(2_500));
    // The system screens as before.
    config.txgen.count = 2_000;
    config.txgen.rate = 0;
    let report = run_txgen(&config).await;
    assert_eq!(report.answered, report.sent);
    assert_eq!(report.errors, 0);
    ing.stop(Duration::from_secs(5)).await;
    dash.stop().await;
}
