//! The log's promises, on real files: what was appended is replayed after
//! a reopen; a torn tail or a flipped byte is cut away (everything before
//! it kept, the damage reported) and never panics; a file that is not a
//! segment refuses the open, naming it; whole segments are removed from
//! the front only.

use std::path::PathBuf;

use super::*;

fn dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "txmesh-log-{name}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn append(log: &mut Log, payloads: &[&[u8]]) {
    let first = log.next_lsn();
    let mut bytes = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        format::frame(&mut bytes, first + i as u64, |o| o.extend_from_slice(p));
    }
    log.append(first, &bytes, first + payloads.len() as u64)
        .expect("append");
}

fn replay(dir: &Path) -> (Vec<(u64, Vec<u8>)>, Recovery) {
    let mut seen = Vec::new();
    let (_log, recovery) = Log::open(dir, LogKind::Verdicts, 1 << 20, |lsn, p| {
        seen.push((lsn, p.to_vec()))
    })
    .expect("open");
    (seen, recovery)
}

#[test]
fn what_was_appended_is_replayed_in_order_and_appending_goes_on_after_it() {
    let d = dir("replay");
    let (mut log, _) = Log::open(&d, LogKind::Verdicts, 1 << 20, |_, _| {}).expect("open");
    append(&mut log, &[b"a", b"b"]);
    append(&mut log, &[b"c"]);
    log.sync().expect("sync");
    drop(log);
    let (seen, recovery) = replay(&d);
    assert_eq!(
        seen,
        vec![(1, b"a".to_vec()), (2, b"b".to_vec()), (3, b"c".to_vec())]
    );
    assert!(recovery.dropped.is_empty());
    let (mut log, _) = Log::open(&d, LogKind::Verdicts, 1 << 20, |_, _| {}).expect("reopen");
    assert_eq!(log.next_lsn(), 4);
    append(&mut log, &[b"d"]);
    drop(log);
    assert_eq!(replay(&d).0.len(), 4);
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn a_torn_tail_is_cut_away_and_reported_keeping_every_record_before_it() {
    let d = dir("torn");
    let (mut log, _) = Log::open(&d, LogKind::Verdicts, 1 << 20, |_, _| {}).expect("open");
    append(&mut log, &[b"one", b"two", b"three"]);
    let path = log.segments()[0].path.clone();
    drop(log);
    let len = std::fs::metadata(&path).expect("segment").len();
    // Killed in the middle of writing the third record.
    let file = OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open segment");
    file.set_len(len - 3).expect("cut");
    let (seen, recovery) = replay(&d);
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(recovery.dropped.len(), 1, "{:?}", recovery.dropped);
    assert!(recovery.dropped[0].3.contains("torn"));
    // The cut is made on disk: the next open finds a clean log and appends
    // the next record where the torn one was.
    let (mut log, recovery) = Log::open(&d, LogKind::Verdicts, 1 << 20, |_, _| {}).expect("reopen");
    assert!(recovery.dropped.is_empty());
    assert_eq!(log.next_lsn(), 3);
    append(&mut log, &[b"three again"]);
    drop(log);
    assert_eq!(
        replay(&d).0.last().map(|s| s.1.clone()),
        Some(b"three again".to_vec())
    );
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn a_flipped_byte_drops_the_damaged_record_and_what_follows_in_its_segment() {
    let d = dir("flip");
    let (mut log, _) = Log::open(&d, LogKind::Verdicts, 1 << 20, |_, _| {}).expect("open");
    append(&mut log, &[b"first", b"second", b"third"]);
    let path = log.segments()[0].path.clone();
    drop(log);
    let mut bytes = std::fs::read(&path).expect("read");
    // A byte inside the second record's payload.
    let at = HEADER_LEN + format::FRAME_LEN + 5 + format::FRAME_LEN + 2;
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write");
    let (seen, recovery) = replay(&d);
    assert_eq!(seen, vec![(1, b"first".to_vec())]);
    assert!(
        recovery.dropped[0].3.contains("damaged"),
        "{:?}",
        recovery.dropped
    );
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn a_file_that_is_not_a_segment_refuses_the_open_and_is_named() {
    let d = dir("foreign");
    std::fs::write(
        d.join("00000000000000000001.seg"),
        b"PK\x03\x04 a zip archive that somebody copied into the journal directory",
    )
    .expect("write");
    let err = Log::open(&d, LogKind::Verdicts, 1 << 20, |_, _| {})
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(
        text.contains("00000000000000000001.seg") && text.contains("bad magic"),
        "{text}"
    );
    // Another kind of log (the dashboard's) is refused too.
    let d2 = dir("kind");
    let (mut log, _) = Log::open(&d2, LogKind::Applied, 1 << 20, |_, _| {}).expect("open");
    append(&mut log, &[b"x"]);
    drop(log);
    let err = Log::open(&d2, LogKind::Verdicts, 1 << 20, |_, _| {})
        .err()
        .expect("refused");
    assert!(err.to_string().contains("another kind"), "{err}");
    std::fs::remove_dir_all(&d).ok();
    std::fs::remove_dir_all(&d2).ok();
}

#[test]
fn segments_roll_past_their_size_and_are_removed_whole_from_the_front() {
    let d = dir("roll");
    let (mut log, _) = Log::open(&d, LogKind::Verdicts, 100, |_, _| {}).expect("open");
    for _ in 0..6 {
        append(&mut log, &[&[7u8; 60]]);
    }
    let bases: Vec<u64> = log.segments().iter().map(|s| s.base_lsn).collect();
    assert!(bases.len() >= 3, "{bases:?}");
    assert_eq!(bases[0], 1);
    // Records 1 and 2 are no longer needed: only segments wholly before 3 go.
    log.remove_before(3);
    assert!(log.segments()[0].base_lsn <= 3);
    assert!(log.segments().iter().all(|s| s.path.exists()));
    // The active segment is never removed.
    log.remove_before(u64::MAX);
    assert_eq!(log.segments().len(), 1);
    drop(log);
    let (seen, _) = replay(&d);
    assert_eq!(seen.last().map(|s| s.0), Some(6));
    std::fs::remove_dir_all(&d).ok();
}
