//! Chaos experiments end to end: every shipped experiment holds against a
//! correct system started for it (`txmesh chaos run --target up`'s code
//! path, over real mTLS on 127.0.0.1); a deliberately broken system fails
//! with the probe that caught it named in the journal; and a fault whose
//! controller is killed mid-experiment (no rollback runs) still ends by
//! its lease.

#[path = "support/system.rs"]
mod support;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use support::*;
use txmesh::chaos_cmd::{self, ChaosRunOptions};
use txmesh_chaos::experiment::RunStatus;
use txmesh_proto::v1::{admin_client::AdminClient, ListFaultsRequest};

/// Experiments load the machine: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn experiment(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../chaos/experiments")
        .join(format!("{name}.toml"))
}

async fn run(config: txmesh::config::TxmeshConfig, name: &str, dir: &Path) -> chaos_cmd::ChaosRun {
    let options = ChaosRunOptions {
        file: experiment(name),
        target_up: true,
        journal: Some(dir.join(format!("{name}.json"))),
        seed: Some(7),
    };
    chaos_cmd::run(config, &options)
        .await
        .expect("the experiment runs")
}

/// Injected panics print nothing (printing, and under RUST_BACKTRACE
/// capturing, a backtrace per panic in a debug build would be the test's
/// own latency, not the system's); others still do.
fn quiet_injected_panics() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info.payload().downcast_ref::<&str>().copied().unwrap_or("");
        if !msg.starts_with("injected fault") {
            default_hook(info);
        }
    }));
}

#[actix_rt::test]
async fn every_shipped_experiment_holds_against_a_correct_system() {
    let _serial = SERIAL.lock().await;
    quiet_injected_panics();
    for name in [
        "dashboard-outage",
        "actor-crash-storm",
        "slow-dashboard-link",
        "ingress-stream-resets",
        "cert-rotation-under-load",
    ] {
        // A fresh state directory each: the CA rotation must not leak.
        let dir = TempDir::new(&format!("chaos-{name}"));
        let run = run(test_config(&dir.0), name, &dir.0).await;
        let journal = &run.journal;
        println!("{}", journal.summary());
        assert_eq!(
            journal.status,
            RunStatus::Completed,
            "{name}: failed probes {:?}, method {:?}",
            journal.failed_probes,
            journal.method
        );
        // The evidence is on disk and names the seed that replays it.
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&run.journal_path).expect("journal written"))
                .expect("journal is JSON");
        assert_eq!(written["status"], "completed");
        assert_eq!(written["seed"], 7);
        // The faults did something: each experiment shows its effect.
        let observed = |key: &str| journal.observed.get(key).copied().unwrap_or(0.0);
        let load = journal.load.as_ref().expect("a load ran");
        match name {
            "dashboard-outage" => {
                assert!(observed("ingress.txmesh_publisher_breaker_transitions_total") >= 2.0)
            }
            "actor-crash-storm" => {
                let restarts: f64 = journal
                    .observed
                    .iter()
                    .filter(|(k, _)| k.starts_with("ingress.txmesh_account_restarts_total"))
                    .map(|(_, v)| v)
                    .sum();
                assert!(restarts >= 1.0, "{:?}", journal.observed);
                assert!(load["retries"].as_u64() > Some(0), "panics were retried");
            }
            "slow-dashboard-link" => {
                assert!(observed("wire.ingress_dashboard.delayed_chunks") > 0.0)
            }
            "ingress-stream-resets" => {
                assert!(load["reconnects"].as_u64() > Some(0), "streams were reset");
                assert!(observed("wire.txgen_ingress.resets") > 0.0);
            }
            "cert-rotation-under-load" => {
                assert!(observed("ingress.txmesh_cert_reloads_total{result=refused}") > 0.0);
                assert!(observed("ingress.txmesh_cert_reloads_total{result=swapped}") >= 2.0);
            }
            _ => unreachable!(),
        }
    }
}

#[actix_rt::test]
async fn a_broken_system_fails_with_the_probe_that_caught_it() {
    let _serial = SERIAL.lock().await;
    let dir = TempDir::new("chaos-broken");
    let mut config = test_config(&dir.0);
    // Broken on purpose: an outbox too small to hold a dashboard outage,
    // so verdicts are shed instead of delivered late.
    config.actors.publisher.outbox_capacity = 64;
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
    let _serial = SERIAL.lock().await;
    let dir = TempDir::new("chaos-lease");
    let mut config = test_config(&dir.0);
    let (dash, ing) = start_system(&mut config).await;
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
        actix_rt::spawn(async move { chaos_cmd::run(target, &options).await })
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
