//! The Admin service over mTLS: the chaos identity injects a fault with a
//! lease and a bounded blast radius, the operator may only list, others
//! nothing; the fault takes effect in the account actors, a rollback clears
//! it, and a fault nobody clears expires by its lease.

use std::time::Duration;

use crate::support::*;
use txmesh_proto::v1::{
    admin_client::AdminClient, ClearFaultsRequest, FaultSpec, InjectFaultRequest, ListFaultsRequest,
};

fn admin(
    config: &txmesh::config::TxmeshConfig,
    identity: &str,
    addr: std::net::SocketAddr,
) -> AdminClient<tonic::transport::Channel> {
    let channel = txmesh::net::mtls_channel(
        addr,
        &material(config, identity),
        &spiffe(config, "ingress"),
    )
    .expect("channel");
    AdminClient::new(channel)
}

fn panic_spec(share: f64, duration_ms: u64) -> FaultSpec {
    FaultSpec {
        kind: "panic_in_evaluation".into(),
        delay_ms: 0,
        rate: 0.05,
        account_share: share,
        duration_ms,
        ..FaultSpec::default()
    }
}

#[actix_rt::test]
async fn chaos_injects_operator_lists_and_leases_expire() {
    // Injected panics print nothing here; others still do.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info.payload().downcast_ref::<&str>().copied().unwrap_or("");
        if !msg.starts_with("injected fault") {
            default_hook(info);
        }
    }));
    let dir = TempDir::new("admin");
    let mut config = test_config(&dir.0);
    config.actors.supervision.max_restarts = 1_000;
    config.txgen.rate = 0;
    config.txgen.count = 3_000;
    let (dash, ing, _machine) = start_system(&mut config).await;
    let addr = ing.local_addr;

    // Only the chaos identity may inject.
    for who in ["operator", "txgen"] {
        let denied = admin(&config, who, addr)
            .inject_fault(InjectFaultRequest {
                spec: Some(panic_spec(0.5, 30_000)),
            })
            .await;
        assert_eq!(
            denied.err().map(|s| s.code()),
            Some(tonic::Code::PermissionDenied),
            "{who}"
        );
    }
    let mut chaos = admin(&config, "chaos", addr);
    let too_wide = chaos
        .inject_fault(InjectFaultRequest {
            spec: Some(panic_spec(0.9, 30_000)),
        })
        .await
        .expect_err("blast radius over the limit");
    assert_eq!(too_wide.code(), tonic::Code::InvalidArgument);
    assert!(
        too_wide.message().contains("blast radius"),
        "{}",
        too_wide.message()
    );
    let id = chaos
        .inject_fault(InjectFaultRequest {
            spec: Some(panic_spec(0.5, 30_000)),
        })
        .await
        .expect("injected")
        .into_inner()
        .fault_id;

    // The operator may list, txgen may not.
    let listed = admin(&config, "operator", addr)
        .list_faults(ListFaultsRequest {})
        .await
        .expect("operator lists")
        .into_inner()
        .faults;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].fault_id, id);
    assert!(listed[0].expires_in_ms > 20_000);
    let denied = admin(&config, "txgen", addr)
        .list_faults(ListFaultsRequest {})
        .await;
    assert_eq!(
        denied.err().map(|s| s.code()),
        Some(tonic::Code::PermissionDenied)
    );

    // It takes effect: actors crash in a share of evaluations, supervision
    // and txgen's retries keep every transaction answered.
    let report = run_txgen(&config).await;
    assert!(
        ing.screening().total(|s| &s.restarts) > 0,
        "{}",
        report.summary()
    );
    assert_eq!(report.answered, report.sent);
    let poison = report.by_error.get("POISON").copied().unwrap_or(0);
    assert_eq!(report.errors, poison, "{}", report.summary());

    // Rollback.
    let cleared = chaos
        .clear_faults(ClearFaultsRequest { fault_id: 0 })
        .await
        .expect("cleared")
        .into_inner()
        .cleared;
    assert_eq!(cleared, 1);

    // A fault whose controller never clears it expires by its lease.
    chaos
        .inject_fault(InjectFaultRequest {
            spec: Some(panic_spec(0.5, 300)),
        })
        .await
        .expect("injected");
    drop(chaos);
    let mut gone = false;
    for _ in 0..40 {
        if ing.chaos.list(std::time::Instant::now()).is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the lease expired without a clear");
    ing.stop(Duration::from_secs(5)).await;
    dash.stop().await;
}

#[actix_rt::test]
async fn an_injected_publisher_failure_opens_the_breaker_and_loses_nothing() {
    let dir = TempDir::new("admin-pub");
    let mut config = test_config(&dir.0);
    config.txgen.rate = 1_000;
    config.txgen.count = 2_500;
    let (dash, ing, _machine) = start_system(&mut config).await;
    let mut chaos = admin(&config, "chaos", ing.local_addr);
    chaos
        .inject_fault(InjectFaultRequest {
            spec: Some(FaultSpec {
                kind: "publisher_send_failure".into(),
                delay_ms: 0,
                rate: 1.0,
                account_share: 0.0,
                duration_ms: 1_500,
                ..FaultSpec::default()
            }),
        })
        .await
        .expect("injected");
    let report = run_txgen(&config).await;
    assert_eq!(report.answered, report.sent);
    assert_eq!(
        report.errors,
        0,
        "screening is unaffected: {}",
        report.summary()
    );
    assert!(
        ing.wait_drained(Duration::from_secs(20)).await,
        "delivered once the lease ended: {:?}",
        ing.publisher()
    );
    let publisher = ing.publisher();
    assert!(
        publisher.breaker_transitions >= 2,
        "the breaker opened and closed again: {publisher:?}"
    );
    assert_eq!(publisher.shed_total, 0);
    let totals = dash.snapshot().await.expect("snapshot").totals;
    assert_eq!(
        totals.verdicts,
        ing.counters.verdicts(),
        "nothing lost or double counted"
    );
    ing.stop(Duration::from_secs(5)).await;
    dash.stop().await;
}
