//! The router and account actors through their addresses, on a real actix
//! system.

use std::time::Duration;

use txmesh_proto::v1::{txn_result::Outcome, Reason, VerdictStatus};

use super::*;

fn txn(account: &str, id: &str, amount: i64, ts: i64) -> Transaction {
    Transaction {
        transaction_id: id.into(),
        account_id: account.into(),
        amount_minor: amount,
        currency: "EUR".into(),
        timestamp_unix_ms: ts,
        merchant_id: "m".into(),
        country: "DE".into(),
        channel: 1,
    }
}

async fn screen(router: &ShardRouter, txns: Vec<Transaction>) -> Vec<TxnResult> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    router.screen(txns, Instant::now(), move |results| {
        let _ = tx.send(results);
    });
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("answered in time")
        .expect("callback ran")
}

fn verdict(r: &TxnResult) -> &txmesh_proto::v1::Verdict {
    match &r.outcome {
        Some(Outcome::Verdict(v)) => v,
        other => panic!("expected a verdict for {}, got {other:?}", r.transaction_id),
    }
}

#[actix_rt::test]
async fn every_transaction_gets_one_result_in_order_with_history_per_account() {
    let mut config = ActorsConfig::default();
    config.shards.count = 2;
    let router = ShardRouter::start(&config);
    let now = crate::account::unix_ms_now();
    // 11 transactions for one account within a minute: the 11th is VELOCITY.
    let mut txns: Vec<_> = (0..11)
        .map(|i| txn("a", &format!("a{i}"), 1_000, now - 30_000 + i))
        .collect();
    txns.push(txn("b", "b0", 2_000_000, now));
    txns.push(txn("c", "", 10, now));
    let results = screen(&router, txns).await;
    assert_eq!(results.len(), 13);
    let ids: Vec<_> = results.iter().map(|r| r.transaction_id.clone()).collect();
    assert_eq!(ids[0], "a0");
    assert_eq!(ids[11], "b0");
    assert_eq!(verdict(&results[9]).status(), VerdictStatus::Approved);
    assert_eq!(verdict(&results[10]).reasons, vec![Reason::Velocity as i32]);
    assert_eq!(
        verdict(&results[11]).reasons,
        vec![Reason::HighAmount as i32]
    );
    assert_eq!(verdict(&results[12]).status(), VerdictStatus::Rejected);

    // The account's history survives across batches: a replay is recognised.
    let again = screen(&router, vec![txn("b", "b0", 2_000_000, now)]).await;
    assert!(verdict(&again[0]).replayed);
    assert_eq!(verdict(&again[0]).reasons, vec![Reason::HighAmount as i32]);
    router.stop();
}

#[actix_rt::test]
async fn oversized_batches_and_full_mailboxes_answer_with_errors() {
    let mut config = ActorsConfig::default();
    config.shards.count = 1;
    config.shards.max_batch = 3;
    let router = ShardRouter::start(&config);
    let now = crate::account::unix_ms_now();
    let results = screen(
        &router,
        (0..4).map(|i| txn("a", &format!("t{i}"), 5, now)).collect(),
    )
    .await;
    assert_eq!(results.len(), 4);
    for r in &results {
        match &r.outcome {
            Some(Outcome::Error(e)) => assert!(!e.retryable),
            other => panic!("expected an error, got {other:?}"),
        }
    }
    router.stop();

    let mut config = ActorsConfig::default();
    config.shards.count = 1;
    config.shards.account_mailbox = 1;
    let router = ShardRouter::start(&config);
    // Many transactions for one account in one part: the shard enqueues them
    // all before the account runs, so all but the mailbox's room overflow.
    let results = screen(
        &router,
        (0..50)
            .map(|i| txn("hot", &format!("h{i}"), 5, now - 600_000 + i * 60_000))
            .collect(),
    )
    .await;
    let overloaded = results
        .iter()
        .filter(|r| matches!(&r.outcome, Some(Outcome::Error(e)) if e.retryable && e.retry_after_ms > 0))
        .count();
    let screened = results
        .iter()
        .filter(|r| matches!(r.outcome, Some(Outcome::Verdict(_))))
        .count();
    assert_eq!(overloaded + screened, 50);
    assert!(overloaded > 0, "a mailbox of 1 must overflow");
    assert!(screened > 0);
    router.stop();
}
