//! The router and account actors through their addresses, on a real actix
//! system.

use std::time::Duration;

use txmesh_proto::v1::{txn_result::Outcome, Reason, TxnErrorCode, VerdictStatus};

use super::*;
use crate::clock::ManualClock;

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
    let now = crate::clock::system_unix_ms();
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
    let now = crate::clock::system_unix_ms();
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
    // A prefix is screened; from the first refusal on, the account is held,
    // so everything after it is refused too (order kept for the retries):
    // for load (the mailbox) or, once held, with HELD (not load).
    let first_refused = results
        .iter()
        .position(|r| matches!(&r.outcome, Some(Outcome::Error(e)) if e.retryable && e.retry_after_ms > 0))
        .expect("a mailbox of 1 must overflow");
    assert!(first_refused > 0, "the first transaction fits");
    let mut for_load = 0;
    for (i, r) in results[first_refused..].iter().enumerate() {
        match &r.outcome {
            Some(Outcome::Error(e)) => {
                assert!(e.retryable);
                match e.code() {
                    TxnErrorCode::ResourceExhausted => for_load += 1,
                    TxnErrorCode::Held if i > 0 => {}
                    other => panic!("{}: {other:?}", r.transaction_id),
                }
            }
            other => panic!("{} must be refused, got {other:?}", r.transaction_id),
        }
    }
    assert!(for_load >= 1);
    assert_eq!(router.stats().total(|s| &s.overloaded), for_load);
    // A later transaction of the held account is refused until every
    // refused one has come back, in order; then it goes through.
    let refused = results[first_refused].transaction_id.clone();
    let later = results[49].transaction_id.clone();
    let by_id = |id: &str| {
        let i: i64 = id[1..].parse().expect("numbered id");
        txn("hot", id, 5, now - 600_000 + i * 60_000)
    };
    let out = screen(&router, vec![by_id(&later)]).await;
    assert!(matches!(&out[0].outcome, Some(Outcome::Error(e)) if e.retryable));
    let out = screen(&router, vec![by_id(&refused)]).await;
    verdict(&out[0]);
    let out = screen(&router, vec![by_id(&later)]).await;
    assert!(
        matches!(&out[0].outcome, Some(Outcome::Error(e)) if e.code() == TxnErrorCode::Held),
        "the ones refused between are not back yet: {out:?}"
    );
    for r in &results[first_refused + 1..] {
        let out = screen(&router, vec![by_id(&r.transaction_id)]).await;
        verdict(&out[0]);
    }
    router.stop();
}

/// A router whose evaluations panic for transactions of merchant "crash",
/// on a clock the test moves.
fn crashing_router(config: &ActorsConfig) -> (ShardRouter, Arc<ManualClock>) {
    let clock = ManualClock::new();
    let hook: EvaluationHook = Arc::new(|txn: &Transaction| {
        if txn.merchant_id == "crash" {
            panic!("injected evaluation failure");
        }
    });
    let options = RouterOptions {
        clock: clock.clone(),
        hook: Some(hook),
        chaos: None,
        cluster: None,
    };
    (ShardRouter::start_with(config, options), clock)
}

fn crash(account: &str, id: &str, ts: i64) -> Transaction {
    let mut t = txn(account, id, 1_000, ts);
    t.merchant_id = "crash".into();
    t
}

fn error(r: &TxnResult) -> &txmesh_proto::v1::TxnError {
    match &r.outcome {
        Some(Outcome::Error(e)) => e,
        other => panic!("expected an error for {}, got {other:?}", r.transaction_id),
    }
}

/// Polls `cond` until it holds; the actors run on other threads.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[actix_rt::test]
async fn a_panic_is_answered_retryably_and_the_restart_keeps_the_window() {
    let mut config = ActorsConfig::default();
    config.shards.count = 1;
    let (router, clock) = crashing_router(&config);
    let now = crate::clock::system_unix_ms();
    let first = txn("a", "a0", 2_000_000, now - 5_000);
    screen(
        &router,
        vec![first.clone(), txn("a", "a1", 1_000, now - 4_000)],
    )
    .await;
    let out = screen(
        &router,
        vec![crash("a", "boom", now - 3_000), first.clone()],
    )
    .await;
    let e = error(&out[0]);
    assert_eq!(e.code(), TxnErrorCode::Unavailable);
    assert!(e.retryable);
    // What queued behind the crash waits for the crashed transaction's
    // retry, so a retry cannot be overtaken.
    let held = error(&out[1]);
    assert_eq!(held.code(), TxnErrorCode::ResourceExhausted);
    assert!(held.retryable);
    // Once that hold lapses, the restarted actor still knows the history.
    clock.advance(Duration::from_millis(config.shards.order_hold_ms));
    let out = screen(&router, vec![first]).await;
    assert!(verdict(&out[0]).replayed);
    assert_eq!(verdict(&out[0]).reasons, vec![Reason::HighAmount as i32]);
    assert_eq!(router.stats().total(|s| &s.restarts), 1);
    router.stop();
}

#[actix_rt::test]
async fn past_the_restart_intensity_the_account_is_quarantined_until_the_cool_down_ends() {
    let mut config = ActorsConfig::default();
    config.shards.count = 1;
    // Crash holds lapse between the crashes below (1 s apart).
    config.shards.order_hold_ms = 1;
    let (router, clock) = crashing_router(&config);
    let now = crate::clock::system_unix_ms();
    // Three restarts within 10 s are allowed; the fourth crash quarantines.
    for i in 0..4 {
        let out = screen(
            &router,
            vec![crash("q", &format!("c{i}"), now - 10_000 + i)],
        )
        .await;
        assert!(error(&out[0]).retryable);
        clock.advance(Duration::from_secs(1));
    }
    assert_eq!(router.stats().total(|s| &s.quarantines), 1);
    let out = screen(
        &router,
        vec![
            txn("q", "q1", 1_000, now - 1_000),
            txn("other", "o1", 1_000, now),
        ],
    )
    .await;
    assert_eq!(verdict(&out[0]).status(), VerdictStatus::Rejected);
    assert_eq!(
        verdict(&out[0]).reasons,
        vec![Reason::AccountQuarantined as i32]
    );
    assert_eq!(
        verdict(&out[1]).status(),
        VerdictStatus::Approved,
        "other accounts go on"
    );
    clock.advance(Duration::from_secs(30));
    let out = screen(&router, vec![txn("q", "q1", 1_000, now - 1_000)]).await;
    assert_eq!(
        verdict(&out[0]).status(),
        VerdictStatus::Approved,
        "the quarantine ended on its own and the refused transaction was not recorded"
    );
    assert!(!verdict(&out[0]).replayed);
    router.stop();
}

#[actix_rt::test]
async fn a_poison_message_gets_an_explicit_error_after_its_attempts_and_is_recorded() {
    let mut config = ActorsConfig::default();
    config.shards.count = 1;
    let (router, clock) = crashing_router(&config);
    let now = crate::clock::system_unix_ms();
    let poison = crash("acct-00004242", "p1", now);
    for attempt in 1..=2 {
        let out = screen(&router, vec![poison.clone()]).await;
        assert!(error(&out[0]).retryable, "attempt {attempt} may be retried");
        clock.advance(Duration::from_secs(20));
    }
    let out = screen(&router, vec![poison.clone()]).await;
    let e = error(&out[0]);
    assert_eq!(e.code(), TxnErrorCode::Poison);
    assert!(!e.retryable);
    // Sent again, it is answered without crashing the actor again.
    let out = screen(&router, vec![poison]).await;
    assert_eq!(error(&out[0]).code(), TxnErrorCode::Poison);
    assert_eq!(router.stats().total(|s| &s.restarts), 3);
    assert_eq!(router.stats().total(|s| &s.poison), 1);
    let records = router.stats().poison.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].transaction_id, "p1");
    assert_eq!(records[0].account, "…4242");
    assert_eq!(records[0].attempts, 3);
    router.stop();
}

#[actix_rt::test]
async fn idle_accounts_passivate_and_come_back_with_their_history() {
    let mut config = ActorsConfig::default();
    config.shards.count = 2;
    config.shards.passivation_sweep_ms = 5;
    let (router, clock) = crashing_router(&config);
    let now = crate::clock::system_unix_ms();
    // Ten transactions within a minute for "v", one for "w".
    let ten: Vec<_> = (0..10)
        .map(|i| txn("v", &format!("v{i}"), 1_000, now - 30_000 + i))
        .collect();
    screen(&router, ten).await;
    screen(&router, vec![txn("w", "w0", 2_000_000, now)]).await;
    let stats = router.stats().clone();
    assert_eq!(stats.total(|s| &s.active), 2);

    clock.advance(Duration::from_secs(config.shards.passivate_after_secs));
    eventually("both accounts passivated", || {
        stats.total(|s| &s.passivated) == 2 && stats.total(|s| &s.active) == 0
    })
    .await;
    assert_eq!(stats.total(|s| &s.passivations), 2);
    eventually("the passivated windows' bytes counted", || {
        stats.total(|s| &s.passivated_bytes) > 0
    })
    .await;

    // The eleventh within the minute is VELOCITY: the history came back.
    let out = screen(&router, vec![txn("v", "v10", 1_000, now - 20_000)]).await;
    assert_eq!(verdict(&out[0]).reasons, vec![Reason::Velocity as i32]);
    let out = screen(&router, vec![txn("w", "w0", 2_000_000, now)]).await;
    assert!(verdict(&out[0]).replayed, "a replay is still recognised");
    assert_eq!(stats.total(|s| &s.reactivations), 2);
    assert_eq!(stats.total(|s| &s.active), 2);
    assert_eq!(stats.total(|s| &s.passivated), 0);
    eventually("nothing held for passivated accounts", || {
        stats.total(|s| &s.passivated_bytes) == 0
    })
    .await;
    router.stop();
}

/// 2,000 accounts named `{prefix}-{n}`, each screened `rounds` times
/// within a minute (one transaction each per round); returns their ids.
async fn screen_rounds(router: &ShardRouter, prefix: &str, rounds: i64, now: i64) -> Vec<String> {
    let accounts: Vec<String> = (0..2_000).map(|a| format!("{prefix}-{a}")).collect();
    for i in 0..rounds {
        let round = accounts
            .iter()
            .map(|a| txn(a, &format!("{a}-{i}"), 1_000, now - 30_000 + i))
            .collect();
        screen(router, round).await;
    }
    accounts
}

#[actix_rt::test]
async fn transactions_that_arrive_during_a_passivation_wait_for_it_and_keep_the_history() {
    let mut config = ActorsConfig::default();
    config.shards.count = 1;
    config.shards.passivation_sweep_ms = 1;
    let (router, clock) = crashing_router(&config);
    let now = crate::clock::system_unix_ms();
    let accounts = screen_rounds(&router, "p", 10, now).await;
    // Every account goes idle at once: one sweep asks all 2,000 to
    // passivate, and their eleventh transactions arrive while the answers
    // come back (before, during and after each account's passivation).
    clock.advance(Duration::from_secs(config.shards.passivate_after_secs));
    let eleventh = accounts.chunks(10).map(|some| {
        let txns = some
            .iter()
            .map(|a| txn(a, &format!("{a}-10"), 1_000, now - 20_000))
            .collect();
        screen(&router, txns)
    });
    let results = join_all(eleventh).await;
    for r in results.iter().flatten() {
        assert_eq!(
            verdict(r).reasons,
            vec![Reason::Velocity as i32],
            "{}: the history came through",
            r.transaction_id
        );
    }
    let stats = router.stats().clone();
    eventually("every account passivated or active", || {
        stats.total(|s| &s.active) + stats.total(|s| &s.passivated) == 2_000
    })
    .await;
    router.stop();
}

#[actix_rt::test]
async fn snapshots_taken_while_accounts_passivate_hold_every_window() {
    let dir = std::env::temp_dir().join(format!(
        "txmesh-router-passivating-snapshot-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let mut config = ActorsConfig::default();
    config.shards.count = 1;
    config.shards.passivation_sweep_ms = 1;
    let open = |config: &ActorsConfig| {
        Journals::open(
            Some(&dir),
            &config.journal,
            &config.window,
            1,
            &JournalHistograms::default(),
        )
        .expect("journal opens")
    };
    let (journals, recovered) = open(&config);
    let clock = ManualClock::new();
    let options = RouterOptions {
        clock: clock.clone(),
        ..RouterOptions::default()
    };
    let router = ShardRouter::start_recovered(&config, options, journals, recovered.windows);
    let now = crate::clock::system_unix_ms();
    screen_rounds(&router, "s", 3, now).await;
    // Snapshots one after another while every account passivates: a
    // passivation moves the actor's window out, and a snapshot that asks
    // the actor afterwards must still get all of it.
    clock.advance(Duration::from_secs(config.shards.passivate_after_secs));
    let stats = router.stats().clone();
    let mut taken = 0;
    while stats.total(|s| &s.passivated) < 2_000 {
        taken += usize::from(router.import(Vec::new()).await.is_ok());
    }
    router
        .import(Vec::new())
        .await
        .expect("a snapshot once all are passivated");
    assert!(taken > 0, "snapshots were taken during the passivations");
    router.stop();

    let (journals, recovered) = open(&config);
    let windows = &recovered.windows[0];
    assert_eq!(windows.len(), 2_000, "every account recovered");
    assert!(
        windows.values().all(|w| w.len() == 3),
        "with its whole window"
    );
    journals.close();
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_account_actor_fits_the_task_allocation_it_has() {
    // tokio allocates each actor's task as one 128-byte-aligned cell: a
    // 32-byte header, the supervised actor's future, a 48-byte trailer;
    // 512 bytes with the future at 408 (measured). Eight bytes more in
    // the actor and every active account costs 640.
    assert!(std::mem::size_of::<actix::Supervisor<AccountActor>>() <= 408);
}

#[actix_rt::test]
async fn an_unclaimed_order_hold_passes_on_without_letting_anything_overtake() {
    let mut config = ActorsConfig::default();
    config.shards.count = 1;
    config.shards.account_mailbox = 1;
    let (router, clock) = crashing_router(&config);
    let now = crate::clock::system_unix_ms();
    let h = |i: i64| txn("h", &format!("h{i}"), 5, now - 600_000 + i * 60_000);
    // h0 fits, h1 overflows (the hold waits for it), h2.. are refused by it.
    let results = screen(&router, (0..4).map(h).collect()).await;
    verdict(&results[0]);
    assert!(results[1..]
        .iter()
        .all(|r| matches!(r.outcome, Some(Outcome::Error(_)))));
    // h1 never comes back. Once the hold expires it passes to h2, the
    // oldest it refused, so h3 still cannot overtake h2.
    clock.advance(Duration::from_millis(config.shards.order_hold_ms));
    let out = screen(&router, vec![h(3)]).await;
    assert!(error(&out[0]).retryable, "h3 waits for h2");
    verdict(&screen(&router, vec![h(2)]).await[0]);
    verdict(&screen(&router, vec![h(3)]).await[0]);

    // A hold that refused nothing simply ends.
    let out = screen(
        &router,
        vec![txn("k", "k0", 5, now), txn("k", "k1", 5, now)],
    )
    .await;
    assert!(matches!(out[1].outcome, Some(Outcome::Error(_))));
    clock.advance(Duration::from_millis(config.shards.order_hold_ms));
    let out = screen(&router, vec![txn("k", "k2", 5, now)]).await;
    verdict(&out[0]);
    router.stop();
}

#[actix_rt::test]
async fn injected_panics_hit_only_their_share_of_accounts_until_cleared() {
    let mut config = ActorsConfig::default();
    config.shards.count = 2;
    config.supervision.max_restarts = 1_000;
    let chaos = Arc::new(txmesh_chaos::Registry::new(
        txmesh_chaos::RegistryLimits::default(),
    ));
    let options = RouterOptions {
        chaos: Some(chaos.clone()),
        ..RouterOptions::default()
    };
    let router = ShardRouter::start_with(&config, options);
    let now = crate::clock::system_unix_ms();
    let spec = txmesh_chaos::FaultSpec {
        kind: txmesh_chaos::FaultKind::PanicInEvaluation,
        rate: 1.0,
        account_share: 0.25,
        duration: Duration::from_secs(60),
        max_hits: 0,
    };
    let id = chaos.inject(spec, Instant::now()).expect("inject");
    let txns: Vec<_> = (0..400)
        .map(|i| txn(&format!("acct-{i}"), &format!("t{i}"), 1_000, now))
        .collect();
    let results = screen(&router, txns).await;
    let failed = results
        .iter()
        .filter(|r| matches!(&r.outcome, Some(Outcome::Error(e)) if e.retryable))
        .count();
    // A quarter of the accounts, give or take the hash.
    assert!((50..150).contains(&failed), "{failed} of 400 failed");
    // The supervisor restarts an actor after it has answered: wait for the
    // restarts to be counted rather than race them.
    let deadline = Instant::now() + Duration::from_secs(10);
    while router.stats().total(|s| &s.restarts) < failed as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(router.stats().total(|s| &s.restarts), failed as u64);

    // Once cleared, the retries of the failed transactions go through (the
    // others are answered as replays).
    assert!(chaos.clear(id));
    let txns: Vec<_> = (0..400)
        .map(|i| txn(&format!("acct-{i}"), &format!("t{i}"), 1_000, now))
        .collect();
    let results = screen(&router, txns).await;
    assert!(results
        .iter()
        .all(|r| matches!(r.outcome, Some(Outcome::Verdict(_)))));
    router.stop();
}

#[test]
fn an_account_map_gives_back_its_room_once_mostly_empty() {
    let mut map: Accounts<u32> = Accounts::default();
    for i in 0..100_000u32 {
        map.insert(format!("a{i}").into(), i);
    }
    let full = map.capacity();
    shrink_if_sparse(&mut map);
    assert_eq!(map.capacity(), full, "a full map keeps its room");
    map.retain(|_, v| *v < 1_000);
    shrink_if_sparse(&mut map);
    assert!(map.capacity() < full / 16, "{} of {full}", map.capacity());
    assert_eq!(map.len(), 1_000);
}
