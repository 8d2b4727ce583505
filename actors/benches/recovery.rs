//! Recovery: how long an ingress with ACCOUNTS accounts and VERDICTS
//! journaled verdicts takes from start to screening again, and its peak
//! memory meanwhile.
//!
//! 1. Writes the journal the way the ingress does (two shards, each
//!    verdict through `ShardJournal::commit`, groups written by the
//!    shards' writer threads), then a window snapshot of every account, as
//!    the shards take one every `snapshot_interval_secs`, and RECENT more
//!    verdicts after it (the tail recovery replays).
//! 2. In a fresh process (this binary again, so that the figure is the
//!    recovery's alone): opens the journal (snapshot + tail, both shards in
//!    parallel) and starts the shards on the recovered windows, which is
//!    what stands between the ingress's start and SERVING. Prints the time
//!    and the peak RSS (VmHWM).
//!
//! `cargo bench -p txmesh-actors --bench recovery -- [ACCOUNTS] [VERDICTS] [RECENT] [DIR]`
//! (defaults 1,000,000, 10,000,000, 1,000,000, a temporary directory).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use txmesh_actors::{
    config::{JournalConfig, SyncPolicy},
    journal::{snapshot::SnapshotWindows, JournalHistograms, Journals},
    reply::BatchReply,
    window::passive::PassiveWindows,
    ActorsConfig, HistoryWindow, RouterOptions, ShardRouter,
};
use txmesh_proto::v1::{Transaction, Verdict, VerdictStatus};

const SHARDS: usize = 2;

fn config() -> ActorsConfig {
    let mut config = ActorsConfig::default();
    config.shards.count = SHARDS;
    config.journal = JournalConfig {
        sync: SyncPolicy::Never,
        ..JournalConfig::default()
    };
    config
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn shard_of(account: &str) -> usize {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    account.hash(&mut h);
    (h.finish() % SHARDS as u64) as usize
}

fn txn(i: u64, accounts: u64) -> Transaction {
    let account = i % accounts;
    Transaction {
        transaction_id: format!("txn-{i:012}"),
        account_id: format!("acct-{account:08}"),
        amount_minor: 1_000 + (i % 5_000) as i64,
        currency: "EUR".into(),
        timestamp_unix_ms: 1_790_000_000_000 + (i / accounts) as i64 * 60_000,
        merchant_id: "m-0042".into(),
        country: "DE".into(),
        channel: 2,
    }
}

fn verdict(t: &Transaction) -> Verdict {
    Verdict {
        transaction_id: t.transaction_id.clone(),
        account_id: t.account_id.clone(),
        status: VerdictStatus::Approved as i32,
        processing_time_us: 150,
        amount_minor: t.amount_minor,
        currency: t.currency.clone(),
        country: t.country.clone(),
        ..Verdict::default()
    }
}

/// Commits verdicts `from..to` and waits for them to be written.
fn commit(
    journals: &Journals,
    from: u64,
    to: u64,
    accounts: u64,
    windows: Option<&mut [HashMap<Box<str>, HistoryWindow>]>,
) {
    let config = config();
    let mut windows = windows;
    for chunk_start in (from..to).step_by(10_000) {
        let chunk_end = (chunk_start + 10_000).min(to);
        let (tx, rx) = std::sync::mpsc::channel();
        let batch = BatchReply::new((chunk_end - chunk_start) as usize, move |_| {
            let _ = tx.send(());
        });
        for (slot, i) in (chunk_start..chunk_end).enumerate() {
            let t = txn(i, accounts);
            let v = verdict(&t);
            let shard = shard_of(&t.account_id);
            if let Some(w) = windows.as_deref_mut() {
                w[shard]
                    .entry(t.account_id.as_str().into())
                    .or_default()
                    .record(&config.window, &t, &v);
            }
            let fingerprint = txmesh_actors::window::fingerprint(&t);
            journals.shards()[shard].commit(
                &t,
                v,
                Some(fingerprint),
                batch.slot(slot, &t.transaction_id),
            );
        }
        rx.recv_timeout(Duration::from_secs(60)).expect("written");
    }
}

/// Opens (and recovers) the journal under `dir` as the ingress does.
fn open(dir: &Path) -> (Journals, txmesh_actors::journal::Recovered) {
    let config = config();
    Journals::open(
        Some(dir),
        &config.journal,
        &config.window,
        SHARDS,
        &JournalHistograms::default(),
    )
    .expect("journal opens")
}

fn write(dir: &Path, accounts: u64, verdicts: u64, recent: u64) {
    let (journals, _) = open(dir);
    let started = Instant::now();
    let before = verdicts - recent;
    let mut windows: Vec<HashMap<Box<str>, HistoryWindow>> =
        (0..SHARDS).map(|_| HashMap::new()).collect();
    commit(&journals, 0, before, accounts, Some(&mut windows));
    for (shard, w) in windows.into_iter().enumerate() {
        let journal = &journals.shards()[shard];
        let lsn = journal.committed();
        assert!(journal.wants_snapshot());
        // As a shard snapshots its passivated accounts: from their store.
        let mut passive = PassiveWindows::new();
        for (k, w) in w {
            passive.insert(&k, &w.into_entries());
        }
        let windows = SnapshotWindows {
            passive: passive.freeze(),
            active: Vec::new(),
        };
        journal.write_snapshot(lsn, windows);
        while journal.stats().snapshot_lsn.get() < lsn {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // The dashboard acknowledged everything: what the snapshot covers goes
    // as the tail is written (the shipped compaction).
    for journal in journals.shards() {
        journal.ack(journal.committed());
    }
    commit(&journals, before, verdicts, accounts, None);
    journals.close();
    let bytes: u64 = journals
        .shards()
        .iter()
        .map(|s| s.stats().bytes.get())
        .sum();
    let disk: u64 = journals
        .shards()
        .iter()
        .map(|s| s.stats().disk_bytes.get())
        .sum();
    println!(
        "wrote {verdicts} verdicts of {accounts} accounts in {:.1} s ({:.1} bytes/verdict in segments), \
         a snapshot before the last {recent}; segments on disk after compaction: {:.0} MiB",
        started.elapsed().as_secs_f64(),
        bytes as f64 / verdicts as f64,
        disk as f64 / (1 << 20) as f64
    );
}

fn recover(dir: &Path) {
    let config = config();
    let started = Instant::now();
    let (journals, recovered) = open(dir);
    let opened = started.elapsed();
    let report = recovered.report.clone();
    actix_rt::System::new().block_on(async move {
        let router = ShardRouter::start_recovered(&config, RouterOptions::default(), journals, recovered.windows);
        let ready = started.elapsed();
        let passive: u64 = router.stats().shards.iter().map(|s| s.passivated.get()).sum();
        println!(
            "recovered {} records ({} accounts) from snapshot + tail: journal read in {:.2} s, shards started on the windows at {:.2} s; peak RSS {:.0} MiB; {passive} accounts held",
            report.records,
            report.accounts,
            opened.as_secs_f64(),
            ready.as_secs_f64(),
            peak_rss_mib()
        );
        router.stop();
    });
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("recover") {
        recover(Path::new(&args[1]));
        return;
    }
    let number =
        |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (accounts, verdicts, recent) = (
        number(0, 1_000_000),
        number(1, 10_000_000),
        number(2, 1_000_000),
    );
    let dir = args.get(3).map_or_else(
        || std::env::temp_dir().join(format!("txmesh-recovery-{}", std::process::id())),
        PathBuf::from,
    );
    let _ = std::fs::remove_dir_all(&dir);
    write(&dir, accounts, verdicts, recent);
    let status = std::process::Command::new(std::env::current_exe().expect("this binary"))
        .arg("recover")
        .arg(&dir)
        .status()
        .expect("recovery runs");
    assert!(status.success());
    let _ = std::fs::remove_dir_all(&dir);
}
