//! DashboardPublisher: reads every shard's journal beyond the dashboard's
//! acknowledged position (the outbox is the journal) into batches and
//! streams them to the dashboard through a [`PublishTransport`].
//!
//! Delivery: a batch is a contiguous run of journal positions of one
//! shard. When the stream fails (or an ack does not come within the ack
//! timeout) the unacknowledged batches are sent again, in order, on the
//! next stream; after a restart the publisher (same id, kept with the
//! journal) resumes from the acknowledged positions. The dashboard drops
//! positions it already applied, so nothing is lost and nothing is counted
//! twice. Reconnects wait an exponential, jittered backoff (the one
//! [`crate::backoff`] policy) and are guarded by a [`Breaker`].

pub mod breaker;
#[cfg(test)]
mod tests;

use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use actix::{
    fut::wrap_future, Actor, ActorFutureExt, AsyncContext, Context, Handler, Message, StreamHandler,
};
use futures_util::{stream, Stream, StreamExt};
use rand::{rngs::SmallRng, SeedableRng};
use txmesh_proto::v1::{Ack, BreakerState as WireBreaker, PublisherStatus, VerdictBatch};

pub use breaker::{Breaker, BreakerState};

pub use crate::error::PublishError;

use crate::{
    backoff::Backoff,
    config::PublisherConfig,
    journal::{DiskCursor, Journals},
    stats::ScreeningStats,
};

/// How often acknowledged positions are persisted (a crash resends at most
/// what was acknowledged since; the dashboard drops it as duplicate).
const PERSIST_ACKED_EVERY: Duration = Duration::from_millis(200);

/// With nothing to send, a status report (a batch with no verdicts and
/// sequence 0, never acknowledged) goes out this often, so the dashboard
/// tells an idle publisher from a gone one.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// The [`StatusSource`] is read at most this often (the latency histogram
/// and the mesh view are not needed with every batch).
const STATUS_EXTRA_EVERY: Duration = Duration::from_millis(500);

/// What the publisher's owner adds to the status (the ingress: its latency
/// histogram and its view of the mesh).
pub type StatusSource = Arc<dyn Fn(&mut PublisherStatus) + Send + Sync>;

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// An open Publish stream: batches go in, acks come out.
pub struct PublishConnection {
    pub batches: tokio::sync::mpsc::Sender<VerdictBatch>,
    pub acks: Pin<Box<dyn Stream<Item = Result<Ack, PublishError>> + Send>>,
}

/// How the publisher reaches the dashboard (a tonic client in `services`).
pub trait PublishTransport: Send + Sync + 'static {
    /// Opens a new Publish stream; resolves once the dashboard accepted it.
    fn connect(&self) -> BoxFuture<Result<PublishConnection, PublishError>>;
}

/// What the publisher reports, readable from any thread.
#[derive(Debug, Default)]
pub struct PublisherStats {
    breaker: AtomicU8,
    pub breaker_transitions: AtomicU64,
    pub batches_sent: AtomicU64,
    pub acks: AtomicU64,
    pub retries: AtomicU64,
    pub connects: AtomicU64,
    /// Verdicts in batches not yet acknowledged.
    pub unacked_verdicts: AtomicU64,
    /// Verdicts acknowledged by the dashboard.
    pub delivered_verdicts: AtomicU64,
    /// Times the dashboard refused this publisher's identity.
    pub refusals: AtomicU64,
    /// Whether the last answer from the dashboard was a refusal.
    pub refused: std::sync::atomic::AtomicBool,
    /// Woken at every acknowledgement (for [`PublisherStats::wait_drained`]).
    acked: tokio::sync::Notify,
}

/// A snapshot of the publisher for summaries and the dashboard.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PublisherStatusView {
    pub breaker: BreakerState,
    pub breaker_transitions: u64,
    pub outbox_depth: u64,
    pub unacked: u64,
    pub shed_total: u64,
    /// The dashboard refuses this publisher's identity (see
    /// [`PublishError::Refused`]).
    pub refused: bool,
    pub refusals_total: u64,
    pub retries_total: u64,
    pub batches_sent: u64,
    pub delivered: u64,
}

/// The publisher actor.
pub struct DashboardPublisher {
    id: String,
    config: PublisherConfig,
    journals: Journals,
    cursors: Vec<DiskCursor>,
    /// Shard to read first at the next batch formation (fairness).
    next_shard: usize,
    acked_dirty: bool,
    acked_saved_at: Instant,
    transport: Arc<dyn PublishTransport>,
    /// Formed batches not yet acknowledged, in sequence order.
    pending: VecDeque<VerdictBatch>,
    /// How many of `pending` went out on the current stream.
    sent: usize,
    /// When the oldest unacknowledged batch was sent.
    oldest_sent_at: Option<Instant>,
    link: Link,
    generation: u64,
    next_attempt: Instant,
    breaker: Breaker,
    backoff: Backoff,
    /// Draws the backoff's jitter.
    rng: SmallRng,
    stats: Arc<PublisherStats>,
    /// The screening pipeline's counters, reported with every batch.
    screening: Option<ScreeningStats>,
    /// Faults injected at the send (failure, delay), if any.
    chaos: Option<Arc<txmesh_chaos::Registry>>,
    /// An injected delay holds sends until then.
    hold_sends_until: Option<Instant>,
    status_source: Option<StatusSource>,
    /// When the status source is read next.
    next_status_extra: Instant,
    /// When a status last went out (with a batch or alone).
    status_sent_at: Instant,
    /// The link is up for status reports only: the breaker is open and its
    /// pause not over, so no batch goes out on it (see [`Self::tick`]).
    status_only: bool,
}

enum Link {
    Down,
    Connecting,
    Up(tokio::sync::mpsc::Sender<VerdictBatch>),
}

/// Events of one stream generation.
enum StreamEvent {
    Ack(u64, Ack),
    Failed(u64, PublishError),
    Ended(u64),
}

struct Connected(u64, Result<PublishConnection, PublishError>);

/// Stops the publisher (after its drain): it saves its acknowledged
/// positions as it stops.
pub struct StopPublisher;

impl Message for StopPublisher {
    type Result = ();
}

impl Handler<StopPublisher> for DashboardPublisher {
    type Result = ();

    fn handle(&mut self, _msg: StopPublisher, ctx: &mut Self::Context) {
        actix::ActorContext::stop(ctx);
    }
}

impl Message for Connected {
    type Result = ();
}

impl DashboardPublisher {
    /// A publisher named `id` (stable across restarts when the journal is
    /// durable) sending what `journals` hold beyond their acknowledged
    /// positions.
    pub fn new(
        id: String,
        config: PublisherConfig,
        journals: Journals,
        transport: Arc<dyn PublishTransport>,
    ) -> Self {
        let backoff = Backoff::new(config.backoff()).unwrap_or_else(|e| {
            tracing::error!(error = %e, "publisher backoff refused; using the default");
            Backoff::new(PublisherConfig::default().backoff())
                .expect("the default publisher backoff is valid (unit-tested)")
        });
        let breaker = Breaker::new(
            config.breaker_failure_threshold,
            Duration::from_millis(config.breaker_open_ms),
            Duration::from_millis(config.breaker_open_max_ms),
        );
        let cursors = journals
            .shards()
            .iter()
            .map(|_| DiskCursor::default())
            .collect();
        Self {
            id,
            config,
            journals,
            cursors,
            next_shard: 0,
            acked_dirty: false,
            acked_saved_at: Instant::now(),
            transport,
            pending: VecDeque::new(),
            sent: 0,
            oldest_sent_at: None,
            link: Link::Down,
            generation: 0,
            next_attempt: Instant::now(),
            breaker,
            backoff,
            rng: SmallRng::seed_from_u64(rand::random()),
            stats: Arc::new(PublisherStats::default()),
            screening: None,
            chaos: None,
            hold_sends_until: None,
            status_source: None,
            next_status_extra: Instant::now(),
            status_sent_at: Instant::now(),
            status_only: false,
        }
    }

    /// Adds what `source` fills in to the status, at most every
    /// [`STATUS_EXTRA_EVERY`].
    #[must_use]
    pub fn with_status_source(mut self, source: StatusSource) -> Self {
        self.status_source = Some(source);
        self
    }

    /// Consults `chaos` before each send (injected failures and delays).
    #[must_use]
    pub fn with_chaos(mut self, chaos: Arc<txmesh_chaos::Registry>) -> Self {
        self.chaos = Some(chaos);
        self
    }

    /// Whether an injected fault stops this tick's sends (a failure drops
    /// the link, as a real one would; a delay holds sends for a while).
    fn injected_fault(&mut self, now: Instant) -> bool {
        if self.hold_sends_until.is_some_and(|t| now < t) {
            return true;
        }
        self.hold_sends_until = None;
        let Some(chaos) = &self.chaos else {
            return false;
        };
        match chaos.decide_now(txmesh_chaos::InjectionPoint::PublisherSend, 0) {
            Some(txmesh_chaos::FaultKind::PublisherSendFailure) => {
                self.link_failed(
                    now,
                    &PublishError::Unavailable("injected fault: publisher send failure".into()),
                );
                true
            }
            Some(txmesh_chaos::FaultKind::PublisherDelay { delay_ms }) => {
                self.hold_sends_until = Some(now + Duration::from_millis(delay_ms));
                true
            }
            _ => false,
        }
    }

    /// Reports `stats` (the router's) to the dashboard with every batch.
    #[must_use]
    pub fn with_screening(mut self, stats: ScreeningStats) -> Self {
        self.screening = Some(stats);
        self
    }

    /// The counters this actor keeps up to date.
    pub fn stats(&self) -> Arc<PublisherStats> {
        self.stats.clone()
    }

    /// While the breaker is open the publisher still keeps a link for its
    /// status (the dashboard shows the breaker OPEN, not a publisher gone
    /// silent), sends no batch on it, and never counts its failures against
    /// the breaker; once the breaker's pause is over, the link carries the
    /// half-open probe.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        self.form_batches();
        if self.status_only && matches!(self.link, Link::Up(_)) && self.breaker.allow(now) {
            self.status_only = false;
            if self.pending.is_empty() {
                // The open stream is all the proof there can be.
                self.breaker.on_success();
                self.backoff.reset();
            }
        }
        let has_unsent = self.sent < self.pending.len();
        if matches!(self.link, Link::Up(_))
            && !self.status_only
            && has_unsent
            && self.injected_fault(now)
        {
            self.publish_stats();
            return;
        }
        if let Link::Up(tx) = &self.link {
            let tx = tx.clone();
            if !self.status_only {
                self.send_pending(&tx, now);
            }
            self.report_status(&tx, now);
            let timeout = Duration::from_millis(self.config.ack_timeout_ms);
            if self
                .oldest_sent_at
                .is_some_and(|at| now.saturating_duration_since(at) > timeout)
            {
                self.link_failed(now, &PublishError::Unavailable("ack timeout".into()));
            }
        }
        if matches!(self.link, Link::Down) && now >= self.next_attempt {
            if self.breaker.allow(now) {
                self.status_only = false;
                self.connect(ctx);
            } else if self.breaker.state() == BreakerState::Open {
                self.status_only = true;
                self.connect(ctx);
            }
        }
        self.persist_acked(false);
        self.publish_stats();
    }

    fn form_batches(&mut self) {
        let shards = self.journals.shards().len();
        let mut idle = 0;
        while self.pending.len() < self.config.max_in_flight && idle < shards {
            let j = self.next_shard;
            self.next_shard = (j + 1) % shards;
            let journal = &self.journals.shards()[j];
            let Some(read) = journal.read(
                journal.next_to_read(),
                self.config.max_batch,
                &mut self.cursors[j],
            ) else {
                idle += 1;
                continue;
            };
            idle = 0;
            if read.skipped > 0 {
                tracing::warn!(publisher = %self.id, shard = j, missing = read.skipped, resumed_at = read.first, "verdicts no longer in the journal were given up: the dashboard shows the gap");
            }
            journal.mark_read(read.last);
            self.stats
                .unacked_verdicts
                .fetch_add(read.verdicts.len() as u64, Ordering::Relaxed);
            self.pending.push_back(VerdictBatch {
                publisher_id: self.id.clone(),
                sequence: read.last,
                verdicts: read.verdicts,
                status: None,
                journal: u32::try_from(j).unwrap_or(u32::MAX),
                first_sequence: read.first,
            });
        }
    }

    /// Persists the acknowledged positions, at most every
    /// [`PERSIST_ACKED_EVERY`] (or `now`).
    fn persist_acked(&mut self, now: bool) {
        if !self.acked_dirty || !now && self.acked_saved_at.elapsed() < PERSIST_ACKED_EVERY {
            return;
        }
        self.acked_saved_at = Instant::now();
        match self.journals.persist_acked(&self.id) {
            Ok(()) => self.acked_dirty = false,
            Err(e) => {
                tracing::warn!(publisher = %self.id, error = %e, "acknowledged positions not saved (a restart resends more; the dashboard drops duplicates)")
            }
        }
    }

    fn send_pending(&mut self, tx: &tokio::sync::mpsc::Sender<VerdictBatch>, now: Instant) {
        while self.sent < self.pending.len() {
            let mut batch = self.pending[self.sent].clone();
            batch.status = Some(self.wire_status(now));
            match tx.try_send(batch) {
                Ok(()) => {
                    if self.sent == 0 {
                        self.oldest_sent_at = Some(now);
                    }
                    self.sent += 1;
                    self.stats.batches_sent.fetch_add(1, Ordering::Relaxed);
                }
                // The stream's own buffer is full: try again next tick.
                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => break,
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                    self.link_failed(now, &PublishError::Unavailable("stream closed".into()));
                    break;
                }
            }
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        self.link = Link::Connecting;
        self.generation += 1;
        let generation = self.generation;
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        let fut = self.transport.connect();
        ctx.spawn(wrap_future::<_, Self>(fut).map(move |result, _act, ctx| {
            ctx.notify(Connected(generation, result));
        }));
    }

    fn on_ack(&mut self, ack: &Ack) {
        // The dashboard acknowledges batches in the order sent.
        let matches = self
            .pending
            .front()
            .is_some_and(|b| b.sequence == ack.sequence && b.journal == ack.journal);
        if !matches || self.sent == 0 {
            tracing::warn!(publisher = %self.id, journal = ack.journal, sequence = ack.sequence, "acknowledgement for a batch not in flight ignored");
            return;
        }
        let mut acked = 0;
        if let Some(batch) = self.pending.pop_front() {
            acked = batch.verdicts.len() as u64;
            if let Some(journal) = self.journals.shards().get(batch.journal as usize) {
                journal.ack(batch.sequence);
                self.acked_dirty = true;
            }
        }
        self.sent -= 1;
        self.oldest_sent_at = (self.sent > 0).then(Instant::now);
        self.stats.acks.fetch_add(1, Ordering::Relaxed);
        self.stats
            .unacked_verdicts
            .fetch_sub(acked, Ordering::Relaxed);
        self.stats
            .delivered_verdicts
            .fetch_add(acked, Ordering::Relaxed);
        self.stats.acked.notify_waiters();
        self.breaker.on_success();
        self.backoff.reset();
    }

    fn link_failed(&mut self, now: Instant, why: &PublishError) {
        if matches!(self.link, Link::Down) {
            return;
        }
        if why.is_permanent() {
            self.stats.refusals.fetch_add(1, Ordering::Relaxed);
            if !self.stats.refused.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    publisher = %self.id, error = %why, held = self.journals.backlog(),
                    "the dashboard refuses this publisher: verdicts are kept in the journal \
                     (up to journal.max_bytes) until the dashboard's authz.publish admits it; \
                     trying again every {:?}", self.breaker.longest_open()
                );
            }
        } else {
            tracing::warn!(publisher = %self.id, reason = %why, unacked = self.pending.len(), "dashboard stream failed; will resend unacknowledged batches");
        }
        self.link = Link::Down;
        // A new generation makes events of the dead stream stale.
        self.generation += 1;
        self.sent = 0;
        self.oldest_sent_at = None;
        if self.status_only {
            // No batch was at stake: the breaker's pause runs on; the next
            // status link at most every STATUS_EVERY, the probe on time.
            let delay = if why.is_permanent() {
                self.breaker.longest_open()
            } else {
                self.backoff
                    .next_delay(&mut self.rng)
                    .max(STATUS_EVERY)
                    .min(self.breaker.remaining_open(now))
            };
            self.next_attempt = now + delay;
            return;
        }
        self.breaker.on_failure(now);
        self.stats.retries.fetch_add(1, Ordering::Relaxed);
        let delay = if why.is_permanent() {
            // Time does not fix a refusal: no fast retries.
            self.breaker.longest_open()
        } else {
            self.backoff.next_delay(&mut self.rng)
        };
        // An open breaker waits for its probe, but a pause longer than
        // STATUS_EVERY is broken by a status-only link (see `tick`).
        self.next_attempt = now + delay.max(self.breaker.remaining_open(now).min(STATUS_EVERY));
    }

    /// A status report when nothing carried the status for
    /// [`STATUS_EVERY`]: the dashboard applies it and sends no ack.
    fn report_status(&mut self, tx: &tokio::sync::mpsc::Sender<VerdictBatch>, now: Instant) {
        if now.saturating_duration_since(self.status_sent_at) < STATUS_EVERY {
            return;
        }
        let report = VerdictBatch {
            publisher_id: self.id.clone(),
            status: Some(self.wire_status(now)),
            ..VerdictBatch::default()
        };
        // A full stream carries batches (with the status) already.
        let _ = tx.try_send(report);
    }

    fn wire_status(&mut self, now: Instant) -> PublisherStatus {
        self.status_sent_at = now;
        let breaker = match self.breaker.state() {
            BreakerState::Closed => WireBreaker::Closed,
            BreakerState::Open => WireBreaker::Open,
            BreakerState::HalfOpen => WireBreaker::HalfOpen,
        };
        let mut status = PublisherStatus {
            breaker: breaker as i32,
            outbox_depth: self.journals.backlog(),
            shed_total: self.journals.given_up(),
            retries_total: self.stats.retries.load(Ordering::Relaxed),
            breaker_transitions_total: self.breaker.transitions(),
            screening: self.screening.as_ref().map(ScreeningStats::to_wire),
            latency: None,
            mesh: None,
            answers: None,
            cluster: None,
        };
        if let Some(source) = &self.status_source {
            if now >= self.next_status_extra {
                self.next_status_extra = now + STATUS_EXTRA_EVERY;
                source(&mut status);
            }
        }
        status
    }

    fn publish_stats(&self) {
        let code = match self.breaker.state() {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        };
        self.stats.breaker.store(code, Ordering::Relaxed);
        self.stats
            .breaker_transitions
            .store(self.breaker.transitions(), Ordering::Relaxed);
    }
}

impl PublisherStats {
    /// Waits until every verdict written to `journals` is acknowledged
    /// (woken by each acknowledgement, not polled), or `deadline`. Returns
    /// whether it drained.
    pub async fn wait_drained(&self, journals: &Journals, deadline: tokio::time::Instant) -> bool {
        loop {
            let acked = self.acked.notified();
            tokio::pin!(acked);
            // Registered before the check: an ack in between is not missed.
            acked.as_mut().enable();
            if self.view(journals).drained() {
                return true;
            }
            tokio::select! {
                () = acked => {}
                () = tokio::time::sleep_until(deadline) => return self.view(journals).drained(),
            }
        }
    }

    /// A consistent-enough snapshot for display.
    pub fn view(&self, journals: &Journals) -> PublisherStatusView {
        let breaker = match self.breaker.load(Ordering::Relaxed) {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        };
        PublisherStatusView {
            breaker,
            breaker_transitions: self.breaker_transitions.load(Ordering::Relaxed),
            outbox_depth: journals
                .backlog()
                .saturating_sub(self.unacked_verdicts.load(Ordering::Relaxed)),
            unacked: self.unacked_verdicts.load(Ordering::Relaxed),
            shed_total: journals.given_up(),
            refused: self.refused.load(Ordering::Relaxed),
            refusals_total: self.refusals.load(Ordering::Relaxed),
            retries_total: self.retries.load(Ordering::Relaxed),
            batches_sent: self.batches_sent.load(Ordering::Relaxed),
            delivered: self.delivered_verdicts.load(Ordering::Relaxed),
        }
    }
}

impl PublisherStatusView {
    /// True when every verdict handed to the publisher was acknowledged.
    pub fn drained(&self) -> bool {
        self.outbox_depth == 0 && self.unacked == 0
    }
}

impl Actor for DashboardPublisher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.config.flush_interval(), |act, ctx| act.tick(ctx));
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.persist_acked(true);
    }
}

impl Handler<Connected> for DashboardPublisher {
    type Result = ();

    fn handle(&mut self, msg: Connected, ctx: &mut Self::Context) {
        let Connected(generation, result) = msg;
        if generation != self.generation {
            return;
        }
        let now = Instant::now();
        match result {
            Ok(conn) => {
                tracing::info!(publisher = %self.id, resend = self.pending.len(), "dashboard stream open");
                if self.stats.refused.swap(false, Ordering::Relaxed) {
                    tracing::warn!(publisher = %self.id, "the dashboard admits this publisher again");
                }
                // Success is an acknowledged batch, not an open stream: a
                // dashboard that accepts streams but fails every batch must
                // still trip the breaker. With nothing to send, the open
                // stream is all the proof there can be.
                if self.pending.is_empty() && !self.status_only {
                    self.breaker.on_success();
                    self.backoff.reset();
                }
                self.link = Link::Up(conn.batches);
                self.sent = 0;
                // A new link tells the dashboard the state at once.
                self.status_sent_at = now.checked_sub(STATUS_EVERY).unwrap_or(now);
                let events = conn
                    .acks
                    .map(move |r| match r {
                        Ok(ack) => StreamEvent::Ack(generation, ack),
                        Err(e) => StreamEvent::Failed(generation, e),
                    })
                    .chain(stream::once(async move { StreamEvent::Ended(generation) }));
                ctx.add_stream(events);
                self.tick(ctx);
            }
            Err(e) => {
                tracing::debug!(publisher = %self.id, error = %e, "dashboard connect failed");
                self.link_failed(now, &e);
            }
        }
    }
}

impl StreamHandler<StreamEvent> for DashboardPublisher {
    fn handle(&mut self, event: StreamEvent, _ctx: &mut Self::Context) {
        match event {
            StreamEvent::Ack(generation, ack) if generation == self.generation => self.on_ack(&ack),
            StreamEvent::Failed(generation, e) if generation == self.generation => {
                self.link_failed(Instant::now(), &e);
            }
            StreamEvent::Ended(generation) if generation == self.generation => {
                let ended = PublishError::Unavailable("stream ended".into());
                self.link_failed(Instant::now(), &ended);
            }
            _ => {}
        }
    }

    // A finished stream is a link event handled above, never a reason to stop.
    fn finished(&mut self, _ctx: &mut Self::Context) {}
}
