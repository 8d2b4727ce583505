//! Sleeping until a transaction's intended send time, to within tens of
//! microseconds and without a thread of its own.
//!
//! tokio's timer counts whole milliseconds and rounds up, so an open-loop
//! generator on it sends up to a millisecond late, and its latency (from the
//! intended send time) counts that lateness. A thread sleep is precise but
//! costs two more wakeups per transaction (the blocking thread, then the
//! worker it wakes), which on a virtual machine cost more CPU than the
//! transaction itself. A timerfd is the kernel's high-resolution timer
//! delivered through the reactor the stream already waits on: one wakeup,
//! on time.

use std::{
    os::fd::OwnedFd,
    time::{Duration, Instant},
};

use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
    Timespec,
};
use tokio::io::unix::AsyncFd;

/// One stream's timer.
pub(super) struct Pacer {
    /// `None` where no timerfd can be had: tokio's timer then, late by up
    /// to a millisecond.
    fd: Option<AsyncFd<OwnedFd>>,
}

impl Pacer {
    pub(super) fn new() -> Self {
        // tokio 1.54 deprecates its safe constructors because a `T` that
        // only borrows its descriptor could let it close while registered.
        // An `OwnedFd` moved in is closed only when the `AsyncFd` drops,
        // after it has deregistered, so the safe constructor is sound here.
        #[allow(deprecated)]
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )
        .map_err(std::io::Error::from)
        .and_then(AsyncFd::new);
        match fd {
            Ok(fd) => Self { fd: Some(fd) },
            Err(e) => {
                tracing::warn!(error = %e, "no timerfd: pacing on tokio's millisecond timer");
                Self { fd: None }
            }
        }
    }

    /// Sleeps until `at`. Cancel-safe: a sleep dropped before its time
    /// leaves the timer armed, and the next one re-arms it (an expiry of an
    /// older sleep is recognised by the clock and slept past). Without a
    /// usable timerfd it sleeps on tokio's timer.
    pub(super) async fn sleep_until(&self, at: Instant) {
        loop {
            let rest = at.saturating_duration_since(Instant::now());
            if rest.is_zero() {
                return;
            }
            let Some(fd) = self.fd.as_ref().filter(|fd| arm(fd, rest).is_ok()) else {
                break;
            };
            let Ok(mut ready) = fd.readable().await else {
                break;
            };
            // The expiry count is of no interest; reading resets it.
            let _ = rustix::io::read(ready.get_inner(), &mut [0u8; 8]);
            ready.clear_ready();
        }
        tokio::time::sleep_until(at.into()).await;
    }
}

/// Arms the timer to expire once, `after` from now (never zero: that
/// would disarm it).
fn arm(fd: &AsyncFd<OwnedFd>, after: Duration) -> std::io::Result<()> {
    let value = Timespec::try_from(after.max(Duration::from_nanos(1)))
        .map_err(|_| std::io::Error::other("sleep too long for a timerfd"))?;
    let spec = Itimerspec {
        it_interval: Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: value,
    };
    timerfd_settime(fd.get_ref(), TimerfdTimerFlags::empty(), &spec)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sleep_ends_at_its_time_even_after_a_cancelled_one() {
        let pacer = Pacer::new();
        assert!(pacer.fd.is_some(), "Linux has timerfd");
        // A sleep cancelled before its time leaves the timer armed for it.
        let cancelled = pacer.sleep_until(Instant::now() + Duration::from_millis(1));
        let _ = tokio::time::timeout(Duration::from_micros(100), cancelled).await;
        let at = Instant::now() + Duration::from_millis(5);
        pacer.sleep_until(at).await;
        assert!(Instant::now() >= at, "woke before its time");
        // A time already past returns at once.
        pacer.sleep_until(Instant::now()).await;
    }
}
