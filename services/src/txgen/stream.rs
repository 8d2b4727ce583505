//! One txgen stream: an explicit state machine (sending, then finishing)
//! that waits on events (an answer, a window permit, a retry falling due,
//! the draining notice, a connection opened, a new partition map, stop),
//! reconnects with the one backoff when an ingress drains or a stream
//! breaks, and tallies what came back.
//!
//! A stream has one route per replica it sends to: one (the target), or,
//! partition-aware, one per replica of the map, each transaction on the
//! route of its account's owner. A partition changes route (after a new
//! map, or while its owner's route is down) only when none of its
//! transactions is unanswered, so an account's transactions are never in
//! flight on two connections at once and keep their order.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
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
    pacer::Pacer,
    routes::{Directory, Replica, RouteMap},
    Decision, Generator, GiveUp, InFlight, Label, Planned, RetryBudget, RetryQueues, Tally,
    TxgenProgress,
};
use crate::{config::RetryConfig, error::ServiceError, net::HostPort};

/// Why a route's stream could not be (re)opened.
#[derive(Debug, thiserror::Error)]
enum Unconnected {
    #[error("{0} could not be reached before the retry deadline: {1}")]
    Unreachable(String, tonic::Status),
    #[error("stopped while reconnecting")]
    Stopped,
    #[error("reconnect backoff: {0}")]
    Backoff(#[from] txmesh_actors::backoff::BackoffError),
}

/// How long to wait for the answers still outstanding once sending stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A transaction whose partition is still unanswered on a route that can
/// take nothing more (its ingress is draining) waits this long to be sent.
const PLACEMENT_WAIT: Duration = Duration::from_millis(5);

/// One request sent and not yet answered.
struct Sent {
    route: usize,
    items: Vec<InFlight>,
}

/// What a stream's sender and receivers share.
struct StreamShared {
    /// Sent and not yet answered, by request id.
    pending: HashMap<u64, Sent>,
    retries: RetryQueues,
    budget: RetryBudget,
    rng: SmallRng,
    /// Clean transactions the ingress screened, not yet handed to the
    /// generator as replay candidates.
    screened: VecDeque<Transaction>,
    placement: Placement,
}

/// The route each partition's unanswered transactions are on.
struct Placement {
    partitions: u32,
    at: Vec<usize>,
    unanswered: Vec<u32>,
}

impl Placement {
    fn new(partitions: u32) -> Self {
        Self {
            partitions,
            at: vec![0; partitions as usize],
            unanswered: vec![0; partitions as usize],
        }
    }

    fn partition(&self, account: &str) -> u32 {
        super::routes::partition(account, self.partitions)
    }

    /// The route for one more transaction of partition `p`: `wanted`,
    /// unless some of the partition are unanswered on another.
    fn place(&mut self, p: u32, wanted: usize) -> usize {
        let p = p as usize;
        if self.unanswered[p] == 0 {
            self.at[p] = wanted;
        }
        self.at[p]
    }

    fn sent(&mut self, p: u32) {
        self.unanswered[p as usize] += 1;
    }

    /// A transaction of `account` was answered (or its stream lost).
    fn answered(&mut self, account: &str) {
        let p = self.partition(account) as usize;
        self.unanswered[p] = self.unanswered[p].saturating_sub(1);
    }
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

/// What it takes to open a Screen stream on a route, shared by the stream
/// and the tasks that reconnect its routes.
#[derive(Clone)]
struct Opener {
    shared: Shared,
    window: Arc<Window>,
    retry: RetryConfig,
    progress: Arc<TxgenProgress>,
    directory: Arc<Directory>,
    /// Signalled by the receivers on every answer and on the draining
    /// notice, so the sender waits on events instead of polling.
    events: Arc<Notify>,
    channel_capacity: usize,
}

/// One open Screen stream: where requests go (`None` once our side is
/// closed because the ingress is draining), whether its ingress said it is
/// draining (set by the receiver), and the task reading its answers (it
/// ends with the tally and whether the stream failed).
struct Connection {
    tx: Option<tokio::sync::mpsc::Sender<ScreenRequest>>,
    draining: Arc<AtomicBool>,
    receiver: tokio::task::JoinHandle<(Tally, bool)>,
}

impl Connection {
    /// It can take a request now.
    fn usable(&self) -> bool {
        self.tx.is_some() && !self.draining.load(Ordering::Acquire)
    }
}

/// One replica a stream sends to.
struct Route {
    replica: Replica,
    client: IngressClient<tonic::transport::Channel>,
    connection: Option<Connection>,
    /// A task is opening its stream.
    connecting: bool,
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

/// What the stream waited for.
enum Event {
    /// A route's stream ended (its receiver is joined).
    Ended(usize, Box<Result<(Tally, bool), tokio::task::JoinError>>),
    /// A route's stream was opened, or could not be before the deadline.
    Connected(usize, Result<Connection, Unconnected>),
}

impl Opener {
    /// Opens a Screen stream on `route` and starts reading its answers.
    async fn open(
        &self,
        client: &mut IngressClient<tonic::transport::Channel>,
        addr: &HostPort,
    ) -> Result<Connection, tonic::Status> {
        let (tx, rx) = tokio::sync::mpsc::channel::<ScreenRequest>(self.channel_capacity);
        let responses = client.screen(ReceiverStream::new(rx)).await?.into_inner();
        let draining = Arc::new(AtomicBool::new(false));
        let receiver = tokio::spawn(tracing::Instrument::instrument(
            receive(responses, addr.clone(), draining.clone(), self.clone()),
            tracing::info_span!("txgen.receive", %addr),
        ));
        Ok(Connection {
            tx: Some(tx),
            draining,
            receiver,
        })
    }

    /// Opens a stream on `route`, with backoff, until `give_up_at` or `stop`.
    async fn connect(
        &self,
        mut client: IngressClient<tonic::transport::Channel>,
        addr: HostPort,
        give_up_at: Instant,
        stop: CancellationToken,
        mut rng: SmallRng,
    ) -> Result<Connection, Unconnected> {
        let mut backoff = txmesh_actors::backoff::Backoff::new(RECONNECT_BACKOFF)?;
        loop {
            let status = match self.open(&mut client, &addr).await {
                Ok(connection) => return Ok(connection),
                Err(status) => status,
            };
            let delay = backoff.next_delay(&mut rng);
            if Instant::now() + delay >= give_up_at {
                return Err(Unconnected::Unreachable(addr.to_string(), status));
            }
            tracing::warn!(%status, %addr, ?delay, "Screen stream could not be opened; retrying");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.cancelled() => return Err(Unconnected::Stopped),
            }
        }
    }
}

/// A stream's routes and the map they follow.
struct Routes {
    opener: Opener,
    list: Vec<Route>,
    map: Arc<RouteMap>,
    updates: tokio::sync::watch::Receiver<Arc<RouteMap>>,
    /// Per replica of `map`, its route.
    of_replica: Vec<usize>,
    connected_tx: tokio::sync::mpsc::UnboundedSender<(usize, Result<Connection, Unconnected>)>,
    connected_rx: tokio::sync::mpsc::UnboundedReceiver<(usize, Result<Connection, Unconnected>)>,
    stop: CancellationToken,
    seed: u64,
}

impl Routes {
    /// Per route, whether it can take a request now.
    fn usable(&self) -> Vec<bool> {
        self.list
            .iter()
            .map(|r| r.connection.as_ref().is_some_and(Connection::usable))
            .collect()
    }

    fn any_usable(&self) -> bool {
        self.list
            .iter()
            .any(|r| r.connection.as_ref().is_some_and(Connection::usable))
    }

    /// Some route is up or being opened.
    fn any_alive(&self) -> bool {
        self.list
            .iter()
            .any(|r| r.connection.is_some() || r.connecting)
    }

    /// Whether `route`'s replica is in the current map.
    fn wanted(&self, route: usize) -> bool {
        self.of_replica.contains(&route)
    }

    /// The route for partition `p`'s owner, or (while it is down) any
    /// route that is up (that replica forwards); `usable` by route.
    fn for_partition(&self, p: u32, usable: &[bool]) -> Option<usize> {
        Some(self.of_replica[self.map.owner_index(p)])
            .filter(|r| usable[*r])
            .or_else(|| usable.iter().position(|u| *u))
    }

    /// Follows a new map: a route for each replica not yet routed to, its
    /// stream opened in the background.
    fn follow(&mut self, give_up_at: Instant) {
        if !self.updates.has_changed().unwrap_or(false) {
            return;
        }
        let map = self.updates.borrow_and_update().clone();
        self.adopt(map, give_up_at);
    }

    fn adopt(&mut self, map: Arc<RouteMap>, give_up_at: Instant) {
        let mut of_replica = Vec::with_capacity(map.replicas.len());
        for replica in &map.replicas {
            let route = match self.list.iter().position(|r| r.replica == *replica) {
                Some(route) => route,
                None => {
                    let Ok(channel) = self.opener.directory.channel(&replica.addr) else {
                        tracing::warn!(replica = %replica.name, "no channel to a replica of the map");
                        continue;
                    };
                    self.list.push(Route {
                        replica: replica.clone(),
                        client: client(channel),
                        connection: None,
                        connecting: false,
                    });
                    self.list.len() - 1
                }
            };
            of_replica.push(route);
        }
        if of_replica.len() != map.replicas.len() {
            return;
        }
        self.of_replica = of_replica;
        self.map = map;
        for route in self.of_replica.clone() {
            let r = &self.list[route];
            if r.connection.is_none() && !r.connecting {
                self.connect_later(route, give_up_at);
            }
        }
    }

    /// Opens `route`'s stream in the background; the result comes back as
    /// an [`Event::Connected`].
    fn connect_later(&mut self, route: usize, give_up_at: Instant) {
        let r = &mut self.list[route];
        r.connecting = true;
        let opener = self.opener.clone();
        let client = r.client.clone();
        let addr = r.replica.addr.clone();
        let stop = self.stop.clone();
        self.seed = self.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let rng = SmallRng::seed_from_u64(self.seed);
        let done = self.connected_tx.clone();
        tokio::spawn(async move {
            let result = opener.connect(client, addr, give_up_at, stop, rng).await;
            let _ = done.send((route, result));
        });
    }

    /// Waits for a route's stream to end or to be opened.
    async fn event(&mut self) -> Event {
        let Self {
            list, connected_rx, ..
        } = self;
        let ended = async {
            let live: Vec<_> = list
                .iter_mut()
                .enumerate()
                .filter_map(|(i, r)| {
                    r.connection
                        .as_mut()
                        .map(|c| Box::pin(async move { (i, (&mut c.receiver).await) }))
                })
                .collect();
            if live.is_empty() {
                return std::future::pending().await;
            }
            futures_util::future::select_all(live).await.0
        };
        tokio::select! {
            (route, ended) = ended => Event::Ended(route, Box::new(ended)),
            Some((route, result)) = connected_rx.recv() => Event::Connected(route, result),
        }
    }

    /// After `route`'s stream ended: everything it left unanswered is
    /// queued to be resent at once, in order, marked as possibly screened
    /// (the ingress answers such a resend with its original verdict).
    fn requeue_unanswered(&self, route: usize, tally: &mut Tally) {
        let now = Instant::now();
        let batches = {
            let mut guard = lock(&self.opener.shared);
            let StreamShared {
                pending,
                retries,
                placement,
                ..
            } = &mut *guard;
            let lost: Vec<u64> = pending
                .iter()
                .filter(|(_, s)| s.route == route)
                .map(|(id, _)| *id)
                .collect();
            for id in &lost {
                let Some(sent) = pending.remove(id) else {
                    continue;
                };
                for mut item in sent.items {
                    placement.answered(&item.txn.account_id);
                    item.lost = true;
                    retries.push(now, item);
                }
            }
            lost.len()
        };
        for _ in 0..batches {
            self.opener.window.give_back();
        }
        tally.reconnected();
    }

    /// Closes our side of every route whose ingress is draining: it ends
    /// the stream once it has answered everything it read (a new one is
    /// opened then), and the map may have changed.
    fn close_draining(&mut self) {
        for r in &mut self.list {
            if let Some(c) = r.connection.as_mut() {
                if c.tx.is_some() && c.draining.load(Ordering::Acquire) {
                    c.tx = None;
                    tracing::info!(addr = %r.replica.addr, "ingress is draining: no more sends on this stream");
                    self.opener.directory.stale(&r.replica.addr);
                }
            }
        }
    }
}

fn client(channel: tonic::transport::Channel) -> IngressClient<tonic::transport::Channel> {
    IngressClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
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
/// events (an answer or notice from a receiver, the next due time, `stop`,
/// a stream ending or opening, a new map), never on a polling sleep. A
/// stream that fails, or that a draining ingress ends, is opened again
/// (with backoff) while the run has work left and its replica is in the
/// map: a rolling restart is not the end of a load run.
pub(super) async fn run_stream(
    directory: Arc<Directory>,
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
    let mut updates = directory.subscribe();
    let map = updates.borrow_and_update().clone();
    let shared: Shared = Arc::new(Mutex::new(StreamShared {
        pending: HashMap::new(),
        retries: RetryQueues::default(),
        budget: RetryBudget::new(&plan.retry),
        rng: SmallRng::seed_from_u64(plan.seed),
        screened: VecDeque::new(),
        placement: Placement::new(map.partitions()),
    }));
    let (connected_tx, connected_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut routes = Routes {
        opener: Opener {
            shared: shared.clone(),
            window: window.clone(),
            retry: plan.retry.clone(),
            progress: progress.clone(),
            directory: directory.clone(),
            events: Arc::new(Notify::new()),
            channel_capacity,
        },
        list: Vec::new(),
        map: map.clone(),
        updates,
        of_replica: Vec::new(),
        connected_tx,
        connected_rx,
        stop: stop.clone(),
        seed: plan.seed.rotate_left(17),
    };
    let events = routes.opener.events.clone();
    let mut tally = Tally::new();
    // The first map's routes are opened before the run starts: a replica
    // that cannot be reached at all is an error, not a run.
    routes.adopt(map, Instant::now() + plan.retry.deadline());
    while routes.list.iter().any(|r| r.connecting) {
        let Some((route, result)) = routes.connected_rx.recv().await else {
            break;
        };
        routes.list[route].connecting = false;
        match result {
            Ok(connection) => routes.list[route].connection = Some(connection),
            Err(why) => {
                return Err(ServiceError::Connect {
                    target: routes.list[route].replica.addr.to_string(),
                    reason: why.to_string(),
                })
            }
        }
    }
    let mut sender = Sender {
        plan: &plan,
        start: Instant::now(),
        generated: 0,
        last_new: None,
        request_id: 0,
        fanout: 1,
    };
    let mut phase = Phase::Sending;
    let pacer = Pacer::new();
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
        routes.follow(now + plan.retry.deadline());
        routes.close_draining();
        let can_send = routes.any_usable();
        let event = if can_send && sender.has_work(now, phase, &shared) {
            sender
                .send_next(
                    &mut routes,
                    &mut generator,
                    &mut tally,
                    &progress,
                    &stop,
                    phase,
                )
                .await
        } else {
            let wake = sender.next_wake(phase, can_send, &shared, plan.retry.deadline());
            let mut updates = routes.updates.clone();
            tokio::select! {
                event = routes.event() => Some(event),
                () = events.notified() => None,
                () = stop.cancelled(), if phase == Phase::Sending => None,
                () = sleep_until_opt(&pacer, wake) => None,
                _ = updates.changed() => None,
            }
        };
        match event {
            None => {}
            Some(Event::Connected(route, result)) => {
                routes.list[route].connecting = false;
                match result {
                    Ok(connection) => routes.list[route].connection = Some(connection),
                    Err(why) => {
                        tracing::warn!(%why, "a route's stream could not be opened again");
                        if !routes.any_alive() {
                            tally.ended_early(why.to_string());
                            break;
                        }
                    }
                }
            }
            Some(Event::Ended(route, ended)) => {
                routes.list[route].connection = None;
                let (answered, failed) = (*ended).unwrap_or_else(|_| (Tally::new(), true));
                tally.merge(answered);
                // It ends the run when the run was finishing and nothing is
                // outstanding; otherwise (it failed, or a draining ingress
                // ended it with work left) a new one is opened.
                if matches!(phase, Phase::Finishing { .. }) && idle(&shared) {
                    break;
                }
                let addr = routes.list[route].replica.addr.clone();
                if failed {
                    tracing::warn!(%addr, "Screen stream lost; reconnecting");
                } else {
                    tracing::info!(%addr, "Screen stream ended by the ingress; reconnecting");
                }
                routes.requeue_unanswered(route, &mut tally);
                directory.stale(&addr);
                if routes.wanted(route) {
                    routes.connect_later(route, Instant::now() + plan.retry.deadline());
                } else if !routes.any_alive() {
                    tally.ended_early(format!(
                        "{addr} left and no replica of the map is reachable"
                    ));
                    break;
                }
            }
        }
    }
    // Every ingress ends its stream once our side is closed and it has
    // answered what it read.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for route in &mut routes.list {
        let Some(Connection { tx, receiver, .. }) = route.connection.take() else {
            continue;
        };
        drop(tx);
        match tokio::time::timeout_at(deadline, receiver).await {
            Ok(Ok((answered, _))) => tally.merge(answered),
            _ => {
                tracing::warn!(addr = %route.replica.addr, "the last answers of a stream did not arrive in time")
            }
        }
    }
    Ok(tally)
}

/// Nothing sent is waiting for an answer or a resend.
fn idle(shared: &Shared) -> bool {
    let s = lock(shared);
    s.pending.is_empty() && s.retries.is_empty()
}

/// Sleeps until `at`, or forever.
async fn sleep_until_opt(pacer: &Pacer, at: Option<Instant>) {
    match at {
        Some(at) => pacer.sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// At a fixed rate, new transactions go at their intended times, but a
/// stream sends at most once per this gap: what falls due meanwhile goes in
/// one request, as a client gathering its traffic would send it. At 1,000
/// tx/s a stream's transactions are milliseconds apart and each goes alone;
/// at 50,000 tx/s they go a few per request instead of one request each
/// (each request costs every process a wakeup).
const MIN_SEND_GAP: Duration = Duration::from_micros(200);

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
    /// When new transactions were last sent (see [`MIN_SEND_GAP`]).
    last_new: Option<Instant>,
    request_id: u64,
    /// Replicas in the map: a send takes up to a batch per replica, so
    /// each request is about a batch whether or not it is split.
    fanout: usize,
}

impl Sender<'_> {
    /// Stopped, or the duration or count reached.
    fn run_over(&self, now: Instant, stop: &CancellationToken) -> bool {
        stop.is_cancelled()
            || self.plan.deadline.is_some_and(|d| now >= d)
            || self.plan.count.is_some_and(|c| self.generated >= c)
    }

    /// The most one send takes: a batch per replica.
    fn send_max(&self) -> usize {
        self.plan.batch_size * self.fanout
    }

    /// New transactions due now (at most [`Self::send_max`]).
    fn new_due(&self, now: Instant) -> u64 {
        let remaining = self
            .plan
            .count
            .map_or(u64::MAX, |c| c.saturating_sub(self.generated));
        let due = match self.plan.rate {
            Some(rate) => {
                // Transaction k is meant to go at start + k / rate: those
                // meant for now or earlier are due.
                let should =
                    (now.saturating_duration_since(self.start).as_secs_f64() * rate) as u64 + 1;
                should.saturating_sub(self.generated)
            }
            None => self.send_max() as u64,
        };
        due.min(remaining).min(self.send_max() as u64)
    }

    fn has_work(&self, now: Instant, phase: Phase, shared: &Shared) -> bool {
        let retry_due = {
            let s = lock(shared);
            s.retries.next_due(&s.budget).is_some_and(|d| d <= now)
        };
        retry_due || (phase == Phase::Sending && self.new_due(now) > 0 && self.gap_over(now))
    }

    /// Whether new transactions may go now: [`MIN_SEND_GAP`] after the
    /// last that went.
    fn gap_over(&self, now: Instant) -> bool {
        self.plan.rate.is_none() || self.last_new.is_none_or(|at| now >= at + MIN_SEND_GAP)
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
                let intended = self.start + Duration::from_secs_f64(self.generated as f64 / rate);
                Some(
                    self.last_new
                        .map_or(intended, |at| intended.max(at + MIN_SEND_GAP)),
                )
            }
            _ => None,
        };
        [retry, expiry, phase_end, next_new]
            .into_iter()
            .flatten()
            .min()
    }

    /// Waits for room in the window (or a route's stream ending or
    /// opening, or `stop`), then sends due retries, else the new
    /// transactions due, each on its partition's route. `Some` when a
    /// route's stream ended or opened meanwhile.
    async fn send_next(
        &mut self,
        routes: &mut Routes,
        generator: &mut Generator,
        tally: &mut Tally,
        progress: &TxgenProgress,
        stop: &CancellationToken,
        phase: Phase,
    ) -> Option<Event> {
        let window = routes.opener.window.clone();
        let shared = routes.opener.shared.clone();
        self.fanout = routes.map.replicas.len().max(1);
        tokio::select! {
            () = window.acquire() => {}
            event = routes.event() => return Some(event),
            () = stop.cancelled(), if phase == Phase::Sending => return None,
        }
        let now = Instant::now();
        // Retries first: they are older than anything not yet generated.
        let due = {
            let mut guard = lock(&shared);
            let StreamShared {
                retries, budget, ..
            } = &mut *guard;
            retries.take_due(now, self.send_max(), budget)
        };
        let batch = if due.is_empty() && phase == Phase::Sending {
            self.generate(now, &shared, generator, tally, progress)
        } else {
            due
        };
        let parts = place(routes, batch, now);
        if parts.is_empty() {
            window.give_back();
            return None;
        }
        for (i, (route, items)) in parts.into_iter().enumerate() {
            if i > 0 {
                window.take_one_more();
            }
            self.request_id += 1;
            tally.routed(&routes.list[route].replica.name, items.len());
            let tx = routes.list[route]
                .connection
                .as_ref()
                .and_then(|c| c.tx.clone());
            send(tx, &shared, self.request_id, route, items).await;
        }
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
        if n > 0 {
            self.last_new = Some(now);
        }
        progress.sent.fetch_add(n as u64, Ordering::Relaxed);
        batch
    }
}

/// Splits `batch` by route: each transaction on its partition's route (see
/// [`Placement`]). One whose partition is unanswered on a route that can
/// take nothing more waits (in order) to be sent a little later.
fn place(routes: &Routes, batch: Vec<InFlight>, now: Instant) -> Vec<(usize, Vec<InFlight>)> {
    let mut parts: Vec<(usize, Vec<InFlight>)> = Vec::new();
    if batch.is_empty() {
        return parts;
    }
    let usable = routes.usable();
    let mut guard = lock(&routes.opener.shared);
    let StreamShared {
        placement, retries, ..
    } = &mut *guard;
    for item in batch {
        let p = placement.partition(&item.txn.account_id);
        let route = routes
            .for_partition(p, &usable)
            .map(|wanted| placement.place(p, wanted));
        match route.filter(|r| usable[*r]) {
            Some(route) => {
                placement.sent(p);
                match parts.iter_mut().find(|(r, _)| *r == route) {
                    Some((_, items)) => items.push(item),
                    None => parts.push((route, vec![item])),
                }
            }
            None => retries.push(now + PLACEMENT_WAIT, item),
        }
    }
    parts
}

/// Registers `items` as pending under `request_id` on `route` and sends
/// them.
async fn send(
    tx: Option<tokio::sync::mpsc::Sender<ScreenRequest>>,
    shared: &Shared,
    request_id: u64,
    route: usize,
    items: Vec<InFlight>,
) {
    let transactions = items.iter().map(|i| i.txn.clone()).collect();
    // The root of the request's trace, when this request is sampled.
    let span = tracing::info_span!("txgen.screen_request", request_id, size = items.len());
    let traceparent = crate::telemetry::traceparent(&span);
    lock(shared)
        .pending
        .insert(request_id, Sent { route, items });
    // A send that finds the stream gone leaves its batch pending: the
    // receiver's end is noticed next and the batch is resent.
    if let Some(tx) = tx {
        let _ = tx
            .send(ScreenRequest {
                transactions,
                request_id,
                traceparent,
            })
            .await;
    }
}

/// Reads the answers of one route's stream: verdicts and final errors are
/// tallied, retryable errors are queued for a resend (or given up, and
/// tallied). An answer that says its replica owns some of the request no
/// longer asks for a new map.
async fn receive(
    mut responses: tonic::Streaming<txmesh_proto::v1::ScreenResponse>,
    addr: HostPort,
    draining: Arc<AtomicBool>,
    opener: Opener,
) -> (Tally, bool) {
    let Opener {
        shared,
        window,
        retry,
        progress,
        directory,
        events,
        ..
    } = opener;
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
            draining.store(true, Ordering::Release);
            events.notify_one();
            continue;
        }
        if response.not_owned > 0 {
            directory.stale(&addr);
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
                placement,
                ..
            } = &mut *guard;
            let sent = pending
                .remove(&response.request_id)
                .map(|s| s.items)
                .unwrap_or_default();
            for (result, mut f) in response.results.iter().zip(sent) {
                placement.answered(&f.txn.account_id);
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

    /// Takes one more slot at once, for a batch split between routes (the
    /// window is counted in requests).
    fn take_one_more(&self) {
        self.state.lock().in_flight += 1;
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{Placement, Sender, StreamPlan};
    use crate::config::RetryConfig;

    #[test]
    fn a_partition_changes_route_only_once_nothing_of_it_is_unanswered() {
        let mut placement = Placement::new(16);
        let account = "acct-1";
        let p = placement.partition(account);
        assert_eq!(placement.place(p, 0), 0);
        placement.sent(p);
        placement.sent(p);
        // The map moved it to route 1: it stays on 0 while answers are due.
        assert_eq!(placement.place(p, 1), 0);
        placement.answered(account);
        assert_eq!(placement.place(p, 1), 0);
        placement.answered(account);
        assert_eq!(placement.place(p, 1), 1);
        // Another partition is not held back by this one.
        let other = (0..)
            .map(|i| format!("acct-{i}"))
            .find(|a| placement.partition(a) != placement.partition(account))
            .expect("another partition");
        placement.sent(p);
        assert_eq!(placement.place(placement.partition(&other), 2), 2);
    }

    #[test]
    fn at_a_fixed_rate_each_transaction_is_due_at_its_own_intended_time() {
        let plan = StreamPlan {
            rate: Some(1_000.0),
            count: None,
            deadline: None,
            batch_size: 100,
            max_in_flight: 1,
            retry: RetryConfig::default(),
            seed: 0,
        };
        let start = Instant::now();
        let mut sender = Sender {
            plan: &plan,
            start,
            generated: 0,
            last_new: None,
            request_id: 0,
            fanout: 1,
        };
        // The first is meant for the start, not one interval later.
        assert_eq!(sender.new_due(start), 1);
        sender.generated = 1;
        assert_eq!(sender.new_due(start + Duration::from_micros(999)), 0);
        assert_eq!(sender.new_due(start + Duration::from_millis(1)), 1);
        assert_eq!(sender.new_due(start + Duration::from_micros(3_500)), 3);
        // What falls due within the gap after a send waits for the next.
        sender.last_new = Some(start + Duration::from_micros(3_500));
        assert!(!sender.gap_over(start + Duration::from_micros(3_600)));
        assert!(sender.gap_over(start + Duration::from_micros(3_700)));
    }
}
