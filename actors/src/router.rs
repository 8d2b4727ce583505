//! ShardRouter and Shard: every account lives in exactly one shard (one
//! actor per arbiter thread), chosen by a hash of its id. The shard starts
//! the account's actor on first use, passivates it when idle (keeping its
//! state in compact form) and restores it on its next transaction.
//!
//! Order: one caller's batches reach a shard in the order sent (actix
//! mailboxes are FIFO per sender) and a shard forwards them to each account
//! in that order. A transaction refused for overload puts its account on
//! hold (see [`holds`]): later transactions of the account are refused too
//! until the refused one comes back, so a retry cannot overtake or be
//! overtaken.

mod handoff;
mod holds;
mod inflight;
mod remote;

pub use remote::{Cluster, RemoteItem, RemotePart, RemoteScreen};

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use actix::{
    dev::SendError, Actor, ActorContext, ActorFutureExt, Addr, Arbiter, AsyncContext, Context,
    Handler, MailboxError, Message, Supervisor, WrapFuture,
};
use futures_util::{future::join_all, FutureExt};
use txmesh_proto::v1::{Transaction, TxnResult};

use crate::{
    account::{
        AccountActor, AccountEnv, AccountState, EvaluationHook, Kill, Passivate, PeekWindow,
        ScreenTxn,
    },
    clock::{SharedClock, SystemClock},
    config::{ActorsConfig, ShardsConfig},
    journal::{
        snapshot::{AccountWindow, SnapshotWindows},
        JournalHistograms, Journals, ShardJournal,
    },
    partition::{name_tag, partition_of, PartitionFlags, PartitionMap},
    reply::{BatchReply, ReplySlot},
    stats::{PoisonLog, ScreeningStats, ShardStats},
    supervision::SupervisionState,
    window::{passive::PassiveWindows, HistoryWindow},
    ActorError,
};
use holds::Holds;

/// Most passivations one sweep starts, so a shard with many idle accounts
/// spreads the work over several sweeps instead of stalling its mailbox.
const MAX_PASSIVATIONS_PER_SWEEP: usize = 20_000;

/// The retry delay suggested while a shard's journal cannot write.
const JOURNAL_RETRY_AFTER_MS: u32 = 1_000;

/// The retry delay suggested while an account's partition is handed over.
const MOVING_RETRY_AFTER_MS: u32 = 100;

/// A shard's accounts by id. Hashed with foldhash (seeded per process)
/// rather than SipHash: every transaction is looked up at least twice.
type Accounts<V> = HashMap<Box<str>, V, foldhash::fast::RandomState>;

/// Gives back a map's room once it holds under a quarter of it: a map
/// never shrinks by itself, and after a burst has passivated hundreds of
/// thousands of accounts the active map's empty buckets would stay.
fn shrink_if_sparse<V>(map: &mut Accounts<V>) {
    if map.capacity() > 4096 && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

/// Where an account lives: a shard of this process, or (with several
/// ingress replicas) another replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    Local(usize),
    /// `owner` indexes the replicas of the map the location was read from.
    Remote {
        partition: u32,
        owner: usize,
        epoch: u64,
    },
}

/// What a router is started with besides its config.
#[derive(Clone)]
pub struct RouterOptions {
    pub clock: SharedClock,
    /// Runs before every evaluation, inside its `catch_unwind`.
    pub hook: Option<EvaluationHook>,
    /// Faults injected by chaos experiments, consulted at every evaluation.
    pub chaos: Option<Arc<txmesh_chaos::Registry>>,
    /// With several ingress replicas: this one's place among them.
    pub cluster: Option<Cluster>,
}

/// Routes transactions to shards. Cheap to clone; one per process.
#[derive(Clone)]
pub struct ShardRouter {
    shards: Arc<[ShardHandle]>,
    config: Arc<ShardsConfig>,
    clock: SharedClock,
    stats: ScreeningStats,
    arbiters: Arc<parking_lot::Mutex<Vec<Arbiter>>>,
    journals: Journals,
    cluster: Option<(Cluster, Arc<remote::RemoteHolds>)>,
    /// Numbers every part handed on, to a shard or another replica (see
    /// [`holds`]).
    stamps: Arc<AtomicU64>,
    /// With several replicas: where each partition's unanswered work went.
    inflight: Option<Arc<inflight::InFlight>>,
}

struct ShardHandle {
    addr: Addr<Shard>,
    holds: Arc<Holds>,
    stats: Arc<ShardStats>,
}

/// The transactions of one request batch that belong to one shard.
pub struct ScreenPart {
    pub items: Vec<(Transaction, ReplySlot)>,
    pub received: Instant,
    /// W3C trace context of the request, when traced.
    pub trace: Option<Arc<str>>,
    /// Order of the part among those handed to its shard.
    pub stamp: u64,
}

impl Message for ScreenPart {
    type Result = ();
}

/// One shard: the account actors of its hash range, on its own arbiter.
/// Supervised: a killed shard restarts on the same value, with its
/// accounts, holds and mailbox.
pub struct Shard {
    env: Arc<AccountEnv>,
    /// Shards in the router (places this one in a fault's blast radius).
    shard_count: usize,
    config: Arc<ShardsConfig>,
    holds: Arc<Holds>,
    active: Accounts<ActiveAccount>,
    /// The active accounts whose passivation is under way, with what
    /// arrived for them meanwhile (in order). Beside `active`, not in its
    /// entries: it is nearly always empty, and a field in every entry was
    /// 24 bytes in each of hundreds of thousands.
    passivating: Accounts<Vec<(u64, ScreenTxn)>>,
    /// The passivated accounts' windows.
    passive: PassiveWindows,
    /// What supervision remembers of the passivated accounts that have
    /// crashed lately (nearly always none).
    supervised: Accounts<Box<SupervisionState>>,
    /// How often the windows are snapshotted (`None`: journal in memory).
    snapshot_every: Option<Duration>,
    /// With several replicas: the partitions served here (work for others
    /// is refused, see [`handoff`]).
    serving: Option<Arc<PartitionFlags>>,
}

struct ActiveAccount {
    addr: Addr<AccountActor>,
    last_used_ms: u64,
}

impl Default for RouterOptions {
    fn default() -> Self {
        Self {
            clock: SystemClock::shared(),
            hook: None,
            chaos: None,
            cluster: None,
        }
    }
}

impl ShardRouter {
    /// Starts one shard per configured arbiter, with the real clock. Must
    /// run inside an actix `System`.
    pub fn start(config: &ActorsConfig) -> Self {
        Self::start_with(config, RouterOptions::default())
    }

    /// Starts one shard per configured arbiter, journaling in memory only
    /// (nothing survives a restart). Must run inside an actix `System`.
    pub fn start_with(config: &ActorsConfig, options: RouterOptions) -> Self {
        let count = config.shard_count();
        let (journals, recovered) = Journals::open(
            None,
            &config.journal,
            &config.window,
            count,
            &JournalHistograms::default(),
        )
        .expect("a memory journal opens without touching the disk");
        Self::start_recovered(config, options, journals, recovered.windows)
    }

    /// Starts one shard per journal in `journals`, each with the windows
    /// `recovered` from it (held passivated until first used). Must run
    /// inside an actix `System`.
    pub fn start_recovered(
        config: &ActorsConfig,
        options: RouterOptions,
        journals: Journals,
        recovered: Vec<HashMap<Box<str>, HistoryWindow>>,
    ) -> Self {
        let count = journals.shards().len();
        let mut recovered = recovered.into_iter();
        let shards_config = Arc::new(config.shards.clone());
        let poison = Arc::new(PoisonLog::default());
        let mut arbiters = Vec::with_capacity(count);
        let mut shards = Vec::with_capacity(count);
        for index in 0..count {
            let arbiter = shard_arbiter(&journals.shards()[index]);
            let stats = Arc::new(ShardStats::default());
            let holds = Arc::new(Holds::default());
            let env = Arc::new(AccountEnv {
                rules: config.rules.clone(),
                window: config.window.clone(),
                supervision: config.supervision.clone(),
                clock: options.clock.clone(),
                stats: stats.clone(),
                poison_log: poison.clone(),
                shard: u32::try_from(index).unwrap_or(u32::MAX),
                hook: options.hook.clone(),
                chaos: options.chaos.clone(),
                order_hold_ms: config.shards.order_hold_ms,
                overload_retry_after_ms: config.shards.overload_retry_after_ms,
                journal: journals.shards()[index].clone(),
            });
            let mut passive = PassiveWindows::new();
            for (account, window) in recovered.next().unwrap_or_default() {
                passive.insert(&account, &window.into_entries());
            }
            stats.passivated.set(passive.len() as u64);
            let shard = Shard {
                env,
                shard_count: count,
                config: shards_config.clone(),
                holds: holds.clone(),
                active: Accounts::default(),
                passivating: Accounts::default(),
                passive,
                supervised: Accounts::default(),
                snapshot_every: journals
                    .is_durable()
                    .then(|| Duration::from_secs(config.journal.snapshot_interval_secs)),
                serving: options.cluster.as_ref().map(|c| c.serving.clone()),
            };
            let capacity = shards_config.shard_mailbox;
            let addr = Supervisor::start_in_arbiter(&arbiter.handle(), move |ctx| {
                ctx.set_mailbox_capacity(capacity);
                shard
            });
            shards.push(ShardHandle { addr, holds, stats });
            arbiters.push(arbiter);
        }
        let stats = ScreeningStats {
            shards: shards.iter().map(|s| s.stats.clone()).collect(),
            poison,
        };
        let stamps = Arc::new(AtomicU64::new(0));
        let cluster = options.cluster.map(|c| {
            let shard_holds: Arc<[Arc<Holds>]> = shards.iter().map(|s| s.holds.clone()).collect();
            let holds = remote::RemoteHolds::new(
                shard_holds,
                stamps.clone(),
                options.clock.clone(),
                config.shards.order_hold_ms,
            );
            (c, Arc::new(holds))
        });
        Self {
            shards: shards.into(),
            config: shards_config,
            clock: options.clock,
            stats,
            arbiters: Arc::new(parking_lot::Mutex::new(arbiters)),
            inflight: cluster
                .as_ref()
                .map(|(c, _)| Arc::new(inflight::InFlight::new(c.map.read().partitions()))),
            journals,
            cluster,
            stamps,
        }
    }

    /// The shards' journals (the publisher reads them).
    pub fn journals(&self) -> &Journals {
        &self.journals
    }

    /// The one place that decides where an account lives.
    pub fn locate(&self, account_id: &str) -> Location {
        let map = self.cluster.as_ref().map(|(c, _)| c.map.read().clone());
        let me = map.as_deref().and_then(|m| self.my_index(m));
        self.locate_in(map.as_deref(), me, account_id).0
    }

    /// [`Self::locate`] against one snapshot of the map (`me`: this
    /// replica's index in it, if it is in the set), with the account's
    /// partition when there is a map.
    fn locate_in(
        &self,
        map: Option<&PartitionMap>,
        me: Option<usize>,
        account_id: &str,
    ) -> (Location, Option<u32>) {
        if let Some(map) = map {
            let (partition, owner, epoch) = map.locate_index(account_id);
            if Some(owner) != me {
                let remote = Location::Remote {
                    partition,
                    owner,
                    epoch,
                };
                return (remote, Some(partition));
            }
            return (Location::Local(self.shard_of(account_id)), Some(partition));
        }
        (Location::Local(self.shard_of(account_id)), None)
    }

    /// The local shard of an account this replica owns.
    fn shard_of(&self, account_id: &str) -> usize {
        let mut h = DefaultHasher::new();
        account_id.hash(&mut h);
        let n = self.shards.len() as u64;
        usize::try_from(h.finish() % n).unwrap_or(0)
    }

    /// This replica's index in `map`.
    fn my_index(&self, map: &PartitionMap) -> Option<usize> {
        let (cluster, _) = self.cluster.as_ref()?;
        map.replicas().iter().position(|r| r.name == cluster.me)
    }

    /// The partition map, when this router is one replica of several.
    pub fn partition_map(&self) -> Option<Arc<PartitionMap>> {
        self.cluster.as_ref().map(|(c, _)| c.map.read().clone())
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Per-shard counters and the poison log.
    pub fn stats(&self) -> &ScreeningStats {
        &self.stats
    }

    /// Screens a request batch; `on_done` gets exactly one result per
    /// transaction, in request order, once all are decided.
    pub fn screen(
        &self,
        txns: Vec<Transaction>,
        received: Instant,
        on_done: impl FnOnce(Vec<TxnResult>) + Send + 'static,
    ) {
        self.screen_traced(txns, received, None, on_done);
    }

    /// [`Self::screen`] for a traced request: `trace` (a W3C
    /// `traceparent`) travels in the actor messages onto every verdict.
    /// Transactions of accounts another replica owns are forwarded to it.
    /// Returns how many of them another replica owns (what tells a client
    /// routing by the partition map that its map is stale).
    pub fn screen_traced(
        &self,
        txns: Vec<Transaction>,
        received: Instant,
        trace: Option<Arc<str>>,
        on_done: impl FnOnce(Vec<TxnResult>) + Send + 'static,
    ) -> usize {
        self.route(txns, None, received, trace, on_done)
    }

    /// Screens transactions another replica forwarded, each stamped with the
    /// ownership epoch its sender saw: screened here only when this replica
    /// owns the account's partition at exactly that epoch, answered
    /// WRONG_OWNER (naming the current owner) otherwise, and never
    /// forwarded again.
    pub fn screen_forwarded(
        &self,
        txns: Vec<(Transaction, u64)>,
        received: Instant,
        trace: Option<Arc<str>>,
        on_done: impl FnOnce(Vec<TxnResult>) + Send + 'static,
    ) {
        let (txns, epochs): (Vec<_>, Vec<_>) = txns.into_iter().unzip();
        self.route(txns, Some(epochs), received, trace, on_done);
    }

    /// Splits a batch by where its accounts live and hands each part on;
    /// `stamped`: the epochs of forwarded work (fenced, never forwarded).
    /// Returns how many transactions another replica owns.
    fn route(
        &self,
        txns: Vec<Transaction>,
        stamped: Option<Vec<u64>>,
        received: Instant,
        trace: Option<Arc<str>>,
        on_done: impl FnOnce(Vec<TxnResult>) + Send + 'static,
    ) -> usize {
        // A caller's own work is kept in order across a change of owner;
        // forwarded work goes nowhere else (see [`inflight`]).
        let track = match (&self.inflight, &stamped) {
            (Some(table), None) => Some(inflight::Batch::new(table.clone())),
            _ => None,
        };
        let on_done = {
            let track = track.clone();
            move |results| {
                drop(track);
                on_done(results);
            }
        };
        let batch = BatchReply::new(txns.len(), on_done);
        if txns.is_empty() {
            batch.finish_if_empty();
            return 0;
        }
        if txns.len() > self.config.max_batch {
            let err = ActorError::BatchTooLarge {
                got: txns.len(),
                max: self.config.max_batch,
            };
            for (i, txn) in txns.iter().enumerate() {
                batch.slot(i, &txn.transaction_id).error(&err);
            }
            return 0;
        }
        let map = self.partition_map();
        let me = map.as_deref().and_then(|m| self.my_index(m));
        let mut parts: Vec<Vec<(Transaction, ReplySlot)>> =
            (0..self.shards.len()).map(|_| Vec::new()).collect();
        let mut remote: Vec<(usize, Vec<remote::Outbound>)> = Vec::new();
        let mut not_owned = 0;
        for (i, txn) in txns.into_iter().enumerate() {
            let slot = batch.slot(i, &txn.transaction_id);
            let (location, partition) = self.locate_in(map.as_deref(), me, &txn.account_id);
            match location {
                Location::Local(shard) => {
                    if let (Some(map), Some(p), Some((cluster, _))) =
                        (map.as_deref(), partition, &self.cluster)
                    {
                        if !cluster.serving.contains(p) {
                            self.refuse_moving(shard, &txn, slot, p);
                            continue;
                        }
                        if let Some(stamped) = &stamped {
                            let (owner, epoch) = map.owner(p);
                            if epoch != stamped[i] {
                                // The sender learns the epoch and sends it
                                // again; what it sent after must wait here.
                                let wrong = ActorError::WrongOwner {
                                    partition: p,
                                    stamped: stamped[i],
                                    owner: owner.name.clone(),
                                    epoch,
                                };
                                self.refuse_held(shard, &txn, slot, &wrong);
                                continue;
                            }
                        }
                        if let Some(track) = &track {
                            if !track.enter(p, name_tag(&cluster.me)) {
                                self.refuse_moving(shard, &txn, slot, p);
                                continue;
                            }
                        }
                    }
                    parts[shard].push((txn, slot));
                }
                Location::Remote {
                    partition,
                    owner,
                    epoch,
                } => {
                    not_owned += 1;
                    if let (Some(map), Some(stamped)) = (map.as_deref(), &stamped) {
                        // One hop only: say who owns it instead.
                        slot.error(&ActorError::WrongOwner {
                            partition,
                            stamped: stamped[i],
                            owner: map.replicas()[owner].name.clone(),
                            epoch,
                        });
                        continue;
                    }
                    let shard = self.shard_of(&txn.account_id);
                    if let (Some(track), Some(map)) = (&track, map.as_deref()) {
                        if !track.enter(partition, name_tag(&map.replicas()[owner].name)) {
                            self.refuse_moving(shard, &txn, slot, partition);
                            continue;
                        }
                    }
                    let item = (txn, slot, partition, epoch, shard);
                    match remote.iter_mut().find(|(o, _)| *o == owner) {
                        Some((_, items)) => items.push(item),
                        None => remote.push((owner, vec![item])),
                    }
                }
            }
        }
        for (shard, items) in parts.into_iter().enumerate() {
            if !items.is_empty() {
                self.to_shard(shard, items, received, &trace);
            }
        }
        if let (Some((cluster, holds)), Some(map)) = (&self.cluster, &map) {
            for (owner, items) in remote {
                let part = holds.admit(items, trace.clone(), self.config.overload_retry_after_ms);
                if !part.is_empty() {
                    cluster.remote.forward(&map.replicas()[owner].name, part);
                }
            }
        }
        not_owned
    }

    /// Refuses a transaction of a partition on its way to or from this
    /// replica, and holds its account (a later transaction must not pass
    /// it once the partition is served).
    fn refuse_moving(&self, shard: usize, txn: &Transaction, slot: ReplySlot, partition: u32) {
        let moving = ActorError::PartitionMoving {
            partition,
            retry_after_ms: MOVING_RETRY_AFTER_MS,
        };
        self.refuse_held(shard, txn, slot, &moving);
    }

    /// Refuses `txn` retryably with `error` and holds its account until it
    /// is sent again.
    fn refuse_held(&self, shard: usize, txn: &Transaction, slot: ReplySlot, error: &ActorError) {
        let handle = &self.shards[shard];
        let stamp = self.stamps.fetch_add(1, Ordering::Relaxed);
        let until = self.clock.now_ms() + self.config.order_hold_ms;
        handle
            .holds
            .hold(&txn.account_id, &txn.transaction_id, stamp, until);
        slot.error(error);
    }

    /// Hands one shard its part of a batch, or refuses it (journal down,
    /// mailbox full, shutting down).
    fn to_shard(
        &self,
        shard: usize,
        items: Vec<(Transaction, ReplySlot)>,
        received: Instant,
        trace: &Option<Arc<str>>,
    ) {
        let handle = &self.shards[shard];
        if !self.journals.shards()[shard].is_healthy() {
            // Nothing is screened that could not be recorded.
            for (_, slot) in items {
                slot.error(&ActorError::JournalUnavailable {
                    retry_after_ms: JOURNAL_RETRY_AFTER_MS,
                });
            }
            return;
        }
        let stamp = self.stamps.fetch_add(1, Ordering::Relaxed);
        match handle.addr.try_send(ScreenPart {
            items,
            received,
            trace: trace.clone(),
            stamp,
        }) {
            Ok(()) => {}
            Err(SendError::Full(part)) => {
                let until = self.clock.now_ms() + self.config.order_hold_ms;
                for (txn, slot) in part.items {
                    handle
                        .holds
                        .hold(&txn.account_id, &txn.transaction_id, stamp, until);
                    overloaded(&handle.stats, &self.config, slot, "shard");
                }
            }
            Err(SendError::Closed(part)) => {
                for (_, slot) in part.items {
                    slot.error(&ActorError::ShuttingDown);
                }
            }
        }
    }

    /// Stops every shard's arbiter (their actors stop with them), then
    /// the journals' writers once they have written what they hold.
    /// Transactions not yet decided are answered through their dropped
    /// slots.
    pub fn stop(&self) {
        let arbiters = std::mem::take(&mut *self.arbiters.lock());
        for arbiter in arbiters {
            arbiter.stop();
        }
        self.journals.close();
    }
}

/// A shard's thread: an arbiter whose runtime writes the shard's pending
/// journal records each time it runs out of work, before it sleeps. Every
/// verdict its accounts decided while it was busy goes in that one group,
/// and at low load no other thread is woken to write it. Without that
/// runtime (it could not be built), and with `sync = "always"`, the
/// journal's writer thread does it.
fn shard_arbiter(journal: &ShardJournal) -> Arbiter {
    let flusher = journal.clone();
    let built = Arbiter::try_with_tokio_rt(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(move || flusher.flush())
            .build()
    });
    match built {
        Ok(arbiter) => {
            journal.flush_when_idle();
            arbiter
        }
        Err(e) => {
            tracing::warn!(error = %e, "shard runtime not built: its journal writer thread writes every group");
            Arbiter::new()
        }
    }
}

fn overloaded(stats: &ShardStats, config: &ShardsConfig, slot: ReplySlot, what: &'static str) {
    stats.overloaded.inc();
    slot.error(&ActorError::Overloaded {
        what,
        retry_after_ms: config.overload_retry_after_ms,
    });
}

impl Actor for Shard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let every = Duration::from_millis(self.config.passivation_sweep_ms);
        repeat(ctx, every, Shard::sweep);
        if let Some(every) = self.snapshot_every {
            repeat(ctx, every, Shard::snapshot);
        }
    }
}

/// Runs `task` on the shard every `every`, counted from the end of the
/// previous run. Not `run_interval`: actix's interval catches up on missed
/// ticks within one poll of the shard, so a sweep that took longer than
/// its period (a large shard, a busy machine) ran again at once, for ever,
/// and the accounts on the shard's thread never ran (seen as a hung test
/// with a 1 ms sweep on a loaded machine).
fn repeat(ctx: &mut Context<Shard>, every: Duration, task: fn(&mut Shard, &mut Context<Shard>)) {
    ctx.run_later(every, move |shard, ctx| {
        task(shard, ctx);
        repeat(ctx, every, task);
    });
}

impl actix::Supervised for Shard {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        tracing::warn!(
            shard = self.env.shard,
            accounts = self.active.len(),
            "shard restarted"
        );
    }
}

impl Shard {
    /// Whether an injected fault kills this shard now.
    fn kill_injected(&self) -> bool {
        let Some(chaos) = &self.env.chaos else {
            return false;
        };
        let index = usize::try_from(self.env.shard).unwrap_or(0);
        let hash = txmesh_chaos::shard_hash(index, self.shard_count);
        chaos.decide_now(txmesh_chaos::InjectionPoint::ShardDelivery, hash)
            == Some(txmesh_chaos::FaultKind::KillShard)
    }

    /// Kills the shard: every account actor and then the shard itself
    /// stop, and their supervisors restart them (state and mailboxes
    /// kept, as after any actor crash).
    fn kill(&mut self, ctx: &mut Context<Self>) {
        // A restart cancels the shard's futures, so a passivation under
        // way would lose its answer (and the account's state with it): a
        // real crash could, an injected one does not.
        if !self.passivating.is_empty() {
            tracing::warn!(
                shard = self.env.shard,
                "injected shard kill skipped: a passivation is under way"
            );
            return;
        }
        tracing::warn!(
            shard = self.env.shard,
            accounts = self.active.len(),
            "injected fault: shard killed"
        );
        for account in self.active.values() {
            // Not a transaction: a control message may pass a full
            // mailbox.
            account.addr.do_send(Kill);
        }
        ctx.stop();
    }

    /// Starts an account actor, supervised, with the configured mailbox.
    fn start_account(&self, actor: AccountActor) -> Addr<AccountActor> {
        let mailbox = self.config.account_mailbox;
        self.env.stats.active.inc();
        Supervisor::start(move |ctx: &mut Context<AccountActor>| {
            // Set before the first message: the shard enqueues a whole part
            // before the new actor first runs.
            ctx.set_mailbox_capacity(mailbox);
            actor
        })
    }

    /// The account's live actor, started (or restored from its passivated
    /// state) on demand.
    fn activate(&mut self, account_id: &str) -> &mut ActiveAccount {
        if !self.active.contains_key(account_id) {
            let actor = match self.passive.remove(account_id) {
                Some(entries) => {
                    self.env.stats.passivated.dec();
                    self.env.stats.reactivations.inc();
                    let state = AccountState {
                        entries,
                        supervision: self.supervised.remove(account_id),
                    };
                    AccountActor::restore(self.env.clone(), state)
                }
                None => AccountActor::new(self.env.clone()),
            };
            let addr = self.start_account(actor);
            self.active.insert(
                account_id.into(),
                ActiveAccount {
                    addr,
                    last_used_ms: 0,
                },
            );
        }
        self.active
            .get_mut(account_id)
            .expect("inserted just above when missing")
    }

    /// Hands `msg` to its account's actor, or refuses it for overload.
    fn deliver(&mut self, msg: ScreenTxn, stamp: u64, now_ms: u64) {
        let hold_until = now_ms + self.config.order_hold_ms;
        let capacity = self.config.account_mailbox;
        // (A lookup in an empty map returns before it hashes: nearly
        // always, nothing is passivating.)
        let refused = match self.passivating.get_mut(&*msg.txn.account_id) {
            // Its passivation is under way: the transaction waits for the
            // restored actor, in order.
            Some(waiting) => {
                if waiting.len() < capacity {
                    waiting.push((stamp, msg));
                    None
                } else {
                    Some(msg)
                }
            }
            None => {
                let account = self.activate(&msg.txn.account_id);
                account.last_used_ms = now_ms;
                // The stored `Addr` itself is used for sending: actix
                // tracks mailbox capacity per sender, and a fresh clone
                // would never see the mailbox as full.
                match account.addr.try_send(msg) {
                    Ok(()) => None,
                    Err(SendError::Full(msg)) => Some(msg),
                    Err(SendError::Closed(msg)) => {
                        msg.reply.error(&ActorError::ShuttingDown);
                        None
                    }
                }
            }
        };
        if let Some(msg) = refused {
            self.holds.hold(
                &msg.txn.account_id,
                &msg.txn.transaction_id,
                stamp,
                hold_until,
            );
            overloaded(&self.env.stats, &self.config, msg.reply, "account");
        }
    }

    /// Starts passivating the accounts idle for `passivate_after_secs`.
    fn sweep(&mut self, ctx: &mut Context<Self>) {
        // What was decided before this long turn is answered first.
        self.env.journal.flush();
        let now = self.env.clock.now_ms();
        self.holds.expire(now, self.config.order_hold_ms);
        let idle_ms = self.config.passivate_after_secs.saturating_mul(1000);
        let idle: Vec<Box<str>> = self
            .active
            .iter()
            .filter(|(k, a)| {
                now.saturating_sub(a.last_used_ms) >= idle_ms && !self.passivating.contains_key(*k)
            })
            .map(|(k, _)| k.clone())
            .take(MAX_PASSIVATIONS_PER_SWEEP)
            .collect();
        for key in idle {
            let Some(account) = self.active.get(&key) else {
                continue;
            };
            self.passivating.insert(key.clone(), Vec::new());
            let asked = account.addr.send(Passivate);
            ctx.spawn(
                asked
                    .into_actor(self)
                    .map(move |answer, shard, _ctx| shard.passivated(key, answer)),
            );
        }
        shrink_if_sparse(&mut self.active);
        shrink_if_sparse(&mut self.passivating);
        shrink_if_sparse(&mut self.supervised);
        self.passive.compact();
        let held = self.passive.held_bytes();
        self.env.stats.passivated_bytes.set(held as u64);
    }

    /// Snapshots every account's window (see [`crate::journal::snapshot`]):
    /// passivated ones from here, live ones by asking them, then writes the
    /// snapshot off this thread.
    fn snapshot(&mut self, ctx: &mut Context<Self>) {
        self.env.journal.flush();
        if self.env.journal.wants_snapshot() {
            self.collect_and_write(ctx, None);
        }
    }

    /// The body of [`Self::snapshot`], once the journal has said yes;
    /// `done` is told whether the snapshot is in place.
    fn collect_and_write(
        &mut self,
        ctx: &mut Context<Self>,
        done: Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
    ) {
        let journal = self.env.journal.clone();
        let lsn = journal.committed();
        let passive = self.passive.freeze();
        let mut windows: Vec<AccountWindow> = Vec::new();
        let asks: Vec<_> = self
            .active
            .iter()
            .map(|(k, a)| {
                let key = k.clone();
                a.addr.send(PeekWindow).map(move |answer| (key, answer))
            })
            .collect();
        ctx.spawn(join_all(asks).into_actor(self).map(move |answers, shard, _ctx| {
            for (key, answer) in answers {
                match answer {
                    Ok(entries) => windows.push((key, entries)),
                    // Passivated meanwhile: its state is here now.
                    Err(_) => match shard.passive.get(&key) {
                        Some(entries) => windows.push((key, entries)),
                        None => {
                            tracing::warn!(shard = shard.env.shard, "snapshot skipped: an account's window could not be read");
                            journal.snapshot_abandoned();
                            if let Some(done) = done {
                                let _ = done.send(Err("an account's window could not be read".to_owned()));
                            }
                            return;
                        }
                    },
                }
            }
            let windows = SnapshotWindows {
                passive,
                active: windows,
            };
            journal.write_snapshot_then(lsn, windows, move |result| {
                if let Some(done) = done {
                    let _ = done.send(result);
                }
            });
        }));
    }

    /// The account's answer to [`Passivate`].
    fn passivated(&mut self, key: Box<str>, answer: Result<Option<AccountState>, MailboxError>) {
        let waiting = self.passivating.remove(&key).unwrap_or_default();
        let Some((held, mut account)) = self.active.remove_entry(&key) else {
            return;
        };
        let now = self.env.clock.now_ms();
        match answer {
            Ok(Some(state)) => {
                // Dropping the only `Addr` stops the actor for good (its
                // supervisor restarts only actors still addressed).
                drop(account);
                self.env.stats.active.dec();
                self.env.stats.passivations.inc();
                self.passive.insert(&held, &state.entries);
                if let Some(supervision) = state.supervision {
                    self.supervised.insert(held, supervision);
                }
                self.env.stats.passivated.inc();
            }
            Ok(None) => {
                // Quarantined: stays live until its quarantine ends.
                account.last_used_ms = now;
                self.active.insert(held, account);
            }
            Err(_) => {
                // The actor is gone: its arbiter is stopping.
                self.env.stats.active.dec();
                for (_, msg) in waiting {
                    msg.reply.error(&ActorError::ShuttingDown);
                }
                return;
            }
        }
        // What arrived meanwhile goes on in order, to the restored actor.
        for (stamp, msg) in waiting {
            self.deliver(msg, stamp, now);
        }
    }
}

impl Handler<ScreenPart> for Shard {
    type Result = ();

    fn handle(&mut self, part: ScreenPart, ctx: &mut Self::Context) {
        let now = self.env.clock.now_ms();
        for (txn, reply) in part.items {
            let hold_ms = self.config.order_hold_ms;
            if let Some(serving) = &self.serving {
                // Routed before the partition stopped being served here.
                let partition = partition_of(&txn.account_id, serving.len());
                if !serving.contains(partition) {
                    self.holds.hold(
                        &txn.account_id,
                        &txn.transaction_id,
                        part.stamp,
                        now + hold_ms,
                    );
                    reply.error(&ActorError::PartitionMoving {
                        partition,
                        retry_after_ms: MOVING_RETRY_AFTER_MS,
                    });
                    continue;
                }
            }
            if !self.holds.admit(
                &txn.account_id,
                &txn.transaction_id,
                part.stamp,
                now,
                hold_ms,
            ) {
                reply.error(&ActorError::Held {
                    retry_after_ms: self.config.overload_retry_after_ms,
                });
                continue;
            }
            let msg = ScreenTxn {
                txn,
                reply,
                received: part.received,
                trace: part.trace.clone(),
            };
            self.deliver(msg, part.stamp, now);
        }
        if self.kill_injected() {
            self.kill(ctx);
        }
    }
}

#[cfg(test)]
#[path = "router/tests.rs"]
mod tests;

#[cfg(test)]
#[path = "router/cluster_tests.rs"]
mod cluster_tests;
