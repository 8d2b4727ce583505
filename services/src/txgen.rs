//! txgen: streams transactions to the ingress over mTLS at a fixed rate
//! (open loop: latency counts from each transaction's intended send time)
//! or as fast as the ingress answers (closed loop with a window of batches
//! in flight), with a share of labelled injected patterns, and reports what
//! came back.
//!
//! Accounts are partitioned between streams so that each account's
//! transactions travel on one stream, in order.

mod patterns;
mod report;
mod retry;

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use rand::{rngs::SmallRng, SeedableRng};
use tokio_stream::wrappers::ReceiverStream;
use txmesh_certs::{CertStore, SpiffeId};
use txmesh_proto::v1::{
    ingress_client::IngressClient, txn_result::Outcome, ScreenRequest, Transaction, TxnErrorCode,
};

pub use patterns::{Generator, Label, Pattern, Planned};
pub use report::{CleanCount, LatencyMs, PatternCount, Tally, TxgenReport};
pub use retry::{Decision, GiveUp, InFlight, RetryBudget, RetryQueues};

use crate::{
    config::{RetryConfig, TxmeshConfig},
    error::ServiceError,
    net::mtls_channel,
    shutdown::Shutdown,
};

/// Live counters, for `up`'s summary line.
#[derive(Debug, Default)]
pub struct TxgenProgress {
    pub sent: AtomicU64,
    pub answered: AtomicU64,
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

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, StreamShared> {
    // A poisoned lock means a panicking task; the maps are still usable.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs txgen as configured until its duration or count is reached, or
/// `stop` fires; then waits for outstanding answers and reports.
///
/// # Errors
/// When certificates cannot be loaded or a stream cannot be opened.
pub async fn run(
    config: &TxmeshConfig,
    stop: Shutdown,
    progress: Arc<TxgenProgress>,
) -> Result<TxgenReport, ServiceError> {
    let t = &config.txgen;
    let store = CertStore::open(&config.identity_dir(&t.identity), &config.trust_domain)?;
    let ingress_id = SpiffeId::for_workload(&config.trust_domain, "ingress")?;
    let channel = mtls_channel(t.target, &store, &ingress_id)?;
    // txgen serves no metrics; its registry only backs the reload watcher.
    let metrics = Arc::new(crate::metrics::Metrics::new(&[]));
    let watcher =
        crate::net::watch_certs(store, config.tls.reload_interval(), stop.clone(), metrics);
    let now_ms = unix_ms();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(t.streams);
    for stream in 0..t.streams {
        let generator = Generator::new(
            t.seed,
            stream,
            t.streams,
            t.accounts,
            config.actors.rules.clone(),
            t.inject_ratio,
            now_ms,
        );
        let plan = StreamPlan {
            rate: (t.rate > 0).then(|| (t.rate as f64 / t.streams as f64).max(1e-3)),
            count: (t.count > 0).then(|| {
                t.count / t.streams as u64 + u64::from((stream as u64) < t.count % t.streams as u64)
            }),
            deadline: (t.duration_secs > 0).then(|| started + Duration::from_secs(t.duration_secs)),
            batch_size: t.batch_size,
            max_in_flight: t.max_in_flight,
            retry: t.retry.clone(),
            seed: t.seed ^ (stream as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d),
        };
        let client = IngressClient::new(channel.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        tasks.push(tokio::spawn(run_stream(
            client,
            generator,
            plan,
            stop.clone(),
            progress.clone(),
        )));
    }
    let mut total = Tally::new();
    let result = collect(tasks, &mut total).await;
    watcher.abort();
    result?;
    Ok(total.report((t.rate > 0).then_some(t.rate), started.elapsed()))
}

async fn collect(
    tasks: Vec<tokio::task::JoinHandle<Result<Tally, ServiceError>>>,
    total: &mut Tally,
) -> Result<(), ServiceError> {
    for task in tasks {
        match task.await {
            Ok(Ok(tally)) => total.merge(tally),
            Ok(Err(e)) => return Err(e),
            Err(e) => {
                return Err(ServiceError::config(
                    "txgen",
                    format!("stream task failed: {e}"),
                ))
            }
        }
    }
    Ok(())
}

struct StreamPlan {
    /// Transactions per second for this stream; `None` = as fast as possible.
    rate: Option<f64>,
    count: Option<u64>,
    deadline: Option<Instant>,
    batch_size: usize,
    max_in_flight: usize,
    retry: RetryConfig,
    /// Seeds the retry jitter.
    seed: u64,
}

/// One open Screen stream: where requests go, and the task reading its
/// answers (it ends with the tally and whether the stream failed).
struct Connection {
    tx: tokio::sync::mpsc::Sender<ScreenRequest>,
    receiver: tokio::task::JoinHandle<(Tally, bool)>,
}

/// What every connection of a stream shares.
struct StreamContext {
    client: IngressClient<tonic::transport::Channel>,
    shared: Shared,
    window: Arc<Window>,
    retry: RetryConfig,
    progress: Arc<TxgenProgress>,
    channel_capacity: usize,
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
        let receiver = tokio::spawn(receive(
            responses,
            self.shared.clone(),
            self.window.clone(),
            self.retry.clone(),
            self.progress.clone(),
        ));
        Ok(Connection { tx, receiver })
    }

    /// After a stream failed: everything it left unanswered is queued to
    /// be resent at once, in order, marked as possibly screened (the
    /// ingress answers such a resend with its original verdict); then a
    /// new stream is opened, with backoff, until `give_up_at`.
    async fn reopen(
        &mut self,
        tally: &mut Tally,
        give_up_at: Instant,
    ) -> Result<Connection, ServiceError> {
        let now = Instant::now();
        let batches = {
            let mut guard = lock(&self.shared);
            let StreamShared {
                pending, retries, ..
            } = &mut *guard;
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
            self.window.release(false);
        }
        tally.reconnected();
        let mut delay = Duration::from_millis(50);
        loop {
            match self.open().await {
                Ok(connection) => return Ok(connection),
                Err(status) if Instant::now() + delay < give_up_at => {
                    tracing::warn!(%status, ?delay, "Screen stream lost; reconnecting");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                Err(status) => return Err(ServiceError::Status(status)),
            }
        }
    }
}

async fn run_stream(
    client: IngressClient<tonic::transport::Channel>,
    mut generator: Generator,
    plan: StreamPlan,
    stop: Shutdown,
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
        channel_capacity,
    };
    let mut connection = context.open().await.map_err(ServiceError::Status)?;

    let mut sent_tally = Tally::new();
    let start = Instant::now();
    let mut generated: u64 = 0;
    let mut request_id: u64 = 0;
    let mut drain_until: Option<Instant> = None;
    let tick = Duration::from_millis(1);
    let mut sending = true;
    // Set when a send found the stream gone.
    let mut broken = false;
    // The current connection's receiver has been awaited (it must not be
    // polled again).
    let mut joined = false;
    loop {
        let now = Instant::now();
        if broken || connection.receiver.is_finished() {
            let (tally, failed) = match tokio::time::timeout(
                Duration::from_secs(5),
                &mut connection.receiver,
            )
            .await
            {
                Ok(Ok(done)) => done,
                _ => (Tally::new(), true),
            };
            sent_tally.merge(tally);
            broken = false;
            joined = true;
            let idle = {
                let s = lock(&shared);
                s.pending.is_empty() && s.retries.is_empty()
            };
            if !failed && (!sending || idle) {
                break;
            }
            // Nothing is given up for a lost stream before its deadline.
            let give_up_at = now + plan.retry.deadline();
            connection = context.reopen(&mut sent_tally, give_up_at).await?;
            joined = false;
            sending = true;
            lock(&shared).draining = false;
            continue;
        }
        if sending && lock(&shared).draining {
            // Closing our side lets the ingress finish the stream once it
            // has answered everything it read.
            sending = false;
            let (closed, _) = tokio::sync::mpsc::channel(1);
            drop(std::mem::replace(&mut connection.tx, closed));
            drain_until = Some(now + DRAIN_TIMEOUT);
            tracing::info!("ingress is draining: no more sends on this stream");
        }
        if !sending {
            let idle = lock(&shared).pending.is_empty();
            if idle || drain_until.is_some_and(|d| now >= d) {
                break;
            }
            tokio::time::sleep(tick).await;
            continue;
        }
        let sender = &connection.tx;
        if drain_until.is_none()
            && (stop.is_fired()
                || plan.deadline.is_some_and(|d| now >= d)
                || plan.count.is_some_and(|c| generated >= c))
        {
            drain_until = Some(now + DRAIN_TIMEOUT);
        }
        if let Some(until) = drain_until {
            let idle = {
                let s = lock(&shared);
                s.pending.is_empty() && s.retries.is_empty()
            };
            if idle || now >= until {
                break;
            }
        }
        // Retries first: they are older than anything not yet generated.
        let due = {
            let mut guard = lock(&shared);
            let StreamShared {
                retries, budget, ..
            } = &mut *guard;
            for item in retries.take_expired(now, plan.retry.deadline()) {
                give_up(&mut sent_tally, item, now);
            }
            retries.take_due(now, plan.batch_size, budget)
        };
        if !due.is_empty() {
            window.acquire().await;
            request_id += 1;
            if !send(sender, &shared, request_id, due).await {
                broken = true;
            }
            continue;
        }
        if drain_until.is_some() {
            tokio::time::sleep(tick).await;
            continue;
        }
        let remaining = plan.count.map_or(u64::MAX, |c| c.saturating_sub(generated));
        // How many are due now, and when each was meant to go.
        let (count, interval) = match plan.rate {
            Some(rate) => {
                let should = (start.elapsed().as_secs_f64() * rate) as u64;
                (
                    should.saturating_sub(generated).min(remaining),
                    Some(Duration::from_secs_f64(1.0 / rate)),
                )
            }
            None => ((plan.batch_size as u64).min(remaining), None),
        };
        if count == 0 {
            tokio::time::sleep(tick).await;
            continue;
        }
        let n = count.min(plan.batch_size as u64) as usize;
        window.acquire().await;
        let now_ms = unix_ms();
        let sent_at = Instant::now();
        let mut batch = Vec::with_capacity(n);
        {
            let mut s = lock(&shared);
            for txn in s.screened.drain(..) {
                generator.screened(txn);
            }
            for i in 0..n {
                let Planned { txn, label } = generator.next(now_ms);
                let intended = match interval {
                    Some(iv) => start + iv.mul_f64((generated + i as u64) as f64),
                    None => sent_at,
                };
                sent_tally.sent(label);
                let item = InFlight {
                    txn,
                    label,
                    intended,
                    first_sent: sent_at,
                    attempt: 0,
                    seq: generated + i as u64,
                    last_error: None,
                    starved: false,
                    lost: false,
                };
                // An account with transactions waiting to be resent keeps
                // its order: the new one queues behind them.
                if s.retries.holds(&item.txn.account_id) {
                    s.retries.push(sent_at, item);
                } else {
                    batch.push(item);
                }
            }
            s.budget.earn(batch.len());
        }
        generated += n as u64;
        progress.sent.fetch_add(n as u64, Ordering::Relaxed);
        if batch.is_empty() {
            window.release(false);
            continue;
        }
        request_id += 1;
        if !send(sender, &shared, request_id, batch).await {
            broken = true;
        }
    }
    let Connection { tx, receiver } = connection;
    drop(tx);
    if !joined {
        let answered = match tokio::time::timeout(Duration::from_secs(5), receiver).await {
            Ok(Ok((tally, _))) => tally,
            _ => Tally::new(),
        };
        sent_tally.merge(answered);
    }
    Ok(sent_tally)
}

/// Registers `items` as pending under `request_id` and sends them; false
/// when the stream is gone.
async fn send(
    tx: &tokio::sync::mpsc::Sender<ScreenRequest>,
    shared: &Shared,
    request_id: u64,
    items: Vec<InFlight>,
) -> bool {
    let transactions = items.iter().map(|i| i.txn.clone()).collect();
    // The root of the request's trace, when this request is sampled.
    let span = tracing::info_span!("txgen.screen_request", request_id, size = items.len());
    let traceparent = crate::telemetry::traceparent(&span);
    lock(shared).pending.insert(request_id, items);
    tx.send(ScreenRequest {
        transactions,
        request_id,
        traceparent,
    })
    .await
    .is_ok()
}

/// Reads the answers of one stream: verdicts and final errors are tallied,
/// retryable errors are queued for a resend (or given up, and tallied).
async fn receive(
    mut responses: tonic::Streaming<txmesh_proto::v1::ScreenResponse>,
    shared: Shared,
    window: Arc<Window>,
    retry: RetryConfig,
    progress: Arc<TxgenProgress>,
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
            continue;
        }
        let now = Instant::now();
        let mut finals = 0u64;
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
                let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if (s.in_flight as f64) < s.size.max(1.0) {
                    s.in_flight += 1;
                    return;
                }
            }
            notified.await;
        }
    }

    /// A batch was answered; `overloaded` when any of it was refused.
    fn release(&self, overloaded: bool) {
        {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
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

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
