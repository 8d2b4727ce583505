//! One txgen stream: an explicit state machine (sending, then finishing)
//! that waits on events (an answer, a window permit, a retry falling due,
//! the draining notice, stop), reconnects with the one backoff when the
//! ingress drains or the stream breaks, and tallies what came back.

use std::{
    collections::{HashMap, VecDeque},
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use parking_lot::Mutex;
use rand::{rngs::SmallRng, SeedableRng};
use tokio::sync::Notify;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use txmesh_proto::v1::{
    ingress_client::IngressClient, txn_result::Outcome, ScreenRequest, Transaction, TxnErrorCode,
};

use super::{
    Decision, Generator, GiveUp, InFlight, Label, Planned, RetryBudget, RetryQueues, Tally,
    TxgenProgress,
};
use crate::{config::RetryConfig, error::ServiceError};

/// Why a stream could not be (re)opened.
#[derive(Debug, thiserror::Error)]
enum Unconnected {
    #[error("the ingress could not be reached before the retry deadline: {0}")]
    Unreachable(tonic::Status),
    #[error("stopped while reconnecting")]
    Stopped,
    #[error("reconnect backoff: {0}")]
    Backoff(#[from] txmesh_actors::backoff::BackoffError),
}

/// How long to wait for the answers still outstanding once sending stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What a stream's sender and receiver share.
struct StreamShared {
    /// Sent and not yet answered, by request id, in request order (results
    /// come back in the same order).
    pending: HashMap<u64, Vec<InFlight>>,
    retries: RetryQueues,
    budget: RetryBudget,
    rng: SmallRng,
    /// Clean transactions the ingress screened, not yet handed to the
    /// generator as replay candidates.
    screened: VecDeque<Transaction>,
    /// The ingress is shutting down: send nothing more on this stream.
    draining: bool,
}

/// Screened transactions held for the generator between batches.
const SCREENED_KEPT: usize = 1024;

/// Whether `result` is a first screening that the account's window kept.
fn entered_history(result: &txmesh_proto::v1::TxnResult) -> bool {
    matches!(&result.outcome, Some(Outcome::Verdict(v))
        if !v.replayed && v.status() != txmesh_proto::v1::VerdictStatus::Rejected)
}

type Shared = Arc<Mutex<StreamShared>>;

fn lock(shared: &Shared) -> parking_lot::MutexGuard<'_, StreamShared> {
    // A poisoned lock means a panicking task; the maps are still usable.
    shared.lock()
}

pub(super) struct StreamPlan {
    /// The ingress, for errors.
    pub(super) target: crate::net::HostPort,
    /// Transactions per second for this stream; `None` = as fast as possible.
    pub(super) rate: Option<f64>,
    pub(super) count: Option<u64>,
    pub(super) deadline: Option<Instant>,
    pub(super) batch_size: usize,
    pub(super) max_in_flight: usize,
    pub(super) retry: RetryConfig,
    /// Seeds the retry jitter.
    pub(super) seed: u64,
}

/// What every connection of a stream shares.
struct StreamContext {
    client: IngressClient<tonic::transport::Channel>,
    shared: Shared,
    window: Arc<Window>,
    retry: RetryConfig,
    progress: Arc<TxgenProgress>,
    /// Signalled by the receiver on every answer and on the draining
    /// notice, so the sender waits on events instead of polling.
    events: Arc<Notify>,
    channel_capacity: usize,
}

/// One open Screen stream: where requests go (`None` once our side is
/// closed because the ingress is draining), and the task reading its
/// answers (it ends with the tally and whether the stream failed).
struct Connection {
    tx: Option<tokio::sync::mpsc::Sender<ScreenRequest>>,
    receiver: tokio::task::JoinHandle<(Tally, bool)>,
}

/// Where a stream's run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// New transactions go out on schedule, and due retries.
    Sending,
    /// The run is over (stopped, its duration or count reached): only
    /// retries go out, until nothing is outstanding or `until`.
    Finishing { until: Instant },
}

impl StreamContext {
    /// Opens a Screen stream and starts reading its answers.
    async fn open(&mut self) -> Result<Connection, tonic::Status> {
        let (tx, rx) = tokio::sync::mpsc::channel::<ScreenRequest>(self.channel_capacity);
        let responses = self
            .client
            .screen(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let receiver = tokio::spawn(tracing::Instrument::instrument(
            receive(
                responses,
                self.shared.clone(),
                self.window.clone(),
                self.retry.clone(),
                self.progress.clone(),
                self.events.clone(),
            ),
            tracing::info_span!("txgen.receive"),
        ));
        Ok(Connection {
            tx: Some(tx),
            receiver,
        })
    }

    /// Opens a stream, with backoff, until `give_up_at` or `stop`.
    async fn connect(
        &mut self,
        give_up_at: Instant,
        stop: &CancellationToken,
        rng: &mut SmallRng,
    ) -> Result<Connection, Unconnected> {
        let mut backoff = txmesh_actors::backoff::Backoff::new(RECONNECT_BACKOFF)?;
        loop {
            let status = match self.open().await {
                Ok(connection) => return Ok(connection),
                Err(status) => status,
            };
            let delay = backoff.next_delay(rng);
            if Instant::now() + delay >= give_up_at {
                return Err(Unconnected::Unreachable(status));
            }
            tracing::warn!(%status, ?delay, "Screen stream could not be opened; retrying");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.cancelled() => return Err(Unconnected::Stopped),
            }
        }
    }

    /// After a stream ended: everything it left unanswered is queued to be
    /// resent at once, in order, marked as possibly screened (the ingress
    /// answers such a resend with its original verdict).
    fn requeue_unanswered(&self, tally: &mut Tally) {
        let now = Instant::now();
        let batches = {
            let mut guard = lock(&self.shared);
            let StreamShared {
                pending,
                retries,
                draining,
                ..
            } = &mut *guard;
            *draining = false;
            let batches = pending.len();
            for (_, items) in pending.drain() {
                for mut item in items {
                    item.lost = true;
                    retries.push(now, item);
                }
            }
            batches
        };
        for _ in 0..batches {
            self.window.give_back();
        }
        tally.reconnected();
    }
}

/// Reconnects after a lost or drained stream: from 50 ms, doubling to 2 s,
/// full jitter (a rolling restart of several ingresses must not see every
/// txgen stream come back at once).
const RECONNECT_BACKOFF: txmesh_actors::backoff::BackoffConfig =
    txmesh_actors::backoff::BackoffConfig {
        initial: Duration::from_millis(50),
        max: Duration::from_secs(2),
        multiplier: 2.0,
        jitter: 1.0,
    };

/// One stream's send loop, a small state machine: in [`Phase::Sending`] it
/// sends due retries first, then the new transactions the schedule says are
/// due; in [`Phase::Finishing`] only retries. Between sends it waits on
/// events (an answer or notice from the receiver, the next due time, `stop`,
/// the stream ending), never on a polling sleep. A stream that fails, or
/// that a draining ingress ends, is opened again (with backoff) while the
/// run has work left: a rolling restart is not the end of a load run.
pub(super) async fn run_stream(
    client: IngressClient<tonic::transport::Channel>,
    mut generator: Generator,
    plan: StreamPlan,
    stop: CancellationToken,
    progress: Arc<TxgenProgress>,
) -> Result<Tally, ServiceError> {
    // Open loop keeps a deep window so a slow answer does not hold back the
    // schedule; closed loop keeps `max_in_flight`.
    let window = if plan.rate.is_some() {
        plan.max_in_flight.max(1024)
    } else {
        plan.max_in_flight
    };
    let channel_capacity = window;
    let window = Arc::new(Window::new(window, plan.rate.is_none()));
    let shared: Shared = Arc::new(Mutex::new(StreamShared {
        pending: HashMap::new(),
        retries: RetryQueues::default(),
        budget: RetryBudget::new(&plan.retry),
        rng: SmallRng::seed_from_u64(plan.seed),
        screened: VecDeque::new(),
        draining: false,
    }));
    let mut context = StreamContext {
        client,
        shared: shared.clone(),
        window: window.clone(),
        retry: plan.retry.clone(),
        progress: progress.clone(),
        events: Arc::new(Notify::new()),
        channel_capacity,
    };
    let mut rng = SmallRng::seed_from_u64(plan.seed.rotate_left(17));
    let mut tally = Tally::new();
    let give_up_at = Instant::now() + plan.retry.deadline();
    let mut connection = match context.connect(give_up_at, &stop, &mut rng).await {
        Ok(connection) => connection,
        Err(why) => {
            return Err(ServiceError::Connect {
                target: plan.target.to_string(),
                reason: why.to_string(),
            })
        }
    };
    let mut sender = Sender {
        plan: &plan,
        start: Instant::now(),
        generated: 0,
        request_id: 0,
    };
    let mut phase = Phase::Sending;
    loop {
        let now = Instant::now();
        if phase == Phase::Sending && sender.run_over(now, &stop) {
            phase = Phase::Finishing {
                until: now + DRAIN_TIMEOUT,
            };
        }
        expire_retries(&shared, &mut tally, now, plan.retry.deadline());
        if let Phase::Finishing { until } = phase {
            if idle(&shared) || now >= until {
                break;
            }
        }
        if connection.tx.is_some() && lock(&shared).draining {
            // Closing our side lets the ingress end the stream once it has
            // answered everything it read; then a new stream is opened.
            connection.tx = None;
            tracing::info!("ingress is draining: no more sends on this stream");
        }
        let step = match &connection.tx {
            Some(tx) if sender.has_work(now, phase, &shared) => {
                sender
                    .send_next(
                        tx,
                        &shared,
                        &window,
                        &mut generator,
                        &mut tally,
                        &progress,
                        &stop,
                        &mut connection.receiver,
                        phase,
                    )
                    .await
            }
            _ => {
                let wake = sender.next_wake(
                    phase,
                    connection.tx.is_some(),
                    &shared,
                    plan.retry.deadline(),
                );
                tokio::select! {
                    ended = &mut connection.receiver => Some(ended),
                    () = context.events.notified() => None,
                    () = stop.cancelled(), if phase == Phase::Sending => None,
                    () = sleep_until_opt(wake) => None,
                }
            }
        };
        let Some(ended) = step else {
            continue;
        };
        // The stream ended (its receiver is joined).
        let (answered, failed) = ended.unwrap_or_else(|_| (Tally::new(), true));
        tally.merge(answered);
        // It ends the run when the run was finishing and nothing is
        // outstanding; otherwise (it failed, or a draining ingress ended it
        // with work left) a new one is opened.
        if matches!(phase, Phase::Finishing { .. }) && idle(&shared) {
            return Ok(tally);
        }
        if failed {
            tracing::warn!("Screen stream lost; reconnecting");
        } else {
            tracing::info!("Screen stream ended by the ingress; reconnecting");
        }
        context.requeue_unanswered(&mut tally);
        let give_up_at = Instant::now() + plan.retry.deadline();
        connection = match context.connect(give_up_at, &stop, &mut rng).await {
            Ok(connection) => connection,
            Err(why) => {
                tracing::warn!(%why, "txgen stream ends early");
                tally.ended_early(why.to_string());
                return Ok(tally);
            }
        };
    }
    let Connection { tx, receiver } = connection;
    drop(tx);
    // The ingress ends the stream once our side is closed and it has
    // answered what it read.
    match tokio::time::timeout(Duration::from_secs(5), receiver).await {
        Ok(Ok((answered, _))) => tally.merge(answered),
        _ => tracing::warn!("the last answers of a stream did not arrive in time"),
    }
    Ok(tally)
}

/// Nothing sent is waiting for an answer or a resend.
fn idle(shared: &Shared) -> bool {
    let s = lock(shared);
    s.pending.is_empty() && s.retries.is_empty()
}

/// Sleeps until `at`, or forever.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Gives up (and tallies) the transactions waiting for a resend past the
/// retry `deadline` after their first send.
fn expire_retries(shared: &Shared, tally: &mut Tally, now: Instant, deadline: Duration) {
    for item in lock(shared).retries.take_expired(now, deadline) {
        give_up(tally, item, now);
    }
}

/// The sending side of one stream: the schedule and the ids it has used.
struct Sender<'a> {
    plan: &'a StreamPlan,
    start: Instant,
    generated: u64,
    request_id: u64,
}

impl Sender<'_> {
    /// Stopped, or the duration or count reached.
    fn run_over(&self, now: Instant, stop: &CancellationToken) -> bool {
        stop.is_cancelled()
            || self.plan.deadline.is_some_and(|d| now >= d)
            || self.plan.count.is_some_and(|c| self.generated >= c)
    }

    /// New transactions due now (at most a batch).
    fn new_due(&self, now: Instant) -> u64 {
        let remaining = self
            .plan
            .count
            .map_or(u64::MAX, |c| c.saturating_sub(self.generated));
        let due = match self.plan.rate {
            Some(rate) => {
                let should =
                    (now.saturating_duration_since(self.start).as_secs_f64() * rate) as u64;
                should.saturating_sub(self.generated)
            }
            None => self.plan.batch_size as u64,
        };
        due.min(remaining).min(self.plan.batch_size as u64)
    }

    fn has_work(&self, now: Instant, phase: Phase, shared: &Shared) -> bool {
        let retry_due = {
            let s = lock(shared);
            s.retries.next_due(&s.budget).is_some_and(|d| d <= now)
        };
        retry_due || (phase == Phase::Sending && self.new_due(now) > 0)
    }

    /// When something next becomes due: the next scheduled transaction, the
    /// next retry (or, for one waiting for a budget token, its expiry), the
    /// end of the run or of finishing.
    fn next_wake(
        &self,
        phase: Phase,
        can_send: bool,
        shared: &Shared,
        deadline: Duration,
    ) -> Option<Instant> {
        let (retry, expiry) = {
            let s = lock(shared);
            (
                can_send.then(|| s.retries.next_due(&s.budget)).flatten(),
                s.retries.next_expiry(deadline),
            )
        };
        let phase_end = match phase {
            Phase::Sending => self.plan.deadline,
            Phase::Finishing { until } => Some(until),
        };
        let next_new = match (phase, self.plan.rate) {
            (Phase::Sending, Some(rate)) if can_send => {
                Some(self.start + Duration::from_secs_f64((self.generated + 1) as f64 / rate))
            }
            _ => None,
        };
        [retry, expiry, phase_end, next_new]
            .into_iter()
            .flatten()
            .min()
    }

    /// Waits for room in the window (or the stream ending, or `stop`), then
    /// sends due retries, else the new transactions due. `Some` when the
    /// stream ended meanwhile.
    #[allow(clippy::too_many_arguments)]
    async fn send_next(
        &mut self,
        tx: &tokio::sync::mpsc::Sender<ScreenRequest>,
        shared: &Shared,
        window: &Window,
        generator: &mut Generator,
        tally: &mut Tally,
        progress: &TxgenProgress,
        stop: &CancellationToken,
        receiver: &mut tokio::task::JoinHandle<(Tally, bool)>,
        phase: Phase,
    ) -> Option<Result<(Tally, bool), tokio::task::JoinError>> {
        tokio::select! {
            () = window.acquire() => {}
            ended = &mut *receiver => return Some(ended),
            () = stop.cancelled(), if phase == Phase::Sending => return None,
        }
        let now = Instant::now();
        // Retries first: they are older than anything not yet generated.
        let due = {
            let mut guard = lock(shared);
            let StreamShared {
                retries, budget, ..
            } = &mut *guard;
            retries.take_due(now, self.plan.batch_size, budget)
        };
        let batch = if due.is_empty() && phase == Phase::Sending {
            self.generate(now, shared, generator, tally, progress)
        } else {
            due
        };
        if batch.is_empty() {
            window.give_back();
            return None;
        }
        self.request_id += 1;
        send(tx, shared, self.request_id, batch).await;
        None
    }

    /// The new transactions due now, stamped with the time each was meant
    /// to go (open loop) or now (closed loop).
    fn generate(
        &mut self,
        now: Instant,
        shared: &Shared,
        generator: &mut Generator,
        tally: &mut Tally,
        progress: &TxgenProgress,
    ) -> Vec<InFlight> {
        let n = self.new_due(now) as usize;
        let interval = self
            .plan
            .rate
            .map(|rate| Duration::from_secs_f64(1.0 / rate));
        let now_ms = txmesh_actors::clock::system_unix_ms();
        let mut batch = Vec::with_capacity(n);
        let mut s = lock(shared);
        for txn in s.screened.drain(..) {
            generator.screened(txn);
        }
        for i in 0..n {
            let Planned { txn, label } = generator.next(now_ms);
            let seq = self.generated + i as u64;
            let intended = match interval {
                Some(iv) => self.start + iv.mul_f64(seq as f64),
                None => now,
            };
            tally.sent(label);
            let item = InFlight {
                txn,
                label,
                intended,
                first_sent: now,
                attempt: 0,
                seq,
                last_error: None,
                starved: false,
                lost: false,
            };
            // An account with transactions waiting to be resent keeps its
            // order: the new one queues behind them.
            if s.retries.holds(&item.txn.account_id) {
                s.retries.push(now, item);
            } else {
                batch.push(item);
            }
        }
        s.budget.earn(batch.len());
        self.generated += n as u64;
        progress.sent.fetch_add(n as u64, Ordering::Relaxed);
        batch
    }
}

/// Registers `items` as pending under `request_id` and sends them.
async fn send(
    tx: &tokio::sync::mpsc::Sender<ScreenRequest>,
    shared: &Shared,
    request_id: u64,
    items: Vec<InFlight>,
) {
    let transactions = items.iter().map(|i| i.txn.clone()).collect();
    // The root of the request's trace, when this request is sampled.
    let span = tracing::info_span!("txgen.screen_request", request_id, size = items.len());
    let traceparent = crate::telemetry::traceparent(&span);
    lock(shared).pending.insert(request_id, items);
    // A send that finds the stream gone leaves its batch pending: the
    // receiver's end is noticed next and the batch is resent.
    let _ = tx
        .send(ScreenRequest {
            transactions,
            request_id,
            traceparent,
        })
        .await;
}

/// Reads the answers of one stream: verdicts and final errors are tallied,
/// retryable errors are queued for a resend (or given up, and tallied).
async fn receive(
    mut responses: tonic::Streaming<txmesh_proto::v1::ScreenResponse>,
    shared: Shared,
    window: Arc<Window>,
    retry: RetryConfig,
    progress: Arc<TxgenProgress>,
    events: Arc<Notify>,
) -> (Tally, bool) {
    let mut tally = Tally::new();
    while let Some(item) = responses.next().await {
        let response = match item {
            Ok(response) => response,
            Err(status) => {
                tracing::warn!(%status, "Screen stream failed");
                return (tally, true);
            }
        };
        if response.draining {
            lock(&shared).draining = true;
            events.notify_one();
            continue;
        }
        let now = Instant::now();
        let mut finals = 0u64;
        // A hold is the server keeping an account's order, not load.
        let overloaded = response.results.iter().any(|r| {
            matches!(&r.outcome, Some(Outcome::Error(e)) if e.code() == TxnErrorCode::ResourceExhausted)
        });
        {
            let mut guard = lock(&shared);
            let StreamShared {
                pending,
                retries,
                rng,
                screened,
                ..
            } = &mut *guard;
            let sent = pending.remove(&response.request_id).unwrap_or_default();
            for (result, mut f) in response.results.iter().zip(sent) {
                if let Some(Outcome::Error(e)) = &result.outcome {
                    let since_first = now.saturating_duration_since(f.first_sent);
                    match retry.decide(e, f.attempt, since_first, rng) {
                        Decision::RetryAfter(delay) => {
                            tally.retried();
                            f.attempt += 1;
                            // Its answer was lost between replicas: a
                            // replayed verdict for it is its own.
                            f.lost |= e.maybe_screened;
                            f.last_error = Some(e.clone());
                            retries.push(now + delay, f);
                            continue;
                        }
                        Decision::GiveUp(why) => tally.gave_up(why),
                    }
                }
                finals += 1;
                tally.answered(
                    result,
                    f.label,
                    now.saturating_duration_since(f.intended),
                    f.lost,
                );
                if f.label == Label::Clean && entered_history(result) {
                    if screened.len() == SCREENED_KEPT {
                        screened.pop_front();
                    }
                    screened.push_back(f.txn);
                }
            }
        }
        progress.answered.fetch_add(finals, Ordering::Relaxed);
        window.release(overloaded);
        events.notify_one();
    }
    (tally, false)
}

/// Tallies a transaction that waited past its deadline as given up, with
/// the error of its last attempt.
fn give_up(tally: &mut Tally, item: InFlight, now: Instant) {
    tally.gave_up(if item.starved {
        GiveUp::Budget
    } else {
        GiveUp::Deadline
    });
    let result = txmesh_proto::v1::TxnResult {
        transaction_id: item.txn.transaction_id.clone(),
        outcome: item.last_error.map(Outcome::Error),
    };
    tally.answered(
        &result,
        item.label,
        now.saturating_duration_since(item.intended),
        item.lost,
    );
}

/// The batches a stream may have in flight. At a fixed rate it is a fixed
/// bound; at maximum rate it adapts like a TCP congestion window: it starts
/// at one batch and grows by one per clean answer (slow start) until the
/// first RESOURCE_EXHAUSTED, then halves on refusals and grows by one batch
/// per window of clean answers (AIMD), so an overloaded ingress sees the
/// offered load back off instead of a retry storm.
struct Window {
    state: Mutex<WindowState>,
    changed: tokio::sync::Notify,
}

struct WindowState {
    size: f64,
    max: f64,
    adaptive: bool,
    slow_start: bool,
    in_flight: usize,
    last_cut: Instant,
}

impl Window {
    fn new(max: usize, adaptive: bool) -> Self {
        Self {
            state: Mutex::new(WindowState {
                size: if adaptive { 1.0 } else { max as f64 },
                max: max as f64,
                adaptive,
                slow_start: adaptive,
                in_flight: 0,
                last_cut: Instant::now(),
            }),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// Waits for room for one more batch and takes it.
    async fn acquire(&self) {
        loop {
            let notified = self.changed.notified();
            {
                let mut s = self.state.lock();
                if (s.in_flight as f64) < s.size.max(1.0) {
                    s.in_flight += 1;
                    return;
                }
            }
            notified.await;
        }
    }

    /// Returns a slot taken for a batch that was never answered (its stream
    /// ended) or never sent, without counting it as an answer.
    fn give_back(&self) {
        {
            let mut s = self.state.lock();
            s.in_flight = s.in_flight.saturating_sub(1);
        }
        self.changed.notify_waiters();
    }

    /// A batch was answered; `overloaded` when any of it was refused.
    fn release(&self, overloaded: bool) {
        {
            let mut s = self.state.lock();
            s.in_flight = s.in_flight.saturating_sub(1);
            if s.adaptive {
                let now = Instant::now();
                if overloaded {
                    // One cut per burst of refusals, not one per batch.
                    if now.saturating_duration_since(s.last_cut) > Duration::from_millis(5) {
                        s.size = (s.size / 2.0).max(1.0);
                        s.last_cut = now;
                        s.slow_start = false;
                    }
                } else if s.slow_start {
                    s.size = (s.size + 1.0).min(s.max);
                } else {
                    s.size = (s.size + 1.0 / s.size).min(s.max);
                }
            }
        }
        self.changed.notify_waiters();
    }
}
