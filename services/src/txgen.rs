//! txgen: streams transactions to the ingress over mTLS at a fixed rate
//! (open loop: latency counts from each transaction's intended send time)
//! or as fast as the ingress answers (closed loop with a window of batches
//! in flight), with a share of labelled injected patterns, and reports what
//! came back.
//!
//! Accounts are partitioned between streams so that each account's
//! transactions travel on one stream, in order. Partition-aware, a stream
//! sends each transaction to the replica that owns its account (one
//! connection per replica) and follows the partition map as it changes.

mod pacer;
mod patterns;
mod report;
mod retry;
mod routes;
mod stream;

use routes::Directory;
use stream::{run_stream, StreamPlan};

use std::{
    sync::{atomic::AtomicU64, Arc},
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;
use txmesh_certs::{CertStore, SpiffeId};

pub use patterns::{Generator, Label, Pattern, Planned};
pub use report::{CleanCount, LatencyMs, PatternCount, Tally, TxgenReport};
pub use retry::{Decision, GiveUp, InFlight, RetryBudget, RetryQueues};

use crate::{config::TxmeshConfig, error::ServiceError, net::mtls_channel};

/// Live counters, for `up`'s summary line.
#[derive(Debug, Default)]
pub struct TxgenProgress {
    pub sent: AtomicU64,
    pub answered: AtomicU64,
}

/// Runs txgen as configured until its duration or count is reached, or
/// `stop` fires; then waits for outstanding answers and reports.
///
/// # Errors
/// When certificates cannot be loaded or a stream cannot be opened.
pub async fn run(
    config: &TxmeshConfig,
    stop: CancellationToken,
    progress: Arc<TxgenProgress>,
) -> Result<TxgenReport, ServiceError> {
    let t = &config.txgen;
    let store = CertStore::open(&config.identity_dir(&t.identity), &config.trust_domain)?;
    let ingress_id = SpiffeId::for_workload(&config.trust_domain, "ingress")?;
    let channel = mtls_channel(t.target.clone(), &store, &ingress_id)?;
    // txgen serves no metrics; its registry only backs the reload watcher.
    let metrics = Arc::new(crate::metrics::Metrics::new(&[]));
    let watcher = crate::net::watch_certs(
        store.clone(),
        config.tls.reload_interval(),
        stop.clone(),
        metrics,
    );
    let now_ms = txmesh_actors::clock::system_unix_ms();
    // Where the streams send: the target, or (partition-aware) each
    // account's owner by the map the target serves, kept current.
    let directory = if t.partition_aware {
        Directory::discover(config, store, ingress_id, channel).await?
    } else {
        Directory::single(config, store, ingress_id, channel)
    };
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
            retry: t.retry.clone(),
            seed: t.seed ^ (stream as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d),
        };
        let span = tracing::info_span!("txgen.stream", stream, target = %t.target);
        tasks.push(tokio::spawn(tracing::Instrument::instrument(
            run_stream(
                directory.clone(),
                generator,
                plan,
                stop.clone(),
                progress.clone(),
            ),
            span,
        )));
    }
    let mut total = Tally::new();
    let result = collect(tasks, &mut total).await;
    watcher.abort();
    result?;
    let mut report = total.report((t.rate > 0).then_some(t.rate), started.elapsed());
    report.map_refreshes = directory.refreshes();
    Ok(report)
}

async fn collect(
    tasks: Vec<tokio::task::JoinHandle<Result<Tally, ServiceError>>>,
    total: &mut Tally,
) -> Result<(), ServiceError> {
    for task in tasks {
        match task.await {
            Ok(Ok(tally)) => total.merge(tally),
            Ok(Err(e)) => return Err(e),
            Err(e) => {
                return Err(ServiceError::Failed {
                    what: "a txgen stream task",
                    reason: e.to_string(),
                })
            }
        }
    }
    Ok(())
}
