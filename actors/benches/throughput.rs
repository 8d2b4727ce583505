//! Router + account actors in one process: transactions per second through
//! `ShardRouter::screen` (one shard per core, batches of 256, 32 batches in
//! flight), over 100,000 accounts. Generating the transactions runs on the
//! same cores and is part of the figure.
//!
//! `cargo bench -p txmesh-actors --bench throughput [-- SECONDS]`

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::sync::Semaphore;
use txmesh_actors::{ActorsConfig, ShardRouter};
use txmesh_proto::v1::{txn_result::Outcome, Transaction};

const ACCOUNTS: u64 = 100_000;
const BATCH: u64 = 256;
const IN_FLIGHT: usize = 32;

fn main() {
    let secs: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10);
    actix_rt::System::new().block_on(run(Duration::from_secs(secs)));
}

async fn run(duration: Duration) {
    let config = ActorsConfig::default();
    let router = ShardRouter::start(&config);
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let verdicts = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let now = txmesh_actors::clock::SystemClock::shared();
    let base_ms = txmesh_actors::Clock::unix_ms(&*now) - 30 * 24 * 3_600_000;
    let start = Instant::now();
    let mut next: u64 = 0;
    while start.elapsed() < duration {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let txns: Vec<Transaction> = (next..next + BATCH)
            .map(|i| {
                let account = i % ACCOUNTS;
                Transaction {
                    transaction_id: format!("t{i}"),
                    account_id: format!("acct-{account:08}"),
                    amount_minor: 1_000 + (i % 5_000) as i64,
                    currency: "EUR".into(),
                    // One minute apart per account: no velocity bursts.
                    timestamp_unix_ms: base_ms + (i / ACCOUNTS) as i64 * 60_000,
                    merchant_id: "m-1".into(),
                    country: "DE".into(),
                    channel: 1,
                }
            })
            .collect();
        next += BATCH;
        let verdicts = verdicts.clone();
        let errors = errors.clone();
        router.screen(txns, Instant::now(), move |results| {
            let ok = results
                .iter()
                .filter(|r| matches!(r.outcome, Some(Outcome::Verdict(_))))
                .count() as u64;
            verdicts.fetch_add(ok, Ordering::Relaxed);
            errors.fetch_add(results.len() as u64 - ok, Ordering::Relaxed);
            drop(permit);
        });
    }
    // Wait for what is in flight.
    let _ = permits.acquire_many(IN_FLIGHT as u32).await;
    let elapsed = start.elapsed().as_secs_f64();
    let v = verdicts.load(Ordering::Relaxed);
    println!(
        "shards {} accounts {ACCOUNTS} batch {BATCH} in flight {IN_FLIGHT}: {v} verdicts, {} errors in {elapsed:.1} s = {:.0} tx/s",
        router.shard_count(),
        errors.load(Ordering::Relaxed),
        v as f64 / elapsed
    );
    router.stop();
    actix_rt::System::current().stop();
}
