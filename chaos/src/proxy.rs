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
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

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
#[derive(Debug, Default, Serialize)]
pub struct ProxyStats {
    pub connections: AtomicU64,
    pub resets: AtomicU64,
    pub bytes_forwarded: AtomicU64,
    pub bytes_dropped: AtomicU64,
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
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(FaultId, WireFault, Instant)>> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
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
