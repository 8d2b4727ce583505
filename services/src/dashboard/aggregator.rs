//! Aggregator: the dashboard's single source of truth. Applies verdict
//! batches in sequence order per publisher (dropping duplicates), keeps
//! totals by status and reason, recent alerts, each publisher's reported
//! state and what the page charts ([`live`]: per-second history, golden
//! figures, the mesh). A browser gets a [`Snapshot`] on connect, then on
//! every tick an [`Update`] with only what changed (numbered: a browser that
//! misses one asks for a snapshot again). Totals and each publisher's applied positions
//! are durable ([`durable`]): a batch is acknowledged only once what it
//! changed is written, so a dashboard killed at any moment restarts with
//! exactly what it acknowledged, neither forgetting nor double-counting. A
//! batch that starts past the next expected position is a gap: applied,
//! counted and shown, never silently accepted.

mod durable;
pub(super) mod live;
pub(super) mod mesh;
pub(super) mod partitions;
mod view;

use std::{
    collections::{BTreeMap, VecDeque},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use actix::{Actor, Addr, AsyncContext, Context, Handler, Message, MessageResult};
use serde::{Deserialize, Serialize};
use txmesh_proto::v1::{BreakerState, PoisonRecord, ShardStatus, VerdictBatch, VerdictStatus};

use crate::{error::ServiceError, grpc::reason_name};

use super::broadcaster::{Broadcast, BroadcastStats, Broadcaster};
use durable::{Delta, Saved};
use live::PublisherLive;
use view::{now_s, Sent};
pub use view::{PublisherView, Snapshot};

/// Alerts an update carries at most (the rest are counted as omitted:
/// a browser shows the most recent ones, the snapshot has them all).
const MAX_ALERTS_PER_UPDATE: usize = 50;

/// The mesh changes with every call; updates carry it at most this often.
const MESH_EVERY: Duration = Duration::from_secs(2);

/// Verdict totals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub verdicts: u64,
    pub approved: u64,
    pub flagged: u64,
    pub rejected: u64,
    pub replayed: u64,
    /// Verdicts for clients of the old reconciliation service (their
    /// accounts are named `legacy:` and the client's SPIFFE ID).
    #[serde(default)]
    pub legacy: u64,
    pub by_reason: BTreeMap<String, u64>,
}

/// The totals as metrics read them: mirrored by the aggregator after
/// every batch (stored, not added, so a reloaded state file is included).
#[derive(Debug, Default)]
pub struct IngestCounters {
    pub approved: AtomicU64,
    pub flagged: AtomicU64,
    pub rejected: AtomicU64,
    pub replayed: AtomicU64,
    /// Batches dropped as duplicates (resent after a lost ack).
    pub duplicate_batches: AtomicU64,
    /// Publisher positions that never arrived (gaps).
    pub gap_verdicts: AtomicU64,
}

/// One flagged or rejected transaction, for the alert feed.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// Increasing with each alert (since the dashboard started).
    pub id: u64,
    /// When the dashboard applied it.
    pub unix_ms: i64,
    pub transaction_id: String,
    /// Only the last four characters: account ids are never shown whole.
    pub account: String,
    pub status: String,
    pub reasons: Vec<String>,
    pub risk_score: u32,
    pub amount_minor: i64,
    pub currency: String,
    /// The currency's minor-unit exponent (2 for EUR, 0 for JPY), to
    /// format `amount_minor`; `None` for a code not in ISO 4217.
    pub exponent: Option<u8>,
    pub country: String,
    pub merchant: String,
}

/// What the dashboard knows of one publisher.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PublisherRecord {
    /// The journal position applied up to, per journal (shard) of the
    /// publisher.
    #[serde(default)]
    pub applied: BTreeMap<u32, u64>,
    /// Positions that never arrived (given up by the publisher): a gap in
    /// the totals, shown to operators.
    #[serde(default)]
    pub gap_verdicts: u64,
    pub duplicates: u64,
    pub breaker: String,
    pub outbox_depth: u64,
    /// Verdicts the publisher shed (outbox overflow): a gap in the totals.
    pub shed_total: u64,
    pub retries_total: u64,
    pub breaker_transitions_total: u64,
    pub last_seen_unix_ms: i64,
    /// The publishing ingress's screening pipeline, per shard.
    #[serde(default)]
    pub shards: Vec<ShardRecord>,
    /// Poison messages it recorded, most recent first.
    #[serde(default)]
    pub poison: Vec<PoisonRow>,
}

/// Supervision, passivation and overload counters of one shard.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShardRecord {
    pub shard: u32,
    pub active_accounts: u64,
    pub passivated_accounts: u64,
    pub restarts_total: u64,
    pub quarantines_total: u64,
    pub poison_total: u64,
    pub overloaded_total: u64,
    pub passivations_total: u64,
}

/// A transaction that crashed its account actor on every attempt.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PoisonRow {
    pub transaction_id: String,
    /// Already masked by the ingress.
    pub account: String,
    pub attempts: u32,
    pub message: String,
    pub unix_ms: i64,
    pub shard: u32,
}

/// What applying a batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// New positions, now durable: acknowledge.
    New,
    /// Positions applied before: acknowledge as a duplicate.
    Duplicate,
    /// A status report (no verdicts, sequence 0): never acknowledged.
    Status,
}

/// Apply one batch; answers once what it changed is durable.
pub struct ApplyBatch(pub VerdictBatch);

impl Message for ApplyBatch {
    type Result = Result<Applied, ServiceError>;
}

/// Take in the status of a batch that is refused (an injected ingest
/// refusal): what the publisher says of itself is still news.
pub struct ApplyStatus(pub VerdictBatch);

impl Message for ApplyStatus {
    type Result = ();
}

/// Ask for the current snapshot.
pub struct GetSnapshot;

impl Message for GetSnapshot {
    type Result = Snapshot;
}

/// Write a snapshot of totals and positions now.
pub struct Persist;

impl Message for Persist {
    type Result = Result<(), ServiceError>;
}

/// The aggregator actor.
pub struct Aggregator {
    totals: Totals,
    publishers: BTreeMap<String, PublisherRecord>,
    live: BTreeMap<String, PublisherLive>,
    history: live::History,
    history_secs: usize,
    alerts: VecDeque<Alert>,
    next_alert_id: u64,
    /// The last update sent, and what it covered.
    sent: Sent,
    /// The dashboard's own metrics, for its place in the mesh.
    metrics: Option<Arc<crate::metrics::Metrics>>,
    max_alerts: usize,
    /// `None` when `dashboard.state_file` is empty: nothing is kept.
    durable: Option<durable::Durable>,
    /// The applied-batch log position of the last applied batch.
    log_position: u64,
    broadcaster: Addr<Broadcaster>,
    broadcast_stats: Arc<BroadcastStats>,
    push_interval: Duration,
    counters: Arc<IngestCounters>,
}

impl Aggregator {
    /// A new aggregator, with the state kept at `state` (its snapshot and
    /// the applied-batch log after it) reloaded.
    ///
    /// # Errors
    /// When the snapshot exists but cannot be read or parsed (it is never
    /// silently replaced), or the log cannot be opened.
    pub fn new(
        state: Option<&DurableState>,
        broadcaster: Addr<Broadcaster>,
        broadcast_stats: Arc<BroadcastStats>,
        push_interval: Duration,
        max_alerts: usize,
        history_secs: usize,
    ) -> Result<Self, ServiceError> {
        let (durable, saved) = match state {
            Some(state) => {
                let (durable, saved) = durable::Durable::open(
                    &state.snapshot,
                    &state.log_dir,
                    &state.journal,
                    |saved, d| apply_delta(&mut saved.totals, &mut saved.publishers, d),
                )?;
                (Some(durable), saved)
            }
            None => (None, Saved::default()),
        };
        Ok(Self {
            totals: saved.totals,
            publishers: saved.publishers,
            log_position: saved.log_position,
            live: BTreeMap::new(),
            history: live::History::new(history_secs, now_s()),
            history_secs,
            alerts: VecDeque::new(),
            next_alert_id: 1,
            sent: Sent::default(),
            metrics: None,
            max_alerts,
            durable,
            broadcaster,
            broadcast_stats,
            push_interval,
            counters: Arc::default(),
        })
    }

    /// Shows the dashboard's own identity, callers and refusals from
    /// `metrics` in the mesh.
    #[must_use]
    pub fn with_mesh(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Mirrors the totals into `counters` (for `/metrics`).
    #[must_use]
    pub fn with_counters(mut self, counters: Arc<IngestCounters>) -> Self {
        self.counters = counters;
        self.mirror();
        self
    }

    fn mirror(&self) {
        let c = &self.counters;
        let t = &self.totals;
        c.approved.store(t.approved, Ordering::Relaxed);
        c.flagged.store(t.flagged, Ordering::Relaxed);
        c.rejected.store(t.rejected, Ordering::Relaxed);
        c.replayed.store(t.replayed, Ordering::Relaxed);
        let duplicates = self.publishers.values().map(|p| p.duplicates).sum();
        c.duplicate_batches.store(duplicates, Ordering::Relaxed);
        let gaps = self.publishers.values().map(|p| p.gap_verdicts).sum();
        c.gap_verdicts.store(gaps, Ordering::Relaxed);
    }

    /// Takes in what a batch says of its publisher.
    fn apply_status(&mut self, batch: &VerdictBatch, now_ms: i64) {
        self.history.roll(now_ms.div_euclid(1000));
        let record = self
            .publishers
            .entry(batch.publisher_id.clone())
            .or_default();
        record.last_seen_unix_ms = now_ms;
        let Some(status) = &batch.status else {
            return;
        };
        record.breaker = breaker_name(status.breaker()).to_owned();
        record.outbox_depth = status.outbox_depth;
        record.shed_total = status.shed_total;
        record.retries_total = status.retries_total;
        record.breaker_transitions_total = status.breaker_transitions_total;
        if let Some(screening) = &status.screening {
            record.shards = screening.shards.iter().map(ShardRecord::from).collect();
            record.poison = screening.poison.iter().map(PoisonRow::from).collect();
        }
        let live = self.live.entry(batch.publisher_id.clone()).or_default();
        live.observe(status, &record.breaker, now_ms, &mut self.history);
    }

    fn apply(&mut self, batch: VerdictBatch) -> Result<Applied, ServiceError> {
        let now_ms = txmesh_actors::clock::system_unix_ms();
        self.apply_status(&batch, now_ms);
        if batch.sequence == 0 && batch.verdicts.is_empty() {
            return Ok(Applied::Status);
        }
        let record = self
            .publishers
            .entry(batch.publisher_id.clone())
            .or_default();
        let applied = record.applied.get(&batch.journal).copied().unwrap_or(0);
        if batch.sequence <= applied {
            record.duplicates += 1;
            return Ok(Applied::Duplicate);
        }
        // Positions already applied (a batch resent with more in it) are
        // skipped; positions missing before it are a gap.
        let first = batch.first_sequence.max(1);
        let already = usize::try_from((applied + 1).saturating_sub(first)).unwrap_or(usize::MAX);
        let gap = first.saturating_sub(applied + 1);
        if gap > 0 {
            tracing::warn!(publisher = %batch.publisher_id, journal = batch.journal, expected = applied + 1, got = first, missing = gap, "a gap in a publisher's verdicts: counted and shown");
        }
        let fresh: Vec<_> = batch.verdicts.into_iter().skip(already).collect();
        let delta = delta_of(
            &batch.publisher_id,
            batch.journal,
            batch.sequence,
            gap,
            &fresh,
        );
        if let Some(durable) = &mut self.durable {
            self.log_position = durable.append(&delta)?;
        }
        apply_delta(&mut self.totals, &mut self.publishers, &delta);
        let second = &mut self.history.current;
        second.approved += delta.approved;
        second.flagged += delta.flagged;
        second.rejected += delta.rejected;
        second.gaps += gap;
        let t = second.t;
        if let Some(live) = self.live.get_mut(&batch.publisher_id) {
            live.note_verdicts(t, delta.verdicts);
        }
        self.note_alerts(now_ms, fresh);
        Ok(Applied::New)
    }

    /// The recent alerts (not durable: what is live).
    fn note_alerts(&mut self, now_ms: i64, verdicts: Vec<txmesh_proto::v1::Verdict>) {
        for v in verdicts {
            let status = v.status();
            if status != VerdictStatus::Approved && !v.replayed {
                self.next_alert_id += 1;
                self.alerts.push_front(Alert {
                    id: self.next_alert_id,
                    unix_ms: now_ms,
                    exponent: txmesh_actors::currency::minor_unit_exponent(&v.currency),
                    merchant: v.merchant_id,
                    account: txmesh_actors::mask_account(&v.account_id),
                    status: status_name(status).to_owned(),
                    reasons: v.reasons.iter().map(|r| reason_name(*r)).collect(),
                    risk_score: v.risk_score,
                    amount_minor: v.amount_minor,
                    currency: v.currency,
                    country: v.country,
                    transaction_id: v.transaction_id,
                });
            }
        }
        self.alerts.truncate(self.max_alerts);
    }

    fn broadcaster_stats(&self) -> (usize, u64) {
        self.broadcast_stats.get()
    }

    /// Writes the snapshot (and removes the log it covers).
    fn persist(&mut self) -> Result<(), ServiceError> {
        let Some(durable) = &mut self.durable else {
            return Ok(());
        };
        let saved = Saved {
            totals: self.totals.clone(),
            publishers: self.publishers.clone(),
            log_position: self.log_position,
        };
        durable.snapshot(&saved)
    }

    /// The periodic sync and snapshot.
    fn maintain(&mut self) {
        let due = match &mut self.durable {
            Some(durable) => durable.tick(),
            None => return,
        };
        let result = match due {
            Ok(true) => self.persist(),
            Ok(false) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "dashboard state not synced or snapshotted");
        }
    }
}

/// Where the dashboard keeps its durable state.
#[derive(Debug, Clone)]
pub struct DurableState {
    /// The snapshot file (`dashboard.state_file`).
    pub snapshot: PathBuf,
    /// The applied-batch log's directory.
    pub log_dir: PathBuf,
    /// Segment size and sync policy, shared with the ingress's journal.
    pub journal: txmesh_actors::config::JournalConfig,
}

impl DurableState {
    /// The snapshot at `snapshot` and the log beside it.
    pub fn beside(snapshot: &Path, journal: txmesh_actors::config::JournalConfig) -> Self {
        Self {
            snapshot: snapshot.to_owned(),
            log_dir: snapshot.with_extension("log"),
            journal,
        }
    }
}

/// What `verdicts` (the new part of a batch) change.
fn delta_of(
    publisher: &str,
    journal: u32,
    sequence: u64,
    gap: u64,
    verdicts: &[txmesh_proto::v1::Verdict],
) -> Delta {
    let mut d = Delta {
        publisher: publisher.to_owned(),
        journal,
        sequence,
        gap,
        ..Delta::default()
    };
    let mut reasons: BTreeMap<i32, u64> = BTreeMap::new();
    for v in verdicts {
        d.verdicts += 1;
        d.replayed += u64::from(v.replayed);
        d.legacy += u64::from(
            v.account_id
                .starts_with(crate::ingress::legacy::ACCOUNT_PREFIX),
        );
        match v.status() {
            VerdictStatus::Approved => d.approved += 1,
            VerdictStatus::Flagged => d.flagged += 1,
            _ => d.rejected += 1,
        }
        for r in &v.reasons {
            *reasons.entry(*r).or_default() += 1;
        }
    }
    d.by_reason = reasons
        .into_iter()
        .map(|(r, n)| (reason_name(r), n))
        .collect();
    d
}

/// Applies one batch's changes to the durable state.
fn apply_delta(t: &mut Totals, publishers: &mut BTreeMap<String, PublisherRecord>, d: &Delta) {
    t.verdicts += d.verdicts;
    t.approved += d.approved;
    t.flagged += d.flagged;
    t.rejected += d.rejected;
    t.replayed += d.replayed;
    t.legacy += d.legacy;
    for (reason, n) in &d.by_reason {
        *t.by_reason.entry(reason.clone()).or_default() += n;
    }
    let record = publishers.entry(d.publisher.clone()).or_default();
    record.applied.insert(d.journal, d.sequence);
    record.gap_verdicts += d.gap;
}

impl Actor for Aggregator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.push_interval, |act, _ctx| {
            act.maintain();
            let update = act.update();
            match serde_json::to_string(&update) {
                Ok(json) => {
                    // A browser that misses an update (a full mailbox here
                    // or at its session) sees the gap in `seq` and asks
                    // for a snapshot.
                    let _ = act.broadcaster.try_send(Broadcast(Arc::from(json)));
                }
                Err(e) => tracing::error!(error = %e, "update did not serialize"),
            }
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        if let Err(e) = self.persist() {
            tracing::error!(error = %e, "dashboard state not saved");
        }
    }
}

impl Handler<ApplyBatch> for Aggregator {
    type Result = Result<Applied, ServiceError>;

    fn handle(&mut self, msg: ApplyBatch, _ctx: &mut Self::Context) -> Self::Result {
        let duplicate = self.apply(msg.0);
        self.mirror();
        duplicate
    }
}

impl Handler<ApplyStatus> for Aggregator {
    type Result = ();

    fn handle(&mut self, msg: ApplyStatus, _ctx: &mut Self::Context) {
        self.apply_status(&msg.0, txmesh_actors::clock::system_unix_ms());
    }
}

impl Handler<GetSnapshot> for Aggregator {
    type Result = MessageResult<GetSnapshot>;

    fn handle(&mut self, _msg: GetSnapshot, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.snapshot())
    }
}

impl Handler<Persist> for Aggregator {
    type Result = Result<(), ServiceError>;

    fn handle(&mut self, _msg: Persist, _ctx: &mut Self::Context) -> Self::Result {
        self.persist()
    }
}

/// `APPROVED`, `FLAGGED`, ...: the proto name without its enum prefix.
fn status_name(status: VerdictStatus) -> &'static str {
    status.as_str_name().trim_start_matches("VERDICT_STATUS_")
}

impl From<&ShardStatus> for ShardRecord {
    fn from(s: &ShardStatus) -> Self {
        Self {
            shard: s.shard,
            active_accounts: s.active_accounts,
            passivated_accounts: s.passivated_accounts,
            restarts_total: s.restarts_total,
            quarantines_total: s.quarantines_total,
            poison_total: s.poison_total,
            overloaded_total: s.overloaded_total,
            passivations_total: s.passivations_total,
        }
    }
}

impl From<&PoisonRecord> for PoisonRow {
    fn from(p: &PoisonRecord) -> Self {
        Self {
            transaction_id: p.transaction_id.clone(),
            account: p.account.clone(),
            attempts: p.attempts,
            message: p.message.clone(),
            unix_ms: p.unix_ms,
            shard: p.shard,
        }
    }
}

/// `CLOSED`, `OPEN`, `HALF_OPEN`: the proto name without its enum prefix.
fn breaker_name(state: BreakerState) -> &'static str {
    state.as_str_name().trim_start_matches("BREAKER_STATE_")
}

#[cfg(test)]
#[path = "aggregator/tests.rs"]
mod tests;
