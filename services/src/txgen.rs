//! txgen: streams transactions to the ingress over mTLS at a fixed rate
//! (open loop: latency counts from each transaction's intended send time)
//! or as fast as the ingress answers (closed loop with a window of batches
//! in flight), with a share of labelled injected patterns, and reports what
//! came back.
//!
//! Accounts are partitioned between streams so that each account's
//! transactions travel on one stream, in order.

mod patterns;
mod report;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use tokio::sync::Semaphore;
use tokio_stream::wrappers::ReceiverStream;
use txmesh_certs::{SpiffeId, TlsMaterial};
use txmesh_proto::v1::{ingress_client::IngressClient, ScreenRequest};

pub use patterns::{Generator, Label, Pattern, Planned};
pub use report::{CleanCount, LatencyMs, PatternCount, Tally, TxgenReport};

use crate::{config::TxmeshConfig, error::ServiceError, net::mtls_channel, shutdown::Shutdown};

/// Live counters, for `up`'s summary line.
#[derive(Debug, Default)]
pub struct TxgenProgress {
    pub sent: AtomicU64,
    pub answered: AtomicU64,
}

/// How long to wait for the answers still outstanding once sending stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

struct Pending {
    intended: Instant,
    label: Label,
}

/// Sent and not yet answered, by request id: one entry per transaction,
/// in request order (results come back in the same order).
type PendingMap = Arc<Mutex<HashMap<u64, Vec<Pending>>>>;

/// Runs txgen as configured until its duration or count is reached, or
/// `stop` fires; then waits for outstanding answers and reports.
///
/// # Errors
/// When certificates cannot be loaded or a stream cannot be opened.
pub async fn run(
    config: &TxmeshConfig,
    stop: Shutdown,
    progress: Arc<TxgenProgress>,
) -> Result<TxgenReport, ServiceError> {
    let t = &config.txgen;
    let material = TlsMaterial::load(&config.identity_dir(&t.identity), &config.trust_domain)?;
    let ingress_id = SpiffeId::for_workload(&config.trust_domain, "ingress")?;
    let channel = mtls_channel(t.target, &material, &ingress_id)?;
    let now_ms = unix_ms();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(t.streams);
    for stream in 0..t.streams {
        let generator = Generator::new(
            t.seed,
            stream,
            t.streams,
            t.accounts,
            config.actors.rules.clone(),
            t.inject_ratio,
            now_ms,
        );
        let plan = StreamPlan {
            rate: (t.rate > 0).then(|| (t.rate as f64 / t.streams as f64).max(1e-3)),
            count: (t.count > 0).then(|| {
                t.count / t.streams as u64 + u64::from((stream as u64) < t.count % t.streams as u64)
            }),
            deadline: (t.duration_secs > 0).then(|| started + Duration::from_secs(t.duration_secs)),
            batch_size: t.batch_size,
            max_in_flight: t.max_in_flight,
        };
        let client = IngressClient::new(channel.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        tasks.push(tokio::spawn(run_stream(
            client,
            generator,
            plan,
            stop.clone(),
            progress.clone(),
        )));
    }
    let mut total = Tally::new();
    for task in tasks {
        match task.await {
            Ok(Ok(tally)) => total.merge(tally),
            Ok(Err(e)) => return Err(e),
            Err(e) => {
                return Err(ServiceError::config(
                    "txgen",
                    format!("stream task failed: {e}"),
                ))
            }
        }
    }
    Ok(total.report((t.rate > 0).then_some(t.rate), started.elapsed()))
}

struct StreamPlan {
    /// Transactions per second for this stream; `None` = as fast as possible.
    rate: Option<f64>,
    count: Option<u64>,
    deadline: Option<Instant>,
    batch_size: usize,
    max_in_flight: usize,
}

async fn run_stream(
    mut client: IngressClient<tonic::transport::Channel>,
    mut generator: Generator,
    plan: StreamPlan,
    stop: Shutdown,
    progress: Arc<TxgenProgress>,
) -> Result<Tally, ServiceError> {
    // Open loop keeps a deep window so a slow answer does not hold back the
    // schedule; closed loop keeps `max_in_flight`.
    let window = if plan.rate.is_some() {
        plan.max_in_flight.max(1024)
    } else {
        plan.max_in_flight
    };
    let permits = Arc::new(Semaphore::new(window));
    let (tx, rx) = tokio::sync::mpsc::channel::<ScreenRequest>(window);
    let pending: PendingMap = Arc::new(Mutex::new(HashMap::new()));
    let mut responses = client
        .screen(ReceiverStream::new(rx))
        .await
        .map_err(ServiceError::Status)?
        .into_inner();

    let receiver = {
        let pending = pending.clone();
        let permits = permits.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut tally = Tally::new();
            while let Some(item) = responses.next().await {
                let Ok(response) = item else { break };
                let now = Instant::now();
                let sent = pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&response.request_id)
                    .unwrap_or_default();
                for (result, p) in response.results.iter().zip(sent) {
                    tally.answered(result, p.label, now.saturating_duration_since(p.intended));
                }
                progress
                    .answered
                    .fetch_add(response.results.len() as u64, Ordering::Relaxed);
                permits.add_permits(1);
            }
            tally
        })
    };

    let mut sent_tally = Tally::new();
    let start = Instant::now();
    let mut generated: u64 = 0;
    let mut request_id: u64 = 0;
    let tick = Duration::from_millis(1);
    'send: loop {
        if stop.is_fired() || plan.deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let remaining = plan.count.map_or(u64::MAX, |c| c.saturating_sub(generated));
        if remaining == 0 {
            break;
        }
        // How many are due now, and when each was meant to go.
        let (due, interval) = match plan.rate {
            Some(rate) => {
                let should = (start.elapsed().as_secs_f64() * rate) as u64;
                (
                    should.saturating_sub(generated).min(remaining),
                    Some(Duration::from_secs_f64(1.0 / rate)),
                )
            }
            None => ((plan.batch_size as u64).min(remaining), None),
        };
        if due == 0 {
            tokio::time::sleep(tick).await;
            continue;
        }
        let mut left = due;
        while left > 0 {
            let n = left.min(plan.batch_size as u64) as usize;
            let Ok(permit) = permits.acquire().await else {
                break 'send;
            };
            permit.forget();
            let now_ms = unix_ms();
            let mut txns = Vec::with_capacity(n);
            let mut sent = Vec::with_capacity(n);
            for i in 0..n {
                let Planned { txn, label } = generator.next(now_ms);
                let intended = match interval {
                    Some(iv) => start + iv.mul_f64((generated + i as u64) as f64),
                    None => Instant::now(),
                };
                sent.push(Pending { intended, label });
                sent_tally.sent(label);
                txns.push(txn);
            }
            request_id += 1;
            pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(request_id, sent);
            generated += n as u64;
            left -= n as u64;
            progress.sent.fetch_add(n as u64, Ordering::Relaxed);
            if tx
                .send(ScreenRequest {
                    transactions: txns,
                    request_id,
                })
                .await
                .is_err()
            {
                break 'send;
            }
        }
    }
    // Wait for what is still outstanding, then close our side.
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while Instant::now() < deadline && !pending.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(tx);
    let answered = match tokio::time::timeout(Duration::from_secs(5), receiver).await {
        Ok(Ok(tally)) => tally,
        _ => Tally::new(),
    };
    sent_tally.merge(answered);
    Ok(sent_tally)
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
