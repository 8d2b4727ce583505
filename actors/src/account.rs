//! AccountActor: one actor per account, created by its shard on the
//! account's first transaction and supervised (actix `Supervisor`), holding
//! the account's [`HistoryWindow`].
//!
//! Screening is `rules::evaluate` inside `catch_unwind`: a panic answers the
//! transaction with a retryable error and stops the actor, and the supervisor
//! restarts it on the same value, so the window (which is written only after
//! a verdict) survives intact.

pub mod window;

use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use actix::{Actor, Context, Handler, Message, Supervised};
use txmesh_proto::v1::Transaction;

use crate::{
    config::{RulesConfig, WindowConfig},
    reply::ReplySlot,
    rules::{evaluate, Evaluation},
    ActorError,
};
use window::HistoryWindow;

/// Screen one transaction of this account and answer through its slot.
pub struct ScreenTxn {
    pub txn: Transaction,
    pub reply: ReplySlot,
    /// When the ingress received it: processing time is measured from here.
    pub received: Instant,
}

impl Message for ScreenTxn {
    type Result = ();
}

/// The actor owning one account's history.
pub struct AccountActor {
    window: HistoryWindow,
    rules: Arc<RulesConfig>,
    restarts: u32,
}

impl AccountActor {
    /// A fresh account with an empty window. Its mailbox capacity is set by
    /// whoever starts it (the shard), before the first message.
    pub fn new(window: &WindowConfig, rules: Arc<RulesConfig>) -> Self {
        Self {
            window: HistoryWindow::new(window),
            rules,
            restarts: 0,
        }
    }

    /// How many times the supervisor restarted this actor.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }
}

impl Actor for AccountActor {
    type Context = Context<Self>;
}

impl Supervised for AccountActor {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        self.restarts += 1;
        tracing::warn!(
            restarts = self.restarts,
            "account actor restarted with its window intact"
        );
    }
}

impl Handler<ScreenTxn> for AccountActor {
    type Result = ();

    fn handle(&mut self, msg: ScreenTxn, ctx: &mut Self::Context) {
        let now = unix_ms_now();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            evaluate(&self.window, &msg.txn, &self.rules, now)
        }));
        let elapsed_us = u64::try_from(msg.received.elapsed().as_micros()).unwrap_or(u64::MAX);
        match outcome {
            Ok(Evaluation::Fresh(mut verdict)) => {
                verdict.processing_time_us = elapsed_us;
                self.window.record(&msg.txn, &verdict);
                msg.reply.verdict(verdict);
            }
            Ok(Evaluation::Rejected(mut verdict)) => {
                verdict.processing_time_us = elapsed_us;
                msg.reply.verdict(verdict);
            }
            Ok(Evaluation::Replay(verdict)) => msg.reply.verdict(verdict),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".to_owned());
                msg.reply.error(&ActorError::AccountFailed(what));
                // Stopping hands the actor back to its supervisor, which
                // restarts it on the same value (window included).
                actix::ActorContext::stop(ctx);
            }
        }
    }
}

/// Wall-clock Unix milliseconds.
pub(crate) fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
