//! Memory of account actors, as process RSS (Linux /proc/self/status):
//!
//! 1. 100,000 accounts active at once (one transaction each): RSS growth
//!    per active account.
//! 2. 1,000,000 distinct accounts touched once each, in waves of 100,000
//!    that passivate before the next wave (as idle accounts do over time),
//!    then all passivated: the RSS that holds them.
//!
//! Time is a `ManualClock` moved past `passivate_after_secs`, so the run
//! takes seconds, not minutes. Allocator pages freed by passivation are
//! reused by later waves but not necessarily returned to the OS, so the
//! final figure is an upper bound.
//!
//! `cargo bench -p txmesh-actors --bench passivation`

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::Semaphore;
use txmesh_actors::{
    clock::ManualClock, ActorsConfig, Clock, RouterOptions, ScreeningStats, ShardRouter,
};
use txmesh_proto::v1::{txn_result::Outcome, Transaction};

const WAVE: u64 = 100_000;
const TOTAL: u64 = 1_000_000;
const BATCH: u64 = 1_000;

fn main() {
    actix_rt::System::new().block_on(run());
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// One transaction for each account in `range`, 4 batches in flight.
async fn touch(router: &ShardRouter, clock: &ManualClock, range: std::ops::Range<u64>) {
    let permits = Arc::new(Semaphore::new(4));
    let now_ms = clock.unix_ms();
    let mut start = range.start;
    while start < range.end {
        let end = (start + BATCH).min(range.end);
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open");
        let txns = (start..end)
            .map(|a| Transaction {
                transaction_id: format!("t{a}"),
                account_id: format!("acct-{a:08}"),
                amount_minor: 1_000,
                currency: "EUR".into(),
                timestamp_unix_ms: now_ms - 60_000,
                merchant_id: "m-1".into(),
                country: "DE".into(),
                channel: 1,
            })
            .collect();
        router.screen(txns, Instant::now(), move |results| {
            let bad = results
                .iter()
                .filter(|r| !matches!(r.outcome, Some(Outcome::Verdict(_))))
                .count();
            assert_eq!(bad, 0, "every account screened");
            drop(permit);
        });
        start = end;
    }
    let _ = permits.acquire_many(4).await;
}

async fn wait_for(what: &str, stats: &ScreeningStats, cond: impl Fn(&ScreeningStats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !cond(stats) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn passivate_all(router: &ShardRouter, clock: &ManualClock, config: &ActorsConfig) {
    clock.advance(Duration::from_secs(config.shards.passivate_after_secs));
    wait_for("passivation", router.stats(), |s| {
        s.total(|x| &x.active) == 0
    })
    .await;
}

async fn run() {
    let mut config = ActorsConfig::default();
    config.shards.passivation_sweep_ms = 10;
    let clock = ManualClock::new();
    let options = RouterOptions {
        clock: clock.clone(),
        ..RouterOptions::default()
    };
    let router = ShardRouter::start_with(&config, options);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let baseline = rss_bytes();
    println!(
        "shards {}, baseline RSS {:.1} MiB",
        router.shard_count(),
        mib(baseline)
    );

    touch(&router, &clock, 0..WAVE).await;
    let stats = router.stats().clone();
    assert_eq!(stats.total(|s| &s.active), WAVE);
    let active = rss_bytes();
    println!(
        "{WAVE} accounts active: RSS {:.1} MiB, {:.0} bytes per active account",
        mib(active),
        (active.saturating_sub(baseline)) as f64 / WAVE as f64
    );

    passivate_all(&router, &clock, &config).await;
    let mut done = WAVE;
    while done < TOTAL {
        touch(&router, &clock, done..done + WAVE).await;
        passivate_all(&router, &clock, &config).await;
        done += WAVE;
    }
    wait_for("all passivated", &stats, |s| {
        s.total(|x| &x.passivated) == TOTAL
    })
    .await;
    let passive = rss_bytes();
    println!(
        "{TOTAL} accounts passivated, 0 active: RSS {:.1} MiB ({:.0} bytes per account above baseline)",
        mib(passive),
        passive.saturating_sub(baseline) as f64 / TOTAL as f64
    );
    println!(
        "passivations {} reactivations {}",
        stats.total(|s| &s.passivations),
        stats.total(|s| &s.reactivations)
    );
    router.stop();
    actix_rt::System::current().stop();
}
