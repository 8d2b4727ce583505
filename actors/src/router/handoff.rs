//! Moving partitions between replicas: the shard side of a handoff.
//!
//! The old owner first stops serving the moving partitions (their flags in
//! [`super::Cluster::serving`] go down: the router and every shard refuse
//! new work for them with a retryable PARTITION_MOVING and hold the
//! account, so nothing overtakes what was refused). Then
//! [`ShardRouter::export`] asks every shard for the windows of the moving
//! accounts: the request is queued behind the work already accepted, each
//! live account answers behind the transactions in its mailbox, and the
//! export waits until the journal has written everything those windows
//! learned. Only after the new owner has the windows durably does the old
//! owner [`ShardRouter::drop_partitions`]; until then its shards keep the
//! windows (and its snapshots keep them), so a failed handoff loses
//! nothing. The new owner [`ShardRouter::import`]s the windows and
//! snapshots every shard before it says yes.

use std::{collections::HashMap, sync::Arc, time::Duration};

use actix::{
    ActorFutureExt, AsyncContext, Context, Handler, Message, ResponseActFuture, WrapFuture,
};
use futures_util::future::join_all;

use super::{Shard, ShardRouter};
use crate::{
    account::PeekWindow, journal::snapshot::AccountWindow, partition::partition_of, ActorError,
};

/// How long an export waits for a shard to finish passivating a moving
/// account before asking again.
const BUSY_RETRY: Duration = Duration::from_millis(20);
/// How often the journal's written position is looked at while an export
/// waits for it.
const FLUSH_POLL: Duration = Duration::from_millis(2);

/// Partitions, by number, out of `count`.
#[derive(Clone)]
pub(super) struct Moving {
    set: Arc<std::collections::HashSet<u32>>,
    count: u32,
}

impl Moving {
    fn has(&self, account: &str) -> bool {
        self.set.contains(&partition_of(account, self.count))
    }
}

/// A shard's moving accounts' windows, complete up to journal position
/// `lsn`. `None`: a moving account is being passivated; ask again.
struct ExportWindows(Moving);

impl Message for ExportWindows {
    type Result = Option<(Vec<AccountWindow>, u64)>;
}

/// Forgets the moving accounts (the new owner has them).
struct DropAccounts(Moving);

impl Message for DropAccounts {
    type Result = usize;
}

/// Takes windows over (passivated, until first used).
struct ImportWindows(Vec<AccountWindow>);

impl Message for ImportWindows {
    type Result = ();
}

/// Snapshots the shard now; answers once the snapshot is in place.
struct SnapshotNow;

impl Message for SnapshotNow {
    type Result = Result<(), String>;
}

impl ShardRouter {
    fn moving(&self, partitions: &[u32]) -> Moving {
        let count = self.partition_map().map_or(1, |m| m.partitions()).max(1);
        Moving {
            set: Arc::new(partitions.iter().copied().collect()),
            count,
        }
    }

    /// The windows of every account in `partitions`, once each has screened
    /// all it had accepted and the journal has written it. The partitions
    /// must no longer be served (see the module's doc).
    ///
    /// # Errors
    /// A shard or the journal is gone (shutting down).
    pub async fn export(&self, partitions: &[u32]) -> Result<Vec<AccountWindow>, ActorError> {
        let moving = self.moving(partitions);
        let mut windows = Vec::new();
        for (i, shard) in self.shards.iter().enumerate() {
            let (mut got, lsn) = loop {
                match shard.addr.send(ExportWindows(moving.clone())).await {
                    Ok(Some(answer)) => break answer,
                    Ok(None) => tokio::time::sleep(BUSY_RETRY).await,
                    Err(_) => return Err(ActorError::ShuttingDown),
                }
            };
            let journal = &self.journals.shards()[i];
            while journal.committed() < lsn {
                if !journal.is_healthy() {
                    return Err(ActorError::JournalUnavailable {
                        retry_after_ms: super::JOURNAL_RETRY_AFTER_MS,
                    });
                }
                tokio::time::sleep(FLUSH_POLL).await;
            }
            windows.append(&mut got);
        }
        Ok(windows)
    }

    /// Forgets every account of `partitions`; returns how many there were.
    pub async fn drop_partitions(&self, partitions: &[u32]) -> usize {
        let moving = self.moving(partitions);
        let asks = self
            .shards
            .iter()
            .map(|s| s.addr.send(DropAccounts(moving.clone())));
        join_all(asks).await.into_iter().flatten().sum()
    }

    /// Takes `windows` over and snapshots every shard, so they survive a
    /// restart from here on.
    ///
    /// # Errors
    /// A shard is gone, or a snapshot could not be written.
    pub async fn import(&self, windows: Vec<AccountWindow>) -> Result<(), ActorError> {
        let mut by_shard: HashMap<usize, Vec<AccountWindow>> = HashMap::new();
        for w in windows {
            by_shard.entry(self.shard_of(&w.0)).or_default().push(w);
        }
        for (shard, windows) in by_shard {
            self.shards[shard]
                .addr
                .send(ImportWindows(windows))
                .await
                .map_err(|_| ActorError::ShuttingDown)?;
        }
        if !self.journals.is_durable() {
            return Ok(());
        }
        let asks = self.shards.iter().map(|s| s.addr.send(SnapshotNow));
        for answer in join_all(asks).await {
            match answer {
                Ok(Ok(())) => {}
                Ok(Err(why)) => return Err(ActorError::AccountFailed(why)),
                Err(_) => return Err(ActorError::ShuttingDown),
            }
        }
        Ok(())
    }
}

impl Handler<ExportWindows> for Shard {
    type Result = ResponseActFuture<Self, Option<(Vec<AccountWindow>, u64)>>;

    fn handle(&mut self, msg: ExportWindows, _ctx: &mut Self::Context) -> Self::Result {
        // What waits for a passivation is delivered after it: asking the
        // actor now would miss it.
        let busy = self.passivating.keys().any(|k| msg.0.has(k));
        if busy {
            return Box::pin(actix::fut::ready(None));
        }
        let mut windows: Vec<AccountWindow> = self
            .passive
            .matching(|k| msg.0.has(k))
            .map(|(k, entries)| (k.into(), entries))
            .collect();
        let asks: Vec<_> = self
            .active
            .iter()
            .filter(|(k, _)| msg.0.has(k))
            .map(|(k, a)| {
                let key = k.clone();
                let asked = a.addr.send(PeekWindow);
                async move { (key, asked.await) }
            })
            .collect();
        Box::pin(
            join_all(asks)
                .into_actor(self)
                .map(move |answers, shard, _| {
                    for (key, answer) in answers {
                        match answer {
                            Ok(entries) => windows.push((key, entries)),
                            Err(_) => match shard.passive.get(&key) {
                                Some(entries) => windows.push((key, entries)),
                                // Gone mid-export (its arbiter is stopping): ask
                                // again rather than hand over less.
                                None => return None,
                            },
                        }
                    }
                    Some((windows, shard.env.journal.appended()))
                }),
        )
    }
}

impl Handler<DropAccounts> for Shard {
    type Result = usize;

    fn handle(&mut self, msg: DropAccounts, _ctx: &mut Self::Context) -> usize {
        let before = self.active.len() + self.passive.len();
        self.active.retain(|k, _| !msg.0.has(k));
        self.passivating.retain(|k, _| !msg.0.has(k));
        self.passive.retain(|k| !msg.0.has(k));
        self.supervised.retain(|k, _| !msg.0.has(k));
        let active = self.active.len() as u64;
        let passive = self.passive.len() as u64;
        let stats = &self.env.stats;
        stats.active.set(active);
        stats.passivated.set(passive);
        before - self.active.len() - self.passive.len()
    }
}

impl Handler<ImportWindows> for Shard {
    type Result = ();

    fn handle(&mut self, msg: ImportWindows, _ctx: &mut Self::Context) {
        for (account, entries) in msg.0 {
            // A live actor for an account not served here holds nothing
            // newer than the handed-over window.
            if self.active.remove(&account).is_some() {
                self.env.stats.active.dec();
            }
            self.supervised.remove(&account);
            if self.passive.insert(&account, &entries) {
                self.env.stats.passivated.inc();
            }
        }
    }
}

impl Handler<SnapshotNow> for Shard {
    type Result = ResponseActFuture<Self, Result<(), String>>;

    fn handle(&mut self, _msg: SnapshotNow, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.snapshot_then(ctx, tx);
        Box::pin(
            async move {
                rx.await
                    .unwrap_or_else(|_| Err("the snapshot was not written".to_owned()))
            }
            .into_actor(self),
        )
    }
}

impl Shard {
    /// Snapshots now (after the one being written, if any) and tells `done`.
    pub(super) fn snapshot_then(
        &mut self,
        ctx: &mut Context<Self>,
        done: tokio::sync::oneshot::Sender<Result<(), String>>,
    ) {
        if !self.env.journal.wants_snapshot() {
            ctx.run_later(BUSY_RETRY, move |shard, ctx| shard.snapshot_then(ctx, done));
            return;
        }
        self.collect_and_write(ctx, Some(done));
    }
}
