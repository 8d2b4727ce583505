//! The journal as the ingress uses it: verdicts are answered once written,
//! windows come back after a reopen, the publisher reads what is beyond the
//! acknowledged position (from memory, then from disk after a restart), one
//! process at a time, with the shard count it was written with.

use std::sync::mpsc;

use txmesh_proto::v1::{txn_result::Outcome, Transaction, TxnResult, Verdict, VerdictStatus};

use super::*;
use crate::{config::SyncPolicy, reply::BatchReply};

fn dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "txmesh-journal-{name}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn config() -> JournalConfig {
    JournalConfig {
        sync: SyncPolicy::Always,
        segment_bytes: 4096,
        ..JournalConfig::default()
    }
}

fn open(d: Option<&Path>, shards: usize) -> Result<(Journals, Recovered), JournalError> {
    Journals::open(
        d,
        &config(),
        &WindowConfig::default(),
        shards,
        &JournalHistograms::default(),
    )
}

fn txn(account: &str, i: usize) -> Transaction {
    Transaction {
        transaction_id: format!("{account}-t{i}"),
        account_id: account.into(),
        amount_minor: 100 + i as i64,
        currency: "EUR".into(),
        timestamp_unix_ms: 1_700_000_000_000 + i as i64,
        merchant_id: "m".into(),
        country: "DE".into(),
        channel: 1,
    }
}

/// Commits `txns` to shard 0 and waits for their answers.
fn commit(journals: &Journals, txns: &[Transaction], learned: bool) -> Vec<TxnResult> {
    let (tx, rx) = mpsc::channel();
    let batch = BatchReply::new(txns.len(), move |r| tx.send(r).expect("receiver"));
    for (i, t) in txns.iter().enumerate() {
        let verdict = Verdict {
            transaction_id: t.transaction_id.clone(),
            account_id: t.account_id.clone(),
            status: VerdictStatus::Approved as i32,
            amount_minor: t.amount_minor,
            currency: t.currency.clone(),
            country: t.country.clone(),
            ..Verdict::default()
        };
        let learned = learned.then(|| crate::window::fingerprint(t));
        journals.shards()[0].commit(t, verdict, learned, batch.slot(i, &t.transaction_id));
    }
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .expect("answered")
}

/// Commits `txns` to shard 0 without waiting; the receiver gets the
/// answers with the thread that gave them.
fn commit_async(
    journals: &Journals,
    txns: &[Transaction],
) -> mpsc::Receiver<(std::thread::ThreadId, Vec<TxnResult>)> {
    let (tx, rx) = mpsc::channel();
    let batch = BatchReply::new(txns.len(), move |r| {
        tx.send((std::thread::current().id(), r)).expect("receiver");
    });
    for (i, t) in txns.iter().enumerate() {
        let verdict = Verdict {
            transaction_id: t.transaction_id.clone(),
            status: VerdictStatus::Approved as i32,
            ..Verdict::default()
        };
        journals.shards()[0].commit(t, verdict, None, batch.slot(i, &t.transaction_id));
    }
    rx
}

#[test]
fn a_shard_that_flushes_as_it_idles_writes_small_groups_itself_and_big_ones_beside_it() {
    let d = dir("owner");
    // With `always`, every group stays on the writer thread (its sync
    // takes milliseconds): the default policy here.
    let interval = JournalConfig {
        sync: SyncPolicy::Interval,
        ..config()
    };
    let open = |d: &Path| {
        Journals::open(
            Some(d),
            &interval,
            &WindowConfig::default(),
            1,
            &JournalHistograms::default(),
        )
    };
    let (journals, _) = open(&d).expect("open");
    let journal = &journals.shards()[0];
    journal.flush_when_idle();
    let wait = std::time::Duration::from_secs(10);
    // A group as big as a busy shard makes is written by the writer
    // thread, with no flush from the owner.
    let big: Vec<_> = (0..writer::OWNER_GROUP).map(|i| txn("big", i)).collect();
    let (by, results) = commit_async(&journals, &big)
        .recv_timeout(wait)
        .expect("answered");
    assert_ne!(
        by,
        std::thread::current().id(),
        "the writer thread wrote it"
    );
    assert_eq!(results.len(), big.len());
    assert_eq!(journal.committed(), big.len() as u64);
    // A small one waits for the owner's flush, which writes and answers it
    // on the owner's thread (unless the writer thread, still finishing
    // the big group, took it first: then the next one).
    let mut inline = false;
    for round in 0..10 {
        let small: Vec<_> = (0..3).map(|i| txn(&format!("small{round}"), i)).collect();
        let answers = commit_async(&journals, &small);
        journal.flush();
        let (by, results) = answers.recv_timeout(wait).expect("answered");
        assert!(results
            .iter()
            .all(|r| matches!(r.outcome, Some(Outcome::Verdict(_)))));
        if by == std::thread::current().id() {
            inline = true;
            break;
        }
    }
    assert!(inline, "the owner's flush wrote a small group itself");
    journals.close();
    drop(journals);
    let (_, recovered) = open(&d).expect("reopen");
    assert!(
        recovered.report.records > big.len() as u64,
        "every group is on disk"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn with_sync_always_every_group_stays_on_the_writer_thread() {
    let d = dir("always");
    let (journals, _) = open(Some(&d), 1).expect("open");
    journals.shards()[0].flush_when_idle();
    let txns: Vec<_> = (0..3).map(|i| txn("acct-1", i)).collect();
    let (by, results) = commit_async(&journals, &txns)
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("answered with no flush from the owner");
    assert_ne!(by, std::thread::current().id());
    assert_eq!(results.len(), 3);
    journals.close();
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn answers_come_after_the_write_and_windows_come_back_after_a_reopen() {
    let d = dir("reopen");
    let (journals, recovered) = open(Some(&d), 1).expect("open");
    assert_eq!(recovered.report.records, 0);
    let txns: Vec<_> = (0..5).map(|i| txn("acct-1", i)).collect();
    let results = commit(&journals, &txns, true);
    assert!(results
        .iter()
        .all(|r| matches!(r.outcome, Some(Outcome::Verdict(_)))));
    assert_eq!(journals.shards()[0].committed(), 5);
    // A replay's answer is journaled but teaches the window nothing.
    commit(&journals, &txns[..1], false);
    let id = journals.publisher_id(|| "ingress-abc".into()).expect("id");
    journals.shards()[0].ack(3);
    journals.persist_acked(&id).expect("acked saved");
    journals.close();
    drop(journals);

    let (journals, recovered) = open(Some(&d), 1).expect("reopen");
    assert_eq!(recovered.report.records, 6);
    let window = &recovered.windows[0]["acct-1"];
    assert_eq!(window.len(), 5, "learned records only");
    assert!(window.find("acct-1-t4").is_some());
    assert_eq!(
        journals.publisher_id(|| "other".into()).expect("id"),
        "ingress-abc"
    );
    assert_eq!(journals.shards()[0].acked(), 3);
    assert_eq!(journals.backlog(), 3);
    // After a restart the tail is empty: the publisher reads from disk.
    let mut cursor = DiskCursor::default();
    let read = journals.shards()[0]
        .read(4, 100, &mut cursor)
        .expect("records 4..6");
    assert_eq!((read.first, read.last, read.skipped), (4, 6, 0));
    assert_eq!(read.verdicts[0].transaction_id, "acct-1-t3");
    assert!(read.verdicts[2].transaction_id == "acct-1-t0" && read.verdicts.len() == 3);
    journals.close();
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn the_publisher_reads_across_segments_from_disk_and_from_memory() {
    let d = dir("segments");
    let (journals, _) = open(Some(&d), 1).expect("open");
    // 200 records over 4 KiB segments: many segment files.
    for chunk in 0..10 {
        let txns: Vec<_> = (0..20).map(|i| txn("acct-2", chunk * 20 + i)).collect();
        commit(&journals, &txns, true);
    }
    let mut cursor = DiskCursor::default();
    let mut next = 1;
    while let Some(read) = journals.shards()[0].read(next, 64, &mut cursor) {
        assert_eq!(read.first, next);
        assert_eq!(read.verdicts.len() as u64, read.last - read.first + 1);
        next = read.last + 1;
    }
    assert_eq!(next, 201);
    journals.close();
    drop(journals);
    let (journals, _) = open(Some(&d), 1).expect("reopen");
    let mut cursor = DiskCursor::default();
    let mut next = 1;
    while let Some(read) = journals.shards()[0].read(next, 64, &mut cursor) {
        assert_eq!(read.first, next, "contiguous from disk");
        next = read.last + 1;
    }
    assert_eq!(next, 201);
    journals.close();
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn one_process_at_a_time_and_with_the_shard_count_it_was_written_with() {
    let d = dir("lock");
    let (journals, _) = open(Some(&d), 2).expect("open");
    let err = open(Some(&d), 2).err().expect("locked");
    assert!(matches!(err, JournalError::Locked { .. }), "{err}");
    journals.close();
    drop(journals);
    let err = open(Some(&d), 3).err().expect("other shard count");
    let text = err.to_string();
    assert!(
        text.contains("2 shards") && text.contains("actors.shards.count"),
        "{text}"
    );
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn without_a_disk_what_leaves_the_memory_tail_is_reported_as_given_up() {
    let journal = JournalConfig {
        tail_bytes: 65_536,
        ..config()
    };
    let (journals, _) = Journals::open(
        None,
        &journal,
        &WindowConfig::default(),
        1,
        &JournalHistograms::default(),
    )
    .expect("memory journal");
    for chunk in 0..20 {
        let txns: Vec<_> = (0..100).map(|i| txn("acct-3", chunk * 100 + i)).collect();
        commit(&journals, &txns, true);
    }
    let mut cursor = DiskCursor::default();
    let read = journals.shards()[0].read(1, 10, &mut cursor).expect("some");
    assert!(
        read.skipped > 0 && read.first == 1 + read.skipped,
        "{read:?}"
    );
    assert_eq!(
        journals.given_up(),
        read.skipped,
        "counted when it left the memory"
    );
    journals.close();
}

#[test]
fn the_memory_tail_lets_go_of_what_the_dashboard_acknowledged() {
    let (journals, _) = open(None, 1).expect("memory journal");
    let shard = &journals.shards()[0];
    let first: Vec<_> = (0..5).map(|i| txn("acct-4", i)).collect();
    commit(&journals, &first, true);
    shard.ack(5);
    assert_eq!(
        shard.shared.tail.lock().first(),
        6,
        "nothing acknowledged kept"
    );
    let mut cursor = DiskCursor::default();
    assert!(shard.read(6, 10, &mut cursor).is_none(), "nothing new yet");
    let more: Vec<_> = (5..8).map(|i| txn("acct-4", i)).collect();
    commit(&journals, &more, true);
    let read = shard.read(6, 10, &mut cursor).expect("the new records");
    assert_eq!((read.first, read.last, read.skipped), (6, 8, 0));
    assert_eq!(journals.given_up(), 0, "delivered is not given up");
    journals.close();
}

#[test]
fn a_snapshot_lets_acknowledged_segments_go_and_recovery_starts_from_it() {
    let d = dir("snapshot");
    let (journals, _) = open(Some(&d), 1).expect("open");
    let shard = &journals.shards()[0];
    for chunk in 0..10 {
        let txns: Vec<_> = (0..20).map(|i| txn("acct-4", chunk * 20 + i)).collect();
        commit(&journals, &txns, true);
    }
    let segments_before = log::list(&d.join("shard-0")).expect("list").len();
    assert!(segments_before > 3, "{segments_before}");
    // The window as the account actor holds it (the last 64 of 200).
    let mut window = HistoryWindow::new();
    for i in 0..200 {
        let t = txn("acct-4", i);
        let v = Verdict {
            transaction_id: t.transaction_id.clone(),
            status: VerdictStatus::Approved as i32,
            ..Verdict::default()
        };
        window.record(&WindowConfig::default(), &t, &v);
    }
    assert!(shard.wants_snapshot());
    shard.write_snapshot(200, vec![("acct-4".into(), window.into_entries())].into());
    let deadline = Instant::now() + Duration::from_secs(10);
    while shard.stats().snapshot_lsn.get() < 200 {
        assert!(Instant::now() < deadline, "snapshot written");
        std::thread::yield_now();
    }
    // Not acknowledged yet: every segment stays (it is the outbox).
    commit(&journals, &[txn("acct-4", 200)], true);
    assert!(log::list(&d.join("shard-0")).expect("list").len() >= segments_before);
    shard.ack(201);
    commit(&journals, &[txn("acct-4", 201)], true);
    // Removal follows the write that answered (off the answer's path).
    let deadline = Instant::now() + Duration::from_secs(10);
    while shard.stats().removed_bytes.get() == 0 {
        assert!(Instant::now() < deadline, "segments removed");
        std::thread::yield_now();
    }
    let after = log::list(&d.join("shard-0")).expect("list");
    // Only the segment holding position 201 (and any after it) remains.
    assert!(
        after.len() < segments_before,
        "{segments_before} -> {}",
        after.len()
    );
    assert!(
        after[0].base_lsn <= 201 && after.get(1).is_none_or(|s| s.base_lsn > 201),
        "{after:?}"
    );
    journals.close();
    drop(journals);

    let (journals, recovered) = open(Some(&d), 1).expect("reopen");
    let window = &recovered.windows[0]["acct-4"];
    assert!(
        window.find("acct-4-t201").is_some(),
        "the record after the snapshot"
    );
    assert!(window.find("acct-4-t150").is_some(), "from the snapshot");
    let ids: Vec<&str> = window.entries().map(|e| e.transaction_id).collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "nothing learned twice");
    journals.close();
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn handed_over_windows_read_back_whole_and_in_order() {
    use super::snapshot::{decode_windows, encode_windows, AccountWindow};
    let entry = |id: &str, amount: i64| {
        crate::window::WindowEntry::new(
            id.into(),
            7,
            amount,
            *b"EUR",
            *b"DE",
            1_700_000_000_000 + amount,
            crate::window::StoredVerdict::new(txmesh_proto::v1::VerdictStatus::Approved, 0, 0, 5),
        )
    };
    let windows: Vec<AccountWindow> = (0..50)
        .map(|a| {
            let entries: Vec<_> = (0..5).map(|i| entry(&format!("t{a}-{i}"), i)).collect();
            (format!("acct-{a}").into(), entries.into_iter().collect())
        })
        .collect();
    let pieces = encode_windows(&windows, 1_000);
    assert!(pieces.len() > 1, "cut into pieces");
    let mut back = Vec::new();
    for piece in &pieces {
        decode_windows(piece, &mut back).expect("readable");
    }
    assert_eq!(back, windows);
    let mut damaged = pieces[0].clone();
    damaged[20] ^= 1;
    assert!(decode_windows(&damaged, &mut Vec::new()).is_err());
}

#[test]
fn with_interval_syncs_a_thread_of_its_own_syncs_what_was_written_and_segments_it_rolls_to() {
    let d = dir("interval");
    let cfg = JournalConfig {
        sync: SyncPolicy::Interval,
        sync_interval_ms: 5,
        segment_bytes: 4096,
        ..JournalConfig::default()
    };
    let histograms = JournalHistograms::default();
    let (journals, _) = Journals::open(Some(&d), &cfg, &WindowConfig::default(), 1, &histograms)
        .expect("journal opens");
    // Answered after the write, not after a sync.
    let first: Vec<_> = (0..5).map(|i| txn("a", i)).collect();
    assert_eq!(commit(&journals, &first, true).len(), 5);
    let synced = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while histograms.sync_seconds.get_sample_count() < n {
            assert!(Instant::now() < deadline, "no sync within 10 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        histograms.sync_seconds.get_sample_count()
    };
    let after_first = synced(1);
    // Enough for several 4 KiB segments: the syncer follows the writer
    // onto each new one.
    let more: Vec<_> = (5..200).map(|i| txn("a", i)).collect();
    assert_eq!(commit(&journals, &more, true).len(), 195);
    synced(after_first + 1);
    journals.close();
    let (_, recovered) = Journals::open(Some(&d), &cfg, &WindowConfig::default(), 1, &histograms)
        .expect("journal reopens");
    assert_eq!(recovered.report.records, 200);
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn a_snapshot_of_many_megabytes_is_written_in_pieces_and_reads_back_whole() {
    let d = dir("snapshot-pieces");
    let approved = Verdict {
        status: VerdictStatus::Approved as i32,
        ..Verdict::default()
    };
    // About 3 MiB of records: several of the writer's 1 MiB pieces, with
    // accounts cut across them. Half are passivated (read from their
    // store's chunks), half active (collected from their actors).
    let mut windows: Vec<_> = (0..12_000)
        .map(|a| {
            let account = format!("acct-{a}");
            let mut window = HistoryWindow::new();
            for i in 0..3 {
                window.record(&WindowConfig::default(), &txn(&account, i), &approved);
            }
            (account.into_boxed_str(), window.into_entries())
        })
        .collect();
    let mut passive = crate::window::passive::PassiveWindows::new();
    for (account, entries) in windows.split_off(6_000) {
        passive.insert(&account, &entries);
    }
    let windows = super::snapshot::SnapshotWindows {
        passive: passive.freeze(),
        active: windows,
    };
    let bytes = super::snapshot::write(&d, 77, windows).expect("written");
    assert!(bytes > 2 << 20, "{bytes}");
    let names: Vec<_> = std::fs::read_dir(&d)
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().into_string().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        ["snapshot-00000000000000000077.snap"],
        "no temporary left"
    );
    let mut loaded = std::collections::HashMap::new();
    let lsn = super::snapshot::load(&d, &mut loaded, &WindowConfig::default());
    assert_eq!(lsn, 77);
    assert_eq!(loaded.len(), 12_000);
    for a in [0, 5_999, 6_000, 11_999] {
        let account = format!("acct-{a}");
        let ids: Vec<&str> = loaded[account.as_str()]
            .entries()
            .map(|e| e.transaction_id)
            .collect();
        let want: Vec<String> = (0..3).map(|i| format!("{account}-t{i}")).collect();
        assert_eq!(ids, want);
    }
    std::fs::remove_dir_all(&d).ok();
}
