//! WireProxy: a TCP proxy that sits between two components and applies
//! leased wire faults to the bytes it forwards, like Toxiproxy: latency
//! with jitter, a bandwidth limit, connection resets, a black hole and a
//! slow close. TLS passes through untouched (the proxy never terminates
//! it), so mTLS stays end to end and the faults are what a bad network
//! would do to it.
//!
//! Every fault has a lease, like the registry's: it ends by itself.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use parking_lot::Mutex;

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpListener, TcpStream,
    },
    sync::{mpsc, watch},
    task::JoinHandle,
};

use crate::{ChaosError, FaultId};

/// Bytes read at a time; also the granularity of the bandwidth limit.
const CHUNK: usize = 16 * 1024;
/// Chunks queued between a reader and its delayed writer.
const QUEUE: usize = 256;

/// One wire fault.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum WireFault {
    /// Every chunk is delivered this much later, plus a uniform jitter
    /// (order is kept).
    Latency { latency_ms: u64, jitter_ms: u64 },
    /// Each direction is limited to this many bytes per second.
    Bandwidth { bytes_per_sec: u64 },
    /// Open connections are reset (RST) and new ones reset on accept.
    Reset,
    /// Bytes are read and dropped: the peer sees a silent link.
    BlackHole,
    /// When one side closes, the other side learns of it this much later.
    SlowClose { delay_ms: u64 },
}

/// What a proxy has done, for the journal.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub connections: AtomicU64,
    pub resets: AtomicU64,
    pub bytes_forwarded: AtomicU64,
    pub bytes_dropped: AtomicU64,
    /// Chunks held back by a latency fault or a bandwidth limit.
    pub delayed_chunks: AtomicU64,
}

/// A running proxy; stops when dropped.
pub struct WireProxy {
    inner: Arc<Inner>,
    local_addr: SocketAddr,
    accept: JoinHandle<()>,
}

struct Inner {
    upstream: SocketAddr,
    max_lease: Duration,
    faults: Mutex<Vec<(FaultId, WireFault, Instant)>>,
    next_id: AtomicU64,
    /// Bumped on every injection, so open connections look again.
    changed: watch::Sender<u64>,
    stats: ProxyStats,
}

/// The faults in force at one instant, combined.
#[derive(Debug, Default, Clone, Copy)]
struct Effect {
    latency_ms: u64,
    jitter_ms: u64,
    bytes_per_sec: Option<u64>,
    reset: bool,
    black_hole: bool,
    slow_close_ms: u64,
}

impl WireProxy {
    /// Listens on `listen` and forwards every connection to `upstream`.
    ///
    /// # Errors
    /// When `listen` cannot be bound.
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        max_lease: Duration,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            upstream,
            max_lease,
            faults: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            changed: watch::channel(0).0,
            stats: ProxyStats::default(),
        });
        let accept = tokio::spawn(accept_loop(listener, inner.clone()));
        Ok(Self {
            inner,
            local_addr,
            accept,
        })
    }

    /// Where components connect instead of `upstream`.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Applies `fault` for `lease`.
    ///
    /// # Errors
    /// A zero or too long lease.
    pub fn inject(&self, fault: WireFault, lease: Duration) -> Result<FaultId, ChaosError> {
        if lease.is_zero() {
            return Err(ChaosError::NoLease);
        }
        if lease > self.inner.max_lease {
            return Err(ChaosError::LeaseTooLong {
                asked: lease,
                limit: self.inner.max_lease,
            });
        }
        let id = FaultId(self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        let now = Instant::now();
        {
            let mut faults = self.inner.lock();
            faults.retain(|f| f.2 > now);
            faults.push((id, fault, now + lease));
        }
        tracing::warn!(fault = id.0, ?fault, ?lease, upstream = %self.inner.upstream, "wire fault injected");
        self.inner.changed.send_modify(|v| *v += 1);
        Ok(id)
    }

    /// Ends every fault (a rollback); returns how many were in force.
    pub fn clear_all(&self) -> usize {
        let now = Instant::now();
        let mut faults = self.inner.lock();
        let active = faults.iter().filter(|f| f.2 > now).count();
        faults.clear();
        active
    }

    /// The faults in force now, with the time left on their leases.
    pub fn active(&self) -> Vec<(WireFault, Duration)> {
        let now = Instant::now();
        self.inner
            .lock()
            .iter()
            .filter(|f| f.2 > now)
            .map(|f| (f.1, f.2 - now))
            .collect()
    }

    /// Counters since the proxy started.
    pub fn stats(&self) -> &ProxyStats {
        &self.inner.stats
    }
}

impl Drop for WireProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Inner {
    fn lock(&self) -> parking_lot::MutexGuard<'_, Vec<(FaultId, WireFault, Instant)>> {
        self.faults.lock()
    }

    fn effect(&self, now: Instant) -> Effect {
        let mut effect = Effect::default();
        for (_, fault, expires) in self.lock().iter() {
            if *expires <= now {
                continue;
            }
            match *fault {
                WireFault::Latency {
                    latency_ms,
                    jitter_ms,
                } => {
                    effect.latency_ms += latency_ms;
                    effect.jitter_ms += jitter_ms;
                }
                WireFault::Bandwidth { bytes_per_sec } => {
                    let limit = bytes_per_sec.max(1);
                    effect.bytes_per_sec =
                        Some(effect.bytes_per_sec.map_or(limit, |b| b.min(limit)));
                }
                WireFault::Reset => effect.reset = true,
                WireFault::BlackHole => effect.black_hole = true,
                WireFault::SlowClose { delay_ms } => {
                    effect.slow_close_ms = effect.slow_close_ms.max(delay_ms);
                }
            }
        }
        effect
    }
}

async fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        inner.stats.connections.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(serve(client, inner.clone()));
    }
}

/// Resets a connection: linger zero makes the close an RST.
fn reset(stream: &TcpStream) {
    #[allow(deprecated)] // Its blocking close is what a reset needs.
    let _ = stream.set_linger(Some(Duration::ZERO));
}

async fn serve(client: TcpStream, inner: Arc<Inner>) {
    if inner.effect(Instant::now()).reset {
        reset(&client);
        inner.stats.resets.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let Ok(upstream) = TcpStream::connect(inner.upstream).await else {
        reset(&client);
        return;
    };
    let _ = upstream.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let mut changed = inner.changed.subscribe();
    let was_reset = {
        let pumps = async {
            tokio::join!(
                pump(&mut client_read, &mut upstream_write, &inner),
                pump(&mut upstream_read, &mut client_write, &inner)
            )
        };
        tokio::select! {
            _ = pumps => false,
            () = wait_for_reset(&mut changed, &inner) => true,
        }
    };
    if was_reset {
        // Both halves of a stream share its socket: one call each.
        reset(client_read.as_ref());
        reset(upstream_read.as_ref());
    }
}

/// Returns once a reset fault is injected.
async fn wait_for_reset(changed: &mut watch::Receiver<u64>, inner: &Inner) {
    loop {
        if changed.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        if inner.effect(Instant::now()).reset {
            inner.stats.resets.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
}

/// Forwards one direction until its reader ends and its writer has
/// delivered (or failed).
async fn pump(from: &mut OwnedReadHalf, to: &mut OwnedWriteHalf, inner: &Inner) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Option<Vec<u8>>)>(QUEUE);
    let reader = async {
        let mut buf = vec![0u8; CHUNK];
        let mut last_due = Instant::now();
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => 0,
                Ok(n) => n,
            };
            let now = Instant::now();
            let effect = inner.effect(now);
            if n == 0 {
                let due = now.max(last_due) + Duration::from_millis(effect.slow_close_ms);
                let _ = tx.send((due, None)).await;
                return;
            }
            if effect.black_hole {
                inner
                    .stats
                    .bytes_dropped
                    .fetch_add(n as u64, Ordering::Relaxed);
                continue;
            }
            let jitter = if effect.jitter_ms > 0 {
                rand::random::<f64>() * effect.jitter_ms as f64
            } else {
                0.0
            };
            let delay =
                Duration::from_millis(effect.latency_ms) + Duration::from_secs_f64(jitter / 1000.0);
            if !delay.is_zero() || effect.bytes_per_sec.is_some() {
                inner.stats.delayed_chunks.fetch_add(1, Ordering::Relaxed);
            }
            // Jitter never reorders bytes: a chunk is due no earlier than
            // the one before it.
            last_due = last_due.max(now + delay);
            if tx.send((last_due, Some(buf[..n].to_vec()))).await.is_err() {
                return;
            }
        }
    };
    let writer = async {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due.into()).await;
            let Some(chunk) = chunk else {
                let _ = to.shutdown().await;
                return;
            };
            if to.write_all(&chunk).await.is_err() {
                return;
            }
            inner
                .stats
                .bytes_forwarded
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if let Some(bps) = inner.effect(Instant::now()).bytes_per_sec {
                tokio::time::sleep(Duration::from_secs_f64(chunk.len() as f64 / bps as f64)).await;
            }
        }
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that echoes every byte back.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn proxy() -> WireProxy {
        let upstream = echo().await;
        WireProxy::start(
            "127.0.0.1:0".parse().expect("addr"),
            upstream,
            Duration::from_secs(60),
        )
        .await
        .expect("proxy")
    }

    async fn round_trip(conn: &mut TcpStream) -> std::io::Result<Duration> {
        let t0 = Instant::now();
        conn.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ping");
        Ok(t0.elapsed())
    }

    #[tokio::test]
    async fn latency_delays_each_direction_until_its_lease_ends() {
        let p = proxy().await;
        let mut conn = TcpStream::connect(p.local_addr()).await.expect("connect");
        round_trip(&mut conn).await.expect("clean");
        let fault = WireFault::Latency {
            latency_ms: 150,
            jitter_ms: 0,
        };
        p.inject(fault, Duration::from_millis(800)).expect("inject");
        // Both directions: at least twice the latency.
        let slow = round_trip(&mut conn).await.expect("slow");
        assert!(slow >= Duration::from_millis(300), "{slow:?}");
        assert!(p.stats().delayed_chunks.load(Ordering::Relaxed) >= 2);
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(p.active().is_empty(), "the lease has run out");
        let before = p.stats().delayed_chunks.load(Ordering::Relaxed);
        round_trip(&mut conn).await.expect("clean again");
        assert_eq!(p.stats().delayed_chunks.load(Ordering::Relaxed), before);
    }

    #[tokio::test]
    async fn reset_breaks_open_connections_and_refuses_new_ones() {
        let p = proxy().await;
        let mut conn = TcpStream::connect(p.local_addr()).await.expect("connect");
        round_trip(&mut conn).await.expect("clean");
        p.inject(WireFault::Reset, Duration::from_millis(500))
            .expect("inject");
        // The open connection is reset...
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
        // ...and a new one too, while the fault lasts.
        let mut fresh = TcpStream::connect(p.local_addr()).await.expect("connect");
        assert!(round_trip(&mut fresh).await.is_err());
        tokio::time::sleep(Duration::from_millis(600)).await;
        let mut after = TcpStream::connect(p.local_addr()).await.expect("connect");
        round_trip(&mut after).await.expect("works after the lease");
        assert!(p.stats().resets.load(Ordering::Relaxed) >= 2);
    }

    #[tokio::test]
    async fn a_black_hole_swallows_bytes_and_clearing_ends_it() {
        let p = proxy().await;
        let mut conn = TcpStream::connect(p.local_addr()).await.expect("connect");
        p.inject(WireFault::BlackHole, Duration::from_secs(30))
            .expect("inject");
        conn.write_all(b"lost").await.expect("write");
        let mut buf = [0u8; 4];
        let read = tokio::time::timeout(Duration::from_millis(300), conn.read(&mut buf)).await;
        assert!(read.is_err(), "nothing comes back through a black hole");
        assert_eq!(p.clear_all(), 1);
        round_trip(&mut conn).await.expect("works once cleared");
        assert_eq!(p.stats().bytes_dropped.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn leases_are_bounded() {
        let p = proxy().await;
        assert!(matches!(
            p.inject(WireFault::Reset, Duration::ZERO),
            Err(ChaosError::NoLease)
        ));
        assert!(matches!(
            p.inject(WireFault::Reset, Duration::from_secs(61)),
            Err(ChaosError::LeaseTooLong { .. })
        ));
    }
}
