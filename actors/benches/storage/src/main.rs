//! Appends verdict records (the journal's own encoding, ~110 bytes) from
//! two writer threads, one per shard, in groups, the way the ingress's
//! journal writers do, into (a) the segmented log txmesh ships and (b)
//! fjall (one keyspace per shard in one database), under each durability
//! level: written to the OS per group (survives a killed process) and
//! fdatasync per group (survives a power cut). Then reads everything back,
//! as recovery does. Prints records/s, group commit latency and read time.
//!
//! Usage: txmesh-storage-bench [RECORDS_PER_SHARD] [GROUP] [DIR]

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use txmesh_actors::journal::{
    format::{self, encode_answer, LogKind},
    log::Log,
};
use txmesh_proto::v1::{Transaction, Verdict};

const SHARDS: usize = 2;

#[derive(Clone, Copy, PartialEq)]
enum Durability {
    Os,
    Sync,
}

fn record(i: u64) -> Vec<u8> {
    let txn = Transaction {
        transaction_id: format!("txn-{i:012}"),
        account_id: format!("acct-{:08}", i % 100_000),
        amount_minor: 10_000 + (i % 997) as i64,
        currency: "EUR".into(),
        timestamp_unix_ms: 1_790_000_000_000 + i as i64,
        merchant_id: "m-0042".into(),
        country: "DE".into(),
        channel: 2,
    };
    let verdict = Verdict {
        transaction_id: txn.transaction_id.clone(),
        account_id: txn.account_id.clone(),
        status: 1,
        processing_time_us: 120,
        ..Verdict::default()
    };
    let mut out = Vec::with_capacity(128);
    let fingerprint = txmesh_actors::window::fingerprint(&txn);
    encode_answer(&mut out, &txn, &verdict, Some(fingerprint));
    out
}

struct Outcome {
    records_per_sec: f64,
    group_us: Histogram<u64>,
    bytes: u64,
    read: Duration,
}

fn ours(dir: &Path, n: u64, group: u64, durability: Durability) -> Outcome {
    let started = Instant::now();
    let handles: Vec<_> = (0..SHARDS)
        .map(|s| {
            let dir = dir.join(format!("shard-{s}"));
            std::thread::spawn(move || {
                let (mut log, _) =
                    Log::open(&dir, LogKind::Verdicts, 64 << 20, |_, _| {}).expect("open");
                let mut hist = Histogram::<u64>::new(3).expect("histogram");
                let mut lsn = 1;
                let mut buf = Vec::new();
                while lsn <= n {
                    let t = Instant::now();
                    buf.clear();
                    let first = lsn;
                    for _ in 0..group.min(n - lsn + 1) {
                        let payload = record(lsn);
                        format::frame(&mut buf, lsn, |o| o.extend_from_slice(&payload));
                        lsn += 1;
                    }
                    log.append(first, &buf, lsn).expect("append");
                    if durability == Durability::Sync {
                        log.sync().expect("sync");
                    }
                    hist.record(t.elapsed().as_micros() as u64).ok();
                }
                (hist, log.disk_bytes())
            })
        })
        .collect();
    let mut group_us = Histogram::<u64>::new(3).expect("histogram");
    let mut bytes = 0;
    for h in handles {
        let (hist, b) = h.join().expect("writer");
        group_us.add(hist).ok();
        bytes += b;
    }
    let records_per_sec = (n * SHARDS as u64) as f64 / started.elapsed().as_secs_f64();
    let read_started = Instant::now();
    let mut seen = 0u64;
    for s in 0..SHARDS {
        Log::open(&dir.join(format!("shard-{s}")), LogKind::Verdicts, 64 << 20, |_, p| {
            seen += p.len() as u64 / p.len().max(1) as u64;
        })
        .expect("reopen");
    }
    assert_eq!(seen, n * SHARDS as u64);
    Outcome {
        records_per_sec,
        group_us,
        bytes,
        read: read_started.elapsed(),
    }
}

fn fjall_run(dir: &Path, n: u64, group: u64, durability: Durability) -> Outcome {
    let started = Instant::now();
    let db = fjall::Database::builder(dir).open().expect("fjall opens");
    let keyspaces: Vec<_> = (0..SHARDS)
        .map(|s| {
            db.keyspace(&format!("shard-{s}"), fjall::KeyspaceCreateOptions::default)
                .expect("keyspace")
        })
        .collect();
    let db = Arc::new(db);
    let handles: Vec<_> = keyspaces
        .into_iter()
        .map(|ks| {
            let db = db.clone();
            std::thread::spawn(move || {
                let mut hist = Histogram::<u64>::new(3).expect("histogram");
                let mut lsn = 1;
                while lsn <= n {
                    let t = Instant::now();
                    let mut batch = db.batch();
                    for _ in 0..group.min(n - lsn + 1) {
                        batch.insert(&ks, lsn.to_be_bytes(), record(lsn));
                        lsn += 1;
                    }
                    batch.commit().expect("commit");
                    let mode = match durability {
                        Durability::Os => fjall::PersistMode::Buffer,
                        Durability::Sync => fjall::PersistMode::SyncData,
                    };
                    db.persist(mode).expect("persist");
                    hist.record(t.elapsed().as_micros() as u64).ok();
                }
                hist
            })
        })
        .collect();
    let mut group_us = Histogram::<u64>::new(3).expect("histogram");
    for h in handles {
        group_us.add(h.join().expect("writer")).ok();
    }
    let records_per_sec = (n * SHARDS as u64) as f64 / started.elapsed().as_secs_f64();
    drop(db);
    let bytes = du(dir);
    let read_started = Instant::now();
    let db = fjall::Database::builder(dir).open().expect("fjall reopens");
    let mut seen = 0u64;
    for s in 0..SHARDS {
        let ks = db
            .keyspace(&format!("shard-{s}"), fjall::KeyspaceCreateOptions::default)
            .expect("keyspace");
        for guard in ks.iter() {
            let (_k, v) = guard.into_inner().expect("read");
            seen += u64::from(!v.is_empty());
        }
    }
    assert_eq!(seen, n * SHARDS as u64);
    Outcome {
        records_per_sec,
        group_us,
        bytes,
        read: read_started.elapsed(),
    }
}

fn du(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        total += if p.is_dir() { du(&p) } else { e.metadata().map_or(0, |m| m.len()) };
    }
    total
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(500_000);
    let group: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(64);
    let root = args
        .get(3)
        .map_or_else(|| std::env::temp_dir().join("txmesh-storage-bench"), PathBuf::from);
    println!("{SHARDS} writers x {n} verdict records, groups of {group}");
    println!("{:<34} {:>12} {:>10} {:>10} {:>10} {:>9} {:>9}", "candidate", "records/s", "group p50", "group p99", "group max", "B/record", "read s");
    for (durability, label) in [(Durability::Os, "write to OS"), (Durability::Sync, "fdatasync")] {
        let per = if durability == Durability::Sync { n / 10 } else { n };
        for candidate in ["segmented log (txmesh)", "fjall 3"] {
            let dir = root.join(format!("{}-{label}", candidate.split(' ').next().unwrap_or("x")).replace(' ', "-"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("dir");
            let out = if candidate.starts_with("segmented") {
                ours(&dir, per, group, durability)
            } else {
                fjall_run(&dir, per, group, durability)
            };
            println!(
                "{:<34} {:>12.0} {:>8}us {:>8}us {:>8}us {:>9.1} {:>9.3}",
                format!("{candidate}, {label}"),
                out.records_per_sec,
                out.group_us.value_at_quantile(0.5),
                out.group_us.value_at_quantile(0.99),
                out.group_us.max(),
                out.bytes as f64 / (per * SHARDS as u64) as f64,
                out.read.as_secs_f64()
            );
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
