//! AccountActor: one actor per account, created by its shard on the
//! account's first transaction (or restored from its passivated state) and
//! supervised (actix `Supervisor`), holding the account's [`HistoryWindow`].
//!
//! Screening is `rules::evaluate` inside `catch_unwind`. A panic answers the
//! transaction (retryable, or POISON once it crashed `poison_attempts`
//! times), consults the [`SupervisionState`] (restart intensity, quarantine)
//! and stops the actor; the supervisor restarts it on the same value, so the
//! window, written only after a verdict, survives intact.

use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    sync::Arc,
    time::Instant,
};

use actix::{Actor, ActorContext, Context, Handler, Message, MessageResult, Supervised};
use txmesh_proto::v1::{Reason, Transaction, Verdict, VerdictStatus};

use crate::{
    clock::SharedClock,
    config::{RulesConfig, SupervisionConfig, WindowConfig},
    journal::snapshot::SharedEntries,
    reply::ReplySlot,
    rules::{evaluate, Evaluation},
    stats::{PoisonLog, ShardStats},
    supervision::SupervisionState,
    window::HistoryWindow,
    ActorError,
};

/// A hook run inside the evaluation's `catch_unwind`, before the rules: it
/// may panic to simulate a failing evaluation (tests and fault injection).
pub type EvaluationHook = Arc<dyn Fn(&Transaction) + Send + Sync>;

/// Screen one transaction of this account and answer through its slot.
pub struct ScreenTxn {
    pub txn: Transaction,
    pub reply: ReplySlot,
    /// When the ingress received it: processing time is measured from here.
    pub received: Instant,
    /// The W3C trace context of its request, when traced: copied onto the
    /// verdict so the dashboard continues the trace.
    pub trace: Option<Arc<str>>,
}

impl Message for ScreenTxn {
    type Result = ();
}

/// Asks an idle account for its state; it answers `None` while quarantined
/// (the quarantine must run its course in a live actor).
pub struct Passivate;

/// Asks an account for its window (for a snapshot): a copy of a live one,
/// or the entries a passivation handed to the shard.
pub struct PeekWindow;

impl Message for PeekWindow {
    type Result = SharedEntries;
}

impl Message for Passivate {
    type Result = Option<AccountState>;
}

/// What a passivated account keeps: its window entries without spare
/// capacity (shared with a snapshot being written), and its crash history
/// only if it has one.
#[derive(Debug, Clone)]
pub struct AccountState {
    pub entries: SharedEntries,
    pub supervision: Option<Box<SupervisionState>>,
}

/// What every account of a shard shares.
pub struct AccountEnv {
    pub rules: RulesConfig,
    pub window: WindowConfig,
    pub supervision: SupervisionConfig,
    pub clock: SharedClock,
    pub stats: Arc<ShardStats>,
    pub poison_log: Arc<PoisonLog>,
    pub shard: u32,
    pub hook: Option<EvaluationHook>,
    /// Faults injected at the evaluation (panic, delay), if any.
    pub chaos: Option<Arc<txmesh_chaos::Registry>>,
    /// How long later transactions wait for the retry of a crashed one.
    pub order_hold_ms: u64,
    /// The shard's journal: every verdict is answered through it, once
    /// its record is written.
    pub journal: crate::journal::ShardJournal,
    pub overload_retry_after_ms: u32,
}

/// The actor owning one account's history.
pub struct AccountActor {
    history: History,
    env: Arc<AccountEnv>,
    supervision: Option<Box<SupervisionState>>,
}

/// An account's history: its live window, or the entries a passivation
/// encoded from it (shared with the shard, which holds them from then on;
/// the actor stops once the shard lets go of its address, and keeps them
/// only to answer a snapshot that asks before then).
enum History {
    Live(HistoryWindow),
    HandedOver(SharedEntries),
}

impl AccountActor {
    /// A fresh account with an empty window. Its mailbox capacity is set by
    /// whoever starts it (the shard), before the first message.
    pub fn new(env: Arc<AccountEnv>) -> Self {
        Self {
            history: History::Live(HistoryWindow::new()),
            env,
            supervision: None,
        }
    }

    /// An account brought back from its passivated state.
    pub fn restore(env: Arc<AccountEnv>, state: AccountState) -> Self {
        Self {
            history: History::Live(HistoryWindow::restore(&env.window, &state.entries)),
            env,
            supervision: state.supervision,
        }
    }

    fn crashed(&mut self, msg: ScreenTxn, panic: &(dyn std::any::Any + Send)) {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".to_owned());
        let now = self.env.clock.now_ms();
        let state = self.supervision.get_or_insert_with(Box::default);
        let outcome = state.on_crash(&msg.txn.transaction_id, now, &self.env.supervision);
        if outcome.quarantined {
            self.env.stats.quarantines.inc();
            tracing::warn!(
                shard = self.env.shard,
                quarantine_secs = self.env.supervision.quarantine_secs,
                "account exceeded its restart intensity and is quarantined"
            );
        }
        if outcome.poison {
            self.env.stats.poison.inc();
            self.env.poison_log.record(
                self.env.shard,
                &msg.txn,
                outcome.attempts,
                &what,
                self.env.clock.unix_ms(),
            );
            msg.reply.error(&ActorError::Poison {
                transaction_id: msg.txn.transaction_id.clone(),
                attempts: outcome.attempts,
            });
        } else {
            state.hold_for_retry(
                &msg.txn.transaction_id,
                now.saturating_add(self.env.order_hold_ms),
            );
            msg.reply.error(&ActorError::AccountFailed(what));
        }
    }
}

impl Actor for AccountActor {
    type Context = Context<Self>;
}

impl Supervised for AccountActor {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        self.env.stats.restarts.inc();
        tracing::debug!(
            shard = self.env.shard,
            "account actor restarted with its window intact"
        );
    }
}

impl Handler<ScreenTxn> for AccountActor {
    type Result = ();

    fn handle(&mut self, msg: ScreenTxn, ctx: &mut Self::Context) {
        let History::Live(window) = &mut self.history else {
            // Passivated: the shard keeps what arrives meanwhile for the
            // restored actor, so nothing is sent here; were it, it is
            // refused, not screened without its history.
            msg.reply.error(&ActorError::ShuttingDown);
            return;
        };
        if let Some(state) = self.supervision.as_deref_mut() {
            if state.is_poison(&msg.txn.transaction_id) {
                msg.reply.error(&ActorError::Poison {
                    transaction_id: msg.txn.transaction_id.clone(),
                    attempts: self.env.supervision.poison_attempts,
                });
                return;
            }
            let now = self.env.clock.now_ms();
            if state.quarantined(now) {
                let mut verdict = quarantined(&msg.txn);
                if let Some(trace) = &msg.trace {
                    verdict.traceparent = trace.to_string();
                }
                self.env.journal.commit(&msg.txn, verdict, None, msg.reply);
                return;
            }
            if !state.admit(&msg.txn.transaction_id, now) {
                self.env.stats.overloaded.inc();
                msg.reply.error(&ActorError::Overloaded {
                    what: "account (held for the retry of a crashed transaction)",
                    retry_after_ms: self.env.overload_retry_after_ms,
                });
                return;
            }
        }
        let now = self.env.clock.unix_ms();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            if let Some(hook) = &self.env.hook {
                hook(&msg.txn);
            }
            let kill = self
                .env
                .chaos
                .as_ref()
                .is_some_and(|chaos| inject_faults(chaos, &msg.txn.account_id));
            (evaluate(window, &msg.txn, &self.env.rules, now), kill)
        }));
        let elapsed_us = u64::try_from(msg.received.elapsed().as_micros()).unwrap_or(u64::MAX);
        let (outcome, kill) = match outcome {
            Ok((evaluation, kill)) => (Ok(evaluation), kill),
            Err(panic) => (Err(panic), false),
        };
        let (mut verdict, learned) = match outcome {
            Ok(Evaluation::Fresh(mut verdict)) => {
                verdict.processing_time_us = elapsed_us;
                let fingerprint = window.record(&self.env.window, &msg.txn, &verdict);
                (verdict, Some(fingerprint))
            }
            Ok(Evaluation::Rejected(mut verdict)) => {
                verdict.processing_time_us = elapsed_us;
                (verdict, None)
            }
            Ok(Evaluation::Replay(verdict)) => (verdict, None),
            Err(panic) => {
                self.crashed(msg, &*panic);
                // Stopping hands the actor back to its supervisor, which
                // restarts it on the same value (window included).
                ctx.stop();
                return;
            }
        };
        if let Some(state) = self.supervision.as_deref_mut() {
            state.on_success(&msg.txn.transaction_id);
        }
        if let Some(trace) = &msg.trace {
            verdict.traceparent = trace.to_string();
        }
        // Answered once the record is written (the journal's writer
        // thread completes the slot).
        self.env
            .journal
            .commit(&msg.txn, verdict, learned, msg.reply);
        if kill {
            // An injected kill, after the answer: the supervisor restarts
            // the actor on the same value, its mailbox kept.
            tracing::debug!(
                shard = self.env.shard,
                "injected fault: account actor killed"
            );
            ctx.stop();
        }
    }
}

/// Stops the account actor (a shard being killed); its supervisor restarts
/// it with its window and its mailbox.
pub struct Kill;

impl actix::Message for Kill {
    type Result = ();
}

impl Handler<Kill> for AccountActor {
    type Result = ();

    fn handle(&mut self, _msg: Kill, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<Passivate> for AccountActor {
    type Result = MessageResult<Passivate>;

    fn handle(&mut self, _msg: Passivate, _ctx: &mut Self::Context) -> Self::Result {
        let now = self.env.clock.now_ms();
        if let Some(state) = self.supervision.as_deref_mut() {
            if state.quarantined(now) {
                return MessageResult(None);
            }
        }
        // Encoded into one allocation (see `Entries`), and the window is
        // freed at once: the shard and any snapshot share that allocation.
        let entries = match &mut self.history {
            History::Live(window) => {
                let window = std::mem::take(window);
                let entries: SharedEntries = window.into_entries();
                self.history = History::HandedOver(entries.clone());
                entries
            }
            History::HandedOver(entries) => entries.clone(),
        };
        MessageResult(Some(AccountState {
            entries,
            supervision: self.supervision.take(),
        }))
    }
}

impl Handler<PeekWindow> for AccountActor {
    type Result = MessageResult<PeekWindow>;

    fn handle(&mut self, _msg: PeekWindow, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(match &self.history {
            History::Live(window) => window.to_entries(),
            History::HandedOver(entries) => entries.clone(),
        })
    }
}

/// Applies an injected fault at the evaluation: a panic (caught like any
/// other) or a stall of the actor's (and its shard's) thread. Returns
/// whether the actor is to be killed once it has answered.
fn inject_faults(chaos: &txmesh_chaos::Registry, account_id: &str) -> bool {
    use std::hash::{Hash, Hasher};
    // The common case: nothing injected, nothing to hash.
    if !chaos.is_active() {
        return false;
    }
    let mut h = std::hash::DefaultHasher::new();
    account_id.hash(&mut h);
    match chaos.decide_now(txmesh_chaos::InjectionPoint::AccountEvaluation, h.finish()) {
        Some(txmesh_chaos::FaultKind::PanicInEvaluation) => {
            panic!("injected fault: panic in evaluation")
        }
        Some(txmesh_chaos::FaultKind::DelayInEvaluation { delay_ms }) => {
            std::thread::sleep(std::time::Duration::from_millis(delay_ms));
            false
        }
        Some(txmesh_chaos::FaultKind::KillAccountActor) => true,
        _ => false,
    }
}

/// The answer for a transaction of a quarantined account.
fn quarantined(txn: &Transaction) -> Verdict {
    crate::rules::verdict(
        txn,
        VerdictStatus::Rejected,
        vec![Reason::AccountQuarantined as i32],
        100,
    )
}
