//! ShardRouter and Shard: every account lives in exactly one shard (one
//! actor per arbiter thread), chosen by a hash of its id; the shard creates
//! the account's actor on first use and forwards each transaction to it.
//!
//! Order: one caller's batches reach a shard in the order sent (actix
//! mailboxes are FIFO per sender) and a shard forwards them to each account
//! in that order, so per-account order is preserved.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use actix::{dev::SendError, Actor, Addr, Arbiter, Context, Handler, Message, Supervisor};
use txmesh_proto::v1::{Transaction, TxnResult};

use crate::{
    account::{AccountActor, ScreenTxn},
    config::{ActorsConfig, RulesConfig, ShardsConfig, WindowConfig},
    reply::{BatchReply, ReplySlot},
    ActorError,
};

/// Where an account lives. Today always a local shard; with several ingress
/// replicas this is where "another replica" will be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    Local(usize),
}

/// Routes transactions to shards. Cheap to clone; one per process.
#[derive(Clone)]
pub struct ShardRouter {
    shards: Arc<[Addr<Shard>]>,
    config: Arc<ShardsConfig>,
    stats: Arc<RouterStats>,
    arbiters: Arc<std::sync::Mutex<Vec<Arbiter>>>,
}

/// Counters shared by every shard.
#[derive(Debug, Default)]
pub struct RouterStats {
    pub accounts: AtomicU64,
    pub overloaded: AtomicU64,
}

/// The transactions of one request batch that belong to one shard.
pub struct ScreenPart {
    pub items: Vec<(Transaction, ReplySlot)>,
    pub received: Instant,
}

impl Message for ScreenPart {
    type Result = ();
}

/// One shard: the account actors of its hash range, on its own arbiter.
pub struct Shard {
    accounts: HashMap<String, Addr<AccountActor>>,
    rules: Arc<RulesConfig>,
    window: WindowConfig,
    config: Arc<ShardsConfig>,
    stats: Arc<RouterStats>,
}

impl ShardRouter {
    /// Starts one shard per configured arbiter. Must run inside an actix
    /// `System`.
    pub fn start(config: &ActorsConfig) -> Self {
        let count = config.shard_count();
        let rules = Arc::new(config.rules.clone());
        let shards_config = Arc::new(config.shards.clone());
        let stats = Arc::new(RouterStats::default());
        let mut arbiters = Vec::with_capacity(count);
        let mut shards = Vec::with_capacity(count);
        for _ in 0..count {
            let arbiter = Arbiter::new();
            let shard = Shard {
                accounts: HashMap::new(),
                rules: rules.clone(),
                window: config.window.clone(),
                config: shards_config.clone(),
                stats: stats.clone(),
            };
            let capacity = shards_config.shard_mailbox;
            shards.push(Shard::start_in_arbiter(&arbiter.handle(), move |ctx| {
                ctx.set_mailbox_capacity(capacity);
                shard
            }));
            arbiters.push(arbiter);
        }
        Self {
            shards: shards.into(),
            config: shards_config,
            stats,
            arbiters: Arc::new(std::sync::Mutex::new(arbiters)),
        }
    }

    /// The one place that decides where an account lives.
    pub fn locate(&self, account_id: &str) -> Location {
        let mut h = DefaultHasher::new();
        account_id.hash(&mut h);
        let n = self.shards.len() as u64;
        Location::Local(usize::try_from(h.finish() % n).unwrap_or(0))
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Shared counters.
    pub fn stats(&self) -> &RouterStats {
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
        let batch = BatchReply::new(txns.len(), on_done);
        if txns.is_empty() {
            batch.finish_if_empty();
            return;
        }
        if txns.len() > self.config.max_batch {
            let err = ActorError::BatchTooLarge {
                got: txns.len(),
                max: self.config.max_batch,
            };
            for (i, txn) in txns.iter().enumerate() {
                batch.slot(i, &txn.transaction_id).error(&err);
            }
            return;
        }
        let mut parts: Vec<Vec<(Transaction, ReplySlot)>> =
            (0..self.shards.len()).map(|_| Vec::new()).collect();
        for (i, txn) in txns.into_iter().enumerate() {
            let slot = batch.slot(i, &txn.transaction_id);
            let Location::Local(shard) = self.locate(&txn.account_id);
            parts[shard].push((txn, slot));
        }
        for (shard, items) in parts.into_iter().enumerate() {
            if items.is_empty() {
                continue;
            }
            match self.shards[shard].try_send(ScreenPart { items, received }) {
                Ok(()) => {}
                Err(SendError::Full(part)) => {
                    self.stats
                        .overloaded
                        .fetch_add(part.items.len() as u64, Ordering::Relaxed);
                    let err = ActorError::Overloaded {
                        what: "shard",
                        retry_after_ms: self.config.overload_retry_after_ms,
                    };
                    for (_, slot) in part.items {
                        slot.error(&err);
                    }
                }
                Err(SendError::Closed(part)) => {
                    for (_, slot) in part.items {
                        slot.error(&ActorError::ShuttingDown);
                    }
                }
            }
        }
    }

    /// Stops every shard's arbiter (their actors stop with them). Pending
    /// transactions are answered through their dropped slots.
    pub fn stop(&self) {
        let arbiters =
            std::mem::take(&mut *self.arbiters.lock().unwrap_or_else(|e| e.into_inner()));
        for arbiter in arbiters {
            arbiter.stop();
        }
    }
}

impl Actor for Shard {
    type Context = Context<Self>;
}

impl Shard {
    /// The account's actor, started on first use. The stored `Addr` itself
    /// is used for sending: actix tracks mailbox capacity per sender, and a
    /// fresh clone would never see the mailbox as full.
    fn account(&mut self, account_id: &str) -> &Addr<AccountActor> {
        let live = self.accounts.get(account_id).is_some_and(Addr::connected);
        if !live {
            let window = self.window.clone();
            let rules = self.rules.clone();
            let mailbox = self.config.account_mailbox;
            let addr = Supervisor::start(move |ctx: &mut Context<AccountActor>| {
                // Set before the first message: the shard enqueues a whole
                // part before the new actor first runs.
                ctx.set_mailbox_capacity(mailbox);
                AccountActor::new(&window, rules)
            });
            if self.accounts.insert(account_id.to_owned(), addr).is_none() {
                self.stats.accounts.fetch_add(1, Ordering::Relaxed);
            }
        }
        &self.accounts[account_id]
    }
}

impl Handler<ScreenPart> for Shard {
    type Result = ();

    fn handle(&mut self, part: ScreenPart, _ctx: &mut Self::Context) {
        for (mut txn, reply) in part.items {
            let account_id = std::mem::take(&mut txn.account_id);
            let addr = self.account(&account_id);
            txn.account_id = account_id;
            let msg = ScreenTxn {
                txn,
                reply,
                received: part.received,
            };
            match addr.try_send(msg) {
                Ok(()) => {}
                Err(SendError::Full(msg)) => {
                    self.stats.overloaded.fetch_add(1, Ordering::Relaxed);
                    msg.reply.error(&ActorError::Overloaded {
                        what: "account",
                        retry_after_ms: self.config.overload_retry_after_ms,
                    });
                }
                Err(SendError::Closed(msg)) => msg.reply.error(&ActorError::ShuttingDown),
            }
        }
    }
}

#[cfg(test)]
#[path = "router/tests.rs"]
mod tests;
