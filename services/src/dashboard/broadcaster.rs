//! Broadcaster: fans each snapshot out to every browser session. Sessions
//! have small bounded mailboxes; a session that is full misses this update
//! (counted) and gets the next one, so a slow browser never slows the
//! aggregator or the pipeline behind it.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
};

use actix::{dev::SendError, Actor, Addr, Context, Handler, Message};

use super::web::{GoingAway, Push, WsSession};

/// Shared with the aggregator, which reports them in every snapshot.
#[derive(Debug, Default)]
pub struct BroadcastStats {
    pub sessions: AtomicUsize,
    pub dropped: AtomicU64,
}

impl BroadcastStats {
    /// (live sessions, updates dropped for slow sessions).
    pub fn get(&self) -> (usize, u64) {
        (
            self.sessions.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }
}

/// A serialized snapshot for every session.
pub struct Broadcast(pub Arc<str>);

impl Message for Broadcast {
    type Result = ();
}

/// A session joined.
pub struct Register {
    pub id: u64,
    pub addr: Addr<WsSession>,
}

impl Message for Register {
    type Result = ();
}

/// A session left.
pub struct Unregister(pub u64);

impl Message for Unregister {
    type Result = ();
}

/// The dashboard is stopping: every session closes with "going away"
/// (1001). Answers with how many sessions were told.
pub struct CloseAll;

impl Message for CloseAll {
    type Result = usize;
}

/// The broadcaster actor.
pub struct Broadcaster {
    sessions: HashMap<u64, Addr<WsSession>>,
    stats: Arc<BroadcastStats>,
}

impl Broadcaster {
    pub fn new(stats: Arc<BroadcastStats>) -> Self {
        Self {
            sessions: HashMap::new(),
            stats,
        }
    }
}

impl Actor for Broadcaster {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(64);
    }
}

impl Handler<Broadcast> for Broadcaster {
    type Result = ();

    fn handle(&mut self, msg: Broadcast, _ctx: &mut Self::Context) {
        let stats = &self.stats;
        self.sessions
            .retain(|_, addr| match addr.try_send(Push(msg.0.clone())) {
                Ok(()) => true,
                Err(SendError::Full(_)) => {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(SendError::Closed(_)) => false,
            });
        self.stats
            .sessions
            .store(self.sessions.len(), Ordering::Relaxed);
    }
}

impl Handler<Register> for Broadcaster {
    type Result = ();

    fn handle(&mut self, msg: Register, _ctx: &mut Self::Context) {
        self.sessions.insert(msg.id, msg.addr);
        self.stats
            .sessions
            .store(self.sessions.len(), Ordering::Relaxed);
    }
}

impl Handler<Unregister> for Broadcaster {
    type Result = ();

    fn handle(&mut self, msg: Unregister, _ctx: &mut Self::Context) {
        self.sessions.remove(&msg.0);
        self.stats
            .sessions
            .store(self.sessions.len(), Ordering::Relaxed);
    }
}

impl Handler<CloseAll> for Broadcaster {
    type Result = usize;

    fn handle(&mut self, _msg: CloseAll, _ctx: &mut Self::Context) -> usize {
        let told = self.sessions.len();
        // A control message, not data: it must reach even a full mailbox.
        for addr in self.sessions.values() {
            addr.do_send(GoingAway);
        }
        told
    }
}
