//! The format's promises: a record round-trips; a scan keeps every record
//! before a torn tail or a flipped byte and says where it stopped.

use txmesh_proto::v1::{Channel, Reason};

use super::*;

fn txn(id: &str) -> Transaction {
    Transaction {
        transaction_id: id.into(),
        account_id: "acct-0042".into(),
        amount_minor: -1_234_567,
        currency: "EUR".into(),
        timestamp_unix_ms: 1_700_000_000_123,
        merchant_id: "m-1".into(),
        country: "DE".into(),
        channel: Channel::Ecommerce as i32,
    }
}

fn verdict(id: &str) -> Verdict {
    Verdict {
        transaction_id: id.into(),
        account_id: "acct-0042".into(),
        status: VerdictStatus::Flagged as i32,
        reasons: vec![Reason::Velocity as i32, Reason::HighAmount as i32],
        risk_score: 70,
        replayed: false,
        processing_time_us: 321,
        amount_minor: -1_234_567,
        currency: "EUR".into(),
        country: "DE".into(),
        traceparent: "00-abc-def-01".into(),
        merchant_id: String::new(),
    }
}

fn log_of(ids: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let record = VerdictRecord::new(&txn(id), &verdict(id), true);
        frame(&mut out, i as u64 + 1, |o| record.encode(o));
    }
    out
}

#[test]
fn a_verdict_record_round_trips_with_what_the_window_and_dashboard_need() {
    let record = VerdictRecord::new(&txn("t-1"), &verdict("t-1"), true);
    let mut bytes = Vec::new();
    record.encode(&mut bytes);
    let back = VerdictRecord::decode(&bytes).expect("decodes");
    assert_eq!(back, record);
    let mut sent = back.to_verdict();
    sent.reasons.sort_unstable();
    let mut expected = verdict("t-1");
    expected.reasons.sort_unstable();
    // An alert carries its merchant to the dashboard.
    expected.merchant_id = "m-1".into();
    assert_eq!(sent, expected);
    assert!(VerdictRecord::decode(&bytes[..bytes.len() - 1]).is_none());
}

#[test]
fn a_scan_stops_at_a_torn_tail_and_keeps_what_came_before() {
    let bytes = log_of(&["a", "b", "c"]);
    let (end, valid) = scan(&bytes, |_| {});
    assert_eq!((end, valid), (ScanEnd::Clean, bytes.len()));
    for cut in 1..bytes.len() {
        let mut seen = Vec::new();
        let (end, valid) = scan(&bytes[..cut], |f| seen.push(f.lsn));
        assert!(
            matches!(end, ScanEnd::Torn { .. } | ScanEnd::Clean),
            "{end:?}"
        );
        assert!(valid <= cut);
        // Every record wholly inside the cut is kept.
        let (_, full) = scan(&bytes[..valid], |_| {});
        assert_eq!(full, valid);
        assert!(seen.windows(2).all(|w| w[1] == w[0] + 1));
    }
}

#[test]
fn a_flipped_byte_stops_the_scan_at_the_damaged_record() {
    let bytes = log_of(&["a", "b", "c"]);
    let mut ends = Vec::new();
    scan(&bytes, |f| ends.push(f.end));
    for at in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x40;
        let mut seen = Vec::new();
        let (end, valid) = scan(&damaged, |f| seen.push(f.lsn));
        let record = ends.iter().position(|e| at < *e).expect("inside a record");
        assert_eq!(seen, (1..=record as u64).collect::<Vec<_>>(), "byte {at}");
        assert_ne!(end, ScanEnd::Clean, "byte {at}");
        assert_eq!(valid, if record == 0 { 0 } else { ends[record - 1] });
    }
}

#[test]
fn a_header_names_what_is_wrong() {
    let h = header(LogKind::Verdicts, 77);
    assert_eq!(read_header(&h, LogKind::Verdicts), Ok(77));
    assert_eq!(read_header(&h, LogKind::Applied), Err(HeaderFault::Kind(1)));
    assert_eq!(
        read_header(&h[..10], LogKind::Verdicts),
        Err(HeaderFault::Short)
    );
    assert_eq!(
        read_header(b"SQLite format 3\0 and more bytes!!", LogKind::Verdicts),
        Err(HeaderFault::Magic)
    );
    let mut future = h;
    future[8] = 9;
    let crc = crc32c::crc32c(&future[..28]);
    future[28..32].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(
        read_header(&future, LogKind::Verdicts),
        Err(HeaderFault::Version(9))
    );
    let mut flipped = h;
    flipped[15] ^= 1;
    assert_eq!(
        read_header(&flipped, LogKind::Verdicts),
        Err(HeaderFault::Checksum)
    );
}

#[test]
fn the_writers_encoding_is_the_records_and_only_alerts_keep_the_merchant() {
    for (status, merchant) in [
        (VerdictStatus::Flagged, "m-1"),
        (VerdictStatus::Approved, ""),
    ] {
        let mut v = verdict("t-2");
        v.status = status as i32;
        let mut written = Vec::new();
        encode_answer(
            &mut written,
            &txn("t-2"),
            &v,
            Some(fingerprint(&txn("t-2"))),
        );
        let record = VerdictRecord::decode(&written).expect("decodes");
        assert_eq!(&*record.merchant_id, merchant);
        let mut again = Vec::new();
        record.encode(&mut again);
        assert_eq!(again, written, "{status:?}");
    }
}
