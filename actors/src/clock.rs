//! Time as the actors see it: a monotonic millisecond count (restart
//! intensity, quarantine, passivation, order holds) and the wall clock (to
//! refuse timestamps from the future). Injected so tests can move time by
//! hand while the shards run on their own arbiter threads, where tokio's
//! paused time does not reach.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// A source of time shared by every shard and account of a router.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since an arbitrary fixed start; never goes back.
    fn now_ms(&self) -> u64;
    /// Wall-clock Unix milliseconds.
    fn unix_ms(&self) -> i64;
}

/// The clock shared by a router's actors.
pub type SharedClock = Arc<dyn Clock>;

/// The real clock.
#[derive(Debug)]
pub struct SystemClock {
    start: Instant,
}

/// A clock that moves only when told to: for tests of time-based behaviour.
#[derive(Debug)]
pub struct ManualClock {
    ms: AtomicU64,
    unix_base_ms: i64,
}

impl SystemClock {
    pub fn shared() -> SharedClock {
        Arc::new(Self {
            start: Instant::now(),
        })
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn unix_ms(&self) -> i64 {
        system_unix_ms()
    }
}

impl ManualClock {
    /// A clock at 0 whose wall time starts at the real current time.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            ms: AtomicU64::new(0),
            unix_base_ms: system_unix_ms(),
        })
    }

    /// Moves time forward.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.ms.load(Ordering::SeqCst)
    }

    fn unix_ms(&self) -> i64 {
        self.unix_base_ms
            .saturating_add(i64::try_from(self.now_ms()).unwrap_or(i64::MAX))
    }
}

/// Wall-clock Unix milliseconds from the system.
pub fn system_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
