//! The journal's on-disk format, version 1 (all integers little-endian).
//!
//! ```text
//! segment file  = header record*
//! header (32 B) = magic "TXMJRNL\0" | version u16 | kind u16 | base_lsn u64
//!                 | reserved u64 | crc32c(previous 28 bytes) u32
//! record        = len u32 | crc32c(lsn ++ payload) u32 | lsn u64 | payload[len]
//! ```
//!
//! A record is valid only when its whole frame is present and its checksum
//! matches; scanning stops at the first record that is not (a torn tail or
//! damage), so everything before it is kept. Payloads are opaque here; the
//! verdict payload is [`VerdictRecord`].

use std::ops::Range;

use txmesh_proto::v1::{Transaction, Verdict, VerdictStatus};

use crate::window::{code, fingerprint, Entry, Slot, StoredVerdict, WindowEntry};

/// The first bytes of every segment file.
pub const MAGIC: &[u8; 8] = b"TXMJRNL\0";
/// The format version this code writes and reads.
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 32;
/// Bytes before a record's payload.
pub const FRAME_LEN: usize = 16;
/// A length above this is damage, not a record.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// What a log holds (checked against the header, so one log's segment is
/// never read as another's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogKind {
    /// The ingress's verdicts, one log per shard.
    Verdicts = 1,
    /// The dashboard's applied batches.
    Applied = 2,
    /// A shard's window snapshot.
    Snapshot = 3,
}

/// Why a segment header was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderFault {
    Short,
    Magic,
    Checksum,
    Version(u16),
    Kind(u16),
}

impl std::fmt::Display for HeaderFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Short => write!(f, "shorter than a segment header"),
            Self::Magic => write!(f, "not a txmesh journal segment (bad magic)"),
            Self::Checksum => write!(f, "segment header checksum mismatch"),
            Self::Version(v) => write!(
                f,
                "journal format version {v}; this txmesh reads version {VERSION}"
            ),
            Self::Kind(k) => write!(f, "segment of another kind of log ({k})"),
        }
    }
}

/// Encodes a segment header.
pub fn header(kind: LogKind, base_lsn: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..10].copy_from_slice(&VERSION.to_le_bytes());
    h[10..12].copy_from_slice(&(kind as u16).to_le_bytes());
    h[12..20].copy_from_slice(&base_lsn.to_le_bytes());
    let crc = crc32c::crc32c(&h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Reads a segment header; returns its base LSN.
///
/// # Errors
/// The [`HeaderFault`] that makes it unreadable.
pub fn read_header(bytes: &[u8], kind: LogKind) -> Result<u64, HeaderFault> {
    let h = bytes.get(..HEADER_LEN).ok_or(HeaderFault::Short)?;
    if &h[..8] != MAGIC {
        return Err(HeaderFault::Magic);
    }
    if crc32c::crc32c(&h[..28]) != u32_at(h, 28) {
        return Err(HeaderFault::Checksum);
    }
    let version = u16::from_le_bytes([h[8], h[9]]);
    if version != VERSION {
        return Err(HeaderFault::Version(version));
    }
    let found = u16::from_le_bytes([h[10], h[11]]);
    if found != kind as u16 {
        return Err(HeaderFault::Kind(found));
    }
    Ok(u64_at(h, 12))
}

/// Appends one framed record to `out`.
pub fn frame(out: &mut Vec<u8>, lsn: u64, payload: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    out.extend_from_slice(&lsn.to_le_bytes());
    payload(out);
    let len = u32::try_from(out.len() - start - FRAME_LEN).unwrap_or(u32::MAX);
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// How a scan of records ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanEnd {
    /// Every byte was a valid record.
    Clean,
    /// The bytes end inside a record (a write cut short).
    Torn { offset: usize },
    /// A record whose length is impossible or whose checksum fails.
    Damaged { offset: usize },
}

/// One valid record found by [`scan`].
#[derive(Debug, Clone, Copy)]
pub struct Found<'a> {
    pub lsn: u64,
    pub payload: &'a [u8],
    /// Where the record's frame ends in the scanned bytes.
    pub end: usize,
}

/// Walks the records in `bytes`, calling `each` for every valid one, and
/// stops at the first that is not. Returns how the scan ended and the
/// offset just past the last valid record.
pub fn scan<'a>(bytes: &'a [u8], mut each: impl FnMut(Found<'a>)) -> (ScanEnd, usize) {
    let mut at = 0;
    while at < bytes.len() {
        let Some(frame) = bytes.get(at..at + FRAME_LEN) else {
            return (ScanEnd::Torn { offset: at }, at);
        };
        let len = u32_at(frame, 0) as usize;
        if len > MAX_PAYLOAD {
            return (ScanEnd::Damaged { offset: at }, at);
        }
        let end = at + FRAME_LEN + len;
        let Some(covered) = bytes.get(at + 8..end) else {
            return (ScanEnd::Torn { offset: at }, at);
        };
        if crc32c::crc32c(covered) != u32_at(frame, 4) {
            return (ScanEnd::Damaged { offset: at }, at);
        }
        each(Found {
            lsn: u64_at(frame, 8),
            payload: &bytes[at + FRAME_LEN..end],
            end,
        });
        at = end;
    }
    (ScanEnd::Clean, at)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Flags of a verdict record.
const LEARNED: u8 = 1;
const REPLAYED: u8 = 2;
/// A merchant id follows the three strings (alerts only: the dashboard
/// shows it; approved verdicts leave it out to stay small).
const MERCHANT: u8 = 4;
/// Fixed part of a verdict payload.
const VERDICT_FIXED: usize = 47;

/// Appends the payload of `verdict`, answered for `txn`, to `out` without
/// building a [`VerdictRecord`] first (the hot path). `learned` is the
/// fingerprint the account's window learned, when it learned the
/// transaction.
pub fn encode_answer(
    out: &mut Vec<u8>,
    txn: &Transaction,
    verdict: &Verdict,
    learned: Option<u64>,
) {
    let alert = verdict.status() != VerdictStatus::Approved && !txn.merchant_id.is_empty();
    let scalars = Scalars {
        flags: if learned.is_some() { LEARNED } else { 0 }
            | if verdict.replayed { REPLAYED } else { 0 }
            | if alert { MERCHANT } else { 0 },
        verdict: StoredVerdict::from_verdict(verdict),
        amount_minor: txn.amount_minor,
        timestamp_unix_ms: txn.timestamp_unix_ms,
        fingerprint: learned.unwrap_or(0),
        currency: code(&txn.currency),
        country: code(&txn.country),
    };
    scalars.encode(
        out,
        [&txn.transaction_id, &txn.account_id, &verdict.traceparent],
    );
    if alert {
        encode_string(out, &txn.merchant_id);
    }
}

/// A length-prefixed string after the fixed part (cut at `u16::MAX` bytes,
/// on a character boundary).
fn encode_string(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(usize::from(u16::MAX));
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&u16::try_from(end).unwrap_or(u16::MAX).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

/// The fixed-size part of a verdict payload.
struct Scalars {
    flags: u8,
    verdict: StoredVerdict,
    amount_minor: i64,
    timestamp_unix_ms: i64,
    fingerprint: u64,
    currency: [u8; 3],
    country: [u8; 2],
}

/// Appends the payload of a window entry of `account` (as a learned
/// record, without a trace): what a snapshot holds.
pub fn encode_entry(out: &mut Vec<u8>, entry: Entry<'_>, account: &str) {
    Scalars::of(&entry.fields, LEARNED).encode(out, [entry.transaction_id, account, ""]);
}

impl Scalars {
    fn of(e: &Slot, flags: u8) -> Self {
        Self {
            flags,
            verdict: e.verdict,
            amount_minor: e.amount_minor,
            timestamp_unix_ms: e.timestamp_unix_ms,
            fingerprint: e.fingerprint,
            currency: e.currency,
            country: e.country,
        }
    }

    fn encode(&self, out: &mut Vec<u8>, strings: [&str; 3]) {
        out.push(self.flags);
        out.push(self.verdict.status() as u8);
        out.push(self.verdict.risk_score);
        out.push(0);
        out.extend_from_slice(&self.verdict.reasons.to_le_bytes());
        out.extend_from_slice(&self.verdict.processing_time_us.to_le_bytes());
        out.extend_from_slice(&self.amount_minor.to_le_bytes());
        out.extend_from_slice(&self.timestamp_unix_ms.to_le_bytes());
        out.extend_from_slice(&self.fingerprint.to_le_bytes());
        out.extend_from_slice(&self.currency);
        out.extend_from_slice(&self.country);
        let cut = |s: &str| s.len().min(usize::from(u16::MAX));
        for s in strings {
            out.extend_from_slice(&u16::try_from(cut(s)).unwrap_or(u16::MAX).to_le_bytes());
        }
        for s in strings {
            out.extend_from_slice(&s.as_bytes()[..cut(s)]);
        }
    }
}

/// One answered verdict with the transaction fields the rules need: what
/// the dashboard is sent and what rebuilds the account's window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictRecord {
    /// Whether the transaction entered the window (a fresh screening;
    /// replays and rejected input did not).
    pub learned: bool,
    pub replayed: bool,
    pub entry: WindowEntry,
    pub account_id: Box<str>,
    pub traceparent: Box<str>,
    /// Kept for alerts only (empty for approved verdicts).
    pub merchant_id: Box<str>,
}

impl VerdictRecord {
    /// The record of `verdict`, answered for `txn`.
    pub fn new(txn: &Transaction, verdict: &Verdict, learned: bool) -> Self {
        Self {
            learned,
            replayed: verdict.replayed,
            entry: WindowEntry::of(txn, verdict, fingerprint(txn)),
            account_id: txn.account_id.as_str().into(),
            traceparent: verdict.traceparent.as_str().into(),
            merchant_id: if verdict.status() == VerdictStatus::Approved {
                Box::from("")
            } else {
                txn.merchant_id.as_str().into()
            },
        }
    }

    /// Appends the payload to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let e = &self.entry;
        let merchant = !self.merchant_id.is_empty();
        let flags = if self.learned { LEARNED } else { 0 }
            | if self.replayed { REPLAYED } else { 0 }
            | if merchant { MERCHANT } else { 0 };
        Scalars::of(&e.fields, flags).encode(
            out,
            [&e.transaction_id, &self.account_id, &self.traceparent],
        );
        if merchant {
            encode_string(out, &self.merchant_id);
        }
    }

    /// Reads a payload written by [`Self::encode`]; `None` when it is not
    /// one (a checksum-valid record of the wrong shape is still refused).
    pub fn decode(p: &[u8]) -> Option<Self> {
        let fixed = p.get(..VERDICT_FIXED)?;
        let len = |at: usize| usize::from(u16::from_le_bytes([fixed[at], fixed[at + 1]]));
        let id_end = VERDICT_FIXED + len(41);
        let account_end = id_end + len(43);
        let text = |r: Range<usize>| -> Option<Box<str>> {
            std::str::from_utf8(p.get(r)?).ok().map(Box::from)
        };
        let transaction_id = text(VERDICT_FIXED..id_end)?;
        let account_id = text(id_end..account_end)?;
        let trace_end = account_end + len(45);
        let traceparent = text(account_end..trace_end)?;
        let merchant_id = if fixed[0] & MERCHANT == 0 {
            Box::from("")
        } else {
            let at = p.get(trace_end..trace_end + 2)?;
            let n = usize::from(u16::from_le_bytes([at[0], at[1]]));
            text(trace_end + 2..trace_end + 2 + n)?
        };
        let status = VerdictStatus::try_from(i32::from(fixed[1])).ok()?;
        let mut currency = [0u8; 3];
        currency.copy_from_slice(&fixed[36..39]);
        let mut country = [0u8; 2];
        country.copy_from_slice(&fixed[39..41]);
        Some(Self {
            learned: fixed[0] & LEARNED != 0,
            replayed: fixed[0] & REPLAYED != 0,
            entry: WindowEntry::new(
                transaction_id,
                u64_at(fixed, 28),
                i64::from_le_bytes(fixed[12..20].try_into().ok()?),
                currency,
                country,
                i64::from_le_bytes(fixed[20..28].try_into().ok()?),
                StoredVerdict::new(status, u32_at(fixed, 4), fixed[2], u32_at(fixed, 8)),
            ),
            account_id,
            traceparent,
            merchant_id,
        })
    }

    /// The verdict as the dashboard receives it.
    pub fn to_verdict(&self) -> Verdict {
        let e = &self.entry.fields;
        Verdict {
            transaction_id: self.entry.transaction_id.to_string(),
            account_id: self.account_id.to_string(),
            status: e.verdict.status() as i32,
            reasons: e.verdict.reason_codes(),
            risk_score: u32::from(e.verdict.risk_score),
            replayed: self.replayed,
            processing_time_us: u64::from(e.verdict.processing_time_us),
            amount_minor: e.amount_minor,
            currency: e.currency_str().to_owned(),
            country: e.country_str().to_owned(),
            traceparent: self.traceparent.to_string(),
            merchant_id: self.merchant_id.to_string(),
        }
    }
}

#[cfg(test)]
#[path = "format/tests.rs"]
mod tests;
