//! Two routers as two replicas in one actix system, linked by a
//! [`RemoteScreen`] that hands forwarded parts to the other router's
//! `screen_forwarded` (the network in between lives in `services`).

use std::{
    collections::HashMap,
    sync::{atomic::AtomicBool, OnceLock},
    time::Duration,
};

use txmesh_proto::v1::{txn_result::Outcome, Reason, TxnErrorCode, TxnResult};

use super::*;
use crate::partition::{PartitionFlags, PartitionMap, Replica};

#[derive(Default)]
struct Link {
    routers: OnceLock<HashMap<String, ShardRouter>>,
    down: AtomicBool,
    forwarded: AtomicU64,
}

impl RemoteScreen for Link {
    fn forward(&self, owner: &str, part: RemotePart) {
        if self.down.load(Ordering::Relaxed) {
            let error = ActorError::OwnerUnreachable {
                owner: owner.to_owned(),
                reason: "link down".into(),
                retry_after_ms: 100,
                sent: false,
            };
            part.fail(&error);
            return;
        }
        self.forwarded
            .fetch_add(part.len() as u64, Ordering::Relaxed);
        let router = &self.routers.get().expect("linked")[owner];
        let txns = part
            .items
            .iter()
            .map(|i| (i.txn.clone(), i.epoch))
            .collect();
        router.screen_forwarded(txns, Instant::now(), None, move |results| {
            part.answer(results)
        });
    }
}

fn replicas(n: usize) -> Vec<Replica> {
    (0..n)
        .map(|i| Replica {
            name: format!("ingress-{i}"),
            addr: String::new(),
        })
        .collect()
}

/// Two linked replicas over one map of 64 partitions.
fn pair() -> (ShardRouter, ShardRouter, Arc<Link>, Arc<PartitionMap>) {
    let ([(a, _), (b, _)], link, map) = pair_nodes();
    (a, b, link, map)
}

/// [`pair`], with each router's place in the cluster (its map and the
/// partitions it serves, which a test may change).
fn pair_nodes() -> ([(ShardRouter, Cluster); 2], Arc<Link>, Arc<PartitionMap>) {
    let map = Arc::new(PartitionMap::new(64, replicas(2)).expect("valid map"));
    let link = Arc::new(Link::default());
    let mut config = ActorsConfig::default();
    config.shards.count = 2;
    config.shards.order_hold_ms = 60_000;
    let start = |me: &str| {
        let serving = Arc::new(PartitionFlags::new(64));
        for p in map.owned_by(me) {
            serving.set(p, true);
        }
        let cluster = Cluster {
            me: me.to_owned(),
            map: Arc::new(parking_lot::RwLock::new(map.clone())),
            serving,
            remote: link.clone(),
        };
        let options = RouterOptions {
            cluster: Some(cluster.clone()),
            ..RouterOptions::default()
        };
        (ShardRouter::start_with(&config, options), cluster)
    };
    let (a, b) = (start("ingress-0"), start("ingress-1"));
    let routers = HashMap::from([
        ("ingress-0".to_owned(), a.0.clone()),
        ("ingress-1".to_owned(), b.0.clone()),
    ]);
    assert!(link.routers.set(routers).is_ok());
    ([a, b], link, map)
}

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

async fn answered(go: impl FnOnce(Box<dyn FnOnce(Vec<TxnResult>) + Send>)) -> Vec<TxnResult> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    go(Box::new(move |results| {
        let _ = tx.send(results);
    }));
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("answered in time")
        .expect("callback ran")
}

async fn screen(router: &ShardRouter, txns: Vec<Transaction>) -> Vec<TxnResult> {
    answered(|done| router.screen(txns, Instant::now(), done)).await
}

fn error_code(r: &TxnResult) -> Option<TxnErrorCode> {
    match &r.outcome {
        Some(Outcome::Error(e)) => Some(e.code()),
        _ => None,
    }
}

/// An account of each owner.
fn accounts(map: &PartitionMap) -> (String, String) {
    let find = |owner: &str| {
        (0..)
            .map(|i| format!("acct-{i}"))
            .find(|a| map.locate(a).1.name == owner)
            .expect("some account hashes to every replica")
    };
    (find("ingress-0"), find("ingress-1"))
}

#[actix_rt::test]
async fn history_lives_at_the_owner_whichever_replica_the_work_arrives_at() {
    let (a, b, link, map) = pair();
    let (_, remote) = accounts(&map);
    assert!(matches!(a.locate(&remote), Location::Remote { .. }));
    assert!(matches!(b.locate(&remote), Location::Local(_)));
    let now = crate::clock::system_unix_ms();
    // Eleven transactions within a minute, alternating between the two
    // replicas: the eleventh is VELOCITY, so one window saw them all.
    let mut last = Vec::new();
    for i in 0..11 {
        let via = if i % 2 == 0 { &a } else { &b };
        last = screen(
            via,
            vec![txn(&remote, &format!("t{i}"), 1_000, now - 30_000 + i)],
        )
        .await;
        assert_eq!(last.len(), 1);
        assert!(error_code(&last[0]).is_none(), "{last:?}");
    }
    let Some(Outcome::Verdict(v)) = &last[0].outcome else {
        panic!("a verdict");
    };
    assert_eq!(v.reasons, vec![Reason::Velocity as i32]);
    assert_eq!(
        link.forwarded.load(Ordering::Relaxed),
        6,
        "only a's share crossed"
    );
    // A retry through the other replica is the original verdict.
    let again = screen(&b, vec![txn(&remote, "t0", 1_000, now - 30_000)]).await;
    assert!(matches!(&again[0].outcome, Some(Outcome::Verdict(v)) if v.replayed));
    a.stop();
    b.stop();
}

#[actix_rt::test]
async fn forwarded_work_with_a_stale_epoch_or_for_another_owner_is_refused() {
    let (a, b, link, map) = pair();
    let (local_to_a, local_to_b) = accounts(&map);
    let now = crate::clock::system_unix_ms();
    let stale = vec![(txn(&local_to_b, "s1", 1_000, now), 0)];
    let out = answered(|done| b.screen_forwarded(stale, Instant::now(), None, done)).await;
    assert_eq!(error_code(&out[0]), Some(TxnErrorCode::WrongOwner));
    let Some(Outcome::Error(e)) = &out[0].outcome else {
        unreachable!()
    };
    assert!(e.retryable);
    assert_eq!((e.owner.as_str(), e.owner_epoch), ("ingress-1", 1));
    // One hop only: b does not own this one and says who does.
    let elsewhere = vec![(txn(&local_to_a, "s2", 1_000, now), 1)];
    let out = answered(|done| b.screen_forwarded(elsewhere, Instant::now(), None, done)).await;
    assert_eq!(error_code(&out[0]), Some(TxnErrorCode::WrongOwner));
    assert_eq!(link.forwarded.load(Ordering::Relaxed), 0);
    // The refusal holds the account at its owner: what the sender routed
    // after it, by the epoch it just learned, waits until the refused one
    // is sent again at that epoch.
    let after = vec![(txn(&local_to_b, "s3", 1_000, now + 1), 1)];
    let out = answered(|done| b.screen_forwarded(after, Instant::now(), None, done)).await;
    assert_eq!(error_code(&out[0]), Some(TxnErrorCode::Held));
    for id in ["s1", "s3"] {
        let current = vec![(txn(&local_to_b, id, 1_000, now + 2), 1)];
        let out = answered(|done| b.screen_forwarded(current, Instant::now(), None, done)).await;
        assert!(error_code(&out[0]).is_none(), "{id}: {out:?}");
    }
    a.stop();
    b.stop();
}

#[actix_rt::test]
async fn an_unreachable_owner_is_retryable_and_holds_the_account_in_order() {
    let (a, b, link, map) = pair();
    let (_, remote) = accounts(&map);
    let now = crate::clock::system_unix_ms();
    link.down.store(true, Ordering::Relaxed);
    let out = screen(&a, vec![txn(&remote, "u1", 1_000, now)]).await;
    let Some(Outcome::Error(e)) = &out[0].outcome else {
        panic!("an error: {out:?}");
    };
    assert_eq!(e.code(), TxnErrorCode::Unavailable);
    assert!(e.retryable && e.retry_after_ms > 0);
    assert_eq!(e.owner, "ingress-1");
    link.down.store(false, Ordering::Relaxed);
    // The link is back, but u2 may not overtake u1.
    let out = screen(&a, vec![txn(&remote, "u2", 1_000, now + 1)]).await;
    assert_eq!(error_code(&out[0]), Some(TxnErrorCode::Held));
    let out = screen(
        &a,
        vec![
            txn(&remote, "u1", 1_000, now),
            txn(&remote, "u2", 1_000, now + 1),
        ],
    )
    .await;
    assert!(out.iter().all(|r| error_code(r).is_none()), "{out:?}");
    a.stop();
    b.stop();
}

#[actix_rt::test]
async fn a_handed_over_partition_keeps_its_history_and_is_refused_in_order_meanwhile() {
    let ([(a, ca), (b, cb)], _link, map) = pair_nodes();
    let (_, moving) = accounts(&map);
    let p = map.partition_of(&moving);
    let now = crate::clock::system_unix_ms();
    // Ten transactions at b, its owner.
    for i in 0..10 {
        let out = screen(
            &b,
            vec![txn(&moving, &format!("h{i}"), 1_000, now - 20_000 + i)],
        )
        .await;
        assert!(error_code(&out[0]).is_none(), "{out:?}");
    }
    // The set shrinks to ingress-0: p moves to a at the next epoch. b
    // stops serving it first; a serves it only once it has the history.
    let one = replicas(1);
    let (next, moves) = map.with_replicas(one).expect("valid");
    assert!(moves.iter().any(|m| m.partition == p && m.epoch == 2));
    let next = Arc::new(next);
    *ca.map.write() = next.clone();
    cb.serving.set(p, false);
    let refused = screen(&a, vec![txn(&moving, "h10", 1_000, now - 1_000)]).await;
    let Some(Outcome::Error(e)) = &refused[0].outcome else {
        panic!("refused while moving: {refused:?}");
    };
    assert!(e.retryable && e.message.contains("handed over"), "{e:?}");
    let windows = b.export(&[p]).await.expect("exported");
    let (_, entries) = windows
        .iter()
        .find(|(k, _)| **k == *moving)
        .expect("the moving account's window");
    assert_eq!(entries.len(), 10);
    a.import(windows).await.expect("imported");
    ca.serving.set(p, true);
    assert_eq!(b.drop_partitions(&[p]).await, 1);
    *cb.map.write() = next;
    // h11 was sent after h10 and may not overtake it; h10 comes back
    // first, then h11: the window from b is used (VELOCITY on the 11th
    // in a minute) and a replay of b's h0 is its original verdict.
    let out = screen(&a, vec![txn(&moving, "h11", 1_000, now)]).await;
    assert_eq!(error_code(&out[0]), Some(TxnErrorCode::Held), "{out:?}");
    let out = screen(
        &a,
        vec![
            txn(&moving, "h10", 1_000, now - 1_000),
            txn(&moving, "h11", 1_000, now),
        ],
    )
    .await;
    let Some(Outcome::Verdict(v)) = &out[0].outcome else {
        panic!("a verdict: {out:?}");
    };
    assert_eq!(v.reasons, vec![Reason::Velocity as i32]);
    let again = screen(&b, vec![txn(&moving, "h0", 1_000, now - 20_000)]).await;
    assert!(
        matches!(&again[0].outcome, Some(Outcome::Verdict(v)) if v.replayed),
        "forwarded to the new owner, which has h0: {again:?}"
    );
    a.stop();
    b.stop();
}
