//! Aggregator: the dashboard's single source of truth. Applies verdict
//! batches in sequence order per publisher (dropping duplicates), keeps
//! totals by status and reason, per-second throughput, recent alerts and
//! each publisher's reported state, and pushes a snapshot to the
//! Broadcaster on every tick. Totals and sequence watermarks are saved on
//! shutdown and reloaded at start, so a restarted dashboard neither forgets
//! nor double-counts.

use std::{
    collections::{BTreeMap, VecDeque},
    path::PathBuf,
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

/// Verdict totals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub verdicts: u64,
    pub approved: u64,
    pub flagged: u64,
    pub rejected: u64,
    pub replayed: u64,
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
}

/// One flagged or rejected transaction, for the alert list.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub transaction_id: String,
    /// Only the last four characters: account ids are never shown whole.
    pub account: String,
    pub status: String,
    pub reasons: Vec<String>,
    pub risk_score: u32,
    pub amount_minor: i64,
    pub currency: String,
    pub country: String,
}

/// What the dashboard knows of one publisher.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PublisherRecord {
    pub applied_seq: u64,
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

/// Everything a browser or `/api/snapshot` gets.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub totals: Totals,
    /// Verdicts per second, oldest first, ending with the current second.
    pub throughput: Vec<u64>,
    pub recent_alerts: Vec<Alert>,
    pub publishers: BTreeMap<String, PublisherRecord>,
    pub sessions: usize,
    pub dropped_updates: u64,
}

/// What is saved across restarts.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    totals: Totals,
    publishers: BTreeMap<String, PublisherRecord>,
}

/// Apply one batch; answers whether it was a duplicate.
pub struct ApplyBatch(pub VerdictBatch);

impl Message for ApplyBatch {
    type Result = bool;
}

/// Ask for the current snapshot.
pub struct GetSnapshot;

impl Message for GetSnapshot {
    type Result = Snapshot;
}

/// Save totals and watermarks now.
pub struct Persist;

impl Message for Persist {
    type Result = Result<(), ServiceError>;
}

/// The aggregator actor.
pub struct Aggregator {
    totals: Totals,
    publishers: BTreeMap<String, PublisherRecord>,
    throughput: VecDeque<(i64, u64)>,
    throughput_window: usize,
    alerts: VecDeque<Alert>,
    max_alerts: usize,
    state_file: Option<PathBuf>,
    broadcaster: Addr<Broadcaster>,
    broadcast_stats: Arc<BroadcastStats>,
    push_interval: Duration,
    /// Something changed since the state was last saved.
    dirty: bool,
    counters: Arc<IngestCounters>,
}

impl Aggregator {
    /// A new aggregator, reloading `state_file` when it exists.
    ///
    /// # Errors
    /// When the state file exists but cannot be read or parsed (it is never
    /// silently replaced).
    pub fn new(
        state_file: Option<PathBuf>,
        broadcaster: Addr<Broadcaster>,
        broadcast_stats: Arc<BroadcastStats>,
        push_interval: Duration,
        max_alerts: usize,
        throughput_window: usize,
    ) -> Result<Self, crate::error::ServiceError> {
        let saved = match &state_file {
            Some(path) if path.exists() => {
                let bytes =
                    std::fs::read(path).map_err(|source| crate::error::ServiceError::Io {
                        path: path.clone(),
                        source,
                    })?;
                serde_json::from_slice::<Saved>(&bytes).map_err(|e| {
                    crate::error::ServiceError::config(
                        "dashboard.state_file",
                        format!("{}: {e}", path.display()),
                    )
                })?
            }
            _ => Saved::default(),
        };
        Ok(Self {
            dirty: false,
            totals: saved.totals,
            publishers: saved.publishers,
            throughput: VecDeque::new(),
            throughput_window: throughput_window.max(1),
            alerts: VecDeque::new(),
            max_alerts,
            state_file,
            broadcaster,
            broadcast_stats,
            push_interval,
            counters: Arc::default(),
        })
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
    }

    fn apply(&mut self, batch: VerdictBatch) -> bool {
        self.dirty = true;
        let now_ms = txmesh_actors::clock::system_unix_ms();
        let record = self
            .publishers
            .entry(batch.publisher_id.clone())
            .or_default();
        record.last_seen_unix_ms = now_ms;
        if let Some(status) = &batch.status {
            record.breaker = breaker_name(status.breaker()).to_owned();
            record.outbox_depth = status.outbox_depth;
            record.shed_total = status.shed_total;
            record.retries_total = status.retries_total;
            record.breaker_transitions_total = status.breaker_transitions_total;
            if let Some(screening) = &status.screening {
                record.shards = screening.shards.iter().map(ShardRecord::from).collect();
                record.poison = screening.poison.iter().map(PoisonRow::from).collect();
            }
        }
        if batch.sequence <= record.applied_seq {
            record.duplicates += 1;
            return true;
        }
        record.applied_seq = batch.sequence;
        let second = now_ms / 1000;
        let count = batch.verdicts.len() as u64;
        match self.throughput.back_mut() {
            Some((s, n)) if *s == second => *n += count,
            _ => self.throughput.push_back((second, count)),
        }
        while self.throughput.len() > self.throughput_window {
            self.throughput.pop_front();
        }
        for v in batch.verdicts {
            let t = &mut self.totals;
            t.verdicts += 1;
            if v.replayed {
                t.replayed += 1;
            }
            let status = v.status();
            match status {
                VerdictStatus::Approved => t.approved += 1,
                VerdictStatus::Flagged => t.flagged += 1,
                _ => t.rejected += 1,
            }
            for r in &v.reasons {
                *t.by_reason.entry(reason_name(*r)).or_default() += 1;
            }
            if status != VerdictStatus::Approved && !v.replayed {
                self.alerts.push_front(Alert {
                    account: txmesh_actors::mask_account(&v.account_id),
                    status: status_name(status).to_owned(),
                    reasons: v.reasons.iter().map(|r| reason_name(*r)).collect(),
                    risk_score: v.risk_score,
                    amount_minor: v.amount_minor,
                    currency: v.currency,
                    country: v.country,
                    transaction_id: v.transaction_id,
                });
                self.alerts.truncate(self.max_alerts);
            }
        }
        false
    }

    fn snapshot(&self) -> Snapshot {
        let (sessions, dropped_updates) = self.broadcaster_stats();
        Snapshot {
            kind: "snapshot",
            totals: self.totals.clone(),
            throughput: self.throughput_series(),
            recent_alerts: self.alerts.iter().cloned().collect(),
            publishers: self.publishers.clone(),
            sessions,
            dropped_updates,
        }
    }

    fn throughput_series(&self) -> Vec<u64> {
        let now = txmesh_actors::clock::system_unix_ms() / 1000;
        let window = i64::try_from(self.throughput_window).unwrap_or(i64::MAX);
        let start = now - window.min(60) + 1;
        (start..=now)
            .map(|s| {
                self.throughput
                    .iter()
                    .find(|(sec, _)| *sec == s)
                    .map_or(0, |(_, n)| *n)
            })
            .collect()
    }

    fn broadcaster_stats(&self) -> (usize, u64) {
        self.broadcast_stats.get()
    }

    fn persist(&mut self) -> Result<(), ServiceError> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        if !self.dirty {
            return Ok(());
        }
        let saved = Saved {
            totals: self.totals.clone(),
            publishers: self.publishers.clone(),
        };
        let tmp = path.with_extension("tmp");
        let io = |path: &std::path::Path| {
            let path = path.to_owned();
            move |source| ServiceError::Io { path, source }
        };
        let bytes = serde_json::to_vec_pretty(&saved).map_err(|e| io(&tmp)(e.into()))?;
        std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))?;
        self.dirty = false;
        Ok(())
    }
}

impl Actor for Aggregator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.push_interval, |act, _ctx| {
            match serde_json::to_string(&act.snapshot()) {
                Ok(json) => {
                    // A full broadcaster mailbox only delays this update to
                    // the next tick; snapshots are complete, not deltas.
                    let _ = act.broadcaster.try_send(Broadcast(Arc::from(json)));
                }
                Err(e) => tracing::error!(error = %e, "snapshot did not serialize"),
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
    type Result = bool;

    fn handle(&mut self, msg: ApplyBatch, _ctx: &mut Self::Context) -> bool {
        let duplicate = self.apply(msg.0);
        self.mirror();
        duplicate
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
mod tests {
    //! Exactly-once totals over at-least-once delivery: a batch at or below
    //! its publisher's applied sequence is a duplicate (acknowledged, not
    //! counted), per publisher, and the watermarks survive a restart.

    use txmesh_proto::v1::{Verdict, VerdictBatch, VerdictStatus};

    use super::*;

    fn aggregator(state_file: Option<PathBuf>) -> Aggregator {
        let stats = Arc::new(BroadcastStats::default());
        let broadcaster = Broadcaster::new(stats.clone()).start();
        Aggregator::new(
            state_file,
            broadcaster,
            stats,
            Duration::from_secs(1),
            10,
            60,
        )
        .expect("aggregator")
    }

    fn batch(publisher: &str, sequence: u64, statuses: &[VerdictStatus]) -> VerdictBatch {
        VerdictBatch {
            publisher_id: publisher.into(),
            sequence,
            verdicts: statuses
                .iter()
                .enumerate()
                .map(|(i, s)| Verdict {
                    transaction_id: format!("{publisher}-{sequence}-{i}"),
                    status: *s as i32,
                    ..Verdict::default()
                })
                .collect(),
            status: None,
        }
    }

    const A: VerdictStatus = VerdictStatus::Approved;
    const F: VerdictStatus = VerdictStatus::Flagged;

    #[actix_rt::test]
    async fn a_resent_batch_is_acknowledged_as_a_duplicate_and_not_counted_again() {
        let mut agg = aggregator(None);
        assert!(!agg.apply(batch("p", 1, &[A, F])));
        assert!(!agg.apply(batch("p", 2, &[A])));
        // Resends after a broken stream: the same numbers again.
        assert!(agg.apply(batch("p", 2, &[A])), "same sequence");
        assert!(agg.apply(batch("p", 1, &[A, F])), "older sequence");
        assert_eq!((agg.totals.verdicts, agg.totals.approved), (3, 2));
        assert_eq!(agg.totals.flagged, 1);
        assert_eq!(agg.publishers["p"].duplicates, 2);
        assert_eq!(agg.publishers["p"].applied_seq, 2);
        assert_eq!(agg.alerts.len(), 1, "a duplicate raises no second alert");

        // A gap is applied (the publisher numbers what it sends; a shed
        // verdict never had a batch).
        assert!(!agg.apply(batch("p", 5, &[A])));
        // Another publisher has its own numbering.
        assert!(!agg.apply(batch("q", 1, &[F])));
        assert_eq!(agg.totals.verdicts, 5);
    }

    #[actix_rt::test]
    async fn watermarks_and_totals_survive_a_restart() {
        let dir = std::env::temp_dir().join(format!(
            "txmesh-aggregator-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("dashboard.json");
        let mut agg = aggregator(Some(file.clone()));
        agg.apply(batch("p", 1, &[A, A]));
        agg.apply(batch("p", 2, &[F]));
        agg.persist().expect("saved");

        let mut again = aggregator(Some(file));
        assert_eq!(again.totals.verdicts, 3, "totals reloaded");
        assert!(
            again.apply(batch("p", 2, &[F])),
            "a batch applied before the restart is still a duplicate"
        );
        assert!(!again.apply(batch("p", 3, &[A])));
        assert_eq!(again.totals.verdicts, 4);
        std::fs::remove_dir_all(&dir).ok();
    }
}
